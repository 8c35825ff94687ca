//! How an event is written for a target (CloudEvents 1.0 structured mode, or a Slack
//! incoming-webhook line) and how a delivery is signed.

use ring::hmac;

use crate::config::{NotifyFormat, NotifyTarget};
use crate::store::OutboxEvent;

/// The body and its content type.
pub fn body(target: &NotifyTarget, event: &OutboxEvent, source: &str) -> (Vec<u8>, &'static str) {
    match target.format {
        NotifyFormat::CloudEvents => (cloudevent(event, source), "application/cloudevents+json"),
        NotifyFormat::Slack => (slack(event), "application/json"),
    }
}

fn time(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn cloudevent(event: &OutboxEvent, source: &str) -> Vec<u8> {
    let mut doc = serde_json::json!({
        "specversion": "1.0",
        "type": format!("io.tagpin.{}", event.kind.as_str()),
        "source": source,
        "id": event.id,
        "time": time(event.time_ms),
        "datacontenttype": "application/json",
        "data": event.data,
    });
    if let (Some(repo), Some(tag)) = (&event.repository, &event.tag) {
        doc["subject"] = format!("{repo}:{tag}").into();
    } else if let Some(repo) = &event.repository {
        doc["subject"] = repo.clone().into();
    }
    serde_json::to_vec(&doc).expect("an event serialises")
}

/// `sha256:0123456789ab`: enough of a digest for a person to tell two apart.
fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

fn slack(event: &OutboxEvent) -> Vec<u8> {
    let field = |k: &str| event.data.get(k).and_then(|v| v.as_str()).filter(|s| !s.is_empty());
    let mut line = format!("tagpin: {}", event.kind.as_str());
    match (&event.repository, &event.tag) {
        (Some(r), Some(t)) => line.push_str(&format!(" {r}:{t}")),
        (Some(r), None) => line.push_str(&format!(" {r}")),
        _ => {}
    }
    if let Some(d) = field("pinned_digest") {
        line.push_str(&format!(" pinned {}", short(d)));
    }
    if let Some(d) = field("attempted_digest") {
        line.push_str(&format!(" attempted {}", short(d)));
    }
    if let Some(u) = field("user") {
        line.push_str(&format!(" by {u}"));
    }
    if let Some(c) = field("client") {
        line.push_str(&format!(" from {c}"));
    }
    if let Some(e) = field("error") {
        line.push_str(&format!(": {e}"));
    }
    serde_json::to_vec(&serde_json::json!({ "text": line })).expect("a line serialises")
}

/// `sha256=<hex>` of HMAC-SHA256(secret, timestamp + "." + body).
pub fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_rfc4231_hmac_sha256_over_timestamp_dot_body() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let sig = signature("Jefe", 0, b"what do ya want for nothing?");
        assert_ne!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let direct = hmac::sign(&key, b"what do ya want for nothing?");
        let hex: String = direct.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let signed = hmac::sign(&key, b"0.what do ya want for nothing?");
        let hex: String = signed.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(sig, format!("sha256={hex}"));
    }
}
