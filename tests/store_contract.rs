//! The `PinStore` contract, written once as functions over `&dyn PinStore` and run
//! against every backend: sled in a temp dir, and PostgreSQL with a fresh database per
//! test on one server per test process. A backend that differs from the others in any
//! behaviour here fails the same-named test.

mod common;

use std::sync::Barrier;

use common::postgres::{fresh_database, shared};
use tagpin::oci::{Digest, Repository, Tag};
use tagpin::store::{
    Claim, ClaimKind, Exported, HistoryEvent, PgStore, Pin, PinSource, PinStore, Protect, Refused, Release, SledStore,
    StoreError, TagState, MAX_REFUSALS,
};

fn d(c: char) -> Digest {
    Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
}

/// Digest number `n`, for tests that need many distinct ones.
fn dn(n: usize) -> Digest {
    Digest::parse(&format!("sha256:{n:064x}")).unwrap()
}

fn repo(s: &str) -> Repository {
    Repository::parse(s).unwrap()
}

fn tag(s: &str) -> Tag {
    Tag::parse(s).unwrap()
}

fn pin(c: char) -> Pin {
    Pin::now(d(c), PinSource::Push)
}

fn one(t: &Tag) -> &[Tag] {
    std::slice::from_ref(t)
}

fn digest_of(state: Option<TagState>) -> Option<Digest> {
    state.map(|s| s.digest().clone())
}

// ---------------------------------------------------------------------------------------
// The contract.

fn first_pin_wins(s: &dyn PinStore) {
    let (r, t) = (repo("a/b"), tag("v1"));
    assert_eq!(s.state(&r, &t).unwrap(), None);
    let first = pin('a');
    assert_eq!(
        s.pin_if_absent(&r, &[(t.clone(), first.clone())]).unwrap(),
        vec![TagState::Pinned(first.clone())]
    );
    let got = s.pin_if_absent(&r, &[(t.clone(), pin('b'))]).unwrap();
    assert_eq!(got, vec![TagState::Pinned(first.clone())], "the first pin stays");
    assert_eq!(s.state(&r, &t).unwrap(), Some(TagState::Pinned(first)));
    assert_eq!(s.tags_pinned_to(&r, &d('a')).unwrap(), vec![t.clone()]);
    assert!(s.tags_pinned_to(&r, &d('b')).unwrap().is_empty());
    // Several tags at once, answered in order; the same tag in another repository is
    // another tag.
    let got = s
        .pin_if_absent(&r, &[(tag("v2"), pin('c')), (t.clone(), pin('c'))])
        .unwrap();
    assert_eq!(
        got.iter().map(TagState::digest).collect::<Vec<_>>(),
        vec![&d('c'), &d('a')]
    );
    assert_eq!(s.state(&repo("a"), &t).unwrap(), None);
    assert!(s.tags_pinned_to(&repo("a"), &d('a')).unwrap().is_empty());
    s.check().unwrap();
}

fn tags_pinned_to_lists_pins_and_claims_in_byte_order(s: &dyn PinStore) {
    let r = repo("a/b");
    s.pin_if_absent(&r, &[(tag("a1"), pin('a')), (tag("T1"), pin('a'))])
        .unwrap();
    s.claim(&r, &[tag("_x"), tag("B2")], &Claim::now(d('a'), "r")).unwrap();
    s.pin_if_absent(&r, &[(tag("other"), pin('b'))]).unwrap();
    assert_eq!(
        s.tags_pinned_to(&r, &d('a')).unwrap(),
        vec![tag("B2"), tag("T1"), tag("_x"), tag("a1")]
    );
}

fn claims_hold_like_pins(s: &dyn PinStore) {
    let (r, t) = (repo("a/b"), tag("v1"));
    let c = Claim::now(d('a'), "req-1");
    assert_eq!(s.claim(&r, one(&t), &c).unwrap(), vec![TagState::Claimed(c.clone())]);
    // A second claim and an adoption both find the first claim.
    let got = s.claim(&r, one(&t), &Claim::now(d('b'), "req-2")).unwrap();
    assert_eq!(got, vec![TagState::Claimed(c.clone())]);
    let got = s
        .pin_if_absent(&r, &[(t.clone(), Pin::now(d('b'), PinSource::Adopted))])
        .unwrap();
    assert_eq!(got, vec![TagState::Claimed(c.clone())]);
    assert_eq!(s.state(&r, &t).unwrap(), Some(TagState::Claimed(c.clone())));
    assert_eq!(s.tags_pinned_to(&r, &d('a')).unwrap(), vec![t.clone()]);
    // A claim of several tags takes the free ones and reports the others as they are.
    let p = pin('8');
    s.pin_if_absent(&r, &[(tag("pinned"), p.clone())]).unwrap();
    let c3 = Claim::now(d('c'), "req-3");
    let got = s.claim(&r, &[tag("free"), tag("pinned"), t.clone()], &c3).unwrap();
    assert_eq!(
        got,
        vec![TagState::Claimed(c3.clone()), TagState::Pinned(p), TagState::Claimed(c)]
    );
    assert_eq!(s.tags_pinned_to(&r, &d('c')).unwrap(), vec![tag("free")]);
}

