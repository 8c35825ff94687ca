//! The small pure steps handlers take between transitions: what an answer settled, what
//! a push must check against deletes in flight, whether a delete's holders changed
//! between its two looks. Shared with the simulation, so it checks the same steps.

use super::mutation::{self, Mutation};
use super::{Outcome, Verdict};
use crate::oci::{Digest, Tag};

/// What the upstream said about whether a 2xx push applied one tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagWord {
    /// The push was by this tag and the upstream confirmed the digest.
    PathTag,
    /// `OCI-Tag` headers: whether they list the tag (spec.md, "Pushing Manifests").
    Listed(bool),
    /// A `HEAD` of the tag afterwards: `Some(digest)` present, `None` absent.
    Head(Option<Digest>),
    /// No word: the `HEAD` failed.
    Unknown,
}

/// The outcome for one tag of a push the upstream answered 2xx. `by_path`: the tag is
/// the push's path tag (a 2xx to a push by tag applied it; only a disagreeing `HEAD`
/// leaves it unknown). For a `?tag=`, an answer that shows the tag absent or at another
/// digest settles that it was not created (distribution 2.8 ignores `?tag=`).
pub fn tag_outcome(attempted: &Digest, by_path: bool, word: &TagWord) -> Outcome {
    match word {
        TagWord::PathTag | TagWord::Listed(true) => Outcome::Applied,
        TagWord::Head(Some(d)) if d == attempted => Outcome::Applied,
        _ if by_path => Outcome::Unknown,
        TagWord::Listed(false) | TagWord::Head(_) if !mutation::on(Mutation::JoinWithoutDecision) => {
            Outcome::NotApplied
        }
        _ => Outcome::Unknown,
    }
}

/// The digests a push of `attempted` must find no delete in flight for before it may be
/// pinned: the manifest and everything it depends on, whether its references were
/// recorded now (`new_refs`) or earlier (`recorded`).
pub fn delete_checks(attempted: &Digest, new_refs: &[Digest], recorded: &[Digest]) -> Vec<Digest> {
    let mut out = vec![attempted.clone()];
    out.extend(new_refs.iter().cloned());
    if !mutation::on(Mutation::RefsNotChecked) {
        out.extend(recorded.iter().cloned());
    }
    out.sort();
    out.dedup();
    out
}

/// What a digest delete saw holding the digest: protected tags pinned or claimed to it,
/// and each pinned manifest depending on it with the protected tags holding that one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldBy {
    pub tags: Vec<Tag>,
    pub dependents: Vec<(Digest, Tag)>,
}

/// Whether anything holds the digest now that did not when the delete was decided (a
/// push claimed it, or content depending on it, between the delete's two looks): then
/// the delete is not forwarded. Holders are compared themselves, tag by tag: a manifest
/// that was a dependent held only by an audited tag may since be held by an enforcing one.
pub fn newly_held(before: &HeldBy, after: &HeldBy) -> bool {
    if mutation::on(Mutation::RefsNotChecked) {
        return after.tags.len() > before.tags.len() || after.dependents.len() > before.dependents.len();
    }
    if mutation::on(Mutation::DependentsByDigest) {
        let digests = |h: &HeldBy| {
            h.dependents
                .iter()
                .map(|(d, _)| d.clone())
                .collect::<std::collections::BTreeSet<_>>()
        };
        return after.tags.iter().any(|t| !before.tags.contains(t)) || !digests(after).is_subset(&digests(before));
    }
    after.tags.iter().any(|t| !before.tags.contains(t))
        || after.dependents.iter().any(|d| !before.dependents.contains(d))
}

/// Whether a decision recorded `elapsed` ago may still be carried out. A write forwarded
/// long after its record was written could still be on its way when the record passes
/// the in-doubt horizon, so past a quarter of the horizon the handler withdraws the
/// record and refuses (503) instead of forwarding.
pub fn fresh(elapsed: std::time::Duration, horizon: std::time::Duration) -> bool {
    elapsed < horizon / 4 || mutation::on(Mutation::StaleForward)
}

/// Whether a push's settlement may be written without waiting for the disk
/// ([`crate::store::PinStore::confirm`]): every tag applied, and each a new pin or an
/// identical push, whose durable claim holds the tag for the same digest until the pin
/// is on disk (or `handler::recover` completes it). A move is settled durably: a crash
/// that took it back would leave the old pin in force over the new digest.
pub fn settles_lazily(outcomes: &[Outcome], verdicts: &[Verdict]) -> bool {
    outcomes.iter().all(|o| *o == Outcome::Applied)
        && verdicts
            .iter()
            .all(|v| matches!(v, Verdict::NewPin | Verdict::Identical) || mutation::on(Mutation::LazyMoves))
}
