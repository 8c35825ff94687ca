//! The state request handlers see: [`Shared`] by every worker (config, pin store, locks,
//! policy, connection limit, manifest memory budget), plus each worker's own upstream
//! client in [`App`].

use std::future::Future;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Response;
use tokio::sync::{Notify, Semaphore};

use crate::body::Body;

use crate::config::Config;
use crate::error::ProxyError;
use crate::locks::DecisionLocks;
use crate::policy::Policy;
use crate::store::{PinStore, SledStore, StoreError, UnavailableStore};
use crate::upstream::{Upstream, UpstreamError};

/// State shared by all workers. Everything here is thread-safe and runtime-agnostic: the
/// decision locks in particular must be one set for the whole process.
pub struct Shared {
    pub config: Config,
    /// Signs the history log's checkpoints.
    pub log_signer: crate::log::Signer,
    pub store: Arc<dyn PinStore>,
    /// The policy in force; replaced whole by a SIGHUP reload. A request takes one
    /// snapshot ([`Shared::policy`]) and decides by it throughout.
    policy: std::sync::RwLock<Arc<Policy>>,
    pub locks: DecisionLocks,
    /// One permit per open client connection, across all workers.
    pub connections: Arc<Semaphore>,
    /// Size limit, deadline and the one memory budget of manifest bodies, across all
    /// workers: a per-worker budget would multiply with `workers`.
    pub manifest_limits: crate::manifest::Limits,
    /// Counters and gauges for `GET /metrics`.
    pub metrics: crate::metrics::Metrics,
    /// Webhook targets and the queue to the outbox.
    pub notify: crate::notify::Notifier,
    /// The last `/readyz` answer, one probe per second for all workers together.
    pub readiness: crate::readiness::ReadyCache,
    /// Missing pinned manifests and read drift already reported.
    pub read_reports: crate::handler::ReadReports,
    /// The listener's TLS, when a certificate is configured.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Decisions running as detached tasks, so shutdown can let them finish.
    pub detached: Detached,
    upstream_tls: rustls::ClientConfig,
    /// Whether the upstream was caught sending unsolicited responses (no more reuse).
    upstream_unsolicited: crate::upstream::Unsolicited,
    request_seq: AtomicU64,
    request_prefix: String,
}

/// One worker's view: the shared state plus an upstream client whose connection pool
/// lives on the worker's own runtime.
pub struct App {
    shared: Arc<Shared>,
    pub upstream: Upstream,
}

/// `App` reads as the shared state it extends; only `upstream` is the worker's own.
impl Deref for App {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

/// What can stop tagpin from starting at all.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("policy: {0}")]
    Policy(#[from] crate::policy::rules::GlobError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::server::tls::TlsError),
    #[error("{0}")]
    Store(StoreError),
    #[error("log_signing_key: {0}")]
    LogKey(String),
    #[error("cannot start worker {worker}: {source}")]
    Worker { worker: usize, source: std::io::Error },
}

impl Shared {
    /// Build the shared state. A store that cannot be opened does not stop tagpin: reads
    /// by digest keep flowing, every write that needs a decision and every pull by a
    /// protected tag is refused with 503 (fail closed), and `/readyz` says so.
    pub fn new(config: Config) -> Result<Self, StartError> {
        if let Some(db) = &config.database {
            // A database that cannot be reached does not stop tagpin (it fails closed and
            // recovers by itself); one holding a newer schema does.
            let store = crate::store::PgStore::open_tls(db.config.clone(), db.tls.clone())
                .map_err(StartError::Store)?
                .for_in_doubt_horizon(config.in_doubt_horizon);
            tracing::info!(database = %db.display, sslmode = db.tls.mode().as_str(), "pin store: PostgreSQL");
            return Self::with_store(config, Arc::new(store));
        }
        let dir = config.data_dir.clone();
        let started = std::time::Instant::now();
        let opened = move |s: &SledStore, result: Result<(), StoreError>| match result {
            Ok(()) => {
                // Nothing here walks the pins: the log's head is one record.
                let log_entries = s.log_head().map(|h| h.size()).unwrap_or(0);
                let opened_ms = started.elapsed().as_millis() as u64;
                tracing::info!(data_dir = %dir.display(), log_entries, claims = s.claim_count(), opened_ms, "pin store opened");
            }
            Err(e) => {
                tracing::error!(data_dir = %dir.display(), error = %e, "pin store unavailable: refusing every write that needs a decision");
            }
        };
        let store: Arc<dyn PinStore> = match SledStore::open_in_background(
            &config.data_dir,
            config.store_cache_bytes,
            opened,
        ) {
            Ok(s) => s,
            // Two processes on one data dir would each decide without seeing the other's
            // locks: refuse to start rather than serve beside it.
            Err(e @ StoreError::Locked(_)) => return Err(StartError::Store(e)),
            Err(e) => {
                tracing::error!(data_dir = %config.data_dir.display(), error = %e, "pin store unavailable: refusing every write that needs a decision");
                Arc::new(UnavailableStore { reason: e.to_string() })
            }
        };
        Self::with_store(config, store)
    }

