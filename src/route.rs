//! Route classification: one pure function from method and request target to what the
//! request means for tag protection.
//!
//! Reads (GET, HEAD) and OPTIONS under `/v2/` cannot move a tag. They are forwarded as
//! they are, except a manifest read (answered from the pin when the tag is protected,
//! `handler::reads`) and tagpin's own history extension (`/v2/<name>/_tagpin/history/<tag>`).
//! OPTIONS is safe by definition (RFC 9110 9.3.7) and is the CORS preflight
//! a browser sends before a registry web UI's cross-origin read, so the upstream answers it.
//! Every write must parse *exactly* under the distribution-spec grammar (`spec.md`,
//! "Endpoints" table end-1 to end-13), because a path that tagpin and the upstream read
//! differently is a way around the pin. Nothing is percent-decoded: distribution 2.8
//! decodes `%2F` and `%61` before routing, so an encoded path is refused instead of being
//! interpreted; a read is decoded only to tell whether the upstream will route it as a
//! manifest read. Repository names contain slashes, so the endpoint is recognised from the
//! *last* segments of the path, never from the first occurrence of a keyword.

use http::{HeaderMap, Method, Uri};

use crate::oci::{Digest, NameError, Reference, Repository, Tag};

/// Longest upload session id accepted in a write path. distribution uses UUIDs (36).
const MAX_UPLOAD_ID_LEN: usize = 256;

/// Headers some frameworks honour to change the method; a proxy must not let a GET
/// become a DELETE behind its back.
const METHOD_OVERRIDE_HEADERS: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];

/// What a request is, as far as tagpin is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /healthz`: answered by tagpin.
    Health,
    /// `GET /readyz`: answered by tagpin after probing the upstream and the store.
    Ready,
    /// `GET /metrics`: Prometheus metrics, answered by tagpin.
    Metrics,
    /// A GET, HEAD or OPTIONS under `/v2/`: forwarded untouched.
    Read,
    /// `GET`/`HEAD /v2/<name>/manifests/<reference>` (end-3): by a protected tag, answered
    /// with the pinned manifest.
    ManifestRead { repo: Repository, reference: Reference },
    /// A manifest read whose path is percent-encoded. The upstream decodes it before
    /// routing (`%2F`, `%61`), so tagpin cannot tell which tag it names.
    EncodedManifestRead,
    /// `GET`/`HEAD /v2/<name>/_tagpin/history/<tag>`: the tag's pin history, answered by
    /// tagpin for clients the upstream lets read the repository (the distribution-spec
    /// extension form `/v2/<name>/_<extension>/<component>/<module>`).
    TagHistory { repo: Repository, tag: Tag },
    /// `PUT /v2/<name>/manifests/<reference>[?tag=…]` (end-7a, end-7b).
    ManifestPut {
        repo: Repository,
        reference: Reference,
        /// Every tag the push names: the path's tag and each `tag` query parameter,
        /// de-duplicated, in order of first appearance.
        tags: Vec<Tag>,
    },
    /// `DELETE /v2/<name>/manifests/<reference>` (end-9).
    ManifestDelete { repo: Repository, reference: Reference },
    /// `DELETE /v2/<name>/blobs/<digest>` (end-10).
    BlobDelete { repo: Repository, digest: Digest },
    /// `POST /v2/<name>/blobs/uploads/` (end-4a, end-4b, end-11 mount).
    UploadStart { repo: Repository },
    /// `PATCH`, `PUT` or `DELETE /v2/<name>/blobs/uploads/<id>` (end-5, end-6).
    UploadSession { repo: Repository },
}

