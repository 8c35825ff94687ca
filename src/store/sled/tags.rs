//! A tag's record in the sled backend: its pin, writes in flight, release and the
//! history of a tag with no pin yet, kept in four trees under one key and read and
//! changed together in one transaction, with the `by_digest` index following every
//! change; and the views built from them (listing, holders).

use crate::store::{Notifying, WriteKind};
use std::cell::RefCell;

use sled::transaction::TransactionalTree;
use sled::Transactional;

use super::log::TxLog;
use super::records::{decode_notes, decode_pin_digest, decode_release, encode_notes, encode_release};
use super::{
    abort, corrupt, decode_pin, decode_writes, encode_pin, encode_writes, io, repo_prefix, settle, tag_key, under,
    SledStore, TxResult,
};
use crate::log::entry;
use crate::oci::{Digest, Repository, Tag};
use crate::store::{now_secs, ReadView, StoreError, TagRecord, TagState};

/// The trees of a tag's record, inside one transaction.
pub(super) struct TxTrees<'a> {
    pub pins: &'a TransactionalTree,
    pub claims: &'a TransactionalTree,
    pub releases: &'a TransactionalTree,
    pub notes: &'a TransactionalTree,
    /// `None` where only reading.
    pub index: Option<&'a TransactionalTree>,
}

impl TxTrees<'_> {
    pub(super) fn read(&self, key: &[u8]) -> TxResult<TagRecord> {
        let pin = match self.pins.get(key)? {
            Some(v) => Some(decode_pin(key, &v).map_err(abort)?),
            None => None,
        };
        let writes = match self.claims.get(key)? {
            Some(v) => decode_writes(key, &v).map_err(abort)?,
            None => Vec::new(),
        };
        let release = match self.releases.get(key)? {
            Some(v) => Some(decode_release(key, &v).map_err(abort)?),
            None => None,
        };
        let history = match self.notes.get(key)? {
            Some(v) => decode_notes(key, &v).map_err(abort)?,
            None => Vec::new(),
        };
        Ok(TagRecord {
            pin,
            writes,
            release,
            history,
        })
    }

    /// Write the parts of `after` that differ from `before` (what the tag holds now), and
    /// move the tag's index entries from the digests it no longer holds to the new ones.
    pub(super) fn write(&self, repo: &Repository, tag: &Tag, before: &TagRecord, after: &TagRecord) -> TxResult<()> {
        let key = tag_key(repo, tag);
        if before.pin != after.pin {
            put(self.pins, &key, after.pin.as_ref().map(encode_pin))?;
        }
        if before.writes != after.writes {
            put(
                self.claims,
                &key,
                (!after.writes.is_empty()).then(|| encode_writes(&after.writes)),
            )?;
        }
        if before.release != after.release {
            put(self.releases, &key, after.release.as_ref().map(encode_release))?;
        }
        if before.history != after.history {
            put(
                self.notes,
                &key,
                (!after.history.is_empty()).then(|| encode_notes(&after.history)),
            )?;
        }
        let index = self.index.expect("a write transaction includes the index");
        let (old, new) = (before.digests(), after.digests());
        for gone in old.difference(&new) {
            index.remove(index_key(repo, gone, tag))?;
        }
        for added in new.difference(&old) {
            index.insert(index_key(repo, added, tag), &[][..])?;
        }
        Ok(())
    }
}

/// Store `value` under `key`, or remove the key when there is none.
fn put(tree: &TransactionalTree, key: &[u8], value: Option<Vec<u8>>) -> TxResult<()> {
    match value {
        Some(v) => tree.insert(key, v)?,
        None => tree.remove(key)?,
    };
    Ok(())
}

fn index_key(repo: &Repository, digest: &Digest, tag: &Tag) -> Vec<u8> {
    under(super::digest_key(repo, digest), tag.as_str())
}

impl SledStore {
    pub(super) fn read_record(&self, repo: &Repository, tag: &Tag) -> Result<TagRecord, StoreError> {
        let t = self.trees()?;
        let key = tag_key(repo, tag);
        // In a transaction: reading the trees one by one could see a pin already moved and
        // the write that moved it still there, or neither.
        let result = (&t.pins, &t.claims, &t.releases, &t.notes).transaction(|(pins, claims, releases, notes)| {
            TxTrees {
                pins,
                claims,
                releases,
                notes,
                index: None,
            }
            .read(&key)
        });
        settle(result)
    }

