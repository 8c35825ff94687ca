//! The webhook outbox in sled ([`crate::store::Outbox`]): trees `webhook_events` (`seq`
//! → event), `webhook_ids` (event id → `seq`), `webhook_cursors` (target → cursor, plus
//! the outbox's first and last `seq`) and `webhook_timers`. One process holds a sled
//! store, so a lease is always granted; the cursor's holder is kept all the same.

use std::time::Duration;

use sled::transaction::{TransactionError, Transactional, TransactionalTree};

use super::keys::{abort, io, settle, tag_key, TxResult};
use super::push_refusal;
use super::SledStore;
use crate::oci::{Repository, Tag};
use crate::store::{now_millis, Notifying, Outbox, OutboxEvent, OutboxStats, Refused, StoreError, Timer};

const HEAD: &[u8] = b"\0head";
const TAIL: &[u8] = b"\0tail";

#[derive(serde::Serialize, serde::Deserialize)]
struct Cursor {
    seq: u64,
    holder: String,
    until_ms: u64,
}

#[derive(Clone)]
pub(super) struct OutboxTrees {
    pub(super) events: sled::Tree,
    pub(super) ids: sled::Tree,
    pub(super) cursors: sled::Tree,
    pub(super) timers: sled::Tree,
    db: sled::Db,
}

impl OutboxTrees {
    pub(super) fn open(db: &sled::Db) -> Result<Self, StoreError> {
        let tree = |name: &str| db.open_tree(name).map_err(io);
        Ok(Self {
            events: tree("webhook_events")?,
            ids: tree("webhook_ids")?,
            cursors: tree("webhook_cursors")?,
            timers: tree("webhook_timers")?,
            db: db.clone(),
        })
    }
}

/// Within a transition's transaction: append the events and set the timers `notify`
/// gives for the change just run; whether anything was written.
pub(super) fn notify_tx(
    (ev, ids, cur, timers): (
        &TransactionalTree,
        &TransactionalTree,
        &TransactionalTree,
        &TransactionalTree,
    ),
    notify: &mut Notifying<'_>,
) -> TxResult<bool> {
    let events = (notify.events)();
    let set = (notify.timers)();
    if !events.is_empty() {
        notify.dropped = append_tx(ev, ids, cur, &events, notify.targets, notify.max)?;
    }
    for timer in &set {
        timers.insert(
            timer.key.as_bytes(),
            serde_json::to_vec(timer).expect("a timer serialises"),
        )?;
    }
    Ok(!events.is_empty() || !set.is_empty())
}

fn bad(key: &str, e: impl ToString) -> StoreError {
    StoreError::Corrupt {
        key: key.to_owned(),
        why: e.to_string(),
    }
}

fn tx_err(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => io(e),
    }
}

fn number(tree: &TransactionalTree, key: &[u8]) -> TxResult<u64> {
    Ok(tree
        .get(key)?
        .map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])))
        .unwrap_or(0))
}

fn cursor(tree: &TransactionalTree, target: &str) -> TxResult<Option<Cursor>> {
    match tree.get(target.as_bytes())? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| abort(bad(target, e))),
    }
}

fn put_cursor(tree: &TransactionalTree, target: &str, c: &Cursor) -> TxResult<()> {
    tree.insert(target.as_bytes(), serde_json::to_vec(c).expect("a cursor serialises"))?;
    Ok(())
}

/// Remove events `from..=to` and their ids.
fn remove_range(events: &TransactionalTree, ids: &TransactionalTree, from: u64, to: u64) -> TxResult<()> {
    for seq in from..=to {
        if let Some(v) = events.remove(&seq.to_be_bytes())? {
            if let Ok(e) = serde_json::from_slice::<OutboxEvent>(&v) {
                ids.remove(e.id.as_bytes())?;
            }
        }
    }
    Ok(())
}

/// Append `events` within a transaction (see [`Outbox::outbox_append`]).
fn append_tx(
    ev: &TransactionalTree,
    ids: &TransactionalTree,
    cur: &TransactionalTree,
    events: &[OutboxEvent],
    targets: &[String],
    max: u64,
) -> TxResult<u64> {
    let mut head = number(cur, HEAD)?;
    let mut tail = number(cur, TAIL)?.max(1);
    for target in targets {
        if cursor(cur, target)?.is_none() {
            // Free to lease at once, and in use (for the trim) from now.
            let c = Cursor {
                seq: head,
                holder: String::new(),
                until_ms: now_millis(),
            };
            put_cursor(cur, target, &c)?;
        }
    }
    for e in events {
        if ids.get(e.id.as_bytes())?.is_some() {
            continue;
        }
        head += 1;
        ev.insert(&head.to_be_bytes(), serde_json::to_vec(e).expect("an event serialises"))?;
        ids.insert(e.id.as_bytes(), &head.to_be_bytes())?;
    }
    let mut dropped = 0;
    if head >= tail && head - tail + 1 > max {
        let last = head - max;
        remove_range(ev, ids, tail, last)?;
        dropped = last - tail + 1;
        tail = last + 1;
    }
    cur.insert(HEAD, &head.to_be_bytes())?;
    cur.insert(TAIL, &tail.to_be_bytes())?;
    Ok(dropped)
}

impl SledStore {
    fn outbox_trees(&self) -> Result<OutboxTrees, StoreError> {
        Ok(self.trees()?.outbox.clone())
    }
}

impl Outbox for SledStore {
    fn outbox_append(&self, events: &[OutboxEvent], targets: &[String], max: u64) -> Result<u64, StoreError> {
        let t = self.outbox_trees()?;
        let dropped = (&t.events, &t.ids, &t.cursors)
            .transaction(|(ev, ids, cur)| append_tx(ev, ids, cur, events, targets, max))
            .map_err(tx_err)?;
        t.db.flush().map_err(io)?;
        Ok(dropped)
    }

