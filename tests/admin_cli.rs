//! End-to-end: the operator commands (`tagpin pins`, `release`, `seed`, `verify`,
//! `export`, `import`) against a running tagpin's admin API in front of a real
//! distribution 2.8, deciding every outcome by asking the upstream directly.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The admin token of every test: long enough for the server's 16-character minimum.
const TOKEN: &str = "cli-test-token-7f3a9b2c4d5e6f70";

/// A stack with the admin API on, its address, and a file holding the bare token.
struct Admin {
    stack: Stack,
    addr: SocketAddr,
    secrets: tempfile::TempDir,
}

/// Token files: the server's `name:token` lines and the CLI's bare token.
fn secrets() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens"), format!("alice:{TOKEN}\n")).unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    dir
}

fn admin_flags(secrets: &Path) -> Vec<String> {
    vec![
        "--admin-listen".into(),
        "127.0.0.1:0".into(),
        "--admin-token-file".into(),
        secrets.join("tokens").display().to_string(),
    ]
}

/// The admin listener's address, from tagpin's "admin API listening" log line (logged
/// before "listening", so it is there once `Tagpin::start` returns; polled to be sure).
fn admin_addr(tagpin: &Tagpin) -> SocketAddr {
    for _ in 0..200 {
        let found = tagpin.logs().iter().find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["message"] == "admin API listening").then(|| v["addr"].as_str().unwrap_or("").parse().ok())?
        });
        if let Some(addr) = found {
            return addr;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("no admin listener in:\n{}", tagpin.logs().join("\n"));
}

impl Admin {
    fn start() -> Self {
        let secrets = secrets();
        let flags = admin_flags(secrets.path());
        let stack = Stack::start(&flags.iter().map(String::as_str).collect::<Vec<_>>());
        let addr = admin_addr(&stack.tagpin);
        Self { stack, addr, secrets }
    }

    fn token_file(&self) -> PathBuf {
        self.secrets.path().join("token")
    }

    /// Run `tagpin ARGS --admin-url … --admin-token-file …`.
    fn cli(&self, args: &[&str]) -> Out {
        cli_with(args, &self.addr.to_string(), Some(&self.token_file()), None)
    }

    fn push(&self, repo: &str, tag: &str, image: &Image) -> u16 {
        image.push_blobs(self.stack.tagpin.addr, repo, "");
        image.put_manifest(self.stack.tagpin.addr, repo, tag, "").status
    }

    fn upstream(&self, repo: &str, tag: &str) -> Option<String> {
        upstream_digest(&self.stack.registry, repo, tag)
    }

    /// No log line of tagpin's carries the token (nor, with it, any output checked).
    fn assert_no_token_logged(&self) {
        assert_no_token_in(&self.stack.tagpin);
    }
}

fn assert_no_token_in(tagpin: &Tagpin) {
    let logs = tagpin.logs();
    assert!(!logs.is_empty());
    if let Some(l) = logs.iter().find(|l| l.contains(TOKEN) || l.contains(&TOKEN[..20])) {
        panic!("a log line carries the admin token: {l}");
    }
}

/// A finished CLI run.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "tagpin failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

fn cli_with(args: &[&str], admin_addr: &str, token_file: Option<&Path>, stdin: Option<&[u8]>) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tagpin"));
    cmd.args(args)
        .arg("--admin-url")
        .arg(format!("http://{admin_addr}"))
        .env_remove("TAGPIN_ADMIN_TOKEN")
        .env_remove("TAGPIN_ADMIN_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(f) = token_file {
        cmd.arg("--admin-token-file").arg(f);
    }
    let mut child = cmd.spawn().expect("run tagpin");
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        if let Some(bytes) = stdin {
            input.write_all(bytes).unwrap();
        }
    }
    let out: Output = child.wait_with_output().unwrap();
    let out = Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !out.stdout.contains(TOKEN) && !out.stderr.contains(TOKEN),
        "the CLI printed the token"
    );
    if out.code == 2 {
        assert_eq!(out.stderr.lines().count(), 1, "one line on stderr: {}", out.stderr);
    }
    out
}

