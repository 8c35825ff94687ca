//! The pin store: for each (repository, tag), what tagpin holds it to, the writes whose
//! outcome at the upstream is not known yet, and a release; plus digest deletes in
//! flight, the references of pinned content and refused attempts. One interface,
//! [`PinStore`], implemented by sled and PostgreSQL and checked by one contract suite.
//!
//! The store decides nothing. Every change to a tag's records is a transition of the
//! state machine in [`crate::pinning`], applied by [`PinStore::update`] atomically (across
//! replicas too) and durably before the caller acts on it; the rule it keeps (every
//! forwarded write holds a record of its own until its answer is known) is described
//! there.
//!
//! Every method is blocking (sled's flush is an fsync); the handler calls them from
//! `spawn_blocking`. A pin is never removed: it is a tombstone that outlives the tag at
//! the upstream.

mod gate;
mod history;
mod import;
mod model;
mod outbox;
mod postgres;
mod sled;

mod unavailable;

use crate::log::{Frontier, Hash, NodeId};
use crate::oci::{Digest, Repository, Tag};

pub use self::history::{in_force_at, parse_query_time, parse_time, rfc3339, NoPinAt, PinAt};
pub use self::import::{
    export_page, imported_record, judge, merge_refusals, named_twice, weight, ExportReader, ImportError, ImportOutcome,
    ImportSource, Verdict, BATCH_WEIGHT, MAX_NAMED_CONFLICTS,
};
pub use self::model::*;
pub use self::outbox::{Notifying, Outbox, OutboxEvent, OutboxStats, Timer, WriteKind};
pub use self::postgres::{PgStore, PgTls, ReadCacheStats, SslMode, TlsFileError};
pub use self::sled::{SledStore, DEFAULT_CACHE_BYTES as DEFAULT_SLED_CACHE_BYTES};
pub use self::unavailable::UnavailableStore;

/// A store failure. Any of these makes tagpin refuse the write it was deciding (503).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("pin store unavailable: {0}")]
    Unavailable(String),
    /// A write waited for an import's write phase longer than it may; nothing changed.
    #[error("pin store busy: {0}")]
    Importing(String),
    #[error("data dir {0} is in use by another tagpin process")]
    Locked(String),
    #[error("pin store I/O failed: {0}")]
    Io(String),
    #[error("pin store holds an unreadable record for {key}: {why}")]
    Corrupt { key: String, why: String },
}

