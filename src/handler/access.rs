//! Whether the upstream lets a client see what tagpin is about to tell it: tagpin asks
//! the upstream, with the client's own `Authorization` and nothing else (and its own
//! manifest `Accept` list, since distribution answers 404 to a manifest whose type the
//! `Accept` lacks), a list of [`Check`]s in order, and stops at the first answer that says
//! yes or no about the client. A refusal's details ([`super::refused`]) and a tag's
//! history ([`super::history`]) are both shown only after such a yes.
//!
//! A 2xx says yes. A 401, 403 or other 4xx says no and becomes the client's answer (a
//! 401's challenge scoped to what the client asked for, [`super::challenge`]). A 404 says
//! no only if no later check says yes: the thing asked about may be gone while the
//! repository is still readable. A 5xx or no connection says nothing; when no check says
//! anything, the caller refuses with 503.

use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::app::App;
use crate::body::{self, Body};
use crate::oci::{ErrorCode, ErrorEnvelope, Repository};
use crate::telemetry::Requester;

/// One question to the upstream, and how its "no" is answered to the client.
pub struct Check {
    pub method: Method,
    pub target: String,
    /// The actions a 401's challenge asks for (`pull`, `pull,push`, `delete`).
    pub actions: &'static str,
    /// The code a 404 to this check carries.
    pub unknown: (ErrorCode, &'static str),
}

pub const MANIFEST_UNKNOWN: (ErrorCode, &str) = (ErrorCode::ManifestUnknown, "manifest unknown");
pub const NAME_UNKNOWN: (ErrorCode, &str) = (ErrorCode::NameUnknown, "repository name not known to registry");

impl Check {
    /// `HEAD /v2/<repo>/manifests/<reference>`.
    pub fn manifest(repo: &Repository, reference: &str, actions: &'static str) -> Self {
        Self {
            method: Method::HEAD,
            target: format!("/v2/{repo}/manifests/{reference}"),
            actions,
            unknown: MANIFEST_UNKNOWN,
        }
    }

    /// `GET /v2/<repo>/tags/list?n=1`: whether the client may read the repository at all.
    pub fn tag_list(repo: &Repository, actions: &'static str) -> Self {
        Self {
            method: Method::GET,
            target: format!("/v2/{repo}/tags/list?n=1"),
            actions,
            unknown: NAME_UNKNOWN,
        }
    }

    /// `GET /v2/`: whether the upstream accepts the client's credentials at all.
    pub fn base(actions: &'static str) -> Self {
        Self {
            method: Method::GET,
            target: "/v2/".to_owned(),
            actions,
            unknown: NAME_UNKNOWN,
        }
    }
}

/// What the upstream said about the client.
pub enum Verdict {
    /// This check answered 2xx.
    Allowed(Check),
    /// The client is turned away: the check and the upstream's answer to it.
    Refused(Check, Response<Incoming>),
    /// No check said anything about the client: why the last one did not.
    Undecided(String),
}

/// Ask `checks` in order with the client's `authorization` (see the module doc).
pub async fn ask(app: &App, checks: Vec<Check>, authorization: Option<&HeaderValue>) -> Verdict {
    // The first 404, the answer if no later check says yes; and why the last check that
    // said nothing about the client said nothing.
    let mut not_found: Option<(Check, Response<Incoming>)> = None;
    let mut failed = String::from("nothing was asked");
    for check in checks {
        let resp = match app
            .upstream
            .client_check(check.method.clone(), &check.target, authorization)
            .await
        {
            Ok(resp) => resp,
            Err(e) => {
                failed = format!("{}: {e}", check.target);
                continue;
            }
        };
        let status = resp.status();
        if status.is_success() {
            return Verdict::Allowed(check);
        }
        if status == StatusCode::NOT_FOUND {
            not_found.get_or_insert((check, resp));
        } else if status.is_client_error() {
            return Verdict::Refused(check, resp);
        } else {
            // A 5xx (distribution answers 500 to a HEAD of a manifest a racing push is
            // writing): no word on the client; the next check may give one.
            failed = format!("{} answered {status}", check.target);
        }
    }
    match not_found {
        Some((check, resp)) => Verdict::Refused(check, resp),
        None => Verdict::Undecided(failed),
    }
}

/// The upstream's "no" to a check, as the answer to the client's request: a 401 or 403
/// in the one form tagpin gives them (its challenge asking for the check's actions), a
/// 404 with the check's code, any other 4xx as `DENIED`; each with an OCI error body (a
/// `HEAD` answer has none).
pub fn client_answer(check: Check, resp: Response<Incoming>, repo: &Repository, who: &Requester) -> Response<Body> {
    match resp.status() {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            super::challenge::for_write(resp, repo, &who.request_id, check.actions)
        }
        StatusCode::NOT_FOUND => envelope(resp.status(), check.unknown, repo, who, resp.headers()),
        status => envelope(
            status,
            (ErrorCode::Denied, "requested access to the resource is denied"),
            repo,
            who,
            resp.headers(),
        ),
    }
}

/// An answer with the upstream's status, an OCI error body and its API version header.
fn envelope(
    status: StatusCode,
    (code, message): (ErrorCode, &str),
    repo: &Repository,
    who: &Requester,
    upstream: &HeaderMap,
) -> Response<Body> {
    let envelope = ErrorEnvelope {
        code,
        message: message.to_owned(),
        detail: json!({ "repository": repo.as_str(), "request_id": who.request_id }),
    };
    let mut out = Response::new(body::full(envelope.to_json()));
    *out.status_mut() = status;
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if let Some(v) = upstream.get("docker-distribution-api-version") {
        out.headers_mut().insert("docker-distribution-api-version", v.clone());
    }
    out
}
