//! Completing pushes whose settlement a crash took back. A push's settlement is made
//! durable just after the client's answer ([`crate::store::PinStore::confirm`]), so a
//! crash in between leaves the push's claim, durable since before it was forwarded, on a
//! tag the upstream now holds at the pushed digest. The claim keeps every other digest
//! off the tag meanwhile; once it is past the in-doubt horizon (its write can no longer
//! land), this task asks the upstream what the tag holds and, when it is the claim's
//! digest, completes the claim as its own answer would have ([`pinning::complete_lost`]).
//!
//! It runs at start and then every [`every`], on the replica that leads, over the claims
//! alone ([`crate::store::PinStore::claimed`]), so its cost follows the writes in flight,
//! not the number of pins. A claim the upstream does not confirm stays as it is, for an
//! operator (`tagpin claims`), as any lost write on a free tag does.

use std::future::Future;
use std::time::Duration;

use crate::app::App;
use crate::error::ProxyError;
use crate::oci::{Repository, Tag};
use crate::pinning::{self, Settled};

/// Claims read from the store per page.
const PAGE: usize = 500;

/// How often the claims are looked at: often enough that a claim is completed soon
/// after it passes the horizon.
pub fn every(horizon: Duration) -> Duration {
    (horizon / 4).clamp(Duration::from_secs(1), Duration::from_secs(300))
}

/// Run until `stop`.
pub async fn run(app: App, stop: impl Future<Output = ()>) {
    let every = every(app.config.in_doubt_horizon);
    tokio::pin!(stop);
    loop {
        match app.store_call(|s| s.lead()).await {
            Ok(true) => match round(&app).await {
                Ok(0) => {}
                Ok(completed) => tracing::info!(
                    completed,
                    "pushes whose settlement was lost completed from the upstream"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot complete pushes whose settlement was lost; next try in {}s", every.as_secs())
                }
            },
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot look for pushes whose settlement was lost"),
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = &mut stop => return,
        }
    }
}

/// One pass over every claim; how many writes it completed.
pub async fn round(app: &App) -> Result<usize, ProxyError> {
    let mut after: Option<(Repository, Tag)> = None;
    let mut completed = 0;
    let (mut failed, mut first) = (0usize, None::<String>);
    loop {
        let cursor = after.clone();
        let page = app.store_call(move |s| s.claimed(cursor.as_ref(), PAGE)).await?;
        for (repo, tag) in &page {
            // One claim that cannot be checked (a repository tagpin's own credentials
            // cannot read, an upstream error) must not hold back the others after it.
            match complete_tag(app, repo, tag).await {
                Ok(n) => completed += n,
                Err(e) => {
                    failed += 1;
                    first.get_or_insert_with(|| format!("{repo}:{tag}: {e}"));
                }
            }
        }
        if page.len() < PAGE {
            if let Some(first) = first {
                tracing::warn!(failed, completed, first = %first, "cannot complete pushes whose settlement was lost: their claims could not be checked; next try in the next round");
            }
            return Ok(completed);
        }
        after = page.last().cloned();
    }
}

async fn complete_tag(app: &App, repo: &Repository, tag: &Tag) -> Result<usize, ProxyError> {
    let horizon = app.config.in_doubt_horizon.as_secs();
    let (r, t) = (repo.clone(), tag.clone());
    let (record, now) = app
        .store_call(move |s| Ok((s.record(&r, &t)?, crate::store::now_secs())))
        .await?;
    let lost = pinning::lost_settlements(&record, pinning::Clock { now, horizon });
    if lost.is_empty() {
        return Ok(0);
    }
    let _guard = app.locks.push(repo, std::slice::from_ref(tag)).await;
    let at_upstream = app.upstream.own_tag_digest(repo, tag).await?;
    let mut completed = 0;
    for write in lost {
        let seen = at_upstream.clone();
        let w = write.clone();
        let settled = app
            .transition(repo, std::slice::from_ref(tag), move |clock, records| {
                pinning::complete_lost(&mut records[0], &w, seen.as_ref(), clock)
            })
            .await?;
        if let Some(Settled::Pinned) = settled {
            tracing::info!(repository = %repo, %tag, digest = %write.digest, request_id = %write.request_id, "pinned: the push's settlement was lost, and the upstream holds its digest");
            completed += 1;
        }
    }
    Ok(completed)
}
