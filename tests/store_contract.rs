//! The `PinStore` contract for tag records, written once as functions over
//! `&dyn PinStore` and run against every backend: sled in a temp dir, and PostgreSQL with
//! a fresh database per test on one server per test process. A backend that differs from
//! the others in any behaviour here fails the same-named test. Deletes, references and
//! refusals are in `store_contract_refs.rs`; what only PostgreSQL has (several replicas on
//! one database, migrations) in `store_support/postgres_only.rs`, run from here.

mod common;
#[macro_use]
mod store_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;

use store_support::*;
use tagpin::oci::{Digest, Repository, Tag};
use tagpin::store::{
    now_secs, Claim, ClaimKind, Exported, HistoryEntry, HistoryEvent, Pin, PinSource, PinStore, Release, StoreError,
    TagRecord, TagState,
};

fn first_pin_wins(s: &dyn PinStore) {
    let (r, t) = (repo("a/b"), tag("v1"));
    assert_eq!(s.state(&r, &t).unwrap(), None);
    assert_eq!(s.record(&r, &t).unwrap(), TagRecord::default());
    let first = pin('a');
    assert_eq!(
        s.pin_if_absent(&r, &[(t.clone(), first.clone())])
            .unwrap()
            .into_iter()
            .map(unlogged_state)
            .collect::<Vec<_>>(),
        vec![TagState::Pinned(first.clone())]
    );
    let got = s.pin_if_absent(&r, &[(t.clone(), pin('b'))]).unwrap();
    let got: Vec<TagState> = got.into_iter().map(unlogged_state).collect();
    assert_eq!(got, vec![TagState::Pinned(first.clone())], "the first pin stays");
    assert_eq!(
        s.state(&r, &t).unwrap().map(unlogged_state),
        Some(TagState::Pinned(first))
    );
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

fn adoption_leaves_a_tag_with_a_write_alone(s: &dyn PinStore) {
    let (r, t) = (repo("a/b"), tag("v1"));
    let c = Claim::now(d('a'), "req-1");
    claim(s, &r, one(&t), &c);
    let got = s
        .pin_if_absent(&r, &[(t.clone(), Pin::now(d('b'), PinSource::Adopted))])
        .unwrap();
    assert_eq!(got, vec![TagState::Claimed(c.clone())]);
    assert_eq!(s.state(&r, &t).unwrap(), Some(TagState::Claimed(c)));
    assert!(s.tags_pinned_to(&r, &d('b')).unwrap().is_empty());
}

fn several_writes_and_a_release_round_trip(s: &dyn PinStore) {
    let (r, t) = (repo("a/b"), tag("v1"));
    let mut writes = vec![
        Claim::of_kind(d('b'), "r3", ClaimKind::Release),
        Claim::of_kind(d('b'), "r1", ClaimKind::Identical),
        Claim::of_kind(d('b'), "r2", ClaimKind::Delete),
        Claim::of_kind(d('b'), "r0", ClaimKind::AuditMove),
    ];
    writes[0].release_id = Some("rel-7".into());
    writes[1].claimed_at = 5;
    let record = TagRecord {
        pin: Some(pin('a')),
        writes,
        release: Some(Release {
            cancelled: true,
            ..release("rel-7")
        }),
        history: Vec::new(),
    };
    let written = s
        .update(&r, one(&t), &mut |_, records| records[0] = record.clone())
        .unwrap();
    let written: Vec<TagRecord> = written.into_iter().map(unlogged).collect();
    assert_eq!(written, vec![record.clone()], "returned as written");
    assert_eq!(
        unlogged(s.record(&r, &t).unwrap()),
        record,
        "read back as written, in order"
    );
    // The newest write stands for them in the state listings and exports show.
    let Some(TagState::Advancing { claim, .. }) = s.state(&r, &t).unwrap() else {
        panic!("{:?}", s.state(&r, &t))
    };
    assert_ne!(claim.request_id, "r1");
    // Each part changes on its own.
    let mut fewer = record.clone();
    fewer.writes.retain(|w| w.request_id != "r1");
    fewer.release = Some(release("rel-8"));
    s.update(&r, one(&t), &mut |_, records| {
        records[0].writes.retain(|w| w.request_id != "r1");
        records[0].release = Some(release("rel-8"));
    })
    .unwrap();
    assert_eq!(unlogged(s.record(&r, &t).unwrap()), fewer);
    s.update(&r, one(&t), &mut |_, records| {
        records[0].writes.clear();
        records[0].release = None;
    })
    .unwrap();
    let pinned = TagRecord {
        pin: record.pin.clone(),
        ..TagRecord::default()
    };
    assert_eq!(unlogged(s.record(&r, &t).unwrap()), pinned);
    // A release alone, on a tag with no pin: kept, but the tag is not listed.
    let u = tag("released");
    s.update(&r, one(&u), &mut |_, records| {
        records[0].release = Some(release("rel-9"))
    })
    .unwrap();
    assert_eq!(s.record(&r, &u).unwrap().release, Some(release("rel-9")));
    assert_eq!(s.state(&r, &u).unwrap(), None);
    let listed: Vec<Tag> = s
        .list(Some(&r), None, 10)
        .unwrap()
        .into_iter()
        .map(|(_, t, _)| t)
        .collect();
    assert_eq!(listed, vec![t]);
}

fn an_update_of_several_tags_is_all_or_nothing(s: &dyn PinStore) {
    let r = repo("a/b");
    let tags = [tag("x"), tag("y"), tag("z")];
    let written = s
        .update(&r, &tags, &mut |_, records| {
            assert_eq!(records.len(), 3);
            records[0].pin = Some(pin('a'));
            records[2].writes.push(Claim::now(d('c'), "r"));
        })
        .unwrap();
    assert_eq!(written[1], TagRecord::default());
    assert_eq!(s.record(&r, &tags[0]).unwrap(), written[0]);
    assert_eq!(s.record(&r, &tags[2]).unwrap(), written[2]);
    // A change the store refuses (two writes of one request on a tag) writes nothing,
    // not even the valid change to another tag.
    let refused = s.update(&r, &tags, &mut |_, records| {
        records[0].pin = Some(pin('b'));
        records[1].writes = vec![Claim::now(d('e'), "twice"), Claim::now(d('e'), "twice")];
    });
    assert!(matches!(refused, Err(StoreError::Corrupt { .. })), "{refused:?}");
    assert_eq!(s.record(&r, &tags[0]).unwrap(), written[0]);
    assert_eq!(s.record(&r, &tags[1]).unwrap(), TagRecord::default());
    assert!(s.tags_pinned_to(&r, &d('e')).unwrap().is_empty());
    // A reader never sees half of an update: each update moves both tags together.
    let pair = [tag("p"), tag("q")];
    let torn = AtomicUsize::new(0);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            for n in 0..40 {
                s.update(&r, &pair, &mut |_, records| {
                    for record in records.iter_mut() {
                        record.pin = Some(Pin::now(dn(n), PinSource::Push));
                    }
                })
                .unwrap();
            }
        });
        sc.spawn(|| {
            for _ in 0..200 {
                s.update(&r, &pair, &mut |_, records| {
                    if records[0].pin.as_ref().map(|p| &p.digest) != records[1].pin.as_ref().map(|p| &p.digest) {
                        torn.fetch_add(1, Ordering::SeqCst);
                    }
                })
                .unwrap();
            }
        });
    });
    assert_eq!(torn.load(Ordering::SeqCst), 0);
}

