//! Manifest reads by tag (end-3) with `reads = "pinned"`: the people who pull a tag get
//! the bytes it is pinned to, whoever wrote behind tagpin's back.
//!
//! - An immutable or append-only tag with a pin is answered with the pinned manifest:
//!   the client's request (method, `Authorization`, `Accept`, ...) is sent for
//!   `/v2/<name>/manifests/<pinned digest>` and that answer is streamed back, whatever the
//!   upstream holds under the tag. Authorization stays the upstream's: its 401 or 403
//!   passes through. A pinned manifest the upstream no longer has is a 404 that says so,
//!   never the tag's current content.
//! - A protected tag with neither pin nor write in flight is read by tag, and the digest
//!   the tag holds becomes its pin ([`crate::pinning::adopt_on_read`]): a 2xx's
//!   `Docker-Content-Digest` when the client accepts every image manifest type, else
//!   what the upstream reports for the tag with every type (a client that lacks one may
//!   be answered with a list's platform manifest or a rewrite). When a push bound the
//!   tag first, or the answer was not the tag's own manifest, the pin is served instead.
//! - Audit mode never blocks: reads go by tag, and while the upstream holds the tag at
//!   another digest than the pin the answer carries `Warning: 299` (one `read_drift`
//!   event per move away from the pin, and per further move while away).
//! - Mutable tags, tags with a write in flight and no pin, and reads by digest go to the
//!   upstream as they are.
//!
//! A tag whose pin cannot be read (the store is down) is not served from the upstream's
//! tag: the read fails closed with 503. Reads by digest keep working.

use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};

use crate::app::App;
use crate::body::{self, Body};
use crate::config::Reads;
use crate::error::ProxyError;
use crate::metrics::ReadAnswer;
use crate::oci::{Digest, Reference, Repository, Tag};
use crate::pinning::FirstPull;
use crate::policy::{Decided, Mode};
use crate::route::RouteError;
use crate::store::ReadView;
use crate::telemetry::{AuditAction, AuditEvent, Requester};
use crate::upstream::{headers, TagAtUpstream, UpstreamError};

type Answer = Result<http::Response<Body>, ProxyError>;

/// How many (tag, digest) reports each kind remembers, so a missing manifest or a drift
/// is reported once per change rather than on every read.
const REPORTS_REMEMBERED: usize = 16_384;

/// What has been reported already: pinned manifests found missing, and the digest an
/// audited tag was last seen served at.
pub struct ReadReports {
    missing: quick_cache::sync::Cache<(Repository, Tag, Digest), ()>,
    drift: quick_cache::sync::Cache<(Repository, Tag), Digest>,
}

impl Default for ReadReports {
    fn default() -> Self {
        Self {
            missing: quick_cache::sync::Cache::new(REPORTS_REMEMBERED),
            drift: quick_cache::sync::Cache::new(REPORTS_REMEMBERED),
        }
    }
}

/// A `GET` or `HEAD` of `/v2/<repo>/manifests/<reference>`.
pub async fn manifest_read(
    app: &App,
    mut parts: Parts,
    body: Body,
    repo: Repository,
    reference: Reference,
    who: &Requester,
) -> Answer {
    let Reference::Tag(tag) = reference else {
        return super::forward(app, parts, body, who).await;
    };
    if app.config.reads == Reads::Forward {
        return super::forward(app, parts, body, who).await;
    }
    let decided = app.policy().decide(&repo, &tag);
    if !decided.mode.is_protected() {
        return super::forward(app, parts, body, who).await;
    }
    // What the read is judged by (its `Accept`, its credentials) is what the upstream
    // gets: a header the client names in `Connection` is dropped before forwarding.
    headers::remove_hop_by_hop(&mut parts.headers);
    let view = read_view(app, &repo, &tag, decided.mode == Mode::Immutable).await?;
    let read = Read {
        app,
        repo: &repo,
        tag: &tag,
        decided,
        who,
    };
    if decided.mode == Mode::Audit {
        return read.audited(parts, body, view).await;
    }
    match view.pin {
        Some(pin) => read.pinned(parts, body, &pin).await,
        None => match view.reserved {
            Some(digest) => read.reserved(parts, body, &digest).await,
            None if view.in_flight => super::forward(app, parts, body, who).await,
            None => read.first_pull(parts, body).await,
        },
    }
}

