//! Attacks on the replicas' cache of immutable pins (`src/store/postgres/cache.rs`):
//! every way a tag's rows can change in the database must reach every replica's cache,
//! not only the changes this tagpin's own `PinStore::update` makes.

mod common;
#[allow(unused_macros, reason = "the contract macro is for the contract suites")]
mod store_support;

use std::time::{Duration, Instant};

use common::postgres::{fresh_database, shared};
use store_support::*;
use tagpin::oci::{Digest, Repository, Tag};
use tagpin::store::{PgStore, PinStore};

fn pin_of(digest: &Digest) -> tagpin::store::Pin {
    tagpin::store::Pin::now(digest.clone(), tagpin::store::PinSource::Push)
}

/// `s`'s answer to a read of `t` as immutable: from memory when it has one, else fresh.
fn read_at(s: &PgStore, r: &Repository, t: &Tag) -> Option<Digest> {
    match s.read_view_in_memory(r, t, true) {
        Some(v) => v.unwrap().pin,
        None => s.read_view(r, t, true).unwrap().pin,
    }
}

/// Read `t` at `s` until the answer comes from `s`'s cache and is `want` (at most 1000
/// tries, 10 ms apart, within 60 s).
fn wait_cached(s: &PgStore, r: &Repository, t: &Tag, want: &Digest) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..1000 {
        if Instant::now() > deadline {
            break;
        }
        if let Some(got) = s.read_view_in_memory(r, t, true) {
            assert_eq!(got.unwrap().pin.as_ref(), Some(want), "a cached pin");
            return;
        }
        assert_eq!(s.read_view(r, t, true).unwrap().pin.as_ref(), Some(want));
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{r}:{t} was never answered from the cache");
}

/// Read `t` at `s` until it answers `want` (at most 300 tries, 10 ms apart, within 10 s);
/// the answers seen, for the failure message.
fn reads_until(s: &PgStore, r: &Repository, t: &Tag, want: &Digest) -> Result<(), Option<Digest>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = None;
    for _ in 0..300 {
        if Instant::now() > deadline {
            break;
        }
        last = read_at(s, r, t);
        if last.as_ref() == Some(want) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(last)
}

/// A tag's rows changed by a session that sends no notification of its own: a replica of
/// an earlier tagpin (one without the cache) still running during a rolling upgrade, or
/// an operator's repair in `psql`. B caches the pin; the other session moves it as a
/// released push of the earlier tagpin does (a claim, then the settle in one
/// transaction). B must stop serving the old pin, not serve it for as long as its cache
/// keeps it (its listener's pings renew the lease all along).
#[test]
fn a_pin_moved_by_a_session_that_does_not_notify_reaches_the_cache() {
    let name = fresh_database("attack_silent");
    let b = PgStore::open(shared().config(&name)).unwrap();
    let (r, t) = (repo("attack/silent"), tag("v1"));
    b.pin_if_absent(&r, &[(t.clone(), pin_of(&dn(0)))]).unwrap();
    let mut other = shared().connect(&name);
    for round in 0..3 {
        let (old, new) = (dn(round), dn(round + 1));
        wait_cached(&b, &r, &t, &old);
        let id = format!("earlier-{round}");
        other
            .execute(
                "INSERT INTO claims (repository, tag, digest, request_id, claimed_at, kind, position)
                 VALUES ($1, $2, $3, $4, 0, 'release', 0)",
                &[&r.as_str(), &t.as_str(), &new.as_str(), &id],
            )
            .unwrap();
        let mut tx = other.transaction().unwrap();
        // Schema 5 lets only sessions that say they keep the history log write pins.
        tx.execute("SELECT set_config('tagpin.log', 'on', true)", &[]).unwrap();
        tx.execute(
            "UPDATE pins SET digest = $3 WHERE repository = $1 AND tag = $2",
            &[&r.as_str(), &t.as_str(), &new.as_str()],
        )
        .unwrap();
        tx.execute(
            "DELETE FROM claims WHERE repository = $1 AND tag = $2",
            &[&r.as_str(), &t.as_str()],
        )
        .unwrap();
        tx.commit().unwrap();
        assert_eq!(
            reads_until(&b, &r, &t, &new),
            Ok(()),
            "round {round}: B kept serving the old pin {old} after it moved to {new} (last answer shown)"
        );
    }
    assert!(b.read_cache_stats().hits > 0, "B never answered from its cache");
}

/// The same for the tables emptied at once (`TRUNCATE`, which fires no row trigger): B
/// must not go on serving a pin the database no longer holds.
#[test]
fn pins_truncated_by_another_session_leave_no_cached_pin() {
    let name = fresh_database("attack_truncate");
    let b = PgStore::open(shared().config(&name)).unwrap();
    let (r, t) = (repo("attack/truncate"), tag("v1"));
    b.pin_if_absent(&r, &[(t.clone(), pin_of(&dn(0)))]).unwrap();
    wait_cached(&b, &r, &t, &dn(0));
    shared().connect(&name).batch_execute("TRUNCATE pins, claims").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = Some(dn(0));
    for _ in 0..300 {
        if Instant::now() > deadline {
            break;
        }
        last = read_at(&b, &r, &t);
        if last.is_none() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(last, None, "B kept serving the pin of an emptied table");
}
