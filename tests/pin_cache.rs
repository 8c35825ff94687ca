//! What a manifest read by tag is answered from (`PinStore::read_view`): the same view on
//! every backend, and on PostgreSQL a replica's cache of immutable pins that never serves
//! a pin older than one another replica committed before the read began. Two stores on
//! one database stand for two replicas: A writes as tagpin's push does (claim, wait the
//! store's move grace, settle), B reads.

mod common;
#[macro_use]
mod store_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::lag::LagRelay;
use common::postgres::{fresh_database, shared, USER};
use store_support::*;
use tagpin::oci::{Digest, Repository, Tag};
use tagpin::store::{Claim, ClaimKind, HistoryEntry, HistoryEvent, PgStore, PinStore, ReadView, TagRecord};

fn view(pin: Option<Digest>, in_flight: bool) -> ReadView {
    ReadView {
        pin,
        in_flight,
        reserved: None,
    }
}

/// The view follows the record: no pin, a write with no pin, a pin, a pin with a write
/// in flight; read as immutable or not, from memory or not, alike.
fn read_view_follows_the_record(s: &dyn PinStore) {
    let (r, t) = (repo("a/b"), tag("v1"));
    let both = |want: ReadView| {
        for immutable in [true, false] {
            assert_eq!(s.read_view(&r, &t, immutable).unwrap(), want, "immutable: {immutable}");
            if let Some(got) = s.read_view_in_memory(&r, &t, immutable) {
                assert_eq!(got.unwrap(), want, "from memory, immutable: {immutable}");
            }
        }
    };
    both(view(None, false));
    claim(s, &r, one(&t), &Claim::now(d('a'), "req-1"));
    // Held by a push of a new pin: reserved for its digest.
    both(ReadView {
        reserved: Some(d('a')),
        ..view(None, true)
    });
    s.update(&r, one(&t), &mut |_, records| {
        records[0].writes.clear();
        records[0].set_pin(pin('a'));
    })
    .unwrap();
    both(view(Some(d('a')), false));
    add_write(s, &r, &t, &Claim::of_kind(d('b'), "req-2", ClaimKind::Release));
    both(view(Some(d('a')), true));
    remove_write(s, &r, &t, "req-2");
    both(view(Some(d('a')), false));
}

contract!(read_view_follows_the_record);

/// Rounds of moves through A, each checked at B.
const ROUNDS: usize = 8;

/// A and B on a fresh database; B's sessions are named `<database>_b` (its listener's
/// `<database>_b/pin-cache`) and reach the server through `relay` when given.
fn pg_pair(prefix: &str, relay: Option<&LagRelay>) -> (String, PgStore, PgStore) {
    let name = fresh_database(prefix);
    let a = PgStore::open(shared().config(&name)).unwrap();
    let mut b_config: ::postgres::Config = match relay {
        Some(relay) => format!("postgres://{USER}@{}/{name}", relay.addr).parse().unwrap(),
        None => shared().config(&name),
    };
    b_config.application_name(&format!("{name}_b"));
    let b = PgStore::open(b_config).unwrap();
    (name, a, b)
}

