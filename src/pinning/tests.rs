//! Table tests of single transitions; the simulation (`sim`) checks their interleavings.

use super::*;
use crate::oci::{Digest, Tag};
use crate::policy::{ConflictReason, Decided, DecidedBy, Mode, NotAppend};
use crate::store::{ClaimKind, HistoryEvent, Pin, PinSource, Release};

fn d(n: u8) -> Digest {
    Digest::parse(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap()
}

fn tag() -> Tag {
    Tag::parse("v1").unwrap()
}

const CLOCK: Clock = Clock {
    now: 1000,
    horizon: 100,
};

fn pinned(n: u8) -> TagRecord {
    TagRecord {
        pin: Some(Pin::now(d(n), PinSource::Push)),
        ..TagRecord::default()
    }
}

fn input(mode: Mode, append: Option<(Digest, Result<(), NotAppend>)>) -> PushTag {
    PushTag {
        tag: tag(),
        decided: Decided {
            mode,
            by: DecidedBy::Default,
        },
        append,
    }
}

fn push(record: &mut TagRecord, n: u8, id: &str, mode: Mode) -> Result<Verdict, ConflictReason> {
    let begun = begin_push(std::slice::from_mut(record), &[input(mode, None)], &d(n), id, CLOCK);
    begun
        .decision
        .map(|mut v| v.remove(0))
        .map_err(|mut c| c.remove(0).reason)
}

fn release(id: &str, expires_at: u64) -> Release {
    Release {
        id: id.into(),
        cancelled: false,
        by: "alice".into(),
        reason: "fix".into(),
        created_at: 900,
        expires_at,
    }
}

#[test]
fn every_allowed_push_leaves_a_record_of_its_own() {
    let mut free = TagRecord::default();
    assert_eq!(push(&mut free, 1, "a", Mode::Immutable), Ok(Verdict::NewPin));
    assert_eq!(
        push(&mut free, 1, "b", Mode::Immutable),
        Ok(Verdict::NewPin),
        "a retry joins"
    );
    assert_eq!(free.writes.len(), 2);
    assert_eq!(push(&mut free, 2, "c", Mode::Audit), Err(ConflictReason::InFlight));

    let mut same = pinned(1);
    assert_eq!(push(&mut same, 1, "a", Mode::Immutable), Ok(Verdict::Identical));
    assert_eq!(same.writes[0].kind, ClaimKind::Identical);
    // While the identical re-push may still land, not even an audit move is decided.
    assert_eq!(push(&mut same, 2, "b", Mode::Audit), Err(ConflictReason::InFlight));
}

#[test]
fn modes_decide_a_push_of_another_digest() {
    let why = NotAppend::MediaTypeChanged;
    let cases = [
        (Mode::Immutable, None, Err(ConflictReason::Immutable)),
        (Mode::Audit, None, Ok(Verdict::AuditMove { from: d(2) })),
        (
            Mode::AppendOnly,
            Some((d(2), Ok(()))),
            Ok(Verdict::Append { from: d(2) }),
        ),
        (
            Mode::AppendOnly,
            Some((d(2), Err(why.clone()))),
            Err(ConflictReason::NotAppendOnly(why)),
        ),
        // A comparison with a digest the tag is no longer pinned to counts for nothing:
        // another push moved it meanwhile.
        (Mode::AppendOnly, Some((d(3), Ok(()))), Err(ConflictReason::InFlight)),
        (Mode::AppendOnly, None, Err(ConflictReason::Immutable)),
    ];
    for (mode, append, want) in cases {
        let mut r = pinned(2);
        let begun = begin_push(
            std::slice::from_mut(&mut r),
            &[input(mode, append.clone())],
            &d(1),
            "x",
            CLOCK,
        );
        let got = begun
            .decision
            .map(|mut v| v.remove(0))
            .map_err(|mut c| c.remove(0).reason);
        assert_eq!(got, want, "{mode:?} {append:?}");
        assert_eq!(r.writes.len(), usize::from(got.is_ok()), "refused: nothing recorded");
    }
}

#[test]
fn a_second_push_of_a_move_in_flight_is_decided_again() {
    let mut r = pinned(2);
    assert_eq!(push(&mut r, 1, "a", Mode::Audit), Ok(Verdict::AuditMove { from: d(2) }));
    // The operator made the tag immutable meanwhile: the same move is refused now.
    assert_eq!(push(&mut r, 1, "b", Mode::Immutable), Err(ConflictReason::Immutable));
    assert_eq!(push(&mut r, 1, "c", Mode::Audit), Ok(Verdict::AuditMove { from: d(2) }));
}

#[test]
fn a_release_is_used_once_and_given_back_only_if_unused() {
    let mut r = pinned(2);
    r.release = Some(release("r1", 2000));
    assert_eq!(
        push(&mut r, 1, "a", Mode::Immutable),
        Ok(Verdict::Released { from: d(2) })
    );
    assert_eq!(r.writes[0].release_id.as_deref(), Some("r1"));
    // In use: nothing else gets through, and no new release replaces it.
    let (set, _) = set_release(&mut r, &release("r2", 2000), CLOCK);
    assert!(matches!(set, SetRelease::Busy { .. }));
    // Refused by the upstream: free again, with no history written.
    let (s, _) = settle_push(&mut r, &d(1), "a", Outcome::NotApplied, CLOCK);
    assert_eq!(s, Settled::Withdrawn);
    assert_eq!(r.pin.as_ref().unwrap().history.len(), 1);
    assert!(r.release.is_some());
    // Used: the pin moves once, the release is spent.
    assert_eq!(
        push(&mut r, 3, "b", Mode::Immutable),
        Ok(Verdict::Released { from: d(2) })
    );
    let (s, _) = settle_push(&mut r, &d(3), "b", Outcome::Applied, CLOCK);
    assert_eq!(
        s,
        Settled::Moved {
            from: d(2),
            event: HistoryEvent::Released
        }
    );
    assert_eq!(r.release, None);
    assert_eq!(push(&mut r, 4, "c", Mode::Immutable), Err(ConflictReason::Immutable));
}

#[test]
fn a_release_cancelled_while_in_use_is_never_given_back() {
    let mut r = pinned(2);
    r.release = Some(release("r1", 2000));
    push(&mut r, 1, "a", Mode::Immutable).unwrap();
    let (c, _) = cancel_release(&mut r, "op", CLOCK);
    assert!(matches!(c, Cancel::InUse { ref request_id, .. } if request_id == "a"));
    settle_push(&mut r, &d(1), "a", Outcome::NotApplied, CLOCK);
    assert_eq!(r.release, None);
    assert_eq!(push(&mut r, 1, "b", Mode::Immutable), Err(ConflictReason::Immutable));
}

#[test]
fn an_expired_release_lets_nothing_through_by_the_stores_clock() {
    let mut r = pinned(2);
    r.release = Some(release("r1", CLOCK.now));
    assert_eq!(push(&mut r, 1, "a", Mode::Immutable), Err(ConflictReason::Immutable));
    assert_eq!(r.release, None, "ended by the transition");
    assert_eq!(
        r.pin.unwrap().history.last().unwrap().event,
        HistoryEvent::ReleaseExpired
    );
}

#[test]
fn an_expired_release_is_stamped_with_its_own_time_not_when_it_was_noticed() {
    let mut r = pinned(2);
    for e in &mut r.pin.as_mut().unwrap().history {
        e.at = 0;
    }
    r.release = Some(release("r1", CLOCK.now - 50));
    let later = Clock {
        now: CLOCK.now + 1000,
        ..CLOCK
    };
    let (view, expired) = as_of(&r, later);
    assert!(expired);
    assert!(r.release.is_some(), "as_of leaves the record alone");
    assert_eq!(push(&mut r, 1, "a", Mode::Immutable), Err(ConflictReason::Immutable));
    let last = r.pin.as_ref().unwrap().history.last().unwrap().clone();
    assert_eq!((last.event, last.at), (HistoryEvent::ReleaseExpired, CLOCK.now - 50));
    assert_eq!(
        view.pin.unwrap().history.last(),
        Some(&last),
        "the view shows the same entry"
    );
}

#[test]
fn only_a_writes_own_answer_settles_it_and_the_horizon_ends_it_under_a_pin() {
    let mut r = pinned(2);
    push(&mut r, 2, "a", Mode::Immutable).unwrap();
    let (s, _) = settle_push(&mut r, &d(2), "someone-else", Outcome::NotApplied, CLOCK);
    assert_eq!(
        (s, r.writes.len()),
        (Settled::Withdrawn, 1),
        "another request's answer settles nothing"
    );
    let (s, _) = settle_push(&mut r, &d(2), "a", Outcome::Unknown, CLOCK);
    assert_eq!((s, r.writes.len()), (Settled::Kept, 1));
    // It counts for the whole of its last second, and not after it.
    let last = Clock {
        now: CLOCK.now + 100,
        ..CLOCK
    };
    assert!(expire(&mut r, last).is_empty());
    let later = Clock {
        now: CLOCK.now + 101,
        ..CLOCK
    };
    assert_eq!(expire(&mut r, later).len(), 1);
    assert!(r.writes.is_empty());
    // With no pin the lost write may have bound the tag: it stays.
    let mut free = TagRecord::default();
    push(&mut free, 1, "a", Mode::Immutable).unwrap();
    assert!(expire(
        &mut free,
        Clock {
            now: CLOCK.now + 10_000,
            ..CLOCK
        }
    )
    .is_empty());
    assert_eq!(free.writes.len(), 1);
}

#[test]
fn a_tag_delete_is_refused_but_under_a_release_or_in_audit_mode() {
    let mut r = pinned(2);
    assert!(matches!(
        begin_tag_delete(&mut r, Mode::Immutable, "a", CLOCK).0,
        TagDelete::Refuse { .. }
    ));
    r.release = Some(release("r1", 2000));
    assert_eq!(
        begin_tag_delete(&mut r, Mode::Immutable, "a", CLOCK).0,
        TagDelete::Forward { released: true }
    );
    // A 401 from the upstream leaves no history and gives the release back.
    assert!(!settle_tag_delete(&mut r, "a", Outcome::NotApplied, CLOCK));
    assert_eq!(r.pin.as_ref().unwrap().history.len(), 1);
    assert!(r.release.is_some());
    assert_eq!(
        begin_tag_delete(&mut r, Mode::Immutable, "b", CLOCK).0,
        TagDelete::Forward { released: true }
    );
    assert!(settle_tag_delete(&mut r, "b", Outcome::Applied, CLOCK));
    assert_eq!(r.release, None);
    assert_eq!(r.pin.unwrap().history.last().unwrap().event, HistoryEvent::Released);
}
