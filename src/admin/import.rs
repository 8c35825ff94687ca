//! `POST /admin/v1/import`: an export into the running server's store, all or nothing,
//! in bounded memory, the body at most `max_import_bytes`. The store reads it a record
//! at a time ([`crate::store::PinStore::import_from`]):
//! - sled: straight from the body, since its import first writes the records to a file
//!   of its own in the data dir (sorted), holding nothing up meanwhile;
//! - PostgreSQL: from a temporary file the body is written to first, since its import
//!   holds the store's gate from the first record and must not wait on the network. The
//!   file has no name (unlinked as soon as it is created, it lives as long as its
//!   handle), so nothing is left behind however the request or the process ends.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;

use super::json;
use crate::app::App;
use crate::body::Body;
use crate::error::ProxyError;
use crate::store::{ExportReader, ImportError, ImportOutcome};
use crate::telemetry::{AuditAction, Requester};

/// `POST /admin/v1/import`: JSON lines into the store, all or nothing.
pub async fn import(app: &App, req: Request<Incoming>, who: &Requester) -> Result<Response<Body>, ProxyError> {
    let limit = app.config.max_import_bytes;
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let by = who.admin_name();
    let body = req.into_body();
    let imported = match app.config.database {
        Some(_) => {
            let file = spool(body, std::env::temp_dir(), limit).await?;
            app.store_call(move |s| {
                let mut records = ExportReader::new(BufReader::with_capacity(1 << 20, file));
                Ok(s.import_from(&mut records, &by))
            })
            .await?
        }
        None => streamed(app, body, limit, by).await?,
    };
    let outcome = imported.map_err(|e| match e {
        ImportError::Input(why) => ProxyError::AdminBadRequest(why),
        ImportError::Store(e) => ProxyError::Store(e),
    })?;
    if outcome.conflicting > 0 {
        return Err(ProxyError::AdminConflict(outcome.conflict_summary()));
    }
    tracing::info!(target: "tagpin::audit", action = AuditAction::Imported.as_str(), imported = outcome.imported, unchanged = outcome.unchanged, user = who.user.as_deref().unwrap_or(""), request_id = who.request_id.as_str(), "imported");
    app.metrics.decision(AuditAction::Imported);
    Ok(json(
        StatusCode::OK,
        &json!({"imported": outcome.imported, "unchanged": outcome.unchanged}),
    ))
}

fn too_large(limit: u64) -> ProxyError {
    ProxyError::AdminTooLarge(format!(
        "the import is larger than max_import_bytes ({limit} bytes), and nothing was written: raise it \
         (--max-import-bytes, TAGPIN_MAX_IMPORT_BYTES or max_import_bytes) and restart tagpin, or import \
         offline (tagpin import --data-dir with tagpin stopped, or --database-url)"
    ))
}

/// The body's chunks, or why it ended early; an empty chunk says it ended whole.
type Chunks = tokio::sync::mpsc::Receiver<Result<Bytes, String>>;

/// Send `body`'s data to `tx`, refusing more than `limit` bytes, then an empty chunk
/// once the body has ended whole. An error is also sent on, and a channel closed
/// without the empty chunk (the request dropped, as at a shutdown) is an error to the
/// reader too, so it never takes a cut body for a whole one.
async fn pump(
    mut body: Incoming,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, String>>,
    limit: u64,
) -> Result<(), ProxyError> {
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let data = match frame.map(|f| f.into_data()) {
            Ok(Ok(data)) => data,
            Ok(Err(_)) => continue, // trailers
            Err(e) => {
                let why = format!("cannot read the request body: {e}");
                let _ = tx.send(Err(why.clone())).await;
                return Err(ProxyError::AdminBadRequest(why));
            }
        };
        if data.is_empty() {
            continue;
        }
        total += data.len() as u64;
        if total > limit {
            let _ = tx.send(Err("the import is over max_import_bytes".into())).await;
            return Err(too_large(limit));
        }
        if tx.send(Ok(data)).await.is_err() {
            return Ok(()); // the reader stopped: its own result says why
        }
    }
    let _ = tx.send(Ok(Bytes::new())).await;
    Ok(())
}

/// The sled store: the body goes straight into the store's import, whose first step
/// writes the records to a file of its own (sorted) without holding anything up.
async fn streamed(
    app: &App,
    body: Incoming,
    limit: u64,
    by: String,
) -> Result<Result<ImportOutcome, ImportError>, ProxyError> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let import = app.store_call(move |s| {
        let reader = BodyReader {
            rx,
            chunk: Bytes::new(),
            ended: false,
        };
        let mut records = ExportReader::new(BufReader::with_capacity(1 << 20, reader));
        Ok(s.import_from(&mut records, &by))
    });
    let (read, imported) = tokio::join!(pump(body, tx, limit), import);
    // A body cut short or over the limit is the answer: the import read an error at its
    // end, and wrote nothing.
    read?;
    imported
}

/// The body as a blocking reader, for the store's import on a blocking thread.
struct BodyReader {
    rx: Chunks,
    chunk: Bytes,
    /// The body's end was received.
    ended: bool,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                None => {
                    return Err(std::io::Error::other(
                        "the request ended before its body was read whole (tagpin is stopping?)",
                    ))
                }
                Some(Ok(chunk)) if chunk.is_empty() => self.ended = true,
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(why)) => return Err(std::io::Error::other(why)),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// A file in `dir` with no name (see the module docs), open for reading and writing.
fn unnamed_file(dir: &Path) -> std::io::Result<File> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(format!(
        ".tagpin-import-{}-{}.partial",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = File::options().read(true).write(true).create_new(true).open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

/// PostgreSQL: write `body` to a file with no name in `dir` first (the import holds the
/// store's gate from its first record, so it must not wait on the network), refusing
/// more than `limit` bytes; the file, rewound.
async fn spool(body: Incoming, dir: PathBuf, limit: u64) -> Result<File, ProxyError> {
    let (tx, mut rx): (_, Chunks) = tokio::sync::mpsc::channel(16);
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<File> {
        let mut out = BufWriter::with_capacity(1 << 20, unnamed_file(&dir)?);
        // Whatever ended the body early, `pump`'s own result says so below.
        while let Some(Ok(chunk)) = rx.blocking_recv() {
            if chunk.is_empty() {
                break;
            }
            out.write_all(&chunk)?;
        }
        let mut file = out.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        Ok(file)
    });
    let read = pump(body, tx, limit).await;
    let file = writer
        .await
        .map_err(|e| ProxyError::Internal(format!("import spool failed: {e}")))?
        .map_err(|e| ProxyError::Internal(format!("cannot write the import to a temporary file: {e}")));
    read?;
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spool_file_has_no_name_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = unnamed_file(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing named is left"
        );
        f.write_all(b"line\n").unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut back = String::new();
        f.read_to_string(&mut back).unwrap();
        assert_eq!(back, "line\n");
    }
}
