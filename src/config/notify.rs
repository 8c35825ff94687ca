//! The `[[notify]]` entries of the config file (webhook targets) and the outbox's global
//! keys, checked one by one so an error names the entry's index and key
//! (`notify[1].url: ...`). A URL may hold credentials or a token in its path (Slack's do):
//! no error, log line or metric shows it; a target is named by its `name`, or its host.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;

use super::{ConfigError, Secret};
use crate::notify::EventKind;

const KEYS: [&str; 7] = [
    "name",
    "url",
    "events",
    "repositories",
    "secret_file",
    "timeout",
    "format",
];

/// How an event is written for a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// CloudEvents 1.0, structured mode.
    CloudEvents,
    /// A Slack incoming-webhook body: one line of text.
    Slack,
}

/// One webhook target.
#[derive(Clone)]
pub struct NotifyTarget {
    /// The entry's `name`, or its URL's host (and port): what logs and metrics show.
    pub name: String,
    /// Where events are posted, without any credentials it was written with.
    pub uri: http::Uri,
    /// `Authorization` from credentials in the URL (`https://user:password@host/...`).
    pub authorization: Option<Secret>,
    pub events: Vec<EventKind>,
    /// Which repositories' events it wants; `None`: all (and events of no repository).
    pub repositories: Option<globset::GlobSet>,
    /// The HMAC key: the first line of `secret_file`.
    pub secret: Option<Secret>,
    pub timeout: Duration,
    pub format: Format,
    /// A hash of the entry as written and of its secret: a reload that leaves both alone
    /// leaves the target's delivery running.
    pub fingerprint: u64,
}

impl std::fmt::Debug for NotifyTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NotifyTarget({})", self.name)
    }
}

impl NotifyTarget {
    /// Whether this target wants an event of `kind` about `repository`.
    pub fn wants(&self, kind: EventKind, repository: Option<&str>) -> bool {
        if kind == EventKind::Test {
            return true;
        }
        if !self.events.contains(&kind) {
            return false;
        }
        match (&self.repositories, repository) {
            (None, _) => true,
            (Some(globs), Some(repo)) => globs.is_match(repo),
            // An event about no repository (a policy reload, a checkpoint) concerns all.
            (Some(_), None) => true,
        }
    }
}

/// The webhook targets and the outbox's limits.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    pub targets: Vec<NotifyTarget>,
    /// Undelivered this long, an event is dropped (and counted).
    pub max_age: Duration,
    /// The longest wait between two attempts at one event.
    pub retry_max_interval: Duration,
    /// Most events the outbox holds; the oldest make room (and are counted).
    pub outbox_max_events: u64,
}

/// The keys as the file holds them.
pub struct RawNotify<'a> {
    pub entries: Option<Vec<toml::Value>>,
    pub max_age: Option<&'a str>,
    pub retry_max_interval: Option<&'a str>,
    pub outbox_max_events: Option<u64>,
}

pub fn parse(raw: RawNotify<'_>) -> Result<NotifyConfig, ConfigError> {
    let duration = |key: &'static str, text: Option<&str>, default: Duration| match text.filter(|s| !s.is_empty()) {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s)
            .ok()
            .filter(|d| d.as_secs() >= 1)
            .ok_or_else(|| ConfigError::invalid(key, format!("{s:?} is not a duration of at least 1s, e.g. 24h"))),
    };
    let max_age = duration("notify_max_age", raw.max_age, Duration::from_secs(24 * 3600))?;
    let retry_max_interval = duration(
        "notify_retry_max_interval",
        raw.retry_max_interval,
        Duration::from_secs(60),
    )?;
    let outbox_max_events = raw.outbox_max_events.unwrap_or(100_000);
    if outbox_max_events == 0 {
        return Err(ConfigError::invalid("notify_outbox_max_events", "must be at least 1"));
    }
    let targets = raw
        .entries
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, v)| parse_target(i, v))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, t) in targets.iter().enumerate() {
        if targets[..i].iter().any(|o| o.name == t.name) {
            return Err(err(
                i,
                "name",
                format!("{:?} names another entry too: give each entry its own name", t.name),
            ));
        }
    }
    Ok(NotifyConfig {
        targets,
        max_age,
        retry_max_interval,
        outbox_max_events,
    })
}

fn err(index: usize, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Notify {
        index,
        key: key.to_owned(),
        message: message.into(),
    }
}

