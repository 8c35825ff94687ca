//! `tagpin import` at sizes that matter, on the store `TAGPIN_TEST_STORE` names (sled by
//! default, PostgreSQL in the suite's second pass): a file larger than the memory the
//! process may take still imports (it is streamed, never held whole); a conflict in the
//! very last line writes nothing; an online import racing pushes to the same tags never
//! leaves a tag bound two ways; a tagpin killed while importing finishes the import when
//! it starts again (sled) or has imported nothing (PostgreSQL), as the README says.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::admin::{AdminSecrets, CliOut};
use common::image::sha256;
use common::log_api::LogApi;
use common::procs::store_url;
use common::*;
use serde_json::json;

/// One record as `tagpin export` writes it: pinned by push.
fn record(repo: &str, tag: &str, digest: &str) -> String {
    json!({
        "repository": repo,
        "tag": tag,
        "digest": digest,
        "source": "push",
        "pinned_at": 1_700_000_000,
        "history": [{"at": 1_700_000_000, "event": "push", "digest": digest, "request_id": format!("req-{tag}")}],
    })
    .to_string()
}

fn digest(seed: &str, n: usize) -> String {
    sha256(format!("{seed}:{n}").as_bytes())
}

/// `n` records of `repo`, tags `t000000`…, one history entry each, as lines.
fn records(repo: &str, n: usize, seed: &str) -> Vec<String> {
    (0..n)
        .map(|i| record(repo, &format!("t{i:06}"), &digest(seed, i)))
        .collect()
}

