//! The PostgreSQL backend, for several tagpin replicas sharing one store.
//!
//! # Why no interleaving of replicas moves a tag
//! Every guarantee of the in-process design rests on the store's writes, not on the
//! process's locks, so it holds across replicas:
//! - every change to a tag's records is one [`PinStore::update`]: a transaction that
//!   first takes a transaction-scoped advisory lock per tag (`pg_advisory_xact_lock`,
//!   sorted, so two transactions naming the same tags cannot deadlock), then reads the
//!   records, runs the pure transition of [`crate::pinning`] on them, writes back only
//!   what changed and commits. Two replicas deciding the same tag are therefore
//!   serialised at the database for the short moment of the update, whatever their
//!   process-local locks say, and the second decides on what the first committed: of
//!   two pushes racing for a free tag one records its write and the other finds it; of
//!   two appends decided against the same pin, the second finds the first in flight or
//!   the pin already moved;
//! - a write is recorded in such a transaction *before* it is forwarded, and lives in
//!   the database, not in the replica: a replica killed at any point leaves either
//!   nothing (before the commit) or the record, which every replica then honours until
//!   that write's own answer, an operator or the in-doubt horizon settles it;
//! - the clock the transition gets is the database's, read once the locks are held, so
//!   replicas whose clocks disagree judge a release's expiry and the in-doubt horizon
//!   alike, and a tag's records never see time run backwards between two updates; delete
//!   records are stamped and judged by the same clock;
//! - a commit is durable before `Ok` returns: tagpin's sessions run with
//!   `synchronous_commit = on` whatever the server's default. With `off` (a common
//!   tuning), a commit returns before its WAL reaches the disk and a database crash can
//!   lose it: the record of a write that was forwarded, and the tag could then be taken
//!   by another digest. The one exception is deliberate: a push's settlement
//!   ([`PinStore::confirm`]) commits with `synchronous_commit = off` for its own
//!   transaction, so no WAL flush stands between the upstream's answer and the
//!   client's. The database can lose only the newest such commits, never reorder them,
//!   and every later synchronous commit flushes them first; what a crash takes back is a
//!   pin whose claim (committed synchronously before the push was forwarded) still holds
//!   the tag for the same digest and is completed at the next start
//!   ([`crate::handler::recover`]). [`PinStore::log_head`] commits synchronously
//!   before it answers, so no checkpoint counts a lost entry. (`on` also waits for
//!   synchronous standbys' flush, where the server has any; `remote_apply` adds only
//!   visibility on the standbys, which tagpin does not read from). A session that reports
//!   `off` all the same (a pooler dropped the startup options) is refused
//!   ([`migrate::check_session`]);
//! - when the database cannot be reached or a statement fails, the call fails and the
//!   write is refused (503); the pool reconnects by itself once the database is back.
//!
//! The schema is created and migrated at start by [`migrate::migrate`].
//!
//! # Reads of immutable tags from memory, never older than a committed pin
//! A manifest read by a protected tag needs the tag's pin ([`PinStore::read_view`]). A
//! replica answers reads of tags the policy makes immutable from a bounded cache
//! ([`cache`], `quick_cache`) without a statement; reads of append-only and audited tags,
//! which move through any replica, always query the database. The promise: a read that
//! begins after another replica committed a pin is never answered with an older one.
//!
//! - **What is cached**: `repo:tag` -> digest, filled only by a fresh read of an immutable
//!   tag whose record has a pin and no write in flight.
//! - **Invalidation**: every transaction that changes a tag's records (every
//!   [`PinStore::update`], an import) sends `pg_notify('tagpin_tags', 'repo:tag')`, which
//!   the server delivers when, and only if, it commits; so do triggers on `pins` and
//!   `claims` (schema version 4) for every row any session changes (a `TRUNCATE`
//!   empties every cache), since a session that does not notify by itself (a replica of
//!   an earlier tagpin still running during a rolling upgrade, a repair by hand) would
//!   otherwise leave the replaced pin cached for as long as the lease keeps being
//!   renewed. Each replica's listener (a thread on a connection of its own, `LISTEN
//!   tagpin_tags`) evicts the named tag. A fill takes
//!   the cache's generation before its query and inserts only if no eviction happened
//!   since (generation and evictions share a lock), so a notification processed during a
//!   fill cannot be undone by it. Losing the connection, and listening again, clears the
//!   cache: notifications in between are lost. A replica also drops the tags of its own
//!   writes as soon as they return, so its own reads never wait for its listener.
//! - **Liveness lease**: the listener notifies the same channel with a ping of its own
//!   every 100 ms (`PING`), noting the instant before sending it. PostgreSQL delivers
//!   notifications in the order their transactions committed ("NOTIFY", Notes), so when
//!   the ping comes back every notification committed before that instant has been
//!   processed: `caught_up` becomes the ping's instant. The cache answers a read only if
//!   `caught_up` is less than `LEASE` (300 ms) before the read; otherwise the read queries
//!   the database (a lagging or lost listener costs speed, never correctness).
//! - **Move grace**: an immutable pin still moves, through a released push, and during a
//!   policy reload one replica may advance a tag as append-only (or follow it in audit
//!   mode) while another still caches it as immutable. So every push that moves a pin
//!   (claim kinds append, audit move, release) waits [`PinStore::move_grace`] `WAIT` (700
//!   ms, more than twice `LEASE`) after its claim committed and before it is forwarded.
//!
//! Why no replica serves a pin older than one committed before its read began. A pin
//! moves only in the transaction that settles a write whose claim of that move (append,
//! audit move, release) is in the record, and the claim stays there from its own commit
//! (`t2`, which notifies) until that settle commits (`t4`); the writer waited `WAIT` in
//! between, so `t4 > t2 + WAIT`. Take a read at replica B that begins at `r > t4` and is
//! answered from the cache. B's `caught_up` was then the instant `s` of a ping with
//! `s > r - LEASE > t2 + WAIT - LEASE > t2`. That ping committed after `s`, so after
//! `t2`, and came back after `t2`'s notification: B had evicted the tag and bumped the
//! generation before the read (or, listening only since after `t2`, cleared the cache
//! when it started). The entry the read found was therefore inserted by a fill that took
//! the generation after that, so its query began after `t2`: it saw the claim in flight
//! (nothing cached) or, after `t4`, the new pin. This holds for every move committed
//! before `r`, so the entry is at least as new as each of them. A withdrawn or lapsed
//! claim moves nothing.
//!
//! Caveats. `WAIT` is measured on the writer's monotonic clock and `LEASE` on the
//! reader's: `WAIT > 2 × LEASE` covers clocks whose rates differ by far more than NTP's
//! 500 ppm, but not a machine frozen with its monotonic clock stopped for longer than the
//! margin (some live migrations of a virtual machine). A replica of an earlier tagpin
//! (during a rolling upgrade) does not wait the grace: a pin it moves reaches the other
//! replicas' caches through the triggers, within their listeners' lag rather than before
//! its answer. Replicas must share `in_doubt_horizon` (as they must already,
//! for claims to lapse alike): under 16 × `WAIT` (11.2 s) the cache is off and the grace
//! zero ([`PgStore::for_in_doubt_horizon`]), so the grace stays far below the quarter
//! horizon within which a decided push must be forwarded. Each listener takes one more
//! connection, and a commit that notifies is serialised with other notifying commits by
//! the server, which only writes (decisions) pay. The listener needs a session of its
//! own: a ping that comes back from another session than the one listening (a
//! transaction-pooling proxy) ends the session, so such a setup reads fresh every time.

