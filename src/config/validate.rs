//! Turning a [`RawConfig`] into a [`Config`]: defaults, parsing and range checks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{StatusCode, Uri};

use super::{Config, ConfigError, LogFormat, Origin, RawConfig, Timeouts};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:5050";
pub const DEFAULT_DATA_DIR: &str = "./data";
pub const DEFAULT_MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Largest online import body: about 50 million pins as `tagpin export` writes them.
pub const DEFAULT_MAX_IMPORT_BYTES: u64 = 16 << 30;
pub const DEFAULT_MAX_TAGS_PER_PUSH: usize = 64;
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// The connection limit is a tokio `Semaphore`, which panics beyond `usize::MAX >> 3`
/// permits; a million open connections is far past what one host's file descriptors
/// allow anyway, so anything larger is a typo rather than a setting.
pub const MAX_MAX_CONNECTIONS: usize = 1_000_000;
/// 64 KiB: far above what registry clients send (a bearer token is a few KiB), a
/// sixth of hyper's own default buffer.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// hyper's smallest read buffer; a head limit below it would not hold.
pub const MIN_MAX_HEADER_BYTES: usize = 8 * 1024;
pub const MAX_MAX_HEADER_BYTES: usize = 1024 * 1024;
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;
pub const DEFAULT_WALK_CONCURRENCY: usize = 8;
/// Far past what a registry serves one client at once; a larger number is a typo.
pub const MAX_WALK_CONCURRENCY: usize = 256;
/// 64 MiB: fourteen 4 MiB manifests at once plus the small-manifest reserve, well inside
/// the 256 Mi memory limit of the shipped StatefulSet.
pub const DEFAULT_MANIFEST_MEMORY_BUDGET_BYTES: usize = 64 * 1024 * 1024;

