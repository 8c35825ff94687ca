//! `tagpin claims list [--repository R]` and `tagpin claims clear REPOSITORY:TAG |
//! REPOSITORY@DIGEST --reason TEXT`: the records of pushes and deletes whose outcome was
//! lost, and clearing those an operator knows failed, through `GET /admin/v1/claims` and
//! `POST /admin/v1/claims/clear`.

use std::io::Write;

use clap::{Args, Subcommand};
use http::Method;
use serde_json::{json, Value};

use super::client::{AdminArgs, CliError, Client, EXIT_OK};
use super::output;
use crate::oci::{Digest, Repository, Tag};

#[derive(Debug, Subcommand)]
pub enum ClaimsCommand {
    /// List the records of pushes and deletes whose outcome is not known.
    List(ListArgs),
    /// Clear the write records of a tag, or the delete records of a digest, whose writes
    /// are known to have failed.
    Clear(ClearArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Exit status: 0 listed (none is a success); 2 on any error.")]
pub struct ListArgs {
    /// Only this repository's records.
    #[arg(long)]
    pub repository: Option<String>,
    /// The admin API's JSON answer (`claims` and `deletes`), for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Only clear a record whose write you know did not take effect at the upstream: while it \
                  stands, no other digest can take the tag (or the digest cannot be pinned).\n\n\
                  Exit status: 0 cleared; 2 on any error, e.g. no record to clear or no --reason."
)]
pub struct ClearArgs {
    /// REPOSITORY:TAG clears every write record of the tag; REPOSITORY@sha256:… every
    /// delete record of the digest.
    #[arg(value_name = "REPOSITORY:TAG|REPOSITORY@DIGEST", value_parser = parse_target)]
    pub target: Target,
    /// Required: why the write is known to have failed, recorded in the audit log (and in
    /// a pinned tag's history).
    // Checked in `clear` rather than by clap, so its absence is a one-line error that
    // names the flag (the first line of clap's own says only that something is missing).
    #[arg(long)]
    pub reason: Option<String>,
    /// The admin API's JSON answer, for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// What `claims clear` clears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tag(Repository, Tag),
    Digest(Repository, Digest),
}

/// `REPOSITORY@DIGEST` (a tag has no `@`), else `REPOSITORY:TAG`.
pub fn parse_target(s: &str) -> Result<Target, String> {
    if let Some((repo, digest)) = s.split_once('@') {
        let bad = |why: String| format!("{s:?} is not REPOSITORY@DIGEST: {why}");
        let repo = Repository::parse(repo).map_err(|e| bad(e.to_string()))?;
        let digest = Digest::parse(digest).map_err(|e| bad(e.to_string()))?;
        return Ok(Target::Digest(repo, digest));
    }
    let (repo, tag) = super::policy::parse_reference(s).map_err(|e| e.to_string())?;
    Ok(Target::Tag(repo, tag))
}

/// `claims list`: both kinds of record, as tables or as the API's JSON.
pub async fn list(client: &Client, args: &ListArgs, out: &mut dyn Write) -> Result<u8, CliError> {
    let query: Vec<(&str, &str)> = args.repository.iter().map(|r| ("repository", r.as_str())).collect();
    let answer = client.json(Method::GET, "claims", &query, None).await?;
    if !answer["claims"].is_array() || !answer["deletes"].is_array() {
        return Err(CliError::Protocol(
            "a claims answer without claims and deletes lists".into(),
        ));
    }
    if args.json {
        writeln!(out, "{answer}").map_err(io)?;
    } else {
        render_list(&answer, out).map_err(io)?;
    }
    Ok(EXIT_OK)
}

/// The records for people: a table of tag writes, then one of digest deletes.
pub fn render_list(answer: &Value, out: &mut dyn Write) -> std::io::Result<()> {
    let claims = answer["claims"].as_array().map_or(&[][..], Vec::as_slice);
    let deletes = answer["deletes"].as_array().map_or(&[][..], Vec::as_slice);
    if claims.is_empty() && deletes.is_empty() {
        return writeln!(out, "no write or delete records: every forwarded write has its answer");
    }
    writeln!(out, "WRITES ({})", claims.len())?;
    let mut t = output::table(&[
        "REPOSITORY",
        "TAG",
        "DIGEST",
        "KIND",
        "PINNED TO",
        "REQUEST",
        "AGE",
        "PAST HORIZON",
    ]);
    for c in claims {
        t.add_row(vec![
            output::text(&c["repository"]),
            output::text(&c["tag"]),
            output::short_digest(&c["digest"]),
            output::text(&c["kind"]),
            output::short_digest(&c["pinned_digest"]),
            output::text(&c["request_id"]),
            age(&c["age_seconds"]),
            yes_no(&c["past_horizon"]),
        ]);
    }
    output::print(out, &t)?;
    writeln!(out, "\nDELETES ({})", deletes.len())?;
    let mut t = output::table(&["REPOSITORY", "DIGEST", "REQUEST", "AGE", "PAST HORIZON"]);
    for d in deletes {
        t.add_row(vec![
            output::text(&d["repository"]),
            output::short_digest(&d["digest"]),
            output::text(&d["request_id"]),
            age(&d["age_seconds"]),
            yes_no(&d["past_horizon"]),
        ]);
    }
    output::print(out, &t)
}

/// Seconds in the largest unit of which there are at least two: `45s`, `12m`, `5h`, `3d`.
fn age(v: &Value) -> String {
    match v.as_u64() {
        None => "-".into(),
        Some(s) if s < 120 => format!("{s}s"),
        Some(s) if s < 2 * 3600 => format!("{}m", s / 60),
        Some(s) if s < 2 * 86400 => format!("{}h", s / 3600),
        Some(s) => format!("{}d", s / 86400),
    }
}

fn yes_no(v: &Value) -> String {
    match v.as_bool() {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "-".into(),
    }
}

/// The reason `claims clear` was given; checked before anything else (the token too).
pub fn reason(args: &ClearArgs) -> Result<&str, CliError> {
    match args.reason.as_deref().map(str::trim) {
        Some(r) if !r.is_empty() => Ok(r),
        _ => Err(CliError::Usage(
            "clearing needs --reason TEXT: why the write is known to have failed".into(),
        )),
    }
}

/// `claims clear`: the records cleared, in one sentence.
pub async fn clear(client: &Client, args: &ClearArgs, out: &mut dyn Write) -> Result<u8, CliError> {
    let reason = reason(args)?;
    let body = match &args.target {
        Target::Tag(repo, tag) => json!({"repository": repo.as_str(), "tag": tag.as_str(), "reason": reason}),
        Target::Digest(repo, digest) => {
            json!({"repository": repo.as_str(), "digest": digest.as_str(), "reason": reason})
        }
    };
    let answer = client.json(Method::POST, "claims/clear", &[], Some(body)).await?;
    if args.json {
        writeln!(out, "{answer}").map_err(io)?;
    } else {
        writeln!(out, "{}", describe_clear(&answer)).map_err(io)?;
    }
    Ok(EXIT_OK)
}

/// What was cleared, in one sentence.
pub fn describe_clear(r: &Value) -> String {
    let cleared = r["cleared"].as_array().map_or(&[][..], Vec::as_slice);
    let n = cleared.len();
    let requests: Vec<String> = cleared.iter().map(|c| output::text(&c["request_id"])).collect();
    let requests = format!("request{} {}", if n == 1 { "" } else { "s" }, requests.join(", "));
    let (what, of) = if r["tag"].is_null() {
        (
            "delete",
            format!("{}@{}", output::text(&r["repository"]), output::text(&r["digest"])),
        )
    } else {
        (
            "write",
            format!("{}:{}", output::text(&r["repository"]), output::text(&r["tag"])),
        )
    };
    let digest = if r["tag"].is_null() {
        String::new()
    } else {
        let digest = cleared.first().map_or(Value::Null, |c| c["digest"].clone());
        format!("{}, ", output::short_digest(&digest))
    };
    format!(
        "cleared {n} {what} record{} of {of} ({digest}{requests}) (by {}: {})",
        if n == 1 { "" } else { "s" },
        output::text(&r["by"]),
        output::text(&r["reason"]),
    )
}

fn io(e: std::io::Error) -> CliError {
    CliError::Io(format!("cannot write the output: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn a_target_is_a_tag_or_a_digest_of_a_repository() {
        assert_eq!(
            parse_target("team/app:1.0"),
            Ok(Target::Tag(
                Repository::parse("team/app").unwrap(),
                Tag::parse("1.0").unwrap()
            ))
        );
        assert_eq!(
            parse_target(&format!("team/app@{D1}")),
            Ok(Target::Digest(
                Repository::parse("team/app").unwrap(),
                Digest::parse(D1).unwrap()
            ))
        );
        assert!(parse_target("team/app").unwrap_err().contains("REPOSITORY:TAG"));
        assert!(parse_target("team/app@sha256:12")
            .unwrap_err()
            .contains("REPOSITORY@DIGEST"));
        assert!(parse_target("Team/app:1.0").is_err());
        assert!(parse_target("team/app:1.0@sha256:1").is_err());
    }

    /// The command line as `tagpin claims …` parses it.
    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        claims: ClaimsCommand,
    }

    #[test]
    fn clear_needs_a_target_and_a_reason() {
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("claims").chain(args.iter().copied()));
        let cli = parse(&["clear", "a/b:v1", "--reason", "lost at the upstream"]).unwrap();
        let ClaimsCommand::Clear(args) = cli.claims else {
            panic!("not a clear")
        };
        assert_eq!(args.reason.as_deref(), Some("lost at the upstream"));
        assert!(matches!(args.target, Target::Tag(..)));
        assert_eq!(reason(&args).unwrap(), "lost at the upstream");
        for missing in [&["clear", "a/b:v1"][..], &["clear", "a/b:v1", "--reason", "  "]] {
            let ClaimsCommand::Clear(args) = parse(missing).unwrap().claims else {
                panic!("not a clear")
            };
            assert!(
                reason(&args).unwrap_err().to_string().contains("--reason"),
                "{missing:?}"
            );
        }
        assert!(parse(&["clear", "--reason", "x"]).is_err(), "a target is required");
        assert!(parse(&["clear", "a/b", "--reason", "x"]).is_err());
        let cli = parse(&["list", "--repository", "a/b", "--json"]).unwrap();
        let ClaimsCommand::List(args) = cli.claims else {
            panic!("not a list")
        };
        assert_eq!((args.repository.as_deref(), args.json), (Some("a/b"), true));
    }

