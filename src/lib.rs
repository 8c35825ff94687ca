//! tagpin: a reverse proxy for OCI/Docker registries that pins every tag to the first
//! digest pushed under it.
//!
//! A request's path through the crate:
//! 1. [`server`] accepts the connection (limit, header timeout, graceful drain);
//! 2. [`handler::handle`] asks [`route::classify`] what the request is;
//! 3. reads, blobs and uploads are streamed through [`upstream`] untouched;
//! 4. a manifest push naming a protected tag ([`policy::Protection`]) is read by
//!    [`manifest`] (bounded in size, time and, across all connections, memory), hashed,
//!    decided by the per-tag state machine [`pinning`] (its transitions applied
//!    atomically by [`store`]), recorded, forwarded, and settled by the upstream's
//!    answer: the pin follows once the upstream accepted it;
//! 5. every decision is an audit event ([`telemetry`]); every error is one OCI error
//!    response ([`error`]).
//!
//! Beside the registry port, [`admin`] serves the admin API on a listener of its own;
//! its seed and verify (and the periodic drift check, [`admin::drift`]) walk the
//! upstream with tagpin's own credentials ([`upstream::own`]), never a client's, a page
//! at a time and with a bounded number of requests in flight ([`walk`]), as does the
//! adoption of a repository's tags before its first delete by digest.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod body;
pub mod cli;
pub mod config;
pub mod error;
pub mod handler;
pub mod locks;
pub mod log;
pub mod manifest;
pub mod metrics;
pub mod notify;
pub mod oci;
pub mod pinning;
pub mod policy;
pub mod readiness;
pub mod reload;
pub mod route;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod upstream;
pub mod walk;

use std::future::Future;
use std::sync::Arc;

pub use app::{App, Shared, StartError};
pub use config::Config;

