//! SIGHUP: re-read the config file and put its policy (rules and excludes) in force.
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
    // Compare what else changed against the file tagpin started with.
    file.rules = None;
    file.exclude = None;
    let mut started = source.file.clone();
    started.rules = None;
    started.exclude = None;
    if file != started {
        tracing::warn!(path = %source.path.display(), "config keys other than rules and exclude changed; they take effect at the next restart");
    }
    Ok(summary)
}

/// Reload and report: the audit event, the metric and the log line.
pub fn reload_and_report(shared: &Shared) {
    match reload(shared) {
        Ok(summary) => crate::telemetry::policy_event(&shared.metrics, Ok(&summary)),
        Err(ReloadError::NoConfigFile) => {
            tracing::warn!("SIGHUP received, but tagpin was started without --config: nothing to reload");
        }
        Err(e) => crate::telemetry::policy_event(&shared.metrics, Err(&e.to_string())),
    }
}
