//! The push decision, as a pure function of the attempted digest and, for each named
//! tag, what it is held to, its mode, and (for an append-only tag pushed with a new
//! digest) whether the new manifest keeps the pinned one's entries. Free of I/O so it can
//! be tested exhaustively.

use super::append::NotAppend;
use super::rules::{Decided, Mode};
use crate::oci::{Digest, Tag};

/// What a tag is held to when a push is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// Free: no pin, no claim, and the upstream holds nothing under it.
    Free,
    /// Pinned to a digest.
    Pinned(Digest),
    /// Reserved for a digest by an earlier push whose outcome is not known.
    Claimed(Digest),
    /// Pinned to `from`, with an advance to `to` in flight.
    Advancing { from: Digest, to: Digest },
}

/// One protected tag of a push, as the handler gathered it.
#[derive(Debug, Clone)]
pub struct TagInput {
    pub tag: Tag,
    pub held: Held,
    pub decided: Decided,
    /// For an append-only tag pinned to another digest: whether the pushed manifest keeps
    /// every entry of the pinned one. `None` when not asked.
    pub append: Option<Result<(), NotAppend>>,
    /// An operator's release (break glass) is in force on this pinned tag.
    pub released: bool,
}

/// The outcome for one tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Free: this push claims the tag and, once the upstream accepts, pins it.
    NewPin,
    /// Pinned to the attempted digest: an identical re-push, allowed.
    Identical,
    /// Claimed (or being advanced) to the attempted digest by an earlier push with an
    /// unknown outcome: this push may complete it, and its own failure frees nothing.
    CompleteClaim,
    /// Append-only and the push keeps every pinned entry: the pin advances.
    Append { from: Digest },
    /// Audit mode: a move immutable would refuse, allowed and warned; the pin follows.
    AuditMove { from: Digest },
    /// A release is in force: this one push may move the pinned tag, and uses it up.
    Released { from: Digest },
    /// Refused.
    Conflict,
}

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

/// The decision for a whole push: it is allowed only if no tag would move, so a push with
/// several tags never lands half-way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushDecision {
    pub verdicts: Vec<(Tag, Verdict)>,
    pub conflicts: Vec<Conflict>,
}

impl PushDecision {
    pub fn allowed(&self) -> bool {
        self.conflicts.is_empty()
    }

    /// Tags with the given verdict.
    pub fn tags(&self, verdict: Verdict) -> impl Iterator<Item = &Tag> + '_ {
        self.verdicts.iter().filter(move |(_, v)| *v == verdict).map(|(t, _)| t)
    }
}

