//! An import's records on disk, sorted by tag: what the sled backend checks and writes
//! from, in bounded memory whatever the input's size. The records are read in runs of at
//! most [`RUN_BYTES`], each sorted in memory and written to a file of its own, and the
//! runs are merged into one file (an export, already in key order, is one run and is
//! only renamed). The sort is stable, so the records of one tag keep the input's order
//! and the first of them comes first.
//!
//! A line of the file is `repo \0 tag`, a tab and the record as JSON. [`Groups`] reads it
//! back a tag at a time: the tag's first record, whether a later one names another
//! digest, and the refused attempts of them all.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::tag_key;
use crate::store::{merge_refusals, Exported, ImportError, ImportSource, Refused, StoreError};

/// Bytes of records sorted in memory at once.
const RUN_BYTES: usize = 8 << 20;
/// Runs merged at once (one open file and read buffer each).
const FAN_IN: usize = 64;

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("cannot {what} {}: {e}", path.display()))
}

/// Write `source`'s records to `target`, sorted by tag (see the module docs); the runs
/// are `target` with `.runN` appended, removed once merged.
pub(super) fn sort_into(target: &Path, source: &mut dyn ImportSource) -> Result<(), ImportError> {
    let mut runs: Vec<PathBuf> = Vec::new();
    // Each line whole (`key \t json`), and its key's length.
    let mut lines: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut bytes = 0;
    let run_path = |n: usize| PathBuf::from(format!("{}.run{n}", target.display()));
    let result = (|| {
        loop {
            let next = source.next_record()?;
            if let Some(r) = &next {
                let mut line = tag_key(&r.repository, &r.tag);
                let key = line.len();
                line.push(b'\t');
                serde_json::to_writer(&mut line, r).expect("serialising a record cannot fail");
                line.push(b'\n');
                bytes += line.len();
                lines.push((key, line));
            }
            if bytes >= RUN_BYTES || (next.is_none() && (!lines.is_empty() || runs.is_empty())) {
                // Stable: a tag's records keep their order.
                lines.sort_by(|(a, x), (b, y)| x[..*a].cmp(&y[..*b]));
                let path = run_path(runs.len());
                write_run(&path, lines.drain(..).map(|(_, line)| line))?;
                runs.push(path);
                bytes = 0;
            }
            if next.is_none() {
                break;
            }
        }
        let mut generation = 0;
        while runs.len() > 1 {
            let mut merged = Vec::new();
            for (i, group) in runs.chunks(FAN_IN).enumerate() {
                let path = PathBuf::from(format!("{}.merge{generation}.{i}", target.display()));
                merge(group, &path)?;
                merged.push(path);
            }
            for run in &runs {
                std::fs::remove_file(run).map_err(|e| io("remove", run, e))?;
            }
            runs = merged;
            generation += 1;
        }
        std::fs::rename(&runs[0], target).map_err(|e| io("rename", &runs[0], e))?;
        File::open(target)
            .and_then(|f| f.sync_all())
            .map_err(|e| io("sync", target, e))?;
        // The rename too: the journal written next names the file.
        if let Some(dir) = target.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("sync", dir, e))?;
        }
        Ok(())
    })();
    if result.is_err() {
        for run in runs {
            let _ = std::fs::remove_file(run);
        }
    }
    result
}

