//! The admin API and the operator CLI for tests that start their own tagpins (replicas,
//! private databases): a token file pair, the server flags that turn the API on, and
//! `tagpin <command> --admin-url … --admin-token-file …` runs of the CLI cargo built.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

/// The admin token (the server wants 16 characters or more).
pub const TOKEN: &str = "admin-helper-token-3c9e1f7a5b";

/// The server's `alice:<token>` file and the CLI's bare token file.
pub struct AdminSecrets {
    dir: tempfile::TempDir,
}

impl AdminSecrets {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokens"), format!("alice:{TOKEN}\n")).unwrap();
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        Self { dir }
    }

    /// `serve` flags for an admin API on an ephemeral loopback port.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
            "--admin-token-file".into(),
            self.dir.path().join("tokens").display().to_string(),
        ]
    }

    pub fn token_file(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    /// Run the CLI against the admin API at `admin`.
    pub fn cli(&self, admin: SocketAddr, args: &[&str]) -> CliOut {
        let out = Command::new(env!("CARGO_BIN_EXE_tagpin"))
            .args(args)
            .arg("--admin-url")
            .arg(format!("http://{admin}"))
            .arg("--admin-token-file")
            .arg(self.token_file())
            .env_remove("TAGPIN_ADMIN_TOKEN")
            .env_remove("TAGPIN_ADMIN_URL")
            .stdin(Stdio::null())
            .output()
            .expect("run the tagpin CLI");
        CliOut::from(out)
    }

    /// `tagpin pins show REPO:TAG --json`: the pin, or `None` when it has none (exit 1).
    pub fn pin(&self, admin: SocketAddr, reference: &str) -> Option<Value> {
        let out = self.cli(admin, &["pins", "show", reference, "--json"]);
        match out.code {
            0 => Some(out.json()),
            1 => None,
            _ => panic!("pins show {reference}: {out:?}"),
        }
    }
}

impl Default for AdminSecrets {
    fn default() -> Self {
        Self::new()
    }
}

/// A finished CLI run.
#[derive(Debug)]
pub struct CliOut {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for CliOut {
    fn from(out: std::process::Output) -> Self {
        Self {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl CliOut {
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "tagpin failed: {self:?}");
        self
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// The entries of a pin's history with event `event`.
pub fn history(pin: &Value, event: &str) -> Vec<Value> {
    pin["history"]
        .as_array()
        .unwrap_or_else(|| panic!("no history in {pin}"))
        .iter()
        .filter(|h| h["event"] == event)
        .cloned()
        .collect()
}
