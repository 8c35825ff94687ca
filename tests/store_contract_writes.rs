//! The `PinStore` contract for how a push's writes reach the store, on every backend:
//! the claim with the manifest's references in one write, the settlement written without
//! waiting for the disk but seen at once, and the walk over the writes in flight alone.

mod common;
#[macro_use]
mod store_support;

use store_support::*;
use tagpin::store::{Claim, PinStore, Protection};

/// `update_protecting` records the references and the claim together; `has_refs` and
/// `refs_of` see both once it returns, and the claim is in force.
fn the_claim_carries_the_references(s: &dyn PinStore) {
    let (r, t) = (repo("w/refs"), tag("v1"));
    let refs = Protection {
        holder: d('a'),
        refs: vec![d('b'), d('c')],
        complete: true,
    };
    let written = s
        .update_protecting(&r, one(&t), &refs, &mut |_, records| {
            records[0].writes.push(Claim::now(d('a'), "req-1"));
        })
        .unwrap();
    assert_eq!(written[0].writes.len(), 1);
    assert!(s.has_refs(&r, &d('a')).unwrap());
    assert_eq!(s.refs_of(&r, &d('a')).unwrap(), vec![d('b'), d('c')]);
    assert_eq!(s.referenced_by(&r, &d('b')).unwrap(), vec![d('a')]);
    assert_eq!(s.tags_pinned_to(&r, &d('a')).unwrap(), vec![t.clone()]);
    // Incomplete references are recorded but the holder is not marked as done.
    let partial = Protection {
        holder: d('e'),
        refs: vec![d('f')],
        complete: false,
    };
    s.update_protecting(&r, one(&tag("v2")), &partial, &mut |_, _| {})
        .unwrap();
    assert!(!s.has_refs(&r, &d('e')).unwrap());
    assert_eq!(s.referenced_by(&r, &d('f')).unwrap(), vec![d('e')]);
}

/// A settlement written by `confirm` is what every later call sees, with its log entry.
fn a_confirmed_settlement_is_seen_at_once(s: &dyn PinStore) {
    let (r, t) = (repo("w/confirm"), tag("v1"));
    claim(s, &r, one(&t), &Claim::now(d('a'), "req-1"));
    let size = s.log_head().unwrap().size();
    s.confirm(&r, one(&t), &mut |_, records| {
        records[0].writes.clear();
        records[0].set_pin(pin('a'));
    })
    .unwrap();
    let record = s.record(&r, &t).unwrap();
    assert_eq!(record.pin.as_ref().map(|p| p.digest.clone()), Some(d('a')));
    assert!(record.writes.is_empty());
    assert_eq!(s.read_view(&r, &t, true).unwrap().pin, Some(d('a')));
    assert_eq!(
        s.log_head().unwrap().size(),
        size + 1,
        "the pin's log entry came with it"
    );
}

/// `claimed` lists the tags with writes in flight, in key order, a page at a time, and
/// no pinned tag without one.
fn claimed_walks_the_writes_in_flight_alone(s: &dyn PinStore) {
    let r = repo("w/claimed");
    for i in 0..5 {
        let t = tag(&format!("p{i}"));
        s.update(&r, one(&t), &mut |_, records| records[0].set_pin(pin('a')))
            .unwrap();
    }
    for name in ["c3", "c1", "c2"] {
        claim(s, &r, one(&tag(name)), &Claim::now(d('b'), &format!("req-{name}")));
    }
    add_write(s, &r, &tag("p2"), &Claim::now(d('a'), "req-p2"));
    let first = s.claimed(None, 2).unwrap();
    assert_eq!(first, vec![(r.clone(), tag("c1")), (r.clone(), tag("c2"))]);
    let rest = s.claimed(first.last(), 10).unwrap();
    assert_eq!(rest, vec![(r.clone(), tag("c3")), (r.clone(), tag("p2"))]);
    assert!(s.claimed(rest.last(), 10).unwrap().is_empty());
}

contract!(
    the_claim_carries_the_references,
    a_confirmed_settlement_is_seen_at_once,
    claimed_walks_the_writes_in_flight_alone,
);