fn parse_target(index: usize, value: toml::Value) -> Result<NotifyTarget, ConfigError> {
    let written = format!("{value:?}");
    let toml::Value::Table(table) = value else {
        return Err(err(index, "", "an entry is a table with at least url"));
    };
    for key in table.keys() {
        if !KEYS.contains(&key.as_str()) {
            return Err(err(
                index,
                key,
                format!("unknown key (an entry has {})", KEYS.join(", ")),
            ));
        }
    }
    let text = |key: &str| -> Result<Option<String>, ConfigError> {
        match table.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(err(index, key, "must be a string")),
        }
    };
    let list = |key: &str| -> Result<Option<Vec<String>>, ConfigError> {
        match table.get(key) {
            None => Ok(None),
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| err(index, key, "must be a list of strings"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(err(index, key, "must be a list of strings")),
        }
    };
    let url = text("url")?.ok_or_else(|| err(index, "url", "is required"))?;
    let (uri, authorization, host) = parse_url(&url).map_err(|m| err(index, "url", m))?;
    let name = match text("name")? {
        Some(n) if n.is_empty() || n.len() > 64 || n.chars().any(|c| c.is_control()) => {
            return Err(err(index, "name", "must be 1 to 64 printable characters"))
        }
        Some(n) => n,
        None => host,
    };
    let events = match list("events")? {
        None => EventKind::default_set(),
        Some(names) if names.is_empty() => return Err(err(index, "events", "is empty; leave it out for the default")),
        Some(names) => names
            .iter()
            .map(|n| {
                EventKind::parse(n).ok_or_else(|| {
                    let known: Vec<_> = crate::notify::CHOOSABLE.iter().map(|k| k.as_str()).collect();
                    err(
                        index,
                        "events",
                        format!("{n:?} is not an event (one of {})", known.join(", ")),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let repositories = list("repositories")?
        .map(|globs| crate::policy::rules::glob_set(&globs))
        .transpose()
        .map_err(|e| err(index, "repositories", e.to_string()))?;
    let secret = text("secret_file")?
        .map(|path| read_secret(&PathBuf::from(path)))
        .transpose()
        .map_err(|m| err(index, "secret_file", m))?;
    let timeout = match text("timeout")? {
        None => Duration::from_secs(10),
        Some(s) => humantime::parse_duration(&s)
            .ok()
            .filter(|d| d.as_millis() >= 100 && d.as_secs() <= 300)
            .ok_or_else(|| {
                err(
                    index,
                    "timeout",
                    format!("{s:?} is not a duration from 100ms to 5m, e.g. 10s"),
                )
            })?,
    };
    let format = match text("format")?.as_deref() {
        None | Some("cloudevents") => Format::CloudEvents,
        Some("slack") => Format::Slack,
        Some(other) => return Err(err(index, "format", format!("{other:?} is not cloudevents or slack"))),
    };
    let fingerprint = {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (written, secret.as_ref().map(|s| s.0.as_str())).hash(&mut h);
        h.finish()
    };
    Ok(NotifyTarget {
        fingerprint,
        name,
        uri,
        authorization,
        events,
        repositories,
        secret,
        timeout,
        format,
    })
}

/// The URL without credentials, `Authorization` for them, and the host (and port) that
/// names the target. Errors never repeat the URL: it may hold a token.
fn parse_url(text: &str) -> Result<(http::Uri, Option<Secret>, String), String> {
    let uri: http::Uri = text.parse().map_err(|_| "is not a URL".to_owned())?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err("must start with http:// or https://".into()),
    }
    let authority = uri.authority().ok_or("has no host")?.as_str();
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if host.is_empty() || host.starts_with(':') {
        return Err("has no host".into());
    }
    let authorization = userinfo.map(|u| {
        let decoded = percent_encoding::percent_decode_str(u).decode_utf8_lossy().into_owned();
        Secret(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(decoded)
        ))
    });
    let mut parts = uri.clone().into_parts();
    parts.authority = Some(host.parse().map_err(|_| "has an invalid host".to_owned())?);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    let uri = http::Uri::from_parts(parts).map_err(|_| "is not a URL".to_owned())?;
    Ok((uri, authorization, host.to_owned()))
}

fn read_secret(path: &std::path::Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(format!("{}: the first line is empty", path.display()));
    }
    Ok(Secret(line.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(text: &str) -> Vec<toml::Value> {
        let v: toml::Table = toml::from_str(text).unwrap();
        v["notify"].as_array().unwrap().clone()
    }

    fn one(text: &str) -> Result<NotifyConfig, ConfigError> {
        parse(RawNotify {
            entries: Some(entries(text)),
            max_age: None,
            retry_max_interval: None,
            outbox_max_events: None,
        })
    }

    #[test]
    fn credentials_leave_the_url_and_never_show() {
        let c = one("[[notify]]\nurl = \"https://bob:s3cret@hooks.example:8443/T0/B1/tokenpath\"\n").unwrap();
        let t = &c.targets[0];
        assert_eq!(t.name, "hooks.example:8443");
        assert_eq!(t.uri.to_string(), "https://hooks.example:8443/T0/B1/tokenpath");
        assert!(t.authorization.is_some());
        assert!(!format!("{c:?}").contains("s3cret") && !format!("{c:?}").contains("tokenpath"));
        assert_eq!(t.events.len(), 11);
        assert_eq!(t.timeout, Duration::from_secs(10));
        assert_eq!(c.max_age, Duration::from_secs(86_400));
    }

    #[test]
    fn bad_entries_name_index_and_key_without_the_url() {
        let e = one("[[notify]]\nurl = \"ftp://x/secret-token\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("notify[0].url:") && !e.contains("secret-token"), "{e}");
        let e = one("[[notify]]\nurl = \"http://a\"\n[[notify]]\nurl = \"http://a\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("notify[1].name:"), "{e}");
        let e = one("[[notify]]\nurl = \"http://a\"\nevents = [\"push_refusd\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("notify[0].events:") && e.contains("push_refused"), "{e}");
        let e = one("[[notify]]\nurl = \"http://a\"\nformat = \"teams\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("notify[0].format:"), "{e}");
        let e = one("[[notify]]\nurll = \"http://a\"\n").unwrap_err().to_string();
        assert!(e.starts_with("notify[0].urll:"), "{e}");
    }

    #[test]
    fn repositories_and_events_choose_what_a_target_wants() {
        let c =
            one("[[notify]]\nurl = \"http://a\"\nevents = [\"push_refused\"]\nrepositories = [\"team/**\"]\n").unwrap();
        let t = &c.targets[0];
        assert!(t.wants(EventKind::PushRefused, Some("team/api")));
        assert!(!t.wants(EventKind::PushRefused, Some("other/api")));
        assert!(!t.wants(EventKind::DeleteRefused, Some("team/api")));
    }
}
