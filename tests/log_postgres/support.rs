//! What the log tests on PostgreSQL share: signing keys from `tagpin log keygen`, a
//! site (upstream, admin secrets, database) to start replicas on, the log read through the
//! admin API, `tagpin log verify` through the API and offline, and the replay of entries.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::Value;

use crate::common::admin::{AdminSecrets, CliOut, TOKEN};
use crate::common::postgres::{fresh_database, shared};
use crate::common::{request, Image, Registry, Resp, Tagpin};

pub const REPO: &str = "team/app";

/// A signing key written by `tagpin log keygen`, and the verifier key it printed.
pub struct Key {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub vkey: String,
}

impl Key {
    pub fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.key");
        let out = crate::common::log_api::tagpin_cli(&["log", "keygen", name, "--out", path.to_str().unwrap()]);
        assert_eq!(out.code, 0, "keygen: {out:?}");
        let vkey = out.stdout.trim().to_owned();
        assert!(vkey.starts_with(&format!("{name}+")), "the verifier key line: {vkey:?}");
        Self { _dir: dir, path, vkey }
    }

    pub fn flags(&self) -> Vec<String> {
        vec!["--log-signing-key".into(), self.path.display().to_string()]
    }
}

/// An upstream registry, the admin secrets and a database of the shared server.
pub struct Site {
    pub registry: Registry,
    pub secrets: AdminSecrets,
    pub db: String,
    pub url: String,
    pub base: Image,
}

impl Site {
    pub fn new(prefix: &str) -> Self {
        let db = fresh_database(prefix);
        Self {
            registry: Registry::start(),
            secrets: AdminSecrets::new(),
            url: shared().url(&db),
            db,
            base: Image::random(1_919, 64),
        }
    }

    /// A replica on the site's database with the admin API, signing with `key` if any.
    pub fn replica(&self, key: Option<&Key>) -> Tagpin {
        self.replica_on(&self.url, key)
    }

    /// A replica like [`Site::replica`] on the database at `url`.
    pub fn replica_on(&self, url: &str, key: Option<&Key>) -> Tagpin {
        let mut flags = self.secrets.flags();
        flags.extend(key.map(Key::flags).unwrap_or_default());
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let t = Tagpin::start_on_database(&self.registry.url(), url, &flags);
        self.base.push_blobs(t.addr, REPO, "");
        t
    }

    pub fn sql(&self) -> ::postgres::Client {
        shared().connect(&self.db)
    }

    /// Push a fresh variant to `tag` through `addr`; the status and the variant's digest.
    pub fn push(&self, addr: SocketAddr, tag: &str, note: &str) -> (u16, String) {
        let img = self.base.variant(note);
        (img.put_manifest(addr, REPO, tag, "").status, img.digest())
    }

    /// `tagpin log verify ARGS --json` through the admin API at `admin`.
    pub fn verify(&self, admin: SocketAddr, args: &[&str]) -> (i32, Value) {
        let mut all = vec!["log", "verify", "--json"];
        all.extend_from_slice(args);
        json_verdict(self.secrets.cli(admin, &all))
    }

    /// `tagpin log verify ARGS --json --database-url URL`: offline, no server asked.
    pub fn verify_offline(&self, args: &[&str]) -> (i32, Value) {
        let mut all = vec!["log", "verify", "--json", "--database-url", &self.url];
        all.extend_from_slice(args);
        json_verdict(crate::common::log_api::tagpin_cli(&all))
    }
}

pub fn json_verdict(out: CliOut) -> (i32, Value) {
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"));
    (out.code, v)
}

