//! Webhooks: the events security teams and operators want to hear about (refused writes,
//! drift, break-glass), delivered at least once and never in the way of a request.
//!
//! A decision that writes the store writes its event in the same atomic write
//! ([`Notifier::prepare`], then [`crate::app::App::transition_notifying`] or
//! [`crate::store::Outbox::record_refusal_notifying`]). An event with no write of its own
//! (drift, a failed reload, a checkpoint) goes to [`Notifier::enqueue`], which returns at
//! once: the event goes, in order, to a writer task that appends it to the store's durable
//! outbox ([`crate::store::Outbox`]) within milliseconds, while the request goes on. One task
//! per target then delivers the outbox in order ([`run`]): retries with backoff on
//! connection errors, timeouts, 429 and 5xx, until `notify_max_age`; a receiver that is
//! down or hangs holds back its own target only. A kill loses only queued events not yet
//! appended (the writer's queue, milliseconds long); everything appended survives and is
//! delivered after a restart, at least once (a copy carries the same `id`).

mod deliver;
mod event;
mod format;
mod kind;
mod metrics;
mod run;

use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;

pub use self::deliver::Attempt;
pub use self::event::{data_of, release_timer, ReleaseTimer};
pub use self::kind::{EventKind, CHOOSABLE};
pub use self::metrics::{Dropped, NotifyMetrics, Outcome};
pub use self::run::run;
use crate::config::{Config, NotifyConfig};
use crate::store::OutboxEvent;

/// The webhook side of a tagpin process: the targets in force and the queue to the
/// outbox's writer.
pub struct Notifier {
    config: RwLock<Arc<NotifyConfig>>,
    /// The CloudEvents `source`: `public_url`, or `http://<listen address>`.
    source: String,
    /// Who holds a target's delivery lease: this process, for this run.
    holder: String,
    queue: mpsc::UnboundedSender<OutboxEvent>,
    queued: Mutex<Option<mpsc::UnboundedReceiver<OutboxEvent>>>,
    /// Wakes the delivery tasks when the writer appended events.
    appended: tokio::sync::watch::Sender<u64>,
    client: deliver::HttpClient,
}

impl Notifier {
    pub fn new(config: &Config, tls: rustls::ClientConfig) -> Self {
        let (queue, queued) = mpsc::unbounded_channel();
        let source = match &config.public_url {
            Some(url) => url.to_string(),
            None => format!("http://{}", config.listen),
        };
        Self {
            config: RwLock::new(Arc::new(config.notify.clone())),
            source,
            holder: format!("{}-{}", std::process::id(), new_id()),
            queue,
            queued: Mutex::new(Some(queued)),
            appended: tokio::sync::watch::channel(0).0,
            client: deliver::client(tls),
        }
    }

    /// The targets and limits in force.
    pub fn config(&self) -> Arc<NotifyConfig> {
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Put new targets and limits in force (a SIGHUP reload).
    pub fn set_config(&self, config: NotifyConfig) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }

    /// Queue an event for the outbox when a target wants it; returns at once.
    pub fn enqueue(&self, kind: EventKind, repository: Option<&str>, tag: Option<&str>, data: serde_json::Value) {
        self.enqueue_with_id(new_id(), kind, repository, tag, data);
    }

    /// [`Notifier::enqueue`] with a given id: an event two paths (or replicas) may both
    /// report, such as a release's expiry, is kept once.
    pub fn enqueue_with_id(
        &self,
        id: String,
        kind: EventKind,
        repository: Option<&str>,
        tag: Option<&str>,
        data: serde_json::Value,
    ) {
        if let Some(event) = self.prepare(id, kind, repository, tag, data) {
            // The writer lives as long as the process; after it stopped (shutdown) there
            // is nothing left to deliver with.
            let _ = self.queue.send(event);
        }
    }

    /// The event, when a target wants it, for a caller that appends it in a write of its
    /// own ([`crate::store::Outbox::record_refusal_notifying`]); then [`Notifier::appended`].
    pub fn prepare(
        &self,
        id: String,
        kind: EventKind,
        repository: Option<&str>,
        tag: Option<&str>,
        data: serde_json::Value,
    ) -> Option<OutboxEvent> {
        if !self.config().targets.iter().any(|t| t.wants(kind, repository)) {
            return None;
        }
        Some(OutboxEvent {
            id,
            kind,
            time_ms: crate::store::now_millis(),
            repository: repository.map(str::to_owned),
            tag: tag.map(str::to_owned),
            data,
        })
    }

    /// Queue events a failed write of the caller's was to append with its decision, when
    /// what they describe happened all the same (the upstream applied a delete): the
    /// writer appends them once the store takes writes again, once each (the outbox
    /// skips an id it holds, should the write have landed after all).
    pub fn enqueue_prepared(&self, events: impl IntoIterator<Item = OutboxEvent>) {
        for event in events {
            let _ = self.queue.send(event);
        }
    }

    /// The names of the targets in force and the outbox's bound, for an append.
    pub fn append_bounds(&self) -> (Vec<String>, u64) {
        let config = self.config();
        let names = config.targets.iter().map(|t| t.name.clone()).collect();
        (names, config.outbox_max_events)
    }

    /// Events were appended by a write of the caller's (`dropped` of the oldest went to
    /// make room): count them and wake the delivery tasks.
    pub fn appended(&self, dropped: u64, metrics: &NotifyMetrics) {
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "webhook outbox full: the oldest undelivered events were dropped"
            );
            metrics.dropped(Dropped::OutboxFull, dropped);
        }
        self.appended.send_modify(|n| *n += 1);
    }

    /// Send an `io.tagpin.test` event to every target, or the one whose name is `only`,
    /// at once (not through the outbox): each target's name and answer.
    pub async fn test(&self, only: Option<&str>, by: &str) -> Vec<(String, Attempt)> {
        let config = self.config();
        let event = OutboxEvent {
            id: new_id(),
            kind: EventKind::Test,
            time_ms: crate::store::now_millis(),
            repository: None,
            tag: None,
            data: serde_json::json!({ "admin": by }),
        };
        let mut out = Vec::new();
        for target in config.targets.iter().filter(|t| only.is_none_or(|n| t.name == n)) {
            let answer = deliver::attempt(&self.client, target, &event, &self.source).await;
            out.push((target.name.clone(), answer));
        }
        out
    }
}

/// A random id in the UUID text form (version 4).
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("the system's random source works");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid_text(&b)
}

/// A stable id in the UUID text form (version 8, RFC 9562) for an event that has one
/// identity whoever reports it: the first 16 bytes of SHA-256 of `name`.
pub fn stable_id(name: &str) -> String {
    use sha2::Digest as _;
    let mut b: [u8; 16] = sha2::Sha256::digest(name.as_bytes())[..16]
        .try_into()
        .expect("16 bytes");
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid_text(&b)
}

fn uuid_text(b: &[u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}
