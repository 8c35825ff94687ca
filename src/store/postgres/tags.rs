//! A tag's record in the PostgreSQL backend: its pin (`pins`), writes in flight (one
//! `claims` row per request, in the order written), release (`releases`) and the history
//! of a tag with no pin yet (`notes`), read in
//! one statement and changed in one transaction under the tag's advisory lock; and the
//! views built from them (listing).

use std::sync::atomic::Ordering;

use postgres::{GenericClient, Transaction};

use super::cache::notify;
use super::import::gate_key;
use super::log;
use super::{corrupt, db, lock_key, PgStore};
use crate::log::entry;
use crate::oci::{Digest, Repository, Tag};
use crate::store::{Claim, ClaimKind, Pin, PinSource, Protection, ReadView, StoreError, TagRecord, TagState};

/// The database's clock, in whole seconds since the Unix epoch. `clock_timestamp()`, not
/// `now()`: `now()` is when the transaction began, before it waited for its locks, so a
/// transaction that waited would see time earlier than the one it waited for.
pub(super) const DB_NOW: &str = "floor(extract(epoch FROM clock_timestamp()))::bigint";

/// The columns of a tag's whole record, for the tag named by the SQL expressions `repo`
/// and `tag` (the pin's row joined as `p`), and the database's clock.
pub(super) fn record_columns(repo: &str, tag: &str) -> String {
    format!(
        "p.digest, p.source, p.pinned_at, p.history,
           (SELECT COALESCE(jsonb_agg(jsonb_build_object(
                'digest', c.digest, 'request_id', c.request_id, 'claimed_at', c.claimed_at,
                'kind', c.kind, 'release_id', c.release_id) ORDER BY c.position), '[]'::jsonb)
            FROM claims c WHERE c.repository = {repo} AND c.tag = {tag}) AS writes,
           (SELECT r.record FROM releases r WHERE r.repository = {repo} AND r.tag = {tag}) AS release,
           (SELECT n.history FROM notes n WHERE n.repository = {repo} AND n.tag = {tag}) AS notes,
           {DB_NOW} AS now"
    )
}

/// A tag's whole record and the database's clock, in one statement (one snapshot).
fn record_sql() -> String {
    format!(
        "SELECT {} FROM (VALUES (1)) AS one LEFT JOIN pins p ON p.repository = $1 AND p.tag = $2",
        record_columns("$1", "$2")
    )
}

/// The record of `tag`, and the database's clock when it was read.
pub(super) fn read_record<C: GenericClient>(
    c: &mut C,
    repo: &Repository,
    tag: &Tag,
) -> Result<(TagRecord, u64), StoreError> {
    let row = c
        .query_one(&record_sql(), &[&repo.as_str(), &tag.as_str()])
        .map_err(db)?;
    record_of_row(&row, &lock_key(repo, tag))
}

/// A record read with [`record_columns`] (`key` names it in errors), and the clock.
pub(super) fn record_of_row(row: &postgres::Row, key: &str) -> Result<(TagRecord, u64), StoreError> {
    let pin = match row.get::<_, Option<String>>("digest") {
        Some(digest) => Some(Pin {
            digest: crate::oci::Digest::parse(&digest).map_err(|e| corrupt(key, e))?,
            source: match row.get::<_, String>("source").as_str() {
                "push" => PinSource::Push,
                "adopted" => PinSource::Adopted,
                other => return Err(corrupt(key, format!("unknown source {other}"))),
            },
            pinned_at: row.get::<_, i64>("pinned_at") as u64,
            history: serde_json::from_value(row.get("history")).map_err(|e| corrupt(key, e))?,
        }),
        None => None,
    };
    let writes: Vec<Claim> = serde_json::from_value(row.get("writes")).map_err(|e| corrupt(key, e))?;
    let release = row
        .get::<_, Option<serde_json::Value>>("release")
        .map(|v| serde_json::from_value(v).map_err(|e| corrupt(key, e)))
        .transpose()?;
    let history = match row.get::<_, Option<serde_json::Value>>("notes") {
        Some(v) => serde_json::from_value(v).map_err(|e| corrupt(key, e))?,
        None => Vec::new(),
    };
    let now = row.get::<_, i64>("now").max(0) as u64;
    Ok((
        TagRecord {
            pin,
            writes,
            release,
            history,
        },
        now,
    ))
}

