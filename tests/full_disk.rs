//! A data dir on a full filesystem (a small tmpfs mounted for the test; CI runs as root):
//! a pin whose flush failed must not be answered from memory. Every write that needs the
//! store is refused until a flush succeeds again, and what was acknowledged survives a
//! restart.

mod common;

use common::gate::GateRelay;
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
