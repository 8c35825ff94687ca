//! The log's entries: what each records, its leaf bytes, and which changes of a tag's
//! record are entries. The store calls [`bindings`] inside the write that changes the
//! record, so an entry and the binding it describes are committed together or not at
//! all.

use serde::{Deserialize, Serialize};

use crate::oci::{Digest, Repository, Tag};
use crate::store::{rfc3339, AdoptedVia, HistoryEntry, HistoryEvent, Pin, StoreError, TagRecord};

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogEvent {
    /// A pin that existed before the log did ("bound before the log existed").
    Genesis,
    /// The first push of the tag through tagpin pinned it.
    Push,
    /// What the upstream held was adopted (`source` says on what).
    Adopted,
    /// An append-only tag grew.
    Append,
    /// An audit-mode tag moved and the pin followed.
    AuditMove,
    /// A release was used: one push moved the tag, or one delete removed it (the pin
    /// stays, `digest` equals `previous`).
    Released,
    /// The pin came in with an import.
    Imported,
}

/// One entry. Its leaf bytes are this, serialised once by [`LogEntry::leaf`] and kept
/// as they are: the hash covers those bytes, not this struct.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub index: u64,
    /// RFC 3339, UTC.
    pub time: String,
    pub repository: Repository,
    pub tag: Tag,
    pub digest: Digest,
    /// The tag's digest before this entry; `None` for a first binding and for genesis.
    pub previous: Option<Digest>,
    pub event: LogEvent,
    /// What an adoption followed; only on `adopted` entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<AdoptedVia>,
    /// The request id of a client's request; the admin token's name for a seed, an
    /// import or a release; `None` for genesis.
    pub by: Option<String>,
}

impl LogEntry {
    /// The leaf bytes.
    pub fn leaf(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("serialising an entry cannot fail")
    }

    /// An entry from its leaf bytes; `None` when they are not one.
    pub fn parse(leaf: &[u8]) -> Option<Self> {
        serde_json::from_slice(leaf).ok()
    }
}

/// The history of a record: its pin's, or what a tag with no pin keeps.
fn history(r: &TagRecord) -> &[HistoryEntry] {
    r.pin.as_ref().map_or(&r.history, |p| &p.history)
}

fn history_mut(r: &mut TagRecord) -> &mut Vec<HistoryEntry> {
    match r.pin.as_mut() {
        Some(p) => &mut p.history,
        None => &mut r.history,
    }
}

/// The event and adoption source a history entry is logged as; `None` for history that
/// binds nothing (an expired or cancelled release, a cleared claim, an audited delete).
fn logged(e: &HistoryEntry) -> Option<(LogEvent, Option<AdoptedVia>)> {
    Some(match e.event {
        HistoryEvent::Push => (LogEvent::Push, None),
        HistoryEvent::Adopted if crate::pinning::mutation::on(crate::pinning::mutation::Mutation::LogSkipsAdoption) => {
            return None
        }
        HistoryEvent::Adopted => (LogEvent::Adopted, Some(e.via.unwrap_or(AdoptedVia::Push))),
        HistoryEvent::Append => (LogEvent::Append, None),
        HistoryEvent::AuditMove => (LogEvent::AuditMove, None),
        HistoryEvent::Released => (LogEvent::Released, None),
        HistoryEvent::AuditDelete
        | HistoryEvent::ReleaseExpired
        | HistoryEvent::ReleaseCancelled
        | HistoryEvent::ClaimCleared => return None,
    })
}

/// Whether `e`, an entry of the history after a change, is one the change added. A
/// change appends to the history (a first pin starts with what the tag had before it), so
/// what `before` held is a prefix and the rest is new, whatever log index it carries (one
/// that came with it numbered another store's log, or none). A change that replaced the
/// history instead added the entries with no log index.
fn is_added(before: &TagRecord, after: &TagRecord) -> impl Fn(usize, &HistoryEntry) -> bool {
    let held = history(before).len();
    let grows = history(after).starts_with(history(before));
    move |i, e| if grows { i >= held } else { e.log.is_none() }
}

/// How many entries the change from `before` to `after` makes: the history entries it
/// added that bind the tag. Cheap, so a write that binds nothing never touches the log.
pub fn count(before: &TagRecord, after: &TagRecord) -> usize {
    if cfg!(feature = "bench-unlogged") {
        return 0;
    }
    let added = is_added(before, after);
    history(after)
        .iter()
        .enumerate()
        .filter(|&(i, e)| added(i, e) && logged(e).is_some())
        .count()
}

