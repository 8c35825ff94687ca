//! The memory budget of manifest bodies: one count of bytes shared by every worker, so
//! the manifests being read or held for forwarding cannot together take more memory than
//! the operator allowed, however many connections send them.
//!
//! Stalled large bodies are the cheap way to fill any such budget, so one eighth of it is
//! kept for small bodies (at most [`SMALL_BODY_BYTES`]), which real pushes nearly always
//! are: they still land while large bodies hold the rest. And no client address holds
//! more than its share ([`super::share`]): a body over it waits for that address's own
//! bodies, holding none of the budget meanwhile (nor queued in it), so one address
//! cannot take the budget from the others. A body that cannot get its memory within the configured wait is
//! refused with a retryable error rather than queued without end.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::share::{Share, Shares};

/// Bodies up to this size may draw on the small reserve. A single-platform image
/// manifest is a few KiB; 64 KiB holds an index of well over a hundred platforms.
pub const SMALL_BODY_BYTES: usize = 64 * 1024;

/// The small reserve is `budget / SMALL_RESERVE_DIVISOR`.
const SMALL_RESERVE_DIVISOR: usize = 8;

/// What ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scarce {
    /// The budget all clients share.
    Budget,
    /// The share of the client's address.
    ClientShare,
}

impl Scarce {
    /// The `reason` label of the refusal metric.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Budget => "budget",
            Self::ClientShare => "client_share",
        }
    }
}

/// No memory came free within the wait.
#[derive(Debug, thiserror::Error)]
#[error("no manifest memory came free for {wanted} more bytes within {waited:?} ({})", match .scarce {
    Scarce::Budget => "the budget is in use",
    Scarce::ClientShare => "the client address's share of the budget is in use",
})]
pub struct Exhausted {
    pub wanted: usize,
    pub waited: Duration,
    pub scarce: Scarce,
}

/// The shared budget. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Budget {
    /// For bodies of at most `SMALL_BODY_BYTES`, which may also use `large`.
    small: Arc<Semaphore>,
    /// For every body. One permit is one byte.
    large: Arc<Semaphore>,
    /// What each client address may hold of `small` and `large` together.
    shares: Arc<Shares>,
    wait: Duration,
}

impl Budget {
    /// A budget of `total_bytes`, of which an eighth is the small reserve and at most
    /// `per_client` bytes go to any one client address. A body waits at most `wait` for
    /// each grant.
    pub fn new(total_bytes: usize, per_client: usize, wait: Duration) -> Self {
        let small = total_bytes / SMALL_RESERVE_DIVISOR;
        Self {
            small: Arc::new(Semaphore::new(small)),
            large: Arc::new(Semaphore::new(total_bytes - small)),
            shares: Arc::new(Shares::new(per_client)),
            wait,
        }
    }

    /// The largest single body the budget can ever grant; config validation keeps
    /// `max_manifest_bytes` within it.
    pub fn largest_grant(total_bytes: usize) -> usize {
        total_bytes - total_bytes / SMALL_RESERVE_DIVISOR
    }

    /// An empty reservation, counted against `client`'s share, to grow as a body arrives.
    pub fn reservation(&self, client: IpAddr) -> Reservation {
        Reservation {
            small: None,
            large: None,
            share: self.shares.of(client),
            budget: self.clone(),
        }
    }

    /// Bytes not granted to any body right now.
    pub fn available(&self) -> usize {
        self.small.available_permits() + self.large.available_permits()
    }

    /// Client addresses with a reservation alive now.
    pub fn clients(&self) -> usize {
        self.shares.clients()
    }

    /// Wait (without limit: the caller bounds it) for `n` bytes of a body that will then
    /// hold `total`; whether they came from the small reserve, and the grant.
    async fn acquire(&self, total: usize, n: u32) -> (bool, OwnedSemaphorePermit) {
        let (small, large) = (Arc::clone(&self.small), Arc::clone(&self.large));
        let (from_small, permit) = if total <= SMALL_BODY_BYTES {
            // Tokio's semaphore is first-come first-served: a small body queued behind a
            // large one in `large` would wait for it, so it also waits on its own reserve
            // and takes whichever grants first (the reserve if both).
            tokio::select! {
                biased;
                p = small.acquire_many_owned(n) => (true, p),
                p = large.acquire_many_owned(n) => (false, p),
            }
        } else {
            (false, large.acquire_many_owned(n).await)
        };
        (from_small, permit.expect("the budget's semaphores are never closed"))
    }
}

