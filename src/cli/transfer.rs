//! `tagpin export` and `tagpin import [FILE|-]`: every pin with its history and refused
//! attempts as JSON lines (one [`Exported`] record a line), for backups and moving tagpin
//! to a new data dir.
//!
//! Online, they call `GET /admin/v1/export` and `POST /admin/v1/import`. With
//! `--data-dir`, they open the sled store directly, for a tagpin that is not running
//! (restoring a backup before the first start); a running tagpin holds the data dir's
//! lock, and the store refuses a second opener rather than let two disagree. With
//! `--database-url`, they work on a PostgreSQL store (moving from sled to PostgreSQL:
//! export from the data dir, import into the database).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use clap::Args;
use http::Method;
use serde_json::Value;

use super::client::{AdminArgs, CliError, Client, Lines, EXIT_FOUND, EXIT_OK};
use crate::store::{ExportReader, Exported, ImportError, ImportOutcome, PinStore, SledStore, StoreError};

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 exported; 2 on any error (the data dir is in use by a running tagpin, \
                        the admin API cannot be reached, the stream was cut)."
)]
pub struct ExportArgs {
    /// Read the store in DIR directly instead of calling the admin API (tagpin must not
    /// be running on it).
    #[arg(long, value_name = "DIR", conflicts_with = "database_url")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 imported; 1 some records conflict with pins already held (a different \
                        digest, or a push in flight), and nothing was written; 2 on any other error."
)]
pub struct ImportArgs {
    /// JSON lines as `tagpin export` writes them; `-` or nothing for standard input.
    #[arg(value_name = "FILE|-")]
    pub file: Option<PathBuf>,
    /// Write to the store in DIR directly instead of calling the admin API (tagpin must
    /// not be running on it; the directory is created when missing).
    #[arg(long, value_name = "DIR", conflicts_with = "database_url")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The result as one JSON object, for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// A PostgreSQL store to export from or import into directly.
#[derive(Debug, Clone, Default, Args)]
pub struct DatabaseArgs {
    /// Work on the PostgreSQL store at this URL instead of calling the admin API.
    #[arg(long, env = "TAGPIN_DATABASE_URL")]
    pub database_url: Option<String>,
    /// File holding the database password (one line).
    #[arg(long, env = "TAGPIN_DATABASE_PASSWORD_FILE")]
    pub database_password_file: Option<PathBuf>,
    #[command(flatten)]
    pub tls: DatabaseTlsArgs,
}

/// TLS to the database, libpq style; each may be a parameter of the URL instead
/// (`?sslmode=verify-full&sslrootcert=/etc/tagpin/db-ca.pem`), and must agree with it
/// where both are given.
#[derive(Debug, Clone, Default, Args)]
pub struct DatabaseTlsArgs {
    /// disable, prefer (TLS when the server offers it, certificate unchecked), require (TLS,
    /// certificate unchecked unless --database-sslrootcert is given), verify-ca (signed by
    /// the root) or verify-full (signed by the root and naming the host) [default: prefer].
    #[arg(long, env = "TAGPIN_DATABASE_SSLMODE", value_name = "MODE")]
    pub database_sslmode: Option<String>,
    /// PEM file of the CA(s) the server's certificate must lead to [default for verify-ca
    /// and verify-full: the web PKI roots tagpin is built with].
    #[arg(long, env = "TAGPIN_DATABASE_SSLROOTCERT", value_name = "FILE")]
    pub database_sslrootcert: Option<PathBuf>,
    /// PEM certificate tagpin shows the server (with --database-sslkey).
    #[arg(long, env = "TAGPIN_DATABASE_SSLCERT", value_name = "FILE")]
    pub database_sslcert: Option<PathBuf>,
    /// PEM private key of --database-sslcert.
    #[arg(long, env = "TAGPIN_DATABASE_SSLKEY", value_name = "FILE")]
    pub database_sslkey: Option<PathBuf>,
}

/// A store handle that is let go of on a thread of its own: PostgreSQL's synchronous
/// client blocks while its connections close, which must not happen on the async runtime
/// the commands run on, whichever way the command ends.
pub struct OfflineStore(Option<std::sync::Arc<dyn PinStore>>);

impl OfflineStore {
    pub fn shared(&self) -> std::sync::Arc<dyn PinStore> {
        std::sync::Arc::clone(self.0.as_ref().expect("present until dropped"))
    }
}

impl Drop for OfflineStore {
    fn drop(&mut self) {
        if let Some(store) = self.0.take() {
            let _ = std::thread::spawn(move || drop(store)).join();
        }
    }
}

/// The store an offline command works on: a data dir or a database; `None` when the
/// command goes through the admin API.
pub fn offline_store(
    data_dir: Option<&Path>,
    db: &DatabaseArgs,
    creating: bool,
) -> Result<Option<OfflineStore>, CliError> {
    if let Some(url) = &db.database_url {
        let cfg = crate::config::database_config(&crate::config::DatabaseSettings {
            url,
            password_file: db.database_password_file.as_deref(),
            sslmode: db.tls.database_sslmode.as_deref(),
            sslrootcert: db.tls.database_sslrootcert.as_deref(),
            sslcert: db.tls.database_sslcert.as_deref(),
            sslkey: db.tls.database_sslkey.as_deref(),
        })
        .map_err(|e| CliError::Usage(e.to_string()))?;
        let store = crate::store::PgStore::open_tls(cfg.config, cfg.tls).map_err(|e| CliError::Store(e.to_string()))?;
        // Fail now, with the reason, rather than on the first record.
        store.check().map_err(|e| CliError::Store(e.to_string()))?;
        return Ok(Some(OfflineStore(Some(std::sync::Arc::new(store)))));
    }
    match data_dir {
        None => Ok(None),
        Some(dir) => {
            if !creating && !dir.join("pins.sled").exists() {
                return Err(CliError::Store(format!("{} holds no tagpin pin store", dir.display())));
            }
            Ok(Some(OfflineStore(Some(std::sync::Arc::new(open_store(dir)?)))))
        }
    }
}

fn io(e: std::io::Error) -> CliError {
    CliError::Io(format!("cannot write the output: {e}"))
}

/// Open a data dir for the offline commands, saying plainly when a server holds it.
pub fn open_store(dir: &Path) -> Result<SledStore, CliError> {
    SledStore::open(dir).map_err(|e| match e {
        StoreError::Locked(d) => CliError::Store(format!(
            "data dir {d} is in use by a running tagpin; stop it first, or leave out --data-dir to go \
             through its admin API"
        )),
        other => CliError::Store(other.to_string()),
    })
}

/// Pins read per page of an offline export.
const PAGE: usize = 1000;

/// Write one page of export records (claims and refused attempts included, see
/// [`crate::store::export_page`]); returns how many.
fn write_page(page: &[Exported], out: &mut dyn Write) -> Result<usize, CliError> {
    for e in page {
        let line = serde_json::to_string(e).map_err(|e| CliError::Store(e.to_string()))?;
        writeln!(out, "{line}").map_err(io)?;
    }
    Ok(page.len())
}

/// `export`: JSON lines to `out`; the count to stderr.
pub async fn export(args: &ExportArgs, client: Option<&Client>, out: &mut dyn Write) -> Result<u8, CliError> {
    let (dir, db_args) = (args.data_dir.clone(), args.database.clone());
    // Store calls block (sled's, and PostgreSQL's synchronous client): off the runtime.
    let store = tokio::task::spawn_blocking(move || offline_store(dir.as_deref(), &db_args, false))
        .await
        .map_err(|e| CliError::Store(e.to_string()))??;
    let written = match (store, client) {
        (Some(store), _) => {
            let mut after = None;
            let mut written = 0;
            loop {
                let s = store.shared();
                let from = after.clone();
                let (page, next) = tokio::task::spawn_blocking(move || {
                    let page = s.list(None, from.as_ref(), PAGE)?;
                    let next = page.last().map(|(r, t, _)| (r.clone(), t.clone()));
                    Ok::<_, StoreError>((crate::store::export_page(&*s, &page)?, next))
                })
                .await
                .map_err(|e| CliError::Store(e.to_string()))?
                .map_err(|e| CliError::Store(e.to_string()))?;
                written += write_page(&page, out)?;
                if page.len() < PAGE {
                    break written;
                }
                after = next;
            }
        }
        (None, Some(client)) => {
            let resp = client.send(Method::GET, "export", &[], None).await?;
            let mut lines = Lines::new(resp.into_body());
            let mut written = 0;
            while let Some((line, complete)) = lines.next().await? {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                // Every line is checked, so a stream cut inside a record is an error,
                // not a backup that fails on restore.
                if !complete || serde_json::from_slice::<Exported>(&line).is_err() {
                    return Err(CliError::Protocol(format!(
                        "the export was cut off after {written} records; do not use this output"
                    )));
                }
                out.write_all(&line).map_err(io)?;
                out.write_all(b"\n").map_err(io)?;
                written += 1;
            }
            written
        }
        (None, None) => return Err(CliError::Usage("export needs the admin API or --data-dir".into())),
    };
    out.flush().map_err(io)?;
    eprintln!("tagpin: exported {written} pins");
    Ok(EXIT_OK)
}

/// Parse JSON lines of exported pins, naming the first bad line.
/// The import's input: the file, or standard input for `-` or none.
fn open_input(file: Option<&Path>) -> Result<Box<dyn BufRead + Send>, CliError> {
    match file {
        None => Ok(Box::new(BufReader::with_capacity(1 << 20, std::io::stdin()))),
        Some(p) if p == Path::new("-") => Ok(Box::new(BufReader::with_capacity(1 << 20, std::io::stdin()))),
        Some(p) => std::fs::File::open(p)
            .map(|f| Box::new(BufReader::with_capacity(1 << 20, f)) as Box<dyn BufRead + Send>)
            .map_err(|e| CliError::Io(format!("cannot read {}: {e}", p.display()))),
    }
}

/// Import into a store opened here, a record at a time from the input.
async fn import_offline(store: OfflineStore, file: Option<PathBuf>) -> Result<ImportOutcome, CliError> {
    let shared = store.shared();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut records = ExportReader::new(open_input(file.as_deref())?);
        shared.import_from(&mut records, OFFLINE_IMPORT).map_err(|e| match e {
            ImportError::Input(why) => CliError::Usage(why),
            ImportError::Store(e) => CliError::Store(e.to_string()),
        })
    })
    .await
    .map_err(|e| CliError::Store(e.to_string()))??;
    drop(store);
    Ok(outcome)
}

