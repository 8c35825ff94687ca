//! The PostgreSQL schema: versioned migrations as plain SQL files beside this one,
//! applied in order at start, one replica at a time.

use postgres::Client;

use super::db;
use crate::store::StoreError;

/// Versioned migrations, applied in order; the version is the index plus one.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_writes_per_request.sql"),
    include_str!("migrations/0003_tag_notes.sql"),
    include_str!("migrations/0004_notify_triggers.sql"),
    include_str!("migrations/0005_log.sql"),
];

/// The version that starts the history log: its migration also appends a `genesis`
/// entry for every pin already held, in the same transaction.
const LOG_VERSION: i32 = 5;

/// The advisory lock key that serialises migrations across replicas ("tagpin" in ASCII).
const MIGRATION_LOCK: i64 = 0x7461_6770_696e;

/// Apply the migrations this database lacks, under a session advisory lock so replicas
/// starting together apply each once. A database holding a newer schema than this tagpin
/// knows is refused.
pub(super) fn migrate(c: &mut Client) -> Result<(), StoreError> {
    c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .map_err(db)?;
    let result = (|| {
        c.batch_execute(
            "CREATE TABLE IF NOT EXISTS tagpin_schema (version INT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .map_err(db)?;
        let current: i32 = c
            .query_one("SELECT COALESCE(MAX(version), 0) FROM tagpin_schema", &[])
            .map_err(db)?
            .get(0);
        let known = MIGRATIONS.len() as i32;
        if current > known {
            return Err(StoreError::Corrupt {
                key: "tagpin_schema".into(),
                why: format!(
                    "the database holds schema version {current}, this tagpin knows up to {known}: upgrade tagpin"
                ),
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let version = i as i32 + 1;
            let mut tx = c.transaction().map_err(db)?;
            tx.batch_execute(sql).map_err(db)?;
            if version == LOG_VERSION {
                tx.execute("SELECT set_config('tagpin.log', 'on', true)", &[])
                    .map_err(db)?;
                let entries = super::log::genesis(&mut tx)?;
                if entries > 0 {
                    tracing::info!(
                        entries,
                        "history log started: one genesis entry per pin bound before the log existed"
                    );
                }
            }
            tx.execute(
                "INSERT INTO tagpin_schema (version, applied_at) VALUES ($1, $2)",
                &[&version, &(crate::store::now_secs() as i64)],
            )
            .map_err(db)?;
            tx.commit().map_err(db)?;
            tracing::info!(version, "database schema migrated");
        }
        Ok(())
    })();
    let _ = c.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    result
}
