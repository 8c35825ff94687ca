//! The client side: pooled HTTP/1.1 connections to the upstream registry ([`pool`]), over plain TCP
//! or rustls (ring provider, standard web roots plus an optional CA bundle).
//!
//! Failures are classified here by where they happened (connect, waiting for headers,
//! transport) so the handler can answer 502, 503 or 504 without parsing strings.

mod catalog;
pub mod expect;
mod fetch;
pub mod headers;
pub mod own;
mod pool;
mod realm;
mod socket;

pub use catalog::{CatalogPages, TagPage, TagPages};
pub use fetch::Fetched;
pub use pool::Unsolicited;

use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::body::{self, Body};
use crate::config::{Config, Origin};
use crate::oci::{Digest, Repository, Tag};

/// Every manifest media type a registry may hold, so a HEAD never triggers a
/// conversion (distribution serves a schema1 rewrite to clients that do not accept
/// schema2) and the digest it reports is the digest of the stored bytes.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v1+prettyjws, \
application/vnd.docker.distribution.manifest.v1+json, \
application/vnd.oci.artifact.manifest.v1+json";

/// Why the upstream could not be used.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to the upstream: {0}")]
    Connect(String),
    #[error("the upstream sent no response headers within {0:?}")]
    HeaderTimeout(Duration),
    /// The upstream took no part of the request body for the body idle limit (it stopped
    /// reading), before answering.
    #[error("the upstream took none of the request body for {0:?}")]
    SendStalled(Duration),
    #[error("the upstream connection failed: {0}")]
    Transport(String),
    #[error("the upstream answered the tag check for {tag} with {status}")]
    CheckStatus { tag: Tag, status: StatusCode },
    #[error("the upstream answered the fetch of {what} with {status}")]
    FetchStatus { what: String, status: StatusCode },
    #[error("the upstream answered the tag check for {tag} without a valid Docker-Content-Digest")]
    CheckNoDigest { tag: Tag },
    #[error("the upstream stored the manifest as {reported}, tagpin computed {computed}")]
    DigestMismatch { computed: Digest, reported: String },
    /// A request for a manifest by digest was answered with another digest.
    #[error("the upstream answered a request for {asked} with {served}")]
    ServedOtherDigest { asked: Digest, served: String },
    #[error("cannot set up TLS for the upstream: {0}")]
    Tls(String),
    /// The tag list could not be read to its end: tagpin cannot know every tag, so the
    /// write that needed the list is refused (fail closed).
    #[error("cannot list the tags of {repo} at the upstream: {reason}")]
    TagList { repo: Repository, reason: String },
    /// tagpin's own credentials were refused, or its token could not be had.
    #[error("the upstream refused tagpin's own credentials: {0}")]
    OwnAuth(String),
    /// A token realm the upstream named that tagpin will not send a request to.
    #[error("tagpin will not fetch a token from {realm}: {reason}")]
    TokenRealm { realm: String, reason: String },
    /// The catalog could not be read to its end.
    #[error("cannot list the upstream's repositories: {0}")]
    Catalog(String),
}

impl UpstreamError {
    /// A short, fixed name for the metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::HeaderTimeout(_) | Self::SendStalled(_) => "timeout",
            Self::Transport(_) => "transport",
            Self::CheckStatus { .. } | Self::CheckNoDigest { .. } | Self::FetchStatus { .. } | Self::TagList { .. } => {
                "check"
            }
            Self::DigestMismatch { .. } | Self::ServedOtherDigest { .. } => "digest",
            Self::Tls(_) => "tls",
            Self::OwnAuth(_) | Self::TokenRealm { .. } => "auth",
            Self::Catalog(_) => "check",
        }
    }
}

/// What the upstream holds under a tag.
pub enum TagAtUpstream {
    Present(Digest),
    Absent,
    /// The upstream wants credentials the client did not send (or refuses them); the
    /// response is handed to the client as is, challenge included.
    Challenge(Response<Incoming>),
}

/// The tags of a repository at the upstream.
pub enum TagList {
    Tags(Vec<Tag>),
    /// The upstream wants (other) credentials; handed to the client as is.
    Challenge(Response<Incoming>),
}

/// At most this many pages are followed when listing tags; a registry that paginates
/// beyond it is treated as failing (fail closed).
const MAX_TAG_PAGES: usize = 10_000;

pub struct Upstream {
    /// Connections to the upstream itself: every proxied request and check.
    pool: pool::Pool,
    /// Any other origin (the realm tagpin fetches its own tokens from).
    client: Client<HttpsConnector<HttpConnector>, Body>,
    origin: Origin,
    header_timeout: Duration,
    check_timeout: Duration,
    /// How long a request body may sit unread by the upstream.
    body_idle: Duration,
    /// tagpin's own credentials, for the requests it makes for itself.
    own: own::OwnAuth,
    /// `tagpin_upstream_request_duration_seconds`, shared with the other workers.
    latency: crate::metrics::UpstreamLatency,
}

