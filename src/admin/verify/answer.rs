//! A verify's answer, streamed as the walk finds things, in one of two forms:
//! - `?format=ndjson` (what `tagpin verify` asks for): JSON lines, `{"progress":{…}}`
//!   while it walks, `{"tag":{…}}` for each pin checked, `{"unpinned":{…}}` for each of
//!   the first unpinned tags, then `{"done":{"counts":{…},"repositories":N}}` or
//!   `{"error":"…","after":"R"}`;
//! - otherwise one JSON object, `{"tags":[…],"counts":{…},"unpinned":[…]}`, as before
//!   the walk was streamed, written while the walk goes. Its status is sent once the
//!   first catalog page was read, so a failure after that cuts the body off mid-object:
//!   a client gets JSON it cannot parse, never a report on part of the pins.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use serde_json::json;

use super::{Found, Walk};
use crate::admin::routes::WalkScope;
use crate::app::App;
use crate::body::{Body, BodySender};
use crate::error::ProxyError;

/// The handler.
pub async fn verify(app: Arc<App>, scope: WalkScope, lines: bool) -> Result<Response<Body>, ProxyError> {
    let walk = super::start(app, &scope).await?;
    let (tx, body) = crate::body::channel(16);
    tokio::spawn(async move {
        if lines {
            as_lines(walk, tx).await;
        } else {
            as_object(walk, tx).await;
        }
    });
    let mut resp = Response::new(body);
    let kind = if lines {
        "application/x-ndjson"
    } else {
        "application/json"
    };
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    Ok(resp)
}

/// Returns when the client went away, too: dropping `walk` ends it.
async fn as_lines(mut walk: Walk, tx: BodySender) {
    while let Some(found) = walk.found.recv().await {
        let (value, last) = match found {
            Found::Checked(c) => (json!({ "tag": c }), false),
            Found::Unpinned(u) => (json!({ "unpinned": u }), false),
            Found::Progress(p) => (json!({ "progress": p }), false),
            Found::Done(s) => (json!({ "done": s }), true),
            Found::Failed { error, after } => (json!({ "error": error.to_string(), "after": after }), true),
        };
        if tx.send(crate::admin::line(&value)).await.is_err() || last {
            return;
        }
    }
    tx.fail("the verify ended without a result".into()).await;
}

async fn as_object(mut walk: Walk, tx: BodySender) {
    let mut unpinned = Vec::new();
    let mut first = true;
    if tx.send(Bytes::from_static(b"{\"tags\":[")).await.is_err() {
        return;
    }
    while let Some(found) = walk.found.recv().await {
        let chunk = match found {
            Found::Checked(c) => {
                let mut text = if first { String::new() } else { ",".to_owned() };
                first = false;
                text.push_str(&json!(c).to_string());
                text
            }
            Found::Unpinned(u) => {
                unpinned.push(u);
                continue;
            }
            Found::Progress(_) => continue,
            Found::Done(s) => {
                let end = format!("],\"counts\":{},\"unpinned\":{}}}", json!(s.counts), json!(unpinned));
                let _ = tx.send(end.into()).await;
                return;
            }
            Found::Failed { error, .. } => {
                tracing::warn!(error = %error, "verify failed; its answer is cut off");
                tx.fail(error.to_string()).await;
                return;
            }
        };
        if tx.send(chunk.into()).await.is_err() {
            return;
        }
    }
    tx.fail("the verify ended without a result".into()).await;
}
