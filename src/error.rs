//! The handler layer's error, and the one place that maps every error to an HTTP status
//! and an OCI error code.
//!
//! Classification follows where the fault lies: the client's is 4xx with a message that
//! says what to fix; the upstream's is 502/504; tagpin's own (store, internal) is 503/500.
//! A 5xx body carries only a fixed message and the request id: the internal error text
//! goes to the log under the same id, never to the client.

use http::{header, HeaderValue, Response, StatusCode};
use serde_json::json;

use crate::body::{self, Body};
use crate::manifest::ManifestError;
use crate::oci::{Digest, ErrorCode, ErrorEnvelope, NameError, Repository, Tag};
use crate::policy::Refusal;
use crate::route::RouteError;
use crate::store::{rfc3339, NoPinAt, StoreError};
use crate::upstream::UpstreamError;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("this push names {count} tags; at most {max} are allowed in one push")]
    TooManyTags { count: usize, max: usize },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("manifest digest mismatch: the path says {claimed}, the body hashes to {actual}")]
    DigestMismatch { claimed: Digest, actual: Digest },
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// A write was forwarded and the upstream's answer never came (timeout, reset): it may
    /// or may not have been applied. The tag stays reserved for the pushed digest.
    #[error("outcome of the forwarded write is unknown: {0}")]
    OutcomeUnknown(UpstreamError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// What a decision needs could not be had (the pinned manifest of an append-only tag):
    /// the write is refused rather than guessed.
    #[error("cannot decide: {0}")]
    CannotDecide(String),
    /// The upstream accepted a push and the pin could not be recorded; the durable claim
    /// keeps the tag reserved for the pushed digest.
    #[error("the upstream accepted the push, but the pin could not be recorded: {0}")]
    PinNotRecorded(StoreError),
    /// A read by a pinned tag whose pinned manifest the upstream no longer has: never
    /// answered with what the upstream holds under the tag now.
    #[error("{repo}:{tag} is pinned to {digest}, and the upstream no longer has that manifest")]
    PinnedManifestMissing { repo: Repository, tag: Tag, digest: Digest },
    /// The history endpoint: a tag with no history, or none at the time asked about.
    #[error("{}", gap.describe(repo, tag, *at))]
    NoHistory {
        repo: Repository,
        tag: Tag,
        at: i64,
        gap: NoPinAt,
    },
    /// The history endpoint's query cannot be read.
    #[error("{0}")]
    HistoryQuery(String),
    /// Whether the client may read a repository could not be learned from the upstream,
    /// so what only such a client may see is not shown.
    #[error("cannot learn the client's access: {0}")]
    AccessUnknown(String),
    /// A delete by digest waited its bound for the adoption of its repository's tags,
    /// which goes on; nothing was deleted.
    #[error("the tags of {repo} that predate tagpin are still being adopted after {waited:?}")]
    AdoptionRunning {
        repo: Repository,
        waited: std::time::Duration,
    },
    #[error("internal error: {0}")]
    Internal(String),
    /// Admin API: no token, or not one of the configured ones.
    #[error("a valid admin token is required (Authorization: Bearer <token>)")]
    AdminUnauthorized,
    /// Admin API: what was asked for does not exist.
    #[error("{0}")]
    AdminNotFound(String),
    /// Admin API: the request cannot be carried out as written.
    #[error("{0}")]
    AdminBadRequest(String),
    /// Admin API: the request conflicts with what the store holds (an import).
    #[error("{0}")]
    AdminConflict(String),
    /// Admin API: the body is over its limit (an import over `max_import_bytes`).
    #[error("{0}")]
    AdminTooLarge(String),
}

