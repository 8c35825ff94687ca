//! The `PinStore` contract for what is kept beside tag records: digest deletes in flight,
//! the references that protect pinned content, and refused attempts. Run against every
//! backend, as `store_contract.rs` is.

mod common;
#[macro_use]
mod store_support;

use store_support::*;
use tagpin::store::{export_page, now_secs, PinStore, Protect, Refused, MAX_REFUSALS};

fn deletes_are_recorded_per_request_and_settled_only_by_their_own(s: &dyn PinStore) {
    const LONG: u64 = 3600;
    let (r, other) = (repo("a/b"), repo("a"));
    assert!(s.deletes_in_flight(&r, &[d('a')], LONG).unwrap().is_empty());
    s.begin_delete(&r, &d('a'), "r1").unwrap();
    s.begin_delete(&r, &d('a'), "r1").unwrap(); // a repeat of the same request
    s.begin_delete(&r, &d('a'), "r2").unwrap();
    s.begin_delete(&r, &d('b'), "r3").unwrap();
    assert_eq!(
        s.deletes_in_flight(&r, &[d('c'), d('b'), d('a')], LONG).unwrap(),
        vec![d('b'), d('a')],
        "in the order asked"
    );
    assert!(s.deletes_in_flight(&other, &[d('a')], LONG).unwrap().is_empty());
    assert!(s.deletes_in_flight(&r, &[], LONG).unwrap().is_empty());
    s.end_delete(&r, &d('a'), "r1").unwrap();
    assert_eq!(
        s.deletes_in_flight(&r, &[d('a')], LONG).unwrap(),
        vec![d('a')],
        "one request's answer settles only its own record"
    );
    s.end_delete(&r, &d('a'), "unknown").unwrap();
    s.end_delete(&r, &d('b'), "r2").unwrap();
    s.end_delete(&other, &d('a'), "r2").unwrap();
    assert_eq!(
        s.deletes_in_flight(&r, &[d('a'), d('b')], LONG).unwrap(),
        vec![d('a'), d('b')]
    );
    s.end_delete(&r, &d('a'), "r2").unwrap();
    assert_eq!(s.deletes_in_flight(&r, &[d('a'), d('b')], LONG).unwrap(), vec![d('b')]);
    s.end_delete(&r, &d('a'), "r2").unwrap(); // again: nothing left to settle
}

fn deletes_in_flight_honour_the_horizon(s: &dyn PinStore) {
    let r = repo("a/b");
    s.begin_delete(&r, &d('a'), "r1").unwrap();
    // Started now (or a moment ago): within any horizon, since times are whole seconds
    // and a record counts for the whole of its last second.
    assert_eq!(s.deletes_in_flight(&r, &[d('a')], 30).unwrap(), vec![d('a')]);
    assert_eq!(s.deletes_in_flight(&r, &[d('a')], u64::MAX).unwrap(), vec![d('a')]);
    // Past the horizon is not settled: the record stays until its answer.
    assert_eq!(s.list_deletes(Some(&r)).unwrap().len(), 1);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert!(
        s.deletes_in_flight(&r, &[d('a')], 1).unwrap().is_empty(),
        "older than 1 s"
    );
    assert!(s.deletes_in_flight(&r, &[d('a')], 0).unwrap().is_empty());
    assert_eq!(s.deletes_in_flight(&r, &[d('a')], 60).unwrap(), vec![d('a')]);
    // A repeat of the request starts its time again.
    s.begin_delete(&r, &d('a'), "r1").unwrap();
    assert_eq!(s.deletes_in_flight(&r, &[d('a')], 1).unwrap(), vec![d('a')]);
}

fn list_deletes_shows_every_record_in_key_order(s: &dyn PinStore) {
    let (r, other) = (repo("a/b"), repo("a"));
    assert!(s.list_deletes(None).unwrap().is_empty());
    let before = now_secs();
    for (repo, digest, id) in [(&r, 'b', "z"), (&r, 'a', "r2"), (&other, 'a', "r9"), (&r, 'a', "R1")] {
        s.begin_delete(repo, &d(digest), id).unwrap();
    }
    let after = now_secs();
    let all = s.list_deletes(None).unwrap();
    let keys: Vec<(String, char, &str)> = all
        .iter()
        .map(|x| {
            let c = x.digest.as_str().chars().last().unwrap();
            (x.repository.to_string(), c, x.request_id.as_str())
        })
        .collect();
    assert_eq!(
        keys,
        [
            ("a".to_owned(), 'a', "r9"),
            ("a/b".to_owned(), 'a', "R1"),
            ("a/b".to_owned(), 'a', "r2"),
            ("a/b".to_owned(), 'b', "z"),
        ]
    );
    for x in &all {
        assert!(
            before.saturating_sub(1) <= x.started_at && x.started_at <= after + 1,
            "{x:?}"
        );
    }
    assert_eq!(s.list_deletes(Some(&r)).unwrap(), all[1..]);
    assert_eq!(s.list_deletes(Some(&other)).unwrap(), all[..1]);
    assert!(s.list_deletes(Some(&repo("a/b/c"))).unwrap().is_empty());
    s.end_delete(&r, &d('a'), "R1").unwrap();
    assert_eq!(s.list_deletes(Some(&r)).unwrap(), all[2..]);
}

