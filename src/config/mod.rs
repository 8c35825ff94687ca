//! Configuration: the raw, deserialised form ([`RawConfig`]) and the validated form
//! ([`Config`]) the program runs on. `RawConfig::validate` is the only way from one to
//! the other, so a `Config` always holds values that were checked.

mod database;
mod notify;
mod raw;
mod realm;
mod rules;
mod secrets;
mod validate;

pub use database::{database as database_config, DatabaseSettings};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::StatusCode;

pub use notify::{Format as NotifyFormat, NotifyConfig, NotifyTarget};
pub use raw::{RawConfig, RawTimeouts};
pub use realm::TokenRealm;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// How a manifest read by tag of a protected tag is answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Reads {
    /// With the pinned manifest, fetched by digest, whatever the upstream holds under the
    /// tag; a protected tag with no pin is pinned by its first pull.
    #[default]
    Pinned,
    /// Forwarded by tag: the upstream's current content, no adoption on reads.
    Forward,
}

impl Reads {
    /// The value as the flag, variable and config key spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pinned => "pinned",
            Self::Forward => "forward",
        }
    }
}

/// A scheme plus authority, such as `https://registry.example:5000`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub upstream: Origin,
    pub public_url: Option<Origin>,
    pub data_dir: PathBuf,
    /// Bytes of sled's page cache (the sled store only).
    pub store_cache_bytes: u64,
    /// Largest body of an online import (`POST /admin/v1/import`), in bytes: it is
    /// written to disk before or while it is imported, never held in memory.
    pub max_import_bytes: u64,
    pub exclude: Vec<String>,
    /// The configured rules; `None` when the file has none (the built-in rules apply).
    pub rules: Option<Vec<crate::policy::RuleSpec>>,
    /// Where the policy is re-read from on SIGHUP.
    pub reload: Option<ReloadSource>,
    pub log_format: LogFormat,
    pub reads: Reads,
    pub refuse_status: StatusCode,
    pub max_manifest_bytes: usize,
    /// Bytes all manifest bodies being read or forwarded may hold together.
    pub manifest_memory_budget_bytes: usize,
    /// Bytes of that budget the bodies from one client address (an IPv6 /64) may hold.
    pub manifest_memory_per_client_bytes: usize,
    pub max_tags_per_push: usize,
    pub upstream_ca: Option<PathBuf>,
    pub max_connections: usize,
    /// Largest request head (request line and headers) a client may send, on both
    /// listeners; also the cap on hyper's read buffer per connection.
    pub max_header_bytes: usize,
    /// Most admin API connections open at once.
    pub admin_max_connections: usize,
    pub workers: usize,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The PostgreSQL store; `None`: the sled store in `data_dir`.
    pub database: Option<Database>,
    /// The admin API: its address and tokens. `None`: no admin listener.
    pub admin: Option<AdminConfig>,
    /// The address `/metrics` is served on instead of the registry port; `None`: the
    /// registry port serves it.
    pub metrics_listen: Option<SocketAddr>,
    /// tagpin's own upstream credentials, for seeding and drift checks.
    pub upstream_credentials: Option<Credentials>,
    /// The token realms tagpin may fetch its own tokens from; empty: any that passes the
    /// built-in checks ([`crate::upstream::own`]).
    pub token_realms: Vec<TokenRealm>,
    /// How often the server runs the drift check; `None`: never on its own.
    pub drift_interval: Option<Duration>,
    /// Upstream requests a seed, a verify, a drift check or the adoption before a delete
    /// by digest has in flight at most ([`crate::walk`]); a seed or verify may ask for
    /// fewer.
    pub walk_concurrency: usize,
    /// How long a forwarded write whose answer was lost may still land; its record is
    /// kept that long ([`crate::pinning`]).
    pub in_doubt_horizon: Duration,
    /// The history log's checkpoints.
    pub log: LogSettings,
    /// Webhook targets and the outbox's limits; reloaded on SIGHUP.
    pub notify: NotifyConfig,
    pub timeouts: Timeouts,
}

/// How the history log's checkpoints are made ([`crate::log`]).
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// The signing key's text (C2SP signed-note format); `None`: unsigned checkpoints.
    pub signing_key: Option<Secret>,
    /// The checkpoints' origin line; `None`: the key's name, or `tagpin`.
    pub origin: Option<String>,
    /// The least time between two `log_checkpoint` audit events.
    pub checkpoint_interval: Duration,
}

/// A secret that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A PostgreSQL connection. `Debug` shows neither the URL nor the password.
#[derive(Clone)]
pub struct Database {
    /// The URL less its TLS parameters, `sslmode` set to what rust-postgres knows.
    pub config: postgres::Config,
    /// How the server's certificate is checked, and tagpin's own certificate.
    pub tls: crate::store::PgTls,
    /// Host and database name, for log lines.
    pub display: String,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Database({})", self.display)
    }
}

/// The admin listener and who may use it.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// `(name, token)`: the name is who acts in audit events and history.
    pub tokens: Vec<(String, Secret)>,
}

/// A user and password.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: String,
    pub password: Secret,
}

/// The config file, and the flags that replace its policy keys, for SIGHUP reloads.
#[derive(Debug, Clone)]
pub struct ReloadSource {
    pub path: PathBuf,
    /// `--exclude` given on the command line (or in the environment): it replaces the
    /// file's `exclude` on every reload too.
    pub exclude_override: Option<Vec<String>>,
    /// The file as loaded at start, to tell which other keys a reload changed.
    pub file: RawConfig,
}

/// Every time limit tagpin enforces.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub upstream_connect: Duration,
    pub upstream_header: Duration,
    /// tagpin's own upstream calls for a decision (tag check, listing, pinned manifest).
    pub upstream_check: Duration,
    pub body_idle: Duration,
    pub client_header: Duration,
    pub shutdown_grace: Duration,
    /// A whole manifest body must arrive within this.
    pub manifest_body: Duration,
    /// How long a manifest body waits for memory from the budget before a 503.
    pub manifest_budget_wait: Duration,
    /// How long a delete by digest waits for the adoption of its repository's tags
    /// before it is answered 503 (the adoption goes on).
    pub adoption_wait: Duration,
}

/// A configuration that cannot be used; the message is one line an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("rules[{index}]{}{key}: {message}", if .key.is_empty() { "" } else { "." })]
    Rule { index: usize, key: String, message: String },
    #[error("notify[{index}]{}{key}: {message}", if .key.is_empty() { "" } else { "." })]
    Notify { index: usize, key: String, message: String },
}

impl ConfigError {
    pub(crate) fn invalid(key: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            key,
            message: message.into(),
        }
    }
}
