//! Manifest and blob deletes (distribution-spec `spec.md`, "Deleting Manifests", end-9,
//! and "Deleting Blobs", end-10).
//!
//! Deleting a protected tag is refused (immutable and append-only alike): a pin is a
//! tombstone, so even a tag that is gone at the upstream may not be deleted (or later
//! re-pointed) through tagpin. Deleting by digest is refused while a protected tag of the
//! repository is pinned or claimed to that digest, or while pinned content depends on
//! it (an index's child, a config or layer blob). An `audit` tag is decided the same way,
//! but what would be refused is forwarded, with a `Warning` and a `delete_audited` event,
//! and the pin stays.
//!
//! Tags the upstream holds but tagpin has not seen are adopted first, outside any lock;
//! then, under the repository's exclusive lock (no push can pin the digest mid-delete),
//! the delete is decided and forwarded as a detached task, so a client that goes away
//! cannot cut it short. The in-flight rule holds here too: the delete is recorded durably
//! before it is forwarded, and while its outcome is unknown no push may pin a tag to that
//! digest ([`crate::store::PinStore::begin_delete`]).

use std::sync::Arc;

use http::request::Parts;
use http::{header, HeaderValue, Response};

use crate::app::App;
use crate::body::Body;
use crate::error::ProxyError;
use crate::oci::{Digest, Reference, Repository, Tag};
use crate::policy::{warning_header, Decided, Mode, Policy, Refusal};
use crate::store::{HistoryEntry, HistoryEvent};
use crate::telemetry::{AuditAction, AuditEvent, Requester};
use crate::upstream::UpstreamError;

pub async fn manifest_delete(
    app: &Arc<App>,
    parts: Parts,
    body: Body,
    repo: Repository,
    reference: Reference,
    who: &Requester,
) -> Result<Response<Body>, ProxyError> {
    match reference {
        Reference::Tag(tag) => delete_tag(app, parts, body, repo, tag, who).await,
        Reference::Digest(digest) => delete_content(app, parts, body, repo, digest, Content::Manifest, who).await,
    }
}

/// `DELETE /v2/<name>/blobs/<digest>` (end-10): refused while pinned content depends on
/// the blob (a pinned manifest's config or layer), forwarded otherwise.
pub async fn blob_delete(
    app: &Arc<App>,
    parts: Parts,
    body: Body,
    repo: Repository,
    digest: Digest,
    who: &Requester,
) -> Result<Response<Body>, ProxyError> {
    delete_content(app, parts, body, repo, digest, Content::Blob, who).await
}

fn event(
    app: &App,
    action: AuditAction,
    who: &Requester,
    repo: &Repository,
    tag: Option<&Tag>,
    pinned: Option<&Digest>,
    decided: Option<Decided>,
) {
    AuditEvent {
        action,
        who,
        repository: repo,
        tag,
        pinned,
        attempted: None,
        decided,
    }
    .emit(&app.metrics);
}

