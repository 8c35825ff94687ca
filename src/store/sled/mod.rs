//! The sled backend. Trees, written together in transactions:
//! - `pins`:      `repo \0 tag`             -> JSON pin record with its history;
//! - `claims`:    `repo \0 tag`             -> JSON list of the tag's writes in flight,
//!   one per request (format 2 held one object); absent when there is none;
//! - `releases`:  `repo \0 tag`             -> JSON release (break glass) in force;
//! - `notes`:     `repo \0 tag`             -> JSON list of the history of a tag that has
//!   no pin yet (an operator cleared its claim); absent when there is none;
//! - `by_digest`: `repo \0 digest \0 tag`   -> empty, for every digest of a tag's record
//!   (its pin and each write's), so "is this digest pinned?" is a prefix scan instead of
//!   a walk over every pin. [`PinStore::update`] keeps it in step with the records it
//!   changes, in the same transaction;
//! - `deletes`:   `repo \0 digest \0 request` -> JSON: digest deletes forwarded without a
//!   known outcome, one record per request, with when it started;
//! - `refs`:      `repo \0 ref \0 holder`    -> empty: pinned manifest `holder` depends on
//!   blob or manifest `ref`;
//! - `refs_by_holder`: `repo \0 holder \0 ref` -> empty: the same, from the holder's side;
//! - `holders`:   `repo \0 holder`          -> empty: the references of `holder` are
//!   recorded;
//! - `refused`:   `repo \0 tag`             -> JSON list of the last refused attempts;
//! - `meta`:      `format`                  -> the record format ([`records::FORMAT`]);
//!   `log_head` -> the log's size and right frontier; `import` -> the journal of an import
//!   being written ([`import`]), whose records wait, sorted, in a file `import-<id>.jsonl`
//!   of the data dir;
//! - `log_leaves`, `log_nodes`: the log's entries and subtree hashes ([`log`]), appended
//!   in the transaction that writes the records they describe.
//!
//! `\0` cannot occur in a validated repository, tag or digest, so keys cannot collide.
//!
//! A tag's record lives in four trees under one key; it is read and written only in
//! transactions over all of them (sled runs transactions one at a time, across every
//! tree), so no reader sees half of a change. The store's clock is this host's.
//!
//! Durability: every write is flushed (fsync) before the method returns, except a push's
//! settlement ([`PinStore::confirm`]): it is applied in memory and written out by sled's
//! flusher within `FLUSH_EVERY_MS`, or by the next flush, whichever comes first. Its
//! log entry is in the same transaction, so the two are lost or kept together. Losing
//! it to a crash takes nothing back that anyone relied on: the push's claim was flushed
//! before the push was forwarded and keeps the tag for the pushed digest (no other
//! digest can be bound while it stands), and on the next start the claim is completed
//! by what the upstream holds ([`crate::handler::recover`]). A read of the log's head
//! flushes before it answers, so no signed checkpoint counts a lost entry. So
//! one fsync stands on a push's path, before it is forwarded. When a flush
//! fails, the written state lives only in sled's memory and may never reach the disk, so
//! the store is marked dirty and answers every later call with an error until a flush
//! succeeds again: nothing is decided from state a restart could lose. The caller of the
//! failed write acts on nothing it wrote (it got the error).

mod deletes;
mod import;
mod keys;
mod log;
mod migrate;
mod outbox;
mod records;
mod spool;
mod tags;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use self::keys::{abort, digest_key, io, repo_prefix, settle, suffixes, tag_key, under, TxResult};
use self::records::{corrupt, decode_pin, decode_refusals, decode_writes, encode_pin, encode_writes, push_refusal};
use super::{
    gate::Gate, DeleteRecord, ImportError, ImportOutcome, ImportSource, PinStore, Protect, ReadView, Refused,
    StoreError, TagRecord, TagState,
};
use crate::oci::{Digest, Repository, Tag};

