//! What operators read: the CLI's messages, `pins show`/`verify`/`export`, the audit
//! events and log lines, and the metrics listener. Every run honours `TAGPIN_TEST_BIN`,
//! the server and the CLI alike, so the suite can be run against another build.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::admin::{history, AdminSecrets, CliOut};
use common::*;
use serde_json::Value;

/// The binary under test.
fn bin() -> PathBuf {
    std::env::var_os("TAGPIN_TEST_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_tagpin").into())
        .into()
}

/// `tagpin ARGS` with no admin API flags and no `TAGPIN_*` from the test's environment.
fn run(args: &[&str], env: &[(&str, &str)]) -> CliOut {
    let mut cmd = Command::new(bin());
    cmd.args(args).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("TAGPIN_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run tagpin");
    CliOut {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `tagpin ARGS --admin-url … --admin-token-file …` against a running admin API.
fn cli(secrets: &AdminSecrets, admin: SocketAddr, args: &[&str]) -> CliOut {
    let url = format!("http://{admin}");
    let token = secrets.token_file().display().to_string();
    let mut all = args.to_vec();
    all.extend(["--admin-url", &url, "--admin-token-file", &token]);
    run(&all, &[])
}

/// A stack with the admin API on.
fn admin_stack(extra: &[&str]) -> (Stack, AdminSecrets, SocketAddr) {
    let secrets = AdminSecrets::new();
    let mut flags = secrets.flags();
    flags.extend(extra.iter().map(|s| s.to_string()));
    let stack = Stack::start(&flags.iter().map(String::as_str).collect::<Vec<_>>());
    let admin = stack.tagpin.admin_addr();
    (stack, secrets, admin)
}

fn push(stack: &Stack, repo: &str, tag: &str, image: &Image) -> u16 {
    image.push_blobs(stack.tagpin.addr, repo, "");
    image.put_manifest(stack.tagpin.addr, repo, tag, "").status
}

#[test]
fn a_missing_required_argument_is_named() {
    let cases: [(&[&str], &[&str]); 3] = [
        (&["release", "my-api:1.0"], &["--reason"]),
        (&["pins", "show"], &["<REFERENCE>"]),
        (&["release"], &["--reason", "<REFERENCE>"]),
    ];
    for (args, missing) in cases {
        let out = run(args, &[]);
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "one line on stderr: {out:?}");
        let line = out.stderr.trim_end();
        assert!(
            line.starts_with("tagpin: the following required arguments were not provided:"),
            "{line}"
        );
        let listed = line.split("; ").next().unwrap();
        for m in missing {
            assert!(listed.contains(m), "{args:?} does not name {m}: {line}");
        }
    }
    // serve keeps EX_USAGE.
    let out = run(&["serve", "--bogus"], &[]);
    assert_eq!(out.code, 64, "{out:?}");
    assert!(
        out.stderr.contains("'--bogus'") && out.stderr.contains("Usage: tagpin serve"),
        "{out:?}"
    );
}

/// README's list of audit actions, from its "Audit log" section: the first code span of
/// each bullet after "`action` is one of".
fn readme_actions() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("\n## Audit log\n").nth(1).expect("an Audit log section");
    let section = section.split("\n## ").next().unwrap();
    let list = section.split("is one of").nth(1).expect("the list of actions");
    let mut out = Vec::new();
    for line in list.lines().skip(1).skip_while(|l| l.trim().is_empty()) {
        if line.trim().is_empty() {
            break;
        }
        let Some(item) = line.strip_prefix("- ") else { continue };
        // `push_audited`, `delete_audited`: … names two.
        let head = item.split(':').next().unwrap();
        out.extend(head.split('`').skip(1).step_by(2).map(str::to_owned));
    }
    out
}

/// The code's actions: the strings of `AuditAction::as_str`.
fn code_actions() -> Vec<String> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/telemetry.rs")).unwrap();
    let body = src.split("pub fn as_str(self)").nth(1).expect("AuditAction::as_str");
    let body = body.split("\n    }\n").next().unwrap();
    body.lines()
        .filter_map(|l| l.split("=> \"").nth(1))
        .map(|s| s.trim_end_matches("\",").to_owned())
        .collect()
}

#[test]
fn readme_lists_every_audit_action() {
    let code = code_actions();
    assert!(code.len() >= 19, "{code:?}");
    let mut readme = readme_actions();
    let mut sorted = code.clone();
    sorted.sort();
    readme.sort();
    assert_eq!(readme, sorted, "README's Audit log list and AuditAction::as_str differ");
}

/// How often `needle` appears in everything a process wrote, stdout and stderr.
fn times(out: &CliOut, needle: &str) -> usize {
    out.stdout.matches(needle).count() + out.stderr.matches(needle).count()
}

