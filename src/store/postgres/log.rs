//! The log in the PostgreSQL backend (schema 5): `log_entries` (index -> leaf bytes),
//! `log_nodes` (level, index -> subtree hash) and the one row of `log_head` (size and
//! right frontier). Every append locks the head row, in the transaction that writes the
//! records its entries describe, after the tags' own locks: appends from every replica
//! are numbered in one order, with no gap and no index twice, and commit with their
//! bindings or not at all.

use postgres::GenericClient;

use super::{corrupt, db, PgStore};
use crate::log::{self, Frontier, Hash, LogEntry, NodeId};
use crate::oci::{Repository, Tag};
use crate::store::{Pin, StoreError};

fn decode_head(bytes: &[u8]) -> Result<Frontier, StoreError> {
    Frontier::decode(bytes).ok_or_else(|| corrupt("log_head", "not a log head"))
}

/// The head, locked until the transaction ends.
pub(super) fn lock_head<C: GenericClient>(c: &mut C) -> Result<Frontier, StoreError> {
    let row = c
        .query_one("SELECT frontier FROM log_head WHERE id FOR UPDATE", &[])
        .map_err(db)?;
    decode_head(row.get(0))
}

/// Append `entries` (numbered from `head.size()`, the head locked by [`lock_head`]), in
/// one statement.
pub(super) fn append<C: GenericClient>(c: &mut C, head: &mut Frontier, entries: &[LogEntry]) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let appended = log::append(head, entries);
    let (idx, leaves): (Vec<i64>, Vec<Vec<u8>>) = appended.leaves.into_iter().map(|(i, l)| (i as i64, l)).unzip();
    let mut levels = Vec::with_capacity(appended.nodes.len());
    let mut at = Vec::with_capacity(appended.nodes.len());
    let mut hashes = Vec::with_capacity(appended.nodes.len());
    for (id, hash) in appended.nodes {
        levels.push(i16::from(id.level));
        at.push(id.index as i64);
        hashes.push(hash.to_vec());
    }
    c.execute(
        "WITH e AS (INSERT INTO log_entries (idx, leaf) SELECT * FROM unnest($1::bigint[], $2::bytea[])),
              n AS (INSERT INTO log_nodes (level, idx, hash)
                    SELECT * FROM unnest($3::smallint[], $4::bigint[], $5::bytea[]))
         UPDATE log_head SET size = $6, frontier = $7 WHERE id",
        &[
            &idx,
            &leaves,
            &levels,
            &at,
            &hashes,
            &(head.size() as i64),
            &head.encode(),
        ],
    )
    .map_err(db)?;
    Ok(())
}

/// One `genesis` entry per pin, in key order, each pin's history stamped with it: run
/// once, in the transaction of the migration to schema 5 (under the migration lock).
pub(super) fn genesis(tx: &mut postgres::Transaction<'_>) -> Result<u64, StoreError> {
    let mut head = lock_head(tx)?;
    let now = tx
        .query_one(&format!("SELECT {}", super::tags::DB_NOW), &[])
        .map_err(db)?
        .get::<_, i64>(0)
        .max(0) as u64;
    let (mut after_repo, mut after_tag) = (String::new(), String::new());
    loop {
        let rows = tx
            .query(
                "SELECT repository, tag, digest, history FROM pins
                 WHERE (repository COLLATE \"C\", tag COLLATE \"C\") > ($1 COLLATE \"C\", $2 COLLATE \"C\")
                 ORDER BY repository COLLATE \"C\", tag COLLATE \"C\" LIMIT 1000",
                &[&after_repo, &after_tag],
            )
            .map_err(db)?;
        let Some(last) = rows.last() else {
            break;
        };
        (after_repo, after_tag) = (last.get(0), last.get(1));
        for row in &rows {
            let (r, t, d): (String, String, String) = (row.get(0), row.get(1), row.get(2));
            let key = format!("{r}:{t}");
            let mut pin = Pin {
                digest: crate::oci::Digest::parse(&d).map_err(|e| corrupt(&key, e))?,
                source: crate::store::PinSource::Push,
                pinned_at: 0,
                history: serde_json::from_value(row.get(3)).map_err(|e| corrupt(&key, e))?,
            };
            let repo = Repository::parse(&r).map_err(|e| corrupt(&key, e))?;
            let tag = Tag::parse(&t).map_err(|e| corrupt(&key, e))?;
            let entry = log::entry::genesis(&repo, &tag, &mut pin, now, head.size());
            append(tx, &mut head, std::slice::from_ref(&entry))?;
            let history = serde_json::to_value(&pin.history).expect("serialising history cannot fail");
            tx.execute(
                "UPDATE pins SET history = $3 WHERE repository = $1 AND tag = $2",
                &[&r, &t, &history],
            )
            .map_err(db)?;
        }
    }
    Ok(head.size())
}

impl PgStore {
    /// The head, durable: read in a transaction that writes WAL (the row lock), so its
    /// commit is synchronous and flushes the WAL of every commit before it, among them a
    /// settlement committed without waiting ([`crate::store::PinStore::confirm`]). A
    /// transaction id alone is not enough: PostgreSQL flushes at commit only when the
    /// transaction wrote WAL before its commit record (xact.c, `RecordTransactionCommit`).
    /// `FOR KEY SHARE`, the weakest row lock, waits only for an append in progress.
    pub(super) fn head(&self) -> Result<Frontier, StoreError> {
        let mut c = self.client()?;
        let mut tx = c.transaction().map_err(db)?;
        let row = tx
            .query_one("SELECT frontier FROM log_head WHERE id FOR KEY SHARE", &[])
            .map_err(db)?;
        let head = decode_head(row.get(0))?;
        tx.commit().map_err(db)?;
        Ok(head)
    }

    pub(super) fn leaves(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut c = self.client()?;
        let rows = c
            .query(
                "SELECT leaf FROM log_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx",
                &[&(start.min(i64::MAX as u64) as i64), &(end.min(i64::MAX as u64) as i64)],
            )
            .map_err(db)?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    pub(super) fn nodes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError> {
        let mut c = self.client()?;
        let levels: Vec<i16> = ids.iter().map(|id| i16::from(id.level)).collect();
        let at: Vec<i64> = ids.iter().map(|id| id.index as i64).collect();
        let rows = c
            .query(
                "SELECT w.n, l.hash FROM unnest($1::smallint[], $2::bigint[]) WITH ORDINALITY AS w(level, idx, n)
                 LEFT JOIN log_nodes l ON l.level = w.level AND l.idx = w.idx ORDER BY w.n",
                &[&levels, &at],
            )
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                r.get::<_, Option<Vec<u8>>>(1)
                    .and_then(|h| <Hash>::try_from(h).ok())
                    .ok_or_else(|| corrupt("log_nodes", "a subtree hash of the log is missing"))
            })
            .collect()
    }
}