fn write_file(dir: &Path, name: &str, lines: &[String]) -> String {
    let path = dir.join(name);
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The CLI under test (`TAGPIN_TEST_BIN` for another build), with `args`, its address
/// space limited to `limit` bytes when given.
fn cli(args: &[&str], limit: Option<u64>) -> CliOut {
    let bin = std::env::var_os("TAGPIN_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_tagpin").into());
    let mut cmd = match limit {
        None => Command::new(bin),
        Some(bytes) => {
            let mut c = Command::new(procs::require_binary("prlimit", "util-linux"));
            c.arg(format!("--as={bytes}")).arg(bin);
            c
        }
    };
    let out = cmd
        .args(args)
        // Two malloc arenas: glibc otherwise reserves 64 MiB of address space per thread
        // that allocates, which the limit would count though it is never used.
        .env("MALLOC_ARENA_MAX", "2")
        .env_remove("TAGPIN_ADMIN_TOKEN")
        .env_remove("TAGPIN_ADMIN_URL")
        .env_remove("TAGPIN_DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .expect("run the tagpin CLI");
    CliOut {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The offline store flags for the store `TAGPIN_TEST_STORE` names, standing for `dir`.
fn offline_store(dir: &Path) -> Vec<String> {
    match store_url(dir) {
        Some(url) => vec!["--database-url".into(), url],
        None => vec!["--data-dir".into(), dir.display().to_string()],
    }
}

fn with(base: &[&str], extra: &[String]) -> Vec<String> {
    base.iter()
        .map(|s| s.to_string())
        .chain(extra.iter().cloned())
        .collect()
}

fn run(args: &[String], limit: Option<u64>) -> CliOut {
    cli(&args.iter().map(String::as_str).collect::<Vec<_>>(), limit)
}

/// A tagpin with the admin API on, in front of its own upstream.
struct Admin {
    stack: Stack,
    secrets: AdminSecrets,
}

impl Admin {
    fn start() -> Self {
        let secrets = AdminSecrets::new();
        let flags = secrets.flags();
        let stack = Stack::start(&flags.iter().map(String::as_str).collect::<Vec<_>>());
        Self { stack, secrets }
    }

    fn restart(&mut self) {
        let flags = self.secrets.flags();
        self.stack.tagpin = Tagpin::start(
            &self.stack.registry.url(),
            self.stack.data.path(),
            &flags.iter().map(String::as_str).collect::<Vec<_>>(),
        );
    }

    fn cli(&self, args: &[&str]) -> CliOut {
        self.secrets.cli(self.stack.tagpin.admin_addr(), args)
    }

    fn log(&self) -> LogApi {
        LogApi::new(self.stack.tagpin.admin_addr())
    }

    fn log_size(&self) -> u64 {
        self.log().checkpoint().size
    }

    /// Every pinned tag and its digest.
    fn pinned(&self) -> std::collections::BTreeMap<String, String> {
        self.log().pinned()
    }
}

/// Pins in the file of the memory test, and the address space the import may take: the
/// streaming import fits with room to spare; reading the file whole and writing it in one
/// transaction does not (shown with `TAGPIN_TEST_BIN=/work/old-bin/tagpin`, which aborts
/// for want of memory at 10,000 pins under this limit, at about 430 MiB peak for 30,000).
const MANY: usize = 10_000;
const LIMIT: u64 = 256 << 20;

#[test]
fn an_import_larger_than_the_memory_allowed_streams_through() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "many.jsonl", &records("many/app", MANY, "many"));
    let size = std::fs::metadata(&file).unwrap().len();
    let data = dir.path().join("data");
    let store = offline_store(&data);
    let out = run(&with(&["import", &file], &store), Some(LIMIT));
    println!(
        "import of {size} bytes under a {LIMIT}-byte address space: exit {}\n{}{}",
        out.code, out.stdout, out.stderr
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        format!("imported {MANY} pins; 0 already held unchanged")
    );
    let export = run(&with(&["export"], &store), None);
    assert_eq!(export.code, 0, "{export:?}");
    assert_eq!(export.stdout.lines().count(), MANY);
}

#[test]
fn a_conflict_in_the_last_line_writes_nothing() {
    let mut a = Admin::start();
    let held = Image::random(7101, 500);
    held.push_blobs(a.stack.tagpin.addr, "team/app", "");
    assert_eq!(
        held.put_manifest(a.stack.tagpin.addr, "team/app", "held", "").status,
        201
    );
    let dir = tempfile::tempdir().unwrap();
    // More records than one batch of either store, then the one that conflicts.
    let new = records("team/app", 2_500, "new");
    let held_elsewhere = record("team/app", "held", &digest("other", 0));
    let twice = record("team/app", "t000000", &digest("other", 1));
    let files = [
        ("held.jsonl", held_elsewhere, "team/app:held is held to"),
        (
            "twice.jsonl",
            twice,
            "team/app:t000000 appears twice with different digests",
        ),
    ];
    let (pins, size) = (a.pinned(), a.log_size());
    assert_eq!(pins.len(), 1);
    for (name, last, says) in &files {
        let mut lines = new.clone();
        lines.push(last.clone());
        let file = write_file(dir.path(), name, &lines);
        let out = a.cli(&["import", &file]);
        println!("online, {name}: exit {}\n{}", out.code, out.stderr);
        assert_eq!(out.code, 1, "{out:?}");
        assert!(
            out.stderr.contains("1 conflicting record(s), nothing written"),
            "{out:?}"
        );
        assert!(out.stderr.contains(says), "{out:?}");
        assert_eq!(a.pinned(), pins, "{name}: a pin was written");
        assert_eq!(a.log_size(), size, "{name}: the log grew");
    }
    // The same offline, once tagpin has stopped.
    a.stack.tagpin.terminate();
    let store = offline_store(a.stack.data.path());
    for (name, _, says) in &files {
        let file = dir.path().join(name).display().to_string();
        let out = run(&with(&["import", &file], &store), None);
        println!("offline, {name}: exit {}\n{}", out.code, out.stderr);
        assert_eq!(out.code, 1, "{out:?}");
        assert!(out.stderr.contains(says), "{out:?}");
    }
    let export = run(&with(&["export"], &store), None);
    assert_eq!(export.stdout.lines().count(), 1, "{export:?}");
    a.restart();
    assert_eq!(a.pinned(), pins);
    assert_eq!(a.log_size(), size, "the log grew");
}

/// `tagpin import FILE` against the admin API at `admin`, on a thread of its own.
fn import_online(secrets: &AdminSecrets, admin: std::net::SocketAddr, file: &str) -> std::thread::JoinHandle<CliOut> {
    let args = vec![
        "import".to_owned(),
        file.to_owned(),
        "--admin-url".to_owned(),
        format!("http://{admin}"),
        "--admin-token-file".to_owned(),
        secrets.token_file().display().to_string(),
    ];
    std::thread::spawn(move || run(&args, None))
}

/// The digest a tag is held to (pinned, or claimed by a push in flight), from the admin API.
fn held_to(a: &Admin, reference: &str) -> Option<String> {
    a.secrets
        .pin(a.stack.tagpin.admin_addr(), reference)
        .map(|p| p["digest"].as_str().unwrap_or_default().to_owned())
}

/// How far a running import has got.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Phase {
    /// Checking its records against the store (sled: they are sorted into their file;
    /// PostgreSQL: its transaction holds the import gate).
    Checking,
    /// Writing pins (sled: the log grew; PostgreSQL: it has inserted pins).
    Writing,
}

