//! The push decision, as a pure function of the attempted digest and what each named tag
//! is pinned to. Kept free of I/O so it can be tested exhaustively.

use crate::oci::{Digest, Tag};

/// The outcome for one tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not pinned: this push creates the pin.
    NewPin,
    /// Pinned to the attempted digest: an identical re-push, allowed.
    Identical,
    /// Pinned to another digest: the push would move the tag.
    Conflict,
}

/// A tag the push would move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub tag: Tag,
    pub pinned: Digest,
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

    /// Tags this push pins for the first time.
    pub fn new_pins(&self) -> impl Iterator<Item = &Tag> {
        self.verdicts
            .iter()
            .filter(|(_, v)| *v == Verdict::NewPin)
            .map(|(t, _)| t)
    }
}

/// Decide a push of `attempted` given, for each protected tag it names, the pinned digest
/// (`None` when the tag is free).
pub fn decide_push(attempted: &Digest, tags: &[(Tag, Option<Digest>)]) -> PushDecision {
    let mut verdicts = Vec::with_capacity(tags.len());
    let mut conflicts = Vec::new();
    for (tag, pinned) in tags {
        let v = match pinned {
            None => Verdict::NewPin,
            Some(p) if p == attempted => Verdict::Identical,
            Some(p) => {
                conflicts.push(Conflict {
                    tag: tag.clone(),
                    pinned: p.clone(),
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
    fn free_identical_and_conflicting_tags() {
        let dec = decide_push(&d(1), &[(t("a"), None), (t("b"), Some(d(1))), (t("c"), Some(d(2)))]);
        assert_eq!(
            dec.verdicts,
            vec![
                (t("a"), Verdict::NewPin),
                (t("b"), Verdict::Identical),
                (t("c"), Verdict::Conflict)
            ]
        );
        assert_eq!(
            dec.conflicts,
            vec![Conflict {
                tag: t("c"),
                pinned: d(2)
            }]
        );
        assert!(!dec.allowed());
        assert_eq!(dec.new_pins().collect::<Vec<_>>(), vec![&t("a")]);
    }

    #[test]
    fn a_push_naming_no_protected_tag_is_allowed() {
        assert!(decide_push(&d(1), &[]).allowed());
    }

    proptest! {
        /// Allowed exactly when every pinned tag is pinned to the attempted digest, and
        /// never a verdict that would move a pinned tag.
        #[test]
        fn allowed_iff_no_pinned_tag_differs(attempted in 0u8..4, pins in proptest::collection::vec(proptest::option::of(0u8..4), 0..6)) {
            let tags: Vec<(Tag, Option<Digest>)> = pins
                .iter()
                .enumerate()
                .map(|(i, p)| (t(&format!("t{i}")), p.map(d)))
                .collect();
            let dec = decide_push(&d(attempted), &tags);
            let expect = pins.iter().all(|p| p.is_none_or(|p| p == attempted));
            prop_assert_eq!(dec.allowed(), expect);
            for ((_, pinned), (_, v)) in tags.iter().zip(&dec.verdicts) {
                match v {
                    Verdict::NewPin => prop_assert!(pinned.is_none()),
                    Verdict::Identical => prop_assert_eq!(pinned.as_ref(), Some(&d(attempted))),
                    Verdict::Conflict => prop_assert!(pinned.is_some() && pinned.as_ref() != Some(&d(attempted))),
                }
            }
        }
    }
}
