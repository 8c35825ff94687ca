//! What the import tests share: export records and files, the CLI run with or without
//! a memory limit, a tagpin with the admin API on, and how far a running import has got.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::admin::{AdminSecrets, CliOut};
use super::image::sha256;
use super::log_api::LogApi;
use super::procs::store_url;
use super::*;

/// One record as `tagpin export` writes it: pinned by push.
pub fn record(repo: &str, tag: &str, digest: &str) -> String {
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

pub fn digest(seed: &str, n: usize) -> String {
    sha256(format!("{seed}:{n}").as_bytes())
}

/// `n` records of `repo`, tags `t000000`…, one history entry each, as lines.
pub fn records(repo: &str, n: usize, seed: &str) -> Vec<String> {
    (0..n)
        .map(|i| record(repo, &format!("t{i:06}"), &digest(seed, i)))
        .collect()
}

pub fn write_file(dir: &Path, name: &str, lines: &[String]) -> String {
    let path = dir.join(name);
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The CLI under test (`TAGPIN_TEST_BIN` for another build), with `args`, its address
/// space limited to `limit` bytes when given.
pub fn cli(args: &[&str], limit: Option<u64>) -> CliOut {
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
    CliOut::from(out)
}

/// The offline store flags for the store `TAGPIN_TEST_STORE` names, standing for `dir`.
pub fn offline_store(dir: &Path) -> Vec<String> {
    match store_url(dir) {
        Some(url) => vec!["--database-url".into(), url],
        None => vec!["--data-dir".into(), dir.display().to_string()],
    }
}

pub fn with(base: &[&str], extra: &[String]) -> Vec<String> {
    base.iter()
        .map(|s| s.to_string())
        .chain(extra.iter().cloned())
        .collect()
}

pub fn run(args: &[String], limit: Option<u64>) -> CliOut {
    cli(&args.iter().map(String::as_str).collect::<Vec<_>>(), limit)
}

/// A tagpin with the admin API on, in front of its own upstream.
pub struct Admin {
    pub stack: Stack,
    pub secrets: AdminSecrets,
}

impl Admin {
    pub fn start() -> Self {
        let secrets = AdminSecrets::new();
        let flags = secrets.flags();
        let stack = Stack::start(&flags.iter().map(String::as_str).collect::<Vec<_>>());
        Self { stack, secrets }
    }

    pub fn restart(&mut self) {
        let flags = self.secrets.flags();
        self.stack.tagpin = Tagpin::start(
            &self.stack.registry.url(),
            self.stack.data.path(),
            &flags.iter().map(String::as_str).collect::<Vec<_>>(),
        );
    }

    pub fn cli(&self, args: &[&str]) -> CliOut {
        self.secrets.cli(self.stack.tagpin.admin_addr(), args)
    }

    pub fn log(&self) -> LogApi {
        LogApi::new(self.stack.tagpin.admin_addr())
    }

    pub fn log_size(&self) -> u64 {
        self.log().checkpoint().size
    }

    /// Every pinned tag and its digest.
    pub fn pinned(&self) -> std::collections::BTreeMap<String, String> {
        self.log().pinned()
    }
}

/// `tagpin import FILE` against the admin API at `admin`, on a thread of its own.
pub fn import_online(
    secrets: &AdminSecrets,
    admin: std::net::SocketAddr,
    file: &str,
) -> std::thread::JoinHandle<CliOut> {
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
pub fn held_to(a: &Admin, reference: &str) -> Option<String> {
    a.secrets
        .pin(a.stack.tagpin.admin_addr(), reference)
        .map(|p| p["digest"].as_str().unwrap_or_default().to_owned())
}

/// How far a running import has got.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Phase {
    /// Checking its records against the store (sled: they are sorted into their file;
    /// PostgreSQL: its transaction holds the import gate).
    Checking,
    /// Writing pins (sled: the log grew; PostgreSQL: it has inserted pins).
    Writing,
}

/// Whether the import running on `a`'s store has reached `phase`; `log_before` is the
/// log's size before it began.
pub fn reached(a: &Admin, url: Option<&str>, phase: Phase, log_before: u64) -> bool {
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
pub fn postgres_import(url: &str, writing: bool) -> bool {
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
pub fn wait_for(
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

/// The `repository:tag` and event of the log's entries `[start, end)`, read with raw
/// HTTP a page at a time.
pub fn logged(a: &Admin, start: u64, end: u64) -> Vec<(String, String)> {
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

/// The bytes the kernel holds unread for the server's end of the loopback connection
/// from `client` to `server`, from `/proc/net/tcp`; `None` while no such socket is seen.
pub fn unread_by_server(server: std::net::SocketAddr, client: std::net::SocketAddr) -> Option<u64> {
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