/// The problem `log verify --json` reported, asserting it exited 1 and said not ok.
pub fn problem(verdict: (i32, Value), what: &str) -> String {
    let (code, v) = verdict;
    assert_eq!((code, &v["ok"]), (1, &Value::Bool(false)), "{what}: {v}");
    eprintln!("{what}: {v}");
    v["problem"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no problem named: {v}"))
        .to_owned()
}

pub fn admin_get(admin: SocketAddr, target: &str) -> Resp {
    request(
        admin,
        "GET",
        target,
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        b"",
    )
}

/// The checkpoint text served at `admin`.
pub fn checkpoint(admin: SocketAddr) -> String {
    let r = admin_get(admin, "/admin/v1/log/checkpoint");
    assert_eq!(r.status, 200, "checkpoint: {}", r.text());
    r.text()
}

/// A checkpoint's size and root (of a signed or an unsigned note).
pub fn size_and_root(note: &str) -> (u64, [u8; 32]) {
    let lines: Vec<&str> = note.lines().collect();
    assert!(lines.len() >= 3, "a checkpoint has origin, size and root: {note:?}");
    let size = lines[1].parse().unwrap_or_else(|_| panic!("size line of {note:?}"));
    (size, hash32(lines[2]))
}

pub fn hash32(b64: &str) -> [u8; 32] {
    B64.decode(b64)
        .ok()
        .and_then(|v| v.try_into().ok())
        .unwrap_or_else(|| panic!("not a base64 SHA-256 hash: {b64:?}"))
}

/// Entries `0..size` as served, page by page; each line's `leaf` decoded.
pub fn entries(admin: SocketAddr, size: u64) -> Vec<(Value, Vec<u8>)> {
    let mut out: Vec<(Value, Vec<u8>)> = Vec::new();
    while (out.len() as u64) < size {
        let start = out.len();
        let r = admin_get(admin, &format!("/admin/v1/log/entries?start={start}&end={size}"));
        assert_eq!(r.status, 200, "entries from {start}: {}", r.text());
        let before = out.len();
        for line in r.text().lines().filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("entry line ({e}): {line}"));
            let leaf = B64.decode(v["leaf"].as_str().expect("leaf")).expect("leaf is base64");
            out.push((v, leaf));
        }
        assert!(out.len() > before, "an entries page from {start} with no line");
    }
    out
}

/// The served inclusion or consistency proof's hashes.
pub fn proof(admin: SocketAddr, query: &str) -> Vec<[u8; 32]> {
    let r = admin_get(admin, &format!("/admin/v1/log/proof/{query}"));
    assert_eq!(r.status, 200, "proof {query}: {}", r.text());
    r.json()["hashes"]
        .as_array()
        .unwrap_or_else(|| panic!("no hashes: {}", r.text()))
        .iter()
        .map(|h| hash32(h.as_str().expect("a base64 string")))
        .collect()
}

/// Replay entries into tag -> digest, checking each entry's `previous` as it goes.
pub fn replay(entries: &[(Value, Vec<u8>)]) -> BTreeMap<(String, String), String> {
    let mut tags = BTreeMap::new();
    for (e, _) in entries {
        let key = (
            e["repository"].as_str().unwrap().to_owned(),
            e["tag"].as_str().unwrap().to_owned(),
        );
        let digest = e["digest"].as_str().unwrap().to_owned();
        let previous = tags.insert(key.clone(), digest);
        if e["event"] != "genesis" {
            assert_eq!(
                e["previous"].as_str(),
                previous.as_deref(),
                "entry {}: previous",
                e["index"]
            );
        }
    }
    tags
}

/// Every pin the database holds, as tag -> digest.
pub fn pins_in(db: &mut ::postgres::Client) -> BTreeMap<(String, String), String> {
    db.query("SELECT repository, tag, digest FROM pins", &[])
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect()
}

