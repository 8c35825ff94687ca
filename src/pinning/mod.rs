//! The rule that keeps a protected tag from moving, as a state machine per tag with no
//! I/O: each transition takes the tag's stored records ([`TagRecord`]), one event and the
//! store's clock, and returns the new records and what to do. The store applies a
//! transition atomically and durably ([`crate::store::PinStore::update`], which on
//! PostgreSQL also serialises replicas); handlers only gather inputs (the policy's mode,
//! an append-only comparison), carry out the action (forward, answer) and report the
//! upstream's answer back as the next event.
//!
//! # The in-flight rule
//! - **Every forwarded write holds a durable record of its own** ([`Claim`], one per
//!   request) from before it is forwarded until its outcome is known, whatever let it
//!   through: a new pin, an identical re-push, a second push of a move already in flight,
//!   an append, an audited move, a release, a delete of the tag.
//! - While a tag has a write of digest `D` in flight, **no other digest is bound** to it:
//!   every push of another digest is refused, a release cannot be used, a pin cannot be
//!   adopted, so a late landing of `D` can only ever land on a tag held to `D` (or on the
//!   move to `D` that was allowed).
//! - **Only a write's own answer settles its record**: accepted (the pin follows),
//!   refused or not applied (the record is withdrawn), unknown (504, a reset, a kill: the
//!   record stays). A record whose answer was lost stays until the **in-doubt horizon**
//!   has passed (longer than any upstream request may run, so the write can no longer
//!   land) or an operator clears it. On a tag with no pin yet it stays even past the
//!   horizon (it may have bound the tag at the upstream): a push of its digest completes
//!   it, or an operator who knows the write failed clears it.
//! - **Every decision is made at the moment it takes effect**, under the same atomic
//!   update: a second push of a move already in flight is decided afresh (mode, append,
//!   release), so a move that would now be refused is refused.
//! - **A release is used once or not at all**: a write that uses it names it
//!   (`release_id`), and while that write is in flight the release lets nothing else
//!   through; it is spent when the write is accepted and free again when the write is
//!   refused, unless it was cancelled meanwhile. Expiry is judged by the store's clock.
//! - History is written when the upstream accepted a write, never before.
//!
//! [`sim`] (tests only) drives these transitions through a deterministic simulation of
//! replicas, a model upstream and faults, and checks after every step that no protected
//! tag moved without a licence.

mod delete;
pub mod flow;
mod push;
mod read;
mod release;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use delete::{
    begin_tag_delete, decide_digest_delete, note_audited_delete, settle_tag_delete, Dependents, DigestDelete, Holder,
    TagDelete,
};
pub use push::{begin_push, complete_lost, lost_settlements, settle_push, Begun, PushTag, Settled, Verdict};
pub use read::{adopt_on_read, FirstPull};
pub use release::{cancel_release, clear_writes, set_release, take_releases, Cancel, SetRelease};

use crate::store::{Claim, HistoryEntry, HistoryEvent, Release, TagRecord};

/// The store's clock and the in-doubt horizon, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    pub now: u64,
    /// How long after it was forwarded a write may still land at the upstream.
    pub horizon: u64,
}

/// What the upstream's answer settled about one forwarded write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted: the write took effect.
    Applied,
    /// Refused, or answered in a way that shows it did not take effect for this tag.
    NotApplied,
    /// No answer, or one that says nothing about the outcome (502, 503, 504).
    Unknown,
}

/// What time settled while a transition looked at a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expired {
    /// A write whose answer never came is past the in-doubt horizon.
    Write(Claim),
    /// A release expired unused (or with its write past the horizon).
    Release(Release),
}

/// Whether `release` is named by a write in flight.
fn in_use(record: &TagRecord, release: &Release) -> Option<String> {
    record
        .writes
        .iter()
        .find(|w| w.release_id.as_deref() == Some(release.id.as_str()))
        .map(|w| w.request_id.clone())
}

/// The release a new write may use now: present, not cancelled, not expired by the
/// store's clock, not used by a write in flight.
fn available(record: &TagRecord, clock: Clock) -> Option<&Release> {
    let now = if mutation::on(mutation::Mutation::ReplicaClock) {
        mutation::replica_now(clock.now)
    } else {
        clock.now
    };
    record
        .release
        .as_ref()
        .filter(|r| !r.cancelled && r.expires_at > now && in_use(record, r).is_none())
}

/// Drop what time has settled: writes to a pinned tag past the in-doubt horizon (with
/// the release they used: its outcome is unknown, so it is never given back), and a
/// release that expired or was cancelled and is no longer used by a write in flight.
/// Every transition starts here, so a record never holds what no longer counts.
pub fn expire(record: &mut TagRecord, clock: Clock) -> Vec<Expired> {
    let mut out = Vec::new();
    // On a tag with no pin a lost write may have bound it at the upstream, and nothing
    // here would know: such a record stays until a push of its digest completes it or an
    // operator who knows it failed clears it. Under a pin, the pin goes on protecting.
    let pinned = record.pin.is_some();
    let (old, live): (Vec<Claim>, Vec<Claim>) = std::mem::take(&mut record.writes)
        .into_iter()
        // Times are whole seconds: a record counts for the whole of its last second.
        .partition(|w| pinned && w.claimed_at.saturating_add(clock.horizon) < clock.now);
    record.writes = live;
    for w in old {
        if let (Some(id), Some(r)) = (&w.release_id, &record.release) {
            if &r.id == id {
                out.push(Expired::Release(r.clone()));
                record.release = None;
                // Its write's outcome stopped mattering once it passed the horizon.
                let at = expired_at(record, w.claimed_at.saturating_add(clock.horizon));
                history(record, HistoryEvent::ReleaseExpired, None, Some(&w.request_id), at);
            }
        }
        out.push(Expired::Write(w));
    }
    if let Some(r) = record.release.clone() {
        if in_use(record, &r).is_none() && (r.cancelled || r.expires_at <= clock.now) {
            record.release = None;
            if !r.cancelled {
                // Stamped when it expired, not when a transition came to notice it.
                let at = expired_at(record, r.expires_at);
                history(record, HistoryEvent::ReleaseExpired, Some(&r), None, at);
                out.push(Expired::Release(r));
            }
        }
    }
    out
}