    /// [`crate::store::PinStore::read_view`], without a transaction: sled runs one at a
    /// time, and a read per manifest pull must not queue behind the writes. Two trees read
    /// apart can disagree only about a write that settled in between; a view that shows
    /// neither pin nor write is then the read's cue to adopt, which is itself atomic and
    /// finds the pin (`pinning::adopt_on_read`), so no answer can contradict a pin.
    pub(super) fn read_view_now(&self, repo: &Repository, tag: &Tag) -> Result<ReadView, StoreError> {
        let t = self.trees()?;
        let key = tag_key(repo, tag);
        let pin = match t.pins.get(&key).map_err(io)? {
            Some(v) => Some(decode_pin_digest(&key, &v)?),
            None => None,
        };
        let writes = match t.claims.get(&key).map_err(io)? {
            Some(v) => Some(decode_writes(&key, &v)?),
            None => None,
        };
        Ok(ReadView {
            reserved: writes.as_deref().and_then(|w| crate::store::reserved(pin.is_some(), w)),
            pin,
            in_flight: writes.is_some(),
        })
    }

    /// [`crate::store::PinStore::update`]. sled runs one transaction at a time, so the
    /// closure's retry on conflict does not happen in practice; it would start again from
    /// records read afresh if it did. Of a tag named twice, the last copy is written.
    pub(super) fn update_records(
        &self,
        repo: &Repository,
        tags: &[Tag],
        change: &mut dyn FnMut(u64, &mut [TagRecord]),
    ) -> Result<Vec<TagRecord>, StoreError> {
        let (after, t) = self.write_records(repo, tags, change, None)?;
        if let Some(t) = t {
            // Durable before the caller acts on it: nothing is forwarded under a write
            // record that may not be on disk.
            self.flush_write(&t)?;
        }
        Ok(after)
    }

    /// [`crate::store::PinStore::write_notifying`]: written as `kind` says (a settling
    /// write is not flushed, as [`crate::store::PinStore::confirm`]).
    pub(super) fn write_notifying_records(
        &self,
        kind: WriteKind<'_>,
        repo: &Repository,
        tags: &[Tag],
        change: &mut dyn FnMut(u64, &mut [TagRecord]),
        notify: &mut Notifying<'_>,
    ) -> Result<Vec<TagRecord>, StoreError> {
        use crate::store::PinStore as _;
        if let WriteKind::Protecting(refs) = kind {
            let how = crate::store::Protect {
                durable: false,
                complete: refs.complete,
            };
            self.protect(repo, &refs.holder, &refs.refs, how)?;
        }
        let settling = matches!(kind, WriteKind::Settling);
        let _gate = if settling { None } else { Some(self.gate.shared()?) };
        let (after, t) = self.write_records(repo, tags, change, Some(notify))?;
        if let (Some(t), false) = (t, settling) {
            self.flush_write(&t)?;
        }
        Ok(after)
    }

    /// Apply `change` in one transaction, without a flush, with the events and timers
    /// `notify` gives for it; the database written to, when anything was (held, so it
    /// cannot be reopened before the caller flushes it).
    pub(super) fn write_records(
        &self,
        repo: &Repository,
        tags: &[Tag],
        change: &mut dyn FnMut(u64, &mut [TagRecord]),
        notify: Option<&mut Notifying<'_>>,
    ) -> Result<(Vec<TagRecord>, Option<std::sync::Arc<super::Trees>>), StoreError> {
        let t = self.trees()?;
        let keys: Vec<Vec<u8>> = tags.iter().map(|tag| tag_key(repo, tag)).collect();
        // sled's transaction takes an `Fn`; the change runs once per attempt.
        let change = RefCell::new(change);
        let notify = RefCell::new(notify);
        let o = &t.outbox;
        let trees = (
            &t.pins,
            &t.claims,
            &t.releases,
            &t.notes,
            &t.by_digest,
            &t.log_leaves,
            &t.log_nodes,
            &t.meta,
            &o.events,
            &o.ids,
            &o.cursors,
            &o.timers,
        );
        let result = trees.transaction(
            |(pins, claims, releases, notes, index, leaves, nodes, meta, ev, ids, cur, tim)| {
                let tx = TxTrees {
                    pins,
                    claims,
                    releases,
                    notes,
                    index: Some(index),
                };
                let log = TxLog { leaves, nodes, meta };
                let before = keys.iter().map(|k| tx.read(k)).collect::<TxResult<Vec<_>>>()?;
                let mut after = before.clone();
                (*change.borrow_mut())(now_secs(), &mut after);
                let mut changed = false;
                let mut head = None;
                let mut entries = Vec::new();
                for i in crate::store::to_write(tags, &before, &after) {
                    crate::store::check_writes(repo, &tags[i], &after[i]).map_err(abort)?;
                    // The log's entries for this change, numbered after the head, in this
                    // same transaction.
                    let next = if entry::count(&before[i], &after[i]) > 0 {
                        let head = match &mut head {
                            Some(h) => h,
                            None => head.insert(log.head()?),
                        };
                        head.size() + entries.len() as u64
                    } else {
                        0
                    };
                    entries.extend(entry::bindings(repo, &tags[i], &before[i], &mut after[i], next).map_err(abort)?);
                    tx.write(repo, &tags[i], &before[i], &after[i])?;
                    changed = true;
                }
                if let Some(head) = &mut head {
                    log.append(head, &entries)?;
                }
                if let Some(n) = notify.borrow_mut().as_deref_mut() {
                    changed |= super::outbox::notify_tx((ev, ids, cur, tim), n)?;
                }
                Ok((after, changed))
            },
        );
        let (after, changed) = settle(result)?;
        Ok((after, changed.then_some(t)))
    }