/// Offline (`--data-dir`) runs need no admin URL; the flag is given and unused.
fn offline(args: &[&str], stdin: Option<&[u8]>) -> Out {
    cli_with(args, "127.0.0.1:1", None, stdin)
}

#[test]
fn admin_requests_without_the_right_token_get_401() {
    let a = Admin::start();
    let get = |auth: &str| request(a.addr, "GET", "/admin/v1/pins", &[("Authorization", auth)], b"");
    let short = format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);
    let long = format!("Bearer {TOKEN}x");
    for auth in [
        "",
        "Bearer wrong-token-0123456789abcdef",
        short.as_str(),
        long.as_str(),
        &basic("alice", TOKEN),
    ] {
        let r = get(auth);
        assert_eq!(r.status, 401, "{auth:?}: {}", r.text());
        assert_eq!(r.oci_code(), "UNAUTHORIZED");
        assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"tagpin-admin\""));
    }
    assert_eq!(get(&format!("Bearer {TOKEN}")).status, 200);

    // The CLI: a wrong token, a token one character short, no token at all.
    let wrong = tempfile::tempdir().unwrap();
    for (name, token) in [
        ("wrong", "wrong-token-0123456789abcdef"),
        ("short", &TOKEN[..TOKEN.len() - 1]),
    ] {
        let file = wrong.path().join(name);
        std::fs::write(&file, token).unwrap();
        let out = cli_with(&["pins", "list"], &a.addr.to_string(), Some(&file), None);
        assert_eq!(out.code, 2, "{}", out.stderr);
        assert!(out.stderr.contains("401 UNAUTHORIZED"), "{}", out.stderr);
        assert!(!out.stderr.contains(token), "{}", out.stderr);
        println!("{name} token:\n{}", out.stderr);
    }
    let out = cli_with(&["pins", "list"], &a.addr.to_string(), None, None);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("no admin token"), "{}", out.stderr);
    a.cli(&["pins", "list"]).ok();
    a.assert_no_token_logged();
}