impl ProxyError {
    /// The status and OCI code for this error. `refuse_status` is the configured status
    /// of a refusal (409 or 403).
    pub fn classify(&self, refuse_status: StatusCode) -> (StatusCode, ErrorCode) {
        use ErrorCode as C;
        use StatusCode as S;
        match self {
            Self::Route(r) => match r {
                RouteError::Name(NameError::Repository(_)) => (S::BAD_REQUEST, C::NameInvalid),
                RouteError::Name(NameError::Tag(_)) => (S::BAD_REQUEST, C::TagInvalid),
                RouteError::Name(NameError::Digest(_)) => (S::BAD_REQUEST, C::DigestInvalid),
                RouteError::NotFound | RouteError::UnknownEndpoint => (S::NOT_FOUND, C::Unsupported),
                RouteError::MethodNotAllowed(_) => (S::METHOD_NOT_ALLOWED, C::Unsupported),
                RouteError::AbsoluteForm | RouteError::MethodOverride(_) | RouteError::QueryParameter(_) => {
                    (S::BAD_REQUEST, C::Unsupported)
                }
                RouteError::UploadId(_) => (S::BAD_REQUEST, C::BlobUploadInvalid),
                RouteError::EncodedRead => (S::BAD_REQUEST, C::NameInvalid),
            },
            Self::TooManyTags { .. } => (S::URI_TOO_LONG, C::Unsupported),
            Self::Manifest(ManifestError::TooLarge { .. }) => (S::PAYLOAD_TOO_LARGE, C::SizeInvalid),
            Self::Manifest(ManifestError::Body(_) | ManifestError::NotJson(_) | ManifestError::Ambiguous(_)) => {
                (S::BAD_REQUEST, C::ManifestInvalid)
            }
            Self::Manifest(ManifestError::TooSlow { .. }) => (S::REQUEST_TIMEOUT, C::ManifestInvalid),
            // Not the client's fault and gone in a moment: the memory budget is in use.
            Self::Manifest(ManifestError::Busy(_)) => (S::SERVICE_UNAVAILABLE, C::Unavailable),
            Self::DigestMismatch { .. } => (S::BAD_REQUEST, C::DigestInvalid),
            Self::Refused(_) => (refuse_status, C::Denied),
            Self::Upstream(u) => match u {
                UpstreamError::HeaderTimeout(_) | UpstreamError::SendStalled(_) => (S::GATEWAY_TIMEOUT, C::Unavailable),
                UpstreamError::Connect(_) => (S::BAD_GATEWAY, C::Unavailable),
                UpstreamError::Transport(_)
                | UpstreamError::CheckStatus { .. }
                | UpstreamError::FetchStatus { .. }
                | UpstreamError::CheckNoDigest { .. }
                | UpstreamError::DigestMismatch { .. }
                | UpstreamError::ServedOtherDigest { .. }
                | UpstreamError::Tls(_)
                | UpstreamError::TagList { .. }
                | UpstreamError::OwnAuth(_)
                | UpstreamError::TokenRealm { .. }
                | UpstreamError::Catalog(_) => (S::BAD_GATEWAY, C::Unavailable),
            },
            Self::OutcomeUnknown(UpstreamError::HeaderTimeout(_) | UpstreamError::SendStalled(_)) => {
                (S::GATEWAY_TIMEOUT, C::Unavailable)
            }
            Self::OutcomeUnknown(_) => (S::BAD_GATEWAY, C::Unavailable),
            Self::Store(_) | Self::PinNotRecorded(_) | Self::CannotDecide(_) | Self::AdoptionRunning { .. } => {
                (S::SERVICE_UNAVAILABLE, C::Unavailable)
            }
            Self::PinnedManifestMissing { .. } | Self::NoHistory { .. } => (S::NOT_FOUND, C::ManifestUnknown),
            Self::HistoryQuery(_) => (S::BAD_REQUEST, C::Unsupported),
            Self::AccessUnknown(_) => (S::SERVICE_UNAVAILABLE, C::Unavailable),
            Self::Internal(_) => (S::INTERNAL_SERVER_ERROR, C::Unknown),
            Self::AdminUnauthorized => (S::UNAUTHORIZED, C::Unauthorized),
            Self::AdminNotFound(_) => (S::NOT_FOUND, C::NameUnknown),
            Self::AdminBadRequest(_) => (S::BAD_REQUEST, C::Unsupported),
            Self::AdminConflict(_) => (S::CONFLICT, C::Denied),
            Self::AdminTooLarge(_) => (S::PAYLOAD_TOO_LARGE, C::SizeInvalid),
        }
    }

