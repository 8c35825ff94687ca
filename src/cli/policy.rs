//! `tagpin policy explain REPOSITORY:TAG`: which mode a tag gets and which rule decided,
//! from the same config a server would load, without a server running.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::config::RawConfig;
use crate::oci::{Repository, Tag};
use crate::policy::Policy;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the mode of REPOSITORY:TAG and the rule that decides it. Exit status 0; 64
    /// on a bad config or a malformed REPOSITORY:TAG.
    Explain(ExplainArgs),
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The tag to explain, as REPOSITORY:TAG (e.g. prod/api:1.4.2).
    pub reference: String,
    /// TOML config file (the built-in rules apply without one).
    #[arg(long, env = "TAGPIN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Tag globs that stay mutable, as `tagpin serve --exclude` (repeatable).
    #[arg(long = "exclude", env = "TAGPIN_EXCLUDE", value_delimiter = ',')]
    pub exclude: Vec<String>,
}

/// Why `explain` could not answer; every case is a usage error (exit 64).
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("{0:?} is not REPOSITORY:TAG: {1}")]
    Reference(String, String),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Glob(#[from] crate::policy::rules::GlobError),
}

/// Split `REPOSITORY:TAG` on the last `:` (a repository has no `:`; a registry host with
/// a port is not part of a repository name here).
pub fn parse_reference(s: &str) -> Result<(Repository, Tag), ExplainError> {
    let bad = |why: String| ExplainError::Reference(s.to_owned(), why);
    if let Some((repo, _)) = s.split_once('@') {
        return Err(bad(format!(
            "it names a digest, which never moves; give the tag, as {repo}:TAG"
        )));
    }
    let (repo, tag) = s.rsplit_once(':').ok_or_else(|| bad("no ':' before the tag".into()))?;
    // An image reference as clients write it starts with the registry host, which is not
    // part of the repository name tagpin keeps.
    if let Some((host, rest)) = repo.split_once('/') {
        if Repository::parse(repo).is_err() && Repository::parse(rest).is_ok() && host.contains(['.', ':']) {
            return Err(bad(format!("leave out the registry host {host}: {rest}:{tag}")));
        }
    }
    let repo = Repository::parse(repo).map_err(|e| bad(e.to_string()))?;
    let tag = Tag::parse(tag).map_err(|e| bad(e.to_string()))?;
    Ok((repo, tag))
}

/// Run `policy explain`, writing the answer to `out`.
pub fn explain(args: ExplainArgs, out: &mut impl Write) -> Result<(), ExplainError> {
    let (repo, tag) = parse_reference(&args.reference)?;
    let file = match &args.config {
        Some(path) => RawConfig::load(path)?,
        None => RawConfig::default(),
    };
    // Validate the file as `serve` would, so a config explain accepts is one serve
    // accepts; only `upstream` may be missing here.
    let mut checked = file.clone();
    if checked.upstream.is_none() {
        checked.upstream = Some("http://127.0.0.1:1".into());
    }
    if !args.exclude.is_empty() {
        checked.exclude = Some(args.exclude.clone());
    }
    let config = checked.validate()?;
    let policy = Policy::new(&config.exclude, config.rules.as_deref())?;
    let decided = policy.decide(&repo, &tag);
    let _ = writeln!(
        out,
        "{repo}:{tag}: {} (decided by {}: {})",
        decided.mode.as_str(),
        decided.by,
        policy.describe(decided.by)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_on_the_last_colon() {
        let (r, t) = parse_reference("prod/api:1.4.2").unwrap();
        assert_eq!((r.as_str(), t.as_str()), ("prod/api", "1.4.2"));
        assert!(parse_reference("prod/api").is_err());
        assert!(parse_reference("Prod/api:1").is_err());
        assert!(parse_reference("a:-x").is_err());
        let why = |s: &str| parse_reference(s).unwrap_err().to_string();
        assert!(
            why("prod/api@sha256:0d1d").contains("names a digest, which never moves; give the tag, as prod/api:TAG"),
            "{}",
            why("prod/api@sha256:0d1d")
        );
        assert!(
            why("registry.example.com:5000/prod/api:1.4.2")
                .contains("leave out the registry host registry.example.com:5000: prod/api:1.4.2"),
            "{}",
            why("registry.example.com:5000/prod/api:1.4.2")
        );
        // A first component with a dot is a valid repository name, not a host.
        assert_eq!(parse_reference("my.org/api:1").unwrap().0.as_str(), "my.org/api");
    }

    #[test]
    fn without_a_config_the_built_in_rules_explain() {
        let mut out = Vec::new();
        let args = |r: &str| ExplainArgs {
            reference: r.into(),
            config: None,
            exclude: vec![],
        };
        explain(args("a/b:sha256-abc.sig"), &mut out).unwrap();
        explain(args("a/b:1.0"), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("a/b:sha256-abc.sig: append-only (decided by default rule 0"),
            "{text}"
        );
        assert!(text.contains("a/b:1.0: immutable (decided by default:"), "{text}");
    }
}
