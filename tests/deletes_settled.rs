//! Deletes by digest follow the in-flight rule (README, "How it decides"): each delete
//! holds a record of its own from before it is forwarded until its own answer settles
//! it, and while one stands no push may pin content that needs the digest, whether the
//! push's references were recorded now or earlier. Regressions for the two ways the old
//! code let a pinned tag lose its content, against the real registry.
//!
//! The delete is held on its way to the registry by a relay
//! ([`common::hold::HoldRelay`]) until the test releases it, so nothing depends on the
//! machine's speed. What the registry serves is asked of it directly.

mod common;

use std::net::SocketAddr;
use std::thread::JoinHandle;

use common::hold::HoldRelay;
use common::image::{push_blob, sha256};
use common::postgres::{fresh_database, shared};
use common::*;
use serde_json::Value;

/// The `detail` of a 409 `DENIED` refusal whose reason is `reason`.
fn refused(r: &Resp, reason: &str, what: &str) -> Value {
    assert_eq!(
        r.status,
        409,
        "{what}: expected a refusal ({reason}), got {}: {}",
        r.status,
        r.text()
    );
    let detail = r.json()["errors"][0]["detail"].clone();
    assert_eq!(detail["reason"], reason, "{what}: {}", r.text());
    detail
}

fn created(r: &Resp, what: &str) {
    assert_eq!(r.status, 201, "{what}: {}", r.text());
}

/// A DELETE through tagpin, in the background (the relay may hold it).
fn delete_in_background(addr: SocketAddr, target: &str) -> JoinHandle<Resp> {
    let target = target.to_owned();
    std::thread::spawn(move || request(addr, "DELETE", &target, &[], b""))
}

/// The registry's own status for `GET /v2/<repo>/<kind>/<reference>`, and the body.
fn upstream_get(registry: &Registry, repo: &str, kind: &str, reference: &str) -> Resp {
    request(
        registry.addr,
        "GET",
        &format!("/v2/{repo}/{kind}/{reference}"),
        &[("Accept", image::ACCEPT_ALL)],
        b"",
    )
}

/// Pinned means pullable: if the registry holds `tag`, it serves `img` under it, and
/// every blob of it.
fn pullable_if_tagged(registry: &Registry, repo: &str, tag: &str, img: &Image) -> bool {
    let Some(held) = upstream_digest(registry, repo, tag) else {
        return false;
    };
    assert_eq!(held, img.digest(), "{repo}:{tag}");
    let m = upstream_get(registry, repo, "manifests", tag);
    assert_eq!(
        (m.status, m.body == img.manifest),
        (200, true),
        "{repo}:{tag}: {}",
        m.text()
    );
    for (what, blob) in [("config", &img.config), ("layer", &img.layer)] {
        let b = upstream_get(registry, repo, "blobs", &sha256(blob));
        assert_eq!(
            b.status,
            200,
            "{repo}:{tag} is pinned but its {what} is gone: {}",
            b.text()
        );
    }
    true
}