async fn delete_tag(
    app: &Arc<App>,
    parts: Parts,
    body: Body,
    repo: Repository,
    tag: Tag,
    who: &Requester,
) -> Result<Response<Body>, ProxyError> {
    let decided = app.policy().decide(&repo, &tag);
    if !decided.mode.is_protected() {
        // Under the tag's lock too, for the same reason as a mutable push (see push.rs).
        let who = who.clone();
        return app
            .detached(move |app| async move {
                let _guard = app.locks.push(&repo, std::slice::from_ref(&tag)).await;
                super::forward(&app, parts, body, &who).await
            })
            .await;
    }
    // Decided and carried out under the tag's lock, as a push is, so a release cannot be
    // used by a push and a delete at once, and nothing is deleted while a push to the tag
    // is in flight.
    let who = who.clone();
    app.detached(move |app| async move {
        let _guard = app.locks.push(&repo, std::slice::from_ref(&tag)).await;
        let (r, t) = (repo.clone(), tag.clone());
        let state = app.store_call(move |s| s.state(&r, &t)).await;
        let pinned = state.as_ref().ok().and_then(|s| s.as_ref()).map(|s| s.digest().clone());
        let settled = matches!(state, Ok(Some(crate::store::TagState::Pinned(_))));
        if settled && super::release::in_force(&app, &repo, &tag, &who).await? {
            return delete_released_tag(&app, parts, body, repo, tag, pinned, decided, &who).await;
        }
        let refusal = Refusal::DeleteTag {
            repo: repo.clone(),
            tag: tag.clone(),
            pinned: pinned.clone(),
            mode: if decided.mode == Mode::Audit {
                Mode::Immutable
            } else {
                decided.mode
            },
        };
        // An audit tag whose push is in flight is not deleted either: the in-flight rule
        // holds in every mode.
        let in_flight = matches!(state, Ok(Some(ref s)) if s.claim().is_some());
        if decided.mode != Mode::Audit || in_flight {
            event(
                &app,
                AuditAction::DeleteRefused,
                &who,
                &repo,
                Some(&tag),
                pinned.as_ref(),
                Some(decided),
            );
            let (r, t) = (repo.clone(), tag.clone());
            let refused = crate::store::Refused {
                at: crate::store::now_secs(),
                attempted: None,
                client: who.client.to_string(),
                user: who.user.clone(),
                user_agent: who.user_agent(),
                request_id: who.request_id.clone(),
            };
            // Best effort: the refusal stands whether or not it could be recorded.
            let _ = app.store_call(move |s| s.record_refusal(&r, &t, &refused)).await;
            return Err(refusal.into());
        }
        // Audit: forwarded; the pin stays and its history records the delete.
        let warning = warning_header(&format!("audit mode: {refusal}"));
        let origin = super::client_origin(&app, &parts.headers);
        let resp = app
            .upstream
            .send(super::upstream_request(&app, parts, body, &who))
            .await
            .map_err(forwarded_error)?;
        if !resp.status().is_success() {
            return Ok(super::to_client(&app, resp, origin.as_deref()));
        }
        event(
            &app,
            AuditAction::DeleteAudited,
            &who,
            &repo,
            Some(&tag),
            pinned.as_ref(),
            Some(decided),
        );
        if let Some(d) = pinned {
            record_audited_delete(&app, &repo, &tag, &d, &who).await;
        }
        let mut out = super::to_client(&app, resp, origin.as_deref());
        out.headers_mut().append(header::WARNING, warning);
        Ok(out)
    })
    .await
}

/// A delete an operator's release lets through, once. The caller holds the tag's lock
/// and found the tag pinned (no push in flight) with the release in force. The release
/// is used up durably *before* the delete is forwarded, so it can never also let a push
/// through; it is given back only when the upstream definitively refused the delete.
/// The tag is deleted at the upstream; the pin stays as its tombstone.
#[allow(clippy::too_many_arguments, reason = "the request's parts, named at the one call")]
async fn delete_released_tag(
    app: &App,
    parts: Parts,
    body: Body,
    repo: Repository,
    tag: Tag,
    pinned: Option<Digest>,
    decided: Decided,
    who: &Requester,
) -> Result<Response<Body>, ProxyError> {
    let (r, t, id) = (repo.clone(), tag.clone(), who.request_id.clone());
    let Some(release) = app
        .store_call(move |s| s.end_release(&r, &t, HistoryEvent::Released, Some(&id)))
        .await?
    else {
        return Err(Refusal::DeleteTag {
            repo,
            tag,
            pinned,
            mode: decided.mode,
        }
        .into());
    };
    let origin = super::client_origin(app, &parts.headers);
    let resp = app
        .upstream
        .send(super::upstream_request(app, parts, body, who))
        .await
        .map_err(forwarded_error)?;
    let status = resp.status();
    if status.is_success() {
        event(
            app,
            AuditAction::DeleteReleased,
            who,
            &repo,
            Some(&tag),
            pinned.as_ref(),
            Some(decided),
        );
    } else if !super::push::outcome_unknown(status) {
        // Refused by the upstream: nothing was deleted, so the release is still owed.
        let (r, t) = (repo.clone(), tag.clone());
        if let Err(e) = app.store_call(move |s| s.set_release(&r, &t, &release)).await {
            tracing::warn!(request_id = %who.request_id, error = %e, "cannot give back a release the upstream did not use");
        }
    }
    Ok(super::to_client(app, resp, origin.as_deref()))
}

/// A forwarded request that got no answer: whether it was applied is unknown.
fn forwarded_error(e: UpstreamError) -> ProxyError {
    match e {
        UpstreamError::Connect(_) => e.into(),
        other => ProxyError::OutcomeUnknown(other),
    }
}

