//! A manifest push naming protected tags: deciding it (and recording the write) before
//! it is forwarded, and settling it by the upstream's answer.

use super::mutation::{self, Mutation};
use super::{available, expire, Clock, Expired, Outcome};
use crate::oci::{Digest, Tag};
use crate::policy::{Conflict, ConflictReason, Decided, Mode, NotAppend};
use crate::store::{Claim, ClaimKind, HistoryEntry, HistoryEvent, Pin, PinSource, TagRecord};

/// One protected tag of a push, as the handler gathered it.
#[derive(Debug, Clone)]
pub struct PushTag {
    pub tag: Tag,
    pub decided: Decided,
    /// For an append-only tag pinned to another digest: the pinned digest the pushed
    /// manifest was compared with, and whether it keeps every entry of it. A comparison
    /// with a digest the tag is no longer pinned to counts for nothing.
    pub append: Option<(Digest, Result<(), NotAppend>)>,
}

/// What a push does to one tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Free (or claimed for this digest): once the upstream accepts, pinned.
    NewPin,
    /// Pinned to the pushed digest: moves nothing.
    Identical,
    /// Append-only and the push keeps every pinned entry: the pin advances.
    Append { from: Digest },
    /// Audit mode: a move immutable would refuse, allowed and warned; the pin follows.
    AuditMove { from: Digest },
    /// A release is in force: this push may move the pinned tag, once.
    Released { from: Digest },
}

impl Verdict {
    /// Whether settling the push moves an existing pin to another digest.
    pub fn moves_pin(&self) -> bool {
        matches!(
            self,
            Self::Append { .. } | Self::AuditMove { .. } | Self::Released { .. }
        )
    }

    fn kind(&self) -> ClaimKind {
        match self {
            Self::NewPin => ClaimKind::New,
            Self::Identical => ClaimKind::Identical,
            Self::Append { .. } => ClaimKind::Append,
            Self::AuditMove { .. } => ClaimKind::AuditMove,
            Self::Released { .. } => ClaimKind::Release,
        }
    }
}

/// The decision for a whole push: allowed only if no tag would move, so a push with
/// several tags never lands half-way. On `Ok`, every tag holds a record of this write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begun {
    pub decision: Result<Vec<Verdict>, Vec<Conflict>>,
    /// What expired, by the index of its record.
    pub expired: Vec<(usize, Expired)>,
}

/// Decide a push of `attempted` by `request_id` against the tags' records and record
/// it on each (`records[i]` belongs to `tags[i]`). Refused: the records are unchanged
/// but for what expired.
pub fn begin_push(
    records: &mut [TagRecord],
    tags: &[PushTag],
    attempted: &Digest,
    request_id: &str,
    clock: Clock,
) -> Begun {
    let mut expired = Vec::new();
    for (i, r) in records.iter_mut().enumerate() {
        expired.extend(expire(r, clock).into_iter().map(|e| (i, e)));
    }
    let mut verdicts = Vec::with_capacity(tags.len());
    let mut conflicts = Vec::new();
    for (record, input) in records.iter().zip(tags) {
        match decide(record, input, attempted, clock) {
            Ok(v) => verdicts.push(v),
            Err(c) => conflicts.push(*c),
        }
    }
    if !conflicts.is_empty() {
        return Begun {
            decision: Err(conflicts),
            expired,
        };
    }
    for (record, verdict) in records.iter_mut().zip(&verdicts) {
        let joining = record.writes.iter().any(|w| &w.digest == attempted);
        let unrecorded = matches!(verdict, Verdict::Identical) || joining;
        if unrecorded && mutation::on(Mutation::RepushWithoutRecord) {
            continue;
        }
        let mut claim = Claim::of_kind(attempted.clone(), request_id, verdict.kind());
        claim.claimed_at = clock.now;
        if let Verdict::Released { .. } = verdict {
            claim.release_id = record.release.as_ref().map(|r| r.id.clone());
        }
        record.writes.push(claim);
    }
    Begun {
        decision: Ok(verdicts),
        expired,
    }
}

