//! What `tagpin seed` and `tagpin verify` share: which repositories to walk, how many
//! upstream requests the server may keep in flight for it, and where an interrupted walk
//! resumes.

use clap::Args;
use serde_json::Value;

use super::client::CliError;

#[derive(Debug, Clone, Default, Args)]
pub struct WalkArgs {
    /// Only this repository (default: every repository in the upstream's catalog).
    #[arg(long)]
    pub repository: Option<String>,
    /// Only the repositories after this one, in the catalog's (lexical) order: resume a
    /// walk that was interrupted, with the repository it printed.
    #[arg(long, value_name = "REPOSITORY", conflicts_with = "repository")]
    pub after: Option<String>,
    /// Upstream requests the server keeps in flight for this walk, at most its
    /// walk_concurrency setting [default: that setting].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: Option<u32>,
}

impl WalkArgs {
    /// The admin API's query parameters.
    pub fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(r) = &self.repository {
            q.push(("repository", r.clone()));
        }
        if let Some(a) = &self.after {
            q.push(("after", a.clone()));
        }
        if let Some(n) = self.concurrency {
            q.push(("concurrency", n.to_string()));
        }
        q
    }

    /// How to go on from `after` (the last repository done with every one before it).
    pub fn resume_hint(&self, command: &str, after: Option<&str>) -> String {
        if self.repository.is_some() {
            return format!("what was adopted or checked stays so; run `tagpin {command}` for it again");
        }
        let Some(after) = after else {
            return format!("no repository was finished; run `tagpin {command}` again from the start");
        };
        let concurrency = self
            .concurrency
            .map(|n| format!(" --concurrency {n}"))
            .unwrap_or_default();
        format!("resume with: tagpin {command} --after {after}{concurrency}")
    }
}

/// The resume point a stream line carries (`progress.after`, or an error line's
/// `after`), if it carries one.
pub fn resume_point(line: &Value) -> Option<String> {
    let after = line.get("progress").map_or(&line["after"], |p| &p["after"]);
    after.as_str().map(str::to_owned)
}

/// `walk`, unless Ctrl-C comes first: then an error, which the caller completes with
/// the resume hint.
pub async fn interruptible<T>(walk: impl std::future::Future<Output = Result<T, CliError>>) -> Result<T, CliError> {
    tokio::select! {
        r = walk => r,
        _ = tokio::signal::ctrl_c() => Err(CliError::Failed("interrupted".into())),
    }
}

/// `e`, a walk's failure after its stream began, with the hint how to go on.
pub fn with_hint(e: CliError, hint: &str) -> CliError {
    CliError::Failed(format!("{e}; {hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_resume_point_comes_from_progress_and_error_lines() {
        assert_eq!(
            resume_point(&json!({"progress": {"after": "team/app", "current": "x"}})),
            Some("team/app".into())
        );
        assert_eq!(resume_point(&json!({"progress": {"after": null}})), None);
        assert_eq!(resume_point(&json!({"error": "boom", "after": "a"})), Some("a".into()));
        assert_eq!(resume_point(&json!({"tag": {"repository": "a"}})), None);
    }

    #[test]
    fn the_hint_names_the_command_to_resume_with() {
        let args = WalkArgs {
            concurrency: Some(4),
            ..WalkArgs::default()
        };
        assert_eq!(
            args.resume_hint("seed", Some("team/app")),
            "resume with: tagpin seed --after team/app --concurrency 4"
        );
        assert!(args.resume_hint("verify", None).contains("from the start"));
        let one = WalkArgs {
            repository: Some("a".into()),
            ..WalkArgs::default()
        };
        assert!(!one.resume_hint("seed", Some("a")).contains("--after"));
    }
}
