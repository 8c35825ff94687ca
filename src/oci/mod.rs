//! Protocol values of the OCI Distribution API: validated names, tags and digests, and
//! the error envelope every refusal is written in.

mod error;
mod names;
pub mod references;

pub use error::{ErrorCode, ErrorEnvelope};
pub use names::{Digest, DigestAlgorithm, NameError, Reference, Repository, Tag};
pub use references::{references, References};
