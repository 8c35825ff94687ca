//! The background side of the webhooks: the outbox's writer, one delivery task per
//! target, the trim that keeps the outbox to what some target still needs (and the
//! gauges), and the timers of releases that expire.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::deliver::{attempt, backoff};
use super::{Dropped, EventKind, Outcome, ReleaseTimer};
use crate::app::Shared;
use crate::config::{NotifyConfig, NotifyTarget};
use crate::store::{now_millis, OutboxEvent, PinStore, StoreError};

/// How often an idle delivery task looks for events other replicas appended.
const POLL: Duration = Duration::from_millis(500);

/// How long a cursor some replica created or leased keeps its events from the trim of a
/// replica whose targets do not name it (a rolling reload adds a target to one replica
/// before the others).
const IN_USE: Duration = Duration::from_secs(600);

/// The longest a delivery task waits between retries without renewing its lease (every
/// lease is longer: it has 30 s on top of the target's timeout).
const RENEW: Duration = Duration::from_secs(10);

/// Run the webhooks until `stop`; then the events still queued are appended before it
/// returns, so a clean shutdown loses none.
pub async fn run(shared: Arc<Shared>, stop: impl Future<Output = ()>) {
    let Some(mut queued) = shared.notify.queued.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return;
    };
    let mut deliveries: HashMap<String, (u64, JoinHandle<()>)> = HashMap::new();
    let mut in_force: Option<Arc<NotifyConfig>> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u64;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            Some(first) = queued.recv() => {
                let mut batch = vec![first];
                while batch.len() < 256 {
                    match queued.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(_) => break,
                    }
                }
                append(&shared, batch).await;
            }
            _ = tick.tick() => {
                let config = shared.notify.config();
                if in_force.as_ref().is_none_or(|c| !Arc::ptr_eq(c, &config)) {
                    reconcile(&shared, &config, &mut deliveries);
                    in_force = Some(config);
                }
                if ticks.is_multiple_of(5) {
                    trim(&shared).await;
                }
                fire_timers(&shared).await;
                ticks += 1;
            }
        }
    }
    for (_, (_, task)) in deliveries.drain() {
        task.abort();
    }
    queued.close();
    let mut rest = Vec::new();
    while let Ok(e) = queued.try_recv() {
        rest.push(e);
    }
    if !rest.is_empty() {
        append(&shared, rest).await;
    }
}

/// Put the targets of `config` in delivery: a target whose entry (and the global limits)
/// did not change keeps its task, so a reload interrupts no delivery it does not have
/// to (an interrupted one is sent again, with the same id).
fn reconcile(
    shared: &Arc<Shared>,
    config: &Arc<NotifyConfig>,
    deliveries: &mut HashMap<String, (u64, JoinHandle<()>)>,
) {
    let key = |t: &NotifyTarget| {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (t.fingerprint, config.max_age, config.retry_max_interval).hash(&mut h);
        h.finish()
    };
    deliveries.retain(|name, (k, task)| {
        let keep = config.targets.iter().any(|t| &t.name == name && key(t) == *k);
        if !keep {
            task.abort();
        }
        keep
    });
    for target in &config.targets {
        if !deliveries.contains_key(&target.name) {
            let task = tokio::spawn(deliver_target(Arc::clone(shared), Arc::clone(config), target.clone()));
            deliveries.insert(target.name.clone(), (key(target), task));
        }
    }
}

/// Run `f` on the store off the async workers.
async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&dyn PinStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = Arc::clone(&shared.store);
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("outbox task failed: {e}"))))
}

fn no_outbox() -> StoreError {
    StoreError::Unavailable("this store keeps no webhook outbox".into())
}

