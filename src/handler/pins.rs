//! Finding the pin in force for a tag, adopting the upstream's digest for tags that
//! predate tagpin (or whose pin a crash kept from being written).

use http::{header, HeaderMap, Response};
use hyper::body::Incoming;

use crate::app::App;
use crate::error::ProxyError;
use crate::oci::{Digest, Repository, Tag};
use crate::store::{Pin, PinSource};
use crate::telemetry::{AuditAction, AuditEvent, Requester};
use crate::upstream::{TagAtUpstream, TagList};

/// The digest `tag` is pinned to, adopting the upstream's current digest when the store
/// has none; `Err(response)` when the upstream wants credentials for the check.
pub async fn pin_in_force(
    app: &App,
    repo: &Repository,
    tag: &Tag,
    headers: &HeaderMap,
    who: &Requester,
) -> Result<Result<Option<Digest>, Response<Incoming>>, ProxyError> {
    let (r, t) = (repo.clone(), tag.clone());
    if let Some(pin) = app.store_call(move |s| s.get(&r, &t)).await? {
        return Ok(Ok(Some(pin.digest)));
    }
    match app
        .upstream
        .tag_digest(repo, tag, headers.get(header::AUTHORIZATION))
        .await?
    {
        TagAtUpstream::Absent => Ok(Ok(None)),
        TagAtUpstream::Challenge(resp) => Ok(Err(resp)),
        TagAtUpstream::Present(digest) => {
            let (r, entry) = (
                repo.clone(),
                vec![(tag.clone(), Pin::now(digest.clone(), PinSource::Adopted))],
            );
            let in_force = app.store_call(move |s| s.pin_if_absent(&r, &entry)).await?;
            let pinned = in_force.into_iter().next().map(|p| p.digest).unwrap_or(digest);
            AuditEvent {
                action: AuditAction::PinAdopted,
                who,
                repository: repo,
                tag: Some(tag),
                pinned: Some(&pinned),
                attempted: Some(&pinned),
            }
            .emit(&app.metrics);
            Ok(Ok(Some(pinned)))
        }
    }
}

/// Adopt every protected tag of `repo` that the upstream holds and the store does not,
/// so a delete by digest is decided against all of them, not only those seen before.
/// `Err(response)` when the upstream wants credentials for the listing or a check.
pub async fn adopt_repository(
    app: &App,
    repo: &Repository,
    headers: &HeaderMap,
    who: &Requester,
) -> Result<Result<(), Response<Incoming>>, ProxyError> {
    let tags = match app.upstream.list_tags(repo, headers.get(header::AUTHORIZATION)).await? {
        TagList::Tags(tags) => tags,
        TagList::Challenge(resp) => return Ok(Err(resp)),
    };
    for tag in tags.iter().filter(|t| app.protection.is_protected(repo, t)) {
        if let Err(challenge) = pin_in_force(app, repo, tag, headers, who).await? {
            return Ok(Err(challenge));
        }
    }
    Ok(Ok(()))
}
