//! The records of writes whose outcome was lost, for operators: `GET /admin/v1/claims`
//! lists them, `POST /admin/v1/claims/clear` clears the record of one request an
//! operator knows failed.
//!
//! Only a write's own answer settles its record ([`crate::pinning`], "The in-flight
//! rule"). When that answer is lost (a 504, a reset, a kill), the write's [`Claim`] keeps
//! its tag held to its digest until the in-doubt horizon has passed, and on a tag with no
//! pin for good, since the write may have bound the tag at the upstream; a digest delete's
//! record keeps its digest from being pinned until the horizon. Clearing is the operator's
//! word that one request's write did not take effect, so a clear names that request and
//! removes its record only: another request of the same tag or digest (a retry on
//! another replica, say) may still be in flight and land, and its record keeps holding
//! the tag. A tag's record goes in one transition ([`pinning::clear_writes`], noted in
//! the pin's history), a digest's delete record through
//! [`crate::store::PinStore::end_delete`]; either is one `claim_cleared` audit event that
//! names the request and carries the reason.

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::json;
use crate::app::{App, StoreWrite};
use crate::body::Body;
use crate::error::ProxyError;
use crate::oci::{Digest, Repository, Tag};
use crate::pinning;
use crate::store::{now_secs, Claim, DeleteRecord, TagRecord};
use crate::telemetry::{AuditAction, Requester};

/// Tags read per page of the store's listing: the admin API's largest page.
const PAGE: usize = super::routes::MAX_PAGE;
/// Largest clear request body.
const MAX_BODY: usize = 64 * 1024;

/// Whether a record made at `at` is past the in-doubt horizon at `now`, judged as the
/// state machine's expiry and the store's delete check judge it.
fn past_horizon(at: u64, now: u64, horizon: u64) -> bool {
    at.saturating_add(horizon) <= now
}

/// One write record of a tag as the list shows it: the [`Claim`] itself, where it is,
/// how old it is and what the tag is pinned to (`null`: no pin, so the record stays past
/// the horizon).
fn write_json(repo: &Repository, tag: &Tag, record: &TagRecord, claim: &Claim, now: u64, horizon: u64) -> Value {
    let mut v = serde_json::to_value(claim).expect("serialising a claim cannot fail");
    v["repository"] = json!(repo.as_str());
    v["tag"] = json!(tag.as_str());
    v["age_seconds"] = json!(now.saturating_sub(claim.claimed_at));
    v["past_horizon"] = json!(past_horizon(claim.claimed_at, now, horizon));
    v["pinned_digest"] = json!(record.pin.as_ref().map(|p| p.digest.as_str()));
    v
}

/// One delete record as the list shows it.
fn delete_json(d: &DeleteRecord, now: u64, horizon: u64) -> Value {
    let mut v = serde_json::to_value(d).expect("serialising a delete record cannot fail");
    v["age_seconds"] = json!(now.saturating_sub(d.started_at));
    v["past_horizon"] = json!(past_horizon(d.started_at, now, horizon));
    v
}

/// `GET /admin/v1/claims`: every write record of every tag whose state has a claim (all
/// of a tag's writes, not only the newest the pin listing shows), and every digest
/// delete record. Ages are by this process's clock.
pub async fn list(app: &App, repository: Option<Repository>) -> Result<Response<Body>, ProxyError> {
    let (held, deletes) = app
        .store_call(move |s| {
            let mut held = Vec::new();
            let mut after: Option<(Repository, Tag)> = None;
            loop {
                let page = s.list(repository.as_ref(), after.as_ref(), PAGE)?;
                for (r, t, state) in &page {
                    if state.claim().is_some() {
                        let record = s.record(r, t)?;
                        if !record.writes.is_empty() {
                            held.push((r.clone(), t.clone(), record));
                        }
                    }
                }
                if page.len() < PAGE {
                    break;
                }
                after = page.last().map(|(r, t, _)| (r.clone(), t.clone()));
            }
            Ok((held, s.list_deletes(repository.as_ref())?))
        })
        .await?;
    let (now, horizon) = (now_secs(), app.config.in_doubt_horizon.as_secs());
    let claims: Vec<Value> = held
        .iter()
        .flat_map(|(r, t, record)| {
            record
                .writes
                .iter()
                .map(move |w| write_json(r, t, record, w, now, horizon))
        })
        .collect();
    let deletes: Vec<Value> = deletes.iter().map(|d| delete_json(d, now, horizon)).collect();
    Ok(json(StatusCode::OK, &json!({ "claims": claims, "deletes": deletes })))
}

