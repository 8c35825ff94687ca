//! The in-flight rule against the real upstream: once a push has been forwarded, no
//! other digest can take its tag until the upstream's answer is known, whatever the
//! client, a timer or the process does meanwhile.
//!
//! The window is made wide on purpose: a valid manifest that lists one layer 25,000 times
//! takes distribution (without its blob descriptor cache, as the harness runs it) about
//! half a second to verify, and the tests act inside that time: the pushing client leaves,
//! tagpin's header timeout fires, or tagpin is killed. Each test checks that the window
//! really was open (the upstream did not hold the tag yet when the rival push came), so
//! it cannot pass by being too slow to exercise anything. Whether a tag moved is decided
//! by asking the upstream directly.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::watch::WatchRelay;
use common::*;

/// Layer references in the slow manifest (about 3.3 MB, under the 4 MiB limit).
const SLOW: usize = 25_000;

/// Wait until the upstream holds `repo:tag` and return its digest.
fn wait_upstream(registry: &Registry, repo: &str, tag: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(d) = upstream_digest(registry, repo, tag) {
            return d;
        }
        assert!(Instant::now() < deadline, "the upstream never got {repo}:{tag}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn detail(r: &Resp) -> serde_json::Value {
    r.json()["errors"][0]["detail"].clone()
}

/// Send a whole manifest PUT on a raw connection; leave without reading the answer once
/// tagpin has forwarded it to the upstream (seen by `relay`).
fn push_and_leave(addr: std::net::SocketAddr, relay: &WatchRelay, repo: &str, tag: &str, manifest: &[u8]) {
    let before = relay.forwarded();
    let mut s = TcpStream::connect(addr).unwrap();
    let head = format!(
        "PUT /v2/{repo}/manifests/{tag} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
        image::OCI_MANIFEST,
        manifest.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(manifest).unwrap();
    relay.wait_forwarded(before, manifest.len(), Duration::from_secs(30));
    let _ = s.shutdown(std::net::Shutdown::Both);
}

#[test]
fn a_client_that_leaves_mid_push_cannot_let_another_digest_take_the_tag() {
    let registry = Registry::start();
    let relay = WatchRelay::start(registry.addr);
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(&relay.url(), data.path(), &[]);
    let base = Image::random(700, 256);
    base.push_blobs(registry.addr, "gone", "");
    for round in 0..3 {
        let tag = format!("v{round}");
        let x = base.heavy(SLOW, &format!("x{round}"));
        let y = base.variant(&format!("y{round}"));
        push_and_leave(tagpin.addr, &relay, "gone", &tag, &x.manifest);
        assert_eq!(
            upstream_digest(&registry, "gone", &tag),
            None,
            "round {round}: the upstream finished before the rival push; the window was not open"
        );
        let r = y.put_manifest(tagpin.addr, "gone", &tag, "");
        assert_eq!(r.status, 409, "round {round}: {}", r.text());
        assert_eq!(detail(&r)["pinned_digest"], x.digest(), "round {round}");
        assert_eq!(wait_upstream(&registry, "gone", &tag), x.digest(), "round {round}");
        // What used to move the tag: the rival's "identical re-push".
        assert_eq!(y.put_manifest(tagpin.addr, "gone", &tag, "").status, 409);
        assert_eq!(upstream_digest(&registry, "gone", &tag), Some(x.digest()));
        // The departed client's push was recorded: it is the pin.
        assert_eq!(
            detail(&y.put_manifest(tagpin.addr, "gone", &tag, ""))["state"],
            "pinned"
        );
    }
}

#[test]
fn a_header_timeout_mid_push_keeps_the_tag_reserved_for_the_forwarded_digest() {
    let registry = Registry::start();
    let data = tempfile::tempdir().unwrap();
    let mut tagpin = Tagpin::start(&registry.url(), data.path(), &["--upstream-header-timeout-ms", "150"]);
    let base = Image::random(701, 256);
    base.push_blobs(registry.addr, "slow", "");
    let x = base.heavy(SLOW, "x");
    let y = base.variant("y");

    let r = x.put_manifest(tagpin.addr, "slow", "v1", "");
    assert_eq!((r.status, r.oci_code().as_str()), (504, "UNAVAILABLE"), "{}", r.text());
    let message = r.json()["errors"][0]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("not known") && !message.contains("nothing was changed"),
        "the 504 must not claim nothing changed: {message}"
    );
    assert_eq!(
        upstream_digest(&registry, "slow", "v1"),
        None,
        "the upstream finished before the rival push; the window was not open"
    );
    let r = y.put_manifest(tagpin.addr, "slow", "v1", "");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(detail(&r)["pinned_digest"], x.digest());
    assert_eq!(detail(&r)["state"], "claimed");
    assert_eq!(wait_upstream(&registry, "slow", "v1"), x.digest());
    assert_eq!(y.put_manifest(tagpin.addr, "slow", "v1", "").status, 409);

    // With a timeout the upstream can meet, the client's retry completes the push.
    tagpin.kill();
    let tagpin = Tagpin::start(&registry.url(), data.path(), &[]);
    assert_eq!(
        detail(&y.put_manifest(tagpin.addr, "slow", "v1", ""))["state"],
        "claimed"
    );
    assert_eq!(x.put_manifest(tagpin.addr, "slow", "v1", "").status, 201);
    let r = y.put_manifest(tagpin.addr, "slow", "v1", "");
    assert_eq!((r.status, detail(&r)["state"].as_str()), (409, Some("pinned")));
    assert_eq!(upstream_digest(&registry, "slow", "v1"), Some(x.digest()));
}

#[test]
fn sigkill_right_after_forwarding_keeps_the_tag_reserved_across_a_restart() {
    let registry = Registry::start();
    let relay = WatchRelay::start(registry.addr);
    let data = tempfile::tempdir().unwrap();
    let base = Image::random(702, 256);
    base.push_blobs(registry.addr, "killed", "");
    let x = base.heavy(SLOW, "x");
    let y = base.variant("y");
    let mut tagpin = Tagpin::start(&relay.url(), data.path(), &[]);
    let addr = tagpin.addr;
    let sent_before = relay.forwarded();
    let pusher = std::thread::spawn({
        let manifest = x.manifest.clone();
        move || {
            try_request(
                addr,
                "PUT",
                "/v2/killed/manifests/v1",
                &[("Content-Type", image::OCI_MANIFEST)],
                &manifest,
            )
        }
    });
    // The whole manifest has gone to the upstream, which is now verifying it.
    relay.wait_forwarded(sent_before, x.manifest.len(), Duration::from_secs(30));
    tagpin.kill();
    assert!(
        pusher.join().unwrap().map_or(true, |r| r.status != 201),
        "no 201 can have been sent"
    );
    assert_eq!(
        upstream_digest(&registry, "killed", "v1"),
        None,
        "the upstream finished before the kill; the window was not open"
    );

    let tagpin = Tagpin::start(&registry.url(), data.path(), &[]);
    let r = y.put_manifest(tagpin.addr, "killed", "v1", "");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(detail(&r)["pinned_digest"], x.digest());
    assert_eq!(detail(&r)["state"], "claimed");
    assert_eq!(wait_upstream(&registry, "killed", "v1"), x.digest());
    assert_eq!(y.put_manifest(tagpin.addr, "killed", "v1", "").status, 409);
    assert_eq!(x.put_manifest(tagpin.addr, "killed", "v1", "").status, 201);
    assert_eq!(
        detail(&y.put_manifest(tagpin.addr, "killed", "v1", ""))["state"],
        "pinned"
    );
    assert_eq!(upstream_digest(&registry, "killed", "v1"), Some(x.digest()));
}

#[test]
fn a_push_the_upstream_refuses_frees_the_tag_it_claimed() {
    let Stack {
        registry,
        tagpin,
        data: _data,
    } = Stack::start(&[]);
    // No blobs pushed: distribution refuses the manifest (MANIFEST_BLOB_UNKNOWN), a
    // definitive answer, so the claim made for it is withdrawn.
    let orphan = Image::random(703, 256);
    let r = orphan.put_manifest(tagpin.addr, "refused", "v1", "");
    assert_eq!(r.status, 400, "{}", r.text());
    let good = Image::random(704, 256);
    good.push_blobs(tagpin.addr, "refused", "");
    assert_eq!(good.put_manifest(tagpin.addr, "refused", "v1", "").status, 201);
    assert_eq!(upstream_digest(&registry, "refused", "v1"), Some(good.digest()));
}

#[test]
fn a_delete_cut_off_in_flight_keeps_its_digest_from_being_pinned_until_the_horizon() {
    let registry = Registry::start();
    // The upstream's answers are held back, so the delete is done at the upstream while
    // tagpin still waits; the kill lands in that window.
    let relay = WatchRelay::start_with_delay(registry.addr, Duration::from_secs(4));
    let data = tempfile::tempdir().unwrap();
    let img = Image::random(705, 256);
    img.push_blobs(registry.addr, "del", "");
    let digest = img.digest();
    // Pushed by digest only: no tag holds it, so its delete is allowed.
    assert_eq!(img.put_manifest(registry.addr, "del", &digest, "").status, 201);

    let mut tagpin = Tagpin::start(&relay.url(), data.path(), &[]);
    let addr = tagpin.addr;
    let target = format!("/v2/del/manifests/{digest}");
    let deleter = std::thread::spawn({
        let target = target.clone();
        move || try_request(addr, "DELETE", &target, &[], b"")
    });
    relay.wait_request(&format!("DELETE {target}"), Duration::from_secs(30));
    tagpin.kill();
    // The upstream's answer is held back 4 s: the kill came first.
    let answer = deleter.join().unwrap();
    assert!(answer.is_err(), "the delete was answered before the kill: {answer:?}");

    let tagpin = Tagpin::start(&registry.url(), data.path(), &[]);
    let r = img.put_manifest(tagpin.addr, "del", "v1", "");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(detail(&r)["reason"], "delete_in_flight");
    assert_eq!(upstream_digest(&registry, "del", "v1"), None, "nothing was forwarded");
    // A repeat of the delete is answered, but its answer says nothing about the first,
    // which may still land: the digest stays unpinnable.
    let again = request(tagpin.addr, "DELETE", &target, &[], b"");
    assert!(again.status == 202 || again.status == 404, "{}", again.text());
    let r = img.put_manifest(tagpin.addr, "del", "v1", "");
    assert_eq!(
        (r.status, detail(&r)["reason"].as_str()),
        (409, Some("delete_in_flight"))
    );
    // Once the in-doubt horizon has passed, the first delete can no longer land.
    drop(tagpin);
    let short = ["--upstream-header-timeout-ms", "1000", "--in-doubt-horizon", "4s"];
    let tagpin = Tagpin::start(&registry.url(), data.path(), &short);
    img.push_blobs(registry.addr, "del", "");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let pushed = loop {
        let r = img.put_manifest(tagpin.addr, "del", "v1", "");
        if r.status != 409 || std::time::Instant::now() > deadline {
            break r;
        }
        assert_eq!(detail(&r)["reason"], "delete_in_flight", "{}", r.text());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(pushed.status, 201, "{}", pushed.text());
    assert_eq!(upstream_digest(&registry, "del", "v1"), Some(digest));
}
