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

mod postgres;
mod sled;

use serde::{Deserialize, Serialize};

use crate::oci::{Digest, Repository, Tag};

pub use self::postgres::PgStore;
pub use self::sled::SledStore;

/// How a pin came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PinSource {
    /// The first push of the tag through tagpin.
    Push,
    /// The tag already existed at the upstream when tagpin first saw it.
    Adopted,
}

/// What happened to a pin; its history is these, oldest first, never rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryEvent {
    /// Pinned by its first push through tagpin.
    Push,
    /// Pinned to what the upstream held when tagpin first saw the tag.
    Adopted,
    /// An append-only tag grew: the pin advanced to a manifest that keeps every entry.
    Append,
    /// An audit-mode tag moved: allowed, warned, and followed by the pin.
    AuditMove,
    /// An audit-mode tag was deleted at the upstream; the pin stays.
    AuditDelete,
    /// An operator released the tag and one push moved it (or one delete removed it).
    Released,
    /// A release expired unused.
    ReleaseExpired,
    /// An operator withdrew a release before it was used.
    ReleaseCancelled,
}

/// One entry of a pin's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub event: HistoryEvent,
    /// The digest the tag is pinned to after the event.
    pub digest: Digest,
    /// The digest before, for an advance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Digest>,
    /// The request that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The admin (token name) behind a release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The reason an admin gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl HistoryEntry {
    /// An entry with no request, admin or reason attached.
    pub fn new(event: HistoryEvent, digest: Digest, from: Option<Digest>) -> Self {
        Self {
            at: now_secs(),
            event,
            digest,
            from,
            request_id: None,
            by: None,
            reason: None,
        }
    }
}

/// One recorded pin: the digest in force and how it got there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub digest: Digest,
    pub source: PinSource,
    /// Seconds since the Unix epoch.
    pub pinned_at: u64,
    pub history: Vec<HistoryEntry>,
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
        let at = now_secs();
        let event = match source {
            PinSource::Push => HistoryEvent::Push,
            PinSource::Adopted => HistoryEvent::Adopted,
        };
        let mut first = HistoryEntry::new(event, digest.clone(), None);
        first.at = at;
        Self {
            history: vec![first],
            digest,
            source,
            pinned_at: at,
        }
    }
}

/// What a claim will do once the upstream accepts its push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimKind {
    /// Pin a free tag.
    New,
    /// Advance an append-only pin.
    Append,
    /// Follow an audited move.
    AuditMove,
    /// Use a release: move the pin once.
    Release,
}

/// A provisional reservation of a tag for a digest whose push was (or is about to be)
/// forwarded and whose outcome is not known yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub digest: Digest,
    /// The request that created the claim; only it may withdraw it.
    pub request_id: String,
    /// Seconds since the Unix epoch.
    pub claimed_at: u64,
    #[serde(default = "ClaimKind::new_kind")]
    pub kind: ClaimKind,
}

impl ClaimKind {
    fn new_kind() -> Self {
        Self::New
    }
}

impl Claim {
    pub fn now(digest: Digest, request_id: &str) -> Self {
        Self::of_kind(digest, request_id, ClaimKind::New)
    }

    pub fn of_kind(digest: Digest, request_id: &str, kind: ClaimKind) -> Self {
        Self {
            digest,
            request_id: request_id.to_owned(),
            claimed_at: now_secs(),
            kind,
        }
    }
}

/// What a tag is held to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagState {
    Pinned(Pin),
    /// A free tag claimed by a push in flight.
    Claimed(Claim),
    /// A pinned tag whose advance (append, audited move) is in flight.
    Advancing {
        pin: Pin,
        claim: Claim,
    },
}

impl TagState {
    /// The digest the tag is pinned to, or claimed for when it has no pin yet.
    pub fn digest(&self) -> &Digest {
        match self {
            Self::Pinned(p) | Self::Advancing { pin: p, .. } => &p.digest,
            Self::Claimed(c) => &c.digest,
        }
    }

    /// The claim in force, if any.
    pub fn claim(&self) -> Option<&Claim> {
        match self {
            Self::Pinned(_) => None,
            Self::Claimed(c) | Self::Advancing { claim: c, .. } => Some(c),
        }
    }
}

