//! What a tag is held to, adopting the upstream's digest for tags that predate tagpin
//! (or whose pin a crash kept from being written before claims existed).

use http::{header, HeaderMap, HeaderValue, Response};
use hyper::body::Incoming;

use crate::app::App;
use crate::error::ProxyError;
use crate::oci::{Digest, Repository, Tag};
use crate::store::{AdoptedVia, Pin, PinSource, TagState};
use crate::telemetry::{AuditAction, AuditEvent, Requester};
use crate::upstream::{TagAtUpstream, UpstreamError};

/// The digest `tag` is pinned to: the store's pin, else (for a tag with neither pin nor
/// write in flight) the upstream's current digest, adopted as the pin; `None` for a tag
/// that is free or only claimed. `Err(response)` when the upstream wants credentials.
/// `attempted` is the digest of the push being decided, for the adoption's audit event.
/// The caller holds the tag's lock.
pub async fn held(
    app: &App,
    repo: &Repository,
    tag: &Tag,
    headers: &HeaderMap,
    who: &Requester,
    attempted: Option<&Digest>,
) -> Result<Result<Option<Digest>, Response<Incoming>>, ProxyError> {
    let (r, t) = (repo.clone(), tag.clone());
    if let Some(state) = app.store_call(move |s| s.state(&r, &t)).await? {
        return Ok(Ok(pinned(&state)));
    }
    match tag_at_upstream(app, repo, tag, headers.get(header::AUTHORIZATION)).await? {
        TagAtUpstream::Absent => Ok(Ok(None)),
        TagAtUpstream::Challenge(resp) => Ok(Err(resp)),
        TagAtUpstream::Present(digest) => {
            let d = digest.clone();
            let request_id = who.request_id.clone();
            // Adopted only if the tag still has neither pin nor write in flight (a first
            // pull or another push may have bound it since it was looked at).
            let (adopted, state) = app
                .transition(repo, std::slice::from_ref(tag), move |clock, records| {
                    let record = &mut records[0];
                    let free = record.pin.is_none() && record.writes.is_empty();
                    if free {
                        let mut pin = Pin::now(d.clone(), PinSource::Adopted);
                        pin.pinned_at = clock.now;
                        for e in &mut pin.history {
                            e.at = clock.now;
                            e.via = Some(AdoptedVia::Push);
                            e.request_id = Some(request_id.clone());
                        }
                        record.set_pin(pin);
                    }
                    (free, record.state())
                })
                .await?;
            let state = state.unwrap_or(TagState::Pinned(Pin::now(digest, PinSource::Adopted)));
            if !adopted {
                return Ok(Ok(pinned(&state)));
            }
            // What the upstream held is adopted whoever asked, and the upstream has not
            // vouched for the asking client's user: the event names none.
            let mut who = who.clone();
            who.user = None;
            AuditEvent {
                action: AuditAction::PinAdopted,
                who: &who,
                repository: repo,
                tag: Some(tag),
                pinned: Some(state.digest()),
                attempted,
                decided: Some(app.policy().decide(repo, tag)),
            }
            .emit(app);
            Ok(Ok(pinned(&state)))
        }
    }
}

/// Whether tagpin has upstream credentials of its own (`--upstream-credentials-file`).
fn own_credentials(app: &App) -> bool {
    app.config.upstream_credentials.is_some()
}

/// What the upstream holds under `repo:tag`. Asked with tagpin's own credentials when it
/// has them, so a client's credential that may push but not read (a registry may answer
/// it 404) cannot make a tag that predates tagpin look free; with the client's otherwise.
pub async fn tag_at_upstream(
    app: &App,
    repo: &Repository,
    tag: &Tag,
    authorization: Option<&HeaderValue>,
) -> Result<TagAtUpstream, UpstreamError> {
    if !own_credentials(app) {
        return app.upstream.tag_digest(repo, tag, authorization).await;
    }
    Ok(match app.upstream.own_tag_digest(repo, tag).await? {
        Some(d) => TagAtUpstream::Present(d),
        None => TagAtUpstream::Absent,
    })
}

fn pinned(state: &TagState) -> Option<Digest> {
    match state {
        TagState::Pinned(p) | TagState::Advancing { pin: p, .. } => Some(p.digest.clone()),
        TagState::Claimed(_) => None,
    }
}

/// Keep a refused attempt for the security team. Best effort: the refusal stands
/// whether or not it could be recorded (the audit event has it too).
pub async fn record_refusal(
    app: &App,
    repo: &Repository,
    tag: &Tag,
    who: &Requester,
    attempted: Option<&Digest>,
    delete: bool,
    event: Option<crate::store::OutboxEvent>,
) {
    let refused = crate::store::Refused {
        at: crate::store::now_secs(),
        attempted: attempted.cloned(),
        delete,
        client: who.client.to_string(),
        user: who.user.clone(),
        user_agent: who.user_agent(),
        request_id: who.request_id.clone(),
    };
    let (r, t) = (repo.clone(), tag.clone());
    let (targets, max) = app.notify.append_bounds();
    let written = app
        .store_call(move |s| match (event, s.outbox()) {
            // The attempt and its webhook event in one write: neither is kept without the other.
            (Some(e), Some(o)) => o
                .record_refusal_notifying(&r, &t, &refused, &[e], &targets, max)
                .map(Some),
            _ => s.record_refusal(&r, &t, &refused).map(|()| None),
        })
        .await;
    match written {
        Ok(Some(dropped)) => app.notify.appended(dropped, &app.metrics.notify),
        Ok(None) => {}
        Err(e) => tracing::warn!(request_id = %who.request_id, error = %e, "cannot record a refused attempt"),
    }
}
