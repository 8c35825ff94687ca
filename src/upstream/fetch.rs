//! Fetching a manifest by digest for tagpin's own decisions: the children of a pinned
//! index, or a pinned manifest whose references were never recorded. Read with the
//! manifest size limit and checked against the digest, so what tagpin records is what
//! the upstream serves under that name.

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{error_chain, As, Upstream, UpstreamError, MANIFEST_ACCEPT};
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
        self.manifest_by_digest_as(repo, digest, As::Client(authorization), limit)
            .await
    }

    /// [`Upstream::manifest_by_digest`] with tagpin's own credentials: a client
    /// credential that may push but not read cannot make a pinned manifest look gone.
    pub async fn own_manifest_by_digest(
        &self,
        repo: &Repository,
        digest: &Digest,
        limit: usize,
    ) -> Result<Fetched, UpstreamError> {
        match self.manifest_by_digest_as(repo, digest, As::Own, limit).await? {
            Fetched::Challenge(resp) => Err(UpstreamError::OwnAuth(format!(
                "the manifest {repo}@{digest} answered {}",
                resp.status()
            ))),
            other => Ok(other),
        }
    }

    async fn manifest_by_digest_as(
        &self,
        repo: &Repository,
        digest: &Digest,
        who: As<'_>,
        limit: usize,
    ) -> Result<Fetched, UpstreamError> {
        let target = format!("/v2/{repo}/manifests/{digest}");
        let resp = self.get_as(Method::GET, &target, Some(MANIFEST_ACCEPT), who).await?;
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
        self.get_as(method, target, Some(MANIFEST_ACCEPT), As::Client(authorization))
            .await
    }
}
