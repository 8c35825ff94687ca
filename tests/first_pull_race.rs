//! Pin on first pull racing a push, against the real upstream: sixteen first pulls of a
//! fresh protected tag start at once with a push of another digest through tagpin, while
//! the tag already exists at the upstream, or while a writer straight to the upstream
//! creates it in the same instant. Every round ends with exactly one pin (asked of the
//! admin API), and every later read and push agrees with it, even after the tag is moved
//! behind tagpin's back. What the upstream holds is asked of it directly.

mod common;

use std::net::SocketAddr;
use std::sync::Barrier;

use common::admin::AdminSecrets;
use common::reads::*;
use common::*;

const READERS: usize = 16;
const ROUNDS: usize = 20;
/// Reads a reader makes at most while the tag is not there yet.
const RETRIES: usize = 8;
const REPO: &str = "race";

/// How the tag comes to exist at the upstream.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Upstream {
    /// Pushed straight to the upstream before the round.
    HoldsIt,
    /// Pushed straight to the upstream in the same instant as the reads and the push.
    CreatedMeanwhile,
}

struct Env {
    registry: Registry,
    tagpin: Tagpin,
    secrets: AdminSecrets,
    _data: tempfile::TempDir,
}

/// What one round's racers got.
struct Round {
    /// Each reader's last status, `Docker-Content-Digest` and body.
    reads: Vec<(u16, Option<String>, String)>,
    push: Resp,
}

/// Run the readers, the push of `y` through tagpin and (when the upstream gets the tag
/// meanwhile) the straight write of `x`, released together by a barrier.
fn race(env: &Env, tag: &str, x: &Image, y: &Image, upstream: Upstream) -> Round {
    let straight = upstream == Upstream::CreatedMeanwhile;
    let barrier = Barrier::new(READERS + 1 + usize::from(straight));
    let addr: SocketAddr = env.tagpin.addr;
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..READERS)
            .map(|i| {
                let barrier = &barrier;
                s.spawn(move || {
                    let method = if i % 2 == 0 { "GET" } else { "HEAD" };
                    barrier.wait();
                    // Until the tag is there (a few tries): a pull that finds it is a
                    // first pull racing the push. distribution answers a read of a tag
                    // it is writing with a passing 500, which tagpin passes on.
                    let mut r = read(addr, method, REPO, tag, "");
                    for _ in 1..RETRIES {
                        if r.status != 404 && r.status != 500 {
                            break;
                        }
                        r = read(addr, method, REPO, tag, "");
                    }
                    let digest = r.header("docker-content-digest").map(str::to_owned);
                    (r.status, digest, r.text())
                })
            })
            .collect();
        let push = s.spawn(|| {
            barrier.wait();
            // A push tagpin cannot decide because the upstream answered its look at the
            // tag with that passing 500 is refused with 502 and changes nothing; the
            // client tries again, as clients do.
            let mut r = y.put_manifest(addr, REPO, tag, "");
            for _ in 1..RETRIES {
                if r.status != 502 {
                    break;
                }
                r = y.put_manifest(addr, REPO, tag, "");
            }
            r
        });
        if straight {
            s.spawn(|| {
                barrier.wait();
                put_straight(&env.registry, REPO, tag, x);
            });
        }
        Round {
            reads: readers.into_iter().map(|h| h.join().unwrap()).collect(),
            push: push.join().unwrap(),
        }
    })
}

/// How a round was won, for the summary: by the push, by a first pull, or by the push's
/// own adoption of what the upstream held.
#[derive(Default, Debug)]
struct Tally {
    push: usize,
    first_pull: usize,
    adopted_by_push: usize,
}