impl RawConfig {
    pub fn validate(self) -> Result<Config, ConfigError> {
        let log = self.log_settings()?;
        let listen_text = self.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = listen_text
            .parse()
            .map_err(|_| ConfigError::invalid("listen", format!("{listen_text:?} is not an IP:port address")))?;
        let upstream_text = self
            .upstream
            .ok_or_else(|| ConfigError::invalid("upstream", "is required (e.g. --upstream http://127.0.0.1:5001)"))?;
        let upstream = parse_origin("upstream", &upstream_text)?;
        let public_url = self
            .public_url
            .filter(|s| !s.is_empty())
            .map(|s| parse_origin("public_url", &s))
            .transpose()?;
        let exclude = self.exclude.unwrap_or_default();
        for glob in &exclude {
            crate::policy::rules::glob_set(std::slice::from_ref(glob))
                .map_err(|e| ConfigError::invalid("exclude", e.to_string()))?;
        }
        let rules = self.rules.map(super::rules::parse_rules).transpose()?;
        let notify = super::notify::parse(super::notify::RawNotify {
            entries: self.notify,
            max_age: self.notify_max_age.as_deref(),
            retry_max_interval: self.notify_retry_max_interval.as_deref(),
            outbox_max_events: self.notify_outbox_max_events,
        })?;
        let refuse_status = match self.refuse_status.unwrap_or(409) {
            409 => StatusCode::CONFLICT,
            403 => StatusCode::FORBIDDEN,
            other => {
                return Err(ConfigError::invalid(
                    "refuse_status",
                    format!("must be 409 or 403, not {other}"),
                ))
            }
        };
        let max_manifest_bytes = self.max_manifest_bytes.unwrap_or(DEFAULT_MAX_MANIFEST_BYTES);
        if !(1024..=64 * 1024 * 1024).contains(&max_manifest_bytes) {
            return Err(ConfigError::invalid(
                "max_manifest_bytes",
                "must be between 1024 and 67108864",
            ));
        }
        let manifest_memory_budget_bytes = self
            .manifest_memory_budget_bytes
            .unwrap_or(DEFAULT_MANIFEST_MEMORY_BUDGET_BYTES);
        // Twice the largest manifest, so one always fits beside the small-manifest reserve
        // (an eighth of the budget); at least 1 MiB, so that reserve holds a 64 KiB body.
        let least_budget = (2 * max_manifest_bytes).max(1024 * 1024);
        if !(least_budget..=64 * 1024 * 1024 * 1024).contains(&manifest_memory_budget_bytes) {
            return Err(ConfigError::invalid(
                "manifest_memory_budget_bytes",
                format!(
                    "must be at least {least_budget} (twice max_manifest_bytes, and 1 MiB) and at most 68719476736"
                ),
            ));
        }
        debug_assert!(crate::manifest::Budget::largest_grant(manifest_memory_budget_bytes) >= max_manifest_bytes);
        // At least one manifest of the largest size, so every legal push can get its
        // memory; at most the whole budget (which turns the share off).
        let store_cache_bytes = self.store_cache_bytes.unwrap_or(crate::store::DEFAULT_SLED_CACHE_BYTES);
        if !(1024 * 1024..=1 << 40).contains(&store_cache_bytes) {
            return Err(ConfigError::invalid(
                "store_cache_bytes",
                "must be at least 1048576 (1 MiB) and at most 1099511627776 (1 TiB)".to_string(),
            ));
        }
        let max_import_bytes = self.max_import_bytes.unwrap_or(DEFAULT_MAX_IMPORT_BYTES);
        if max_import_bytes < 1024 * 1024 {
            return Err(ConfigError::invalid(
                "max_import_bytes",
                "must be at least 1048576 (1 MiB)".to_string(),
            ));
        }
        let manifest_memory_per_client_bytes = self
            .manifest_memory_per_client_bytes
            .unwrap_or((manifest_memory_budget_bytes / 4).max(max_manifest_bytes));
        if !(max_manifest_bytes..=manifest_memory_budget_bytes).contains(&manifest_memory_per_client_bytes) {
            return Err(ConfigError::invalid(
                "manifest_memory_per_client_bytes",
                format!(
                    "must be at least max_manifest_bytes ({max_manifest_bytes}) and at most \
                     manifest_memory_budget_bytes ({manifest_memory_budget_bytes})"
                ),
            ));
        }
        let max_tags_per_push = self.max_tags_per_push.unwrap_or(DEFAULT_MAX_TAGS_PER_PUSH);
        if !(1..=1024).contains(&max_tags_per_push) {
            return Err(ConfigError::invalid("max_tags_per_push", "must be between 1 and 1024"));
        }
        let max_connections = self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if !(1..=MAX_MAX_CONNECTIONS).contains(&max_connections) {
            return Err(ConfigError::invalid(
                "max_connections",
                format!("must be between 1 and {MAX_MAX_CONNECTIONS}"),
            ));
        }
        let max_header_bytes = self.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES);
        if !(MIN_MAX_HEADER_BYTES..=MAX_MAX_HEADER_BYTES).contains(&max_header_bytes) {
            return Err(ConfigError::invalid(
                "max_header_bytes",
                format!("must be between {MIN_MAX_HEADER_BYTES} and {MAX_MAX_HEADER_BYTES}"),
            ));
        }
        let admin_max_connections = self.admin_max_connections.unwrap_or(DEFAULT_ADMIN_MAX_CONNECTIONS);
        if !(1..=MAX_MAX_CONNECTIONS).contains(&admin_max_connections) {
            return Err(ConfigError::invalid(
                "admin_max_connections",
                format!("must be between 1 and {MAX_MAX_CONNECTIONS}"),
            ));
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = self.workers.unwrap_or(cpus);
        if !(1..=256).contains(&workers) {
            return Err(ConfigError::invalid("workers", "must be between 1 and 256"));
        }
        if let Some(ca) = &self.upstream_ca {
            if !ca.is_file() {
                return Err(ConfigError::invalid(
                    "upstream_ca",
                    format!("{} is not a readable file", ca.display()),
                ));
            }
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(ConfigError::invalid("tls_cert", "tls_cert and tls_key go together"));
            }
            (Some(cert), Some(key)) => {
                for (k, p) in [("tls_cert", cert), ("tls_key", key)] {
                    if !p.is_file() {
                        return Err(ConfigError::invalid(
                            k,
                            format!("{} is not a readable file", p.display()),
                        ));
                    }
                }
            }
            (None, None) => {}
        }
        let self_listen_port = listen.port();
        let admin = match (self.admin_listen.filter(|s| !s.is_empty()), &self.admin_token_file) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "admin_token_file",
                    "is required with admin_listen: one name:token per line",
                ))
            }
            (Some(addr), Some(file)) => {
                let listen: SocketAddr = addr
                    .parse()
                    .map_err(|_| ConfigError::invalid("admin_listen", format!("{addr:?} is not an IP:port address")))?;
                if listen.port() != 0 && listen.port() == self_listen_port {
                    return Err(ConfigError::invalid(
                        "admin_listen",
                        "must not be the registry port: the admin API has a listener of its own",
                    ));
                }
                if listen == SocketAddr::from(([0, 0, 0, 0], listen.port())) {
                    tracing::warn!("the admin API listens on every address; keep it on a private one (SECURITY.md)");
                }
                Some(super::AdminConfig {
                    listen,
                    tokens: super::secrets::admin_tokens(file)?,
                })
            }
        };
        let metrics_listen = self
            .metrics_listen
            .filter(|s| !s.is_empty())
            .map(|addr| {
                let at: SocketAddr = addr.parse().map_err(|_| {
                    ConfigError::invalid("metrics_listen", format!("{addr:?} is not an IP:port address"))
                })?;
                let taken = [Some(self_listen_port), admin.as_ref().map(|a| a.listen.port())];
                if at.port() != 0 && taken.contains(&Some(at.port())) {
                    return Err(ConfigError::invalid(
                        "metrics_listen",
                        "must not be the registry or admin port: /metrics gets a listener of its own",
                    ));
                }
                Ok(at)
            })
            .transpose()?;
        let database = match self.database_url.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(url) => Some(super::database::database(&super::DatabaseSettings {
                url,
                password_file: self.database_password_file.as_deref(),
                sslmode: self.database_sslmode.as_deref().filter(|s| !s.is_empty()),
                sslrootcert: self.database_sslrootcert.as_deref(),
                sslcert: self.database_sslcert.as_deref(),
                sslkey: self.database_sslkey.as_deref(),
            })?),
        };
        let upstream_credentials = self
            .upstream_credentials_file
            .as_deref()
            .map(super::secrets::credentials)
            .transpose()?;
        let token_realms = self
            .token_realms
            .unwrap_or_default()
            .iter()
            .map(|t| super::TokenRealm::parse(t.trim()).map_err(|e| ConfigError::invalid("token_realms", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let drift_interval = self
            .drift_interval
            .filter(|s| !s.is_empty())
            .map(|s| {
                humantime::parse_duration(&s)
                    .ok()
                    .filter(|d| *d >= Duration::from_secs(1))
                    .ok_or_else(|| {
                        ConfigError::invalid(
                            "drift_interval",
                            format!("{s:?} is not a duration of at least 1s, e.g. 10m"),
                        )
                    })
            })
            .transpose()?;
        let walk_concurrency = self.walk_concurrency.unwrap_or(DEFAULT_WALK_CONCURRENCY);
        if !(1..=MAX_WALK_CONCURRENCY).contains(&walk_concurrency) {
            return Err(ConfigError::invalid(
                "walk_concurrency",
                format!("must be between 1 and {MAX_WALK_CONCURRENCY}"),
            ));
        }
        let t = self.timeouts.unwrap_or_default();
        let ms = |key: &'static str, v: Option<u64>, default: u64| -> Result<Duration, ConfigError> {
            match v.unwrap_or(default) {
                0 => Err(ConfigError::invalid(key, "must be at least 1 ms")),
                v => Ok(Duration::from_millis(v)),
            }
        };
        let timeouts = Timeouts {
            upstream_connect: ms("timeouts.upstream_connect_ms", t.upstream_connect_ms, 5_000)?,
            upstream_header: ms("timeouts.upstream_header_ms", t.upstream_header_ms, 60_000)?,
            upstream_check: ms("timeouts.upstream_check_ms", t.upstream_check_ms, 10_000)?,
            body_idle: ms("timeouts.body_idle_ms", t.body_idle_ms, 60_000)?,
            client_header: ms("timeouts.client_header_ms", t.client_header_ms, 30_000)?,
            shutdown_grace: ms("timeouts.shutdown_grace_ms", t.shutdown_grace_ms, 30_000)?,
            manifest_body: ms("timeouts.manifest_body_ms", t.manifest_body_ms, 30_000)?,
            manifest_budget_wait: ms("timeouts.manifest_budget_wait_ms", t.manifest_budget_wait_ms, 2_000)?,
            adoption_wait: ms("timeouts.adoption_wait_ms", t.adoption_wait_ms, 60_000)?,
        };
        // A wait as long as the deadline would cut waiting bodies with a misleading 408
        // ("took too long to arrive") instead of the retryable 503 they should get.
        if timeouts.manifest_budget_wait >= timeouts.manifest_body {
            return Err(ConfigError::invalid(
                "timeouts.manifest_budget_wait_ms",
                "must be shorter than timeouts.manifest_body_ms",
            ));
        }
        let in_doubt_horizon = match self.in_doubt_horizon.filter(|s| !s.is_empty()) {
            None => Duration::from_secs(15 * 60),
            Some(s) => humantime::parse_duration(&s)
                .ok()
                // A decided write is forwarded within a quarter of the horizon and waited for
                // at most a quarter more; the upstream gets the other half to apply it.
                .filter(|d| *d >= timeouts.upstream_header * 2 && d.as_secs() >= 1)
                .ok_or_else(|| {
                    ConfigError::invalid(
                        "in_doubt_horizon",
                        format!(
                            "{s:?} is not a duration of at least twice the upstream header timeout ({}s), e.g. 15m",
                            (timeouts.upstream_header * 2).as_secs()
                        ),
                    )
                })?,
        };
        Ok(Config {
            listen,
            upstream,
            public_url,
            data_dir: self.data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            store_cache_bytes,
            max_import_bytes,
            exclude,
            rules,
            reload: None,
            log_format: self.log_format.unwrap_or(LogFormat::Pretty),
            reads: self.reads.unwrap_or_default(),
            refuse_status,
            max_manifest_bytes,
            manifest_memory_budget_bytes,
            manifest_memory_per_client_bytes,
            max_tags_per_push,
            upstream_ca: self.upstream_ca,
            max_connections,
            max_header_bytes,
            admin_max_connections,
            workers,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            database,
            admin,
            metrics_listen,
            upstream_credentials,
            token_realms,
            drift_interval,
            walk_concurrency,
            in_doubt_horizon,
            log,
            notify,
            timeouts,
        })
    }

    /// The signing key is read and checked now, so a bad key stops the start instead of
    /// leaving checkpoints unsigned.
    fn log_settings(&self) -> Result<super::LogSettings, ConfigError> {
        let signing_key = self
            .log_signing_key
            .as_deref()
            .map(|path| {
                let text = super::secrets::read("log_signing_key", path)?;
                crate::log::SigningKey::parse(&text)
                    .map_err(|e| ConfigError::invalid("log_signing_key", format!("{}: {e}", path.display())))?;
                Ok::<_, ConfigError>(super::Secret(text))
            })
            .transpose()?;
        let origin = match self.log_origin.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(o) if o.chars().any(char::is_control) => {
                return Err(ConfigError::invalid("log_origin", "must be one line of text"));
            }
            Some(o) => Some(o.to_owned()),
        };
        let checkpoint_interval = match self.log_checkpoint_interval.as_deref().filter(|s| !s.is_empty()) {
            None => Duration::from_secs(60),
            Some(s) => humantime::parse_duration(s)
                .ok()
                .filter(|d| *d >= Duration::from_secs(1))
                .ok_or_else(|| {
                    ConfigError::invalid(
                        "log_checkpoint_interval",
                        format!("{s:?} is not a duration of at least 1s, e.g. 1m"),
                    )
                })?,
        };
        Ok(super::LogSettings {
            signing_key,
            origin,
            checkpoint_interval,
        })
    }
}

