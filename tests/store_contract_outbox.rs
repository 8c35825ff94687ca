//! The `Outbox` contract on every backend: appends numbered in order and deduplicated by
//! id, a new target's cursor at the end, leases held against other holders and renewed
//! by acknowledgements, the trim keeping what any target in use still needs, the bound
//! on the outbox's size, and timers.

mod common;
#[macro_use]
mod store_support;

use std::time::Duration;

use tagpin::notify::EventKind;
use tagpin::store::{Outbox, OutboxEvent, PinStore, Timer};

const LONG: Duration = Duration::from_secs(600);
const MAX: u64 = 1000;

fn outbox(s: &dyn PinStore) -> &dyn Outbox {
    s.outbox().expect("every backend keeps an outbox")
}

fn event(id: &str) -> OutboxEvent {
    OutboxEvent {
        id: id.into(),
        kind: EventKind::PushRefused,
        time_ms: 1,
        repository: Some("o/r".into()),
        tag: Some("v1".into()),
        data: serde_json::json!({ "n": id }),
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// The ids after `seq`, in order.
fn ids_after(o: &dyn Outbox, seq: u64) -> Vec<String> {
    o.outbox_after(seq, 100)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.id)
        .collect()
}

/// Events are numbered 1, 2, ... in append order; an id the outbox holds is skipped.
fn appends_number_in_order_and_skip_known_ids(s: &dyn PinStore) {
    let o = outbox(s);
    assert_eq!(
        o.outbox_append(&[event("a"), event("b")], &names(&["t"]), MAX).unwrap(),
        0
    );
    o.outbox_append(&[event("b"), event("c")], &names(&["t"]), MAX).unwrap();
    let all = o.outbox_after(0, 100).unwrap();
    let seqs: Vec<u64> = all.iter().map(|(n, _)| *n).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(all[2].1, event("c"));
    assert_eq!(ids_after(o, 1), ["b", "c"]);
    assert_eq!(o.outbox_after(0, 2).unwrap().len(), 2);
}

/// A target named at an append gets that append's events; one first seen at its lease
/// starts at the end.
fn a_new_target_starts_at_the_end(s: &dyn PinStore) {
    let o = outbox(s);
    o.outbox_append(&[event("old")], &[], MAX).unwrap();
    o.outbox_append(&[event("new")], &names(&["named"]), MAX).unwrap();
    let named = o.outbox_lease("named", "h1", LONG).unwrap().unwrap();
    assert_eq!(ids_after(o, named), ["new"]);
    let late = o.outbox_lease("late", "h1", LONG).unwrap().unwrap();
    assert!(ids_after(o, late).is_empty());
}

/// A lease keeps other holders out while it runs; the holder renews it; an expired one
/// goes to whoever asks; an ack is recorded for the holder alone and never moves back.
fn leases_hold_against_other_holders(s: &dyn PinStore) {
    let o = outbox(s);
    o.outbox_append(&[event("a"), event("b")], &names(&["t"]), MAX).unwrap();
    assert_eq!(o.outbox_lease("t", "h1", LONG).unwrap(), Some(0));
    assert_eq!(o.outbox_lease("t", "h2", LONG).unwrap(), None);
    assert!(!o.outbox_ack("t", "h2", 1, LONG).unwrap());
    assert!(o.outbox_ack("t", "h1", 2, LONG).unwrap());
    assert!(o.outbox_ack("t", "h1", 1, LONG).unwrap());
    assert_eq!(o.outbox_lease("t", "h1", Duration::ZERO).unwrap(), Some(2));
    // h1's lease ran out: h2 takes the target where h1 left it, and h1 is out.
    assert_eq!(o.outbox_lease("t", "h2", LONG).unwrap(), Some(2));
    assert!(!o.outbox_ack("t", "h1", 2, LONG).unwrap());
    assert_eq!(o.outbox_lease("t", "h1", LONG).unwrap(), None);
}

/// An ack renews the lease: a holder whose batch outlasts the lease it took, acking
/// event after event, keeps the target, and no other replica sends the same events.
fn an_ack_renews_the_lease(s: &dyn PinStore) {
    let o = outbox(s);
    o.outbox_append(&[event("a"), event("b")], &names(&["t"]), MAX).unwrap();
    assert_eq!(o.outbox_lease("t", "h1", Duration::ZERO).unwrap(), Some(0));
    assert!(o.outbox_ack("t", "h1", 1, LONG).unwrap());
    assert_eq!(
        o.outbox_lease("t", "h2", LONG).unwrap(),
        None,
        "h1 acked: its lease runs"
    );
}

/// The trim removes what every named target is done with, and keeps what one lags on.
fn trim_keeps_what_a_named_target_needs(s: &dyn PinStore) {
    let o = outbox(s);
    let both = names(&["fast", "slow"]);
    o.outbox_append(&[event("a"), event("b"), event("c")], &both, MAX)
        .unwrap();
    o.outbox_lease("fast", "h", LONG).unwrap();
    o.outbox_lease("slow", "h", LONG).unwrap();
    assert!(o.outbox_ack("fast", "h", 3, LONG).unwrap());
    assert!(o.outbox_ack("slow", "h", 1, LONG).unwrap());
    let stats = o.outbox_trim(&both, Duration::ZERO).unwrap();
    assert_eq!(stats.pending, 2);
    assert_eq!(stats.oldest_ms, Some(1));
    assert_eq!(ids_after(o, 0), ["b", "c"]);
    assert!(o.outbox_ack("slow", "h", 3, LONG).unwrap());
    let stats = o.outbox_trim(&both, Duration::ZERO).unwrap();
    assert_eq!((stats.pending, stats.oldest_ms), (0, None));
    assert!(ids_after(o, 0).is_empty());
    // Numbers are never reused.
    o.outbox_append(&[event("d")], &both, MAX).unwrap();
    assert_eq!(o.outbox_after(0, 10).unwrap()[0].0, 4);
}

/// During a rolling reload a target is in one replica's config and not yet in
/// another's: the other's trim must leave the events that target's cursor (created at an
/// append, or leased) has not reached.
fn trim_keeps_what_a_target_in_use_elsewhere_needs(s: &dyn PinStore) {
    let o = outbox(s);
    // Replica A has targets `old` and `new`; B has `old` alone.
    o.outbox_append(&[event("a")], &names(&["old", "new"]), MAX).unwrap();
    o.outbox_lease("old", "B", LONG).unwrap();
    assert!(o.outbox_ack("old", "B", 1, LONG).unwrap());
    o.outbox_trim(&names(&["old"]), LONG).unwrap();
    assert_eq!(ids_after(o, 0), ["a"], "`new`, created at A's append, still needs it");
    assert_eq!(o.outbox_lease("new", "A", LONG).unwrap(), Some(0));
    o.outbox_append(&[event("b")], &names(&["old"]), MAX).unwrap();
    o.outbox_trim(&names(&["old"]), LONG).unwrap();
    assert_eq!(ids_after(o, 0), ["a", "b"], "`new`, leased by A, still needs both");
    // A cursor nobody has used for `in_use` no longer holds events back.
    assert_eq!(o.outbox_lease("new", "A", Duration::ZERO).unwrap(), Some(0));
    let stats = o.outbox_trim(&names(&["old"]), Duration::ZERO).unwrap();
    assert_eq!(stats.pending, 1, "only `b`, which `old` has not acked");
    assert_eq!(ids_after(o, 0), ["b"]);
}

/// The outbox keeps at most `max` events: the oldest go, counted, and a target behind
/// them goes on from the oldest kept.
fn the_oldest_events_go_beyond_max(s: &dyn PinStore) {
    let o = outbox(s);
    let t = names(&["t"]);
    let batch: Vec<OutboxEvent> = (0..5).map(|i| event(&format!("e{i}"))).collect();
    assert_eq!(o.outbox_append(&batch, &t, 3).unwrap(), 2);
    assert_eq!(o.outbox_append(&[event("e5")], &t, 3).unwrap(), 1);
    let cursor = o.outbox_lease("t", "h", LONG).unwrap().unwrap();
    assert_eq!(cursor, 0);
    assert_eq!(ids_after(o, cursor), ["e3", "e4", "e5"]);
    // What is left is counted, not what was dropped.
    let stats = o.outbox_trim(&t, LONG).unwrap();
    assert_eq!(stats.pending, 3);
    assert_eq!(stats.oldest_ms, Some(1));
}

/// The outbox survives a restart: events, cursors and the numbering.
#[test]
fn both_backends_keep_the_outbox_across_a_reopen() {
    for fresh in [store_support::sled_store(), store_support::pg_store()] {
        let o = outbox(&*fresh.store);
        o.outbox_append(&[event("a"), event("b")], &names(&["t"]), MAX).unwrap();
        o.outbox_lease("t", "h", LONG).unwrap();
        assert!(o.outbox_ack("t", "h", 1, LONG).unwrap());
        let fresh = fresh.reopen();
        let o = outbox(&*fresh.store);
        assert_eq!(o.outbox_lease("t", "h", LONG).unwrap(), Some(1));
        assert_eq!(ids_after(o, 1), ["b"]);
        o.outbox_append(&[event("a"), event("c")], &names(&["t"]), MAX).unwrap();
        assert_eq!(o.outbox_after(1, 10).unwrap().last().unwrap().0, 3);
    }
}

/// Timers come back due, earliest first, until unscheduled; scheduling a key again
/// replaces it.
fn timers_come_due_in_order_until_unscheduled(s: &dyn PinStore) {
    let o = outbox(s);
    let timer = |key: &str, at_ms: u64| Timer {
        key: key.into(),
        at_ms,
        payload: format!("p-{key}"),
    };
    o.outbox_schedule(&timer("late", 300)).unwrap();
    o.outbox_schedule(&timer("early", 100)).unwrap();
    o.outbox_schedule(&timer("moved", 50)).unwrap();
    o.outbox_schedule(&timer("moved", 200)).unwrap();
    let due: Vec<String> = o.outbox_due(250, 10).unwrap().into_iter().map(|t| t.key).collect();
    assert_eq!(due, ["early", "moved"]);
    assert_eq!(o.outbox_due(1000, 1).unwrap(), vec![timer("early", 100)]);
    assert!(o.outbox_unschedule("early").unwrap());
    assert!(!o.outbox_unschedule("early").unwrap());
    let due: Vec<String> = o.outbox_due(1000, 10).unwrap().into_iter().map(|t| t.key).collect();
    assert_eq!(due, ["moved", "late"]);
    assert!(o.outbox_due(10, 10).unwrap().is_empty());
}

/// A refused attempt and its events are kept by one write: both are there after it, and
/// an event the outbox knows is not appended twice.
fn a_refusal_and_its_events_are_one_write(s: &dyn PinStore) {
    let o = outbox(s);
    let (r, t) = (store_support::repo("o/refused"), store_support::tag("v1"));
    let refused = tagpin::store::Refused {
        at: 5,
        attempted: None,
        delete: false,
        client: "127.0.0.1:1".into(),
        user: Some("alice".into()),
        user_agent: String::new(),
        request_id: "req-1".into(),
    };
    let dropped = o
        .record_refusal_notifying(&r, &t, &refused, &[event("r1")], &names(&["t"]), MAX)
        .unwrap();
    assert_eq!(dropped, 0);
    assert_eq!(s.refusals(&r, &t).unwrap(), vec![refused.clone()]);
    assert_eq!(ids_after(o, 0), ["r1"]);
    o.record_refusal_notifying(&r, &t, &refused, &[event("r1")], &names(&["t"]), MAX)
        .unwrap();
    assert_eq!(s.refusals(&r, &t).unwrap().len(), 2);
    assert_eq!(ids_after(o, 0), ["r1"]);
}

/// A transition's events and timers are written with it, in each kind of write; a
/// change that decides no event appends none.
fn a_transition_and_its_events_are_one_write(s: &dyn PinStore) {
    use tagpin::store::{Notifying, WriteKind};
    let o = outbox(s);
    let r = store_support::repo("o/transition");
    let targets = names(&["t"]);
    for (i, kind) in [WriteKind::Durable, WriteKind::Settling].into_iter().enumerate() {
        let tag = store_support::tag(&format!("v{i}"));
        let pinned = std::cell::Cell::new(false);
        let mut change = |_now: u64, records: &mut [tagpin::store::TagRecord]| {
            let digest = tagpin::oci::Digest::parse(&format!("sha256:{:064x}", i + 1)).unwrap();
            records[0].pin = Some(tagpin::store::Pin::now(digest, tagpin::store::PinSource::Push));
            pinned.set(true);
        };
        let id = format!("tx{i}");
        let mut events = || if pinned.get() { vec![event(&id)] } else { Vec::new() };
        let mut timers = || {
            vec![Timer {
                key: id.clone(),
                at_ms: 5,
                payload: String::new(),
            }]
        };
        let mut notify = Notifying {
            events: &mut events,
            timers: &mut timers,
            targets: &targets,
            max: MAX,
            dropped: 0,
        };
        s.write_notifying(kind, &r, std::slice::from_ref(&tag), &mut change, &mut notify)
            .unwrap();
        assert!(s.state(&r, &tag).unwrap().is_some());
        assert_eq!(ids_after(o, 0).last().map(String::as_str), Some(id.as_str()));
        assert!(o.outbox_due(10, 10).unwrap().iter().any(|t| t.key == id));
    }
    let before = ids_after(o, 0).len();
    let tag = store_support::tag("quiet");
    let mut change = |_now: u64, _records: &mut [tagpin::store::TagRecord]| {};
    let mut notify = Notifying {
        events: &mut Vec::new,
        timers: &mut Vec::new,
        targets: &targets,
        max: MAX,
        dropped: 0,
    };
    s.write_notifying(WriteKind::Durable, &r, &[tag], &mut change, &mut notify)
        .unwrap();
    assert_eq!(ids_after(o, 0).len(), before);
}

contract!(
    a_transition_and_its_events_are_one_write,
    a_refusal_and_its_events_are_one_write,
    appends_number_in_order_and_skip_known_ids,
    a_new_target_starts_at_the_end,
    leases_hold_against_other_holders,
    an_ack_renews_the_lease,
    trim_keeps_what_a_named_target_needs,
    trim_keeps_what_a_target_in_use_elsewhere_needs,
    the_oldest_events_go_beyond_max,
    timers_come_due_in_order_until_unscheduled,
);