/// Append a batch, trying again while the store is unavailable (the events wait in
/// memory meanwhile, and a shutdown in that time loses them).
async fn append(shared: &Arc<Shared>, batch: Vec<OutboxEvent>) {
    let batch = Arc::new(batch);
    let mut failures = 0u32;
    loop {
        let config = shared.notify.config();
        let names: Vec<String> = config.targets.iter().map(|t| t.name.clone()).collect();
        let max = config.outbox_max_events;
        let events = Arc::clone(&batch);
        match blocking(shared, move |s| {
            s.outbox().ok_or_else(no_outbox)?.outbox_append(&events, &names, max)
        })
        .await
        {
            Ok(dropped) => {
                if dropped > 0 {
                    tracing::warn!(
                        dropped,
                        max,
                        "webhook outbox full: the oldest undelivered events were dropped"
                    );
                    shared.metrics.notify.dropped(Dropped::OutboxFull, dropped);
                }
                shared.notify.appended.send_modify(|n| *n += 1);
                return;
            }
            Err(e) => {
                if failures == 0 {
                    tracing::error!(error = %e, events = batch.len(), "cannot write webhook events to the outbox; trying again");
                }
                failures += 1;
                tokio::time::sleep(backoff(failures.min(5), Duration::from_secs(10), None, 0)).await;
            }
        }
    }
}

async fn trim(shared: &Arc<Shared>) {
    let names: Vec<String> = shared.notify.config().targets.iter().map(|t| t.name.clone()).collect();
    match blocking(shared, move |s| {
        s.outbox().ok_or_else(no_outbox)?.outbox_trim(&names, IN_USE)
    })
    .await
    {
        Ok(stats) => {
            let age = stats.oldest_ms.map_or(0, |t| now_millis().saturating_sub(t) / 1000);
            shared.metrics.notify.outbox(stats.pending, age);
        }
        Err(e) => tracing::debug!(error = %e, "webhook outbox not trimmed"),
    }
}

/// Announce the releases that expired unused.
async fn fire_timers(shared: &Arc<Shared>) {
    let now = now_millis();
    let due = match blocking(shared, move |s| s.outbox().ok_or_else(no_outbox)?.outbox_due(now, 64)).await {
        Ok(due) => due,
        Err(_) => return,
    };
    for timer in due {
        let key = timer.key.clone();
        let payload: Option<ReleaseTimer> = serde_json::from_str(&timer.payload).ok();
        let still = match &payload {
            Some(p) => {
                let p = p.clone();
                blocking(shared, move |s| {
                    let (Ok(repo), Ok(tag)) = (
                        crate::oci::Repository::parse(&p.repository),
                        crate::oci::Tag::parse(&p.tag),
                    ) else {
                        return Ok(false);
                    };
                    let record = s.record(&repo, &tag)?;
                    Ok(p.expired_in(&record))
                })
                .await
            }
            None => Ok(false),
        };
        match still {
            Ok(true) => {
                let p = payload.expect("checked above");
                crate::telemetry::release_expired_event(&shared.metrics, &p);
                shared.notify.enqueue_with_id(
                    p.event_id(),
                    EventKind::ReleaseExpired,
                    Some(&p.repository),
                    Some(&p.tag),
                    p.data(),
                );
            }
            Ok(false) => {}
            // Kept: the next tick asks again.
            Err(_) => continue,
        }
        let _ = blocking(shared, move |s| {
            s.outbox().ok_or_else(no_outbox)?.outbox_unschedule(&key)
        })
        .await;
    }
}

