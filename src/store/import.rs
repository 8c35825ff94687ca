//! Importing an export, the same for every backend: reading it a record at a time
//! ([`ExportReader`], so a file of any size is read in bounded memory), judging each
//! record against what the tag holds ([`judge`]), the record written for it
//! ([`imported_record`]), the refused attempts it carries ([`merge_refusals`]), and the
//! outcome, with a bounded list of conflicts.

use std::io::{BufRead, Read};

use serde::Serialize;

use super::{Exported, PinStore, Refused, Repository, StoreError, Tag, TagState, MAX_REFUSALS};

/// Conflicts named in an [`ImportOutcome`]; the rest are only counted.
pub const MAX_NAMED_CONFLICTS: usize = 100;

/// What one batch of an import may hold in all, in [`weight`]s: a few MiB of parsed
/// records, however long their histories.
pub const BATCH_WEIGHT: usize = 20_000;

/// A record's share of a batch: one, and one for each entry of its history and refused
/// attempt (each a few hundred bytes once parsed).
pub fn weight(r: &Exported) -> usize {
    1 + r.history.len() + r.refused.len()
}

/// Longest line of an export: a pin with a long history and every refused attempt kept
/// is far shorter.
const MAX_LINE: u64 = 16 << 20;

/// Where an import's records come from, one at a time, in the file's order.
pub trait ImportSource {
    /// The next record; `None` at the end.
    fn next_record(&mut self) -> Result<Option<Exported>, ImportError>;

    /// Every record is checked and none conflicts: the import writes now (`checked`
    /// counts what it found). For progress reports; nothing by default.
    fn writing(&mut self, checked: &ImportOutcome) {
        let _ = checked;
    }
}

impl ImportSource for std::slice::Iter<'_, Exported> {
    fn next_record(&mut self) -> Result<Option<Exported>, ImportError> {
        Ok(self.next().cloned())
    }
}

/// Why an import wrote nothing, other than conflicts.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The input is not an export (the message names the line), or cannot be read.
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// JSON lines as `tagpin export` writes them, read a line at a time; blank lines are
/// skipped, anything else that is not a record is an error naming its line.
pub struct ExportReader<R> {
    input: R,
    line: Vec<u8>,
    number: u64,
}

impl<R: BufRead> ExportReader<R> {
    pub fn new(input: R) -> Self {
        Self {
            input,
            line: Vec::new(),
            number: 0,
        }
    }
}

impl<R: BufRead> ImportSource for ExportReader<R> {
    fn next_record(&mut self) -> Result<Option<Exported>, ImportError> {
        loop {
            self.line.clear();
            let read = (&mut self.input)
                .take(MAX_LINE + 1)
                .read_until(b'\n', &mut self.line)
                .map_err(|e| ImportError::Input(format!("cannot read the import: {e}; nothing was written")))?;
            if read == 0 {
                return Ok(None);
            }
            self.number += 1;
            if self.line.len() as u64 > MAX_LINE {
                return Err(ImportError::Input(format!(
                    "line {} is longer than {MAX_LINE} bytes; nothing was written",
                    self.number
                )));
            }
            if self.line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            // Without its newline, so a record cut short is not reported at a second line.
            return serde_json::from_slice(self.line.trim_ascii_end())
                .map(Some)
                .map_err(|e| {
                    ImportError::Input(format!(
                        "line {} is not an exported pin ({e}); nothing was written",
                        self.number
                    ))
                });
        }
    }
}

/// What an import does with one record, given what its tag holds (`held`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The tag is free: the record is written.
    Write,
    /// The tag holds what the record says: left as it is.
    Unchanged,
}

/// Judge a record against what its tag holds: `Err` names the conflict (another digest,
/// a write in flight here or in the record). The same on every backend.
pub fn judge(r: &Exported, held: Option<TagState>) -> Result<Verdict, String> {
    match held {
        None => Ok(Verdict::Write),
        Some(state) if Some(&state) == r.state().as_ref() => Ok(Verdict::Unchanged),
        Some(TagState::Pinned(p)) if p.digest == r.digest && r.claim.is_none() => Ok(Verdict::Unchanged),
        Some(state) => Err(format!(
            "{}:{} is held to {} here, the import says {}",
            r.repository,
            r.tag,
            state.digest(),
            r.digest
        )),
    }
}

/// The conflict of a tag named twice in one import with different digests.
pub fn named_twice(r: &Exported) -> String {
    format!("{}:{} appears twice with different digests", r.repository, r.tag)
}

/// What an import did, or why it wrote nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ImportOutcome {
    /// Pins written.
    pub imported: usize,
    /// Records identical to a pin already held (same digest), left as they are.
    pub unchanged: usize,
    /// The first [`MAX_NAMED_CONFLICTS`] records that disagree with what the store holds
    /// (or with an earlier record of the same tag), in the order found.
    pub conflicts: Vec<String>,
    /// How many conflicts there are in all: when any, nothing is written.
    pub conflicting: usize,
}

impl ImportOutcome {
    /// Count a conflict, and name it while fewer than [`MAX_NAMED_CONFLICTS`] are named.
    pub fn conflict(&mut self, why: String) {
        self.conflicting += 1;
        if self.conflicts.len() < MAX_NAMED_CONFLICTS {
            self.conflicts.push(why);
        }
    }