/// The entries the change from `before` to `after` makes, numbered from `next`: one for
/// each history entry the change added that binds the tag, stamped with its index.
/// Refused (the whole write fails) when the change moved the pin without an entry that
/// binds it (a binding the log would not show must not be written), or when the stored
/// history holds a binding the log never recorded: the record was changed outside
/// tagpin, and logging that entry now would make the change look recorded. (Removing a
/// pin binds nothing; no transition does it.)
pub fn bindings(
    repo: &Repository,
    tag: &Tag,
    before: &TagRecord,
    after: &mut TagRecord,
    next: u64,
) -> Result<Vec<LogEntry>, StoreError> {
    let refuse = |why: &str| StoreError::Corrupt {
        key: format!("{repo}:{tag}"),
        why: why.to_owned(),
    };
    if cfg!(feature = "bench-unlogged") {
        return Ok(Vec::new());
    }
    if let Some(e) = history(before).iter().find(|e| e.log.is_none() && logged(e).is_some()) {
        return Err(refuse(&format!(
            "the stored history binds the tag to {} (a {:?} entry at {}) with no log entry: \
             the record was changed outside tagpin; `tagpin log verify` names what differs",
            e.digest,
            e.event,
            rfc3339(e.at)
        )));
    }
    let added = is_added(before, after);
    let mut current = before.pin.as_ref().map(|p| p.digest.clone());
    let mut out = Vec::new();
    for (i, e) in history_mut(after).iter_mut().enumerate() {
        if !added(i, e) {
            continue;
        }
        let Some((event, source)) = logged(e) else {
            continue;
        };
        let by = match (event, source) {
            (LogEvent::Released, _) | (_, Some(AdoptedVia::Seed)) => e.by.clone().or_else(|| e.request_id.clone()),
            _ => e.request_id.clone(),
        };
        let index = next + out.len() as u64;
        e.log = Some(index);
        out.push(LogEntry {
            index,
            time: rfc3339(e.at),
            repository: repo.clone(),
            tag: tag.clone(),
            digest: e.digest.clone(),
            previous: current.replace(e.digest.clone()),
            event,
            source,
            by,
        });
    }
    let guarded = !crate::pinning::mutation::on(crate::pinning::mutation::Mutation::LogSkipsAdoption);
    if guarded && after.pin.as_ref().is_some_and(|p| Some(&p.digest) != current.as_ref()) {
        return Err(refuse("a change bound the tag without a history entry for it"));
    }
    Ok(out)
}

/// The entry of a pin that came in with an import (from another store, whose log is not
/// this one's), numbered `index`; every entry of its history is stamped with it.
pub fn imported(
    repo: &Repository,
    tag: &Tag,
    previous: Option<&Digest>,
    pin: &mut Pin,
    by: &str,
    now: u64,
    index: u64,
) -> LogEntry {
    LogEntry {
        previous: previous.cloned(),
        by: Some(by.to_owned()),
        ..whole_pin(repo, tag, pin, LogEvent::Imported, now, index)
    }
}

/// The `genesis` entry of a pin that existed before the log did, numbered `index`;
/// every entry of its history is stamped with it.
pub fn genesis(repo: &Repository, tag: &Tag, pin: &mut Pin, now: u64, index: u64) -> LogEntry {
    whole_pin(repo, tag, pin, LogEvent::Genesis, now, index)
}

