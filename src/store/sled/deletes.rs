//! Digest deletes in flight and the references that protect pinned content, in the sled
//! backend: the `deletes`, `refs`, `refs_by_holder` and `holders` trees.

use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::records::{decode_delete, encode_delete, DeleteEntry};
use super::{corrupt, digest_key, io, repo_prefix, settle, under, SledStore};
use crate::oci::{Digest, Repository};
use crate::store::{now_secs, DeleteRecord, Protect, StoreError};

impl SledStore {
    /// Record a delete in flight. A repeat of one request restarts its record's time: it
    /// may land until the horizon counted from the last time it was forwarded.
    pub(super) fn record_delete(&self, repo: &Repository, digest: &Digest, request_id: &str) -> Result<(), StoreError> {
        let t = self.trees()?;
        let entry = DeleteEntry {
            request_id: request_id.to_owned(),
            started_at: now_secs(),
        };
        t.deletes
            .insert(under(digest_key(repo, digest), request_id), encode_delete(&entry))
            .map_err(io)?;
        self.flush_write(&t)
    }

    /// Remove the record of `request_id`'s delete, and only that one.
    pub(super) fn settle_delete(&self, repo: &Repository, digest: &Digest, request_id: &str) -> Result<(), StoreError> {
        let t = self.trees()?;
        let removed = t
            .deletes
            .remove(under(digest_key(repo, digest), request_id))
            .map_err(io)?;
        if removed.is_some() {
            self.flush_write(&t)?;
        }
        Ok(())
    }

    /// Those of `digests` (in the order given) with a delete record younger than
    /// `horizon` seconds.
    pub(super) fn young_deletes(
        &self,
        repo: &Repository,
        digests: &[Digest],
        horizon: u64,
    ) -> Result<Vec<Digest>, StoreError> {
        let t = self.trees()?;
        let now = now_secs();
        let mut out = Vec::new();
        for digest in digests {
            for item in t.deletes.scan_prefix(under(digest_key(repo, digest), "")) {
                let (k, v) = item.map_err(io)?;
                // Inclusive: times are whole seconds, so a record counts for the whole
                // of its last second.
                if decode_delete(&k, &v)?.started_at.saturating_add(horizon) >= now {
                    out.push(digest.clone());
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Every delete record of `repo`, or of every repository, in key order (repository,
    /// digest, request).
    pub(super) fn delete_records(&self, repo: Option<&Repository>) -> Result<Vec<DeleteRecord>, StoreError> {
        let t = self.trees()?;
        let prefix = repo.map(repo_prefix).unwrap_or_default();
        let mut out = Vec::new();
        for item in t.deletes.scan_prefix(&prefix) {
            let (k, v) = item.map_err(io)?;
            let entry = decode_delete(&k, &v)?;
            let text = std::str::from_utf8(&k).map_err(|e| corrupt(&k, e))?;
            let mut parts = text.splitn(3, '\0');
            let (Some(r), Some(d)) = (parts.next(), parts.next()) else {
                return Err(corrupt(&k, "not repo, digest and request"));
            };
            out.push(DeleteRecord {
                repository: Repository::parse(r).map_err(|e| corrupt(&k, e))?,
                digest: Digest::parse(d).map_err(|e| corrupt(&k, e))?,
                request_id: entry.request_id,
                started_at: entry.started_at,
            });
        }
        Ok(out)
    }

    /// Record `refs` of `holder`, from both sides, and (when complete) that they are.
    pub(super) fn record_refs(
        &self,
        repo: &Repository,
        holder: &Digest,
        refs: &[Digest],
        how: Protect,
    ) -> Result<(), StoreError> {
        let t = self.trees()?;
        let result = (&t.refs, &t.refs_by_holder, &t.holders).transaction(|(tx_refs, tx_by_holder, tx_holders)| {
            for r in refs {
                tx_refs.insert(under(digest_key(repo, r), holder.as_str()), &[][..])?;
                tx_by_holder.insert(under(digest_key(repo, holder), r.as_str()), &[][..])?;
            }
            if how.complete {
                tx_holders.insert(digest_key(repo, holder), &[][..])?;
            }
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        });
        settle(result)?;
        if how.durable {
            self.flush_write(&t)?;
        }
        Ok(())
    }
}
