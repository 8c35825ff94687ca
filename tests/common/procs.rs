//! Child processes: the upstream registry, tagpin and skopeo.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;

/// Fail loudly when a binary the suite needs is missing. A missing binary is never a
/// skip: the README's test command installs them.
pub fn require_binary(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "required binary `{name}` is not installed (Debian package `{package}`); \
         run the README's test command, which installs it (CI={:?})",
        std::env::var("CI").ok()
    );
}

/// Options for the upstream registry.
#[derive(Default, Clone)]
pub struct RegistryOptions {
    /// Require htpasswd Basic auth with this user and password.
    pub basic_auth: Option<(String, String)>,
    /// Serve HTTPS with this certificate and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Require registry tokens from this realm (distribution's `auth: token`).
    pub token_auth: Option<TokenAuth>,
}

/// The `auth: token` section of distribution's config.
#[derive(Clone)]
pub struct TokenAuth {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    /// PEM certificate(s) whose keys may sign tokens.
    pub root_cert_bundle: PathBuf,
}

/// A running `docker-registry` (distribution 2.8) with its own temp storage.
pub struct Registry {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Child,
    options: RegistryOptions,
}

impl Registry {
    pub fn start() -> Self {
        Self::start_with(RegistryOptions::default())
    }

    pub fn start_with(options: RegistryOptions) -> Self {
        let bin = require_binary("docker-registry", "docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let mut auth = String::new();
        if let Some((user, pass)) = &options.basic_auth {
            let htpasswd = require_binary("htpasswd", "apache2-utils");
            let out = Command::new(htpasswd).args(["-Bbn", user, pass]).output().unwrap();
            assert!(out.status.success(), "htpasswd failed");
            std::fs::write(dir.path().join("htpasswd"), out.stdout).unwrap();
            auth = format!(
                "auth:\n  htpasswd:\n    realm: tagpin-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            );
        }
        if let Some(t) = &options.token_auth {
            auth = format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                t.realm,
                t.service,
                t.issuer,
                t.root_cert_bundle.display()
            );
        }
        let tls = match &options.tls {
            Some((cert, key)) => {
                format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    cert.display(),
                    key.display()
                )
            }
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:0\n  secret: tagpin-test-secret\n{tls}{auth}",
            dir.path().join("storage").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let mut child = Command::new(bin)
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start docker-registry");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split(['"', ' ', ',']).next().unwrap_or("").to_owned();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("docker-registry did not report its address");
        let addr: SocketAddr = addr.parse().unwrap_or_else(|_| panic!("bad registry address {addr}"));
        Self {
            addr,
            dir,
            child,
            options,
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.options.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// `Basic …` for the configured user, or "" (no header) for an open registry.
    pub fn auth_header(&self) -> String {
        match &self.options.basic_auth {
            Some((u, p)) => basic(u, p),
            None => String::new(),
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// With `TAGPIN_TEST_STORE=postgres`, the database standing in for `data_dir`: one per
/// data dir path (named after its hash), created on first use on a PostgreSQL server
/// shared by the test process, so a tagpin restarted on the same data dir sees the same
/// pins. `None`: the sled store in `data_dir`, the default.
pub fn store_url(data_dir: &Path) -> Option<String> {
    use std::hash::{Hash as _, Hasher as _};
    match std::env::var("TAGPIN_TEST_STORE").as_deref() {
        Ok("postgres") => {}
        Ok("sled") | Ok("") | Err(_) => return None,
        Ok(other) => panic!("TAGPIN_TEST_STORE={other}: expected sled or postgres"),
    }
    static CREATED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    // DefaultHasher::new() has fixed keys: the same path gets the same name every time.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data_dir.hash(&mut h);
    let name = format!("dir_{:016x}", h.finish());
    let server = super::postgres::shared();
    let mut created = CREATED.lock().unwrap_or_else(|p| p.into_inner());
    if !created.contains(&name) {
        server.create_database(&name);
        created.push(name.clone());
    }
    Some(server.url(&name))
}

/// A running tagpin, started from the binary cargo built for this test run, logging JSON.
pub struct Tagpin {
    pub addr: SocketAddr,
    child: Option<Child>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Tagpin {
    pub fn start(upstream: &str, data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_env(upstream, data_dir, extra, &[])
    }

    pub fn start_env(upstream: &str, data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let store: Vec<std::ffi::OsString> = match store_url(data_dir) {
            Some(url) => vec!["--database-url".into(), url.into()],
            None => vec!["--data-dir".into(), data_dir.into()],
        };
        Self::spawn(upstream, &store, extra, env)
    }

    /// A tagpin on the sled store in `data_dir`, whatever `TAGPIN_TEST_STORE` says.
    pub fn start_on_data_dir(upstream: &str, data_dir: &Path, extra: &[&str]) -> Self {
        Self::spawn(upstream, &["--data-dir".into(), data_dir.into()], extra, &[])
    }

    /// A tagpin on the PostgreSQL database at `url`, whatever `TAGPIN_TEST_STORE` says:
    /// for tests of several replicas sharing one database.
    pub fn start_on_database(upstream: &str, url: &str, extra: &[&str]) -> Self {
        Self::spawn(upstream, &["--database-url".into(), url.into()], extra, &[])
    }

    /// Like [`Tagpin::start_on_database`], with extra environment variables for the
    /// process (e.g. libfaketime's `LD_PRELOAD` and `FAKETIME`, for a replica whose clock
    /// disagrees with the others').
    pub fn start_on_database_env(upstream: &str, url: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn(upstream, &["--database-url".into(), url.into()], extra, env)
    }

    /// Like [`Tagpin::start_env`] on the sled store, with the process's open-file limit
    /// lowered to `nofile` (through `prlimit`, which execs tagpin, so the pid is tagpin's).
    pub fn start_with_nofile(
        upstream: &str,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        nofile: u64,
    ) -> Self {
        let store = ["--data-dir".into(), data_dir.into()];
        Self::spawn_limited(upstream, &store, extra, env, Some(nofile))
    }

    fn spawn(upstream: &str, store: &[std::ffi::OsString], extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_limited(upstream, store, extra, env, None)
    }

    fn spawn_limited(
        upstream: &str,
        store: &[std::ffi::OsString],
        extra: &[&str],
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Self {
        // `TAGPIN_TEST_BIN` runs a suite against another build (an older one, to show a
        // test fails without the fix it guards).
        let bin = std::env::var_os("TAGPIN_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_tagpin").into());
        let mut cmd = match nofile {
            None => Command::new(bin),
            Some(n) => {
                let mut c = Command::new(require_binary("prlimit", "util-linux"));
                c.arg(format!("--nofile={n}:{n}")).arg(bin);
                c
            }
        };
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"]);
        // An empty upstream leaves it to the environment or a config file.
        if !upstream.is_empty() {
            cmd.args(["--upstream", upstream]);
        }
        cmd.args(store)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start tagpin");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let (store_tx, store_rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "listening" {
                        let _ = tx.send(v["addr"].as_str().unwrap_or("").to_owned());
                    }
                    // The sled store opens beside the listener: tests start deciding
                    // once it has (or has failed to).
                    let m = v["message"].as_str().unwrap_or_default();
                    if m == "pin store opened" || m.starts_with("pin store unavailable") || m == "pin store: PostgreSQL"
                    {
                        let _ = store_tx.send(());
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!("tagpin did not start; output:\n{}", logs.lock().unwrap().join("\n"));
            }
        };
        if store_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            panic!(
                "tagpin's pin store did not open; output:\n{}",
                logs.lock().unwrap().join("\n")
            );
        }
        Self {
            addr,
            child: Some(child),
            logs,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("tagpin stopped").id()
    }

    /// Resident set size in KiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// The admin API's address, from its `admin API listening` line (logged before
    /// `listening`, so it is there once `start` returned).
    pub fn admin_addr(&self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.logs().iter().find_map(|l| {
                let v = serde_json::from_str::<serde_json::Value>(l).ok()?;
                (v["message"] == "admin API listening").then(|| v["addr"].as_str().unwrap_or("").parse().ok())?
            });
            if let Some(addr) = found {
                return addr;
            }
            assert!(
                Instant::now() < deadline,
                "no admin API listening line in:\n{}",
                self.logs().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Audit events logged so far.
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "tagpin::audit")
            .collect()
    }

    /// Wait until an audit event matching `pred` appears (events are written just after
    /// the response, so a test may see the response first).
    pub fn wait_for_audit(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.audit_events().into_iter().find(|e| pred(e)) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no matching audit event in:\n{}",
                self.logs().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to flush or drain.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for the process to exit; returns its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("tagpin already stopped");
        let ok = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        c.wait().unwrap()
    }
}

impl Drop for Tagpin {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Run skopeo with the given arguments (signature policy checks off: the images are
/// generated by the test).
pub fn skopeo(args: &[&str]) -> Output {
    let bin = require_binary("skopeo", "skopeo");
    Command::new(bin)
        .arg("--insecure-policy")
        .args(args)
        .output()
        .expect("run skopeo")
}

/// `skopeo copy` into a registry over plain HTTP.
pub fn skopeo_copy(src: &str, dst: &str, extra: &[&str]) -> Output {
    // --preserve-digests: skopeo would otherwise gzip the generated (uncompressed) layers
    // on the way to a registry, and the pushed manifest would not be the test's bytes.
    let mut args = vec![
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[src, dst]);
    skopeo(&args)
}
