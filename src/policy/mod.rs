//! Which tags are protected and how, and the decision for a push or delete.
//!
//! [`rules::Policy`] maps a (repository, tag) to its [`Mode`] by the first matching rule;
//! [`decide_push`] is the pure decision given what each tag is held to;
//! [`append::check_append`] is the append-only comparison of two manifests.

pub mod append;
mod decision;
mod refusal;
pub mod rules;

pub use append::{check_append, NotAppend};
pub use decision::{decide_push, Conflict, ConflictReason, Held, PushDecision, TagInput, Verdict};
pub use refusal::{warning_header, Refusal};
pub use rules::{Decided, DecidedBy, Mode, Policy, RuleSpec};
