//! The admin API's `at=`: a tag (`GET /admin/v1/pin?…&at=TIME`) or every tag (`GET
//! /admin/v1/pins?at=TIME`) as it stood at a time, read from the pins' histories
//! ([`crate::store::PinAt`]). Times are seconds since the epoch in the answers, as
//! everywhere in the admin API.

use http::{Response, StatusCode};
use serde_json::json;

use super::json;
use crate::app::App;
use crate::body::Body;
use crate::error::ProxyError;
use crate::oci::{Repository, Tag};
use crate::store::{PinAt, TagState};

/// `GET /admin/v1/pin?repository=R&tag=T&at=TIME`: 404 when the tag had no pin then,
/// with a message that says why (no history; before its first entry; not pinned yet).
pub async fn pin_at(app: &App, repository: Repository, tag: Tag, at: i64) -> Result<Response<Body>, ProxyError> {
    let (r, t) = (repository.clone(), tag.clone());
    let record = app.store_call(move |s| s.record(&r, &t)).await?;
    let found = PinAt::of(&repository, &tag, &record.timeline(), at)
        .map_err(|gap| ProxyError::AdminNotFound(gap.describe(&repository, &tag, at)))?;
    let value = serde_json::to_value(&found).map_err(|e| ProxyError::Internal(e.to_string()))?;
    Ok(json(StatusCode::OK, &value))
}

/// `GET /admin/v1/pins?at=TIME`: one page of the pins (as `GET /admin/v1/pins` pages
/// them), each as it stood at TIME; tags first seen after TIME, and tags with no pin then,
/// are left out, so a page may hold fewer than `limit` (or none) and still have a `next`.
pub async fn pins_at(
    app: &App,
    repository: Option<Repository>,
    after: Option<(Repository, Tag)>,
    limit: usize,
    at: i64,
) -> Result<Response<Body>, ProxyError> {
    let (page, next) = super::pins::page(app, repository, after, limit).await?;
    let pins: Vec<PinAt> = page
        .iter()
        .filter_map(|(r, t, state)| match state {
            TagState::Pinned(pin) | TagState::Advancing { pin, .. } => PinAt::of(r, t, &pin.timeline(), at).ok(),
            // A first push in flight has no history yet.
            TagState::Claimed(_) => None,
        })
        .collect();
    Ok(json(StatusCode::OK, &json!({ "at": at, "pins": pins, "next": next })))
}
