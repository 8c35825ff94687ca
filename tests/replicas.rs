//! Several tagpin replicas on one PostgreSQL database, in front of one real registry: the
//! guarantee must hold across processes, decided by the database alone (the replicas
//! share no memory and no locks). Every verdict is checked against what the upstream
//! itself holds.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::http::try_request;
use common::postgres::{fresh_database, shared, PgServer};
use common::signing::{
    push_signature_blobs, put, signature_manifest, signature_tag, to_bytes, upstream_manifest, Signature,
};
use common::watch::WatchRelay;
use common::*;
use serde_json::Value;

const REPLICAS: usize = 3;

/// A registry and `REPLICAS` tagpins on database `db` of `server`, each reaching the
/// registry through a relay of its own that shows what it forwarded.
struct Cluster {
    registry: Registry,
    url: String,
    relays: Vec<WatchRelay>,
    replicas: Vec<Tagpin>,
}

impl Cluster {
    fn start(url: String) -> Self {
        let registry = Registry::start();
        let relays: Vec<WatchRelay> = (0..REPLICAS).map(|_| WatchRelay::start(registry.addr)).collect();
        let replicas = relays
            .iter()
            .map(|relay| Tagpin::start_on_database(&relay.url(), &url, &[]))
            .collect();
        Self {
            registry,
            url,
            relays,
            replicas,
        }
    }

    /// A cluster on a fresh database of the process's shared server.
    fn on_shared_server(prefix: &str) -> Self {
        Self::start(shared().url(&fresh_database(prefix)))
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.replicas.iter().map(|t| t.addr).collect()
    }

    fn replace(&mut self, i: usize) {
        self.replicas[i] = Tagpin::start_on_database(&self.relays[i].url(), &self.url, &[]);
    }
}

/// A small deterministic generator, so a failing run can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

