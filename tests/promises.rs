//! End-to-end checks of promises README.md and SECURITY.md make that no other suite
//! pins down: a push and a digest delete racing on two replicas, a tag moved behind
//! tagpin's back, a tag check without a digest, an append decided from pinned bytes the
//! upstream no longer serves faithfully, a failed retry of a push whose answer was lost,
//! and a push in flight across a reload that changes its tag's mode.
//!
//! Each window is held open by a relay in front of the real registry (a gate or a hold),
//! never by timing; whether a tag moved is decided by asking the registry directly. The
//! tag check without a digest is a scripted fake upstream's: distribution never sends it.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use common::admin::{history, AdminSecrets};
use common::fake::{Action, FakeUpstream};
use common::gate::GateRelay;
use common::hold::HoldRelay;
use common::postgres::{fresh_database, shared};
use common::signing::{push_signature_blobs, put, signature_manifest, signature_tag, to_bytes, Signature};
use common::*;

const CAUGHT: Duration = Duration::from_secs(60);

/// The `detail` of a 409 `DENIED` refusal, whose reason is `reason` unless that is "".
fn refused(r: &Resp, reason: &str, what: &str) -> Value {
    assert_eq!(
        r.status,
        409,
        "{what}: expected a refusal, got {}: {}",
        r.status,
        r.text()
    );
    assert_eq!(r.oci_code(), "DENIED", "{what}: {}", r.text());
    let detail = r.json()["errors"][0]["detail"].clone();
    if !reason.is_empty() {
        assert_eq!(detail["reason"], reason, "{what}: {}", r.text());
    }
    detail
}

fn created(r: &Resp, what: &str) {
    assert_eq!(r.status, 201, "{what}: {}", r.text());
}

fn in_background(addr: SocketAddr, method: &'static str, target: String, body: Vec<u8>) -> JoinHandle<Resp> {
    std::thread::spawn(move || {
        let headers: &[(&str, &str)] = match method {
            "PUT" => &[("Content-Type", image::OCI_MANIFEST)],
            _ => &[],
        };
        request(addr, method, &target, headers, &body)
    })
}

/// A manifest stored at the upstream by digest only (no tag), pushed directly.
fn untagged_at_upstream(registry: &Registry, repo: &str, img: &Image) {
    img.push_blobs(registry.addr, repo, "");
    created(
        &img.put_manifest(registry.addr, repo, &img.digest(), ""),
        "by digest, directly",
    );
}

fn upstream_has_manifest(registry: &Registry, repo: &str, digest: &str) -> bool {
    let r = request(
        registry.addr,
        "HEAD",
        &format!("/v2/{repo}/manifests/{digest}"),
        &[("Accept", image::ACCEPT_ALL)],
        b"",
    );
    match r.status {
        200 => true,
        404 => false,
        s => panic!("unexpected {s} for {repo}@{digest} at the upstream"),
    }
}