/// Why a request was refused before anything was forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("not a Distribution API path: tagpin serves /v2/, /healthz and /readyz")]
    NotFound,
    #[error("no Distribution API endpoint has this path")]
    UnknownEndpoint,
    #[error("method {0} is not defined on this endpoint")]
    MethodNotAllowed(Method),
    #[error("absolute-form request targets are not accepted for writes")]
    AbsoluteForm,
    #[error("method-override header {0} is not accepted")]
    MethodOverride(&'static str),
    /// Only the parameter's name is kept: a value may be a token and must not reach a log.
    #[error("query parameter {0:?} is not understood on this write; tagpin only accepts `tag=<tag>`")]
    QueryParameter(String),
    #[error("upload session id {0:?} is not valid")]
    UploadId(String),
    #[error(
        "this manifest read has a percent-encoded path, which the upstream decodes and tagpin cannot tell \
         which tag it names; write the repository and reference unencoded"
    )]
    EncodedRead,
}

/// Classify a request. Pure: the same method and target always give the same answer.
pub fn classify(method: &Method, uri: &Uri) -> Result<Route, RouteError> {
    let path = uri.path();
    if method == Method::OPTIONS {
        // Only the upstream's API is forwarded; tagpin's own endpoints define GET alone.
        return match path {
            "/v2" => Ok(Route::Read),
            p if p.starts_with("/v2/") => Ok(Route::Read),
            "/healthz" | "/readyz" | "/metrics" => Err(RouteError::MethodNotAllowed(method.clone())),
            _ => Err(RouteError::NotFound),
        };
    }
    let is_read = method == Method::GET || method == Method::HEAD;
    if is_read {
        return match path {
            "/healthz" => Ok(Route::Health),
            "/readyz" => Ok(Route::Ready),
            "/metrics" => Ok(Route::Metrics),
            "/v2" => Ok(Route::Read),
            p => match p.strip_prefix("/v2/") {
                Some(tail) => classify_read(tail),
                None => Err(RouteError::NotFound),
            },
        };
    }
    let Some(tail) = path.strip_prefix("/v2/") else {
        return Err(if matches!(path, "/v2" | "/healthz" | "/readyz" | "/metrics") {
            RouteError::MethodNotAllowed(method.clone())
        } else {
            RouteError::NotFound
        });
    };
    // hyper keeps scheme and authority of an absolute-form target (RFC 9112 3.2.2); the
    // upstream would see a different target than the one tagpin checked.
    if uri.scheme().is_some() || uri.authority().is_some() {
        return Err(RouteError::AbsoluteForm);
    }
    classify_write(method, tail, uri.query())
}

/// Refuse requests that carry a method-override header.
pub fn check_method_override(headers: &HeaderMap) -> Result<(), RouteError> {
    match METHOD_OVERRIDE_HEADERS.iter().find(|h| headers.contains_key(**h)) {
        Some(h) => Err(RouteError::MethodOverride(h)),
        None => Ok(()),
    }
}

/// A GET or HEAD under `/v2/`. Anything that is not a well-formed manifest read is
/// forwarded for the upstream to answer. A history path is tagpin's own (no repository
/// name holds a `_tagpin` component), so a malformed one is refused here, naming what is
/// wrong, rather than left to the upstream's bare 404.
fn classify_read(tail: &str) -> Result<Route, RouteError> {
    let segments: Vec<&str> = tail.split('/').collect();
    let repo = |name: &[&str]| Repository::parse(&name.join("/")).ok();
    Ok(match segments.as_slice() {
        [name @ .., "manifests", reference] if !name.is_empty() => match (repo(name), Reference::parse(reference)) {
            (Some(repo), Ok(reference)) => Route::ManifestRead { repo, reference },
            _ if tail.contains('%') => Route::EncodedManifestRead,
            _ => Route::Read,
        },
        [name @ .., "_tagpin", "history", tag] if !name.is_empty() => Route::TagHistory {
            repo: Repository::parse(&name.join("/"))?,
            tag: Tag::parse(tag)?,
        },
        _ if names_manifests_decoded(tail) => Route::EncodedManifestRead,
        _ => Route::Read,
    })
}

/// Whether a read path with escapes has a `manifests` segment once percent-decoded.
/// distribution 2.8 routes the decoded path, so `m%61nifests/v1` or `app%2Fmanifests%2Fv1`
/// is a manifest read by tag there, whatever tagpin makes of the raw segments.
fn names_manifests_decoded(tail: &str) -> bool {
    tail.contains('%')
        && percent_encoding::percent_decode_str(tail)
            .decode_utf8_lossy()
            .split('/')
            .any(|s| s == "manifests")
}