    fn record_refusal_notifying(
        &self,
        repo: &Repository,
        tag: &Tag,
        refused: &Refused,
        events: &[OutboxEvent],
        targets: &[String],
        max: u64,
    ) -> Result<u64, StoreError> {
        let store = self.trees()?;
        let t = self.outbox_trees()?;
        let key = tag_key(repo, tag);
        let result = (&store.refused, &t.events, &t.ids, &t.cursors).transaction(|(rf, ev, ids, cur)| {
            push_refusal(rf, &key, refused)?;
            append_tx(ev, ids, cur, events, targets, max)
        });
        let dropped = settle(result)?;
        self.flush_write(&store)?;
        Ok(dropped)
    }

    fn outbox_lease(&self, target: &str, holder: &str, ttl: Duration) -> Result<Option<u64>, StoreError> {
        let t = self.outbox_trees()?;
        let now = now_millis();
        t.cursors
            .transaction(|cur| {
                let c = match cursor(cur, target)? {
                    Some(c) if c.holder != holder && c.until_ms > now => return Ok(None),
                    Some(c) => c,
                    None => Cursor {
                        seq: number(cur, HEAD)?,
                        holder: String::new(),
                        until_ms: 0,
                    },
                };
                let seq = c.seq;
                put_cursor(
                    cur,
                    target,
                    &Cursor {
                        seq,
                        holder: holder.to_owned(),
                        until_ms: now + ttl.as_millis() as u64,
                    },
                )?;
                Ok(Some(seq))
            })
            .map_err(tx_err)
    }

    fn outbox_after(&self, seq: u64, limit: usize) -> Result<Vec<(u64, OutboxEvent)>, StoreError> {
        let t = self.outbox_trees()?;
        let mut out = Vec::new();
        for item in t.events.range((seq + 1).to_be_bytes()..).take(limit) {
            let (k, v) = item.map_err(io)?;
            let n = u64::from_be_bytes(k.as_ref().try_into().map_err(|e| bad("webhook_events", e))?);
            out.push((n, serde_json::from_slice(&v).map_err(|e| bad("webhook_events", e))?));
        }
        Ok(out)
    }

    fn outbox_ack(&self, target: &str, holder: &str, seq: u64, ttl: Duration) -> Result<bool, StoreError> {
        let t = self.outbox_trees()?;
        let now = now_millis();
        t.cursors
            .transaction(|cur| match cursor(cur, target)? {
                Some(c) if c.holder == holder => {
                    put_cursor(
                        cur,
                        target,
                        &Cursor {
                            seq: seq.max(c.seq),
                            holder: c.holder,
                            until_ms: now + ttl.as_millis() as u64,
                        },
                    )?;
                    Ok(true)
                }
                _ => Ok(false),
            })
            .map_err(tx_err)
    }

    fn outbox_trim(&self, targets: &[String], in_use: Duration) -> Result<OutboxStats, StoreError> {
        let t = self.outbox_trees()?;
        // Cursors in use, read before the transaction: one created since is at the head
        // of its time, never before what these hold.
        let since = now_millis().saturating_sub(in_use.as_millis() as u64);
        let mut in_use_min = u64::MAX;
        for item in t.cursors.iter() {
            let (k, v) = item.map_err(io)?;
            if k.starts_with(b"\0") {
                continue;
            }
            let c: Cursor = serde_json::from_slice(&v).map_err(|e| bad("webhook_cursors", e))?;
            if c.until_ms > since {
                in_use_min = in_use_min.min(c.seq);
            }
        }
        let (done, head) = (&t.events, &t.ids, &t.cursors)
            .transaction(|(ev, ids, cur)| {
                let head = number(cur, HEAD)?;
                let tail = number(cur, TAIL)?.max(1);
                let mut done = head.min(in_use_min);
                for target in targets {
                    if let Some(c) = cursor(cur, target)? {
                        done = done.min(c.seq);
                    }
                }
                if done >= tail {
                    remove_range(ev, ids, tail, done)?;
                    cur.insert(TAIL, &(done + 1).to_be_bytes())?;
                }
                // Events before the tail were dropped to keep the outbox in bounds.
                Ok((done.max(tail - 1), head))
            })
            .map_err(tx_err)?;
        let oldest_ms = match t.events.get((done + 1).to_be_bytes()).map_err(io)? {
            Some(v) => serde_json::from_slice::<OutboxEvent>(&v).ok().map(|e| e.time_ms),
            None => None,
        };
        Ok(OutboxStats {
            pending: head - done,
            oldest_ms,
        })
    }

    fn outbox_schedule(&self, timer: &Timer) -> Result<(), StoreError> {
        let t = self.outbox_trees()?;
        t.timers
            .insert(
                timer.key.as_bytes(),
                serde_json::to_vec(timer).expect("a timer serialises"),
            )
            .map_err(io)?;
        t.db.flush().map_err(io)?;
        Ok(())
    }

    fn outbox_due(&self, now_ms: u64, limit: usize) -> Result<Vec<Timer>, StoreError> {
        let t = self.outbox_trees()?;
        let mut due = Vec::new();
        for item in t.timers.iter() {
            let (_, v) = item.map_err(io)?;
            let timer: Timer = serde_json::from_slice(&v).map_err(|e| bad("webhook_timers", e))?;
            if timer.at_ms <= now_ms {
                due.push(timer);
            }
        }
        due.sort_by_key(|t| t.at_ms);
        due.truncate(limit);
        Ok(due)
    }

    fn outbox_unschedule(&self, key: &str) -> Result<bool, StoreError> {
        let t = self.outbox_trees()?;
        Ok(t.timers.remove(key.as_bytes()).map_err(io)?.is_some())
    }
}
