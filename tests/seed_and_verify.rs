//! Seeding pins from what the upstream holds, verifying pins against it, and the
//! periodic drift check, all with tagpin's own upstream credentials (none, Basic, or the
//! registry token flow), against the real registry. Decided by asking the upstream, the
//! admin API and tagpin's metrics and audit log.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::image::push_blob;
use common::paging::{self, Links};
use common::token::TokenServer;
use common::{basic, request, upstream_digest, Image, Registry, RegistryOptions, Tagpin};
use serde_json::Value;

const ADMIN_TOKEN: &str = "seed-verify-admin-token-0123456789";

/// A tagpin with the admin API on, and the files it reads.
struct Setup {
    tagpin: Tagpin,
    admin: SocketAddr,
    _data: tempfile::TempDir,
    _files: tempfile::TempDir,
}

impl Setup {
    /// `credentials`: tagpin's own `user:password`, written to `--upstream-credentials-file`.
    fn start(upstream: &str, credentials: Option<&str>, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let (data, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let tokens = files.path().join("admin-tokens");
        std::fs::write(&tokens, format!("ops:{ADMIN_TOKEN}\n")).unwrap();
        let mut args: Vec<String> = vec![
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
            "--admin-token-file".into(),
            tokens.display().to_string(),
        ];
        if let Some(c) = credentials {
            let path = files.path().join("upstream-credentials");
            std::fs::write(&path, format!("{c}\n")).unwrap();
            args.extend(["--upstream-credentials-file".into(), path.display().to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let tagpin = Tagpin::start_env(upstream, data.path(), &args, env);
        let admin = tagpin.admin_addr();
        Self {
            tagpin,
            admin,
            _data: data,
            _files: files,
        }
    }

    fn admin_request(&self, method: &str, target: &str) -> common::Resp {
        let bearer = format!("Bearer {ADMIN_TOKEN}");
        request(self.admin, method, target, &[("Authorization", &bearer)], b"")
    }

    /// A seed's JSON lines; the last is `done`.
    fn seed(&self, query: &str) -> Vec<Value> {
        let r = self.admin_request("POST", &format!("/admin/v1/seed{query}"));
        assert_eq!(r.status, 200, "{}", r.text());
        let lines: Vec<Value> = r
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert!(
            lines.last().is_some_and(|l| l.get("done").is_some()),
            "the seed did not finish: {lines:?}"
        );
        lines
    }

    fn verify(&self, query: &str) -> Value {
        let r = self.admin_request("GET", &format!("/admin/v1/verify{query}"));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    fn metrics(&self) -> String {
        request(self.tagpin.addr, "GET", "/metrics", &[], b"").text()
    }

    /// Lines logged by completed drift checks so far.
    fn drift_checks(&self) -> usize {
        self.tagpin
            .logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == "drift check done")
            .count()
    }

    /// Wait until `n` more drift checks than `seen` have completed.
    fn wait_drift_checks(&self, seen: usize, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.drift_checks() < seen + n {
            assert!(
                Instant::now() < deadline,
                "drift checks stopped:\n{}",
                self.tagpin.logs().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn drift_events(&self, tag: &str) -> Vec<Value> {
        self.tagpin
            .audit_events()
            .into_iter()
            .filter(|e| e["action"] == "drift_detected" && e["tag"] == tag)
            .collect()
    }
}

fn done(lines: &[Value]) -> &Value {
    &lines.last().unwrap()["done"]
}

/// Push `img` as `repo:tag` straight to the upstream.
fn put(addr: SocketAddr, repo: &str, tag: &str, img: &Image, auth: &str) {
    img.push_blobs(addr, repo, auth);
    let r = img.put_manifest(addr, repo, tag, auth);
    assert_eq!(r.status, 201, "{repo}:{tag}: {}", r.text());
}

/// Give `repo` the blobs of `img` by mounting them from `from` (one request each).
fn mount(addr: SocketAddr, repo: &str, from: &str, img: &Image) {
    for blob in [&img.config, &img.layer] {
        let r = request(
            addr,
            "POST",
            &format!(
                "/v2/{repo}/blobs/uploads/?mount={}&from={from}",
                common::image::sha256(blob)
            ),
            &[],
            b"",
        );
        assert_eq!(r.status, 201, "mount into {repo}: {}", r.text());
    }
}

fn delete_manifest(registry: &Registry, repo: &str, digest: &str, auth: &str) {
    let r = request(
        registry.addr,
        "DELETE",
        &format!("/v2/{repo}/manifests/{digest}"),
        &[("Authorization", auth)],
        b"",
    );
    assert_eq!(r.status, 202, "{}", r.text());
}

#[test]
fn seed_walks_catalog_and_tag_pages_skips_blob_only_repositories_and_pins_what_it_found() {
    let registry = Registry::start();
    let base = Image::random(1, 256);
    // One repository with more tags than a page (the relay pages one tag at a time).
    let versions: Vec<Image> = (1..=5).map(|i| base.variant(&format!("app-v{i}"))).collect();
    for (i, img) in versions.iter().enumerate() {
        put(registry.addr, "app", &format!("v{}", i + 1), img, "");
    }
    put(registry.addr, "app", "latest", &base, "");
    // More repositories than one catalog page (tagpin asks for 100 at a time).
    for i in 0..104 {
        let repo = format!("many/r{i:03}");
        mount(registry.addr, &repo, "app", &base);
        let r = base.put_manifest(registry.addr, &repo, "1.0", "");
        assert_eq!(r.status, 201, "{}", r.text());
    }
    // A repository that holds only a blob: in the catalog, 404 for its tags.
    push_blob(registry.addr, "blobsonly", b"just a blob", "");
    let relay = paging::start(registry.addr, Links::Own);
    let s = Setup::start(&relay.url(), None, &["--exclude", "latest"], &[]);

    let lines = s.seed("");
    let d = done(&lines);
    assert_eq!(d["repositories"], 105, "{d}");
    assert_eq!(d["skipped_repositories"], 1, "{d}");
    assert_eq!(d["tags_seen"], 110, "{d}");
    assert_eq!(d["adopted"], 109, "{d}");
    assert_eq!(d["skipped_mutable"], 1, "{d}");
    assert_eq!(d["already_pinned"], 0, "{d}");
    assert!(
        lines
            .iter()
            .any(|l| l["progress"]["current"] == "app" && l["progress"]["repositories"].is_u64()),
        "no progress line for app: {lines:?}"
    );
    // Both kinds of pages were followed.
    let seen: Vec<String> = relay.requests().into_iter().map(|r| r.target).collect();
    assert!(
        seen.iter()
            .any(|t| t.starts_with("/v2/_catalog?") && t.contains("last=")),
        "no second catalog page: {seen:?}"
    );
    assert!(
        seen.iter().any(|t| t.starts_with("/v2/app/tags/list?n=1&last=v4")),
        "no last tag page: {seen:?}"
    );

    // What the seed found is pinned: another digest under a seeded tag is refused.
    let pin = s.admin_request("GET", "/admin/v1/pin?repository=app&tag=v3").json();
    assert_eq!(pin["source"], "adopted", "{pin}");
    assert_eq!(pin["digest"], versions[2].digest(), "{pin}");
    let other = base.variant("moved");
    let r = other.put_manifest(s.tagpin.addr, "app", "v3", "");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(
        upstream_digest(&registry, "app", "v3").as_deref(),
        Some(versions[2].digest().as_str())
    );
    let seeded: Vec<Value> = s
        .tagpin
        .audit_events()
        .into_iter()
        .filter(|e| e["action"] == "seeded")
        .collect();
    assert_eq!(seeded.len(), 109);
    assert!(seeded.iter().all(|e| e["user"] == "admin:ops"), "{:?}", seeded[0]);
}

#[test]
fn seeding_again_adopts_nothing_new_and_one_repository_can_be_seeded_alone() {
    let registry = Registry::start();
    let base = Image::random(2, 256);
    put(registry.addr, "a", "1.0", &base.variant("a1"), "");
    put(registry.addr, "a", "2.0", &base.variant("a2"), "");
    put(registry.addr, "b", "1.0", &base.variant("b1"), "");
    let s = Setup::start(&registry.url(), None, &[], &[]);

    let only_a = s.seed("?repository=a");
    assert_eq!(done(&only_a)["repositories"], 1);
    assert_eq!(done(&only_a)["adopted"], 2);
    let all = s.seed("");
    assert_eq!(done(&all)["adopted"], 1, "{}", done(&all));
    assert_eq!(done(&all)["already_pinned"], 2, "{}", done(&all));
    let again = s.seed("");
    assert_eq!(done(&again)["adopted"], 0, "{}", done(&again));
    assert_eq!(done(&again)["already_pinned"], 3, "{}", done(&again));
}

#[test]
fn verify_reports_moved_missing_and_unpinned_tags() {
    let registry = Registry::start();
    let base = Image::random(3, 256);
    let (one, two, three) = (base.variant("1"), base.variant("2"), base.variant("3"));
    put(registry.addr, "a", "1.0", &one, "");
    put(registry.addr, "a", "2.0", &two, "");
    put(registry.addr, "a", "3.0", &three, "");
    let s = Setup::start(&registry.url(), None, &[], &[]);
    assert_eq!(done(&s.seed(""))["adopted"], 3);

    // Past tagpin, straight at the upstream: 1.0 moved, 2.0 deleted, 4.0 new.
    let moved = base.variant("moved");
    put(registry.addr, "a", "1.0", &moved, "");
    delete_manifest(&registry, "a", &two.digest(), "");
    put(registry.addr, "a", "4.0", &base.variant("4"), "");

    let v = s.verify("");
    assert_eq!(
        v["counts"],
        serde_json::json!({"same": 1, "moved": 1, "missing": 1, "unpinned": 1}),
        "{v}"
    );
    let tag = |t: &str| {
        v["tags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["tag"] == t)
            .cloned()
            .unwrap_or_else(|| panic!("{t} not in {v}"))
    };
    assert_eq!(tag("1.0")["state"], "moved");
    assert_eq!(tag("1.0")["pinned_digest"], one.digest());
    assert_eq!(tag("1.0")["upstream_digest"], moved.digest());
    assert_eq!(tag("2.0")["state"], "missing");
    assert_eq!(tag("2.0")["upstream_digest"], Value::Null);
    assert_eq!(tag("3.0")["state"], "same");
    assert_eq!(tag("3.0")["repository"], "a");
}

#[test]
fn the_periodic_drift_check_sets_the_gauge_and_audits_each_change_once() {
    let registry = Registry::start();
    let base = Image::random(4, 256);
    let (one, two) = (base.variant("1"), base.variant("2"));
    put(registry.addr, "a", "1.0", &one, "");
    put(registry.addr, "a", "2.0", &two, "");
    let s = Setup::start(&registry.url(), None, &["--drift-interval", "1s"], &[]);
    assert_eq!(done(&s.seed(""))["adopted"], 2);

    let moved = base.variant("moved");
    put(registry.addr, "a", "1.0", &moved, "");
    let event = s
        .tagpin
        .wait_for_audit(|e| e["action"] == "drift_detected" && e["tag"] == "1.0");
    assert_eq!(event["pinned_digest"], one.digest(), "{event}");
    assert_eq!(event["attempted_digest"], moved.digest(), "{event}");
    assert_eq!(event["user"], "tagpin:drift-check", "{event}");
    // The check that emitted it has set the gauge once it logs its line.
    let checks = s.drift_checks();
    s.wait_drift_checks(checks, 2);
    let metrics = s.metrics();
    assert!(metrics.contains(r#"tagpin_drift_tags{state="moved"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"tagpin_drift_tags{state="same"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"tagpin_drift_tags{state="missing"} 0"#), "{metrics}");
    assert_eq!(
        s.drift_events("1.0").len(),
        1,
        "a tag that stays moved is reported once"
    );

    // A second change, 2.0 deleted at the upstream: one event more, for 2.0.
    delete_manifest(&registry, "a", &two.digest(), "");
    let event = s
        .tagpin
        .wait_for_audit(|e| e["action"] == "drift_detected" && e["tag"] == "2.0");
    assert_eq!(event["attempted_digest"], "", "{event}");
    let checks = s.drift_checks();
    s.wait_drift_checks(checks, 2);
    assert!(s.metrics().contains(r#"tagpin_drift_tags{state="missing"} 1"#));
    assert_eq!(s.drift_events("1.0").len(), 1);
    assert_eq!(s.drift_events("2.0").len(), 1);
}

/// No log line of a trace-level run holds any of `secrets`.
fn assert_never_logged(tagpin: &Tagpin, secrets: &[String]) {
    let logs = tagpin.logs();
    assert!(logs.len() > 20, "expected a trace-level log, got {} lines", logs.len());
    for line in &logs {
        for secret in secrets {
            assert!(!line.contains(secret.as_str()), "a secret was logged: {line}");
        }
    }
}

#[test]
fn seeding_through_the_registry_token_flow_fetches_one_token_per_scope_and_logs_none() {
    const USER: &str = "robot";
    const PASSWORD: &str = "robot-pass-TOKENFLOW-1";
    let tokens = TokenServer::start(USER, PASSWORD);
    let registry = Registry::start_with(RegistryOptions {
        token_auth: Some(tokens.registry_auth()),
        ..Default::default()
    });
    let base = Image::random(5, 256);
    let setup_auth = tokens.bearer(&["repository:a:pull,push", "repository:b:pull,push"]);
    put(registry.addr, "a", "1.0", &base.variant("a1"), &setup_auth);
    put(registry.addr, "a", "2.0", &base.variant("a2"), &setup_auth);
    put(registry.addr, "b", "1.0", &base.variant("b1"), &setup_auth);
    let s = Setup::start(
        &registry.url(),
        Some(&format!("{USER}:{PASSWORD}")),
        &[],
        &[("RUST_LOG", "trace")],
    );

    let d = done(&s.seed("")).clone();
    assert_eq!(d["repositories"], 2, "{d}");
    assert_eq!(d["adopted"], 3, "{d}");
    let v = s.verify("");
    assert_eq!(v["counts"]["same"], 3, "{v}");
    assert_eq!(v["counts"]["unpinned"], 0, "{v}");

    let served = tokens.served.lock().unwrap();
    assert_eq!(served.refused, 0, "tagpin sent no or wrong credentials for a token");
    let mut distinct = served.scopes.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct,
        ["registry:catalog:*", "repository:a:pull", "repository:b:pull"],
        "{:?}",
        served.scopes
    );
    assert_eq!(served.scopes.len(), 3, "a token per scope, cached: {:?}", served.scopes);
    // A client without credentials is not lent tagpin's.
    let r = request(
        s.tagpin.addr,
        "HEAD",
        "/v2/a/manifests/1.0",
        &[("Accept", common::image::ACCEPT_ALL)],
        b"",
    );
    assert_eq!(r.status, 401);
    let mut secrets: Vec<String> = served.tokens.clone();
    drop(served);
    secrets.push(PASSWORD.into());
    secrets.push(base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}")));
    assert_never_logged(&s.tagpin, &secrets);
}

#[test]
fn seeding_with_basic_credentials_works_and_logs_none_and_wrong_ones_are_an_error() {
    const USER: &str = "alice";
    const PASSWORD: &str = "alice-pass-BASICFLOW-2";
    let registry = Registry::start_with(RegistryOptions {
        basic_auth: Some((USER.into(), PASSWORD.into())),
        ..Default::default()
    });
    let auth = basic(USER, PASSWORD);
    let base = Image::random(6, 256);
    put(registry.addr, "a", "1.0", &base.variant("a1"), &auth);
    put(registry.addr, "b", "1.0", &base.variant("b1"), &auth);
    let s = Setup::start(
        &registry.url(),
        Some(&format!("{USER}:{PASSWORD}")),
        &[],
        &[("RUST_LOG", "trace")],
    );

    let d = done(&s.seed("")).clone();
    assert_eq!(d["repositories"], 2, "{d}");
    assert_eq!(d["adopted"], 2, "{d}");
    assert_eq!(s.verify("")["counts"]["same"], 2);
    let r = request(
        s.tagpin.addr,
        "HEAD",
        "/v2/a/manifests/1.0",
        &[("Accept", common::image::ACCEPT_ALL)],
        b"",
    );
    assert_eq!(r.status, 401, "a client without credentials is not lent tagpin's");
    assert_never_logged(
        &s.tagpin,
        &[PASSWORD.into(), auth.trim_start_matches("Basic ").to_owned()],
    );

    let wrong = Setup::start(&registry.url(), Some(&format!("{USER}:not-the-password")), &[], &[]);
    let r = wrong.admin_request("POST", "/admin/v1/seed");
    assert_eq!(r.status, 502, "{}", r.text());
}

#[test]
fn a_tag_page_on_another_origin_ends_the_seed_with_an_error_and_adopts_nothing_of_it() {
    let registry = Registry::start();
    let base = Image::random(7, 256);
    put(registry.addr, "a", "1.0", &base.variant("1"), "");
    put(registry.addr, "a", "2.0", &base.variant("2"), "");
    let relay = paging::start(registry.addr, Links::Other("http://127.0.0.2:9".into()));
    let s = Setup::start(&relay.url(), None, &[], &[]);

    let r = s.admin_request("POST", "/admin/v1/seed");
    assert_eq!(r.status, 200, "{}", r.text());
    let last: Value = serde_json::from_str(r.text().lines().last().unwrap()).unwrap();
    let error = last["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error line: {}", r.text()));
    assert!(error.contains("127.0.0.2:9"), "{error}");
    let pins = s.admin_request("GET", "/admin/v1/pins").json();
    assert_eq!(pins["pins"], serde_json::json!([]), "{pins}");
}