/// Send the input to the admin API as it is read (never whole in memory); its answer.
async fn import_online(client: &Client, file: Option<PathBuf>) -> Result<Result<Value, String>, CliError> {
    let length = match file.as_deref() {
        Some(p) if p != Path::new("-") => std::fs::metadata(p).ok().filter(|m| m.is_file()).map(|m| m.len()),
        _ => None,
    };
    let mut input = open_input(file.as_deref())?;
    let (tx, body) = crate::body::channel(4);
    // A read error ends the body with an error, so the server never takes a cut file
    // for a whole one.
    std::thread::spawn(move || loop {
        let chunk = match input.fill_buf() {
            Ok([]) => return,
            Ok(buf) => Bytes::copy_from_slice(buf),
            Err(e) => return tx.blocking_fail(format!("cannot read the import: {e}")),
        };
        input.consume(chunk.len());
        if tx.blocking_send(chunk).is_err() {
            return;
        }
    });
    match client
        .send_stream(Method::POST, "import", body, "application/x-ndjson", length)
        .await
    {
        Ok(resp) => {
            let body = super::client::collect(resp.into_body()).await?;
            serde_json::from_slice(&body)
                .map(Ok)
                .map_err(|e| CliError::Protocol(format!("not JSON: {e}")))
        }
        Err(CliError::Api {
            status: 409, message, ..
        }) => Ok(Err(message)),
        Err(e) => Err(e),
    }
}

