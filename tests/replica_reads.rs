//! Pinned reads across replicas: two tagpins on one PostgreSQL database (a throwaway
//! server, as `tests/replicas.rs` starts) in front of one real registry. A pin made or
//! advanced through one replica is what the other serves for every read that begins
//! after the write returned, and a tag moved straight at the upstream is served by
//! neither. Each read is made where the tag's current content at the upstream differs
//! from the pin, so only the pin can pass; the upstream is asked directly.

mod common;

use std::net::SocketAddr;
use std::sync::Barrier;

use common::admin::AdminSecrets;
use common::hold::HoldRelay;
use common::postgres::{fresh_database, shared};
use common::reads::*;
use common::signing::{push_signature_blobs, put, signature_manifest, signature_tag, to_bytes, Signature};
use common::*;

/// The registry; replica 1 reaches it through a relay that can hold its writes, replica 2
/// directly. Replica 1 serves the admin API.
struct Cluster {
    registry: Registry,
    relay: HoldRelay,
    one: Tagpin,
    two: Tagpin,
    secrets: AdminSecrets,
}

impl Cluster {
    fn start(prefix: &str) -> Self {
        let registry = Registry::start();
        let relay = HoldRelay::start(registry.addr);
        let url = shared().url(&fresh_database(prefix));
        let secrets = AdminSecrets::new();
        let flags = secrets.flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let one = Tagpin::start_on_database(&relay.url(), &url, &flags);
        let two = Tagpin::start_on_database(&registry.url(), &url, &[]);
        Self {
            registry,
            relay,
            one,
            two,
            secrets,
        }
    }

    fn pin(&self, reference: &str) -> Option<serde_json::Value> {
        self.secrets.pin(self.one.admin_addr(), reference)
    }
}

#[test]
fn a_pin_made_through_one_replica_is_served_by_the_other_at_once() {
    const ROUNDS: u64 = 8;
    let c = Cluster::start("pinread");
    let (one, two) = (c.one.addr, c.two.addr);
    let base = Image::random(6_000, 256);
    base.push_blobs(c.registry.addr, "app", "");
    for round in 0..ROUNDS {
        let (tag, what) = (format!("t{round}"), format!("round {round}"));
        let (a, b) = (base.variant(&format!("a{round}")), base.variant(&format!("b{round}")));
        // Replica 2 has read the tag before: free, or (every other round) claimed by
        // replica 1's push, held on its way to the upstream while the tag is written
        // behind tagpin's back.
        assert_eq!(read(two, "GET", "app", &tag, "").status, 404, "{what}");
        let held = round % 2 == 1;
        let push = if held {
            let n = c.relay.held();
            c.relay.hold("PUT", &format!("/v2/app/manifests/{tag}"), 1);
            let (a, t) = (a.clone(), tag.clone());
            let push = std::thread::spawn(move || a.put_manifest(one, "app", &t, ""));
            c.relay.wait_held(n + 1);
            put_straight(&c.registry, "app", &tag, &b);
            assert_serves(
                two,
                "app",
                &tag,
                &b.digest(),
                &format!("{what}: in flight at replica 1"),
            );
            c.relay.release(n);
            push.join().unwrap()
        } else {
            a.put_manifest(one, "app", &tag, "")
        };
        assert_eq!(push.status, 201, "{what}: {}", push.text());
        put_straight(&c.registry, "app", &tag, &b);
        // The very next read at replica 2, then more of both kinds at both.
        let first = read(two, "GET", "app", &tag, "");
        assert_eq!(served(&first, &what), a.digest(), "{what}: the first read at replica 2");
        assert_eq!(image::sha256(&first.body), a.digest(), "{what}");
        for addr in [two, one] {
            assert_serves(addr, "app", &tag, &a.digest(), &what);
        }
        assert_eq!(upstream_digest(&c.registry, "app", &tag), Some(b.digest()), "{what}");
    }
}

/// A signature manifest over `sigs` (their blobs pushed straight to the upstream).
fn signatures(registry: &Registry, repo: &str, sigs: &[Signature]) -> Vec<u8> {
    let layers: Vec<_> = sigs.iter().map(Signature::layer).collect();
    let (config, manifest) = signature_manifest(&layers);
    push_signature_blobs(registry.addr, repo, &config, &sigs.iter().collect::<Vec<_>>());
    to_bytes(&manifest)
}

