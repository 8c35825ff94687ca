//! Replaying the log into tag -> digest and comparing it with the store's pins, in
//! bounded memory: at 10,000,000 entries neither the log's tags nor the store's pins fit
//! in a map at once. Both sides are spilled into buckets on disk, partitioned by a hash
//! of `repository:tag` so that a tag's entries and its pin land in the same bucket; then
//! one bucket at a time is loaded (the log's side, the last entry of each tag winning)
//! and the pins of that bucket are streamed past it.
//!
//! The first mismatch is the one with the smallest entry index; a pin the log has no
//! entry for, which has no index, comes after those, the first in key order.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

/// Entries per bucket the partition aims at: a bucket's map of tags stays in the tens
/// of megabytes.
pub const BUCKET_ENTRIES: u64 = 100_000;
/// Most buckets: each is an open file while it is written.
pub const MAX_BUCKETS: u64 = 256;
/// Mismatches kept, the first ones: enough to name the first, and to look again at the
/// first few when a live store changed while it was read.
pub const KEPT: usize = 1000;

/// How many buckets a log of `entries` entries is spilled into.
pub fn bucket_count(entries: u64) -> usize {
    // At most MAX_BUCKETS (256): the cast cannot truncate.
    (entries / BUCKET_ENTRIES).clamp(1, MAX_BUCKETS) as usize
}

/// The bucket of `key` (`repository:tag`): FNV-1a, stable across runs and platforms.
pub fn bucket_of(key: &str, buckets: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // The remainder is below `buckets`, a usize.
    (h % buckets as u64) as usize
}

/// Where the store's pins and the log's entries disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// The pin differs from the digest the tag's last entry binds it to.
    Differs {
        key: String,
        pinned: String,
        logged: String,
        index: u64,
    },
    /// A pin the log has no entry for.
    Unlogged { key: String, pinned: String },
    /// A tag the log binds that has no pin.
    Unpinned { key: String, logged: String, index: u64 },
}

impl Mismatch {
    /// `repository:tag`.
    pub fn key(&self) -> &str {
        match self {
            Self::Differs { key, .. } | Self::Unlogged { key, .. } | Self::Unpinned { key, .. } => key,
        }
    }

    /// The one line naming it.
    pub fn message(&self) -> String {
        match self {
            Self::Differs {
                key,
                pinned,
                logged,
                index,
            } => format!("{key} is pinned to {pinned} in the store; the log says {logged} (entry {index})"),
            Self::Unlogged { key, pinned } => {
                format!("{key} is pinned to {pinned} in the store; the log has no entry for it")
            }
            Self::Unpinned { key, logged, index } => {
                format!("the log binds {key} to {logged} (entry {index}); the store has no pin for it")
            }
        }
    }

    fn index(&self) -> Option<u64> {
        match self {
            Self::Differs { index, .. } | Self::Unpinned { index, .. } => Some(*index),
            Self::Unlogged { .. } => None,
        }
    }
}

/// `repository:tag` as the store orders it: by repository, then tag (neither holds a
/// `:`).
fn key_order(key: &str) -> (&str, &str) {
    key.split_once(':').unwrap_or((key, ""))
}

/// Which of two mismatches is named first.
pub fn first(a: &Mismatch, b: &Mismatch) -> Ordering {
    match (a.index(), b.index()) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => key_order(a.key()).cmp(&key_order(b.key())),
    }
}

/// The first [`KEPT`] mismatches, and how many there were in all.
#[derive(Debug, Default)]
pub struct Found {
    pub first: Vec<Mismatch>,
    pub count: u64,
}

impl Found {
    pub fn add(&mut self, m: Mismatch) {
        self.count += 1;
        self.first.push(m);
        if self.first.len() >= 2 * KEPT {
            self.trim();
        }
    }

    fn trim(&mut self) {
        self.first.sort_by(first);
        self.first.truncate(KEPT);
    }
}

