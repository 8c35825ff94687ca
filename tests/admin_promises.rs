//! End-to-end: what README's "Operating tagpin" promises about the admin API beyond the
//! commands' happy paths. The admin API is only on its own listener; an export that is
//! cut short fails instead of passing for a backup; listings and exports page past the
//! API's 1,000 pins a page; release audit events name the token that acted.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::admin::{AdminSecrets, TOKEN};
use common::*;
use serde_json::Value;
use tagpin::oci::{Digest, Repository, Tag};
use tagpin::store::{Exported, Pin, PinSource};

/// Pins imported for the paging tests: more than one page of the API (1,000).
const MANY: usize = 1_100;

/// A stack with the admin API on, and its admin address.
fn admin_stack() -> (Stack, AdminSecrets, SocketAddr) {
    let secrets = AdminSecrets::new();
    let flags = secrets.flags();
    let stack = Stack::start(&flags.iter().map(String::as_str).collect::<Vec<_>>());
    let admin = stack.tagpin.admin_addr();
    (stack, secrets, admin)
}

/// An export file of `MANY` pins over two repositories, and their `repo:tag` names.
fn many_pins(dir: &std::path::Path) -> (std::path::PathBuf, Vec<String>) {
    let mut lines = String::new();
    let mut names = Vec::new();
    for n in 0..MANY {
        let repo = if n % 2 == 0 { "many/even" } else { "many/odd" };
        let digest = Digest::parse(&format!("sha256:{n:064x}")).unwrap();
        let pin = Pin::now(digest, PinSource::Push);
        let tag = format!("t{n:05}");
        let e = Exported::of(Repository::parse(repo).unwrap(), Tag::parse(&tag).unwrap(), &pin);
        lines.push_str(&serde_json::to_string(&e).unwrap());
        lines.push('\n');
        names.push(format!("{repo}:{tag}"));
    }
    names.sort();
    let file = dir.join("many.jsonl");
    std::fs::write(&file, lines).unwrap();
    (file, names)
}

/// `repo:tag` of each JSON line of `out`, sorted.
fn names_of(out: &str) -> Vec<String> {
    let mut names: Vec<String> = out
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            format!("{}:{}", v["repository"].as_str().unwrap(), v["tag"].as_str().unwrap())
        })
        .collect();
    names.sort();
    names
}

/// The admin API's paths sent to the registry listener are not admin requests there,
/// with the admin token or without: a 404 of the registry port (the route classifier
/// knows no such path), never the API's data, and a release or import sent there changes
/// nothing. Catches an admin router mounted on (or falling through to) the registry port.
#[test]
fn admin_paths_are_never_answered_on_the_registry_port() {
    let (stack, secrets, admin) = admin_stack();
    let image = Image::random(7301, 1000);
    image.push_blobs(stack.tagpin.addr, "team/app", "");
    assert_eq!(image.put_manifest(stack.tagpin.addr, "team/app", "1.0", "").status, 201);
    let digest = image.digest();
    let bearer = format!("Bearer {TOKEN}");
    let import_line = serde_json::to_string(&Exported::of(
        Repository::parse("team/smuggled").unwrap(),
        Tag::parse("1.0").unwrap(),
        &Pin::now(Digest::parse(&digest).unwrap(), PinSource::Push),
    ))
    .unwrap();
    let release = br#"{"repository":"team/app","tag":"1.0","reason":"sneaky","ttl_seconds":900}"#;
    let asks: [(&str, &str, &[u8]); 8] = [
        ("GET", "/admin/v1/pins", b""),
        ("GET", "/admin/v1/pin?repository=team/app&tag=1.0", b""),
        ("GET", "/admin/v1/export", b""),
        ("GET", "/admin/v1/claims", b""),
        ("POST", "/admin/v1/releases", release),
        ("DELETE", "/admin/v1/releases?repository=team/app&tag=1.0", b""),
        ("POST", "/admin/v1/import", import_line.as_bytes()),
        ("POST", "/admin/v1/seed", b""),
    ];
    for auth in ["", bearer.as_str()] {
        for (method, path, body) in asks {
            let headers: Vec<(&str, &str)> = if auth.is_empty() {
                vec![("Content-Type", "application/json")]
            } else {
                vec![("Authorization", auth), ("Content-Type", "application/json")]
            };
            let r = request(stack.tagpin.addr, method, path, &headers, body);
            let text = r.text();
            assert_eq!(r.status, 404, "{method} {path} (token: {}): {text}", !auth.is_empty());
            assert!(
                !text.contains(&digest),
                "{method} {path}: admin data on the registry port: {text}"
            );
            assert!(!text.contains("\"pins\""), "{method} {path}: {text}");
        }
    }
    // Nothing the requests asked for happened; the admin listener itself still answers.
    let shown = secrets.pin(admin, "team/app:1.0").expect("the pin");
    assert!(shown["release"].is_null(), "a release was created: {shown}");
    assert_eq!(secrets.pin(admin, "team/smuggled:1.0"), None, "an import was applied");
    assert!(stack
        .tagpin
        .audit_events()
        .iter()
        .all(|e| e["action"] != "release_created" && e["action"] != "imported"));
    let r = request(admin, "GET", "/admin/v1/pins", &[("Authorization", &bearer)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains(&digest));
}

/// `tagpin pins list` and `tagpin export` follow the API's pages past 1,000 pins: an
/// import of 1,100 pins lists and exports all of them, each once. Catches a CLI that
/// stops after the first page, or a cursor that skips or repeats a pin at the page edge.
#[test]
fn listing_and_export_page_past_a_thousand_pins() {
    let (_stack, secrets, admin) = admin_stack();
    let dir = tempfile::tempdir().unwrap();
    let (file, names) = many_pins(dir.path());
    let out = secrets.cli(admin, &["import", file.to_str().unwrap(), "--json"]).ok();
    assert_eq!(out.json()["imported"], MANY as u64, "{}", out.stdout);

    let listed = secrets.cli(admin, &["pins", "list", "--json"]).ok();
    assert_eq!(names_of(&listed.stdout), names, "pins list");
    let one_repo = secrets
        .cli(admin, &["pins", "list", "--repository", "many/odd", "--json"])
        .ok();
    assert_eq!(names_of(&one_repo.stdout).len(), MANY / 2);

    let export = secrets.cli(admin, &["export"]).ok();
    assert_eq!(names_of(&export.stdout), names, "export");
    assert!(
        export.stderr.contains(&format!("exported {MANY} pins")),
        "{}",
        export.stderr
    );
}

/// A relay to `target` that passes the answer's first `limit` bytes, then closes both
/// connections; `cut` is set once it has cut an answer that had more to come.
fn cutting_relay(target: SocketAddr, limit: usize, cut: Arc<AtomicBool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        // One CLI run makes one connection; a few more are allowed, not waited for.
        for client in listener.incoming().take(4) {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(target) else { return };
            let (mut up_in, mut up_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut up_in, &mut up_out);
            });
            let (mut from, mut to) = (server, client);
            let (mut passed, mut buf) = (0, vec![0u8; 8192]);
            loop {
                let room = (limit - passed).min(buf.len());
                if room == 0 {
                    // The limit is reached: cut only if the answer goes on.
                    if from.read(&mut buf[..1]).map(|n| n > 0).unwrap_or(false) {
                        cut.store(true, Ordering::SeqCst);
                    }
                    break;
                }
                match from.read(&mut buf[..room]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        passed += n;
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
        }
    });
    addr
}

