//! Pinned means pullable: the manifests and blobs a pinned manifest depends on are
//! recorded, so deleting any of them through tagpin is refused like deleting the pinned
//! digest itself.
//!
//! The references of a manifest are recorded before the claim or pin that makes it
//! pinned content (from the pushed bytes, fetching an index's children by digest), and
//! lazily for pins that have none (adopted tags, pins of earlier versions) before any
//! delete is decided. A failure to learn them refuses the write that needed them.

use std::collections::BTreeSet;

use http::{header, HeaderMap, HeaderValue, Response};
use hyper::body::Incoming;

use crate::app::App;
use crate::error::ProxyError;
use crate::oci::{references, Digest, Repository};
use crate::upstream::Fetched;

/// Most manifests fetched to learn one manifest's dependencies (an index's children and
/// theirs); an index beyond it is refused as undecidable rather than half-protected.
const MAX_FETCHES: usize = 4096;

/// The references of a manifest, and whether this call learned them.
pub struct Protected {
    pub refs: Vec<Digest>,
    pub new: bool,
    /// Learned now and left for the claim that follows to record in its own write
    /// (`claim_follows`).
    pub pending: Option<crate::store::Protection>,
}

/// Make sure the references of `holder` are recorded; `bytes` are its manifest when at
/// hand (a push), else it is fetched. Returns every reference recorded for it, whether
/// recorded now or before. `Err(response)` when the upstream wants credentials.
/// `claim_follows`: the caller writes a claim right after, which records them in the
/// same write ([`Protected::pending`]); otherwise they are recorded here, durably.
pub async fn protect(
    app: &App,
    repo: &Repository,
    holder: &Digest,
    bytes: Option<&[u8]>,
    headers: &HeaderMap,
    claim_follows: bool,
) -> Result<Result<Protected, Response<Incoming>>, ProxyError> {
    let (r, h) = (repo.clone(), holder.clone());
    let recorded = app
        .store_call(move |s| match s.has_refs(&r, &h)? {
            true => s.refs_of(&r, &h).map(Some),
            false => Ok(None),
        })
        .await?;
    if let Some(refs) = recorded {
        return Ok(Ok(Protected {
            refs,
            new: false,
            pending: None,
        }));
    }
    let auth = headers.get(header::AUTHORIZATION);
    let limit = app.config.max_manifest_bytes;
    let fetched;
    let top: &[u8] = match bytes {
        Some(b) => b,
        None => match fetch(app, repo, holder, auth, limit).await? {
            Fetched::Found(b) => {
                fetched = b;
                &fetched
            }
            // A pinned manifest the upstream says it lacks (deleted behind tagpin's back,
            // or a lagging replica): it has nothing to protect right now, but recording
            // "depends on nothing" would be for good. Nothing is recorded, so the next
            // decision asks again and protects its content once the upstream serves it.
            Fetched::Absent => {
                return Ok(Ok(Protected {
                    refs: Vec::new(),
                    new: true,
                    pending: None,
                }))
            }
            Fetched::Challenge(resp) => return Ok(Err(resp)),
        },
    };
    let refs = references(top);
    let mut deps: BTreeSet<Digest> = refs.blobs.into_iter().collect();
    let mut queue: Vec<Digest> = refs.manifests;
    let mut fetches = 0;
    let mut complete = true;
    while let Some(child) = queue.pop() {
        if !deps.insert(child.clone()) {
            continue;
        }
        fetches += 1;
        if fetches > MAX_FETCHES {
            return Err(ProxyError::Internal(format!(
                "manifest {repo}@{holder} references more than {MAX_FETCHES} manifests"
            )));
        }
        match fetch(app, repo, &child, auth, limit).await? {
            Fetched::Found(b) => {
                let r = references(&b);
                deps.extend(r.blobs);
                queue.extend(r.manifests);
            }
            // A child the upstream does not serve: its digest is recorded, its blobs are
            // not known, so the holder is asked about again next time.
            Fetched::Absent => complete = false,
            Fetched::Challenge(resp) => return Ok(Err(resp)),
        }
    }
    let deps: Vec<Digest> = deps.into_iter().collect();
    if claim_follows {
        let pending = crate::store::Protection {
            holder: holder.clone(),
            refs: deps.clone(),
            complete,
        };
        return Ok(Ok(Protected {
            refs: deps,
            new: true,
            pending: Some(pending),
        }));
    }
    let (r, h, d) = (repo.clone(), holder.clone(), deps.clone());
    let how = crate::store::Protect {
        durable: true,
        complete,
    };
    app.store_call(move |s| s.protect(&r, &h, &d, how)).await?;
    Ok(Ok(Protected {
        refs: deps,
        new: true,
        pending: None,
    }))
}

/// Record the references of every pinned or claimed manifest of `repo` that has none.
pub async fn protect_repository(
    app: &App,
    repo: &Repository,
    headers: &HeaderMap,
) -> Result<Result<(), Response<Incoming>>, ProxyError> {
    let r = repo.clone();
    for holder in app.store_call(move |s| s.holders(&r)).await? {
        if let Err(challenge) = protect(app, repo, &holder, None, headers, false).await? {
            return Ok(Err(challenge));
        }
    }
    Ok(Ok(()))
}

/// A manifest by digest, asked with tagpin's own credentials when it has them, so a
/// client credential that may push but not read (a registry may answer it 404) cannot
/// hide what a pinned manifest depends on; with the client's otherwise.
pub async fn fetch(
    app: &App,
    repo: &Repository,
    digest: &Digest,
    authorization: Option<&HeaderValue>,
    limit: usize,
) -> Result<Fetched, crate::upstream::UpstreamError> {
    if app.config.upstream_credentials.is_some() {
        return app.upstream.own_manifest_by_digest(repo, digest, limit).await;
    }
    app.upstream
        .manifest_by_digest(repo, digest, authorization, limit)
        .await
}