/// Wait until every replica serves the same checkpoint; returns it.
pub fn agreed_checkpoint(admins: &[SocketAddr], size: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let all: Vec<String> = admins.iter().map(|a| checkpoint(*a)).collect();
        if all.iter().all(|c| *c == all[0]) && size_and_root(&all[0]).0 == size {
            return all[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "the replicas never agreed on size {size}: {all:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run `f(i)` for `0..n` at once (released together by a barrier); the results in order.
pub fn race<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let barrier = Barrier::new(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (f, barrier) = (&f, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    f(i)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The fields of a leaf, in the order the leaf bytes hold them.
pub const LEAF_FIELDS: [&str; 8] = [
    "index",
    "time",
    "repository",
    "tag",
    "digest",
    "previous",
    "event",
    "by",
];

/// A served entry line agrees with its leaf bytes, and the leaf holds its fields in the
/// documented order.
pub fn check_entry(i: usize, line: &Value, leaf: &[u8]) {
    let decoded: Value = serde_json::from_slice(leaf).unwrap_or_else(|e| panic!("leaf {i} is not JSON: {e}"));
    assert_eq!(decoded["index"], i as u64, "leaf {i}: {decoded}");
    assert_eq!(line["index"], i as u64, "line {i}: {line}");
    for (k, v) in decoded.as_object().unwrap() {
        assert_eq!(&line[k], v, "line {i} field {k}: {line}");
    }
    let text = std::str::from_utf8(leaf).unwrap();
    let at: Vec<usize> = LEAF_FIELDS
        .iter()
        .map(|f| {
            text.find(&format!("\"{f}\":"))
                .unwrap_or_else(|| panic!("leaf {i} lacks {f}: {text}"))
        })
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "leaf {i}'s field order: {text}");
    let time = regex::Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$").unwrap();
    assert!(
        time.is_match(decoded["time"].as_str().unwrap_or("")),
        "leaf {i}'s time: {text}"
    );
    let adopted = decoded["event"] == "adopted";
    assert_eq!(
        decoded.get("source").is_some(),
        adopted,
        "leaf {i}: source only on adopted: {text}"
    );
}

/// A site with one signing replica and `tags` tags pushed: `t0`, `t1`, …
pub fn signed_site(prefix: &str, tags: usize) -> (Site, Key, Tagpin) {
    let site = Site::new(prefix);
    let key = Key::new("log.example.test");
    let replica = site.replica(Some(&key));
    for i in 0..tags {
        assert_eq!(site.push(replica.addr, &format!("t{i}"), &format!("t{i}")).0, 201);
    }
    (site, key, replica)
}

/// The checkpoint served at `admin`, saved to a file an auditor keeps.
pub fn save_checkpoint(admin: SocketAddr) -> (String, tempfile::NamedTempFile) {
    let note = checkpoint(admin);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &note).unwrap();
    (note, file)
}

pub fn path_str(f: &tempfile::NamedTempFile) -> &str {
    f.path().to_str().unwrap()
}

/// The SQL of schema versions 1 to 4, as the previous version applied them.
const SCHEMA_4: [&str; 4] = [
    include_str!("../../src/store/postgres/migrations/0001_init.sql"),
    include_str!("../../src/store/postgres/migrations/0002_writes_per_request.sql"),
    include_str!("../../src/store/postgres/migrations/0003_tag_notes.sql"),
    include_str!("../../src/store/postgres/migrations/0004_notify_triggers.sql"),
];

/// Make `db` a database of schema 4 holding `pins` (repository, tag, source, history;
/// the digest is the last history entry's) as the previous version wrote them; returns
/// them as tag -> digest.
pub fn schema_4_with_pins(
    db: &mut ::postgres::Client,
    pins: &[(&str, &str, &str, Value)],
) -> BTreeMap<(String, String), String> {
    for (version, sql) in (1..).zip(SCHEMA_4) {
        let mut tx = db.transaction().unwrap();
        if version == 1 {
            tx.batch_execute("CREATE TABLE tagpin_schema (version INT PRIMARY KEY, applied_at BIGINT NOT NULL)")
                .unwrap();
        }
        tx.batch_execute(sql).unwrap();
        tx.execute("INSERT INTO tagpin_schema VALUES ($1, 1700000000)", &[&version])
            .unwrap();
        tx.commit().unwrap();
    }
    let mut held = BTreeMap::new();
    for (repo, tag, source, history) in pins {
        let digest = history.as_array().and_then(|h| h.last()).unwrap()["digest"]
            .as_str()
            .unwrap();
        db.execute(
            "INSERT INTO pins (repository, tag, digest, source, pinned_at, history)
             VALUES ($1, $2, $3, $4, 1700000000, $5)",
            &[repo, tag, &digest, source, history],
        )
        .unwrap();
        held.insert((repo.to_string(), tag.to_string()), digest.to_owned());
    }
    held
}
