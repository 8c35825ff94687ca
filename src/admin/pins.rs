//! Admin handlers over the store: list and show pins, releases, export and import.

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::json;
use crate::app::{App, StoreWrite};
use crate::body::Body;
use crate::error::ProxyError;
use crate::oci::{Repository, Tag};
use crate::pinning::{self, Cancel, SetRelease};
use crate::store::{now_secs, Exported, Pin, Release, TagState};
use crate::telemetry::{AuditAction, AuditEvent, Requester};

/// Longest release allowed (issue: at most 24 hours), and the default.
pub const MAX_RELEASE_SECS: u64 = 24 * 3600;
pub const DEFAULT_RELEASE_SECS: u64 = 15 * 60;

/// One pin as the list shows it.
fn summary(app: &App, repo: &Repository, tag: &Tag, state: &TagState) -> Value {
    let decided = app.policy().decide(repo, tag);
    let (kind, pin, claim) = match state {
        TagState::Pinned(p) => ("pinned", Some(p), None),
        TagState::Claimed(c) => ("claimed", None, Some(c)),
        TagState::Advancing { pin, claim } => ("advancing", Some(pin), Some(claim)),
    };
    json!({
        "repository": repo.as_str(),
        "tag": tag.as_str(),
        "state": kind,
        "digest": state.digest().as_str(),
        "source": pin.map(|p| p.source),
        "pinned_at": pin.map(|p| p.pinned_at),
        "digest_set_at": pin.map(Pin::digest_set_at),
        "claimed_digest": claim.map(|c| c.digest.as_str()),
        "claimed_at": claim.map(|c| c.claimed_at),
        "mode": decided.mode.as_str(),
        "rule": decided.by.to_string(),
    })
}

/// `GET /admin/v1/pins`: one page, with the cursor of the next.
pub async fn list(
    app: &App,
    repository: Option<Repository>,
    after: Option<(Repository, Tag)>,
    limit: usize,
) -> Result<Response<Body>, ProxyError> {
    let (page, next) = page(app, repository, after, limit).await?;
    let pins: Vec<Value> = page.iter().map(|(r, t, s)| summary(app, r, t, s)).collect();
    Ok(json(StatusCode::OK, &json!({ "pins": pins, "next": next })))
}

/// One page of tags with a pin or claim, and the cursor of the next page (`None` after
/// the last).
pub async fn page(
    app: &App,
    repository: Option<Repository>,
    after: Option<(Repository, Tag)>,
    limit: usize,
) -> Result<(Vec<(Repository, Tag, TagState)>, Option<String>), ProxyError> {
    let page = app
        .store_call(move |s| s.list(repository.as_ref(), after.as_ref(), limit))
        .await?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|(r, t, _)| format!("{r}:{t}")))
        .flatten();
    Ok((page, next))
}

/// `GET /admin/v1/pin`: the pin, its whole history, its refused attempts and release. A
/// tag with no pin and no write is shown ("free") while it has a history of its own (an
/// operator cleared its write), which starts the pin's history once it is pinned.
///
/// The history and release are shown as of now: a release past its time is marked
/// `"expired": true` and its `release_expired` entry is shown, stamped with its expiry,
/// as the next write to the tag will record it (a read writes nothing).
pub async fn show(app: &App, repository: Repository, tag: Tag) -> Result<Response<Body>, ProxyError> {
    let (r, t) = (repository.clone(), tag.clone());
    let (record, refused) = app
        .store_call(move |s| Ok((s.record(&r, &t)?, s.refusals(&r, &t)?)))
        .await?;
    let clock = pinning::Clock {
        now: now_secs(),
        horizon: app.config.in_doubt_horizon.as_secs(),
    };
    let (view, release_expired) = pinning::as_of(&record, clock);
    let (mut out, history) = match record.state() {
        Some(state) => {
            let out = summary(app, &repository, &tag, &state);
            let history = match view.pin {
                Some(p) => p.history,
                None => view.history,
            };
            (out, history)
        }
        None if !record.history.is_empty() => (free(app, &repository, &tag), view.history),
        None => return Err(ProxyError::AdminNotFound(format!("{repository}:{tag} has no pin"))),
    };
    let internal = |e: serde_json::Error| ProxyError::Internal(e.to_string());
    out["history"] = serde_json::to_value(&history).map_err(internal)?;
    out["refused"] = serde_json::to_value(&refused).map_err(internal)?;
    out["release"] = serde_json::to_value(&record.release).map_err(internal)?;
    if let Some(release) = out["release"].as_object_mut() {
        release.insert("expired".into(), json!(release_expired));
    }
    Ok(json(StatusCode::OK, &out))
}