/// Memory granted to one body; it returns to the budget (and to its address's share)
/// when dropped.
#[derive(Debug)]
pub struct Reservation {
    small: Option<OwnedSemaphorePermit>,
    large: Option<OwnedSemaphorePermit>,
    /// Always holds as many bytes as `small` and `large` together.
    share: Share,
    budget: Budget,
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
        let refused = |scarce| Exhausted { wanted, waited, scarce };
        // Grants are at most `max_manifest_bytes` (64 MiB), far below u32::MAX.
        let Ok(n) = u32::try_from(wanted) else {
            return Err(refused(Scarce::Budget));
        };
        let deadline = tokio::time::Instant::now() + waited;
        // The address's share first: a body over it waits holding none of the budget,
        // and is never queued in the budget ahead of other clients' bodies.
        let share = tokio::time::timeout_at(deadline, self.share.take(wanted))
            .await
            .map_err(|_| refused(Scarce::ClientShare))?;
        let (from_small, permit) = tokio::time::timeout_at(deadline, self.budget.acquire(total, n))
            .await
            .map_err(|_| refused(Scarce::Budget))?;
        self.share.keep(share);
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
    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    /// 8 MiB: a 1 MiB small reserve and 7 MiB for everyone; any client may use it all.
    fn budget() -> Budget {
        Budget::new(8 << 20, 8 << 20, WAIT)
    }

    /// The same, with a 2 MiB share per client address.
    fn shared() -> Budget {
        Budget::new(8 << 20, 2 << 20, WAIT)
    }

    #[tokio::test(start_paused = true)]
    async fn grants_add_up_and_return_on_drop() {
        let b = budget();
        let mut r = b.reservation(A);
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
        let mut holder = b.reservation(A);
        holder.grow_to(7 << 20).await.unwrap();
        let mut late = b.reservation(A);
        let started = tokio::time::Instant::now();
        let e = late.grow_to(1 << 20).await.unwrap_err();
        assert_eq!(e.wanted, 1 << 20);
        assert!(started.elapsed() >= WAIT);
        assert_eq!(late.bytes(), 0, "a refused grant leaves nothing held");
    }