/// Where the record to clear is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// The request's write record of the tag.
    Tag(Tag),
    /// The request's delete record of the digest.
    Digest(Digest),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClearRequest {
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
    request_id: Option<String>,
    reason: Option<String>,
}

/// A parsed clear request: whose record, where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Clear {
    repository: Repository,
    target: Target,
    /// The one request whose record goes (as `claims` lists it).
    request_id: String,
    /// Trimmed, non-empty.
    reason: String,
}

/// A clear request: its repository, target, request id and reason.
fn parse_clear(body: &[u8]) -> Result<Clear, ProxyError> {
    let bad = ProxyError::AdminBadRequest;
    let r: ClearRequest = serde_json::from_slice(body).map_err(|e| bad(format!("bad clear request: {e}")))?;
    let repository = Repository::parse(&r.repository).map_err(|e| bad(e.to_string()))?;
    let target = match (r.tag, r.digest) {
        (Some(t), None) => Target::Tag(Tag::parse(&t).map_err(|e| bad(e.to_string()))?),
        (None, Some(d)) => Target::Digest(Digest::parse(&d).map_err(|e| bad(e.to_string()))?),
        _ => return Err(bad("a clear request names either a tag or a digest".into())),
    };
    // Never trimmed or defaulted: it must be exactly the id `claims` lists.
    let request_id = r.request_id.unwrap_or_default();
    if request_id.trim().is_empty() {
        return Err(bad(
            "clearing needs a request_id: the request whose write is known to have failed (as GET /admin/v1/claims lists it); another request's record is never cleared".into(),
        ));
    }
    let reason = r.reason.as_deref().map(str::trim).unwrap_or_default().to_owned();
    if reason.is_empty() {
        return Err(bad(
            "clearing needs a reason: why the write is known to have failed".into()
        ));
    }
    Ok(Clear {
        repository,
        target,
        request_id,
        reason,
    })
}

async fn read_body(req: Request<Incoming>) -> Result<bytes::Bytes, ProxyError> {
    http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ProxyError::AdminBadRequest(format!("cannot read the request body: {e}")))
}

/// `POST /admin/v1/claims/clear`: clear one request's write record of a tag, or its
/// delete record of a digest; every other request's record stays. 404 when that request
/// has none there.
pub async fn clear(app: &App, req: Request<Incoming>, who: &Requester) -> Result<Response<Body>, ProxyError> {
    let Clear {
        repository: repo,
        target,
        request_id,
        reason,
    } = parse_clear(&read_body(req).await?)?;
    // The token's name, as a release names it.
    let by = who.admin_name();
    let mut out = match target {
        Target::Tag(tag) => clear_tag(app, &repo, tag, &request_id, &by, &reason, who).await?,
        Target::Digest(digest) => clear_digest(app, &repo, digest, &request_id, &reason, who).await?,
    };
    out["repository"] = json!(repo.as_str());
    out["request_id"] = json!(request_id);
    out["by"] = json!(by);
    out["reason"] = json!(reason);
    Ok(json(StatusCode::OK, &out))
}

async fn clear_tag(
    app: &App,
    repo: &Repository,
    tag: Tag,
    request_id: &str,
    by: &str,
    reason: &str,
    who: &Requester,
) -> Result<Value, ProxyError> {
    let (id, by, why) = (request_id.to_owned(), by.to_owned(), reason.to_owned());
    // The webhook event goes in the clearing's own write.
    let template = app.notify.prepare(
        crate::notify::new_id(),
        crate::notify::EventKind::ClaimCleared,
        Some(repo.as_str()),
        Some(tag.as_str()),
        event_data(app, who, repo, Some(&tag), None, None, request_id, reason),
    );
    let events_of = move |(cleared, pinned): &(Vec<Claim>, Option<Digest>)| {
        let event = cleared.first().and_then(|first| {
            let mut e = template.clone()?;
            e.data["pinned_digest"] = pinned.as_ref().map(Digest::as_str).into();
            e.data["attempted_digest"] = first.digest.as_str().into();
            Some(e)
        });
        (event.into_iter().collect(), Vec::new())
    };
    let clear = move |clock, records: &mut [TagRecord]| {
        let cleared = pinning::clear_writes(&mut records[0], &id, &by, &why, clock);
        (cleared, records[0].pin.as_ref().map(|p| p.digest.clone()))
    };
    let (cleared, pinned) = app
        .transition_notifying(StoreWrite::Durable, repo, std::slice::from_ref(&tag), clear, events_of)
        .await?;
    let Some(first) = cleared.first() else {
        return Err(ProxyError::AdminNotFound(format!(
            "{repo}:{tag} has no write record of request {request_id} to clear: that request's push or delete has its answer, or never was (see `tagpin claims list`)"
        )));
    };
    audit(
        app,
        who,
        repo,
        Some(&tag),
        pinned.as_ref(),
        &first.digest,
        request_id,
        reason,
    );
    Ok(json!({
        "tag": tag.as_str(),
        "cleared": serde_json::to_value(&cleared).expect("serialising claims cannot fail"),
    }))
}