#[test]
fn a_start_failure_is_said_once() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().display().to_string();
    let listen = busy.local_addr().unwrap().to_string();
    let out = run(
        &[
            "serve",
            "--listen",
            &listen,
            "--upstream",
            "http://127.0.0.1:1",
            "--data-dir",
            &data_dir,
        ],
        &[],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(times(&out, "Address already in use"), 1, "{out:?}");

    // A data dir another tagpin holds.
    let registry = Registry::start();
    let _holder = Tagpin::start_on_data_dir(&registry.url(), data.path(), &[]);
    let out = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &registry.url(),
            "--data-dir",
            &data_dir,
        ],
        &[],
    );
    assert_eq!(out.code, 1, "{out:?}");
    let said = out.stderr.trim_end();
    assert!(!said.is_empty(), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert_eq!(
        times(&out, said.trim_start_matches("tagpin: ")),
        1,
        "said twice: {out:?}"
    );
}

/// Poll `f` until it gives a value: at most 10 s.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn a_refused_delete_by_digest_is_kept_with_its_digest() {
    let (stack, secrets, admin) = admin_stack(&[]);
    let img = Image::random(7101, 1000);
    assert_eq!(push(&stack, "team/app", "1.0", &img), 201);
    let digest = img.digest();
    let r = request(
        stack.tagpin.addr,
        "DELETE",
        &format!("/v2/team/app/manifests/{digest}"),
        &[],
        b"",
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(
        upstream_digest(&stack.registry, "team/app", "1.0"),
        Some(digest.clone())
    );
    let event = stack
        .tagpin
        .wait_for_audit(|e| e["action"] == "delete_refused" && e["tag"] == "1.0");
    assert_eq!(event["attempted_digest"], digest.as_str(), "{event}");
    let shown = cli(&secrets, admin, &["pins", "show", "team/app:1.0", "--json"])
        .ok()
        .json();
    let refused = shown["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{shown}");
    assert_eq!(refused[0]["attempted"], digest.as_str(), "{shown}");
    assert_eq!(refused[0]["delete"], true, "{shown}");
    let table = cli(&secrets, admin, &["pins", "show", "team/app:1.0"]).ok().stdout;
    assert!(table.contains("REFUSED (1)"), "{table}");
    assert!(table.contains(&format!("(delete) {}", &digest[..19])), "{table}");
}

#[test]
fn release_created_carries_its_reason() {
    let (stack, secrets, admin) = admin_stack(&[]);
    assert_eq!(push(&stack, "team/app", "1.0", &Image::random(7201, 1000)), 201);
    cli(
        &secrets,
        admin,
        &["release", "team/app:1.0", "--reason", "CVE-2024-1 rebuild"],
    )
    .ok();
    let event = stack.tagpin.wait_for_audit(|e| e["action"] == "release_created");
    assert_eq!(event["reason"], "CVE-2024-1 rebuild", "{event}");
    assert_eq!(event["by"], "alice", "{event}");
    assert!(event["expires_at"].as_u64().is_some(), "{event}");
}

#[test]
fn a_reload_names_the_keys_that_need_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tagpin.toml");
    std::fs::write(&path, "max_tags_per_push = 64\n").unwrap();
    let registry = Registry::start();
    let data = tempfile::tempdir().unwrap();
    let config = path.display().to_string();
    let tagpin = Tagpin::start(&registry.url(), data.path(), &["--config", &config]);
    std::fs::write(
        &path,
        "max_tags_per_push = 32\nexclude = [\"latest\"]\n[timeouts]\nbody_idle_ms = 5000\n",
    )
    .unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &tagpin.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let line = wait_for("the restart warning", || {
        tagpin
            .logs()
            .into_iter()
            .find(|l| l.contains("config keys other than rules, exclude and notify changed"))
    });
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["keys"], "max_tags_per_push, timeouts.body_idle_ms", "{line}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("max_tags_per_push, timeouts.body_idle_ms"),
        "{line}"
    );
}

