//! The pin store: for each (repository, tag), what tagpin holds it to, plus the writes
//! whose outcome at the upstream is not known yet. One interface, [`PinStore`], so that
//! backends other than sled can be added.
//!
//! # The in-flight rule
//! A tag is in one of three states: free, [`TagState::Claimed`] or [`TagState::Pinned`].
//! A push that finds a tag free records a claim for its digest, durably, *before* it
//! forwards anything. From then on the tag is reserved: every other digest is refused
//! exactly as if the claim were a pin, whatever happens to the client, a timer or the
//! process, because the claim is on disk and nothing but the upstream's answer settles
//! it:
//! - the upstream accepted the push (2xx, digest confirmed): the claim becomes the pin;
//! - the upstream definitively refused it (a 4xx or 5xx answer to this very exchange):
//!   the claim is withdrawn, but only by the push that created it, and only if that push
//!   is the only one ever forwarded under it ([`PinStore::withdraw`] matches the claim's
//!   request id). A push that finds an existing claim for its own digest knows an
//!   earlier forward's outcome is unknown, so its own refusal settles nothing;
//! - the outcome is unknown (timeout, reset, crash): the claim stays. Re-pushing the same
//!   digest, which is what every client's retry does, completes it.
//!
//! Deletes by digest follow the same rule with [`PinStore::begin_delete`]: while a
//! forwarded delete of a manifest has no known outcome, no push may pin a tag to it.
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

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Pin {
    pub fn now(digest: Digest, source: PinSource) -> Self {
        Self {
            digest,
            source,
            pinned_at: now_secs(),
        }
    }
}

/// A provisional reservation of a tag for a digest whose push was (or is about to be)
/// forwarded and whose outcome is not known yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub digest: Digest,
    /// The request that created the claim; only it may withdraw it.
    pub request_id: String,
    /// Seconds since the Unix epoch.
    pub claimed_at: u64,
}

impl Claim {
    pub fn now(digest: Digest, request_id: &str) -> Self {
        Self {
            digest,
            request_id: request_id.to_owned(),
            claimed_at: now_secs(),
        }
    }
}

/// What a tag is held to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagState {
    Pinned(Pin),
    Claimed(Claim),
}

impl TagState {
    /// The digest the tag is held to, pinned or claimed.
    pub fn digest(&self) -> &Digest {
        match self {
            Self::Pinned(p) => &p.digest,
            Self::Claimed(c) => &c.digest,
        }
    }
}

/// A store failure. Any of these makes tagpin refuse the write it was deciding (503).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("pin store unavailable: {0}")]
    Unavailable(String),
    #[error("data dir {0} is in use by another tagpin process")]
    Locked(String),
    #[error("pin store I/O failed: {0}")]
    Io(String),
    #[error("pin store holds an unreadable record for {key}: {why}")]
    Corrupt { key: String, why: String },
}