/// Promise 1 (README "How it decides", SECURITY "a delete of a digest racing a push that
/// pins it", across replicas): replica A's push of D to `v1` is held at the relay after
/// tagpin recorded and forwarded it; replica B's delete of D must be refused and never
/// forwarded, and the push then lands. Then replica B's delete of E is held in flight;
/// replica A's push of E to `v2` must be refused (`delete_in_flight`) and never forwarded;
/// once the delete lands, `v2` is free (not pinned to the deleted E): F takes it.
///
/// Catches: a delete decided without the other replica's push record (D deleted while
/// `v1` is being pinned to it: a pin on a digest the upstream lost), and a push that pins
/// content a delete in flight on another replica is removing (`v2` pinned to E, then E
/// deleted, so F is refused forever and `v2` pulls nothing).
#[test]
fn a_push_and_a_digest_delete_racing_on_two_replicas_never_pin_a_deleted_digest() {
    let registry = Registry::start();
    let relay = GateRelay::start(registry.addr);
    let url = shared().url(&fresh_database("promise_race"));
    let a = Tagpin::start_on_database(&relay.url(), &url, &[]);
    let b = Tagpin::start_on_database(&relay.url(), &url, &[]);
    let repo = "race/app";
    let d = Image::random(1701, 256);
    let (e, f) = (d.variant("e"), d.variant("f"));
    untagged_at_upstream(&registry, repo, &d);
    untagged_at_upstream(&registry, repo, &e);

    // The push holds D: B's delete of D is refused, not forwarded.
    let gate = relay.hold(&format!("PUT /v2/{repo}/manifests/v1"));
    let push = in_background(a.addr, "PUT", format!("/v2/{repo}/manifests/v1"), d.manifest.clone());
    gate.wait_caught(CAUGHT);
    let r = request(
        b.addr,
        "DELETE",
        &format!("/v2/{repo}/manifests/{}", d.digest()),
        &[],
        b"",
    );
    let detail = refused(&r, "", "a delete of D while a push of D to v1 is in flight on A");
    assert_eq!(detail["digest"], d.digest(), "{}", r.text());
    assert_eq!(relay.count("DELETE "), 0, "the refused delete reached the upstream");
    gate.open();
    created(&push.join().unwrap(), "the held push of D");
    assert_eq!(upstream_digest(&registry, repo, "v1"), Some(d.digest()));
    assert!(upstream_has_manifest(&registry, repo, &d.digest()));

    // The delete holds E: A's push of E is refused, not forwarded.
    let target = format!("/v2/{repo}/manifests/{}", e.digest());
    let gate = relay.hold(&format!("DELETE {target}"));
    let delete = in_background(b.addr, "DELETE", target, vec![]);
    gate.wait_caught(CAUGHT);
    let r = e.put_manifest(a.addr, repo, "v2", "");
    let detail = refused(
        &r,
        "delete_in_flight",
        "a push of E while a delete of E is in flight on B",
    );
    assert_eq!(detail["repository"], repo, "{}", r.text());
    assert_eq!(
        relay.count(&format!("PUT /v2/{repo}/manifests/v2")),
        0,
        "the refused push was forwarded"
    );
    gate.open();
    assert_eq!(delete.join().unwrap().status, 202, "the held delete of E lands");
    assert!(!upstream_has_manifest(&registry, repo, &e.digest()));
    assert_eq!(upstream_digest(&registry, repo, "v2"), None);
    created(
        &f.put_manifest(a.addr, repo, "v2", ""),
        "v2 is free: it was never pinned to E",
    );
    assert_eq!(upstream_digest(&registry, repo, "v2"), Some(f.digest()));
}

/// Promise 2 (README "A pin is never removed", SECURITY "No pin is lost"): `v1` is pinned
/// to A through tagpin, then moved to B directly at the upstream. Through tagpin a push of
/// C is refused naming A, and so is a push of B (tagpin does not adopt the move); the
/// upstream keeps B (tagpin does not move the tag back on its own either).
///
/// Catches: a pin re-read from the upstream instead of the store (the moved digest
/// becomes the pin, or the tag is treated as free), and a refusal that "repairs" the tag.
#[test]
fn a_tag_moved_behind_tagpins_back_still_refuses_other_digests_and_is_left_as_moved() {
    let s = Stack::start(&[]);
    let (repo, addr) = ("moved/app", s.tagpin.addr);
    let a = Image::random(1702, 256);
    let (b, c) = (a.variant("direct"), a.variant("third"));
    a.push_blobs(addr, repo, "");
    created(&a.put_manifest(addr, repo, "v1", ""), "A through tagpin");
    created(
        &b.put_manifest(s.registry.addr, repo, "v1", ""),
        "B directly at the upstream",
    );
    assert_eq!(upstream_digest(&s.registry, repo, "v1"), Some(b.digest()));

    for (img, what) in [(&c, "a third digest"), (&b, "the directly pushed digest")] {
        let r = img.put_manifest(addr, repo, "v1", "");
        let detail = refused(&r, "tag_immutable", what);
        assert_eq!(detail["pinned_digest"], a.digest(), "{what}: {}", r.text());
        assert_eq!(detail["attempted_digest"], img.digest(), "{what}: {}", r.text());
        assert_eq!(
            upstream_digest(&s.registry, repo, "v1"),
            Some(b.digest()),
            "{what}: the upstream's tag changed"
        );
    }
}