    /// The fixed client-facing message of a server-side error.
    fn public_message(&self) -> &'static str {
        match self {
            Self::Upstream(UpstreamError::HeaderTimeout(_) | UpstreamError::SendStalled(_)) => {
                "the upstream registry did not answer in time"
            }
            Self::OutcomeUnknown(_) => {
                "the upstream registry did not answer, so whether it applied this write is not known; \
                 tagpin keeps its record of the write until that is known or the in-doubt horizon passes \
                 (meanwhile a pushed tag stays reserved for this digest, a tag with no pin yet until a push \
                 of the same digest or an operator clears it, and content a deleted digest is needed by \
                 cannot be pinned); repeating the request is safe"
            }
            Self::CannotDecide(_) => {
                "tagpin cannot decide this write safely now (it could not read a pinned manifest the decision \
                 needs, such as the one an append-only push must extend, or the decision took too long to \
                 carry out), so it refuses the write; nothing was changed, retry later"
            }
            Self::PinNotRecorded(_) => {
                "the upstream accepted the push but tagpin could not record the pin; the tag stays reserved \
                 for this digest: repeat the same push to complete it"
            }
            Self::Upstream(UpstreamError::Connect(_)) => "the upstream registry cannot be reached; nothing was changed",
            Self::Upstream(
                UpstreamError::CheckStatus { .. }
                | UpstreamError::CheckNoDigest { .. }
                | UpstreamError::FetchStatus { .. },
            ) => "tagpin could not learn what the upstream holds, so it refuses the write",
            Self::Upstream(UpstreamError::OwnAuth(_)) => {
                "the upstream refused tagpin's own credentials (--upstream-credentials-file), or its token \
                 could not be had"
            }
            Self::Upstream(UpstreamError::Catalog(_)) => "tagpin could not read the upstream's catalog to its end",
            Self::Upstream(UpstreamError::TagList { .. }) => {
                "tagpin could not list every tag of this repository at the upstream, so it refuses the delete"
            }
            Self::Upstream(UpstreamError::DigestMismatch { .. }) => {
                "the upstream reported a different digest than the manifest tagpin forwarded; no pin was recorded \
                 and the tag stays reserved for the forwarded digest"
            }
            Self::Upstream(UpstreamError::ServedOtherDigest { .. }) => {
                "the upstream answered a request for the pinned manifest with other content; tagpin does not \
                 pass it on"
            }
            Self::AdoptionRunning { .. } => {
                "before a first delete by digest, tagpin adopts the tags of the repository that predate it \
                 (one upstream check per tag); that is still running, so nothing was deleted. The adoption \
                 goes on without this request: retry later, and the delete is decided once it is done"
            }
            Self::AccessUnknown(_) => {
                "tagpin could not learn from the upstream whether this client may read the repository, so it \
                 shows nothing of it; retry later"
            }
            Self::Upstream(_) => "the upstream registry connection failed; nothing was pinned",
            Self::Store(StoreError::Importing(_)) => {
                "an import into tagpin's pin store is being written, and writes that bind or claim a tag wait \
                 for it; this one waited too long, and nothing was changed: retry shortly"
            }
            Self::Store(_) => {
                "the tagpin pin store is unavailable, so tagpin refuses what it cannot answer safely: writes it \
                 must decide, and reads by a protected tag (it cannot tell which digest the tag is pinned to); \
                 reads by digest still work"
            }
            Self::Manifest(ManifestError::Busy(e)) if e.scarce == crate::manifest::Scarce::ClientShare => {
                "manifests from this client address already hold all the memory tagpin allows one address; \
                 nothing was changed, retry shortly"
            }
            Self::Manifest(ManifestError::Busy(_)) => {
                "too many large manifests are being uploaded to tagpin at once; nothing was changed, retry shortly"
            }
            _ => "internal error in tagpin",
        }
    }

    /// A store failure while recording the pin of an accepted push.
    pub fn pin_not_recorded(e: ProxyError) -> ProxyError {
        match e {
            Self::Store(s) => Self::PinNotRecorded(s),
            other => other,
        }
    }

    /// Render the OCI error envelope.
    pub fn into_response(self, request_id: &str, refuse_status: StatusCode) -> Response<Body> {
        let (status, code) = self.classify(refuse_status);
        let envelope = if status.is_server_error() {
            ErrorEnvelope {
                code,
                message: match &self {
                    // Only tagpin's own requests meet a token realm, and what is
                    // refused is the upstream's own URL: the operator needs to see it.
                    Self::Upstream(e @ UpstreamError::TokenRealm { .. }) => e.to_string(),
                    _ => self.public_message().to_owned(),
                },
                detail: match &self {
                    Self::AdoptionRunning { repo, .. } => json!({
                        "repository": repo.as_str(),
                        "reason": "adoption_running",
                        "request_id": request_id,
                    }),
                    _ => json!({ "request_id": request_id }),
                },
            }
        } else {
            let detail = match &self {
                Self::Refused(r) => r.detail(),
                Self::PinnedManifestMissing { repo, tag, digest } => json!({
                    "repository": repo.as_str(),
                    "tag": tag.as_str(),
                    "pinned_digest": digest.as_str(),
                    "reason": "pinned_manifest_missing",
                    "request_id": request_id,
                }),
                Self::NoHistory { repo, tag, gap, .. } => json!({
                    "repository": repo.as_str(),
                    "tag": tag.as_str(),
                    "reason": gap.reason(),
                    "first_seen": gap.first_seen().map(rfc3339),
                    "request_id": request_id,
                }),
                _ => json!({ "request_id": request_id }),
            };
            ErrorEnvelope {
                code,
                message: self.to_string(),
                detail,
            }
        };
        let mut resp = Response::new(body::full(envelope.to_json()));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        if matches!(self, Self::Manifest(ManifestError::Busy(_))) {
            // Memory frees as soon as any manifest in flight finishes: a prompt retry is
            // the right answer (RFC 9110 section 10.2.3).
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, Self::Store(StoreError::Importing(_))) {
            // An import's write phase runs for seconds to minutes.
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if let Self::AdoptionRunning { waited, .. } = &self {
            // An adoption that outlasted one wait likely outlasts a short pause as well.
            let secs = waited.as_secs().max(1);
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn json_of(resp: Response<Body>) -> serde_json::Value {
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap()
    }

    #[tokio::test]
    async fn server_errors_never_carry_internal_text() {
        let e = ProxyError::Store(StoreError::Io("/var/lib/secret-path: disk full".into()));
        let resp = e.into_response("req-1", StatusCode::CONFLICT);
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let v = json_of(resp).await;
        assert_eq!(v["errors"][0]["code"], "UNAVAILABLE");
        assert_eq!(v["errors"][0]["detail"]["request_id"], "req-1");
        assert!(!v.to_string().contains("secret-path"));
    }

    #[tokio::test]
    async fn client_errors_say_what_is_wrong() {
        let e = ProxyError::Route(RouteError::Name(NameError::Repository("A".into())));
        let resp = e.into_response("r", StatusCode::CONFLICT);
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let v = json_of(resp).await;
        assert_eq!(v["errors"][0]["code"], "NAME_INVALID");
        assert!(v["errors"][0]["message"].as_str().unwrap().contains("\"A\""));
    }

    #[tokio::test]
    async fn a_busy_budget_or_share_is_a_retryable_503_that_says_which() {
        use crate::manifest::Scarce;
        for (scarce, says) in [
            (Scarce::Budget, "at once"),
            (Scarce::ClientShare, "this client address"),
        ] {
            let e = ProxyError::Manifest(ManifestError::Busy(crate::manifest::Exhausted {
                wanted: 4_194_304,
                waited: std::time::Duration::from_secs(2),
                scarce,
            }));
            let resp = e.into_response("req-2", StatusCode::CONFLICT);
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
            let v = json_of(resp).await;
            assert_eq!(v["errors"][0]["code"], "UNAVAILABLE");
            let message = v["errors"][0]["message"].as_str().unwrap();
            assert!(message.contains("retry") && message.contains(says), "{message}");
            assert!(!message.contains("4194304"), "{message}");
        }
    }

    #[tokio::test]
    async fn a_write_kept_waiting_by_an_import_is_a_retryable_503_that_says_so() {
        let e = ProxyError::Store(StoreError::Importing("an import is being written".into()));
        let resp = e.into_response("r", StatusCode::CONFLICT);
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "5");
        let v = json_of(resp).await;
        assert_eq!(v["errors"][0]["code"], "UNAVAILABLE");
        let message = v["errors"][0]["message"].as_str().unwrap();
        assert!(
            message.contains("import") && message.contains("nothing was changed"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_slow_manifest_body_is_a_408_that_says_so() {
        let e = ProxyError::Manifest(ManifestError::TooSlow {
            limit: std::time::Duration::from_secs(30),
        });
        let resp = e.into_response("r", StatusCode::CONFLICT);
        assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
        let v = json_of(resp).await;
        assert_eq!(v["errors"][0]["code"], "MANIFEST_INVALID");
        assert!(v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("took longer than 30s"));
    }

    #[test]
    fn refusals_use_the_configured_status() {
        let r = Refusal::DeleteTag {
            repo: crate::oci::Repository::parse("a").unwrap(),
            tag: crate::oci::Tag::parse("v1").unwrap(),
            pinned: None,
            mode: crate::policy::Mode::Immutable,
        };
        let e = ProxyError::Refused(r);
        assert_eq!(
            e.classify(StatusCode::FORBIDDEN),
            (StatusCode::FORBIDDEN, ErrorCode::Denied)
        );
        assert_eq!(e.classify(StatusCode::CONFLICT).0, StatusCode::CONFLICT);
    }
}
