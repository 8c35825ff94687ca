//! One delivery attempt: POST the event's body to the target, and what its answer means
//! for the next attempt. A target is never named by its URL here: the URL may carry a
//! token (Slack's do), so errors name the target's `name` or host and the cause only.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use super::format;
use super::Outcome;
use crate::config::NotifyTarget;
use crate::store::OutboxEvent;

pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client for every target: the public CA roots (and `upstream_ca`), HTTP/1.1.
pub fn client(tls: rustls::ClientConfig) -> HttpClient {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(https)
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub outcome: Outcome,
    /// The status, when the target answered.
    pub status: Option<u16>,
    /// Why it failed, in one line without the URL.
    pub error: Option<String>,
    /// `Retry-After` of a 429 or 5xx.
    pub retry_after: Option<Duration>,
}

/// Post `event` to `target` once, within the target's timeout.
pub async fn attempt(client: &HttpClient, target: &NotifyTarget, event: &OutboxEvent, source: &str) -> Attempt {
    let (body, content_type) = format::body(target, event, source);
    let mut req = http::Request::post(target.uri.clone())
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::USER_AGENT, concat!("tagpin/", env!("CARGO_PKG_VERSION")));
    if let Some(auth) = &target.authorization {
        req = req.header(http::header::AUTHORIZATION, auth.0.as_str());
    }
    if let Some(secret) = &target.secret {
        let now = crate::store::now_secs();
        req = req
            .header("x-tagpin-timestamp", now.to_string())
            .header("x-tagpin-signature-256", format::signature(&secret.0, now, &body));
    }
    let req = match req.body(Full::new(Bytes::from(body))) {
        Ok(r) => r,
        Err(e) => return failed(Outcome::Rejected, format!("cannot build the request: {e}")),
    };
    let sent = async {
        let resp = client.request(req).await?;
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        // Read (and drop) a little of the answer so the connection can be reused.
        let mut body = resp.into_body();
        let mut read = 0usize;
        while let Some(frame) = body.frame().await {
            read += frame.ok().and_then(|f| f.into_data().ok()).map_or(0, |d| d.len());
            if read > 64 * 1024 {
                break;
            }
        }
        Ok::<_, hyper_util::client::legacy::Error>((status, retry_after))
    };
    match tokio::time::timeout(target.timeout, sent).await {
        Err(_) => failed(Outcome::Retry, format!("no answer within {:?}", target.timeout)),
        Ok(Err(e)) => failed(Outcome::Retry, describe(&e)),
        Ok(Ok((status, retry_after))) => {
            let code = status.as_u16();
            let outcome = match code {
                200..=299 => Outcome::Delivered,
                429 | 500..=599 => Outcome::Retry,
                _ => Outcome::Rejected,
            };
            Attempt {
                outcome,
                status: Some(code),
                error: (outcome != Outcome::Delivered).then(|| format!("answered {status}")),
                retry_after: (outcome == Outcome::Retry).then_some(retry_after).flatten(),
            }
        }
    }
}

fn failed(outcome: Outcome, error: String) -> Attempt {
    Attempt {
        outcome,
        status: None,
        error: Some(error),
        retry_after: None,
    }
}

/// The error's causes, without the URL (hyper's messages do not carry it; the chain is
/// walked for the innermost, most specific one).
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = s.to_string();
        source = s.source();
    }
    text
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = jiff::fmt::rfc2822::parse(v).ok()?.timestamp();
    let wait = at.as_second() - jiff::Timestamp::now().as_second();
    Some(Duration::from_secs(wait.max(0) as u64))
}

/// The wait before attempt `n + 1` (`n` failed attempts so far): doubling from one
/// second, at most `cap`, with jitter (a random half of it taken off), and at least what
/// the target asked for.
pub fn backoff(n: u32, cap: Duration, asked: Option<Duration>, random: u32) -> Duration {
    let full = Duration::from_secs(1u64 << n.min(20)).min(cap);
    let jitter = full.mul_f64(f64::from(random) / f64::from(u32::MAX) / 2.0);
    (full - jitter).max(asked.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_and_honours_retry_after() {
        let cap = Duration::from_secs(60);
        assert_eq!(backoff(0, cap, None, 0), Duration::from_secs(1));
        assert_eq!(backoff(3, cap, None, 0), Duration::from_secs(8));
        assert_eq!(backoff(12, cap, None, 0), cap);
        assert_eq!(backoff(12, cap, None, u32::MAX), cap / 2);
        assert_eq!(
            backoff(0, cap, Some(Duration::from_secs(30)), 0),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            http::header::RETRY_AFTER,
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
    }
}