/// The decision for one tag.
fn decide(record: &TagRecord, input: &PushTag, attempted: &Digest, clock: Clock) -> Result<Verdict, Box<Conflict>> {
    let conflict = |pinned: &Digest, claimed: bool, reason: ConflictReason| {
        Box::new(Conflict {
            tag: input.tag.clone(),
            pinned: pinned.clone(),
            claimed,
            reason,
            decided: Some(input.decided),
        })
    };
    // The in-flight rule holds in every mode: while a write of another digest may still
    // land, nothing else is decided against the tag.
    let pinned = record.pin.as_ref().map(|p| &p.digest);
    if let Some(other) = record
        .writes
        .iter()
        .find(|w| &w.digest != attempted && Some(&w.digest) != pinned)
    {
        return Err(conflict(&other.digest, true, ConflictReason::InFlight));
    }
    let Some(pin) = &record.pin else {
        return Ok(Verdict::NewPin);
    };
    if &pin.digest == attempted {
        return Ok(Verdict::Identical);
    }
    let from = pin.digest.clone();
    let verdict =
        decide_move(record, input, attempted, &from, clock).map_err(|reason| conflict(&from, false, reason))?;
    // A write of the pinned digest itself (an identical re-push, a delete of the tag) is in
    // flight: a move that would otherwise be allowed waits until it is settled.
    if record.writes.iter().any(|w| w.digest == from) {
        return Err(conflict(&from, false, ConflictReason::InFlight));
    }
    Ok(verdict)
}

/// Whether moving the pinned tag from `from` to `attempted` is allowed now.
fn decide_move(
    record: &TagRecord,
    input: &PushTag,
    attempted: &Digest,
    from: &Digest,
    clock: Clock,
) -> Result<Verdict, ConflictReason> {
    let from = from.clone();
    let joining = record.writes.iter().find(|w| &w.digest == attempted);
    if let Some(j) = joining {
        if mutation::on(Mutation::JoinWithoutDecision) {
            return Ok(match j.kind {
                ClaimKind::Append => Verdict::Append { from },
                ClaimKind::AuditMove => Verdict::AuditMove { from },
                ClaimKind::Release => Verdict::Released { from },
                _ => Verdict::NewPin,
            });
        }
        // A second push of a released move in flight uses the same release, if it still
        // stands (not cancelled, not expired).
        let same_release = record
            .release
            .as_ref()
            .filter(|r| j.release_id.as_deref() == Some(r.id.as_str()) && !r.cancelled && r.expires_at > clock.now);
        if same_release.is_some() {
            return Ok(Verdict::Released { from });
        }
    }
    if available(record, clock).is_some() {
        return Ok(Verdict::Released { from });
    }
    match (input.decided.mode, &input.append) {
        (Mode::Audit, _) => Ok(Verdict::AuditMove { from }),
        (Mode::AppendOnly, Some((against, Ok(())))) if against == &from => Ok(Verdict::Append { from }),
        (Mode::AppendOnly, Some((against, Err(why)))) if against == &from => {
            Err(ConflictReason::NotAppendOnly(why.clone()))
        }
        // Compared with a digest the tag was pinned to when this push looked, but another
        // push has moved it since: decided again by pushing again.
        (Mode::AppendOnly, Some(_)) => Err(ConflictReason::InFlight),
        _ => Err(ConflictReason::Immutable),
    }
}

/// What a settled push did to one tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// The tag is pinned now (it was free or claimed).
    Pinned,
    /// The pin advanced (append, audited move, release).
    Moved { from: Digest, event: HistoryEvent },
    /// Nothing changed: the tag was pinned to this digest already.
    Unchanged,
    /// The write's record is withdrawn: it did not take effect.
    Withdrawn,
    /// The outcome is unknown: the record stays.
    Kept,
    /// The upstream accepted a write whose record was gone (cleared by an operator, or
    /// past the horizon) onto a tag held to another digest: the pin stays, and the
    /// upstream now differs from it.
    LandedAgainstPin { pinned: Digest },
}

