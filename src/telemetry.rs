//! Logging and the audit trail.
//!
//! Every decision on a protected tag is one `tracing` event with target `tagpin::audit`
//! and a fixed set of fields, so a security team can filter and ship them. Credentials
//! never reach an event: the only thing taken from `Authorization` is the user name of
//! Basic credentials.

use std::net::SocketAddr;

use base64::Engine as _;
use http::HeaderMap;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::oci::{Digest, Repository, Tag};

/// Install the global subscriber. `RUST_LOG` refines the level (default `info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    // A second init (tests that call it twice) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Pretty => builder.with_ansi(false).try_init(),
    };
}

/// What was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    /// First push of a tag: the pin was recorded.
    PinCreated,
    /// The tag predated tagpin at the upstream: its digest became the pin.
    PinAdopted,
    /// The same digest was pushed again: allowed.
    IdenticalRepush,
    /// A push would have moved the tag: refused.
    PushRefused,
    /// A delete would have removed a protected tag or its pinned manifest: refused.
    DeleteRefused,
    /// An append-only tag grew: the pin advanced to a manifest that keeps every entry.
    PinAdvanced,
    /// A push immutable would refuse, allowed because the rule is `audit`.
    PushAudited,
    /// A delete immutable would refuse, allowed because the rule is `audit`.
    DeleteAudited,
    /// A push moved a pinned tag because an operator released it.
    PushReleased,
    /// A delete removed a protected tag because an operator released it.
    DeleteReleased,
    /// An operator released a tag (break glass), or withdrew a release.
    ReleaseCreated,
    ReleaseCancelled,
    /// A release expired unused.
    ReleaseExpired,
    /// Tags adopted from the upstream by an operator's seed.
    Seeded,
    /// The periodic or requested drift check found a tag moved or missing at the upstream.
    DriftDetected,
    /// Pins imported by an operator.
    Imported,
    /// An operator cleared the records of writes (or digest deletes) whose outcome was
    /// lost, knowing they failed.
    ClaimCleared,
    /// SIGHUP: a new policy is in force.
    PolicyReloaded,
    /// SIGHUP: the new config was invalid; the old policy stays in force.
    PolicyReloadFailed,
    /// A protected tag with no pin was pinned by its first pull.
    PinAdoptedOnRead,
    /// A pinned tag's manifest is gone from the upstream: its reads get 404.
    PinnedManifestMissing,
    /// An audited tag is served by the upstream at another digest than its pin.
    ReadDrift,
    /// The history log's current checkpoint, for copies kept off the host.
    LogCheckpoint,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PinCreated => "pin_created",
            Self::PinAdopted => "pin_adopted",
            Self::IdenticalRepush => "identical_repush",
            Self::PushRefused => "push_refused",
            Self::DeleteRefused => "delete_refused",
            Self::PinAdvanced => "pin_advanced",
            Self::PushAudited => "push_audited",
            Self::DeleteAudited => "delete_audited",
            Self::PushReleased => "push_released",
            Self::DeleteReleased => "delete_released",
            Self::ReleaseCreated => "release_created",
            Self::ReleaseCancelled => "release_cancelled",
            Self::ReleaseExpired => "release_expired",
            Self::Seeded => "seeded",
            Self::DriftDetected => "drift_detected",
            Self::Imported => "imported",
            Self::ClaimCleared => "claim_cleared",
            Self::PolicyReloaded => "policy_reloaded",
            Self::PolicyReloadFailed => "policy_reload_failed",
            Self::PinAdoptedOnRead => "pin_adopted_on_read",
            Self::PinnedManifestMissing => "pinned_manifest_missing",
            Self::ReadDrift => "read_drift",
            Self::LogCheckpoint => "log_checkpoint",
        }
    }
}

