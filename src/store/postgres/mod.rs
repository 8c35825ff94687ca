//! The PostgreSQL backend, for several tagpin replicas sharing one store.
//!
//! # Why no interleaving of replicas moves a tag
//! Every guarantee of the in-process design rests on the store's writes, not on the
//! process's locks, so it holds across replicas:
//! - every write that reads a tag's state and changes it runs in one transaction that
//!   first takes a transaction-scoped advisory lock per tag (`pg_advisory_xact_lock`,
//!   sorted, so two transactions naming the same tags cannot deadlock). Two replicas
//!   deciding the same tag are therefore serialised at the database for the short
//!   moment of the write, whatever their process-local locks say;
//! - a free tag is taken by inserting a claim *before* forwarding, in such a
//!   transaction; the replica that loses the race reads the winner's claim back and
//!   refuses (`push.rs`: "claimed by another writer"). An advance (append, audited move,
//!   release) is claimed only if the tag is still pinned to the digest it was decided
//!   against, so of two replicas' appends one wins and the other is refused;
//! - a claim lives in the database, not in the replica: a replica killed at any point
//!   leaves either nothing (before the commit of the claim) or the claim, which every
//!   replica then treats like a pin for every other digest;
//! - a commit is durable before `Ok` returns (the server's `synchronous_commit`, on by
//!   default; a 201 is sent only after the pin's commit);
//! - when the database cannot be reached or a statement fails, the call fails and the
//!   write is refused (503); the pool reconnects by itself once the database is back.
//!
//! The schema is created and migrated at start by [`migrate`], under a session advisory
//! lock so replicas starting together apply each migration once; a database holding a
//! newer schema than this tagpin knows is refused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use postgres::{Client, NoTls, Transaction};
use r2d2::Pool;
use r2d2_postgres::PostgresConnectionManager;

use super::{
    Claim, ClaimKind, Exported, HistoryEntry, HistoryEvent, ImportOutcome, Pin, PinSource, PinStore, Protect, Refused,
    Release, StoreError, TagState, MAX_REFUSALS,
};
use crate::oci::{Digest, Repository, Tag};

/// Versioned migrations, applied in order; the version is the index plus one.
const MIGRATIONS: &[&str] = &[include_str!("migrations/0001_init.sql")];

/// The advisory lock key that serialises migrations across replicas ("tagpin" in ASCII).
const MIGRATION_LOCK: i64 = 0x7461_6770_696e;

type Manager = PostgresConnectionManager<NoTls>;

pub struct PgStore {
    pool: Pool<Manager>,
    /// The connection holding the leader lock while this replica leads.
    leader: std::sync::Mutex<Option<r2d2::PooledConnection<Manager>>>,
    /// The schema is known to be current. Until then every call migrates first; after,
    /// none does: migrating takes the migration lock, so doing it on every call would
    /// serialise every store call of every replica behind one session lock.
    migrated: AtomicBool,
}

/// The session advisory lock one replica holds to run singleton work ("drift" in ASCII).
const LEADER_LOCK: i64 = 0x0064_7269_6674;

/// Errors never carry the connection string: `postgres::Error` does not print it. Its
/// `Display` of a server error is only "db error", so the server's code and message are
/// added, which is what an operator needs to act.
fn db(e: postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(d) => StoreError::Unavailable(format!("database: {} ({})", d.message(), d.code().code())),
        None => StoreError::Unavailable(format!("database: {e}")),
    }
}

fn pool_err(e: r2d2::Error) -> StoreError {
    StoreError::Unavailable(format!("database: {e}"))
}

fn corrupt(key: &str, e: impl ToString) -> StoreError {
    StoreError::Corrupt {
        key: key.to_owned(),
        why: e.to_string(),
    }
}

