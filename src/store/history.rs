//! A tag's history read at a point in time: the digest it was pinned to then and the
//! entry that set it. Pure, so `tagpin resolve --at`, `tagpin pins list --at`, the admin
//! API's `at=` and the registry's history endpoint all answer alike; plus the one way
//! those edges read and write times (RFC 3339).
//!
//! History never guesses: a time before a tag's first entry has no answer, even though
//! the tag may have existed at the upstream before tagpin first saw it.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::model::{HistoryEntry, HistoryEvent, Pin, PinSource, TagRecord};
use crate::oci::{Digest, Repository, Tag};

/// Whether an entry's event bound the tag to the entry's digest (a first pin or a move);
/// the other events note something about the digest already in force (an expired or
/// cancelled release, an audited delete), or about a write that never pinned the tag (a
/// cleared record of a first push).
pub fn binds(event: HistoryEvent) -> bool {
    use HistoryEvent as E;
    matches!(event, E::Push | E::Adopted | E::Append | E::AuditMove | E::Released)
}

/// Why a tag had no pin at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPinAt {
    /// Nothing is recorded of the tag.
    Unknown,
    /// The time is before the tag's first history entry, at `first_seen`.
    Before { first_seen: u64 },
    /// The tag was known then (its history starts at `first_seen`), but nothing had pinned
    /// it yet: only an operator's clearing of a write was recorded.
    NotPinned { first_seen: u64 },
}

impl NoPinAt {
    /// The reason in a word, for scripts (`detail.reason` of the registry endpoint's 404).
    pub fn reason(self) -> &'static str {
        match self {
            Self::Unknown => "unknown_tag",
            Self::Before { .. } => "before_first_seen",
            Self::NotPinned { .. } => "not_pinned_then",
        }
    }

    /// The first history entry's time, when there is one.
    pub fn first_seen(self) -> Option<u64> {
        match self {
            Self::Unknown => None,
            Self::Before { first_seen } | Self::NotPinned { first_seen } => Some(first_seen),
        }
    }

    /// One line for people: what is missing and why.
    pub fn describe(self, repo: &Repository, tag: &Tag, at: i64) -> String {
        match self {
            Self::Unknown => format!("{repo}:{tag} has no pin and no history in tagpin"),
            Self::Before { first_seen } => format!(
                "{repo}:{tag} is unknown before {} (its first history entry), so nothing can be said of {}: \
                 history never guesses",
                rfc3339(first_seen),
                rfc3339(at)
            ),
            Self::NotPinned { .. } => format!("{repo}:{tag} had no pin at {}", rfc3339(at)),
        }
    }
}

/// The entry that set the digest in force at `at` (seconds since the epoch): the last
/// binding entry at or before `at` decides the digest, and of the binding entries that
/// held that digest without a break up to it, the first is the one that set it (a
/// released delete keeps the pin it found; the push that set it stays the answer).
pub fn in_force_at(history: &[HistoryEntry], at: i64) -> Result<&HistoryEntry, NoPinAt> {
    let first_seen = first_seen(history).ok_or(NoPinAt::Unknown)?;
    if at < as_signed(first_seen) {
        return Err(NoPinAt::Before { first_seen });
    }
    let binding: Vec<&HistoryEntry> = history
        .iter()
        .filter(|e| as_signed(e.at) <= at && binds(e.event))
        .collect();
    let last = binding.last().ok_or(NoPinAt::NotPinned { first_seen })?;
    let run = binding
        .iter()
        .rev()
        .take_while(|e| e.digest == last.digest)
        .last()
        .unwrap_or(last);
    Ok(run)
}

/// When the tag was first seen: its earliest history entry (entries are kept in order;
/// an imported history is not trusted to be).
pub fn first_seen(history: &[HistoryEntry]) -> Option<u64> {
    history.iter().map(|e| e.at).min()
}

/// Seconds as the signed count times are compared in (a stored time past `i64::MAX` is
/// not a time any clock gives).
fn as_signed(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX)
}

impl TagRecord {
    /// The tag's history: its pin's, or for a tag with no pin the record's own. A pin
    /// without entries (restored from an export that had none) has its first pin as its one
    /// entry.
    pub fn timeline(&self) -> Cow<'_, [HistoryEntry]> {
        match &self.pin {
            Some(pin) => pin.timeline(),
            None => Cow::Borrowed(&self.history),
        }
    }
}

impl Pin {
    /// See [`TagRecord::timeline`].
    pub fn timeline(&self) -> Cow<'_, [HistoryEntry]> {
        if !self.history.is_empty() {
            return Cow::Borrowed(&self.history);
        }
        let event = match self.source {
            PinSource::Push => HistoryEvent::Push,
            PinSource::Adopted => HistoryEvent::Adopted,
        };
        let mut first = HistoryEntry::new(event, self.digest.clone(), None);
        first.at = self.pinned_at;
        Cow::Owned(vec![first])
    }
}