pub struct SledStore {
    path: PathBuf,
    /// Bytes of sled's page cache ([`SledStore::open_with_cache`]).
    cache_bytes: u64,
    /// The open database; `None` only between a failed reopen and the next attempt.
    trees: RwLock<Option<Arc<Trees>>>,
    /// Being opened in the background ([`SledStore::open_in_background`]).
    opening: AtomicBool,
    /// A flush failed and has not succeeded since, or the open failed: the database
    /// must be flushed or (re)opened before it answers.
    dirty: AtomicBool,
    /// Flushes this store waited for.
    flushes: AtomicU64,
    /// Held shared by every update, exclusively by an import's write ([`import`]).
    gate: Gate,
    /// Held for the store's lifetime: one tagpin per data dir.
    _lock: File,
}

/// One open sled database and its trees.
struct Trees {
    db: sled::Db,
    pins: sled::Tree,
    claims: sled::Tree,
    by_digest: sled::Tree,
    deletes: sled::Tree,
    refs: sled::Tree,
    refs_by_holder: sled::Tree,
    holders: sled::Tree,
    refused: sled::Tree,
    releases: sled::Tree,
    notes: sled::Tree,
    meta: sled::Tree,
    log_leaves: sled::Tree,
    log_nodes: sled::Tree,
    /// The webhook outbox's trees ([`outbox`]).
    outbox: outbox::OutboxTrees,
    /// An import's write failed part-way: this database is not served again; a reopen
    /// finishes the import ([`import`]).
    import_owed: AtomicBool,
}

impl Trees {
    fn open(path: &Path, dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        // sled reports most damage as an error, but some corrupt files make it panic while
        // recovering; either way the store is unusable and tagpin must fail closed.
        // sled's own file lock outlives a dropped database for a moment (its flusher
        // thread lets go last). Only this process can hold it, since `tagpin.lock` keeps
        // others out, so a reopen (after a failed flush, or a restart in a test) waits
        // for it briefly instead of failing.
        let mut attempts = 0;
        let db = loop {
            let opened = std::panic::catch_unwind(|| {
                sled::Config::new()
                    .path(path)
                    .cache_capacity(cache_bytes)
                    .flush_every_ms(Some(FLUSH_EVERY_MS))
                    .open()
            })
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "cannot open {}: sled panicked while recovering it",
                    dir.display()
                ))
            })?;
            match opened {
                Ok(db) => break db,
                // sled reports it as `ErrorKind::Other` with this text (sled 0.34 config.rs).
                Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") && attempts < 100 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(StoreError::Unavailable(format!("cannot open {}: {e}", dir.display()))),
            }
        };
        let tree = |name: &str| db.open_tree(name).map_err(io);
        let trees = Self {
            pins: tree("pins")?,
            claims: tree("claims")?,
            by_digest: tree("by_digest")?,
            deletes: tree("deletes")?,
            refs: tree("refs")?,
            refs_by_holder: tree("refs_by_holder")?,
            holders: tree("holders")?,
            refused: tree("refused")?,
            releases: tree("releases")?,
            notes: tree("notes")?,
            meta: tree("meta")?,
            log_leaves: tree("log_leaves")?,
            log_nodes: tree("log_nodes")?,
            outbox: outbox::OutboxTrees::open(&db)?,
            import_owed: AtomicBool::new(false),
            db,
        };
        trees.migrate()?;
        trees.finish_import(dir)?;
        Ok(trees)
    }
}

/// How often sled writes out what was written without a flush (a push's confirmation,
/// [`PinStore::confirm`]): the most a crash of the host can take back.
const FLUSH_EVERY_MS: u64 = 200;

