//! Import into the PostgreSQL backend: one transaction for the whole import, so it
//! commits whole or not at all (a crash, a killed tagpin or a lost connection rolls it
//! back), fed a batch at a time, so memory stays bounded whatever the input's size.
//!
//! The transaction first takes the import gate exclusively: a transaction-level
//! advisory lock that every update takes shared in its first lock statement
//! ([`PgStore::with_locks`]). While the import runs, no write binds or claims a tag on any
//! replica (each waits up to `lock_timeout` and is then refused), so none can land
//! between the import's check and its write; reads go on. Then it locks the log's head
//! and, for each batch of [`BATCH`] records, finds tags named again (a temporary table of
//! the tags seen, dropped at commit), reads the batch's records in one statement, judges
//! them, and while no conflict has been found writes them: the pins in one statement,
//! their log entries in another. After the first conflict it only checks, to count every
//! conflict, and rolls back.
//!
//! The log's head stays locked until the import commits, so a settlement (which appends
//! to the log) and a read of the head wait for it too, and give up at `lock_timeout`:
//! a push forwarded before the import began and settling while it runs is answered 503,
//! its tag still reserved by its claim for the pushed digest (a repeat of the push, or
//! [`crate::handler::recover`], completes it).

use std::collections::HashMap;

use postgres::Transaction;

use super::cache::notify_every_tag;
use super::tags::{record_columns, record_of_row, write_record};
use super::{corrupt, db, lock_key, log, PgStore};
use crate::log::Frontier;
use crate::oci::{Repository, Tag};
use crate::store::{
    imported_record, judge, merge_refusals, named_twice, weight, Exported, ImportError, ImportOutcome, ImportSource,
    Refused, StoreError, TagRecord, Verdict, BATCH_WEIGHT,
};

/// Records read, judged and written per round of statements (at most, and at most
/// [`BATCH_WEIGHT`] in all).
const BATCH: usize = 1000;

/// The import gate's advisory lock key: a pair of int4s, a key space of its own, apart
/// from the bigint keys of tags and of the leader lock.
macro_rules! gate_key {
    () => {
        "1952540516, 1768779636"
    };
}
pub(super) use gate_key;

/// The records of a batch of tags (`$1` repositories, `$2` tags), in the batch's order.
/// Each tag's pin is looked up by key (`LATERAL`): the planner's statistics do not know
/// the rows this transaction inserted, and a join it planned from them could scan every
/// pin once per batch.
fn records_sql() -> String {
    format!(
        "SELECT {} FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(repository, tag, i)
         LEFT JOIN LATERAL (SELECT * FROM pins WHERE repository = k.repository AND tag = k.tag) p ON true
         ORDER BY k.i",
        record_columns("k.repository", "k.tag")
    )
}

impl PgStore {
    /// [`crate::store::PinStore::import_from`]: see the module docs.
    pub(super) fn import_stream(&self, source: &mut dyn ImportSource, by: &str) -> Result<ImportOutcome, ImportError> {
        let mut c = self.client()?;
        let mut tx = c.transaction().map_err(db)?;
        // No JIT: as the pins this transaction inserts grow, a batch's statements pass the
        // planner's JIT threshold and each would be compiled anew, taking longer than it runs.
        tx.batch_execute(concat!(
            "SELECT pg_advisory_xact_lock(",
            gate_key!(),
            "), set_config('tagpin.log', 'on', true), set_config('jit', 'off', true);
             CREATE TEMP TABLE tagpin_import_seen (repository text, tag text, digest text,
               PRIMARY KEY (repository, tag)) ON COMMIT DROP"
        ))
        .map_err(db)?;
        let mut head = log::lock_head(&mut tx)?;
        let mut outcome = ImportOutcome::default();
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            batch.clear();
            let mut held = 0;
            while batch.len() < BATCH && held < BATCH_WEIGHT {
                match source.next_record()? {
                    Some(r) => {
                        held += weight(&r);
                        batch.push(r);
                    }
                    None => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            import_batch(&mut tx, &batch, by, &mut head, &mut outcome)?;
        }
        if outcome.conflicting > 0 {
            // Dropped without a commit: everything this import wrote is rolled back.
            return Ok(ImportOutcome { imported: 0, ..outcome });
        }
        source.writing(&outcome);
        if outcome.imported > 0 {
            // An import writes only tags with no pin, which no replica caches; one
            // notification, not one per tag, in case a future cache holds more.
            notify_every_tag(&mut tx)?;
        }
        tx.commit().map_err(db)?;
        Ok(outcome)
    }
}

/// Check one batch, and write it while the import has found no conflict.
fn import_batch(
    tx: &mut Transaction<'_>,
    batch: &[Exported],
    by: &str,
    head: &mut Frontier,
    outcome: &mut ImportOutcome,
) -> Result<(), StoreError> {
    // The first record of each tag in the batch; a later one is checked against it.
    let mut first: HashMap<(&str, &str), usize> = HashMap::new();
    let mut again = Vec::new();
    for (i, r) in batch.iter().enumerate() {
        match first.entry((r.repository.as_str(), r.tag.as_str())) {
            std::collections::hash_map::Entry::Occupied(e) => again.push((i, batch[*e.get()].digest.as_str())),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(i);
            }
        }
    }
    let mut unique: Vec<usize> = first.into_values().collect();
    unique.sort_unstable();
    // Tags an earlier batch named: checked against that record, not against the store
    // (which may hold what this import wrote for it).
    let column = |f: fn(&Exported) -> &str| -> Vec<&str> { unique.iter().map(|&i| f(&batch[i])).collect() };
    let (repos, tags, digests) = (
        column(|r| r.repository.as_str()),
        column(|r| r.tag.as_str()),
        column(|r| r.digest.as_str()),
    );
    let earlier: HashMap<(String, String), String> = tx
        .query(
            // By key, as above (a temporary table has no statistics at all).
            "WITH seen AS (INSERT INTO tagpin_import_seen SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
                           ON CONFLICT DO NOTHING)
             SELECT k.r, k.t, s.digest FROM unnest($1::text[], $2::text[]) AS k(r, t)
             CROSS JOIN LATERAL (SELECT digest FROM tagpin_import_seen WHERE repository = k.r AND tag = k.t) s",
            &[&repos, &tags, &digests],
        )
        .map_err(db)?
        .iter()
        .map(|row| ((row.get(0), row.get(1)), row.get(2)))
        .collect();
    let mut fresh = Vec::with_capacity(unique.len());
    for &i in &unique {
        let r = &batch[i];
        match earlier.get(&(r.repository.to_string(), r.tag.to_string())) {
            Some(d) => again.push((i, d.as_str())),
            None => fresh.push(i),
        }
    }
    for (i, digest) in &again {
        if batch[*i].digest.as_str() != *digest {
            outcome.conflict(named_twice(&batch[*i]));
        }
    }
    let writes = judge_fresh(tx, batch, &fresh, outcome)?;
    if outcome.conflicting > 0 {
        return Ok(());
    }
    write_batch(tx, batch, writes, by, head, outcome)?;
    // The refused attempts of every record, written, unchanged or named again: evidence
    // the export carried, added to what the tag holds here.
    for r in batch.iter().filter(|r| !r.refused.is_empty()) {
        import_refusals(tx, &r.repository, &r.tag, &r.refused)?;
    }
    Ok(())
}