async fn record_audited_delete(app: &App, repo: &Repository, tag: &Tag, pinned: &Digest, who: &Requester) {
    let mut entry = HistoryEntry::new(HistoryEvent::AuditDelete, pinned.clone(), None);
    entry.request_id = Some(who.request_id.clone());
    let (r, t) = (repo.clone(), tag.clone());
    if let Err(e) = app.store_call(move |s| s.record_event(&r, &t, &entry)).await {
        tracing::warn!(request_id = %who.request_id, error = %e, "cannot record an audited delete in the pin's history");
    }
}

/// What a delete by digest removes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Content {
    Manifest,
    Blob,
}

async fn delete_content(
    app: &Arc<App>,
    parts: Parts,
    body: Body,
    repo: Repository,
    digest: Digest,
    kind: Content,
    who: &Requester,
) -> Result<Response<Body>, ProxyError> {
    // Tags that predate tagpin are adopted first, and every pinned manifest's references
    // recorded: deleting their content would take the tag away as surely as moving it.
    // This is the slow part for a large repository, so it runs before any lock.
    let origin = super::client_origin(app, &parts.headers);
    if let Err(challenge) = super::pins::adopt_repository(app, &repo, &parts.headers, who).await? {
        return Ok(super::to_client(app, challenge, origin.as_deref()));
    }
    if let Err(challenge) = super::refs::protect_repository(app, &repo, &parts.headers).await? {
        return Ok(super::to_client(app, challenge, origin.as_deref()));
    }
    let who = who.clone();
    let policy = app.policy();
    app.detached(move |app| async move { delete_digest(&app, &policy, parts, body, repo, digest, kind, &who).await })
        .await
}

/// The protected tags holding `digest` (pinned, claimed or advancing to it), with their
/// modes.
async fn holding_tags(
    app: &App,
    policy: &Policy,
    repo: &Repository,
    digest: &Digest,
) -> Result<Vec<(Tag, Decided)>, ProxyError> {
    let (r, d) = (repo.clone(), digest.clone());
    let tags = app.store_call(move |s| s.tags_pinned_to(&r, &d)).await?;
    Ok(tags
        .into_iter()
        .map(|t| {
            let d = policy.decide(repo, &t);
            (t, d)
        })
        .filter(|(_, d)| d.mode.is_protected())
        .collect())
}

