//! A data dir on a full filesystem (a small tmpfs mounted for the test; CI runs as root):
//! a pin whose flush failed must not be answered from memory. Every write that needs the
//! store is refused until a flush succeeds again, and what was acknowledged survives a
//! restart. A delete the upstream applied while the disk was full still has its webhook
//! event once space is back.

mod common;

use common::admin::AdminSecrets;
use common::gate::GateRelay;
use common::hold::HoldRelay;
use common::receiver::{Mode, Receiver};
use common::tmpfs::SmallFs;
use common::*;

#[test]
fn a_pin_whose_flush_failed_is_not_answered_from_memory() {
    let fs = SmallFs::mount("8m");
    let registry = Registry::start();
    let data = fs.path().join("data");
    // Through a gate, so the disk fills exactly while a push is at the upstream: its
    // record was written before it was forwarded, and its pin is the write that fails.
    let relay = GateRelay::start(registry.addr);
    let mut tagpin = Tagpin::start(&relay.url(), &data, &[]);
    let a = Image::random(900, 256);
    a.push_blobs(tagpin.addr, "full", "");
    assert_eq!(a.put_manifest(tagpin.addr, "full", "before", "").status, 201);

    let b = a.variant("b");
    b.push_blobs(tagpin.addr, "full", "");
    let refused = "after".to_owned();
    let gate = relay.hold(&format!("PUT /v2/full/manifests/{refused}"));
    let push = {
        let (b, addr, tag) = (b.clone(), tagpin.addr, refused.clone());
        std::thread::spawn(move || b.put_manifest(addr, "full", &tag, "").status)
    };
    gate.wait_caught(std::time::Duration::from_secs(60));
    fs.fill();
    // sled may still have room in pages it holds: push other tags until a flush fails, so
    // the store owes a flush when the held push's answer comes.
    let other = a.variant("o");
    let mut failed = false;
    for i in 0..500 {
        let status = other.put_manifest(tagpin.addr, "full", &format!("t{i}"), "").status;
        if status == 503 {
            failed = true;
            break;
        }
        assert_eq!(status, 201, "t{i}");
    }
    assert!(failed, "the store never ran out of space: the test exercised nothing");
    gate.open();
    // The upstream took the push; the pin written after it could not be flushed.
    assert_eq!(push.join().unwrap(), 503);
    assert_eq!(upstream_digest(&registry, "full", &refused), Some(b.digest()));
    // The same push again, as a client's retry does: the pin may be in memory only, so it
    // must not be acknowledged as an identical re-push.
    for attempt in 0..3 {
        let r = b.put_manifest(tagpin.addr, "full", &refused, "");
        assert_eq!(r.status, 503, "attempt {attempt}: {}", r.text());
    }
    assert_eq!(
        request(tagpin.addr, "GET", "/readyz", &[], b"").status,
        503,
        "readiness reports the store"
    );
    // Reads by digest keep flowing; a read by a protected tag cannot be answered from a
    // store that owes a flush, so it fails closed rather than serve the upstream's tag.
    let get = request(
        tagpin.addr,
        "GET",
        &format!("/v2/full/manifests/{}", a.digest()),
        &[("Accept", image::ACCEPT_ALL)],
        b"",
    );
    assert_eq!(get.status, 200);
    let by_tag = request(
        tagpin.addr,
        "GET",
        "/v2/full/manifests/before",
        &[("Accept", image::ACCEPT_ALL)],
        b"",
    );
    assert_eq!(by_tag.status, 503, "{}", by_tag.text());

    fs.free();
    // Space is back: the store recovers without a restart, and the retry completes.
    let r = b.put_manifest(tagpin.addr, "full", &refused, "");
    assert_eq!(r.status, 201, "{}", r.text());
    tagpin.kill();
    let tagpin = Tagpin::start(&relay.url(), &data, &[]);
    let c = a.variant("c");
    for tag in ["before", refused.as_str()] {
        let r = c.put_manifest(tagpin.addr, "full", tag, "");
        assert_eq!(r.status, 409, "{tag}: the acknowledged pin survived: {}", r.text());
    }
    assert_eq!(upstream_digest(&registry, "full", "before"), Some(a.digest()));
    assert_eq!(upstream_digest(&registry, "full", &refused), Some(b.digest()));
}

