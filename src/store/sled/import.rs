//! Import into the sled backend: a file of any size in bounded memory, all or nothing,
//! and finished after a crash. Four steps:
//!
//! 1. **Sort**, without the gate: the records go to a file of the data dir,
//!    `import-<id>.jsonl`, sorted by tag ([`spool`]), so a tag named twice is found by
//!    reading on, and the store is written in key order.
//! 2. **Check**, still without the gate: the file is read a tag at a time, and each tag
//!    judged against what it holds. On a conflict (another digest, a write in flight, a
//!    tag named twice with two digests) or a bad line, the file is removed: nothing was
//!    written.
//! 3. **Check again, if needed**, holding the store's gate exclusively (every write that
//!    binds or claims a tag holds it shared): when a write finished since the check
//!    began (the gate's generation moved), every tag is judged again; a conflict now
//!    still writes nothing. From here to the end no write can come between.
//! 4. **Write**: the journal (`meta` key `import`: the file, who imports, the entries'
//!    time, the counts and the offset reached) is written and flushed, and from then on
//!    the import is decided. The file is read from the offset and written [`BATCH`] tags
//!    to a transaction, which also appends their log entries and moves the journal on
//!    (sled recovers a transaction whole or not at all). Then the journal is removed,
//!    the store flushed and the file removed.
//!
//! A crash before the journal leaves at most the file, removed at the next open. A crash
//! after it leaves the journal: the next open of the data dir (a `tagpin serve`, or an
//! offline command) finishes the import before it serves or does anything else, and an
//! open that cannot finish it fails, saying why and what to run. A write that fails in a
//! running store leaves the store refusing every call until it has reopened, which
//! finishes the import.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sled::Transactional;

use super::log::TxLog;
use super::records::{decode_notes, decode_refusals, decode_release, encode_refusals};
use super::spool::{self, Group, Groups};
use super::tags::TxTrees;
use super::{abort, corrupt, decode_pin, decode_writes, io, settle, SledStore, Trees};
use crate::store::{
    imported_record, judge, merge_refusals, named_twice, now_secs, weight, ImportError, ImportOutcome, ImportSource,
    StoreError, TagRecord, TagState, Verdict, BATCH_WEIGHT,
};

/// The `meta` key of the journal of an import being written.
const JOURNAL_KEY: &[u8] = b"import";
/// An import's files in the data dir are named this, an id and `.jsonl`.
const PREFIX: &str = "import-";
/// Tags written per transaction (at most, and at most [`BATCH_WEIGHT`] in all): large enough that a transaction's own cost is small
/// beside its records', small enough that the reads it holds up (sled runs one
/// transaction at a time, and reads wait for it) wait milliseconds.
const BATCH: usize = 2000;

/// An import being written: what the next open finishes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Journal {
    /// The sorted records, a file of the data dir.
    file: String,
    /// Who imports (named by each `imported` log entry), and when (their time).
    by: String,
    now: u64,
    /// Pins to write in all, written so far, and records left as they were.
    writes: u64,
    written: u64,
    unchanged: u64,
    /// Where in the file the next tag to write starts.
    offset: u64,
}

/// The outcome of an import that found conflicts: no pin written.
fn nothing_written(outcome: ImportOutcome) -> ImportOutcome {
    ImportOutcome { imported: 0, ..outcome }
}

/// An import's file, removed with this unless the import it holds was decided.
struct Spooled {
    path: PathBuf,
    keep: bool,
}

