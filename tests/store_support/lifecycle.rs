//! The store across its lifetime (included from `store_contract_refs.rs`): everything a
//! store holds is there again after it is dropped and opened anew on the same data dir or
//! database, as after a restart; and `check()` reports a sled store whose disk is full
//! (PostgreSQL's stopped server is `postgres_store_fails_while_the_server_is_down_and_recovers`
//! in `store_support/postgres_only.rs`).

use crate::common::tmpfs::SmallFs;
use crate::store_support::*;
use tagpin::oci::{Digest, Repository, Tag};
use tagpin::store::{
    Claim, ClaimKind, DeleteRecord, HistoryEntry, HistoryEvent, PinStore, Protect, Refused, SledStore, TagRecord,
    TagState,
};

/// Everything the store answers about what [`fill`] wrote.
#[derive(Debug, PartialEq)]
struct Snapshot {
    records: Vec<TagRecord>,
    listed: Vec<(Repository, Tag, TagState)>,
    refused: Vec<Vec<Refused>>,
    deletes: Vec<DeleteRecord>,
    in_flight: Vec<Digest>,
    refs: Vec<(bool, Vec<Digest>)>,
    referenced_by: Vec<Digest>,
    holders: Vec<Digest>,
    pinned_to: Vec<Vec<Tag>>,
}

const TAGS: [&str; 4] = ["pinned", "claimed", "released", "noted"];

fn refused(n: u64) -> Refused {
    Refused {
        at: n,
        attempted: Some(d('f')),
        delete: n == 2,
        client: "127.0.0.1:9".into(),
        user: Some("mallory".into()),
        user_agent: "test".into(),
        request_id: format!("req-{n}"),
    }
}

/// Write one of each kind of record, the tag records in one update of several tags;
/// check that each tag's record is its own.
fn fill(s: &dyn PinStore) {
    let r = repo("a/b");
    let tags: Vec<Tag> = TAGS.iter().map(|t| tag(t)).collect();
    let mut released_write = Claim::of_kind(d('c'), "w-rel", ClaimKind::Release);
    released_write.release_id = Some("rel-1".into());
    let mut cleared = HistoryEntry::new(HistoryEvent::ClaimCleared, d('e'), None);
    cleared.by = Some("alice".into());
    cleared.reason = Some("upstream lost it".into());
    let written = s
        .update(&r, &tags, &mut |_, records| {
            let mut p = pin('a');
            let mut audited = HistoryEntry::new(HistoryEvent::AuditDelete, d('a'), None);
            audited.request_id = Some("audit-1".into());
            p.history.push(audited);
            records[0].set_pin(p);
            records[1].writes = vec![
                Claim::now(d('b'), "w1"),
                Claim::of_kind(d('b'), "w2", ClaimKind::Identical),
            ];
            records[2].set_pin(pin('b'));
            records[2].release = Some(release("rel-1"));
            records[2].writes.push(released_write.clone());
            records[3].history = vec![cleared.clone()];
        })
        .unwrap();
    for (t, w) in tags.iter().zip(&written) {
        assert_eq!(&s.record(&r, t).unwrap(), w, "{t}: read back as written");
    }
    // Each tag's record is its own: a change to one leaves the others as they were.
    remove_write(s, &r, &tags[1], "w2");
    for i in [0, 2, 3] {
        assert_eq!(s.record(&r, &tags[i]).unwrap(), written[i], "{}", tags[i]);
    }
    assert_eq!(s.record(&r, &tags[1]).unwrap().writes, written[1].writes[..1]);

    for n in 1..=3 {
        s.record_refusal(&r, &tags[0], &refused(n)).unwrap();
    }
    s.record_refusal(&r, &tags[3], &refused(9)).unwrap();
    s.begin_delete(&r, &d('d'), "del-1").unwrap();
    s.begin_delete(&repo("a"), &d('d'), "del-2").unwrap();
    let full = Protect {
        durable: true,
        complete: true,
    };
    s.protect(&r, &d('a'), &[d('1'), d('2')], full).unwrap();
    // Made durable by the write that follows it.
    s.protect(&r, &d('b'), &[d('2')], Protect { durable: false, ..full })
        .unwrap();
    s.pin_if_absent(&r, &[(tag("after"), pin('a'))]).unwrap();
    s.protect(
        &r,
        &d('9'),
        &[d('3')],
        Protect {
            complete: false,
            ..full
        },
    )
    .unwrap();
}

