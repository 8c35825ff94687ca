//! Protocol values of the OCI Distribution API: validated names, tags and digests, and
//! the error envelope every refusal is written in.

mod error;
mod names;
pub mod references;
pub mod strict_json;

#[cfg(test)]
mod go_reading_tests;

pub use error::{ErrorCode, ErrorEnvelope};
pub use names::{Digest, DigestAlgorithm, NameError, Reference, Repository, Tag};
pub use references::{references, References};