/// Whether the import running on `a`'s store has reached `phase`; `log_before` is the
/// log's size before it began.
fn reached(a: &Admin, url: Option<&str>, phase: Phase, log_before: u64) -> bool {
    match (url, phase) {
        (None, Phase::Checking) => std::fs::read_dir(a.stack.data.path()).unwrap().flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("import-") && name.ends_with(".jsonl")
        }),
        (None, Phase::Writing) => a.log_size() > log_before,
        (Some(url), phase) => postgres_import(url, phase == Phase::Writing),
    }
}

/// Whether a PostgreSQL session holds the import gate (and, with `writing`, has inserted
/// pins in its transaction).
fn postgres_import(url: &str, writing: bool) -> bool {
    let mut c = ::postgres::Client::connect(url, ::postgres::NoTls).expect("connect to the test database");
    let row = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_locks g
               WHERE g.locktype = 'advisory' AND g.mode = 'ExclusiveLock' AND g.granted
                 AND g.classid = 1952540516 AND g.objid = 1768779636
                 AND (NOT $1 OR EXISTS (SELECT 1 FROM pg_locks p WHERE p.pid = g.pid
                        AND p.relation = 'pins'::regclass AND p.mode = 'RowExclusiveLock')))",
            &[&writing],
        )
        .unwrap();
    row.get(0)
}

/// Wait (at most a minute) until the import reaches `phase`; `false` when it ended first.
fn wait_for(
    a: &Admin,
    url: Option<&str>,
    phase: Phase,
    log_before: u64,
    import: &std::thread::JoinHandle<CliOut>,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !import.is_finished() {
        if reached(a, url, phase, log_before) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// An online import of 3,000 other tags and then `repo:r0`…`r9`, and pushes of other
/// digests to those ten tags through tagpin, sent 25 ms apart once the import reached
/// `phase`. Checks that each tag ends bound once (the upstream holds what tagpin holds
/// it to), that a push that got 201 means the import wrote nothing, and an import that
/// succeeded means no push landed; returns the import's exit status.
fn race(a: &Admin, repo: &str, phase: Phase) -> i32 {
    const TAGS: usize = 10;
    let (addr, admin) = (a.stack.tagpin.addr, a.stack.tagpin.admin_addr());
    let url = store_url(a.stack.data.path());
    let images: Vec<Image> = (0..TAGS)
        .map(|i| Image::random(7200 + i as u64, 300).variant(repo))
        .collect();
    for img in &images {
        img.push_blobs(addr, repo, "");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut lines = records(&format!("{repo}-filler"), 3_000, repo);
    lines.extend((0..TAGS).map(|i| record(repo, &format!("r{i}"), &digest(repo, i))));
    let file = write_file(dir.path(), "race.jsonl", &lines);
    let log_before = a.log_size();
    let import = import_online(&a.secrets, admin, &file);
    let in_time = wait_for(a, url.as_deref(), phase, log_before, &import);
    let pushes: Vec<_> = images
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, img)| {
            let repo = repo.to_owned();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(25 * i as u64));
                img.put_manifest(addr, &repo, &format!("r{i}"), "").status
            })
        })
        .collect();
    let statuses: Vec<u16> = pushes.into_iter().map(|p| p.join().unwrap()).collect();
    let out = import.join().unwrap();
    println!(
        "{repo}, pushes once {phase:?} ({}): import exit {}, {}{}pushes {statuses:?}",
        if in_time { "in time" } else { "the import had ended" },
        out.code,
        out.stdout,
        out.stderr
    );
    assert!(matches!(out.code, 0 | 1), "{out:?}");
    for (i, img) in images.iter().enumerate() {
        let reference = format!("{repo}:r{i}");
        let upstream = upstream_digest(&a.stack.registry, repo, &format!("r{i}"));
        let held = held_to(a, &reference);
        let (imported, pushed) = (digest(repo, i), img.digest());
        // Whatever the upstream holds is what tagpin holds the tag to.
        if let Some(up) = &upstream {
            assert_eq!(held.as_ref(), Some(up), "{reference}: the upstream and tagpin disagree");
        }
        if statuses[i] == 201 {
            assert_eq!(upstream.as_deref(), Some(pushed.as_str()), "{reference}");
            assert_eq!(out.code, 1, "{reference}: pushed, and the import says it wrote too");
        } else {
            assert_ne!(
                upstream.as_deref(),
                Some(pushed.as_str()),
                "{reference}: refused, yet at the upstream"
            );
        }
        match out.code {
            0 => assert_eq!(held.as_deref(), Some(imported.as_str()), "{reference}"),
            _ => assert_ne!(
                held.as_deref(),
                Some(imported.as_str()),
                "{reference}: written by a conflicting import"
            ),
        }
    }
    match out.code {
        0 => assert_eq!(
            out.stdout.trim(),
            format!("imported {} pins; 0 already held unchanged", 3_000 + TAGS)
        ),
        _ => {
            assert!(out.stderr.contains("nothing written"), "{out:?}");
            assert_eq!(
                held_to(a, &format!("{repo}-filler:t000000")),
                None,
                "a conflicting import wrote"
            );
        }
    }
    if phase == Phase::Writing && in_time {
        // Once the import writes, no write can come between its check and its write.
        assert_eq!(
            out.code, 0,
            "pushes that came after the import began writing made it conflict"
        );
    }
    out.code
}

