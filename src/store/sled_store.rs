//! The sled backend. Four trees, written together in transactions:
//! - `pins`:      `repo \0 tag`             -> JSON `{"digest","source","pinned_at"}`
//! - `claims`:    `repo \0 tag`             -> JSON `{"digest","request_id","claimed_at"}`
//! - `by_digest`: `repo \0 digest \0 tag`   -> empty, for pins and claims alike, so "is
//!   this digest pinned?" is a prefix scan instead of a walk over every pin;
//! - `deletes`:   `repo \0 digest`          -> JSON `{"request_id","started_at"}`, the
//!   digest deletes forwarded without a known outcome.
//!
//! `\0` cannot occur in a validated repository, tag or digest, so keys cannot collide.
//!
//! Durability: every write is flushed (fsync) before the method returns. When a flush
//! fails, the written state lives only in sled's memory and may never reach the disk, so
//! the store is marked dirty and answers every later call with an error until a flush
//! succeeds again: nothing is decided from state a restart could lose.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

use super::{Claim, Pin, PinSource, PinStore, StoreError, TagState};
use crate::oci::{Digest, Repository, Tag};

pub struct SledStore {
    db: sled::Db,
    pins: sled::Tree,
    claims: sled::Tree,
    by_digest: sled::Tree,
    deletes: sled::Tree,
    /// A flush failed and has not succeeded since.
    dirty: AtomicBool,
    /// Held for the store's lifetime: one tagpin per data dir.
    _lock: File,
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
        // sled reports most damage as an error, but some corrupt files make it panic while
        // recovering; either way the store is unusable and tagpin must fail closed.
        let opened = std::panic::catch_unwind(|| sled::Config::new().path(&path).open()).map_err(|_| {
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
            db,
            dirty: AtomicBool::new(false),
            _lock: lock,
        })
    }

    /// Number of pins held, for the start-up log line.
    pub fn pin_count(&self) -> usize {
        self.pins.len()
    }

    /// Number of claims with an unknown outcome, for the start-up log line.
    pub fn claim_count(&self) -> usize {
        self.claims.len()
    }

    /// Refuse to answer while an earlier write may not be on disk; a successful flush
    /// makes it durable and lifts the refusal.
    fn ensure_clean(&self) -> Result<(), StoreError> {
        if self.dirty.load(Ordering::Acquire) {
            self.db.flush().map_err(io)?;
            self.dirty.store(false, Ordering::Release);
        }
        Ok(())
    }

    /// Flush a write; on failure the store is dirty until a later flush succeeds.
    fn flush(&self) -> Result<(), StoreError> {
        self.flush_hook()?;
        if let Err(e) = self.db.flush() {
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
        self.ensure_clean()?;
        let key = tag_key(repo, tag);
        if let Some(v) = self.pins.get(&key).map_err(io)? {
            return decode_pin(&key, &v).map(|p| Some(TagState::Pinned(p)));
        }
        match self.claims.get(&key).map_err(io)? {
            Some(v) => decode_claim(&key, &v).map(|c| Some(TagState::Claimed(c))),
            None => Ok(None),
        }
    }

    fn pin_if_absent(&self, repo: &Repository, pins: &[(Tag, Pin)]) -> Result<Vec<TagState>, StoreError> {
        self.ensure_clean()?;
        let result = (&self.pins, &self.claims, &self.by_digest).transaction(|(tx_pins, tx_claims, tx_index)| {
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
        self.flush()?;
        Ok(in_force)
    }

    fn claim(&self, repo: &Repository, tags: &[Tag], claim: &Claim) -> Result<Vec<TagState>, StoreError> {
        self.ensure_clean()?;
        let result = (&self.pins, &self.claims, &self.by_digest).transaction(|(tx_pins, tx_claims, tx_index)| {
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
        if let Err(e) = self.flush() {
            // Nothing will be forwarded under claims that may not be on disk. Take them
            // back in memory; should they reach the disk anyway, they only reserve the tag
            // for a digest the client is told to retry (fail closed).
            let _ = self.remove_claims(repo, tags, &claim.request_id);
            return Err(e);
        }
        Ok(in_force)
    }

    fn confirm(&self, repo: &Repository, tags: &[Tag], digest: &Digest) -> Result<Vec<TagState>, StoreError> {
        self.ensure_clean()?;
        let result = (&self.pins, &self.claims, &self.by_digest).transaction(|(tx_pins, tx_claims, _)| {
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
        self.flush()?;
        Ok(in_force)
    }

    fn withdraw(&self, repo: &Repository, tags: &[Tag], request_id: &str) -> Result<(), StoreError> {
        self.ensure_clean()?;
        self.remove_claims(repo, tags, request_id)?;
        self.flush()
    }

    fn tags_pinned_to(&self, repo: &Repository, digest: &Digest) -> Result<Vec<Tag>, StoreError> {
        self.ensure_clean()?;
        let mut prefix = digest_key(repo, digest);
        prefix.push(0);
        self.by_digest
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
        self.ensure_clean()?;
        let record = serde_json::to_vec(&DeleteRecord {
            request_id: request_id.to_owned(),
            started_at: super::now_secs(),
        })
        .expect("serialising a delete record cannot fail");
        self.deletes.insert(digest_key(repo, digest), record).map_err(io)?;
        self.flush()
    }

    fn end_delete(&self, repo: &Repository, digest: &Digest) -> Result<(), StoreError> {
        self.ensure_clean()?;
        self.deletes.remove(digest_key(repo, digest)).map_err(io)?;
        self.flush()
    }

    fn delete_in_flight(&self, repo: &Repository, digest: &Digest) -> Result<bool, StoreError> {
        self.ensure_clean()?;
        self.deletes.contains_key(digest_key(repo, digest)).map_err(io)
    }

    fn check(&self) -> Result<(), StoreError> {
        // A read and a flush: the flush fails on a read-only or full disk.
        self.ensure_clean()?;
        self.pins.first().map_err(io)?;
        self.flush()
    }
}

impl SledStore {
    /// Remove the claims of `tags` created by `request_id`, with their index entries.
    fn remove_claims(&self, repo: &Repository, tags: &[Tag], request_id: &str) -> Result<(), StoreError> {
        let result = (&self.claims, &self.by_digest).transaction(|(tx_claims, tx_index)| {
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