/// A manifest read whose path is percent-encoded: forwarded with `reads = "forward"`,
/// refused otherwise (tagpin cannot tell which tag the upstream will read it as).
pub async fn encoded(app: &App, parts: Parts, body: Body, who: &Requester) -> Answer {
    match app.config.reads {
        Reads::Forward => super::forward(app, parts, body, who).await,
        Reads::Pinned => Err(RouteError::EncodedRead.into()),
    }
}

/// The tag's pin, from memory where the store can answer so.
async fn read_view(app: &App, repo: &Repository, tag: &Tag, immutable: bool) -> Result<ReadView, ProxyError> {
    if let Some(view) = app.store.read_view_in_memory(repo, tag, immutable) {
        return view.map_err(ProxyError::Store);
    }
    let (r, t) = (repo.clone(), tag.clone());
    app.store_call(move |s| s.read_view(&r, &t, immutable)).await
}

/// One read by a protected tag.
struct Read<'a> {
    app: &'a App,
    repo: &'a Repository,
    tag: &'a Tag,
    decided: Decided,
    who: &'a Requester,
}

impl Read<'_> {
    /// Answer with the manifest `pin`, fetched by digest with the client's request.
    async fn pinned(&self, mut parts: Parts, body: Body, pin: &Digest) -> Answer {
        let authorization = parts.headers.get(header::AUTHORIZATION).cloned();
        parts.uri = by_digest(self.repo, pin)?;
        let resp = super::forward(self.app, parts, body, self.who).await?;
        if resp.status() == StatusCode::NOT_FOUND && self.pinned_gone(pin, authorization.as_ref()).await? {
            return Err(self.missing(pin));
        }
        // The upstream names what it serves; anything but the pin is not passed on.
        if let Some(served) = resp.headers().get("docker-content-digest") {
            if resp.status().is_success() && served.as_bytes() != pin.as_str().as_bytes() {
                return Err(UpstreamError::ServedOtherDigest {
                    asked: pin.clone(),
                    served: String::from_utf8_lossy(served.as_bytes()).chars().take(200).collect(),
                }
                .into());
            }
        }
        self.app.metrics.read(ReadAnswer::Pinned);
        Ok(resp)
    }

    /// A tag with no pin held by pushes of one new pin (`digest`): served that digest when
    /// the upstream has it (a push answered 201 whose settlement a crash took back is
    /// pulled as pushed, whatever was written under the tag behind tagpin's back since),
    /// read by tag otherwise (a first push not yet applied).
    async fn reserved(&self, parts: Parts, body: Body, digest: &Digest) -> Answer {
        let (again, by_tag) = (Again::of(&parts), parts.uri.clone());
        let mut parts = parts;
        parts.uri = by_digest(self.repo, digest)?;
        let resp = super::forward(self.app, parts, body, self.who).await?;
        if resp.status() != StatusCode::NOT_FOUND {
            return Ok(resp);
        }
        drop(resp);
        let (mut parts, body) = again.request();
        parts.uri = by_tag;
        super::forward(self.app, parts, body, self.who).await
    }

    /// Whether a 404 for the pinned digest means the manifest is gone: asked again with
    /// the client's credentials and every manifest type tagpin knows in `Accept`, since
    /// distribution answers 404 to a manifest whose type the client's `Accept` lacks.
    /// Any other answer leaves the 404 the client's.
    async fn pinned_gone(&self, pin: &Digest, authorization: Option<&HeaderValue>) -> Result<bool, ProxyError> {
        let target = format!("/v2/{}/manifests/{pin}", self.repo);
        let check = self
            .app
            .upstream
            .client_check(Method::HEAD, &target, authorization)
            .await?;
        Ok(check.status() == StatusCode::NOT_FOUND)
    }

    /// The 404 for a pinned manifest the upstream no longer has, reported once per
    /// (tag, digest).
    fn missing(&self, pin: &Digest) -> ProxyError {
        let key = (self.repo.clone(), self.tag.clone(), pin.clone());
        if self.app.read_reports.missing.get(&key).is_none() {
            self.app.read_reports.missing.insert(key, ());
            self.app.metrics.read(ReadAnswer::PinnedMissing);
            self.event(AuditAction::PinnedManifestMissing, Some(pin), None);
        }
        ProxyError::PinnedManifestMissing {
            repo: self.repo.clone(),
            tag: self.tag.clone(),
            digest: pin.clone(),
        }
    }

    /// A tag with neither pin nor write in flight: read by tag, and the digest the tag
    /// holds becomes the pin. If a push bound the tag first, or the answer was not the
    /// tag's own manifest, the pin is served instead.
    async fn first_pull(&self, parts: Parts, body: Body) -> Answer {
        let again = Again::of(&parts);
        let resp = super::forward(self.app, parts, body, self.who).await?;
        let Some(served) = served_digest(&resp) else {
            return Ok(resp);
        };
        let Some(held) = self.tag_holds(&again.headers, &served).await else {
            return Ok(resp);
        };
        let pin = match self.adopt(&held, again.method.as_str()).await {
            Some(FirstPull::Adopted) => held,
            Some(FirstPull::Pinned(pin)) => pin,
            Some(FirstPull::InFlight) | None => return Ok(resp),
        };
        if pin == served {
            return Ok(resp);
        }
        drop(resp);
        let (parts, body) = again.request();
        self.pinned(parts, body, &pin).await
    }

    /// The digest the tag holds, given an answer at `served` to a request with
    /// `headers`: `served` itself when the client accepts every image manifest type;
    /// otherwise the registry may have answered with another manifest than the tag's
    /// (distribution serves a list's platform manifest to a client without the list type,
    /// and a schema 1 rewrite to one without schema 2), so the upstream is asked with
    /// every type, as adoption at push time does. `None` when it cannot be told.
    async fn tag_holds(&self, headers: &HeaderMap, served: &Digest) -> Option<Digest> {
        if accepts_every_image_type(headers) {
            return Some(served.clone());
        }
        let authorization = headers.get(header::AUTHORIZATION);
        match super::pins::tag_at_upstream(self.app, self.repo, self.tag, authorization).await {
            Ok(TagAtUpstream::Present(digest)) => Some(digest),
            Ok(TagAtUpstream::Absent | TagAtUpstream::Challenge(_)) => None,
            Err(e) => {
                tracing::warn!(request_id = %self.who.request_id, repository = %self.repo, tag = %self.tag, error = %e, "read: what the tag holds could not be learned");
                None
            }
        }
    }

    /// Adopt `served` as the pin unless the tag has one or a write in flight. `None`
    /// when the store could not be written: the read is answered anyway (nothing was
    /// pinned, so nothing is contradicted) and the next read tries again.
    async fn adopt(&self, served: &Digest, how: &str) -> Option<FirstPull> {
        let (d, how) = (served.clone(), how.to_owned());
        let request_id = self.who.request_id.clone();
        let tags = [self.tag.clone()];
        let found = self
            .app
            .transition(self.repo, &tags, move |clock, records| {
                let found = crate::pinning::adopt_on_read(&mut records[0], &d, &how, clock);
                if found == FirstPull::Adopted {
                    if let Some(entry) = records[0].pin.as_mut().and_then(|p| p.history.last_mut()) {
                        entry.request_id = Some(request_id.clone());
                    }
                }
                found
            })
            .await;
        match found {
            Ok(FirstPull::Adopted) => {
                self.app.metrics.read(ReadAnswer::Adopted);
                self.event(AuditAction::PinAdoptedOnRead, Some(served), None);
                Some(FirstPull::Adopted)
            }
            Ok(other) => Some(other),
            Err(e) => {
                self.app.metrics.store_failure();
                tracing::warn!(request_id = %self.who.request_id, repository = %self.repo, tag = %self.tag, error = %e, "first pull: the pin could not be recorded");
                None
            }
        }
    }

    /// Audit mode: forwarded by tag; a tag the upstream holds at another digest than
    /// the pin is warned.
    async fn audited(&self, parts: Parts, body: Body, view: ReadView) -> Answer {
        let (how, headers) = (parts.method.clone(), parts.headers.clone());
        let mut resp = super::forward(self.app, parts, body, self.who).await?;
        let Some(served) = served_digest(&resp) else {
            return Ok(resp);
        };
        if view.pin.as_ref() == Some(&served) {
            self.undrifted();
            return Ok(resp);
        }
        if view.pin.is_none() && view.in_flight {
            return Ok(resp);
        }
        let Some(held) = self.tag_holds(&headers, &served).await else {
            return Ok(resp);
        };
        let pin = match view.pin {
            Some(pin) => pin,
            None => match self.adopt(&held, how.as_str()).await {
                Some(FirstPull::Adopted) => held.clone(),
                Some(FirstPull::Pinned(pin)) => pin,
                Some(FirstPull::InFlight) | None => return Ok(resp),
            },
        };
        if pin == held {
            self.undrifted();
        } else {
            self.drift(&pin, &held);
            let text = format!(
                "299 - \"tagpin: {}:{} is pinned to {pin}; the upstream serves {held}\"",
                self.repo, self.tag
            );
            if let Ok(v) = HeaderValue::from_str(&text) {
                resp.headers_mut().append(header::WARNING, v);
            }
        }
        Ok(resp)
    }

    /// One `read_drift` event per move away from the pin: per digest an audited tag is
    /// seen served at since it was last seen at its pin.
    fn drift(&self, pin: &Digest, served: &Digest) {
        let key = (self.repo.clone(), self.tag.clone());
        if self.app.read_reports.drift.get(&key).as_ref() != Some(served) {
            self.app.read_reports.drift.insert(key, served.clone());
            self.app.metrics.read(ReadAnswer::Drift);
            self.event(AuditAction::ReadDrift, Some(pin), Some(served));
        }
    }

    /// The tag is served at its pin again: its next move away is a new drift.
    fn undrifted(&self) {
        self.app
            .read_reports
            .drift
            .remove(&(self.repo.clone(), self.tag.clone()));
    }

    /// An audit event about this read. It names no user: the upstream has not vouched
    /// for the client's.
    fn event(&self, action: AuditAction, pinned: Option<&Digest>, served: Option<&Digest>) {
        let mut who = self.who.clone();
        who.user = None;
        AuditEvent {
            action,
            who: &who,
            repository: self.repo,
            tag: Some(self.tag),
            pinned,
            attempted: served,
            decided: Some(self.decided),
        }
        .emit(self.app);
    }
}