    /// The one-line report of an import that wrote nothing for its conflicts: how many,
    /// and the first few.
    pub fn conflict_summary(&self) -> String {
        const SHOWN: usize = 5;
        let shown: Vec<&str> = self.conflicts.iter().take(SHOWN).map(String::as_str).collect();
        let mut out = format!(
            "{} conflicting record(s), nothing written: {}",
            self.conflicting,
            shown.join("; ")
        );
        if self.conflicting > shown.len() {
            out.push_str(&format!("; and {} more", self.conflicting - shown.len()));
        }
        out
    }
}

/// The record an import writes for `r` over what the tag holds (`before`): the exported
/// pin and claim, after the tag's own notes and with its release; and the pin's
/// `imported` log entry, numbered `index`, naming `by`. The same on every backend.
pub fn imported_record(
    r: &Exported,
    before: &super::TagRecord,
    by: &str,
    now: u64,
    index: u64,
) -> (super::TagRecord, Option<crate::log::LogEntry>) {
    // What the tag had before it was pinned starts the imported pin's history.
    let mut after = super::TagRecord {
        pin: None,
        writes: r.claim.iter().cloned().collect(),
        release: before.release.clone(),
        history: before.history.clone(),
    };
    let entry = r.pin().map(|mut pin| {
        let previous = before.pin.as_ref().map(|p| &p.digest);
        let entry = crate::log::entry::imported(&r.repository, &r.tag, previous, &mut pin, by, now, index);
        after.set_pin(pin);
        entry
    });
    (after, entry)
}

/// One page of a store's listing as export records, each with the tag's refused attempts.
pub fn export_page(store: &dyn PinStore, page: &[(Repository, Tag, TagState)]) -> Result<Vec<Exported>, StoreError> {
    page.iter()
        .map(|(r, t, state)| {
            let mut e = Exported::from_state(r.clone(), t.clone(), state);
            e.refused = store.refusals(r, t)?;
            Ok(e)
        })
        .collect()
}

/// A tag's refused attempts after an import: those held and those imported, each once
/// (by request and time), oldest first, the last [`MAX_REFUSALS`]. `None` when the
/// import adds none, so nothing needs writing.
pub fn merge_refusals(held: &[Refused], imported: &[Refused]) -> Option<Vec<Refused>> {
    let same = |a: &Refused, b: &Refused| a.request_id == b.request_id && a.at == b.at;
    let mut merged = held.to_vec();
    let mut added = false;
    for r in imported {
        if !merged.iter().any(|m| same(m, r)) {
            merged.push(r.clone());
            added = true;
        }
    }
    if !added {
        return None;
    }
    // Stable: attempts of one second keep the order they were kept in.
    merged.sort_by_key(|r| r.at);
    if merged.len() > MAX_REFUSALS {
        merged.drain(..merged.len() - MAX_REFUSALS);
    }
    Some(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(at: u64, id: &str) -> Refused {
        Refused {
            at,
            attempted: None,
            delete: true,
            client: "127.0.0.1:1".into(),
            user: None,
            user_agent: String::new(),
            request_id: id.into(),
        }
    }

    #[test]
    fn an_export_is_read_a_line_at_a_time_and_a_bad_line_is_named() {
        let line = r#"{"repository":"a/b","tag":"v1","digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","source":"push","pinned_at":1,"history":[]}"#;
        let text = format!("{line}\n\n  \n{line}\n{{}}\n");
        let mut reader = ExportReader::new(text.as_bytes());
        assert_eq!(reader.next_record().unwrap().unwrap().tag.as_str(), "v1");
        assert!(reader.next_record().unwrap().is_some(), "blank lines are skipped");
        let e = reader.next_record().unwrap_err().to_string();
        assert!(e.starts_with("line 5 is not an exported pin"), "{e}");
        assert!(e.ends_with("nothing was written"), "{e}");
        // A last line without its newline is still a line.
        let mut reader = ExportReader::new(line.as_bytes());
        assert!(reader.next_record().unwrap().is_some());
        assert!(reader.next_record().unwrap().is_none());
    }

    #[test]
    fn conflicts_are_counted_and_the_first_are_named() {
        let mut out = ImportOutcome::default();
        for i in 0..MAX_NAMED_CONFLICTS + 7 {
            out.conflict(format!("c{i}"));
        }
        assert_eq!(
            (out.conflicting, out.conflicts.len()),
            (MAX_NAMED_CONFLICTS + 7, MAX_NAMED_CONFLICTS)
        );
        assert_eq!(
            out.conflict_summary(),
            "107 conflicting record(s), nothing written: c0; c1; c2; c3; c4; and 102 more"
        );
    }

    #[test]
    fn refusals_merge_once_in_time_order_and_capped() {
        let held = vec![refused(1, "a"), refused(5, "c")];
        let merged = merge_refusals(&held, &[refused(3, "b"), refused(5, "c")]).unwrap();
        let ids: Vec<&str> = merged.iter().map(|r| r.request_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(merge_refusals(&merged, &held), None, "nothing new");
        let many: Vec<Refused> = (0..MAX_REFUSALS as u64 + 3)
            .map(|i| refused(i, &i.to_string()))
            .collect();
        let merged = merge_refusals(&[], &many).unwrap();
        assert_eq!(merged.len(), MAX_REFUSALS);
        assert_eq!(merged[0].request_id, "3");
    }
}
