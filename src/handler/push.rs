//! Manifest pushes that name a protected tag (distribution-spec `spec.md`, "Pushing
//! Manifests", end-7a and end-7b with `?tag=`).
//!
//! The sequence, with the locks of every named tag held throughout:
//! 1. read the body (bounded) and hash the exact bytes;
//! 2. for each tag, the pin in force: the store's, or the upstream's current digest,
//!    adopted as the pin when the tag predates tagpin;
//! 3. decide; refuse the whole push if any tag would move;
//! 4. forward, and only if the upstream answers 2xx with the same digest, record the new
//!    pins durably before the client sees its 201.
//!
//! A crash between 4's forward and its record leaves the tag at the upstream unpinned in
//! the store; step 2 adopts it on the next touch, so no window lets another digest in.

use http::request::Parts;
use http::{header, Response};

use super::{client_origin, to_client, upstream_request};
use crate::app::App;
use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::manifest;
use crate::oci::{Digest, Reference, Repository, Tag};
use crate::policy::{self, Refusal, Verdict};
use crate::store::{Pin, PinSource};
use crate::telemetry::{AuditAction, AuditEvent, Requester};
use crate::upstream::UpstreamError;

/// What the route said about the push.
pub struct Push {
    pub repo: Repository,
    pub reference: Reference,
    pub tags: Vec<Tag>,
}

pub async fn manifest_put(
    app: &App,
    mut parts: Parts,
    body: Body,
    push: Push,
    who: &Requester,
) -> Result<Response<Body>, ProxyError> {
    let Push { repo, reference, tags } = push;
    if tags.len() > app.config.max_tags_per_push {
        return Err(ProxyError::TooManyTags {
            count: tags.len(),
            max: app.config.max_tags_per_push,
        });
    }
    let protected: Vec<Tag> = tags
        .into_iter()
        .filter(|t| app.protection.is_protected(&repo, t))
        .collect();
    if protected.is_empty() {
        // Nothing to decide: an untagged push by digest, or only excluded tags.
        return super::forward(app, parts, body, who).await;
    }

    let bytes = manifest::read_limited(&parts.headers, body, &app.manifest_limits).await?;
    manifest::check_json(&bytes)?;
    let attempted = match &reference {
        Reference::Digest(claimed) => {
            let actual = Digest::compute(claimed.algorithm(), &bytes);
            if &actual != claimed {
                return Err(ProxyError::DigestMismatch {
                    claimed: claimed.clone(),
                    actual,
                });
            }
            actual
        }
        Reference::Tag(_) => Digest::sha256_of(&bytes),
    };
    let origin = client_origin(app, &parts.headers);

    let _guard = app.locks.push(&repo, &protected).await;
    let mut current = Vec::with_capacity(protected.len());
    for tag in &protected {
        match super::pins::pin_in_force(app, &repo, tag, &parts.headers, who).await? {
            Ok(pinned) => current.push((tag.clone(), pinned)),
            Err(challenge) => return Ok(to_client(app, challenge, origin.as_deref())),
        }
    }
    let decision = policy::decide_push(&attempted, &current);
    if !decision.allowed() {
        for c in &decision.conflicts {
            audit(
                app,
                AuditAction::PushRefused,
                who,
                &repo,
                &c.tag,
                Some(&c.pinned),
                &attempted,
            );
        }
        return Err(Refusal::Move {
            repo,
            attempted,
            conflicts: decision.conflicts,
        }
        .into());
    }

    // The body is forwarded as the exact bytes hashed, with a length instead of chunks.
    parts.headers.insert(header::CONTENT_LENGTH, bytes.len().into());
    let req = upstream_request(app, parts, body::full(bytes), who);
    let resp = app.upstream.send(req).await?;
    if !resp.status().is_success() {
        return Ok(to_client(app, resp, origin.as_deref()));
    }
    match resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
    {
        Some(reported) if reported == attempted.as_str() => {}
        Some(reported) => {
            return Err(UpstreamError::DigestMismatch {
                computed: attempted,
                reported: reported.to_owned(),
            }
            .into());
        }
        None => {
            // Without the upstream's word on the digest, no pin is recorded; the tag is
            // adopted from the upstream the next time anyone pushes it.
            tracing::warn!(request_id = %who.request_id, repository = %repo, "upstream accepted a push without Docker-Content-Digest; pins will be adopted on next push");
            return Ok(to_client(app, resp, origin.as_deref()));
        }
    }

    let new_pins: Vec<(Tag, Pin)> = decision
        .new_pins()
        .map(|t| (t.clone(), Pin::now(attempted.clone(), PinSource::Push)))
        .collect();
    if !new_pins.is_empty() {
        let repo2 = repo.clone();
        let in_force = app.store_call(move |s| s.pin_if_absent(&repo2, &new_pins)).await?;
        for (tag, pin) in decision.new_pins().zip(&in_force) {
            if pin.digest != attempted {
                // Impossible while this process holds the tag lock and the store's directory
                // lock; logged loudly because it would mean both were bypassed.
                tracing::error!(repository = %repo, %tag, pinned = %pin.digest, attempted = %attempted, "pin changed under a held tag lock");
            }
        }
    }
    for (tag, verdict) in &decision.verdicts {
        let action = match verdict {
            Verdict::NewPin => AuditAction::PinCreated,
            Verdict::Identical => AuditAction::IdenticalRepush,
            Verdict::Conflict => continue,
        };
        audit(app, action, who, &repo, tag, Some(&attempted), &attempted);
    }
    Ok(to_client(app, resp, origin.as_deref()))
}

fn audit(
    app: &App,
    action: AuditAction,
    who: &Requester,
    repo: &Repository,
    tag: &Tag,
    pinned: Option<&Digest>,
    attempted: &Digest,
) {
    AuditEvent {
        action,
        who,
        repository: repo,
        tag: Some(tag),
        pinned,
        attempted: Some(attempted),
    }
    .emit(&app.metrics);
}
