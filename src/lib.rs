//! tagpin: a reverse proxy for OCI/Docker registries that pins every tag to the first
//! digest pushed under it.
//!
//! A request's path through the crate:
//! 1. [`server`] accepts the connection (limit, header timeout, graceful drain);
//! 2. [`handler::handle`] asks [`route::classify`] what the request is;
//! 3. reads, blobs and uploads are streamed through [`upstream`] untouched;
//! 4. a manifest push naming a protected tag ([`policy::Protection`]) is read by
//!    [`manifest`], hashed, decided by [`policy::decide_push`] against [`store`], and
//!    forwarded; the pin is committed once the upstream accepted it;
//! 5. every decision is an audit event ([`telemetry`]); every error is one OCI error
//!    response ([`error`]).

#![forbid(unsafe_code)]

pub mod app;
pub mod body;
pub mod cli;
pub mod config;
pub mod error;
pub mod handler;
pub mod locks;
pub mod manifest;
pub mod oci;
pub mod policy;
pub mod route;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

pub use app::{App, StartError};
pub use config::Config;

/// Bind, build the state and serve until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let addr = config.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let app = Arc::new(App::new(config)?);
    tracing::info!(
        addr = %local,
        upstream = %app.config.upstream,
        exclude = ?app.config.exclude,
        version = env!("CARGO_PKG_VERSION"),
        "listening"
    );
    server::serve(app, listener, shutdown).await;
    Ok(())
}