/// A refused attempt on a tag, kept for the security team (the last
/// [`MAX_REFUSALS`] per tag).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub at: u64,
    /// `None` for a refused delete.
    pub attempted: Option<Digest>,
    pub client: String,
    pub user: Option<String>,
    pub user_agent: String,
    pub request_id: String,
}

/// How [`PinStore::protect`] records references.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protect {
    /// `false`: made durable by the caller's next durable write (the claim that follows
    /// it), which saves an fsync on every new push.
    pub durable: bool,
    /// `false`: some references could not be learned (a child manifest the upstream did
    /// not serve), so the holder is not marked as recorded and is asked about again.
    pub complete: bool,
}

/// Refused attempts kept per tag.
pub const MAX_REFUSALS: usize = 100;

/// Break glass: within its time, the next push of the tag may set a different digest
/// (or the next delete may delete it), once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The admin token's name.
    pub by: String,
    pub reason: String,
    pub created_at: u64,
    pub expires_at: u64,
}

/// One tag's record as exported: the pin and its whole history, and the claim of a push
/// whose outcome is not known. A claim is carried over, not dropped: a store restored
/// without it would let the claimed tag be taken (or an advancing append-only tag be
/// rolled back) while that push may still land.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exported {
    pub repository: Repository,
    pub tag: Tag,
    /// The pinned digest; for a tag with only a claim, the claimed one.
    pub digest: Digest,
    pub source: PinSource,
    pub pinned_at: u64,
    pub history: Vec<HistoryEntry>,
    /// `false` for a tag that has a claim and no pin yet.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub pinned: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Claim>,
}

fn yes() -> bool {
    true
}

#[allow(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn is_true(b: &bool) -> bool {
    *b
}

impl Exported {
    pub fn of(repository: Repository, tag: Tag, pin: &Pin) -> Self {
        Self {
            repository,
            tag,
            digest: pin.digest.clone(),
            source: pin.source,
            pinned_at: pin.pinned_at,
            history: pin.history.clone(),
            pinned: true,
            claim: None,
        }
    }

    /// The record of any state a tag can be in.
    pub fn from_state(repository: Repository, tag: Tag, state: &TagState) -> Self {
        match state {
            TagState::Pinned(p) => Self::of(repository, tag, p),
            TagState::Advancing { pin, claim } => Self {
                claim: Some(claim.clone()),
                ..Self::of(repository, tag, pin)
            },
            TagState::Claimed(c) => Self {
                repository,
                tag,
                digest: c.digest.clone(),
                source: PinSource::Push,
                pinned_at: c.claimed_at,
                history: Vec::new(),
                pinned: false,
                claim: Some(c.clone()),
            },
        }
    }

    /// The pin this record holds, if it holds one.
    pub fn pin(&self) -> Option<Pin> {
        self.pinned.then(|| Pin {
            digest: self.digest.clone(),
            source: self.source,
            pinned_at: self.pinned_at,
            history: self.history.clone(),
        })
    }

    /// The state this record restores.
    pub fn state(&self) -> Option<TagState> {
        match (self.pin(), self.claim.clone()) {
            (Some(pin), Some(claim)) => Some(TagState::Advancing { pin, claim }),
            (Some(pin), None) => Some(TagState::Pinned(pin)),
            (None, Some(claim)) => Some(TagState::Claimed(claim)),
            (None, None) => None,
        }
    }
}

