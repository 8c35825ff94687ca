//! The records the store keeps for a tag: its pin and history, the writes in flight,
//! and a release; plus the views and export format built from them.

use serde::{Deserialize, Serialize};

use crate::oci::{Digest, Repository, Tag};

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
    /// An operator cleared the records of writes whose outcome was not known.
    ClaimCleared,
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
    /// What an adoption followed: a push, a pull or a seed (a push when not recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<AdoptedVia>,
    /// The index of the log entry that records this event (for history from before the
    /// log, or carried in by an import, the `genesis` or `imported` entry of the pin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<u64>,
}

/// What an adoption followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdoptedVia {
    Push,
    Read,
    Seed,
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
            via: None,
            log: None,
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

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Pin {
    /// When the tag was set to the digest it holds now: the latest history entry that
    /// bound it (a push, adoption, append, audited or released move); `pinned_at` (its
    /// first pin) for a history without one.
    pub fn digest_set_at(&self) -> u64 {
        use HistoryEvent as E;
        self.history
            .iter()
            .rev()
            .find(|e| {
                e.digest == self.digest
                    && matches!(e.event, E::Push | E::Adopted | E::Append | E::AuditMove | E::Released)
            })
            .map_or(self.pinned_at, |e| e.at)
    }

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
    /// Push the digest the tag is pinned to again: moves nothing, but while it may still
    /// land no other digest may be bound to the tag.
    Identical,
    /// Delete the tag at the upstream (audit mode, or under a release); the pin stays.
    Delete,
}

/// The record of one forwarded write (a push, or a delete of the tag) whose outcome at
/// the upstream is not known yet: written before the write is forwarded, removed only by
/// that write's own answer, an operator, or the in-doubt horizon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub digest: Digest,
    /// The request that created the claim; only it may withdraw it.
    pub request_id: String,
    /// Seconds since the Unix epoch.
    pub claimed_at: u64,
    #[serde(default = "ClaimKind::new_kind")]
    pub kind: ClaimKind,
    /// The release this write uses (a released push or delete); while the write is in
    /// flight the release is in use and lets nothing else through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_id: Option<String>,
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
            release_id: None,
        }
    }
}

/// What a manifest read by tag needs of a tag's records: the digest it is pinned to, and
/// whether a write is in flight (a claim with no pin leaves the read to the upstream).
/// For a pinned tag answered from a replica's cache, `in_flight` may miss a write another
/// replica began moments ago (see [`super::PgStore`]): a pinned read does not depend on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadView {
    pub pin: Option<Digest>,
    pub in_flight: bool,
    /// A tag with no pin held by pushes of one new pin, all of this digest: a push in
    /// flight, or one answered 201 whose settlement a crash took back
    /// ([`crate::handler::recover`]). A read serves it when the upstream has it.
    pub reserved: Option<Digest>,
}

impl ReadView {
    pub fn of(record: &TagRecord) -> Self {
        Self {
            pin: record.pin.as_ref().map(|p| p.digest.clone()),
            in_flight: !record.writes.is_empty(),
            reserved: reserved(record.pin.is_some(), &record.writes),
        }
    }
}

/// [`ReadView::reserved`] of a tag with `writes` in flight.
pub fn reserved(pinned: bool, writes: &[Claim]) -> Option<Digest> {
    let first = writes.first().filter(|_| !pinned)?;
    writes
        .iter()
        .all(|w| w.digest == first.digest && w.kind == ClaimKind::New)
        .then(|| first.digest.clone())
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

/// Everything the store keeps for one tag that decisions read and write, in one atomic
/// unit ([`super::PinStore::update`]): the pin, the writes forwarded with an unknown
/// outcome (one per request; while any is in flight, every one of them is of the same
/// digest), and the release in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagRecord {
    pub pin: Option<Pin>,
    pub writes: Vec<Claim>,
    pub release: Option<Release>,
    /// History of a tag that has no pin yet (an operator cleared its claim); it becomes
    /// the start of the pin's history once the tag is pinned.
    pub history: Vec<HistoryEntry>,
}

impl TagRecord {
    /// No pin, no write, no release and no history: nothing to keep.
    pub fn is_empty(&self) -> bool {
        self.pin.is_none() && self.writes.is_empty() && self.release.is_none() && self.history.is_empty()
    }

    /// Pin the tag, with what was recorded before it had a pin as the start of its
    /// history.
    pub fn set_pin(&mut self, mut pin: Pin) {
        let mut history = std::mem::take(&mut self.history);
        history.append(&mut pin.history);
        pin.history = history;
        self.pin = Some(pin);
    }