/// Settle the write of `attempted` by `request_id` on one tag by its outcome.
pub fn settle_push(
    record: &mut TagRecord,
    attempted: &Digest,
    request_id: &str,
    outcome: Outcome,
    clock: Clock,
) -> (Settled, Vec<Expired>) {
    let mut expired = expire(record, clock);
    let settled = match outcome {
        Outcome::Unknown => Settled::Kept,
        Outcome::NotApplied => {
            take_own(record, attempted, request_id);
            Settled::Withdrawn
        }
        Outcome::Applied => {
            let own = take_own(record, attempted, request_id);
            applied(record, attempted, request_id, own, clock.now)
        }
    };
    // A release freed by a withdrawn write may have expired or been cancelled meanwhile.
    expired.extend(expire(record, clock));
    (settled, expired)
}

/// The writes a lost settlement may have left on a tag with no pin: pushes of a new
/// tag past the in-doubt horizon, which can no longer land. Each is completed by
/// [`complete_lost`] when the upstream shows its digest at the tag.
pub fn lost_settlements(record: &TagRecord, clock: Clock) -> Vec<Claim> {
    if record.pin.is_some() {
        return Vec::new();
    }
    record
        .writes
        .iter()
        .filter(|w| w.kind == ClaimKind::New && w.claimed_at.saturating_add(clock.horizon) < clock.now)
        .cloned()
        .collect()
}

/// Complete `write` (found by [`lost_settlements`]) now that the upstream shows
/// `at_upstream` at the tag: when that is its digest, as if its own answer had come and
/// accepted it. The write can no longer land, so the tag holds its digest for good
/// whether it landed or another client put the same bytes there. `None`: nothing to do
/// (the upstream shows something else, or the record changed meanwhile).
pub fn complete_lost(
    record: &mut TagRecord,
    write: &Claim,
    at_upstream: Option<&Digest>,
    clock: Clock,
) -> Option<Settled> {
    let still = lost_settlements(record, clock)
        .iter()
        .any(|w| w.request_id == write.request_id && w.digest == write.digest);
    if !still || at_upstream != Some(&write.digest) {
        return None;
    }
    Some(settle_push(record, &write.digest, &write.request_id, Outcome::Applied, clock).0)
}

/// Remove and return the write of `request_id` for `attempted`.
fn take_own(record: &mut TagRecord, attempted: &Digest, request_id: &str) -> Option<Claim> {
    let i = record
        .writes
        .iter()
        .position(|w| w.request_id == request_id && &w.digest == attempted)?;
    Some(record.writes.remove(i))
}

fn applied(record: &mut TagRecord, attempted: &Digest, request_id: &str, own: Option<Claim>, now: u64) -> Settled {
    let Some(pin) = record.pin.as_mut() else {
        if own.is_none() && record.writes.iter().any(|w| &w.digest != attempted) {
            // Another digest's write is in flight: it decides what the tag holds.
            return Settled::LandedAgainstPin {
                pinned: record.writes[0].digest.clone(),
            };
        }
        let mut pin = Pin::now(attempted.clone(), PinSource::Push);
        pin.pinned_at = now;
        pin.history[0].at = now;
        pin.history[0].request_id = Some(request_id.to_owned());
        record.set_pin(pin);
        return Settled::Pinned;
    };
    if &pin.digest == attempted {
        return Settled::Unchanged;
    }
    let event = match own.as_ref().map(|w| w.kind) {
        Some(ClaimKind::Append) => HistoryEvent::Append,
        Some(ClaimKind::AuditMove) => HistoryEvent::AuditMove,
        Some(ClaimKind::Release) => HistoryEvent::Released,
        _ => {
            return Settled::LandedAgainstPin {
                pinned: pin.digest.clone(),
            }
        }
    };
    let from = std::mem::replace(&mut pin.digest, attempted.clone());
    let mut entry = HistoryEntry::new(event, attempted.clone(), Some(from.clone()));
    entry.at = now;
    entry.request_id = Some(request_id.to_owned());
    if event == HistoryEvent::Released {
        let used = own.as_ref().and_then(|w| w.release_id.as_deref());
        // The release this write named is spent with it; a newer one stays.
        if let Some(r) = record.release.take_if(|r| Some(r.id.as_str()) == used) {
            entry.by = Some(r.by);
            entry.reason = Some(r.reason);
        }
    }
    pin.history.push(entry);
    Settled::Moved { from, event }
}