/// Bind, build the state and serve until `shutdown` resolves.
///
/// Each worker is a thread with its own single-threaded runtime that accepts from the
/// shared listening socket and keeps its own upstream connection pool, the way nginx
/// runs one worker per core: a request is served start to finish on one thread, with no
/// cross-thread wake-ups. Pins, locks and the connection limit are shared.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let addr = config.listen;
    let bind = |source| StartError::Bind { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(bind)?;
    listener.set_nonblocking(true).map_err(bind)?;
    let local = listener.local_addr().map_err(bind)?;
    let workers = config.workers;
    // The address as bound (a configured port 0 is one now): what events name as source.
    let mut config = config;
    config.listen = local;
    // Opening the store may block (PostgreSQL's synchronous client connects and migrates
    // on its own runtime): off this async context.
    let shared = tokio::task::spawn_blocking(move || Shared::new(config))
        .await
        .map_err(|e| StartError::Worker {
            worker: 0,
            source: std::io::Error::other(e.to_string()),
        })??;
    let shared = Arc::new(shared);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut finished = Vec::with_capacity(workers);
    for worker in 0..workers {
        let listener = listener
            .try_clone()
            .map_err(|source| StartError::Worker { worker, source })?;
        let (shared, mut stop) = (Arc::clone(&shared), stop_rx.clone());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| StartError::Worker { worker, source })?;
        std::thread::Builder::new()
            .name(format!("tagpin-worker-{worker}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let app = Arc::new(App::worker(shared));
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => {
                            let stopped = async move {
                                let _ = stop.wait_for(|s| *s).await;
                            };
                            server::serve(app, listener, stopped).await;
                        }
                        Err(e) => tracing::error!(worker, error = %e, "worker cannot use the listener"),
                    }
                });
                let _ = done_tx.send(());
            })
            .map_err(|source| StartError::Worker { worker, source })?;
        finished.push(done_rx);
    }
    let admin_listener = match &shared.config.admin {
        Some(a) => {
            let bind = |source| StartError::Bind { addr: a.listen, source };
            let l = tokio::net::TcpListener::bind(a.listen).await.map_err(bind)?;
            let local = l.local_addr().map_err(bind)?;
            tracing::info!(addr = %local, tokens = a.tokens.len(), "admin API listening");
            Some(l)
        }
        None => None,
    };
    let admin_task = admin_listener.map(|l| {
        let admin = Arc::new(admin::Admin::new(App::worker(Arc::clone(&shared))));
        let mut stop = stop_rx.clone();
        tokio::spawn(admin::serve(admin, l, async move {
            let _ = stop.wait_for(|s| *s).await;
        }))
    });
    let metrics_task = match shared.config.metrics_listen {
        Some(at) => {
            let bind = |source| StartError::Bind { addr: at, source };
            let l = tokio::net::TcpListener::bind(at).await.map_err(bind)?;
            tracing::info!(addr = %l.local_addr().map_err(bind)?, "metrics listening");
            let app = Arc::new(App::worker(Arc::clone(&shared)));
            let mut stop = stop_rx.clone();
            Some(tokio::spawn(server::metrics::serve(app, l, async move {
                let _ = stop.wait_for(|s| *s).await;
            })))
        }
        None => None,
    };
    // On the main runtime, beside the admin listener: it needs no worker of its own.
    let drift_task = shared.config.drift_interval.map(|every| {
        let app = App::worker(Arc::clone(&shared));
        let mut stop = stop_rx.clone();
        tokio::spawn(admin::drift::run(app, every, async move {
            let _ = stop.wait_for(|s| *s).await;
        }))
    });
    // Keeps the `tagpin_ready` gauges current when nobody calls `/readyz`.
    let readiness_task = {
        let app = App::worker(Arc::clone(&shared));
        let mut stop = stop_rx.clone();
        tokio::spawn(readiness::refresh(app, readiness::REFRESH_EVERY, async move {
            let _ = stop.wait_for(|s| *s).await;
        }))
    };
    let recover_task = {
        let app = App::worker(Arc::clone(&shared));
        let mut stop = stop_rx.clone();
        tokio::spawn(handler::recover::run(app, async move {
            let _ = stop.wait_for(|s| *s).await;
        }))
    };
    if cfg!(feature = "bench-unlogged") {
        tracing::error!("this build keeps no history log (feature bench-unlogged): for benchmarks only");
    }
    let checkpoint_task = {
        let app = App::worker(Arc::clone(&shared));
        let every = shared.config.log.checkpoint_interval;
        let mut stop = stop_rx.clone();
        tokio::spawn(admin::log::ship_checkpoints(app, every, async move {
            let _ = stop.wait_for(|s| *s).await;
        }))
    };
    let notify_task = {
        let mut stop = stop_rx.clone();
        tokio::spawn(notify::run(Arc::clone(&shared), async move {
            let _ = stop.wait_for(|s| *s).await;
        }))
    };
    // Installed before "listening" is announced: until a handler exists, SIGHUP's default
    // action ends the process, and whoever reads that line may send one at once.
    let mut hangups = hangup_signals();
    tracing::info!(
        addr = %local,
        upstream = %shared.config.upstream,
        policy = %shared.policy().summary(),
        reads = shared.config.reads.as_str(),
        log_checkpoints = if shared.log_signer.signs() { "signed" } else { "unsigned" },
        workers,
        version = env!("CARGO_PKG_VERSION"),
        "listening"
    );
    drop(listener);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(()) = hangups.recv() => {
                let shared = Arc::clone(&shared);
                // Reading and validating the file is blocking work; requests keep being
                // served by the workers meanwhile.
                let _ = tokio::task::spawn_blocking(move || reload::reload_and_report(&shared)).await;
            }
        }
    }
    let _ = stop_tx.send(true);
    for done in finished {
        let _ = done.await;
    }
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    if let Some(task) = drift_task {
        let _ = task.await;
    }
    let _ = checkpoint_task.await;
    let _ = readiness_task.await;
    // After the workers: the events of their last decisions are appended before exit.
    let _ = notify_task.await;
    // Each of its writes is one atomic transition: stopping it between two loses nothing.
    recover_task.abort();
    Ok(())
}

/// SIGHUP deliveries, as a channel that never ends when signals are unavailable.
fn hangup_signals() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut s) => {
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    // A reload already queued covers this signal too.
                    let _ = tx.try_send(());
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; policy reloads are off");
            std::mem::forget(tx);
        }
    }
    #[cfg(not(unix))]
    std::mem::forget(tx);
    rx
}
