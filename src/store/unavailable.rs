//! The store used when the real one could not be opened: every call fails, so every
//! write that needs a decision, and every pull by a protected tag with `reads = "pinned"`,
//! is refused (fail closed) while other reads keep flowing.

use super::{
    DeleteRecord, ImportError, ImportOutcome, ImportSource, PinStore, Protect, Refused, StoreError, TagRecord, TagState,
};
use crate::oci::{Digest, Repository, Tag};

pub struct UnavailableStore {
    pub reason: String,
}

impl UnavailableStore {
    fn fail<T>(&self) -> Result<T, StoreError> {
        Err(StoreError::Unavailable(self.reason.clone()))
    }
}

impl PinStore for UnavailableStore {
    fn record(&self, _: &Repository, _: &Tag) -> Result<TagRecord, StoreError> {
        self.fail()
    }
    fn update(
        &self,
        _: &Repository,
        _: &[Tag],
        _: &mut dyn FnMut(u64, &mut [TagRecord]),
    ) -> Result<Vec<TagRecord>, StoreError> {
        self.fail()
    }
    fn record_refusal(&self, _: &Repository, _: &Tag, _: &Refused) -> Result<(), StoreError> {
        self.fail()
    }
    fn refusals(&self, _: &Repository, _: &Tag) -> Result<Vec<Refused>, StoreError> {
        self.fail()
    }
    fn tags_pinned_to(&self, _: &Repository, _: &Digest) -> Result<Vec<Tag>, StoreError> {
        self.fail()
    }
    fn begin_delete(&self, _: &Repository, _: &Digest, _: &str) -> Result<(), StoreError> {
        self.fail()
    }
    fn end_delete(&self, _: &Repository, _: &Digest, _: &str) -> Result<(), StoreError> {
        self.fail()
    }
    fn deletes_in_flight(&self, _: &Repository, _: &[Digest], _: u64) -> Result<Vec<Digest>, StoreError> {
        self.fail()
    }
    fn list_deletes(&self, _: Option<&Repository>) -> Result<Vec<DeleteRecord>, StoreError> {
        self.fail()
    }
    fn protect(&self, _: &Repository, _: &Digest, _: &[Digest], _: Protect) -> Result<(), StoreError> {
        self.fail()
    }
    fn has_refs(&self, _: &Repository, _: &Digest) -> Result<bool, StoreError> {
        self.fail()
    }
    fn refs_of(&self, _: &Repository, _: &Digest) -> Result<Vec<Digest>, StoreError> {
        self.fail()
    }
    fn holders(&self, _: &Repository) -> Result<Vec<Digest>, StoreError> {
        self.fail()
    }
    fn referenced_by(&self, _: &Repository, _: &Digest) -> Result<Vec<Digest>, StoreError> {
        self.fail()
    }
    fn list(
        &self,
        _: Option<&Repository>,
        _: Option<&(Repository, Tag)>,
        _: usize,
    ) -> Result<Vec<(Repository, Tag, TagState)>, StoreError> {
        self.fail()
    }
    fn import_from(&self, _: &mut dyn ImportSource, _: &str) -> Result<ImportOutcome, ImportError> {
        Ok(self.fail()?)
    }
    fn log_head(&self) -> Result<crate::log::Frontier, StoreError> {
        self.fail()
    }
    fn log_leaves(&self, _: u64, _: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        self.fail()
    }
    fn log_nodes(&self, _: &[crate::log::NodeId]) -> Result<Vec<crate::log::Hash>, StoreError> {
        self.fail()
    }
    fn lead(&self) -> Result<bool, StoreError> {
        self.fail()
    }
    fn check(&self) -> Result<(), StoreError> {
        self.fail()
    }
}