/// Review item 6: Two replicas on one database (one tagpin would order the push after the
/// delete with its in-process repository lock; across replicas only the records do). M is
/// pushed to t1 through replica 1 before its blobs are uploaded: the registry refuses it
/// (400), and tagpin has recorded M's references meanwhile. The blobs are uploaded; a
/// delete of M's layer L (nothing pinned references it) is forwarded by replica 1 and held
/// on its way. Pushing M by t2 through replica 2 must be refused (`delete_in_flight`): M's
/// references were recorded earlier, and the delete may take L away. Once the delete landed
/// (202, which settles its record), pushing M meets the registry's own check (L is gone,
/// 400) until L is uploaded again; then t2 is pinned, and the registry serves t2 and every
/// blob of it.
///
/// The old code checked only the manifest itself against deletes in flight when its
/// references had been recorded before: t2 was pinned (201), then the delete landed and
/// L was 404 under a pinned tag.
#[test]
fn a_layer_delete_in_flight_holds_back_a_manifest_whose_references_were_recorded_before() {
    let registry = Registry::start();
    let relay = HoldRelay::start(registry.addr);
    let url = shared().url(&fresh_database("settled_layer"));
    let [one, two] = [0, 1].map(|_| Tagpin::start_on_database(&relay.url(), &url, &[]));
    let repo = "settled/layer";
    let m = Image::random(1401, 256);
    let layer = sha256(&m.layer);

    let r = m.put_manifest(one.addr, repo, "t1", "");
    assert_eq!(r.status, 400, "M before its blobs: {}", r.text());
    m.push_blobs(registry.addr, repo, "");
    let target = format!("/v2/{repo}/blobs/{layer}");
    relay.hold("DELETE", &target, 1);
    let delete = delete_in_background(one.addr, &target);
    relay.wait_held(1);

    let r = m.put_manifest(two.addr, repo, "t2", "");
    let detail = refused(
        &r,
        "delete_in_flight",
        "M to t2 while a delete of its layer is in flight",
    );
    assert_eq!(detail["digest"], layer, "{}", r.text());
    assert_eq!(upstream_digest(&registry, repo, "t2"), None, "nothing was forwarded");

    relay.release(0);
    let r = delete.join().unwrap();
    assert_eq!(r.status, 202, "the layer delete: {}", r.text());
    assert_eq!(upstream_get(&registry, repo, "blobs", &layer).status, 404);
    let mut answers = Vec::new();
    for attempt in 0..2 {
        let r = m.put_manifest(two.addr, repo, "t2", "");
        answers.push(r.status);
        match r.status {
            201 => break,
            400 if attempt == 0 => push_blob(registry.addr, repo, &m.layer, ""),
            _ => panic!("M to t2 after the delete landed ({answers:?}): {}", r.text()),
        }
    }
    assert_eq!(answers.last(), Some(&201), "{answers:?}");
    assert!(pullable_if_tagged(&registry, repo, "t2", &m), "t2 is pinned to M");
}

/// Review item 7: N is pushed by digest only. Delete #1 of N is forwarded and held on its
/// way; tagpin answers its client 504 (the header timeout). Delete #2 of N goes through
/// (202). N pushed again by tag t3 would re-create it, but #1 may still land: refused
/// (`delete_in_flight`). #1 is released and lands. Whatever tagpin decides afterwards, a
/// tag it pinned is served by the registry.
///
/// The old code let any 2xx or 404 to a delete settle every delete record of the digest:
/// #2's 202 cleared #1's, t3 was pinned (201), then #1 landed and the registry answered
/// 404 MANIFEST_UNKNOWN for t3.
#[test]
fn a_second_deletes_answer_does_not_settle_the_first_which_may_still_land() {
    let registry = Registry::start();
    let relay = HoldRelay::start(registry.addr);
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(&relay.url(), data.path(), &["--upstream-header-timeout-ms", "1500"]);
    let repo = "settled/untagged";
    let n = Image::random(1402, 256);
    n.push_blobs(registry.addr, repo, "");
    created(&n.put_manifest(tagpin.addr, repo, &n.digest(), ""), "N by digest");
    let target = format!("/v2/{repo}/manifests/{}", n.digest());
    relay.hold("DELETE", &target, 1);

    let first = request(tagpin.addr, "DELETE", &target, &[], b"");
    assert_eq!(first.status, 504, "delete #1, held on its way: {}", first.text());
    assert_eq!(relay.held(), 1);
    assert_eq!(upstream_get(&registry, repo, "manifests", &n.digest()).status, 200);
    let second = request(tagpin.addr, "DELETE", &target, &[], b"");
    assert_eq!(second.status, 202, "delete #2: {}", second.text());
    assert_eq!(upstream_get(&registry, repo, "manifests", &n.digest()).status, 404);

    let r = n.put_manifest(tagpin.addr, repo, "t3", "");
    let detail = refused(&r, "delete_in_flight", "N to t3 while delete #1 may still land");
    assert_eq!(detail["digest"], n.digest(), "{}", r.text());
    assert_eq!(upstream_digest(&registry, repo, "t3"), None, "nothing was forwarded");

    relay.release(0);
    let landed = relay.wait_answered(0);
    assert!(landed == 202 || landed == 404, "delete #1 at the registry: {landed}");
    // Tagpin never saw #1's answer, so its record may stand until the in-doubt horizon.
    let r = n.put_manifest(tagpin.addr, repo, "t3", "");
    match r.status {
        201 => assert!(pullable_if_tagged(&registry, repo, "t3", &n), "t3 is pinned to N"),
        _ => {
            refused(&r, "delete_in_flight", "N to t3 after #1 landed unseen");
            assert_eq!(upstream_digest(&registry, repo, "t3"), None);
        }
    }
}