impl Drop for Spooled {
    fn drop(&mut self) {
        if !self.keep {
            // Left behind on failure, it is removed at the next open.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Trees {
    /// What `key`'s tag holds: its pin and writes, and with `whole` its release and
    /// notes too. Read outside a transaction, writes first: a confirmation (which does
    /// not take the gate) turns a write into a pin in one transaction, so a tag read with
    /// no write and then no pin had neither, unless a write was claimed in between, which
    /// only a gated update does, and the gate's generation catches. Under the gate, only
    /// confirmations of tags with a write in flight run, and such a tag is a conflict.
    fn held(&self, key: &[u8], whole: bool) -> Result<TagRecord, StoreError> {
        let mut record = TagRecord::default();
        if let Some(v) = self.claims.get(key).map_err(io)? {
            record.writes = decode_writes(key, &v)?;
        }
        if let Some(v) = self.pins.get(key).map_err(io)? {
            record.pin = Some(decode_pin(key, &v)?);
        }
        if whole {
            if let Some(v) = self.releases.get(key).map_err(io)? {
                record.release = Some(decode_release(key, &v)?);
            }
            if let Some(v) = self.notes.get(key).map_err(io)? {
                record.history = decode_notes(key, &v)?;
            }
        }
        Ok(record)
    }

    fn state(&self, key: &[u8]) -> Result<Option<TagState>, StoreError> {
        Ok(self.held(key, false)?.state())
    }

    /// Steps 2 and 3: judge every tag of the sorted file against what it holds.
    fn check(&self, file: &Path) -> Result<ImportOutcome, StoreError> {
        let mut outcome = ImportOutcome::default();
        let mut groups = Groups::open(file, 0)?;
        while let Some(g) = groups.next_group()? {
            if g.twice {
                outcome.conflict(named_twice(&g.record));
            }
            match judge(&g.record, self.state(&g.key)?) {
                Ok(Verdict::Write) => outcome.imported += 1,
                Ok(Verdict::Unchanged) => outcome.unchanged += 1,
                Err(why) => outcome.conflict(why),
            }
        }
        Ok(outcome)
    }

    fn journal(&self) -> Result<Option<Journal>, StoreError> {
        match self.meta.get(JOURNAL_KEY).map_err(io)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| corrupt(JOURNAL_KEY, e)),
        }
    }

    /// Step 4: write the tags of the file from where the journal got, a batch per
    /// transaction, moving the journal on with each.
    fn write_from(&self, dir: &Path, journal: &mut Journal) -> Result<(), StoreError> {
        let mut groups = Groups::open(&dir.join(&journal.file), journal.offset)?;
        loop {
            let mut batch = Vec::with_capacity(BATCH);
            let mut held = 0;
            while batch.len() < BATCH && held < BATCH_WEIGHT {
                match groups.next_group()? {
                    Some(g) => {
                        held += weight(&g.record);
                        batch.push(g);
                    }
                    None => break,
                }
            }
            if batch.is_empty() {
                return Ok(());
            }
            // Judged under the gate (or before the crash this finishes, under it), and
            // nothing has written these tags since: each is free, or holds the record.
            let mut writes = Vec::new();
            for (i, g) in batch.iter().enumerate() {
                let before = self.held(&g.key, true)?;
                match judge(&g.record, before.state()) {
                    Ok(Verdict::Write) => writes.push((i, before)),
                    Ok(Verdict::Unchanged) => {}
                    Err(why) => return Err(corrupt(&g.key, format!("taken while an import wrote it: {why}"))),
                }
            }
            let mut next = journal.clone();
            next.offset = groups.offset();
            next.written += writes.len() as u64;
            self.write_batch(&batch, writes, &next)?;
            *journal = next;
        }
    }

    /// One batch of tags (those in `writes`, with what they held, are written; every
    /// one's refused attempts are kept) and the journal moved past it, in one transaction.
    /// The log entries are numbered from the head the transaction reads: a push settling
    /// another tag meanwhile (a confirmation does not wait for the gate) may have appended
    /// its own entry since the batch was judged.
    fn write_batch(&self, batch: &[Group], writes: Vec<(usize, TagRecord)>, next: &Journal) -> Result<(), StoreError> {
        let journal = serde_json::to_vec(next).expect("serialising the journal cannot fail");
        let trees = (
            &self.pins,
            &self.claims,
            &self.releases,
            &self.notes,
            &self.by_digest,
            &self.refused,
            &self.log_leaves,
            &self.log_nodes,
            &self.meta,
        );
        let result = trees.transaction(|(pins, claims, releases, notes, index, refused, leaves, nodes, meta)| {
            let tx = TxTrees {
                pins,
                claims,
                releases,
                notes,
                index: Some(index),
            };
            let log = TxLog { leaves, nodes, meta };
            let mut head = log.head()?;
            let start = head.size();
            let mut entries = Vec::with_capacity(writes.len());
            for (i, before) in &writes {
                let r = &batch[*i].record;
                let (after, entry) = imported_record(r, before, &next.by, next.now, start + entries.len() as u64);
                entries.extend(entry);
                tx.write(&r.repository, &r.tag, before, &after)?;
            }
            if !entries.is_empty() {
                log.append(&mut head, &entries)?;
            }
            // The refused attempts of every record, written or unchanged: evidence the
            // export carried, added to what the tag holds here.
            for g in batch.iter().filter(|g| !g.record.refused.is_empty()) {
                let held = match refused.get(&g.key)? {
                    Some(v) => decode_refusals(&g.key, &v).map_err(abort)?,
                    None => Vec::new(),
                };
                if let Some(merged) = merge_refusals(&held, &g.record.refused) {
                    refused.insert(g.key.as_slice(), encode_refusals(&merged))?;
                }
            }
            meta.insert(JOURNAL_KEY, journal.as_slice())?;
            Ok(())
        });
        settle(result)
    }

