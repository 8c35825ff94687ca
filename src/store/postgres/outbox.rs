//! The webhook outbox in PostgreSQL ([`crate::store::Outbox`]), shared by every replica:
//! appends are serialised by a transaction advisory lock, so `seq` order is commit order
//! and no cursor can pass an event that commits later; a target's delivery is leased to
//! one replica at a time, by the database's clock.

use std::time::Duration;

use postgres::Transaction;

use super::tags::Write;
use super::{db, lock_key, PgStore};
use crate::oci::{Repository, Tag};
use crate::store::{
    Notifying, Outbox, OutboxEvent, OutboxStats, Refused, StoreError, TagRecord, Timer, WriteKind, MAX_REFUSALS,
};

/// The advisory lock key of outbox appends ("webhook" in ASCII).
const APPEND_LOCK: i64 = 0x77_6562_686f_6f6b;

const DB_NOW_MS: &str = "floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

fn corrupt(e: impl ToString) -> StoreError {
    StoreError::Corrupt {
        key: "webhook_events".into(),
        why: e.to_string(),
    }
}

/// Append `events` inside `tx` (see [`Outbox::outbox_append`]); the advisory lock is
/// held to the end of `tx`, so events are numbered in commit order.
fn append_in(
    tx: &mut Transaction<'_>,
    events: &[OutboxEvent],
    targets: &[String],
    max: u64,
) -> Result<u64, StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&APPEND_LOCK])
        .map_err(db)?;
    let mut head: i64 = tx.query_one("SELECT seq FROM webhook_head", &[]).map_err(db)?.get(0);
    for target in targets {
        // Free to lease at once, and in use (for the trim) from now.
        tx.execute(
            &format!(
                "INSERT INTO webhook_cursors (target, seq, lease_until) VALUES ($1, $2, {DB_NOW_MS})
                 ON CONFLICT (target) DO NOTHING"
            ),
            &[target, &head],
        )
        .map_err(db)?;
    }
    for e in events {
        let value = serde_json::to_value(e).expect("an event serialises");
        let added = tx
            .execute(
                "INSERT INTO webhook_events (seq, id, event) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
                &[&(head + 1), &e.id, &value],
            )
            .map_err(db)?;
        head += added as i64;
    }
    tx.execute("UPDATE webhook_head SET seq = $1", &[&head]).map_err(db)?;
    let keep_from = head - i64::try_from(max).unwrap_or(i64::MAX) + 1;
    tx.execute("DELETE FROM webhook_events WHERE seq < $1", &[&keep_from])
        .map_err(db)
}

/// Within a transition's transaction: append the events and set the timers `notify`
/// gives for the change just run.
pub(super) fn notify_in(tx: &mut Transaction<'_>, notify: &mut Notifying<'_>) -> Result<(), StoreError> {
    let events = (notify.events)();
    if !events.is_empty() {
        notify.dropped = append_in(tx, &events, notify.targets, notify.max)?;
    }
    for timer in (notify.timers)() {
        schedule_in(tx, &timer)?;
    }
    Ok(())
}

fn schedule_in<C: postgres::GenericClient>(c: &mut C, timer: &Timer) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO webhook_timers (key, at_ms, payload) VALUES ($1, $2, $3)
         ON CONFLICT (key) DO UPDATE SET at_ms = EXCLUDED.at_ms, payload = EXCLUDED.payload",
        &[&timer.key, &(timer.at_ms as i64), &timer.payload],
    )
    .map_err(db)?;
    Ok(())
}

/// Keep a refused attempt among the tag's last [`MAX_REFUSALS`].
pub(super) fn insert_refusal(
    tx: &mut Transaction<'_>,
    repo: &Repository,
    tag: &Tag,
    refused: &Refused,
) -> Result<(), StoreError> {
    let record = serde_json::to_value(refused).expect("serialising a refusal cannot fail");
    tx.execute(
        "INSERT INTO refused (repository, tag, record) VALUES ($1, $2, $3)",
        &[&repo.as_str(), &tag.as_str(), &record],
    )
    .map_err(db)?;
    tx.execute(
        "DELETE FROM refused WHERE repository = $1 AND tag = $2 AND id NOT IN
         (SELECT id FROM refused WHERE repository = $1 AND tag = $2 ORDER BY id DESC LIMIT $3)",
        &[&repo.as_str(), &tag.as_str(), &(MAX_REFUSALS as i64)],
    )
    .map_err(db)?;
    Ok(())
}

impl PgStore {
    /// [`crate::store::PinStore::write_notifying`]: the transition, its events and its
    /// timers in one transaction.
    pub(super) fn write_notifying_records(
        &self,
        kind: WriteKind<'_>,
        repo: &Repository,
        tags: &[Tag],
        change: &mut dyn FnMut(u64, &mut [TagRecord]),
        notify: &mut Notifying<'_>,
    ) -> Result<Vec<TagRecord>, StoreError> {
        let how = match kind {
            WriteKind::Durable => Write::default(),
            WriteKind::Protecting(refs) => Write {
                durable: true,
                refs: Some(refs),
            },
            WriteKind::Settling => Write {
                durable: false,
                refs: None,
            },
        };
        let written = self.update_records(repo, tags, how, change, Some(notify));
        self.evict(tags.iter().map(|t| lock_key(repo, t)));
        written
    }
}