#[test]
fn an_online_import_racing_pushes_binds_each_tag_once() {
    let a = Admin::start();
    // Pushes while the import checks: they may land first (the import then finds them
    // and writes nothing), or wait for its write and be refused.
    race(&a, "race/checking", Phase::Checking);
    // Pushes while it writes: they wait for it, and are refused.
    race(&a, "race/writing", Phase::Writing);
}

/// The `repository:tag` and event of the log's entries `[start, end)`, read with raw
/// HTTP a page at a time.
fn logged(a: &Admin, start: u64, end: u64) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while (out.len() as u64) < end - start {
        let from = start + out.len() as u64;
        let r = a.log().get(&format!("/admin/v1/log/entries?start={from}&end={end}"));
        assert_eq!(r.status, 200, "{}", r.text());
        let before = out.len();
        for line in r.text().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let reference = format!("{}:{}", v["repository"].as_str().unwrap(), v["tag"].as_str().unwrap());
            out.push((reference, v["event"].as_str().unwrap().to_owned()));
        }
        assert!(out.len() > before, "an empty page of entries");
    }
    out
}

#[test]
fn a_tagpin_killed_while_importing_finishes_the_import_or_has_imported_nothing() {
    let mut a = Admin::start();
    let url = store_url(a.stack.data.path());
    let before = a.log_size();
    let dir = tempfile::tempdir().unwrap();
    // Kill tagpin once part of the import is written (sled: its first batch of 2,000 is
    // in the log; PostgreSQL: its transaction has inserted pins), before all of it is. A
    // machine fast enough to finish first gets a file four times larger.
    let mut n = 3_000;
    let mut attempt = 0;
    let (n, file) = loop {
        attempt += 1;
        let lines = records(&format!("kill/app{attempt}"), n, "kill");
        let file = write_file(dir.path(), &format!("kill{attempt}.jsonl"), &lines);
        let import = import_online(&a.secrets, a.stack.tagpin.admin_addr(), &file);
        let caught = wait_for(&a, url.as_deref(), Phase::Writing, before, &import);
        if caught && (url.is_some() || a.log_size() < before + n as u64) {
            a.stack.tagpin.kill();
            let out = import.join().unwrap();
            println!("import of {n} cut by SIGKILL: exit {}\n{}", out.code, out.stderr);
            assert_eq!(out.code, 2, "{out:?}");
            break (n, file);
        }
        let out = import.join().unwrap();
        assert_eq!(out.code, 0, "{out:?}");
        assert!(attempt < 3, "the import always finished before it could be killed");
        n *= 4;
        a.stack.tagpin.kill();
        a = Admin::start();
    };
    a.restart();
    let repo = format!("kill/app{attempt}");
    match url {
        None => {
            // sled: the next start finished the import before serving.
            assert!(
                a.stack
                    .tagpin
                    .logs()
                    .iter()
                    .any(|l| l.contains("finished an import that was interrupted")),
                "{}",
                a.stack.tagpin.logs().join("\n")
            );
            let size = a.log_size();
            assert_eq!(size, before + n as u64, "one log entry per imported pin");
            let entries = logged(&a, before, size);
            assert!(entries.iter().all(|(_, event)| event == "imported"), "{entries:?}");
            let tags: std::collections::BTreeSet<&String> = entries.iter().map(|(r, _)| r).collect();
            assert_eq!(tags.len(), n, "a tag logged twice");
            for i in [0, n / 2, n - 1] {
                assert_eq!(held_to(&a, &format!("{repo}:t{i:06}")), Some(digest("kill", i)));
            }
        }
        Some(_) => {
            // PostgreSQL: the import's transaction died with its session.
            assert_eq!(a.log_size(), before, "part of an import was committed");
            assert_eq!(held_to(&a, &format!("{repo}:t000000")), None);
            let out = a.cli(&["import", &file]);
            assert_eq!(out.code, 0, "{out:?}");
            assert_eq!(a.log_size(), before + n as u64);
        }
    }
}

