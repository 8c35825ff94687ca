//! `GET`/`HEAD /v2/<name>/_tagpin/history/<tag>[?at=TIME]`: a tag's pin history for the
//! people who may pull the repository, on the registry port, without an admin token. The
//! path follows the distribution-spec's extension form
//! (`/v2/<name>/_<extension>/<component>/<module>`, `extensions/_oci.md`).
//!
//! Whether the client may read the repository is the upstream's to say ([`super::access`]):
//! a `HEAD` of the pinned manifest with the client's credentials, then (the manifest may
//! be gone from the upstream, or the tag has no pin) the repository's tag list. Only a
//! 2xx gets the history; a 401 or 403 passes through with the upstream's challenge (scoped
//! for `pull`), and every "no" reads the same whether the tag is pinned or unknown, so a
//! client the upstream turns away cannot tell them apart. The endpoint answers whatever
//! `reads` says.
//!
//! Answers are JSON with RFC 3339 times: the tag, its current digest and every history
//! entry newest first; with `?at=TIME`, the entry in force at TIME. A tag with no history,
//! or a TIME before its first entry, is a 404 with the reason in `detail.reason`.

use http::request::Parts;
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::{json, Value};

use super::access::{self, Check, Verdict, NAME_UNKNOWN};
use crate::app::App;
use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::oci::{Repository, Tag};
use crate::store::{in_force_at, parse_query_time, rfc3339, HistoryEntry, NoPinAt};
use crate::telemetry::Requester;

/// What reading a tag's history needs of the client: `pull`.
const PULL: &str = "pull";

/// Answer a history request.
pub async fn tag_history(
    app: &App,
    parts: &Parts,
    repo: Repository,
    tag: Tag,
    who: &Requester,
) -> Result<Response<Body>, ProxyError> {
    // A malformed query says nothing about the tag: refused before anything is asked.
    let at = query_at(parts.uri.query())?;
    let (r, t) = (repo.clone(), tag.clone());
    let record = app.store_call(move |s| s.record(&r, &t)).await?;
    let authorization = parts.headers.get(header::AUTHORIZATION);
    match access::ask(app, checks(&repo, &record), authorization).await {
        Verdict::Allowed(_) => {}
        Verdict::Refused(check, resp) => return Ok(access::client_answer(check, resp, &repo, who)),
        Verdict::Undecided(why) => {
            return Err(ProxyError::AccessUnknown(format!(
                "cannot learn from the upstream whether this client may read {repo}, which the history of \
                 {repo}:{tag} needs: {why}"
            )))
        }
    }
    let timeline = record.timeline();
    let no_history = |gap| ProxyError::NoHistory {
        repo: repo.clone(),
        tag: tag.clone(),
        at: at.unwrap_or(0),
        gap,
    };
    let value = match at {
        None if timeline.is_empty() => return Err(no_history(NoPinAt::Unknown)),
        None => json!({
            "repository": repo.as_str(),
            "tag": tag.as_str(),
            "digest": record.pin.as_ref().map(|p| p.digest.as_str()),
            "history": timeline.iter().rev().map(entry).collect::<Vec<_>>(),
        }),
        Some(at) => {
            let found = in_force_at(&timeline, at).map_err(no_history)?;
            json!({
                "repository": repo.as_str(),
                "tag": tag.as_str(),
                "at": rfc3339(at),
                "digest": found.digest.as_str(),
                "entry": entry(found),
            })
        }
    };
    let mut resp = Response::new(body::full(value.to_string()));
    *resp.status_mut() = StatusCode::OK;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Shown to this client because the upstream let it read the repository: not for
    // shared caches.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    Ok(resp)
}

/// What the upstream is asked, in order: the pinned manifest (when there is a pin),
/// then the repository's tag list. A 404 from either reads the same (`NAME_UNKNOWN`):
/// which check answered must not tell a pinned tag from an unknown one. `GET /v2/` is
/// not asked: credentials the upstream accepts at all say nothing about this repository.
fn checks(repo: &Repository, record: &crate::store::TagRecord) -> Vec<Check> {
    let pinned = record
        .pin
        .as_ref()
        .map(|p| Check::manifest(repo, p.digest.as_str(), PULL));
    pinned
        .into_iter()
        .chain([Check::tag_list(repo, PULL)])
        .map(|c| Check {
            unknown: NAME_UNKNOWN,
            ..c
        })
        .collect()
}

/// One history entry as the endpoint shows it.
fn entry(e: &HistoryEntry) -> Value {
    json!({
        "time": rfc3339(e.at),
        "event": e.event,
        "digest": e.digest.as_str(),
        "previous_digest": e.from.as_ref().map(|d| d.as_str()),
    })
}

/// The `at` parameter, the only one understood.
fn query_at(query: Option<&str>) -> Result<Option<i64>, ProxyError> {
    let mut at = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "at" if at.is_none() => {
                at = Some(parse_query_time(&value).map_err(|e| ProxyError::HistoryQuery(format!("at: {e}")))?);
            }
            "at" => return Err(ProxyError::HistoryQuery("at is given twice".into())),
            other => {
                return Err(ProxyError::HistoryQuery(format!(
                    "query parameter {:?} is not understood; the history endpoint takes only at=TIME (RFC 3339)",
                    other.chars().take(64).collect::<String>()
                )))
            }
        }
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_at_is_understood() {
        assert_eq!(query_at(None).unwrap(), None);
        assert_eq!(query_at(Some("")).unwrap(), None);
        assert_eq!(
            query_at(Some("at=2026-12-01T15:00:00%2B01:00")).unwrap(),
            Some(1_796_133_600)
        );
        // An unescaped `+` decodes to a space.
        assert_eq!(
            query_at(Some("at=2026-12-01T15:00:00+01:00")).unwrap(),
            Some(1_796_133_600)
        );
        for bad in [
            "at=yesterday",
            "at=2026-12-01",
            "when=2026-12-01T14:00:00Z",
            "at=2026-12-01T14:00:00Z&at=2026-12-01T14:00:00Z",
        ] {
            assert!(matches!(query_at(Some(bad)), Err(ProxyError::HistoryQuery(_))), "{bad}");
        }
    }

    #[test]
    fn a_pinned_tag_and_an_unknown_one_are_asked_alike_after_the_manifest() {
        let repo = Repository::parse("team/app").unwrap();
        let digest = crate::oci::Digest::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap();
        let pinned = crate::store::TagRecord {
            pin: Some(crate::store::Pin::now(digest.clone(), crate::store::PinSource::Push)),
            ..Default::default()
        };
        let targets = |r: &crate::store::TagRecord| {
            checks(&repo, r)
                .into_iter()
                .map(|c| (c.method, c.target, c.unknown.0))
                .collect::<Vec<_>>()
        };
        let unknown = targets(&crate::store::TagRecord::default());
        let known = targets(&pinned);
        assert_eq!(known[0].1, format!("/v2/team/app/manifests/{digest}"));
        assert_eq!(&known[1..], &unknown[..]);
        assert_eq!(unknown[0].1, "/v2/team/app/tags/list?n=1");
        assert!(known.iter().all(|c| c.2 == crate::oci::ErrorCode::NameUnknown));
    }
}