fn snapshot(s: &dyn PinStore) -> Snapshot {
    let r = repo("a/b");
    let tags: Vec<Tag> = TAGS.iter().map(|t| tag(t)).collect();
    let digests: Vec<Digest> = "abcde9".chars().map(d).collect();
    Snapshot {
        records: tags.iter().map(|t| s.record(&r, t).unwrap()).collect(),
        listed: s.list(None, None, 100).unwrap(),
        refused: tags.iter().map(|t| s.refusals(&r, t).unwrap()).collect(),
        deletes: s.list_deletes(None).unwrap(),
        in_flight: s.deletes_in_flight(&r, &digests, 3600).unwrap(),
        refs: digests
            .iter()
            .map(|h| (s.has_refs(&r, h).unwrap(), s.refs_of(&r, h).unwrap()))
            .collect(),
        referenced_by: s.referenced_by(&r, &d('2')).unwrap(),
        holders: s.holders(&r).unwrap(),
        pinned_to: digests.iter().map(|x| s.tags_pinned_to(&r, x).unwrap()).collect(),
    }
}

/// Write, drop the store, open it again on the same data dir or database: pins with
/// their history, writes in flight, a release, a history with no pin, refused attempts,
/// delete records and references all read back as they were, and the store goes on
/// writing. Catches anything a backend keeps only in memory or loses on open.
fn everything_survives_a_reopen(fresh: Fresh) {
    fill(&*fresh.store);
    let before = snapshot(&*fresh.store);
    assert_eq!(before.listed.len(), 4, "{:?}", before.listed);
    assert_eq!(before.refused[0].len(), 3);
    assert_eq!(before.deletes.len(), 2);
    assert_eq!(before.in_flight, vec![d('d')]);
    assert_eq!(before.refs[0], (true, vec![d('1'), d('2')]));
    assert_eq!(before.refs[5], (false, vec![d('3')]), "incomplete references");
    assert_eq!(before.referenced_by, vec![d('a'), d('b')]);
    let fresh = fresh.reopen();
    let s = &*fresh.store;
    assert_eq!(snapshot(s), before, "read back after a reopen");
    s.check().unwrap();
    // The reopened store goes on: settle a write, end a delete, add a refusal.
    let r = repo("a/b");
    remove_write(s, &r, &tag("claimed"), "w1");
    s.end_delete(&r, &d('d'), "del-1").unwrap();
    s.record_refusal(&r, &tag("pinned"), &refused(4)).unwrap();
    assert_eq!(s.record(&r, &tag("claimed")).unwrap(), TagRecord::default());
    assert_eq!(s.list_deletes(None).unwrap(), before.deletes[..1]);
    assert_eq!(s.refusals(&r, &tag("pinned")).unwrap().len(), 4);
}

#[test]
fn sled_everything_survives_a_reopen() {
    everything_survives_a_reopen(sled_store());
}

#[test]
fn postgres_everything_survives_a_reopen() {
    everything_survives_a_reopen(pg_store());
}

/// A sled store whose disk fills up: once a write has failed to reach the disk,
/// `check()` fails (readiness reports the store) for as long as the disk is full, and
/// passes again once there is room, without a reopen; what was acknowledged is kept.
/// Catches a `check()` that only reads, or answers from sled's memory.
#[test]
fn sled_check_fails_while_its_disk_is_full() {
    let fs = SmallFs::mount("8m");
    let data = fs.path().join("data");
    let s = SledStore::open(&data).unwrap();
    let r = repo("full");
    s.pin_if_absent(&r, &[(tag("before"), pin('a'))]).unwrap();
    s.check().unwrap();
    fs.fill();
    // sled may still have room in pages it holds: write until a write fails.
    let bulky = "x".repeat(16 * 1024);
    let mut failed = false;
    for n in 0..2000 {
        let mut p = pin('b');
        p.history[0].reason = Some(bulky.clone());
        if s.update(&r, one(&tag(&format!("t{n}"))), &mut |_, records| {
            records[0].set_pin(p.clone())
        })
        .is_err()
        {
            failed = true;
            break;
        }
    }
    assert!(failed, "no write failed on a full disk: the test exercised nothing");
    for attempt in 0..3 {
        assert!(s.check().is_err(), "attempt {attempt}: check() passed on a full disk");
    }
    fs.free();
    let mut back = false;
    for _ in 0..100 {
        if s.check().is_ok() {
            back = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(back, "check() still fails once the disk has room");
    let held = |s: &SledStore| s.state(&r, &tag("before")).unwrap().map(|st| st.digest().clone());
    assert_eq!(held(&s), Some(d('a')));
    drop(s);
    let s = super::reopen_sled(&data);
    assert_eq!(held(&s), Some(d('a')), "the acknowledged pin survived a reopen");
}
