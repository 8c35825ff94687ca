//! Request handling. [`handle`] never fails: every error becomes an OCI error response
//! in one place. `handle_inner` and the helpers return `Result` and use `?`.
//!
//! Reads, blob operations and uploads are forwarded as streams; only manifest pushes and
//! deletes that touch a protected tag stop for a decision (`push`, `delete`).

mod access;
mod adopt;
mod challenge;
mod delete;
mod history;
mod pins;
mod push;
mod reads;
pub mod recover;
mod refs;
mod refused;
mod release;
mod settle;

pub use reads::ReadReports;
pub use release::report_expired;

use std::sync::Arc;

use http::request::Parts;
use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::app::App;
use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::route::{self, Route};
use crate::telemetry::{Peer, Requester};
use crate::upstream::headers;

/// Answer one request. Never fails.
pub async fn handle(app: &Arc<App>, req: Request<Incoming>, client: &Peer) -> Response<Body> {
    let who = Requester::from_peer(app.next_request_id(), client, req.headers());
    let method = req.method().clone();
    // A `Uri` clone shares its bytes: the path for the log lines costs no copy.
    let uri = req.uri().clone();
    let path = uri.path();
    let resp = match handle_inner(app, req, &who).await {
        Ok(resp) => {
            tracing::debug!(request_id = %who.request_id, %method, path, status = resp.status().as_u16(), "request");
            resp
        }
        Err(e) => {
            let (status, code) = e.classify(app.config.refuse_status);
            match &e {
                ProxyError::Upstream(u) | ProxyError::OutcomeUnknown(u) => app.metrics.upstream_failure(u.kind()),
                ProxyError::Store(_) | ProxyError::PinNotRecorded(_) => app.metrics.store_failure(),
                ProxyError::Manifest(crate::manifest::ManifestError::Busy(e)) => {
                    app.metrics.manifest_memory_refused(e.scarce.as_str());
                }
                _ => {}
            }
            if status.is_server_error() {
                tracing::error!(request_id = %who.request_id, %method, path, status = status.as_u16(), error = %e, "request failed");
            } else {
                tracing::info!(request_id = %who.request_id, %method, path, status = status.as_u16(), code = code.as_str(), reason = %e, "request refused");
            }
            e.into_response(&who.request_id, app.config.refuse_status)
        }
    };
    app.metrics.response(resp.status());
    resp
}

