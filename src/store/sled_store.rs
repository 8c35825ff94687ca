//! The sled backend. Four trees, written together in transactions:
//! - `pins`:      `repo \0 tag`             -> JSON `{"digest","source","pinned_at"}`
//! - `claims`:    `repo \0 tag`             -> JSON `{"digest","request_id","claimed_at"}`
//! - `by_digest`: `repo \0 digest \0 tag`   -> empty, for pins and claims alike, so "is
//!   this digest pinned?" is a prefix scan instead of a walk over every pin;
//! - `deletes`:   `repo \0 digest`          -> JSON `{"request_id","started_at"}`, the
//!   digest deletes forwarded without a known outcome;
//! - `refs`:      `repo \0 ref \0 holder`    -> empty: pinned manifest `holder` depends on
//!   blob or manifest `ref`;
//! - `holders`:   `repo \0 holder`          -> empty: the references of `holder` are recorded.
//!
//! `\0` cannot occur in a validated repository, tag or digest, so keys cannot collide.
//!
//! Durability: every write is flushed (fsync) before the method returns. When a flush
//! fails, the written state lives only in sled's memory and may never reach the disk, so
//! the store is marked dirty and answers every later call with an error until a flush
//! succeeds again: nothing is decided from state a restart could lose.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

use super::{Claim, Pin, PinSource, PinStore, StoreError, TagState};
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
}

