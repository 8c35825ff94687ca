//! A replica's cache of immutable pins and the listener that keeps it honest: the
//! mechanics of the design argued in the module docs of [`super`].
//!
//! - [`ReadCache`]: `repo:tag` -> pinned digest, filled only from a fresh read of a record
//!   with a pin and no write in flight, and used only while the listener's lease holds;
//! - the listener: one thread on a connection of its own that `LISTEN`s on [`CHANNEL`],
//!   evicts every tag a committed transaction names, and pings itself through the same
//!   channel to learn up to when it has seen every commit ([`Shared::caught_up`]);
//! - [`notify`]: what every transaction that changes a tag's records sends, delivered
//!   when it commits.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::{Client, GenericClient};

use super::{db, PgTls};
use crate::oci::Digest;
use crate::store::{ReadView, StoreError};

/// The channel every replica's transactions notify and every listener listens on.
pub(super) const CHANNEL: &str = "tagpin_tags";
/// How often the listener pings itself.
const PING: Duration = Duration::from_millis(100);
/// How recent the last ping the listener got back must be for the cache to answer.
const LEASE: Duration = Duration::from_millis(300);
/// How long a write that moves a pin waits between its claim and forwarding: more than
/// twice [`LEASE`] (the module docs of [`super`] say why).
pub(super) const GRACE: Duration = Duration::from_millis(700);
/// Tags whose pins are kept.
const CAPACITY: usize = 100_000;
/// Waits between attempts to listen again, doubling from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// A ping's payload starts with this; a tag's key (`repo:tag`) cannot hold a space.
const PING_PREFIX: &str = "ping ";
/// The payload that names every tag (a table was emptied); a tag's key holds a `:`.
const EVERY_TAG: &str = "*";

const _: () = assert!(GRACE.as_millis() > 2 * LEASE.as_millis() && LEASE.as_millis() > 2 * PING.as_millis());

/// Send, at commit, the notification that `keys` (tags' [`super::lock_key`]s) changed.
pub(super) fn notify<C: GenericClient>(c: &mut C, keys: &[String]) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    c.execute(
        "SELECT pg_notify($1, k) FROM unnest($2::text[]) AS k",
        &[&CHANNEL, &keys],
    )
    .map_err(db)?;
    Ok(())
}

/// Send, at commit, the notification that every tag may have changed (an import, which
/// would otherwise send one per tag it writes).
pub(super) fn notify_every_tag<C: GenericClient>(c: &mut C) -> Result<(), StoreError> {
    c.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &EVERY_TAG])
        .map_err(db)?;
    Ok(())
}

/// The cache and its listener thread, which starts with the first read that may use it
/// and stops when the cache is dropped.
pub(super) struct ReadCache {
    shared: Arc<Shared>,
    config: postgres::Config,
    tls: PgTls,
    started: AtomicBool,
    /// Held while the listener is being started, so it starts once.
    starting: Mutex<()>,
}

/// What the readers and the listener share.
struct Shared {
    pins: quick_cache::sync::Cache<String, Digest>,
    /// Bumped, under this lock, by every eviction, clear and (re)start of listening; a
    /// fill inserts, under it, only if it is what the fill saw before its query.
    generation: Mutex<u64>,
    /// [`Self::caught_up`] counts from here.
    base: Instant,
    /// When the last ping the listener got back was sent, in nanoseconds after `base`;
    /// zero while there is none. Every notification committed before that instant has
    /// been processed.
    caught_up: AtomicU64,
    stop: AtomicBool,
    hits: AtomicU64,
    fresh: AtomicU64,
}

/// How a replica's reads of immutable tags were answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCacheStats {
    /// From the cache, without a statement.
    pub hits: u64,
    /// From the database.
    pub fresh: u64,
}

impl ReadCache {
    pub(super) fn new(config: postgres::Config, tls: PgTls) -> Self {
        Self::counting_from(config, tls, Instant::now())
    }

    /// A cache whose instants count from `base`.
    fn counting_from(config: postgres::Config, tls: PgTls, base: Instant) -> Self {
        Self {
            shared: Arc::new(Shared {
                pins: quick_cache::sync::Cache::new(CAPACITY),
                generation: Mutex::new(0),
                base,
                caught_up: AtomicU64::new(0),
                stop: AtomicBool::new(false),
                hits: AtomicU64::new(0),
                fresh: AtomicU64::new(0),
            }),
            config,
            tls,
            started: AtomicBool::new(false),
            starting: Mutex::new(()),
        }
    }