/// sled's page cache when none is configured: enough for the hot part of a large store
/// (sled's own default is 1 GiB, which a store of millions of pins fills).
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl SledStore {
    /// [`SledStore::open_with_cache`] with [`DEFAULT_CACHE_BYTES`].
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// Open (or create) the store in `dir`, with a page cache of `cache_bytes` (sled
    /// keeps recently used pages of its trees in memory up to about that size; the rest of
    /// the store stays on disk, read through the OS's page cache). A lock file in the directory keeps a second
    /// tagpin off the same data dir: [`StoreError::Locked`] is a start-up error, not a
    /// store that fails closed, so the two cannot disagree about pins.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let store = Self::lock(dir, cache_bytes)?;
        let trees = Trees::open(&store.path, dir, cache_bytes)?;
        *store.trees.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(trees));
        store.opening.store(false, Ordering::Release);
        Ok(store)
    }

    /// Lock `dir` now and open the database on a thread of its own, for `serve`: sled's
    /// recovery reads the store's files, which takes seconds on a large one, and
    /// tagpin answers meanwhile. Until it is open every call fails with
    /// [`StoreError::Unavailable`] ("opening"): decided writes are refused (503, fail
    /// closed), reads by digest flow, and `/readyz` says not ready. `opened` is called
    /// with the outcome.
    pub fn open_in_background(
        dir: &Path,
        cache_bytes: u64,
        opened: impl FnOnce(&SledStore, Result<(), StoreError>) + Send + 'static,
    ) -> Result<Arc<Self>, StoreError> {
        let store = Arc::new(Self::lock(dir, cache_bytes)?);
        let opener = Arc::clone(&store);
        let dir = dir.to_owned();
        std::thread::Builder::new()
            .name("tagpin-store-open".into())
            .spawn(move || {
                let result = Trees::open(&opener.path, &dir, opener.cache_bytes).map(|trees| {
                    *opener.trees.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(trees));
                });
                // Not open: as after a failed flush, a call must reopen it first, and only
                // a blocking call may (`read_view_in_memory` answers `None`).
                if result.is_err() {
                    opener.dirty.store(true, Ordering::Release);
                }
                opener.opening.store(false, Ordering::Release);
                opened(&opener, result);
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the store's opener: {e}")))?;
        Ok(store)
    }

    /// Take `dir`'s lock file: the store, not yet open.
    fn lock(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Unavailable(format!("cannot create data dir {}: {e}", dir.display())))?;
        let lock_path = dir.join("tagpin.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked(dir.display().to_string()));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot lock {}: {e}",
                    lock_path.display()
                )));
            }
        }
        Ok(Self {
            path: dir.join("pins.sled"),
            cache_bytes,
            opening: AtomicBool::new(true),
            trees: RwLock::new(None),
            dirty: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
            gate: Gate::new(super::gate::SHARED_WAIT),
            _lock: lock,
        })
    }

    /// Number of tags with writes whose outcome is unknown, for the start-up log line: a
    /// walk of the claims alone (writes in flight), never of every pin.
    pub fn claim_count(&self) -> usize {
        self.current().map_or(0, |t| t.claims.len())
    }

    fn current(&self) -> Option<Arc<Trees>> {
        // A poisoned lock only means a thread panicked holding it; the slot is still valid.
        self.trees.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The open database, refusing to answer while it is being opened, or while an
    /// earlier write may not be on disk.
    /// A successful flush makes that write durable and lifts the refusal. sled keeps
    /// failing after an I/O error even once the disk has room again, so when the flush
    /// fails the database is closed and reopened: what it then holds is what is on disk.
    fn trees(&self) -> Result<Arc<Trees>, StoreError> {
        if self.opening.load(Ordering::Acquire) {
            let dir = self.path.parent().unwrap_or(&self.path).display().to_string();
            return Err(StoreError::Unavailable(format!(
                "pin store opening: sled is recovering {dir}; retry in a moment"
            )));
        }
        let current = self.current();
        if !self.dirty.load(Ordering::Acquire) {
            if let Some(t) = current {
                return Ok(t);
            }
        } else if let Some(t) = &current {
            if !t.import_owed.load(Ordering::Acquire) && t.db.flush().is_ok() {
                self.dirty.store(false, Ordering::Release);
                return Ok(Arc::clone(t));
            }
        }
        drop(current);
        self.reopen()
    }

    fn reopen(&self) -> Result<Arc<Trees>, StoreError> {
        let mut slot = self.trees.write().unwrap_or_else(|p| p.into_inner());
        if !self.dirty.load(Ordering::Acquire) {
            if let Some(t) = slot.as_ref() {
                return Ok(Arc::clone(t)); // another thread reopened it meanwhile
            }
        }
        if let Some(mut old) = slot.take() {
            // Calls already running hold the old database briefly; sled's own file lock
            // is released only when the last handle is gone.
            let mut waited = 0;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(t) => {
                        drop(t);
                        break;
                    }
                    Err(shared) if waited < 200 => {
                        old = shared;
                        waited += 1;
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    Err(shared) => {
                        *slot = Some(shared);
                        return Err(StoreError::Io(
                            "pin store busy while recovering from a failed write".into(),
                        ));
                    }
                }
            }
        }
        let dir = self.path.parent().unwrap_or(&self.path).to_owned();
        let trees = Arc::new(Trees::open(&self.path, &dir, self.cache_bytes)?);
        tracing::warn!(data_dir = %dir.display(), "pin store reopened after a failed write; it holds what is on disk");
        *slot = Some(Arc::clone(&trees));
        self.dirty.store(false, Ordering::Release);
        Ok(trees)
    }

    /// Flush a write a caller waits on before acting (counted in
    /// [`PinStore::durable_writes`]).
    fn flush_write(&self, t: &Trees) -> Result<(), StoreError> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.flush(t)
    }

    /// Flush a write; on failure the store is dirty until a later flush succeeds.
    fn flush(&self, t: &Trees) -> Result<(), StoreError> {
        self.flush_hook()?;
        if let Err(e) = t.db.flush() {
            self.dirty.store(true, Ordering::Release);
            return Err(io(e));
        }
        Ok(())
    }

    #[cfg(not(test))]
    fn flush_hook(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Unit tests make flushes fail on demand, per thread.
    #[cfg(test)]
    fn flush_hook(&self) -> Result<(), StoreError> {
        tests::flush_begun();
        if tests::FAIL_FLUSH.with(|f| f.get()) {
            self.dirty.store(true, Ordering::Release);
            return Err(StoreError::Io("injected flush failure".into()));
        }
        Ok(())
    }
}

