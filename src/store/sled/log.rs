//! The log in the sled backend: `log_leaves` (index, 8 bytes big-endian -> leaf bytes),
//! `log_nodes` (level, 1 byte, then index, 8 bytes big-endian -> the subtree's hash) and
//! `meta` `log_head` (the [`Frontier`], size first). Appended inside the transaction that
//! writes the records the entries describe ([`append_in`]); sled runs transactions one at
//! a time, so appends are numbered in one order.
//!
//! Genesis: migrating a store of format 3 (before the log) appends one `genesis` entry per
//! pin, in key order, and stamps the pin's history with it. A migration interrupted
//! part-way starts again from an empty log (format 3 has none), so it happens once.

use sled::transaction::TransactionalTree;

use super::records::{decode_pin, encode_pin};
use super::{corrupt, io, Trees, TxResult};
use crate::log::{self, Frontier, Hash, LogEntry, NodeId};
use crate::oci::{Repository, Tag};
use crate::store::{now_secs, StoreError};

pub(super) const HEAD_KEY: &[u8] = b"log_head";

fn node_key(id: NodeId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = id.level;
    k[1..].copy_from_slice(&id.index.to_be_bytes());
    k
}

fn decode_head(v: Option<&[u8]>) -> Result<Frontier, StoreError> {
    match v {
        None => Ok(Frontier::default()),
        Some(v) => Frontier::decode(v).ok_or_else(|| corrupt(HEAD_KEY, "not a log head")),
    }
}

/// The log's trees inside one transaction.
pub(super) struct TxLog<'a> {
    pub leaves: &'a TransactionalTree,
    pub nodes: &'a TransactionalTree,
    pub meta: &'a TransactionalTree,
}

impl TxLog<'_> {
    /// The head, as this transaction sees it.
    pub fn head(&self) -> TxResult<Frontier> {
        let v = self.meta.get(HEAD_KEY)?;
        decode_head(v.as_deref()).map_err(super::abort)
    }

    /// Append `entries` (numbered from `head.size()`) and write the new head.
    pub fn append(&self, head: &mut Frontier, entries: &[LogEntry]) -> TxResult<()> {
        let appended = log::append(head, entries);
        self.put(&appended, head)
    }

    /// Write entries appended (and hashed) beforehand, and `head`, the head after them.
    pub fn put(&self, appended: &log::Appended, head: &Frontier) -> TxResult<()> {
        for (index, leaf) in &appended.leaves {
            self.leaves.insert(&index.to_be_bytes(), leaf.as_slice())?;
        }
        for (id, hash) in &appended.nodes {
            self.nodes.insert(&node_key(*id), &hash[..])?;
        }
        self.meta.insert(HEAD_KEY, head.encode())?;
        Ok(())
    }
}

impl Trees {
    pub(super) fn log_head(&self) -> Result<Frontier, StoreError> {
        decode_head(self.meta.get(HEAD_KEY).map_err(io)?.as_deref())
    }

    pub(super) fn log_leaves(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        for item in self.log_leaves.range(start.to_be_bytes()..end.to_be_bytes()) {
            let (_, v) = item.map_err(io)?;
            out.push(v.to_vec());
        }
        Ok(out)
    }

    pub(super) fn log_nodes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError> {
        ids.iter()
            .map(|&id| {
                let key = node_key(id);
                let v = self.log_nodes.get(key).map_err(io)?;
                v.and_then(|v| <Hash>::try_from(v.as_ref()).ok())
                    .ok_or_else(|| corrupt(&key, "a subtree hash of the log is missing"))
            })
            .collect()
    }

    /// One `genesis` entry per pin, in key order; each pin's history is stamped with it.
    /// Not in one transaction (a store may hold millions of pins): idempotent instead,
    /// since it starts from an empty log.
    pub(super) fn genesis(&self) -> Result<u64, StoreError> {
        self.log_leaves.clear().map_err(io)?;
        self.log_nodes.clear().map_err(io)?;
        self.meta.remove(HEAD_KEY).map_err(io)?;
        let mut head = Frontier::default();
        let now = now_secs();
        for item in self.pins.iter() {
            let (k, v) = item.map_err(io)?;
            let mut pin = decode_pin(&k, &v)?;
            let text = std::str::from_utf8(&k).map_err(|e| corrupt(&k, e))?;
            let (r, t) = text.split_once('\0').ok_or_else(|| corrupt(&k, "no separator"))?;
            let repo = Repository::parse(r).map_err(|e| corrupt(&k, e))?;
            let tag = Tag::parse(t).map_err(|e| corrupt(&k, e))?;
            let entry = log::entry::genesis(&repo, &tag, &mut pin, now, head.size());
            let appended = log::append(&mut head, std::slice::from_ref(&entry));
            for (index, leaf) in appended.leaves {
                self.log_leaves.insert(index.to_be_bytes(), leaf).map_err(io)?;
            }
            for (id, hash) in appended.nodes {
                self.log_nodes.insert(node_key(id), &hash[..]).map_err(io)?;
            }
            self.pins.insert(&k, encode_pin(&pin)).map_err(io)?;
        }
        self.meta.insert(HEAD_KEY, head.encode()).map_err(io)?;
        Ok(head.size())
    }
}