    /// The pin cached for `key`, if the lease holds: the last ping the listener got back
    /// was sent less than [`LEASE`] ago. `caught_up` is read before the entry, so every
    /// eviction it vouches for has happened.
    pub(super) fn get(&self, key: &str) -> Option<Digest> {
        self.start();
        let caught_up = self.shared.caught_up.load(Ordering::Acquire);
        let now = self.shared.base.elapsed().as_nanos() as u64;
        if caught_up == 0 || now.saturating_sub(caught_up) >= LEASE.as_nanos() as u64 {
            return None;
        }
        let pin = self.shared.pins.get(key)?;
        self.shared.hits.fetch_add(1, Ordering::Relaxed);
        Some(pin)
    }

    /// A fresh read that may fill the cache begins: what it must present to
    /// [`Self::fill`], taken before its query.
    pub(super) fn begin_fill(&self) -> u64 {
        self.shared.fresh.fetch_add(1, Ordering::Relaxed);
        *lock(&self.shared.generation)
    }

    /// Keep the pin of a fresh read of `key` begun at generation `seen`, if it has a pin
    /// and no write in flight and no notification was processed since `seen`.
    pub(super) fn fill(&self, key: String, seen: u64, view: &ReadView) {
        let (Some(pin), false) = (&view.pin, view.in_flight) else {
            return;
        };
        let generation = lock(&self.shared.generation);
        if *generation == seen {
            self.shared.pins.insert(key, pin.clone());
        }
    }

    /// Drop `keys` this replica has just committed changes to: its own reads see them at
    /// once, before its listener hears of them.
    pub(super) fn evict(&self, keys: impl IntoIterator<Item = String>) {
        for key in keys {
            self.shared.evict(&key);
        }
    }

    pub(super) fn stats(&self) -> ReadCacheStats {
        ReadCacheStats {
            hits: self.shared.hits.load(Ordering::Relaxed),
            fresh: self.shared.fresh.load(Ordering::Relaxed),
        }
    }

    fn start(&self) {
        if self.started.load(Ordering::Acquire) {
            return;
        }
        let _starting = lock(&self.starting);
        if self.started.load(Ordering::Acquire) {
            return;
        }
        let (shared, config, tls) = (self.shared.clone(), self.config.clone(), self.tls.clone());
        let spawned = std::thread::Builder::new()
            .name("tagpin-pin-cache".into())
            .spawn(move || listen(&shared, config, tls));
        if let Err(e) = spawned {
            // Without a listener the lease never holds: every read is fresh.
            tracing::error!(error = %e, "cannot start the pin cache's listener; every read queries the database");
        }
        self.started.store(true, Ordering::Release);
    }
}

impl Drop for ReadCache {
    /// The listener ends by itself within a ping, or once a statement it waits on fails;
    /// it is not waited for, so a hung connection cannot hold up a shutdown.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Forget everything: the lease, then every entry. After a lost connection (its
    /// notifications may be lost) and once listening (again), so that no entry filled
    /// before the listener could hear of its changes survives.
    fn forget(&self) {
        let mut generation = lock(&self.generation);
        self.caught_up.store(0, Ordering::Release);
        self.pins.clear();
        *generation += 1;
    }

    fn evict(&self, key: &str) {
        let mut generation = lock(&self.generation);
        self.pins.remove(key);
        *generation += 1;
    }
}

/// The listener thread: listen, and after a lost connection forget everything and listen
/// again, waiting longer after each failure (logged), until the cache is dropped.
fn listen(shared: &Shared, mut config: postgres::Config, tls: PgTls) {
    let name = format!("{}/pin-cache", config.get_application_name().unwrap_or("tagpin"));
    config.application_name(&name);
    // A partitioned server is noticed by the connection, not only by the lease.
    config.tcp_user_timeout(Duration::from_secs(5));
    config.keepalives_idle(Duration::from_secs(5));
    let token = unique_token();
    let mut backoff = BACKOFF.0;
    let mut failing = false;
    while !shared.stopping() {
        let result = session(shared, &config, &tls, &token, failing);
        // A session that got a ping of its own back worked: a new streak of failures.
        let worked = shared.caught_up.load(Ordering::Acquire) != 0;
        shared.forget();
        let Err(e) = result else {
            return;
        };
        if worked {
            backoff = BACKOFF.0;
            failing = false;
        }
        let retry_in_ms = backoff.as_millis() as u64;
        if failing {
            tracing::debug!(error = %e, retry_in_ms, "pin cache: cannot listen yet");
        } else {
            tracing::warn!(error = %e, retry_in_ms, "pin cache: lost the database's notifications; reads of immutable tags query the database until they are back");
        }
        failing = true;
        let until = Instant::now() + backoff;
        while !shared.stopping() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())));
        }
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