/// A tag as it stood at a time: the admin API's record for `at=` (times in seconds since
/// the epoch, as everywhere in the admin API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinAt {
    pub repository: Repository,
    pub tag: Tag,
    /// The time asked about.
    pub at: i64,
    /// The digest in force then.
    pub digest: Digest,
    /// The history entry that set it.
    pub entry: HistoryEntry,
    /// The time of the tag's first history entry.
    pub first_seen: u64,
}

impl PinAt {
    /// `repo:tag` at `at`, from its history.
    pub fn of(repo: &Repository, tag: &Tag, history: &[HistoryEntry], at: i64) -> Result<Self, NoPinAt> {
        let entry = in_force_at(history, at)?;
        Ok(Self {
            repository: repo.clone(),
            tag: tag.clone(),
            at,
            digest: entry.digest.clone(),
            entry: entry.clone(),
            first_seen: first_seen(history).unwrap_or(entry.at),
        })
    }
}

/// A time as the operator commands, the admin API and the history endpoint take it:
/// RFC 3339 with `Z` or an offset (`2026-12-01T14:00:00Z`, `2026-12-01T15:00:00+01:00`),
/// as whole seconds since the epoch (a fraction is dropped: history is kept in seconds).
pub fn parse_time(text: &str) -> Result<i64, String> {
    text.trim()
        .parse::<jiff::Timestamp>()
        .map(|t| t.as_second())
        .map_err(|e| {
            format!("{text:?} is not an RFC 3339 time such as 2026-12-01T14:00:00Z or 2026-12-01T15:00:00+01:00 ({e})")
        })
}

/// [`parse_time`] of a decoded query parameter: a `+` written unescaped in a URL
/// (`at=2026-12-01T15:00:00+01:00`) decodes to a space, and RFC 3339 has no other place
/// for a space after the time, so a space before a trailing `HH:MM` is read as the `+`.
pub fn parse_query_time(value: &str) -> Result<i64, String> {
    parse_time(value).or_else(|e| match value.rsplit_once(' ') {
        Some((time, offset)) if is_hh_mm(offset) => parse_time(&format!("{time}+{offset}")),
        _ => Err(e),
    })
}

fn is_hh_mm(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 5 && b[2] == b':' && [0, 1, 3, 4].iter().all(|&i| b[i].is_ascii_digit())
}