async fn clear_digest(
    app: &App,
    repo: &Repository,
    digest: Digest,
    request_id: &str,
    reason: &str,
    who: &Requester,
) -> Result<Value, ProxyError> {
    let (r, d, id) = (repo.clone(), digest.clone(), request_id.to_owned());
    let cleared = app
        .store_call(move |s| {
            let records: Vec<DeleteRecord> = s
                .list_deletes(Some(&r))?
                .into_iter()
                .filter(|x| x.digest == d && x.request_id == id)
                .collect();
            if !records.is_empty() {
                s.end_delete(&r, &d, &id)?;
            }
            Ok(records)
        })
        .await?;
    if cleared.is_empty() {
        return Err(ProxyError::AdminNotFound(format!(
            "{repo}@{digest} has no delete record of request {request_id} to clear: that request's delete has its answer, or never was (see `tagpin claims list`)"
        )));
    }
    audit(app, who, repo, None, None, &digest, request_id, reason);
    let data = event_data(app, who, repo, None, None, Some(&digest), request_id, reason);
    app.notify
        .enqueue(crate::notify::EventKind::ClaimCleared, Some(repo.as_str()), None, data);
    let cleared: Vec<Value> = cleared
        .iter()
        .map(|x| json!({"request_id": x.request_id, "started_at": x.started_at}))
        .collect();
    Ok(json!({ "digest": digest.as_str(), "cleared": cleared }))
}

/// The `claim_cleared` audit event: the fields of every audit event, plus the request
/// whose record was cleared and the operator's reason (which a tag with no pin has no
/// history to keep).
#[allow(
    clippy::too_many_arguments,
    reason = "one flat audit record; a struct would only rename the fields"
)]
fn audit(
    app: &App,
    who: &Requester,
    repo: &Repository,
    tag: Option<&Tag>,
    pinned: Option<&Digest>,
    digest: &Digest,
    cleared: &str,
    reason: &str,
) {
    app.metrics.decision(AuditAction::ClaimCleared);
    let decided = tag.map(|t| app.policy().decide(repo, t));
    let rule = decided.map(|d| d.by.to_string()).unwrap_or_default();
    tracing::info!(
        target: "tagpin::audit",
        action = AuditAction::ClaimCleared.as_str(),
        repository = repo.as_str(),
        tag = tag.map_or("", Tag::as_str),
        pinned_digest = pinned.map_or("", Digest::as_str),
        attempted_digest = digest.as_str(),
        mode = decided.map_or("", |d| d.mode.as_str()),
        rule = rule.as_str(),
        client = %who.client,
        user_agent = who.user_agent().as_str(),
        user = who.user.as_deref().unwrap_or(""),
        forwarded_for = who.forwarded_for().as_str(),
        request_id = who.request_id.as_str(),
        cleared,
        reason,
        "{}", AuditAction::ClaimCleared.as_str()
    );
}

