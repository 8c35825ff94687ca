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
use crate::log::{self, Frontier, Hash, LogEntry, ProofError};

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

/// One line of `entries`: the entry's fields with `leaf` (the base64 of its exact bytes)
/// added; only `index` (its position) and `leaf` when the stored bytes are not the entry
/// of that position, served as they are for a verifier to find. Always one line of JSON
/// whose `leaf` is the stored bytes, whatever those bytes hold (a newline, a `leaf` key).
fn line(index: u64, leaf: &[u8]) -> String {
    let encoded = B64.encode(leaf);
    // The entry as serialised here starts with its index, as every leaf does.
    let first = format!("{{\"index\":{index},");
    let fields = LogEntry::parse(leaf)
        .filter(|e| e.index == index)
        .map(|e| String::from_utf8(e.leaf()).expect("serde_json writes UTF-8"))
        .filter(|text| text.starts_with(&first));
    match fields {
        Some(text) => format!("{first}\"leaf\":\"{encoded}\",{}", &text[first.len()..]),
        None => json!({ "index": index, "leaf": encoded }).to_string(),
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
/// One replica at a time emits, as with the drift check. Each tick sets
/// `tagpin_log_entries`, each checkpoint shipped `tagpin_log_checkpoint_timestamp_seconds`.
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
            Ok((lead, head)) => {
                app.metrics.health.log_size(head.size());
                if !lead {
                    continue;
                }
                head
            }
            Err(e) => {
                tracing::warn!(error = %e, "log checkpoint not shipped: the store cannot be read");
                continue;
            }
        };
        if shipped == Some(head.size()) || (shipped.is_none() && head.size() == 0) {
            continue;
        }
        shipped = Some(head.size());
        let checkpoint = app.log_signer.checkpoint(&head);
        crate::telemetry::checkpoint_event(&app.metrics, head.size(), &checkpoint);
        // One replica leads, so one event per checkpoint: its id is the checkpoint's.
        app.notify.enqueue_with_id(
            crate::notify::stable_id(&checkpoint),
            crate::notify::EventKind::LogCheckpoint,
            None,
            None,
            serde_json::json!({ "action": "log_checkpoint", "size": head.size(), "checkpoint": checkpoint }),
        );
        app.metrics.health.checkpoint_shipped();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each line parses as one JSON object whose `leaf` is the exact stored bytes and whose
    /// `index` is the position, whatever the stored bytes are (a tampered leaf included).
    #[test]
    fn every_line_is_one_json_object_carrying_the_exact_leaf() {
        let entry = br#"{"index":2,"time":"2026-12-07T12:00:00Z","repository":"team/app","tag":"1.0","digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","previous":null,"event":"push","by":"req-1"}"#;
        let leaves: [&[u8]; 6] = [
            entry,
            b"{ }",
            br#"{"leaf":"Zm9yZ2Vk"}"#,
            b"{\n\"index\":2}",
            br#"{"index":7,"x":1}"#,
            b"\xff not utf-8",
        ];
        for leaf in leaves {
            let text = line(2, leaf);
            assert!(!text.contains('\n'), "{text}");
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(v["index"], 2, "{text}");
            assert_eq!(B64.decode(v["leaf"].as_str().unwrap()).unwrap(), leaf, "{text}");
        }
        let v: serde_json::Value = serde_json::from_str(&line(2, entry)).unwrap();
        assert_eq!((v["tag"].as_str(), v["event"].as_str()), (Some("1.0"), Some("push")));
    }
}
