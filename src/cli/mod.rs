//! The command line. Every flag of `serve` can also be set by a `TAGPIN_*` environment
//! variable and by the config file; precedence is flag, then environment, then file, then
//! default.
//!
//! The operator commands (`pins`, `resolve`, `release`, `claims`, `seed`, `verify`,
//! `export`, `import`, `log`) are clients of the admin API, one file (or folder) each: they parse, call, and format
//! ([`client`], [`output`]). Their exit status is 0 on success, 1 where a command's
//! `--help` says so, 2 on any other error, with a one-line message on stderr.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{LogFormat, RawConfig, RawTimeouts, Reads};

pub mod claims;
pub mod client;
pub mod demo_image;
pub mod log;
pub mod notify;
pub mod origin;
pub mod output;
pub mod pins;
pub mod policy;
pub mod probe;
pub mod release;
pub mod resolve;
pub mod seed;
pub mod transfer;
pub mod verify;
pub mod walk;

use self::client::{CliError, Client, EXIT_ERROR};

#[derive(Debug, Parser)]
#[command(
    name = "tagpin",
    version,
    about = "Pins every container tag to the first digest pushed under it"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Serve(Box<ServeArgs>),
    /// Inspect the protection policy without a server running.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// List pins, or show one with its history (admin API).
    #[command(subcommand)]
    Pins(pins::PinsCommand),
    /// Print REPOSITORY@sha256:… for the digest a tag is pinned to now or was at a time
    /// (admin API, --data-dir or --database-url).
    Resolve(resolve::ResolveArgs),
    /// Let one push or delete move a pinned tag, for a limited time (admin API).
    Release(release::ReleaseArgs),
    /// List the records of pushes and deletes whose outcome was lost, or clear those known
    /// to have failed (admin API).
    #[command(subcommand)]
    Claims(claims::ClaimsCommand),
    /// Adopt the tags the upstream already holds as pins (admin API).
    Seed(seed::SeedArgs),
    /// Check that the upstream still holds every pinned tag at its pin (admin API).
    Verify(verify::VerifyArgs),
    /// Write every pin with its history as JSON lines to stdout (admin API or --data-dir).
    Export(transfer::ExportArgs),
    /// Load pins written by `export`, all or nothing (admin API or --data-dir).
    Import(transfer::ImportArgs),
    /// The verifiable history: signing keys, checkpoints, inclusion proofs, and checking
    /// the whole log against the pins (admin API, --data-dir or --database-url).
    #[command(subcommand)]
    Log(log::LogCommand),
    /// Webhooks: send a test event to the running server's targets (admin API).
    #[command(subcommand)]
    Notify(notify::NotifyCommand),
    /// Write a one-layer OCI image layout to push while trying tagpin out.
    DemoImage(demo_image::DemoImageArgs),
    /// GET a URL of a running tagpin (its /readyz) and exit 0 on 200, else 1: the container healthcheck.
    Probe(probe::ProbeArgs),
}

/// The subcommands that are admin API clients, whose usage errors exit 2 like their
/// other errors (`serve` and `policy` keep 64, EX_USAGE).
const CLIENT_COMMANDS: [&str; 10] = [
    "pins", "resolve", "release", "claims", "seed", "verify", "export", "import", "log", "notify",
];

/// The exit status of a command line clap refused: 2 for a client command, else 64.
pub fn usage_exit_code<I: IntoIterator<Item = std::ffi::OsString>>(args: I) -> u8 {
    let first = args.into_iter().skip(1).find(|a| !a.to_string_lossy().starts_with('-'));
    match first {
        Some(cmd) if CLIENT_COMMANDS.contains(&cmd.to_string_lossy().as_ref()) => EXIT_ERROR,
        _ => 64,
    }
}

