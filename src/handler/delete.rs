//! Manifest deletes (distribution-spec `spec.md`, "Deleting Manifests", end-9).
//!
//! Deleting a protected tag is always refused: a pin is a tombstone, so even a tag that
//! is gone at the upstream may not be deleted (or later re-pointed) through tagpin.
//! Deleting by digest is refused while a protected tag of the repository is pinned to
//! that digest; tags the upstream holds but tagpin has not seen are adopted first, and
//! the repository lock keeps a push from pinning the digest mid-delete.

use http::request::Parts;
use http::Response;

use crate::app::App;
use crate::body::Body;
use crate::error::ProxyError;
use crate::oci::{Reference, Repository};
use crate::policy::Refusal;
use crate::telemetry::{AuditAction, AuditEvent, Requester};

pub async fn manifest_delete(
    app: &App,
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
                .store_call(move |s| s.get(&r, &t))
                .await
                .ok()
                .flatten()
                .map(|p| p.digest);
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
        Reference::Digest(digest) => {
            let _guard = app.locks.digest_delete(&repo).await;
            // Tags that predate tagpin are adopted first: deleting their manifest would
            // take the tag away as surely as moving it.
            if let Err(challenge) = super::pins::adopt_repository(app, &repo, &parts.headers, who).await? {
                let origin = super::client_origin(app, &parts.headers);
                return Ok(super::to_client(app, challenge, origin.as_deref()));
            }
            let (r, d) = (repo.clone(), digest.clone());
            let tags = app.store_call(move |s| s.tags_pinned_to(&r, &d)).await?;
            let protected: Vec<_> = tags
                .into_iter()
                .filter(|t| app.protection.is_protected(&repo, t))
                .collect();
            if protected.is_empty() {
                return super::forward(app, parts, body, who).await;
            }
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
            Err(Refusal::DeleteDigest {
                repo,
                digest,
                tags: protected,
            }
            .into())
        }
    }
}
