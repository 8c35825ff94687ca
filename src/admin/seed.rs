//! `POST /admin/v1/seed[?repository=R]`: adopt what the upstream holds now. Every
//! repository of the catalog (or only `R`), every tag of each; a tag the policy protects
//! and the store has no pin or claim for is pinned to the digest the upstream reports
//! for it, as if a push had found it there ([`PinSource::Adopted`]).
//!
//! The answer is JSON lines, streamed as the walk goes: `{"progress":{…}}` lines, then
//! one `{"done":{…}}` or `{"error":"…"}`. Each adoption is one atomic store write under
//! the tag's lock, so a seed can be interrupted (the client goes away and the walk
//! stops) and run again: a second run adopts only what the first did not reach.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use serde::Serialize;
use serde_json::json;

use super::Admin;
use crate::app::App;
use crate::body::Body;
use crate::error::ProxyError;
use crate::oci::{Repository, Tag};
use crate::store::{AdoptedVia, Pin, PinSource};
use crate::telemetry::{AuditAction, AuditEvent, Requester};

/// A progress line at the start of each repository, and every this many tags in one.
const PROGRESS_EVERY: usize = 100;

/// What a seed did so far.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Repositories whose tags were read.
    pub repositories: u64,
    pub tags_seen: u64,
    /// Tags pinned by this run.
    pub adopted: u64,
    /// Protected tags that had a pin or claim already.
    pub already_pinned: u64,
    /// Tags the policy leaves mutable.
    pub skipped_mutable: u64,
    /// Repositories in the catalog the upstream has no tag list for (only blobs).
    pub skipped_repositories: u64,
}

/// Why a walk stopped early.
enum Stop {
    /// The client went away; what was adopted stays adopted.
    Gone,
    Failed(ProxyError),
}

impl From<ProxyError> for Stop {
    fn from(e: ProxyError) -> Self {
        Self::Failed(e)
    }
}

impl From<crate::upstream::UpstreamError> for Stop {
    fn from(e: crate::upstream::UpstreamError) -> Self {
        Self::Failed(e.into())
    }
}

/// Start a seed; the catalog is read first, so an upstream that refuses tagpin's
/// credentials is an error status rather than a stream that fails at once.
pub async fn start(
    admin: Arc<Admin>,
    repository: Option<Repository>,
    who: Requester,
) -> Result<Response<Body>, ProxyError> {
    let repos = match repository {
        Some(r) => vec![r],
        None => admin.app.upstream.catalog().await?,
    };
    let (tx, body) = crate::body::channel(16);
    tokio::spawn(async move {
        let app = &admin.app;
        let mut counts = Counts::default();
        let last = match walk(app, &repos, &who, &tx, &mut counts).await {
            Ok(()) => json!({ "done": counts }),
            Err(Stop::Gone) => {
                tracing::info!(
                    request_id = who.request_id,
                    adopted = counts.adopted,
                    "seed interrupted: the client went away"
                );
                return;
            }
            Err(Stop::Failed(e)) => {
                tracing::warn!(request_id = who.request_id, error = %e, adopted = counts.adopted, "seed failed");
                json!({ "error": e.to_string() })
            }
        };
        tracing::info!(
            request_id = who.request_id,
            repositories = counts.repositories,
            tags_seen = counts.tags_seen,
            adopted = counts.adopted,
            already_pinned = counts.already_pinned,
            skipped_mutable = counts.skipped_mutable,
            skipped_repositories = counts.skipped_repositories,
            "seed finished"
        );
        let _ = tx.send(line(&last)).await;
    });
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(resp)
}

fn line(value: &serde_json::Value) -> Bytes {
    let mut v = value.to_string().into_bytes();
    v.push(b'\n');
    v.into()
}

async fn progress(tx: &crate::body::BodySender, counts: &Counts, current: &Repository) -> Result<(), Stop> {
    let value = json!({"progress": {
        "repositories": counts.repositories,
        "tags_seen": counts.tags_seen,
        "adopted": counts.adopted,
        "already_pinned": counts.already_pinned,
        "skipped_mutable": counts.skipped_mutable,
        "current": current.as_str(),
    }});
    tx.send(line(&value)).await.map_err(|_| Stop::Gone)
}

async fn walk(
    app: &App,
    repos: &[Repository],
    who: &Requester,
    tx: &crate::body::BodySender,
    counts: &mut Counts,
) -> Result<(), Stop> {
    let policy = app.policy();
    for repo in repos {
        progress(tx, counts, repo).await?;
        let Some(tags) = app.upstream.own_list_tags(repo).await? else {
            counts.skipped_repositories += 1;
            continue;
        };
        counts.repositories += 1;
        for (i, tag) in tags.iter().enumerate() {
            counts.tags_seen += 1;
            if i > 0 && i.is_multiple_of(PROGRESS_EVERY) {
                progress(tx, counts, repo).await?;
            }
            if !policy.is_protected(repo, tag) {
                counts.skipped_mutable += 1;
                continue;
            }
            match adopt(app, repo, tag, who).await? {
                Adopted::Now => counts.adopted += 1,
                Adopted::Before => counts.already_pinned += 1,
                Adopted::Gone => {}
            }
        }
    }
    Ok(())
}

enum Adopted {
    Now,
    /// Pinned or claimed already.
    Before,
    /// The tag went away at the upstream between the listing and the check.
    Gone,
}

/// Adopt one tag under its lock, so no push decides it meanwhile.
async fn adopt(app: &App, repo: &Repository, tag: &Tag, who: &Requester) -> Result<Adopted, Stop> {
    let (r, t) = (repo.clone(), tag.clone());
    if app.store_call(move |s| s.state(&r, &t)).await?.is_some() {
        return Ok(Adopted::Before);
    }
    let _guard = app.locks.push(repo, std::slice::from_ref(tag)).await;
    let (r, t) = (repo.clone(), tag.clone());
    if app.store_call(move |s| s.state(&r, &t)).await?.is_some() {
        return Ok(Adopted::Before);
    }
    let Some(digest) = app.upstream.own_tag_digest(repo, tag).await? else {
        return Ok(Adopted::Gone);
    };
    let mut pin = Pin::now(digest.clone(), PinSource::Adopted);
    for e in &mut pin.history {
        e.via = Some(AdoptedVia::Seed);
        e.by = Some(who.admin_name());
        e.request_id = Some(who.request_id.clone());
    }
    let (r, entry) = (repo.clone(), vec![(tag.clone(), pin)]);
    let in_force = app.store_call(move |s| s.pin_if_absent(&r, &entry)).await?;
    let pinned = in_force.first().map_or(&digest, |s| s.digest());
    AuditEvent {
        action: AuditAction::Seeded,
        who,
        repository: repo,
        tag: Some(tag),
        pinned: Some(pinned),
        attempted: None,
        decided: Some(app.policy().decide(repo, tag)),
    }
    .emit(&app.metrics);
    Ok(Adopted::Now)
}