mod cache;
mod import;
mod log;
mod migrate;
mod outbox;
mod pool;
mod tags;
mod tls;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use r2d2::Pool;

use self::cache::ReadCache;
pub use self::cache::ReadCacheStats;
use self::migrate::{check_session, migrate};
use self::pool::{db, pool_err, Manager};
use self::tags::{Write, DB_NOW};
pub use self::tls::{PgTls, SslMode, TlsFileError};
use super::{
    DeleteRecord, ImportError, ImportOutcome, ImportSource, PinStore, Protect, ReadView, Refused, StoreError,
    TagRecord, TagState,
};
use crate::oci::{Digest, Repository, Tag};

pub struct PgStore {
    pool: Pool<Manager>,
    /// The connection holding the leader lock while this replica leads.
    leader: std::sync::Mutex<Option<r2d2::PooledConnection<Manager>>>,
    /// The schema is known to be current. Until then every call migrates first; after,
    /// none does: migrating takes the migration lock, so doing it on every call would
    /// serialise every store call of every replica behind one session lock.
    migrated: AtomicBool,
    /// Pins of immutable tags; `None` when the in-doubt horizon is too short for the grace.
    cache: Option<ReadCache>,
    /// Synchronous commits of writes, for [`PinStore::durable_writes`].
    commits: AtomicU64,
}