/// One connection's life: `LISTEN`, then ping every [`PING`] and process notifications
/// in the order the server delivers them (the order their transactions committed).
/// `Ok` only when the cache is dropped.
/// `recovering`: the last session failed, so its first ping back is news worth a log line.
fn session(
    shared: &Shared,
    config: &postgres::Config,
    tls: &PgTls,
    token: &str,
    recovering: bool,
) -> Result<(), StoreError> {
    let mut client = config.connect(tls.clone()).map_err(db)?;
    client.batch_execute(&format!("LISTEN {CHANNEL}")).map_err(db)?;
    let backend: i32 = client.query_one("SELECT pg_backend_pid()", &[]).map_err(db)?.get(0);
    // Entries filled before this moment may have missed a change: nothing was listening.
    shared.forget();
    tracing::debug!(backend, "pin cache: listening");
    let ping = client.prepare("SELECT pg_notify($1, $2)").map_err(db)?;
    let mut pings = Pings {
        token,
        backend,
        sent: VecDeque::new(),
        seq: 0,
        recovering,
    };
    let mut next_ping = Instant::now();
    while !shared.stopping() {
        if Instant::now() >= next_ping {
            // Taken before the ping is sent, so it is no later than the ping's commit.
            let payload = pings.send(shared.base.elapsed().as_nanos().max(1) as u64);
            client.execute(&ping, &[&CHANNEL, &payload]).map_err(db)?;
            next_ping = Instant::now() + PING;
        }
        receive(shared, &mut client, &mut pings, next_ping)?;
        if client.is_closed() {
            return Err(StoreError::Unavailable(
                "database: the listening connection closed".into(),
            ));
        }
    }
    Ok(())
}

/// Process notifications until `until`.
fn receive(shared: &Shared, client: &mut Client, pings: &mut Pings<'_>, until: Instant) -> Result<(), StoreError> {
    use postgres::fallible_iterator::FallibleIterator as _;
    let mut notifications = client.notifications();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || shared.stopping() {
            return Ok(());
        }
        let Some(n) = notifications.timeout_iter(left).next().map_err(db)? else {
            return Ok(());
        };
        match n.payload().strip_prefix(PING_PREFIX) {
            Some(ping) => pings.back(shared, ping, n.process_id())?,
            // The lease too: it holds again once a ping sent after this comes back.
            None if n.payload() == EVERY_TAG => shared.forget(),
            None => shared.evict(n.payload()),
        }
    }
}

/// This listener's pings in flight: sequence number and the instant each was sent.
struct Pings<'a> {
    token: &'a str,
    /// The session that listens; its pings must come from it.
    backend: i32,
    sent: VecDeque<(u64, u64)>,
    seq: u64,
    /// Log when the first ping comes back.
    recovering: bool,
}

impl Pings<'_> {
    /// The payload of the next ping, sent at `at` (nanoseconds after the cache's base).
    fn send(&mut self, at: u64) -> String {
        self.seq += 1;
        self.sent.push_back((self.seq, at));
        // Pings never answered (a lagging connection) are not kept forever.
        if self.sent.len() > 64 {
            self.sent.pop_front();
        }
        format!("{PING_PREFIX}{} {}", self.token, self.seq)
    }

    /// A ping came back: if it is this listener's, every notification committed before it
    /// was sent has been processed. One sent by another session than the one that listens
    /// means a proxy moved the connection between sessions (transaction pooling), and
    /// notifications may have gone elsewhere: the session is given up.
    fn back(&mut self, shared: &Shared, ping: &str, from: i32) -> Result<(), StoreError> {
        let Some((token, seq)) = ping.split_once(' ') else {
            return Ok(());
        };
        let Ok(seq) = seq.parse::<u64>() else {
            return Ok(());
        };
        if token != self.token {
            return Ok(());
        }
        if from != self.backend {
            return Err(StoreError::Unavailable(format!(
                "database: the listening session {} sent no ping of its own (session {from} did): \
                 a transaction-pooling proxy between tagpin and PostgreSQL cannot carry LISTEN",
                self.backend
            )));
        }
        while let Some(&(s, at)) = self.sent.front() {
            if s > seq {
                break;
            }
            self.sent.pop_front();
            if s == seq {
                shared.caught_up.store(at, Ordering::Release);
                if std::mem::take(&mut self.recovering) {
                    tracing::info!(
                        "pin cache: the database's notifications are back; reads of immutable tags are cached again"
                    );
                }
            }
        }
        Ok(())
    }
}