/// The interface every pin store backend implements. Every write is atomic and durable
/// (on disk, or committed) before the method returns; after a write that could not be
/// made durable, the store answers nothing from memory until a write succeeds again.
pub trait PinStore: Send + Sync + 'static {
    /// The state of `tag` in `repo`: pinned, claimed, or `None` when free.
    fn state(&self, repo: &Repository, tag: &Tag) -> Result<Option<TagState>, StoreError>;

    /// Record each pin unless its tag is pinned or claimed already (adoption of what the
    /// upstream holds). Returns, in order, the state in force for each tag afterwards.
    fn pin_if_absent(&self, repo: &Repository, pins: &[(Tag, Pin)]) -> Result<Vec<TagState>, StoreError>;

    /// Claim each free tag for `claim.digest`, atomically. Returns, in order, the state
    /// in force for each tag afterwards: the new claim, or what was there first.
    fn claim(&self, repo: &Repository, tags: &[Tag], claim: &Claim) -> Result<Vec<TagState>, StoreError>;

    /// Turn the claims of `tags` for `digest` into pins (the upstream accepted the push).
    /// A tag already pinned to `digest` is left as it is; a tag held to another digest is
    /// left too and reported in the result (it cannot happen while the tag lock is held).
    fn confirm(&self, repo: &Repository, tags: &[Tag], digest: &Digest) -> Result<Vec<TagState>, StoreError>;

    /// Withdraw the claims of `tags` that `request_id` created (the upstream definitively
    /// refused that request). Claims of other requests and pins are untouched.
    fn withdraw(&self, repo: &Repository, tags: &[Tag], request_id: &str) -> Result<(), StoreError>;

    /// Tags of `repo` pinned or claimed to `digest`.
    fn tags_pinned_to(&self, repo: &Repository, digest: &Digest) -> Result<Vec<Tag>, StoreError>;

    /// Record that a delete of `repo@digest` is being forwarded.
    fn begin_delete(&self, repo: &Repository, digest: &Digest, request_id: &str) -> Result<(), StoreError>;

    /// The upstream answered the delete of `repo@digest` definitively.
    fn end_delete(&self, repo: &Repository, digest: &Digest) -> Result<(), StoreError>;

    /// Whether a forwarded delete of `repo@digest` has an unknown outcome.
    fn delete_in_flight(&self, repo: &Repository, digest: &Digest) -> Result<bool, StoreError>;

    /// Record, durably, that the manifest `holder` of `repo` depends on `refs` (its blobs,
    /// child manifests and their blobs), so none of them can be deleted while it is
    /// pinned. Recorded before the pin or claim that makes `holder` pinned content.
    fn protect(&self, repo: &Repository, holder: &Digest, refs: &[Digest]) -> Result<(), StoreError>;

    /// Whether the references of `holder` have been recorded.
    fn has_refs(&self, repo: &Repository, holder: &Digest) -> Result<bool, StoreError>;

    /// The distinct digests pinned or claimed in `repo`.
    fn holders(&self, repo: &Repository) -> Result<Vec<Digest>, StoreError>;

    /// The pinned manifests of `repo` that depend on `digest`.
    fn referenced_by(&self, repo: &Repository, digest: &Digest) -> Result<Vec<Digest>, StoreError>;

    /// Whether the store can serve reads and durable writes now.
    fn check(&self) -> Result<(), StoreError>;
}

/// The store used when the real one could not be opened: every call fails, so every write
/// that needs a decision is refused (fail closed) while reads keep flowing.
pub struct UnavailableStore {
    pub reason: String,
}

impl UnavailableStore {
    fn fail<T>(&self) -> Result<T, StoreError> {
        Err(StoreError::Unavailable(self.reason.clone()))
    }
}

impl PinStore for UnavailableStore {
    fn state(&self, _: &Repository, _: &Tag) -> Result<Option<TagState>, StoreError> {
        self.fail()
    }
    fn pin_if_absent(&self, _: &Repository, _: &[(Tag, Pin)]) -> Result<Vec<TagState>, StoreError> {
        self.fail()
    }
    fn claim(&self, _: &Repository, _: &[Tag], _: &Claim) -> Result<Vec<TagState>, StoreError> {
        self.fail()
    }
    fn confirm(&self, _: &Repository, _: &[Tag], _: &Digest) -> Result<Vec<TagState>, StoreError> {
        self.fail()
    }
    fn withdraw(&self, _: &Repository, _: &[Tag], _: &str) -> Result<(), StoreError> {
        self.fail()
    }
    fn tags_pinned_to(&self, _: &Repository, _: &Digest) -> Result<Vec<Tag>, StoreError> {
        self.fail()
    }
    fn begin_delete(&self, _: &Repository, _: &Digest, _: &str) -> Result<(), StoreError> {
        self.fail()
    }
    fn end_delete(&self, _: &Repository, _: &Digest) -> Result<(), StoreError> {
        self.fail()
    }
    fn delete_in_flight(&self, _: &Repository, _: &Digest) -> Result<bool, StoreError> {
        self.fail()
    }
    fn protect(&self, _: &Repository, _: &Digest, _: &[Digest]) -> Result<(), StoreError> {
        self.fail()
    }
    fn has_refs(&self, _: &Repository, _: &Digest) -> Result<bool, StoreError> {
        self.fail()
    }
    fn holders(&self, _: &Repository) -> Result<Vec<Digest>, StoreError> {
        self.fail()
    }
    fn referenced_by(&self, _: &Repository, _: &Digest) -> Result<Vec<Digest>, StoreError> {
        self.fail()
    }
    fn check(&self) -> Result<(), StoreError> {
        self.fail()
    }
}