/// Write whole lines to a new file.
fn write_run(path: &Path, lines: impl Iterator<Item = Vec<u8>>) -> Result<(), StoreError> {
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| io("create", path, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    for line in lines {
        out.write_all(&line).map_err(|e| io("write", path, e))?;
    }
    out.flush().map_err(|e| io("write", path, e))
}

/// The key of a line: the bytes before its tab.
fn key_of(line: &[u8]) -> Vec<u8> {
    line.split(|b| *b == b'\t').next().unwrap_or_default().to_vec()
}

/// A run's next line in a merge: its key, the run, the line.
type Head = (Vec<u8>, usize, Vec<u8>);

/// Merge sorted runs into `target`; of equal keys, an earlier run's lines first.
fn merge(runs: &[PathBuf], target: &Path) -> Result<(), StoreError> {
    let mut readers = Vec::with_capacity(runs.len());
    for run in runs {
        let f = File::open(run).map_err(|e| io("open", run, e))?;
        readers.push(BufReader::with_capacity(64 << 10, f));
    }
    let read = |r: &mut BufReader<File>, i: usize| -> Result<Option<Vec<u8>>, StoreError> {
        let mut line = Vec::new();
        match r.read_until(b'\n', &mut line).map_err(|e| io("read", &runs[i], e))? {
            0 => Ok(None),
            _ => Ok(Some(line)),
        }
    };
    // Ordered by key, then run: each run has one line here at a time, so the line itself
    // is never compared.
    let mut heads: BinaryHeap<Reverse<Head>> = BinaryHeap::new();
    for (i, r) in readers.iter_mut().enumerate() {
        if let Some(line) = read(r, i)? {
            heads.push(Reverse((key_of(&line), i, line)));
        }
    }
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(target)
        .map_err(|e| io("create", target, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    while let Some(Reverse((_, i, line))) = heads.pop() {
        out.write_all(&line).map_err(|e| io("write", target, e))?;
        if let Some(next) = read(&mut readers[i], i)? {
            heads.push(Reverse((key_of(&next), i, next)));
        }
    }
    out.flush().map_err(|e| io("write", target, e))
}

/// The records of one tag in the sorted file.
pub(super) struct Group {
    pub key: Vec<u8>,
    /// The first record of the tag; its refused attempts are those of every record.
    pub record: Exported,
    /// A later record names another digest.
    pub twice: bool,
}

/// The sorted file read back a tag at a time, from a byte offset.
pub(super) struct Groups {
    path: PathBuf,
    input: BufReader<File>,
    /// Offset of the next line not yet consumed.
    offset: u64,
    /// A line read ahead (the next group's first), and its length.
    ahead: Option<(Vec<u8>, Exported, u64)>,
}

impl Groups {
    pub fn open(path: &Path, offset: u64) -> Result<Self, StoreError> {
        let mut f = File::open(path).map_err(|e| io("open", path, e))?;
        f.seek(SeekFrom::Start(offset)).map_err(|e| io("read", path, e))?;
        Ok(Self {
            path: path.to_owned(),
            input: BufReader::with_capacity(1 << 20, f),
            offset,
            ahead: None,
        })
    }

    /// Where the group after the last one returned starts.
    pub fn offset(&self) -> u64 {
        self.offset - self.ahead.as_ref().map_or(0, |a| a.2)
    }

    fn line(&mut self) -> Result<Option<(Vec<u8>, Exported, u64)>, StoreError> {
        let mut line = Vec::new();
        let n = self
            .input
            .read_until(b'\n', &mut line)
            .map_err(|e| io("read", &self.path, e))?;
        if n == 0 {
            return Ok(None);
        }
        self.offset += n as u64;
        let bad = |why: &str| StoreError::Corrupt {
            key: self.path.display().to_string(),
            why: format!("{why} at byte {}", self.offset - n as u64),
        };
        let tab = line.iter().position(|b| *b == b'\t').ok_or_else(|| bad("no key"))?;
        let record = serde_json::from_slice(line[tab + 1..].trim_ascii_end()).map_err(|_| bad("not a record"))?;
        line.truncate(tab);
        Ok(Some((line, record, n as u64)))
    }

    /// The next tag's records.
    pub fn next_group(&mut self) -> Result<Option<Group>, StoreError> {
        let first = match self.ahead.take() {
            Some(a) => a,
            None => match self.line()? {
                Some(l) => l,
                None => return Ok(None),
            },
        };
        let (key, mut record, _) = first;
        let mut twice = false;
        let mut refused: Vec<Refused> = Vec::new();
        loop {
            match self.line()? {
                Some((k, r, _)) if k == key => {
                    twice |= r.digest != record.digest;
                    if let Some(merged) = merge_refusals(&refused, &r.refused) {
                        refused = merged;
                    }
                }
                other => {
                    self.ahead = other;
                    break;
                }
            }
        }
        if let Some(merged) = merge_refusals(&record.refused, &refused) {
            record.refused = merged;
        }
        Ok(Some(Group { key, record, twice }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Digest, Repository, Tag};
    use crate::store::{Pin, PinSource};

    fn rec(tag: &str, d: char) -> Exported {
        let digest = Digest::parse(&format!("sha256:{}", d.to_string().repeat(64))).unwrap();
        Exported::of(
            Repository::parse("a/b").unwrap(),
            Tag::parse(tag).unwrap(),
            &Pin::now(digest, PinSource::Push),
        )
    }

    #[test]
    fn records_are_sorted_by_tag_and_read_back_a_tag_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("import.jsonl");
        let records = [
            rec("v3", 'c'),
            rec("v1", 'a'),
            rec("v2", 'b'),
            rec("v1", 'f'),
            rec("v1", 'a'),
        ];
        sort_into(&target, &mut records.iter()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "the runs are gone");
        let mut groups = Groups::open(&target, 0).unwrap();
        let g = groups.next_group().unwrap().unwrap();
        assert_eq!(
            (g.record.tag.as_str(), g.record.digest.as_str().as_bytes()[7], g.twice),
            ("v1", b'a', true)
        );
        let after_v1 = groups.offset();
        let g = groups.next_group().unwrap().unwrap();
        assert_eq!((g.record.tag.as_str(), g.twice), ("v2", false));
        // Read again from where v1 ended.
        let mut again = Groups::open(&target, after_v1).unwrap();
        assert_eq!(again.next_group().unwrap().unwrap().record.tag.as_str(), "v2");
        assert_eq!(groups.next_group().unwrap().unwrap().record.tag.as_str(), "v3");
        assert!(groups.next_group().unwrap().is_none());
    }

    #[test]
    fn runs_are_merged_stably() {
        let dir = tempfile::tempdir().unwrap();
        let runs: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("r{i}"))).collect();
        write_run(&runs[0], [b"a\t1\n".to_vec(), b"c\t1\n".to_vec()].into_iter()).unwrap();
        write_run(&runs[1], [b"a\t2\n".to_vec(), b"b\t2\n".to_vec()].into_iter()).unwrap();
        write_run(&runs[2], std::iter::empty()).unwrap();
        let out = dir.path().join("out");
        merge(&runs, &out).unwrap();
        assert_eq!(std::fs::read_to_string(out).unwrap(), "a\t1\na\t2\nb\t2\nc\t1\n");
    }
}