/// Run `f(i)` for `0..n` at once (released together by a barrier); the results in order.
fn race<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let barrier = Barrier::new(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (f, barrier) = (&f, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    f(i)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn put_image(addr: SocketAddr, repo: &str, tag: &str, img: &Image) -> Result<u16, String> {
    try_request(
        addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Content-Type", image::OCI_MANIFEST)],
        &img.manifest,
    )
    .map(|r| r.status)
}

#[test]
fn racing_pushes_spread_over_replicas_have_exactly_one_winner_every_round() {
    const PUSHERS: usize = 12;
    let cluster = Cluster::on_shared_server("race");
    let addrs = cluster.addrs();
    let base = Image::random(900, 256);
    base.push_blobs(addrs[0], "race", "");
    let variants: Vec<Image> = (0..PUSHERS).map(|i| base.variant(&format!("pusher-{i}"))).collect();
    for round in 0..100 {
        let tag = format!("r{round}");
        let answers = race(PUSHERS, |i| {
            variants[i]
                .put_manifest(addrs[(i + round) % REPLICAS], "race", &tag, "")
                .status
        });
        let winners: Vec<usize> = (0..PUSHERS).filter(|&i| answers[i] == 201).collect();
        assert_eq!(winners.len(), 1, "round {round}: {answers:?}");
        assert!(
            answers.iter().all(|s| *s == 201 || *s == 409),
            "round {round}: {answers:?}"
        );
        assert_eq!(
            upstream_digest(&cluster.registry, "race", &tag),
            Some(variants[winners[0]].digest()),
            "round {round}"
        );
    }
}

#[test]
fn racing_appends_spread_over_replicas_admit_one_per_round_and_lose_no_accepted_signature() {
    const RACERS: usize = 12;
    const ROUNDS: u64 = 15;
    let cluster = Cluster::on_shared_server("append");
    let (addrs, upstream) = (cluster.addrs(), cluster.registry.addr);
    let repo = "signed/app";
    let img = Image::random(901, 64);
    img.push_blobs(addrs[0], repo, "");
    assert_eq!(img.put_manifest(addrs[0], repo, "v1", "").status, 201);
    // The built-in rule makes `sha256-*` tags append-only.
    let tag = signature_tag(&img.digest());
    let manifest_over = |layers: &[Value], sigs: &[&Signature]| -> Vec<u8> {
        let (config, manifest) = signature_manifest(layers);
        push_signature_blobs(upstream, repo, &config, sigs);
        to_bytes(&manifest)
    };
    let first = Signature::new(&img.digest(), 0);
    let r = put(addrs[1], repo, &tag, &manifest_over(&[first.layer()], &[&first]));
    assert_eq!(r.status, 201, "the first signature: {}", r.text());
    let mut accepted = vec![first.digest()];
    for round in 0..ROUNDS {
        // Every racer extends what the upstream holds now: the previous round's winner.
        let held: Value = serde_json::from_slice(&upstream_manifest(&cluster.registry, repo, &tag).unwrap()).unwrap();
        let base = held["layers"].as_array().unwrap().clone();
        let bids: Vec<Vec<u8>> = (0..RACERS as u64)
            .map(|i| {
                let sig = Signature::new(&img.digest(), 1 + round * RACERS as u64 + i);
                let mut layers = base.clone();
                layers.push(sig.layer());
                manifest_over(&layers, &[&sig])
            })
            .collect();
        let answers = race(RACERS, |i| put(addrs[i % REPLICAS], repo, &tag, &bids[i]));
        let winners: Vec<usize> = (0..RACERS).filter(|&i| answers[i].status == 201).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {:?}",
            answers.iter().map(|a| a.status).collect::<Vec<_>>()
        );
        for (i, a) in answers.iter().enumerate().filter(|(i, _)| *i != winners[0]) {
            assert_eq!(a.status, 409, "round {round} racer {i}: {}", a.text());
            let reason = a.json()["errors"][0]["detail"]["reason"].clone();
            assert!(
                reason == "not_append_only" || reason == "tag_in_flight",
                "round {round} racer {i}: {}",
                a.text()
            );
        }
        let now = upstream_manifest(&cluster.registry, repo, &tag).unwrap();
        assert_eq!(now, bids[winners[0]], "round {round}: the upstream holds the winner");
        let layers: Vec<String> = serde_json::from_slice::<Value>(&now).unwrap()["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned())
            .collect();
        accepted.push(layers.last().unwrap().clone());
        assert_eq!(
            layers, accepted,
            "round {round}: every accepted signature, and only those"
        );
    }
}

#[test]
fn a_replica_killed_mid_push_moves_no_tag_and_the_others_keep_serving() {
    // Planned rounds, and the least cut-off and landed pushes of victims to see.
    const ROUNDS: usize = 20;
    const FLOOR: usize = 3;
    const PUSHERS: usize = 6;
    // Slow for the upstream to verify, so some kills land while it is forwarded.
    const SLOW: usize = 15_000;
    let mut cluster = Cluster::on_shared_server("kill");
    let repo = "crash";
    let base = Image::random(902, 128);
    base.push_blobs(cluster.replicas[0].addr, repo, "");
    let mut rng = Lcg(0x7a67_7069);
    let mut accepted: Vec<(String, String)> = Vec::new();
    let mut cut_off = 0;
    let mut first_seen: HashMap<String, String> = HashMap::new();
    // A tag, once at the upstream, never changes.
    fn check_upstream(registry: &Registry, first_seen: &mut HashMap<String, String>, rounds: usize, when: &str) {
        for round in 0..rounds {
            let tag = format!("k{round}");
            if let Some(now) = upstream_digest(registry, "crash", &tag) {
                let first = first_seen.entry(tag.clone()).or_insert_with(|| now.clone());
                assert_eq!(&now, first, "{when}: {tag} moved at the upstream");
            }
        }
    }
    // Counted over the victims' pushes: landed at the upstream, cut off by the kill, both.
    let (mut landed, mut landed_but_cut) = (0, 0);
    let (started, mut round) = (Instant::now(), 0);
    // Past the planned rounds until the kills have cut enough (bounded in rounds and time).
    while round < ROUNDS || cut_off < FLOOR || landed < FLOOR || landed_but_cut == 0 {
        assert!(
            round < ROUNDS * 4 && started.elapsed() < Duration::from_secs(300),
            "after {round} rounds the kills had cut off {cut_off} pushes, {landed} landed, \
             {landed_but_cut} both: too little exercised to vouch for anything"
        );
        let victim = round % REPLICAS;
        let tag = format!("k{round}");
        let addrs = cluster.addrs();
        let jobs: Vec<(usize, Image)> = (0..PUSHERS)
            .map(|i| {
                let replica = i % REPLICAS;
                let note = format!("k{round}-p{i}");
                let img = if replica == victim {
                    base.heavy(SLOW, &note)
                } else {
                    base.variant(&note)
                };
                (replica, img)
            })
            .collect();
        let kill_after = Duration::from_millis(rng.next(400));
        let relay = &cluster.relays[victim];
        let lines_before = relay.requests().len();
        let victim_put = format!("PUT /v2/{repo}/manifests/{tag} ");
        let victim_jobs = jobs.iter().filter(|(r, _)| *r == victim).count();
        let victim_done = AtomicUsize::new(0);
        let answers: Vec<Result<u16, String>> = std::thread::scope(|s| {
            let spawn = |mine: bool| {
                let spawned: Vec<_> = jobs
                    .iter()
                    .enumerate()
                    .filter(|(_, (replica, _))| (*replica == victim) == mine)
                    .map(|(i, (replica, img))| {
                        let (addr, tag, done) = (addrs[*replica], &tag, &victim_done);
                        let h = s.spawn(move || {
                            let answer = put_image(addr, repo, tag, img);
                            done.fetch_add(usize::from(mine), Ordering::SeqCst);
                            answer
                        });
                        (i, h)
                    })
                    .collect::<Vec<_>>();
                spawned
            };
            // In even rounds the victim's pushes go first and the others follow once the
            // victim forwarded one (its record is written), so the kill finds it in
            // flight whatever the machine's speed; in odd rounds all race from the start.
            // The kill is timed from the victim's forward (or from its last answer, when
            // it forwarded none), not from the pushers' start.
            let victim_first = round % 2 == 0;
            let mut handles = spawn(true);
            if !victim_first {
                handles.extend(spawn(false));
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while !relay.requests()[lines_before..]
                .iter()
                .any(|l| l.starts_with(&victim_put))
                && victim_done.load(Ordering::SeqCst) < victim_jobs
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            if victim_first {
                handles.extend(spawn(false));
            }
            std::thread::sleep(kill_after);
            cluster.replicas[victim].kill();
            handles.sort_by_key(|(i, _)| *i);
            handles.into_iter().map(|(_, h)| h.join().unwrap()).collect()
        });
        // Whatever the victim forwarded has been carried out: nothing can land later.
        relay.wait_upstream_done(Duration::from_secs(60));
        let held_now = upstream_digest(&cluster.registry, repo, &tag);
        for ((replica, img), answer) in jobs.iter().zip(&answers) {
            let on_upstream = held_now.as_ref() == Some(&img.digest());
            if *replica == victim {
                landed += usize::from(on_upstream);
                landed_but_cut += usize::from(on_upstream && answer.is_err());
            }
        }
        for ((replica, img), answer) in jobs.iter().zip(&answers) {
            if *replica == victim {
                assert!(
                    matches!(answer, Err(_) | Ok(201) | Ok(409)),
                    "round {round}: the victim said {answer:?}"
                );
            } else {
                assert!(
                    matches!(answer, Ok(201) | Ok(409)),
                    "round {round}: replica {replica} kept serving? {answer:?}"
                );
            }
            if answer == &Ok(201) {
                accepted.push((tag.clone(), img.digest()));
            }
        }
        cut_off += answers.iter().filter(|a| a.is_err()).count();
        let winners = answers.iter().filter(|a| **a == Ok(201)).count();
        assert!(winners <= 1, "round {round}: {answers:?}");
        // A survivor settles the tag: what the upstream holds is re-pushed and completes;
        // a digest of nobody's is refused while the tag is held, or takes a free tag.
        let survivor = addrs[(victim + 1) % REPLICAS];
        if let Some(held) = upstream_digest(&cluster.registry, repo, &tag) {
            let (_, img) = jobs
                .iter()
                .find(|(_, img)| img.digest() == held)
                .expect("a pusher's digest");
            assert_eq!(put_image(survivor, repo, &tag, img), Ok(201), "round {round}: re-push");
        }
        let stranger = base.variant(&format!("k{round}-stranger"));
        match put_image(survivor, repo, &tag, &stranger) {
            Ok(201) => accepted.push((tag.clone(), stranger.digest())),
            Ok(409) => {}
            other => panic!("round {round}: the stranger got {other:?}"),
        }
        cluster.replace(victim);
        check_upstream(&cluster.registry, &mut first_seen, round + 1, &format!("round {round}"));
        round += 1;
    }
    eprintln!(
        "{round} rounds: {cut_off} pushes cut off by a kill, {landed} of the victims' landed \
         ({landed_but_cut} of them cut off), {} accepted",
        accepted.len()
    );
    check_upstream(&cluster.registry, &mut first_seen, round, "after the last round");
    for (tag, digest) in &accepted {
        assert_eq!(
            upstream_digest(&cluster.registry, repo, tag).as_ref(),
            Some(digest),
            "a 201 for {tag} that the upstream does not hold"
        );
    }
}

#[test]
fn while_the_database_is_down_pushes_and_reads_by_tag_are_refused_reads_by_digest_flow_and_it_recovers_without_a_restart(
) {
    let mut server = PgServer::start();
    let url = server.create_database("outage");
    let cluster = Cluster::start(url);
    let addrs = cluster.addrs();
    let repo = "app";
    let a = Image::random(903, 64);
    a.push_blobs(addrs[0], repo, "");
    let b = a.variant("b");
    assert_eq!(put_image(addrs[0], repo, "v1", &a), Ok(201));
    let ready = |addr| request(addr, "GET", "/readyz", &[], b"").status;
    assert!(addrs.iter().all(|&r| ready(r) == 200));

    server.stop();
    let answers = race(REPLICAS, |i| put_image(addrs[i], repo, &format!("down-{i}"), &b));
    assert!(answers.iter().all(|a| *a == Ok(503)), "pushes while down: {answers:?}");
    for (i, &addr) in addrs.iter().enumerate() {
        let r = request(
            addr,
            "GET",
            &format!("/v2/{repo}/manifests/{}", a.digest()),
            &[("Accept", image::ACCEPT_ALL)],
            b"",
        );
        assert_eq!(
            r.status, 200,
            "replica {i}: a read by digest while the database is down"
        );
        assert_eq!(r.body, a.manifest, "replica {i}");
        // A read by the protected tag cannot learn its pin: it fails closed.
        let r = request(
            addr,
            "GET",
            &format!("/v2/{repo}/manifests/v1"),
            &[("Accept", image::ACCEPT_ALL)],
            b"",
        );
        assert_eq!(r.status, 503, "replica {i}: a read by tag while the database is down");
        // `/readyz` caches its answer for a second.
        let deadline = Instant::now() + Duration::from_secs(15);
        while ready(addr) != 503 {
            assert!(
                Instant::now() < deadline,
                "replica {i} stayed ready without its database"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert_eq!(
        upstream_digest(&cluster.registry, repo, "down-0"),
        None,
        "nothing was forwarded"
    );

    server.start_again();
    for (i, &addr) in addrs.iter().enumerate() {
        let tag = format!("up-{i}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match put_image(addr, repo, &tag, &b) {
                Ok(201) => break,
                Ok(503) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
                other => panic!("replica {i} after the database came back: {other:?}"),
            }
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while ready(addr) != 200 {
            assert!(Instant::now() < deadline, "replica {i} did not become ready again");
            std::thread::sleep(Duration::from_millis(200));
        }
        // The pin written before the outage still holds.
        assert_eq!(put_image(addr, repo, "v1", &b), Ok(409), "replica {i}");
    }
    assert_eq!(upstream_digest(&cluster.registry, repo, "v1"), Some(a.digest()));
}

#[test]
fn a_replica_started_after_pins_were_written_enforces_them() {
    let mut cluster = Cluster::on_shared_server("late");
    let (repo, first) = ("late", cluster.replicas[0].addr);
    let base = Image::random(904, 64);
    base.push_blobs(first, repo, "");
    let pinned: Vec<Image> = (0..5).map(|i| base.variant(&format!("v{i}"))).collect();
    for (i, img) in pinned.iter().enumerate() {
        assert_eq!(put_image(first, repo, &format!("v{i}"), img), Ok(201));
    }
    // Only one replica ran so far; a new one joins.
    cluster.replicas.truncate(1);
    cluster
        .replicas
        .push(Tagpin::start_on_database(&cluster.registry.url(), &cluster.url, &[]));
    let late = cluster.replicas[1].addr;
    for (i, img) in pinned.iter().enumerate() {
        let tag = format!("v{i}");
        assert_eq!(put_image(late, repo, &tag, &base.variant("other")), Ok(409), "{tag}");
        assert_eq!(
            put_image(late, repo, &tag, img),
            Ok(201),
            "{tag}: the same digest again"
        );
        assert_eq!(upstream_digest(&cluster.registry, repo, &tag), Some(img.digest()));
    }
}

#[test]
fn two_replicas_starting_at_once_on_an_empty_database_both_serve_and_create_the_schema_once() {
    let name = fresh_database("together");
    let url = shared().url(&name);
    let registry = Registry::start();
    let replicas = race(2, |_| Tagpin::start_on_database(&registry.url(), &url, &[]));
    let mut db = shared().connect(&name);
    let versions: Vec<i32> = db
        .query("SELECT version FROM tagpin_schema ORDER BY version", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6], "each migration applied once");
    let tables: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'pins'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tables, 1);
    let repo = "together";
    let base = Image::random(905, 64);
    base.push_blobs(replicas[0].addr, repo, "");
    let (a, b) = (base.variant("a"), base.variant("b"));
    assert_eq!(put_image(replicas[0].addr, repo, "v1", &a), Ok(201));
    assert_eq!(put_image(replicas[1].addr, repo, "v1", &b), Ok(409));
    assert_eq!(put_image(replicas[1].addr, repo, "v2", &b), Ok(201));
    assert_eq!(put_image(replicas[0].addr, repo, "v2", &a), Ok(409));
    assert_eq!(upstream_digest(&registry, repo, "v1"), Some(a.digest()));
    assert_eq!(upstream_digest(&registry, repo, "v2"), Some(b.digest()));
}