/// The session advisory lock one replica holds to run singleton work ("drift" in ASCII).
const LEADER_LOCK: i64 = 0x0064_7269_6674;

fn corrupt(key: &str, e: impl ToString) -> StoreError {
    StoreError::Corrupt {
        key: key.to_owned(),
        why: e.to_string(),
    }
}

impl PgStore {
    /// [`Self::open_tls`] with rust-postgres's own `sslmode` (`disable`, `prefer`, `require`)
    /// and no certificate checked.
    pub fn open(config: postgres::Config) -> Result<Self, StoreError> {
        Self::open_tls(config, PgTls::unverified())
    }

    /// Connect to `config` (a parsed URL, password already set, `sslmode` set to
    /// [`SslMode::client_mode`]) through `tls`, and migrate the schema.
    /// An unreachable database does not stop tagpin: the store answers with errors (every
    /// decided write refused) until the database answers, and migrates then.
    pub fn open_tls(mut config: postgres::Config, tls: PgTls) -> Result<Self, StoreError> {
        config.connect_timeout(Duration::from_secs(3));
        // A statement that hangs (a lock held by a stuck session, a failing-over server)
        // must not hold a push forever. `synchronous_commit=on` whatever the server's
        // default: see the module docs.
        config.options("-c statement_timeout=5000 -c lock_timeout=5000 -c synchronous_commit=on");
        let cache = ReadCache::new(config.clone(), tls.clone());
        let manager = Manager { config, tls };
        let pool = Pool::builder()
            .max_size(16)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(3))
            .build_unchecked(manager);
        let store = Self {
            pool,
            leader: std::sync::Mutex::new(None),
            migrated: AtomicBool::new(false),
            cache: Some(cache),
            commits: AtomicU64::new(0),
        };
        // The synchronous client drives its own runtime, which panics when entered from
        // an async task, and `open` is called from tagpin's async start: migrate on a
        // thread of its own.
        let first = std::thread::scope(|scope| scope.spawn(|| store.client().map(drop)).join());
        match first.unwrap_or_else(|_| Err(StoreError::Unavailable("database: migration panicked".into()))) {
            Ok(()) => {}
            Err(e @ StoreError::Corrupt { .. }) => return Err(e),
            Err(e) => {
                tracing::error!(error = %e, "database unavailable at start; writes that need a decision are refused until it answers")
            }
        }
        Ok(store)
    }

    /// Fit the read cache to the in-doubt horizon all replicas share: a decided push must
    /// be forwarded within a quarter of it, and the move grace may take at most a quarter
    /// of that, so under 16 × the grace the cache is off (every read queries the database)
    /// and no push waits.
    pub fn for_in_doubt_horizon(mut self, horizon: Duration) -> Self {
        if horizon < cache::GRACE * 16 {
            tracing::warn!(
                in_doubt_horizon_ms = horizon.as_millis() as u64,
                "in-doubt horizon under {}s: reads of immutable tags are not cached and pushes that move a pin \
                 do not wait the move grace; every replica on this database must run with the same horizon, or \
                 a replica with a longer one may serve a pin this one moved",
                (cache::GRACE * 16).as_secs_f32()
            );
            self.cache = None;
        }
        self
    }

    /// How reads of immutable tags were answered so far.
    pub fn read_cache_stats(&self) -> ReadCacheStats {
        self.cache.as_ref().map(ReadCache::stats).unwrap_or_default()
    }

    /// After a write of `keys` (committed, failed or of unknown outcome): this replica's
    /// own reads do not wait for its listener to hear of it.
    fn evict(&self, keys: impl Iterator<Item = String>) {
        if let Some(cache) = &self.cache {
            cache.evict(keys);
        }
    }

    fn client(&self) -> Result<r2d2::PooledConnection<Manager>, StoreError> {
        let mut c = self.pool.get().map_err(pool_err)?;
        // A replica that started while the database was down migrates on first use.
        if !self.migrated.load(Ordering::Acquire) {
            check_session(&mut c)?;
            migrate(&mut c)?;
            self.migrated.store(true, Ordering::Release);
        }
        Ok(c)
    }
}

