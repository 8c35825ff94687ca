//! The sled store's keys (`repo \0 tag`, `repo \0 digest`, index entries under a
//! prefix) and the small conversions every tree's code shares: sled's errors, and a
//! transaction's outcome.

use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::records::corrupt;
use crate::oci::{Digest, Repository, Tag};
use crate::store::StoreError;

pub(super) fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

pub(super) fn tag_key(repo: &Repository, tag: &Tag) -> Vec<u8> {
    [repo.as_str().as_bytes(), b"\0", tag.as_str().as_bytes()].concat()
}

pub(super) fn digest_key(repo: &Repository, digest: &Digest) -> Vec<u8> {
    [repo.as_str().as_bytes(), b"\0", digest.as_str().as_bytes()].concat()
}

/// `prefix \0 suffix`: an index entry, or the prefix of every entry under `prefix`
/// when `suffix` is empty.
pub(super) fn under(mut prefix: Vec<u8>, suffix: &str) -> Vec<u8> {
    prefix.push(0);
    prefix.extend_from_slice(suffix.as_bytes());
    prefix
}

pub(super) fn repo_prefix(repo: &Repository) -> Vec<u8> {
    let mut p = repo.as_str().as_bytes().to_vec();
    p.push(0);
    p
}

/// The values after `prefix \0` of every key of `tree` that starts with it, parsed.
pub(super) fn suffixes<T>(
    tree: &sled::Tree,
    prefix: Vec<u8>,
    parse: impl Fn(&str) -> Option<T>,
    what: &str,
) -> Result<Vec<T>, StoreError> {
    let prefix = under(prefix, "");
    tree.scan_prefix(&prefix)
        .keys()
        .map(|k| {
            let k = k.map_err(io)?;
            std::str::from_utf8(&k[prefix.len()..])
                .ok()
                .and_then(&parse)
                .ok_or_else(|| corrupt(&k, what))
        })
        .collect()
}

pub(super) type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

pub(super) fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

pub(super) fn settle<T>(r: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    match r {
        Ok(v) => Ok(v),
        Err(TransactionError::Abort(e)) => Err(e),
        Err(TransactionError::Storage(e)) => Err(io(e)),
    }
}
