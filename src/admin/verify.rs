//! `GET /admin/v1/verify[?repository=R]`: does the upstream still hold what tagpin
//! pinned? Each pin (a page of the store at a time) against a HEAD of its tag at the
//! upstream, with tagpin's own credentials: `same`, `moved` (someone wrote to the
//! upstream past tagpin) or `missing` (deleted there). Protected tags the upstream holds
//! and tagpin has no pin for are counted as `unpinned` (a seed would adopt them), and the
//! first [`MAX_UNPINNED_LISTED`] of them are named.
//!
//! A claim without a pin is a push in flight, not a pin to check; it is left out (and
//! its tag is not unpinned either). The periodic drift check ([`super::drift`]) runs
//! the same [`check`]; a requested verify only answers, it sets no gauge and emits no
//! audit event (it changes nothing). Any upstream failure fails the whole verify: a
//! report on part of the pins would read as "the rest is fine".

use std::collections::HashSet;

use http::{Response, StatusCode};
use serde::Serialize;

use super::json;
use crate::app::App;
use crate::body::Body;
use crate::error::ProxyError;
use crate::metrics::DriftCounts;
use crate::oci::{Digest, Repository, Tag};
use crate::store::TagState;

/// Pins read from the store per page.
const PAGE: usize = 1000;

/// How a pinned tag stands at the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Drift {
    Same,
    Moved,
    Missing,
}

/// One pinned tag, checked.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    pub repository: Repository,
    pub tag: Tag,
    pub pinned_digest: Digest,
    pub upstream_digest: Option<Digest>,
    pub state: Drift,
}

/// A protected tag the upstream holds that tagpin has no pin for.
#[derive(Debug, Clone, Serialize)]
pub struct Unpinned {
    pub repository: Repository,
    pub tag: Tag,
}

/// Unpinned tags named in a report; `counts.unpinned` counts them all.
pub const MAX_UNPINNED_LISTED: usize = 100;

/// Every pin checked, the counts, and the first [`MAX_UNPINNED_LISTED`] unpinned tags.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tags: Vec<Checked>,
    pub counts: DriftCounts,
    pub unpinned: Vec<Unpinned>,
}

/// Check every pin (of `repository`, when given) and count the unpinned tags.
pub async fn check(app: &App, repository: Option<&Repository>) -> Result<Report, ProxyError> {
    let mut tags = Vec::new();
    let mut counts = DriftCounts::default();
    let mut held: HashSet<(Repository, Tag)> = HashSet::new();
    let mut after: Option<(Repository, Tag)> = None;
    loop {
        let (r, a) = (repository.cloned(), after.take());
        let page = app.store_call(move |s| s.list(r.as_ref(), a.as_ref(), PAGE)).await?;
        let full = page.len() == PAGE;
        after = page.last().map(|(r, t, _)| (r.clone(), t.clone()));
        for (repo, tag, state) in page {
            let pin = match state {
                TagState::Pinned(p) | TagState::Advancing { pin: p, .. } => p,
                TagState::Claimed(_) => {
                    held.insert((repo, tag));
                    continue;
                }
            };
            let upstream = app.upstream.own_tag_digest(&repo, &tag).await?;
            let state = match &upstream {
                Some(d) if *d == pin.digest => Drift::Same,
                Some(_) => Drift::Moved,
                None => Drift::Missing,
            };
            match state {
                Drift::Same => counts.same += 1,
                Drift::Moved => counts.moved += 1,
                Drift::Missing => counts.missing += 1,
            }
            held.insert((repo.clone(), tag.clone()));
            tags.push(Checked {
                repository: repo,
                tag,
                pinned_digest: pin.digest,
                upstream_digest: upstream,
                state,
            });
        }
        if !full {
            break;
        }
    }
    let repos = match repository {
        Some(r) => vec![r.clone()],
        None => app.upstream.catalog().await?,
    };
    let policy = app.policy();
    let mut unpinned = Vec::new();
    for repo in repos {
        // A repository of blobs only has no tags to pin.
        let Some(upstream_tags) = app.upstream.own_list_tags(&repo).await? else {
            continue;
        };
        for tag in upstream_tags {
            if policy.is_protected(&repo, &tag) && !held.contains(&(repo.clone(), tag.clone())) {
                counts.unpinned += 1;
                if unpinned.len() < MAX_UNPINNED_LISTED {
                    unpinned.push(Unpinned {
                        repository: repo.clone(),
                        tag,
                    });
                }
            }
        }
    }
    Ok(Report { tags, counts, unpinned })
}

/// The handler.
pub async fn verify(app: &App, repository: Option<Repository>) -> Result<Response<Body>, ProxyError> {
    let report = check(app, repository.as_ref()).await?;
    let value = serde_json::to_value(&report).map_err(|e| ProxyError::Internal(e.to_string()))?;
    Ok(json(StatusCode::OK, &value))
}