/// The advisory lock name of a tag (hashed to the lock's 64-bit key by the server). Not
/// `\0`-separated like sled's keys: PostgreSQL text cannot hold a NUL byte, and a `:`
/// cannot occur in a validated repository name, so the names cannot collide either.
fn lock_key(repo: &Repository, tag: &Tag) -> String {
    format!("{repo}:{tag}")
}

/// The view of a cached pin: only pins with no write in flight are cached.
fn cached(pin: Digest) -> ReadView {
    ReadView {
        pin: Some(pin),
        in_flight: false,
        reserved: None,
    }
}

fn parse_digests(rows: Vec<postgres::Row>, what: &str) -> Result<Vec<Digest>, StoreError> {
    rows.iter()
        .map(|r| {
            let s: String = r.get(0);
            Digest::parse(&s).map_err(|e| corrupt(what, e))
        })
        .collect()
}

impl PinStore for PgStore {
    fn record(&self, repo: &Repository, tag: &Tag) -> Result<TagRecord, StoreError> {
        self.read(repo, tag)
    }

    fn read_view(&self, repo: &Repository, tag: &Tag, immutable: bool) -> Result<ReadView, StoreError> {
        let Some(cache) = self.cache.as_ref().filter(|_| immutable) else {
            return self.read_view_fresh(repo, tag);
        };
        let key = lock_key(repo, tag);
        if let Some(pin) = cache.get(&key) {
            return Ok(cached(pin));
        }
        let seen = cache.begin_fill();
        let view = self.read_view_fresh(repo, tag)?;
        cache.fill(key, seen, &view);
        Ok(view)
    }

    fn read_view_in_memory(
        &self,
        repo: &Repository,
        tag: &Tag,
        immutable: bool,
    ) -> Option<Result<ReadView, StoreError>> {
        let cache = self.cache.as_ref().filter(|_| immutable)?;
        cache.get(&lock_key(repo, tag)).map(|pin| Ok(cached(pin)))
    }

    fn move_grace(&self) -> Duration {
        match self.cache {
            Some(_) => cache::GRACE,
            None => Duration::ZERO,
        }
    }

    fn update(
        &self,
        repo: &Repository,
        tags: &[Tag],
        change: &mut dyn FnMut(u64, &mut [TagRecord]),
    ) -> Result<Vec<TagRecord>, StoreError> {
        let written = self.update_records(repo, tags, Write::default(), change, None);
        self.evict(tags.iter().map(|t| lock_key(repo, t)));
        written
    }

    fn update_protecting(
        &self,
        repo: &Repository,
        tags: &[Tag],
        refs: &crate::store::Protection,
        change: &mut dyn FnMut(u64, &mut [TagRecord]),
    ) -> Result<Vec<TagRecord>, StoreError> {
        let how = Write {
            durable: true,
            refs: Some(refs),
        };
        let written = self.update_records(repo, tags, how, change, None);
        self.evict(tags.iter().map(|t| lock_key(repo, t)));
        written
    }

    fn write_notifying(
        &self,
        kind: super::WriteKind<'_>,
        repo: &Repository,
        tags: &[Tag],
        change: &mut dyn FnMut(u64, &mut [TagRecord]),
        notify: &mut super::Notifying<'_>,
    ) -> Result<Vec<TagRecord>, StoreError> {
        self.write_notifying_records(kind, repo, tags, change, notify)
    }

    fn confirm(
        &self,
        repo: &Repository,
        tags: &[Tag],
        change: &mut dyn FnMut(u64, &mut [TagRecord]),
    ) -> Result<Vec<TagRecord>, StoreError> {
        let how = Write {
            durable: false,
            refs: None,
        };
        let written = self.update_records(repo, tags, how, change, None);
        self.evict(tags.iter().map(|t| lock_key(repo, t)));
        written
    }

