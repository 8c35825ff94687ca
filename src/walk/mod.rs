//! Walking the upstream a page at a time with several requests in flight: the seed and
//! verify of the admin API (and the drift check), and the adoption of a repository's
//! tags before its first delete by digest.
//!
//! A walk holds one catalog page, and per repository in progress one tag-list page (or
//! one page of pins): never a whole repository's tag list, nor the whole result. Its
//! upstream requests take a permit of one [`Semaphore`] each (`walk_concurrency`, or
//! less when a request asks), so however many repositories and tags are in progress, at
//! most that many requests are in flight:
//! - [`Fanout`] runs one task per tag, each holding a permit;
//! - [`Runner`] walks several repositories at once and keeps, in [`Window`], the last
//!   repository that is done with every one before it: where an interrupted walk resumes.
//!
//! A walk that stops (its client went away, an upstream request failed) starts nothing
//! new and lets what is in flight finish, so each adoption it began is written (one
//! atomic store write under the tag's lock) and audited, never cut between the two.

pub mod repos;
mod window;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::{JoinError, JoinSet};

pub use self::window::Window;
use crate::app::App;
use crate::error::ProxyError;
use crate::oci::{Repository, Tag};

/// Why a walk stopped early.
#[derive(Debug)]
pub enum Stop {
    /// The client went away; what was done stays done.
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

impl From<JoinError> for Stop {
    fn from(e: JoinError) -> Self {
        Self::Failed(task_failed(e))
    }
}

/// A walk task that panicked (or was cancelled) as an error of the walk.
pub fn task_failed(e: JoinError) -> ProxyError {
    ProxyError::Internal(format!("a walk task failed: {e}"))
}

/// What every part of one walk shares: the permits for its upstream requests, and the
/// signal to start nothing new.
#[derive(Clone)]
pub struct Limits {
    permits: Arc<Semaphore>,
    stopped: Arc<AtomicBool>,
    /// Upstream requests in flight at most (the permits).
    pub concurrency: usize,
}

impl Limits {
    /// At most `concurrency` (at least one) upstream requests in flight.
    pub fn new(concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            permits: Arc::new(Semaphore::new(concurrency)),
            stopped: Arc::new(AtomicBool::new(false)),
            concurrency,
        }
    }

    /// A permit for one upstream request (held until dropped).
    pub async fn permit(&self) -> tokio::sync::OwnedSemaphorePermit {
        Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("a walk's semaphore is never closed")
    }

    /// Start nothing new: tasks in flight finish, no more are spawned.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }
}

/// One task per item (a tag), each holding a permit of the walk while it runs. The
/// first failure is kept; after it, [`Fanout::spawn`] refuses more and the caller ends
/// with [`Fanout::finish`], which waits for the tasks in flight.
pub struct Fanout<E> {
    limits: Limits,
    tasks: JoinSet<Result<(), E>>,
    failed: Option<E>,
}