/// The result line for people.
pub fn describe(imported: u64, unchanged: u64) -> String {
    format!("imported {imported} pins; {unchanged} already held unchanged")
}

/// What the log's `imported` entries name as `by` for an import run on the store's files
/// (there is no admin token then).
const OFFLINE_IMPORT: &str = "tagpin import (offline)";

/// `import`: all or nothing; exit 1 on conflicts. The input is read a record at a time,
/// whatever its size.
pub async fn import(args: &ImportArgs, client: Option<&Client>, out: &mut dyn Write) -> Result<u8, CliError> {
    let (dir, db_args) = (args.data_dir.clone(), args.database.clone());
    let store = tokio::task::spawn_blocking(move || offline_store(dir.as_deref(), &db_args, true))
        .await
        .map_err(|e| CliError::Store(e.to_string()))??;
    let answer: Value = match (store, client) {
        (Some(store), _) => {
            let outcome = import_offline(store, args.file.clone()).await?;
            if outcome.conflicting > 0 {
                eprintln!("tagpin: {}", outcome.conflict_summary());
                return Ok(EXIT_FOUND);
            }
            serde_json::json!({"imported": outcome.imported, "unchanged": outcome.unchanged})
        }
        (None, Some(client)) => match import_online(client, args.file.clone()).await? {
            Ok(answer) => answer,
            Err(conflicts) => {
                eprintln!("tagpin: {conflicts}");
                return Ok(EXIT_FOUND);
            }
        },
        (None, None) => return Err(CliError::Usage("import needs the admin API or --data-dir".into())),
    };
    if args.json {
        writeln!(out, "{answer}").map_err(io)?;
    } else {
        let n = |k: &str| answer[k].as_u64().unwrap_or(0);
        writeln!(out, "{}", describe(n("imported"), n("unchanged"))).map_err(io)?;
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Digest, Repository, Tag};
    use crate::store::{Pin, PinSource};

    fn digest(n: u8) -> Digest {
        Digest::parse(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap()
    }

    #[test]
    fn an_offline_export_imports_into_an_empty_store() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = open_store(a.path()).unwrap();
        let repo = Repository::parse("team/app").unwrap();
        let pins: Vec<(Tag, Pin)> = (0..3)
            .map(|i| {
                (
                    Tag::parse(&format!("v{i}")).unwrap(),
                    Pin::now(digest(i), PinSource::Push),
                )
            })
            .collect();
        store.pin_if_absent(&repo, &pins).unwrap();
        let mut out = Vec::new();
        let page = store.list(None, None, PAGE).unwrap();
        let page = crate::store::export_page(&store, &page).unwrap();
        assert_eq!(write_page(&page, &mut out).unwrap(), 3);
        let other = open_store(b.path()).unwrap();
        let mut records = ExportReader::new(out.as_slice());
        assert_eq!(other.import_from(&mut records, "test").unwrap().imported, 3);
        // A second opener of the same dir is told a tagpin holds it.
        let e = open_store(a.path()).err().unwrap().to_string();
        assert!(e.contains("in use by a running tagpin"), "{e}");
    }
}