/// Compare one bucket: `log` holds lines `key digest index` in index order, `pins` lines
/// `key digest`. Returns how many pins the bucket holds.
pub fn compare_bucket(log: impl BufRead, pins: impl BufRead, found: &mut Found) -> std::io::Result<u64> {
    let bad = |line: &str| std::io::Error::other(format!("a damaged replay file line {line:?}"));
    let mut logged: HashMap<Box<str>, (Box<str>, u64)> = HashMap::new();
    for line in log.lines() {
        let line = line?;
        let mut parts = line.split(' ');
        let (Some(key), Some(digest), Some(index), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad(&line));
        };
        let index = index.parse().map_err(|_| bad(&line))?;
        // Entries come in index order: the last one for a tag is what it is bound to.
        logged.insert(key.into(), (digest.into(), index));
    }
    let mut pinned = 0;
    for line in pins.lines() {
        let line = line?;
        let (key, digest) = line.split_once(' ').ok_or_else(|| bad(&line))?;
        pinned += 1;
        match logged.remove(key) {
            Some((d, _)) if *d == *digest => {}
            Some((logged, index)) => found.add(Mismatch::Differs {
                key: key.to_owned(),
                pinned: digest.to_owned(),
                logged: logged.into(),
                index,
            }),
            None => found.add(Mismatch::Unlogged {
                key: key.to_owned(),
                pinned: digest.to_owned(),
            }),
        }
    }
    for (key, (logged, index)) in logged {
        found.add(Mismatch::Unpinned {
            key: key.into(),
            logged: logged.into(),
            index,
        });
    }
    Ok(pinned)
}