fn confirm_turns_the_claim_into_a_pin(s: &dyn PinStore) {
    let (r, t) = (repo("a/b"), tag("v1"));
    s.claim(&r, one(&t), &Claim::now(d('a'), "creator")).unwrap();
    let got = s.confirm(&r, one(&t), &d('a')).unwrap();
    let TagState::Pinned(p) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!((&p.digest, p.source), (&d('a'), PinSource::Push));
    assert_eq!(p.history.len(), 1);
    assert_eq!(p.history[0].event, HistoryEvent::Push);
    assert_eq!(p.history[0].request_id.as_deref(), Some("creator"));
    assert_eq!(s.state(&r, &t).unwrap(), Some(got[0].clone()));
    // Confirming again changes nothing; confirming another digest never moves the pin.
    assert_eq!(s.confirm(&r, one(&t), &d('a')).unwrap(), got);
    let other = s.confirm(&r, one(&t), &d('b')).unwrap();
    assert_eq!(other, got, "a tag held to another digest is reported, not moved");
    assert_eq!(s.state(&r, &t).unwrap(), Some(got[0].clone()));
    assert_eq!(s.tags_pinned_to(&r, &d('a')).unwrap(), vec![t.clone()]);
    assert!(s.tags_pinned_to(&r, &d('b')).unwrap().is_empty());
    // A claim for another digest is not confirmed by this one.
    let u = tag("v2");
    let c = Claim::now(d('c'), "r2");
    s.claim(&r, one(&u), &c).unwrap();
    assert_eq!(s.confirm(&r, one(&u), &d('e')).unwrap(), vec![TagState::Claimed(c)]);
}

fn only_the_creating_request_withdraws(s: &dyn PinStore) {
    let (r, t) = (repo("a/b"), tag("v1"));
    let c = Claim::now(d('a'), "creator");
    s.claim(&r, one(&t), &c).unwrap();
    s.withdraw(&r, one(&t), "a-retry").unwrap();
    assert_eq!(s.state(&r, &t).unwrap(), Some(TagState::Claimed(c)));
    s.withdraw(&r, one(&t), "creator").unwrap();
    assert_eq!(s.state(&r, &t).unwrap(), None);
    assert!(s.tags_pinned_to(&r, &d('a')).unwrap().is_empty());
    // A withdrawn tag is free again.
    let c2 = Claim::now(d('b'), "second");
    assert_eq!(s.claim(&r, one(&t), &c2).unwrap(), vec![TagState::Claimed(c2)]);
    // Withdrawing never touches a pin, and withdrawing an advance keeps the pin.
    let u = tag("pinned");
    let p = pin('8');
    s.pin_if_absent(&r, &[(u.clone(), p.clone())]).unwrap();
    s.withdraw(&r, one(&u), "creator").unwrap();
    assert_eq!(s.state(&r, &u).unwrap(), Some(TagState::Pinned(p.clone())));
    s.claim_advance(&r, &u, &d('8'), &Claim::of_kind(d('7'), "adv", ClaimKind::Append))
        .unwrap();
    s.withdraw(&r, one(&u), "adv").unwrap();
    assert_eq!(s.state(&r, &u).unwrap(), Some(TagState::Pinned(p)));
    assert_eq!(s.tags_pinned_to(&r, &d('8')).unwrap(), vec![u]);
    assert!(s.tags_pinned_to(&r, &d('7')).unwrap().is_empty());
}

