//! Fill a pin store with pins for the history log's benchmark (`bench/log.py`): `COUNT`
//! tags, 1,000 to a repository, each pinned by push to a digest of its own through the
//! store's own interface, 1,000 tags per write, so the store appends one log entry per pin
//! exactly as it does for pushes through tagpin.
//!
//! ```text
//! cargo run --release --example fill_log -- --data-dir DIR --count 1000000
//! cargo run --release --example fill_log -- --database-url URL --count 100000
//! ```
//!
//! Prints one JSON line when done: `{"pins":N,"log_size":N,"seconds":S}`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use tagpin::oci::{Digest, Repository, Tag};
use tagpin::store::{PgStore, Pin, PinSource, PinStore, SledStore, StoreError};

/// Tags per repository, and per store write.
const BATCH: u64 = 1000;

#[derive(Parser)]
#[command(about = "Fill a pin store with pins (and so the history log with entries) for the benchmark")]
struct Args {
    /// A sled data dir (tagpin must not be running on it).
    #[arg(long, conflicts_with = "database_url", required_unless_present = "database_url")]
    data_dir: Option<PathBuf>,
    /// A PostgreSQL database URL.
    #[arg(long)]
    database_url: Option<String>,
    /// How many pins to add (rounded up to a multiple of 1,000).
    #[arg(long)]
    count: u64,
}

fn open(args: &Args) -> Result<Box<dyn PinStore>, String> {
    if let Some(dir) = &args.data_dir {
        return SledStore::open(dir)
            .map(|s| Box::new(s) as Box<dyn PinStore>)
            .map_err(|e| e.to_string());
    }
    let url = args.database_url.as_deref().unwrap_or_default();
    let config = url
        .parse::<postgres::Config>()
        .map_err(|e| format!("--database-url: {e}"))?;
    let store = PgStore::open(config).map_err(|e| e.to_string())?;
    // A store that cannot be reached opens anyway (tagpin keeps serving): ask it once.
    store.check().map_err(|e| e.to_string())?;
    Ok(Box::new(store))
}

/// Pin the tags `t0` .. `t999` of repository `fill/r{batch}`, each to a digest of its own.
/// The repository continues after what the store holds, so a second fill adds to the first.
fn fill_batch(store: &dyn PinStore, batch: u64) -> Result<(), StoreError> {
    let repo = Repository::parse(&format!("fill/r{batch}")).expect("a valid repository name");
    let tags: Vec<Tag> = (0..BATCH)
        .map(|i| Tag::parse(&format!("t{i}")).expect("a valid tag"))
        .collect();
    let pins: Vec<Pin> = (0..BATCH)
        .map(|i| Pin::now(Digest::sha256_of(format!("{batch}/{i}").as_bytes()), PinSource::Push))
        .collect();
    store.update(&repo, &tags, &mut |_, records| {
        for (record, pin) in records.iter_mut().zip(&pins) {
            if record.pin.is_none() {
                record.set_pin(pin.clone());
            }
        }
    })?;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let store = match open(&args) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("fill_log: cannot open the store: {e}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let result = (|| {
        let first = store.log_head()?.size().div_ceil(BATCH);
        for batch in first..first + args.count.div_ceil(BATCH) {
            fill_batch(store.as_ref(), batch)?;
        }
        store.log_head()
    })();
    match result {
        Ok(head) => {
            let pins = args.count.div_ceil(BATCH) * BATCH;
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "{{\"pins\":{pins},\"log_size\":{},\"seconds\":{seconds:.3}}}",
                head.size()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fill_log: {e}");
            ExitCode::FAILURE
        }
    }
}