/// Clap's whole message on one line (the commands promise one line on stderr): its first
/// line alone ("the following required arguments were not provided:") would not name
/// what is missing. Lines of a paragraph are joined by a space, paragraphs by "; ".
pub fn one_line(clap_message: &str) -> String {
    clap_message
        .trim()
        .trim_start_matches("error: ")
        .split("\n\n")
        .map(|p| {
            p.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Run an operator command to completion and return its exit status; errors are
/// printed as one line on stderr. `serve` and `policy` are not handled here.
pub fn run_client(command: Command) -> u8 {
    let env = |key: &str| std::env::var_os(key);
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Io(format!("cannot start the runtime: {e}")))
        .and_then(|rt| rt.block_on(dispatch(command, &env)));
    match result {
        Ok(code) => code,
        Err(e) => {
            let text = e.to_string();
            eprintln!("tagpin: {}", text.lines().next().unwrap_or("failed"));
            EXIT_ERROR
        }
    }
}

async fn dispatch(command: Command, env: &dyn Fn(&str) -> Option<std::ffi::OsString>) -> Result<u8, CliError> {
    let stdout = std::io::stdout();
    let mut out = std::io::LineWriter::new(stdout.lock());
    match command {
        Command::Pins(pins::PinsCommand::List(a)) => pins::list(&Client::new(&a.admin, env)?, &a, &mut out).await,
        Command::Pins(pins::PinsCommand::Show(a)) => pins::show(&Client::new(&a.admin, env)?, &a, &mut out).await,
        Command::Resolve(a) => resolve::run(&a, env, &mut out).await,
        Command::Release(a) => release::run(&Client::new(&a.admin, env)?, &a, &mut out).await,
        Command::Claims(claims::ClaimsCommand::List(a)) => {
            claims::list(&Client::new(&a.admin, env)?, &a, &mut out).await
        }
        Command::Claims(claims::ClaimsCommand::Clear(a)) => {
            claims::reason(&a)?;
            claims::clear(&Client::new(&a.admin, env)?, &a, &mut out).await
        }
        Command::Seed(a) => seed::run(&Client::new(&a.admin, env)?, &a, &mut out).await,
        Command::Verify(a) => verify::run(&Client::new(&a.admin, env)?, &a, &mut out).await,
        Command::Export(a) => {
            let offline = a.data_dir.is_some() || a.database.database_url.is_some();
            let client = (!offline).then(|| Client::new(&a.admin, env)).transpose()?;
            transfer::export(&a, client.as_ref(), &mut out).await
        }
        Command::Import(a) => {
            let offline = a.data_dir.is_some() || a.database.database_url.is_some();
            let client = (!offline).then(|| Client::new(&a.admin, env)).transpose()?;
            transfer::import(&a, client.as_ref(), &mut out).await
        }
        Command::Log(c) => log::run(c, env, &mut out).await,
        Command::Notify(notify::NotifyCommand::Test(a)) => {
            notify::test(&Client::new(&a.admin, env)?, &a, &mut out).await
        }
        Command::DemoImage(a) => demo_image::run(&a, &mut out),
        Command::Probe(a) => Ok(probe::run(&a, &mut out)),
        Command::Serve(_) | Command::Policy(_) => Err(CliError::Usage("not an admin API command".into())),
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file; every key is documented in config/tagpin.toml.
    #[arg(long, env = "TAGPIN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:5050].
    #[arg(long, env = "TAGPIN_LISTEN")]
    pub listen: Option<String>,
    /// Upstream registry origin, http:// or https:// (required).
    #[arg(long, env = "TAGPIN_UPSTREAM")]
    pub upstream: Option<String>,
    /// Directory of the pin store [default: ./data].
    #[arg(long, env = "TAGPIN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Tag glob that stays mutable, e.g. 'latest' or 'dev-*' (repeatable; several may be
    /// given comma-separated, and a comma inside a `{a,b}` group stays in its glob).
    #[arg(long = "exclude", env = "TAGPIN_EXCLUDE")]
    pub exclude: Vec<String>,
    /// Log format [default: pretty].
    #[arg(long, env = "TAGPIN_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// How manifest reads by a protected tag are answered: `pinned` serves the pinned manifest whatever the upstream holds under the tag (and pins a tag on its first pull), `forward` passes them to the upstream by tag [default: pinned].
    #[arg(long, env = "TAGPIN_READS", value_enum)]
    pub reads: Option<Reads>,
    /// Origin clients use to reach tagpin, for rewriting upload Locations (default: the request's Host).
    #[arg(long, env = "TAGPIN_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// HTTP status of a refused push or delete, 409 or 403 [default: 409].
    #[arg(long, env = "TAGPIN_REFUSE_STATUS")]
    pub refuse_status: Option<u16>,
    /// Bytes of the sled pin store's page cache (recently used pages; the rest is read
    /// from disk) [default: 67108864].
    #[arg(long, env = "TAGPIN_STORE_CACHE_BYTES")]
    pub store_cache_bytes: Option<u64>,
    /// Largest body of an online import through the admin API, in bytes; it is spooled
    /// to disk, not held in memory [default: 17179869184].
    #[arg(long, env = "TAGPIN_MAX_IMPORT_BYTES")]
    pub max_import_bytes: Option<u64>,
    /// Largest manifest accepted on a push, in bytes [default: 4194304].
    #[arg(long, env = "TAGPIN_MAX_MANIFEST_BYTES")]
    pub max_manifest_bytes: Option<usize>,
    /// Bytes all manifest bodies being read or forwarded may hold together; one eighth is kept for manifests up to 64 KiB [default: 67108864].
    #[arg(long, env = "TAGPIN_MANIFEST_MEMORY_BUDGET_BYTES")]
    pub manifest_memory_budget_bytes: Option<usize>,
    /// Bytes of the manifest memory budget the bodies from one client address (an IPv6 /64) may hold; behind a load balancer, set it to the whole budget [default: a quarter of the budget, at least --max-manifest-bytes].
    #[arg(long, env = "TAGPIN_MANIFEST_MEMORY_PER_CLIENT_BYTES")]
    pub manifest_memory_per_client_bytes: Option<usize>,
    /// Most tags one push may name (path tag plus `tag` parameters) [default: 64].
    #[arg(long, env = "TAGPIN_MAX_TAGS_PER_PUSH")]
    pub max_tags_per_push: Option<usize>,
    /// Extra PEM CA bundle trusted for an https:// upstream, besides the web roots.
    #[arg(long, env = "TAGPIN_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,
    /// PEM certificate chain for serving HTTPS (with --tls-key) [default: plain HTTP].
    #[arg(long, env = "TAGPIN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "TAGPIN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Worker threads, each with its own event loop [default: the number of CPUs].
    #[arg(long, env = "TAGPIN_WORKERS")]
    pub workers: Option<usize>,
    /// Most client connections open at once [default: 4096].
    #[arg(long, env = "TAGPIN_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Largest request head (request line and headers) in bytes; larger gets 431, 8192 to 1048576 [default: 65536].
    #[arg(long, env = "TAGPIN_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Most admin API connections open at once [default: 64].
    #[arg(long, env = "TAGPIN_ADMIN_MAX_CONNECTIONS")]
    pub admin_max_connections: Option<usize>,
    /// Milliseconds to connect to the upstream [default: 5000].
    #[arg(long, env = "TAGPIN_UPSTREAM_CONNECT_TIMEOUT_MS")]
    pub upstream_connect_timeout_ms: Option<u64>,
    /// Milliseconds to wait for the upstream's response headers [default: 60000].
    #[arg(long, env = "TAGPIN_UPSTREAM_HEADER_TIMEOUT_MS")]
    pub upstream_header_timeout_ms: Option<u64>,
    /// Milliseconds tagpin waits for the upstream in its own checks (the tag check before a
    /// push, tag listings, fetching a pinned manifest) [default: 10000].
    #[arg(long, env = "TAGPIN_UPSTREAM_CHECK_TIMEOUT_MS")]
    pub upstream_check_timeout_ms: Option<u64>,
    /// Milliseconds a body (either direction) may stall before the transfer is cut [default: 60000].
    #[arg(long, env = "TAGPIN_BODY_IDLE_TIMEOUT_MS")]
    pub body_idle_timeout_ms: Option<u64>,
    /// Milliseconds a client has to send its request headers [default: 30000].
    #[arg(long, env = "TAGPIN_CLIENT_HEADER_TIMEOUT_MS")]
    pub client_header_timeout_ms: Option<u64>,
    /// PostgreSQL store for several replicas, postgres://user@host:port/db?sslmode=disable
    /// (the password may come from --database-password-file) [default: the sled store in
    /// --data-dir].
    #[arg(long, env = "TAGPIN_DATABASE_URL")]
    pub database_url: Option<String>,
    /// File holding the database password (one line).
    #[arg(long, env = "TAGPIN_DATABASE_PASSWORD_FILE")]
    pub database_password_file: Option<PathBuf>,
    #[command(flatten)]
    pub database_tls: crate::cli::transfer::DatabaseTlsArgs,
    /// Address of the admin API listener, e.g. 127.0.0.1:5051 [default: off]. Keep it on a
    /// private address: it can release tags.
    #[arg(long, env = "TAGPIN_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// File of admin tokens, one `name:token` per line (required with --admin-listen).
    #[arg(long, env = "TAGPIN_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Address of a listener of its own for /metrics, e.g. 127.0.0.1:9090; when set, the
    /// registry port no longer serves /metrics [default: the registry port serves it].
    #[arg(long, env = "TAGPIN_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// File with tagpin's own upstream credentials, one `user:password` line, for seeding
    /// and drift checks (Basic auth and the registry token flow).
    #[arg(long, env = "TAGPIN_UPSTREAM_CREDENTIALS_FILE")]
    pub upstream_credentials_file: Option<PathBuf>,
    /// A token realm tagpin may fetch its own tokens from, as a URL prefix
    /// (`https://auth.example.com/token`); repeatable. When given, no other realm is used
    /// [default: any realm the built-in checks allow].
    #[arg(long = "token-realm", env = "TAGPIN_TOKEN_REALMS", value_delimiter = ',')]
    pub token_realms: Vec<String>,
    /// Run the drift check this often, e.g. 10m [default: off].
    #[arg(long, env = "TAGPIN_DRIFT_INTERVAL")]
    pub drift_interval: Option<String>,
    /// Upstream requests a seed, a verify, a drift check or the adoption of a
    /// repository's tags before a delete by digest keeps in flight at most, 1 to 256 (a
    /// seed or verify may ask for fewer) [default: 8].
    #[arg(long, env = "TAGPIN_WALK_CONCURRENCY")]
    pub walk_concurrency: Option<usize>,
    /// How long after it was forwarded a write whose answer was lost may still land at the
    /// upstream; its record keeps the tag (or digest) reserved until then, e.g. 15m
    /// [default: 15m; at least twice the upstream header timeout].
    #[arg(long, env = "TAGPIN_IN_DOUBT_HORIZON")]
    pub in_doubt_horizon: Option<String>,
    /// File holding the Ed25519 key that signs the history log's checkpoints, as
    /// `tagpin log keygen` writes it; every replica gets the same file [default: unsigned
    /// checkpoints].
    #[arg(long, env = "TAGPIN_LOG_SIGNING_KEY", value_name = "FILE")]
    pub log_signing_key: Option<PathBuf>,
    /// The origin line of the log's checkpoints [default: the signing key's name, or
    /// `tagpin` without a key].
    #[arg(long, env = "TAGPIN_LOG_ORIGIN")]
    pub log_origin: Option<String>,
    /// Emit the current checkpoint as a `log_checkpoint` audit event at most this often
    /// while the log grows, e.g. 1m [default: 1m].
    #[arg(long, env = "TAGPIN_LOG_CHECKPOINT_INTERVAL")]
    pub log_checkpoint_interval: Option<String>,
    /// Milliseconds in-flight requests get to finish after SIGTERM [default: 30000].
    #[arg(long, env = "TAGPIN_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// Milliseconds a whole manifest body has to arrive, however steadily it trickles [default: 30000].
    #[arg(long, env = "TAGPIN_MANIFEST_BODY_TIMEOUT_MS")]
    pub manifest_body_timeout_ms: Option<u64>,
    /// Milliseconds a manifest body waits for memory from the budget before a 503 [default: 2000].
    #[arg(long, env = "TAGPIN_MANIFEST_BUDGET_WAIT_MS")]
    pub manifest_budget_wait_ms: Option<u64>,
    /// Milliseconds a delete by digest waits for the adoption of its repository's tags that predate tagpin before it is answered 503 (the adoption goes on; a retry finds it further along) [default: 60000].
    #[arg(long, env = "TAGPIN_ADOPTION_WAIT_TIMEOUT_MS")]
    pub adoption_wait_timeout_ms: Option<u64>,
}

impl ServeArgs {
    /// Lay the flags over the file's values: a flag that was given wins.
    pub fn overlay(self, file: RawConfig) -> RawConfig {
        let t = file.timeouts.unwrap_or_default();
        RawConfig {
            listen: self.listen.or(file.listen),
            upstream: self.upstream.or(file.upstream),
            data_dir: self.data_dir.or(file.data_dir),
            store_cache_bytes: self.store_cache_bytes.or(file.store_cache_bytes),
            max_import_bytes: self.max_import_bytes.or(file.max_import_bytes),
            exclude: if self.exclude.is_empty() {
                file.exclude
            } else {
                Some(self.exclude.iter().flat_map(|g| split_globs(g)).collect())
            },
            rules: file.rules,
            // Webhook targets hold secrets and lists: the file alone sets them.
            notify: file.notify,
            notify_max_age: file.notify_max_age,
            notify_retry_max_interval: file.notify_retry_max_interval,
            notify_outbox_max_events: file.notify_outbox_max_events,
            log_format: self.log_format.or(file.log_format),
            reads: self.reads.or(file.reads),
            public_url: self.public_url.or(file.public_url),
            refuse_status: self.refuse_status.or(file.refuse_status),
            max_manifest_bytes: self.max_manifest_bytes.or(file.max_manifest_bytes),
            manifest_memory_budget_bytes: self.manifest_memory_budget_bytes.or(file.manifest_memory_budget_bytes),
            manifest_memory_per_client_bytes: self
                .manifest_memory_per_client_bytes
                .or(file.manifest_memory_per_client_bytes),
            max_tags_per_push: self.max_tags_per_push.or(file.max_tags_per_push),
            upstream_ca: self.upstream_ca.or(file.upstream_ca),
            max_connections: self.max_connections.or(file.max_connections),
            max_header_bytes: self.max_header_bytes.or(file.max_header_bytes),
            admin_max_connections: self.admin_max_connections.or(file.admin_max_connections),
            workers: self.workers.or(file.workers),
            tls_cert: self.tls_cert.or(file.tls_cert),
            tls_key: self.tls_key.or(file.tls_key),
            database_url: self.database_url.or(file.database_url),
            database_password_file: self.database_password_file.or(file.database_password_file),
            database_sslmode: self.database_tls.database_sslmode.or(file.database_sslmode),
            database_sslrootcert: self.database_tls.database_sslrootcert.or(file.database_sslrootcert),
            database_sslcert: self.database_tls.database_sslcert.or(file.database_sslcert),
            database_sslkey: self.database_tls.database_sslkey.or(file.database_sslkey),
            admin_listen: self.admin_listen.or(file.admin_listen),
            admin_token_file: self.admin_token_file.or(file.admin_token_file),
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            upstream_credentials_file: self.upstream_credentials_file.or(file.upstream_credentials_file),
            token_realms: if self.token_realms.is_empty() {
                file.token_realms
            } else {
                Some(self.token_realms)
            },
            drift_interval: self.drift_interval.or(file.drift_interval),
            walk_concurrency: self.walk_concurrency.or(file.walk_concurrency),
            in_doubt_horizon: self.in_doubt_horizon.or(file.in_doubt_horizon),
            log_signing_key: self.log_signing_key.or(file.log_signing_key),
            log_origin: self.log_origin.or(file.log_origin),
            log_checkpoint_interval: self.log_checkpoint_interval.or(file.log_checkpoint_interval),
            timeouts: Some(RawTimeouts {
                upstream_connect_ms: self.upstream_connect_timeout_ms.or(t.upstream_connect_ms),
                upstream_header_ms: self.upstream_header_timeout_ms.or(t.upstream_header_ms),
                upstream_check_ms: self.upstream_check_timeout_ms.or(t.upstream_check_ms),
                body_idle_ms: self.body_idle_timeout_ms.or(t.body_idle_ms),
                client_header_ms: self.client_header_timeout_ms.or(t.client_header_ms),
                shutdown_grace_ms: self.shutdown_grace_ms.or(t.shutdown_grace_ms),
                manifest_body_ms: self.manifest_body_timeout_ms.or(t.manifest_body_ms),
                manifest_budget_wait_ms: self.manifest_budget_wait_ms.or(t.manifest_budget_wait_ms),
                adoption_wait_ms: self.adoption_wait_timeout_ms.or(t.adoption_wait_ms),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usage_error_names_what_is_missing_on_one_line() {
        let e = Cli::try_parse_from(["tagpin", "release", "my-api:1.0"]).unwrap_err();
        let line = one_line(&e.render().to_string());
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with(
                "the following required arguments were not provided: --reason <REASON>; Usage: tagpin release"
            ),
            "{line}"
        );
    }

    #[test]
    fn client_commands_exit_2_on_usage_errors_and_the_others_64() {
        let code = |args: &[&str]| usage_exit_code(args.iter().map(std::ffi::OsString::from));
        assert_eq!(code(&["tagpin", "pins", "lst"]), 2);
        assert_eq!(code(&["tagpin", "release", "--bogus"]), 2);
        assert_eq!(code(&["tagpin", "claims", "clear", "a/b:v1"]), 2);
        assert_eq!(code(&["tagpin", "resolve", "a/b:v1", "--at", "yesterday"]), 2);
        assert_eq!(code(&["tagpin", "serve", "--bogus"]), 64);
        assert_eq!(code(&["tagpin", "--bogus"]), 64);
        assert_eq!(code(&["tagpin"]), 64);
    }
}

/// `a,b` is two globs, `{a,b}` one: split at the commas outside braces.
fn split_globs(list: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth) = (Vec::new(), String::new(), 0usize);
    for c in list.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out.into_iter().filter(|g| !g.is_empty()).collect()
}

#[cfg(test)]
mod glob_list_tests {
    #[test]
    fn commas_inside_braces_stay_in_their_glob() {
        assert_eq!(super::split_globs("dev-*,{latest,edge}"), ["dev-*", "{latest,edge}"]);
        assert_eq!(super::split_globs("{a,b}"), ["{a,b}"]);
        assert_eq!(super::split_globs("a,,b"), ["a", "b"]);
    }
}
