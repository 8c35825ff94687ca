//! `GET /admin/v1/verify[?repository=R | ?after=R][&concurrency=N][&format=ndjson]`:
//! does the upstream still hold what tagpin pinned? Each pin against a HEAD of its tag
//! at the upstream, with tagpin's own credentials: `same`, `moved` (someone wrote to the
//! upstream past tagpin) or `missing` (deleted there). Protected tags the upstream holds
//! and tagpin has no pin for are counted as `unpinned` (a seed would adopt them), and the
//! first [`MAX_UNPINNED_LISTED`] of them are named.
//!
//! The walk ([`crate::walk`]) goes repository by repository through the catalog merged
//! with the repositories the store holds pins in, a page at a time (of the catalog, of
//! each tag list, of each repository's pins), with at most `concurrency` upstream
//! requests in flight. What it finds is streamed as it is found ([`answer`]), never
//! gathered whole, and a progress line's `after` is where an interrupted verify resumes.
//!
//! A claim without a pin is a push in flight, not a pin to check; it is left out (and
//! its tag is not unpinned either). The periodic drift check ([`super::drift`]) runs
//! the same walk through [`check`]; a requested verify only answers, it sets no gauge
//! and emits no audit event (it changes nothing). Any upstream failure fails the whole
//! verify: a report on part of the pins would read as "the rest is fine".

mod answer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc;

pub use self::answer::verify;
use super::routes::WalkScope;
use crate::app::App;
use crate::error::ProxyError;
use crate::metrics::DriftCounts;
use crate::oci::{Digest, Repository, Tag};
use crate::policy::Policy;
use crate::store::TagState;
use crate::upstream::{TagPage, UpstreamError};
use crate::walk::repos::{Listed, Repos};
use crate::walk::{Fanout, Limits, Runner, Step, Stop};

/// Pins read from the store per page.
const PAGE: usize = 1000;

/// How a pinned tag stands at the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Drift {
    Same,
    Moved,
    Missing,
}

/// One pinned tag, checked.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    pub repository: Repository,
    pub tag: Tag,
    pub pinned_digest: Digest,
    pub upstream_digest: Option<Digest>,
    pub state: Drift,
}

/// A protected tag the upstream holds that tagpin has no pin for.
#[derive(Debug, Clone, Serialize)]
pub struct Unpinned {
    pub repository: Repository,
    pub tag: Tag,
}

/// Unpinned tags named in a report; `counts.unpinned` counts them all.
pub const MAX_UNPINNED_LISTED: usize = 100;

/// A drift check's findings: the pins that are not the same at the upstream, the
/// counts, and the first [`MAX_UNPINNED_LISTED`] unpinned tags.
#[derive(Debug, Clone)]
pub struct Report {
    pub tags: Vec<Checked>,
    pub counts: DriftCounts,
    pub unpinned: Vec<Unpinned>,
}

/// How far a verify got.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// Repositories done.
    pub repositories: u64,
    pub same: u64,
    pub moved: u64,
    pub missing: u64,
    pub unpinned: u64,
    /// A repository just done, or the oldest one still being walked.
    pub current: Option<Repository>,
    /// The last repository done with every one before it: where to resume.
    pub after: Option<Repository>,
}

/// The end of a verify that went through.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub counts: DriftCounts,
    pub repositories: u64,
}

/// What a verify finds, in the order it finds it; the last is `Done` or `Failed`.
#[derive(Debug)]
pub enum Found {
    Checked(Checked),
    Unpinned(Unpinned),
    Progress(Progress),
    Done(Summary),
    Failed {
        error: ProxyError,
        after: Option<Repository>,
    },
}

#[derive(Default)]
struct Tally {
    repositories: AtomicU64,
    same: AtomicU64,
    moved: AtomicU64,
    missing: AtomicU64,
    unpinned: AtomicU64,
}

impl Tally {
    fn add(n: &AtomicU64) -> u64 {
        n.fetch_add(1, Ordering::Relaxed)
    }

