//! The `PinStore` contract for the history log: every binding a change makes is one entry,
//! appended in the same write, numbered in one order with no gap; a change the store
//! refuses appends nothing; the stored tree (head and subtree hashes) is the tree of the
//! stored leaves. Run against every backend, as `store_contract.rs` is.

mod common;
#[macro_use]
mod store_support;

use store_support::*;
use tagpin::log::merkle::{self, Frontier};
use tagpin::log::{self, LogEntry, LogEvent};
use tagpin::store::{Claim, Exported, HistoryEntry, HistoryEvent, PinStore, StoreError, TagRecord};

/// Every entry, parsed, after checking the stored tree against the leaves: the head's
/// root is the root of the leaves, and each inclusion and consistency proof the stored
/// subtrees give verifies.
fn entries(s: &dyn PinStore) -> Vec<LogEntry> {
    let head = s.log_head().unwrap();
    let leaves = s.log_leaves(0, head.size()).unwrap();
    assert_eq!(leaves.len() as u64, head.size(), "one leaf per index");
    let mut rebuilt = Frontier::default();
    let mut roots = Vec::new();
    for leaf in &leaves {
        rebuilt.append(merkle::leaf_hash(leaf));
        roots.push(rebuilt.root());
    }
    assert_eq!(rebuilt.root(), head.root(), "the head is the tree of the leaves");
    let n = head.size();
    for i in 0..n {
        let proof = log::inclusion_proof(s, i, n).unwrap();
        assert!(merkle::verify_inclusion(
            i,
            n,
            &merkle::leaf_hash(&leaves[i as usize]),
            &proof,
            &head.root()
        ));
        let m = i + 1;
        let proof = log::consistency_proof(s, m, n).unwrap();
        assert!(
            merkle::verify_consistency(m, n, &roots[i as usize], &head.root(), &proof),
            "{m} -> {n}"
        );
        assert_eq!(log::root_at(s, m).unwrap(), roots[i as usize]);
    }
    leaves
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let e = LogEntry::parse(l).expect("a leaf is an entry");
            assert_eq!(e.index, i as u64, "numbered by position");
            e
        })
        .collect()
}

/// The entries replayed give each pinned tag's digest, and only pinned tags.
fn replays_to_the_pins(s: &dyn PinStore, entries: &[LogEntry]) {
    let mut replayed = std::collections::BTreeMap::new();
    for e in entries {
        replayed.insert((e.repository.clone(), e.tag.clone()), e.digest.clone());
    }
    let pinned: std::collections::BTreeMap<_, _> = s
        .list(None, None, 1000)
        .unwrap()
        .into_iter()
        .filter_map(|(r, t, state)| match state {
            tagpin::store::TagState::Claimed(_) => None,
            other => Some(((r, t), other.digest().clone())),
        })
        .collect();
    assert_eq!(replayed, pinned);
}

fn every_binding_is_one_entry_in_the_same_write(s: &dyn PinStore) {
    let r = repo("log/app");
    assert_eq!(s.log_head().unwrap().size(), 0);
    s.pin_if_absent(&r, &[(tag("a"), pin('a')), (tag("b"), pin('b'))])
        .unwrap();
    // Pinned already: no second entry.
    s.pin_if_absent(&r, &[(tag("a"), pin('c'))]).unwrap();
    // A claim binds nothing.
    claim(s, &r, one(&tag("c")), &Claim::now(d('c'), "req-c"));
    // An append moves the pin: one entry naming the digest before.
    s.update(&r, one(&tag("a")), &mut |_, records| {
        let p = records[0].pin.as_mut().unwrap();
        p.digest = d('e');
        let mut e = HistoryEntry::new(HistoryEvent::Append, d('e'), Some(d('a')));
        e.request_id = Some("req-append".into());
        p.history.push(e);
    })
    .unwrap();
    // History that binds nothing (an expired release) is no entry.
    s.update(&r, one(&tag("b")), &mut |_, records| {
        let p = records[0].pin.as_mut().unwrap();
        p.history
            .push(HistoryEntry::new(HistoryEvent::ReleaseExpired, d('b'), None));
    })
    .unwrap();
    // An import: one `imported` entry per pin written, naming who imported it.
    let imported = Exported::of(repo("log/other"), tag("x"), &pin('f'));
    s.import(&[imported], "ops").unwrap();

    let got = entries(s);
    let seen: Vec<(&str, LogEvent, Option<&str>)> = got
        .iter()
        .map(|e| (e.tag.as_str(), e.event, e.previous.as_ref().map(|p| p.as_str())))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("a", LogEvent::Push, None),
            ("b", LogEvent::Push, None),
            ("a", LogEvent::Append, Some(d('a').as_str())),
            ("x", LogEvent::Imported, None),
        ]
    );
    assert_eq!(got[2].by.as_deref(), Some("req-append"));
    assert_eq!(got[3].by.as_deref(), Some("ops"));
    replays_to_the_pins(s, &got);
    // Each history entry knows its log entry.
    let a = s.record(&r, &tag("a")).unwrap().pin.unwrap();
    assert_eq!(
        a.history.iter().map(|e| e.log).collect::<Vec<_>>(),
        vec![Some(0), Some(2)]
    );
}