fn claim_advance_only_from_the_pinned_digest(s: &dyn PinStore) {
    let (r, t) = (repo("a/b"), tag("sha256-x"));
    let p = pin('a');
    s.pin_if_absent(&r, &[(t.clone(), p.clone())]).unwrap();
    let stale = Claim::of_kind(d('c'), "stale", ClaimKind::Append);
    assert_eq!(
        s.claim_advance(&r, &t, &d('b'), &stale).unwrap(),
        TagState::Pinned(p.clone()),
        "decided against a digest the tag is not pinned to"
    );
    let c = Claim::of_kind(d('b'), "adv", ClaimKind::Append);
    let advancing = TagState::Advancing {
        pin: p.clone(),
        claim: c.clone(),
    };
    assert_eq!(s.claim_advance(&r, &t, &d('a'), &c).unwrap(), advancing);
    // A second advance from the same digest finds the first one in flight.
    let rival = Claim::of_kind(d('c'), "rival", ClaimKind::Append);
    assert_eq!(s.claim_advance(&r, &t, &d('a'), &rival).unwrap(), advancing);
    assert_eq!(s.state(&r, &t).unwrap(), Some(advancing.clone()));
    // While it is in flight, the tag counts as held to both digests.
    assert_eq!(s.tags_pinned_to(&r, &d('a')).unwrap(), vec![t.clone()]);
    assert_eq!(s.tags_pinned_to(&r, &d('b')).unwrap(), vec![t.clone()]);
    // A push of a third digest, or a new claim, finds the advance.
    assert_eq!(
        s.claim(&r, one(&t), &Claim::now(d('e'), "other")).unwrap(),
        vec![advancing]
    );
    let got = s.confirm(&r, one(&t), &d('b')).unwrap();
    let TagState::Pinned(moved) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(moved.digest, d('b'));
    assert_eq!(moved.pinned_at, p.pinned_at, "the pin keeps its birth");
    let last = moved.history.last().unwrap();
    assert_eq!(
        (last.event, &last.digest, last.from.as_ref(), last.request_id.as_deref()),
        (HistoryEvent::Append, &d('b'), Some(&d('a')), Some("adv"))
    );
    assert_eq!(moved.history.len(), 2);
    assert!(s.tags_pinned_to(&r, &d('a')).unwrap().is_empty());
    assert_eq!(s.tags_pinned_to(&r, &d('b')).unwrap(), vec![t.clone()]);
    // An audited move is recorded as one.
    s.claim_advance(&r, &t, &d('b'), &Claim::of_kind(d('c'), "audit", ClaimKind::AuditMove))
        .unwrap();
    let got = s.confirm(&r, one(&t), &d('c')).unwrap();
    let TagState::Pinned(audited) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(audited.history.last().unwrap().event, HistoryEvent::AuditMove);
    // A claimed (not pinned) tag cannot be advanced; a free one is an error.
    let u = tag("claimed");
    let c = Claim::now(d('a'), "new");
    s.claim(&r, one(&u), &c).unwrap();
    assert_eq!(
        s.claim_advance(&r, &u, &d('a'), &Claim::of_kind(d('b'), "x", ClaimKind::Append))
            .unwrap(),
        TagState::Claimed(c)
    );
    assert!(s
        .claim_advance(
            &r,
            &tag("free"),
            &d('a'),
            &Claim::of_kind(d('b'), "x", ClaimKind::Append)
        )
        .is_err());
    assert_eq!(s.state(&r, &tag("free")).unwrap(), None);
}

fn a_release_is_used_once_by_the_confirm_it_allows(s: &dyn PinStore) {
    let (r, t) = (repo("a/b"), tag("v1"));
    s.pin_if_absent(&r, &[(t.clone(), pin('a'))]).unwrap();
    assert_eq!(s.release(&r, &t).unwrap(), None);
    let mut release = Release {
        by: "alice".into(),
        reason: "first".into(),
        created_at: 1,
        expires_at: u64::MAX,
    };
    s.set_release(&r, &t, &release).unwrap();
    release.reason = "broken build".into();
    s.set_release(&r, &t, &release).unwrap();
    assert_eq!(s.release(&r, &t).unwrap(), Some(release.clone()), "replaced");
    let claim = Claim::of_kind(d('b'), "rel", ClaimKind::Release);
    s.claim_advance(&r, &t, &d('a'), &claim).unwrap();
    let got = s.confirm(&r, one(&t), &d('b')).unwrap();
    let TagState::Pinned(p) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(p.digest, d('b'));
    let last = p.history.last().unwrap();
    assert_eq!(
        (
            last.event,
            last.by.as_deref(),
            last.reason.as_deref(),
            last.from.as_ref(),
            last.request_id.as_deref()
        ),
        (
            HistoryEvent::Released,
            Some("alice"),
            Some("broken build"),
            Some(&d('a')),
            Some("rel")
        )
    );
    assert_eq!(s.release(&r, &t).unwrap(), None, "used up");
    assert!(s.tags_pinned_to(&r, &d('a')).unwrap().is_empty());
    assert_eq!(s.tags_pinned_to(&r, &d('b')).unwrap(), vec![t.clone()]);
    // An append's confirm does not use a release that happens to be in force.
    s.set_release(&r, &t, &release).unwrap();
    s.claim_advance(&r, &t, &d('b'), &Claim::of_kind(d('c'), "app", ClaimKind::Append))
        .unwrap();
    s.confirm(&r, one(&t), &d('c')).unwrap();
    assert_eq!(s.release(&r, &t).unwrap(), Some(release));
}