/// Decide a push of `attempted`.
pub fn decide_push(attempted: &Digest, tags: &[TagInput]) -> PushDecision {
    let mut verdicts = Vec::with_capacity(tags.len());
    let mut conflicts = Vec::new();
    for input in tags {
        let conflict = |pinned: &Digest, claimed: bool, reason: ConflictReason| Conflict {
            tag: input.tag.clone(),
            pinned: pinned.clone(),
            claimed,
            reason,
            decided: Some(input.decided),
        };
        let v = match &input.held {
            Held::Free => Verdict::NewPin,
            Held::Pinned(p) if p == attempted => Verdict::Identical,
            Held::Claimed(c) if c == attempted => Verdict::CompleteClaim,
            Held::Advancing { to, .. } if to == attempted => Verdict::CompleteClaim,
            // The in-flight rule holds in every mode: while an outcome is unknown, no
            // other digest is decided against the tag.
            Held::Claimed(c) | Held::Advancing { to: c, .. } => {
                conflicts.push(conflict(c, true, ConflictReason::InFlight));
                Verdict::Conflict
            }
            Held::Pinned(p) if input.released => Verdict::Released { from: p.clone() },
            Held::Pinned(p) => match (input.decided.mode, &input.append) {
                (Mode::Audit, _) => Verdict::AuditMove { from: p.clone() },
                (Mode::AppendOnly, Some(Ok(()))) => Verdict::Append { from: p.clone() },
                (Mode::AppendOnly, Some(Err(why))) => {
                    conflicts.push(conflict(p, false, ConflictReason::NotAppendOnly(why.clone())));
                    Verdict::Conflict
                }
                _ => {
                    conflicts.push(conflict(p, false, ConflictReason::Immutable));
                    Verdict::Conflict
                }
            },
        };
        verdicts.push((input.tag.clone(), v));
    }
    PushDecision { verdicts, conflicts }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rules::DecidedBy;
    use proptest::prelude::*;

    fn d(n: u8) -> Digest {
        Digest::parse(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap()
    }

    fn t(s: &str) -> Tag {
        Tag::parse(s).unwrap()
    }

    fn input(tag: &str, held: Held, mode: Mode, append: Option<Result<(), NotAppend>>) -> TagInput {
        TagInput {
            tag: t(tag),
            held,
            decided: Decided {
                mode,
                by: DecidedBy::Default,
            },
            append,
            released: false,
        }
    }

    #[test]
    fn free_identical_claimed_and_conflicting_tags() {
        let im = Mode::Immutable;
        let dec = decide_push(
            &d(1),
            &[
                input("a", Held::Free, im, None),
                input("b", Held::Pinned(d(1)), im, None),
                input("c", Held::Pinned(d(2)), im, None),
                input("e", Held::Claimed(d(1)), im, None),
                input("f", Held::Claimed(d(3)), im, None),
                input("g", Held::Advancing { from: d(2), to: d(1) }, im, None),
            ],
        );
        let verdicts: Vec<Verdict> = dec.verdicts.iter().map(|(_, v)| v.clone()).collect();
        assert_eq!(
            verdicts,
            vec![
                Verdict::NewPin,
                Verdict::Identical,
                Verdict::Conflict,
                Verdict::CompleteClaim,
                Verdict::Conflict,
                Verdict::CompleteClaim,
            ]
        );
        assert_eq!(dec.conflicts.len(), 2);
        assert_eq!(dec.conflicts[0].reason, ConflictReason::Immutable);
        assert_eq!(
            (dec.conflicts[1].claimed, &dec.conflicts[1].reason),
            (true, &ConflictReason::InFlight)
        );
        assert!(!dec.allowed());
        assert_eq!(dec.tags(Verdict::NewPin).collect::<Vec<_>>(), vec![&t("a")]);
    }

    #[test]
    fn modes_decide_a_push_of_another_digest() {
        let why = NotAppend::MediaTypeChanged;
        let cases = [
            (Mode::Audit, None, Verdict::AuditMove { from: d(2) }),
            (Mode::AppendOnly, Some(Ok(())), Verdict::Append { from: d(2) }),
            (Mode::AppendOnly, Some(Err(why.clone())), Verdict::Conflict),
            (Mode::AppendOnly, None, Verdict::Conflict),
            (Mode::Immutable, Some(Ok(())), Verdict::Conflict),
        ];
        for (mode, append, want) in cases {
            let dec = decide_push(&d(1), &[input("x", Held::Pinned(d(2)), mode, append.clone())]);
            assert_eq!(dec.verdicts[0].1, want, "{mode:?} {append:?}");
        }
        let dec = decide_push(
            &d(1),
            &[input("x", Held::Pinned(d(2)), Mode::AppendOnly, Some(Err(why.clone())))],
        );
        assert_eq!(dec.conflicts[0].reason, ConflictReason::NotAppendOnly(why));
        // Even an audit tag is not moved while a push to it is in flight.
        let dec = decide_push(&d(1), &[input("x", Held::Claimed(d(2)), Mode::Audit, None)]);
        assert!(!dec.allowed());
        let dec = decide_push(
            &d(1),
            &[input(
                "x",
                Held::Advancing { from: d(1), to: d(2) },
                Mode::AppendOnly,
                None,
            )],
        );
        assert!(!dec.allowed(), "re-pushing the old digest during an advance is refused");
    }

    #[test]
    fn a_release_lets_one_push_move_a_pinned_tag_but_not_a_claimed_one() {
        let mut i = input("x", Held::Pinned(d(2)), Mode::Immutable, None);
        i.released = true;
        assert_eq!(
            decide_push(&d(1), &[i.clone()]).verdicts[0].1,
            Verdict::Released { from: d(2) }
        );
        // The same digest is an identical re-push and leaves the release unused.
        assert_eq!(decide_push(&d(2), &[i.clone()]).verdicts[0].1, Verdict::Identical);
        i.held = Held::Claimed(d(2));
        assert!(!decide_push(&d(1), &[i]).allowed());
    }

    #[test]
    fn a_push_naming_no_protected_tag_is_allowed() {
        assert!(decide_push(&d(1), &[]).allowed());
    }

    fn held(kind: u8, digest: u8) -> Held {
        match kind {
            0 => Held::Free,
            1 => Held::Pinned(d(digest)),
            _ => Held::Claimed(d(digest)),
        }
    }

    proptest! {
        /// For immutable tags: allowed exactly when every held tag is held to the
        /// attempted digest, pinned or claimed; never a verdict that would move a tag.
        #[test]
        fn allowed_iff_no_held_tag_differs(attempted in 0u8..4, states in proptest::collection::vec((0u8..3, 0u8..4), 0..6)) {
            let tags: Vec<TagInput> = states
                .iter()
                .enumerate()
                .map(|(i, (k, g))| input(&format!("t{i}"), held(*k, *g), Mode::Immutable, None))
                .collect();
            let dec = decide_push(&d(attempted), &tags);
            let expect = states.iter().all(|(k, g)| *k == 0 || *g == attempted);
            prop_assert_eq!(dec.allowed(), expect);
            for (i, (_, v)) in tags.iter().zip(&dec.verdicts) {
                match v {
                    Verdict::NewPin => prop_assert_eq!(&i.held, &Held::Free),
                    Verdict::Identical => prop_assert_eq!(&i.held, &Held::Pinned(d(attempted))),
                    Verdict::CompleteClaim => prop_assert_eq!(&i.held, &Held::Claimed(d(attempted))),
                    Verdict::Conflict => prop_assert!(i.held != Held::Free && i.held != Held::Pinned(d(attempted)) && i.held != Held::Claimed(d(attempted))),
                    Verdict::Append { .. } | Verdict::AuditMove { .. } | Verdict::Released { .. } => prop_assert!(false, "not for immutable tags without a release"),
                }
            }
        }
    }
}
