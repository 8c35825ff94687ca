//! Reading what an upstream's answer says about a forwarded write: whether its outcome
//! is known at all, and for a push, which of its tags it applied.

use http::{HeaderMap, HeaderValue, StatusCode};

use crate::app::App;
use crate::oci::{Repository, Tag};
use crate::pinning::flow::TagWord;
use crate::upstream::{TagAtUpstream, UpstreamError};

/// Send a decided write and wait for its answer, for at most a quarter of the in-doubt
/// horizon in all (on top of the header and body limits, which bound each stall): the
/// write's record must outlive it. Past that, the outcome is unknown (504).
pub async fn bounded<F>(app: &App, send: F) -> Result<hyper::Response<hyper::body::Incoming>, UpstreamError>
where
    F: std::future::Future<Output = Result<hyper::Response<hyper::body::Incoming>, UpstreamError>>,
{
    let limit = app.config.in_doubt_horizon / 4;
    tokio::time::timeout(limit, send)
        .await
        .unwrap_or(Err(UpstreamError::HeaderTimeout(limit)))
}

/// A gateway error (502, 503, 504) may come from a proxy in front of the upstream that
/// gave up waiting while the upstream itself goes on: it says nothing about the outcome.
pub fn outcome_unknown(status: StatusCode) -> bool {
    // 503 too: proxies such as Envoy answer it when the upstream reset the connection
    // after receiving the request.
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// The `Docker-Content-Digest` of an answer.
pub fn reported_digest(headers: &HeaderMap) -> Option<String> {
    headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The tags an `OCI-Tag` response header lists, or `None` when the upstream sent none.
pub fn oci_tag_headers(headers: &HeaderMap) -> Option<Vec<String>> {
    let listed: Vec<String> = headers
        .get_all("oci-tag")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    (!listed.is_empty()).then_some(listed)
}

/// What the upstream said, for each tag of a push it answered 2xx, about whether it
/// applied that tag: the path tag of a push by tag with a confirmed digest is applied;
/// `OCI-Tag` lists the tags a push by digest applied (spec.md, "Pushing Manifests");
/// without either, a `HEAD` of the tag asks (distribution 2.8 ignores `?tag=`).
pub async fn tag_words(
    app: &App,
    repo: &Repository,
    tags: &[Tag],
    path_tag: Option<&Tag>,
    headers: &HeaderMap,
    authorization: Option<&HeaderValue>,
) -> Vec<TagWord> {
    let reported = reported_digest(headers).is_some();
    let listed = oci_tag_headers(headers);
    let mut out = Vec::with_capacity(tags.len());
    for tag in tags {
        let word = match (path_tag, &listed) {
            (Some(p), _) if p == tag && reported => TagWord::PathTag,
            (None, Some(listed)) if reported => TagWord::Listed(listed.iter().any(|t| t == tag.as_str())),
            _ => match super::pins::tag_at_upstream(app, repo, tag, authorization).await {
                Ok(TagAtUpstream::Present(d)) => TagWord::Head(Some(d)),
                Ok(TagAtUpstream::Absent) => TagWord::Head(None),
                Ok(TagAtUpstream::Challenge(_)) | Err(_) => TagWord::Unknown,
            },
        };
        out.push(word);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_tag_headers_list_every_applied_tag() {
        let mut h = HeaderMap::new();
        assert_eq!(oci_tag_headers(&h), None);
        h.append("oci-tag", "v1".parse().unwrap());
        h.append("oci-tag", "v2, v3".parse().unwrap());
        assert_eq!(oci_tag_headers(&h), Some(vec!["v1".into(), "v2".into(), "v3".into()]));
    }

    #[test]
    fn only_gateway_errors_leave_the_outcome_unknown() {
        assert!(outcome_unknown(StatusCode::BAD_GATEWAY));
        assert!(outcome_unknown(StatusCode::SERVICE_UNAVAILABLE));
        assert!(outcome_unknown(StatusCode::GATEWAY_TIMEOUT));
        for s in [400, 401, 403, 404, 409, 500, 501] {
            assert!(!outcome_unknown(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }
}