fn end_release_records_why(s: &dyn PinStore) {
    let (r, t) = (repo("a/b"), tag("v1"));
    s.pin_if_absent(&r, &[(t.clone(), pin('a'))]).unwrap();
    assert_eq!(
        s.end_release(&r, &t, HistoryEvent::ReleaseCancelled, None).unwrap(),
        None,
        "no release, nothing ended"
    );
    let release = Release {
        by: "bob".into(),
        reason: "why".into(),
        created_at: 1,
        expires_at: 2,
    };
    s.set_release(&r, &t, &release).unwrap();
    assert_eq!(
        s.end_release(&r, &t, HistoryEvent::ReleaseExpired, None).unwrap(),
        Some(release.clone())
    );
    assert_eq!(s.end_release(&r, &t, HistoryEvent::ReleaseExpired, None).unwrap(), None);
    s.set_release(&r, &t, &release).unwrap();
    s.end_release(&r, &t, HistoryEvent::Released, Some("del-1")).unwrap();
    let Some(TagState::Pinned(p)) = s.state(&r, &t).unwrap() else {
        panic!("still pinned")
    };
    assert_eq!(p.digest, d('a'));
    let events: Vec<_> = p
        .history
        .iter()
        .map(|e| (e.event, e.by.as_deref(), e.request_id.as_deref()))
        .collect();
    assert_eq!(
        events,
        vec![
            (HistoryEvent::Push, None, None),
            (HistoryEvent::ReleaseExpired, Some("bob"), None),
            (HistoryEvent::Released, Some("bob"), Some("del-1")),
        ]
    );
    // A release on a tag without a pin ends without history to write.
    let u = tag("unpinned");
    s.set_release(&r, &u, &release).unwrap();
    assert_eq!(
        s.end_release(&r, &u, HistoryEvent::ReleaseCancelled, None).unwrap(),
        Some(release)
    );
    assert_eq!(s.state(&r, &u).unwrap(), None);
}

fn record_event_appends_without_moving(s: &dyn PinStore) {
    let (r, t) = (repo("a/b"), tag("v1"));
    s.pin_if_absent(&r, &[(t.clone(), pin('a'))]).unwrap();
    let entry = tagpin::store::HistoryEntry::new(HistoryEvent::AuditDelete, d('a'), None);
    s.record_event(&r, &t, &entry).unwrap();
    let Some(TagState::Pinned(p)) = s.state(&r, &t).unwrap() else {
        panic!()
    };
    assert_eq!(p.digest, d('a'));
    assert_eq!(p.history.last(), Some(&entry));
    // No pin: nothing to record, and no pin appears.
    s.record_event(&r, &tag("free"), &entry).unwrap();
    assert_eq!(s.state(&r, &tag("free")).unwrap(), None);
}

fn deletes_in_flight_are_recorded_per_request(s: &dyn PinStore) {
    let (r, other) = (repo("a/b"), repo("a"));
    assert!(!s.delete_in_flight(&r, &d('a')).unwrap());
    s.begin_delete(&r, &d('a'), "r1").unwrap();
    s.begin_delete(&r, &d('a'), "r1").unwrap(); // a retry of the same request
    s.begin_delete(&r, &d('a'), "r2").unwrap();
    assert!(s.delete_in_flight(&r, &d('a')).unwrap());
    assert!(!s.delete_in_flight(&r, &d('b')).unwrap());
    assert!(!s.delete_in_flight(&other, &d('a')).unwrap());
    s.end_delete(&r, &d('a'), Some("r1")).unwrap();
    assert!(
        s.delete_in_flight(&r, &d('a')).unwrap(),
        "one request's refusal settles only its own record"
    );
    s.end_delete(&r, &d('a'), Some("unknown")).unwrap();
    assert!(s.delete_in_flight(&r, &d('a')).unwrap());
    s.end_delete(&r, &d('a'), Some("r2")).unwrap();
    assert!(!s.delete_in_flight(&r, &d('a')).unwrap());
    // The manifest is gone: every delete recorded so far is settled, in this repository.
    for id in ["r3", "r4", "r5"] {
        s.begin_delete(&r, &d('b'), id).unwrap();
    }
    s.begin_delete(&other, &d('b'), "r6").unwrap();
    s.begin_delete(&r, &d('c'), "r7").unwrap();
    s.end_delete(&r, &d('b'), None).unwrap();
    assert!(!s.delete_in_flight(&r, &d('b')).unwrap());
    assert!(s.delete_in_flight(&other, &d('b')).unwrap());
    assert!(s.delete_in_flight(&r, &d('c')).unwrap());
}

