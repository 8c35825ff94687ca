//! Answering a refusal. A refusal names private facts (the digest a tag is pinned to,
//! which tags exist, what a digest holds), so it is shown only to a client the upstream
//! lets read the repository: before the 409 goes out, tagpin asks the upstream, with the
//! client's own credentials and nothing else, for what the refusal describes (a `HEAD`
//! of the pinned manifest, or of the tag or digest a delete names; when that manifest is
//! gone, the first page of the repository's tag list; when the repository is not there
//! for this client either, `GET /v2/`, which only checks the credentials). A 2xx gets the
//! refusal with its details, its audit events naming the user, and its entry in the
//! tag's refused attempts. Any other answer (401 with its challenge, 403, 404) becomes
//! the answer to the write, so the client learns what the upstream would have told it;
//! such an attempt is only counted (`tagpin_unauthenticated_refusals_total`) and logged
//! at most every few seconds, never recorded as evidence under a user name it may have
//! made up. The write is refused either way: nothing is forwarded.

use std::sync::atomic::{AtomicU64, Ordering};

use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use serde_json::json;

use crate::app::App;
use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::oci::{Digest, ErrorCode, ErrorEnvelope, Repository, Tag};
use crate::policy::{Decided, Refusal};
use crate::telemetry::{AuditAction, AuditEvent, Requester};

/// One audit event a refusal writes once the client is confirmed, and whether the tag's
/// list of refused attempts keeps it.
pub struct Evidence {
    pub action: AuditAction,
    pub tag: Option<Tag>,
    pub pinned: Option<Digest>,
    pub attempted: Option<Digest>,
    pub decided: Option<Decided>,
    pub keep: bool,
}

/// A refusal and the evidence it leaves when its client is confirmed.
pub struct Refused {
    pub refusal: Refusal,
    pub evidence: Vec<Evidence>,
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Self {
        Self {
            refusal,
            evidence: Vec::new(),
        }
    }
}

/// What the upstream is asked, and the scope a write like this one needs.
struct Check {
    method: Method,
    target: String,
    actions: &'static str,
    /// The code a 404 to this check carries.
    unknown: (ErrorCode, &'static str),
}

const MANIFEST_UNKNOWN: (ErrorCode, &str) = (ErrorCode::ManifestUnknown, "manifest unknown");
const NAME_UNKNOWN: (ErrorCode, &str) = (ErrorCode::NameUnknown, "repository name not known to registry");

fn check_for(r: &Refusal) -> Check {
    use super::challenge::{DELETE, PUSH};
    let manifest = |repo: &Repository, reference: &str, actions| Check {
        method: Method::HEAD,
        target: format!("/v2/{repo}/manifests/{reference}"),
        actions,
        unknown: MANIFEST_UNKNOWN,
    };
    match r {
        Refusal::Move { repo, conflicts, .. } => manifest(repo, conflicts[0].pinned.as_str(), PUSH),
        Refusal::DeleteTag { repo, tag, pinned, .. } => match pinned {
            Some(d) => manifest(repo, d.as_str(), DELETE),
            None => manifest(repo, tag.as_str(), DELETE),
        },
        Refusal::DeleteDigest { repo, digest, .. } => manifest(repo, digest.as_str(), DELETE),
        Refusal::DeleteReferenced { repo, holders, .. } => manifest(repo, holders[0].as_str(), DELETE),
        // The digest may be a blob, or already gone: ask for the repository instead.
        Refusal::DeleteInFlight { repo, .. } => repository_check(repo, PUSH),
    }
}

/// The first page (of one tag) of the repository's tag list.
fn repository_check(repo: &Repository, actions: &'static str) -> Check {
    Check {
        method: Method::GET,
        target: format!("/v2/{repo}/tags/list?n=1"),
        actions,
        unknown: NAME_UNKNOWN,
    }
}

fn repo_of(r: &Refusal) -> &Repository {
    match r {
        Refusal::Move { repo, .. }
        | Refusal::DeleteTag { repo, .. }
        | Refusal::DeleteDigest { repo, .. }
        | Refusal::DeleteReferenced { repo, .. }
        | Refusal::DeleteInFlight { repo, .. } => repo,
    }
}

/// The answer to a write tagpin refuses (see the module doc). `Err` carries the refusal
/// itself for a confirmed client, or the failure that kept tagpin from asking.
pub async fn answer(
    app: &App,
    refused: Refused,
    headers: &HeaderMap,
    who: &Requester,
) -> Result<Response<Body>, ProxyError> {
    let repo = repo_of(&refused.refusal).clone();
    let auth = headers.get(header::AUTHORIZATION);
    let ask = |check: &Check| {
        let (method, target) = (check.method.clone(), check.target.clone());
        let repo = repo.clone();
        async move {
            app.upstream
                .client_check(method, &target, auth)
                .await
                .map_err(|e| cannot_confirm(&repo, &e.to_string()))
        }
    };
    let mut check = check_for(&refused.refusal);
    let mut resp = ask(&check).await?;
    if resp.status() == StatusCode::NOT_FOUND && check.method == Method::HEAD {
        // The manifest may be gone behind tagpin's back while the tag is still held:
        // whether the client may read the repository is what matters.
        check = repository_check(&repo, check.actions);
        resp = ask(&check).await?;
    }
    if resp.status() == StatusCode::NOT_FOUND {
        // Nothing of the repository is there for this client: a repository whose first
        // push is still in doubt, or a registry hiding it. Credentials the upstream
        // accepts at all are those of a client it lets push.
        let base = Check {
            method: Method::GET,
            target: "/v2/".to_owned(),
            actions: check.actions,
            unknown: check.unknown,
        };
        let at_base = ask(&base).await?;
        if at_base.status().is_success() {
            resp = at_base;
        }
    }
    let status = resp.status();
    if status.is_success() {
        drop(resp);
        write_evidence(app, &repo, &refused.evidence, who).await;
        return Err(refused.refusal.into());
    }
    if status.is_server_error() || status.is_informational() || status.is_redirection() {
        return Err(cannot_confirm(&repo, &format!("{} answered {status}", check.target)));
    }
    unconfirmed(app, &refused, who, status);
    Ok(match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            super::challenge::for_write(resp, &repo, &who.request_id, check.actions)
        }
        StatusCode::NOT_FOUND => envelope(status, check.unknown, &repo, who, resp.headers()),
        _ => envelope(
            status,
            (ErrorCode::Denied, "requested access to the resource is denied"),
            &repo,
            who,
            resp.headers(),
        ),
    })
}