/// A token no other listener has: the process, the time and a counter.
fn unique_token() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}-{nanos:x}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    fn pinned(c: char) -> ReadView {
        ReadView {
            pin: Some(digest(c)),
            in_flight: false,
            reserved: None,
        }
    }

    /// A cache whose listener is never started: the tests play its part.
    fn cache() -> ReadCache {
        // Counting from a second ago, so a lapsed lease can be written down.
        let base = Instant::now().checked_sub(Duration::from_secs(1)).unwrap();
        let c = ReadCache::counting_from(
            "postgres://nobody@127.0.0.1:1/none".parse().unwrap(),
            PgTls::unverified(),
            base,
        );
        c.started.store(true, Ordering::Release);
        c
    }

    fn caught_up_now(c: &ReadCache) {
        let now = c.shared.base.elapsed().as_nanos().max(1) as u64;
        c.shared.caught_up.store(now, Ordering::Release);
    }

    #[test]
    fn a_fill_is_kept_unless_an_eviction_came_between() {
        let c = cache();
        let seen = c.begin_fill();
        c.fill("a:v1".into(), seen, &pinned('a'));
        assert_eq!(c.shared.pins.get("a:v1"), Some(digest('a')));
        let seen = c.begin_fill();
        c.shared.evict("other:v9");
        c.fill("a:v2".into(), seen, &pinned('b'));
        assert_eq!(c.shared.pins.get("a:v2"), None, "a fill that raced an eviction");
        let seen = c.begin_fill();
        c.shared.forget();
        c.fill("a:v3".into(), seen, &pinned('b'));
        assert_eq!(c.shared.pins.get("a:v3"), None, "a fill that raced a forget");
        assert_eq!(c.shared.pins.get("a:v1"), None, "forget clears");
    }

    #[test]
    fn only_a_pin_with_no_write_in_flight_is_kept() {
        let c = cache();
        let views = [
            (
                "a:claimed",
                ReadView {
                    pin: None,
                    in_flight: true,
                    reserved: None,
                },
            ),
            ("a:free", ReadView::default()),
            (
                "a:moving",
                ReadView {
                    pin: Some(digest('a')),
                    in_flight: true,
                    reserved: None,
                },
            ),
        ];
        for (key, view) in views {
            let seen = c.begin_fill();
            c.fill(key.into(), seen, &view);
            assert_eq!(c.shared.pins.get(key), None, "{key}");
        }
    }

    #[test]
    fn the_cache_answers_only_while_the_lease_holds() {
        let c = cache();
        let seen = c.begin_fill();
        c.fill("a:v1".into(), seen, &pinned('a'));
        assert_eq!(c.get("a:v1"), None, "never caught up");
        caught_up_now(&c);
        assert_eq!(c.get("a:v1"), Some(digest('a')));
        let old = c.shared.base.elapsed().as_nanos() as u64;
        let stale = old - LEASE.as_nanos() as u64;
        c.shared.caught_up.store(stale, Ordering::Release);
        assert_eq!(c.get("a:v1"), None, "a lapsed lease");
        assert_eq!(c.stats(), ReadCacheStats { hits: 1, fresh: 1 });
    }

    #[test]
    fn only_this_listeners_own_pings_vouch_and_only_from_its_session() {
        let c = cache();
        let mut pings = Pings {
            token: "me",
            backend: 7,
            sent: VecDeque::new(),
            seq: 0,
            recovering: false,
        };
        let first = pings.send(10);
        let second = pings.send(20);
        assert_eq!((first.as_str(), second.as_str()), ("ping me 1", "ping me 2"));
        let back = |pings: &mut Pings<'_>, payload: &str, from| {
            pings.back(&c.shared, payload.strip_prefix(PING_PREFIX).unwrap(), from)
        };
        back(&mut pings, "ping other 2", 9).unwrap();
        assert_eq!(c.shared.caught_up.load(Ordering::Acquire), 0, "another listener's ping");
        back(&mut pings, &second, 7).unwrap();
        assert_eq!(c.shared.caught_up.load(Ordering::Acquire), 20);
        assert!(pings.sent.is_empty(), "the earlier ping is answered by the later");
        let third = pings.send(30);
        assert!(back(&mut pings, &third, 8).is_err(), "a ping from another session");
        assert_eq!(c.shared.caught_up.load(Ordering::Acquire), 20);
    }
}
