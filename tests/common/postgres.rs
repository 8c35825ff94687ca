//! A throwaway PostgreSQL server for the tests: `initdb` into a temp dir, `postgres` on
//! 127.0.0.1 with an ephemeral port and its Unix socket inside that dir, trust auth for
//! the user `tagpin`.
//!
//! PostgreSQL refuses to run as root, so as root it runs as the `postgres` system user
//! (via `runuser`), in a temp dir that user owns. The server runs under a small shell
//! whose stdin is a pipe held by the test process:
//! ```text
//! exec 3<&0                      # the pipe, kept for the watcher
//! postgres ... 3<&- &            # the server, without it
//! ( read line <&3 || touch gone; kill -INT $pid ) &    # the watcher
//! wait $pid; [ -e gone ] && rm -rf DIR
//! ```
//! A line on the pipe is [`PgServer::stop`] (the data stays for [`PgServer::start_again`]);
//! end of file means the test process dropped the server or died, however it died: the
//! kernel closes the pipe, the watcher stops the server (fast shutdown) and the shell
//! removes the dir. Nothing outlives the test process.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::procs::require_binary;

/// The superuser `initdb` creates; every test database belongs to it.
pub const USER: &str = "tagpin";

/// How often a start may find its freshly picked port taken by someone else.
const PORT_ATTEMPTS: usize = 5;

const SUPERVISOR: &str = r#"
exec 3<&0
bin=$1 dir=$2 port=$3
shift 3
"$bin" -D "$dir/data" -k "$dir/sock" -h 127.0.0.1 -p "$port" \
  -c fsync=off -c full_page_writes=off -c max_connections=400 \
  -c shared_buffers=32MB -c logging_collector=off "$@" \
  3<&- </dev/null >>"$dir/postgres.log" 2>&1 &
pid=$!
( read -r _ <&3 || touch "$dir/gone"; kill -INT "$pid" 2>/dev/null ) &
wait "$pid"
if [ -e "$dir/gone" ]; then rm -rf "$dir"; fi
"#;

pub struct PgServer {
    /// The temp dir (owned by the server's user): `data/`, `sock/`, `postgres.log`.
    dir: tempfile::TempDir,
    pub port: u16,
    postgres: PathBuf,
    /// `-c name=value` arguments beyond the defaults ([`PgServer::start_with`]).
    settings: Vec<String>,
    running: Option<Running>,
}

/// The supervising shell of a started server and the pipe that keeps it alive.
struct Running {
    child: Child,
    stdin: ChildStdin,
}

/// The binary `name` of Debian's `postgresql` package: on the PATH, or in the versioned
/// directory Debian installs it to.
fn pg_binary(name: &str) -> PathBuf {
    if let Ok(dirs) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut found: Vec<PathBuf> = dirs
            .filter_map(Result::ok)
            .map(|d| d.path().join("bin").join(name))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        if let Some(newest) = found.pop() {
            return newest;
        }
    }
    require_binary(name, "postgresql")
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// `program args…` as the user PostgreSQL runs as.
fn as_server_user(program: &str) -> Command {
    if running_as_root() {
        let mut c = Command::new(require_binary("runuser", "util-linux"));
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        Command::new(program)
    }
}

/// Write `contents` to `path` in a server's dir: owned by the server's user, mode 0600 (as
/// PostgreSQL wants its key file).
fn install(path: &Path, contents: &[u8]) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    if running_as_root() {
        let ok = Command::new("chown")
            .arg("postgres:postgres")
            .arg(path)
            .status()
            .expect("run chown");
        assert!(ok.success(), "chown of {} to postgres failed", path.display());
    }
}

/// A port nobody listens on right now (it may be taken again before it is used; the
/// caller retries).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

impl PgServer {
    /// A new cluster, started and accepting connections.
    pub fn start() -> Self {
        Self::start_with(&[], &[])
    }

