//! The memory budget of manifest bodies: one count of bytes shared by every worker, so
//! the manifests being read or held for forwarding cannot together take more memory than
//! the operator allowed, however many connections send them.
//!
//! Stalled large bodies are the cheap way to fill any such budget, so one eighth of it is
//! kept for small bodies (at most [`SMALL_BODY_BYTES`]), which real pushes nearly always
//! are: they still land while large bodies hold the rest. A body that cannot get its
//! memory within the configured wait is refused with a retryable error rather than queued
//! without end.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bodies up to this size may draw on the small reserve. A single-platform image
/// manifest is a few KiB; 64 KiB holds an index of well over a hundred platforms.
pub const SMALL_BODY_BYTES: usize = 64 * 1024;

/// The small reserve is `budget / SMALL_RESERVE_DIVISOR`.
const SMALL_RESERVE_DIVISOR: usize = 8;

/// No memory came free within the wait.
#[derive(Debug, thiserror::Error)]
#[error("no manifest memory came free for {wanted} more bytes within {waited:?}")]
pub struct Exhausted {
    pub wanted: usize,
    pub waited: Duration,
}

/// The shared budget. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Budget {
    /// For bodies of at most `SMALL_BODY_BYTES`, which may also use `large`.
    small: Arc<Semaphore>,
    /// For every body. One permit is one byte.
    large: Arc<Semaphore>,
    wait: Duration,
}

impl Budget {
    /// A budget of `total_bytes`, of which an eighth is the small reserve. A body waits at
    /// most `wait` for each grant.
    pub fn new(total_bytes: usize, wait: Duration) -> Self {
        let small = total_bytes / SMALL_RESERVE_DIVISOR;
        Self {
            small: Arc::new(Semaphore::new(small)),
            large: Arc::new(Semaphore::new(total_bytes - small)),
            wait,
        }
    }

    /// The largest single body the budget can ever grant; config validation keeps
    /// `max_manifest_bytes` within it.
    pub fn largest_grant(total_bytes: usize) -> usize {
        total_bytes - total_bytes / SMALL_RESERVE_DIVISOR
    }

    /// An empty reservation to grow as a body arrives.
    pub fn reservation(&self) -> Reservation {
        Reservation {
            budget: self.clone(),
            small: None,
            large: None,
        }
    }

    /// Bytes not granted to any body right now.
    pub fn available(&self) -> usize {
        self.small.available_permits() + self.large.available_permits()
    }
}

/// Memory granted to one body; it returns to the budget when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Budget,
    small: Option<OwnedSemaphorePermit>,
    large: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    pub fn bytes(&self) -> usize {
        [&self.small, &self.large]
            .into_iter()
            .flatten()
            .map(OwnedSemaphorePermit::num_permits)
            .sum()
    }

    /// Grow the grant to at least `total` bytes, waiting at most the budget's wait. On
    /// failure the grant is left as it was.
    pub async fn grow_to(&mut self, total: usize) -> Result<(), Exhausted> {
        let wanted = total.saturating_sub(self.bytes());
        if wanted == 0 {
            return Ok(());
        }
        let waited = self.budget.wait;
        let exhausted = Exhausted { wanted, waited };
        // Grants are at most `max_manifest_bytes` (64 MiB), far below u32::MAX.
        let Ok(n) = u32::try_from(wanted) else {
            return Err(exhausted);
        };
        let (small, large) = (Arc::clone(&self.budget.small), Arc::clone(&self.budget.large));
        let acquire = async move {
            if total <= SMALL_BODY_BYTES {
                // Tokio's semaphore is first-come first-served: a small body queued
                // behind a large one in `large` would wait for it, so it also waits on
                // its own reserve and takes whichever grants first (the reserve if both).
                tokio::select! {
                    biased;
                    p = small.acquire_many_owned(n) => (true, p),
                    p = large.acquire_many_owned(n) => (false, p),
                }
            } else {
                (false, large.acquire_many_owned(n).await)
            }
        };
        let (from_small, permit) = tokio::time::timeout(waited, acquire).await.map_err(|_| exhausted)?;
        let permit = permit.expect("the budget's semaphores are never closed");
        let slot = if from_small { &mut self.small } else { &mut self.large };
        match slot {
            Some(held) => held.merge(permit),
            None => *slot = Some(permit),
        }
        Ok(())
    }

    /// The body's bytes, still counted against the budget until the last clone is
    /// dropped: a manifest keeps its memory while it waits for the tag lock and is
    /// forwarded, so the budget must cover that time too.
    pub fn hold(self, bytes: Vec<u8>) -> Bytes {
        debug_assert!(bytes.capacity() <= self.bytes().max(bytes.len()));
        Bytes::from_owner(Held {
            bytes,
            _reservation: self,
        })
    }
}