fn rounds(upstream: Upstream) {
    let data = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let secrets = AdminSecrets::new();
    let flags = secrets.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let tagpin = Tagpin::start(&registry.url(), data.path(), &flags);
    let env = Env {
        registry,
        tagpin,
        secrets,
        _data: data,
    };
    let admin = env.tagpin.admin_addr();
    let base = Image::random(5_000 + upstream as u64, 256);
    base.push_blobs(env.registry.addr, REPO, "");
    let mut tally = Tally::default();
    for round in 0..ROUNDS {
        let tag = format!("r{round}");
        let what = format!("{upstream:?} round {round}");
        let (x, y, z) = (
            base.variant(&format!("x{round}")),
            base.variant(&format!("y{round}")),
            base.variant(&format!("z{round}")),
        );
        if upstream == Upstream::HoldsIt {
            put_straight(&env.registry, REPO, &tag, &x);
        }
        let Round { reads, push } = race(&env, &tag, &x, &y, upstream);

        // Exactly one pin, and the push's answer agrees with it.
        let pin = env.secrets.pin(admin, &format!("{REPO}:{tag}")).expect("a pin");
        assert_eq!(pin["state"], "pinned", "{what}: {pin}");
        assert_eq!(pin["history"].as_array().unwrap().len(), 1, "{what}: {pin}");
        let pinned = pin["digest"].as_str().unwrap().to_owned();
        match push.status {
            201 => {
                assert_eq!(pinned, y.digest(), "{what}: the push was accepted");
                tally.push += 1;
            }
            409 => {
                assert_eq!(pinned, x.digest(), "{what}: the push was refused");
                assert_eq!(
                    push.json()["errors"][0]["detail"]["pinned_digest"],
                    x.digest(),
                    "{what}"
                );
                let reason = pin["history"][0]["reason"].as_str().unwrap_or("");
                if reason.contains("first pull") {
                    tally.first_pull += 1;
                } else {
                    tally.adopted_by_push += 1;
                }
            }
            s => panic!("{what}: the push got {s}: {}", push.text()),
        }
        if upstream == Upstream::HoldsIt {
            assert_eq!(pinned, x.digest(), "{what}: the upstream held x before anyone asked");
        }
        for (i, (status, digest, body)) in reads.iter().enumerate() {
            match (upstream, status) {
                (Upstream::HoldsIt, 200) => assert_eq!(digest.as_deref(), Some(x.digest().as_str()), "{what}"),
                // y reaches the upstream only through the push, which is forwarded only
                // if it wins: a reader that got y saw the winner.
                (Upstream::CreatedMeanwhile, 200) => assert!(
                    *digest == Some(x.digest()) || (*digest == Some(y.digest()) && pinned == y.digest()),
                    "{what}: reader {i} got {digest:?}, pinned {pinned}"
                ),
                (Upstream::CreatedMeanwhile, 404) => {}
                // The upstream's passing 500 (tagpin's own errors carry a request id).
                (Upstream::CreatedMeanwhile, 500) => assert!(!body.contains("request_id"), "{what}: {body}"),
                _ => panic!("{what}: reader {i} got {status}: {body}"),
            }
        }

        // Every later read and push agrees, whatever the upstream holds under the tag.
        let loser = if pinned == x.digest() { &y } else { &x };
        put_straight(&env.registry, REPO, &tag, &z);
        assert_serves(env.tagpin.addr, REPO, &tag, &pinned, &what);
        let r = loser.put_manifest(env.tagpin.addr, REPO, &tag, "");
        assert_eq!(r.status, 409, "{what}: the loser's push: {}", r.text());
        assert_eq!(
            r.json()["errors"][0]["detail"]["pinned_digest"],
            pinned.as_str(),
            "{what}"
        );
        assert_eq!(upstream_digest(&env.registry, REPO, &tag), Some(z.digest()), "{what}");
        let winner = if pinned == x.digest() { &x } else { &y };
        let r = winner.put_manifest(env.tagpin.addr, REPO, &tag, "");
        assert_eq!(r.status, 201, "{what}: the winner's identical push: {}", r.text());
        assert_eq!(
            upstream_digest(&env.registry, REPO, &tag),
            Some(pinned.clone()),
            "{what}"
        );
        assert_serves(env.tagpin.addr, REPO, &tag, &pinned, &what);
    }
    for round in 0..ROUNDS {
        let adopted = events(&env.tagpin, "pin_adopted_on_read", REPO, &format!("r{round}"));
        assert!(adopted.len() <= 1, "{upstream:?} round {round}: {adopted:#?}");
    }
    eprintln!("{upstream:?}: {ROUNDS} rounds won by {tally:?}");
}

#[test]
fn first_pulls_racing_a_push_while_the_upstream_holds_the_tag_agree_on_one_pin() {
    rounds(Upstream::HoldsIt);
}

#[test]
fn first_pulls_racing_a_push_and_a_straight_writer_creating_the_tag_agree_on_one_pin() {
    rounds(Upstream::CreatedMeanwhile);
}