/// A tag with no pin and no write, as [`summary`] shows a held one.
fn free(app: &App, repo: &Repository, tag: &Tag) -> Value {
    let decided = app.policy().decide(repo, tag);
    json!({
        "repository": repo.as_str(),
        "tag": tag.as_str(),
        "state": "free",
        "digest": null,
        "source": null,
        "pinned_at": null,
        "digest_set_at": null,
        "claimed_digest": null,
        "claimed_at": null,
        "mode": decided.mode.as_str(),
        "rule": decided.by.to_string(),
    })
}

/// An operator's audit event; its webhook event went in the write it describes.
fn admin_event<'a>(
    app: &App,
    action: AuditAction,
    who: &'a Requester,
    repo: &'a Repository,
    tag: &'a Tag,
) -> AuditEvent<'a> {
    AuditEvent {
        action,
        who,
        repository: repo,
        tag: Some(tag),
        pinned: None,
        attempted: None,
        decided: Some(app.policy().decide(repo, tag)),
    }
}

/// The `release_created` audit event: the fields of every audit event, plus who released
/// the tag, why, and until when (seconds since the epoch).
fn release_created(app: &App, who: &Requester, repo: &Repository, tag: &Tag, release: &Release) {
    app.metrics.decision(AuditAction::ReleaseCreated);
    let decided = app.policy().decide(repo, tag);
    tracing::info!(
        target: "tagpin::audit",
        action = AuditAction::ReleaseCreated.as_str(),
        repository = repo.as_str(),
        tag = tag.as_str(),
        pinned_digest = "",
        attempted_digest = "",
        mode = decided.mode.as_str(),
        rule = decided.by.to_string().as_str(),
        client = %who.client,
        user_agent = who.user_agent().as_str(),
        user = who.user.as_deref().unwrap_or(""),
        forwarded_for = who.forwarded_for().as_str(),
        request_id = who.request_id.as_str(),
        by = release.by.as_str(),
        reason = release.reason.as_str(),
        expires_at = release.expires_at,
        "{}", AuditAction::ReleaseCreated.as_str()
    );
}

