//! The rules: an ordered list over (repository, tag); the first that matches decides the
//! tag's mode. Pure and cheap: two glob-set lookups per rule.
//!
//! Globs are globset's with literal separators: `*`, `?`, `[...]` and `{a,b}` stay inside
//! one path segment and `**` spans segments, so `sandbox/**` matches everything below
//! `sandbox/` (and not `sandbox` itself). Order: the `--exclude` globs first (each a
//! `mutable` rule for that tag glob in every repository), then the configured rules, or,
//! when none are configured, the built-in rules; a (repository, tag) no rule matches is
//! `immutable`.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::oci::{Repository, Tag};

/// How a tag is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Pinned to its first digest: today's behaviour.
    Immutable,
    /// Forwarded with no decision and no pin.
    Mutable,
    /// Pinned, and may only grow (signatures, attestations, referrer lists).
    AppendOnly,
    /// Decided as immutable, but what would be refused is allowed, warned and recorded.
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Immutable => "immutable",
            Self::Mutable => "mutable",
            Self::AppendOnly => "append-only",
            Self::Audit => "audit",
        }
    }

    /// Whether tagpin decides (and pins) pushes of such a tag.
    pub fn is_protected(self) -> bool {
        self != Self::Mutable
    }
}

/// Which rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy {
    /// The `--exclude` glob with this index.
    Exclude(usize),
    /// The configured rule with this index (from 0, as in the config file).
    Rule(usize),
    /// The built-in rule with this index (no rules configured).
    DefaultRule(usize),
    /// No rule matched: immutable.
    Default,
}

impl std::fmt::Display for DecidedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exclude(i) => write!(f, "exclude {i}"),
            Self::Rule(i) => write!(f, "rule {i}"),
            Self::DefaultRule(i) => write!(f, "default rule {i}"),
            Self::Default => write!(f, "default"),
        }
    }
}

/// The mode of one (repository, tag) and what decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decided {
    pub mode: Mode,
    pub by: DecidedBy,
}

/// A rule as configured (validated patterns, not yet compiled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    pub repositories: Vec<String>,
    pub tags: Vec<String>,
    pub mode: Mode,
}

impl RuleSpec {
    /// The built-in rules: signature, attestation and referrer tags (`sha256-<hex>`,
    /// `sha256-<hex>.sig`, `.att`, ...) append-only; everything else falls to the
    /// immutable default.
    pub fn defaults() -> Vec<RuleSpec> {
        vec![RuleSpec {
            repositories: vec!["**".into()],
            tags: vec!["sha256-*".into(), "sha512-*".into()],
            mode: Mode::AppendOnly,
        }]
    }
}

#[derive(Debug)]
struct Compiled {
    spec: RuleSpec,
    repositories: GlobSet,
    tags: GlobSet,
}

/// A glob that does not compile; `index` is the rule's, `key` the field's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pattern:?}: {why}")]
pub struct GlobError {
    pub pattern: String,
    pub why: String,
}

/// Compile globs with literal separators.
pub fn glob_set(patterns: &[String]) -> Result<GlobSet, GlobError> {
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        let glob = GlobBuilder::new(p)
            .literal_separator(true)
            .build()
            .map_err(|e| GlobError {
                pattern: p.clone(),
                why: e.kind().to_string(),
            })?;
        set.add(glob);
    }
    set.build().map_err(|e| GlobError {
        pattern: patterns.join(","),
        why: e.to_string(),
    })
}

/// The policy in force: excludes, then rules (configured or built-in).
#[derive(Debug)]
pub struct Policy {
    excludes: Vec<(String, GlobSet)>,
    rules: Vec<Compiled>,
    /// `rules` are the built-in ones.
    built_in: bool,
}

impl Policy {
    /// `rules: None` means "not configured": the built-in rules apply. Patterns were
    /// validated with the config; a failure here names the pattern.
    pub fn new(exclude: &[String], rules: Option<&[RuleSpec]>) -> Result<Self, GlobError> {
        let excludes = exclude
            .iter()
            .map(|g| Ok((g.clone(), glob_set(std::slice::from_ref(g))?)))
            .collect::<Result<Vec<_>, GlobError>>()?;
        let built_in = rules.is_none();
        let specs = rules.map_or_else(RuleSpec::defaults, <[RuleSpec]>::to_vec);
        let rules = specs
            .into_iter()
            .map(|spec| {
                Ok(Compiled {
                    repositories: glob_set(&spec.repositories)?,
                    tags: glob_set(&spec.tags)?,
                    spec,
                })
            })
            .collect::<Result<Vec<_>, GlobError>>()?;
        Ok(Self {
            excludes,
            rules,
            built_in,
        })
    }

    /// The mode of `repo:tag` and the rule that decided it.
    pub fn decide(&self, repo: &Repository, tag: &Tag) -> Decided {
        self.decide_str(repo.as_str(), tag.as_str())
    }