/// The `claim_cleared` webhook event's data.
#[allow(
    clippy::too_many_arguments,
    reason = "one flat audit record; a struct would only rename the fields"
)]
fn event_data(
    app: &App,
    who: &Requester,
    repo: &Repository,
    tag: Option<&Tag>,
    pinned: Option<&Digest>,
    digest: Option<&Digest>,
    cleared: &str,
    reason: &str,
) -> Value {
    let mut data = crate::notify::data_of(&crate::telemetry::AuditEvent {
        action: AuditAction::ClaimCleared,
        who,
        repository: repo,
        tag,
        pinned,
        attempted: digest,
        decided: tag.map(|t| app.policy().decide(repo, t)),
    });
    data["cleared"] = cleared.into();
    data["reason"] = reason.into();
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ClaimKind, Pin, PinSource};

    fn d(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    #[test]
    fn the_horizon_is_judged_as_expiry_judges_it() {
        assert!(!past_horizon(100, 999, 900));
        assert!(past_horizon(100, 1000, 900));
        assert!(past_horizon(100, 5000, 900));
        assert!(!past_horizon(u64::MAX, 5000, 900));
    }

    #[test]
    fn a_write_record_is_listed_with_its_tag_age_and_pin() {
        let (repo, tag) = (Repository::parse("team/app").unwrap(), Tag::parse("1.0").unwrap());
        let mut claim = Claim::of_kind(d('b'), "req-1", ClaimKind::Release);
        claim.claimed_at = 1000;
        claim.release_id = Some("rel-1".into());
        let record = TagRecord {
            pin: Some(Pin::now(d('a'), PinSource::Push)),
            writes: vec![claim.clone()],
            release: None,
            history: Vec::new(),
        };
        let v = write_json(&repo, &tag, &record, &claim, 1060, 900);
        assert_eq!(v["repository"], "team/app");
        assert_eq!(v["tag"], "1.0");
        assert_eq!(v["digest"], d('b').as_str());
        assert_eq!(v["request_id"], "req-1");
        assert_eq!(v["kind"], "release");
        assert_eq!(v["claimed_at"], 1000);
        assert_eq!(v["age_seconds"], 60);
        assert_eq!(v["past_horizon"], false);
        assert_eq!(v["release_id"], "rel-1");
        assert_eq!(v["pinned_digest"], d('a').as_str());

        let free = TagRecord {
            writes: vec![Claim::of_kind(d('c'), "req-2", ClaimKind::New)],
            ..TagRecord::default()
        };
        let v = write_json(
            &repo,
            &tag,
            &free,
            &free.writes[0],
            free.writes[0].claimed_at + 901,
            900,
        );
        assert_eq!(v["past_horizon"], true);
        assert!(v["pinned_digest"].is_null());
        assert!(v.get("release_id").is_none(), "{v}");
    }

    #[test]
    fn a_delete_record_is_listed_with_its_age() {
        let rec = DeleteRecord {
            repository: Repository::parse("team/app").unwrap(),
            digest: d('a'),
            request_id: "del-1".into(),
            started_at: 50,
        };
        let v = delete_json(&rec, 1000, 900);
        assert_eq!(v["repository"], "team/app");
        assert_eq!(v["digest"], d('a').as_str());
        assert_eq!(v["request_id"], "del-1");
        assert_eq!(v["started_at"], 50);
        assert_eq!(v["age_seconds"], 950);
        assert_eq!(v["past_horizon"], true);
    }

    #[test]
    fn a_clear_request_names_a_tag_or_a_digest_a_request_and_a_reason() {
        let parse = |s: &str| parse_clear(s.as_bytes());
        let c = parse(r#"{"repository":"a/b","tag":"v1","request_id":"r-1","reason":" lost "}"#).unwrap();
        assert_eq!(
            c,
            Clear {
                repository: Repository::parse("a/b").unwrap(),
                target: Target::Tag(Tag::parse("v1").unwrap()),
                request_id: "r-1".into(),
                reason: "lost".into(),
            }
        );
        let body = format!(
            r#"{{"repository":"a","digest":"{}","request_id":"r-2","reason":"gone"}}"#,
            d('e')
        );
        let c = parse(&body).unwrap();
        assert_eq!((c.target, c.request_id.as_str()), (Target::Digest(d('e')), "r-2"));

        let bad = |s: &str| match parse(s) {
            Err(ProxyError::AdminBadRequest(why)) => why,
            other => panic!("{s}: expected a 400, got {other:?}"),
        };
        assert!(bad(r#"{"repository":"a","tag":"v1","request_id":"r-1"}"#).contains("needs a reason"));
        assert!(bad(r#"{"repository":"a","tag":"v1","request_id":"r-1","reason":"  "}"#).contains("needs a reason"));
        // One request's record, never every record of the tag or digest.
        assert!(bad(r#"{"repository":"a","tag":"v1","reason":"x"}"#).contains("needs a request_id"));
        assert!(bad(r#"{"repository":"a","tag":"v1","request_id":"","reason":"x"}"#).contains("needs a request_id"));
        assert!(bad(r#"{"repository":"a","tag":"v1","request_id":" ","reason":"x"}"#).contains("needs a request_id"));
        let no_id = format!(r#"{{"repository":"a","digest":"{}","reason":"x"}}"#, d('e'));
        assert!(bad(&no_id).contains("needs a request_id"));
        bad(r#"{"repository":"a","tag":"v1","request_id":7,"reason":"x"}"#);
        let both = format!(
            r#"{{"repository":"a","tag":"v1","digest":"{}","request_id":"r","reason":"x"}}"#,
            d('e')
        );
        assert!(bad(&both).contains("either a tag or a digest"));
        assert!(bad(r#"{"repository":"a","request_id":"r","reason":"x"}"#).contains("either a tag or a digest"));
        bad(r#"{"repository":"A","tag":"v1","request_id":"r","reason":"x"}"#);
        bad(r#"{"repository":"a","digest":"sha256:abc","request_id":"r","reason":"x"}"#);
        bad(r#"{"repository":"a","tag":"v1","request_id":"r","reason":"x","force":true}"#);
        bad("not json");
    }
}