/// Promise 3 (SECURITY "When tagpin cannot decide safely, it refuses": a tag check that
/// answers without a digest): the upstream says the protected tag `v1` exists (it
/// predates tagpin) but its `HEAD` 200 carries no `Docker-Content-Digest`. The push is
/// refused with a 5xx and no manifest PUT reaches the upstream, twice in a row (nothing
/// was adopted or recorded by the first).
///
/// Catches: a check that reads "200 without a digest" as "absent" (the push is forwarded
/// and moves a tag tagpin never saw), or adopts some guessed digest.
#[test]
fn a_tag_check_answered_without_a_digest_refuses_the_push_and_forwards_nothing() {
    let fake = FakeUpstream::start(|method, target| match (method, target) {
        ("HEAD", t) if t.contains("/manifests/") => Action::with_header(200, "Content-Type", image::OCI_MANIFEST),
        ("GET", "/v2/") => Action::status(200),
        ("PUT", t) if t.contains("/manifests/") => {
            Action::with_header(201, "Docker-Content-Digest", &Image::random(1703, 16).digest())
        }
        _ => Action::status(404),
    });
    let data = tempfile::tempdir().unwrap();
    let t = Tagpin::start(&fake.url(), data.path(), &[]);
    for seed in [1703, 1704] {
        let r = Image::random(seed, 16).put_manifest(t.addr, "old/app", "v1", "");
        assert!(
            (500..600).contains(&r.status),
            "push {seed}: expected a 5xx, got {}: {}",
            r.status,
            r.text()
        );
        assert_eq!(r.oci_code(), "UNAVAILABLE", "{}", r.text());
    }
    let puts = fake.requests().iter().filter(|s| s.method == "PUT").count();
    assert_eq!(puts, 0, "a manifest PUT was forwarded: {:?}", fake.requests());
    assert_eq!(
        request(t.addr, "GET", "/v2/", &[], b"").status,
        200,
        "tagpin keeps serving"
    );
}

