//! The PostgreSQL-only part of `store_contract.rs` (included from it): what several
//! replicas on one database rely on, and the schema's migrations.

use std::sync::Barrier;

use crate::common;
use crate::common::postgres::{fresh_database, shared};
use crate::store_support::*;
use tagpin::store::{Claim, ClaimKind, HistoryEntry, HistoryEvent, PgStore, PinStore, StoreError};

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

/// The history of a tag with no pin is a `notes` row until the tag is pinned; then it
/// is the start of the pin's history and the row is gone.
#[test]
fn postgres_notes_are_a_row_until_the_tag_is_pinned() {
    let name = fresh_database("notes");
    let s = PgStore::open(shared().config(&name)).unwrap();
    let (r, t) = (repo("a"), tag("v1"));
    let note = HistoryEntry::new(HistoryEvent::ClaimCleared, d('b'), None);
    s.update(&r, one(&t), &mut |_, records| records[0].history = vec![note.clone()])
        .unwrap();
    let mut c = shared().connect(&name);
    let rows = |c: &mut ::postgres::Client| -> i64 {
        c.query_one("SELECT count(*) FROM notes WHERE repository = 'a' AND tag = 'v1'", &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(rows(&mut c), 1);
    s.update(&r, one(&t), &mut |_, records| records[0].set_pin(pin('a')))
        .unwrap();
    assert_eq!(rows(&mut c), 0);
    assert_eq!(s.record(&r, &t).unwrap().pin.unwrap().history[0], note);
}

/// A database of schema version 1 (one claim row per tag) is migrated: its claim reads
/// as the tag's one write, and more writes can join it.
#[test]
fn postgres_a_version_1_database_is_migrated() {
    let name = fresh_database("v1");
    let mut c = shared().connect(&name);
    c.batch_execute(include_str!("../../src/store/postgres/migrations/0001_init.sql"))
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
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6]);
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
    assert_eq!(
        rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6]
    );
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