fn a_refused_change_appends_nothing(s: &dyn PinStore) {
    let r = repo("log/refused");
    s.pin_if_absent(&r, &[(tag("a"), pin('a'))]).unwrap();
    let size = s.log_head().unwrap().size();
    // A pin moved with no history entry to record it: refused whole, the other tag too.
    let silent = s.update(&r, &[tag("b"), tag("a")], &mut |_, records| {
        records[0].set_pin(pin('b'));
        records[1].pin.as_mut().unwrap().digest = d('c');
    });
    assert!(matches!(silent, Err(StoreError::Corrupt { .. })), "{silent:?}");
    assert_eq!(s.log_head().unwrap().size(), size);
    assert_eq!(s.record(&r, &tag("b")).unwrap(), TagRecord::default());
    // Another refusal (two writes of one request) in the same update as a new pin.
    let twice = s.update(&r, &[tag("b"), tag("c")], &mut |_, records| {
        records[0].set_pin(pin('b'));
        records[1].writes = vec![Claim::now(d('e'), "twice"), Claim::now(d('e'), "twice")];
    });
    assert!(twice.is_err());
    assert_eq!(s.log_head().unwrap().size(), size);
    replays_to_the_pins(s, &entries(s));
}

fn concurrent_appends_are_numbered_once_each(s: &dyn PinStore) {
    let r = repo("log/race");
    std::thread::scope(|sc| {
        for w in 0..4 {
            let r = &r;
            sc.spawn(move || {
                for i in 0..10 {
                    let t = tag(&format!("w{w}-{i}"));
                    s.pin_if_absent(
                        r,
                        &[(
                            t,
                            tagpin::store::Pin::now(dn(w * 100 + i), tagpin::store::PinSource::Push),
                        )],
                    )
                    .unwrap();
                }
            });
        }
    });
    let got = entries(s);
    assert_eq!(got.len(), 40, "one entry per pin, none twice, no gap");
    replays_to_the_pins(s, &got);
}

contract!(
    every_binding_is_one_entry_in_the_same_write,
    a_refused_change_appends_nothing,
    concurrent_appends_are_numbered_once_each,
);

/// A pin moved by hand in the database, with a history entry made to look like tagpin's
/// (no log index): the next write tagpin makes on the tag must not append that entry to
/// the log (which would make the forged move look recorded, and `log verify` agree with
/// it). The write is refused instead, and the log does not grow.
#[test]
fn postgres_a_forged_history_entry_is_not_laundered_into_the_log() {
    let name = common::postgres::fresh_database("forged");
    let s = tagpin::store::PgStore::open(common::postgres::shared().config(&name)).unwrap();
    let (r, t) = (repo("log/forged"), tag("1.0"));
    s.pin_if_absent(&r, &[(t.clone(), pin('a'))]).unwrap();
    assert_eq!(s.log_head().unwrap().size(), 1);
    let mut db = common::postgres::shared().connect(&name);
    db.batch_execute(&format!(
        "SET tagpin.log = 'on';
         UPDATE pins SET digest = '{e}', history = history || jsonb_build_array(jsonb_build_object(
           'at', 1700000000, 'event', 'audit_move', 'digest', '{e}', 'from', '{a}'))
         WHERE repository = 'log/forged' AND tag = '1.0'",
        e = d('e'),
        a = d('a')
    ))
    .unwrap();
    // A push of the digest the tag now holds records its write in flight.
    let again = s.update(&r, one(&t), &mut |_, records| {
        records[0]
            .writes
            .push(Claim::of_kind(d('e'), "req-again", tagpin::store::ClaimKind::Identical));
    });
    let got = entries(&s);
    assert_eq!(
        got.iter().map(|e| e.event).collect::<Vec<_>>(),
        vec![LogEvent::Push],
        "the forged move is not in the log"
    );
    assert!(matches!(again, Err(StoreError::Corrupt { .. })), "{again:?}");
}
