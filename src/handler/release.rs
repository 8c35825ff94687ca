//! What time settled while a transition looked at a tag: releases that expired (ended in
//! the pin's history by the transition itself, announced here) and writes whose answer
//! never came and that are past the in-doubt horizon.

use crate::app::App;
use crate::oci::{Repository, Tag};
use crate::pinning::Expired;
use crate::telemetry::{AuditAction, AuditEvent, Requester};

/// Announce what expired on each tag.
pub fn report_expired(app: &App, repo: &Repository, expired: &[(Tag, Expired)], who: &Requester) {
    // The request that noticed the expiry did not cause it, and the upstream has not
    // vouched for its user yet: the event names no user.
    let mut who = who.clone();
    who.user = None;
    for (tag, e) in expired {
        match e {
            Expired::Release(_) => {
                AuditEvent {
                    action: AuditAction::ReleaseExpired,
                    who: &who,
                    repository: repo,
                    tag: Some(tag),
                    pinned: None,
                    attempted: None,
                    decided: None,
                }
                .emit(app);
                // The webhook event comes from the timer kept since the release was
                // created, once, whether or not a write noticed the expiry first.
            }
            Expired::Write(w) => {
                tracing::warn!(repository = %repo, %tag, request_id = %w.request_id, digest = %w.digest, "a write whose answer never came is past the in-doubt horizon; it no longer reserves its tag");
            }
        }
    }
}

/// Pair what expired (by record index) with its tag.
pub fn by_tag(tags: &[Tag], expired: Vec<(usize, Expired)>) -> Vec<(Tag, Expired)> {
    expired.into_iter().map(|(i, e)| (tags[i].clone(), e)).collect()
}
