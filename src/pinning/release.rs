//! Operators' events on a tag: a release (break glass) set or cancelled, writes whose
//! outcome was lost cleared by hand.

use super::mutation::{self, Mutation};
use super::{expire, history, history_at, in_use, Clock, Expired};
use crate::store::{Claim, ClaimKind, HistoryEvent, Release, TagRecord};

/// What putting a release on a tag did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetRelease {
    Set,
    /// Only a pinned tag can be released.
    NoPin,
    /// A write of another digest, or one using the current release, is in flight.
    Busy {
        request_id: String,
    },
}

/// Put `release` on the tag, replacing a release nobody is using.
pub fn set_release(record: &mut TagRecord, release: &Release, clock: Clock) -> (SetRelease, Vec<Expired>) {
    let expired = expire(record, clock);
    let Some(pin) = &record.pin else {
        return (SetRelease::NoPin, expired);
    };
    let busy = record
        .writes
        .iter()
        .find(|w| w.digest != pin.digest || w.release_id.is_some());
    if let Some(w) = busy {
        return (
            SetRelease::Busy {
                request_id: w.request_id.clone(),
            },
            expired,
        );
    }
    record.release = Some(release.clone());
    (SetRelease::Set, expired)
}

/// What cancelling a release did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    NoRelease,
    /// Removed before anything used it.
    Cancelled(Release),
    /// A write using it is in flight: it cannot be called back, but should the upstream
    /// refuse that write the release is not given back.
    InUse {
        release: Release,
        request_id: String,
    },
}

/// Cancel the tag's release; recorded in the pin's history.
pub fn cancel_release(record: &mut TagRecord, request_id: &str, clock: Clock) -> (Cancel, Vec<Expired>) {
    let expired = expire(record, clock);
    let Some(release) = record.release.clone() else {
        return (Cancel::NoRelease, expired);
    };
    if release.cancelled {
        return (Cancel::NoRelease, expired);
    }
    history(
        record,
        HistoryEvent::ReleaseCancelled,
        Some(&release),
        Some(request_id),
        clock.now,
    );
    if let Some(user) = in_use(record, &release) {
        if let Some(r) = record.release.as_mut() {
            r.cancelled = true;
        }
        return (
            Cancel::InUse {
                release,
                request_id: user,
            },
            expired,
        );
    }
    record.release = None;
    (Cancel::Cancelled(release), expired)
}

/// Take the releases of every tag (all available, checked by the caller's decision) for
/// a digest delete by `request_id`: each tag gets a write record of kind `Delete` that
/// names its release. Returns false, changing nothing, when any is no longer available.
pub fn take_releases(records: &mut [TagRecord], digest: &crate::oci::Digest, request_id: &str, clock: Clock) -> bool {
    for r in records.iter_mut() {
        expire(r, clock);
    }
    let ids: Option<Vec<String>> = records
        .iter()
        .map(|r| {
            let free = r.writes.iter().all(|w| &w.digest == digest && w.release_id.is_none());
            super::available(r, clock).filter(|_| free).map(|rel| rel.id.clone())
        })
        .collect();
    let Some(ids) = ids else {
        return false;
    };
    for (r, id) in records.iter_mut().zip(ids) {
        let mut claim = Claim::of_kind(digest.clone(), request_id, ClaimKind::Delete);
        claim.claimed_at = clock.now;
        claim.release_id = Some(id);
        r.writes.push(claim);
    }
    true
}

/// An operator clears the write record of `request_id` on the tag (its push is known to
/// have failed); no other request's record, which may still land. A release it used is
/// spent, never given back. Returns what was cleared.
pub fn clear_writes(record: &mut TagRecord, request_id: &str, by: &str, reason: &str, clock: Clock) -> Vec<Claim> {
    expire(record, clock);
    let all = mutation::on(Mutation::ClearAllWrites);
    let (cleared, kept): (Vec<Claim>, Vec<Claim>) = std::mem::take(&mut record.writes)
        .into_iter()
        .partition(|w| all || w.request_id == request_id);
    record.writes = kept;
    if cleared.is_empty() {
        return cleared;
    }
    if let Some(r) = &record.release {
        if cleared.iter().any(|w| w.release_id.as_deref() == Some(r.id.as_str())) {
            record.release = None;
        }
    }
    let note = Release {
        id: String::new(),
        cancelled: false,
        by: by.to_owned(),
        reason: reason.to_owned(),
        created_at: clock.now,
        expires_at: clock.now,
    };
    let digest = cleared[0].digest.clone();
    history_at(
        record,
        Some(&digest),
        HistoryEvent::ClaimCleared,
        Some(&note),
        Some(request_id),
        clock.now,
    );
    cleared
}