fn source_str(s: PinSource) -> &'static str {
    match s {
        PinSource::Push => "push",
        PinSource::Adopted => "adopted",
    }
}

/// As serde names it, so the rows read back through [`Claim`]'s own decoding.
fn kind_str(k: ClaimKind) -> &'static str {
    match k {
        ClaimKind::New => "new",
        ClaimKind::Append => "append",
        ClaimKind::AuditMove => "audit_move",
        ClaimKind::Release => "release",
        ClaimKind::Identical => "identical",
        ClaimKind::Delete => "delete",
    }
}

/// Write the parts of `after` that differ from `before` (what the tag holds now).
pub(super) fn write_record<C: GenericClient>(
    c: &mut C,
    repo: &Repository,
    tag: &Tag,
    before: &TagRecord,
    after: &TagRecord,
) -> Result<(), StoreError> {
    let (r, t) = (repo.as_str(), tag.as_str());
    if before.pin != after.pin {
        match &after.pin {
            Some(pin) => {
                let history = serde_json::to_value(&pin.history).expect("serialising history cannot fail");
                c.execute(
                    "INSERT INTO pins (repository, tag, digest, source, pinned_at, history)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (repository, tag) DO UPDATE SET digest = EXCLUDED.digest,
                       source = EXCLUDED.source, pinned_at = EXCLUDED.pinned_at, history = EXCLUDED.history",
                    &[
                        &r,
                        &t,
                        &pin.digest.as_str(),
                        &source_str(pin.source),
                        &(pin.pinned_at as i64),
                        &history,
                    ],
                )
            }
            None => c.execute("DELETE FROM pins WHERE repository = $1 AND tag = $2", &[&r, &t]),
        }
        .map_err(db)?;
    }
    if before.writes != after.writes {
        c.execute("DELETE FROM claims WHERE repository = $1 AND tag = $2", &[&r, &t])
            .map_err(db)?;
        for (position, w) in after.writes.iter().enumerate() {
            c.execute(
                "INSERT INTO claims (repository, tag, digest, request_id, claimed_at, kind, release_id, position)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &r,
                    &t,
                    &w.digest.as_str(),
                    &w.request_id,
                    &(w.claimed_at as i64),
                    &kind_str(w.kind),
                    &w.release_id,
                    &(position as i32),
                ],
            )
            .map_err(db)?;
        }
    }
    if before.release != after.release {
        match &after.release {
            Some(release) => {
                let record = serde_json::to_value(release).expect("serialising a release cannot fail");
                c.execute(
                    "INSERT INTO releases (repository, tag, record) VALUES ($1, $2, $3)
                     ON CONFLICT (repository, tag) DO UPDATE SET record = EXCLUDED.record",
                    &[&r, &t, &record],
                )
            }
            None => c.execute("DELETE FROM releases WHERE repository = $1 AND tag = $2", &[&r, &t]),
        }
        .map_err(db)?;
    }
    if before.history != after.history {
        if after.history.is_empty() {
            c.execute("DELETE FROM notes WHERE repository = $1 AND tag = $2", &[&r, &t])
        } else {
            let history = serde_json::to_value(&after.history).expect("serialising history cannot fail");
            c.execute(
                "INSERT INTO notes (repository, tag, history) VALUES ($1, $2, $3)
                 ON CONFLICT (repository, tag) DO UPDATE SET history = EXCLUDED.history",
                &[&r, &t, &history],
            )
        }
        .map_err(db)?;
    }
    Ok(())
}

impl PgStore {
    pub(super) fn read(&self, repo: &Repository, tag: &Tag) -> Result<TagRecord, StoreError> {
        let mut c = self.client()?;
        Ok(read_record(&mut *c, repo, tag)?.0)
    }