fn references_and_holders(s: &dyn PinStore) {
    let (r, other) = (repo("a/b"), repo("a"));
    let full = |durable| Protect {
        durable,
        complete: true,
    };
    assert!(!s.has_refs(&r, &d('1')).unwrap());
    assert!(s.refs_of(&r, &d('1')).unwrap().is_empty());
    s.protect(&r, &d('1'), &[d('b'), d('a')], full(true)).unwrap();
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
    assert_eq!(s.refs_of(&r, &d('9')).unwrap(), vec![d('e')]);
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
    // From the holder's side, in byte order, per repository.
    assert_eq!(s.refs_of(&r, &d('1')).unwrap(), vec![d('a'), d('b')]);
    assert_eq!(s.refs_of(&r, &d('9')).unwrap(), vec![d('e'), d('f')]);
    assert!(s.refs_of(&other, &d('1')).unwrap().is_empty());
    assert!(s.refs_of(&r, &d('a')).unwrap().is_empty(), "a reference holds nothing");
    // Holders: the distinct digests pinned or written in the repository, sorted.
    assert!(s.holders(&r).unwrap().is_empty());
    s.pin_if_absent(&r, &[(tag("v1"), pin('1')), (tag("v1.0"), pin('1'))])
        .unwrap();
    add_write(s, &r, &tag("v2"), &tagpin::store::Claim::now(d('3'), "r"));
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
        delete: n.is_multiple_of(5),
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

/// Refused attempts travel through export and import: into a store without them they
/// arrive whole; importing them again adds none twice.
fn refusals_travel_through_export_and_import(s: &dyn PinStore) {
    let (from, to, t) = (repo("from"), repo("to"), tag("v1"));
    s.pin_if_absent(&from, &[(t.clone(), pin('a'))]).unwrap();
    let refused = |n: u64, delete: bool| Refused {
        at: n,
        attempted: Some(d('b')),
        delete,
        client: "127.0.0.1:9".into(),
        user: Some("mallory".into()),
        user_agent: "test".into(),
        request_id: format!("req-{n}"),
    };
    s.record_refusal(&from, &t, &refused(1, false)).unwrap();
    s.record_refusal(&from, &t, &refused(2, true)).unwrap();
    let page = s.list(Some(&from), None, 10).unwrap();
    let back: Vec<_> = export_page(s, &page)
        .unwrap()
        .into_iter()
        .map(|e| serde_json::to_string(&e).unwrap())
        .map(|l| {
            let mut e: tagpin::store::Exported = serde_json::from_str(&l).unwrap();
            e.repository = to.clone();
            e
        })
        .collect();
    assert_eq!(back[0].refused, vec![refused(1, false), refused(2, true)]);
    assert_eq!(s.import(&back, "test").unwrap().imported, 1);
    assert_eq!(s.refusals(&to, &t).unwrap(), s.refusals(&from, &t).unwrap());
    // Again, onto a tag that was refused meanwhile: each attempt once, in time order.
    s.record_refusal(&to, &t, &refused(3, false)).unwrap();
    assert_eq!(s.import(&back, "test").unwrap().unchanged, 1);
    assert_eq!(
        s.refusals(&to, &t).unwrap(),
        vec![refused(1, false), refused(2, true), refused(3, false)]
    );
}

contract!(
    refusals_travel_through_export_and_import,
    deletes_are_recorded_per_request_and_settled_only_by_their_own,
    deletes_in_flight_honour_the_horizon,
    list_deletes_shows_every_record_in_key_order,
    references_and_holders,
    refusals_are_capped,
);

// Reopening a store, and `check()` on a full disk.
#[path = "store_support/lifecycle.rs"]
mod lifecycle;
