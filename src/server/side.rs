//! The accept loop of a side listener (the admin API, the metrics listener): a
//! connection limit of its own, beyond which connections wait in the kernel's accept
//! queue; the registry port's HTTP/1.1 settings (header timeout and size bound) and
//! write deadline; and on shutdown a drain for the grace period.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::io::WriteDeadline;
use crate::app::Shared;
use crate::body::Body;

/// Serve `answer` on `listener`, at most `limit` connections at once, until `shutdown`
/// resolves. `what` names the listener in log lines.
pub async fn serve<F, Fut>(
    shared: Arc<Shared>,
    listener: TcpListener,
    limit: usize,
    what: &'static str,
    shutdown: impl Future<Output = ()>,
    answer: F,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let http = super::http1_builder(&shared.config);
    let limit = Arc::new(Semaphore::new(limit));
    let write_idle = shared.config.timeouts.body_idle;
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&limit).acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let answer = answer.clone();
        let conn = http.serve_connection(
            TokioIo::new(WriteDeadline::new(stream, write_idle)),
            service_fn(move |req| {
                let answer = answer.clone();
                async move { Ok::<_, Infallible>(answer(req, peer).await) }
            }),
        );
        let watched = graceful.watch(conn);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                super::connection_error(&shared.metrics, peer, &e);
            }
            drop(permit);
        });
    }
    let grace = shared.config.timeouts.shutdown_grace;
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
}