fn classify_write(method: &Method, tail: &str, query: Option<&str>) -> Result<Route, RouteError> {
    let segments: Vec<&str> = tail.split('/').collect();
    let repo = |name: &[&str]| Repository::parse(&name.join("/"));
    let not_allowed = || Err(RouteError::MethodNotAllowed(method.clone()));
    match segments.as_slice() {
        [name @ .., "manifests", reference] if !name.is_empty() => {
            let repo = repo(name)?;
            let reference = Reference::parse(reference)?;
            match *method {
                Method::PUT => {
                    let mut tags = Vec::new();
                    if let Reference::Tag(t) = &reference {
                        tags.push(t.clone());
                    }
                    for t in parse_tag_query(query)? {
                        if !tags.contains(&t) {
                            tags.push(t);
                        }
                    }
                    Ok(Route::ManifestPut { repo, reference, tags })
                }
                Method::DELETE => {
                    reject_any_query(query)?;
                    Ok(Route::ManifestDelete { repo, reference })
                }
                _ => not_allowed(),
            }
        }
        [name @ .., "blobs", "uploads", ""] if !name.is_empty() => match *method {
            Method::POST => Ok(Route::UploadStart { repo: repo(name)? }),
            _ => not_allowed(),
        },
        [name @ .., "blobs", "uploads", id] if !name.is_empty() => {
            let repo = repo(name)?;
            if !valid_upload_id(id) {
                return Err(RouteError::UploadId(id.chars().take(300).collect()));
            }
            match *method {
                Method::PATCH | Method::PUT | Method::DELETE => Ok(Route::UploadSession { repo }),
                _ => not_allowed(),
            }
        }
        [name @ .., "blobs", digest] if !name.is_empty() => {
            let repo = repo(name)?;
            let digest = Digest::parse(digest)?;
            match *method {
                Method::DELETE => Ok(Route::BlobDelete { repo, digest }),
                _ => not_allowed(),
            }
        }
        [name @ .., "tags", "list"] | [name @ .., "referrers", _] if !name.is_empty() => {
            repo(name)?;
            not_allowed()
        }
        [""] | ["_catalog"] => not_allowed(),
        // tagpin's history endpoint is read-only.
        [name @ .., "_tagpin", "history", _] if !name.is_empty() => not_allowed(),
        _ => Err(RouteError::UnknownEndpoint),
    }
}

/// Upload ids are opaque to clients, but the ones registries issue are URL-safe tokens;
/// anything else in a write path is refused rather than forwarded.
fn valid_upload_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_UPLOAD_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
}

/// The `tag` parameters of a manifest PUT (end-7b). The upstream decodes the query with
/// its own rules (Go's `url.ParseQuery` decodes `%74ag` to `tag` and `+` to a space), so
/// tagpin accepts only the one form both sides read alike: `tag=<tag>` pairs joined by `&`,
/// with no escapes. Any other parameter is refused: the upstream may ignore it, but
/// tagpin cannot prove that it does.
fn parse_tag_query(query: Option<&str>) -> Result<Vec<Tag>, RouteError> {
    let Some(q) = query else { return Ok(Vec::new()) };
    if q.is_empty() {
        return Ok(Vec::new());
    }
    q.split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("tag", value)) => Ok(Tag::parse(value)?),
            _ => Err(RouteError::QueryParameter(param_name(pair))),
        })
        .collect()
}

fn reject_any_query(query: Option<&str>) -> Result<(), RouteError> {
    match query {
        None | Some("") => Ok(()),
        Some(q) => Err(RouteError::QueryParameter(param_name(
            q.split('&').next().unwrap_or(""),
        ))),
    }
}

/// The name of a `name=value` pair, shortened, without its value.
fn param_name(pair: &str) -> String {
    pair.split('=').next().unwrap_or("").chars().take(64).collect()
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