    /// What a manifest read needs of the tag, from the database: its pin and whether a
    /// write is in flight, in one statement (one snapshot).
    pub(super) fn read_view_fresh(&self, repo: &Repository, tag: &Tag) -> Result<ReadView, StoreError> {
        let mut c = self.client()?;
        let row = c
            .query_one(
                "SELECT (SELECT digest FROM pins WHERE repository = $1 AND tag = $2),
                   EXISTS (SELECT 1 FROM claims WHERE repository = $1 AND tag = $2),
                   (SELECT min(digest) FROM claims WHERE repository = $1 AND tag = $2
                    HAVING count(DISTINCT digest) = 1 AND bool_and(kind = 'new'))",
                &[&repo.as_str(), &tag.as_str()],
            )
            .map_err(db)?;
        let pin = row
            .get::<_, Option<String>>(0)
            .map(|d| crate::oci::Digest::parse(&d).map_err(|e| corrupt(&lock_key(repo, tag), e)))
            .transpose()?;
        let reserved = row
            .get::<_, Option<String>>(2)
            .filter(|_| pin.is_none())
            .map(|d| crate::oci::Digest::parse(&d).map_err(|e| corrupt(&lock_key(repo, tag), e)))
            .transpose()?;
        Ok(ReadView {
            pin,
            in_flight: row.get(1),
            reserved,
        })
    }

    /// [`crate::store::PinStore::update`]: one transaction holding every tag's lock, so
    /// `change` runs once, on what the last transaction on these tags committed. Of a tag
    /// named twice, the last copy is written.
    pub(super) fn update_records(
        &self,
        repo: &Repository,
        tags: &[Tag],
        how: Write<'_>,
        change: &mut dyn FnMut(u64, &mut [TagRecord]),
        events: Option<&mut crate::store::Notifying<'_>>,
    ) -> Result<Vec<TagRecord>, StoreError> {
        let mut keys = tags.iter().map(|t| lock_key(repo, t)).collect();
        self.with_locks(&mut keys, how.durable, |tx| {
            if let Some(refs) = how.refs {
                protect(tx, repo, refs)?;
            }
            let mut before = Vec::with_capacity(tags.len());
            // The clock is read with the records, after every lock is held.
            let mut now = None;
            for tag in tags {
                let (record, at) = read_record(tx, repo, tag)?;
                now.get_or_insert(at);
                before.push(record);
            }
            let now = match now {
                Some(at) => at,
                None => tx
                    .query_one(&format!("SELECT {DB_NOW}"), &[])
                    .map_err(db)?
                    .get::<_, i64>(0)
                    .max(0) as u64,
            };
            let mut after = before.clone();
            change(now, &mut after);
            let mut changed = Vec::new();
            let mut head = None;
            let mut entries = Vec::new();
            for i in crate::store::to_write(tags, &before, &after) {
                crate::store::check_writes(repo, &tags[i], &after[i])?;
                // The log's entries for this change, numbered after the head (locked
                // until commit, after the tags' locks), in this same transaction.
                let next = if entry::count(&before[i], &after[i]) > 0 {
                    let head = match &mut head {
                        Some(h) => h,
                        None => head.insert(log::lock_head(tx)?),
                    };
                    head.size() + entries.len() as u64
                } else {
                    0
                };
                entries.extend(entry::bindings(repo, &tags[i], &before[i], &mut after[i], next)?);
                write_record(tx, repo, &tags[i], &before[i], &after[i])?;
                changed.push(lock_key(repo, &tags[i]));
            }
            if let Some(head) = &mut head {
                log::append(tx, head, &entries)?;
            }
            if let Some(n) = events {
                super::outbox::notify_in(tx, n)?;
            }
            // Delivered at commit: every replica's read cache drops these tags.
            notify(tx, &changed)?;
            Ok(after)
        })
    }

