//! How fast sled itself can take an import, beside `tagpin import` of the same file in
//! the same run: the reference for the import's pins a second on sled.
//!
//! For each line of an export file it writes what an imported pin costs sled at least:
//! the pin (the line as its value), its digest index key, its log leaf (the line again)
//! and one subtree hash, four keys in four trees, 2,000 pins to a transaction, with the
//! page cache tagpin uses (64 MiB), then one flush. No parsing, judging, hashing of
//! entries or journal: a floor, not a rival.
//!
//! ```text
//! cargo run --release --example gen_export -- --pins 1000000 --repos 10000 --out pins.jsonl
//! cargo run --release --example sled_floor -- --file pins.jsonl --tagpin target/release/tagpin
//! ```

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

use clap::Parser;
use sha2::{Digest as _, Sha256};
use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

#[derive(Parser)]
#[command(about = "sled's own rate for an import's keys, beside tagpin import of the same file")]
struct Args {
    /// An export file (`tagpin export`, or `gen_export`).
    #[arg(long)]
    file: PathBuf,
    /// Also time `BIN import --data-dir` of the file, first, in a fresh directory.
    #[arg(long, value_name = "BIN")]
    tagpin: Option<PathBuf>,
}

const BATCH: usize = 2000;

/// The repository, tag and digest of an export line, read without parsing it whole.
fn fields(line: &str) -> Option<(&str, &str, &str)> {
    let field = |name: &str| {
        let start = line.find(&format!("\"{name}\":\""))? + name.len() + 4;
        let end = start + line[start..].find('"')?;
        Some(&line[start..end])
    };
    Some((field("repository")?, field("tag")?, field("digest")?))
}

fn floor(args: &Args, dir: &std::path::Path) -> Result<(u64, f64), Box<dyn std::error::Error>> {
    let db = sled::Config::new()
        .path(dir.join("floor.sled"))
        .cache_capacity(64 << 20)
        .open()?;
    let (pins, index, leaves, nodes) = (
        db.open_tree("pins")?,
        db.open_tree("by_digest")?,
        db.open_tree("log_leaves")?,
        db.open_tree("log_nodes")?,
    );
    let input = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&args.file)?);
    let started = Instant::now();
    let mut n = 0u64;
    let mut lines = input.lines();
    loop {
        let mut batch = Vec::with_capacity(BATCH);
        for line in lines.by_ref().take(BATCH) {
            batch.push(line?);
        }
        if batch.is_empty() {
            break;
        }
        (&pins, &index, &leaves, &nodes)
            .transaction(|(pins, index, leaves, nodes)| {
                for (i, line) in batch.iter().enumerate() {
                    let (repo, tag, digest) = fields(line).expect("an export line");
                    let at = n + i as u64;
                    pins.insert(format!("{repo}\0{tag}").as_bytes(), line.as_bytes())?;
                    index.insert(format!("{repo}\0{digest}\0{tag}").as_bytes(), &[][..])?;
                    leaves.insert(&at.to_be_bytes(), line.as_bytes())?;
                    nodes.insert(&at.to_be_bytes(), &Sha256::digest(line.as_bytes())[..])?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e| format!("sled transaction: {e:?}"))?;
        n += batch.len() as u64;
    }
    db.flush()?;
    Ok((n, started.elapsed().as_secs_f64()))
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let imported = match &args.tagpin {
        Some(bin) => {
            let dir = tempfile::tempdir()?;
            let started = Instant::now();
            let status = Command::new(bin)
                .arg("import")
                .arg("--data-dir")
                .arg(dir.path())
                .arg(&args.file)
                .status()?;
            if !status.success() {
                return Err(format!("tagpin import exited {status}").into());
            }
            Some(started.elapsed().as_secs_f64())
        }
        None => None,
    };
    let dir = tempfile::tempdir()?;
    let (n, seconds) = floor(args, dir.path())?;
    let rate = n as f64 / seconds;
    println!(
        "sled floor: {n} pins in {seconds:.1} s, {rate:.0} pins/s ({:.0} keys/s)",
        4.0 * rate
    );
    if let Some(s) = imported {
        let theirs = n as f64 / s;
        println!(
            "tagpin import: {n} pins in {s:.1} s, {theirs:.0} pins/s, {:.2} of the floor",
            theirs / rate
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sled_floor: {e}");
            ExitCode::FAILURE
        }
    }
}