/// An export whose connection is cut mid-stream exits 2 with one line saying so, and
/// what it wrote is visibly short, never all the pins. Catches a CLI that takes a cut
/// body for the end of the export and exits 0 with a partial backup.
#[test]
fn an_export_cut_short_exits_2() {
    let (_stack, secrets, admin) = admin_stack();
    let dir = tempfile::tempdir().unwrap();
    let (file, names) = many_pins(dir.path());
    secrets.cli(admin, &["import", file.to_str().unwrap()]).ok();
    let whole = secrets.cli(admin, &["export"]).ok();
    assert_eq!(names_of(&whole.stdout).len(), MANY);

    // Cut inside the body: past the headers and the first lines, well before the end.
    let cut = Arc::new(AtomicBool::new(false));
    let relay = cutting_relay(admin, whole.stdout.len() / 2, Arc::clone(&cut));
    let out = secrets.cli(relay, &["export"]);
    assert!(
        cut.load(Ordering::SeqCst),
        "the relay cut nothing: the test exercised nothing"
    );
    assert_eq!(out.code, 2, "a cut export must fail: {out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("cut off"), "{}", out.stderr);
    assert!(!out.stderr.contains("exported"), "{}", out.stderr);
    let written = names_of(&out.stdout);
    assert!(written.len() < MANY, "a cut export wrote every pin");
    assert!(written.iter().all(|n| names.binary_search(n).is_ok()));
    println!("cut export: {}", out.stderr.trim());
}

/// `tagpin release` and `tagpin release --cancel` are audited under the token's name:
/// `release_created` and `release_cancelled` carry `user` `admin:alice` (the token file
/// says `alice:<token>`), and the release records `by` `alice`. Catches an admin event
/// that names no one, or names the client address instead of the token.
#[test]
fn release_audit_events_name_the_token() {
    let (stack, secrets, admin) = admin_stack();
    let image = Image::random(7302, 1000);
    image.push_blobs(stack.tagpin.addr, "team/app", "");
    assert_eq!(image.put_manifest(stack.tagpin.addr, "team/app", "1.0", "").status, 201);

    secrets
        .cli(admin, &["release", "team/app:1.0", "--reason", "CVE-2024-1 rebuild"])
        .ok();
    let created = stack.tagpin.wait_for_audit(|e| e["action"] == "release_created");
    assert_eq!(created["user"], "admin:alice", "{created}");
    assert_eq!(created["by"], "alice", "{created}");
    assert_eq!(
        (created["repository"].as_str(), created["tag"].as_str()),
        (Some("team/app"), Some("1.0")),
        "{created}"
    );

    secrets.cli(admin, &["release", "--cancel", "team/app:1.0"]).ok();
    let cancelled = stack.tagpin.wait_for_audit(|e| e["action"] == "release_cancelled");
    assert_eq!(cancelled["user"], "admin:alice", "{cancelled}");
    assert_eq!(
        (cancelled["repository"].as_str(), cancelled["tag"].as_str()),
        (Some("team/app"), Some("1.0")),
        "{cancelled}"
    );
    for e in stack.tagpin.audit_events() {
        assert!(!e.to_string().contains(TOKEN), "an audit event carries the token: {e}");
    }
}