impl Trees {
    fn open(path: &Path, dir: &Path) -> Result<Self, StoreError> {
        // sled reports most damage as an error, but some corrupt files make it panic while
        // recovering; either way the store is unusable and tagpin must fail closed.
        let opened = std::panic::catch_unwind(|| sled::Config::new().path(path).open()).map_err(|_| {
            StoreError::Unavailable(format!(
                "cannot open {}: sled panicked while recovering it",
                dir.display()
            ))
        })?;
        let db = opened.map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", dir.display())))?;
        let tree = |name: &str| db.open_tree(name).map_err(io);
        Ok(Self {
            pins: tree("pins")?,
            claims: tree("claims")?,
            by_digest: tree("by_digest")?,
            deletes: tree("deletes")?,
            refs: tree("refs")?,
            holders: tree("holders")?,
            db,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct PinRecord {
    digest: String,
    source: PinSource,
    pinned_at: u64,
}

#[derive(Serialize, Deserialize)]
struct ClaimRecord {
    digest: String,
    request_id: String,
    claimed_at: u64,
}

#[derive(Serialize, Deserialize)]
struct DeleteRecord {
    request_id: String,
    started_at: u64,
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
        if FAIL_FLUSH.with(|f| f.get()) {
            self.dirty.store(true, Ordering::Release);
            return Err(StoreError::Io("injected flush failure".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
thread_local! {
    static FAIL_FLUSH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
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

fn corrupt(key: &[u8], why: impl ToString) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).replace('\0', ":"),
        why: why.to_string(),
    }
}

fn decode_pin(key: &[u8], bytes: &[u8]) -> Result<Pin, StoreError> {
    let r: PinRecord = serde_json::from_slice(bytes).map_err(|e| corrupt(key, e))?;
    Ok(Pin {
        digest: Digest::parse(&r.digest).map_err(|e| corrupt(key, e))?,
        source: r.source,
        pinned_at: r.pinned_at,
    })
}

fn decode_claim(key: &[u8], bytes: &[u8]) -> Result<Claim, StoreError> {
    let r: ClaimRecord = serde_json::from_slice(bytes).map_err(|e| corrupt(key, e))?;
    Ok(Claim {
        digest: Digest::parse(&r.digest).map_err(|e| corrupt(key, e))?,
        request_id: r.request_id,
        claimed_at: r.claimed_at,
    })
}

fn encode_pin(pin: &Pin) -> Vec<u8> {
    serde_json::to_vec(&PinRecord {
        digest: pin.digest.as_str().to_owned(),
        source: pin.source,
        pinned_at: pin.pinned_at,
    })
    .expect("serialising a pin record cannot fail")
}

fn encode_claim(claim: &Claim) -> Vec<u8> {
    serde_json::to_vec(&ClaimRecord {
        digest: claim.digest.as_str().to_owned(),
        request_id: claim.request_id.clone(),
        claimed_at: claim.claimed_at,
    })
    .expect("serialising a claim record cannot fail")
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// The state of one tag inside a transaction.
fn tx_state(pins: &TransactionalTree, claims: &TransactionalTree, key: &[u8]) -> TxResult<Option<TagState>> {
    if let Some(v) = pins.get(key)? {
        return Ok(Some(TagState::Pinned(
            decode_pin(key, &v).map_err(ConflictableTransactionError::Abort)?,
        )));
    }
    if let Some(v) = claims.get(key)? {
        return Ok(Some(TagState::Claimed(
            decode_claim(key, &v).map_err(ConflictableTransactionError::Abort)?,
        )));
    }
    Ok(None)
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
        if let Some(v) = t.pins.get(&key).map_err(io)? {
            return decode_pin(&key, &v).map(|p| Some(TagState::Pinned(p)));
        }
        match t.claims.get(&key).map_err(io)? {
            Some(v) => decode_claim(&key, &v).map(|c| Some(TagState::Claimed(c))),
            None => Ok(None),
        }
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

    fn confirm(&self, repo: &Repository, tags: &[Tag], digest: &Digest) -> Result<Vec<TagState>, StoreError> {
        let t = self.trees()?;
        let result = (&t.pins, &t.claims, &t.by_digest).transaction(|(tx_pins, tx_claims, _)| {
            let mut in_force = Vec::with_capacity(tags.len());
            for tag in tags {
                let key = tag_key(repo, tag);
                match tx_state(tx_pins, tx_claims, &key)? {
                    Some(TagState::Claimed(c)) if &c.digest == digest => {
                        let pin = Pin::now(digest.clone(), PinSource::Push);
                        tx_claims.remove(key.clone())?;
                        tx_pins.insert(key, encode_pin(&pin))?;
                        in_force.push(TagState::Pinned(pin));
                    }
                    Some(state) => in_force.push(state),
                    None => {
                        // A claim that vanished under a held lock: pin what the upstream
                        // accepted rather than leave the tag free.
                        let pin = Pin::now(digest.clone(), PinSource::Push);
                        tx_pins.insert(key, encode_pin(&pin))?;
                        in_force.push(TagState::Pinned(pin));
                    }
                }
            }
            Ok(in_force)
        });
        let in_force = settle(result)?;
        self.flush(&t)?;
        Ok(in_force)
    }

    fn withdraw(&self, repo: &Repository, tags: &[Tag], request_id: &str) -> Result<(), StoreError> {
        let t = self.trees()?;
        Self::remove_claims(&t, repo, tags, request_id)?;
        self.flush(&t)
    }

    fn tags_pinned_to(&self, repo: &Repository, digest: &Digest) -> Result<Vec<Tag>, StoreError> {
        let t = self.trees()?;
        let mut prefix = digest_key(repo, digest);
        prefix.push(0);
        t.by_digest
            .scan_prefix(&prefix)
            .keys()
            .map(|k| {
                let k = k.map_err(io)?;
                std::str::from_utf8(&k[prefix.len()..])
                    .ok()
                    .and_then(|t| Tag::parse(t).ok())
                    .ok_or_else(|| corrupt(&k, "not a tag"))
            })
            .collect()
    }

    fn begin_delete(&self, repo: &Repository, digest: &Digest, request_id: &str) -> Result<(), StoreError> {
        let t = self.trees()?;
        let record = serde_json::to_vec(&DeleteRecord {
            request_id: request_id.to_owned(),
            started_at: super::now_secs(),
        })
        .expect("serialising a delete record cannot fail");
        t.deletes.insert(digest_key(repo, digest), record).map_err(io)?;
        self.flush(&t)
    }

    fn end_delete(&self, repo: &Repository, digest: &Digest) -> Result<(), StoreError> {
        let t = self.trees()?;
        t.deletes.remove(digest_key(repo, digest)).map_err(io)?;
        self.flush(&t)
    }

    fn delete_in_flight(&self, repo: &Repository, digest: &Digest) -> Result<bool, StoreError> {
        let t = self.trees()?;
        t.deletes.contains_key(digest_key(repo, digest)).map_err(io)
    }

    fn protect(&self, repo: &Repository, holder: &Digest, refs: &[Digest]) -> Result<(), StoreError> {
        let t = self.trees()?;
        let result = (&t.refs, &t.holders).transaction(|(tx_refs, tx_holders)| {
            for r in refs {
                let mut key = digest_key(repo, r);
                key.push(0);
                key.extend_from_slice(holder.as_str().as_bytes());
                tx_refs.insert(key, &[][..])?;
            }
            tx_holders.insert(digest_key(repo, holder), &[][..])?;
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        });
        settle(result)?;
        self.flush(&t)
    }

    fn has_refs(&self, repo: &Repository, holder: &Digest) -> Result<bool, StoreError> {
        let t = self.trees()?;
        t.holders.contains_key(digest_key(repo, holder)).map_err(io)
    }

    fn holders(&self, repo: &Repository) -> Result<Vec<Digest>, StoreError> {
        let t = self.trees()?;
        let mut prefix = repo.as_str().as_bytes().to_vec();
        prefix.push(0);
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
        let mut prefix = digest_key(repo, digest);
        prefix.push(0);
        t.refs
            .scan_prefix(&prefix)
            .keys()
            .map(|k| {
                let k = k.map_err(io)?;
                std::str::from_utf8(&k[prefix.len()..])
                    .ok()
                    .and_then(|d| Digest::parse(d).ok())
                    .ok_or_else(|| corrupt(&k, "not a digest"))
            })
            .collect()
    }

    fn check(&self) -> Result<(), StoreError> {
        // A read and a flush: the flush fails on a read-only or full disk.
        let t = self.trees()?;
        t.pins.first().map_err(io)?;
        self.flush(&t)
    }
}

impl SledStore {
    /// Remove the claims of `tags` created by `request_id`, with their index entries.
    fn remove_claims(t: &Trees, repo: &Repository, tags: &[Tag], request_id: &str) -> Result<(), StoreError> {
        let result = (&t.claims, &t.by_digest).transaction(|(tx_claims, tx_index)| {
            for tag in tags {
                let key = tag_key(repo, tag);
                let Some(v) = tx_claims.get(&key)? else { continue };
                let c = decode_claim(&key, &v).map_err(ConflictableTransactionError::Abort)?;
                if c.request_id == request_id {
                    tx_claims.remove(key)?;
                    tx_index.remove(index_key(repo, &c.digest, tag))?;
                }
            }
            Ok(())
        });
        settle(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    fn ab() -> (Repository, Tag) {
        (Repository::parse("a/b").unwrap(), Tag::parse("v1").unwrap())
    }

    #[test]
    fn first_pin_wins_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, tag) = ab();
        {
            let s = SledStore::open(dir.path()).unwrap();
            assert_eq!(s.state(&repo, &tag).unwrap(), None);
            let first = Pin::now(d('a'), PinSource::Push);
            let got = s.pin_if_absent(&repo, &[(tag.clone(), first.clone())]).unwrap();
            assert_eq!(got, vec![TagState::Pinned(first.clone())]);
            let second = Pin::now(d('b'), PinSource::Push);
            let got = s.pin_if_absent(&repo, &[(tag.clone(), second)]).unwrap();
            assert_eq!(got[0].digest(), &d('a'));
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.state(&repo, &tag).unwrap().unwrap().digest(), &d('a'));
        assert_eq!(s.tags_pinned_to(&repo, &d('a')).unwrap(), vec![tag]);
        assert!(s.tags_pinned_to(&repo, &d('b')).unwrap().is_empty());
        s.check().unwrap();
    }

    #[test]
    fn a_claim_holds_the_tag_like_a_pin_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, tag) = ab();
        {
            let s = SledStore::open(dir.path()).unwrap();
            let c = Claim::now(d('a'), "req-1");
            let got = s.claim(&repo, std::slice::from_ref(&tag), &c).unwrap();
            assert_eq!(got, vec![TagState::Claimed(c.clone())]);
            // A second claim and an adoption both find the first claim.
            let got = s
                .claim(&repo, std::slice::from_ref(&tag), &Claim::now(d('b'), "req-2"))
                .unwrap();
            assert_eq!(got, vec![TagState::Claimed(c.clone())]);
            let got = s
                .pin_if_absent(&repo, &[(tag.clone(), Pin::now(d('b'), PinSource::Adopted))])
                .unwrap();
            assert_eq!(got, vec![TagState::Claimed(c)]);
        }
        // A crash (here: close and reopen) keeps the claim: its outcome is still unknown.
        let s = SledStore::open(dir.path()).unwrap();
        assert!(matches!(s.state(&repo, &tag).unwrap(), Some(TagState::Claimed(c)) if c.digest == d('a')));
        assert_eq!(s.tags_pinned_to(&repo, &d('a')).unwrap(), vec![tag]);
    }

    #[test]
    fn confirm_turns_the_claim_into_a_pin() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let (repo, tag) = ab();
        s.claim(&repo, std::slice::from_ref(&tag), &Claim::now(d('a'), "r"))
            .unwrap();
        let got = s.confirm(&repo, std::slice::from_ref(&tag), &d('a')).unwrap();
        assert!(matches!(&got[0], TagState::Pinned(p) if p.digest == d('a') && p.source == PinSource::Push));
        assert!(matches!(s.state(&repo, &tag).unwrap(), Some(TagState::Pinned(_))));
        assert_eq!(s.claim_count(), 0);
        // Confirming another digest never moves the pin.
        let got = s.confirm(&repo, std::slice::from_ref(&tag), &d('b')).unwrap();
        assert_eq!(got[0].digest(), &d('a'));
        assert_eq!(s.tags_pinned_to(&repo, &d('a')).unwrap(), vec![tag]);
    }

    #[test]
    fn only_the_creating_request_withdraws_a_claim() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let (repo, tag) = ab();
        s.claim(&repo, std::slice::from_ref(&tag), &Claim::now(d('a'), "creator"))
            .unwrap();
        s.withdraw(&repo, std::slice::from_ref(&tag), "a-retry").unwrap();
        assert!(s.state(&repo, &tag).unwrap().is_some());
        s.withdraw(&repo, std::slice::from_ref(&tag), "creator").unwrap();
        assert_eq!(s.state(&repo, &tag).unwrap(), None);
        assert!(s.tags_pinned_to(&repo, &d('a')).unwrap().is_empty());
    }

    #[test]
    fn deletes_in_flight_are_recorded_until_settled() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, _) = ab();
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.begin_delete(&repo, &d('a'), "r").unwrap();
            assert!(s.delete_in_flight(&repo, &d('a')).unwrap());
            assert!(!s.delete_in_flight(&repo, &d('b')).unwrap());
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert!(s.delete_in_flight(&repo, &d('a')).unwrap());
        s.end_delete(&repo, &d('a')).unwrap();
        assert!(!s.delete_in_flight(&repo, &d('a')).unwrap());
    }

    #[test]
    fn after_a_failed_flush_nothing_is_answered_from_memory_until_a_flush_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let (repo, tag) = ab();
        FAIL_FLUSH.with(|f| f.set(true));
        let pin = Pin::now(d('a'), PinSource::Push);
        assert!(s.pin_if_absent(&repo, &[(tag.clone(), pin)]).is_err());
        FAIL_FLUSH.with(|f| f.set(false));
        // The real disk is fine here, so the next call's flush succeeds and the pin, now
        // durable, may be answered.
        assert_eq!(s.state(&repo, &tag).unwrap().unwrap().digest(), &d('a'));
        FAIL_FLUSH.with(|f| f.set(true));
        assert!(s.check().is_err());
        assert!(s.dirty.load(Ordering::Acquire));
        FAIL_FLUSH.with(|f| f.set(false));
    }