/// The `release_created` webhook event, when a target wants it (`expires_at` is the
/// store's, set in the write).
fn release_event(
    app: &App,
    who: &Requester,
    repo: &Repository,
    tag: &Tag,
    release: &Release,
) -> Option<crate::store::OutboxEvent> {
    let mut data = crate::notify::data_of(&AuditEvent {
        action: AuditAction::ReleaseCreated,
        who,
        repository: repo,
        tag: Some(tag),
        pinned: None,
        attempted: None,
        decided: Some(app.policy().decide(repo, tag)),
    });
    data["admin"] = release.by.clone().into();
    data["reason"] = release.reason.clone().into();
    let id = crate::notify::new_id();
    let kind = crate::notify::EventKind::ReleaseCreated;
    app.notify
        .prepare(id, kind, Some(repo.as_str()), Some(tag.as_str()), data)
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<bytes::Bytes, ProxyError> {
    let body = http_body_util::Limited::new(req.into_body(), limit);
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ProxyError::AdminBadRequest(format!("cannot read the request body: {e}")))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseRequest {
    repository: String,
    tag: String,
    reason: String,
    ttl_seconds: Option<u64>,
}

/// `POST /admin/v1/releases`: break glass for one push (or delete) of a pinned tag.
pub async fn create_release(app: &App, req: Request<Incoming>, who: &Requester) -> Result<Response<Body>, ProxyError> {
    let body = read_body(req, 64 * 1024).await?;
    let r: ReleaseRequest =
        serde_json::from_slice(&body).map_err(|e| ProxyError::AdminBadRequest(format!("bad release request: {e}")))?;
    let repo = Repository::parse(&r.repository).map_err(|e| ProxyError::AdminBadRequest(e.to_string()))?;
    let tag = Tag::parse(&r.tag).map_err(|e| ProxyError::AdminBadRequest(e.to_string()))?;
    let reason = r.reason.trim().to_owned();
    if reason.is_empty() {
        return Err(ProxyError::AdminBadRequest("a release needs a reason".into()));
    }
    let ttl = r.ttl_seconds.unwrap_or(DEFAULT_RELEASE_SECS);
    if !(1..=MAX_RELEASE_SECS).contains(&ttl) {
        return Err(ProxyError::AdminBadRequest(format!(
            "ttl_seconds must be 1 to {MAX_RELEASE_SECS} (24 hours)"
        )));
    }
    let by = who.admin_name();
    let now = now_secs();
    let release = Release {
        id: format!("{now}-{}", who.request_id),
        cancelled: false,
        by,
        reason,
        created_at: now,
        expires_at: now + ttl,
    };
    let rel = release.clone();
    // The event and the expiry's timer go in the release's own write.
    let template = release_event(app, who, &repo, &tag, &release);
    let (r, t) = (repo.clone(), tag.clone());
    let events_of = move |((set, rel), _): &((SetRelease, Release), Vec<pinning::Expired>)| {
        if !matches!(set, SetRelease::Set) {
            return (Vec::new(), Vec::new());
        }
        let event = template.clone().map(|mut e| {
            e.data["expires_at"] = rel.expires_at.into();
            e
        });
        (
            event.into_iter().collect(),
            vec![crate::notify::release_timer(&r, &t, rel).1],
        )
    };
    let (set, expired) = app
        .transition_notifying(
            StoreWrite::Durable,
            &repo,
            std::slice::from_ref(&tag),
            move |clock, records| {
                // The release's clock is the store's: on PostgreSQL every replica judges
                // its expiry alike.
                let mut rel = rel.clone();
                rel.created_at = clock.now;
                rel.expires_at = clock.now + ttl;
                let (set, expired) = pinning::set_release(&mut records[0], &rel, clock);
                ((set, rel), expired)
            },
            events_of,
        )
        .await?;
    let expired: Vec<_> = expired.into_iter().map(|e| (tag.clone(), e)).collect();
    crate::handler::report_expired(app, &repo, &expired, who);
    let (set, release) = set;
    match set {
        SetRelease::Set => {}
        SetRelease::NoPin => {
            return Err(ProxyError::AdminNotFound(format!(
                "{repo}:{tag} has no pin to release (it is free, or its first push is in flight)"
            )))
        }
        SetRelease::Busy { request_id } => {
            return Err(ProxyError::AdminConflict(format!(
                "{repo}:{tag} has a write in flight (request {request_id}) whose outcome is not known yet; \
                 release it once that is settled (tagpin claims list)"
            )))
        }
    }
    release_created(app, who, &repo, &tag, &release);
    let mut out = serde_json::to_value(&release).map_err(|e| ProxyError::Internal(e.to_string()))?;
    out["repository"] = json!(repo.as_str());
    out["tag"] = json!(tag.as_str());
    Ok(json(StatusCode::CREATED, &out))
}

/// `DELETE /admin/v1/releases`: withdraw a release before it is used.
pub async fn cancel_release(
    app: &App,
    repo: Repository,
    tag: Tag,
    who: &Requester,
) -> Result<Response<Body>, ProxyError> {
    let id = who.request_id.clone();
    let event = admin_event(app, AuditAction::ReleaseCancelled, who, &repo, &tag);
    let template = app.notify.prepare(
        crate::notify::new_id(),
        crate::notify::EventKind::ReleaseCancelled,
        Some(repo.as_str()),
        Some(tag.as_str()),
        crate::notify::data_of(&event),
    );
    let events_of = move |(cancel, _): &(Cancel, Vec<pinning::Expired>)| match cancel {
        Cancel::NoRelease => (Vec::new(), Vec::new()),
        _ => (template.iter().cloned().collect(), Vec::new()),
    };
    let cancelled =
        move |clock, records: &mut [crate::store::TagRecord]| pinning::cancel_release(&mut records[0], &id, clock);
    let (cancel, expired) = app
        .transition_notifying(
            StoreWrite::Durable,
            &repo,
            std::slice::from_ref(&tag),
            cancelled,
            events_of,
        )
        .await?;
    let expired: Vec<_> = expired.into_iter().map(|e| (tag.clone(), e)).collect();
    crate::handler::report_expired(app, &repo, &expired, who);
    match cancel {
        Cancel::Cancelled(release) => {
            event.log(&app.metrics);
            Ok(json(
                StatusCode::OK,
                &json!({"cancelled": release, "repository": repo.as_str(), "tag": tag.as_str()}),
            ))
        }
        Cancel::InUse { release, request_id } => {
            event.log(&app.metrics);
            Err(ProxyError::AdminConflict(format!(
                "the release of {repo}:{tag} (by {}) is being used by request {request_id}, whose write may still land; \
                 it is cancelled and will not be given back should the upstream refuse that write",
                release.by
            )))
        }
        Cancel::NoRelease if !expired.is_empty() => Err(ProxyError::AdminNotFound(format!(
            "{repo}:{tag} has no release in force: its release expired unused"
        ))),
        Cancel::NoRelease => Err(ProxyError::AdminNotFound(format!("{repo}:{tag} has no release"))),
    }
}

/// Pins per page of an export.
const EXPORT_PAGE: usize = 1000;

/// One page of the export: up to [`EXPORT_PAGE`] pins after `after`, each with its
/// refused attempts; and the cursor of the next page, `None` after the last.
type ExportPage = (Vec<Exported>, Option<(Repository, Tag)>);

fn export_page(
    store: &dyn crate::store::PinStore,
    after: Option<&(Repository, Tag)>,
) -> Result<ExportPage, crate::store::StoreError> {
    let page = store.list(None, after, EXPORT_PAGE)?;
    let next = (page.len() == EXPORT_PAGE)
        .then(|| page.last().map(|(r, t, _)| (r.clone(), t.clone())))
        .flatten();
    Ok((crate::store::export_page(store, &page)?, next))
}

/// `GET /admin/v1/export`: every pin with its history and refused attempts, as JSON lines,
/// a page at a time.
pub async fn export(app: &App) -> Result<Response<Body>, ProxyError> {
    // The first page is read here, so a store failure is an error response, not a cut body.
    let first = app.store_call(|s| export_page(s, None)).await?;
    let (tx, body) = crate::body::channel(4);
    let store = std::sync::Arc::clone(&app.store);
    tokio::spawn(async move {
        let (mut page, mut next) = first;
        loop {
            let mut chunk = Vec::new();
            for e in &page {
                let line = serde_json::to_vec(e).expect("serialising cannot fail");
                chunk.extend_from_slice(&line);
                chunk.push(b'\n');
            }
            if !chunk.is_empty() && tx.send(chunk.into()).await.is_err() {
                return; // the client went away
            }
            let Some(after) = next.take() else {
                return;
            };
            let store = std::sync::Arc::clone(&store);
            (page, next) = match tokio::task::spawn_blocking(move || export_page(&*store, Some(&after))).await {
                Ok(Ok(p)) => p,
                // Cut the response short (no final chunk): `tagpin export` sees an
                // incomplete answer and fails, never a short backup that looks whole.
                Ok(Err(e)) => return tx.fail(format!("export stopped: {e}")).await,
                Err(e) => return tx.fail(format!("export stopped: {e}")).await,
            };
        }
    });
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}
