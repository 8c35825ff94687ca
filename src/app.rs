//! The shared state every request handler sees.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::Config;
use crate::error::ProxyError;
use crate::locks::DecisionLocks;
use crate::policy::Protection;
use crate::store::{PinStore, SledStore, StoreError, UnavailableStore};
use crate::upstream::{Upstream, UpstreamError};

pub struct App {
    pub config: Config,
    pub upstream: Upstream,
    pub store: Arc<dyn PinStore>,
    pub protection: Protection,
    pub locks: DecisionLocks,
    request_seq: AtomicU64,
    request_prefix: String,
}

/// What can stop tagpin from starting at all.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("exclude globs: {0}")]
    Policy(#[from] globset::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

impl App {
    /// Build the state. A store that cannot be opened does not stop tagpin: reads keep
    /// flowing and every write that needs a decision is refused with 503 (fail closed),
    /// and `/readyz` says so.
    pub fn new(config: Config) -> Result<Self, StartError> {
        let store: Arc<dyn PinStore> = match SledStore::open(&config.data_dir) {
            Ok(s) => {
                tracing::info!(data_dir = %config.data_dir.display(), pins = s.len(), "pin store opened");
                Arc::new(s)
            }
            Err(e) => {
                tracing::error!(data_dir = %config.data_dir.display(), error = %e, "pin store unavailable: refusing every write that needs a decision");
                Arc::new(UnavailableStore { reason: e.to_string() })
            }
        };
        Self::with_store(config, store)
    }

    pub fn with_store(config: Config, store: Arc<dyn PinStore>) -> Result<Self, StartError> {
        let protection = Protection::new(&config.exclude)?;
        let upstream = Upstream::new(&config)?;
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(Self {
            config,
            upstream,
            store,
            protection,
            locks: DecisionLocks::default(),
            request_seq: AtomicU64::new(0),
            request_prefix: format!("{started:x}"),
        })
    }

    /// A request id unique within this process's lifetime and across restarts.
    pub fn next_request_id(&self) -> String {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:x}", self.request_prefix)
    }

    /// Run a store call off the async workers: sled's flush is a blocking fsync.
    pub async fn store_call<T, F>(&self, f: F) -> Result<T, ProxyError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn PinStore) -> Result<T, StoreError> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(&*store))
            .await
            .map_err(|e| ProxyError::Internal(format!("store task failed: {e}")))?
            .map_err(ProxyError::Store)
    }
}