/// Seconds since the epoch as the CLI prints them.
fn utc(secs: u64) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn an_expired_release_shows_as_expired_and_is_stamped_with_its_time() {
    let (stack, secrets, admin) = admin_stack(&[]);
    let first = Image::random(7301, 1000);
    assert_eq!(push(&stack, "team/app", "1.0", &first), 201);
    let release = cli(
        &secrets,
        admin,
        &["release", "team/app:1.0", "--reason", "try", "--ttl", "1s", "--json"],
    )
    .ok()
    .json();
    let until = release["expires_at"].as_u64().unwrap();
    // Shown as expired once past its time, with nothing written to the tag meanwhile.
    let shown = wait_for("the release to show as expired", || {
        let p = cli(&secrets, admin, &["pins", "show", "team/app:1.0", "--json"])
            .ok()
            .json();
        (p["release"]["expired"] == true).then_some(p)
    });
    let expired = history(&shown, "release_expired");
    assert_eq!(expired.len(), 1, "{shown}");
    assert_eq!(expired[0]["at"], until, "{shown}");
    let table = cli(&secrets, admin, &["pins", "show", "team/app:1.0"]).ok().stdout;
    assert!(
        table.contains(&format!("expired unused at {} (by alice: try)", utc(until))),
        "{table}"
    );
    // The next push finds it expired and records it stamped with its own time.
    wait_for("a second past the release's time", || {
        (now_secs() > until + 1).then_some(())
    });
    assert_eq!(push(&stack, "team/app", "1.0", &first.variant("after")), 409);
    let stored = cli(&secrets, admin, &["pins", "show", "team/app:1.0", "--json"])
        .ok()
        .json();
    assert!(stored["release"].is_null(), "{stored}");
    let expired = history(&stored, "release_expired");
    assert_eq!(expired.len(), 1, "{stored}");
    assert_eq!(expired[0]["at"], until, "stamped with the release's time: {stored}");
}

#[test]
fn pinned_at_is_when_the_current_digest_was_set() {
    let (stack, secrets, admin) = admin_stack(&[]);
    let first = Image::random(7401, 1000);
    assert_eq!(push(&stack, "team/app", "1.0", &first), 201);
    let pinned_at = cli(&secrets, admin, &["pins", "show", "team/app:1.0", "--json"])
        .ok()
        .json()["pinned_at"]
        .as_u64()
        .unwrap();
    wait_for("the clock to pass the first pin's second", || {
        (now_secs() > pinned_at).then_some(())
    });
    cli(&secrets, admin, &["release", "team/app:1.0", "--reason", "rebuild"]).ok();
    let second = first.variant("rebuilt");
    assert_eq!(push(&stack, "team/app", "1.0", &second), 201);
    assert_eq!(
        upstream_digest(&stack.registry, "team/app", "1.0"),
        Some(second.digest())
    );
    let shown = cli(&secrets, admin, &["pins", "show", "team/app:1.0", "--json"])
        .ok()
        .json();
    let moved = history(&shown, "released")[0]["at"].as_u64().unwrap();
    assert!(moved > pinned_at, "{shown}");
    let list = cli(&secrets, admin, &["pins", "list"]).ok().stdout;
    let row = list.lines().find(|l| l.contains("team/app")).unwrap();
    assert!(
        row.trim_end().ends_with(&utc(moved)),
        "PINNED AT of the current digest: {list}"
    );
    let table = cli(&secrets, admin, &["pins", "show", "team/app:1.0"]).ok().stdout;
    assert!(table.contains(&format!("\npinned at  {}\n", utc(moved))), "{table}");
    assert!(table.contains(&format!("\nfirst pin  {}\n", utc(pinned_at))), "{table}");
}

#[test]
fn verify_names_the_unpinned_tags() {
    let (stack, secrets, admin) = admin_stack(&[]);
    let base = Image::random(7501, 1000);
    assert_eq!(push(&stack, "team/app", "1.0", &base), 201);
    // Straight at the upstream, past tagpin.
    for (repo, tag, note) in [("team/app", "2.0", "a"), ("other/db", "7", "b")] {
        let img = base.variant(note);
        img.push_blobs(stack.registry.addr, repo, "");
        assert_eq!(img.put_manifest(stack.registry.addr, repo, tag, "").status, 201);
    }
    let out = cli(&secrets, admin, &["verify"]);
    assert_eq!(out.code, 0, "{out:?}");
    for (repo, tag) in [("team/app", "2.0"), ("other/db", "7")] {
        let row = out.stdout.lines().find(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() >= 3 && cols[0] == repo && cols[1] == tag
        });
        assert!(
            row.is_some_and(|r| r.contains("unpinned")),
            "{repo}:{tag} not named:\n{}",
            out.stdout
        );
    }
    assert!(
        out.stdout
            .contains("1 same, 0 moved, 0 missing, 2 unpinned at the upstream"),
        "{}",
        out.stdout
    );
    let report = cli(&secrets, admin, &["verify", "--json"]).ok().json();
    let mut named: Vec<String> = report["unpinned"]
        .as_array()
        .unwrap_or_else(|| panic!("no unpinned list: {report}"))
        .iter()
        .map(|u| format!("{}:{}", u["repository"].as_str().unwrap(), u["tag"].as_str().unwrap()))
        .collect();
    named.sort();
    assert_eq!(named, ["other/db:7", "team/app:2.0"], "{report}");
}