fn references_and_holders(s: &dyn PinStore) {
    let (r, other) = (repo("a/b"), repo("a"));
    let full = |durable| Protect {
        durable,
        complete: true,
    };
    assert!(!s.has_refs(&r, &d('1')).unwrap());
    s.protect(&r, &d('1'), &[d('a'), d('b')], full(true)).unwrap();
    s.protect(&r, &d('2'), &[d('b')], full(false)).unwrap();
    s.protect(&r, &d('1'), &[d('a')], full(true)).unwrap(); // again: idempotent
    s.protect(
        &r,
        &d('9'),
        &[d('e')],
        Protect {
            durable: true,
            complete: false,
        },
    )
    .unwrap();
    assert!(
        !s.has_refs(&r, &d('9')).unwrap(),
        "incomplete references are asked about again"
    );
    assert_eq!(
        s.referenced_by(&r, &d('e')).unwrap(),
        vec![d('9')],
        "but what was learned protects already"
    );
    // Asked again and learned in full: now recorded.
    s.protect(&r, &d('9'), &[d('e'), d('f')], full(true)).unwrap();
    assert!(s.has_refs(&r, &d('9')).unwrap());
    assert!(s.has_refs(&r, &d('1')).unwrap());
    assert!(s.has_refs(&r, &d('2')).unwrap());
    assert!(!s.has_refs(&other, &d('1')).unwrap());
    assert_eq!(s.referenced_by(&r, &d('a')).unwrap(), vec![d('1')]);
    assert_eq!(s.referenced_by(&r, &d('b')).unwrap(), vec![d('1'), d('2')]);
    assert!(s.referenced_by(&other, &d('a')).unwrap().is_empty());
    assert!(s.referenced_by(&r, &d('c')).unwrap().is_empty());
    // Holders: the distinct digests pinned or claimed in the repository, sorted.
    assert!(s.holders(&r).unwrap().is_empty());
    s.pin_if_absent(&r, &[(tag("v1"), pin('1')), (tag("v1.0"), pin('1'))])
        .unwrap();
    s.claim(&r, &[tag("v2")], &Claim::now(d('3'), "r")).unwrap();
    s.pin_if_absent(&r, &[(tag("v3"), pin('2'))]).unwrap();
    s.pin_if_absent(&other, &[(tag("x"), pin('4'))]).unwrap();
    assert_eq!(s.holders(&r).unwrap(), vec![d('1'), d('2'), d('3')]);
    assert_eq!(s.holders(&other).unwrap(), vec![d('4')]);
}

fn refusals_are_capped(s: &dyn PinStore) {
    let (r, t) = (repo("a/b"), tag("v1"));
    assert!(s.refusals(&r, &t).unwrap().is_empty());
    let refused = |n: usize| Refused {
        at: n as u64,
        attempted: n.is_multiple_of(2).then(|| dn(n)),
        client: "127.0.0.1".into(),
        user: n.is_multiple_of(3).then(|| format!("user-{n}")),
        user_agent: "test".into(),
        request_id: format!("req-{n}"),
    };
    let extra = 7;
    for n in 0..MAX_REFUSALS + extra {
        s.record_refusal(&r, &t, &refused(n)).unwrap();
    }
    s.record_refusal(&r, &tag("v2"), &refused(1000)).unwrap();
    let kept = s.refusals(&r, &t).unwrap();
    assert_eq!(kept.len(), MAX_REFUSALS);
    let expected: Vec<Refused> = (extra..MAX_REFUSALS + extra).map(refused).collect();
    assert_eq!(kept, expected, "the last ones, oldest first");
    assert_eq!(s.refusals(&r, &tag("v2")).unwrap(), vec![refused(1000)]);
    assert!(s.refusals(&repo("a"), &t).unwrap().is_empty());
}

fn list_pages_through_pins_and_claims_in_key_order(s: &dyn PinStore) {
    let (a, ab, a_dash) = (repo("a"), repo("a/b"), repo("a-b"));
    // Upper case sorts before lower case in byte order, whatever the database's locale.
    for (i, name) in ["t0", "t1", "T2", "t3", "t4", "_5"].iter().enumerate() {
        let t = tag(name);
        if i % 2 == 0 {
            s.pin_if_absent(&a, &[(t, pin('1'))]).unwrap();
        } else {
            s.claim(&a, &[t], &Claim::now(d('2'), "r")).unwrap();
        }
    }
    // An advance in flight is listed once, with both halves.
    s.claim_advance(
        &a,
        &tag("t0"),
        &d('1'),
        &Claim::of_kind(d('5'), "adv", ClaimKind::Append),
    )
    .unwrap();
    s.pin_if_absent(&ab, &[(tag("x"), Pin::now(d('3'), PinSource::Adopted))])
        .unwrap();
    s.pin_if_absent(&a_dash, &[(tag("y"), pin('4'))]).unwrap();
    let expected = [
        "a:T2:pinned",
        "a:_5:claimed",
        "a:t0:advancing",
        "a:t1:claimed",
        "a:t3:claimed",
        "a:t4:pinned",
        "a-b:y:pinned",
        "a/b:x:pinned",
    ];
    let render = |page: Vec<(Repository, Tag, TagState)>| -> Vec<String> {
        page.into_iter()
            .map(|(r, t, st)| {
                let kind = match st {
                    TagState::Pinned(_) => "pinned",
                    TagState::Claimed(_) => "claimed",
                    TagState::Advancing { .. } => "advancing",
                };
                format!("{r}:{t}:{kind}")
            })
            .collect()
    };
    for limit in [1, 2, 3, 100] {
        let mut seen = Vec::new();
        let mut after: Option<(Repository, Tag)> = None;
        for _ in 0..=expected.len() {
            let page = s.list(None, after.as_ref(), limit).unwrap();
            assert!(page.len() <= limit);
            if page.is_empty() {
                break;
            }
            after = page.last().map(|(r, t, _)| (r.clone(), t.clone()));
            seen.extend(render(page));
        }
        assert_eq!(seen, expected, "pages of {limit}");
    }
    // Filtered by repository: `a` is not a prefix of `a/b` or `a-b` here.
    assert_eq!(render(s.list(Some(&a), None, 100).unwrap()), expected[..6]);
    assert_eq!(render(s.list(Some(&ab), None, 100).unwrap()), ["a/b:x:pinned"]);
    let after = (a.clone(), tag("t1"));
    assert_eq!(
        render(s.list(Some(&a), Some(&after), 100).unwrap()),
        ["a:t3:claimed", "a:t4:pinned"]
    );
    assert!(s.list(Some(&repo("a/b/c")), None, 100).unwrap().is_empty());
    assert!(s.list(None, None, 0).unwrap().is_empty());
}

