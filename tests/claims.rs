//! End-to-end: `tagpin claims list` and `tagpin claims clear` against a running tagpin's
//! admin API in front of a real distribution 2.8.
//!
//! A write whose answer was lost is made for real: a first tagpin forwards it to a fake
//! upstream that answers every manifest PUT and DELETE with 504 and applies nothing, so
//! its record stays (on a tag with no pin, for good); then a tagpin on the same store in
//! front of the real registry shows it, refuses what it holds back, and lets go once an
//! operator clears it, one request's record at a time: a clear names the request
//! (`--request`, the id `claims list` shows) and leaves every other request's record of
//! the tag or digest standing. Whether a tag moved is decided by asking the upstream
//! directly.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::fake::{Action, FakeUpstream};
use common::*;
use serde_json::Value;

/// The admin token of every test (the server wants 16 characters or more).
const TOKEN: &str = "claims-test-token-5e8d1c0b9a7f";
const REPO: &str = "claims/app";

/// A tagpin with its admin API on, in front of the real registry, on `data`'s store.
struct Admin {
    registry: Registry,
    tagpin: Tagpin,
    addr: SocketAddr,
    secrets: tempfile::TempDir,
    _data: tempfile::TempDir,
}

impl Admin {
    fn start(registry: Registry, data: tempfile::TempDir) -> Self {
        let secrets = tempfile::tempdir().unwrap();
        std::fs::write(secrets.path().join("tokens"), format!("alice:{TOKEN}\n")).unwrap();
        std::fs::write(secrets.path().join("token"), format!("{TOKEN}\n")).unwrap();
        let tokens = secrets.path().join("tokens").display().to_string();
        let flags = ["--admin-listen", "127.0.0.1:0", "--admin-token-file", tokens.as_str()];
        let tagpin = Tagpin::start(&registry.url(), data.path(), &flags);
        let addr = tagpin.admin_addr();
        Self {
            registry,
            tagpin,
            addr,
            secrets,
            _data: data,
        }
    }

    fn token_file(&self) -> PathBuf {
        self.secrets.path().join("token")
    }

    /// Run `tagpin ARGS --admin-url … --admin-token-file …`.
    fn cli(&self, args: &[&str]) -> Out {
        cli(args, self.addr, &self.token_file())
    }

    /// Push `image` under `tag` through tagpin, its blobs straight to the registry.
    fn push(&self, image: &Image, tag: &str) -> Resp {
        image.push_blobs(self.registry.addr, REPO, "");
        image.put_manifest(self.tagpin.addr, REPO, tag, "")
    }

