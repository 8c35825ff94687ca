//! Which tags are protected, and the decision for a push or delete.
//!
//! [`Protection`] answers "is this tag of this repository protected?". Today the answer is
//! "unless a global exclude glob matches the tag"; per-repository rules will be more
//! [`Rule`]s evaluated in order, without changing any caller. [`decide_push`] is the pure
//! decision given what is pinned.

mod decision;
mod refusal;

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::oci::{Repository, Tag};

pub use decision::{decide_push, Conflict, Held, PushDecision, Verdict};
pub use refusal::Refusal;

/// One protection rule. Rules are consulted in order; the first that matches decides.
#[derive(Debug)]
enum Rule {
    /// Tags matching any of these globs, in any repository, stay mutable.
    ExcludeTags(GlobSet),
}

/// The protection policy.
#[derive(Debug)]
pub struct Protection {
    rules: Vec<Rule>,
}

impl Protection {
    /// Every tag protected except those matching one of `exclude`.
    pub fn new(exclude: &[String]) -> Result<Self, globset::Error> {
        let mut set = GlobSetBuilder::new();
        for g in exclude {
            set.add(Glob::new(g)?);
        }
        Ok(Self {
            rules: vec![Rule::ExcludeTags(set.build()?)],
        })
    }

    pub fn is_protected(&self, _repo: &Repository, tag: &Tag) -> bool {
        for rule in &self.rules {
            match rule {
                Rule::ExcludeTags(set) if set.is_match(tag.as_str()) => return false,
                Rule::ExcludeTags(_) => {}
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn protected(exclude: &[&str], tag: &str) -> bool {
        let ex: Vec<String> = exclude.iter().map(|s| s.to_string()).collect();
        Protection::new(&ex)
            .unwrap()
            .is_protected(&Repository::parse("a/b").unwrap(), &Tag::parse(tag).unwrap())
    }

    #[test]
    fn everything_is_protected_by_default() {
        assert!(protected(&[], "latest"));
        assert!(protected(&[], "1.0"));
    }

    #[test]
    fn excludes_are_globs_over_the_whole_tag() {
        assert!(!protected(&["latest"], "latest"));
        assert!(protected(&["latest"], "latest2"));
        assert!(!protected(&["dev-*"], "dev-abc"));
        assert!(protected(&["dev-*"], "xdev-abc"));
        assert!(!protected(&["*"], "anything"));
        assert!(!protected(&["{edge,nightly}"], "nightly"));
        assert!(protected(&["v1.?"], "v1.10"));
    }
}