fn records_left_unchanged_are_not_written(s: &dyn PinStore) {
    let r = repo("a/b");
    // Free tags read and left alone are not stored as empty records.
    let got = s.update(&r, &[tag("f1"), tag("f2")], &mut |_, _| {}).unwrap();
    assert_eq!(got, vec![TagRecord::default(), TagRecord::default()]);
    assert!(s.list(None, None, 10).unwrap().is_empty());
    assert!(s.holders(&r).unwrap().is_empty());
    // A change to one tag leaves the other's record as it was.
    let p = pin('a');
    s.pin_if_absent(&r, &[(tag("kept"), p.clone())]).unwrap();
    let got = s
        .update(&r, &[tag("kept"), tag("new")], &mut |_, records| {
            records[1].pin = Some(pin('b'))
        })
        .unwrap();
    assert_eq!(unlogged(got[0].clone()).pin, Some(p.clone()));
    assert_eq!(
        s.state(&r, &tag("kept")).unwrap().map(unlogged_state),
        Some(TagState::Pinned(p))
    );
    assert_eq!(s.holders(&r).unwrap(), vec![d('a'), d('b')]);
}

fn the_digest_index_follows_pins_and_writes(s: &dyn PinStore) {
    let (r, t) = (repo("a/b"), tag("v1"));
    s.pin_if_absent(&r, &[(t.clone(), pin('a'))]).unwrap();
    add_write(s, &r, &t, &Claim::of_kind(d('b'), "w1", ClaimKind::Append));
    add_write(s, &r, &t, &Claim::of_kind(d('b'), "w2", ClaimKind::Append));
    add_write(s, &r, &t, &Claim::of_kind(d('a'), "w3", ClaimKind::Identical));
    for digest in ['a', 'b'] {
        assert_eq!(s.tags_pinned_to(&r, &d(digest)).unwrap(), vec![t.clone()], "{digest}");
    }
    assert_eq!(s.holders(&r).unwrap(), vec![d('a'), d('b')]);
    // One of two writes of a digest gone: the tag is still held to it.
    remove_write(s, &r, &t, "w1");
    assert_eq!(s.tags_pinned_to(&r, &d('b')).unwrap(), vec![t.clone()]);
    // The write of the pinned digest gone: still held to it through the pin.
    remove_write(s, &r, &t, "w3");
    assert_eq!(s.tags_pinned_to(&r, &d('a')).unwrap(), vec![t.clone()]);
    // The pin moves to the written digest and the write is settled: `a` is let go.
    s.update(&r, one(&t), &mut |_, records| {
        let record = &mut records[0];
        let pin = record.pin.as_mut().unwrap();
        pin.digest = d('b');
        pin.history
            .push(HistoryEntry::new(HistoryEvent::Append, d('b'), Some(d('a'))));
        record.writes.clear();
    })
    .unwrap();
    assert!(s.tags_pinned_to(&r, &d('a')).unwrap().is_empty());
    assert_eq!(s.tags_pinned_to(&r, &d('b')).unwrap(), vec![t.clone()]);
    assert_eq!(s.holders(&r).unwrap(), vec![d('b')]);
    // A write on a free tag holds it; settled, nothing holds the digest.
    let u = tag("free");
    add_write(s, &r, &u, &Claim::now(d('c'), "n"));
    assert_eq!(s.tags_pinned_to(&r, &d('c')).unwrap(), vec![u.clone()]);
    assert_eq!(s.holders(&r).unwrap(), vec![d('b'), d('c')]);
    remove_write(s, &r, &u, "n");
    assert!(s.tags_pinned_to(&r, &d('c')).unwrap().is_empty());
    assert_eq!(s.holders(&r).unwrap(), vec![d('b')]);
    // Listed in byte order, pins and writes alike, per repository.
    s.pin_if_absent(&r, &[(tag("a1"), pin('e')), (tag("T1"), pin('e'))])
        .unwrap();
    claim(s, &r, &[tag("_x"), tag("B2")], &Claim::now(d('e'), "r"));
    s.pin_if_absent(&repo("a"), &[(tag("other"), pin('e'))]).unwrap();
    assert_eq!(
        s.tags_pinned_to(&r, &d('e')).unwrap(),
        vec![tag("B2"), tag("T1"), tag("_x"), tag("a1")]
    );
    assert_eq!(s.holders(&repo("a")).unwrap(), vec![d('e')]);
}