impl PinStore for SledStore {
    fn record(&self, repo: &Repository, tag: &Tag) -> Result<TagRecord, StoreError> {
        self.read_record(repo, tag)
    }

    fn read_view(&self, repo: &Repository, tag: &Tag, _immutable: bool) -> Result<ReadView, StoreError> {
        self.read_view_now(repo, tag)
    }

    /// sled answers from its page cache; a miss reads a page from disk, which is short
    /// enough to do on the worker.
    /// Not while a flush is owed: then the store must first flush or reopen, which blocks.
    fn read_view_in_memory(
        &self,
        repo: &Repository,
        tag: &Tag,
        _immutable: bool,
    ) -> Option<Result<ReadView, StoreError>> {
        if self.dirty.load(Ordering::Acquire) || self.opening.load(Ordering::Acquire) {
            return None;
        }
        Some(self.read_view_now(repo, tag))
    }

    fn update(
        &self,
        repo: &Repository,
        tags: &[Tag],
        change: &mut dyn FnMut(u64, &mut [TagRecord]),
    ) -> Result<Vec<TagRecord>, StoreError> {
        let _gate = self.gate.shared()?;
        self.update_records(repo, tags, change)
    }

    fn record_refusal(&self, repo: &Repository, tag: &Tag, refused: &Refused) -> Result<(), StoreError> {
        let t = self.trees()?;
        let key = tag_key(repo, tag);
        let result = t.refused.transaction(|tx| push_refusal(tx, &key, refused));
        settle(result)?;
        self.flush_write(&t)
    }

    fn refusals(&self, repo: &Repository, tag: &Tag) -> Result<Vec<Refused>, StoreError> {
        let t = self.trees()?;
        let key = tag_key(repo, tag);
        match t.refused.get(&key).map_err(io)? {
            Some(v) => decode_refusals(&key, &v),
            None => Ok(Vec::new()),
        }
    }

    fn tags_pinned_to(&self, repo: &Repository, digest: &Digest) -> Result<Vec<Tag>, StoreError> {
        let t = self.trees()?;
        suffixes(
            &t.by_digest,
            digest_key(repo, digest),
            |s| Tag::parse(s).ok(),
            "not a tag",
        )
    }

    fn begin_delete(&self, repo: &Repository, digest: &Digest, request_id: &str) -> Result<(), StoreError> {
        self.record_delete(repo, digest, request_id)
    }

    fn end_delete(&self, repo: &Repository, digest: &Digest, request_id: &str) -> Result<(), StoreError> {
        self.settle_delete(repo, digest, request_id)
    }

