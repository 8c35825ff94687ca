//! Write an export file of generated pins, exactly as `tagpin export` writes them (one
//! [`Exported`] JSON line per tag, in the store's key order), for measuring `tagpin
//! import` and for filling stores at scale: `PINS` pins, each pinned by push with one
//! history entry, spread evenly over `REPOS` repositories.
//!
//! ```text
//! cargo run --release --example gen_export -- --pins 1000000 --repos 10000 > pins.jsonl
//! cargo run --release --example gen_export -- --pins 1000 --repos 10 --out pins.jsonl --seed 2
//! ```
//!
//! Digests are sha256 of the seed and the pin's number, so two files of one seed agree
//! (importing both is unchanged pins) and of two seeds disagree on every tag (conflicts).

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sha2::{Digest as _, Sha256};
use tagpin::oci::{Digest, Repository, Tag};
use tagpin::store::{Exported, HistoryEntry, HistoryEvent, Pin, PinSource};

#[derive(Parser)]
#[command(about = "Write an export file of generated pins, in `tagpin export`'s format")]
struct Args {
    /// How many pins (lines).
    #[arg(long)]
    pins: u64,
    /// How many repositories to spread them over.
    #[arg(long, default_value_t = 1)]
    repos: u64,
    /// Write here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Varies every digest (and nothing else).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// The `n`th pin's record, in repository `repo` (of `repos`) as its `index`th tag.
fn record(args: &Args, repo: u64, index: u64, n: u64) -> Exported {
    let hash = Sha256::digest(format!("{}:{n}", args.seed));
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    let digest = Digest::parse(&format!("sha256:{hex}")).expect("a sha256 digest");
    // Zero-padded, so the store's byte order is the order written.
    let repository = Repository::parse(&format!("bench/repo{repo:06}")).expect("a repository name");
    let tag = Tag::parse(&format!("v{index:09}")).expect("a tag");
    let at = 1_700_000_000 + n;
    let mut first = HistoryEntry::new(HistoryEvent::Push, digest.clone(), None);
    first.at = at;
    first.request_id = Some(format!("gen-{n}"));
    let pin = Pin {
        digest,
        source: PinSource::Push,
        pinned_at: at,
        history: vec![first],
    };
    Exported::of(repository, tag, &pin)
}

fn write(args: &Args, out: &mut dyn Write) -> std::io::Result<()> {
    let repos = args.repos.clamp(1, args.pins.max(1));
    let mut n = 0;
    for repo in 0..repos {
        // The first `pins % repos` repositories take one pin more.
        let here = args.pins / repos + u64::from(repo < args.pins % repos);
        for index in 0..here {
            serde_json::to_writer(&mut *out, &record(args, repo, index, n))?;
            out.write_all(b"\n")?;
            n += 1;
        }
    }
    out.flush()
}

fn main() -> ExitCode {
    let args = Args::parse();
    let written = match &args.out {
        Some(path) => std::fs::File::create(path).and_then(|f| write(&args, &mut BufWriter::new(f))),
        None => write(&args, &mut BufWriter::new(std::io::stdout().lock())),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen_export: {e}");
            ExitCode::FAILURE
        }
    }
}