/// When a release ended, for its history entry: `when`, or the pin's latest entry if
/// that is later (a write that held the release until after its time), so the history
/// stays in order.
fn expired_at(record: &TagRecord, when: u64) -> u64 {
    let latest = record.pin.as_ref().and_then(|p| p.history.last()).map_or(0, |e| e.at);
    when.max(latest)
}

/// The record as the next transition will find it, for showing without writing: what
/// time has settled ([`expire`]) applied to a copy. Returns the copy and whether the
/// release it held has expired (not cancelled) by `clock`.
pub fn as_of(record: &TagRecord, clock: Clock) -> (TagRecord, bool) {
    let mut view = record.clone();
    let expired = expire(&mut view, clock);
    let release_expired = expired.iter().any(|e| matches!(e, Expired::Release(_)));
    (view, release_expired)
}

/// Append an entry about the tag to its history: the pin's, at its digest; for a tag with
/// no pin yet (only for an operator's clearing), the record's own, at `digest`.
fn history(record: &mut TagRecord, event: HistoryEvent, release: Option<&Release>, request: Option<&str>, at: u64) {
    history_at(record, None, event, release, request, at);
}

fn history_at(
    record: &mut TagRecord,
    digest: Option<&crate::oci::Digest>,
    event: HistoryEvent,
    release: Option<&Release>,
    request: Option<&str>,
    at: u64,
) {
    let (list, digest) = match (record.pin.as_mut(), digest) {
        (Some(pin), _) => (&mut pin.history, pin.digest.clone()),
        (None, Some(d)) => (&mut record.history, d.clone()),
        (None, None) => return,
    };
    let mut entry = HistoryEntry::new(event, digest, None);
    entry.at = at;
    entry.request_id = request.map(str::to_owned);
    if let Some(r) = release {
        entry.by = Some(r.by.clone());
        entry.reason = Some(r.reason.clone());
    }
    list.push(entry);
}

/// Deliberate regressions, each putting back one way a protected tag moved before this
/// state machine, so the simulation can show it finds them. Compiled into tests only.
pub(crate) mod mutation {
    /// One regression per numbered way a tag moved (see the simulation's mutants).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[cfg_attr(not(test), allow(dead_code, reason = "only the simulation turns these on"))]
    pub enum Mutation {
        /// 1: identical re-pushes and second pushes of a claimed digest forwarded without
        /// a record of their own.
        RepushWithoutRecord,
        /// 2: a `?tag=` the upstream ignored keeps its claim, and a later push of the
        /// claimed digest completes it without a decision.
        JoinWithoutDecision,
        /// 3 and 4: a release read before the decision, taken by removing it (its history
        /// written then) and put back unconditionally when the write is refused.
        ReleaseTakenByRemoval,
        /// 5: release expiry judged by the replica's own clock.
        ReplicaClock,
        /// 6: a push checks only the manifest itself against deletes in flight, and a
        /// delete re-checks only how many holders there are.
        RefsNotChecked,
        /// 7: any 2xx or 404 to a delete settles every delete record of the digest.
        DeleteSettledByAnyAnswer,
        /// 8: a release does not cover deleting the tag's digest.
        NoReleaseForDigestDelete,
        /// 9: a commit acknowledged before it is durable.
        AsyncCommit,
        /// Review A: a delete's second look compares dependent manifests by digest, not
        /// by the tags holding them.
        DependentsByDigest,
        /// Review B: clearing a tag's records clears every request's, not the one named.
        ClearAllWrites,
        /// Review C: a decision forwarded however long after its record was written, so
        /// the write may land after the record passed the horizon.
        StaleForward,
        /// Reads: a pull of a pinned tag answered with what the upstream holds under it.
        ReadByTag,
        /// Reads: a first pull adopts what it read although a write is in flight.
        AdoptOverClaim,
        /// Read cache: a replica answers from memory without a live listener's lease.
        NoLease,
        /// Read cache: a push that moves a pin is forwarded without the store's grace.
        NoMoveGrace,
        /// Log: the store's log leaves out adoptions (and writes no guard against it).
        LogSkipsAdoption,
        /// Scale: a move's settlement, too, written without waiting for the disk.
        LazyMoves,
    }

    #[cfg(not(test))]
    #[inline(always)]
    pub fn on(_: Mutation) -> bool {
        false
    }

    #[cfg(not(test))]
    pub fn replica_now(now: u64) -> u64 {
        now
    }

    #[cfg(test)]
    pub use imp::*;

    #[cfg(test)]
    mod imp {
        use super::Mutation;
        use std::cell::Cell;

        thread_local! {
            static ACTIVE: Cell<Option<Mutation>> = const { Cell::new(None) };
            static SKEW: Cell<i64> = const { Cell::new(0) };
        }

        pub fn set(m: Option<Mutation>) {
            ACTIVE.with(|a| a.set(m));
        }

        pub fn on(m: Mutation) -> bool {
            ACTIVE.with(|a| a.get()) == Some(m)
        }

        /// The acting replica's clock offset, for [`Mutation::ReplicaClock`].
        pub fn set_skew(s: i64) {
            SKEW.with(|k| k.set(s));
        }

        pub fn replica_now(now: u64) -> u64 {
            now.saturating_add_signed(SKEW.with(|k| k.get()))
        }
    }
}