/// An origin is a scheme (http or https) and an authority, with no path beyond `/`.
fn parse_origin(key: &'static str, text: &str) -> Result<Origin, ConfigError> {
    let bad = |why: &str| ConfigError::invalid(key, format!("{text:?} {why}"));
    let uri: Uri = text.parse().map_err(|_| bad("is not a URL"))?;
    let scheme = uri.scheme().cloned().ok_or_else(|| bad("needs http:// or https://"))?;
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        return Err(bad("needs http:// or https://"));
    }
    let authority = uri.authority().cloned().ok_or_else(|| bad("has no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("must not carry credentials"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("must not have a path or query: tagpin forwards /v2/ as it is"));
    }
    Ok(Origin { scheme, authority })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> RawConfig {
        RawConfig::from_toml(text, std::path::Path::new("t.toml")).unwrap()
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = raw(r#"upstream = "http://127.0.0.1:5000""#).validate().unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(c.refuse_status, StatusCode::CONFLICT);
        assert_eq!(c.max_manifest_bytes, 4 * 1024 * 1024);
        assert_eq!(c.upstream.to_string(), "http://127.0.0.1:5000");
        assert_eq!(c.log_format, LogFormat::Pretty);
        assert_eq!(c.timeouts.upstream_connect, Duration::from_secs(5));
        assert_eq!(c.manifest_memory_budget_bytes, 64 * 1024 * 1024);
        assert_eq!(c.manifest_memory_per_client_bytes, 16 * 1024 * 1024);
        assert_eq!(c.timeouts.manifest_body, Duration::from_secs(30));
        assert_eq!(c.timeouts.manifest_budget_wait, Duration::from_secs(2));
        assert_eq!(c.max_header_bytes, 64 * 1024);
        assert_eq!(c.admin_max_connections, 64);
        assert_eq!(c.walk_concurrency, 8);
        assert_eq!(c.timeouts.adoption_wait, Duration::from_secs(60));
    }

    #[test]
    fn the_per_client_share_defaults_to_a_quarter_of_the_budget_and_fits_the_largest_manifest() {
        let c = raw("upstream = \"http://x\"\nmax_manifest_bytes = 20971520")
            .validate()
            .unwrap();
        assert_eq!(c.manifest_memory_per_client_bytes, 20971520);
        let c = raw("upstream = \"http://x\"\nmanifest_memory_per_client_bytes = 67108864")
            .validate()
            .unwrap();
        assert_eq!(c.manifest_memory_per_client_bytes, 64 * 1024 * 1024);
    }

    #[test]
    fn the_example_config_file_is_valid() {
        let text = include_str!("../../config/tagpin.toml");
        let c = raw(text).validate().unwrap();
        assert!(c.exclude.is_empty());
        let rules = c.rules.expect("the example configures rules");
        // The example starts with the signature rule, as the docs say it must.
        assert_eq!(rules[0], crate::policy::RuleSpec::defaults()[0]);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = RawConfig::from_toml("upstrem = \"x\"", std::path::Path::new("t.toml")).unwrap_err();
        assert!(e.to_string().contains("upstrem"), "{e}");
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn max_connections_beyond_the_semaphore_limit_is_a_config_error() {
        // The command line can carry usize::MAX, which TOML (i64) cannot.
        for n in [usize::MAX, usize::MAX >> 3, MAX_MAX_CONNECTIONS + 1] {
            let raw = RawConfig {
                upstream: Some("http://127.0.0.1:5000".into()),
                max_connections: Some(n),
                ..RawConfig::default()
            };
            let e = raw.validate().unwrap_err().to_string();
            assert!(e.starts_with("max_connections"), "{n}: {e}");
        }
        let raw = RawConfig {
            upstream: Some("http://127.0.0.1:5000".into()),
            max_connections: Some(MAX_MAX_CONNECTIONS),
            ..RawConfig::default()
        };
        assert_eq!(raw.validate().unwrap().max_connections, MAX_MAX_CONNECTIONS);
    }

    #[test]
    fn invalid_values_name_their_key() {
        let cases = [
            ("", "upstream"),
            ("upstream = \"ftp://x\"", "upstream"),
            ("upstream = \"http://x/v2\"", "upstream"),
            ("upstream = \"http://u:p@x\"", "upstream"),
            ("upstream = \"http://x\"\nlisten = \"nope\"", "listen"),
            ("upstream = \"http://x\"\nrefuse_status = 500", "refuse_status"),
            ("upstream = \"http://x\"\nexclude = [\"a[\"]", "exclude"),
            (
                "upstream = \"http://x\"\ntoken_realms = [\"auth.example.com\"]",
                "token_realms",
            ),
            ("upstream = \"http://x\"\nmax_manifest_bytes = 10", "max_manifest_bytes"),
            (
                "upstream = \"http://x\"\nmanifest_memory_budget_bytes = 4194304",
                "manifest_memory_budget_bytes",
            ),
            (
                "upstream = \"http://x\"\nmax_manifest_bytes = 40000000",
                "manifest_memory_budget_bytes",
            ),
            (
                "upstream = \"http://x\"\nmanifest_memory_budget_bytes = 1000",
                "manifest_memory_budget_bytes",
            ),
            (
                "upstream = \"http://x\"\nmanifest_memory_per_client_bytes = 4194303",
                "manifest_memory_per_client_bytes",
            ),
            (
                "upstream = \"http://x\"\nmanifest_memory_per_client_bytes = 67108865",
                "manifest_memory_per_client_bytes",
            ),
            (
                "upstream = \"http://x\"\n[timeouts]\nmanifest_body_ms = 1000",
                "timeouts.manifest_budget_wait_ms",
            ),
            (
                "upstream = \"http://x\"\n[timeouts]\nbody_idle_ms = 0",
                "timeouts.body_idle_ms",
            ),
            ("upstream = \"http://x\"\npublic_url = \"x\"", "public_url"),
            ("upstream = \"http://x\"\nworkers = 0", "workers"),
            ("upstream = \"http://x\"\nmax_connections = 0", "max_connections"),
            ("upstream = \"http://x\"\nmax_connections = 1000001", "max_connections"),
            ("upstream = \"http://x\"\nmax_header_bytes = 8191", "max_header_bytes"),
            (
                "upstream = \"http://x\"\nmax_header_bytes = 1048577",
                "max_header_bytes",
            ),
            (
                "upstream = \"http://x\"\nadmin_max_connections = 0",
                "admin_max_connections",
            ),
            ("upstream = \"http://x\"\ntls_cert = \"/nonexistent\"", "tls_cert"),
        ];
        for (text, key) in cases {
            let e = raw(text).validate().unwrap_err();
            assert!(e.to_string().starts_with(key), "{text:?} gave {e}");
        }
    }
}