fn change_gets_the_store_clock(s: &dyn PinStore) {
    let (r, t) = (repo("a/b"), tag("v1"));
    let mut seen = Vec::new();
    for _ in 0..3 {
        let before = now_secs();
        s.update(&r, one(&t), &mut |now, _| seen.push(now)).unwrap();
        let after = now_secs();
        // The test's database runs on this host, so its clock is this host's.
        let last = *seen.last().unwrap();
        assert!(
            before.saturating_sub(1) <= last && last <= after + 1,
            "{before} {seen:?} {after}"
        );
    }
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    // The clock is there for an update of no tag too.
    let mut got = 0;
    s.update(&r, &[], &mut |now, records| {
        assert!(records.is_empty());
        got = now;
    })
    .unwrap();
    assert!(got >= seen[0]);
}

/// Every call of `change` starts from what the store holds: read-modify-write updates
/// from many threads on one tag lose nothing and apply nothing twice, and no call sees a
/// change of its own that was not committed.
fn concurrent_updates_of_one_tag_are_serialised(s: &dyn PinStore) {
    const THREADS: usize = 8;
    const EACH: usize = 25;
    let (r, t) = (repo("race"), tag("counter"));
    s.pin_if_absent(&r, &[(t.clone(), pin('a'))]).unwrap();
    let calls = AtomicUsize::new(0);
    std::thread::scope(|sc| {
        for i in 0..THREADS {
            let (r, t, calls) = (&r, &t, &calls);
            sc.spawn(move || {
                for n in 0..EACH {
                    let mark = format!("{i}-{n}");
                    s.update(r, one(t), &mut |_, records| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let pin = records[0].pin.as_mut().expect("pinned");
                        assert!(
                            !pin.history
                                .iter()
                                .any(|e| e.request_id.as_deref() == Some(mark.as_str())),
                            "{mark}: a call saw its own change before it was committed"
                        );
                        let mut entry = HistoryEntry::new(HistoryEvent::AuditDelete, pin.digest.clone(), None);
                        entry.request_id = Some(mark.clone());
                        pin.history.push(entry);
                    })
                    .unwrap();
                }
            });
        }
    });
    let Some(TagState::Pinned(p)) = s.state(&r, &t).unwrap() else {
        panic!("not pinned")
    };
    let marks: Vec<&str> = p.history[1..]
        .iter()
        .map(|e| e.request_id.as_deref().unwrap())
        .collect();
    assert_eq!(marks.len(), THREADS * EACH, "an update was lost or applied twice");
    for i in 0..THREADS {
        let mine: Vec<String> = marks
            .iter()
            .filter(|m| m.starts_with(&format!("{i}-")))
            .map(|m| m.to_string())
            .collect();
        let expected: Vec<String> = (0..EACH).map(|n| format!("{i}-{n}")).collect();
        assert_eq!(mine, expected, "thread {i}'s updates, once each, in its order");
    }
    assert!(calls.load(Ordering::SeqCst) >= THREADS * EACH);
}