    pub fn with_store(config: Config, store: Arc<dyn PinStore>) -> Result<Self, StartError> {
        let policy = Policy::new(&config.exclude, config.rules.as_deref())?;
        let tls = Upstream::tls_config(&config)?;
        let listener_tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(crate::server::tls::acceptor(cert, key)?),
            _ => None,
        };
        // Nanoseconds and the pid: two processes started within the same second (a crash
        // loop) must not hand out the same request ids, which claims are keyed by.
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (u64::from(std::process::id()) << 48);
        let manifest_limits = crate::manifest::Limits {
            max_bytes: config.max_manifest_bytes,
            deadline: config.timeouts.manifest_body,
            budget: crate::manifest::Budget::new(
                config.manifest_memory_budget_bytes,
                config.manifest_memory_per_client_bytes,
                config.timeouts.manifest_budget_wait,
            ),
        };
        let key = config
            .log
            .signing_key
            .as_ref()
            .map(|k| crate::log::SigningKey::parse(&k.0))
            .transpose()
            .map_err(StartError::LogKey)?;
        let log_signer = crate::log::Signer::new(key, config.log.origin.clone());
        Ok(Self {
            log_signer,
            connections: Arc::new(Semaphore::new(config.max_connections)),
            manifest_limits,
            tls: listener_tls,
            metrics: crate::metrics::Metrics::default(),
            notify: crate::notify::Notifier::new(&config, tls.clone()),
            readiness: crate::readiness::ReadyCache::default(),
            read_reports: crate::handler::ReadReports::default(),
            config,
            store,
            policy: std::sync::RwLock::new(Arc::new(policy)),
            locks: DecisionLocks::default(),
            detached: Detached::default(),
            upstream_tls: tls,
            upstream_unsolicited: Default::default(),
            request_seq: AtomicU64::new(0),
            request_prefix: format!("{started:x}"),
        })
    }

    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        // A poisoned lock only means a reload panicked; the policy in it is whole.
        Arc::clone(&self.policy.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Put `policy` in force for every request that starts from now on.
    pub fn set_policy(&self, policy: Policy) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
    }

