//! What an event carries: the audit event's fields, and the timer of a release's expiry.

use crate::oci::{Repository, Tag};
use crate::store::{Release, Timer};
use crate::telemetry::AuditEvent;

/// The `data` of an event: what its audit event carries.
pub fn data_of(e: &AuditEvent<'_>) -> serde_json::Value {
    let mut data = serde_json::json!({
        "action": e.action.as_str(),
        "repository": e.repository.as_str(),
        "tag": e.tag.map(Tag::as_str),
        "pinned_digest": e.pinned.map(|d| d.as_str()),
        "attempted_digest": e.attempted.map(|d| d.as_str()),
        "mode": e.decided.map(|d| d.mode.as_str()),
        "rule": e.decided.map(|d| d.by.to_string()),
        "client": e.who.client.to_string(),
        "user": e.who.user.as_deref(),
        "user_agent": e.who.user_agent(),
        "forwarded_for": e.who.forwarded_for(),
        "request_id": e.who.request_id,
    });
    if e.who.user.as_deref().is_some_and(|u| u.starts_with("admin:")) {
        data["admin"] = e.who.admin_name().into();
    }
    data
}

/// What the timer of a release's expiry holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReleaseTimer {
    pub repository: String,
    pub tag: String,
    pub release_id: String,
    pub by: String,
    pub reason: String,
    pub expires_at: u64,
}

impl ReleaseTimer {
    /// The id every report of this expiry shares.
    pub fn event_id(&self) -> String {
        super::stable_id(&format!("release_expired:{}", self.release_id))
    }

    /// Whether `record` shows this release expired unused: still held past its time, or
    /// ended by a write that noticed it (a `release_expired` entry stamped with its
    /// expiry). A release used, cancelled or replaced shows neither.
    pub fn expired_in(&self, record: &crate::store::TagRecord) -> bool {
        if let Some(r) = &record.release {
            return r.id == self.release_id && !r.cancelled;
        }
        let history = record.pin.as_ref().map_or(&record.history, |p| &p.history);
        history.iter().rev().take(64).any(|h| {
            h.event == crate::store::HistoryEvent::ReleaseExpired
                && h.at >= self.expires_at
                && h.by.as_deref() == Some(self.by.as_str())
                && h.reason.as_deref() == Some(self.reason.as_str())
        })
    }

    pub fn data(&self) -> serde_json::Value {
        serde_json::json!({
            "action": "release_expired",
            "repository": self.repository,
            "tag": self.tag,
            "admin": self.by,
            "reason": self.reason,
            "expires_at": self.expires_at,
        })
    }
}

/// The timer that announces `release` expiring unused on `repo:tag`.
pub fn release_timer(repo: &Repository, tag: &Tag, release: &Release) -> (ReleaseTimer, Timer) {
    let t = ReleaseTimer {
        repository: repo.as_str().to_owned(),
        tag: tag.as_str().to_owned(),
        release_id: release.id.clone(),
        by: release.by.clone(),
        reason: release.reason.clone(),
        expires_at: release.expires_at,
    };
    let timer = Timer {
        key: format!("release:{}", release.id),
        at_ms: release.expires_at.saturating_mul(1000),
        payload: serde_json::to_string(&t).expect("a timer serialises"),
    };
    (t, timer)
}