/// The request target of the manifest `digest` of `repo`.
fn by_digest(repo: &Repository, digest: &Digest) -> Result<http::Uri, ProxyError> {
    format!("/v2/{repo}/manifests/{digest}")
        .parse()
        .map_err(|e| ProxyError::Internal(format!("manifest target: {e}")))
}

/// The image manifest types a client that can pull any image accepts. Lacking one, it
/// may be answered with another manifest than the tag's.
const EVERY_IMAGE_TYPE: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Whether the `Accept` headers name every type of [`EVERY_IMAGE_TYPE`] (parameters such
/// as `q` ignored; a wildcard does not count: distribution matches types exactly).
fn accepts_every_image_type(headers: &HeaderMap) -> bool {
    let accepted: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.split(';').next().unwrap_or("").trim())
        .collect();
    EVERY_IMAGE_TYPE
        .iter()
        .all(|t| accepted.iter().any(|a| a.eq_ignore_ascii_case(t)))
}

/// The digest of a 2xx manifest answer.
fn served_digest<B>(resp: &http::Response<B>) -> Option<Digest> {
    if !resp.status().is_success() {
        return None;
    }
    let value = resp.headers().get("docker-content-digest")?.to_str().ok()?;
    Digest::parse(value).ok()
}

/// What it takes to send a read again, by digest, after its first answer was dropped.
struct Again {
    method: Method,
    headers: HeaderMap,
    version: http::Version,
}