/// The bytes the kernel holds unread for the server's end of the loopback connection
/// from `client` to `server`, from `/proc/net/tcp`; `None` while no such socket is seen.
fn unread_by_server(server: std::net::SocketAddr, client: std::net::SocketAddr) -> Option<u64> {
    let port = |field: &str| u16::from_str_radix(field.rsplit(':').next()?, 16).ok();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if port(f[1])? != server.port() || port(f[2])? != client.port() {
            return None;
        }
        u64::from_str_radix(f[4].split(':').nth(1)?, 16).ok()
    })
}

/// Review (streaming import): an online import whose body is still arriving when tagpin
/// is asked to stop, and whose client is still connected when the grace period ends,
/// must write nothing: the body it read is cut short. (Seen on sled: the request's task
/// is dropped with the runtime, so the channel feeding the body to the import closes,
/// which the import reads as the body's end; it then writes the lines it received, and
/// the runtime waits for that blocking write before the process exits.)
#[test]
fn an_online_import_cut_short_by_a_shutdown_writes_nothing() {
    use std::io::Write;
    const SENT: usize = 400;
    let secrets = AdminSecrets::new();
    let mut flags = secrets.flags();
    flags.extend(["--shutdown-grace-ms".to_owned(), "300".to_owned()]);
    let stack = Stack::start(&flags.iter().map(String::as_str).collect::<Vec<_>>());
    let mut a = Admin { stack, secrets };
    let before = a.log_size();
    let admin = a.stack.tagpin.admin_addr();
    // Whole lines, and a length declaring twice as much: the rest never comes.
    let body: String = records("cut/app", SENT, "cut")
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    let mut conn = std::net::TcpStream::connect(admin).unwrap();
    write!(
        conn,
        "POST /admin/v1/import HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
        common::admin::TOKEN,
        2 * body.len()
    )
    .unwrap();
    conn.write_all(body.as_bytes()).unwrap();
    // Stop tagpin once it has read every byte sent (its request is then being served).
    let client = conn.local_addr().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while unread_by_server(admin, client) != Some(0) {
        assert!(Instant::now() < deadline, "tagpin never read the body");
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = a.stack.tagpin.terminate();
    println!("tagpin stopped mid-import: {status}");
    drop(conn);
    a.restart();
    let pinned: Vec<String> = a.pinned().into_keys().filter(|r| r.starts_with("cut/app:")).collect();
    println!("pins of the cut import after the restart: {}", pinned.len());
    assert_eq!(
        pinned.len(),
        0,
        "an import whose body was cut short by a shutdown wrote {} of the {SENT} lines it received",
        pinned.len()
    );
    assert_eq!(a.log_size(), before, "the log grew");
}

/// Review (streaming import): pushes of other tags whose claims were made before an
/// online import began (forwarded, held at a relay on their way to the upstream), and
/// which the upstream applies while the import writes. Nothing conflicts: each push must
/// be answered 201 and pinned, and the import must succeed. (Seen: on sled, a push's
/// settlement, which does not wait for the import, makes the import's batch find the
/// log grown; the import is answered with an error though the store then writes it
/// whole when it reopens. On PostgreSQL, the settlement waits for the log's head, which
/// the import holds to its commit, and is refused once `lock_timeout` passes: the
/// upstream holds the push, its client got an error.)
#[test]
fn pushes_of_other_tags_settling_while_an_import_writes_are_pinned_and_the_import_succeeds() {
    const PUSHES: usize = 16;
    let registry = Registry::start();
    let relay = hold::HoldRelay::start(registry.addr);
    let data = tempfile::tempdir().unwrap();
    let secrets = AdminSecrets::new();
    let flags = secrets.flags();
    let tagpin = Tagpin::start(
        &relay.url(),
        data.path(),
        &flags.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let a = Admin {
        stack: Stack { registry, tagpin, data },
        secrets,
    };
    let (addr, admin) = (a.stack.tagpin.addr, a.stack.tagpin.admin_addr());
    let url = store_url(a.stack.data.path());
    // PostgreSQL: enough that the import still writes `lock_timeout` (5 s) after the
    // pushes settle.
    let pins = if url.is_some() { 100_000 } else { 20_000 };
    // sled: the settlement must land in a batch's preparation; a few rounds, each with
    // pushes of their own, stopping at the first that goes wrong.
    let rounds = if url.is_some() { 1 } else { 3 };
    for round in 0..rounds {
        let repo = format!("held/app{round}");
        let repo = repo.as_str();
        let other = format!("other{round}/app");
        let images: Vec<Image> = (0..PUSHES)
            .map(|i| Image::random(7300 + 100 * round as u64 + i as u64, 300))
            .collect();
        for (i, img) in images.iter().enumerate() {
            img.push_blobs(a.stack.registry.addr, repo, "");
            relay.hold("PUT", &format!("/v2/{repo}/manifests/p{i}"), 1);
        }
        let pushes: Vec<_> = images
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, img)| {
                let repo = repo.to_owned();
                std::thread::spawn(move || img.put_manifest(addr, &repo, &format!("p{i}"), "").status)
            })
            .collect();
        relay.wait_held(PUSHES);
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(dir.path(), "other.jsonl", &records(&other, pins, "other"));
        let log_before = a.log_size();
        let started = Instant::now();
        let import = import_online(&a.secrets, admin, &file);
        let in_time = wait_for(&a, url.as_deref(), Phase::Writing, log_before, &import);
        assert!(in_time, "the import ended before it was seen writing");
        // The upstream gets the pushes, 10 ms apart, while the import writes.
        let requests = relay.requests();
        for i in 0..PUSHES {
            relay.release(i);
            std::thread::sleep(Duration::from_millis(10));
        }
        let statuses: Vec<u16> = pushes.into_iter().map(|p| p.join().unwrap()).collect();
        let out = import.join().unwrap();
        println!(
            "round {round}: import of {pins} in {:?}: exit {}\n{}{}pushes {statuses:?}",
            started.elapsed(),
            out.code,
            out.stdout,
            out.stderr
        );
        println!(
            "after the import: {other}:t000000 held to {:?}, log grew by {}",
            held_to(&a, &format!("{other}:t000000")),
            a.log_size() - log_before
        );
        for (i, img) in images.iter().enumerate() {
            let tag = format!("p{i}");
            assert_eq!(
                upstream_digest(&a.stack.registry, repo, &tag).as_deref(),
                Some(img.digest().as_str()),
                "{repo}:{tag}: the upstream did not apply the push ({requests:?})"
            );
        }
        assert!(
            statuses.iter().all(|s| *s == 201),
            "pushes the upstream applied, of tags the import does not name, were answered {statuses:?}"
        );
        assert_eq!(out.code, 0, "an import that conflicts with nothing failed: {out:?}");
    }
}