#[test]
fn export_and_import_carry_the_refused_attempts() {
    let (stack, secrets, admin) = admin_stack(&[]);
    let first = Image::random(7601, 1000);
    assert_eq!(push(&stack, "team/app", "1.0", &first), 201);
    assert_eq!(push(&stack, "team/app", "1.0", &first.variant("other")), 409);
    let shown = cli(&secrets, admin, &["pins", "show", "team/app:1.0", "--json"])
        .ok()
        .json();
    let refused = shown["refused"].clone();
    assert_eq!(refused.as_array().map(Vec::len), Some(1), "{shown}");
    let export = cli(&secrets, admin, &["export"]).ok().stdout;
    let line: Value = serde_json::from_str(export.lines().next().unwrap()).unwrap();
    assert_eq!(line["refused"], refused, "the export carries them: {export}");
    // Restored into a new data dir, offline, and exported from there.
    let restored = tempfile::tempdir().unwrap();
    let dir = restored.path().display().to_string();
    let file = restored.path().join("pins.jsonl");
    std::fs::write(&file, &export).unwrap();
    let out = run(&["import", &file.display().to_string(), "--data-dir", &dir], &[]);
    assert_eq!(out.code, 0, "{out:?}");
    let again = run(&["export", "--data-dir", &dir], &[]);
    assert_eq!(again.code, 0, "{again:?}");
    let line: Value = serde_json::from_str(again.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(line["refused"], refused, "the restore keeps them: {}", again.stdout);
}

#[test]
fn a_bad_environment_value_is_named_by_its_variable() {
    let base = [
        "serve",
        "--upstream",
        "http://127.0.0.1:1",
        "--data-dir",
        "/nonexistent/tagpin",
    ];
    let out = run(&base, &[("TAGPIN_REFUSE_STATUS", "500")]);
    assert_eq!(out.code, 64, "{out:?}");
    assert_eq!(
        out.stderr.trim_end(),
        "tagpin: invalid config: TAGPIN_REFUSE_STATUS: must be 409 or 403, not 500"
    );
    let out = run(&base, &[("TAGPIN_UPSTREAM_CONNECT_TIMEOUT_MS", "0")]);
    assert_eq!(out.code, 64, "{out:?}");
    assert!(
        out.stderr
            .starts_with("tagpin: invalid config: TAGPIN_UPSTREAM_CONNECT_TIMEOUT_MS: "),
        "{out:?}"
    );
    // One clap itself refuses.
    let out = run(&base, &[("TAGPIN_MAX_CONNECTIONS", "many")]);
    assert_eq!(out.code, 64, "{out:?}");
    assert!(out.stderr.contains("TAGPIN_MAX_CONNECTIONS"), "{out:?}");
    // A flag is named as the flag, a file key as the key.
    let mut flagged = base.to_vec();
    flagged.extend(["--refuse-status", "500"]);
    let out = run(&flagged, &[]);
    assert!(
        out.stderr.starts_with("tagpin: invalid config: --refuse-status: "),
        "{out:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tagpin.toml");
    std::fs::write(&file, "refuse_status = 500\n").unwrap();
    let mut filed = base.to_vec();
    let file = file.display().to_string();
    filed.extend(["--config", &file]);
    let out = run(&filed, &[]);
    assert!(
        out.stderr.starts_with("tagpin: invalid config: refuse_status: "),
        "{out:?}"
    );
}

#[test]
fn metrics_can_have_a_listener_of_their_own() {
    let registry = Registry::start();
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(&registry.url(), data.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let metrics: SocketAddr = wait_for("the metrics listening line", || {
        tagpin.logs().iter().find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["message"] == "metrics listening").then(|| v["addr"].as_str()?.parse().ok())?
        })
    });
    assert_ne!(metrics, tagpin.addr);
    let r = request(metrics, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("# TYPE tagpin_decisions counter"), "{}", r.text());
    assert_eq!(request(metrics, "GET", "/v2/", &[], b"").status, 404);
    assert_eq!(request(metrics, "POST", "/metrics", &[], b"").status, 405);
    // No longer on the registry port, which still serves everything else.
    let r = request(tagpin.addr, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(!r.text().contains("# TYPE tagpin_decisions counter"));
    assert_eq!(request(tagpin.addr, "GET", "/healthz", &[], b"").status, 200);
    // Unset, the registry port serves /metrics as before.
    let other = tempfile::tempdir().unwrap();
    let plain = Tagpin::start(&registry.url(), other.path(), &[]);
    let r = request(plain.addr, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("# TYPE tagpin_decisions counter"));
}
