//! Before a delete by digest: adopt every protected tag of the repository that the
//! upstream holds and the store does not (tags that predate tagpin), and record what each
//! pinned manifest references, so the delete is decided against all of them, not only
//! those seen before.
//!
//! For a repository with many tags this is the slow part of its first delete: one
//! upstream check per tag. It reads the tag list a page at a time (as the upstream pages
//! it), keeps at most `walk_concurrency` checks in flight ([`crate::walk`]), logs its
//! progress every [`LOG_EVERY`] tags, and runs as a detached task of its own
//! ([`App::detach`]): a client that goes away does not stop it, and its adoptions are
//! recorded whoever waits. The request waits for it at most `timeouts.adoption_wait_ms`;
//! past that it is answered `503 UNAVAILABLE` with `Retry-After` and nothing is deleted,
//! while the adoption goes on. A delete that arrives while its repository is being
//! adopted waits for that adoption ([`crate::locks::DecisionLocks::adoption`]) and then
//! finds the tags pinned: a store lookup each, no upstream check.
//!
//! No lock is held for the listing, and each tag is adopted under its own push lock, so
//! the adoption does not stall the repository's pushes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::{header, HeaderMap, Response};
use hyper::body::Incoming;
use tokio::task::JoinError;

use crate::app::App;
use crate::error::ProxyError;
use crate::oci::{Repository, Tag};
use crate::telemetry::Requester;
use crate::upstream::{TagPage, UpstreamError};
use crate::walk::{Fanout, Limits};

/// A progress line in the log every this many tags of one repository.
pub const LOG_EVERY: u64 = 1000;

/// Adopt and protect `repo`'s tags for a delete by digest (see the module doc).
/// `Err(response)` when the upstream wants credentials the client did not send.
pub async fn before_digest_delete(
    app: &Arc<App>,
    repo: &Repository,
    headers: &HeaderMap,
    who: &Requester,
) -> Result<Result<(), Response<Incoming>>, ProxyError> {
    let request_id = who.request_id.clone();
    let (r, headers, who) = (repo.clone(), Arc::new(headers.clone()), who.clone());
    let task = app.detach(move |app| async move {
        let _one_at_a_time = app.locks.adoption(&r).await;
        if let Err(challenge) = adopt_repository(&app, &r, &headers, &who).await? {
            return Ok(Err(challenge));
        }
        super::refs::protect_repository(&app, &r, &headers).await
    })?;
    let waited = app.config.timeouts.adoption_wait;
    match tokio::time::timeout(waited, task).await {
        Ok(joined) => joined.map_err(crate::walk::task_failed)?,
        Err(_) => {
            tracing::info!(request_id, repository = %repo, waited = ?waited, "a delete by digest stopped waiting for its repository's adoption, which goes on");
            Err(ProxyError::AdoptionRunning {
                repo: repo.clone(),
                waited,
            })
        }
    }
}

/// Why an adoption stopped.
enum Halt {
    Challenge(Response<Incoming>),
    Failed(ProxyError),
}

impl From<ProxyError> for Halt {
    fn from(e: ProxyError) -> Self {
        Self::Failed(e)
    }
}

impl From<UpstreamError> for Halt {
    fn from(e: UpstreamError) -> Self {
        Self::Failed(e.into())
    }
}

impl From<JoinError> for Halt {
    fn from(e: JoinError) -> Self {
        Self::Failed(crate::walk::task_failed(e))
    }
}

/// Tags of one repository so far, for the log.
struct Tally {
    repo: Repository,
    request_id: String,
    listed: AtomicU64,
    done: AtomicU64,
    checked: AtomicU64,
}

impl Tally {
    /// `n` more tags done: a progress line each time the count passes a multiple of
    /// [`LOG_EVERY`].
    fn done(&self, n: u64) {
        let before = self.done.fetch_add(n, Ordering::Relaxed);
        if (before + n) / LOG_EVERY > before / LOG_EVERY {
            tracing::info!(
                request_id = %self.request_id,
                repository = %self.repo,
                done = before + n,
                listed = self.listed.load(Ordering::Relaxed),
                checked_upstream = self.checked.load(Ordering::Relaxed),
                "adopting the tags of a repository before a delete by digest"
            );
        }
    }
}