    #[test]
    fn a_claim_whose_flush_fails_is_taken_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let (repo, tag) = ab();
        FAIL_FLUSH.with(|f| f.set(true));
        assert!(s
            .claim(&repo, std::slice::from_ref(&tag), &Claim::now(d('a'), "r"))
            .is_err());
        FAIL_FLUSH.with(|f| f.set(false));
        assert_eq!(s.state(&repo, &tag).unwrap(), None);
    }

    #[test]
    fn references_are_recorded_per_repository_and_holder() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let (repo, tag) = ab();
        let other = Repository::parse("a").unwrap();
        assert!(!s.has_refs(&repo, &d('1')).unwrap());
        s.protect(&repo, &d('1'), &[d('a'), d('b')]).unwrap();
        s.protect(&repo, &d('2'), &[d('b')]).unwrap();
        assert!(s.has_refs(&repo, &d('1')).unwrap());
        assert_eq!(s.referenced_by(&repo, &d('a')).unwrap(), vec![d('1')]);
        assert_eq!(s.referenced_by(&repo, &d('b')).unwrap(), vec![d('1'), d('2')]);
        assert!(s.referenced_by(&other, &d('a')).unwrap().is_empty());
        assert!(s.referenced_by(&repo, &d('c')).unwrap().is_empty());
        s.pin_if_absent(&repo, &[(tag, Pin::now(d('1'), PinSource::Push))])
            .unwrap();
        s.claim(&repo, &[Tag::parse("v2").unwrap()], &Claim::now(d('3'), "r"))
            .unwrap();
        s.pin_if_absent(&other, &[(Tag::parse("x").unwrap(), Pin::now(d('4'), PinSource::Push))])
            .unwrap();
        assert_eq!(s.holders(&repo).unwrap(), vec![d('1'), d('3')]);
    }

    #[test]
    fn digest_index_is_per_repository() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let a = Repository::parse("a").unwrap();
        let ab = Repository::parse("a/b").unwrap();
        let t = Tag::parse("v1").unwrap();
        s.pin_if_absent(&ab, &[(t, Pin::now(d('c'), PinSource::Adopted))])
            .unwrap();
        assert!(s.tags_pinned_to(&a, &d('c')).unwrap().is_empty());
        assert_eq!(s.tags_pinned_to(&ab, &d('c')).unwrap().len(), 1);
    }

    #[test]
    fn a_second_open_of_the_same_dir_is_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledStore::open(dir.path()).unwrap();
        assert!(matches!(SledStore::open(dir.path()), Err(StoreError::Locked(_))));
    }
}
