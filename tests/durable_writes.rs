//! One durable write on a push's path: the claim, with the manifest's references, is
//! made durable before the push is forwarded, and the settlement after the upstream's
//! answer is not waited for. Counted with `tagpin_store_durable_writes_total`, not timed.
//! A settlement that a kill takes back is completed on the next start from what the
//! upstream holds, and the tag is held for the pushed digest meanwhile.

mod common;

use std::time::{Duration, Instant};

use common::admin::AdminSecrets;
use common::*;

/// The counter's value in tagpin's `/metrics`.
fn durable_writes(tagpin: &Tagpin) -> u64 {
    let r = request(tagpin.addr, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    text.lines()
        .find_map(|l| l.strip_prefix("tagpin_store_durable_writes_total "))
        .unwrap_or_else(|| panic!("no tagpin_store_durable_writes_total in\n{text}"))
        .trim()
        .parse()
        .expect("a count")
}

/// Pushes of new tags each wait for exactly one durable write, identical re-pushes for
/// one each (their claim), and the pins are in force: the upstream holds each digest and
/// a push of another digest is refused. Old code: two durable writes per new tag on sled
/// (claim, then settlement) and three on PostgreSQL (references, claim, settlement).
#[test]
fn a_push_waits_for_one_durable_write() {
    let registry = Registry::start();
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(&registry.url(), data.path(), &[]);
    let repo = "durable/count";
    let base = Image::random(4100, 128);
    base.push_blobs(registry.addr, repo, "");
    let images: Vec<Image> = (0..5).map(|i| base.variant(&format!("v{i}"))).collect();

    let before = durable_writes(&tagpin);
    for (i, img) in images.iter().enumerate() {
        let r = img.put_manifest(tagpin.addr, repo, &format!("v{i}"), "");
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let new_pins = durable_writes(&tagpin) - before;
    assert_eq!(new_pins, 5, "durable writes for 5 pushes of new tags");

    let before = durable_writes(&tagpin);
    for (i, img) in images.iter().enumerate() {
        let r = img.put_manifest(tagpin.addr, repo, &format!("v{i}"), "");
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let repushes = durable_writes(&tagpin) - before;
    assert_eq!(repushes, 5, "durable writes for 5 identical re-pushes");

    for (i, img) in images.iter().enumerate() {
        let tag = format!("v{i}");
        assert_eq!(upstream_digest(&registry, repo, &tag), Some(img.digest()), "{tag}");
        let other = base.variant(&format!("{tag}-other"));
        let r = other.put_manifest(tagpin.addr, repo, &tag, "");
        assert_eq!(r.status, 409, "{tag}: {}", r.text());
        assert_eq!(
            upstream_digest(&registry, repo, &tag),
            Some(img.digest()),
            "{tag} moved"
        );
    }
}

/// `pins show` of `reference`: its state and digest, once the admin API answers.
fn shown(secrets: &AdminSecrets, tagpin: &Tagpin, reference: &str) -> (String, String) {
    let out = secrets.cli(tagpin.admin_addr(), &["pins", "show", reference, "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let v = out.json();
    (
        v["state"].as_str().unwrap_or_default().to_owned(),
        v["digest"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Push a new tag (201), SIGKILL tagpin at once (sled's flusher has most likely not run:
/// the settlement is lost, the claim is not), start it again: the tag is held for the
/// pushed digest (another digest refused) and, once the claim passes the in-doubt
/// horizon, pinned to it from what the upstream holds, with its history and log entry.
/// Rounds repeat until one came back with the settlement lost (bounded), so the test
/// shows the completion, not only the flusher. Old code flushed the settlement before
/// the 201: no round ever comes back claimed.
#[test]
fn a_settlement_a_kill_took_back_is_completed_on_restart() {
    let registry = Registry::start();
    let data = tempfile::tempdir().unwrap();
    let secrets = AdminSecrets::new();
    let mut flags = secrets.flags();
    flags.extend(["--upstream-header-timeout-ms", "1000", "--in-doubt-horizon", "2s"].map(String::from));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let repo = "durable/kill";
    let base = Image::random(4200, 128);
    base.push_blobs(registry.addr, repo, "");
    let mut completed = 0;
    for round in 0..6 {
        let tag = format!("k{round}");
        let img = base.variant(&tag);
        let mut tagpin = Tagpin::start_on_data_dir(&registry.url(), data.path(), &flags);
        let r = img.put_manifest(tagpin.addr, repo, &tag, "");
        assert_eq!(r.status, 201, "round {round}: {}", r.text());
        tagpin.kill();

        let tagpin = Tagpin::start_on_data_dir(&registry.url(), data.path(), &flags);
        let reference = format!("{repo}:{tag}");
        let (state, digest) = shown(&secrets, &tagpin, &reference);
        assert_eq!(digest, img.digest(), "round {round}: held to another digest ({state})");
        let other = base.variant(&format!("{tag}-other"));
        let r = other.put_manifest(tagpin.addr, repo, &tag, "");
        assert_eq!(r.status, 409, "round {round}: {}", r.text());
        assert_eq!(
            upstream_digest(&registry, repo, &tag),
            Some(img.digest()),
            "round {round}"
        );
        if state == "pinned" {
            continue; // the flusher ran before the kill
        }
        assert_eq!(state, "claimed", "round {round}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (state, digest) = shown(&secrets, &tagpin, &reference);
            if state == "pinned" {
                assert_eq!(digest, img.digest(), "round {round}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: still {state} after the horizon\n{}",
                tagpin.logs().join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let out = secrets.cli(tagpin.admin_addr(), &["pins", "show", &reference, "--json"]);
        let history = &out.json()["history"];
        let entry = history.as_array().and_then(|h| h.last()).expect("a history entry");
        assert_eq!(entry["event"], "push", "{history}");
        assert!(entry["log"].is_u64(), "the completed pin has its log entry: {history}");
        completed += 1;
        if completed == 2 {
            return;
        }
    }
    panic!("{completed} of 6 rounds came back with the settlement lost; expected at least 2");
}