    /// The import is whole: the journal goes, durably, then its file.
    fn end_import(&self, dir: &Path, journal: &Journal) -> Result<(), StoreError> {
        self.meta.remove(JOURNAL_KEY).map_err(io)?;
        self.db.flush().map_err(io)?;
        // Left behind on failure, it is removed at the next open.
        let _ = std::fs::remove_file(dir.join(&journal.file));
        Ok(())
    }

    /// At open, before the store serves anything: remove the files of imports that never
    /// reached their write (nothing of them was written), and finish the one the journal
    /// names.
    pub(super) fn finish_import(&self, dir: &Path) -> Result<(), StoreError> {
        let journal = self.journal()?;
        let entries =
            std::fs::read_dir(dir).map_err(|e| StoreError::Io(format!("cannot list {}: {e}", dir.display())))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(PREFIX) && journal.as_ref().is_none_or(|j| j.file != name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let Some(mut journal) = journal else {
            return Ok(());
        };
        let from = journal.written;
        tracing::warn!(
            data_dir = %dir.display(),
            by = journal.by.as_str(),
            pins = journal.writes,
            written_before = from,
            "finishing an import that was interrupted, before the store serves anything"
        );
        let finished = self
            .write_from(dir, &mut journal)
            .and_then(|()| self.end_import(dir, &journal));
        if let Err(e) = finished {
            return Err(StoreError::Unavailable(format!(
                "the data dir {} holds an import interrupted after {} of {} pins, which cannot be finished now ({e}); \
                 fix that and start tagpin on it again (or run `tagpin export --data-dir {} > /dev/null`): \
                 opening the data dir finishes the import before anything else",
                dir.display(),
                journal.written,
                journal.writes,
                dir.display()
            )));
        }
        tracing::warn!(
            data_dir = %dir.display(),
            by = journal.by.as_str(),
            pins = journal.writes,
            written_before = from,
            "finished an import that was interrupted"
        );
        Ok(())
    }
}

impl SledStore {
    /// [`crate::store::PinStore::import_from`]: the steps of the module docs.
    pub(super) fn import_stream(&self, source: &mut dyn ImportSource, by: &str) -> Result<ImportOutcome, ImportError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let t = self.trees()?;
        let dir = self.path.parent().unwrap_or(&self.path).to_owned();
        let file = format!("{PREFIX}{}-{}.jsonl", now_secs(), NEXT.fetch_add(1, Ordering::Relaxed));
        let mut spooled = Spooled {
            path: dir.join(&file),
            keep: false,
        };
        spool::sort_into(&spooled.path, source)?;
        let generation = self.gate.generation();
        let mut outcome = t.check(&spooled.path)?;
        if outcome.conflicting > 0 {
            return Ok(nothing_written(outcome));
        }
        let _gate = self.gate.exclusive();
        if self.gate.generation() != generation {
            outcome = t.check(&spooled.path)?;
            if outcome.conflicting > 0 {
                return Ok(nothing_written(outcome));
            }
        }
        source.writing(&outcome);
        let mut journal = Journal {
            file,
            by: by.to_owned(),
            now: now_secs(),
            writes: outcome.imported as u64,
            written: 0,
            unchanged: outcome.unchanged as u64,
            offset: 0,
        };
        spooled.keep = true;
        let written = t
            .meta
            .insert(
                JOURNAL_KEY,
                serde_json::to_vec(&journal).expect("serialising the journal cannot fail"),
            )
            .map_err(io)
            .and_then(|_| self.flush(&t))
            .and_then(|()| t.write_from(&dir, &mut journal))
            .and_then(|()| t.end_import(&dir, &journal));
        if let Err(e) = written {
            // Whether the journal reached the disk or not, the store may hold part of an
            // import: it answers nothing until it has reopened, which finishes the import
            // from the journal on disk (or finds none, and so nothing of it).
            t.import_owed.store(true, Ordering::Release);
            self.dirty.store(true, Ordering::Release);
            return Err(e.into());
        }
        Ok(outcome)
    }
}