fn cannot_confirm(repo: &Repository, why: &str) -> ProxyError {
    ProxyError::CannotDecide(format!(
        "cannot learn from the upstream whether this client may read {repo}, which a refusal's details \
         need: {why}"
    ))
}

/// The upstream's answer to the check, as the answer to the write: its status, an OCI
/// error body (a `HEAD` answer has none) and its API version header.
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

/// Audit events naming the (now confirmed) user, and the refused attempts kept per tag.
async fn write_evidence(app: &App, repo: &Repository, evidence: &[Evidence], who: &Requester) {
    for e in evidence {
        AuditEvent {
            action: e.action,
            who,
            repository: repo,
            tag: e.tag.as_ref(),
            pinned: e.pinned.as_ref(),
            attempted: e.attempted.as_ref(),
            decided: e.decided,
        }
        .emit(&app.metrics);
        if let (true, Some(tag)) = (e.keep, &e.tag) {
            super::pins::record_refusal(app, repo, tag, who, e.attempted.as_ref()).await;
        }
    }
}

/// Seconds (since the epoch) of the last log line about unconfirmed refusals, and how
/// many went unlogged since.
static LAST_LOGGED: AtomicU64 = AtomicU64::new(0);
static UNLOGGED: AtomicU64 = AtomicU64::new(0);
/// At most one log line about unconfirmed refusals per this many seconds.
const LOG_EVERY_SECS: u64 = 10;

/// Count a refusal whose client the upstream did not accept; log it now and then.
fn unconfirmed(app: &App, refused: &Refused, who: &Requester, status: StatusCode) {
    let action = match refused.refusal {
        Refusal::Move { .. } => AuditAction::PushRefused,
        _ => AuditAction::DeleteRefused,
    };
    app.metrics.unauthenticated_refusal(action);
    let now = crate::store::now_secs();
    let last = LAST_LOGGED.load(Ordering::Relaxed);
    if now < last + LOG_EVERY_SECS
        || LAST_LOGGED
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        UNLOGGED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let also = UNLOGGED.swap(0, Ordering::Relaxed);
    tracing::warn!(
        action = action.as_str(),
        repository = %repo_of(&refused.refusal),
        client = %who.client,
        upstream_status = status.as_u16(),
        claimed_user = who.user.as_deref().unwrap_or(""),
        request_id = %who.request_id,
        unlogged_since_last = also,
        "refused a write from a client the upstream did not authenticate; its user is not verified and \
         the attempt is not kept as evidence (counted in tagpin_unauthenticated_refusals_total)"
    );
}