/// The filesystem path where distribution keeps the bytes of blob (or manifest) `digest`.
fn stored_blob(registry: &Registry, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    registry
        .dir
        .path()
        .join("storage/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

fn cannot_decide(r: &Resp, what: &str) {
    assert_eq!(r.status, 503, "{what}: expected 503, got {}: {}", r.status, r.text());
    assert!(r.text().contains("cannot decide"), "{what}: {}", r.text());
}

/// Promise 4 (README "append-only, precisely", SECURITY "an append decided against bytes
/// that are not the pin"): the decision needs the pinned manifest's own bytes.
///
/// `gone`: the pinned signature manifest [s1] is deleted directly at the upstream (404);
/// a valid-looking append [s1, s2] is refused 503 and not forwarded.
/// `rot`: the pinned [s1, s2]'s stored bytes are replaced at the upstream by [s2] (the
/// upstream serves them under the pinned digest); [s2, s3], a valid append of [s2] that
/// drops s1, is refused 503 and not forwarded, and the tag keeps the pinned digest.
///
/// Catches: an append compared with whatever the upstream serves (s1 silently dropped)
/// and a missing pinned manifest read as "nothing to keep".
#[test]
fn an_append_decided_from_pinned_bytes_the_upstream_lost_or_serves_wrong_is_refused_unforwarded() {
    let registry = Registry::start();
    let relay = GateRelay::start(registry.addr);
    let data = tempfile::tempdir().unwrap();
    let t = Tagpin::start(&relay.url(), data.path(), &[]);
    let img = Image::random(1705, 128);
    let tag = signature_tag(&img.digest());
    let sigs: Vec<Signature> = (1..=3).map(|n| Signature::new(&img.digest(), n)).collect();
    let manifest = |which: &[usize], repo: &str| {
        let layers: Vec<Value> = which.iter().map(|&i| sigs[i].layer()).collect();
        let (config, m) = signature_manifest(&layers);
        let chosen: Vec<&Signature> = which.iter().map(|&i| &sigs[i]).collect();
        push_signature_blobs(t.addr, repo, &config, &chosen);
        to_bytes(&m)
    };
    let puts = |repo: &str| relay.count(&format!("PUT /v2/{repo}/manifests/{tag}"));

    let repo = "sig/gone";
    let pinned = manifest(&[0], repo);
    created(&put(t.addr, repo, &tag, &pinned), "the first signature");
    let r = request(
        registry.addr,
        "DELETE",
        &format!("/v2/{repo}/manifests/{}", image::sha256(&pinned)),
        &[],
        b"",
    );
    assert_eq!(r.status, 202, "deleted behind tagpin's back: {}", r.text());
    let append = manifest(&[0, 1], repo);
    let before = puts(repo);
    cannot_decide(
        &put(t.addr, repo, &tag, &append),
        "an append to a pin the upstream lost",
    );
    assert_eq!(puts(repo), before, "the undecidable append was forwarded");
    assert_eq!(upstream_digest(&registry, repo, &tag), None);

    let repo = "sig/rot";
    let pinned = manifest(&[0, 1], repo);
    created(&put(t.addr, repo, &tag, &pinned), "two signatures");
    let wrong = manifest(&[1], repo);
    std::fs::write(stored_blob(&registry, &image::sha256(&pinned)), &wrong).unwrap();
    let served = signing::upstream_manifest(&registry, repo, &image::sha256(&pinned));
    assert_eq!(
        served,
        Some(wrong),
        "the upstream must serve the wrong bytes for the test to mean anything"
    );
    let dropping = manifest(&[1, 2], repo);
    let before = puts(repo);
    cannot_decide(
        &put(t.addr, repo, &tag, &dropping),
        "an append judged against wrong bytes",
    );
    assert_eq!(puts(repo), before, "the undecidable append was forwarded");
    assert_eq!(upstream_digest(&registry, repo, &tag), Some(image::sha256(&pinned)));
}

/// Promise 5 (README "only a write's own answer settles its record"): the push of M1 to
/// the free tag `v1` is held at the relay until tagpin gives up (504, outcome unknown),
/// so its record reserves `v1` for M1. The client's retry of M1 is forwarded and the
/// registry refuses it (400: M1's blobs are not uploaded yet). That refusal settles the
/// retry's own record and nothing else: M2 is still refused (`tag_in_flight`). The held
/// push then lands (the blobs were uploaded meanwhile), and M2 is still refused.
///
/// Catches: a definitive failure of a retry that withdraws every record of its digest on
/// the tag (M2 would be pinned and forwarded, then the first push lands M1 over it).
#[test]
fn a_retry_that_fails_definitively_does_not_free_the_tag_its_lost_push_reserved() {
    let registry = Registry::start();
    let relay = HoldRelay::start(registry.addr);
    let data = tempfile::tempdir().unwrap();
    let t = Tagpin::start_on_data_dir(&relay.url(), data.path(), &["--upstream-header-timeout-ms", "1500"]);
    let repo = "lost/app";
    let m1 = Image::random(1706, 256);
    let m2 = Image::random(1707, 256);
    m2.push_blobs(t.addr, repo, "");

    relay.hold("PUT", &format!("/v2/{repo}/manifests/v1"), 1);
    let r = m1.put_manifest(t.addr, repo, "v1", "");
    assert_eq!(r.status, 504, "the held push times out: {}", r.text());
    assert_eq!(relay.held(), 1, "the push is still on its way");
    let r = m1.put_manifest(t.addr, repo, "v1", "");
    assert_eq!(
        r.status,
        400,
        "the retry reaches the registry, which refuses it: {}",
        r.text()
    );
    assert_eq!(r.oci_code(), "MANIFEST_BLOB_UNKNOWN", "{}", r.text());

    let r = m2.put_manifest(t.addr, repo, "v1", "");
    let detail = refused(&r, "tag_in_flight", "M2 after the retry of M1 failed");
    assert_eq!(detail["pinned_digest"], m1.digest(), "{}", r.text());
    assert_eq!(upstream_digest(&registry, repo, "v1"), None);

    m1.push_blobs(t.addr, repo, "");
    relay.release(0);
    assert_eq!(relay.wait_answered(0), 201, "the lost push lands late");
    assert_eq!(upstream_digest(&registry, repo, "v1"), Some(m1.digest()));
    refused(&m2.put_manifest(t.addr, repo, "v1", ""), "", "M2 after M1 landed");
    assert_eq!(upstream_digest(&registry, repo, "v1"), Some(m1.digest()));
}

/// Rewrite `path`, SIGHUP `tagpin` and wait (bounded) for its `policy_reloaded` event.
fn reload(tagpin: &Tagpin, path: &std::path::Path, text: &str) {
    let seen = tagpin.audit_events().len();
    std::fs::write(path, text).unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &tagpin.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -HUP failed");
    for _ in 0..500 {
        if tagpin
            .audit_events()
            .iter()
            .skip(seen)
            .any(|e| e["action"] == "policy_reloaded")
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no policy_reloaded after SIGHUP:\n{}", tagpin.logs().join("\n"));
}

fn v1_rule(mode: &str) -> String {
    format!("[[rules]]\nrepositories = [\"app\"]\ntags = [\"v1\"]\nmode = \"{mode}\"\n")
}

/// Promise 6 (README "Requests in flight finish under the policy they started with"): a
/// push of A to the immutable `app:v1` is held at the relay, forwarded; a SIGHUP makes
/// `v1` mutable; the push is let go and gets its 201. It settles as the immutable push it
/// started as: the admin API shows `v1` pinned to A by a `push`. Under the new policy a
/// push of B is forwarded (the reload took effect); back under `immutable`, C is refused
/// naming A, the pin the held push made.
///
/// Catches: a push settled under the policy in force when its answer arrives (a mutable
/// tag is not pinned, so `pins show` finds nothing).
#[test]
fn a_push_in_flight_across_a_reload_to_mutable_settles_as_the_immutable_push_it_started_as() {
    let registry = Registry::start();
    let relay = GateRelay::start(registry.addr);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tagpin.toml");
    std::fs::write(&config, v1_rule("immutable")).unwrap();
    let secrets = AdminSecrets::new();
    let mut flags: Vec<String> = vec!["--config".into(), config.display().to_string()];
    flags.extend(secrets.flags());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let data = tempfile::tempdir().unwrap();
    let t = Tagpin::start(&relay.url(), data.path(), &flags);
    let (repo, addr) = ("app", t.addr);
    let a = Image::random(1708, 256);
    let (b, c) = (a.variant("b"), a.variant("c"));
    a.push_blobs(addr, repo, "");

    let gate = relay.hold("PUT /v2/app/manifests/v1");
    let push = in_background(addr, "PUT", "/v2/app/manifests/v1".into(), a.manifest.clone());
    gate.wait_caught(CAUGHT);
    reload(&t, &config, &v1_rule("mutable"));
    assert_eq!(
        upstream_digest(&registry, repo, "v1"),
        None,
        "the push must still be held"
    );
    gate.open();
    created(&push.join().unwrap(), "the push held across the reload");
    assert_eq!(upstream_digest(&registry, repo, "v1"), Some(a.digest()));

    let pin = secrets
        .pin(t.admin_addr(), "app:v1")
        .expect("the push that started immutable left no pin");
    assert_eq!(
        (&pin["state"], &pin["digest"]),
        (&Value::from("pinned"), &Value::from(a.digest())),
        "{pin}"
    );
    assert_eq!(history(&pin, "push").len(), 1, "{pin}");

    created(&b.put_manifest(addr, repo, "v1", ""), "v1 is mutable now");
    assert_eq!(upstream_digest(&registry, repo, "v1"), Some(b.digest()));
    reload(&t, &config, &v1_rule("immutable"));
    let r = c.put_manifest(addr, repo, "v1", "");
    let detail = refused(&r, "tag_immutable", "C once v1 is immutable again");
    assert_eq!(detail["pinned_digest"], a.digest(), "{}", r.text());
}