/// The only store of its process may lead, and keeps leading.
fn a_lone_store_leads(s: &dyn PinStore) {
    assert!(s.lead().unwrap());
    assert!(s.lead().unwrap(), "leading is kept, not re-won");
}

fn export(s: &dyn PinStore, r: &Repository) -> Vec<Exported> {
    s.list(Some(r), None, 1000)
        .unwrap()
        .into_iter()
        .map(|(r, t, st)| Exported::from_state(r, t, &st))
        .collect()
}

fn import_is_all_or_nothing(s: &dyn PinStore) {
    let r = repo("a/b");
    s.pin_if_absent(&r, &[(tag("v1"), pin('a'))]).unwrap();
    s.claim(&r, &[tag("claimed")], &Claim::now(d('c'), "rc")).unwrap();
    let rec = |t: &str, c: char| Exported::of(r.clone(), tag(t), &pin(c));
    let out = s.import(&[rec("v1", 'a'), rec("v2", 'b')]).unwrap();
    assert_eq!((out.imported, out.unchanged, out.conflicts.len()), (1, 1, 0), "{out:?}");
    // One conflict (another digest), and nothing of the import is written.
    let out = s.import(&[rec("v3", 'c'), rec("v1", 'f')]).unwrap();
    assert_eq!((out.imported, out.conflicts.len()), (0, 1), "{out:?}");
    assert_eq!(s.state(&r, &tag("v3")).unwrap(), None, "nothing written");
    // A claim held here conflicts with a pin of the same digest, and a claim in the
    // import conflicts with a pin held here.
    let out = s.import(&[rec("v4", 'd'), rec("claimed", 'c')]).unwrap();
    assert_eq!((out.imported, out.conflicts.len()), (0, 1), "{out:?}");
    let advancing = Exported {
        claim: Some(Claim::of_kind(d('6'), "x", ClaimKind::Append)),
        ..rec("v1", 'a')
    };
    let out = s.import(&[rec("v4", 'd'), advancing]).unwrap();
    assert_eq!((out.imported, out.conflicts.len()), (0, 1), "{out:?}");
    // The same tag twice with different digests.
    let out = s.import(&[rec("v5", 'e'), rec("v5", 'f')]).unwrap();
    assert_eq!((out.imported, out.conflicts.len()), (0, 1), "{out:?}");
    assert_eq!(s.state(&r, &tag("v4")).unwrap(), None);
    assert_eq!(s.state(&r, &tag("v5")).unwrap(), None);
    assert!(s.tags_pinned_to(&r, &d('d')).unwrap().is_empty());
    assert_eq!(s.tags_pinned_to(&r, &d('b')).unwrap(), vec![tag("v2")]);
}

fn claims_travel_through_export_and_import(s: &dyn PinStore) {
    let (from, to) = (repo("from"), repo("to"));
    s.pin_if_absent(&from, &[(tag("v1"), pin('a')), (tag("plain"), pin('8'))])
        .unwrap();
    s.claim_advance(
        &from,
        &tag("v1"),
        &d('a'),
        &Claim::of_kind(d('b'), "r1", ClaimKind::Append),
    )
    .unwrap();
    s.claim(&from, &[tag("free")], &Claim::now(d('c'), "r2")).unwrap();
    // Through JSON, as `tagpin export | tagpin import` carries them, into another
    // repository of the same store.
    let back: Vec<Exported> = export(s, &from)
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .map(|l| {
            let mut e: Exported = serde_json::from_str(&l).unwrap();
            e.repository = to.clone();
            e
        })
        .collect();
    assert_eq!(back.len(), 3);
    assert_eq!(s.import(&back).unwrap().imported, 3);
    for t in ["v1", "plain", "free"] {
        assert_eq!(
            s.state(&to, &tag(t)).unwrap(),
            s.state(&from, &tag(t)).unwrap(),
            "{t}: what was in flight stays in flight"
        );
    }
    assert!(matches!(s.state(&to, &tag("free")).unwrap(), Some(TagState::Claimed(c)) if c.digest == d('c')));
    assert_eq!(s.tags_pinned_to(&to, &d('c')).unwrap(), vec![tag("free")]);
    assert_eq!(s.tags_pinned_to(&to, &d('b')).unwrap(), vec![tag("v1")]);
    assert_eq!(s.holders(&to).unwrap(), s.holders(&from).unwrap());
    // The imported claims behave like the originals: only their request withdraws them,
    // and the advance confirms.
    s.withdraw(&to, &[tag("free")], "someone-else").unwrap();
    assert!(s.state(&to, &tag("free")).unwrap().is_some());
    s.withdraw(&to, &[tag("free")], "r2").unwrap();
    assert_eq!(s.state(&to, &tag("free")).unwrap(), None);
    assert_eq!(
        digest_of(s.confirm(&to, &[tag("v1")], &d('b')).unwrap().pop()),
        Some(d('b'))
    );
    // Importing the same records again changes nothing, except where the store moved on:
    // the tag now free is written again, the confirmed advance conflicts.
    let out = s.import(&back[..]).unwrap();
    assert_eq!((out.imported, out.conflicts.len()), (0, 1), "{out:?}");
    let unchanged: Vec<Exported> = back.into_iter().filter(|e| e.tag.as_str() == "plain").collect();
    assert_eq!(s.import(&unchanged).unwrap().unchanged, 1);
}

