//! The pin store: for each (repository, tag), the first digest seen and where it came
//! from. One interface, [`PinStore`], so that backends other than sled can be added.
//!
//! Every method is blocking (sled's flush is an fsync); the handler calls them from
//! `spawn_blocking`. A pin is never removed or replaced: it is a tombstone that outlives
//! the tag at the upstream.

mod sled_store;

use serde::{Deserialize, Serialize};

use crate::oci::{Digest, Repository, Tag};

pub use sled_store::SledStore;

/// How a pin came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PinSource {
    /// The first push of the tag through tagpin.
    Push,
    /// The tag already existed at the upstream when tagpin first saw it.
    Adopted,
}

/// One recorded pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub digest: Digest,
    pub source: PinSource,
    /// Seconds since the Unix epoch.
    pub pinned_at: u64,
}

impl Pin {
    pub fn now(digest: Digest, source: PinSource) -> Self {
        let pinned_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self {
            digest,
            source,
            pinned_at,
        }
    }
}

/// A store failure. Any of these makes tagpin refuse the write it was deciding (503).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("pin store unavailable: {0}")]
    Unavailable(String),
    #[error("pin store I/O failed: {0}")]
    Io(String),
    #[error("pin store holds an unreadable record for {key}: {why}")]
    Corrupt { key: String, why: String },
}

/// The interface every pin store backend implements.
pub trait PinStore: Send + Sync + 'static {
    /// The pin of `tag` in `repo`, if any.
    fn get(&self, repo: &Repository, tag: &Tag) -> Result<Option<Pin>, StoreError>;

    /// Record each pin unless its tag is pinned already, atomically, and durably (on disk)
    /// before returning. Returns, in order, the pin in force for each tag afterwards:
    /// the new one, or the one that was there first.
    fn pin_if_absent(&self, repo: &Repository, pins: &[(Tag, Pin)]) -> Result<Vec<Pin>, StoreError>;

    /// Tags of `repo` pinned to `digest`.
    fn tags_pinned_to(&self, repo: &Repository, digest: &Digest) -> Result<Vec<Tag>, StoreError>;

    /// Whether the store can serve reads and durable writes now.
    fn check(&self) -> Result<(), StoreError>;
}

/// The store used when the real one could not be opened: every call fails, so every write
/// that needs a decision is refused (fail closed) while reads keep flowing.
pub struct UnavailableStore {
    pub reason: String,
}

impl PinStore for UnavailableStore {
    fn get(&self, _: &Repository, _: &Tag) -> Result<Option<Pin>, StoreError> {
        Err(StoreError::Unavailable(self.reason.clone()))
    }
    fn pin_if_absent(&self, _: &Repository, _: &[(Tag, Pin)]) -> Result<Vec<Pin>, StoreError> {
        Err(StoreError::Unavailable(self.reason.clone()))
    }
    fn tags_pinned_to(&self, _: &Repository, _: &Digest) -> Result<Vec<Tag>, StoreError> {
        Err(StoreError::Unavailable(self.reason.clone()))
    }
    fn check(&self) -> Result<(), StoreError> {
        Err(StoreError::Unavailable(self.reason.clone()))
    }
}