/// Who made the request, as far as tagpin can tell without holding credentials. Built for
/// every request, so it only keeps the header values (reference-counted, no copy) and
/// turns them into text when an audit event or a record needs it.
#[derive(Debug, Clone)]
pub struct Requester {
    pub request_id: String,
    pub client: SocketAddr,
    /// The client's address as the `X-Forwarded-For` entry tagpin adds upstream.
    pub client_ip: http::HeaderValue,
    pub user: Option<String>,
    user_agent: Option<http::HeaderValue>,
    /// `X-Forwarded-For` as received: who the client was behind a load balancer. Not
    /// verified by tagpin; a client can write anything there.
    forwarded_for: Option<http::HeaderValue>,
}

/// A header value as text for the audit trail: at most 256 characters, nothing that is
/// not visible ASCII (a value is bytes, not necessarily UTF-8).
fn audit_text(v: Option<&http::HeaderValue>) -> String {
    v.and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(256)
        .collect()
}

/// A client connection's peer, with its address already written out once for the
/// `X-Forwarded-For` of every request on the connection (formatting an address per
/// request showed in the profile).
#[derive(Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    ip: http::HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Self {
        let ip = http::HeaderValue::try_from(addr.ip().to_string()).expect("an IP address is a valid header value");
        Self { addr, ip }
    }
}

impl Requester {
    pub fn from_headers(request_id: String, client: SocketAddr, headers: &HeaderMap) -> Self {
        Self::from_peer(request_id, &Peer::new(client), headers)
    }

    pub fn from_peer(request_id: String, peer: &Peer, headers: &HeaderMap) -> Self {
        static X_FORWARDED_FOR: http::header::HeaderName = http::header::HeaderName::from_static("x-forwarded-for");
        Self {
            request_id,
            client: peer.addr,
            client_ip: peer.ip.clone(),
            user_agent: headers.get(http::header::USER_AGENT).cloned(),
            user: if headers.contains_key(http::header::AUTHORIZATION) {
                basic_user(headers)
            } else {
                None
            },
            forwarded_for: headers.get(&X_FORWARDED_FOR).cloned(),
        }
    }

    pub fn user_agent(&self) -> String {
        audit_text(self.user_agent.as_ref())
    }

    pub fn forwarded_for(&self) -> String {
        audit_text(self.forwarded_for.as_ref())
    }
}

impl Requester {
    /// An operator using the admin API: the token's name is who acts.
    pub fn admin(request_id: String, client: SocketAddr, name: &str, headers: &HeaderMap) -> Self {
        let mut who = Self::from_headers(request_id, client, headers);
        who.user = Some(format!("admin:{name}"));
        who
    }

    /// The admin token's name (what releases, seeds, imports and cleared claims record as
    /// `by`); `admin` for a requester that is not an operator.
    pub fn admin_name(&self) -> String {
        let user = self.user.as_deref().unwrap_or("admin");
        user.strip_prefix("admin:").unwrap_or(user).to_owned()
    }
}

/// The user name of `Authorization: Basic …`, never the password; `None` for any other scheme.
pub fn basic_user(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, _password) = text.split_once(':')?;
    Some(user.chars().take(128).collect())
}

/// One audit event.
pub struct AuditEvent<'a> {
    pub action: AuditAction,
    pub who: &'a Requester,
    pub repository: &'a Repository,
    pub tag: Option<&'a Tag>,
    pub pinned: Option<&'a Digest>,
    pub attempted: Option<&'a Digest>,
    /// The mode of the tag and the rule that decided it.
    pub decided: Option<crate::policy::Decided>,
}