impl PgStore {
    /// Connect to `config` (a parsed URL, password already set) and migrate the schema.
    /// An unreachable database does not stop tagpin: the store answers with errors (every
    /// decided write refused) until the database answers, and migrates then.
    pub fn open(config: postgres::Config) -> Result<Self, StoreError> {
        let mut config = config;
        config.connect_timeout(Duration::from_secs(3));
        // A statement that hangs (a lock held by a stuck session, a failing-over server)
        // must not hold a push forever.
        config.options("-c statement_timeout=5000 -c lock_timeout=5000");
        let manager = PostgresConnectionManager::new(config, NoTls);
        let pool = Pool::builder()
            .max_size(16)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(3))
            .build_unchecked(manager);
        let store = Self {
            pool,
            leader: std::sync::Mutex::new(None),
            migrated: AtomicBool::new(false),
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

    fn client(&self) -> Result<r2d2::PooledConnection<Manager>, StoreError> {
        let mut c = self.pool.get().map_err(pool_err)?;
        // A replica that started while the database was down migrates on first use.
        if !self.migrated.load(Ordering::Acquire) {
            migrate(&mut c)?;
            self.migrated.store(true, Ordering::Release);
        }
        Ok(c)
    }

    /// Run `f` in a transaction holding the advisory locks of `keys`.
    fn with_locks<T>(
        &self,
        keys: &mut Vec<String>,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut c = self.client()?;
        let mut tx = c.transaction().map_err(db)?;
        keys.sort();
        keys.dedup();
        for k in keys.iter() {
            tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[k])
                .map_err(db)?;
        }
        let out = f(&mut tx)?;
        tx.commit().map_err(db)?;
        Ok(out)
    }
}

/// The advisory lock name of a tag (hashed to the lock's 64-bit key by the server). Not
/// `\0`-separated like sled's keys: PostgreSQL text cannot hold a NUL byte, and a `:`
/// cannot occur in a validated repository name, so the names cannot collide either.
fn lock_key(repo: &Repository, tag: &Tag) -> String {
    format!("{repo}:{tag}")
}