impl<E: From<JoinError> + Send + 'static> Fanout<E> {
    pub fn new(limits: &Limits) -> Self {
        Self {
            limits: limits.clone(),
            tasks: JoinSet::new(),
            failed: None,
        }
    }

    /// Run `task` once a permit is free. `Err(())` once a task has failed or the walk
    /// was stopped: spawn no more, call [`Fanout::finish`].
    #[allow(clippy::result_unit_err, reason = "the failure itself is kept for finish")]
    pub async fn spawn<F>(&mut self, task: F) -> Result<(), ()>
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        self.reap();
        if self.failed.is_some() || self.limits.stopped() {
            return Err(());
        }
        let permit = self.limits.permit().await;
        self.tasks.spawn(async move {
            let _permit = permit;
            task.await
        });
        Ok(())
    }

    /// Collect what finished, keeping the first failure (finished tasks would otherwise
    /// pile up in the set).
    fn reap(&mut self) {
        while let Some(done) = self.tasks.try_join_next() {
            self.keep(done);
        }
    }

    fn keep(&mut self, done: Result<Result<(), E>, JoinError>) {
        let failure = match done {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(e) => E::from(e),
        };
        if self.failed.is_none() {
            self.failed = Some(failure);
        }
    }

    /// Wait for every task; the first failure, if any.
    pub async fn finish(mut self) -> Result<(), E> {
        while let Some(done) = self.tasks.join_next().await {
            self.keep(done);
        }
        match self.failed {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

/// Tags looked up in the store per call: one blocking call per batch, not per tag.
pub const LOOKUP_BATCH: usize = 512;

/// The tags of `batch` with neither pin nor claim, in one store call.
pub async fn free_tags(app: &App, repo: &Repository, batch: &[Tag]) -> Result<Vec<Tag>, ProxyError> {
    let (r, batch) = (repo.clone(), batch.to_vec());
    app.store_call(move |s| {
        let mut free = Vec::new();
        for t in batch {
            if s.state(&r, &t)?.is_none() {
                free.push(t);
            }
        }
        Ok(free)
    })
    .await
}

/// Progress lines come at least this often while repositories are walked.
pub const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The timer of a walk's progress lines: the first one after [`PROGRESS_EVERY`].
pub fn ticks() -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// What a [`Runner::step`] saw.
pub enum Step<T> {
    /// A repository's walk finished.
    Finished(Finished<T>),
    /// Time for a progress line.
    Tick,
}

/// A repository's walk that finished, and where a walk resumes now.
pub struct Finished<T> {
    pub repository: Repository,
    pub result: Result<T, Stop>,
    /// The last repository that is done with every one before it.
    pub after: Option<Repository>,
}

/// Several repositories walked at once, each as a task of its own: at most
/// `concurrency` at a time, and at most [`Runner::MAX_WINDOW`] started and not yet part
/// of the resume point, so a slow repository holds back neither memory nor, past that
/// many, the resume point by more.
pub struct Runner<T> {
    jobs: JoinSet<Result<T, Stop>>,
    /// Every repository has been started.
    listed: bool,
    /// Each job's place in the window and its repository.
    started: HashMap<tokio::task::Id, (u64, Repository)>,
    window: Window,
    concurrency: usize,
}

impl<T: Send + 'static> Runner<T> {
    /// Repositories started and not yet covered by the resume point, at most.
    pub const MAX_WINDOW: usize = 256;

    pub fn new(limits: &Limits, after: Option<Repository>) -> Self {
        Self {
            jobs: JoinSet::new(),
            listed: false,
            started: HashMap::new(),
            window: Window::new(after),
            concurrency: limits.concurrency,
        }
    }

    /// Whether another repository may start now.
    pub fn has_room(&self) -> bool {
        self.jobs.len() < self.concurrency && self.window.len() < Self::MAX_WINDOW
    }

    /// The oldest repository still being walked.
    pub fn oldest(&self) -> Option<&Repository> {
        self.window.oldest_open()
    }

    pub fn start<F>(&mut self, repository: Repository, job: F)
    where
        F: Future<Output = Result<T, Stop>> + Send + 'static,
    {
        let seq = self.window.open(repository.clone());
        let id = self.jobs.spawn(job).id();
        self.started.insert(id, (seq, repository));
    }

    /// The next repository whose walk finished; `None` when none is running. A job that
    /// failed (or panicked) leaves its repository open: the resume point never passes it.
    pub async fn next(&mut self) -> Option<Finished<T>> {
        let (id, result) = match self.jobs.join_next_with_id().await? {
            Ok((id, result)) => (id, result),
            Err(e) => (e.id(), Err(Stop::from(e))),
        };
        let (seq, repository) = self.started.remove(&id).expect("every job is recorded when started");
        if result.is_ok() {
            self.window.close(seq);
        }
        Some(Finished {
            repository,
            result,
            after: self.window.after().cloned(),
        })
    }

    /// Start repositories from `repos` (each as `job(listed)`) while there is room, then
    /// wait for one to finish or for the next tick; `None` once every repository is done.
    pub async fn step<F, Fut>(
        &mut self,
        repos: &mut repos::Repos<'_>,
        ticks: &mut tokio::time::Interval,
        mut job: F,
    ) -> Result<Option<Step<T>>, Stop>
    where
        F: FnMut(repos::Listed) -> Fut,
        Fut: Future<Output = Result<T, Stop>> + Send + 'static,
    {
        while !self.listed && self.has_room() {
            match repos.next().await? {
                Some(listed) => {
                    let repository = listed.repository.clone();
                    self.start(repository, job(listed));
                }
                None => self.listed = true,
            }
        }
        if self.jobs.is_empty() {
            return Ok(None);
        }
        tokio::select! {
            finished = self.next() => Ok(finished.map(Step::Finished)),
            _ = ticks.tick() => Ok(Some(Step::Tick)),
        }
    }

    /// The last repository that is done with every one before it.
    pub fn after(&self) -> Option<&Repository> {
        self.window.after()
    }

    /// Wait for every repository in progress (after a stop), whatever their results.
    pub async fn drain(&mut self) {
        while self.next().await.is_some() {}
    }
}
