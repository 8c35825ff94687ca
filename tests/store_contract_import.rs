//! The `PinStore` contract for imports read a record at a time (`import_from`), on every
//! backend: past several of the store's batches, a conflict or a bad record at the very
//! end still writes nothing, and a whole import writes every pin with its log entry.

mod common;
#[macro_use]
mod store_support;

use store_support::*;
use tagpin::oci::Repository;
use tagpin::store::{Exported, ImportError, ImportSource, PinStore};

/// More records than one batch of either store (2,000 on sled, 1,000 on PostgreSQL).
const MANY: usize = 2_500;

/// `n` pins of `r`, tags `t0000`…, each to its own digest.
fn many(r: &Repository, n: usize) -> Vec<Exported> {
    (0..n)
        .map(|i| {
            let digest = tagpin::oci::Digest::parse(&format!("sha256:{:064x}", i + 1)).unwrap();
            let pin = tagpin::store::Pin::now(digest, tagpin::store::PinSource::Push);
            Exported::of(r.clone(), tag(&format!("t{i:04}")), &pin)
        })
        .collect()
}

/// The records of a slice, then an input error instead of the end.
struct FailsAtEnd<'a>(std::slice::Iter<'a, Exported>);

impl ImportSource for FailsAtEnd<'_> {
    fn next_record(&mut self) -> Result<Option<Exported>, ImportError> {
        match self.0.next() {
            Some(r) => Ok(Some(r.clone())),
            None => Err(ImportError::Input("the input was cut short".into())),
        }
    }
}

fn a_conflict_or_a_bad_record_at_the_end_writes_nothing(s: &dyn PinStore) {
    let r = repo("i/many");
    s.pin_if_absent(&r, &[(tag("held"), pin('a'))]).unwrap();
    let size = s.log_head().unwrap().size();
    let mut records = many(&r, MANY);
    // Another digest for a tag held here, last.
    records.push(Exported::of(r.clone(), tag("held"), &pin('b')));
    let out = s.import_from(&mut records.iter(), "test").unwrap();
    assert_eq!((out.imported, out.conflicting), (0, 1), "{:?}", out.conflicts);
    // A tag of the file named again with another digest, last.
    records.pop();
    records.push(Exported::of(r.clone(), tag("t0000"), &pin('c')));
    let out = s.import_from(&mut records.iter(), "test").unwrap();
    assert_eq!((out.imported, out.conflicting), (0, 1), "{:?}", out.conflicts);
    assert!(out.conflicts[0].contains("appears twice"), "{:?}", out.conflicts);
    // The input failing after every record.
    records.pop();
    let e = s.import_from(&mut FailsAtEnd(records.iter()), "test").unwrap_err();
    assert!(e.to_string().contains("cut short"), "{e}");
    assert_eq!(s.list(Some(&r), None, 10_000).unwrap().len(), 1, "a pin was written");
    assert_eq!(s.log_head().unwrap().size(), size, "the log grew");
}

fn a_whole_import_writes_every_pin_with_its_entry(s: &dyn PinStore) {
    let r = repo("i/whole");
    let size = s.log_head().unwrap().size();
    let records = many(&r, MANY);
    let out = s.import_from(&mut records.iter(), "test").unwrap();
    assert_eq!((out.imported, out.unchanged, out.conflicting), (MANY, 0, 0));
    assert_eq!(s.log_head().unwrap().size(), size + MANY as u64);
    let held = s.list(Some(&r), None, 10_000).unwrap();
    assert_eq!(held.len(), MANY);
    for (i, (_, t, state)) in held.iter().enumerate() {
        assert_eq!((t, state.digest()), (&records[i].tag, &records[i].digest));
    }
    // Again: every record is unchanged, nothing written.
    let out = s.import_from(&mut records.iter(), "test").unwrap();
    assert_eq!((out.imported, out.unchanged), (0, MANY));
    assert_eq!(s.log_head().unwrap().size(), size + MANY as u64);
}

contract!(
    a_conflict_or_a_bad_record_at_the_end_writes_nothing,
    a_whole_import_writes_every_pin_with_its_entry,
);
