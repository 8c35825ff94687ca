//! The sled backend. Two trees, written together in one transaction:
//! - `pins`:      `repo \0 tag`             -> JSON `{"digest","source","pinned_at"}`
//! - `by_digest`: `repo \0 digest \0 tag`   -> empty, so "is this digest pinned?" is a
//!   prefix scan instead of a walk over every pin.
//!
//! `\0` cannot occur in a validated repository, tag or digest, so keys cannot collide.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::{Pin, PinSource, PinStore, StoreError};
use crate::oci::{Digest, Repository, Tag};

pub struct SledStore {
    db: sled::Db,
    pins: sled::Tree,
    by_digest: sled::Tree,
}

#[derive(Serialize, Deserialize)]
struct Record {
    digest: String,
    source: PinSource,
    pinned_at: u64,
}

impl SledStore {
    /// Open (or create) the store in `dir`. sled holds an exclusive lock on the directory,
    /// so a second tagpin on the same data dir fails here instead of racing the first.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Unavailable(format!("cannot create data dir {}: {e}", dir.display())))?;
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
        let pins = db.open_tree("pins").map_err(io)?;
        let by_digest = db.open_tree("by_digest").map_err(io)?;
        Ok(Self { db, pins, by_digest })
    }

    /// Number of pins held, for the start-up log line.
    pub fn pin_count(&self) -> usize {
        self.pins.len()
    }
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

fn pin_key(repo: &Repository, tag: &Tag) -> Vec<u8> {
    [repo.as_str().as_bytes(), b"\0", tag.as_str().as_bytes()].concat()
}

fn digest_prefix(repo: &Repository, digest: &Digest) -> Vec<u8> {
    [repo.as_str().as_bytes(), b"\0", digest.as_str().as_bytes(), b"\0"].concat()
}

fn decode(key: &[u8], bytes: &[u8]) -> Result<Pin, StoreError> {
    let corrupt = |why: String| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).replace('\0', ":"),
        why,
    };
    let r: Record = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    let digest = Digest::parse(&r.digest).map_err(|e| corrupt(e.to_string()))?;
    Ok(Pin {
        digest,
        source: r.source,
        pinned_at: r.pinned_at,
    })
}

fn encode(pin: &Pin) -> Vec<u8> {
    let r = Record {
        digest: pin.digest.as_str().to_owned(),
        source: pin.source,
        pinned_at: pin.pinned_at,
    };
    serde_json::to_vec(&r).expect("serialising a pin record cannot fail")
}

impl PinStore for SledStore {
    fn get(&self, repo: &Repository, tag: &Tag) -> Result<Option<Pin>, StoreError> {
        let key = pin_key(repo, tag);
        match self.pins.get(&key).map_err(io)? {
            Some(v) => decode(&key, &v).map(Some),
            None => Ok(None),
        }
    }

    fn pin_if_absent(&self, repo: &Repository, pins: &[(Tag, Pin)]) -> Result<Vec<Pin>, StoreError> {
        let result = (&self.pins, &self.by_digest).transaction(|(tx_pins, tx_digest)| {
            let mut in_force = Vec::with_capacity(pins.len());
            for (tag, pin) in pins {
                let key = pin_key(repo, tag);
                if let Some(existing) = tx_pins.get(&key)? {
                    let existing = decode(&key, &existing).map_err(ConflictableTransactionError::Abort)?;
                    in_force.push(existing);
                    continue;
                }
                tx_pins.insert(key, encode(pin))?;
                let mut dkey = digest_prefix(repo, &pin.digest);
                dkey.extend_from_slice(tag.as_str().as_bytes());
                tx_digest.insert(dkey, &[][..])?;
                in_force.push(pin.clone());
            }
            Ok(in_force)
        });
        let in_force = match result {
            Ok(v) => v,
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(io(e)),
        };
        // Durable before the caller answers the client: a 201 means the pin survives a crash.
        self.db.flush().map_err(io)?;
        Ok(in_force)
    }

    fn tags_pinned_to(&self, repo: &Repository, digest: &Digest) -> Result<Vec<Tag>, StoreError> {
        let prefix = digest_prefix(repo, digest);
        self.by_digest
            .scan_prefix(&prefix)
            .keys()
            .map(|k| {
                let k = k.map_err(io)?;
                let tag = std::str::from_utf8(&k[prefix.len()..])
                    .ok()
                    .and_then(|t| Tag::parse(t).ok())
                    .ok_or_else(|| StoreError::Corrupt {
                        key: String::from_utf8_lossy(&k).replace('\0', ":"),
                        why: "not a tag".into(),
                    })?;
                Ok(tag)
            })
            .collect()
    }

    fn check(&self) -> Result<(), StoreError> {
        // A read and a flush: the flush fails on a read-only or full disk.
        self.pins.first().map_err(io)?;
        self.db.flush().map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    #[test]
    fn first_pin_wins_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::parse("a/b").unwrap();
        let tag = Tag::parse("v1").unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            assert_eq!(s.get(&repo, &tag).unwrap(), None);
            let first = Pin::now(d('a'), PinSource::Push);
            let got = s.pin_if_absent(&repo, &[(tag.clone(), first.clone())]).unwrap();
            assert_eq!(got, vec![first.clone()]);
            let second = Pin::now(d('b'), PinSource::Push);
            let got = s.pin_if_absent(&repo, &[(tag.clone(), second)]).unwrap();
            assert_eq!(got[0].digest, d('a'));
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.get(&repo, &tag).unwrap().unwrap().digest, d('a'));
        assert_eq!(s.tags_pinned_to(&repo, &d('a')).unwrap(), vec![tag]);
        assert!(s.tags_pinned_to(&repo, &d('b')).unwrap().is_empty());
        s.check().unwrap();
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
    fn a_second_open_of_the_same_dir_fails() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledStore::open(dir.path()).unwrap();
        assert!(SledStore::open(dir.path()).is_err());
    }
}
