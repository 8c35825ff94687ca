//! What pinned reads leave alone, against the real upstream: mutable tags, `reads =
//! "forward"` (set by flag, environment or config file), a tag whose first push is in
//! flight, and audit mode, which never blocks a read but warns when the upstream serves
//! another digest than the pin. Also the percent-encoded manifest path, and a bad
//! `reads` value. Tags are moved straight at the upstream, behind tagpin's back, and what
//! the upstream holds is asked of it directly.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::admin::AdminSecrets;
use common::hold::HoldRelay;
use common::reads::*;
use common::*;

/// Flags and environment variables of a tagpin run.
type Setting<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);

/// A tagpin in front of `upstream` with its admin API and `extra` flags.
fn tagpin_with_admin(upstream: &str, data: &tempfile::TempDir, extra: &[&str]) -> (Tagpin, AdminSecrets) {
    let secrets = AdminSecrets::new();
    let mut flags = secrets.flags();
    flags.extend(extra.iter().map(|s| s.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    (Tagpin::start(upstream, data.path(), &flags), secrets)
}

/// A tag pushed through tagpin as `a`, then moved to `b` straight at the upstream, and a
/// tag `repo:old` that predates tagpin (`a`): the upstream's current content is served
/// for both, and neither read pins anything.
fn assert_forwarded(registry: &Registry, tagpin: &Tagpin, secrets: &AdminSecrets, repo: &str, seed: u64) {
    let a = Image::random(seed, 500);
    let b = a.variant("moved");
    a.push_blobs(tagpin.addr, repo, "");
    assert_eq!(a.put_manifest(tagpin.addr, repo, "v1", "").status, 201, "{repo}");
    put_straight(registry, repo, "v1", &b);
    assert_serves(tagpin.addr, repo, "v1", &b.digest(), repo);
    put_straight(registry, repo, "old", &a);
    assert_serves(tagpin.addr, repo, "old", &a.digest(), repo);
    let admin = tagpin.admin_addr();
    assert_eq!(
        secrets.pin(admin, &format!("{repo}:old")),
        None,
        "{repo}: a read pinned"
    );
    assert_eq!(secrets.pin(admin, &format!("{repo}:v1")).unwrap()["digest"], a.digest());
    for answer in ["pinned", "adopted"] {
        assert_eq!(reads_total(tagpin, answer), 0, "{repo}: {answer}");
    }
}

/// The `reads` mode the `listening` line announces, so an operator sees which one runs.
/// The port answers before the line may have reached the log file: it is looked for until
/// it is there (at most 10 s).
fn announced_reads(tagpin: &Tagpin) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let found = tagpin
            .logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == "listening")
            .map(|v| v["reads"].as_str().unwrap_or("(none)").to_owned());
        if let Some(reads) = found {
            return reads;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no listening line in:\n{}",
            tagpin.logs().join("\n")
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn mutable_tags_are_read_from_the_upstream_and_never_pinned_by_a_read() {
    let registry = Registry::start();
    let data = tempfile::tempdir().unwrap();
    let (tagpin, secrets) = tagpin_with_admin(&registry.url(), &data, &["--exclude", "latest"]);
    assert_eq!(announced_reads(&tagpin), "pinned", "the default");
    let a = Image::random(4_001, 500);
    let b = a.variant("moved");
    a.push_blobs(tagpin.addr, "app", "");
    assert_eq!(a.put_manifest(tagpin.addr, "app", "latest", "").status, 201);
    put_straight(&registry, "app", "latest", &b);
    assert_serves(tagpin.addr, "app", "latest", &b.digest(), "a mutable tag, moved");
    a.push_blobs(registry.addr, "pre", "");
    put_straight(&registry, "pre", "latest", &a);
    assert_serves(
        tagpin.addr,
        "pre",
        "latest",
        &a.digest(),
        "a mutable tag that predates tagpin",
    );
    let admin = tagpin.admin_addr();
    for reference in ["app:latest", "pre:latest"] {
        assert_eq!(secrets.pin(admin, reference), None, "{reference} was pinned");
    }
    assert_eq!(reads_total(&tagpin, "pinned") + reads_total(&tagpin, "adopted"), 0);
}

#[test]
fn reads_forward_set_by_flag_environment_or_config_serves_the_upstreams_current_content() {
    let registry = Registry::start();
    let config = tempfile::tempdir().unwrap();
    let file = config.path().join("tagpin.toml");
    std::fs::write(&file, "reads = \"forward\"\n").unwrap();
    let file = file.to_str().unwrap();
    let ways: [(&str, Setting); 3] = [
        ("flag", (&["--reads", "forward"], &[])),
        ("env", (&[], &[("TAGPIN_READS", "forward")])),
        ("config", (&["--config", file], &[])),
    ];
    for (seed, (way, (flags, env))) in (4_010..).zip(ways) {
        let secrets = AdminSecrets::new();
        let mut all = secrets.flags();
        all.extend(flags.iter().map(|s| s.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let data = tempfile::tempdir().unwrap();
        let tagpin = Tagpin::start_env(&registry.url(), data.path(), &all, env);
        assert_eq!(announced_reads(&tagpin), "forward", "by {way}");
        assert_forwarded(&registry, &tagpin, &secrets, &format!("by-{way}"), seed);
    }
}

#[test]
fn a_tag_whose_first_push_is_in_flight_is_read_from_the_upstream_and_not_pinned_by_a_read() {
    let registry = Registry::start();
    let relay = HoldRelay::start(registry.addr);
    let data = tempfile::tempdir().unwrap();
    let (tagpin, secrets) = tagpin_with_admin(&relay.url(), &data, &[]);
    let admin = tagpin.admin_addr();
    let a = Image::random(4_020, 500);
    let b = a.variant("written while the push is held");
    a.push_blobs(tagpin.addr, "app", "");
    relay.hold("PUT", "/v2/app/manifests/v1", 1);
    let push = {
        let (addr, a) = (tagpin.addr, a.clone());
        std::thread::spawn(move || a.put_manifest(addr, "app", "v1", ""))
    };
    relay.wait_held(1);
    put_straight(&registry, "app", "v1", &b);
    assert_serves(
        tagpin.addr,
        "app",
        "v1",
        &b.digest(),
        "read while the push is in flight",
    );
    let claimed = secrets.pin(admin, "app:v1").expect("the push's claim is shown");
    assert_eq!(claimed["state"], "claimed", "{claimed}");
    assert_eq!(claimed["claimed_digest"], a.digest(), "{claimed}");
    assert_eq!(reads_total(&tagpin, "adopted"), 0);

    relay.release(0);
    assert_eq!(relay.wait_answered(0), 201);
    let r = push.join().unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(upstream_digest(&registry, "app", "v1"), Some(a.digest()));
    let pin = secrets.pin(admin, "app:v1").unwrap();
    assert_eq!(
        (pin["state"].as_str(), pin["source"].as_str()),
        (Some("pinned"), Some("push"))
    );
    assert_eq!(pin["digest"], a.digest());
    // Pinned now: a move behind tagpin's back is no longer served.
    put_straight(&registry, "app", "v1", &b);
    assert_serves(tagpin.addr, "app", "v1", &a.digest(), "read once the push landed");
    assert!(
        events(&tagpin, "pin_adopted_on_read", "app", "v1").is_empty(),
        "a read adopted a tag whose push was in flight"
    );
}

#[test]
fn reads_by_digest_tag_lists_referrers_and_blobs_of_a_pinned_moved_tag_are_the_upstreams() {
    let registry = Registry::start();
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(&registry.url(), data.path(), &[]);
    let a = Image::random(4_050, 500);
    let b = a.variant("moved");
    a.push_blobs(tagpin.addr, "app", "");
    assert_eq!(a.put_manifest(tagpin.addr, "app", "v1", "").status, 201);
    put_straight(&registry, "app", "v1", &b);
    let get = |addr, target: &str| request(addr, "GET", target, &[("Accept", image::ACCEPT_ALL)], b"");
    for target in [
        format!("/v2/app/manifests/{}", b.digest()),
        format!("/v2/app/manifests/{}", a.digest()),
        "/v2/app/tags/list".to_owned(),
        format!("/v2/app/referrers/{}", a.digest()),
        format!("/v2/app/blobs/{}", image::sha256(&a.layer)),
    ] {
        let (through, direct) = (get(tagpin.addr, &target), get(registry.addr, &target));
        assert_eq!(through.status, direct.status, "{target}: {}", through.text());
        assert!(through.body == direct.body, "{target}: the bodies differ");
        assert_eq!(
            through.header("docker-content-digest"),
            direct.header("docker-content-digest"),
            "{target}"
        );
    }
    assert_eq!(reads_total(&tagpin, "pinned"), 0, "none of them was a read by tag");
    assert_serves(tagpin.addr, "app", "v1", &a.digest(), "by tag");
}

/// The `Warning` of a read of `repo:tag`, which must serve `digest`.
fn warning(tagpin: &Tagpin, method: &str, repo: &str, tag: &str, digest: &str) -> Option<String> {
    let r = read(tagpin.addr, method, repo, tag, "");
    assert_eq!(served(&r, method), digest, "audit mode serves what the upstream holds");
    r.header("warning").map(str::to_owned)
}

#[test]
fn audited_tags_are_read_by_tag_and_warned_once_per_move_away_from_the_pin() {
    let registry = Registry::start();
    let config = tempfile::tempdir().unwrap();
    let file = config.path().join("tagpin.toml");
    std::fs::write(&file, "[[rules]]\nrepositories = [\"legacy/**\"]\nmode = \"audit\"\n").unwrap();
    let data = tempfile::tempdir().unwrap();
    let (tagpin, secrets) = tagpin_with_admin(&registry.url(), &data, &["--config", file.to_str().unwrap()]);
    let (repo, tag) = ("legacy/app", "v1");
    let a = Image::random(4_030, 500);
    let (b, c) = (a.variant("b"), a.variant("c"));
    for r in [repo, "legacy/marker"] {
        a.push_blobs(tagpin.addr, r, "");
    }
    assert_eq!(a.put_manifest(tagpin.addr, repo, tag, "").status, 201);
    for method in ["GET", "HEAD"] {
        assert_eq!(
            warning(&tagpin, method, repo, tag, &a.digest()),
            None,
            "{method}: not moved"
        );
    }
    // (served, read_drift events so far): back at the pin warns nothing; each move away
    // from it is reported once, however often it is read.
    let moves = [(&b, 1), (&c, 2), (&a, 2), (&c, 3)];
    for (step, (to, reported)) in moves.into_iter().enumerate() {
        put_straight(&registry, repo, tag, to);
        for _ in 0..3 {
            for method in ["GET", "HEAD"] {
                let w = warning(&tagpin, method, repo, tag, &to.digest());
                if to.digest() == a.digest() {
                    assert_eq!(w, None, "step {step} {method}: at the pin");
                    continue;
                }
                let w = w.unwrap_or_else(|| panic!("step {step} {method}: no Warning"));
                assert!(w.starts_with("299 "), "{w}");
                assert!(w.contains(&a.digest()) && w.contains(&to.digest()), "{w}");
            }
        }
        // A marker event after the reads: every drift event they caused has arrived.
        let marker = format!("m{step}");
        assert_eq!(a.put_manifest(tagpin.addr, "legacy/marker", &marker, "").status, 201);
        let drift = events_before(&tagpin, "read_drift", repo, tag, |e| {
            e["repository"] == "legacy/marker" && e["tag"] == marker.as_str()
        });
        assert_eq!(drift.len(), reported, "step {step}: {drift:#?}");
        let last = drift.last().unwrap();
        assert_eq!(last["pinned_digest"], a.digest());
        assert_eq!(last["mode"], "audit");
        assert_eq!(reads_total(&tagpin, "drift"), reported as u64, "step {step}");
    }
    assert_eq!(
        secrets.pin(tagpin.admin_addr(), "legacy/app:v1").unwrap()["digest"],
        a.digest()
    );

    // A client that takes schema 2 but not lists is answered with a list's platform
    // manifest: that is no drift, and the pin its first pull makes is the list.
    let img = Image::random(4_031, 300);
    img.push_blobs(registry.addr, repo, "");
    let list = DockerList::new(&img);
    list.push(registry.addr, repo, "list", "");
    let narrow = || {
        let r = request(
            tagpin.addr,
            "GET",
            &format!("/v2/{repo}/manifests/list"),
            &[("Accept", DOCKER_MANIFEST)],
            b"",
        );
        assert_eq!(
            served(&r, "narrow"),
            image::sha256(&list.image),
            "audit mode reads by tag"
        );
        r.header("warning").map(str::to_owned)
    };
    assert_eq!(narrow(), None, "the first pull");
    let pin = secrets.pin(tagpin.admin_addr(), "legacy/app:list").unwrap();
    assert_eq!(pin["digest"], image::sha256(&list.list), "{pin}");
    assert_eq!(narrow(), None, "a platform manifest of the pinned list");

    // An audited tag that predates tagpin is pinned by its first pull, then warned.
    put_straight(&registry, repo, "old", &c);
    assert_eq!(warning(&tagpin, "HEAD", repo, "old", &c.digest()), None);
    assert_eq!(
        secrets.pin(tagpin.admin_addr(), "legacy/app:old").unwrap()["digest"],
        c.digest()
    );
    put_straight(&registry, repo, "old", &b);
    let w = warning(&tagpin, "GET", repo, "old", &b.digest()).expect("a Warning once moved");
    assert!(w.contains(&c.digest()) && w.contains(&b.digest()), "{w}");
}

#[test]
fn a_percent_encoded_manifest_read_is_refused_with_pinned_reads_and_forwarded_otherwise() {
    let registry = Registry::start();
    let (pinned_data, forward_data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pinned = Tagpin::start(&registry.url(), pinned_data.path(), &[]);
    let forward = Tagpin::start(&registry.url(), forward_data.path(), &["--reads", "forward"]);
    let a = Image::random(4_040, 500);
    let b = a.variant("moved");
    a.push_blobs(pinned.addr, "a/b", "");
    assert_eq!(a.put_manifest(pinned.addr, "a/b", "v1", "").status, 201);
    put_straight(&registry, "a/b", "v1", &b);
    let ask = |addr, method, target: &str| request(addr, method, target, &[("Accept", image::ACCEPT_ALL)], b"");
    for target in [
        "/v2/a%2Fb/manifests/v1",
        "/v2/a/b/manifests/v%31",
        "/v2/%61/b/manifests/v1",
    ] {
        // The upstream decodes the path: it names a/b:v1, which it holds at b.
        let direct = ask(registry.addr, "GET", target);
        assert_eq!(served(&direct, target), b.digest(), "{target} at the upstream");
        for method in ["GET", "HEAD"] {
            let r = ask(pinned.addr, method, target);
            assert_eq!(r.status, 400, "{method} {target}: {}", r.text());
            assert_eq!(r.header("docker-content-digest"), None, "{method} {target}");
            if method == "GET" {
                assert_eq!(r.oci_code(), "NAME_INVALID", "{target}: {}", r.text());
                assert!(r.text().contains("percent-encoded"), "{}", r.text());
            }
            let r = ask(forward.addr, method, target);
            assert_eq!(served(&r, target), b.digest(), "{method} {target} with reads = forward");
        }
    }
    assert_serves(pinned.addr, "a/b", "v1", &a.digest(), "unencoded, with pinned reads");
}

/// Run `tagpin serve` with `args` and `env`; its exit code and stderr. One still running
/// after 30 s (it took the value and started) is stopped and reported as `None`.
fn serve_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let bin = std::env::var_os("TAGPIN_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_tagpin").into());
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:1",
            "--data-dir",
        ])
        .arg(data.path())
        .args(args)
        .envs(env.iter().copied())
        .env_remove("TAGPIN_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tagpin");
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (code, stderr)
}

#[test]
fn a_bad_reads_value_is_a_usage_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tagpin.toml");
    std::fs::write(&file, "reads = \"pinnned\"\n").unwrap();
    let file = file.to_str().unwrap();
    let cases: [(Setting, &str); 3] = [
        ((&["--reads", "pinnned"], &[]), "--reads"),
        ((&[], &[("TAGPIN_READS", "pinnned")]), "TAGPIN_READS"),
        ((&["--config", file], &[]), "reads"),
    ];
    for ((args, env), names) in cases {
        let (code, stderr) = serve_exit(args, env);
        assert_eq!(code, Some(64), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains(names) && stderr.contains("pinnned"),
            "{args:?} {env:?}: the message names neither the setting nor the value: {stderr}"
        );
    }
}
