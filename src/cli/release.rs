//! `tagpin release REPOSITORY:TAG --reason TEXT [--ttl 15m]` and `tagpin release --cancel
//! REPOSITORY:TAG`: break glass for one push (or delete) of a pinned tag, through
//! `POST` and `DELETE /admin/v1/releases`.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use http::Method;
use serde_json::{json, Value};

use super::client::{AdminArgs, CliError, Client, EXIT_OK};
use super::output;

/// Longest release the admin API grants.
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 released (or cancelled); 2 on any error, e.g. the tag has no settled pin \
                        or (with --cancel) no release."
)]
pub struct ReleaseArgs {
    /// The tag to release, as REPOSITORY:TAG.
    #[arg(required_unless_present = "cancel", conflicts_with = "cancel")]
    pub reference: Option<String>,
    /// Why the tag must move, recorded in the pin's history and the audit log.
    #[arg(long, required_unless_present = "cancel", conflicts_with = "cancel")]
    pub reason: Option<String>,
    /// How long the release stays usable, e.g. 90s, 15m, 2h (at most 24h).
    #[arg(long, default_value = "15m", value_parser = parse_ttl, conflicts_with = "cancel")]
    pub ttl: Duration,
    /// Withdraw the unused release of REPOSITORY:TAG instead.
    #[arg(long, value_name = "REPOSITORY:TAG")]
    pub cancel: Option<String>,
    /// The admin API's JSON answer, for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// A humantime duration of whole seconds, 1 s to 24 h.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 15m: {e}"))?;
    if d.subsec_nanos() != 0 || d.as_secs() == 0 {
        return Err(format!("{s:?}: the TTL must be a whole number of seconds, at least 1s"));
    }
    if d > MAX_TTL {
        return Err(format!("{s:?}: a release lasts at most 24h"));
    }
    Ok(d)
}

pub async fn run(client: &Client, args: &ReleaseArgs, out: &mut dyn Write) -> Result<u8, CliError> {
    let io = |e: std::io::Error| CliError::Io(format!("cannot write the output: {e}"));
    if let Some(reference) = &args.cancel {
        let (repo, tag) = super::policy::parse_reference(reference).map_err(|e| CliError::Usage(e.to_string()))?;
        let query = [("repository", repo.as_str()), ("tag", tag.as_str())];
        let answer = client.json(Method::DELETE, "releases", &query, None).await?;
        if args.json {
            writeln!(out, "{answer}").map_err(io)?;
        } else {
            writeln!(out, "{}", describe_cancel(&answer)).map_err(io)?;
        }
        return Ok(EXIT_OK);
    }
    let (Some(reference), Some(reason)) = (&args.reference, &args.reason) else {
        return Err(CliError::Usage("a release needs REPOSITORY:TAG and --reason".into()));
    };
    let (repo, tag) = super::policy::parse_reference(reference).map_err(|e| CliError::Usage(e.to_string()))?;
    if reason.trim().is_empty() {
        return Err(CliError::Usage("--reason must say why the tag must move".into()));
    }
    let body = json!({
        "repository": repo.as_str(),
        "tag": tag.as_str(),
        "reason": reason,
        "ttl_seconds": args.ttl.as_secs(),
    });
    let answer = client.json(Method::POST, "releases", &[], Some(body)).await?;
    if args.json {
        writeln!(out, "{answer}").map_err(io)?;
    } else {
        writeln!(out, "{}", describe(&answer)).map_err(io)?;
    }
    Ok(EXIT_OK)
}

/// The release in one sentence.
pub fn describe(r: &Value) -> String {
    format!(
        "released {}:{} for one push or delete until {} (by {}: {})",
        output::text(&r["repository"]),
        output::text(&r["tag"]),
        output::time(&r["expires_at"]),
        output::text(&r["by"]),
        output::text(&r["reason"]),
    )
}

pub fn describe_cancel(r: &Value) -> String {
    format!(
        "cancelled the release of {}:{} (by {}: {})",
        output::text(&r["repository"]),
        output::text(&r["tag"]),
        output::text(&r["cancelled"]["by"]),
        output::text(&r["cancelled"]["reason"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_are_whole_seconds_up_to_a_day() {
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_ttl("24h"), Ok(MAX_TTL));
        assert!(parse_ttl("24h 1s").is_err());
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("1500ms").is_err());
        assert!(parse_ttl("soon").is_err());
    }

    #[test]
    fn releases_read_as_one_sentence() {
        let r = json!({"repository": "a/b", "tag": "v1", "by": "alice", "reason": "CVE fix",
                       "created_at": 0, "expires_at": 900});
        assert_eq!(
            describe(&r),
            "released a/b:v1 for one push or delete until 1970-01-01T00:15:00Z (by alice: CVE fix)"
        );
        let c = json!({"repository": "a/b", "tag": "v1", "cancelled": r});
        assert_eq!(
            describe_cancel(&c),
            "cancelled the release of a/b:v1 (by alice: CVE fix)"
        );
    }
}