impl Outbox for PgStore {
    fn outbox_append(&self, events: &[OutboxEvent], targets: &[String], max: u64) -> Result<u64, StoreError> {
        let mut c = self.client()?;
        let mut tx = c.transaction().map_err(db)?;
        let dropped = append_in(&mut tx, events, targets, max)?;
        tx.commit().map_err(db)?;
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
        let mut keys = vec![lock_key(repo, tag)];
        self.with_locks(&mut keys, true, |tx| {
            insert_refusal(tx, repo, tag, refused)?;
            append_in(tx, events, targets, max)
        })
    }

    fn outbox_lease(&self, target: &str, holder: &str, ttl: Duration) -> Result<Option<u64>, StoreError> {
        let mut c = self.client()?;
        let ttl = ttl.as_millis() as i64;
        c.execute(
            &format!(
                "INSERT INTO webhook_cursors (target, seq, lease_until) SELECT $1, seq, {DB_NOW_MS} FROM webhook_head
                 ON CONFLICT (target) DO NOTHING"
            ),
            &[&target],
        )
        .map_err(db)?;
        let row = c
            .query_opt(
                &format!(
                    "UPDATE webhook_cursors SET holder = $2, lease_until = {DB_NOW_MS} + $3
                     WHERE target = $1 AND (holder = $2 OR lease_until <= {DB_NOW_MS}) RETURNING seq"
                ),
                &[&target, &holder, &ttl],
            )
            .map_err(db)?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64))
    }

    fn outbox_after(&self, seq: u64, limit: usize) -> Result<Vec<(u64, OutboxEvent)>, StoreError> {
        let mut c = self.client()?;
        let rows = c
            .query(
                "SELECT seq, event FROM webhook_events WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&(seq as i64), &(limit as i64)],
            )
            .map_err(db)?;
        rows.into_iter()
            .map(|r| {
                let v: serde_json::Value = r.get(1);
                Ok((r.get::<_, i64>(0) as u64, serde_json::from_value(v).map_err(corrupt)?))
            })
            .collect()
    }

    fn outbox_ack(&self, target: &str, holder: &str, seq: u64, ttl: Duration) -> Result<bool, StoreError> {
        let mut c = self.client()?;
        let n = c
            .execute(
                &format!(
                    "UPDATE webhook_cursors SET seq = GREATEST(seq, $3), lease_until = {DB_NOW_MS} + $4
                     WHERE target = $1 AND holder = $2"
                ),
                &[&target, &holder, &(seq as i64), &(ttl.as_millis() as i64)],
            )
            .map_err(db)?;
        Ok(n == 1)
    }

    fn outbox_trim(&self, targets: &[String], in_use: Duration) -> Result<OutboxStats, StoreError> {
        let mut c = self.client()?;
        let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
        let in_use = in_use.as_millis() as i64;
        let row = c
            .query_one(
                &format!(
                    "SELECT h.seq, LEAST(h.seq, (SELECT MIN(seq) FROM webhook_cursors
                        WHERE target = ANY($1) OR lease_until > {DB_NOW_MS} - $2))
                     FROM webhook_head h"
                ),
                &[&targets, &in_use],
            )
            .map_err(db)?;
        let (head, done): (i64, i64) = (row.get(0), row.get(1));
        c.execute("DELETE FROM webhook_events WHERE seq <= $1", &[&done])
            .map_err(db)?;
        // The first left: events before it may have been dropped to keep the outbox in
        // bounds.
        let first = c
            .query_opt(
                "SELECT seq, event FROM webhook_events WHERE seq > $1 ORDER BY seq LIMIT 1",
                &[&done],
            )
            .map_err(db)?;
        let Some(first) = first else {
            return Ok(OutboxStats::default());
        };
        let seq: i64 = first.get(0);
        let oldest = serde_json::from_value::<OutboxEvent>(first.get(1))
            .ok()
            .map(|e| e.time_ms);
        Ok(OutboxStats {
            pending: (head - seq + 1).max(0) as u64,
            oldest_ms: oldest,
        })
    }

    fn outbox_schedule(&self, timer: &Timer) -> Result<(), StoreError> {
        let mut c = self.client()?;
        schedule_in(&mut *c, timer)
    }

    fn outbox_due(&self, now_ms: u64, limit: usize) -> Result<Vec<Timer>, StoreError> {
        let mut c = self.client()?;
        let rows = c
            .query(
                "SELECT key, at_ms, payload FROM webhook_timers WHERE at_ms <= $1 ORDER BY at_ms LIMIT $2",
                &[&(now_ms as i64), &(limit as i64)],
            )
            .map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|r| Timer {
                key: r.get(0),
                at_ms: r.get::<_, i64>(1) as u64,
                payload: r.get(2),
            })
            .collect())
    }

    fn outbox_unschedule(&self, key: &str) -> Result<bool, StoreError> {
        let mut c = self.client()?;
        let n = c
            .execute("DELETE FROM webhook_timers WHERE key = $1", &[&key])
            .map_err(db)?;
        Ok(n == 1)
    }
}