    /// The scheme clients use to reach this listener, for `X-Forwarded-Proto` and for
    /// rewriting upload locations.
    pub fn client_proto(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// A request id unique within this process's lifetime and across restarts.
    pub fn next_request_id(&self) -> String {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        // Every request gets one: written by hand rather than through `format!`, which
        // costs more than the rest of a request id's life.
        let mut id = String::with_capacity(self.request_prefix.len() + 17);
        id.push_str(&self.request_prefix);
        id.push('-');
        push_hex(&mut id, n);
        id
    }

    /// Apply a transition of [`crate::pinning`] to the records of `tags`, atomically and
    /// durably ([`PinStore::update`]), with the store's clock and the in-doubt horizon;
    /// returns what the transition returned.
    pub async fn transition<T, F>(
        &self,
        repo: &crate::oci::Repository,
        tags: &[crate::oci::Tag],
        f: F,
    ) -> Result<T, ProxyError>
    where
        T: Send + 'static,
        F: FnMut(crate::pinning::Clock, &mut [crate::store::TagRecord]) -> T + Send + 'static,
    {
        self.transition_as(StoreWrite::Durable, repo, tags, f).await
    }

    /// [`App::transition`], written as `how` says.
    pub async fn transition_as<T, F>(
        &self,
        how: StoreWrite,
        repo: &crate::oci::Repository,
        tags: &[crate::oci::Tag],
        mut f: F,
    ) -> Result<T, ProxyError>
    where
        T: Send + 'static,
        F: FnMut(crate::pinning::Clock, &mut [crate::store::TagRecord]) -> T + Send + 'static,
    {
        let horizon = self.config.in_doubt_horizon.as_secs();
        let (r, t) = (repo.clone(), tags.to_vec());
        self.store_call(move |s| {
            let mut out = None;
            let mut change = |now, records: &mut [crate::store::TagRecord]| {
                out = Some(f(crate::pinning::Clock { now, horizon }, records));
            };
            match &how {
                StoreWrite::Durable => s.update(&r, &t, &mut change)?,
                StoreWrite::Protecting(refs) => s.update_protecting(&r, &t, refs, &mut change)?,
                StoreWrite::Settling => s.confirm(&r, &t, &mut change)?,
            };
            Ok(out.expect("a store update runs its change at least once"))
        })
        .await
    }

    /// [`App::transition_as`], with the webhook events and timers `events_of` makes of the
    /// change's result appended in the same atomic write: a decision on record is never
    /// without its events.
    pub async fn transition_notifying<T, F, N>(
        &self,
        how: StoreWrite,
        repo: &crate::oci::Repository,
        tags: &[crate::oci::Tag],
        mut f: F,
        events_of: N,
    ) -> Result<T, ProxyError>
    where
        T: Send + 'static,
        F: FnMut(crate::pinning::Clock, &mut [crate::store::TagRecord]) -> T + Send + 'static,
        N: Fn(&T) -> (Vec<crate::store::OutboxEvent>, Vec<crate::store::Timer>) + Send + 'static,
    {
        use crate::store::{Notifying, WriteKind};
        let horizon = self.config.in_doubt_horizon.as_secs();
        let (r, t) = (repo.clone(), tags.to_vec());
        let (targets, max) = self.notify.append_bounds();
        let (out, dropped, appended) = self
            .store_call(move |s| {
                let out = std::cell::RefCell::new(None);
                // Whether the attempt that was written had events: only then are the
                // delivery tasks woken (not on every push).
                let appended = std::cell::Cell::new(false);
                let dropped = {
                    let mut change = |now, records: &mut [crate::store::TagRecord]| {
                        *out.borrow_mut() = Some(f(crate::pinning::Clock { now, horizon }, records));
                    };
                    let mut events = || {
                        let events = out.borrow().as_ref().map(|o| events_of(o).0).unwrap_or_default();
                        appended.set(!events.is_empty());
                        events
                    };
                    let mut timers = || out.borrow().as_ref().map(|o| events_of(o).1).unwrap_or_default();
                    let mut notify = Notifying {
                        events: &mut events,
                        timers: &mut timers,
                        targets: &targets,
                        max,
                        dropped: 0,
                    };
                    let kind = match &how {
                        StoreWrite::Durable => WriteKind::Durable,
                        StoreWrite::Protecting(refs) => WriteKind::Protecting(refs),
                        StoreWrite::Settling => WriteKind::Settling,
                    };
                    s.write_notifying(kind, &r, &t, &mut change, &mut notify)?;
                    notify.dropped
                };
                let out = out.into_inner().expect("a store update runs its change at least once");
                Ok((out, dropped, appended.get()))
            })
            .await?;
        if appended {
            self.notify.appended(dropped, &self.metrics.notify);
        }
        Ok(out)
    }

    /// Run a store call off the async workers: sled's flush is a blocking fsync.
    pub async fn store_call<T, F>(&self, f: F) -> Result<T, ProxyError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn PinStore) -> Result<T, StoreError> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(&*store))
            .await
            .map_err(|e| ProxyError::Internal(format!("store task failed: {e}")))?
            .map_err(ProxyError::Store)
    }
}