    fn upstream(&self, tag: &str) -> Option<String> {
        upstream_digest(&self.registry, REPO, tag)
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
        assert_eq!(self.code, 0, "stdout: {}\nstderr: {}", self.stdout, self.stderr);
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

fn cli(args: &[&str], admin: SocketAddr, token_file: &Path) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_tagpin"))
        .args(args)
        .arg("--admin-url")
        .arg(format!("http://{admin}"))
        .arg("--admin-token-file")
        .arg(token_file)
        .env_remove("TAGPIN_ADMIN_TOKEN")
        .env_remove("TAGPIN_ADMIN_URL")
        .stdin(Stdio::null())
        .output()
        .expect("run tagpin");
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

fn detail(r: &Resp) -> Value {
    r.json()["errors"][0]["detail"].clone()
}

/// The request ids of `records` (a `claims list --json` list), in order.
fn request_ids(records: &Value) -> Vec<String> {
    records
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {records}"))
        .iter()
        .map(|c| {
            let id = c["request_id"].as_str().unwrap_or_default();
            assert!(!id.is_empty(), "a record without a request id: {c}");
            id.to_owned()
        })
        .collect()
}

/// Run `lose` against a tagpin on `data`'s store whose upstream answers every manifest
/// PUT and DELETE with 504 and applies nothing (404 for everything else), then kill it:
/// the records of those writes stay in the store.
fn with_lost_answers(data: &Path, lose: impl FnOnce(&Tagpin)) {
    let fake = FakeUpstream::start(|method, _| match method {
        "PUT" | "DELETE" => Action::status(504),
        _ => Action::status(404),
    });
    let mut tagpin = Tagpin::start(&fake.url(), data, &[]);
    lose(&tagpin);
    tagpin.kill();
}

#[test]
fn a_push_whose_answer_was_lost_holds_its_tag_until_an_operator_clears_it() {
    let lost = Image::random(1101, 64);
    let other = lost.variant("other");
    let data = tempfile::tempdir().unwrap();
    with_lost_answers(data.path(), |t| {
        let r = lost.put_manifest(t.addr, REPO, "v1", "");
        assert_eq!(r.status, 504, "{}", r.text());
    });
    let a = Admin::start(Registry::start(), data);

    let listed = a.cli(&["claims", "list", "--json"]).ok().json();
    let claims = listed["claims"].as_array().unwrap();
    assert_eq!(claims.len(), 1, "{listed}");
    let c = &claims[0];
    assert_eq!(
        (&c["repository"], &c["tag"], &c["digest"], &c["kind"]),
        (
            &Value::from(REPO),
            &Value::from("v1"),
            &Value::from(lost.digest()),
            &Value::from("new")
        ),
        "{listed}"
    );
    assert_eq!(c["past_horizon"], false, "{listed}");
    assert!(c["pinned_digest"].is_null(), "{listed}");
    assert!(c["request_id"].as_str().is_some_and(|s| !s.is_empty()), "{listed}");
    assert!(listed["deletes"].as_array().unwrap().is_empty(), "{listed}");
    let table = a.cli(&["claims", "list"]).ok().stdout;
    println!("$ tagpin claims list\n{table}");
    assert!(table.starts_with("WRITES (1)\n"), "{table}");
    assert!(table.contains(&lost.digest()[..19]), "{table}");

    // Held back: no other digest may take the tag while the lost push may have landed.
    let r = a.push(&other, "v1");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(detail(&r)["state"], "claimed");
    assert_eq!(detail(&r)["pinned_digest"], lost.digest());

    let id = c["request_id"].as_str().unwrap();
    assert!(table.lines().nth(2).is_some_and(|row| row.ends_with(id)), "{table}");

    // Another request's id clears nothing.
    let reason = "upstream answered 504; the manifest never reached it";
    let wrong = a.cli(&[
        "claims",
        "clear",
        &format!("{REPO}:v1"),
        "--request",
        "no-such-request",
        "--reason",
        reason,
    ]);
    assert_eq!(wrong.code, 2, "{}", wrong.stdout);
    assert!(wrong.stderr.contains("404"), "{}", wrong.stderr);
    assert_eq!(a.push(&other, "v1").status, 409);

    let out = a
        .cli(&[
            "claims",
            "clear",
            &format!("{REPO}:v1"),
            "--request",
            id,
            "--reason",
            reason,
        ])
        .ok();
    println!(
        "$ tagpin claims clear {REPO}:v1 --request {id} --reason \"{reason}\"\n{}",
        out.stdout
    );
    assert!(
        out.stdout
            .starts_with(&format!("cleared the write record of request {id} on {REPO}:v1 ")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("(by alice: upstream answered 504"),
        "{}",
        out.stdout
    );
    let event = a.tagpin.wait_for_audit(|e| e["action"] == "claim_cleared");
    assert_eq!(
        (&event["repository"], &event["tag"], &event["attempted_digest"]),
        (&Value::from(REPO), &Value::from("v1"), &Value::from(lost.digest()))
    );
    assert_eq!(
        (&event["user"], &event["reason"]),
        (&Value::from("admin:alice"), &Value::from(reason))
    );
    assert_eq!(event["cleared"], c["request_id"]);

    // Nothing is left to clear, and the tag is free for the other digest.
    let again = a.cli(&[
        "claims",
        "clear",
        &format!("{REPO}:v1"),
        "--request",
        id,
        "--reason",
        reason,
    ]);
    assert_eq!(again.code, 2, "{}", again.stdout);
    assert!(
        again.stderr.contains("404") && again.stderr.contains("no write record"),
        "{}",
        again.stderr
    );
    let r = a.push(&other, "v1");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(a.upstream("v1"), Some(other.digest()));
    let r = a.push(&lost, "v1");
    assert_eq!(
        (r.status, detail(&r)["state"].as_str()),
        (409, Some("pinned")),
        "{}",
        r.text()
    );
    assert_eq!(a.upstream("v1"), Some(other.digest()));
    let out = a.cli(&["claims", "list"]).ok();
    assert!(out.stdout.starts_with("no write or delete records"), "{}", out.stdout);
}

#[test]
fn a_digest_delete_whose_answer_was_lost_blocks_pinning_it_until_cleared() {
    let img = Image::random(1102, 64);
    let digest = img.digest();
    let data = tempfile::tempdir().unwrap();
    // Two deletes of the digest, both answered 504: one record each.
    with_lost_answers(data.path(), |t| {
        for _ in 0..2 {
            let r = request(t.addr, "DELETE", &format!("/v2/{REPO}/manifests/{digest}"), &[], b"");
            assert_eq!(r.status, 504, "{}", r.text());
        }
    });
    let a = Admin::start(Registry::start(), data);

    let listed = a.cli(&["claims", "list", "--repository", REPO, "--json"]).ok().json();
    assert!(listed["claims"].as_array().unwrap().is_empty(), "{listed}");
    let deletes = listed["deletes"].as_array().unwrap();
    assert_eq!(deletes.len(), 2, "{listed}");
    for d in deletes {
        assert_eq!(
            (&d["repository"], &d["digest"]),
            (&Value::from(REPO), &Value::from(digest.as_str()))
        );
        assert_eq!(d["past_horizon"], false, "{listed}");
    }
    let ids = request_ids(&listed["deletes"]);
    assert_ne!(ids[0], ids[1], "{listed}");
    let elsewhere = a
        .cli(&["claims", "list", "--repository", "other/app", "--json"])
        .ok()
        .json();
    assert!(elsewhere["deletes"].as_array().unwrap().is_empty(), "{elsewhere}");

    let r = a.push(&img, "v2");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(detail(&r)["reason"], "delete_in_flight");
    assert_eq!(a.upstream("v2"), None, "nothing was forwarded");

    // Clearing the first ends its record only: the second delete may still land.
    let clear = |id: &str| {
        a.cli(&[
            "claims",
            "clear",
            &format!("{REPO}@{digest}"),
            "--request",
            id,
            "--reason",
            "the registry refused it",
            "--json",
        ])
    };
    let out = clear(&ids[0]).ok().json();
    assert_eq!(
        (&out["digest"], &out["by"], &out["request_id"]),
        (
            &Value::from(digest.as_str()),
            &Value::from("alice"),
            &Value::from(ids[0].as_str())
        ),
        "{out}"
    );
    assert_eq!(out["cleared"].as_array().map(Vec::len), Some(1), "{out}");
    assert_eq!(out["cleared"][0]["request_id"], ids[0].as_str(), "{out}");
    let event = a.tagpin.wait_for_audit(|e| e["action"] == "claim_cleared");
    assert_eq!(event["cleared"], ids[0].as_str(), "{event}");
    let listed = a.cli(&["claims", "list", "--json"]).ok().json();
    assert_eq!(request_ids(&listed["deletes"]), [ids[1].clone()], "{listed}");
    let r = a.push(&img, "v2");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(detail(&r)["reason"], "delete_in_flight");
    assert_eq!(a.upstream("v2"), None, "nothing was forwarded");

    let again = clear(&ids[0]);
    assert_eq!(again.code, 2);
    assert!(
        again.stderr.contains("404") && again.stderr.contains("no delete record"),
        "{}",
        again.stderr
    );

    let out = clear(&ids[1]).ok().json();
    assert_eq!(out["request_id"], ids[1].as_str(), "{out}");
    assert_eq!(a.push(&img, "v2").status, 201);
    assert_eq!(a.upstream("v2"), Some(digest.clone()));
    let listed = a.cli(&["claims", "list", "--json"]).ok().json();
    assert!(listed["deletes"].as_array().unwrap().is_empty(), "{listed}");
}

#[test]
fn clearing_one_of_two_lost_pushes_leaves_the_other_holding_the_tag() {
    let lost = Image::random(1103, 64);
    let other = lost.variant("other");
    let data = tempfile::tempdir().unwrap();
    // Two pushes of one digest whose answers were lost (the second a client's retry, or
    // the same push through another replica): each holds a record of its own.
    with_lost_answers(data.path(), |t| {
        for _ in 0..2 {
            let r = lost.put_manifest(t.addr, REPO, "v1", "");
            assert_eq!(r.status, 504, "{}", r.text());
        }
    });
    let a = Admin::start(Registry::start(), data);

    let listed = a.cli(&["claims", "list", "--json"]).ok().json();
    let ids = request_ids(&listed["claims"]);
    assert_eq!(ids.len(), 2, "{listed}");
    assert_ne!(ids[0], ids[1], "{listed}");
    for c in listed["claims"].as_array().unwrap() {
        assert_eq!(
            (&c["tag"], &c["digest"]),
            (&Value::from("v1"), &Value::from(lost.digest()))
        );
    }
    let table = a.cli(&["claims", "list"]).ok().stdout;
    println!("$ tagpin claims list\n{table}");
    assert!(table.starts_with("WRITES (2)\n"), "{table}");
    for id in &ids {
        assert!(table.lines().any(|row| row.ends_with(id.as_str())), "{id}: {table}");
    }

    // The first request is known to have failed: its record goes, and only its.
    let reason = "upstream answered 504 and does not hold the tag";
    let tag = format!("{REPO}:v1");
    let out = a
        .cli(&[
            "claims",
            "clear",
            &tag,
            "--request",
            &ids[0],
            "--reason",
            reason,
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(out["request_id"], ids[0].as_str(), "{out}");
    assert_eq!(out["cleared"].as_array().map(Vec::len), Some(1), "{out}");
    assert_eq!(out["cleared"][0]["request_id"], ids[0].as_str(), "{out}");
    let event = a.tagpin.wait_for_audit(|e| e["action"] == "claim_cleared");
    assert_eq!(
        (&event["cleared"], &event["tag"], &event["attempted_digest"]),
        (
            &Value::from(ids[0].as_str()),
            &Value::from("v1"),
            &Value::from(lost.digest())
        ),
        "{event}"
    );

    // The second may still land: it keeps holding the tag.
    let listed = a.cli(&["claims", "list", "--json"]).ok().json();
    assert_eq!(request_ids(&listed["claims"]), [ids[1].clone()], "{listed}");
    let r = a.push(&other, "v1");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(detail(&r)["state"], "claimed");
    assert_eq!(detail(&r)["pinned_digest"], lost.digest());
    assert_eq!(a.upstream("v1"), None, "nothing was forwarded");
    let again = a.cli(&["claims", "clear", &tag, "--request", &ids[0], "--reason", reason]);
    assert_eq!(again.code, 2, "{}", again.stdout);
    assert!(again.stderr.contains("no write record"), "{}", again.stderr);

    // Once the second is known to have failed too, the tag is free.
    let out = a
        .cli(&["claims", "clear", &tag, "--request", &ids[1], "--reason", reason])
        .ok();
    assert!(
        out.stdout
            .starts_with(&format!("cleared the write record of request {} on {tag} ", ids[1])),
        "{}",
        out.stdout
    );
    let out = a.cli(&["claims", "list"]).ok();
    assert!(out.stdout.starts_with("no write or delete records"), "{}", out.stdout);
    let r = a.push(&other, "v1");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(a.upstream("v1"), Some(other.digest()));
}

#[test]
fn clearing_needs_a_request_and_a_reason_and_the_api_a_token() {
    let a = Admin::start(Registry::start(), tempfile::tempdir().unwrap());
    let tag = format!("{REPO}:v1");
    let digest = format!("{REPO}@sha256:{}", "1".repeat(64));
    for target in [&tag, &digest] {
        let out = a.cli(&["claims", "clear", target, "--reason", "lost"]);
        assert_eq!(out.code, 2, "{}", out.stdout);
        assert!(out.stderr.contains("--request"), "{}", out.stderr);
    }
    let out = a.cli(&["claims", "clear", &tag, "--request", "", "--reason", "lost"]);
    assert_eq!(out.code, 2, "{}", out.stdout);
    assert!(out.stderr.contains("--request"), "{}", out.stderr);
    let out = a.cli(&["claims", "clear", &tag, "--request", "r-1"]);
    assert_eq!(out.code, 2, "{}", out.stdout);
    assert!(out.stderr.contains("--reason"), "{}", out.stderr);
    let out = a.cli(&["claims", "clear", &tag, "--request", "r-1", "--reason", " "]);
    assert_eq!(out.code, 2, "{}", out.stdout);
    // Both are checked before the token: no token file, the same error.
    let out = cli(
        &["claims", "clear", &tag, "--reason", "lost"],
        a.addr,
        Path::new("/nonexistent/token"),
    );
    assert_eq!(out.code, 2, "{}", out.stdout);
    assert!(out.stderr.contains("--request"), "{}", out.stderr);

    // The API asks for both too, whatever the client.
    let bearer = format!("Bearer {TOKEN}");
    let post = |body: String| {
        request(
            a.addr,
            "POST",
            "/admin/v1/claims/clear",
            &[("Authorization", &bearer), ("Content-Type", "application/json")],
            body.as_bytes(),
        )
    };
    let r = post(format!(r#"{{"repository":"{REPO}","tag":"v1","request_id":"r-1"}}"#));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("needs a reason"), "{}", r.text());
    let r = post(format!(r#"{{"repository":"{REPO}","tag":"v1","reason":"lost"}}"#));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("needs a request_id"), "{}", r.text());
    let r = post(format!(
        r#"{{"repository":"{REPO}","digest":"sha256:{}","request_id":"","reason":"lost"}}"#,
        "1".repeat(64)
    ));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("needs a request_id"), "{}", r.text());
    let r = post(format!(
        r#"{{"repository":"{REPO}","tag":"v1","request_id":"r-1","reason":"lost"}}"#
    ));
    assert_eq!(r.status, 404, "{}", r.text());

    for (method, path) in [("GET", "/admin/v1/claims"), ("POST", "/admin/v1/claims/clear")] {
        let r = request(a.addr, method, path, &[], b"");
        assert_eq!(r.status, 401, "{method} {path}: {}", r.text());
        assert_eq!(r.oci_code(), "UNAUTHORIZED");
    }
    let r = request(a.addr, "GET", "/admin/v1/claims", &[("Authorization", &bearer)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!({"claims": [], "deletes": []}));
}
