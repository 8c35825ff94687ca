//! What the store contract suites share: a fresh store of each backend, the macro that
//! runs every contract function against each, and short builders for names and records.
//! The contract changes records only through `PinStore::update` with plain closures, so
//! it checks the store alone, not the decisions made on top of it.

#![allow(dead_code, reason = "each contract suite uses a different part")]

use tagpin::oci::{Digest, Repository, Tag};
use tagpin::store::{Claim, PgStore, Pin, PinSource, PinStore, Release, SledStore, TagRecord, TagState};

use crate::common::postgres::{fresh_database, shared};

pub fn d(c: char) -> Digest {
    Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
}

/// Digest number `n`, for tests that need many distinct ones.
pub fn dn(n: usize) -> Digest {
    Digest::parse(&format!("sha256:{n:064x}")).unwrap()
}

pub fn repo(s: &str) -> Repository {
    Repository::parse(s).unwrap()
}

pub fn tag(s: &str) -> Tag {
    Tag::parse(s).unwrap()
}

pub fn pin(c: char) -> Pin {
    Pin::now(d(c), PinSource::Push)
}

pub fn one(t: &Tag) -> &[Tag] {
    std::slice::from_ref(t)
}

pub fn release(id: &str) -> Release {
    Release {
        id: id.into(),
        cancelled: false,
        by: "alice".into(),
        reason: "broken build".into(),
        created_at: 1,
        expires_at: u64::MAX,
    }
}

/// Record `claim` on each of `tags` that is free (no pin, no write), as a push of a new
/// tag does. Returns the records as written.
pub fn claim(s: &dyn PinStore, r: &Repository, tags: &[Tag], claim: &Claim) -> Vec<TagRecord> {
    s.update(r, tags, &mut |_, records| {
        for record in records.iter_mut() {
            if record.pin.is_none() && record.writes.is_empty() {
                record.writes.push(claim.clone());
            }
        }
    })
    .unwrap()
}

/// Add `write` to the writes of `t`, whatever the tag holds.
pub fn add_write(s: &dyn PinStore, r: &Repository, t: &Tag, write: &Claim) -> TagRecord {
    s.update(r, one(t), &mut |_, records| records[0].writes.push(write.clone()))
        .unwrap()
        .remove(0)
}

/// Remove the write of `request_id` from `t`.
pub fn remove_write(s: &dyn PinStore, r: &Repository, t: &Tag, request_id: &str) -> TagRecord {
    s.update(r, one(t), &mut |_, records| {
        records[0].writes.retain(|w| w.request_id != request_id)
    })
    .unwrap()
    .remove(0)
}

/// A store of one backend, and whatever must live as long as it.
pub struct Fresh {
    pub store: Box<dyn PinStore>,
    _dir: Option<tempfile::TempDir>,
    /// The PostgreSQL database, for a reopen.
    database: Option<String>,
}

impl Fresh {
    /// Drop the store and open a new one on the same data dir or database, as a restart
    /// does.
    pub fn reopen(self) -> Fresh {
        let Fresh { store, _dir, database } = self;
        drop(store);
        let store: Box<dyn PinStore> = match (&_dir, &database) {
            (Some(dir), _) => Box::new(reopen_sled(dir.path())),
            (None, Some(name)) => Box::new(PgStore::open(shared().config(name)).unwrap()),
            (None, None) => unreachable!("every store has a dir or a database"),
        };
        Fresh { store, _dir, database }
    }
}

/// Open the sled store in `dir` again. Another test of this binary that starts a process
/// (PostgreSQL) may fork while the dropped store's lock file is open: the child holds the
/// lock until it execs, so a lock still held is asked again, at most 100 times 50 ms apart.
pub fn reopen_sled(dir: &std::path::Path) -> SledStore {
    let mut tries = 0;
    loop {
        match SledStore::open(dir) {
            Err(tagpin::store::StoreError::Locked(_)) if tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other.unwrap(),
        }
    }
}

pub fn sled_store() -> Fresh {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    Fresh {
        store: Box::new(store),
        _dir: Some(dir),
        database: None,
    }
}

pub fn pg_store() -> Fresh {
    let name = fresh_database("contract");
    Fresh {
        store: Box::new(PgStore::open(shared().config(&name)).unwrap()),
        _dir: None,
        database: Some(name),
    }
}

/// One `#[test]` per contract function and backend: `sled::NAME`, `postgres::NAME`.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sled {
            $(#[test] fn $name() { super::$name(&*$crate::store_support::sled_store().store) })*
        }
        mod postgres {
            $(#[test] fn $name() { super::$name(&*$crate::store_support::pg_store().store) })*
        }
    };
}

/// A record without the log indexes the store stamps on history: what the change wrote.
pub fn unlogged(mut r: TagRecord) -> TagRecord {
    for e in r
        .history
        .iter_mut()
        .chain(r.pin.iter_mut().flat_map(|p| p.history.iter_mut()))
    {
        e.log = None;
    }
    r
}

pub fn unlogged_state(s: TagState) -> TagState {
    match s {
        TagState::Pinned(p) => TagState::Pinned(
            unlogged(TagRecord {
                pin: Some(p),
                ..TagRecord::default()
            })
            .pin
            .unwrap(),
        ),
        other => other,
    }
}