/// Apply the migrations this database lacks, one replica at a time.
pub fn migrate(c: &mut Client) -> Result<(), StoreError> {
    c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .map_err(db)?;
    let result = (|| {
        c.batch_execute(
            "CREATE TABLE IF NOT EXISTS tagpin_schema (version INT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .map_err(db)?;
        let current: i32 = c
            .query_one("SELECT COALESCE(MAX(version), 0) FROM tagpin_schema", &[])
            .map_err(db)?
            .get(0);
        let known = MIGRATIONS.len() as i32;
        if current > known {
            return Err(StoreError::Corrupt {
                key: "tagpin_schema".into(),
                why: format!(
                    "the database holds schema version {current}, this tagpin knows up to {known}: upgrade tagpin"
                ),
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let version = i as i32 + 1;
            let mut tx = c.transaction().map_err(db)?;
            tx.batch_execute(sql).map_err(db)?;
            tx.execute(
                "INSERT INTO tagpin_schema (version, applied_at) VALUES ($1, $2)",
                &[&version, &(super::now_secs() as i64)],
            )
            .map_err(db)?;
            tx.commit().map_err(db)?;
            tracing::info!(version, "database schema migrated");
        }
        Ok(())
    })();
    let _ = c.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    result
}

fn source_str(s: PinSource) -> &'static str {
    match s {
        PinSource::Push => "push",
        PinSource::Adopted => "adopted",
    }
}

fn kind_str(k: ClaimKind) -> &'static str {
    match k {
        ClaimKind::New => "new",
        ClaimKind::Append => "append",
        ClaimKind::AuditMove => "audit_move",
        ClaimKind::Release => "release",
    }
}

fn pin_of(row: &postgres::Row, key: &str) -> Result<Pin, StoreError> {
    let digest: String = row.get("digest");
    let source: String = row.get("source");
    let history: serde_json::Value = row.get("history");
    Ok(Pin {
        digest: Digest::parse(&digest).map_err(|e| corrupt(key, e))?,
        source: match source.as_str() {
            "push" => PinSource::Push,
            "adopted" => PinSource::Adopted,
            other => return Err(corrupt(key, format!("unknown source {other}"))),
        },
        pinned_at: row.get::<_, i64>("pinned_at") as u64,
        history: serde_json::from_value(history).map_err(|e| corrupt(key, e))?,
    })
}

fn claim_of(row: &postgres::Row, key: &str) -> Result<Claim, StoreError> {
    let digest: String = row.get("digest");
    let kind: String = row.get("kind");
    Ok(Claim {
        digest: Digest::parse(&digest).map_err(|e| corrupt(key, e))?,
        request_id: row.get("request_id"),
        claimed_at: row.get::<_, i64>("claimed_at") as u64,
        kind: match kind.as_str() {
            "new" => ClaimKind::New,
            "append" => ClaimKind::Append,
            "audit_move" => ClaimKind::AuditMove,
            "release" => ClaimKind::Release,
            other => return Err(corrupt(key, format!("unknown claim kind {other}"))),
        },
    })
}

/// The state of one tag, read inside a transaction (or on a plain connection).
fn read_state<C: postgres::GenericClient>(
    c: &mut C,
    repo: &Repository,
    tag: &Tag,
) -> Result<Option<TagState>, StoreError> {
    let key = lock_key(repo, tag);
    let pin = c
        .query_opt(
            "SELECT digest, source, pinned_at, history FROM pins WHERE repository = $1 AND tag = $2",
            &[&repo.as_str(), &tag.as_str()],
        )
        .map_err(db)?
        .map(|r| pin_of(&r, &key))
        .transpose()?;
    let claim = c
        .query_opt(
            "SELECT digest, request_id, claimed_at, kind FROM claims WHERE repository = $1 AND tag = $2",
            &[&repo.as_str(), &tag.as_str()],
        )
        .map_err(db)?
        .map(|r| claim_of(&r, &key))
        .transpose()?;
    Ok(match (pin, claim) {
        (Some(pin), Some(claim)) => Some(TagState::Advancing { pin, claim }),
        (Some(pin), None) => Some(TagState::Pinned(pin)),
        (None, Some(claim)) => Some(TagState::Claimed(claim)),
        (None, None) => None,
    })
}

fn write_pin<C: postgres::GenericClient>(c: &mut C, repo: &Repository, tag: &Tag, pin: &Pin) -> Result<(), StoreError> {
    let history = serde_json::to_value(&pin.history).expect("serialising history cannot fail");
    c.execute(
        "INSERT INTO pins (repository, tag, digest, source, pinned_at, history) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (repository, tag) DO UPDATE SET digest = EXCLUDED.digest, source = EXCLUDED.source,
         pinned_at = EXCLUDED.pinned_at, history = EXCLUDED.history",
        &[
            &repo.as_str(),
            &tag.as_str(),
            &pin.digest.as_str(),
            &source_str(pin.source),
            &(pin.pinned_at as i64),
            &history,
        ],
    )
    .map_err(db)?;
    Ok(())
}

fn write_claim<C: postgres::GenericClient>(
    c: &mut C,
    repo: &Repository,
    tag: &Tag,
    claim: &Claim,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO claims (repository, tag, digest, request_id, claimed_at, kind) VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &repo.as_str(),
            &tag.as_str(),
            &claim.digest.as_str(),
            &claim.request_id,
            &(claim.claimed_at as i64),
            &kind_str(claim.kind),
        ],
    )
    .map_err(db)?;
    Ok(())
}