fn racing_claims_have_one_winner(s: &dyn PinStore) {
    const THREADS: usize = 12;
    let r = repo("race");
    for round in 0..15 {
        let t = tag(&format!("r{round}"));
        let barrier = Barrier::new(THREADS);
        let results: Vec<(Digest, Vec<TagState>)> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..THREADS)
                .map(|i| {
                    let (t, r, barrier) = (&t, &r, &barrier);
                    sc.spawn(move || {
                        let mine = dn(round * 100 + i);
                        barrier.wait();
                        let got = s.claim(r, one(t), &Claim::now(mine.clone(), &format!("req-{i}")));
                        (mine, got.unwrap())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let held: Vec<&Digest> = results.iter().map(|(_, st)| st[0].digest()).collect();
        let winners: Vec<&Digest> = results
            .iter()
            .filter(|(mine, st)| st[0].digest() == mine)
            .map(|(m, _)| m)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {held:?}");
        assert!(held.iter().all(|h| *h == winners[0]), "round {round}: {held:?}");
        assert_eq!(digest_of(s.state(&r, &t).unwrap()).as_ref(), Some(winners[0]));
        assert_eq!(s.tags_pinned_to(&r, winners[0]).unwrap(), vec![t.clone()]);
    }
}

fn racing_advances_have_one_winner(s: &dyn PinStore) {
    const THREADS: usize = 8;
    let (r, t) = (repo("race"), tag("sha256-append"));
    s.pin_if_absent(&r, &[(t.clone(), Pin::now(dn(0), PinSource::Push))])
        .unwrap();
    let mut current = dn(0);
    for round in 1..10 {
        let barrier = Barrier::new(THREADS);
        let results: Vec<(Digest, TagState)> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..THREADS)
                .map(|i| {
                    let (t, r, barrier, from) = (&t, &r, &barrier, &current);
                    sc.spawn(move || {
                        let mine = dn(round * 100 + i);
                        let claim = Claim::of_kind(mine.clone(), &format!("req-{round}-{i}"), ClaimKind::Append);
                        barrier.wait();
                        let got = s.claim_advance(r, t, from, &claim).unwrap();
                        if got.claim().map(|c| &c.digest) == Some(&mine) {
                            s.confirm(r, one(t), &mine).unwrap();
                        }
                        (mine, got)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<&Digest> = results
            .iter()
            .filter(|(mine, st)| st.claim().map(|c| &c.digest) == Some(mine))
            .map(|(m, _)| m)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let Some(TagState::Pinned(p)) = s.state(&r, &t).unwrap() else {
            panic!("round {round}: not pinned")
        };
        assert_eq!(&p.digest, winners[0]);
        assert_eq!(p.history.len(), round + 1, "one entry per accepted advance");
        assert_eq!(p.history.last().unwrap().from.as_ref(), Some(&current));
        current = p.digest;
    }
}

// ---------------------------------------------------------------------------------------
// The backends.

/// A store of one backend, and whatever must live as long as it.
struct Fresh {
    store: Box<dyn PinStore>,
    _dir: Option<tempfile::TempDir>,
}

fn sled_store() -> Fresh {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    Fresh {
        store: Box::new(store),
        _dir: Some(dir),
    }
}

fn pg_store() -> Fresh {
    let name = fresh_database("contract");
    Fresh {
        store: Box::new(PgStore::open(shared().config(&name)).unwrap()),
        _dir: None,
    }
}

/// One `#[test]` per contract function and backend: `sled::NAME`, `postgres::NAME`.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sled {
            $(#[test] fn $name() { super::$name(&*super::sled_store().store) })*
        }
        mod postgres {
            $(#[test] fn $name() { super::$name(&*super::pg_store().store) })*
        }
    };
}

contract!(
    first_pin_wins,
    tags_pinned_to_lists_pins_and_claims_in_byte_order,
    claims_hold_like_pins,
    confirm_turns_the_claim_into_a_pin,
    only_the_creating_request_withdraws,
    claim_advance_only_from_the_pinned_digest,
    a_release_is_used_once_by_the_confirm_it_allows,
    end_release_records_why,
    record_event_appends_without_moving,
    deletes_in_flight_are_recorded_per_request,
    references_and_holders,
    refusals_are_capped,
    list_pages_through_pins_and_claims_in_key_order,
    import_is_all_or_nothing,
    claims_travel_through_export_and_import,
    racing_claims_have_one_winner,
    racing_advances_have_one_winner,
    a_lone_store_leads,
);

// ---------------------------------------------------------------------------------------
// PostgreSQL only: what several replicas on one database rely on.

/// Claims racing through separate stores (separate pools, as separate replicas have) on
/// one database: still one winner.
#[test]
fn postgres_claims_racing_across_stores_have_one_winner() {
    const STORES: usize = 4;
    let name = fresh_database("replicas");
    let stores: Vec<PgStore> = (0..STORES)
        .map(|_| PgStore::open(shared().config(&name)).unwrap())
        .collect();
    let r = repo("race");
    for round in 0..15 {
        let t = tag(&format!("r{round}"));
        let barrier = Barrier::new(STORES * 2);
        let held: Vec<(Digest, Digest)> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..STORES * 2)
                .map(|i| {
                    let (t, r, barrier, s) = (&t, &r, &barrier, &stores[i % STORES]);
                    sc.spawn(move || {
                        let mine = dn(round * 100 + i);
                        barrier.wait();
                        let got = s.claim(r, one(t), &Claim::now(mine.clone(), "x")).unwrap();
                        (mine, got[0].digest().clone())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners = held.iter().filter(|(m, h)| m == h).count();
        assert_eq!(winners, 1, "round {round}: {held:?}");
        assert!(held.windows(2).all(|w| w[0].1 == w[1].1), "round {round}: {held:?}");
    }
}

/// Of several stores on one database one leads (the periodic drift check runs there),
/// and when it goes away another takes over.
#[test]
fn postgres_one_store_leads_and_leadership_passes_on() {
    let name = fresh_database("lead");
    let first = PgStore::open(shared().config(&name)).unwrap();
    let second = PgStore::open(shared().config(&name)).unwrap();
    assert!(first.lead().unwrap());
    assert!(!second.lead().unwrap(), "two leaders");
    assert!(first.lead().unwrap());
    drop(first);
    let mut took_over = false;
    for _ in 0..50 {
        if second.lead().unwrap() {
            took_over = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(took_over, "the leader lock was not released with its store");
}

/// Stores opening together on an empty database apply the schema once.
#[test]
fn postgres_stores_opening_together_migrate_once() {
    let name = fresh_database("migrate");
    let barrier = Barrier::new(6);
    std::thread::scope(|sc| {
        for _ in 0..6 {
            let (barrier, name) = (&barrier, &name);
            sc.spawn(move || {
                let config = shared().config(name);
                barrier.wait();
                PgStore::open(config).unwrap().check().unwrap();
            });
        }
    });
    let mut c = shared().connect(&name);
    let rows = c.query("SELECT version FROM tagpin_schema", &[]).unwrap();
    assert_eq!(rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>(), vec![1]);
}

/// A database holding a newer schema than this tagpin knows is refused at open.
#[test]
fn postgres_refuses_a_newer_schema() {
    let name = fresh_database("newer");
    PgStore::open(shared().config(&name)).unwrap();
    shared()
        .connect(&name)
        .execute("INSERT INTO tagpin_schema (version, applied_at) VALUES (99, 0)", &[])
        .unwrap();
    assert!(matches!(
        PgStore::open(shared().config(&name)),
        Err(StoreError::Corrupt { .. })
    ));
}

/// While the server is down every call fails (the caller refuses the write); once it is
/// back, the same store answers again without being reopened, and nothing was lost.
#[test]
fn postgres_store_fails_while_the_server_is_down_and_recovers() {
    let mut server = common::postgres::PgServer::start();
    server.create_database("outage");
    let s = PgStore::open(server.config("outage")).unwrap();
    let (r, t) = (repo("a"), tag("v1"));
    s.pin_if_absent(&r, &[(t.clone(), pin('a'))]).unwrap();
    server.stop();
    assert!(s.state(&r, &t).is_err());
    assert!(s.claim(&r, &[tag("v2")], &Claim::now(d('b'), "x")).is_err());
    assert!(s.check().is_err());
    server.start_again();
    let mut back = false;
    for _ in 0..100 {
        if s.check().is_ok() {
            back = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(back, "the store did not recover");
    assert_eq!(digest_of(s.state(&r, &t).unwrap()), Some(d('a')));
    assert_eq!(s.state(&r, &tag("v2")).unwrap(), None, "the failed claim left nothing");
}