/// Read `t` at `s` as immutable until the answer comes from `s`'s cache and is `want`
/// (at most 1000 tries, 10 ms apart, within 60 s): the listener has to be listening and
/// caught up.
fn wait_cached(s: &PgStore, r: &Repository, t: &Tag, want: &Digest) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..1000 {
        if Instant::now() > deadline {
            break;
        }
        match s.read_view_in_memory(r, t, true) {
            Some(got) => {
                assert_eq!(got.unwrap(), view(Some(want.clone()), false), "a cached pin");
                return;
            }
            None => assert_eq!(s.read_view(r, t, true).unwrap().pin.as_ref(), Some(want)),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{r}:{t} was never answered from the cache");
}

/// What a push that moves the pin does at A: record its claim, wait the move grace, and
/// settle (the pin follows, the claim goes).
fn released_move(a: &PgStore, r: &Repository, t: &Tag, to: &Digest, id: &str) {
    let write = Claim::of_kind(to.clone(), id, ClaimKind::Release);
    a.update(r, one(t), &mut |_, records| records[0].writes.push(write.clone()))
        .unwrap();
    std::thread::sleep(a.move_grace());
    settle(a, r, t, to, id);
}

fn settle(a: &PgStore, r: &Repository, t: &Tag, to: &Digest, id: &str) {
    let settled = a
        .update(r, one(t), &mut |_, records| {
            let record: &mut TagRecord = &mut records[0];
            record.writes.retain(|w| w.request_id != id);
            let pin = record.pin.as_mut().unwrap();
            let from = std::mem::replace(&mut pin.digest, to.clone());
            // A move is a history entry (the log records it): as the release's push makes it.
            pin.history
                .push(HistoryEntry::new(HistoryEvent::Released, to.clone(), Some(from)));
        })
        .unwrap();
    assert_eq!(settled[0].pin.as_ref().map(|p| &p.digest), Some(to));
}

/// B's answer to a read of `t` as immutable: from memory when it has one, else fresh.
fn read_at(b: &PgStore, r: &Repository, t: &Tag) -> Option<Digest> {
    match b.read_view_in_memory(r, t, true) {
        Some(v) => v.unwrap().pin,
        None => b.read_view(r, t, true).unwrap().pin,
    }
}

/// (a) B caches the old pin; A moves it as a released push does; from the moment A's
/// settle returns, every read B begins answers the new pin. A reader thread reads at B
/// all along; each read that began after a settle returned must show that settle's pin
/// or a later one.
#[test]
fn a_pin_moved_at_one_replica_is_read_at_the_other_once_committed() {
    // B hears of every commit 100 ms late, as a replica on a slow link does: a pin
    // moved without waiting the grace would still be in its cache after the settle.
    let relay = LagRelay::start(shared().addr(), Duration::from_millis(100), "");
    let (_db, a, b) = pg_pair("cache_moves", Some(&relay));
    assert!(a.move_grace() > Duration::ZERO, "the cache is on by default");
    let (r, t) = (repo("cache/moves"), tag("v1"));
    a.pin_if_absent(&r, &[(t.clone(), pin_of(&dn(0)))]).unwrap();
    // (began, digest read) at B, and (settled at, digest) at A.
    let reads: Mutex<Vec<(Instant, Option<Digest>)>> = Mutex::new(Vec::new());
    let mut settled: Vec<(Instant, Digest)> = Vec::new();
    let done = AtomicBool::new(false);
    std::thread::scope(|sc| {
        // Stops the reader however the rounds end.
        let _stop = StopOnDrop(&done);
        sc.spawn(|| {
            // Bounded in count as well as by the rounds.
            for _ in 0..200_000 {
                if done.load(Ordering::Acquire) {
                    break;
                }
                let began = Instant::now();
                let got = read_at(&b, &r, &t);
                reads.lock().unwrap().push((began, got));
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        for round in 0..ROUNDS {
            let (old, new) = (dn(round), dn(round + 1));
            wait_cached(&b, &r, &t, &old);
            released_move(&a, &r, &t, &new, &format!("move-{round}"));
            settled.push((Instant::now(), new.clone()));
            assert_eq!(
                read_at(&b, &r, &t),
                Some(new),
                "round {round}: B right after A's settle"
            );
        }
    });
    let reads = reads.into_inner().unwrap();
    let mut checked = 0;
    for (began, got) in &reads {
        // The pin of the last settle that returned before this read began, or a later
        // one (pins only grow: `dn` is in numeric order).
        if let Some((_, want)) = settled.iter().rev().find(|(at, _)| at < began) {
            let got = got.as_ref().expect("pinned");
            assert!(
                got >= want,
                "a read begun after the settle to {want} returned read {got}"
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no read began after a settle");
    assert!(b.read_cache_stats().hits > 0, "B never answered from its cache");
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// (b) Reads of append-only and audited tags (`immutable = false`) never come from the
/// cache, even of a tag B has cached: A moves the pin at once (no claim, no grace) and
/// B's next read shows it.
#[test]
fn reads_of_tags_that_may_advance_are_always_fresh() {
    let (_db, a, b) = pg_pair("cache_fresh", None);
    let (r, t) = (repo("cache/fresh"), tag("v1"));
    a.pin_if_absent(&r, &[(t.clone(), pin_of(&dn(0)))]).unwrap();
    wait_cached(&b, &r, &t, &dn(0));
    for round in 0..ROUNDS * 4 {
        let new = dn(round + 1);
        settle(&a, &r, &t, &new, "none");
        assert!(b.read_view_in_memory(&r, &t, false).is_none(), "answered from memory");
        assert_eq!(
            b.read_view(&r, &t, false).unwrap(),
            view(Some(new), false),
            "round {round}"
        );
    }
}

/// The session of B's listener, found by its application name, terminated; `true` when
/// one was.
fn kill_listener(db: &str) -> bool {
    let mut c = shared().connect("postgres");
    let killed: i64 = c
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = $1) k",
            &[&format!("{db}_b/pin-cache")],
        )
        .unwrap()
        .get(0);
    killed > 0
}

fn allow_connections(db: &str, allow: bool) {
    shared()
        .connect("postgres")
        .batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS {allow}"))
        .unwrap();
}

/// How B's listener loses the database's notifications in a round of (c).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loss {
    /// Its session is terminated and new connections to the database are refused.
    Refused,
    /// Its session is terminated; it may connect again at once.
    Killed,
    /// Its session stays open but the server's messages stop reaching it.
    Frozen,
}

/// (c) B's listener loses its notifications while B holds the old pin in its cache, and A
/// moves the pin. B answers the new pin after A's settle; while its listener stays cut off
/// (refused, frozen) every read of an immutable tag goes to the database; once it is back,
/// B caches again.
#[test]
fn a_lost_listener_never_leaves_a_stale_pin_and_caching_recovers() {
    let relay = LagRelay::start(shared().addr(), Duration::ZERO, "/pin-cache");
    let (db, a, b) = pg_pair("cache_lost", Some(&relay));
    let (r, t) = (repo("cache/lost"), tag("v1"));
    a.pin_if_absent(&r, &[(t.clone(), pin_of(&dn(0)))]).unwrap();
    // Both pools hold a connection before any are refused.
    a.check().unwrap();
    b.check().unwrap();
    let losses = [Loss::Refused, Loss::Killed, Loss::Frozen];
    for (round, loss) in losses.iter().chain(&losses).copied().enumerate() {
        let (old, new) = (dn(round), dn(round + 1));
        wait_cached(&b, &r, &t, &old);
        match loss {
            Loss::Refused => {
                allow_connections(&db, false);
                assert!(kill_listener(&db), "round {round}: no listener to kill");
            }
            Loss::Killed => assert!(kill_listener(&db), "round {round}: no listener to kill"),
            Loss::Frozen => relay.freeze(true),
        }
        released_move(&a, &r, &t, &new, &format!("move-{round}"));
        assert_eq!(read_at(&b, &r, &t), Some(new.clone()), "{loss:?}: after the settle");
        if loss != Loss::Killed {
            // Cut off for longer than the lease: nothing is answered from memory.
            assert!(
                b.read_view_in_memory(&r, &t, true).is_none(),
                "{loss:?}: served from memory"
            );
            let before = b.read_cache_stats();
            for _ in 0..20 {
                assert_eq!(b.read_view(&r, &t, true).unwrap().pin, Some(new.clone()));
            }
            let after = b.read_cache_stats();
            assert_eq!((after.hits, after.fresh), (before.hits, before.fresh + 20), "{loss:?}");
        }
        match loss {
            Loss::Refused => allow_connections(&db, true),
            Loss::Killed => {}
            Loss::Frozen => relay.freeze(false),
        }
    }
    wait_cached(&b, &r, &t, &dn(losses.len() * 2));
}

/// (d) A read B answers from its cache issues no statement: the server logs every
/// statement of this database's sessions (`log_statement = all`), and the view's query
/// appears exactly once per read B counted as fresh.
#[test]
fn a_cached_read_issues_no_statement() {
    let name = fresh_database("cache_log");
    shared()
        .connect("postgres")
        .batch_execute(&format!("ALTER DATABASE {name} SET log_statement = 'all'"))
        .unwrap();
    let a = PgStore::open(shared().config(&name)).unwrap();
    let b = PgStore::open(shared().config(&name)).unwrap();
    let (r, t) = (repo("cache/logged"), tag("v1"));
    a.pin_if_absent(&r, &[(t.clone(), pin_of(&dn(7)))]).unwrap();
    // Only the view's query (of every store in this process) has this text.
    let logged = || shared().log().matches("EXISTS (SELECT 1 FROM claims").count();
    let start = logged();
    for _ in 0..10 {
        b.read_view(&r, &t, false).unwrap();
    }
    assert_eq!(logged(), start + 10, "the log does not show fresh reads");
    wait_cached(&b, &r, &t, &dn(7));
    let (before, logged_before) = (b.read_cache_stats(), logged());
    for _ in 0..500 {
        assert_eq!(b.read_view(&r, &t, true).unwrap().pin, Some(dn(7)));
        assert_eq!(read_at(&b, &r, &t), Some(dn(7)));
    }
    let after = b.read_cache_stats();
    let fresh = after.fresh - before.fresh;
    assert_eq!(after.hits - before.hits + fresh, 1000);
    assert!(after.hits > before.hits, "no read came from the cache");
    assert_eq!(logged() - logged_before, fresh as usize, "statements of cached reads");
}

fn pin_of(digest: &Digest) -> tagpin::store::Pin {
    tagpin::store::Pin::now(digest.clone(), tagpin::store::PinSource::Push)
}

/// End to end: replicas A and B of tagpin on one database, B hearing of every commit
/// 100 ms late. B serves the pinned manifest; at A an operator releases the tag and a push
/// moves it (201); B's next pull returns the new manifest, because A's push waited the
/// move grace before it was forwarded.
#[test]
fn a_released_push_at_one_replica_is_pulled_at_the_other_once_answered() {
    use common::admin::AdminSecrets;
    use common::{image, request, Image, Registry, Tagpin};

    let registry = Registry::start();
    let name = fresh_database("cache_e2e");
    let relay = LagRelay::start(shared().addr(), Duration::from_millis(100), "");
    let secrets = AdminSecrets::new();
    let flags = secrets.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let a = Tagpin::start_on_database(&registry.url(), &shared().url(&name), &flags);
    let b_url = format!("postgres://{USER}@{}/{name}", relay.addr);
    let b = Tagpin::start_on_database(&registry.url(), &b_url, &[]);
    let (repo, tag) = ("cache/e2e", "v1");
    let pull = |addr| {
        let path = format!("/v2/{repo}/manifests/{tag}");
        let r = request(addr, "GET", &path, &[("Accept", image::ACCEPT_ALL)], b"");
        assert_eq!(r.status, 200, "a pull of {repo}:{tag}");
        image::sha256(&r.body)
    };
    let mut current = Image::random(77, 64);
    current.push_blobs(registry.addr, repo, "");
    assert_eq!(current.put_manifest(a.addr, repo, tag, "").status, 201);
    for round in 0..3 {
        for _ in 0..5 {
            assert_eq!(pull(b.addr), current.digest(), "round {round}: before the move");
        }
        let reference = format!("{repo}:{tag}");
        let released = ["release", reference.as_str(), "--reason", "rebuild", "--ttl", "15m"];
        secrets.cli(a.admin_addr(), &released).ok();
        let next = current.variant(&format!("round-{round}"));
        next.push_blobs(registry.addr, repo, "");
        assert_eq!(next.put_manifest(a.addr, repo, tag, "").status, 201, "round {round}");
        assert_eq!(pull(b.addr), next.digest(), "round {round}: B right after A's 201");
        current = next;
    }
}