fn racing_writes_for_a_free_tag_have_one_winner(s: &dyn PinStore) {
    const THREADS: usize = 12;
    let r = repo("race");
    for round in 0..10 {
        let t = tag(&format!("r{round}"));
        let barrier = Barrier::new(THREADS);
        let results: Vec<(Digest, TagRecord)> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..THREADS)
                .map(|i| {
                    let (t, r, barrier) = (&t, &r, &barrier);
                    sc.spawn(move || {
                        let mine = dn(round * 100 + i);
                        barrier.wait();
                        let got = claim(s, r, one(t), &Claim::now(mine.clone(), &format!("req-{i}")));
                        (mine, got.into_iter().next().unwrap())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<&Digest> = results
            .iter()
            .filter(|(mine, got)| got.writes.iter().any(|w| &w.digest == mine))
            .map(|(m, _)| m)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        assert!(results.iter().all(|(_, got)| got.writes.len() == 1), "round {round}");
        assert_eq!(s.tags_pinned_to(&r, winners[0]).unwrap(), vec![t.clone()]);
    }
}

fn list_pages_through_pins_and_writes_in_key_order(s: &dyn PinStore) {
    let (a, ab, a_dash) = (repo("a"), repo("a/b"), repo("a-b"));
    // Upper case sorts before lower case in byte order, whatever the database's locale.
    for (i, name) in ["t0", "t1", "T2", "t3", "t4", "_5"].iter().enumerate() {
        let t = tag(name);
        if i % 2 == 0 {
            s.pin_if_absent(&a, &[(t, pin('1'))]).unwrap();
        } else {
            claim(s, &a, &[t], &Claim::now(d('2'), "r"));
        }
    }
    // An advance in flight is listed once, with both halves; so is a tag with two writes.
    add_write(s, &a, &tag("t0"), &Claim::of_kind(d('5'), "adv", ClaimKind::Append));
    add_write(s, &a, &tag("t3"), &Claim::now(d('2'), "again"));
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
    claim(s, &r, &[tag("claimed")], &Claim::now(d('c'), "rc"));
    let rec = |t: &str, c: char| Exported::of(r.clone(), tag(t), &pin(c));
    let out = s.import(&[rec("v1", 'a'), rec("v2", 'b')], "test").unwrap();
    assert_eq!((out.imported, out.unchanged, out.conflicts.len()), (1, 1, 0), "{out:?}");
    // One conflict (another digest), and nothing of the import is written.
    let out = s.import(&[rec("v3", 'c'), rec("v1", 'f')], "test").unwrap();
    assert_eq!((out.imported, out.conflicts.len()), (0, 1), "{out:?}");
    assert_eq!(s.state(&r, &tag("v3")).unwrap(), None, "nothing written");
    // A write held here conflicts with a pin of the same digest, and a write in the
    // import conflicts with a pin held here.
    let out = s.import(&[rec("v4", 'd'), rec("claimed", 'c')], "test").unwrap();
    assert_eq!((out.imported, out.conflicts.len()), (0, 1), "{out:?}");
    let advancing = Exported {
        claim: Some(Claim::of_kind(d('6'), "x", ClaimKind::Append)),
        ..rec("v1", 'a')
    };
    let out = s.import(&[rec("v4", 'd'), advancing], "test").unwrap();
    assert_eq!((out.imported, out.conflicts.len()), (0, 1), "{out:?}");
    // The same tag twice with different digests.
    let out = s.import(&[rec("v5", 'e'), rec("v5", 'f')], "test").unwrap();
    assert_eq!((out.imported, out.conflicts.len()), (0, 1), "{out:?}");
    assert_eq!(s.state(&r, &tag("v4")).unwrap(), None);
    assert_eq!(s.state(&r, &tag("v5")).unwrap(), None);
    assert!(s.tags_pinned_to(&r, &d('d')).unwrap().is_empty());
    assert_eq!(s.tags_pinned_to(&r, &d('b')).unwrap(), vec![tag("v2")]);
    // A tag holding only a release is free to import, and keeps its release.
    s.update(&r, &[tag("v6")], &mut |_, records| {
        records[0].release = Some(release("x"))
    })
    .unwrap();
    assert_eq!(s.import(&[rec("v6", '6')], "test").unwrap().imported, 1);
    let got = s.record(&r, &tag("v6")).unwrap();
    assert_eq!(
        (got.pin.map(|p| p.digest), got.release),
        (Some(d('6')), Some(release("x")))
    );
    assert_eq!(s.tags_pinned_to(&r, &d('6')).unwrap(), vec![tag("v6")]);
}

fn writes_travel_through_export_and_import(s: &dyn PinStore) {
    let (from, to) = (repo("from"), repo("to"));
    s.pin_if_absent(&from, &[(tag("v1"), pin('a')), (tag("plain"), pin('8'))])
        .unwrap();
    add_write(s, &from, &tag("v1"), &Claim::of_kind(d('b'), "r1", ClaimKind::Append));
    claim(s, &from, &[tag("free")], &Claim::now(d('c'), "r2"));
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
    assert_eq!(s.import(&back, "test").unwrap().imported, 3);
    for t in ["v1", "plain", "free"] {
        // The same, but for the log entries: each copy has an `imported` entry of its own.
        assert_eq!(
            unlogged(s.record(&to, &tag(t)).unwrap()),
            unlogged(s.record(&from, &tag(t)).unwrap()),
            "{t}: what was in flight stays in flight"
        );
    }
    assert_eq!(s.tags_pinned_to(&to, &d('c')).unwrap(), vec![tag("free")]);
    assert_eq!(s.tags_pinned_to(&to, &d('b')).unwrap(), vec![tag("v1")]);
    assert_eq!(s.holders(&to).unwrap(), s.holders(&from).unwrap());
    // The imported writes are settled like the originals.
    assert_eq!(remove_write(s, &to, &tag("free"), "r2"), TagRecord::default());
    s.update(&to, &[tag("v1")], &mut |_, records| {
        let pin = records[0].pin.as_mut().unwrap();
        pin.digest = d('b');
        pin.history
            .push(HistoryEntry::new(HistoryEvent::Append, d('b'), Some(d('a'))));
        records[0].writes.clear();
    })
    .unwrap();
    // Importing the same records again changes nothing, except where the store moved on:
    // the tag now free would be written again, the moved pin conflicts.
    let out = s.import(&back[..], "test").unwrap();
    assert_eq!((out.imported, out.conflicts.len()), (0, 1), "{out:?}");
    let unchanged: Vec<Exported> = back.into_iter().filter(|e| e.tag.as_str() == "plain").collect();
    assert_eq!(s.import(&unchanged, "test").unwrap().unchanged, 1);
}

/// The history of a tag with no pin (an operator cleared its write) is kept on its own,
/// holds no digest and lists nothing; once the tag is pinned it starts the pin's history
/// and is stored nowhere else.
fn the_history_of_a_tag_with_no_pin_starts_its_pin(s: &dyn PinStore) {
    let (r, t) = (repo("a/b"), tag("v1"));
    let mut cleared = HistoryEntry::new(HistoryEvent::ClaimCleared, d('b'), None);
    cleared.at = 7;
    cleared.request_id = Some("req-1".into());
    cleared.by = Some("alice".into());
    cleared.reason = Some("upstream lost it".into());
    let notes = vec![cleared, HistoryEntry::new(HistoryEvent::ClaimCleared, d('c'), None)];
    let alone = TagRecord {
        history: notes.clone(),
        ..TagRecord::default()
    };
    let written = s
        .update(&r, one(&t), &mut |_, records| records[0].history = notes.clone())
        .unwrap();
    assert_eq!(written, vec![alone.clone()], "returned as written");
    assert_eq!(s.record(&r, &t).unwrap(), alone, "read back as written, in order");
    assert_eq!(s.state(&r, &t).unwrap(), None);
    assert!(s.list(None, None, 10).unwrap().is_empty());
    assert!(s.tags_pinned_to(&r, &d('b')).unwrap().is_empty());
    assert!(s.holders(&r).unwrap().is_empty());
    // Kept beside a write, and after it.
    let with_write = add_write(s, &r, &t, &Claim::now(d('d'), "w"));
    assert_eq!(s.record(&r, &t).unwrap(), with_write);
    assert_eq!((with_write.history, with_write.writes.len()), (notes.clone(), 1));
    assert_eq!(remove_write(s, &r, &t, "w"), alone);
    assert_eq!(s.record(&r, &t).unwrap(), alone);
    // Pinned: the notes start the pin's history, and are kept nowhere else.
    let p = pin('a');
    let written = s
        .update(&r, one(&t), &mut |_, records| records[0].set_pin(p.clone()))
        .unwrap();
    let got = s.record(&r, &t).unwrap();
    assert_eq!(got, written[0]);
    assert!(got.history.is_empty());
    let expected: Vec<HistoryEntry> = notes.iter().chain(&p.history).cloned().collect();
    assert_eq!(unlogged(got).pin.map(|p| p.history), Some(expected));
    // Nothing of the notes is left behind the pin: without it the record is empty.
    s.update(&r, one(&t), &mut |_, records| records[0].pin = None).unwrap();
    assert_eq!(s.record(&r, &t).unwrap(), TagRecord::default());
    // Adoption pins a tag with only notes the same way; cleared, notes are gone.
    let (u, v) = (tag("adopted"), tag("cleared"));
    s.update(&r, &[u.clone(), v.clone()], &mut |_, rs| {
        rs.iter_mut().for_each(|x| x.history = notes.clone())
    })
    .unwrap();
    s.pin_if_absent(&r, &[(u.clone(), Pin::now(d('e'), PinSource::Adopted))])
        .unwrap();
    let got = s.record(&r, &u).unwrap();
    assert!(got.history.is_empty());
    assert_eq!(got.pin.unwrap().history[..2], notes[..]);
    s.update(&r, one(&v), &mut |_, records| records[0].history.clear())
        .unwrap();
    assert_eq!(s.record(&r, &v).unwrap(), TagRecord::default());
}

contract!(
    first_pin_wins,
    adoption_leaves_a_tag_with_a_write_alone,
    several_writes_and_a_release_round_trip,
    an_update_of_several_tags_is_all_or_nothing,
    records_left_unchanged_are_not_written,
    the_digest_index_follows_pins_and_writes,
    change_gets_the_store_clock,
    concurrent_updates_of_one_tag_are_serialised,
    racing_writes_for_a_free_tag_have_one_winner,
    list_pages_through_pins_and_writes_in_key_order,
    import_is_all_or_nothing,
    writes_travel_through_export_and_import,
    a_lone_store_leads,
    the_history_of_a_tag_with_no_pin_starts_its_pin,
);

// PostgreSQL only: what several replicas on one database rely on, and migrations.
#[path = "store_support/postgres_only.rs"]
mod postgres_only;
