//! SIGHUP: re-read the config file and put its policy (rules and excludes) and its
//! webhook targets (`[[notify]]` and the `notify_*` keys) in force.
//!
//! The new file is validated whole, as a restart would load it; an invalid one is
//! refused with one line and the old policy stays. Only the policy is reloaded: other
//! keys that changed are named in a log line as needing a restart. Requests that started
//! before the swap finish under the policy they started with (each takes one snapshot),
//! so a reload drops nothing.

use crate::app::Shared;
use crate::config::RawConfig;
use crate::policy::Policy;

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("tagpin was started without --config: there is nothing to reload")]
    NoConfigFile,
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Glob(#[from] crate::policy::rules::GlobError),
}

/// Reload the policy; returns the new policy's summary.
pub fn reload(shared: &Shared) -> Result<String, ReloadError> {
    let source = shared.config.reload.as_ref().ok_or(ReloadError::NoConfigFile)?;
    let mut file = RawConfig::load(&source.path)?;
    let mut checked = file.clone();
    if let Some(exclude) = &source.exclude_override {
        checked.exclude = Some(exclude.clone());
    }
    // The upstream may come from a flag or the environment instead of the file.
    if checked.upstream.is_none() {
        checked.upstream = Some(shared.config.upstream.to_string());
    }
    let config = checked.validate()?;
    let policy = Policy::new(&config.exclude, config.rules.as_deref())?;
    let summary = policy.summary();
    shared.set_policy(policy);
    shared.notify.set_config(config.notify.clone());
    // Compare what else changed against the file tagpin started with.
    file.rules = None;
    file.exclude = None;
    let changed = changed_keys(&source.file, &file);
    if !changed.is_empty() {
        let keys = changed.join(", ");
        tracing::warn!(path = %source.path.display(), keys = %keys, "config keys other than rules, exclude and notify changed: {keys}; they take effect at the next restart");
    }
    Ok(summary)
}

/// The keys a reload puts in force.
const RELOADED: [&str; 6] = [
    "rules",
    "exclude",
    "notify",
    "notify_max_age",
    "notify_retry_max_interval",
    "notify_outbox_max_events",
];

/// The keys (`timeouts.body_idle_ms` for a nested one) whose values differ between two
/// files, rules and exclude aside, in alphabetical order.
pub fn changed_keys(before: &RawConfig, after: &RawConfig) -> Vec<String> {
    let as_map = |c: &RawConfig| match serde_json::to_value(c) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let (before, after) = (as_map(before), as_map(after));
    let mut out = Vec::new();
    for (key, new) in &after {
        if RELOADED.contains(&key.as_str()) {
            continue;
        }
        let old = before.get(key).unwrap_or(&serde_json::Value::Null);
        match (old, new) {
            (serde_json::Value::Object(o), serde_json::Value::Object(n)) => {
                for (sub, v) in n {
                    if o.get(sub).unwrap_or(&serde_json::Value::Null) != v {
                        out.push(format!("{key}.{sub}"));
                    }
                }
            }
            (serde_json::Value::Null, serde_json::Value::Object(n))
            | (serde_json::Value::Object(n), serde_json::Value::Null) => {
                out.extend(
                    n.iter()
                        .filter(|(_, v)| !v.is_null())
                        .map(|(sub, _)| format!("{key}.{sub}")),
                );
            }
            (o, n) if o != n => out.push(key.clone()),
            _ => {}
        }
    }
    out
}

/// Reload and report: the audit event, the metric and the log line.
pub fn reload_and_report(shared: &Shared) {
    match reload(shared) {
        Ok(summary) => crate::telemetry::policy_event(&shared.metrics, Ok(&summary)),
        Err(ReloadError::NoConfigFile) => {
            tracing::warn!("SIGHUP received, but tagpin was started without --config: nothing to reload");
        }
        Err(e) => {
            let error = e.to_string();
            crate::telemetry::policy_event(&shared.metrics, Err(&error));
            shared.notify.enqueue(
                crate::notify::EventKind::PolicyReloadFailed,
                None,
                None,
                serde_json::json!({ "action": "policy_reload_failed", "error": error }),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_are_named_nested_ones_with_their_table() {
        let path = std::path::Path::new("t.toml");
        let a = RawConfig::from_toml("listen = \"127.0.0.1:1\"\nexclude = [\"a\"]\n", path).unwrap();
        let b = RawConfig::from_toml(
            "listen = \"127.0.0.1:2\"\nexclude = [\"b\"]\nworkers = 2\n[timeouts]\nbody_idle_ms = 5\n",
            path,
        )
        .unwrap();
        assert_eq!(changed_keys(&a, &b), ["listen", "timeouts.body_idle_ms", "workers"]);
        assert_eq!(changed_keys(&b, &a), ["listen", "timeouts.body_idle_ms", "workers"]);
        assert!(changed_keys(&a, &a).is_empty());
    }
}