    fn durable_writes(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    fn record_refusal(&self, repo: &Repository, tag: &Tag, refused: &Refused) -> Result<(), StoreError> {
        let mut keys = vec![lock_key(repo, tag)];
        self.with_locks(&mut keys, true, |tx| outbox::insert_refusal(tx, repo, tag, refused))
    }

    fn refusals(&self, repo: &Repository, tag: &Tag) -> Result<Vec<Refused>, StoreError> {
        let mut c = self.client()?;
        c.query(
            "SELECT record FROM refused WHERE repository = $1 AND tag = $2 ORDER BY id",
            &[&repo.as_str(), &tag.as_str()],
        )
        .map_err(db)?
        .iter()
        .map(|r| serde_json::from_value(r.get(0)).map_err(|e| corrupt(&lock_key(repo, tag), e)))
        .collect()
    }

    fn tags_pinned_to(&self, repo: &Repository, digest: &Digest) -> Result<Vec<Tag>, StoreError> {
        let mut c = self.client()?;
        // Every listing is in byte order (COLLATE "C"), as sled's keys are, whatever the
        // database's collation: with ICU or glibc `en_US`, `T1` would sort after `a1`.
        let rows = c
            .query(
                "SELECT tag FROM (SELECT tag FROM pins WHERE repository = $1 AND digest = $2
                 UNION SELECT tag FROM claims WHERE repository = $1 AND digest = $2) u
                 ORDER BY tag COLLATE \"C\"",
                &[&repo.as_str(), &digest.as_str()],
            )
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                let t: String = r.get(0);
                Tag::parse(&t).map_err(|e| corrupt(repo.as_str(), e))
            })
            .collect()
    }

    fn begin_delete(&self, repo: &Repository, digest: &Digest, request_id: &str) -> Result<(), StoreError> {
        // A repeat of one request restarts its record's time, as on every backend.
        let mut c = self.client()?;
        c.execute(
            &format!(
                "INSERT INTO deletes (repository, digest, request_id, started_at) VALUES ($1, $2, $3, {DB_NOW})
                 ON CONFLICT (repository, digest, request_id) DO UPDATE SET started_at = EXCLUDED.started_at"
            ),
            &[&repo.as_str(), &digest.as_str(), &request_id],
        )
        .map_err(db)?;
        Ok(())
    }

    fn end_delete(&self, repo: &Repository, digest: &Digest, request_id: &str) -> Result<(), StoreError> {
        let mut c = self.client()?;
        c.execute(
            "DELETE FROM deletes WHERE repository = $1 AND digest = $2 AND request_id = $3",
            &[&repo.as_str(), &digest.as_str(), &request_id],
        )
        .map_err(db)?;
        Ok(())
    }

    fn deletes_in_flight(
        &self,
        repo: &Repository,
        digests: &[Digest],
        horizon: u64,
    ) -> Result<Vec<Digest>, StoreError> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.client()?;
        let wanted: Vec<&str> = digests.iter().map(Digest::as_str).collect();
        // `started_at >= now - horizon` rather than `started_at + horizon >= now`: the
        // subtraction cannot overflow a bigint for any horizon. Inclusive: times are
        // whole seconds, so a record counts for the whole of its last second.
        let horizon = i64::try_from(horizon).unwrap_or(i64::MAX);
        let rows = c
            .query(
                &format!(
                    "SELECT DISTINCT digest FROM deletes WHERE repository = $1 AND digest = ANY($2)
                     AND started_at >= {DB_NOW} - $3"
                ),
                &[&repo.as_str(), &wanted, &horizon],
            )
            .map_err(db)?;
        let young: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
        Ok(digests.iter().filter(|d| young.contains(d.as_str())).cloned().collect())
    }

    fn list_deletes(&self, repo: Option<&Repository>) -> Result<Vec<DeleteRecord>, StoreError> {
        let mut c = self.client()?;
        let rows = c
            .query(
                "SELECT repository, digest, request_id, started_at FROM deletes
                 WHERE ($1::text IS NULL OR repository = $1)
                 ORDER BY repository COLLATE \"C\", digest COLLATE \"C\", request_id COLLATE \"C\"",
                &[&repo.map(Repository::as_str)],
            )
            .map_err(db)?;
        rows.iter()
            .map(|row| {
                let (r, d): (String, String) = (row.get(0), row.get(1));
                let key = format!("{r}@{d}");
                Ok(DeleteRecord {
                    repository: Repository::parse(&r).map_err(|e| corrupt(&key, e))?,
                    digest: Digest::parse(&d).map_err(|e| corrupt(&key, e))?,
                    request_id: row.get(2),
                    started_at: row.get::<_, i64>(3).max(0) as u64,
                })
            })
            .collect()
    }

    fn protect(&self, repo: &Repository, holder: &Digest, refs: &[Digest], how: Protect) -> Result<(), StoreError> {
        let p = crate::store::Protection {
            holder: holder.clone(),
            refs: refs.to_vec(),
            complete: how.complete,
        };
        // One statement, its own transaction: durable when it returns (not needed when a
        // claim follows, but then `update_protecting` writes both in one transaction).
        tags::protect(&mut *self.client()?, repo, &p)?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn has_refs(&self, repo: &Repository, holder: &Digest) -> Result<bool, StoreError> {
        let mut c = self.client()?;
        Ok(c.query_opt(
            "SELECT 1 FROM holders WHERE repository = $1 AND holder = $2",
            &[&repo.as_str(), &holder.as_str()],
        )
        .map_err(db)?
        .is_some())
    }

    fn refs_of(&self, repo: &Repository, holder: &Digest) -> Result<Vec<Digest>, StoreError> {
        let mut c = self.client()?;
        let rows = c
            .query(
                "SELECT ref FROM refs WHERE repository = $1 AND holder = $2 ORDER BY ref COLLATE \"C\"",
                &[&repo.as_str(), &holder.as_str()],
            )
            .map_err(db)?;
        parse_digests(rows, repo.as_str())
    }

    fn holders(&self, repo: &Repository) -> Result<Vec<Digest>, StoreError> {
        let mut c = self.client()?;
        let rows = c
            .query(
                "SELECT digest FROM (SELECT digest FROM pins WHERE repository = $1
                 UNION SELECT digest FROM claims WHERE repository = $1) u ORDER BY digest COLLATE \"C\"",
                &[&repo.as_str()],
            )
            .map_err(db)?;
        parse_digests(rows, repo.as_str())
    }

    fn referenced_by(&self, repo: &Repository, digest: &Digest) -> Result<Vec<Digest>, StoreError> {
        let mut c = self.client()?;
        let rows = c
            .query(
                "SELECT holder FROM refs WHERE repository = $1 AND ref = $2 ORDER BY holder COLLATE \"C\"",
                &[&repo.as_str(), &digest.as_str()],
            )
            .map_err(db)?;
        parse_digests(rows, repo.as_str())
    }

    fn list(
        &self,
        repo: Option<&Repository>,
        after: Option<&(Repository, Tag)>,
        limit: usize,
    ) -> Result<Vec<(Repository, Tag, TagState)>, StoreError> {
        self.list_states(repo, after, limit)
    }

    fn claimed(&self, after: Option<&(Repository, Tag)>, limit: usize) -> Result<Vec<(Repository, Tag)>, StoreError> {
        self.claimed_tags(after, limit)
    }

    fn import_from(&self, source: &mut dyn ImportSource, by: &str) -> Result<ImportOutcome, ImportError> {
        // Nothing to evict: an import writes only free tags, and only pins are cached.
        self.import_stream(source, by)
    }

    fn log_head(&self) -> Result<crate::log::Frontier, StoreError> {
        self.head()
    }

    fn log_leaves(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        self.leaves(start, end)
    }

    fn log_nodes(&self, ids: &[crate::log::NodeId]) -> Result<Vec<crate::log::Hash>, StoreError> {
        self.nodes(ids)
    }

    fn lead(&self) -> Result<bool, StoreError> {
        let mut slot = self.leader.lock().unwrap_or_else(|p| p.into_inner());
        // Still leading while the session that holds the lock is alive; a replica that
        // dies loses its session, and with it the lock, to the next that asks.
        if let Some(c) = slot.as_mut() {
            if c.query_one("SELECT 1", &[]).is_ok() {
                return Ok(true);
            }
            *slot = None;
        }
        let mut c = self.pool.get().map_err(pool_err)?;
        let got: bool = c
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
            .map_err(db)?
            .get(0);
        if got {
            *slot = Some(c);
        }
        Ok(got)
    }

    fn outbox(&self) -> Option<&dyn super::Outbox> {
        Some(self)
    }

    fn check(&self) -> Result<(), StoreError> {
        let mut c = self.client()?;
        c.query_one("SELECT 1", &[]).map_err(db)?;
        Ok(())
    }
}