/// Decide an import against what the store holds, the same for every backend: the
/// records to write, and the outcome so far (unchanged ones counted, conflicts listed;
/// when there is any conflict the caller writes nothing). `held` reads a record's tag
/// inside the caller's transaction.
pub fn plan_import<E>(
    records: &[Exported],
    mut held: impl FnMut(&Exported) -> Result<Option<TagState>, E>,
) -> Result<(ImportOutcome, Vec<&Exported>), E> {
    let mut outcome = ImportOutcome::default();
    let mut seen = std::collections::HashMap::new();
    let mut writes = Vec::new();
    for r in records {
        if let Some(earlier) = seen.insert((&r.repository, &r.tag), &r.digest) {
            if earlier != &r.digest {
                outcome.conflicts.push(format!(
                    "{}:{} appears twice with different digests",
                    r.repository, r.tag
                ));
            }
            continue;
        }
        match held(r)? {
            None => writes.push(r),
            Some(state) if Some(&state) == r.state().as_ref() => outcome.unchanged += 1,
            Some(TagState::Pinned(p)) if p.digest == r.digest && r.claim.is_none() => outcome.unchanged += 1,
            Some(state) => outcome.conflicts.push(format!(
                "{}:{} is held to {} here, the import says {}",
                r.repository,
                r.tag,
                state.digest(),
                r.digest
            )),
        }
    }
    Ok((outcome, writes))
}

