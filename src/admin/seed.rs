//! `POST /admin/v1/seed[?repository=R | ?after=R][&concurrency=N]`: adopt what the
//! upstream holds now. Every repository of the catalog (or only `R`, or those after `R`),
//! every tag of each; a tag the policy protects and the store has no pin or claim for is
//! pinned to the digest the upstream reports for it, as if a push had found it there
//! ([`PinSource::Adopted`]).
//!
//! The walk ([`crate::walk`]) reads the catalog and each tag list a page at a time and
//! keeps at most `concurrency` upstream requests in flight (the server's
//! `walk_concurrency` by default, and at most). Tags pinned already cost a store lookup,
//! no upstream request, so a seed run again asks the upstream only about what is missing.
//!
//! The answer is JSON lines, streamed as the walk goes: `{"progress":{…}}` lines (when a
//! repository is done, and every second meanwhile), then one `{"done":{…}}` or
//! `{"error":"…"}`. A progress line's `after` is the last repository done with every one
//! before it: a seed that was interrupted (the client went away, or an error) resumes
//! with `?after=` that repository. Each adoption is one atomic store write under the
//! tag's lock, so an interrupted seed leaves nothing half-done.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::{header, HeaderValue, Response};
use serde::Serialize;
use serde_json::json;

use super::routes::WalkScope;
use super::{line, Admin};
use crate::app::App;
use crate::body::{Body, BodySender};
use crate::error::ProxyError;
use crate::oci::{Repository, Tag};
use crate::policy::Policy;
use crate::store::{AdoptedVia, Pin, PinSource};
use crate::telemetry::{AuditAction, AuditEvent, Requester};
use crate::upstream::TagPage;
use crate::walk::repos::{Listed, Repos};
use crate::walk::{Fanout, Limits, Runner, Stop};

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

/// [`Counts`] as the walk's tasks add to them.
#[derive(Default)]
struct Tally {
    repositories: AtomicU64,
    tags_seen: AtomicU64,
    adopted: AtomicU64,
    already_pinned: AtomicU64,
    skipped_mutable: AtomicU64,
    skipped_repositories: AtomicU64,
}

impl Tally {
    fn add(n: &AtomicU64, by: u64) {
        n.fetch_add(by, Ordering::Relaxed);
    }

    fn counts(&self) -> Counts {
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        Counts {
            repositories: get(&self.repositories),
            tags_seen: get(&self.tags_seen),
            adopted: get(&self.adopted),
            already_pinned: get(&self.already_pinned),
            skipped_mutable: get(&self.skipped_mutable),
            skipped_repositories: get(&self.skipped_repositories),
        }
    }
}

/// What every task of one seed needs.
struct Seed {
    app: Arc<App>,
    policy: Arc<Policy>,
    who: Requester,
    tally: Tally,
    limits: Limits,
}

/// Start a seed; the first catalog page is read first, so an upstream that refuses
/// tagpin's credentials is an error status rather than a stream that fails at once.
pub async fn start(admin: Arc<Admin>, scope: WalkScope, who: Requester) -> Result<Response<Body>, ProxyError> {
    let app = Arc::clone(&admin.app);
    let limits = Limits::new(super::concurrency(&app, &scope));
    let seed = Arc::new(Seed {
        policy: app.policy(),
        app,
        who,
        tally: Tally::default(),
        limits,
    });
    let (tx, body) = crate::body::channel(16);
    let (opened_tx, opened) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let app = Arc::clone(&seed.app);
        let mut repos = match &scope.repository {
            Some(r) => Repos::one(&app, r.clone()),
            None => Repos::catalog(&app, scope.after.as_ref()),
        };
        let opening = repos.open().await;
        let failed = opening.is_err();
        let _ = opened_tx.send(opening);
        if !failed {
            run(&seed, &mut repos, scope.after.clone(), &tx).await;
        }
    });
    opened
        .await
        .map_err(|_| ProxyError::Internal("the seed task ended before it started".into()))??;
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(resp)
}

/// Walk, then send the last line and log the outcome.
async fn run(seed: &Arc<Seed>, repos: &mut Repos<'_>, after: Option<Repository>, tx: &BodySender) {
    let mut runner = Runner::new(&seed.limits, after);
    let walked = walk(seed, repos, &mut runner, tx).await;
    if walked.is_err() {
        seed.limits.stop();
        runner.drain().await;
    }
    let counts = seed.tally.counts();
    let request_id = &seed.who.request_id;
    let resume = runner.after().map(Repository::as_str);
    let last = match walked {
        Ok(()) => json!({ "done": counts }),
        Err(Stop::Gone) => {
            tracing::info!(
                request_id,
                adopted = counts.adopted,
                after = resume,
                "seed interrupted: the client went away"
            );
            return;
        }
        Err(Stop::Failed(e)) => {
            tracing::warn!(request_id, error = %e, adopted = counts.adopted, after = resume, "seed failed");
            json!({ "error": e.to_string(), "after": resume })
        }
    };
    tracing::info!(
        request_id,
        repositories = counts.repositories,
        tags_seen = counts.tags_seen,
        adopted = counts.adopted,
        already_pinned = counts.already_pinned,
        skipped_mutable = counts.skipped_mutable,
        skipped_repositories = counts.skipped_repositories,
        concurrency = seed.limits.concurrency,
        "seed finished"
    );
    let _ = tx.send(line(&last)).await;
}

