//! The sled backend. Trees, written together in transactions:
//! - `pins`:      `repo \0 tag`             -> JSON pin record with its history
//! - `claims`:    `repo \0 tag`             -> JSON claim: a push in flight; alone for a
//!   free tag, beside the pin for an advance;
//! - `by_digest`: `repo \0 digest \0 tag`   -> empty, for pins and claims alike, so "is
//!   this digest pinned?" is a prefix scan instead of a walk over every pin;
//! - `deletes`:   `repo \0 digest \0 request` -> JSON: digest deletes forwarded without a
//!   known outcome, one record per request;
//! - `refs`:      `repo \0 ref \0 holder`    -> empty: pinned manifest `holder` depends on
//!   blob or manifest `ref`;
//! - `holders`:   `repo \0 holder`          -> empty: the references of `holder` are
//!   recorded;
//! - `refused`:   `repo \0 tag`             -> JSON list of the last refused attempts;
//! - `releases`:  `repo \0 tag`             -> JSON release (break glass) in force;
//! - `meta`:      `format`                  -> the record format ([`records::FORMAT`]).
//!
//! `\0` cannot occur in a validated repository, tag or digest, so keys cannot collide.
//!
//! Durability: every write is flushed (fsync) before the method returns. When a flush
//! fails, the written state lives only in sled's memory and may never reach the disk, so
//! the store is marked dirty and answers every later call with an error until a flush
//! succeeds again: nothing is decided from state a restart could lose.

mod records;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

use self::records::{
    corrupt, decode_claim, decode_pin, decode_refusals, encode_claim, encode_pin, encode_refusals, DeleteRecord,
};
use super::{
    Claim, ClaimKind, Exported, HistoryEntry, HistoryEvent, ImportOutcome, Pin, PinSource, PinStore, Protect, Refused,
    Release, StoreError, TagState, MAX_REFUSALS,
};
use crate::oci::{Digest, Repository, Tag};

pub struct SledStore {
    path: PathBuf,
    /// The open database; `None` only between a failed reopen and the next attempt.
    trees: RwLock<Option<Arc<Trees>>>,
    /// A flush failed and has not succeeded since.
    dirty: AtomicBool,
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
    holders: sled::Tree,
    refused: sled::Tree,
    releases: sled::Tree,
    meta: sled::Tree,
}