    fn decide_str(&self, repo: &str, tag: &str) -> Decided {
        for (i, (_, set)) in self.excludes.iter().enumerate() {
            if set.is_match(tag) {
                return Decided {
                    mode: Mode::Mutable,
                    by: DecidedBy::Exclude(i),
                };
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            if r.repositories.is_match(repo) && r.tags.is_match(tag) {
                let by = if self.built_in {
                    DecidedBy::DefaultRule(i)
                } else {
                    DecidedBy::Rule(i)
                };
                return Decided { mode: r.spec.mode, by };
            }
        }
        Decided {
            mode: Mode::Immutable,
            by: DecidedBy::Default,
        }
    }

    /// Whether tagpin decides pushes of `repo:tag`.
    pub fn is_protected(&self, repo: &Repository, tag: &Tag) -> bool {
        self.decide(repo, tag).mode.is_protected()
    }

    /// The patterns of the rule that decided, for `policy explain`.
    pub fn describe(&self, by: DecidedBy) -> String {
        match by {
            DecidedBy::Exclude(i) => format!("tags = [{:?}] (--exclude)", self.excludes[i].0),
            DecidedBy::Rule(i) | DecidedBy::DefaultRule(i) => {
                let s = &self.rules[i].spec;
                format!("repositories = {:?}, tags = {:?}", s.repositories, s.tags)
            }
            DecidedBy::Default => "no rule matched: everything else is immutable".into(),
        }
    }

    /// One line summarising the policy, for the start-up and reload logs.
    pub fn summary(&self) -> String {
        let rules: Vec<String> = self
            .rules
            .iter()
            .map(|r| format!("{:?}:{:?}={}", r.spec.repositories, r.spec.tags, r.spec.mode.as_str()))
            .collect();
        format!(
            "{} exclude(s) {:?}; {} {} rule(s) [{}]; otherwise immutable",
            self.excludes.len(),
            self.excludes.iter().map(|(g, _)| g.as_str()).collect::<Vec<_>>(),
            self.rules.len(),
            if self.built_in { "built-in" } else { "configured" },
            rules.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(repos: &[&str], tags: &[&str], mode: Mode) -> RuleSpec {
        RuleSpec {
            repositories: repos.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            mode,
        }
    }

    /// The worked example of the docs: signatures append-only, sandbox mutable, legacy
    /// audit, moving tags mutable, everything else immutable.
    fn example() -> Policy {
        let rules = vec![
            spec(&["**"], &["sha256-*", "sha512-*"], Mode::AppendOnly),
            spec(&["sandbox/**"], &["*"], Mode::Mutable),
            spec(&["legacy/**"], &["*"], Mode::Audit),
            spec(&["**"], &["latest", "main", "pr-*"], Mode::Mutable),
        ];
        Policy::new(&[], Some(&rules)).unwrap()
    }

    #[test]
    fn first_match_decides_on_a_table_of_cases() {
        let p = example();
        let sig = "sha256-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.sig";
        let cases: &[(&str, &str, Mode, DecidedBy)] = &[
            ("prod/api", "1.4.2", Mode::Immutable, DecidedBy::Default),
            ("prod/api", "latest", Mode::Mutable, DecidedBy::Rule(3)),
            ("prod/api", "pr-17", Mode::Mutable, DecidedBy::Rule(3)),
            ("prod/api", sig, Mode::AppendOnly, DecidedBy::Rule(0)),
            ("sandbox/x", "1.0", Mode::Mutable, DecidedBy::Rule(1)),
            ("sandbox/a/b/c", "1.0", Mode::Mutable, DecidedBy::Rule(1)),
            // `sandbox/**` is below sandbox/, not sandbox itself.
            ("sandbox", "1.0", Mode::Immutable, DecidedBy::Default),
            // Signatures in sandbox: rule 0 comes first.
            ("sandbox/x", sig, Mode::AppendOnly, DecidedBy::Rule(0)),
            ("legacy/old", "1.0", Mode::Audit, DecidedBy::Rule(2)),
            ("legacy/old", "latest", Mode::Audit, DecidedBy::Rule(2)),
            ("notlegacy/old", "1.0", Mode::Immutable, DecidedBy::Default),
            ("prod/api", "main", Mode::Mutable, DecidedBy::Rule(3)),
            ("prod/api", "mainline", Mode::Immutable, DecidedBy::Default),
        ];
        for (repo, tag, mode, by) in cases {
            let d = p.decide_str(repo, tag);
            assert_eq!((d.mode, d.by), (*mode, *by), "{repo}:{tag}");
        }
    }

    #[test]
    fn a_single_star_stays_inside_one_segment() {
        let p = Policy::new(&[], Some(&[spec(&["team/*"], &["*"], Mode::Mutable)])).unwrap();
        assert_eq!(p.decide_str("team/api", "1").mode, Mode::Mutable);
        assert_eq!(p.decide_str("team/api/sub", "1").mode, Mode::Immutable);
        let p = Policy::new(&[], Some(&[spec(&["{a,b}/**"], &["v?"], Mode::Audit)])).unwrap();
        assert_eq!(p.decide_str("b/x", "v1").mode, Mode::Audit);
        assert_eq!(p.decide_str("b/x", "v10").mode, Mode::Immutable);
    }

    #[test]
    fn excludes_come_first_and_defaults_apply_without_rules() {
        let p = Policy::new(&["latest".into()], None).unwrap();
        assert_eq!(p.decide_str("a", "latest").by, DecidedBy::Exclude(0));
        let d = p.decide_str("a", "sha256-abc");
        assert_eq!((d.mode, d.by), (Mode::AppendOnly, DecidedBy::DefaultRule(0)));
        assert_eq!(p.decide_str("a", "1.0").by, DecidedBy::Default);
        assert_eq!(DecidedBy::DefaultRule(0).to_string(), "default rule 0");
        let all = Policy::new(&["*".into()], None).unwrap();
        assert_eq!(all.decide_str("x/y", "sha256-abc").mode, Mode::Mutable);
    }

    #[test]
    fn bad_globs_name_the_pattern() {
        let e = glob_set(&["a[".into()]).unwrap_err();
        assert_eq!(e.pattern, "a[");
    }
}
