//! Which tags are protected and how, and the decision for a push or delete.
//!
//! [`rules::Policy`] maps a (repository, tag) to its [`Mode`] by the first matching rule;
//! [`Conflict`] is why a decision of [`crate::pinning`] refused a push;
//! [`append::check_append`] is the append-only comparison of two manifests.

pub mod append;
mod conflict;
mod refusal;
pub mod rules;

pub use append::{check_append, NotAppend};
pub use conflict::{Conflict, ConflictReason};
pub use refusal::{warning_header, Refusal};
pub use rules::{Decided, DecidedBy, Mode, Policy, RuleSpec};
