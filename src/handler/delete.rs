//! Manifest deletes (distribution-spec `spec.md`, "Deleting Manifests", end-9).
//!
//! Deleting a protected tag is always refused: a pin is a tombstone, so even a tag that
//! is gone at the upstream may not be deleted (or later re-pointed) through tagpin.
//! Deleting by digest is refused while a protected tag of the repository is pinned or
//! claimed to that digest. Tags the upstream holds but tagpin has not seen are adopted
//! first, outside any lock; then, under the repository's exclusive lock (no push can pin
//! the digest mid-delete), the delete is decided and forwarded as a detached task, so a
//! client that goes away cannot cut it short. The in-flight rule holds here too: the
//! delete is recorded durably before it is forwarded, and while its outcome is unknown
//! no push may pin a tag to that digest ([`crate::store::PinStore::begin_delete`]).

use std::sync::Arc;

use http::request::Parts;
use http::Response;

use crate::app::App;
use crate::body::Body;
use crate::error::ProxyError;
use crate::oci::{Digest, Reference, Repository};
use crate::policy::Refusal;
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
        Reference::Tag(tag) => {
            if !app.protection.is_protected(&repo, &tag) {
                return super::forward(app, parts, body, who).await;
            }
            // The refusal does not depend on the store; the pin only enriches the message.
            let (r, t) = (repo.clone(), tag.clone());
            let pinned = app
                .store_call(move |s| s.state(&r, &t))
                .await
                .ok()
                .flatten()
                .map(|s| s.digest().clone());
            AuditEvent {
                action: AuditAction::DeleteRefused,
                who,
                repository: &repo,
                tag: Some(&tag),
                pinned: pinned.as_ref(),
                attempted: None,
            }
            .emit(&app.metrics);
            Err(Refusal::DeleteTag { repo, tag, pinned }.into())
        }
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
    app.detached(move |app| async move { delete_digest(&app, parts, body, repo, digest, kind, &who).await })
        .await
}

async fn delete_digest(
    app: &App,
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
    let protected: Vec<_> = if kind == Content::Manifest {
        let (r, d) = (repo.clone(), digest.clone());
        let tags = app.store_call(move |s| s.tags_pinned_to(&r, &d)).await?;
        tags.into_iter()
            .filter(|t| app.protection.is_protected(&repo, t))
            .collect()
    } else {
        Vec::new()
    };
    let (r, d) = (repo.clone(), digest.clone());
    let holders = app.store_call(move |s| s.referenced_by(&r, &d)).await?;
    if protected.is_empty() && !holders.is_empty() {
        AuditEvent {
            action: AuditAction::DeleteRefused,
            who,
            repository: &repo,
            tag: None,
            pinned: Some(&holders[0]),
            attempted: Some(&digest),
        }
        .emit(&app.metrics);
        return Err(Refusal::DeleteReferenced {
            repo,
            digest,
            kind: if kind == Content::Manifest { "manifest" } else { "blob" },
            holders,
        }
        .into());
    }
    if !protected.is_empty() {
        for tag in &protected {
            AuditEvent {
                action: AuditAction::DeleteRefused,
                who,
                repository: &repo,
                tag: Some(tag),
                pinned: Some(&digest),
                attempted: None,
            }
            .emit(&app.metrics);
        }
        return Err(Refusal::DeleteDigest {
            repo,
            digest,
            tags: protected,
        }
        .into());
    }

    let (r, d, id) = (repo.clone(), digest.clone(), who.request_id.clone());
    app.store_call(move |s| s.begin_delete(&r, &d, &id)).await?;
    let origin = super::client_origin(app, &parts.headers);
    let settle = |app: &App| {
        let (r, d) = (repo.clone(), digest.clone());
        let store = Arc::clone(&app.store);
        async move {
            // A marker that cannot be removed only keeps the digest from being pinned
            // until a later delete settles it (fail closed).
            let _ = tokio::task::spawn_blocking(move || store.end_delete(&r, &d)).await;
        }
    };
    match app.upstream.send(super::upstream_request(app, parts, body, who)).await {
        Ok(resp) => {
            if super::push::outcome_unknown(resp.status()) {
                tracing::warn!(request_id = %who.request_id, repository = %repo, %digest, status = resp.status().as_u16(), "the upstream answered a delete with a gateway error; the digest stays unpinnable until a delete of it is answered");
            } else {
                // 2xx: deleted; 404: not there; any other answer: refused. All settled.
                settle(app).await;
            }
            Ok(super::to_client(app, resp, origin.as_deref()))
        }
        Err(e @ UpstreamError::Connect(_)) => {
            settle(app).await;
            Err(e.into())
        }
        Err(e) => {
            tracing::warn!(request_id = %who.request_id, repository = %repo, %digest, error = %e, "delete forwarded with an unknown outcome; the digest stays unpinnable until a delete of it is answered");
            Err(ProxyError::OutcomeUnknown(e))
        }
    }
}
