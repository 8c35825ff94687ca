//! The verifiable history: an append-only Merkle log (RFC 6962) of every event that binds
//! a tag to a digest, one per store, written in the same atomic write as the binding
//! ([`entry::bindings`], called by each backend's update), with checkpoints signed as
//! C2SP notes ([`note`]) so that anyone who kept an older checkpoint can check that the
//! log only grew, and entries replayed give exactly the pins.
//!
//! Storage (each backend): the leaf bytes by index, every perfect subtree's hash once
//! complete ([`merkle::NodeId`]), and the head: the size and the right frontier. An
//! append reads the head and writes the leaf, the O(1) amortised (O(log n) at most)
//! subtrees it completes and the new head; a proof reads O(log n) subtree hashes.

pub mod entry;
pub mod merkle;
pub mod note;

pub use self::entry::{LogEntry, LogEvent};
pub use self::merkle::{Frontier, Hash, NodeId};
pub use self::note::{Checkpoint, Note, SigningKey, VerifierKey};

use crate::store::{PinStore, StoreError};

/// What an append writes: each entry's leaf bytes by index, and every subtree hash it
/// completed. `head` is advanced.
pub struct Appended {
    pub leaves: Vec<(u64, Vec<u8>)>,
    pub nodes: Vec<(NodeId, Hash)>,
}

/// Append `entries` (numbered from `head.size()`) to the tree whose head is `head`.
pub fn append(head: &mut Frontier, entries: &[LogEntry]) -> Appended {
    let mut out = Appended {
        leaves: Vec::with_capacity(entries.len()),
        nodes: Vec::new(),
    };
    for e in entries {
        debug_assert_eq!(e.index, head.size(), "entries are numbered from the log's size");
        let leaf = e.leaf();
        out.nodes.extend(head.append(merkle::leaf_hash(&leaf)));
        out.leaves.push((e.index, leaf));
    }
    out
}

/// Why a proof was not given.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request names sizes or indexes the tree does not have.
    #[error("{0}")]
    Range(String),
}

fn assembled(store: &dyn PinStore, ranges: &[(u64, u64)]) -> Result<Vec<Hash>, StoreError> {
    let ids = merkle::nodes_for(ranges);
    let hashes = store.log_nodes(&ids)?;
    let found: std::collections::HashMap<NodeId, Hash> = ids.into_iter().zip(hashes).collect();
    merkle::assemble(ranges, |id| found.get(&id).copied()).ok_or_else(|| StoreError::Corrupt {
        key: "log_nodes".into(),
        why: "a subtree hash of the log is missing".into(),
    })
}

/// The root of the tree of the first `size` entries (`size` at most the log's size).
pub fn root_at(store: &dyn PinStore, size: u64) -> Result<Hash, StoreError> {
    let ids = Frontier::ids(size);
    let parts = store.log_nodes(&ids)?;
    Ok(merkle::fold(&parts))
}

/// The inclusion proof of entry `index` in the tree of `size` entries.
pub fn inclusion_proof(store: &dyn PinStore, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
    let now = store.log_head()?.size();
    if size > now || index >= size {
        return Err(ProofError::Range(format!(
            "no entry {index} in a tree of {size} entries (the log has {now})"
        )));
    }
    Ok(assembled(store, &merkle::inclusion_ranges(index, size))?)
}

/// The consistency proof from the tree of `from` entries to the tree of `to` entries.
pub fn consistency_proof(store: &dyn PinStore, from: u64, to: u64) -> Result<Vec<Hash>, ProofError> {
    let now = store.log_head()?.size();
    if from == 0 || from > to || to > now {
        return Err(ProofError::Range(format!(
            "no consistency proof from {from} to {to} entries: 1 <= from <= to <= {now} (the log's size)"
        )));
    }
    Ok(assembled(store, &merkle::consistency_ranges(from, to))?)
}

/// Who signs checkpoints, and the origin line they carry.
pub struct Signer {
    key: Option<SigningKey>,
    origin: String,
}

/// The origin of a log with neither a key nor `--log-origin`.
pub const DEFAULT_ORIGIN: &str = "tagpin";

impl Signer {
    /// `origin` defaults to the key's name (C2SP: they should match), or [`DEFAULT_ORIGIN`].
    pub fn new(key: Option<SigningKey>, origin: Option<String>) -> Self {
        let origin = origin
            .or_else(|| key.as_ref().map(|k| k.name().to_owned()))
            .unwrap_or_else(|| DEFAULT_ORIGIN.to_owned());
        Self { key, origin }
    }

    pub fn signs(&self) -> bool {
        self.key.is_some()
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The checkpoint of the tree with `head`: a signed note, or the bare checkpoint when
    /// there is no key.
    pub fn checkpoint(&self, head: &Frontier) -> String {
        let text = Checkpoint {
            origin: self.origin.clone(),
            size: head.size(),
            root: head.root(),
        }
        .text();
        match &self.key {
            Some(k) => k.sign(&text),
            None => text,
        }
    }
}