/// Whose credentials a request carries.
#[derive(Clone, Copy)]
enum As<'a> {
    /// The client's `Authorization`, passed on as is.
    Client(Option<&'a HeaderValue>),
    /// tagpin's own ([`own`]).
    Own,
}

/// A tag list read to its end.
enum Listing {
    Tags(Vec<Tag>),
    /// The first page answered 404: the upstream does not know the repository.
    Unknown,
    Challenge(Response<Incoming>),
}

impl Upstream {
    /// The TLS settings for an https upstream: the standard web roots plus the optional CA
    /// bundle. Built once at start-up (a bad bundle stops tagpin) and shared by the
    /// workers' clients.
    pub fn tls_config(config: &Config) -> Result<rustls::ClientConfig, UpstreamError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &config.upstream_ca {
            let bad = |e: &dyn std::fmt::Display| UpstreamError::Tls(format!("{}: {e}", path.display()));
            let mut added = 0;
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
                roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
                added += 1;
            }
            if added == 0 {
                return Err(bad(&"no PEM certificate in the file"));
            }
        }
        Ok(
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| UpstreamError::Tls(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    /// A client for one worker. Its pooled connections live on the worker's runtime, so
    /// a request never wakes another thread. `unsolicited` is shared by every worker.
    pub fn new(
        config: &Config,
        tls: rustls::ClientConfig,
        unsolicited: Unsolicited,
        latency: crate::metrics::UpstreamLatency,
    ) -> Self {
        let connector = connector(tls, config.timeouts.upstream_connect);
        let pool = pool::Pool::new(
            connector.clone(),
            &config.upstream,
            512,
            Duration::from_secs(90),
            unsolicited,
        );
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(8)
            .build(connector);
        Self {
            pool,
            client,
            origin: config.upstream.clone(),
            header_timeout: config.timeouts.upstream_header,
            check_timeout: config.timeouts.upstream_check,
            body_idle: config.timeouts.body_idle,
            own: own::OwnAuth::new(config.upstream_credentials.clone(), config.token_realms.clone()),
            latency,
        }
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The upstream URI for a client's already parsed path and query: no re-parse, the
    /// parts share the client's bytes.
    pub fn uri_for_parsed(&self, path_and_query: http::uri::PathAndQuery) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.origin.scheme.clone());
        parts.authority = Some(self.origin.authority.clone());
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).expect("a validated origin plus a parsed path is a valid URI")
    }

    pub fn uri_for(&self, path_and_query: &str) -> Uri {
        Uri::builder()
            .scheme(self.origin.scheme.clone())
            .authority(self.origin.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .expect("a validated origin plus a parsed path is a valid URI")
    }

    /// Send a request and wait for the response headers. The header timeout starts once
    /// the request body has been sent: a multi-gigabyte upload takes as long as it takes,
    /// and while it flows only the body idle timeout applies to it.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        self.send_within(req, self.header_timeout, false).await
    }

    /// Send a request tagpin makes for its own decision (a tag check, a tag listing, a
    /// fetch of a pinned manifest): these have no upload to wait for, so a hung upstream
    /// is detected after the check timeout, not the long header timeout of forwarded
    /// requests.
    pub async fn send_check(&self, req: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        self.send_within(req, self.check_timeout, true).await
    }

    /// The bound on reading the body of a check's answer.
    pub fn check_timeout(&self) -> Duration {
        self.check_timeout
    }

    async fn send_within(
        &self,
        req: Request<Body>,
        header_timeout: Duration,
        check: bool,
    ) -> Result<Response<Incoming>, UpstreamError> {
        // The upstream's latency counts from the request sent whole: an upload's own time
        // is the client's. An answer that comes while the body still flows counts from
        // the start.
        let mut waiting_since = tokio::time::Instant::now();
        let (req, sent) = if http_body::Body::is_end_stream(req.body()) {
            (req, None)
        } else {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let progress = body::Progress::new();
            (
                req.map(|b| body::NotifyEnd::wrap(b, tx, Arc::clone(&progress))),
                Some((rx, progress)),
            )
        };
        let response = self.dispatch(req);
        tokio::pin!(response);
        if let Some((sent, progress)) = sent {
            tokio::pin!(sent);
            loop {
                // An upstream that stops reading leaves the body unpolled, so neither the
                // body's own idle timer nor the header timeout would ever start: watch
                // the body's progress from here.
                let stalled_at = progress.last() + self.body_idle;
                tokio::select! {
                    r = &mut response => return self.observed(check, waiting_since, r),
                    // Sent in full, or dropped after a failure: either way the wait begins.
                    _ = &mut sent => break,
                    () = tokio::time::sleep_until(stalled_at) => {
                        if progress.last() + self.body_idle <= tokio::time::Instant::now() {
                            return Err(UpstreamError::SendStalled(self.body_idle));
                        }
                    }
                }
            }
            waiting_since = tokio::time::Instant::now();
        }
        let answer = match tokio::time::timeout(header_timeout, response).await {
            Err(_) => Err(UpstreamError::HeaderTimeout(header_timeout)),
            Ok(r) => r,
        };
        self.observed(check, waiting_since, answer)
    }

    /// `answer`, its wait since `since` observed as upstream latency.
    fn observed<T>(&self, check: bool, since: tokio::time::Instant, answer: T) -> T {
        self.latency.observe(check, since.elapsed().as_secs_f64());
        answer
    }

    /// The upstream's own origin through the pool, anything else through the general
    /// client.
    async fn dispatch(&self, req: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        let uri = req.uri();
        if uri.scheme() == Some(&self.origin.scheme) && uri.authority() == Some(&self.origin.authority) {
            return self.pool.send(req).await;
        }
        match self.client.request(req).await {
            Ok(resp) => Ok(resp),
            Err(e) if e.is_connect() => Err(UpstreamError::Connect(error_chain(&e))),
            Err(e) => Err(UpstreamError::Transport(error_chain(&e))),
        }
    }

    /// Ask the upstream which digest it holds under `tag`, with the client's credentials.
    pub async fn tag_digest(
        &self,
        repo: &Repository,
        tag: &Tag,
        authorization: Option<&HeaderValue>,
    ) -> Result<TagAtUpstream, UpstreamError> {
        self.tag_digest_as(repo, tag, As::Client(authorization)).await
    }

    async fn tag_digest_as(&self, repo: &Repository, tag: &Tag, who: As<'_>) -> Result<TagAtUpstream, UpstreamError> {
        let target = format!("/v2/{repo}/manifests/{tag}");
        let resp = self.get_as(Method::HEAD, &target, Some(MANIFEST_ACCEPT), who).await?;
        match resp.status() {
            StatusCode::OK => resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| Digest::parse(v).ok())
                .map(TagAtUpstream::Present)
                .ok_or_else(|| UpstreamError::CheckNoDigest { tag: tag.clone() }),
            StatusCode::NOT_FOUND => Ok(TagAtUpstream::Absent),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Ok(TagAtUpstream::Challenge(resp)),
            status => Err(UpstreamError::CheckStatus {
                tag: tag.clone(),
                status,
            }),
        }
    }

    /// Every tag of `repo` (end-8a, following `Link: <…>; rel="next"` pages), with the
    /// client's credentials. A repository the upstream does not know has no tags. Tags
    /// outside the grammar cannot be pushed through tagpin and are skipped. A page that
    /// cannot be read, or a next link tagpin will not follow, is an error rather than the
    /// end of the list: a tag on a page never read would escape the decision.
    pub async fn list_tags(
        &self,
        repo: &Repository,
        authorization: Option<&HeaderValue>,
    ) -> Result<TagList, UpstreamError> {
        Ok(match self.list_tags_as(repo, As::Client(authorization)).await? {
            Listing::Tags(tags) => TagList::Tags(tags),
            Listing::Unknown => TagList::Tags(Vec::new()),
            Listing::Challenge(resp) => TagList::Challenge(resp),
        })
    }

    /// A request with no body, carrying the client's credentials or tagpin's own.
    async fn get_as(
        &self,
        method: Method,
        target: &str,
        accept: Option<&'static str>,
        who: As<'_>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let authorization = match who {
            As::Own => return self.send_own(method, target, accept).await,
            As::Client(a) => a,
        };
        let mut req = Request::builder()
            .method(method)
            .uri(self.uri_for(target))
            .header(header::USER_AGENT, concat!("tagpin/", env!("CARGO_PKG_VERSION")));
        if let Some(accept) = accept {
            req = req.header(header::ACCEPT, accept);
        }
        if let Some(auth) = authorization {
            req = req.header(header::AUTHORIZATION, auth);
        }
        self.send_check(req.body(body::empty()).expect("static request parts are valid"))
            .await
    }

    /// A whole tag list, page after page ([`catalog::TagPages`]).
    async fn list_tags_as(&self, repo: &Repository, who: As<'_>) -> Result<Listing, UpstreamError> {
        let mut pages = match who {
            As::Own => self.own_tag_pages(repo),
            As::Client(a) => self.tag_pages(repo, a),
        };
        let mut tags = Vec::new();
        while let Some(page) = pages.next_page().await? {
            match page {
                TagPage::Tags(t) => tags.extend(t),
                TagPage::Unknown => return Ok(Listing::Unknown),
                TagPage::Challenge(resp) => return Ok(Listing::Challenge(resp)),
            }
        }
        Ok(Listing::Tags(tags))
    }

    /// `GET /v2/` for readiness: any answer that shows a registry (200 or 401) counts.
    pub async fn probe(&self) -> Result<(), UpstreamError> {
        let req = Request::builder()
            .uri(self.uri_for("/v2/"))
            .header(header::USER_AGENT, concat!("tagpin/", env!("CARGO_PKG_VERSION")))
            .body(body::empty())
            .expect("static request parts are valid");
        let resp = self.send_check(req).await?;
        match resp.status() {
            StatusCode::OK | StatusCode::UNAUTHORIZED => Ok(()),
            status => Err(UpstreamError::Transport(format!("GET /v2/ answered {status}"))),
        }
    }
}