    /// The distinct digests of `repo`'s records, from the index, in byte order.
    pub(super) fn digests_held(&self, repo: &Repository) -> Result<Vec<Digest>, StoreError> {
        let t = self.trees()?;
        let prefix = repo_prefix(repo);
        let mut out: Vec<Digest> = Vec::new();
        for key in t.by_digest.scan_prefix(&prefix).keys() {
            let key = key.map_err(io)?;
            let digest = std::str::from_utf8(&key[prefix.len()..])
                .ok()
                .and_then(|rest| rest.split_once('\0'))
                .and_then(|(d, _)| Digest::parse(d).ok())
                .ok_or_else(|| corrupt(&key, "not repo, digest and tag"))?;
            // Keys are sorted, so the tags of one digest are next to each other.
            if out.last() != Some(&digest) {
                out.push(digest);
            }
        }
        Ok(out)
    }

    pub(super) fn list_states(
        &self,
        repo: Option<&Repository>,
        after: Option<&(Repository, Tag)>,
        limit: usize,
    ) -> Result<Vec<(Repository, Tag, TagState)>, StoreError> {
        let t = self.trees()?;
        let prefix = repo.map(repo_prefix).unwrap_or_default();
        let start = match after {
            Some((r, tag)) => {
                let mut k = tag_key(r, tag);
                k.push(0); // the smallest key after it
                k
            }
            None => prefix.clone(),
        };
        let parse_key = |k: &[u8]| -> Result<(Repository, Tag), StoreError> {
            let text = std::str::from_utf8(k).map_err(|e| corrupt(k, e))?;
            let (r, tg) = text.split_once('\0').ok_or_else(|| corrupt(k, "no separator"))?;
            Ok((
                Repository::parse(r).map_err(|e| corrupt(k, e))?,
                Tag::parse(tg).map_err(|e| corrupt(k, e))?,
            ))
        };
        // Pins and writes are two trees in the same key order: merge them, a key at a time.
        let mut pins = t.pins.range(start.clone()..).peekable();
        let mut claims = t.claims.range(start..).peekable();
        let mut out = Vec::with_capacity(limit.min(1024));
        while out.len() < limit {
            let next_pin = pins
                .peek()
                .map(|r| r.as_ref().map(|(k, _)| k.clone()).map_err(|e| io(e.clone())));
            let next_claim = claims
                .peek()
                .map(|r| r.as_ref().map(|(k, _)| k.clone()).map_err(|e| io(e.clone())));
            let key = match (next_pin.transpose()?, next_claim.transpose()?) {
                (None, None) => break,
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (Some(a), Some(b)) => a.min(b),
            };
            if !key.starts_with(&prefix) {
                break;
            }
            let mut record = TagRecord::default();
            if let Some(Ok((k, _))) = pins.peek() {
                if *k == key {
                    let (k, v) = pins.next().expect("peeked").map_err(io)?;
                    record.pin = Some(decode_pin(&k, &v)?);
                }
            }
            if let Some(Ok((k, _))) = claims.peek() {
                if *k == key {
                    let (k, v) = claims.next().expect("peeked").map_err(io)?;
                    record.writes = decode_writes(&k, &v)?;
                }
            }
            let (r, tag) = parse_key(&key)?;
            if let Some(state) = record.state() {
                out.push((r, tag, state));
            }
        }
        Ok(out)
    }
}
