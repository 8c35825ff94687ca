//! Fetching a manifest by digest for tagpin's own decisions: the children of a pinned
//! index, or a pinned manifest whose references were never recorded. Read with the
//! manifest size limit and checked against the digest, so what tagpin records is what
//! the upstream serves under that name.

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{error_chain, Upstream, UpstreamError, MANIFEST_ACCEPT};
use crate::body;
use crate::oci::{Digest, Repository};

/// A manifest the upstream was asked for by digest.
pub enum Fetched {
    Found(Bytes),
    Absent,
    /// The upstream wants (other) credentials; handed to the client as is.
    Challenge(Response<Incoming>),
}

impl Upstream {
    /// `GET /v2/<repo>/manifests/<digest>` with the client's credentials; the bytes must
    /// hash to `digest` and fit in `limit`.
    pub async fn manifest_by_digest(
        &self,
        repo: &Repository,
        digest: &Digest,
        authorization: Option<&HeaderValue>,
        limit: usize,
    ) -> Result<Fetched, UpstreamError> {
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(self.uri_for(&format!("/v2/{repo}/manifests/{digest}")))
            .header(header::ACCEPT, MANIFEST_ACCEPT)
            .header(header::USER_AGENT, concat!("tagpin/", env!("CARGO_PKG_VERSION")));
        if let Some(auth) = authorization {
            req = req.header(header::AUTHORIZATION, auth);
        }
        let resp = self
            .send_check(req.body(body::empty()).expect("static request parts are valid"))
            .await?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(Fetched::Absent),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => return Ok(Fetched::Challenge(resp)),
            status => {
                return Err(UpstreamError::FetchStatus {
                    what: format!("manifest {repo}@{digest}"),
                    status,
                })
            }
        }
        let mut body = resp.into_body();
        let mut buf = BytesMut::new();
        let deadline = tokio::time::Instant::now() + self.check_timeout();
        while let Some(frame) = tokio::time::timeout_at(deadline, body.frame())
            .await
            .map_err(|_| UpstreamError::HeaderTimeout(self.check_timeout()))?
        {
            let frame = frame.map_err(|e| UpstreamError::Transport(error_chain(&e)))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(UpstreamError::Transport(format!(
                        "manifest {repo}@{digest} is larger than the {limit}-byte limit"
                    )));
                }
                buf.extend_from_slice(&data);
            }
        }
        let bytes = buf.freeze();
        let actual = Digest::compute(digest.algorithm(), &bytes);
        if &actual != digest {
            return Err(UpstreamError::DigestMismatch {
                computed: actual,
                reported: digest.as_str().to_owned(),
            });
        }
        Ok(Fetched::Found(bytes))
    }
}

impl Upstream {
    /// `method target` with the client's credentials and nothing else, for tagpin to
    /// learn whether the upstream lets this client read what a refusal would describe.
    pub async fn client_check(
        &self,
        method: Method,
        target: &str,
        authorization: Option<&HeaderValue>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.get_as(method, target, Some(MANIFEST_ACCEPT), super::As::Client(authorization))
            .await
    }
}
