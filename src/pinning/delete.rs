//! Deletes: of a protected tag (refused, but for audit mode and a release) and of a
//! digest that protected tags or pinned content hold.

use super::mutation::{self, Mutation};
use super::{available, expire, Clock, Expired, Outcome};
use crate::oci::{Digest, Tag};
use crate::policy::{Decided, Mode};
use crate::store::{Claim, ClaimKind, HistoryEntry, HistoryEvent, TagRecord};

/// The decision for `DELETE /v2/<name>/manifests/<tag>` of a protected tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagDelete {
    /// Refused: `pinned` is what the tag is held to; `in_flight` when a write to it may
    /// still land.
    Refuse { pinned: Option<Digest>, in_flight: bool },
    /// Forwarded, with a write record on a pinned tag: under a release (used once), or
    /// audited (`released == false`).
    Forward { released: bool },
}

/// Decide a delete of the tag by `request_id` and record it.
pub fn begin_tag_delete(
    record: &mut TagRecord,
    mode: Mode,
    request_id: &str,
    clock: Clock,
) -> (TagDelete, Vec<Expired>) {
    let expired = expire(record, clock);
    let pinned = record.pin.as_ref().map(|p| p.digest.clone());
    if !record.writes.is_empty() {
        let pinned = pinned.or_else(|| record.writes.first().map(|w| w.digest.clone()));
        return (
            TagDelete::Refuse {
                pinned,
                in_flight: true,
            },
            expired,
        );
    }
    let release = available(record, clock).map(|r| r.id.clone());
    let decision = match (&pinned, release) {
        (Some(_), Some(id)) => {
            record_delete(record, request_id, Some(id), clock.now);
            TagDelete::Forward { released: true }
        }
        (Some(_), None) if mode == Mode::Audit => {
            record_delete(record, request_id, None, clock.now);
            TagDelete::Forward { released: false }
        }
        // Nothing is pinned, so nothing moves: audit forwards it with nothing to record.
        (None, _) if mode == Mode::Audit => TagDelete::Forward { released: false },
        _ => TagDelete::Refuse {
            pinned,
            in_flight: false,
        },
    };
    (decision, expired)
}

fn record_delete(record: &mut TagRecord, request_id: &str, release_id: Option<String>, now: u64) {
    let digest = record.pin.as_ref().map(|p| p.digest.clone()).expect("checked: pinned");
    let mut claim = Claim::of_kind(digest, request_id, ClaimKind::Delete);
    claim.claimed_at = now;
    claim.release_id = release_id;
    record.writes.push(claim);
}

/// Settle a delete of the tag (or, for a released digest delete, of its digest) by
/// `request_id`. Accepted: a release it used is spent and recorded (`released`), an
/// audited one is recorded as `audit_delete`; the pin stays as the tag's tombstone.
/// Returns whether history was written.
pub fn settle_tag_delete(record: &mut TagRecord, request_id: &str, outcome: Outcome, clock: Clock) -> bool {
    expire(record, clock);
    if outcome == Outcome::Unknown {
        return false;
    }
    let Some(i) = record
        .writes
        .iter()
        .position(|w| w.request_id == request_id && w.kind == ClaimKind::Delete)
    else {
        return false;
    };
    let own = record.writes.remove(i);
    let written = outcome == Outcome::Applied;
    if written {
        let used = record
            .release
            .take_if(|r| own.release_id.as_deref() == Some(r.id.as_str()));
        if let Some(pin) = record.pin.as_mut() {
            let event = if used.is_some() {
                HistoryEvent::Released
            } else {
                HistoryEvent::AuditDelete
            };
            let mut entry = HistoryEntry::new(event, pin.digest.clone(), None);
            entry.at = clock.now;
            entry.request_id = Some(request_id.to_owned());
            if let Some(r) = used {
                entry.by = Some(r.by);
                entry.reason = Some(r.reason);
            }
            pin.history.push(entry);
        }
    }
    expire(record, clock);
    written
}

/// A protected tag holding a digest (pinned or claimed to it), with its mode and record.
#[derive(Debug, Clone)]
pub struct Holder {
    pub tag: Tag,
    pub decided: Decided,
    pub record: TagRecord,
}

/// Pinned manifests depending on a digest, each with the protected tags holding it.
pub type Dependents = Vec<(Digest, Vec<Holder>)>;

/// The decision for a delete of a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestDelete {
    /// Protected tags (not all released) are pinned or claimed to it.
    RefuseHeld(Vec<Tag>),
    /// Pinned content held by enforcing tags depends on it.
    RefuseReferenced(Vec<Digest>),
    /// Forward. `released`: tags whose releases it uses (taken before forwarding);
    /// `audited`: audit-mode holders it is forwarded past, with a warning.
    Forward {
        released: Vec<Tag>,
        audited: Vec<(Tag, Decided)>,
    },
}

/// Decide a delete of a digest held directly by `direct` and depended on by the pinned
/// manifests `dependents` (each with the protected tags that hold it).
pub fn decide_digest_delete(direct: &[Holder], dependents: &Dependents, clock: Clock) -> DigestDelete {
    let enforcing = |h: &&Holder| h.decided.mode != Mode::Audit;
    let held: Vec<&Holder> = direct.iter().filter(enforcing).collect();
    let mut released = Vec::new();
    if !held.is_empty() {
        // A release covers deleting the digest only when every enforcing tag holding it is
        // pinned to it with a release of its own in force and no write in flight.
        let all_released = !mutation::on(Mutation::NoReleaseForDigestDelete)
            && held.iter().all(|h| {
                let mut r = h.record.clone();
                expire(&mut r, clock);
                r.writes.is_empty() && r.pin.is_some() && available(&r, clock).is_some()
            });
        if !all_released {
            return DigestDelete::RefuseHeld(held.iter().map(|h| h.tag.clone()).collect());
        }
        released = held.iter().map(|h| h.tag.clone()).collect();
    }
    let referenced: Vec<Digest> = dependents
        .iter()
        .filter(|(_, tags)| tags.iter().any(|h| enforcing(&h)))
        .map(|(d, _)| d.clone())
        .collect();
    if !referenced.is_empty() {
        return DigestDelete::RefuseReferenced(referenced);
    }
    let audited = direct
        .iter()
        .chain(dependents.iter().flat_map(|(_, tags)| tags))
        .filter(|h| h.decided.mode == Mode::Audit)
        .map(|h| (h.tag.clone(), h.decided))
        .collect();
    DigestDelete::Forward { released, audited }
}

/// An audited digest delete the upstream accepted took the tag's pinned manifest away:
/// noted in the pin's history (the pin stays).
pub fn note_audited_delete(record: &mut TagRecord, request_id: &str, clock: Clock) {
    expire(record, clock);
    super::history(record, HistoryEvent::AuditDelete, None, Some(request_id), clock.now);
}