/// A delete by digest that used a release is held on its way to the upstream while the
/// disk fills, so the write settling the release (which carries its `release_used` event)
/// fails, and the store then reopens with what is on disk. The upstream applied the
/// delete: once space is back the event is delivered all the same. (It was lost with the
/// failed write.)
#[test]
fn a_release_used_by_a_delete_whose_settling_write_failed_is_still_announced() {
    let fs = SmallFs::mount("8m");
    let registry = Registry::start();
    let relay = HoldRelay::start(registry.addr);
    let receiver = Receiver::start(Mode::Ok);
    let conf = tempfile::tempdir().unwrap();
    let cfg = conf.path().join("tagpin.toml");
    let notify = format!(
        "[[notify]]\nname = \"security\"\nurl = \"{}\"\ntimeout = \"2s\"\n",
        receiver.url("/hook")
    );
    std::fs::write(&cfg, notify).unwrap();
    let secrets = AdminSecrets::new();
    let mut args = vec!["--config".to_owned(), cfg.display().to_string()];
    args.extend(secrets.flags());
    // The delete waits at the relay while the disk fills: far within its upstream bound.
    let bounds = ["--in-doubt-horizon", "10m", "--upstream-header-timeout-ms", "120000"];
    args.extend(bounds.map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let data = fs.path().join("data");
    let tagpin = Tagpin::start_on_data_dir(&relay.url(), &data, &args);

    let a = Image::random(950, 256);
    a.push_blobs(tagpin.addr, "full", "");
    assert_eq!(a.put_manifest(tagpin.addr, "full", "v1", "").status, 201);
    let out = secrets.cli(tagpin.admin_addr(), &["release", "full:v1", "--reason", "cleanup"]);
    assert_eq!(out.code, 0, "{}", out.stderr);

    let target = format!("/v2/full/manifests/{}", a.digest());
    relay.hold("DELETE", &target, 1);
    let delete = {
        let (addr, target) = (tagpin.addr, target.clone());
        std::thread::spawn(move || request(addr, "DELETE", &target, &[], b""))
    };
    relay.wait_held(1);
    fs.fill();
    // sled may still have room in pages it holds: push other tags until a flush fails
    // (of an image sharing nothing with the one being deleted, so none waits for it).
    let other = Image::random(951, 256);
    other.push_blobs(registry.addr, "fill", "");
    let mut failed = false;
    for i in 0..500 {
        let status = other.put_manifest(tagpin.addr, "fill", &format!("t{i}"), "").status;
        if status == 503 {
            failed = true;
            break;
        }
        assert_eq!(status, 201, "t{i}");
    }
    assert!(failed, "the store never ran out of space: the test exercised nothing");
    relay.release(0);
    assert_eq!(relay.wait_answered(0), 202, "the upstream applied the delete");
    let r = delete.join().unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    // A write while the disk is still full: the store gives up what it held in memory
    // (the settling write, had it been applied there) and holds what is on disk.
    let status = other.put_manifest(tagpin.addr, "fill", "after", "").status;
    assert_eq!(status, 503, "the disk is still full");

    fs.free();
    let got = receiver.wait_for(60, "release_used of the delete", |d| {
        d.iter().any(|d| d.json()["type"] == "io.tagpin.release_used")
    });
    let events: Vec<serde_json::Value> = got.iter().map(|d| d.json()).collect();
    let used: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "io.tagpin.release_used")
        .collect();
    assert_eq!(used.len(), 1, "{used:?}");
    assert_eq!(used[0]["subject"], "full:v1");
    assert_eq!(used[0]["data"]["action"], "delete_released");
    assert_eq!(used[0]["data"]["pinned_digest"], a.digest());
}