/// How a transition is written to the store.
pub enum StoreWrite {
    /// Durable before it returns ([`PinStore::update`]).
    Durable,
    /// A push's claim, with the pushed manifest's references, in one durable write
    /// ([`PinStore::update_protecting`]).
    Protecting(crate::store::Protection),
    /// A push settled by its upstream's answer: durable soon ([`PinStore::confirm`]).
    Settling,
}

/// Counts detached decision tasks.
#[derive(Default)]
pub struct Detached {
    running: AtomicUsize,
    idle: Notify,
}

/// Held by a running detached task.
struct DetachedGuard<'a>(&'a Detached);

impl Drop for DetachedGuard<'_> {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Detached {
    /// Wait until no detached task runs, at most `limit`. Returns how many still run.
    pub async fn wait_idle(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.idle.notified();
            let running = self.running.load(Ordering::Acquire);
            if running == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.running.load(Ordering::Acquire);
            }
        }
    }
}

impl App {
    /// Run a decision (decide, forward, record) as a task of its own on this worker's
    /// runtime and wait for its answer. If the client goes away, hyper drops the waiting
    /// request future, but the task runs on to the upstream's answer and records it: a
    /// forwarded write is always settled, never abandoned half-way.
    pub async fn detached<F, Fut>(self: &Arc<Self>, f: F) -> Result<Response<Body>, ProxyError>
    where
        F: FnOnce(Arc<App>) -> Fut,
        Fut: Future<Output = Result<Response<Body>, ProxyError>> + Send + 'static,
    {
        self.detach(f)?
            .await
            .map_err(|e| ProxyError::Internal(format!("decision task failed: {e}")))?
    }

    /// Start `f` as a detached task (see [`App::detached`]) and hand back its handle: the
    /// task runs to its end whether or not anybody waits for it. Counted against the same
    /// limit, and waited for by a graceful shutdown like a decision.
    pub fn detach<F, Fut, T>(self: &Arc<Self>, f: F) -> Result<tokio::task::JoinHandle<T>, ProxyError>
    where
        F: FnOnce(Arc<App>) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let app = Arc::clone(self);
        let shared = Arc::clone(&self.shared);
        // A task outlives its client, so clients that send a write and leave could start
        // tasks without end, each holding its request head: at most as many run as
        // connections may be open (with those, twice `max_connections` heads in all).
        let limit = self.config.max_connections;
        if shared.detached.running.fetch_add(1, Ordering::AcqRel) >= limit {
            drop(DetachedGuard(&shared.detached));
            return Err(ProxyError::CannotDecide(format!(
                "{limit} decisions are running already (max_connections; a client that leaves leaves its \
                 decision running to the upstream's answer)"
            )));
        }
        let task = f(app);
        Ok(tokio::spawn(async move {
            let _running = DetachedGuard(&shared.detached);
            task.await
        }))
    }

    /// The state every worker shares.
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// A worker's state. Call it on the worker's runtime.
    pub fn worker(shared: Arc<Shared>) -> Self {
        let upstream = Upstream::new(
            &shared.config,
            shared.upstream_tls.clone(),
            shared.upstream_unsolicited.clone(),
            shared.metrics.health.upstream_latency(),
        );
        Self { shared, upstream }
    }

    /// Shared state and one worker around `store`, for embedding tagpin in a test.
    pub fn with_store(config: Config, store: Arc<dyn PinStore>) -> Result<Self, StartError> {
        Ok(Self::worker(Arc::new(Shared::with_store(config, store)?)))
    }
}

/// Append `n` in lower-case hex, as `format!("{n:x}")` would.
fn push_hex(out: &mut String, n: u64) {
    let digits = if n == 0 {
        1
    } else {
        (64 - n.leading_zeros()).div_ceil(4)
    };
    for shift in (0..digits).rev() {
        let nibble = ((n >> (shift * 4)) & 0xf) as u8;
        out.push(char::from(if nibble < 10 { b'0' + nibble } else { b'a' + nibble - 10 }));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_request_ids_match_format() {
        for n in [0u64, 1, 9, 10, 15, 16, 255, 256, 0xdead_beef, u64::MAX] {
            let mut s = String::new();
            super::push_hex(&mut s, n);
            assert_eq!(s, format!("{n:x}"));
        }
    }
}