#[allow(clippy::too_many_arguments, reason = "the request's parts, named at the one call")]
async fn delete_digest(
    app: &App,
    policy: &Policy,
    parts: Parts,
    body: Body,
    repo: Repository,
    digest: Digest,
    kind: Content,
    who: &Requester,
) -> Result<Response<Body>, ProxyError> {
    let _guard = app.locks.digest_delete(&repo).await;
    // Pins made since the unlocked pass were made by pushes, which record references
    // first; this pass only catches what an adoption added meanwhile.
    if let Err(challenge) = super::refs::protect_repository(app, &repo, &parts.headers).await? {
        let origin = super::client_origin(app, &parts.headers);
        return Ok(super::to_client(app, challenge, origin.as_deref()));
    }
    let direct = if kind == Content::Manifest {
        holding_tags(app, policy, &repo, &digest).await?
    } else {
        Vec::new()
    };
    // Pinned content depending on the digest; only manifests still held by a protected
    // tag count (a superseded or now-mutable manifest protects nothing).
    let (r, d) = (repo.clone(), digest.clone());
    let mut dependents = Vec::new();
    let referenced = app.store_call(move |s| s.referenced_by(&r, &d)).await?;
    let referenced_count = referenced.len();
    for holder in referenced {
        let tags = holding_tags(app, policy, &repo, &holder).await?;
        if !tags.is_empty() {
            dependents.push((holder, tags));
        }
    }
    let enforcing = |tags: &[(Tag, Decided)]| tags.iter().any(|(_, d)| d.mode != Mode::Audit);
    let mut warnings: Vec<HeaderValue> = Vec::new();
    let mut audited: Vec<(Tag, Decided)> = Vec::new();
    if !direct.is_empty() {
        let refusal = Refusal::DeleteDigest {
            repo: repo.clone(),
            digest: digest.clone(),
            tags: direct.iter().map(|(t, _)| t.clone()).collect(),
        };
        if enforcing(&direct) {
            for (tag, decided) in &direct {
                event(
                    app,
                    AuditAction::DeleteRefused,
                    who,
                    &repo,
                    Some(tag),
                    Some(&digest),
                    Some(*decided),
                );
            }
            return Err(refusal.into());
        }
        warnings.push(warning_header(&format!("audit mode: {refusal}")));
        audited.extend(direct.iter().cloned());
    }
    if !dependents.is_empty() {
        let refusal = Refusal::DeleteReferenced {
            repo: repo.clone(),
            digest: digest.clone(),
            kind: if kind == Content::Manifest { "manifest" } else { "blob" },
            holders: dependents.iter().map(|(h, _)| h.clone()).collect(),
        };
        if dependents.iter().any(|(_, tags)| enforcing(tags)) {
            AuditEvent {
                action: AuditAction::DeleteRefused,
                who,
                repository: &repo,
                tag: None,
                pinned: Some(&dependents[0].0),
                attempted: Some(&digest),
                decided: dependents[0].1.first().map(|(_, d)| *d),
            }
            .emit(&app.metrics);
            return Err(refusal.into());
        }
        warnings.push(warning_header(&format!("audit mode: {refusal}")));
        audited.extend(dependents.iter().flat_map(|(_, tags)| tags.iter().cloned()));
    }

    let (r, d, id) = (repo.clone(), digest.clone(), who.request_id.clone());
    app.store_call(move |s| s.begin_delete(&r, &d, &id)).await?;
    // The other half of the cross-replica handshake with pushes (push.rs): the delete is
    // recorded; a push that claimed this digest before the record is seen now.
    let now_held = if kind == Content::Manifest {
        holding_tags(app, policy, &repo, &digest).await
    } else {
        Ok(Vec::new())
    };
    let (r, d) = (repo.clone(), digest.clone());
    let now_referenced = app.store_call(move |s| s.referenced_by(&r, &d)).await;
    let newly_held = match (&now_held, &now_referenced) {
        (Ok(tags), Ok(holders)) => tags.len() > direct.len() || holders.len() > referenced_count,
        _ => true,
    };
    if newly_held {
        let (r, d, id) = (repo.clone(), digest.clone(), who.request_id.clone());
        let _ = app.store_call(move |s| s.end_delete(&r, &d, Some(&id))).await;
        return Err(Refusal::DeleteInFlight { repo, digest }.into());
    }
    let origin = super::client_origin(app, &parts.headers);
    let settle = |app: &App, only_mine: bool| {
        let (r, d, id) = (repo.clone(), digest.clone(), who.request_id.clone());
        let store = Arc::clone(&app.store);
        async move {
            // A record that cannot be removed only keeps the digest from being pinned
            // until a later delete settles it (fail closed).
            let _ =
                tokio::task::spawn_blocking(move || store.end_delete(&r, &d, only_mine.then_some(id.as_str()))).await;
        }
    };
    match app.upstream.send(super::upstream_request(app, parts, body, who)).await {
        Ok(resp) => {
            let status = resp.status();
            if super::push::outcome_unknown(status) {
                tracing::warn!(request_id = %who.request_id, repository = %repo, %digest, status = status.as_u16(), "the upstream answered a delete with a gateway error; the digest stays unpinnable until a delete of it is answered");
            } else if status.is_success() || status == http::StatusCode::NOT_FOUND {
                // The manifest is gone: every delete of it recorded so far is settled.
                settle(app, false).await;
            } else {
                // Refused (401, 403, 405, ...): that settles this request only; another
                // delete of the digest may still be in flight.
                settle(app, true).await;
            }
            if status.is_success() {
                for (tag, decided) in &audited {
                    event(
                        app,
                        AuditAction::DeleteAudited,
                        who,
                        &repo,
                        Some(tag),
                        Some(&digest),
                        Some(*decided),
                    );
                    if kind == Content::Manifest {
                        record_audited_delete(app, &repo, tag, &digest, who).await;
                    }
                }
            }
            let mut out = super::to_client(app, resp, origin.as_deref());
            if status.is_success() {
                for w in warnings {
                    out.headers_mut().append(header::WARNING, w);
                }
            }
            Ok(out)
        }
        Err(e @ UpstreamError::Connect(_)) => {
            settle(app, true).await;
            Err(e.into())
        }
        Err(e) => {
            tracing::warn!(request_id = %who.request_id, repository = %repo, %digest, error = %e, "delete forwarded with an unknown outcome; the digest stays unpinnable until a delete of it is answered");
            Err(ProxyError::OutcomeUnknown(e))
        }
    }
}
