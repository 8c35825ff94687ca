//! The webhook outbox: events waiting to be delivered, one cursor per target, and the
//! timers of events that happen at a time rather than on a request (a release expiring).
//!
//! Events are numbered in the order they were appended (`seq`, 1, 2, ...; never reused).
//! A target's cursor is the last `seq` it is done with (delivered, refused by the
//! receiver, or dropped); each target is delivered in `seq` order, which keeps the order
//! per tag. Across replicas the delivery of a target is leased to one replica at a time:
//! an event is sent twice only when a replica stops between sending it and recording
//! that it did, and the event's `id` lets a receiver drop the second copy.

use std::time::Duration;

use super::{Refused, StoreError};
use crate::notify::EventKind;
use crate::oci::{Repository, Tag};

/// One event as the outbox keeps it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OutboxEvent {
    /// Unique, and the same on every attempt: a receiver drops a copy it saw.
    pub id: String,
    pub kind: EventKind,
    /// When it happened, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// What the audit event carries.
    pub data: serde_json::Value,
}

/// The outbox as the targets in force see it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Events some target has not finished with.
    pub pending: u64,
    /// When the oldest of them happened (ms since the epoch).
    pub oldest_ms: Option<u64>,
}

/// A timer: at `at_ms`, `payload` is handed back by [`Outbox::outbox_due`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Timer {
    pub key: String,
    pub at_ms: u64,
    pub payload: String,
}

/// Webhook events (and timers) a transition appends in its own write
/// ([`crate::store::PinStore::write_notifying`]): a decision on record is never without
/// its events, whatever stops tagpin.
pub struct Notifying<'a> {
    /// The events of the change just run (called after each attempt of it).
    pub events: &'a mut dyn FnMut() -> Vec<OutboxEvent>,
    /// Timers the change sets (called likewise).
    pub timers: &'a mut dyn FnMut() -> Vec<Timer>,
    pub targets: &'a [String],
    pub max: u64,
    /// Set by the write: events dropped to keep the outbox within `max`.
    pub dropped: u64,
}

/// How a transition's records are written ([`crate::store::PinStore::write_notifying`]).
pub enum WriteKind<'a> {
    /// [`crate::store::PinStore::update`].
    Durable,
    /// [`crate::store::PinStore::update_protecting`].
    Protecting(&'a crate::store::Protection),
    /// [`crate::store::PinStore::confirm`].
    Settling,
}

pub trait Outbox: Send + Sync {
    /// Append `events` (one whose `id` the outbox holds already is skipped), after giving
    /// each of `targets` that has no cursor yet one at the current end, so that it gets
    /// these events and nothing older. When the outbox then holds more than `max`
    /// events, the oldest go; returns how many.
    fn outbox_append(&self, events: &[OutboxEvent], targets: &[String], max: u64) -> Result<u64, StoreError>;

    /// [`crate::store::PinStore::record_refusal`] and [`Outbox::outbox_append`] of the
    /// refusal's events in one atomic, durable write: a refused attempt on record is never
    /// without its events, whatever stops tagpin. Returns the events dropped to make room.
    fn record_refusal_notifying(
        &self,
        repo: &Repository,
        tag: &Tag,
        refused: &Refused,
        events: &[OutboxEvent],
        targets: &[String],
        max: u64,
    ) -> Result<u64, StoreError>;

    /// Take, or keep, the delivery of `target` for `holder` until `ttl` from now. Returns
    /// the target's cursor, or `None` while another holder's lease runs. A target with
    /// no cursor gets one at the current end.
    fn outbox_lease(&self, target: &str, holder: &str, ttl: Duration) -> Result<Option<u64>, StoreError>;

    /// Up to `limit` events after `seq`, oldest first.
    fn outbox_after(&self, seq: u64, limit: usize) -> Result<Vec<(u64, OutboxEvent)>, StoreError>;

    /// `target` is done with every event up to `seq`; recorded only while `holder` holds
    /// its lease (`false`: it lost it, and must stop), which then runs `ttl` from now: a
    /// holder that keeps acknowledging keeps the target however long its batch takes.
    fn outbox_ack(&self, target: &str, holder: &str, seq: u64, ttl: Duration) -> Result<bool, StoreError>;

    /// Remove the events every one of `targets` is done with (all of them when there are
    /// neither targets nor cursors in use), and count what is left. A cursor created or
    /// leased within `in_use` counts as a target too: another replica may have a target
    /// this one has not (a rolling reload), and its events are not this one's to remove.
    fn outbox_trim(&self, targets: &[String], in_use: Duration) -> Result<OutboxStats, StoreError>;

    /// Set (or replace) the timer `timer.key`.
    fn outbox_schedule(&self, timer: &Timer) -> Result<(), StoreError>;

    /// Up to `limit` timers due at `now_ms`, earliest first. They stay until
    /// [`Outbox::outbox_unschedule`].
    fn outbox_due(&self, now_ms: u64, limit: usize) -> Result<Vec<Timer>, StoreError>;

    /// Remove the timer `key`; whether it was there.
    fn outbox_unschedule(&self, key: &str) -> Result<bool, StoreError>;
}
