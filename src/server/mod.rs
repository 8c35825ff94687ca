//! The listener: accepts connections up to a limit, optionally terminates TLS, serves
//! HTTP/1.1 on each with a header-read timeout, a bound on header size and a deadline on
//! writes the client does not read ([`io`]), and on shutdown stops accepting and drains
//! in-flight requests for the grace period.

pub mod io;
pub mod metrics;
pub mod side;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::app::App;
use crate::config::Config;
use crate::handler;

/// Serve until `shutdown` resolves, then drain.
pub async fn serve(app: Arc<App>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let limit = Arc::clone(&app.connections);
    let graceful = GracefulShutdown::new();
    let http = http1_builder(&app.config);
    tokio::pin!(shutdown);
    loop {
        // Wait for a free connection slot first: beyond the limit, new connections wait
        // in the kernel's accept queue instead of costing memory here.
        let permit = tokio::select! {
            p = Arc::clone(&limit).acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (app, http, watcher) = (Arc::clone(&app), http.clone(), graceful.watcher());
        tokio::spawn(async move {
            match app.tls.clone() {
                None => serve_connection(app, http, stream, watcher, peer).await,
                Some(acceptor) => {
                    // The handshake gets the same budget as the request headers.
                    let limit = app.config.timeouts.client_header;
                    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serve_connection(app, http, tls, watcher, peer).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    let grace = app.config.timeouts.shutdown_grace;
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: no new connections, draining"
    );
    let started = tokio::time::Instant::now();
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing remaining connections"),
    }
    // Decisions whose client left still run on this worker; let them reach the
    // upstream's answer. Cut off anyway, they leave durable claims behind (fail closed).
    let left = app.detached.wait_idle(grace.saturating_sub(started.elapsed())).await;
    if left > 0 {
        tracing::warn!(
            left,
            "grace period over with decisions still waiting for the upstream; their tags stay reserved"
        );
    }
}

/// The HTTP/1.1 settings of both listeners: the header timeout (which also ends a
/// connection that sends nothing, and an idle keep-alive one) and the header size bound.
/// hyper's read buffer is capped at the same size, so a connection holds at most
/// `max_header_bytes` of unfinished headers and `max_connections` times that bounds them
/// all; beyond it hyper answers 431 and closes.
pub fn http1_builder(config: &Config) -> http1::Builder {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.timeouts.client_header)
        .max_header_size(config.max_header_bytes)
        .max_buf_size(config.max_header_bytes)
        .keep_alive(true);
    http
}

/// Serve HTTP/1.1 on one accepted (and, with TLS, decrypted) connection.
async fn serve_connection<I>(app: Arc<App>, http: http1::Builder, io: I, watcher: Watcher, peer: std::net::SocketAddr)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = io::WriteDeadline::new(io, app.config.timeouts.body_idle);
    let client = Arc::new(crate::telemetry::Peer::new(peer));
    let metrics_app = Arc::clone(&app);
    let svc = service_fn(move |req| {
        let (app, client) = (Arc::clone(&app), Arc::clone(&client));
        async move { Ok::<_, Infallible>(handler::handle(&app, req, &client).await) }
    });
    if let Err(e) = watcher.watch(http.serve_connection(TokioIo::new(io), svc)).await {
        connection_error(&metrics_app.metrics, peer, &e);
    }
}

/// Log how a connection ended with an error; count a client that stopped reading.
pub fn connection_error(metrics: &crate::metrics::Metrics, peer: std::net::SocketAddr, e: &hyper::Error) {
    if io::is_write_stall(e) {
        metrics.write_stall();
        tracing::debug!(%peer, error = %e, "connection closed: the client stopped reading");
    } else {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