#[test]
fn an_append_only_advance_through_one_replica_is_served_by_the_other_for_reads_after_it() {
    const SIGNATURES: u64 = 6;
    let c = Cluster::start("advread");
    let (one, two, repo) = (c.one.addr, c.two.addr, "signed/app");
    let img = Image::random(6_010, 256);
    img.push_blobs(one, repo, "");
    assert_eq!(img.put_manifest(one, repo, "v1", "").status, 201);
    // The built-in rule makes `sha256-*` tags append-only.
    let tag = signature_tag(&img.digest());
    let sigs: Vec<Signature> = (0..SIGNATURES).map(|n| Signature::new(&img.digest(), n)).collect();
    let mut previous: Option<Vec<u8>> = None;
    for k in 1..=sigs.len() {
        let what = format!("{k} signature(s)");
        let bytes = signatures(&c.registry, repo, &sigs[..k]);
        let digest = image::sha256(&bytes);
        if let Some(before) = &previous {
            // Replica 2 serves the pin being advanced from until the advance.
            assert_serves(two, repo, &tag, &image::sha256(before), &what);
        }
        let r = put(one, repo, &tag, &bytes);
        assert_eq!(r.status, 201, "{what}: {}", r.text());
        // Behind tagpin's back the tag goes back to what it was pinned to before.
        if let Some(before) = &previous {
            assert_eq!(put(c.registry.addr, repo, &tag, before).status, 201, "{what}");
            assert_eq!(upstream_digest(&c.registry, repo, &tag), Some(image::sha256(before)));
        }
        assert_serves(
            two,
            repo,
            &tag,
            &digest,
            &format!("{what}: replica 2 after the advance"),
        );
        assert_serves(
            one,
            repo,
            &tag,
            &digest,
            &format!("{what}: replica 1 after the advance"),
        );
        previous = Some(bytes);
    }
    let pin = c.pin(&format!("{repo}:{tag}")).unwrap();
    assert_eq!(pin["digest"], image::sha256(previous.as_ref().unwrap()));
}

#[test]
fn a_tag_moved_at_the_upstream_is_served_by_neither_replica_whichever_pinned_it() {
    const ROUNDS: u64 = 6;
    const READERS: usize = 8;
    let c = Cluster::start("movedread");
    let addrs = [c.one.addr, c.two.addr];
    let base = Image::random(6_020, 256);
    base.push_blobs(c.registry.addr, "old", "");
    for round in 0..ROUNDS {
        let (tag, what) = (format!("r{round}"), format!("round {round}"));
        let (x, y, z) = (
            base.variant(&format!("x{round}")),
            base.variant(&format!("y{round}")),
            base.variant(&format!("z{round}")),
        );
        // A tag that predates tagpin, first pulled at both replicas at once while it is
        // moved straight at the upstream.
        put_straight(&c.registry, "old", &tag, &x);
        let barrier = Barrier::new(READERS + 1);
        let got: Vec<(u16, Option<String>)> = std::thread::scope(|s| {
            let readers: Vec<_> = (0..READERS)
                .map(|i| {
                    let (barrier, addr, tag): (_, SocketAddr, _) = (&barrier, addrs[i % 2], &tag);
                    s.spawn(move || {
                        barrier.wait();
                        let r = read(addr, if i % 4 < 2 { "GET" } else { "HEAD" }, "old", tag, "");
                        (r.status, r.header("docker-content-digest").map(str::to_owned))
                    })
                })
                .collect();
            s.spawn(|| {
                barrier.wait();
                put_straight(&c.registry, "old", &tag, &y);
            });
            readers.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let pin = c.pin(&format!("old:{tag}")).expect("the first pulls pinned the tag");
        assert_eq!(pin["history"].as_array().unwrap().len(), 1, "{what}: {pin}");
        let pinned = pin["digest"].as_str().unwrap().to_owned();
        assert!(pinned == x.digest() || pinned == y.digest(), "{what}: {pin}");
        for (status, digest) in &got {
            // Every first pull adopted what it read or found the pin and served that.
            // distribution answers a read of a tag it is writing with a passing 500.
            assert!(
                (*status == 200 && digest.as_deref() == Some(pinned.as_str())) || *status == 500,
                "{what}: a first pull got {status} {digest:?}, the pin is {pinned}"
            );
        }
        put_straight(&c.registry, "old", &tag, &z);
        for addr in addrs {
            for _ in 0..2 {
                assert_serves(addr, "old", &tag, &pinned, &format!("{what} at {addr}"));
            }
        }
        let loser = if pinned == x.digest() { &y } else { &x };
        let r = loser.put_manifest(addrs[(round % 2) as usize], "old", &tag, "");
        assert_eq!(r.status, 409, "{what}: {}", r.text());
        assert_eq!(upstream_digest(&c.registry, "old", &tag), Some(z.digest()), "{what}");
    }
}
