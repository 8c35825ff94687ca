//! The `PinStore` contract for tag records, written once as functions over
//! `&dyn PinStore` and run against every backend: sled in a temp dir, and PostgreSQL with
//! a fresh database per test on one server per test process. A backend that differs from
//! the others in any behaviour here fails the same-named test. Deletes, references and
//! refusals are in `store_contract_refs.rs`.

mod common;
#[macro_use]
mod store_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;

use common::postgres::{fresh_database, shared};
use store_support::*;
use tagpin::oci::{Digest, Repository, Tag};
use tagpin::store::{
    now_secs, Claim, ClaimKind, Exported, HistoryEntry, HistoryEvent, PgStore, Pin, PinSource, PinStore, Release,
    StoreError, TagRecord, TagState,
};

// ---------------------------------------------------------------------------------------
// The contract.

fn first_pin_wins(s: &dyn PinStore) {
    let (r, t) = (repo("a/b"), tag("v1"));
    assert_eq!(s.state(&r, &t).unwrap(), None);
    assert_eq!(s.record(&r, &t).unwrap(), TagRecord::default());
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
    };
    let written = s
        .update(&r, one(&t), &mut |_, records| records[0] = record.clone())
        .unwrap();
    assert_eq!(written, vec![record.clone()], "returned as written");
    assert_eq!(s.record(&r, &t).unwrap(), record, "read back as written, in order");
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
    assert_eq!(s.record(&r, &t).unwrap(), fewer);
    s.update(&r, one(&t), &mut |_, records| {
        records[0].writes.clear();
        records[0].release = None;
    })
    .unwrap();
    let pinned = TagRecord {
        pin: record.pin.clone(),
        ..TagRecord::default()
    };
    assert_eq!(s.record(&r, &t).unwrap(), pinned);
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
    assert_eq!(got[0].pin, Some(p.clone()));
    assert_eq!(s.state(&r, &tag("kept")).unwrap(), Some(TagState::Pinned(p)));
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
        record.pin.as_mut().unwrap().digest = d('b');
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
    let out = s.import(&[rec("v1", 'a'), rec("v2", 'b')]).unwrap();
    assert_eq!((out.imported, out.unchanged, out.conflicts.len()), (1, 1, 0), "{out:?}");
    // One conflict (another digest), and nothing of the import is written.
    let out = s.import(&[rec("v3", 'c'), rec("v1", 'f')]).unwrap();
    assert_eq!((out.imported, out.conflicts.len()), (0, 1), "{out:?}");
    assert_eq!(s.state(&r, &tag("v3")).unwrap(), None, "nothing written");
    // A write held here conflicts with a pin of the same digest, and a write in the
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
    // A tag holding only a release is free to import, and keeps its release.
    s.update(&r, &[tag("v6")], &mut |_, records| {
        records[0].release = Some(release("x"))
    })
    .unwrap();
    assert_eq!(s.import(&[rec("v6", '6')]).unwrap().imported, 1);
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
    assert_eq!(s.import(&back).unwrap().imported, 3);
    for t in ["v1", "plain", "free"] {
        assert_eq!(
            s.record(&to, &tag(t)).unwrap(),
            s.record(&from, &tag(t)).unwrap(),
            "{t}: what was in flight stays in flight"
        );
    }
    assert_eq!(s.tags_pinned_to(&to, &d('c')).unwrap(), vec![tag("free")]);
    assert_eq!(s.tags_pinned_to(&to, &d('b')).unwrap(), vec![tag("v1")]);
    assert_eq!(s.holders(&to).unwrap(), s.holders(&from).unwrap());
    // The imported writes are settled like the originals.
    assert_eq!(remove_write(s, &to, &tag("free"), "r2"), TagRecord::default());
    s.update(&to, &[tag("v1")], &mut |_, records| {
        records[0].pin.as_mut().unwrap().digest = d('b');
        records[0].writes.clear();
    })
    .unwrap();
    // Importing the same records again changes nothing, except where the store moved on:
    // the tag now free would be written again, the moved pin conflicts.
    let out = s.import(&back[..]).unwrap();
    assert_eq!((out.imported, out.conflicts.len()), (0, 1), "{out:?}");
    let unchanged: Vec<Exported> = back.into_iter().filter(|e| e.tag.as_str() == "plain").collect();
    assert_eq!(s.import(&unchanged).unwrap().unchanged, 1);
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
);

// ---------------------------------------------------------------------------------------
// PostgreSQL only: what several replicas on one database rely on.

