//! The `/readyz` answer, cached for a moment and shared by every worker.
//!
//! Readiness costs an upstream round trip and a durable store write (an fsync), and the
//! endpoint needs no credentials: answered afresh each time, a flood of probes would slow
//! every push behind the same disk. One answer per [`READY_TTL`] is fresh enough for any
//! load balancer, and callers that arrive while a probe runs wait for its answer instead
//! of starting their own.

use std::future::Future;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// How long a readiness answer is reused.
pub const READY_TTL: Duration = Duration::from_secs(1);

/// What `/readyz` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub upstream: bool,
    pub store: bool,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.upstream && self.store
    }
}

/// The last answer and when it was found. A tokio mutex, not a std one: it is held
/// across the probe, so that concurrent callers queue behind the one probe in flight.
/// It does not depend on a runtime, so workers on their own runtimes share it.
pub struct ReadyCache {
    ttl: Duration,
    last: Mutex<Option<(Instant, Readiness)>>,
}

impl Default for ReadyCache {
    fn default() -> Self {
        Self::new(READY_TTL)
    }
}

impl ReadyCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            last: Mutex::new(None),
        }
    }

    /// The cached answer while it is younger than the TTL, else `probe`'s (then cached).
    /// A probe cancelled midway (its client went away) caches nothing, and the next
    /// caller probes.
    pub async fn get<F, Fut>(&self, probe: F) -> Readiness
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Readiness>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = *last {
            if at.elapsed() < self.ttl {
                return answer;
            }
        }
        let answer = probe().await;
        *last = Some((Instant::now(), answer));
        answer
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    const READY: Readiness = Readiness {
        upstream: true,
        store: true,
    };

    #[tokio::test(start_paused = true)]
    async fn answers_are_reused_within_the_ttl_and_refreshed_after() {
        let cache = ReadyCache::default();
        let probes = AtomicUsize::new(0);
        let probe = || async {
            probes.fetch_add(1, Ordering::SeqCst);
            READY
        };
        for _ in 0..100 {
            assert_eq!(cache.get(probe).await, READY);
        }
        assert_eq!(probes.load(Ordering::SeqCst), 1);
        tokio::time::advance(READY_TTL).await;
        cache.get(probe).await;
        assert_eq!(probes.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_probe() {
        let cache = Arc::new(ReadyCache::default());
        let probes = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..20)
            .map(|_| {
                let (cache, probes) = (Arc::clone(&cache), Arc::clone(&probes));
                tokio::spawn(async move {
                    cache
                        .get(|| async {
                            probes.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            READY
                        })
                        .await
                })
            })
            .collect();
        for c in callers {
            assert_eq!(c.await.unwrap(), READY);
        }
        assert_eq!(probes.load(Ordering::SeqCst), 1);
    }
}