/// `GET /metrics`: the Prometheus text, on the registry port or the metrics listener.
pub fn metrics_response(app: &App) -> Response<Body> {
    let open = app.config.max_connections - app.connections.available_permits();
    let mut resp = Response::new(body::full(app.metrics.render(open, app.store.durable_writes())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

async fn handle_inner(app: &Arc<App>, req: Request<Incoming>, who: &Requester) -> Result<Response<Body>, ProxyError> {
    route::check_method_override(req.headers())?;
    let route = route::classify(req.method(), req.uri())?;
    let (parts, incoming) = req.into_parts();
    let body = body::with_idle_timeout(incoming, app.config.timeouts.body_idle);
    match route {
        Route::Health => Ok(plain(StatusCode::OK, "ok\n")),
        // With a metrics listener of its own, the registry port has no /metrics.
        Route::Metrics if app.config.metrics_listen.is_some() => Err(route::RouteError::NotFound.into()),
        Route::Metrics => Ok(metrics_response(app)),
        // The decision paths are boxed: their state machines are kilobytes, and hyper
        // keeps room for one request's future on every connection, idle ones included.
        // Reads stay inline and allocation-free; a push pays one allocation.
        Route::ManifestPut { repo, reference, tags } => {
            Box::pin(push::manifest_put(
                app,
                parts,
                body,
                push::Push { repo, reference, tags },
                who,
            ))
            .await
        }
        Route::ManifestDelete { repo, reference } => {
            Box::pin(delete::manifest_delete(app, parts, body, repo, reference, who)).await
        }
        Route::BlobDelete { repo, digest } => Box::pin(delete::blob_delete(app, parts, body, repo, digest, who)).await,
        Route::Ready => Ok(Box::pin(ready(app)).await),
        Route::ManifestRead { repo, reference } => reads::manifest_read(app, parts, body, repo, reference, who).await,
        Route::EncodedManifestRead => reads::encoded(app, parts, body, who).await,
        Route::TagHistory { repo, tag } => Box::pin(history::tag_history(app, &parts, repo, tag, who)).await,
        Route::Read | Route::UploadStart { .. } | Route::UploadSession { .. } => forward(app, parts, body, who).await,
    }
}

/// Forward a request and stream the answer back. A client's `Expect: 100-continue` on a
/// body not yet read is the upstream's to answer (RFC 9110 10.1.1, `upstream::expect`).
async fn forward(app: &App, parts: Parts, body: Body, who: &Requester) -> Result<Response<Body>, ProxyError> {
    // The client's origin is only needed to rewrite a Location or Link: keep the Host
    // value (a reference count) and build the origin's text only for such an answer.
    let host = parts.headers.get(header::HOST).cloned();
    use crate::upstream::expect;
    let expects = expect::expects_continue(&parts.headers) && !http_body::Body::is_end_stream(&body);
    let mut req = upstream_request(app, parts, body, who);
    let expectation = expects.then(|| expect::forward(&mut req));
    let upstream = app.upstream.send(req).await?;
    let rewrites = upstream.headers().contains_key(header::LOCATION) || upstream.headers().contains_key(header::LINK);
    let origin = rewrites
        .then(|| headers::client_origin_of_host(app.config.public_url.as_ref(), host.as_ref(), app.client_proto()))
        .flatten();
    let resp = to_client(app, upstream, origin.as_deref());
    Ok(match expectation {
        Some(e) => e.answered(resp),
        None => resp,
    })
}

/// The origin this client used to reach tagpin (or the configured public URL).
fn client_origin(app: &App, headers: &http::HeaderMap) -> Option<String> {
    headers::client_origin(app.config.public_url.as_ref(), headers, app.client_proto())
}

/// The upstream request for a client's request: same method, path, query and body.
fn upstream_request(app: &App, parts: Parts, body: Body, who: &Requester) -> Request<Body> {
    let mut headers = parts.headers;
    headers::to_upstream(
        &mut headers,
        &who.client_ip,
        app.client_proto(),
        app.config.public_url.as_ref(),
    );
    // Whatever the client expected was of tagpin, and hyper meets it when the body is
    // first read; `forward` passes an expectation on while the body is still unread.
    headers.remove(header::EXPECT);
    let target = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let mut req = Request::new(body);
    *req.method_mut() = parts.method;
    *req.uri_mut() = app.upstream.uri_for_parsed(target);
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    req
}

/// The client's response for an upstream response: hop-by-hop headers dropped, upstream
/// locations and links pointed back at tagpin (relative when the client's origin is
/// unknown), body streamed behind the idle timeout.
fn to_client(app: &App, resp: Response<Incoming>, client_origin: Option<&str>) -> Response<Body> {
    let (mut parts, incoming) = resp.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers);
    headers::rewrite_locations(&mut parts.headers, app.upstream.origin(), client_origin);
    Response::from_parts(parts, body::with_idle_timeout(incoming, app.config.timeouts.body_idle))
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut resp = Response::new(body::full(text));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// `/readyz`: 200 when both the upstream answers and the store can write durably. The
/// answer is cached for a second across workers (see [`crate::readiness`]).
async fn ready(app: &App) -> Response<Body> {
    let found = crate::readiness::current(app).await;
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    let text = serde_json::json!({"upstream": word(found.upstream), "store": word(found.store)}).to_string();
    let mut resp = Response::new(body::full(text));
    *resp.status_mut() = if found.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