    fn counts(&self) -> DriftCounts {
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        DriftCounts {
            same: get(&self.same),
            moved: get(&self.moved),
            missing: get(&self.missing),
            unpinned: get(&self.unpinned),
        }
    }

    fn progress(&self, current: Option<Repository>, after: Option<Repository>) -> Progress {
        let c = self.counts();
        Progress {
            repositories: self.repositories.load(Ordering::Relaxed),
            same: c.same,
            moved: c.moved,
            missing: c.missing,
            unpinned: c.unpinned,
            current,
            after,
        }
    }
}

/// What every task of one verify shares.
struct Verifier {
    app: Arc<App>,
    policy: Arc<Policy>,
    tally: Tally,
    limits: Limits,
    found: mpsc::Sender<Found>,
}

impl Verifier {
    async fn report(&self, found: Found) -> Result<(), Stop> {
        self.found.send(found).await.map_err(|_| Stop::Gone)
    }
}

/// A verify under way: what it finds arrives on `found`. Dropping it ends the walk.
pub struct Walk {
    pub found: mpsc::Receiver<Found>,
    task: tokio::task::AbortHandle,
}

impl Drop for Walk {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start a verify of `scope`. The first catalog page is read before this returns, so an
/// upstream that refuses tagpin's credentials is an error here rather than in the stream.
pub async fn start(app: Arc<App>, scope: &WalkScope) -> Result<Walk, ProxyError> {
    let (found, rx) = mpsc::channel(256);
    let v = Arc::new(Verifier {
        policy: app.policy(),
        limits: Limits::new(super::concurrency(&app, scope)),
        app,
        tally: Tally::default(),
        found,
    });
    let (opened_tx, opened) = tokio::sync::oneshot::channel();
    let scope = scope.clone();
    let task = tokio::spawn(async move {
        let app = Arc::clone(&v.app);
        let mut repos = match &scope.repository {
            Some(r) => Repos::one(&app, r.clone()),
            None => Repos::catalog_and_store(&app, scope.after.as_ref()),
        };
        let opening = repos.open().await;
        let failed = opening.is_err();
        let _ = opened_tx.send(opening);
        if failed {
            return;
        }
        let mut runner = Runner::new(&v.limits, scope.after.clone());
        let walked = walk(&v, &mut repos, &mut runner).await;
        if walked.is_err() {
            v.limits.stop();
            runner.drain().await;
        }
        let last = match walked {
            Ok(()) => Found::Done(Summary {
                counts: v.tally.counts(),
                repositories: v.tally.repositories.load(Ordering::Relaxed),
            }),
            Err(Stop::Gone) => return,
            Err(Stop::Failed(error)) => Found::Failed {
                error,
                after: runner.after().cloned(),
            },
        };
        let _ = v.report(last).await;
    });
    let walk = Walk {
        found: rx,
        task: task.abort_handle(),
    };
    opened
        .await
        .map_err(|_| ProxyError::Internal("the verify task ended before it started".into()))??;
    Ok(walk)
}

/// Every pin against the upstream, for the drift check: only what is not the same is
/// kept.
pub async fn check(app: Arc<App>) -> Result<Report, ProxyError> {
    let mut walk = start(app, &WalkScope::default()).await?;
    let mut report = Report {
        tags: Vec::new(),
        counts: DriftCounts::default(),
        unpinned: Vec::new(),
    };
    while let Some(found) = walk.found.recv().await {
        match found {
            Found::Checked(c) if c.state != Drift::Same => report.tags.push(c),
            Found::Checked(_) | Found::Progress(_) => {}
            Found::Unpinned(u) => report.unpinned.push(u),
            Found::Done(s) => {
                report.counts = s.counts;
                return Ok(report);
            }
            Found::Failed { error, .. } => return Err(error),
        }
    }
    Err(ProxyError::Internal("the verify walk ended without a result".into()))
}

async fn walk(v: &Arc<Verifier>, repos: &mut Repos<'_>, runner: &mut Runner<()>) -> Result<(), Stop> {
    let mut ticks = crate::walk::ticks();
    while let Some(step) = runner
        .step(repos, &mut ticks, |listed| verify_repository(Arc::clone(v), listed))
        .await?
    {
        let current = match step {
            Step::Finished(f) => {
                f.result?;
                Some(f.repository)
            }
            Step::Tick => runner.oldest().cloned(),
        };
        let after = runner.after().cloned();
        v.report(Found::Progress(v.tally.progress(current, after))).await?;
    }
    Ok(())
}

/// One repository: each of its pins against the upstream, then its tags at the upstream
/// against the store.
async fn verify_repository(v: Arc<Verifier>, listed: Listed) -> Result<(), Stop> {
    let mut tasks = Fanout::new(&v.limits);
    let walked = check_repository(&v, &listed, &mut tasks).await;
    tasks.finish().await.and(walked)?;
    Tally::add(&v.tally.repositories);
    Ok(())
}

async fn check_repository(v: &Arc<Verifier>, listed: &Listed, tasks: &mut Fanout<Stop>) -> Result<(), Stop> {
    let repo = &listed.repository;
    if listed.in_store {
        let mut after: Option<(Repository, Tag)> = None;
        loop {
            if v.limits.stopped() {
                return Err(Stop::Gone);
            }
            let (r, a) = (repo.clone(), after.take());
            let page = v.app.store_call(move |s| s.list(Some(&r), a.as_ref(), PAGE)).await?;
            let full = page.len() == PAGE;
            after = page.last().map(|(r, t, _)| (r.clone(), t.clone()));
            for (repository, tag, state) in page {
                let pinned = match state {
                    TagState::Pinned(p) | TagState::Advancing { pin: p, .. } => p.digest,
                    TagState::Claimed(_) => continue,
                };
                let v = Arc::clone(v);
                let task = async move { check_pin(&v, repository, tag, pinned).await };
                if tasks.spawn(task).await.is_err() {
                    return Err(Stop::Gone);
                }
            }
            if !full {
                break;
            }
        }
    }
    if listed.in_catalog {
        let mut pages = v.app.upstream.own_tag_pages(repo);
        loop {
            if v.limits.stopped() {
                return Err(Stop::Gone);
            }
            let page = {
                let _permit = v.limits.permit().await;
                pages.next_page().await?
            };
            let tags = match page {
                Some(TagPage::Tags(tags)) => tags,
                // A repository of blobs only has no tags to pin.
                None | Some(TagPage::Unknown) => break,
                Some(TagPage::Challenge(resp)) => {
                    let e = UpstreamError::OwnAuth(format!("the tag list of {repo} answered {}", resp.status()));
                    return Err(e.into());
                }
            };
            let protected: Vec<Tag> = tags.into_iter().filter(|t| v.policy.is_protected(repo, t)).collect();
            for batch in protected.chunks(crate::walk::LOOKUP_BATCH) {
                for tag in crate::walk::free_tags(&v.app, repo, batch).await? {
                    if Tally::add(&v.tally.unpinned) < MAX_UNPINNED_LISTED as u64 {
                        let repository = repo.clone();
                        v.report(Found::Unpinned(Unpinned { repository, tag })).await?;
                    }
                }
            }
        }
    }
    Ok(())
}

async fn check_pin(v: &Verifier, repository: Repository, tag: Tag, pinned_digest: Digest) -> Result<(), Stop> {
    let upstream_digest = v.app.upstream.own_tag_digest(&repository, &tag).await?;
    let state = match &upstream_digest {
        Some(d) if *d == pinned_digest => Drift::Same,
        Some(_) => Drift::Moved,
        None => Drift::Missing,
    };
    Tally::add(match state {
        Drift::Same => &v.tally.same,
        Drift::Moved => &v.tally.moved,
        Drift::Missing => &v.tally.missing,
    });
    v.report(Found::Checked(Checked {
        repository,
        tag,
        pinned_digest,
        upstream_digest,
        state,
    }))
    .await
}