/// Read-modify-write updates through separate stores (separate pools, as separate
/// replicas have) on one database are serialised: nothing lost, nothing twice.
#[test]
fn postgres_updates_through_several_stores_are_serialised() {
    const STORES: usize = 4;
    const EACH: usize = 20;
    let name = fresh_database("replicas");
    let stores: Vec<PgStore> = (0..STORES)
        .map(|_| PgStore::open(shared().config(&name)).unwrap())
        .collect();
    let (r, t) = (repo("race"), tag("counter"));
    stores[0].pin_if_absent(&r, &[(t.clone(), pin('a'))]).unwrap();
    let barrier = Barrier::new(STORES * 2);
    std::thread::scope(|sc| {
        for i in 0..STORES * 2 {
            let (r, t, barrier, s) = (&r, &t, &barrier, &stores[i % STORES]);
            sc.spawn(move || {
                barrier.wait();
                for n in 0..EACH {
                    s.update(r, one(t), &mut |_, records| {
                        let pin = records[0].pin.as_mut().unwrap();
                        let mut entry = HistoryEntry::new(HistoryEvent::AuditDelete, pin.digest.clone(), None);
                        entry.request_id = Some(format!("{i}-{n}"));
                        pin.history.push(entry);
                    })
                    .unwrap();
                }
            });
        }
    });
    let p = stores[1].record(&r, &t).unwrap().pin.unwrap();
    let mut marks: Vec<String> = p.history[1..].iter().map(|e| e.request_id.clone().unwrap()).collect();
    marks.sort();
    marks.dedup();
    assert_eq!(
        (p.history.len(), marks.len()),
        (1 + STORES * 2 * EACH, STORES * 2 * EACH)
    );
}

/// A record left unchanged by an update is not rewritten: its row is the same row
/// version (`xmin`) as before.
#[test]
fn postgres_an_unchanged_record_keeps_its_row_version() {
    let name = fresh_database("unchanged");
    let s = PgStore::open(shared().config(&name)).unwrap();
    let r = repo("a");
    s.pin_if_absent(&r, &[(tag("kept"), pin('a'))]).unwrap();
    let mut c = shared().connect(&name);
    let version = |c: &mut ::postgres::Client| -> String {
        c.query_one("SELECT xmin::text FROM pins WHERE tag = 'kept'", &[])
            .unwrap()
            .get(0)
    };
    let before = version(&mut c);
    s.update(&r, &[tag("kept"), tag("other")], &mut |_, records| {
        records[1].pin = Some(pin('b'))
    })
    .unwrap();
    assert_eq!(version(&mut c), before);
}

/// A database of schema version 1 (one claim row per tag) is migrated: its claim reads
/// as the tag's one write, and more writes can join it.
#[test]
fn postgres_a_version_1_database_is_migrated() {
    let name = fresh_database("v1");
    let mut c = shared().connect(&name);
    c.batch_execute(include_str!("../src/store/postgres/migrations/0001_init.sql"))
        .unwrap();
    c.batch_execute(&format!(
        "CREATE TABLE tagpin_schema (version INT PRIMARY KEY, applied_at BIGINT NOT NULL);
         INSERT INTO tagpin_schema VALUES (1, 0);
         INSERT INTO claims (repository, tag, digest, request_id, claimed_at, kind)
           VALUES ('a', 'v1', '{}', 'old', 1700000000, 'release');
         INSERT INTO refs (repository, ref, holder) VALUES ('a', '{}', '{}');",
        d('b'),
        d('e'),
        d('b')
    ))
    .unwrap();
    let s = PgStore::open(shared().config(&name)).unwrap();
    let (r, t) = (repo("a"), tag("v1"));
    let old = Claim {
        digest: d('b'),
        request_id: "old".into(),
        claimed_at: 1_700_000_000,
        kind: ClaimKind::Release,
        release_id: None,
    };
    assert_eq!(s.record(&r, &t).unwrap().writes, vec![old.clone()]);
    let new = add_write(&s, &r, &t, &Claim::now(d('b'), "new"));
    assert_eq!(new.writes.len(), 2);
    assert_eq!(s.record(&r, &t).unwrap(), new);
    assert_eq!(s.refs_of(&r, &d('b')).unwrap(), vec![d('e')]);
    let versions: Vec<i32> = c
        .query("SELECT version FROM tagpin_schema ORDER BY version", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2]);
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
    let rows = c
        .query("SELECT version FROM tagpin_schema ORDER BY version", &[])
        .unwrap();
    assert_eq!(rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>(), vec![1, 2]);
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
    let write = Claim::now(d('b'), "x");
    assert!(s
        .update(&r, &[tag("v2")], &mut |_, records| records[0]
            .writes
            .push(write.clone()))
        .is_err());
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
    assert_eq!(s.state(&r, &t).unwrap().map(|st| st.digest().clone()), Some(d('a')));
    assert_eq!(s.state(&r, &tag("v2")).unwrap(), None, "the failed update left nothing");
}
