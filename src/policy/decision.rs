//! The push decision, as a pure function of the attempted digest and what each named tag
//! is held to. Kept free of I/O so it can be tested exhaustively.

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
}

/// The outcome for one tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Free: this push claims the tag and, once the upstream accepts, pins it.
    NewPin,
    /// Pinned to the attempted digest: an identical re-push, allowed.
    Identical,
    /// Claimed for the attempted digest by an earlier push with an unknown outcome: this
    /// push may complete it, and its own failure does not free the tag.
    CompleteClaim,
    /// Held to another digest: the push would move the tag.
    Conflict,
}

/// A tag the push would move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub tag: Tag,
    pub pinned: Digest,
    /// The tag is reserved by an in-flight (or unresolved) push rather than pinned.
    pub claimed: bool,
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

/// Decide a push of `attempted` given what each protected tag it names is held to.
pub fn decide_push(attempted: &Digest, tags: &[(Tag, Held)]) -> PushDecision {
    let mut verdicts = Vec::with_capacity(tags.len());
    let mut conflicts = Vec::new();
    for (tag, held) in tags {
        let v = match held {
            Held::Free => Verdict::NewPin,
            Held::Pinned(p) if p == attempted => Verdict::Identical,
            Held::Claimed(c) if c == attempted => Verdict::CompleteClaim,
            Held::Pinned(p) | Held::Claimed(p) => {
                conflicts.push(Conflict {
                    tag: tag.clone(),
                    pinned: p.clone(),
                    claimed: matches!(held, Held::Claimed(_)),
                });
                Verdict::Conflict
            }
        };
        verdicts.push((tag.clone(), v));
    }
    PushDecision { verdicts, conflicts }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(n: u8) -> Digest {
        Digest::parse(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap()
    }

    fn t(s: &str) -> Tag {
        Tag::parse(s).unwrap()
    }

    #[test]
    fn free_identical_claimed_and_conflicting_tags() {
        let dec = decide_push(
            &d(1),
            &[
                (t("a"), Held::Free),
                (t("b"), Held::Pinned(d(1))),
                (t("c"), Held::Pinned(d(2))),
                (t("e"), Held::Claimed(d(1))),
                (t("f"), Held::Claimed(d(3))),
            ],
        );
        assert_eq!(
            dec.verdicts,
            vec![
                (t("a"), Verdict::NewPin),
                (t("b"), Verdict::Identical),
                (t("c"), Verdict::Conflict),
                (t("e"), Verdict::CompleteClaim),
                (t("f"), Verdict::Conflict),
            ]
        );
        assert_eq!(
            dec.conflicts,
            vec![
                Conflict {
                    tag: t("c"),
                    pinned: d(2),
                    claimed: false
                },
                Conflict {
                    tag: t("f"),
                    pinned: d(3),
                    claimed: true
                }
            ]
        );
        assert!(!dec.allowed());
        assert_eq!(dec.tags(Verdict::NewPin).collect::<Vec<_>>(), vec![&t("a")]);
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
        /// Allowed exactly when every held tag is held to the attempted digest, whether
        /// pinned or claimed; never a verdict that would move a held tag.
        #[test]
        fn allowed_iff_no_held_tag_differs(attempted in 0u8..4, states in proptest::collection::vec((0u8..3, 0u8..4), 0..6)) {
            let tags: Vec<(Tag, Held)> = states
                .iter()
                .enumerate()
                .map(|(i, (k, g))| (t(&format!("t{i}")), held(*k, *g)))
                .collect();
            let dec = decide_push(&d(attempted), &tags);
            let expect = states.iter().all(|(k, g)| *k == 0 || *g == attempted);
            prop_assert_eq!(dec.allowed(), expect);
            for ((_, h), (_, v)) in tags.iter().zip(&dec.verdicts) {
                match v {
                    Verdict::NewPin => prop_assert_eq!(h, &Held::Free),
                    Verdict::Identical => prop_assert_eq!(h, &Held::Pinned(d(attempted))),
                    Verdict::CompleteClaim => prop_assert_eq!(h, &Held::Claimed(d(attempted))),
                    Verdict::Conflict => prop_assert!(!matches!(h, Held::Free) && *h != Held::Pinned(d(attempted)) && *h != Held::Claimed(d(attempted))),
                }
            }
        }
    }
}
