//! Why a push is refused: the conflicts a decision of [`crate::pinning`] reports, which
//! [`super::Refusal`] turns into the client's error.

use super::append::NotAppend;
use super::rules::Decided;
use crate::oci::{Digest, Tag};

/// Why a tag's push is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictReason {
    /// Pinned to another digest (immutable, or append-only on a tag whose pinned
    /// manifest is not what is being extended).
    Immutable,
    /// Reserved by a push in flight.
    InFlight,
    /// Append-only, and the push would remove or alter pinned entries.
    NotAppendOnly(NotAppend),
}

/// A tag the push would move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub tag: Tag,
    /// The digest the tag is held to (the claimed one when it is in flight).
    pub pinned: Digest,
    /// The tag is reserved by an in-flight (or unresolved) push rather than pinned.
    pub claimed: bool,
    pub reason: ConflictReason,
    pub decided: Option<Decided>,
}