async fn walk(seed: &Arc<Seed>, repos: &mut Repos<'_>, runner: &mut Runner<()>, tx: &BodySender) -> Result<(), Stop> {
    let mut ticks = crate::walk::ticks();
    while let Some(step) = runner
        .step(repos, &mut ticks, |listed| seed_repository(Arc::clone(seed), listed))
        .await?
    {
        let current = match step {
            crate::walk::Step::Finished(f) => {
                f.result?;
                Some(f.repository)
            }
            crate::walk::Step::Tick => runner.oldest().cloned(),
        };
        progress(tx, &seed.tally.counts(), current.as_ref(), runner.after()).await?;
    }
    Ok(())
}

async fn progress(
    tx: &BodySender,
    counts: &Counts,
    current: Option<&Repository>,
    after: Option<&Repository>,
) -> Result<(), Stop> {
    let value = json!({"progress": {
        "repositories": counts.repositories,
        "tags_seen": counts.tags_seen,
        "adopted": counts.adopted,
        "already_pinned": counts.already_pinned,
        "skipped_mutable": counts.skipped_mutable,
        "skipped_repositories": counts.skipped_repositories,
        "current": current.map(Repository::as_str),
        "after": after.map(Repository::as_str),
    }});
    tx.send(line(&value)).await.map_err(|_| Stop::Gone)
}

/// One repository: its tag pages, and an adoption task for each protected tag the store
/// does not hold.
async fn seed_repository(seed: Arc<Seed>, listed: Listed) -> Result<(), Stop> {
    let mut tasks = Fanout::new(&seed.limits);
    let listed_all = list_and_adopt(&seed, &listed.repository, &mut tasks).await;
    // A task's failure says more than the stop it caused.
    tasks.finish().await.and(listed_all)
}

async fn list_and_adopt(seed: &Arc<Seed>, repo: &Repository, tasks: &mut Fanout<Stop>) -> Result<(), Stop> {
    let tally = &seed.tally;
    let mut pages = seed.app.upstream.own_tag_pages(repo);
    let mut known = false;
    loop {
        if seed.limits.stopped() {
            return Err(Stop::Gone);
        }
        let page = {
            let _permit = seed.limits.permit().await;
            pages.next_page().await?
        };
        let tags = match page {
            None => break,
            Some(TagPage::Tags(tags)) => tags,
            // A repository of blobs only has no tags to pin.
            Some(TagPage::Unknown) => {
                Tally::add(&tally.skipped_repositories, 1);
                return Ok(());
            }
            Some(TagPage::Challenge(resp)) => {
                return Err(crate::upstream::UpstreamError::OwnAuth(format!(
                    "the tag list of {repo} answered {}",
                    resp.status()
                ))
                .into())
            }
        };
        known = true;
        Tally::add(&tally.tags_seen, tags.len() as u64);
        let (protected, mutable): (Vec<Tag>, Vec<Tag>) =
            tags.into_iter().partition(|t| seed.policy.is_protected(repo, t));
        Tally::add(&tally.skipped_mutable, mutable.len() as u64);
        for batch in protected.chunks(crate::walk::LOOKUP_BATCH) {
            let free = crate::walk::free_tags(&seed.app, repo, batch).await?;
            Tally::add(&tally.already_pinned, (batch.len() - free.len()) as u64);
            for tag in free {
                let (seed, repo) = (Arc::clone(seed), repo.clone());
                if tasks
                    .spawn(async move { adopt(&seed, &repo, &tag).await })
                    .await
                    .is_err()
                {
                    return Err(Stop::Gone);
                }
            }
        }
    }
    if known {
        Tally::add(&tally.repositories, 1);
    }
    Ok(())
}

/// Adopt one tag under its lock, so no push decides it meanwhile.
async fn adopt(seed: &Seed, repo: &Repository, tag: &Tag) -> Result<(), Stop> {
    let (app, who, tally) = (&seed.app, &seed.who, &seed.tally);
    let _guard = app.locks.push(repo, std::slice::from_ref(tag)).await;
    let (r, t) = (repo.clone(), tag.clone());
    if app.store_call(move |s| s.state(&r, &t)).await?.is_some() {
        Tally::add(&tally.already_pinned, 1);
        return Ok(());
    }
    // The tag went away at the upstream between the listing and the check.
    let Some(digest) = app.upstream.own_tag_digest(repo, tag).await? else {
        return Ok(());
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
    .emit(app);
    Tally::add(&tally.adopted, 1);
    Ok(())
}
