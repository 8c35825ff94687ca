//! The `/readyz` answer, cached for a moment and shared by every worker.
//!
//! Readiness costs an upstream round trip and a durable store write (an fsync), and the
//! endpoint needs no credentials: answered afresh each time, a flood of probes would slow
//! every push behind the same disk. One answer per [`READY_TTL`] is fresh enough for any
//! load balancer, and callers that arrive while a probe runs wait for its answer instead
//! of starting their own.
//!
//! Each probe also sets the `tagpin_ready{component}` gauges, and [`refresh`] probes in
//! the background when nobody asked for [`REFRESH_EVERY`], so the gauges stay current for
//! the alert rules without a load balancer calling `/readyz`.

use std::future::Future;
use std::time::Duration;

use crate::app::App;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// How long a readiness answer is reused.
pub const READY_TTL: Duration = Duration::from_secs(1);

/// How old the last answer may grow before [`refresh`] probes by itself.
pub const REFRESH_EVERY: Duration = Duration::from_secs(15);

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
        self.get_within(self.ttl, probe).await
    }

    /// The cached answer while it is younger than `max_age`, else `probe`'s (then cached).
    pub async fn get_within<F, Fut>(&self, max_age: Duration, probe: F) -> Readiness
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Readiness>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = *last {
            if at.elapsed() < max_age {
                return answer;
            }
        }
        let answer = probe().await;
        *last = Some((Instant::now(), answer));
        answer
    }
}

/// The readiness `/readyz` answers: cached, or probed now.
pub async fn current(app: &App) -> Readiness {
    app.readiness.get(|| probe(app)).await
}

/// Probe the upstream (`GET /v2/`, at most 5 s) and the store (a read and a durable
/// write), and set the gauges to what was found.
async fn probe(app: &App) -> Readiness {
    let upstream = match tokio::time::timeout(Duration::from_secs(5), app.upstream.probe()).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: upstream unavailable");
            false
        }
        Err(_) => {
            tracing::warn!("readiness: upstream probe timed out");
            false
        }
    };
    let store = match app.store_call(|s| s.check()).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "readiness: pin store unavailable");
            false
        }
    };
    let found = Readiness { upstream, store };
    app.metrics.health.ready(&found, app.config.database.is_some());
    found
}

/// Every `every`, probe unless an answer younger than `every` is cached (a load
/// balancer's `/readyz` calls then keep the gauges current at no extra cost), until
/// `stop`. The first probe is one period after start, not at start: at start the
/// `/readyz` calls of whatever waits for tagpin come soon enough.
pub async fn refresh(app: App, every: Duration, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = &mut stop => return,
        }
        app.readiness.get_within(every, || probe(&app)).await;
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
    async fn the_background_refresh_reuses_any_answer_younger_than_its_period() {
        let cache = ReadyCache::default();
        let probes = AtomicUsize::new(0);
        let probe = || async {
            probes.fetch_add(1, Ordering::SeqCst);
            READY
        };
        cache.get(probe).await;
        tokio::time::advance(REFRESH_EVERY - Duration::from_millis(1)).await;
        cache.get_within(REFRESH_EVERY, probe).await;
        assert_eq!(probes.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_millis(1)).await;
        cache.get_within(REFRESH_EVERY, probe).await;
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