impl AuditEvent<'_> {
    /// Log the event, count it in the metrics, and hand it to the webhooks.
    pub fn emit(&self, shared: &crate::app::Shared) {
        self.log(&shared.metrics);
        // Their webhook events go in the writes they describe (the release's timer
        // announces an expiry).
        let in_write = matches!(
            self.action,
            AuditAction::ReleaseExpired | AuditAction::PushReleased | AuditAction::DeleteReleased
        );
        if !in_write {
            if let Some(kind) = crate::notify::EventKind::of(self.action) {
                shared.notify.enqueue(
                    kind,
                    Some(self.repository.as_str()),
                    self.tag.map(Tag::as_str),
                    crate::notify::data_of(self),
                );
            }
        }
    }

    /// Log the event and count it in the metrics.
    pub fn log(&self, metrics: &crate::metrics::Metrics) {
        metrics.decision(self.action);
        let tag = self.tag.map(Tag::as_str).unwrap_or("");
        let pinned = self.pinned.map(Digest::as_str).unwrap_or("");
        let attempted = self.attempted.map(Digest::as_str).unwrap_or("");
        let user = self.who.user.as_deref().unwrap_or("");
        let mode = self.decided.map_or("", |d| d.mode.as_str());
        let rule = self.decided.map(|d| d.by.to_string()).unwrap_or_default();
        macro_rules! event {
            ($level:ident) => {
                tracing::$level!(
                    target: "tagpin::audit",
                    action = self.action.as_str(),
                    repository = self.repository.as_str(),
                    tag,
                    pinned_digest = pinned,
                    attempted_digest = attempted,
                    mode,
                    rule = rule.as_str(),
                    client = %self.who.client,
                    user_agent = self.who.user_agent().as_str(),
                    user,
                    forwarded_for = self.who.forwarded_for().as_str(),
                    request_id = self.who.request_id.as_str(),
                    "{}", self.action.as_str()
                )
            };
        }
        match self.action {
            AuditAction::PushRefused
            | AuditAction::DeleteRefused
            | AuditAction::PushAudited
            | AuditAction::DeleteAudited
            | AuditAction::PushReleased
            | AuditAction::DeleteReleased
            | AuditAction::DriftDetected
            | AuditAction::PinnedManifestMissing
            | AuditAction::ReadDrift => event!(warn),
            _ => event!(info),
        }
    }
}

/// The `log_checkpoint` audit event: the log's size and its checkpoint (the signed note).
pub fn checkpoint_event(metrics: &crate::metrics::Metrics, size: u64, checkpoint: &str) {
    metrics.decision(AuditAction::LogCheckpoint);
    tracing::info!(target: "tagpin::audit", action = AuditAction::LogCheckpoint.as_str(), size, checkpoint, "log_checkpoint");
}

/// `release_expired` found by the notifier's timer, when no write noticed it yet.
pub fn release_expired_event(metrics: &crate::metrics::Metrics, t: &crate::notify::ReleaseTimer) {
    metrics.decision(AuditAction::ReleaseExpired);
    tracing::info!(target: "tagpin::audit", action = AuditAction::ReleaseExpired.as_str(), repository = t.repository.as_str(), tag = t.tag.as_str(), by = t.by.as_str(), expires_at = t.expires_at, "release_expired");
}

/// A policy reload's audit event: `policy_reloaded` with the new policy's summary, or
/// `policy_reload_failed` with the reason the old one stays.
pub fn policy_event(metrics: &crate::metrics::Metrics, result: Result<&str, &str>) {
    match result {
        Ok(summary) => {
            metrics.decision(AuditAction::PolicyReloaded);
            tracing::info!(target: "tagpin::audit", action = AuditAction::PolicyReloaded.as_str(), policy = summary, "policy_reloaded");
        }
        Err(error) => {
            metrics.decision(AuditAction::PolicyReloadFailed);
            metrics.policy_reload_failed();
            tracing::error!(target: "tagpin::audit", action = AuditAction::PolicyReloadFailed.as_str(), error, "policy_reload_failed: the old policy stays in force");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn basic_user_takes_the_name_and_never_the_password() {
        let enc = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:x");
        assert_eq!(basic_user(&headers(&format!("Basic {enc}"))), Some("alice".into()));
        assert_eq!(basic_user(&headers(&format!("basic {enc}"))), Some("alice".into()));
        assert_eq!(basic_user(&headers("Bearer abc.def")), None);
        assert_eq!(basic_user(&headers("Basic !!!")), None);
        assert_eq!(basic_user(&HeaderMap::new()), None);
    }
}