    /// A new cluster whose data directory first gets `files` (name, contents; readable by
    /// the server's user only, replacing initdb's, e.g. `pg_hba.conf`), started with the
    /// `settings` (`ssl=on`; paths are relative to the data directory). Its `pg_hba.conf`
    /// must let `tagpin` reach the database `postgres` over plain TCP: that is how the
    /// harness sees that the server is up.
    pub fn start_with(settings: &[(&str, &str)], files: &[(&str, &[u8])]) -> Self {
        let initdb = pg_binary("initdb");
        let postgres = pg_binary("postgres");
        let dir = tempfile::Builder::new().prefix("tagpin-pg-").tempdir().unwrap();
        if running_as_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("run chown");
            assert!(ok.success(), "chown of {} to postgres failed", dir.path().display());
        }
        let out = as_server_user(initdb.to_str().unwrap())
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-A", "trust", "-U", USER, "-E", "UTF8", "--locale=C", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let sock = dir.path().join("sock");
        let mkdir = as_server_user("mkdir").arg(&sock).status().expect("run mkdir");
        assert!(mkdir.success(), "mkdir {} failed", sock.display());
        for (name, contents) in files {
            install(&dir.path().join("data").join(name), contents);
        }
        let mut server = Self {
            dir,
            port: 0,
            postgres,
            settings: settings.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            running: None,
        };
        for attempt in 1..=PORT_ATTEMPTS {
            server.port = free_port();
            match server.launch() {
                Ok(()) => return server,
                Err(why) if attempt < PORT_ATTEMPTS => eprintln!("postgres on port {}: {why}; retrying", server.port),
                Err(why) => panic!("postgres did not start: {why}\n{}", server.log()),
            }
        }
        unreachable!("the last attempt panics")
    }

    /// Start the supervisor on `self.port` and wait until the server answers.
    fn launch(&mut self) -> Result<(), String> {
        let mut child = as_server_user("sh")
            .args(["-c", SUPERVISOR, "tagpin-pg"])
            .arg(&self.postgres)
            .arg(self.dir.path())
            .arg(self.port.to_string())
            .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start postgres: {e}"))?;
        let stdin = child.stdin.take().expect("piped stdin");
        self.running = Some(Running { child, stdin });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.connect_to("postgres").is_ok() {
                return Ok(());
            }
            let running = self.running.as_mut().expect("just started");
            if let Some(status) = running.child.try_wait().map_err(|e| e.to_string())? {
                self.running = None;
                return Err(format!("postgres exited ({status})"));
            }
            if Instant::now() > deadline {
                self.stop();
                return Err("postgres did not accept connections within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The URL tagpin is given for database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port)
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// A connection to database `name` over TCP.
    pub fn connect_to(&self, name: &str) -> Result<::postgres::Client, ::postgres::Error> {
        ::postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user(USER)
            .dbname(name)
            .connect_timeout(Duration::from_secs(2))
            .connect(::postgres::NoTls)
    }

    pub fn connect(&self, name: &str) -> ::postgres::Client {
        self.connect_to(name)
            .unwrap_or_else(|e| panic!("connect to database {name}: {e}\n{}", self.log()))
    }

    /// Create database `name` (a plain identifier) and return its URL. Its collation is
    /// ICU's `en-US`, not byte order, as on most production servers, so a query that
    /// needs byte order (to agree with sled's key order) must say so to pass.
    pub fn create_database(&self, name: &str) -> String {
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "database names here are [a-z0-9_]+, not {name:?}"
        );
        self.connect("postgres")
            .batch_execute(&format!(
                "CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
            ))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        self.url(name)
    }

    /// The parsed config tagpin's store takes for database `name`.
    pub fn config(&self, name: &str) -> ::postgres::Config {
        self.url(name).parse().expect("a valid URL")
    }

    /// Stop the server (fast shutdown: sessions are cut), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut running) = self.running.take() {
            // A line, not end of file: stop, but keep the dir.
            let _ = running.stdin.write_all(b"stop\n");
            let _ = running.stdin.flush();
            let _ = running.child.wait();
            drop(running.stdin);
        }
    }

    /// Start the stopped server again, on the same port, so every URL handed out stays
    /// valid.
    pub fn start_again(&mut self) {
        assert!(self.running.is_none(), "the server is running");
        let mut last = String::new();
        // The port may be busy for a moment after the stop; a few tries, then fail.
        for _ in 0..PORT_ATTEMPTS {
            match self.launch() {
                Ok(()) => return,
                Err(why) => last = why,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("postgres did not start again: {last}\n{}", self.log());
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut running) = self.running.take() {
            // End of file: the supervisor stops the server and removes the dir.
            drop(running.stdin);
            let _ = running.child.wait();
        }
        // TempDir's own drop removes whatever is left (a stopped server's data).
    }
}

/// One server per test process, for the tests that share it; it stops when the process
/// exits (the pipe closes), since statics are never dropped.
pub fn shared() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(PgServer::start)
}

/// A fresh database on the shared server, with a name no other call in this process
/// gets; returns its name.
pub fn fresh_database(prefix: &str) -> String {
    static NEXT: Mutex<u32> = Mutex::new(0);
    let n = {
        let mut next = NEXT.lock().unwrap();
        *next += 1;
        *next
    };
    let name = format!("{prefix}_{}_{n}", std::process::id());
    shared().create_database(&name);
    name
}