/// Review (streaming import): memory stays bounded by the import's own batches, whose
/// size is counted in records, not bytes: pins with long histories (600 entries, about
/// 90 KB a line, far below the 16 MiB a line may take) fill a batch with hundreds of
/// MiB, and the import that streams 10,000 short pins under [`LIMIT`] runs out of memory
/// on 2,500 long ones (a file of about 220 MB).
#[test]
fn an_import_of_pins_with_long_histories_stays_within_the_memory_allowed() {
    const PINS: usize = 2_500;
    const EVENTS: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.jsonl");
    {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for i in 0..PINS {
            let d = digest("long", i);
            let history: Vec<serde_json::Value> = (0..EVENTS)
                .map(|n| json!({"at": 1_700_000_000 + n, "event": "push", "digest": d, "request_id": format!("req-{i}-{n}")}))
                .collect();
            let line = json!({
                "repository": "long/app",
                "tag": format!("t{i:06}"),
                "digest": d,
                "source": "push",
                "pinned_at": 1_700_000_000,
                "history": history,
            });
            writeln!(out, "{line}").unwrap();
        }
    }
    let size = std::fs::metadata(&path).unwrap().len();
    let store = offline_store(&dir.path().join("data"));
    let out = run(&with(&["import", &path.display().to_string()], &store), Some(LIMIT));
    println!(
        "import of {size} bytes ({PINS} pins of {EVENTS} events) under a {LIMIT}-byte address space: exit {}\n{}{}",
        out.code, out.stdout, out.stderr
    );
    if let Ok(files) = std::fs::read_dir(dir.path().join("data")) {
        let names: Vec<_> = files.flatten().map(|e| e.file_name()).collect();
        println!("the data dir after it: {names:?}");
    }
    if out.code != 0 {
        // Whether the store opens again under the same limit (sled finishes an import
        // whose journal was written before it does anything else).
        let again = run(&with(&["export"], &store), Some(LIMIT));
        println!(
            "export under the same limit after it: exit {}, {} lines\n{}",
            again.code,
            again.stdout.lines().count(),
            again.stderr.lines().take(3).collect::<Vec<_>>().join("\n")
        );
    }
    assert_eq!(out.code, 0, "{out:?}");
}