    /// The view of this record that listings and exports show; `None` for a free tag.
    /// Of several writes in flight (all of one digest) the newest stands for them.
    pub fn state(&self) -> Option<TagState> {
        let newest = |moving: bool| {
            self.writes
                .iter()
                .filter(|w| !moving || self.pin.as_ref().is_some_and(|p| p.digest != w.digest))
                .max_by_key(|w| w.claimed_at)
                .cloned()
        };
        match &self.pin {
            Some(pin) => Some(match newest(true) {
                Some(claim) => TagState::Advancing {
                    pin: pin.clone(),
                    claim,
                },
                None => TagState::Pinned(pin.clone()),
            }),
            None => newest(false).map(TagState::Claimed),
        }
    }

    /// The record a view restores (an import).
    pub fn from_state(state: TagState) -> Self {
        match state {
            TagState::Pinned(pin) => Self {
                pin: Some(pin),
                ..Self::default()
            },
            TagState::Claimed(claim) => Self {
                writes: vec![claim],
                ..Self::default()
            },
            TagState::Advancing { pin, claim } => Self {
                pin: Some(pin),
                writes: vec![claim],
                ..Self::default()
            },
        }
    }

    /// Every digest the tag is pinned or claimed to: what "tags pinned to a digest" finds.
    pub fn digests(&self) -> std::collections::BTreeSet<&Digest> {
        self.pin
            .iter()
            .map(|p| &p.digest)
            .chain(self.writes.iter().map(|w| &w.digest))
            .collect()
    }
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
    /// The digest pushed, or the digest a delete named; `None` for a delete of the tag.
    pub attempted: Option<Digest>,
    /// A refused delete (of the tag, or of the digest in `attempted`), not a push.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete: bool,
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

/// The references of a pushed manifest, recorded with its claim
/// ([`super::PinStore::update_protecting`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protection {
    pub holder: Digest,
    pub refs: Vec<Digest>,
    /// As [`Protect::complete`].
    pub complete: bool,
}

/// Refused attempts kept per tag.
pub const MAX_REFUSALS: usize = 100;

/// Break glass: within its time, the next push of the tag may set a different digest
/// (or the next delete may delete it), once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Names this release, so that a write that used it gives back exactly this one.
    #[serde(default)]
    pub id: String,
    /// Cancelled while a write using it was in flight: never given back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancelled: bool,
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
    /// The tag's refused attempts (the last [`MAX_REFUSALS`]), oldest first: evidence a
    /// restore keeps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<Refused>,
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
    /// The record of a pin. Its history leaves out the log indexes: they number this
    /// store's log, and a store the record is imported into gives it an `imported` entry
    /// of its own.
    pub fn of(repository: Repository, tag: Tag, pin: &Pin) -> Self {
        let mut history = pin.history.clone();
        history.iter_mut().for_each(|e| e.log = None);
        Self {
            repository,
            tag,
            digest: pin.digest.clone(),
            source: pin.source,
            pinned_at: pin.pinned_at,
            history,
            pinned: true,
            claim: None,
            refused: Vec::new(),
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
                refused: Vec::new(),
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

/// A digest delete forwarded without a known outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRecord {
    pub repository: Repository,
    pub digest: Digest,
    pub request_id: String,
    /// Seconds since the Unix epoch, by the store's clock.
    pub started_at: u64,
}

/// A tag's writes are one per request: a second write of one request is a caller's bug,
/// refused the same on every backend before anything is written.
pub fn check_writes(repo: &Repository, tag: &Tag, record: &TagRecord) -> Result<(), super::StoreError> {
    let mut seen = std::collections::HashSet::new();
    match record.writes.iter().find(|w| !seen.insert(w.request_id.as_str())) {
        Some(twice) => Err(super::StoreError::Corrupt {
            key: format!("{repo}:{tag}"),
            why: format!("two writes in flight for request {}", twice.request_id),
        }),
        None => Ok(()),
    }
}

/// The records an update writes, by index: those its change altered; of a tag named twice,
/// the last copy. The same rule on every backend.
pub fn to_write(tags: &[Tag], before: &[TagRecord], after: &[TagRecord]) -> Vec<usize> {
    (0..tags.len())
        .filter(|&i| before[i] != after[i] && !tags[i + 1..].contains(&tags[i]))
        .collect()
}