#[test]
fn pins_list_and_show_report_what_is_pinned() {
    let a = Admin::start();
    let (one, two, three) = (
        Image::random(11, 2000),
        Image::random(12, 2000),
        Image::random(13, 2000),
    );
    assert_eq!(a.push("team/app", "1.0", &one), 201);
    assert_eq!(a.push("team/app", "2.0", &two), 201);
    assert_eq!(a.push("team/db", "1.0", &three), 201);
    // A refused move, kept for the security team.
    assert_eq!(a.push("team/app", "1.0", &one.variant("moved")), 409);

    let listed = a.cli(&["pins", "list", "--json"]).ok().json_lines();
    let rows: Vec<(String, String, String)> = listed
        .iter()
        .map(|p| {
            (
                p["repository"].as_str().unwrap().to_owned(),
                p["tag"].as_str().unwrap().to_owned(),
                p["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("team/app".into(), "1.0".into(), one.digest()),
            ("team/app".into(), "2.0".into(), two.digest()),
            ("team/db".into(), "1.0".into(), three.digest()),
        ]
    );
    assert!(listed
        .iter()
        .all(|p| p["state"] == "pinned" && p["mode"] == "immutable"));
    let only_db = a
        .cli(&["pins", "list", "--repository", "team/db", "--json"])
        .ok()
        .json_lines();
    assert_eq!(only_db.len(), 1);

    let table = a.cli(&["pins", "list"]).ok().stdout;
    println!("pins list:\n{table}");
    assert!(table.lines().next().unwrap().contains("REPOSITORY"), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");

    let shown = a.cli(&["pins", "show", "team/app:1.0", "--json"]).ok().json();
    assert_eq!(shown["digest"], one.digest());
    assert_eq!(shown["history"][0]["event"], "push");
    assert_eq!(shown["refused"].as_array().unwrap().len(), 1);
    assert_eq!(shown["refused"][0]["attempted"], one.variant("moved").digest());
    assert!(shown["release"].is_null());
    let text = a.cli(&["pins", "show", "team/app:1.0"]).ok().stdout;
    println!("pins show:\n{text}");
    assert!(text.contains(&one.digest()) && text.contains("REFUSED (1)"), "{text}");

    let none = a.cli(&["pins", "show", "team/app:9.9"]);
    assert_eq!(none.code, 1, "{}", none.stderr);
    assert!(none.stderr.contains("team/app:9.9 has no pin"), "{}", none.stderr);
    let bad = a.cli(&["pins", "show", "Team/app"]);
    assert_eq!(bad.code, 2);
    a.assert_no_token_logged();
}

#[test]
fn a_release_lets_one_different_push_through_and_no_second() {
    let a = Admin::start();
    let first = Image::random(21, 2000);
    let (fixed, later) = (first.variant("rebuilt"), first.variant("later"));
    assert_eq!(a.push("team/app", "1.0", &first), 201);
    assert_eq!(a.push("team/app", "1.0", &fixed), 409);

    let out = a
        .cli(&[
            "release",
            "team/app:1.0",
            "--reason",
            "CVE-2024-1 rebuild",
            "--ttl",
            "15m",
        ])
        .ok();
    println!("release:\n{}", out.stdout);
    assert!(
        out.stdout.ends_with(" (by alice: CVE-2024-1 rebuild)\n"),
        "{}",
        out.stdout
    );
    let release = a.cli(&["pins", "show", "team/app:1.0", "--json"]).ok().json()["release"].clone();
    assert_eq!(release["by"], "alice");
    let ttl = release["expires_at"].as_u64().unwrap() - release["created_at"].as_u64().unwrap();
    assert_eq!(ttl, 900);

    assert_eq!(a.push("team/app", "1.0", &fixed), 201);
    assert_eq!(a.upstream("team/app", "1.0"), Some(fixed.digest()));
    // Used once: the next different digest is refused and the upstream keeps the fix.
    assert_eq!(a.push("team/app", "1.0", &later), 409);
    assert_eq!(a.upstream("team/app", "1.0"), Some(fixed.digest()));

    let shown = a.cli(&["pins", "show", "team/app:1.0", "--json"]).ok().json();
    assert_eq!(shown["digest"], fixed.digest());
    let released = shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["event"] == "released")
        .unwrap_or_else(|| panic!("no released entry: {shown}"));
    assert_eq!(released["by"], "alice");
    assert_eq!(released["reason"], "CVE-2024-1 rebuild");
    assert_eq!(released["from"], first.digest());
    assert!(shown["release"].is_null(), "the release is used up");
    println!(
        "pins show after a release:\n{}",
        a.cli(&["pins", "show", "team/app:1.0"]).ok().stdout
    );
    a.assert_no_token_logged();
}

#[test]
fn an_expired_or_cancelled_release_lets_nothing_through() {
    let a = Admin::start();
    let first = Image::random(31, 2000);
    let other = first.variant("other");
    assert_eq!(a.push("team/app", "1.0", &first), 201);

    let release = a
        .cli(&["release", "team/app:1.0", "--reason", "try", "--ttl", "1s", "--json"])
        .ok()
        .json();
    assert_eq!(
        (release["tag"].as_str(), release["reason"].as_str()),
        (Some("1.0"), Some("try"))
    );
    assert_eq!(
        release["expires_at"].as_u64().unwrap() - release["created_at"].as_u64().unwrap(),
        1
    );
    // Well past the second (expiry is compared in whole seconds).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(a.push("team/app", "1.0", &other), 409);
    assert_eq!(a.upstream("team/app", "1.0"), Some(first.digest()));
    let shown = a.cli(&["pins", "show", "team/app:1.0", "--json"]).ok().json();
    assert!(
        shown["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["event"] == "release_expired"),
        "{shown}"
    );

    a.cli(&["release", "team/app:1.0", "--reason", "second thoughts"]).ok();
    let out = a.cli(&["release", "--cancel", "team/app:1.0"]).ok();
    assert!(
        out.stdout.starts_with("cancelled the release of team/app:1.0"),
        "{}",
        out.stdout
    );
    assert_eq!(a.push("team/app", "1.0", &other), 409);
    assert_eq!(a.upstream("team/app", "1.0"), Some(first.digest()));
    assert_eq!(a.cli(&["release", "--cancel", "team/app:1.0"]).code, 2);

    // Bad TTLs and a missing reason are refused before anything is sent.
    for args in [
        &["release", "team/app:1.0", "--reason", "x", "--ttl", "25h"][..],
        &["release", "team/app:1.0", "--reason", "x", "--ttl", "soon"],
        &["release", "team/app:1.0"],
    ] {
        assert_eq!(a.cli(args).code, 2, "{args:?}");
    }
    a.assert_no_token_logged();
}

#[test]
fn an_export_restored_offline_is_enforced_by_a_second_instance() {
    let a = Admin::start();
    let images: Vec<Image> = (0..3).map(|i| Image::random(41 + i, 2000)).collect();
    let tags = [("team/app", "1.0"), ("team/app", "2.0"), ("other/db", "7")];
    for ((repo, tag), img) in tags.iter().zip(&images) {
        assert_eq!(a.push(repo, tag, img), 201);
    }
    let export = a.cli(&["export"]).ok();
    assert_eq!(export.json_lines().len(), 3);
    assert!(export.stderr.contains("exported 3 pins"), "{}", export.stderr);
    println!(
        "export (first line):\n{}\n{}",
        export.stdout.lines().next().unwrap(),
        export.stderr
    );

    // The running instance's data dir is locked: said plainly, exit 2.
    let data = a.stack.data.path().display().to_string();
    let locked = offline(&["export", "--data-dir", &data], None);
    assert_eq!(locked.code, 2);
    assert!(
        locked.stderr.contains("in use by a running tagpin"),
        "{}",
        locked.stderr
    );
    println!("export --data-dir on a running instance:\n{}", locked.stderr);

    let restored = tempfile::tempdir().unwrap();
    let dir = restored.path().join("data").display().to_string();
    let out = offline(&["import", "--data-dir", &dir, "-"], Some(export.stdout.as_bytes())).ok();
    assert_eq!(out.stdout.trim(), "imported 3 pins; 0 already held unchanged");
    println!("import --data-dir:\n{}", out.stdout);
    // Importing the same export again changes nothing.
    let again = offline(
        &["import", "--data-dir", &dir, "--json"],
        Some(export.stdout.as_bytes()),
    )
    .ok();
    assert_eq!(again.json(), serde_json::json!({"imported": 0, "unchanged": 3}));
    let offline_export = offline(&["export", "--data-dir", &dir], None).ok();
    assert_eq!(offline_export.json_lines(), export.json_lines());

    // A second tagpin on the restored dir, in front of the same upstream.
    let secrets = secrets();
    let flags = admin_flags(secrets.path());
    let second = Tagpin::start(
        &a.stack.registry.url(),
        restored.path().join("data").as_path(),
        &flags.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    for ((repo, tag), img) in tags.iter().zip(&images) {
        let moved = img.variant("moved");
        moved.push_blobs(second.addr, repo, "");
        let r = moved.put_manifest(second.addr, repo, tag, "");
        assert_eq!(r.status, 409, "{repo}:{tag}: {}", r.text());
        assert_eq!(a.upstream(repo, tag), Some(img.digest()));
        // The pinned digest itself is still accepted.
        assert_eq!(img.put_manifest(second.addr, repo, tag, "").status, 201);
    }
    let second_addr = admin_addr(&second);
    let listed = cli_with(
        &["pins", "list", "--json"],
        &second_addr.to_string(),
        Some(&a.token_file()),
        None,
    )
    .ok()
    .json_lines();
    assert_eq!(listed.len(), 3);
    assert_no_token_in(&second);
    a.assert_no_token_logged();
}

#[test]
fn an_import_that_conflicts_writes_nothing() {
    let mut a = Admin::start();
    let (one, two) = (Image::random(51, 2000), Image::random(52, 2000));
    assert_eq!(a.push("team/app", "1.0", &one), 201);
    let mut record = a.cli(&["export"]).ok().json_lines().remove(0);

    // A backup that disagrees about 1.0, plus a new tag that must not land either.
    record["digest"] = two.digest().into();
    let mut new = record.clone();
    new["tag"] = "3.0".into();
    let body = format!("{new}\n{record}\n");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &body).unwrap();
    let path = file.path().display().to_string();

    let out = a.cli(&["import", &path]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    println!("a conflicting import:\n{}", out.stderr);
    assert!(
        out.stderr.contains("nothing written") && out.stderr.contains("1.0"),
        "{}",
        out.stderr
    );
    assert_eq!(a.cli(&["pins", "show", "team/app:3.0"]).code, 1);
    assert_eq!(
        a.cli(&["pins", "show", "team/app:1.0", "--json"]).ok().json()["digest"],
        one.digest()
    );
    a.assert_no_token_logged();

    // The same offline, once tagpin has stopped.
    a.stack.tagpin.terminate();
    let data = a.stack.data.path().display().to_string();
    let out = offline(&["import", "--data-dir", &data, &path], None);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("nothing written"), "{}", out.stderr);
    let held = offline(&["export", "--data-dir", &data], None).ok().json_lines();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["digest"], one.digest());

    // A file that is not an export at all is an error, not a conflict.
    let out = offline(&["import", "--data-dir", &data, "-"], Some(b"{\"not\":\"a pin\"}\n"));
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("line 1"), "{}", out.stderr);
}

#[test]
fn seed_then_verify_through_the_cli() {
    let admin = Admin::start();
    let registry = &admin.stack.registry;
    // Tags that predate tagpin, pushed straight to the upstream.
    let (a, b) = (Image::random(990, 200), Image::random(991, 200));
    for (img, repo, tag) in [
        (&a, "legacy/app", "1.0"),
        (&b, "legacy/app", "2.0"),
        (&a, "legacy/db", "9"),
    ] {
        img.push_blobs(registry.addr, repo, "");
        assert_eq!(img.put_manifest(registry.addr, repo, tag, "").status, 201);
    }
    let out = admin.cli(&["seed", "--json"]).ok();
    let done = out.json_lines().into_iter().last().expect("a summary line");
    let counts = if done.get("done").is_some() {
        done["done"].clone()
    } else {
        done.clone()
    };
    assert_eq!(counts["adopted"], 3, "{}", out.stdout);
    let human = admin.cli(&["seed"]).ok();
    eprintln!("$ tagpin seed\n{}", human.stdout);
    // A second seed finds every tag pinned: nothing adopted, all three already pinned.
    let row = |name: &str| {
        human
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| panic!("no {name:?} row in:\n{}", human.stdout))
    };
    assert_eq!(
        (row("adopted"), row("already pinned"), row("tags seen")),
        ("0".to_owned(), "3".to_owned(), "3".to_owned()),
        "{}",
        human.stdout
    );
    // A seeded tag is enforced.
    let other = a.variant("other");
    assert_eq!(admin.push("legacy/app", "1.0", &other), 409);
    assert_eq!(admin.upstream("legacy/app", "1.0"), Some(a.digest()));

    let clean = admin.cli(&["verify", "--json"]).ok();
    assert_eq!(clean.json()["counts"]["same"], 3, "{}", clean.stdout);
    // Behind tagpin's back: one tag moved, one deleted.
    other.push_blobs(registry.addr, "legacy/app", "");
    assert_eq!(other.put_manifest(registry.addr, "legacy/app", "2.0", "").status, 201);
    let del = request(
        registry.addr,
        "DELETE",
        &format!("/v2/legacy/db/manifests/{}", a.digest()),
        &[],
        b"",
    );
    assert_eq!(del.status, 202, "{}", del.text());
    let drift = admin.cli(&["verify", "--json"]);
    assert_eq!(drift.code, 1, "{} {}", drift.stdout, drift.stderr);
    let v = drift.json();
    assert_eq!(
        (v["counts"]["moved"].as_u64(), v["counts"]["missing"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    let human = admin.cli(&["verify"]);
    eprintln!("$ tagpin verify\n{}", human.stdout);
    assert_eq!(human.code, 1);
    assert!(
        human.stdout.contains("moved") && human.stdout.contains("missing"),
        "{}",
        human.stdout
    );
    admin.assert_no_token_logged();
}