/// A directory of its own under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        loop {
            let n = NEXT.fetch_add(1, AtomicOrdering::Relaxed);
            let path = base.join(format!("tagpin-log-verify-{}-{nanos}-{n}", std::process::id()));
            let mut builder = std::fs::DirBuilder::new();
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            match builder.create(&path) {
                Ok(()) => return Ok(Self(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn writers(dir: &Path, side: &str, n: usize) -> std::io::Result<Vec<BufWriter<File>>> {
    (0..n)
        .map(|i| File::create(dir.join(format!("{side}-{i}"))).map(BufWriter::new))
        .collect()
}

/// The two sides spilled to disk: first every entry ([`Spill::entry`]), then every pin
/// ([`Spill::pin`]), then [`Spill::compare`].
pub struct Spill {
    dir: TempDir,
    buckets: usize,
    log: Vec<BufWriter<File>>,
    pins: Vec<BufWriter<File>>,
}

impl Spill {
    /// Buckets for a log of `entries` entries.
    pub fn new(entries: u64) -> std::io::Result<Self> {
        let dir = TempDir::new()?;
        let buckets = bucket_count(entries);
        let log = writers(&dir.0, "log", buckets)?;
        Ok(Self {
            dir,
            buckets,
            log,
            pins: Vec::new(),
        })
    }

    /// The entry `index` binds `key` to `digest`; entries come in index order.
    pub fn entry(&mut self, key: &str, digest: &str, index: u64) -> std::io::Result<()> {
        writeln!(self.log[bucket_of(key, self.buckets)], "{key} {digest} {index}")
    }

    /// The store pins `key` to `digest`; pins come in key order.
    pub fn pin(&mut self, key: &str, digest: &str) -> std::io::Result<()> {
        if self.pins.is_empty() {
            // The log's side is complete: close its files before opening the pins'.
            for mut w in std::mem::take(&mut self.log) {
                w.flush()?;
            }
            self.pins = writers(&self.dir.0, "pins", self.buckets)?;
        }
        writeln!(self.pins[bucket_of(key, self.buckets)], "{key} {digest}")
    }

    /// Compare bucket by bucket: the first mismatches, and how many pins there were.
    pub fn compare(mut self) -> std::io::Result<(Found, u64)> {
        for mut w in self.log.drain(..).chain(self.pins.drain(..)) {
            w.flush()?;
        }
        let mut found = Found::default();
        let mut pins = 0;
        for i in 0..self.buckets {
            let open = |side: &str| -> std::io::Result<Box<dyn BufRead>> {
                match File::open(self.dir.0.join(format!("{side}-{i}"))) {
                    Ok(f) => Ok(Box::new(BufReader::new(f))),
                    // No pin was written at all: that side is empty.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Box::new(std::io::empty())),
                    Err(e) => Err(e),
                }
            };
            pins += compare_bucket(open("log")?, open("pins")?, &mut found)?;
        }
        found.trim();
        Ok((found, pins))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaa";
    const B: &str = "sha256:bbbb";

    #[test]
    fn buckets_grow_with_the_log_and_stop_at_the_most_files() {
        assert_eq!(bucket_count(0), 1);
        assert_eq!(bucket_count(BUCKET_ENTRIES - 1), 1);
        assert_eq!(bucket_count(10_000_000), 100);
        assert_eq!(bucket_count(u64::MAX), MAX_BUCKETS as usize);
        assert_eq!(bucket_of("team/app:1.0", 1), 0);
        let spread: std::collections::HashSet<usize> =
            (0..1000).map(|i| bucket_of(&format!("team/app:{i}"), 16)).collect();
        assert_eq!(spread.len(), 16, "keys spread over every bucket");
        assert_eq!(bucket_of("team/app:1.0", 16), bucket_of("team/app:1.0", 16));
    }

    #[test]
    fn the_last_entry_of_a_tag_is_what_its_pin_must_equal() {
        let log = format!("t/a:1 {A} 0\nt/a:1 {B} 5\nt/b:1 {A} 2\n");
        let pins = format!("t/a:1 {B}\nt/b:1 {A}\n");
        let mut found = Found::default();
        assert_eq!(compare_bucket(log.as_bytes(), pins.as_bytes(), &mut found).unwrap(), 2);
        assert_eq!(found.count, 0);
    }

    #[test]
    fn each_kind_of_mismatch_is_named_with_its_entry() {
        let log = format!("t/a:1 {A} 0\nt/a:1 {B} 7\nt/gone:1 {A} 3\n");
        let pins = format!("t/a:1 {A}\nt/new:1 {B}\n");
        let mut found = Found::default();
        compare_bucket(log.as_bytes(), pins.as_bytes(), &mut found).unwrap();
        found.trim();
        let messages: Vec<String> = found.first.iter().map(Mismatch::message).collect();
        assert_eq!(
            messages,
            [
                format!("the log binds t/gone:1 to {A} (entry 3); the store has no pin for it"),
                format!("t/a:1 is pinned to {A} in the store; the log says {B} (entry 7)"),
                format!("t/new:1 is pinned to {B} in the store; the log has no entry for it"),
            ]
        );
    }

    #[test]
    fn pins_without_entries_come_after_indexed_ones_in_key_order() {
        let unlogged = |k: &str| Mismatch::Unlogged {
            key: k.into(),
            pinned: A.into(),
        };
        let differs = |i: u64| Mismatch::Differs {
            key: "z/z:z".into(),
            pinned: A.into(),
            logged: B.into(),
            index: i,
        };
        let mut found = Found::default();
        for m in [unlogged("a/b-c:1"), unlogged("a/b:2"), differs(9), differs(4)] {
            found.add(m);
        }
        found.trim();
        assert_eq!(
            found.first,
            [differs(4), differs(9), unlogged("a/b:2"), unlogged("a/b-c:1")]
        );
    }

    #[test]
    fn only_the_first_mismatches_are_kept_but_all_are_counted() {
        let mut found = Found::default();
        for i in (0..1000).rev() {
            found.add(Mismatch::Unpinned {
                key: format!("t/a:{i}"),
                logged: A.into(),
                index: i,
            });
            assert!(found.first.len() < 2 * KEPT);
        }
        found.trim();
        assert_eq!(found.count, 1000);
        assert_eq!(found.first.len(), KEPT);
        assert_eq!(found.first[0].key(), "t/a:0");
    }

    #[test]
    fn a_damaged_spill_line_is_an_error_not_a_match() {
        let mut found = Found::default();
        assert!(compare_bucket("t/a:1 sha256:aa\n".as_bytes(), std::io::empty(), &mut found).is_err());
        assert!(compare_bucket(std::io::empty(), "t/a:1\n".as_bytes(), &mut found).is_err());
    }

    #[test]
    fn a_spill_over_many_buckets_finds_the_first_mismatch_and_leaves_nothing_behind() {
        let entries = 3 * BUCKET_ENTRIES;
        let mut spill = Spill::new(entries).unwrap();
        assert_eq!(spill.buckets, 3);
        let dir = spill.dir.0.clone();
        for i in 0..3000u64 {
            spill.entry(&format!("t/a:{i}"), A, i).unwrap();
        }
        spill.entry("t/a:17", B, 3000).unwrap();
        for i in 0..3000u64 {
            let digest = if i == 2999 { B } else { A };
            spill.pin(&format!("t/a:{i}"), digest).unwrap();
        }
        let (found, pins) = spill.compare().unwrap();
        assert_eq!((pins, found.count), (3000, 2));
        assert_eq!(
            found.first[0].message(),
            format!("t/a:2999 is pinned to {B} in the store; the log says {A} (entry 2999)")
        );
        assert_eq!(found.first[1].key(), "t/a:17");
        assert!(!dir.exists(), "the spill directory is removed");
    }

    #[test]
    fn a_store_without_pins_against_a_log_with_entries_names_the_first_entry() {
        let mut spill = Spill::new(10).unwrap();
        spill.entry("t/a:1", A, 0).unwrap();
        spill.entry("t/b:1", A, 1).unwrap();
        let (found, pins) = spill.compare().unwrap();
        assert_eq!((pins, found.count), (0, 2));
        assert_eq!(found.first[0].key(), "t/a:1");
    }
}