/// An entry that vouches for a whole pin, history included (genesis, import): every
/// entry of the history is stamped with it. No previous digest, no one named.
fn whole_pin(repo: &Repository, tag: &Tag, pin: &mut Pin, event: LogEvent, now: u64, index: u64) -> LogEntry {
    for e in &mut pin.history {
        e.log = Some(index);
    }
    LogEntry {
        index,
        time: rfc3339(now),
        repository: repo.clone(),
        tag: tag.clone(),
        digest: pin.digest.clone(),
        previous: None,
        event,
        source: None,
        by: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{PinSource, TagRecord};

    fn d(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    fn names() -> (Repository, Tag) {
        (Repository::parse("team/app").unwrap(), Tag::parse("1.0").unwrap())
    }

    #[test]
    fn a_first_push_is_one_entry_with_no_previous_and_its_request() {
        let (r, t) = names();
        let mut pin = Pin::now(d('a'), PinSource::Push);
        pin.history[0].request_id = Some("req-1".into());
        pin.history[0].at = 1_700_000_000;
        let mut after = TagRecord::default();
        after.set_pin(pin);
        assert_eq!(count(&TagRecord::default(), &after), 1);
        let out = bindings(&r, &t, &TagRecord::default(), &mut after, 41).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(after.pin.as_ref().unwrap().history[0].log, Some(41));
        assert_eq!(
            String::from_utf8(out[0].leaf()).unwrap(),
            format!(
                r#"{{"index":41,"time":"2023-11-14T22:13:20Z","repository":"team/app","tag":"1.0","digest":"{}","previous":null,"event":"push","by":"req-1"}}"#,
                d('a')
            )
        );
        assert_eq!(LogEntry::parse(&out[0].leaf()).unwrap(), out[0]);
    }

    #[test]
    fn an_adoption_by_seed_names_its_source_and_admin() {
        let (r, t) = names();
        let mut pin = Pin::now(d('a'), PinSource::Adopted);
        pin.history[0].via = Some(AdoptedVia::Seed);
        pin.history[0].by = Some("ops".into());
        pin.history[0].request_id = Some("req-2".into());
        let mut after = TagRecord::default();
        after.set_pin(pin);
        let out = bindings(&r, &t, &TagRecord::default(), &mut after, 0).unwrap();
        assert_eq!(
            (out[0].event, out[0].source, out[0].by.as_deref()),
            (LogEvent::Adopted, Some(AdoptedVia::Seed), Some("ops"))
        );
    }

    #[test]
    fn a_move_names_the_digest_before_and_a_silent_move_is_refused() {
        let (r, t) = names();
        let mut before = TagRecord::default();
        let mut pin = Pin::now(d('a'), PinSource::Push);
        pin.history[0].log = Some(6);
        before.set_pin(pin);
        let mut after = before.clone();
        let pin = after.pin.as_mut().unwrap();
        pin.digest = d('b');
        let mut e = HistoryEntry::new(HistoryEvent::Append, d('b'), Some(d('a')));
        e.request_id = Some("req-3".into());
        pin.history.push(e);
        let out = bindings(&r, &t, &before, &mut after, 7).unwrap();
        assert_eq!(
            (out[0].previous.clone(), out[0].event),
            (Some(d('a')), LogEvent::Append)
        );

        let mut silent = before.clone();
        silent.pin.as_mut().unwrap().digest = d('c');
        assert!(bindings(&r, &t, &before, &mut silent, 0).is_err());
        let mut expired = before.clone();
        let e = HistoryEntry::new(HistoryEvent::ReleaseExpired, d('a'), None);
        expired.pin.as_mut().unwrap().history.push(e);
        assert_eq!(count(&before, &expired), 0);
        assert!(bindings(&r, &t, &before, &mut expired, 0).unwrap().is_empty());
    }

    /// A pin moved in the store by hand, with a history entry to match and no log index:
    /// the next change of the record (here a write recorded in flight) must not append
    /// that entry to the log as if tagpin had made it.
    #[test]
    fn a_stored_binding_the_log_never_recorded_is_refused_not_logged() {
        let (r, t) = names();
        let mut before = TagRecord::default();
        let mut pin = Pin::now(d('a'), PinSource::Push);
        pin.history[0].log = Some(0);
        pin.digest = d('e');
        pin.history
            .push(HistoryEntry::new(HistoryEvent::AuditMove, d('e'), Some(d('a'))));
        before.set_pin(pin);
        let mut after = before.clone();
        after.writes.push(crate::store::Claim::of_kind(
            d('e'),
            "req-4",
            crate::store::ClaimKind::Identical,
        ));
        let got = bindings(&r, &t, &before, &mut after, 1);
        assert!(matches!(got, Err(StoreError::Corrupt { .. })), "{got:?}");

        // Unlogged history that binds nothing (a cleared claim, before the pin) is fine.
        let mut noted = TagRecord::default();
        noted
            .history
            .push(HistoryEntry::new(HistoryEvent::ClaimCleared, d('a'), None));
        let mut pinned = noted.clone();
        pinned.set_pin(Pin::now(d('a'), PinSource::Push));
        let out = bindings(&r, &t, &noted, &mut pinned, 3).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].index, 3);
    }

    /// An entry a change adds is logged even when it carries a log index already (one
    /// numbering another store's log): one entry per binding, stamped anew.
    #[test]
    fn an_added_entry_carrying_a_log_index_is_logged_and_stamped_anew() {
        let (r, t) = names();
        let mut pin = Pin::now(d('a'), PinSource::Push);
        pin.history[0].log = Some(99);
        let mut after = TagRecord::default();
        after.set_pin(pin);
        assert_eq!(count(&TagRecord::default(), &after), 1);
        let out = bindings(&r, &t, &TagRecord::default(), &mut after, 5).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(after.pin.unwrap().history[0].log, Some(5));
    }
}