impl Trees {
    fn open(path: &Path, dir: &Path) -> Result<Self, StoreError> {
        // sled reports most damage as an error, but some corrupt files make it panic while
        // recovering; either way the store is unusable and tagpin must fail closed.
        // sled's own file lock outlives a dropped database for a moment (its flusher
        // thread lets go last). Only this process can hold it, since `tagpin.lock` keeps
        // others out, so a reopen (after a failed flush, or a restart in a test) waits
        // for it briefly instead of failing.
        let mut attempts = 0;
        let db = loop {
            let opened = std::panic::catch_unwind(|| sled::Config::new().path(path).open()).map_err(|_| {
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
            holders: tree("holders")?,
            refused: tree("refused")?,
            releases: tree("releases")?,
            meta: tree("meta")?,
            db,
        };
        trees.migrate()?;
        Ok(trees)
    }

    /// Bring records of an earlier format up to date, once, on open.
    fn migrate(&self) -> Result<(), StoreError> {
        let format = self.meta.get(records::FORMAT_KEY).map_err(io)?;
        if format.as_deref() == Some(&[records::FORMAT][..]) {
            return Ok(());
        }
        let mut migrated = 0usize;
        for item in self.pins.iter() {
            let (k, v) = item.map_err(io)?;
            // Decoding fills in the history a format-1 record implies.
            let pin = decode_pin(&k, &v)?;
            self.pins.insert(k, encode_pin(&pin)).map_err(io)?;
            migrated += 1;
        }
        self.meta
            .insert(records::FORMAT_KEY, &[records::FORMAT][..])
            .map_err(io)?;
        self.db.flush().map_err(io)?;
        if migrated > 0 {
            tracing::info!(pins = migrated, format = records::FORMAT, "pin store migrated");
        }
        Ok(())
    }
}

impl SledStore {
    /// Open (or create) the store in `dir`. A lock file in the directory keeps a second
    /// tagpin off the same data dir: [`StoreError::Locked`] is a start-up error, not a
    /// store that fails closed, so the two cannot disagree about pins.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
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
        let path = dir.join("pins.sled");
        let trees = Trees::open(&path, dir)?;
        Ok(Self {
            path,
            trees: RwLock::new(Some(Arc::new(trees))),
            dirty: AtomicBool::new(false),
            _lock: lock,
        })
    }

    /// Number of pins held, for the start-up log line.
    pub fn pin_count(&self) -> usize {
        self.current().map_or(0, |t| t.pins.len())
    }

    /// Number of claims with an unknown outcome, for the start-up log line.
    pub fn claim_count(&self) -> usize {
        self.current().map_or(0, |t| t.claims.len())
    }

    fn current(&self) -> Option<Arc<Trees>> {
        // A poisoned lock only means a thread panicked holding it; the slot is still valid.
        self.trees.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The open database, refusing to answer while an earlier write may not be on disk.
    /// A successful flush makes that write durable and lifts the refusal. sled keeps
    /// failing after an I/O error even once the disk has room again, so when the flush
    /// fails the database is closed and reopened: what it then holds is what is on disk.
    fn trees(&self) -> Result<Arc<Trees>, StoreError> {
        let current = self.current();
        if !self.dirty.load(Ordering::Acquire) {
            if let Some(t) = current {
                return Ok(t);
            }
        } else if let Some(t) = &current {
            if t.db.flush().is_ok() {
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
        let trees = Arc::new(Trees::open(&self.path, &dir)?);
        tracing::warn!(data_dir = %dir.display(), "pin store reopened after a failed write; it holds what is on disk");
        *slot = Some(Arc::clone(&trees));
        self.dirty.store(false, Ordering::Release);
        Ok(trees)
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
        if tests::FAIL_FLUSH.with(|f| f.get()) {
            self.dirty.store(true, Ordering::Release);
            return Err(StoreError::Io("injected flush failure".into()));
        }
        Ok(())
    }

    /// Remove the claims of `tags` created by `request_id`, with their index entries.
    fn remove_claims(t: &Trees, repo: &Repository, tags: &[Tag], request_id: &str) -> Result<(), StoreError> {
        let result = (&t.claims, &t.by_digest, &t.pins).transaction(|(tx_claims, tx_index, tx_pins)| {
            for tag in tags {
                let key = tag_key(repo, tag);
                let Some(v) = tx_claims.get(&key)? else { continue };
                let c = decode_claim(&key, &v).map_err(ConflictableTransactionError::Abort)?;
                if c.request_id != request_id {
                    continue;
                }
                tx_claims.remove(key.clone())?;
                let pinned_same = match tx_pins.get(&key)? {
                    Some(p) => {
                        decode_pin(&key, &p)
                            .map_err(ConflictableTransactionError::Abort)?
                            .digest
                            == c.digest
                    }
                    None => false,
                };
                if !pinned_same {
                    tx_index.remove(index_key(repo, &c.digest, tag))?;
                }
            }
            Ok(())
        });
        settle(result)
    }
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

fn tag_key(repo: &Repository, tag: &Tag) -> Vec<u8> {
    [repo.as_str().as_bytes(), b"\0", tag.as_str().as_bytes()].concat()
}

fn digest_key(repo: &Repository, digest: &Digest) -> Vec<u8> {
    [repo.as_str().as_bytes(), b"\0", digest.as_str().as_bytes()].concat()
}

fn index_key(repo: &Repository, digest: &Digest, tag: &Tag) -> Vec<u8> {
    let mut k = digest_key(repo, digest);
    k.push(0);
    k.extend_from_slice(tag.as_str().as_bytes());
    k
}

fn delete_key(repo: &Repository, digest: &Digest, request_id: &str) -> Vec<u8> {
    let mut k = digest_key(repo, digest);
    k.push(0);
    k.extend_from_slice(request_id.as_bytes());
    k
}

fn repo_prefix(repo: &Repository) -> Vec<u8> {
    let mut p = repo.as_str().as_bytes().to_vec();
    p.push(0);
    p
}

/// The values after `prefix \0` of every key of `tree` that starts with it, parsed.
fn suffixes<T>(
    tree: &sled::Tree,
    mut prefix: Vec<u8>,
    parse: impl Fn(&str) -> Option<T>,
    what: &str,
) -> Result<Vec<T>, StoreError> {
    prefix.push(0);
    tree.scan_prefix(&prefix)
        .keys()
        .map(|k| {
            let k = k.map_err(io)?;
            std::str::from_utf8(&k[prefix.len()..])
                .ok()
                .and_then(&parse)
                .ok_or_else(|| corrupt(&k, what))
        })
        .collect()
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

/// The state of one tag inside a transaction.
fn tx_state(pins: &TransactionalTree, claims: &TransactionalTree, key: &[u8]) -> TxResult<Option<TagState>> {
    let pin = match pins.get(key)? {
        Some(v) => Some(decode_pin(key, &v).map_err(abort)?),
        None => None,
    };
    let claim = match claims.get(key)? {
        Some(v) => Some(decode_claim(key, &v).map_err(abort)?),
        None => None,
    };
    Ok(state_of(pin, claim))
}

fn state_of(pin: Option<Pin>, claim: Option<Claim>) -> Option<TagState> {
    match (pin, claim) {
        (Some(pin), Some(claim)) => Some(TagState::Advancing { pin, claim }),
        (Some(pin), None) => Some(TagState::Pinned(pin)),
        (None, Some(claim)) => Some(TagState::Claimed(claim)),
        (None, None) => None,
    }
}

fn settle<T>(r: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    match r {
        Ok(v) => Ok(v),
        Err(TransactionError::Abort(e)) => Err(e),
        Err(TransactionError::Storage(e)) => Err(io(e)),
    }
}

impl PinStore for SledStore {
    fn state(&self, repo: &Repository, tag: &Tag) -> Result<Option<TagState>, StoreError> {
        let t = self.trees()?;
        let key = tag_key(repo, tag);
        let pin = match t.pins.get(&key).map_err(io)? {
            Some(v) => Some(decode_pin(&key, &v)?),
            None => None,
        };
        let claim = match t.claims.get(&key).map_err(io)? {
            Some(v) => Some(decode_claim(&key, &v)?),
            None => None,
        };
        Ok(state_of(pin, claim))
    }

    fn pin_if_absent(&self, repo: &Repository, pins: &[(Tag, Pin)]) -> Result<Vec<TagState>, StoreError> {
        let t = self.trees()?;
        let result = (&t.pins, &t.claims, &t.by_digest).transaction(|(tx_pins, tx_claims, tx_index)| {
            let mut in_force = Vec::with_capacity(pins.len());
            for (tag, pin) in pins {
                let key = tag_key(repo, tag);
                if let Some(existing) = tx_state(tx_pins, tx_claims, &key)? {
                    in_force.push(existing);
                    continue;
                }
                tx_pins.insert(key, encode_pin(pin))?;
                tx_index.insert(index_key(repo, &pin.digest, tag), &[][..])?;
                in_force.push(TagState::Pinned(pin.clone()));
            }
            Ok(in_force)
        });
        let in_force = settle(result)?;
        // Durable before the caller answers the client: a 201 means the pin survives a crash.
        self.flush(&t)?;
        Ok(in_force)
    }

    fn claim(&self, repo: &Repository, tags: &[Tag], claim: &Claim) -> Result<Vec<TagState>, StoreError> {
        let t = self.trees()?;
        let result = (&t.pins, &t.claims, &t.by_digest).transaction(|(tx_pins, tx_claims, tx_index)| {
            let mut in_force = Vec::with_capacity(tags.len());
            for tag in tags {
                let key = tag_key(repo, tag);
                if let Some(existing) = tx_state(tx_pins, tx_claims, &key)? {
                    in_force.push(existing);
                    continue;
                }
                tx_claims.insert(key, encode_claim(claim))?;
                tx_index.insert(index_key(repo, &claim.digest, tag), &[][..])?;
                in_force.push(TagState::Claimed(claim.clone()));
            }
            Ok(in_force)
        });
        let in_force = settle(result)?;
        if let Err(e) = self.flush(&t) {
            // Nothing will be forwarded under claims that may not be on disk. Take them
            // back in memory; should they reach the disk anyway, they only reserve the tag
            // for a digest the client is told to retry (fail closed).
            let _ = Self::remove_claims(&t, repo, tags, &claim.request_id);
            return Err(e);
        }
        Ok(in_force)
    }

    fn claim_advance(
        &self,
        repo: &Repository,
        tag: &Tag,
        from: &Digest,
        claim: &Claim,
    ) -> Result<TagState, StoreError> {
        let t = self.trees()?;
        let result = (&t.pins, &t.claims, &t.by_digest).transaction(|(tx_pins, tx_claims, tx_index)| {
            let key = tag_key(repo, tag);
            match tx_state(tx_pins, tx_claims, &key)? {
                Some(TagState::Pinned(pin)) if &pin.digest == from => {
                    tx_claims.insert(key, encode_claim(claim))?;
                    tx_index.insert(index_key(repo, &claim.digest, tag), &[][..])?;
                    Ok(Some(TagState::Advancing {
                        pin,
                        claim: claim.clone(),
                    }))
                }
                other => Ok(other),
            }
        });
        let state = settle(result)?;
        if let Err(e) = self.flush(&t) {
            let _ = Self::remove_claims(&t, repo, std::slice::from_ref(tag), &claim.request_id);
            return Err(e);
        }
        state.ok_or_else(|| StoreError::Corrupt {
            key: format!("{repo}:{tag}"),
            why: "an advance was claimed for a tag that has no pin".into(),
        })
    }

    fn confirm(&self, repo: &Repository, tags: &[Tag], digest: &Digest) -> Result<Vec<TagState>, StoreError> {
        let t = self.trees()?;
        let result = (&t.pins, &t.claims, &t.by_digest, &t.releases).transaction(
            |(tx_pins, tx_claims, tx_index, tx_releases)| {
                let mut in_force = Vec::with_capacity(tags.len());
                for tag in tags {
                    let key = tag_key(repo, tag);
                    match tx_state(tx_pins, tx_claims, &key)? {
                        Some(TagState::Claimed(c)) if &c.digest == digest => {
                            let mut pin = Pin::now(digest.clone(), PinSource::Push);
                            pin.history[0].request_id = Some(c.request_id.clone());
                            tx_claims.remove(key.clone())?;
                            tx_pins.insert(key, encode_pin(&pin))?;
                            in_force.push(TagState::Pinned(pin));
                        }
                        Some(TagState::Advancing { mut pin, claim }) if &claim.digest == digest => {
                            let from = std::mem::replace(&mut pin.digest, digest.clone());
                            let event = match claim.kind {
                                ClaimKind::AuditMove => HistoryEvent::AuditMove,
                                ClaimKind::Release => HistoryEvent::Released,
                                ClaimKind::Append | ClaimKind::New => HistoryEvent::Append,
                            };
                            let mut entry = HistoryEntry::new(event, digest.clone(), Some(from.clone()));
                            entry.request_id = Some(claim.request_id.clone());
                            if claim.kind == ClaimKind::Release {
                                // The release is used up with this push, atomically with it.
                                if let Some(v) = tx_releases.remove(key.clone())? {
                                    let r: Release = serde_json::from_slice(&v).map_err(|e| abort(corrupt(&key, e)))?;
                                    entry.by = Some(r.by);
                                    entry.reason = Some(r.reason);
                                }
                            }
                            pin.history.push(entry);
                            tx_claims.remove(key.clone())?;
                            tx_pins.insert(key, encode_pin(&pin))?;
                            // The superseded digest is no longer what the tag is pinned to.
                            tx_index.remove(index_key(repo, &from, tag))?;
                            in_force.push(TagState::Pinned(pin));
                        }
                        Some(state) => in_force.push(state),
                        None => {
                            // A claim that vanished under a held lock: pin what the upstream
                            // accepted rather than leave the tag free.
                            let pin = Pin::now(digest.clone(), PinSource::Push);
                            tx_pins.insert(key, encode_pin(&pin))?;
                            tx_index.insert(index_key(repo, digest, tag), &[][..])?;
                            in_force.push(TagState::Pinned(pin));
                        }
                    }
                }
                Ok(in_force)
            },
        );
        let in_force = settle(result)?;
        self.flush(&t)?;
        Ok(in_force)
    }

    fn withdraw(&self, repo: &Repository, tags: &[Tag], request_id: &str) -> Result<(), StoreError> {
        let t = self.trees()?;
        Self::remove_claims(&t, repo, tags, request_id)?;
        self.flush(&t)
    }

    fn record_event(&self, repo: &Repository, tag: &Tag, entry: &HistoryEntry) -> Result<(), StoreError> {
        let t = self.trees()?;
        let result = t.pins.transaction(|tx_pins| {
            let key = tag_key(repo, tag);
            if let Some(v) = tx_pins.get(&key)? {
                let mut pin = decode_pin(&key, &v).map_err(abort)?;
                pin.history.push(entry.clone());
                tx_pins.insert(key, encode_pin(&pin))?;
            }
            Ok(())
        });
        settle(result)?;
        self.flush(&t)
    }

    fn record_refusal(&self, repo: &Repository, tag: &Tag, refused: &Refused) -> Result<(), StoreError> {
        let t = self.trees()?;
        let key = tag_key(repo, tag);
        let result = t.refused.transaction(|tx| {
            let mut list = match tx.get(&key)? {
                Some(v) => decode_refusals(&key, &v).map_err(abort)?,
                None => Vec::new(),
            };
            list.push(refused.clone());
            if list.len() > MAX_REFUSALS {
                list.drain(..list.len() - MAX_REFUSALS);
            }
            tx.insert(key.clone(), encode_refusals(&list))?;
            Ok(())
        });
        settle(result)?;
        self.flush(&t)
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
        let t = self.trees()?;
        let record = serde_json::to_vec(&DeleteRecord {
            request_id: request_id.to_owned(),
            started_at: super::now_secs(),
        })
        .expect("serialising a delete record cannot fail");
        t.deletes
            .insert(delete_key(repo, digest, request_id), record)
            .map_err(io)?;
        self.flush(&t)
    }

    fn end_delete(&self, repo: &Repository, digest: &Digest, request_id: Option<&str>) -> Result<(), StoreError> {
        let t = self.trees()?;
        match request_id {
            Some(id) => {
                t.deletes.remove(delete_key(repo, digest, id)).map_err(io)?;
            }
            None => {
                let mut prefix = digest_key(repo, digest);
                prefix.push(0);
                for key in t.deletes.scan_prefix(&prefix).keys() {
                    t.deletes.remove(key.map_err(io)?).map_err(io)?;
                }
            }
        }
        self.flush(&t)
    }

    fn delete_in_flight(&self, repo: &Repository, digest: &Digest) -> Result<bool, StoreError> {
        let t = self.trees()?;
        let mut prefix = digest_key(repo, digest);
        prefix.push(0);
        Ok(t.deletes.scan_prefix(&prefix).next().transpose().map_err(io)?.is_some())
    }

    fn protect(&self, repo: &Repository, holder: &Digest, refs: &[Digest], how: Protect) -> Result<(), StoreError> {
        let t = self.trees()?;
        let result = (&t.refs, &t.holders).transaction(|(tx_refs, tx_holders)| {
            for r in refs {
                let mut key = digest_key(repo, r);
                key.push(0);
                key.extend_from_slice(holder.as_str().as_bytes());
                tx_refs.insert(key, &[][..])?;
            }
            if how.complete {
                tx_holders.insert(digest_key(repo, holder), &[][..])?;
            }
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        });
        settle(result)?;
        if how.durable {
            self.flush(&t)?;
        }
        Ok(())
    }

    fn has_refs(&self, repo: &Repository, holder: &Digest) -> Result<bool, StoreError> {
        let t = self.trees()?;
        t.holders.contains_key(digest_key(repo, holder)).map_err(io)
    }

    fn holders(&self, repo: &Repository) -> Result<Vec<Digest>, StoreError> {
        let t = self.trees()?;
        let prefix = repo_prefix(repo);
        let mut out = Vec::new();
        for item in t.pins.scan_prefix(&prefix) {
            let (k, v) = item.map_err(io)?;
            out.push(decode_pin(&k, &v)?.digest);
        }
        for item in t.claims.scan_prefix(&prefix) {
            let (k, v) = item.map_err(io)?;
            out.push(decode_claim(&k, &v)?.digest);
        }
        out.sort();
        out.dedup();
        Ok(out)
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
        let t = self.trees()?;
        let prefix = repo.map(repo_prefix).unwrap_or_default();
        let start = match after {
            Some((r, tag)) => {
                let mut k = tag_key(r, tag);
                k.push(0); // the smallest key after it
                k
            }
            None => prefix.clone(),
        };
        let parse_key = |k: &[u8]| -> Result<(Repository, Tag), StoreError> {
            let text = std::str::from_utf8(k).map_err(|e| corrupt(k, e))?;
            let (r, tg) = text.split_once('\0').ok_or_else(|| corrupt(k, "no separator"))?;
            Ok((
                Repository::parse(r).map_err(|e| corrupt(k, e))?,
                Tag::parse(tg).map_err(|e| corrupt(k, e))?,
            ))
        };
        // Pins and claims are two trees in the same key order: merge them, a key at a time.
        let mut pins = t.pins.range(start.clone()..).peekable();
        let mut claims = t.claims.range(start..).peekable();
        let mut out = Vec::with_capacity(limit.min(1024));
        while out.len() < limit {
            let next_pin = pins
                .peek()
                .map(|r| r.as_ref().map(|(k, _)| k.clone()).map_err(|e| io(e.clone())));
            let next_claim = claims
                .peek()
                .map(|r| r.as_ref().map(|(k, _)| k.clone()).map_err(|e| io(e.clone())));
            let key = match (next_pin.transpose()?, next_claim.transpose()?) {
                (None, None) => break,
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (Some(a), Some(b)) => a.min(b),
            };
            if !key.starts_with(&prefix) {
                break;
            }
            let pin = match pins.peek() {
                Some(Ok((k, _))) if *k == key => {
                    let (k, v) = pins.next().expect("peeked").map_err(io)?;
                    Some(decode_pin(&k, &v)?)
                }
                _ => None,
            };
            let claim = match claims.peek() {
                Some(Ok((k, _))) if *k == key => {
                    let (k, v) = claims.next().expect("peeked").map_err(io)?;
                    Some(decode_claim(&k, &v)?)
                }
                _ => None,
            };
            let (r, tag) = parse_key(&key)?;
            if let Some(state) = state_of(pin, claim) {
                out.push((r, tag, state));
            }
        }
        Ok(out)
    }

    fn set_release(&self, repo: &Repository, tag: &Tag, release: &Release) -> Result<(), StoreError> {
        let t = self.trees()?;
        let v = serde_json::to_vec(release).expect("serialising a release cannot fail");
        t.releases.insert(tag_key(repo, tag), v).map_err(io)?;
        self.flush(&t)
    }

    fn release(&self, repo: &Repository, tag: &Tag) -> Result<Option<Release>, StoreError> {
        let t = self.trees()?;
        let key = tag_key(repo, tag);
        match t.releases.get(&key).map_err(io)? {
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| corrupt(&key, e)),
            None => Ok(None),
        }
    }

    fn end_release(
        &self,
        repo: &Repository,
        tag: &Tag,
        event: HistoryEvent,
        request_id: Option<&str>,
    ) -> Result<Option<Release>, StoreError> {
        let t = self.trees()?;
        let key = tag_key(repo, tag);
        let result = (&t.releases, &t.pins).transaction(|(tx_releases, tx_pins)| {
            let Some(v) = tx_releases.remove(key.clone())? else {
                return Ok(None);
            };
            let release: Release = serde_json::from_slice(&v).map_err(|e| abort(corrupt(&key, e)))?;
            if let Some(p) = tx_pins.get(&key)? {
                let mut pin = decode_pin(&key, &p).map_err(abort)?;
                let mut entry = HistoryEntry::new(event, pin.digest.clone(), None);
                entry.by = Some(release.by.clone());
                entry.reason = Some(release.reason.clone());
                entry.request_id = request_id.map(str::to_owned);
                pin.history.push(entry);
                tx_pins.insert(key.clone(), encode_pin(&pin))?;
            }
            Ok(Some(release))
        });
        let removed = settle(result)?;
        self.flush(&t)?;
        Ok(removed)
    }

    fn import(&self, records: &[Exported]) -> Result<ImportOutcome, StoreError> {
        let t = self.trees()?;
        let result = (&t.pins, &t.claims, &t.by_digest).transaction(|(tx_pins, tx_claims, tx_index)| {
            let (mut outcome, writes) = super::plan_import(records, |r| {
                tx_state(tx_pins, tx_claims, &tag_key(&r.repository, &r.tag))
            })?;
            if !outcome.conflicts.is_empty() {
                return Ok(outcome);
            }
            for r in writes {
                let key = tag_key(&r.repository, &r.tag);
                if let Some(pin) = r.pin() {
                    tx_pins.insert(key.clone(), encode_pin(&pin))?;
                    tx_index.insert(index_key(&r.repository, &pin.digest, &r.tag), &[][..])?;
                }
                if let Some(claim) = &r.claim {
                    tx_claims.insert(key, encode_claim(claim))?;
                    tx_index.insert(index_key(&r.repository, &claim.digest, &r.tag), &[][..])?;
                }
                outcome.imported += 1;
            }
            Ok(outcome)
        });
        let outcome = settle(result)?;
        self.flush(&t)?;
        Ok(outcome)
    }

    fn lead(&self) -> Result<bool, StoreError> {
        // The data dir's lock already makes this the only process on the store.
        Ok(true)
    }

    fn check(&self) -> Result<(), StoreError> {
        // A read and a flush: the flush fails on a read-only or full disk.
        let t = self.trees()?;
        t.pins.first().map_err(io)?;
        self.flush(&t)
    }
}
