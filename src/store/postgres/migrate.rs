//! The PostgreSQL schema: versioned migrations as plain SQL files beside this one,
//! applied in order at start, one replica at a time; and the check, at the first
//! connection, that tagpin's session settings took effect.

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
    include_str!("migrations/0006_webhook_outbox.sql"),
];

/// The version that starts the history log: its migration also appends a `genesis`
/// entry for every pin already held, in the same transaction.
const LOG_VERSION: i32 = 5;

/// The advisory lock key that serialises migrations across replicas ("tagpin" in ASCII).
const MIGRATION_LOCK: i64 = 0x7461_6770_696e;

/// Refuse a session whose commits may be lost. tagpin asks for `synchronous_commit = on`
/// in its startup options, which outrank the server's, the database's and the role's
/// settings; finding `off` means something between tagpin and the server dropped them
/// (a pooler told to ignore the `options` startup parameter, say). With `off` a database
/// crash can lose a committed claim or pin after tagpin answered, and a tag could move:
/// fail closed, as when the database cannot be reached.
pub(super) fn check_session(c: &mut Client) -> Result<(), StoreError> {
    let setting: String = c.query_one("SHOW synchronous_commit", &[]).map_err(db)?.get(0);
    durable(&setting)
}

fn durable(synchronous_commit: &str) -> Result<(), StoreError> {
    if synchronous_commit == "off" {
        return Err(StoreError::Unavailable(
            "database: synchronous_commit is off in tagpin's session although tagpin asks for on in its startup \
             options (does a pooler between them drop the options parameter?); a crash could lose a committed pin, \
             so the store is not used"
                .into(),
        ));
    }
    Ok(())
}

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

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_session_that_waits_for_its_wal_flush_is_used() {
        for ok in ["on", "local", "remote_write", "remote_apply"] {
            assert!(super::durable(ok).is_ok(), "{ok}");
        }
        let e = super::durable("off").unwrap_err().to_string();
        assert!(e.contains("synchronous_commit is off") && !e.contains('\n'), "{e}");
    }
}