/// Review (streaming import): an online import whose client goes away after whole lines,
/// before the length it declared, writes nothing (the body's end is an error, not the
/// end of the import), and tagpin goes on serving.
#[test]
fn an_online_import_whose_client_goes_away_after_whole_lines_writes_nothing() {
    use std::io::{Read, Write};
    const SENT: usize = 400;
    let a = Admin::start();
    let before = a.log_size();
    let admin = a.stack.tagpin.admin_addr();
    let body: String = records("gone/app", SENT, "gone")
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    let mut conn = std::net::TcpStream::connect(admin).unwrap();
    write!(
        conn,
        "POST /admin/v1/import HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
        common::admin::TOKEN,
        2 * body.len()
    )
    .unwrap();
    conn.write_all(body.as_bytes()).unwrap();
    // Half-close: tagpin sees the body end early, and can still answer.
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    println!("answer to the cut body: {}", answer.lines().next().unwrap_or("(none)"));
    let pinned = a.pinned().into_keys().filter(|r| r.starts_with("gone/app:")).count();
    assert_eq!(pinned, 0, "a body cut after {SENT} whole lines wrote {pinned} pins");
    assert_eq!(a.log_size(), before, "the log grew");
}

/// Review (streaming import): a chunked body (no length declared) of whole lines that
/// passes `max_import_bytes` is refused and writes nothing, though every line before the
/// limit is a good record.
#[test]
fn a_chunked_online_import_over_max_import_bytes_writes_nothing() {
    use std::io::{Read, Write};
    const LIMIT_BYTES: usize = 1 << 20;
    let secrets = AdminSecrets::new();
    let mut flags = secrets.flags();
    flags.extend(["--max-import-bytes".to_owned(), LIMIT_BYTES.to_string()]);
    let stack = Stack::start(&flags.iter().map(String::as_str).collect::<Vec<_>>());
    let a = Admin { stack, secrets };
    let before = a.log_size();
    let admin = a.stack.tagpin.admin_addr();
    let mut conn = std::net::TcpStream::connect(admin).unwrap();
    write!(
        conn,
        "POST /admin/v1/import HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        common::admin::TOKEN,
    )
    .unwrap();
    let mut sent = 0;
    for line in records("over/app", 6_000, "over") {
        let chunk = format!("{line}\n");
        sent += chunk.len();
        // tagpin may answer and close once the limit is passed.
        if write!(conn, "{:x}\r\n{chunk}\r\n", chunk.len()).is_err() {
            break;
        }
    }
    let _ = conn.write_all(b"0\r\n\r\n");
    assert!(sent > LIMIT_BYTES, "the body passes the limit");
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    println!("answer to {sent} bytes: {}", answer.lines().next().unwrap_or("(none)"));
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let pinned = a.pinned().into_keys().filter(|r| r.starts_with("over/app:")).count();
    assert_eq!(pinned, 0, "a body over the limit wrote {pinned} pins");
    assert_eq!(a.log_size(), before, "the log grew");
}
