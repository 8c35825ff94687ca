//! Deciding an import against what the store holds, the same for every backend.

use serde::Serialize;

use super::{Exported, TagState};

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