/// The interface every pin store backend implements. Every write is atomic and durable
/// (on disk, or committed) before the method returns; after a write that could not be
/// made durable, the store answers nothing from memory until a write succeeds again.
pub trait PinStore: Send + Sync + 'static {
    /// The state of `tag` in `repo`: pinned, claimed, or `None` when free.
    fn state(&self, repo: &Repository, tag: &Tag) -> Result<Option<TagState>, StoreError> {
        Ok(self.record(repo, tag)?.state())
    }

    /// Everything kept for `tag`: pin, writes in flight, release.
    fn record(&self, repo: &Repository, tag: &Tag) -> Result<TagRecord, StoreError>;

    /// What a manifest read of `tag` is answered from. `immutable`: the policy in force
    /// makes the tag immutable, so a store that keeps a cache may answer from it (see
    /// [`PgStore`] for why a cached pin is never older than one committed before the
    /// read began).
    fn read_view(&self, repo: &Repository, tag: &Tag, immutable: bool) -> Result<ReadView, StoreError> {
        let _ = immutable;
        Ok(ReadView::of(&self.record(repo, tag)?))
    }

    /// [`PinStore::read_view`] when it can be answered at once from memory (sled's own
    /// cache, a replica's cache of immutable pins), without waiting on a disk or a
    /// database; `None` when the caller must run [`PinStore::read_view`] off the async
    /// workers.
    fn read_view_in_memory(
        &self,
        repo: &Repository,
        tag: &Tag,
        immutable: bool,
    ) -> Option<Result<ReadView, StoreError>> {
        let _ = (repo, tag, immutable);
        None
    }

    /// How long a write that moves an existing pin (a released push, an append, an
    /// audited move) waits between recording its claim and forwarding, so every replica
    /// has dropped the old pin from its read cache by the time the new one can commit.
    /// Zero for a store with no cache shared by other processes.
    fn move_grace(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// Apply `change` to the records of `tags` (an empty record for a free tag) as one
    /// atomic, durable write: on PostgreSQL under a transaction that holds every tag's
    /// lock, so replicas apply changes to a tag one at a time. `change` gets the store's
    /// clock (seconds since the Unix epoch; the database's on PostgreSQL, so replicas
    /// whose clocks disagree judge expiry alike) and may be called more than once, so it
    /// must be a pure function of its arguments ([`crate::pinning`]'s transitions are).
    /// Records it leaves unchanged are not written. Returns the records as written.
    fn update(
        &self,
        repo: &Repository,
        tags: &[Tag],
        change: &mut dyn FnMut(u64, &mut [TagRecord]),
    ) -> Result<Vec<TagRecord>, StoreError>;

    /// [`PinStore::update`] for a push's claim that first records the references of the
    /// pushed manifest (`refs`), in the same atomic, durable write: one commit (one fsync)
    /// before the push is forwarded.
    fn update_protecting(
        &self,
        repo: &Repository,
        tags: &[Tag],
        refs: &Protection,
        change: &mut dyn FnMut(u64, &mut [TagRecord]),
    ) -> Result<Vec<TagRecord>, StoreError> {
        let how = Protect {
            durable: false,
            complete: refs.complete,
        };
        self.protect(repo, &refs.holder, &refs.refs, how)?;
        self.update(repo, tags, change)
    }

    /// [`PinStore::update`] for settling a push by its upstream's answer (confirming it,
    /// or withdrawing it): as atomic, and visible to every later call at once, but made
    /// durable soon after rather than before it returns, so no fsync (or synchronous
    /// commit) stands between the upstream's answer and the client's. Losing it in a
    /// crash loses nothing a client relies on: the push's claim, durable before it was
    /// forwarded, still holds the tag for the same digest, and a restart completes it
    /// ([`crate::handler::recover`] asks the upstream for what the claim's write did).
    /// Anything that publishes the state (a signed checkpoint of the log) first makes it
    /// durable ([`PinStore::log_head`]).
    fn confirm(
        &self,
        repo: &Repository,
        tags: &[Tag],
        change: &mut dyn FnMut(u64, &mut [TagRecord]),
    ) -> Result<Vec<TagRecord>, StoreError> {
        self.update(repo, tags, change)
    }

    /// A write as `kind` says, with the events and timers `notify` gives for the change
    /// in the same atomic write. A store without an outbox writes the records alone.
    fn write_notifying(
        &self,
        kind: WriteKind<'_>,
        repo: &Repository,
        tags: &[Tag],
        change: &mut dyn FnMut(u64, &mut [TagRecord]),
        notify: &mut Notifying<'_>,
    ) -> Result<Vec<TagRecord>, StoreError> {
        let _ = notify;
        match kind {
            WriteKind::Durable => self.update(repo, tags, change),
            WriteKind::Protecting(refs) => self.update_protecting(repo, tags, refs, change),
            WriteKind::Settling => self.confirm(repo, tags, change),
        }
    }

    /// Durable writes this store has waited for (fsyncs; synchronous commits), for
    /// `tagpin_store_durable_writes_total`.
    fn durable_writes(&self) -> u64 {
        0
    }

    /// Record each pin unless its tag is pinned or claimed already (adoption of what the
    /// upstream holds). Returns, in order, the state in force for each tag afterwards.
    fn pin_if_absent(&self, repo: &Repository, pins: &[(Tag, Pin)]) -> Result<Vec<TagState>, StoreError> {
        let mut out = Vec::new();
        let tags: Vec<Tag> = pins.iter().map(|(t, _)| t.clone()).collect();
        let records = self.update(repo, &tags, &mut |_, records| {
            for (record, (_, pin)) in records.iter_mut().zip(pins) {
                if record.pin.is_none() && record.writes.is_empty() {
                    record.set_pin(pin.clone());
                }
            }
        })?;
        for (record, (_, pin)) in records.iter().zip(pins) {
            out.push(record.state().unwrap_or_else(|| TagState::Pinned(pin.clone())));
        }
        Ok(out)
    }

    /// Keep a refused attempt on `tag` (the last [`MAX_REFUSALS`]).
    fn record_refusal(&self, repo: &Repository, tag: &Tag, refused: &Refused) -> Result<(), StoreError>;

    /// The refused attempts kept for `tag`, oldest first.
    fn refusals(&self, repo: &Repository, tag: &Tag) -> Result<Vec<Refused>, StoreError>;

    /// Tags of `repo` pinned or claimed to `digest`.
    fn tags_pinned_to(&self, repo: &Repository, digest: &Digest) -> Result<Vec<Tag>, StoreError>;

    /// Record that a delete of `repo@digest` by `request_id` is being forwarded.
    fn begin_delete(&self, repo: &Repository, digest: &Digest, request_id: &str) -> Result<(), StoreError>;

    /// Settle the delete record of `request_id` (its own answer came, or an operator
    /// cleared it). Never another request's: a delete whose answer was lost may still
    /// land after a repeat of it was answered.
    fn end_delete(&self, repo: &Repository, digest: &Digest, request_id: &str) -> Result<(), StoreError>;

    /// Which of `digests` have a delete record younger than `horizon` seconds by the
    /// store's clock: a forwarded delete whose outcome is not known and that may still
    /// land. Older records are past the in-doubt horizon and no longer count.
    fn deletes_in_flight(&self, repo: &Repository, digests: &[Digest], horizon: u64)
        -> Result<Vec<Digest>, StoreError>;

    /// Every delete record of `repo` (or of every repository): digest, request, started.
    fn list_deletes(&self, repo: Option<&Repository>) -> Result<Vec<DeleteRecord>, StoreError>;

    /// Record, durably, that the manifest `holder` of `repo` depends on `refs` (its blobs,
    /// child manifests and their blobs), so none of them can be deleted while it is
    /// pinned. Recorded before the pin or claim that makes `holder` pinned content.
    fn protect(&self, repo: &Repository, holder: &Digest, refs: &[Digest], how: Protect) -> Result<(), StoreError>;

    /// Whether the references of `holder` have been recorded.
    fn has_refs(&self, repo: &Repository, holder: &Digest) -> Result<bool, StoreError>;

    /// The references recorded for `holder`.
    fn refs_of(&self, repo: &Repository, holder: &Digest) -> Result<Vec<Digest>, StoreError>;

    /// The distinct digests pinned or claimed in `repo`.
    fn holders(&self, repo: &Repository) -> Result<Vec<Digest>, StoreError>;

    /// The pinned manifests of `repo` that depend on `digest`.
    fn referenced_by(&self, repo: &Repository, digest: &Digest) -> Result<Vec<Digest>, StoreError>;

    /// Tags with a pin or claim, in key order, after `after`, at most `limit`; only
    /// `repo`'s when given. Paginated so a million pins list in bounded memory.
    fn list(
        &self,
        repo: Option<&Repository>,
        after: Option<&(Repository, Tag)>,
        limit: usize,
    ) -> Result<Vec<(Repository, Tag, TagState)>, StoreError>;

    /// Tags with a write in flight, in key order, after `after`, at most `limit`: a walk
    /// of the writes alone, which are few, never of every pin.
    fn claimed(&self, after: Option<&(Repository, Tag)>, limit: usize) -> Result<Vec<(Repository, Tag)>, StoreError> {
        let mut out = Vec::new();
        let mut cursor = after.cloned();
        loop {
            let page = self.list(None, cursor.as_ref(), limit)?;
            out.extend(
                page.iter()
                    .filter(|(_, _, state)| state.claim().is_some())
                    .map(|(r, t, _)| (r.clone(), t.clone())),
            );
            if page.len() < limit || out.len() >= limit {
                out.truncate(limit);
                return Ok(out);
            }
            cursor = page.last().map(|(r, t, _)| (r.clone(), t.clone()));
        }
    }

    /// Import the records `source` reads, all or nothing: every record is written unless
    /// any conflicts with what the store holds (a different digest, or a claim) or with
    /// an earlier record of the same tag, or the input is not an export; then nothing is.
    /// Each pin written gets an `imported` log entry naming `by` (the admin token's name)
    /// in the same write as the pin. Memory stays bounded whatever the input's size.
    ///
    /// Writes that bind or claim a tag wait while the import writes (sled: the store's
    /// gate; PostgreSQL: an advisory lock every update takes shared), so none lands
    /// between the import's check and its write. An import cut short by a crash is
    /// finished when the store opens next (sled), or was never committed (PostgreSQL).
    fn import_from(&self, source: &mut dyn ImportSource, by: &str) -> Result<ImportOutcome, ImportError>;

    /// [`PinStore::import_from`] of records in memory.
    fn import(&self, records: &[Exported], by: &str) -> Result<ImportOutcome, StoreError> {
        self.import_from(&mut records.iter(), by).map_err(|e| match e {
            ImportError::Store(e) => e,
            ImportError::Input(why) => StoreError::Io(why),
        })
    }

    /// The log's head: its size and right frontier (see [`crate::log`]). Durable: every
    /// entry it covers survives a crash (a [`PinStore::confirm`] not yet on disk is made
    /// durable first), so no checkpoint signed over it can be contradicted later.
    fn log_head(&self) -> Result<Frontier, StoreError>;

    /// The leaf bytes of the log's entries `[start, end)`, as far as the log reaches.
    fn log_leaves(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StoreError>;

    /// The hashes of the complete subtrees `ids`, in order; an error when one is missing.
    fn log_nodes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError>;

    /// Whether this process may run work that one replica at a time should do (the
    /// periodic drift check) now. A single-process store always may; a shared one grants
    /// it to one process until that process goes away.
    fn lead(&self) -> Result<bool, StoreError>;

    /// The webhook outbox, when this store keeps one.
    fn outbox(&self) -> Option<&dyn Outbox> {
        None
    }

    /// Whether the store can serve reads and durable writes now.
    fn check(&self) -> Result<(), StoreError>;
}