/// Seconds since the epoch (a stored `u64` or an asked-about `i64`) as RFC 3339 in UTC,
/// `2026-12-01T14:00:00Z`.
pub fn rfc3339(secs: impl Into<i128>) -> String {
    let secs = i64::try_from(secs.into()).unwrap_or(i64::MAX);
    match jiff::Timestamp::from_second(secs) {
        Ok(t) => t.to_string(),
        // Outside the years -9999 to 9999: no answer depends on how it reads.
        Err(_) => format!("{secs} seconds since the epoch"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HistoryEvent as E;

    fn d(n: u8) -> Digest {
        Digest::parse(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap()
    }

    fn entry(at: u64, event: HistoryEvent, digest: u8) -> HistoryEntry {
        let mut e = HistoryEntry::new(event, d(digest), None);
        e.at = at;
        e
    }

    /// Pushed at 100, released to digest 2 at 200, the release's delete at 300 (the pin
    /// stays), an audited move to 3 at 400, and a release that expired at 500.
    fn history() -> Vec<HistoryEntry> {
        vec![
            entry(100, E::Push, 1),
            entry(200, E::Released, 2),
            entry(300, E::Released, 2),
            entry(400, E::AuditMove, 3),
            entry(500, E::ReleaseExpired, 3),
        ]
    }

    fn at(t: i64) -> Result<(u64, HistoryEvent, Digest), NoPinAt> {
        let h = history();
        in_force_at(&h, t).map(|e| (e.at, e.event, e.digest.clone()))
    }

    #[test]
    fn before_the_first_entry_nothing_is_known() {
        assert_eq!(at(99), Err(NoPinAt::Before { first_seen: 100 }));
        assert_eq!(at(-1), Err(NoPinAt::Before { first_seen: 100 }));
        assert_eq!(in_force_at(&[], 1_000), Err(NoPinAt::Unknown));
    }

    #[test]
    fn the_digest_in_force_is_that_of_the_last_binding_entry_at_or_before_the_time() {
        assert_eq!(at(100), Ok((100, E::Push, d(1))));
        assert_eq!(at(199), Ok((100, E::Push, d(1))));
        assert_eq!(at(200), Ok((200, E::Released, d(2))));
        // The released delete kept the pin: the entry that set it is still the move.
        assert_eq!(at(350), Ok((200, E::Released, d(2))));
        assert_eq!(at(400), Ok((400, E::AuditMove, d(3))));
        // An expired release changes nothing.
        assert_eq!(at(10_000), Ok((400, E::AuditMove, d(3))));
    }

    #[test]
    fn entries_of_one_second_count_from_that_second_on_and_the_last_of_them_decides() {
        let h = vec![entry(100, E::Push, 1), entry(100, E::Append, 2)];
        assert_eq!(in_force_at(&h, 100).unwrap().digest, d(2));
        assert!(in_force_at(&h, 99).is_err());
    }

    #[test]
    fn a_cleared_write_before_the_first_pin_is_known_but_pinned_nothing() {
        let h = vec![entry(50, E::ClaimCleared, 9), entry(100, E::Push, 1)];
        assert_eq!(in_force_at(&h, 49), Err(NoPinAt::Before { first_seen: 50 }));
        assert_eq!(in_force_at(&h, 60), Err(NoPinAt::NotPinned { first_seen: 50 }));
        assert_eq!(in_force_at(&h, 100).unwrap().digest, d(1));
    }

    #[test]
    fn moving_back_to_an_earlier_digest_is_set_by_the_move_back() {
        let h = vec![
            entry(100, E::Push, 1),
            entry(200, E::Released, 2),
            entry(300, E::Released, 1),
        ];
        let e = in_force_at(&h, 301).unwrap();
        assert_eq!((e.at, e.digest.clone()), (300, d(1)));
    }

    #[test]
    fn a_pin_without_entries_has_its_first_pin_as_its_history() {
        let mut pin = Pin::now(d(1), PinSource::Adopted);
        pin.pinned_at = 70;
        pin.history.clear();
        let record = TagRecord {
            pin: Some(pin),
            ..TagRecord::default()
        };
        let e = in_force_at(&record.timeline(), 70).unwrap().clone();
        assert_eq!((e.at, e.event, e.digest), (70, E::Adopted, d(1)));
    }

    #[test]
    fn a_pin_at_a_time_names_the_entry_and_when_the_tag_was_first_seen() {
        let (repo, tag) = (Repository::parse("team/app").unwrap(), Tag::parse("1.0").unwrap());
        let p = PinAt::of(&repo, &tag, &history(), 250).unwrap();
        assert_eq!((p.digest, p.entry.at, p.first_seen, p.at), (d(2), 200, 100, 250));
        let gap = PinAt::of(&repo, &tag, &history(), 99).unwrap_err();
        assert_eq!(gap.reason(), "before_first_seen");
        assert_eq!(
            gap.describe(&repo, &tag, 99),
            "team/app:1.0 is unknown before 1970-01-01T00:01:40Z (its first history entry), so nothing can \
             be said of 1970-01-01T00:01:39Z: history never guesses"
        );
    }

    /// The same question answered by replaying the history in order: the digest a
    /// binding entry sets, and the entry that set it when the digest changed.
    fn replayed(history: &[HistoryEntry], at: i64) -> Option<(u64, Digest)> {
        let mut held: Option<&HistoryEntry> = None;
        for e in history.iter().filter(|e| e.at as i64 <= at && binds(e.event)) {
            if held.is_none_or(|h| h.digest != e.digest) {
                held = Some(e);
            }
        }
        held.map(|e| (e.at, e.digest.clone()))
    }

    proptest::proptest! {
        #[test]
        fn in_force_at_agrees_with_replaying_the_history(
            steps in proptest::collection::vec((0u64..4, 0usize..9, 1u8..4), 0..12),
            at in -5i64..60,
        ) {
            const EVENTS: [HistoryEvent; 9] = [
                E::Push, E::Adopted, E::Append, E::AuditMove, E::AuditDelete, E::Released,
                E::ReleaseExpired, E::ReleaseCancelled, E::ClaimCleared,
            ];
            let mut t = 0;
            let h: Vec<HistoryEntry> = steps
                .iter()
                .map(|&(gap, ev, dig)| {
                    t += gap;
                    entry(t, EVENTS[ev], dig)
                })
                .collect();
            let got = in_force_at(&h, at).map(|e| (e.at, e.digest.clone())).ok();
            proptest::prop_assert_eq!(got, replayed(&h, at));
        }
    }

    #[test]
    fn times_are_rfc_3339_with_z_or_an_offset_and_print_in_utc() {
        assert_eq!(parse_time("2026-12-01T14:00:00Z"), Ok(1_796_133_600));
        assert_eq!(parse_time("2026-12-01T15:00:00+01:00"), Ok(1_796_133_600));
        assert_eq!(parse_time("2026-12-01T09:00:00-05:00"), Ok(1_796_133_600));
        assert_eq!(parse_time("2026-12-01T14:00:00.75Z"), Ok(1_796_133_600));
        assert_eq!(rfc3339(1_796_133_600), "2026-12-01T14:00:00Z");
        assert_eq!(parse_query_time("2026-12-01T15:00:00 01:00"), Ok(1_796_133_600));
        assert_eq!(parse_query_time("2026-12-01T14:00:00Z"), Ok(1_796_133_600));
        assert_eq!(parse_query_time("2026-12-01 15:00:00 01:00"), Ok(1_796_133_600));
        assert!(parse_query_time("2026-12-01T14:00:00 01:00x").is_err());
        for bad in ["2026-12-01", "2026-12-01T14:00:00", "yesterday", "", "1796133600"] {
            let e = parse_time(bad).unwrap_err();
            assert!(e.contains("RFC 3339"), "{bad}: {e}");
        }
    }
}