    #[tokio::test(start_paused = true)]
    async fn small_bodies_use_the_reserve_while_large_ones_hold_the_rest() {
        let b = budget();
        let mut large = b.reservation(A);
        large.grow_to(7 << 20).await.unwrap();
        // A large body queued for the same memory must not hold small ones up.
        let b2 = b.clone();
        let queued = tokio::spawn(async move { b2.reservation(A).grow_to(4 << 20).await });
        tokio::task::yield_now().await;
        let mut small: Vec<Reservation> = Vec::new();
        for _ in 0..16 {
            let mut r = b.reservation(A);
            r.grow_to(SMALL_BODY_BYTES).await.unwrap();
            small.push(r);
        }
        // The reserve (1 MiB) is now used up by sixteen 64 KiB bodies.
        assert!(b.reservation(A).grow_to(1).await.is_err());
        assert!(queued.await.unwrap().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_small_body_may_use_the_shared_pool_when_the_reserve_is_used_up() {
        let b = budget();
        let mut reserve = b.reservation(A);
        reserve.grow_to(SMALL_BODY_BYTES).await.unwrap();
        let mut rest = Vec::new();
        for _ in 1..16 {
            let mut r = b.reservation(A);
            r.grow_to(SMALL_BODY_BYTES).await.unwrap();
            rest.push(r);
        }
        let mut r = b.reservation(A);
        r.grow_to(SMALL_BODY_BYTES).await.unwrap();
        assert_eq!(b.available(), (7 << 20) - SMALL_BODY_BYTES);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_body_is_granted_when_memory_returns() {
        let b = budget();
        let mut holder = b.reservation(A);
        holder.grow_to(7 << 20).await.unwrap();
        let b2 = b.clone();
        let waiter = tokio::spawn(async move {
            let mut r = b2.reservation(A);
            r.grow_to(2 << 20).await.map(|()| r.bytes())
        });
        tokio::time::sleep(WAIT / 2).await;
        drop(holder);
        assert_eq!(waiter.await.unwrap().unwrap(), 2 << 20);
    }

    #[tokio::test(start_paused = true)]
    async fn held_bytes_keep_their_grant_until_the_last_clone_drops() {
        let b = budget();
        let mut r = b.reservation(A);
        r.grow_to(4096).await.unwrap();
        let bytes = r.hold(vec![b'x'; 4096]);
        let clone = bytes.clone();
        drop(bytes);
        assert_eq!(b.available(), (8 << 20) - 4096);
        assert_eq!(&clone[..3], b"xxx");
        drop(clone);
        assert_eq!(b.available(), 8 << 20);
    }

    #[tokio::test(start_paused = true)]
    async fn one_address_holds_at_most_its_share_and_waits_without_holding_the_budget() {
        let b = shared();
        let mut first = b.reservation(A);
        first.grow_to(2 << 20).await.unwrap();
        // Over A's share: it waits, and holds nothing of the budget while it does.
        let b2 = b.clone();
        let waiter = tokio::spawn(async move {
            let mut r = b2.reservation(A);
            r.grow_to(1 << 20).await.map(|()| r.bytes())
        });
        tokio::task::yield_now().await;
        assert_eq!(b.available(), 6 << 20);
        // Another address is not held up by A.
        let mut other = b.reservation(B);
        other.grow_to(2 << 20).await.unwrap();
        let e = waiter.await.unwrap().unwrap_err();
        assert_eq!(e.scarce, Scarce::ClientShare);
        assert_eq!(e.wanted, 1 << 20);
        assert_eq!(b.available(), 4 << 20, "a refused body leaves nothing held");
        // Memory A's own bodies give back is A's to use again.
        drop(first);
        let mut again = b.reservation(A);
        again.grow_to(2 << 20).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_waiting_for_its_share_is_granted_when_its_address_frees_some() {
        let b = shared();
        let mut holder = b.reservation(A);
        holder.grow_to(2 << 20).await.unwrap();
        let b2 = b.clone();
        let waiter = tokio::spawn(async move {
            let mut r = b2.reservation(A);
            r.grow_to(1 << 20).await.map(|()| r.bytes())
        });
        tokio::time::sleep(WAIT / 2).await;
        drop(holder);
        assert_eq!(waiter.await.unwrap().unwrap(), 1 << 20);
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_body_waiting_for_its_share_does_not_hold_up_small_ones_of_its_address() {
        let b = shared();
        let mut holder = b.reservation(A);
        holder.grow_to(3 << 19).await.unwrap();
        let b2 = b.clone();
        let queued = tokio::spawn(async move { b2.reservation(A).grow_to(1 << 20).await });
        tokio::task::yield_now().await;
        let mut small = b.reservation(A);
        small.grow_to(SMALL_BODY_BYTES).await.unwrap();
        assert_eq!(queued.await.unwrap().unwrap_err().scarce, Scarce::ClientShare);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_itself_running_out_is_told_apart_from_a_share() {
        let b = shared();
        // Four addresses fill the 7 MiB everyone shares.
        let mut held = Vec::new();
        for (i, size) in [2 << 20, 2 << 20, 2 << 20, 1 << 20].into_iter().enumerate() {
            let mut r = b.reservation(IpAddr::from([198, 51, 100, i as u8]));
            r.grow_to(size).await.unwrap();
            held.push(r);
        }
        let e = b.reservation(B).grow_to(1 << 20).await.unwrap_err();
        assert_eq!(e.scarce, Scarce::Budget);
        // The small reserve still serves a small body of another address...
        let mut small = b.reservation(B);
        small.grow_to(SMALL_BODY_BYTES).await.unwrap();
        // ... but not one of an address whose share is used up.
        let e = b
            .reservation(IpAddr::from([198, 51, 100, 0]))
            .grow_to(1)
            .await
            .unwrap_err();
        assert_eq!(e.scarce, Scarce::ClientShare);
        assert_eq!(b.available(), (1 << 20) - SMALL_BODY_BYTES);
    }

    #[tokio::test(start_paused = true)]
    async fn addresses_are_forgotten_when_their_last_body_ends() {
        let b = shared();
        let mut kept = Vec::new();
        for i in 0..200u8 {
            let client = IpAddr::from([203, 0, 113, i]);
            let mut r = b.reservation(client);
            r.grow_to(4096).await.unwrap();
            kept.push(r.hold(vec![b'x'; 4096]));
            // A second body of the same address shares its entry.
            let mut r = b.reservation(client);
            r.grow_to(1).await.unwrap();
        }
        assert_eq!(b.clients(), 200);
        drop(kept);
        assert_eq!(b.clients(), 0);
        assert_eq!(b.available(), 8 << 20);
        // Refused and abandoned bodies leave no entry behind either.
        let mut holder = b.reservation(A);
        holder.grow_to(2 << 20).await.unwrap();
        assert!(b.reservation(A).grow_to(1).await.is_err());
        let b2 = b.clone();
        let abandoned = tokio::spawn(async move { b2.reservation(A).grow_to(1).await });
        tokio::task::yield_now().await;
        abandoned.abort();
        assert!(abandoned.await.unwrap_err().is_cancelled());
        assert_eq!(b.clients(), 1);
        drop(holder);
        assert_eq!(b.clients(), 0);
        assert_eq!(b.available(), 8 << 20);
    }
}