struct Held {
    bytes: Vec<u8>,
    _reservation: Reservation,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(2);

    /// 8 MiB: a 1 MiB small reserve and 7 MiB for everyone.
    fn budget() -> Budget {
        Budget::new(8 << 20, WAIT)
    }

    #[tokio::test(start_paused = true)]
    async fn grants_add_up_and_return_on_drop() {
        let b = budget();
        let mut r = b.reservation();
        r.grow_to(100).await.unwrap();
        r.grow_to(3 << 20).await.unwrap();
        r.grow_to(1000).await.unwrap();
        assert_eq!(r.bytes(), 3 << 20);
        assert_eq!(b.available(), (8 << 20) - (3 << 20));
        drop(r);
        assert_eq!(b.available(), 8 << 20);
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_body_waits_then_is_refused_when_the_budget_is_held() {
        let b = budget();
        let mut holder = b.reservation();
        holder.grow_to(7 << 20).await.unwrap();
        let mut late = b.reservation();
        let started = tokio::time::Instant::now();
        let e = late.grow_to(1 << 20).await.unwrap_err();
        assert_eq!(e.wanted, 1 << 20);
        assert!(started.elapsed() >= WAIT);
        assert_eq!(late.bytes(), 0, "a refused grant leaves nothing held");
    }

    #[tokio::test(start_paused = true)]
    async fn small_bodies_use_the_reserve_while_large_ones_hold_the_rest() {
        let b = budget();
        let mut large = b.reservation();
        large.grow_to(7 << 20).await.unwrap();
        // A large body queued for the same memory must not hold small ones up.
        let b2 = b.clone();
        let queued = tokio::spawn(async move { b2.reservation().grow_to(4 << 20).await });
        tokio::task::yield_now().await;
        let mut small: Vec<Reservation> = Vec::new();
        for _ in 0..16 {
            let mut r = b.reservation();
            r.grow_to(SMALL_BODY_BYTES).await.unwrap();
            small.push(r);
        }
        // The reserve (1 MiB) is now used up by sixteen 64 KiB bodies.
        assert!(b.reservation().grow_to(1).await.is_err());
        assert!(queued.await.unwrap().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_small_body_may_use_the_shared_pool_when_the_reserve_is_used_up() {
        let b = budget();
        let mut reserve = b.reservation();
        reserve.grow_to(SMALL_BODY_BYTES).await.unwrap();
        let mut rest = Vec::new();
        for _ in 1..16 {
            let mut r = b.reservation();
            r.grow_to(SMALL_BODY_BYTES).await.unwrap();
            rest.push(r);
        }
        let mut r = b.reservation();
        r.grow_to(SMALL_BODY_BYTES).await.unwrap();
        assert_eq!(b.available(), (7 << 20) - SMALL_BODY_BYTES);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_body_is_granted_when_memory_returns() {
        let b = budget();
        let mut holder = b.reservation();
        holder.grow_to(7 << 20).await.unwrap();
        let b2 = b.clone();
        let waiter = tokio::spawn(async move {
            let mut r = b2.reservation();
            r.grow_to(2 << 20).await.map(|()| r.bytes())
        });
        tokio::time::sleep(WAIT / 2).await;
        drop(holder);
        assert_eq!(waiter.await.unwrap().unwrap(), 2 << 20);
    }

    #[tokio::test(start_paused = true)]
    async fn held_bytes_keep_their_grant_until_the_last_clone_drops() {
        let b = budget();
        let mut r = b.reservation();
        r.grow_to(4096).await.unwrap();
        let bytes = r.hold(vec![b'x'; 4096]);
        let clone = bytes.clone();
        drop(bytes);
        assert_eq!(b.available(), (8 << 20) - 4096);
        assert_eq!(&clone[..3], b"xxx");
        drop(clone);
        assert_eq!(b.available(), 8 << 20);
    }
}