    #[test]
    fn clears_read_as_one_sentence() {
        let tag = json!({"repository": "a/b", "tag": "v1", "by": "alice", "reason": "504, never landed",
                         "cleared": [{"digest": D1, "request_id": "r-1", "kind": "new", "claimed_at": 0}]});
        assert_eq!(
            describe_clear(&tag),
            "cleared 1 write record of a/b:v1 (sha256:111111111111, request r-1) (by alice: 504, never landed)"
        );
        let digest = json!({"repository": "a/b", "digest": D2, "by": "bob", "reason": "refused",
                            "cleared": [{"request_id": "r-2", "started_at": 0}, {"request_id": "r-3", "started_at": 5}]});
        assert_eq!(
            describe_clear(&digest),
            format!("cleared 2 delete records of a/b@{D2} (requests r-2, r-3) (by bob: refused)")
        );
    }

    #[test]
    fn the_list_shows_writes_then_deletes() {
        let answer = json!({
            "claims": [{"repository": "a/b", "tag": "v1", "digest": D1, "request_id": "r-1", "kind": "new",
                        "claimed_at": 0, "age_seconds": 4000, "past_horizon": true, "pinned_digest": null}],
            "deletes": [{"repository": "a/b", "digest": D2, "request_id": "r-2", "started_at": 0,
                         "age_seconds": 30, "past_horizon": false}]
        });
        let mut out = Vec::new();
        render_list(&answer, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "WRITES (1)");
        assert!(
            lines[1].starts_with("REPOSITORY") && lines[1].ends_with("PAST HORIZON"),
            "{text}"
        );
        let row: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            row,
            ["a/b", "v1", "sha256:111111111111", "new", "-", "r-1", "66m", "yes"],
            "{text}"
        );
        assert_eq!(lines[4], "DELETES (1)");
        let row: Vec<&str> = lines[6].split_whitespace().collect();
        assert_eq!(row, ["a/b", "sha256:222222222222", "r-2", "30s", "no"], "{text}");

        let mut out = Vec::new();
        render_list(&json!({"claims": [], "deletes": []}), &mut out).unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .starts_with("no write or delete records"));
    }

    #[test]
    fn ages_are_short() {
        for (secs, text) in [
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (7199, "119m"),
            (7200, "2h"),
            (172_800, "2d"),
        ] {
            assert_eq!(age(&json!(secs)), text);
        }
        assert_eq!(age(&Value::Null), "-");
    }
}
