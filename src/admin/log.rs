//! The history log over the admin API ([`crate::log`]): the current checkpoint, pages of
//! entries with their exact leaf bytes, inclusion and consistency proofs; and the task
//! that ships checkpoints off the host as `log_checkpoint` audit events.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::json;

use super::json;
use crate::app::App;
use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::log::{self, Frontier, Hash, ProofError};

/// Most entries one `entries` answer holds.
pub const MAX_ENTRIES: u64 = 1000;

async fn head(app: &App) -> Result<Frontier, ProxyError> {
    app.store_call(|s| s.log_head()).await
}

fn text(body: String, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(body::full(body));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// `GET /admin/v1/log/checkpoint`: the signed note (text/plain).
pub async fn checkpoint(app: &App) -> Result<Response<Body>, ProxyError> {
    let head = head(app).await?;
    Ok(text(app.log_signer.checkpoint(&head), "text/plain; charset=utf-8"))
}

/// `GET /admin/v1/log/entries?start=S&end=E`: JSON lines, `end` exclusive, at most
/// [`MAX_ENTRIES`] (a client asks again from the last index plus one). Each line is the
/// leaf's own fields with `leaf`, the base64 of its exact bytes, added.
pub async fn entries(app: &App, start: u64, end: u64) -> Result<Response<Body>, ProxyError> {
    let size = head(app).await?.size();
    if start >= end || end > size {
        return Err(ProxyError::AdminBadRequest(format!(
            "no entries [{start}, {end}): start < end <= {size} (the log's size)"
        )));
    }
    let end = end.min(start.saturating_add(MAX_ENTRIES));
    let leaves = app.store_call(move |s| s.log_leaves(start, end)).await?;
    let mut out = String::new();
    for (i, leaf) in (start..).zip(&leaves) {
        out.push_str(&line(i, leaf));
        out.push('\n');
    }
    Ok(text(out, "application/x-ndjson"))
}

/// One line of `entries`: the leaf's fields and `leaf`, or only `index` and `leaf` when
/// the stored bytes are not a JSON object (served as they are, for a verifier to find).
fn line(index: u64, leaf: &[u8]) -> String {
    let encoded = B64.encode(leaf);
    match std::str::from_utf8(leaf) {
        Ok(t) if t.starts_with('{') && serde_json::from_str::<serde_json::Map<_, _>>(t).is_ok() && t.len() > 2 => {
            format!("{{\"leaf\":\"{encoded}\",{}", &t[1..])
        }
        _ => json!({ "index": index, "leaf": encoded }).to_string(),
    }
}

fn hashes(list: &[Hash]) -> Vec<String> {
    list.iter().map(|h| B64.encode(h)).collect()
}

fn proof_error(e: ProofError) -> ProxyError {
    match e {
        ProofError::Store(e) => e.into(),
        ProofError::Range(why) => ProxyError::AdminBadRequest(why),
    }
}

/// `GET /admin/v1/log/proof/inclusion?index=I&size=N`.
pub async fn inclusion(app: &App, index: u64, size: u64) -> Result<Response<Body>, ProxyError> {
    let proof = app
        .store_call(move |s| Ok(log::inclusion_proof(s, index, size)))
        .await?
        .map_err(proof_error)?;
    Ok(json(
        StatusCode::OK,
        &json!({ "index": index, "size": size, "hashes": hashes(&proof) }),
    ))
}

/// `GET /admin/v1/log/proof/consistency?from=M&to=N`.
pub async fn consistency(app: &App, from: u64, to: u64) -> Result<Response<Body>, ProxyError> {
    let proof = app
        .store_call(move |s| Ok(log::consistency_proof(s, from, to)))
        .await?
        .map_err(proof_error)?;
    Ok(json(
        StatusCode::OK,
        &json!({ "from": from, "to": to, "hashes": hashes(&proof) }),
    ))
}

/// Emit the current checkpoint as a `log_checkpoint` audit event at most once per
/// `every`, when the log has grown since the last one (and once at start), until `stop`.
/// One replica at a time emits, as with the drift check.
pub async fn ship_checkpoints(app: App, every: Duration, stop: impl Future<Output = ()>) {
    let app = Arc::new(app);
    tokio::pin!(stop);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shipped: Option<u64> = None;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = &mut stop => return,
        }
        let head = match app.store_call(|s| Ok((s.lead()?, s.log_head()?))).await {
            Ok((true, head)) => head,
            Ok((false, _)) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "log checkpoint not shipped: the store cannot be read");
                continue;
            }
        };
        if shipped == Some(head.size()) || (shipped.is_none() && head.size() == 0) {
            continue;
        }
        shipped = Some(head.size());
        crate::telemetry::checkpoint_event(&app.metrics, head.size(), &app.log_signer.checkpoint(&head));
    }
}