    fn deletes_in_flight(
        &self,
        repo: &Repository,
        digests: &[Digest],
        horizon: u64,
    ) -> Result<Vec<Digest>, StoreError> {
        self.young_deletes(repo, digests, horizon)
    }

    fn list_deletes(&self, repo: Option<&Repository>) -> Result<Vec<DeleteRecord>, StoreError> {
        self.delete_records(repo)
    }

    fn protect(&self, repo: &Repository, holder: &Digest, refs: &[Digest], how: Protect) -> Result<(), StoreError> {
        self.record_refs(repo, holder, refs, how)
    }

    fn has_refs(&self, repo: &Repository, holder: &Digest) -> Result<bool, StoreError> {
        let t = self.trees()?;
        t.holders.contains_key(digest_key(repo, holder)).map_err(io)
    }

    fn refs_of(&self, repo: &Repository, holder: &Digest) -> Result<Vec<Digest>, StoreError> {
        let t = self.trees()?;
        suffixes(
            &t.refs_by_holder,
            digest_key(repo, holder),
            |s| Digest::parse(s).ok(),
            "not a digest",
        )
    }

    fn holders(&self, repo: &Repository) -> Result<Vec<Digest>, StoreError> {
        self.digests_held(repo)
    }

    fn referenced_by(&self, repo: &Repository, digest: &Digest) -> Result<Vec<Digest>, StoreError> {
        let t = self.trees()?;
        suffixes(
            &t.refs,
            digest_key(repo, digest),
            |s| Digest::parse(s).ok(),
            "not a digest",
        )
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
        let t = self.trees()?;
        let start = match after {
            Some((r, tag)) => under(tag_key(r, tag), ""), // the smallest key after it
            None => Vec::new(),
        };
        t.claims
            .range(start..)
            .keys()
            .take(limit)
            .map(|k| {
                let k = k.map_err(io)?;
                let text = std::str::from_utf8(&k).map_err(|e| corrupt(&k, e))?;
                let (r, tag) = text.split_once('\0').ok_or_else(|| corrupt(&k, "no separator"))?;
                Ok((
                    Repository::parse(r).map_err(|e| corrupt(&k, e))?,
                    Tag::parse(tag).map_err(|e| corrupt(&k, e))?,
                ))
            })
            .collect()
    }

    fn import_from(&self, source: &mut dyn ImportSource, by: &str) -> Result<ImportOutcome, ImportError> {
        self.import_stream(source, by)
    }

    fn confirm(
        &self,
        repo: &Repository,
        tags: &[Tag],
        change: &mut dyn FnMut(u64, &mut [TagRecord]),
    ) -> Result<Vec<TagRecord>, StoreError> {
        // Written out by sled's flusher, the next flush of a write, or `log_head`.
        let (after, _written) = self.write_records(repo, tags, change, None)?;
        #[cfg(test)]
        tests::after_confirm(self);
        Ok(after)
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

    fn durable_writes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    fn log_head(&self) -> Result<crate::log::Frontier, StoreError> {
        let t = self.trees()?;
        // Read first, flush after, every time: the flush covers every entry the head
        // counts. No flag can say whether one is owed: a confirmation is visible before
        // it could set it, and another reader's flush may have taken it and not yet
        // written. A flush with nothing new to write returns without touching the disk
        // (sled compares its stable point with the last reserved one).
        let head = t.log_head()?;
        self.flush(&t)?;
        Ok(head)
    }

    fn log_leaves(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        self.trees()?.log_leaves(start, end)
    }

    fn log_nodes(&self, ids: &[crate::log::NodeId]) -> Result<Vec<crate::log::Hash>, StoreError> {
        self.trees()?.log_nodes(ids)
    }

    fn lead(&self) -> Result<bool, StoreError> {
        // The data dir's lock already makes this the only process on the store.
        Ok(true)
    }

    fn outbox(&self) -> Option<&dyn super::Outbox> {
        Some(self)
    }

    fn check(&self) -> Result<(), StoreError> {
        // A read and a flush: the flush fails on a read-only or full disk.
        let t = self.trees()?;
        t.pins.first().map_err(io)?;
        self.flush(&t)
    }
}