/// The path and query of the next page of a listing: the `rel="next"` target of its
/// `Link` headers (RFC 8288 3; distribution-spec `spec.md` "Listing Tags"). The target
/// may be relative or absolute, but must stay under `/v2/` on the upstream's own origin:
/// tagpin sends the client's credentials with each page and will not send them elsewhere.
/// `Ok(None)` when there is no next page; `Err` when a `Link` cannot be parsed (tagpin
/// cannot tell whether it names a next page) or its next page is somewhere else.
fn next_page(headers: &http::HeaderMap, upstream: &Origin) -> Result<Option<String>, String> {
    for value in headers.get_all(header::LINK) {
        let text = value
            .to_str()
            .map_err(|_| "a Link header is not visible ASCII".to_owned())?;
        let links = headers::parse_links(text).ok_or_else(|| format!("Link {text:?} is not an RFC 8288 link list"))?;
        let Some(next) = links.iter().find(|l| l.has_rel(text, "next")) else {
            continue;
        };
        let target = next.target(text);
        let path = if target.starts_with('/') && !target.starts_with("//") {
            Some(target)
        } else {
            headers::strip_origin(target, upstream)
        };
        return match path {
            Some(p) if p.starts_with("/v2/") => Ok(Some(p.to_owned())),
            _ => Err(format!(
                "next page {target:?} is not under /v2/ on the upstream's origin {upstream}"
            )),
        };
    }
    Ok(None)
}