impl Again {
    fn of(parts: &Parts) -> Self {
        Self {
            method: parts.method.clone(),
            headers: parts.headers.clone(),
            version: parts.version,
        }
    }

    fn request(self) -> (Parts, Body) {
        let mut req = Request::new(body::empty());
        *req.method_mut() = self.method;
        *req.headers_mut() = self.headers;
        *req.version_mut() = self.version;
        req.into_parts()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn a_client_accepts_every_image_type_only_when_it_names_each_of_them() {
        let all = EVERY_IMAGE_TYPE.join(", ");
        let weighted = EVERY_IMAGE_TYPE.map(|t| format!("{t};q=0.5")).join(",");
        let split: Vec<&str> = EVERY_IMAGE_TYPE.to_vec();
        for (headers, expected) in [
            (accept(&[&all]), true),
            (accept(&[&weighted]), true),
            (accept(&split), true),
            (accept(&[&all.to_uppercase()]), true),
            (accept(&[]), false),
            (accept(&["*/*"]), false),
            (accept(&[EVERY_IMAGE_TYPE[2]]), false),
            (accept(&[&EVERY_IMAGE_TYPE[..3].join(", ")]), false),
        ] {
            assert_eq!(accepts_every_image_type(&headers), expected, "{headers:?}");
        }
    }
}