    pub(super) fn claimed_tags(
        &self,
        after: Option<&(Repository, Tag)>,
        limit: usize,
    ) -> Result<Vec<(Repository, Tag)>, StoreError> {
        let mut c = self.client()?;
        let (after_repo, after_tag) = after.map_or(("", ""), |(r, t)| (r.as_str(), t.as_str()));
        let rows = c
            .query(
                "SELECT DISTINCT repository COLLATE \"C\", tag COLLATE \"C\" FROM claims
                 WHERE (repository COLLATE \"C\", tag COLLATE \"C\") > ($1 COLLATE \"C\", $2 COLLATE \"C\")
                 ORDER BY 1, 2 LIMIT $3",
                &[&after_repo, &after_tag, &(limit as i64)],
            )
            .map_err(db)?;
        rows.iter()
            .map(|row| {
                let (r, t): (String, String) = (row.get(0), row.get(1));
                let key = format!("{r}:{t}");
                Ok((
                    Repository::parse(&r).map_err(|e| corrupt(&key, e))?,
                    Tag::parse(&t).map_err(|e| corrupt(&key, e))?,
                ))
            })
            .collect()
    }

    pub(super) fn list_states(
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
            if let Some(state) = read_record(&mut *c, &r, &t)?.0.state() {
                out.push((r, t, state));
            }
        }
        Ok(out)
    }
}

/// How [`PgStore::update_records`] writes.
pub(super) struct Write<'a> {
    /// The commit waits for the disk (see the module docs).
    pub durable: bool,
    /// References recorded in the same transaction, first.
    pub refs: Option<&'a Protection>,
}

impl Default for Write<'_> {
    fn default() -> Self {
        Self {
            durable: true,
            refs: None,
        }
    }
}

/// Record the references of `p.holder`: one statement, whatever their number.
pub(super) fn protect<C: GenericClient>(c: &mut C, repo: &Repository, p: &Protection) -> Result<(), StoreError> {
    let refs: Vec<&str> = p.refs.iter().map(Digest::as_str).collect();
    c.execute(
        "WITH r AS (INSERT INTO refs (repository, ref, holder)
                    SELECT $1, unnest($2::text[]), $3 ON CONFLICT DO NOTHING)
         INSERT INTO holders (repository, holder) SELECT $1, $3 WHERE $4 ON CONFLICT DO NOTHING",
        &[&repo.as_str(), &refs, &p.holder.as_str(), &p.complete],
    )
    .map_err(db)?;
    Ok(())
}

impl PgStore {
    /// Run `f` in a transaction holding the advisory locks of `keys`. `durable`: the
    /// commit waits for its WAL to reach the disk (`false` only for
    /// [`PinStore::confirm`]; see the module docs).
    pub(super) fn with_locks<T>(
        &self,
        keys: &mut Vec<String>,
        durable: bool,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut c = self.client()?;
        let mut tx = c.transaction().map_err(db)?;
        keys.sort();
        keys.dedup();
        // With the first lock (one round trip): this session keeps the log, so schema 5's
        // trigger lets it write pins; how the commit waits; and, for a durable write (one
        // that can bind or claim a tag), the import gate, shared ([`super::import`]). A
        // confirmation does not take the gate: it only settles a tag that already has a
        // write in flight, which an import never writes (it is a conflict there). It
        // still waits for the log's head, which an import holds until it commits.
        let settings = if durable {
            concat!(
                "pg_advisory_xact_lock_shared(",
                gate_key!(),
                "), set_config('tagpin.log', 'on', true)"
            )
        } else {
            "set_config('tagpin.log', 'on', true), set_config('synchronous_commit', 'off', true)"
        };
        let mut first = true;
        for k in keys.iter() {
            let sql = if first {
                format!("SELECT pg_advisory_xact_lock(hashtextextended($1, 0)), {settings}")
            } else {
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))".to_owned()
            };
            first = false;
            tx.execute(&sql, &[k]).map_err(db)?;
        }
        if first {
            tx.execute(&format!("SELECT {settings}"), &[]).map_err(db)?;
        }
        let out = f(&mut tx)?;
        tx.commit().map_err(db)?;
        if durable {
            self.commits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(out)
    }
}
