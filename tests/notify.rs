//! Webhooks end to end: a receiver on loopback gets each event from a real flow, signed;
//! deliveries survive a receiver that is down, failing, refusing or hanging, and a
//! SIGKILL; three replicas on one database deliver each event once; no secret shows in
//! the logs.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::admin::AdminSecrets;
use common::receiver::{Mode, Receiver};
use common::{request, skopeo_copy, upstream_digest, Image, Registry, RegistryOptions, Tagpin};
use serde_json::Value;

const SECRET: &str = "hmac-secret-5d1e8a";

/// A config file with one `[[notify]]` entry for `url` (and `more` lines before it).
fn config(dir: &Path, url: &str, more: &str) -> String {
    std::fs::write(dir.join("secret"), format!("{SECRET}\n")).unwrap();
    let path = dir.join("tagpin.toml");
    std::fs::write(
        &path,
        format!(
            "{more}\n[[notify]]\nname = \"security\"\nurl = \"{url}\"\nsecret_file = \"{}\"\ntimeout = \"2s\"\n",
            dir.join("secret").display()
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// Push image `seed` to `repo:tag` through tagpin with raw HTTP; the manifest's status.
fn push(tagpin: &Tagpin, repo: &str, tag: &str, seed: u64) -> (u16, String) {
    let img = Image::random(seed, 64);
    img.push_blobs(tagpin.addr, repo, "");
    (img.put_manifest(tagpin.addr, repo, tag, "").status, img.digest())
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"] == format!("io.tagpin.{kind}"))
        .collect()
}

fn sighup(tagpin: &Tagpin) {
    let ok = Command::new("kill")
        .args(["-HUP", &tagpin.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn each_event_of_a_real_flow_arrives_signed_with_its_fields() {
    let registry = Registry::start_with(RegistryOptions {
        basic_auth: Some(("alice".into(), "wonder-pass-77".into())),
        ..Default::default()
    });
    let receiver = Receiver::start(Mode::Ok);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("creds"), "alice:wonder-pass-77\n").unwrap();
    let more = format!(
        "drift_interval = \"1s\"\nupstream_credentials_file = \"{}\"",
        dir.path().join("creds").display()
    );
    let cfg = config(dir.path(), &receiver.url("/hook"), &more);
    let admin = AdminSecrets::new();
    let mut args = vec!["--config", cfg.as_str()];
    let flags = admin.flags();
    args.extend(flags.iter().map(String::as_str));
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(&registry.url(), data.path(), &args);
    let creds = ["--dest-creds", "alice:wonder-pass-77"];

    // A refused push through skopeo.
    let (a, b) = (Image::random(1, 100), Image::random(2, 100));
    for (img, expect_ok) in [(&a, true), (&b, false)] {
        let layout = tempfile::tempdir().unwrap();
        img.write_layout(layout.path(), "t");
        let out = skopeo_copy(
            &format!("oci:{}:t", layout.path().display()),
            &format!("docker://{}/team/api:1.0", tagpin.host()),
            &creds,
        );
        assert_eq!(
            out.status.success(),
            expect_ok,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let got = receiver.wait_for(60, "push_refused", |d| {
        d.iter().any(|d| d.json()["type"] == "io.tagpin.push_refused")
    });
    let refused = got
        .iter()
        .find(|d| d.json()["type"] == "io.tagpin.push_refused")
        .unwrap();
    assert!(refused.signed_with(SECRET), "bad signature: {:?}", refused.headers);
    assert_eq!(refused.header("content-type"), Some("application/cloudevents+json"));
    let e = refused.json();
    assert_eq!(e["specversion"], "1.0");
    assert_eq!(e["source"], format!("http://{}", tagpin.addr));
    assert_eq!(e["subject"], "team/api:1.0");
    assert_eq!(e["data"]["pinned_digest"], a.digest());
    assert_eq!(e["data"]["attempted_digest"], b.digest());
    assert_eq!(e["data"]["user"], "alice");
    assert!(e["data"]["client"].as_str().unwrap().starts_with("127.0.0.1:"), "{e}");
    assert_eq!(e["data"]["mode"], "immutable");
    assert!(
        e["id"].as_str().is_some_and(|id| id.len() == 36) && e["time"].is_string(),
        "{e}"
    );
    assert_eq!(upstream_digest(&registry, "team/api", "1.0"), Some(a.digest()));

    // Drift: a push straight to the upstream; the periodic check reports it.
    let c = Image::random(3, 100);
    c.push_blobs(registry.addr, "team/api", &registry.auth_header());
    assert_eq!(
        c.put_manifest(registry.addr, "team/api", "1.0", &registry.auth_header())
            .status,
        201
    );
    let got = receiver.wait_for(60, "drift_detected", |d| {
        d.iter().any(|d| d.json()["type"] == "io.tagpin.drift_detected")
    });
    let drift = got
        .iter()
        .find(|d| d.json()["type"] == "io.tagpin.drift_detected")
        .unwrap();
    assert!(drift.signed_with(SECRET));
    assert_eq!(drift.json()["data"]["repository"], "team/api");

    // A release created, then used by a push; another that expires unused.
    let out = admin.cli(
        tagpin.admin_addr(),
        &["release", "team/api:1.0", "--reason", "rollback", "--ttl", "10m"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let layout = tempfile::tempdir().unwrap();
    b.write_layout(layout.path(), "t");
    let out = skopeo_copy(
        &format!("oci:{}:t", layout.path().display()),
        &format!("docker://{}/team/api:1.0", tagpin.host()),
        &creds,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let layout = tempfile::tempdir().unwrap();
    a.write_layout(layout.path(), "t");
    let out = skopeo_copy(
        &format!("oci:{}:t", layout.path().display()),
        &format!("docker://{}/team/api:2.0", tagpin.host()),
        &creds,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = admin.cli(
        tagpin.admin_addr(),
        &["release", "team/api:2.0", "--reason", "short", "--ttl", "2s"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let got = receiver.wait_for(60, "release events", |d| {
        let e: Vec<Value> = d.iter().map(|d| d.json()).collect();
        of_type(&e, "release_created").len() == 2
            && !of_type(&e, "release_used").is_empty()
            && !of_type(&e, "release_expired").is_empty()
    });
    let events: Vec<Value> = got.iter().map(|d| d.json()).collect();
    let used = of_type(&events, "release_used")[0];
    assert_eq!(used["data"]["attempted_digest"], b.digest());
    let created = of_type(&events, "release_created")[0];
    assert_eq!(created["data"]["admin"], "alice");
    assert_eq!(created["data"]["reason"], "rollback");
    let expired = of_type(&events, "release_expired");
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0]["subject"], "team/api:2.0");
    // A write that notices the expiry later announces nothing more, also after the outbox
    // let go of the event: the push after it is delivered, the expiry not again.
    wait_until(60, "the outbox emptied", || {
        metric(&tagpin, "tagpin_notify_outbox_events") == 0.0
    });
    let layout = tempfile::tempdir().unwrap();
    b.write_layout(layout.path(), "t");
    let out = skopeo_copy(
        &format!("oci:{}:t", layout.path().display()),
        &format!("docker://{}/team/api:2.0", tagpin.host()),
        &creds,
    );
    assert!(!out.status.success());
    receiver.wait_for(60, "the refusal after the expiry", |d| {
        d.iter()
            .any(|d| d.json()["type"] == "io.tagpin.push_refused" && d.json()["subject"] == "team/api:2.0")
    });
    assert_eq!(of_type(&receiver.events(), "release_expired").len(), 1);

    // A release withdrawn before use.
    let out = admin.cli(
        tagpin.admin_addr(),
        &["release", "team/api:2.0", "--reason", "oops", "--ttl", "10m"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = admin.cli(tagpin.admin_addr(), &["release", "--cancel", "team/api:2.0"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let got = receiver.wait_for(60, "release_cancelled", |d| {
        d.iter().any(|d| d.json()["type"] == "io.tagpin.release_cancelled")
    });
    let cancelled = got
        .iter()
        .find(|d| d.json()["type"] == "io.tagpin.release_cancelled")
        .unwrap();
    assert!(cancelled.signed_with(SECRET));
    assert_eq!(cancelled.json()["subject"], "team/api:2.0");
    assert_eq!(cancelled.json()["data"]["admin"], "alice");

    // A reload that fails.
    std::fs::write(&cfg, "[[notify]]\nurl = \"ftp://nowhere\"\n").unwrap();
    sighup(&tagpin);
    let got = receiver.wait_for(60, "policy_reload_failed", |d| {
        d.iter().any(|d| d.json()["type"] == "io.tagpin.policy_reload_failed")
    });
    assert!(got.iter().all(|d| d.signed_with(SECRET)));
    // Every event has its own id.
    let ids: HashSet<String> = receiver
        .events()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), receiver.delivered().len());
}

/// A tagpin with one webhook target at `receiver`, on its own registry.
struct Env {
    registry: Registry,
    tagpin: Tagpin,
    dir: tempfile::TempDir,
    data: tempfile::TempDir,
    receiver: Receiver,
}

impl Env {
    fn start(mode: Mode, more: &str) -> Self {
        let registry = Registry::start();
        let receiver = Receiver::start(mode);
        let dir = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &receiver.url("/hook"), more);
        let tagpin = Tagpin::start(&registry.url(), data.path(), &["--config", &cfg]);
        Self {
            registry,
            tagpin,
            dir,
            data,
            receiver,
        }
    }

    /// Pin `tag` to one image, then push another: a refused push; returns both digests.
    fn refuse(&self, repo: &str, tag: &str, seed: u64) -> (String, String) {
        let (status, first) = push(&self.tagpin, repo, tag, seed);
        assert_eq!(status, 201);
        let (status, second) = push(&self.tagpin, repo, tag, seed + 1_000);
        assert_eq!(status, 409);
        (first, second)
    }

    fn metric(&self, name: &str) -> f64 {
        metric(&self.tagpin, name)
    }
}

/// The sum of a metric's series at `/metrics`.
fn metric(tagpin: &Tagpin, name: &str) -> f64 {
    let text = request(tagpin.addr, "GET", "/metrics", &[], b"").text();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {secs}s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Subjects in delivery order, per subject the attempted digests in order.
fn attempted_by_subject(events: &[Value]) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for e in of_type(events, "push_refused") {
        out.entry(e["subject"].as_str().unwrap().to_owned())
            .or_default()
            .push(e["data"]["attempted_digest"].as_str().unwrap().to_owned());
    }
    out
}

#[test]
fn a_receiver_down_for_a_while_gets_every_event_in_order_per_tag() {
    let env = Env::start(Mode::Down, "notify_retry_max_interval = \"1s\"");
    let mut expect: HashMap<String, Vec<String>> = HashMap::new();
    for (i, tag) in ["a", "b", "c"].iter().enumerate() {
        let (status, _) = push(&env.tagpin, "order", tag, 10 + i as u64);
        assert_eq!(status, 201);
    }
    // Three refused pushes per tag, interleaved across tags.
    for round in 0..3u64 {
        for (i, tag) in ["a", "b", "c"].iter().enumerate() {
            let (status, digest) = push(&env.tagpin, "order", tag, 100 + round * 10 + i as u64);
            assert_eq!(status, 409);
            expect.entry(format!("order:{tag}")).or_default().push(digest);
        }
    }
    wait_until(60, "failed attempts while down", || env.receiver.attempts() >= 2);
    assert!(env.receiver.delivered().is_empty());
    env.receiver.set_mode(Mode::Ok);
    env.receiver.wait_for(90, "all nine refusals", |d| d.len() >= 9);
    let events = env.receiver.events();
    assert_eq!(events.len(), 9, "{events:?}");
    assert_eq!(attempted_by_subject(&events), expect);
    assert!(env.metric("tagpin_notify_deliveries_total") >= 11.0);
}

#[test]
fn a_500_is_retried_and_a_400_is_not() {
    let env = Env::start(Mode::Ok, "notify_retry_max_interval = \"1s\"");
    env.receiver.fail_next(500, 2);
    let (_, attempted) = env.refuse("retry", "v1", 1);
    let got = env.receiver.wait_for(60, "after two 500s", |d| !d.is_empty());
    assert_eq!(got[0].json()["data"]["attempted_digest"], attempted);
    assert_eq!(env.receiver.attempts(), 3);

    // Refused for good: one attempt, dropped and counted; the next event is delivered.
    env.receiver.fail_next(400, 1);
    let before = env.receiver.attempts();
    env.refuse("retry", "v2", 2);
    let (_, last) = env.refuse("retry", "v3", 3);
    env.receiver.wait_for(60, "the event after the 400", |d| {
        d.iter().any(|d| d.json()["data"]["attempted_digest"] == last)
    });
    assert_eq!(env.receiver.attempts(), before + 2, "the refused event was tried again");
    assert_eq!(env.receiver.delivered().len(), 2);
    let text = request(env.tagpin.addr, "GET", "/metrics", &[], b"").text();
    assert!(
        text.contains("tagpin_notify_dropped_total{reason=\"rejected\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tagpin_notify_deliveries_total{target=\"security\",outcome=\"retry\"} 2"),
        "{text}"
    );
}

#[test]
fn a_hanging_receiver_does_not_hold_back_pushes() {
    // The same pushes with no target and with a target that never answers: every push
    // completes in both (counted, not timed: a push that waited on the receiver would
    // not be answered before the client's own deadline).
    let quiet = Env::start(Mode::Ok, "");
    let hanging = Env::start(Mode::Hang, "");
    std::fs::write(quiet.dir.path().join("tagpin.toml"), "").unwrap();
    for env in [&quiet, &hanging] {
        let mut completed = 0;
        for i in 0..10u64 {
            let (status, _) = push(&env.tagpin, "hang", &format!("t{i}"), 500 + i);
            let (again, _) = push(&env.tagpin, "hang", &format!("t{i}"), 600 + i);
            completed += usize::from(status == 201 && again == 409);
        }
        assert_eq!(completed, 10);
    }
    wait_until(60, "attempts at the hanging receiver", || {
        hanging.receiver.attempts() >= 1
    });
    assert!(hanging.receiver.delivered().is_empty());
    let ready = request(hanging.tagpin.addr, "GET", "/readyz", &[], b"");
    assert_eq!(ready.status, 200);
}

#[test]
fn events_queued_at_a_sigkill_are_delivered_after_the_restart() {
    let mut env = Env::start(Mode::Down, "notify_retry_max_interval = \"1s\"");
    let mut attempted = HashSet::new();
    for i in 0..4u64 {
        attempted.insert(env.refuse("kill", &format!("v{i}"), 40 + i).1);
    }
    wait_until(60, "events in the outbox", || {
        env.metric("tagpin_notify_outbox_events") >= 4.0
    });
    env.tagpin.kill();
    env.receiver.set_mode(Mode::Ok);
    let cfg = env.dir.path().join("tagpin.toml").display().to_string();
    env.tagpin = Tagpin::start(&env.registry.url(), env.data.path(), &["--config", &cfg]);
    env.receiver
        .wait_for(90, "the four events queued before the kill", |d| {
            let got: HashSet<String> = d
                .iter()
                .map(|d| d.json()["data"]["attempted_digest"].as_str().unwrap().to_owned())
                .collect();
            attempted.is_subset(&got)
        });
    // At least once: a copy carries the id of the first.
    let events = env.receiver.events();
    let ids: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 4, "{events:?}");
}

#[test]
fn no_secret_shows_in_trace_logs_or_metrics() {
    let registry = Registry::start();
    let receiver = Receiver::start(Mode::Ok);
    let dir = tempfile::tempdir().unwrap();
    let token_path = "/services/T0AAA/B0BBB/XoxSlackToken4a7c";
    let url = format!("http://hookuser:hookpass-91@{}{token_path}", receiver.addr);
    let cfg = config(dir.path(), &url, "");
    // The entry is named by its host only: drop the name line.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("name = \"security\"\n", "format = \"slack\"\n");
    std::fs::write(&cfg, text).unwrap();
    let admin = AdminSecrets::new();
    let mut args = vec!["--config", cfg.as_str()];
    let flags = admin.flags();
    args.extend(flags.iter().map(String::as_str));
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start_env(&registry.url(), data.path(), &args, &[("RUST_LOG", "trace")]);
    let (status, _) = push(&tagpin, "s", "v1", 1);
    assert_eq!(status, 201);
    let (status, _) = push(&tagpin, "s", "v1", 2);
    assert_eq!(status, 409);
    let got = receiver.wait_for(60, "the slack line", |d| !d.is_empty());
    let line = got[0].json()["text"].as_str().unwrap().to_owned();
    assert!(line.contains("push_refused s:v1 pinned sha256:"), "{line}");
    assert_eq!(
        got[0].header("authorization").map(|a| a.starts_with("Basic ")),
        Some(true)
    );
    assert!(got[0].signed_with(SECRET));
    let out = admin.cli(tagpin.admin_addr(), &["notify", "test"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&format!("{}: delivered (200)", receiver.addr)),
        "{}",
        out.stdout
    );
    receiver.set_mode(Mode::Status(503));
    let out = admin.cli(
        tagpin.admin_addr(),
        &["notify", "test", "--target", &receiver.addr.to_string()],
    );
    assert_eq!(out.code, 1, "{} {}", out.stdout, out.stderr);
    let out = admin.cli(tagpin.admin_addr(), &["notify", "test", "--target", "nobody"]);
    assert_eq!(out.code, 2, "{} {}", out.stdout, out.stderr);
    let metrics = request(tagpin.addr, "GET", "/metrics", &[], b"").text();
    let logs = tagpin.logs().join("\n");
    assert!(logs.lines().count() > 20, "trace logging is on");
    for secret in [
        SECRET,
        "XoxSlackToken4a7c",
        "hookpass-91",
        "B0BBB",
        "aG9va3VzZXI6aG9va3Bhc3MtOTE",
    ] {
        assert!(!logs.contains(secret), "{secret} in the logs");
        assert!(!metrics.contains(secret), "{secret} in the metrics");
        assert!(!out.stderr.contains(secret) && !out.stdout.contains(secret));
    }
}

#[test]
fn three_replicas_on_postgres_deliver_each_event_once() {
    let registry = Registry::start();
    let receiver = Receiver::start(Mode::Ok);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &receiver.url("/hook"), "");
    let url = common::postgres::shared().url(&common::postgres::fresh_database("notify"));
    let replicas: Vec<Tagpin> = (0..3)
        .map(|_| Tagpin::start_on_database(&registry.url(), &url, &["--config", &cfg]))
        .collect();
    let mut attempted = HashSet::new();
    for i in 0..9u64 {
        let replica = &replicas[i as usize % 3];
        let tag = format!("v{i}");
        let (status, _) = push(replica, "replicated", &tag, 70 + i);
        assert_eq!(status, 201);
        let (status, digest) = push(&replicas[(i as usize + 1) % 3], "replicated", &tag, 170 + i);
        assert_eq!(status, 409);
        attempted.insert(digest);
    }
    receiver.wait_for(90, "nine refusals", |d| d.len() >= 9);
    // Every replica polls the outbox; give each time to send a copy it should not.
    let polls = |t: &Tagpin| metric(t, "tagpin_notify_outbox_events");
    for _ in 0..3 {
        for r in &replicas {
            let _ = polls(r);
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    let events = receiver.events();
    let got: HashSet<String> = events
        .iter()
        .map(|e| e["data"]["attempted_digest"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, attempted);
    assert_eq!(events.len(), 9, "an event was delivered twice: {events:?}");
    let delivered: f64 = replicas
        .iter()
        .map(|t| metric(t, "tagpin_notify_deliveries_total"))
        .sum();
    assert_eq!(delivered, 9.0);
}