/// Read the records of the tags first named in this batch (`fresh`) and judge them:
/// those to write, with what the tag holds and the database's clock.
fn judge_fresh(
    tx: &mut Transaction<'_>,
    batch: &[Exported],
    fresh: &[usize],
    outcome: &mut ImportOutcome,
) -> Result<Vec<(usize, TagRecord, u64)>, StoreError> {
    let repos: Vec<&str> = fresh.iter().map(|&i| batch[i].repository.as_str()).collect();
    let tags: Vec<&str> = fresh.iter().map(|&i| batch[i].tag.as_str()).collect();
    let rows = tx.query(&records_sql(), &[&repos, &tags]).map_err(db)?;
    let mut writes = Vec::new();
    for (row, &i) in rows.iter().zip(fresh) {
        let r = &batch[i];
        let (before, now) = record_of_row(row, &lock_key(&r.repository, &r.tag))?;
        match judge(r, before.state()) {
            Ok(Verdict::Write) => writes.push((i, before, now)),
            Ok(Verdict::Unchanged) => outcome.unchanged += 1,
            Err(why) => outcome.conflict(why),
        }
    }
    Ok(writes)
}

/// Write the judged records of a batch with their log entries: a plain pin (the common
/// case) in one statement for the batch, anything else record by record.
fn write_batch(
    tx: &mut Transaction<'_>,
    batch: &[Exported],
    writes: Vec<(usize, TagRecord, u64)>,
    by: &str,
    head: &mut Frontier,
    outcome: &mut ImportOutcome,
) -> Result<(), StoreError> {
    let mut entries = Vec::with_capacity(writes.len());
    let (mut repos, mut tags, mut digests, mut sources, mut at, mut histories) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for (i, before, now) in writes {
        let r = &batch[i];
        let index = head.size() + entries.len() as u64;
        let (after, entry) = imported_record(r, &before, by, now, index);
        entries.extend(entry);
        match &after.pin {
            Some(pin) if after.writes.is_empty() && before.history.is_empty() => {
                repos.push(r.repository.as_str());
                tags.push(r.tag.as_str());
                digests.push(pin.digest.to_string());
                sources.push(match pin.source {
                    crate::store::PinSource::Push => "push",
                    crate::store::PinSource::Adopted => "adopted",
                });
                at.push(pin.pinned_at as i64);
                histories.push(serde_json::to_value(&pin.history).expect("serialising history cannot fail"));
            }
            _ => write_record(tx, &r.repository, &r.tag, &before, &after)?,
        }
        outcome.imported += 1;
    }
    if !repos.is_empty() {
        tx.execute(
            "INSERT INTO pins (repository, tag, digest, source, pinned_at, history)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::jsonb[])",
            &[&repos, &tags, &digests, &sources, &at, &histories],
        )
        .map_err(db)?;
    }
    log::append(tx, head, &entries)
}

/// Add imported refused attempts to a tag's, inside the import's transaction: the merged
/// list replaces the held one, oldest first, so ids keep the order.
fn import_refusals(
    tx: &mut Transaction<'_>,
    repo: &Repository,
    tag: &Tag,
    imported: &[Refused],
) -> Result<(), StoreError> {
    let (r, t) = (repo.as_str(), tag.as_str());
    let held: Vec<Refused> = tx
        .query(
            "SELECT record FROM refused WHERE repository = $1 AND tag = $2 ORDER BY id",
            &[&r, &t],
        )
        .map_err(db)?
        .iter()
        .map(|row| serde_json::from_value(row.get(0)).map_err(|e| corrupt(&lock_key(repo, tag), e)))
        .collect::<Result<_, _>>()?;
    let Some(merged) = merge_refusals(&held, imported) else {
        return Ok(());
    };
    tx.execute("DELETE FROM refused WHERE repository = $1 AND tag = $2", &[&r, &t])
        .map_err(db)?;
    for refused in &merged {
        let record = serde_json::to_value(refused).expect("serialising a refusal cannot fail");
        tx.execute(
            "INSERT INTO refused (repository, tag, record) VALUES ($1, $2, $3)",
            &[&r, &t, &record],
        )
        .map_err(db)?;
    }
    Ok(())
}
