//! The config file as written: every key optional, unknown keys refused, so a typo is an
//! error rather than a silently ignored setting. Defaults are applied in `validate`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ConfigError, LogFormat, Reads};

#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub store_cache_bytes: Option<u64>,
    pub max_import_bytes: Option<u64>,
    pub exclude: Option<Vec<String>>,
    /// `[[rules]]`, checked one by one in `validate` so errors name the rule.
    pub rules: Option<Vec<toml::Value>>,
    pub log_format: Option<LogFormat>,
    pub reads: Option<Reads>,
    pub public_url: Option<String>,
    pub refuse_status: Option<u16>,
    pub max_manifest_bytes: Option<usize>,
    pub manifest_memory_budget_bytes: Option<usize>,
    pub manifest_memory_per_client_bytes: Option<usize>,
    pub max_tags_per_push: Option<usize>,
    pub upstream_ca: Option<PathBuf>,
    pub max_connections: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub admin_max_connections: Option<usize>,
    pub workers: Option<usize>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub database_url: Option<String>,
    pub database_password_file: Option<PathBuf>,
    pub database_sslmode: Option<String>,
    pub database_sslrootcert: Option<PathBuf>,
    pub database_sslcert: Option<PathBuf>,
    pub database_sslkey: Option<PathBuf>,
    pub admin_listen: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    pub metrics_listen: Option<String>,
    pub upstream_credentials_file: Option<PathBuf>,
    pub token_realms: Option<Vec<String>>,
    pub drift_interval: Option<String>,
    pub walk_concurrency: Option<usize>,
    pub in_doubt_horizon: Option<String>,
    pub log_signing_key: Option<PathBuf>,
    pub log_origin: Option<String>,
    pub log_checkpoint_interval: Option<String>,
    /// `[[notify]]`, checked one by one in `validate` so errors name the entry.
    pub notify: Option<Vec<toml::Value>>,
    pub notify_max_age: Option<String>,
    pub notify_retry_max_interval: Option<String>,
    pub notify_outbox_max_events: Option<u64>,
    pub timeouts: Option<RawTimeouts>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub upstream_connect_ms: Option<u64>,
    pub upstream_header_ms: Option<u64>,
    pub upstream_check_ms: Option<u64>,
    pub body_idle_ms: Option<u64>,
    pub client_header_ms: Option<u64>,
    pub shutdown_grace_ms: Option<u64>,
    pub manifest_body_ms: Option<u64>,
    pub manifest_budget_wait_ms: Option<u64>,
    pub adoption_wait_ms: Option<u64>,
}

impl RawConfig {
    /// Parse TOML text; `path` only names the source in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: parse_message(&e, text),
        })
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }
}

/// toml's error in one line, with where it is but without the line it quotes: that line
/// may hold a webhook URL with its token or credentials, and the message goes to the
/// log and to the `policy_reload_failed` webhook.
fn parse_message(e: &toml::de::Error, text: &str) -> String {
    let what = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let start = before.rsplit('\n').next().unwrap_or("");
            let column = start.chars().count() + 1;
            // The key the line sets, when the error is in its value: a key is no secret.
            let key = start
                .split_once('=')
                .map(|(k, _)| k.trim())
                .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)));
            match key {
                Some(key) => format!("line {line}, column {column}, key {key}: {what}"),
                None => format!("line {line}, column {column}: {what}"),
            }
        }
        None => what,
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn a_parse_error_names_the_place_but_never_quotes_the_line() {
        let path = Path::new("t.toml");
        let token = "XoxSlackToken4a7c";
        for text in [
            format!("listen = \"127.0.0.1:1\"\n[[notify]]\nurl = \"https://u:pw@hooks.example/T/B/{token}\n"),
            format!("[[notify]]\nurl = \"https://hooks.example/T/B/{token}\" timeout = \"2s\"\n"),
            format!("[[notify]]\nurl = https://hooks.example/T/B/{token}\n"),
        ] {
            let e = RawConfig::from_toml(&text, path).unwrap_err().to_string();
            assert!(!e.contains(token) && !e.contains("pw"), "{e}");
            assert!(!e.contains('\n'), "{e}");
            assert!(e.contains("line "), "{e}");
        }
        // A bad value names its key (no secret), as the key's own check would.
        let e = RawConfig::from_toml("reads = \"pinnned\"\n", path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("key reads:") && e.contains("pinnned"), "{e}");
    }
}
