//! Answering a refusal. A refusal names private facts (the digest a tag is pinned to,
//! which tags exist, what a digest holds), so it is shown only to a client the upstream
//! accepts: before the 409 goes out, tagpin asks the upstream, with the client's own
//! credentials and nothing else, for what the refusal describes (a `HEAD` of the pinned
//! manifest, or of the tag or digest a delete names), then for the repository's tag
//! list, then `GET /v2/`, stopping at the first answer that says yes or no about the
//! client ([`checks_for`]). A 2xx gets the refusal with its details, its audit events
//! naming the user, and its entry in the tag's refused attempts. A 401 (with its
//! challenge, scoped for the write), 403 or other 4xx becomes the answer to the write,
//! and so does the first 404 when nothing later confirms the client, so the client
//! learns what the upstream would have told it. Such an attempt is only counted
//! (`tagpin_unauthenticated_refusals_total`) and logged at most every few seconds, never
//! recorded as evidence under a user name it may have made up. When no check gives an
//! answer (5xx, no connection), the write is refused with 503 and no details. Nothing is
//! forwarded in any case. The asking is [`super::access`]'s, shared with the history
//! endpoint.

use std::sync::atomic::{AtomicU64, Ordering};

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use super::access::{self, Check, Verdict};
use crate::app::App;
use crate::body::Body;
use crate::error::ProxyError;
use crate::oci::{Digest, Repository, Tag};
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

/// What to ask, in order, until one answer is a 2xx or tells the client no: what the
/// refusal is about; the repository (that manifest may be gone behind tagpin's back, or
/// be half written by a racing push, while the tag is held); and `GET /v2/`, for a
/// repository the upstream holds nothing of yet (a first push still in doubt), where
/// credentials the upstream accepts at all are those of a client it lets push.
fn checks_for(r: &Refusal) -> Vec<Check> {
    use super::challenge::{DELETE, PUSH};
    let (repo, first) = match r {
        Refusal::Move { repo, conflicts, .. } => {
            (repo, Some(Check::manifest(repo, conflicts[0].pinned.as_str(), PUSH)))
        }
        Refusal::DeleteTag { repo, tag, pinned, .. } => {
            let reference = pinned.as_ref().map_or(tag.as_str(), Digest::as_str);
            (repo, Some(Check::manifest(repo, reference, DELETE)))
        }
        Refusal::DeleteDigest { repo, digest, .. } => (repo, Some(Check::manifest(repo, digest.as_str(), DELETE))),
        Refusal::DeleteReferenced { repo, holders, .. } => {
            (repo, Some(Check::manifest(repo, holders[0].as_str(), DELETE)))
        }
        // The digest may be a blob, or already gone: the repository is what to ask.
        Refusal::DeleteInFlight { repo, .. } => (repo, None),
    };
    let actions = first.as_ref().map_or(PUSH, |c| c.actions);
    let mut checks: Vec<Check> = first.into_iter().collect();
    checks.push(Check::tag_list(repo, actions));
    checks.push(Check::base(actions));
    checks
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
    match access::ask(app, checks_for(&refused.refusal), auth).await {
        Verdict::Allowed(check) => {
            let who = vouched(app, &check, auth, who).await;
            write_evidence(app, &repo, &refused.evidence, &who).await;
            Err(refused.refusal.into())
        }
        Verdict::Refused(check, resp) => {
            unconfirmed(app, &refused, who, resp.status());
            Ok(access::client_answer(check, resp, &repo, who))
        }
        Verdict::Undecided(why) => Err(cannot_confirm(&repo, &why)),
    }
}

/// The requester as the evidence names it: a user only when the upstream vouched for
/// the credentials, that is when the same check without them does not also succeed. An
/// upstream that lets anyone read (public repositories, a front that asks for
/// credentials on writes only) vouches for no one: the attempt is kept without a user.
async fn vouched(app: &App, check: &Check, auth: Option<&HeaderValue>, who: &Requester) -> Requester {
    let mut who = who.clone();
    if who.user.is_none() || auth.is_none() {
        return who;
    }
    let anonymous = app
        .upstream
        .client_check(check.method.clone(), &check.target, None)
        .await;
    if !matches!(&anonymous, Ok(r) if !r.status().is_success()) {
        tracing::info!(
            request_id = %who.request_id,
            claimed_user = who.user.as_deref().unwrap_or(""),
            "the upstream answers this check without credentials too, so it did not vouch for the user; \
             the refused attempt is kept without one"
        );
        who.user = None;
    }
    who
}

fn cannot_confirm(repo: &Repository, why: &str) -> ProxyError {
    ProxyError::CannotDecide(format!(
        "cannot learn from the upstream whether this client may read {repo}, which a refusal's details \
         need: {why}"
    ))
}

/// Audit events naming the (now confirmed) user, and the refused attempts kept per tag.
async fn write_evidence(app: &App, repo: &Repository, evidence: &[Evidence], who: &Requester) {
    for e in evidence {
        let event = AuditEvent {
            action: e.action,
            who,
            repository: repo,
            tag: e.tag.as_ref(),
            pinned: e.pinned.as_ref(),
            attempted: e.attempted.as_ref(),
            decided: e.decided,
        };
        let (true, Some(tag)) = (e.keep, &e.tag) else {
            event.emit(app);
            continue;
        };
        // Kept with the attempt, in the same write (a refusal is always a webhook event).
        event.log(&app.metrics);
        let notify = crate::notify::EventKind::of(e.action).and_then(|kind| {
            let data = crate::notify::data_of(&event);
            app.notify.prepare(
                crate::notify::new_id(),
                kind,
                Some(repo.as_str()),
                Some(tag.as_str()),
                data,
            )
        });
        let delete = e.action != AuditAction::PushRefused;
        super::pins::record_refusal(app, repo, tag, who, e.attempted.as_ref(), delete, notify).await;
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
