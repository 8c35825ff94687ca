//! The admin API: a second listener, off unless `--admin-listen` is set, never on the
//! registry port. Every request needs `Authorization: Bearer <token>` ([`auth`]); paths are
//! versioned under `/admin/v1/` ([`routes`]); answers are JSON (JSON lines for export and
//! seed progress). It calls the policy and the store, never the proxy handlers, and every
//! change it makes is an audit event naming the token's name.
//!
//! Errors go through the one mapping of [`crate::error::ProxyError`], so a refused admin
//! request gets the same OCI error envelope as a refused push.

pub mod auth;
mod claims;
pub mod drift;
mod history;
mod import;
pub mod log;
mod notify;
mod pins;
pub mod routes;
mod seed;
pub mod verify;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use self::auth::Tokens;
use self::routes::{AdminRoute, RouteProblem};
use crate::app::App;
use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::telemetry::Requester;

/// The admin side's state: the proxy's shared state (through an `App` on the admin's own
/// runtime, for its upstream client) and the token digests.
pub struct Admin {
    pub app: Arc<App>,
    tokens: Tokens,
}

impl Admin {
    pub fn new(app: App) -> Self {
        let tokens = Tokens::new(app.config.admin.as_ref().map_or(&[][..], |a| &a.tokens));
        Self {
            app: Arc::new(app),
            tokens,
        }
    }
}

/// Serve the admin API until `shutdown` resolves. It has a connection limit of its own
/// (`admin_max_connections`), the registry port's header timeout and header size bound,
/// and the same deadline on writes a client does not read: unauthenticated connections
/// cannot take the descriptors the registry port needs.
pub async fn serve(admin: Arc<Admin>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let (shared, limit) = (admin.app.shared(), admin.app.config.admin_max_connections);
    crate::server::side::serve(shared, listener, limit, "admin", shutdown, move |req, peer| {
        let admin = Arc::clone(&admin);
        async move { handle(&admin, req, peer).await }
    })
    .await;
}

/// Answer one admin request. Never fails.
pub async fn handle(admin: &Arc<Admin>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let request_id = admin.app.next_request_id();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let result = match admin.tokens.authorize(req.headers()) {
        None => Err(ProxyError::AdminUnauthorized),
        Some(name) => {
            let who = Requester::admin(request_id.clone(), peer, name, req.headers());
            dispatch(admin, req, &who).await
        }
    };
    let resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            let unauthorized = matches!(e, ProxyError::AdminUnauthorized);
            // Never the request's headers: they carry the token.
            tracing::info!(request_id, %method, path, error = %e, "admin request refused");
            let mut resp = e.into_response(&request_id, StatusCode::CONFLICT);
            if unauthorized {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"tagpin-admin\""),
                );
            }
            resp
        }
    };
    tracing::debug!(request_id, %method, path, status = resp.status().as_u16(), "admin request");
    resp
}

async fn dispatch(admin: &Arc<Admin>, req: Request<Incoming>, who: &Requester) -> Result<Response<Body>, ProxyError> {
    let route = routes::classify(req.method(), req.uri().path(), req.uri().query()).map_err(|p| match p {
        RouteProblem::NotFound => ProxyError::AdminNotFound("no admin endpoint has this method and path".into()),
        RouteProblem::Bad(why) => ProxyError::AdminBadRequest(why),
    })?;
    let app = &admin.app;
    match route {
        AdminRoute::ListPins {
            repository,
            after,
            limit,
        } => pins::list(app, repository, after, limit).await,
        AdminRoute::PinsAt {
            repository,
            after,
            limit,
            at,
        } => history::pins_at(app, repository, after, limit, at).await,
        AdminRoute::ShowPin { repository, tag } => pins::show(app, repository, tag).await,
        AdminRoute::PinAt { repository, tag, at } => history::pin_at(app, repository, tag, at).await,
        AdminRoute::CreateRelease => pins::create_release(app, req, who).await,
        AdminRoute::CancelRelease { repository, tag } => pins::cancel_release(app, repository, tag, who).await,
        AdminRoute::Export => pins::export(app).await,
        AdminRoute::Import => import::import(app, req, who).await,
        AdminRoute::Seed(scope) => seed::start(Arc::clone(admin), scope, who.clone()).await,
        AdminRoute::Verify { scope, lines } => verify::verify(Arc::clone(app), scope, lines).await,
        AdminRoute::ListClaims { repository } => claims::list(app, repository).await,
        AdminRoute::ClearClaims => claims::clear(app, req, who).await,
        AdminRoute::LogCheckpoint => log::checkpoint(app).await,
        AdminRoute::NotifyTest { target } => notify::test(app, target.as_deref(), who).await,
        AdminRoute::LogEntries { start, end } => log::entries(app, start, end).await,
        AdminRoute::LogInclusion { index, size } => log::inclusion(app, index, size).await,
        AdminRoute::LogConsistency { from, to } => log::consistency(app, from, to).await,
    }
}

/// Upstream requests a seed or verify keeps in flight: what it asked for, at most the
/// server's `walk_concurrency`.
fn concurrency(app: &App, scope: &routes::WalkScope) -> usize {
    let most = app.config.walk_concurrency;
    scope.concurrency.map_or(most, |n| n.clamp(1, most))
}

/// One line of a JSON-lines answer.
fn line(value: &serde_json::Value) -> bytes::Bytes {
    let mut v = value.to_string().into_bytes();
    v.push(b'\n');
    v.into()
}

/// A JSON answer.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(body::full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