/// Deliver `target`'s events in order for as long as this process holds its lease.
async fn deliver_target(shared: Arc<Shared>, config: Arc<NotifyConfig>, target: NotifyTarget) {
    let name = target.name.clone();
    let holder = shared.notify.holder.clone();
    let lease = config.retry_max_interval + target.timeout + Duration::from_secs(30);
    let mut appended = shared.notify.appended.subscribe();
    loop {
        let (n, h) = (name.clone(), holder.clone());
        let cursor = match blocking(&shared, move |s| {
            s.outbox().ok_or_else(no_outbox)?.outbox_lease(&n, &h, lease)
        })
        .await
        {
            Ok(Some(c)) => c,
            Ok(None) | Err(_) => {
                tokio::time::sleep(POLL * 4).await;
                continue;
            }
        };
        let events = match blocking(&shared, move |s| {
            s.outbox().ok_or_else(no_outbox)?.outbox_after(cursor, 64)
        })
        .await
        {
            Ok(e) => e,
            Err(_) => {
                tokio::time::sleep(POLL * 4).await;
                continue;
            }
        };
        if events.is_empty() {
            let _ = tokio::time::timeout(POLL, appended.changed()).await;
            continue;
        }
        for (seq, event) in events {
            if target.wants(event.kind, event.repository.as_deref())
                && !deliver_one(&shared, &config, &target, &event, lease).await
            {
                // The lease went to another replica while this one retried.
                break;
            }
            let (n, h) = (name.clone(), holder.clone());
            // The ack renews the lease: a batch of slow answers keeps its target.
            match blocking(&shared, move |s| {
                s.outbox().ok_or_else(no_outbox)?.outbox_ack(&n, &h, seq, lease)
            })
            .await
            {
                Ok(true) => {}
                // Another replica holds the target now, or the store failed: start over
                // from the cursor it keeps.
                _ => break,
            }
        }
    }
}

/// Attempt `event` until it is delivered, refused, or too old (`true`), or until this
/// process no longer holds the target's lease (`false`: the holder sends it).
async fn deliver_one(
    shared: &Arc<Shared>,
    config: &NotifyConfig,
    target: &NotifyTarget,
    event: &OutboxEvent,
    lease: Duration,
) -> bool {
    let metrics = &shared.metrics.notify;
    let mut failures = 0u32;
    loop {
        let age = Duration::from_millis(now_millis().saturating_sub(event.time_ms));
        if age > config.max_age {
            tracing::warn!(target_name = %target.name, event = %event.id, kind = event.kind.as_str(), "webhook event dropped: undelivered for notify_max_age");
            metrics.dropped(Dropped::MaxAge, 1);
            return true;
        }
        let answer = attempt(&shared.notify.client, target, event, &shared.notify.source).await;
        metrics.delivery(&target.name, answer.outcome);
        match answer.outcome {
            Outcome::Delivered => return true,
            Outcome::Rejected => {
                tracing::warn!(target_name = %target.name, event = %event.id, kind = event.kind.as_str(), error = answer.error.as_deref().unwrap_or(""), "webhook event refused by its target; not retried");
                metrics.dropped(Dropped::Rejected, 1);
                return true;
            }
            Outcome::Retry => {
                let mut random = [0u8; 4];
                let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
                let wait = backoff(
                    failures,
                    config.retry_max_interval,
                    answer.retry_after,
                    u32::from_be_bytes(random),
                );
                tracing::info!(target_name = %target.name, event = %event.id, error = answer.error.as_deref().unwrap_or(""), wait_ms = wait.as_millis() as u64, "webhook delivery failed; trying again");
                failures += 1;
                if !wait_holding(shared, &target.name, wait, lease).await {
                    return false;
                }
            }
        }
    }
}

/// Wait `wait`, renewing `target`'s lease at least every [`RENEW`] (a `Retry-After` may
/// ask for longer than a lease lasts); `false` when another holder took it. A store that
/// fails to answer leaves the lease to run its course.
async fn wait_holding(shared: &Arc<Shared>, target: &str, mut wait: Duration, lease: Duration) -> bool {
    loop {
        let step = wait.min(RENEW);
        tokio::time::sleep(step).await;
        wait -= step;
        let (n, h) = (target.to_owned(), shared.notify.holder.clone());
        let held = blocking(shared, move |s| {
            s.outbox().ok_or_else(no_outbox)?.outbox_lease(&n, &h, lease)
        })
        .await;
        match held {
            Ok(None) => return false,
            Ok(Some(_)) | Err(_) if wait.is_zero() => return true,
            _ => {}
        }
    }
}
