//! Deciding an import against what the store holds, the same for every backend.

use serde::Serialize;

use super::{Exported, PinStore, Refused, Repository, StoreError, Tag, TagState, MAX_REFUSALS};

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

/// One page of a store's listing as export records, each with the tag's refused attempts.
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