fn delete_claim<C: postgres::GenericClient>(c: &mut C, repo: &Repository, tag: &Tag) -> Result<(), StoreError> {
    c.execute(
        "DELETE FROM claims WHERE repository = $1 AND tag = $2",
        &[&repo.as_str(), &tag.as_str()],
    )
    .map_err(db)?;
    Ok(())
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
    fn state(&self, repo: &Repository, tag: &Tag) -> Result<Option<TagState>, StoreError> {
        let mut c = self.client()?;
        read_state(&mut *c, repo, tag)
    }

    fn pin_if_absent(&self, repo: &Repository, pins: &[(Tag, Pin)]) -> Result<Vec<TagState>, StoreError> {
        let mut keys = pins.iter().map(|(t, _)| lock_key(repo, t)).collect();
        self.with_locks(&mut keys, |tx| {
            let mut in_force = Vec::with_capacity(pins.len());
            for (tag, pin) in pins {
                match read_state(tx, repo, tag)? {
                    Some(state) => in_force.push(state),
                    None => {
                        write_pin(tx, repo, tag, pin)?;
                        in_force.push(TagState::Pinned(pin.clone()));
                    }
                }
            }
            Ok(in_force)
        })
    }

    fn claim(&self, repo: &Repository, tags: &[Tag], claim: &Claim) -> Result<Vec<TagState>, StoreError> {
        let mut keys = tags.iter().map(|t| lock_key(repo, t)).collect();
        self.with_locks(&mut keys, |tx| {
            let mut in_force = Vec::with_capacity(tags.len());
            for tag in tags {
                match read_state(tx, repo, tag)? {
                    Some(state) => in_force.push(state),
                    None => {
                        write_claim(tx, repo, tag, claim)?;
                        in_force.push(TagState::Claimed(claim.clone()));
                    }
                }
            }
            Ok(in_force)
        })
    }

    fn claim_advance(
        &self,
        repo: &Repository,
        tag: &Tag,
        from: &Digest,
        claim: &Claim,
    ) -> Result<TagState, StoreError> {
        let mut keys = vec![lock_key(repo, tag)];
        self.with_locks(&mut keys, |tx| match read_state(tx, repo, tag)? {
            Some(TagState::Pinned(pin)) if &pin.digest == from => {
                write_claim(tx, repo, tag, claim)?;
                Ok(TagState::Advancing {
                    pin,
                    claim: claim.clone(),
                })
            }
            Some(other) => Ok(other),
            None => Err(StoreError::Corrupt {
                key: format!("{repo}:{tag}"),
                why: "an advance was claimed for a tag that has no pin".into(),
            }),
        })
    }

    fn confirm(&self, repo: &Repository, tags: &[Tag], digest: &Digest) -> Result<Vec<TagState>, StoreError> {
        let mut keys = tags.iter().map(|t| lock_key(repo, t)).collect();
        self.with_locks(&mut keys, |tx| {
            let mut in_force = Vec::with_capacity(tags.len());
            for tag in tags {
                match read_state(tx, repo, tag)? {
                    Some(TagState::Claimed(c)) if &c.digest == digest => {
                        let mut pin = Pin::now(digest.clone(), PinSource::Push);
                        pin.history[0].request_id = Some(c.request_id.clone());
                        delete_claim(tx, repo, tag)?;
                        write_pin(tx, repo, tag, &pin)?;
                        in_force.push(TagState::Pinned(pin));
                    }
                    Some(TagState::Advancing { mut pin, claim }) if &claim.digest == digest => {
                        let from = std::mem::replace(&mut pin.digest, digest.clone());
                        let event = match claim.kind {
                            ClaimKind::AuditMove => HistoryEvent::AuditMove,
                            ClaimKind::Release => HistoryEvent::Released,
                            ClaimKind::Append | ClaimKind::New => HistoryEvent::Append,
                        };
                        let mut entry = HistoryEntry::new(event, digest.clone(), Some(from));
                        entry.request_id = Some(claim.request_id.clone());
                        if claim.kind == ClaimKind::Release {
                            // The release is used up with this push, in the same commit.
                            if let Some(row) = tx
                                .query_opt(
                                    "DELETE FROM releases WHERE repository = $1 AND tag = $2 RETURNING record",
                                    &[&repo.as_str(), &tag.as_str()],
                                )
                                .map_err(db)?
                            {
                                let r: Release =
                                    serde_json::from_value(row.get(0)).map_err(|e| corrupt(&lock_key(repo, tag), e))?;
                                entry.by = Some(r.by);
                                entry.reason = Some(r.reason);
                            }
                        }
                        pin.history.push(entry);
                        delete_claim(tx, repo, tag)?;
                        write_pin(tx, repo, tag, &pin)?;
                        in_force.push(TagState::Pinned(pin));
                    }
                    Some(state) => in_force.push(state),
                    None => {
                        let pin = Pin::now(digest.clone(), PinSource::Push);
                        write_pin(tx, repo, tag, &pin)?;
                        in_force.push(TagState::Pinned(pin));
                    }
                }
            }
            Ok(in_force)
        })
    }

    fn withdraw(&self, repo: &Repository, tags: &[Tag], request_id: &str) -> Result<(), StoreError> {
        let mut keys = tags.iter().map(|t| lock_key(repo, t)).collect();
        self.with_locks(&mut keys, |tx| {
            for tag in tags {
                tx.execute(
                    "DELETE FROM claims WHERE repository = $1 AND tag = $2 AND request_id = $3",
                    &[&repo.as_str(), &tag.as_str(), &request_id],
                )
                .map_err(db)?;
            }
            Ok(())
        })
    }

    fn record_event(&self, repo: &Repository, tag: &Tag, entry: &HistoryEntry) -> Result<(), StoreError> {
        let mut keys = vec![lock_key(repo, tag)];
        self.with_locks(&mut keys, |tx| {
            if let Some(TagState::Pinned(mut pin) | TagState::Advancing { mut pin, .. }) = read_state(tx, repo, tag)? {
                pin.history.push(entry.clone());
                write_pin(tx, repo, tag, &pin)?;
            }
            Ok(())
        })
    }

    fn record_refusal(&self, repo: &Repository, tag: &Tag, refused: &Refused) -> Result<(), StoreError> {
        let record = serde_json::to_value(refused).expect("serialising a refusal cannot fail");
        let mut keys = vec![lock_key(repo, tag)];
        self.with_locks(&mut keys, |tx| {
            tx.execute(
                "INSERT INTO refused (repository, tag, record) VALUES ($1, $2, $3)",
                &[&repo.as_str(), &tag.as_str(), &record],
            )
            .map_err(db)?;
            tx.execute(
                "DELETE FROM refused WHERE repository = $1 AND tag = $2 AND id NOT IN
                 (SELECT id FROM refused WHERE repository = $1 AND tag = $2 ORDER BY id DESC LIMIT $3)",
                &[&repo.as_str(), &tag.as_str(), &(MAX_REFUSALS as i64)],
            )
            .map_err(db)?;
            Ok(())
        })
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
        let mut c = self.client()?;
        c.execute(
            "INSERT INTO deletes (repository, digest, request_id, started_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
            &[
                &repo.as_str(),
                &digest.as_str(),
                &request_id,
                &(super::now_secs() as i64),
            ],
        )
        .map_err(db)?;
        Ok(())
    }

    fn end_delete(&self, repo: &Repository, digest: &Digest, request_id: Option<&str>) -> Result<(), StoreError> {
        let mut c = self.client()?;
        match request_id {
            Some(id) => c.execute(
                "DELETE FROM deletes WHERE repository = $1 AND digest = $2 AND request_id = $3",
                &[&repo.as_str(), &digest.as_str(), &id],
            ),
            None => c.execute(
                "DELETE FROM deletes WHERE repository = $1 AND digest = $2",
                &[&repo.as_str(), &digest.as_str()],
            ),
        }
        .map_err(db)?;
        Ok(())
    }

    fn delete_in_flight(&self, repo: &Repository, digest: &Digest) -> Result<bool, StoreError> {
        let mut c = self.client()?;
        Ok(c.query_opt(
            "SELECT 1 FROM deletes WHERE repository = $1 AND digest = $2 LIMIT 1",
            &[&repo.as_str(), &digest.as_str()],
        )
        .map_err(db)?
        .is_some())
    }

    fn protect(&self, repo: &Repository, holder: &Digest, refs: &[Digest], how: Protect) -> Result<(), StoreError> {
        // Every commit is durable here; there is no fsync to save.
        let mut c = self.client()?;
        let mut tx = c.transaction().map_err(db)?;
        for r in refs {
            tx.execute(
                "INSERT INTO refs (repository, ref, holder) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&repo.as_str(), &r.as_str(), &holder.as_str()],
            )
            .map_err(db)?;
        }
        if how.complete {
            tx.execute(
                "INSERT INTO holders (repository, holder) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&repo.as_str(), &holder.as_str()],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)
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
        let mut c = self.client()?;
        let (after_repo, after_tag) = after.map_or(("", ""), |(r, t)| (r.as_str(), t.as_str()));
        // Byte order (COLLATE "C") matches sled's key order, so a cursor means the same
        // on both backends; `\0` sorts before any character of a name.
        let rows = c
            .query(
                "SELECT k.repository, k.tag FROM (
                   SELECT repository, tag FROM pins UNION SELECT repository, tag FROM claims) k
                 WHERE ($1::text IS NULL OR k.repository = $1)
                   AND (k.repository COLLATE \"C\", k.tag COLLATE \"C\") > ($2 COLLATE \"C\", $3 COLLATE \"C\")
                 ORDER BY k.repository COLLATE \"C\", k.tag COLLATE \"C\" LIMIT $4",
                &[&repo.map(Repository::as_str), &after_repo, &after_tag, &(limit as i64)],
            )
            .map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let (r, t): (String, String) = (row.get(0), row.get(1));
            let key = format!("{r}:{t}");
            let r = Repository::parse(&r).map_err(|e| corrupt(&key, e))?;
            let t = Tag::parse(&t).map_err(|e| corrupt(&key, e))?;
            if let Some(state) = read_state(&mut *c, &r, &t)? {
                out.push((r, t, state));
            }
        }
        Ok(out)
    }

    fn set_release(&self, repo: &Repository, tag: &Tag, release: &Release) -> Result<(), StoreError> {
        let record = serde_json::to_value(release).expect("serialising a release cannot fail");
        let mut c = self.client()?;
        c.execute(
            "INSERT INTO releases (repository, tag, record) VALUES ($1, $2, $3)
             ON CONFLICT (repository, tag) DO UPDATE SET record = EXCLUDED.record",
            &[&repo.as_str(), &tag.as_str(), &record],
        )
        .map_err(db)?;
        Ok(())
    }

    fn release(&self, repo: &Repository, tag: &Tag) -> Result<Option<Release>, StoreError> {
        let mut c = self.client()?;
        c.query_opt(
            "SELECT record FROM releases WHERE repository = $1 AND tag = $2",
            &[&repo.as_str(), &tag.as_str()],
        )
        .map_err(db)?
        .map(|r| serde_json::from_value(r.get(0)).map_err(|e| corrupt(&lock_key(repo, tag), e)))
        .transpose()
    }

    fn end_release(
        &self,
        repo: &Repository,
        tag: &Tag,
        event: HistoryEvent,
        request_id: Option<&str>,
    ) -> Result<Option<Release>, StoreError> {
        let mut keys = vec![lock_key(repo, tag)];
        self.with_locks(&mut keys, |tx| {
            let Some(row) = tx
                .query_opt(
                    "DELETE FROM releases WHERE repository = $1 AND tag = $2 RETURNING record",
                    &[&repo.as_str(), &tag.as_str()],
                )
                .map_err(db)?
            else {
                return Ok(None);
            };
            let release: Release = serde_json::from_value(row.get(0)).map_err(|e| corrupt(&lock_key(repo, tag), e))?;
            if let Some(TagState::Pinned(mut pin) | TagState::Advancing { mut pin, .. }) = read_state(tx, repo, tag)? {
                let mut entry = HistoryEntry::new(event, pin.digest.clone(), None);
                entry.by = Some(release.by.clone());
                entry.reason = Some(release.reason.clone());
                entry.request_id = request_id.map(str::to_owned);
                pin.history.push(entry);
                write_pin(tx, repo, tag, &pin)?;
            }
            Ok(Some(release))
        })
    }

    fn import(&self, records: &[Exported]) -> Result<ImportOutcome, StoreError> {
        let mut keys = records.iter().map(|r| lock_key(&r.repository, &r.tag)).collect();
        self.with_locks(&mut keys, |tx| {
            let (mut outcome, writes) = super::plan_import(records, |r| read_state(tx, &r.repository, &r.tag))?;
            if !outcome.conflicts.is_empty() {
                // Nothing written: the transaction commits no change.
                return Ok(outcome);
            }
            for r in writes {
                if let Some(pin) = r.pin() {
                    write_pin(tx, &r.repository, &r.tag, &pin)?;
                }
                if let Some(claim) = &r.claim {
                    write_claim(tx, &r.repository, &r.tag, claim)?;
                }
                outcome.imported += 1;
            }
            Ok(outcome)
        })
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

    fn check(&self) -> Result<(), StoreError> {
        let mut c = self.client()?;
        c.query_one("SELECT 1", &[]).map_err(db)?;
        Ok(())
    }
}
