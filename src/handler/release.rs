//! Break glass at decision time: whether an operator's release is in force on a tag.
//! A release found expired is ended here, so its expiry is in the pin's history and the
//! audit log even if nobody asks for it.

use crate::app::App;
use crate::error::ProxyError;
use crate::oci::{Repository, Tag};
use crate::store::{now_secs, HistoryEvent};
use crate::telemetry::{AuditAction, AuditEvent, Requester};

/// Whether a release allows the next push (or delete) of `repo:tag` to move it.
pub async fn in_force(app: &App, repo: &Repository, tag: &Tag, who: &Requester) -> Result<bool, ProxyError> {
    let (r, t) = (repo.clone(), tag.clone());
    let Some(release) = app.store_call(move |s| s.release(&r, &t)).await? else {
        return Ok(false);
    };
    if release.expires_at > now_secs() {
        return Ok(true);
    }
    let (r, t) = (repo.clone(), tag.clone());
    if app
        .store_call(move |s| s.end_release(&r, &t, HistoryEvent::ReleaseExpired, None))
        .await?
        .is_some()
    {
        AuditEvent {
            action: AuditAction::ReleaseExpired,
            who,
            repository: repo,
            tag: Some(tag),
            pinned: None,
            attempted: None,
            decided: None,
        }
        .emit(&app.metrics);
    }
    Ok(false)
}
