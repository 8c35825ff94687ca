//! Per-key async locks, created on demand and dropped when unused.
//!
//! Decisions on one tag must be serialised across the whole check → forward → commit
//! sequence: two racing pushes of different digests must not both see "free" and both
//! reach the upstream. Each tag gets a mutex; each repository gets a read-write lock that
//! pushes take shared and digest deletes take exclusive, so a delete of a digest cannot
//! interleave with a push that is about to pin a tag to it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use crate::oci::{Repository, Tag};

/// A map from key to a lock that exists while somebody holds or waits for it.
pub(crate) struct LockTable<T> {
    inner: Mutex<Inner<T>>,
}

struct Inner<T> {
    map: HashMap<String, Weak<T>>,
    /// Dead entries are swept when the map grows past this; it doubles with the live set,
    /// so sweeping costs amortised O(1) per lookup.
    sweep_at: usize,
}

impl<T: Default> LockTable<T> {
    pub(crate) fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                sweep_at: 1024,
            }),
        }
    }

    pub(crate) fn get(&self, key: String) -> Arc<T> {
        // A poisoned std mutex only means another thread panicked mid-lookup; the map is
        // still a valid cache of weak pointers.
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lock) = inner.map.get(&key).and_then(Weak::upgrade) {
            return lock;
        }
        if inner.map.len() >= inner.sweep_at {
            inner.map.retain(|_, w| w.strong_count() > 0);
            inner.sweep_at = (inner.map.len() * 2).max(1024);
        }
        let lock = Arc::new(T::default());
        inner.map.insert(key, Arc::downgrade(&lock));
        lock
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().unwrap().map.len()
    }
}

/// The locks tagpin takes around decisions.
pub struct DecisionLocks {
    repos: LockTable<RwLock<()>>,
    tags: LockTable<AsyncMutex<()>>,
    /// One adoption of a repository's tags at a time ([`DecisionLocks::adoption`]).
    adoptions: LockTable<AsyncMutex<()>>,
}

/// Held for the whole of a push decision.
pub struct PushGuard {
    _repo: OwnedRwLockReadGuard<()>,
    _tags: Vec<OwnedMutexGuard<()>>,
}

impl Default for DecisionLocks {
    fn default() -> Self {
        Self {
            repos: LockTable::new(),
            tags: LockTable::new(),
            adoptions: LockTable::new(),
        }
    }
}

impl DecisionLocks {
    /// Lock `tags` of `repo` for a push. Tags are locked in sorted order so that two
    /// pushes naming overlapping sets of tags cannot deadlock.
    pub async fn push(&self, repo: &Repository, tags: &[Tag]) -> PushGuard {
        let repo_guard = self.repos.get(repo.as_str().to_owned()).read_owned().await;
        let mut sorted: Vec<&Tag> = tags.iter().collect();
        sorted.sort();
        sorted.dedup();
        let mut guards = Vec::with_capacity(sorted.len());
        for tag in sorted {
            let key = format!("{repo}\0{tag}");
            guards.push(self.tags.get(key).lock_owned().await);
        }
        PushGuard {
            _repo: repo_guard,
            _tags: guards,
        }
    }

    /// Adopt the tags of `repo` one walk at a time: a delete repeated while its
    /// repository's adoption runs waits for it, then finds the tags pinned (a store lookup
    /// each), instead of walking the upstream beside it. Pushes are not held up: each tag
    /// is adopted under its own push lock.
    pub async fn adoption(&self, repo: &Repository) -> OwnedMutexGuard<()> {
        self.adoptions.get(repo.as_str().to_owned()).lock_owned().await
    }

    /// Lock a whole repository against pushes, for deleting a manifest by digest.
    pub async fn digest_delete(&self, repo: &Repository) -> OwnedRwLockWriteGuard<()> {
        self.repos.get(repo.as_str().to_owned()).write_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_tag_is_decided_by_one_push_at_a_time() {
        let locks = Arc::new(DecisionLocks::default());
        let repo = Repository::parse("a").unwrap();
        let tag = Tag::parse("v1").unwrap();
        let g = locks.push(&repo, std::slice::from_ref(&tag)).await;
        let l2 = locks.clone();
        let (r2, t2) = (repo.clone(), tag.clone());
        let waiter = tokio::spawn(async move {
            l2.push(&r2, &[t2]).await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "second push must wait for the first");
        drop(g);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_digest_delete_waits_for_pushes_in_the_repository() {
        let locks = Arc::new(DecisionLocks::default());
        let repo = Repository::parse("a").unwrap();
        let g = locks.push(&repo, &[Tag::parse("v1").unwrap()]).await;
        let l2 = locks.clone();
        let r2 = repo.clone();
        let waiter = tokio::spawn(async move {
            l2.digest_delete(&r2).await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(g);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn unused_locks_are_swept() {
        let locks = DecisionLocks::default();
        let repo = Repository::parse("a").unwrap();
        for i in 0..5000 {
            drop(locks.push(&repo, &[Tag::parse(&format!("t{i}")).unwrap()]).await);
        }
        assert!(locks.tags.len() <= 2048, "{}", locks.tags.len());
    }
}