/// What dials the upstream (and any other origin): TCP with a connect timeout, then
/// rustls for https.
fn connector(tls: rustls::ClientConfig, connect_timeout: Duration) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

/// An error and its sources on one line, for logs.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next(links: &[&str]) -> Result<Option<String>, String> {
        let mut h = http::HeaderMap::new();
        for l in links {
            h.append(header::LINK, l.parse().unwrap());
        }
        let up: Uri = "http://127.0.0.1:5000".parse().unwrap();
        let origin = Origin {
            scheme: up.scheme().unwrap().clone(),
            authority: up.authority().unwrap().clone(),
        };
        next_page(&h, &origin)
    }

    #[test]
    fn next_pages_are_followed_under_v2_on_the_upstream_origin() {
        let ok = |s: &str| Ok(Some(s.to_owned()));
        assert_eq!(
            next(&[r#"</v2/a/tags/list?last=b&n=2>; rel="next""#]),
            ok("/v2/a/tags/list?last=b&n=2")
        );
        assert_eq!(
            next(&[r#"</v2/a/tags/list?last=b>; rel=next"#]),
            ok("/v2/a/tags/list?last=b")
        );
        assert_eq!(
            next(&[r#"<http://127.0.0.1:5000/v2/a/tags/list?last=b>; rel="next""#]),
            ok("/v2/a/tags/list?last=b")
        );
        assert_eq!(next(&[r#"</v2/x>; rel="prev", </v2/y>; rel="next""#]), ok("/v2/y"));
        assert_eq!(next(&[r#"</v2/x>; rel="prev""#, r#"</v2/y>; rel="next""#]), ok("/v2/y"));
    }

    #[test]
    fn no_next_link_ends_the_list() {
        assert_eq!(next(&[]), Ok(None));
        assert_eq!(next(&[r#"</v2/a/tags/list?last=b>; rel="prev""#]), Ok(None));
    }

    #[test]
    fn a_next_page_elsewhere_or_an_unreadable_link_is_an_error() {
        for links in [
            r#"<https://elsewhere/v2/a>; rel="next""#,
            r#"<https://127.0.0.1:5000/v2/a>; rel="next""#,
            r#"<http://127.0.0.1:5001/v2/a>; rel="next""#,
            r#"<//elsewhere/v2/a>; rel="next""#,
            r#"<http://127.0.0.1:5000/other>; rel="next""#,
            r#"</api/a>; rel="next""#,
            r#"tags/list?last=b; rel="next""#,
            r#"</v2/a; rel="next""#,
        ] {
            assert!(next(&[links]).is_err(), "{links}");
        }
    }
}