/// What an import did, or why it wrote nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ImportOutcome {
    /// Pins written.
    pub imported: usize,
    /// Records identical to a pin already held (same digest), left as they are.
    pub unchanged: usize,
    /// Records that disagree with what the store holds: when any, nothing is written.
    pub conflicts: Vec<String>,
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

    /// Claim an advance of `tag`, pinned to `from`, to `claim.digest` (an append or an
    /// audited move), unless the tag is in any other state. Returns the state in force.
    fn claim_advance(&self, repo: &Repository, tag: &Tag, from: &Digest, claim: &Claim)
        -> Result<TagState, StoreError>;

    /// Turn the claims of `tags` for `digest` into pins (the upstream accepted the push):
    /// a new claim pins the tag, an advance moves the pin and records the old digest in
    /// its history. A tag already pinned to `digest` is left as it is; a tag held to
    /// another digest is left too and reported in the result (it cannot happen while the
    /// tag lock is held).
    fn confirm(&self, repo: &Repository, tags: &[Tag], digest: &Digest) -> Result<Vec<TagState>, StoreError>;

    /// Append an entry to the history of a pinned tag without moving it.
    fn record_event(&self, repo: &Repository, tag: &Tag, entry: &HistoryEntry) -> Result<(), StoreError>;

    /// Keep a refused attempt on `tag` (the last [`MAX_REFUSALS`]).
    fn record_refusal(&self, repo: &Repository, tag: &Tag, refused: &Refused) -> Result<(), StoreError>;

    /// The refused attempts kept for `tag`, oldest first.
    fn refusals(&self, repo: &Repository, tag: &Tag) -> Result<Vec<Refused>, StoreError>;

    /// Withdraw the claims of `tags` that `request_id` created (the upstream definitively
    /// refused that request). Claims of other requests and pins are untouched.
    fn withdraw(&self, repo: &Repository, tags: &[Tag], request_id: &str) -> Result<(), StoreError>;

    /// Tags of `repo` pinned or claimed to `digest`.
    fn tags_pinned_to(&self, repo: &Repository, digest: &Digest) -> Result<Vec<Tag>, StoreError>;

    /// Record that a delete of `repo@digest` is being forwarded.
    fn begin_delete(&self, repo: &Repository, digest: &Digest, request_id: &str) -> Result<(), StoreError>;

    /// The upstream answered a delete of `repo@digest` definitively. `Some(request_id)`:
    /// that delete was refused, which settles only its own record. `None`: the manifest
    /// is gone (2xx, or 404), which settles every delete of it recorded so far.
    fn end_delete(&self, repo: &Repository, digest: &Digest, request_id: Option<&str>) -> Result<(), StoreError>;

    /// Whether a forwarded delete of `repo@digest` has an unknown outcome.
    fn delete_in_flight(&self, repo: &Repository, digest: &Digest) -> Result<bool, StoreError>;

    /// Record, durably, that the manifest `holder` of `repo` depends on `refs` (its blobs,
    /// child manifests and their blobs), so none of them can be deleted while it is
    /// pinned. Recorded before the pin or claim that makes `holder` pinned content.
    fn protect(&self, repo: &Repository, holder: &Digest, refs: &[Digest], how: Protect) -> Result<(), StoreError>;

    /// Whether the references of `holder` have been recorded.
    fn has_refs(&self, repo: &Repository, holder: &Digest) -> Result<bool, StoreError>;

    /// The distinct digests pinned or claimed in `repo`.
    fn holders(&self, repo: &Repository) -> Result<Vec<Digest>, StoreError>;

    /// The pinned manifests of `repo` that depend on `digest`.
    fn referenced_by(&self, repo: &Repository, digest: &Digest) -> Result<Vec<Digest>, StoreError>;

    /// Tags with a pin or claim, in key order, after `after`, at most `limit`; only
    /// `repo`'s when given. Paginated so a million pins list in bounded memory.
    fn list(
        &self,
        repo: Option<&Repository>,
        after: Option<&(Repository, Tag)>,
        limit: usize,
    ) -> Result<Vec<(Repository, Tag, TagState)>, StoreError>;

    /// Put a release on `tag` (replacing one in force).
    fn set_release(&self, repo: &Repository, tag: &Tag, release: &Release) -> Result<(), StoreError>;

    /// The release on `tag`, if any (expired ones included: the caller decides).
    fn release(&self, repo: &Repository, tag: &Tag) -> Result<Option<Release>, StoreError>;

    /// Remove the release on `tag` and record why (`ReleaseExpired`, `ReleaseCancelled`,
    /// or `Released` for a delete that used it) in the pin's history. Returns the
    /// release that was removed.
    fn end_release(
        &self,
        repo: &Repository,
        tag: &Tag,
        event: HistoryEvent,
        request_id: Option<&str>,
    ) -> Result<Option<Release>, StoreError>;

    /// Write every record unless any conflicts with what the store holds (a different
    /// digest, or a claim), atomically and durably.
    fn import(&self, records: &[Exported]) -> Result<ImportOutcome, StoreError>;

    /// Whether this process may run work that one replica at a time should do (the
    /// periodic drift check) now. A single-process store always may; a shared one grants
    /// it to one process until that process goes away.
    fn lead(&self) -> Result<bool, StoreError>;

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
    fn claim_advance(&self, _: &Repository, _: &Tag, _: &Digest, _: &Claim) -> Result<TagState, StoreError> {
        self.fail()
    }
    fn confirm(&self, _: &Repository, _: &[Tag], _: &Digest) -> Result<Vec<TagState>, StoreError> {
        self.fail()
    }
    fn record_event(&self, _: &Repository, _: &Tag, _: &HistoryEntry) -> Result<(), StoreError> {
        self.fail()
    }
    fn record_refusal(&self, _: &Repository, _: &Tag, _: &Refused) -> Result<(), StoreError> {
        self.fail()
    }
    fn refusals(&self, _: &Repository, _: &Tag) -> Result<Vec<Refused>, StoreError> {
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
    fn end_delete(&self, _: &Repository, _: &Digest, _: Option<&str>) -> Result<(), StoreError> {
        self.fail()
    }
    fn delete_in_flight(&self, _: &Repository, _: &Digest) -> Result<bool, StoreError> {
        self.fail()
    }
    fn protect(&self, _: &Repository, _: &Digest, _: &[Digest], _: Protect) -> Result<(), StoreError> {
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
    fn list(
        &self,
        _: Option<&Repository>,
        _: Option<&(Repository, Tag)>,
        _: usize,
    ) -> Result<Vec<(Repository, Tag, TagState)>, StoreError> {
        self.fail()
    }
    fn set_release(&self, _: &Repository, _: &Tag, _: &Release) -> Result<(), StoreError> {
        self.fail()
    }
    fn release(&self, _: &Repository, _: &Tag) -> Result<Option<Release>, StoreError> {
        self.fail()
    }
    fn end_release(
        &self,
        _: &Repository,
        _: &Tag,
        _: HistoryEvent,
        _: Option<&str>,
    ) -> Result<Option<Release>, StoreError> {
        self.fail()
    }
    fn import(&self, _: &[Exported]) -> Result<ImportOutcome, StoreError> {
        self.fail()
    }
    fn lead(&self) -> Result<bool, StoreError> {
        self.fail()
    }
    fn check(&self) -> Result<(), StoreError> {
        self.fail()
    }
}