/// Adopt every protected tag of `repo` that the upstream holds and the store does not.
async fn adopt_repository(
    app: &Arc<App>,
    repo: &Repository,
    headers: &Arc<HeaderMap>,
    who: &Requester,
) -> Result<Result<(), Response<Incoming>>, ProxyError> {
    let started = std::time::Instant::now();
    let limits = Limits::new(app.config.walk_concurrency);
    let tally = Arc::new(Tally {
        repo: repo.clone(),
        request_id: who.request_id.clone(),
        listed: AtomicU64::new(0),
        done: AtomicU64::new(0),
        checked: AtomicU64::new(0),
    });
    let mut tasks = Fanout::new(&limits);
    let listed = list_and_adopt(app, repo, headers, who, &limits, &tally, &mut tasks).await;
    let outcome = tasks.finish().await.and(listed);
    let (listed, checked) = (
        tally.listed.load(Ordering::Relaxed),
        tally.checked.load(Ordering::Relaxed),
    );
    if checked > 0 {
        tracing::info!(request_id = %who.request_id, repository = %repo, listed, checked_upstream = checked, concurrency = limits.concurrency, took = ?started.elapsed(), ok = outcome.is_ok(), "adopted the tags of a repository before a delete by digest");
    }
    match outcome {
        Ok(()) => Ok(Ok(())),
        Err(Halt::Challenge(resp)) => Ok(Err(resp)),
        Err(Halt::Failed(e)) => Err(e),
    }
}

async fn list_and_adopt(
    app: &Arc<App>,
    repo: &Repository,
    headers: &Arc<HeaderMap>,
    who: &Requester,
    limits: &Limits,
    tally: &Arc<Tally>,
    tasks: &mut Fanout<Halt>,
) -> Result<(), Halt> {
    let policy = app.policy();
    // With tagpin's own credentials when it has them, so a client credential that may
    // push but not read cannot make a tag that predates tagpin look free.
    let own = app.config.upstream_credentials.is_some();
    let mut pages = if own {
        app.upstream.own_tag_pages(repo)
    } else {
        app.upstream.tag_pages(repo, headers.get(header::AUTHORIZATION))
    };
    loop {
        let page = {
            let _permit = limits.permit().await;
            pages.next_page().await?
        };
        let tags = match page {
            None | Some(TagPage::Unknown) => return Ok(()),
            Some(TagPage::Tags(tags)) => tags,
            Some(TagPage::Challenge(resp)) if own => {
                let e = UpstreamError::OwnAuth(format!("the tag list of {repo} answered {}", resp.status()));
                return Err(e.into());
            }
            Some(TagPage::Challenge(resp)) => return Err(Halt::Challenge(resp)),
        };
        tally.listed.fetch_add(tags.len() as u64, Ordering::Relaxed);
        let protected: Vec<Tag> = tags.into_iter().filter(|t| policy.is_protected(repo, t)).collect();
        for batch in protected.chunks(crate::walk::LOOKUP_BATCH) {
            let free = crate::walk::free_tags(app, repo, batch).await?;
            tally.done((batch.len() - free.len()) as u64);
            for tag in free {
                let (app, repo, headers, who, tally) = (
                    Arc::clone(app),
                    repo.clone(),
                    Arc::clone(headers),
                    who.clone(),
                    Arc::clone(tally),
                );
                let task = async move {
                    let _guard = app.locks.push(&repo, std::slice::from_ref(&tag)).await;
                    tally.checked.fetch_add(1, Ordering::Relaxed);
                    let held = super::pins::held(&app, &repo, &tag, &headers, &who, None).await;
                    tally.done(1);
                    match held? {
                        Ok(_) => Ok(()),
                        Err(challenge) => Err(Halt::Challenge(challenge)),
                    }
                };
                if tasks.spawn(task).await.is_err() {
                    // A task failed: `finish` reports it.
                    return Ok(());
                }
            }
        }
    }
}
