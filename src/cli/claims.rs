//! `tagpin claims list [--repository R]` and `tagpin claims clear REPOSITORY:TAG |
//! REPOSITORY@DIGEST --request ID --reason TEXT`: the records of pushes and deletes whose
//! outcome was lost, and clearing the record of one request an operator knows failed
//! (never every record of a tag or digest: another request may still be in flight),
//! through `GET /admin/v1/claims` and `POST /admin/v1/claims/clear`.

use std::io::Write;

use clap::{Args, Subcommand};
use http::Method;
use serde_json::{json, Value};

use super::client::{AdminArgs, CliError, Client, EXIT_OK};
use super::output;
use crate::oci::{Digest, Repository, Tag};

#[derive(Debug, Subcommand)]
pub enum ClaimsCommand {
    /// List the records of pushes and deletes whose outcome is not known, one per request.
    List(ListArgs),
    /// Clear one request's write record of a tag, or its delete record of a digest, when
    /// that request is known to have failed.
    Clear(ClearArgs),
}

/// What to know before clearing, for both commands' help (a macro, so `concat!` takes it).
macro_rules! clear_only {
    () => {
        "Clear only a request you know failed: the upstream does not hold its digest under the \
         tag (for a delete: still holds the digest) and the request is over, e.g. its client got \
         the 504 long ago. `claims clear` removes that request's record and no other: another \
         request of the same tag or digest (a retry on another replica) may still be in flight, \
         and its record is left alone to keep holding the tag."
    };
}

#[derive(Debug, Args)]
#[command(after_help = concat!(
    "Each row is one request's record; REQUEST ID is what `claims clear --request` takes.\n\n",
    clear_only!(),
    "\n\nExit status: 0 listed (none is a success); 2 on any error."
))]
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
#[command(after_help = concat!(
    "While a request's record stands, no other digest can take the tag (or the digest cannot be \
     pinned). ",
    clear_only!(),
    "\n\nExit status: 0 cleared; 2 on any error, e.g. that request has no record there, or no \
     --request or --reason."
))]
pub struct ClearArgs {
    /// REPOSITORY:TAG: the request's write record of the tag; REPOSITORY@sha256:…: its
    /// delete record of the digest.
    #[arg(value_name = "REPOSITORY:TAG|REPOSITORY@DIGEST", value_parser = parse_target)]
    pub target: Target,
    /// Required: the request whose record to clear, as `claims list` shows it (REQUEST ID).
    /// Only that request's record goes.
    // Checked in `dispatch` (through `reason`) rather than by clap, like `--reason`.
    #[arg(long, value_name = "ID")]
    pub request: Option<String>,
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

/// The records for people: a table of tag writes, then one of digest deletes, one row per
/// request, its id in full in the last column (what `claims clear --request` takes).
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
        "AGE",
        "PAST HORIZON",
        "REQUEST ID",
    ]);
    for c in claims {
        t.add_row(vec![
            output::text(&c["repository"]),
            output::text(&c["tag"]),
            output::short_digest(&c["digest"]),
            output::text(&c["kind"]),
            output::short_digest(&c["pinned_digest"]),
            age(&c["age_seconds"]),
            yes_no(&c["past_horizon"]),
            output::text(&c["request_id"]),
        ]);
    }
    output::print(out, &t)?;
    writeln!(out, "\nDELETES ({})", deletes.len())?;
    let mut t = output::table(&["REPOSITORY", "DIGEST", "AGE", "PAST HORIZON", "REQUEST ID"]);
    for d in deletes {
        t.add_row(vec![
            output::text(&d["repository"]),
            output::short_digest(&d["digest"]),
            age(&d["age_seconds"]),
            yes_no(&d["past_horizon"]),
            output::text(&d["request_id"]),
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

/// The request `claims clear` was given, as given (it must match the listed id exactly).
pub fn request(args: &ClearArgs) -> Result<&str, CliError> {
    match args.request.as_deref() {
        Some(r) if !r.trim().is_empty() => Ok(r),
        _ => Err(CliError::Usage(
            "clearing needs --request ID: the request known to have failed, as `tagpin claims list` shows it; other requests' records stay".into(),
        )),
    }
}

/// The reason `claims clear` was given, after its `--request`; both are checked before
/// anything else (the token too).
pub fn reason(args: &ClearArgs) -> Result<&str, CliError> {
    request(args)?;
    match args.reason.as_deref().map(str::trim) {
        Some(r) if !r.is_empty() => Ok(r),
        _ => Err(CliError::Usage(
            "clearing needs --reason TEXT: why the write is known to have failed".into(),
        )),
    }
}

/// `claims clear`: the record cleared, in one sentence.
pub async fn clear(client: &Client, args: &ClearArgs, out: &mut dyn Write) -> Result<u8, CliError> {
    let (request, reason) = (request(args)?, reason(args)?);
    let mut body = match &args.target {
        Target::Tag(repo, tag) => json!({"repository": repo.as_str(), "tag": tag.as_str()}),
        Target::Digest(repo, digest) => json!({"repository": repo.as_str(), "digest": digest.as_str()}),
    };
    body["request_id"] = json!(request);
    body["reason"] = json!(reason);
    let answer = client.json(Method::POST, "claims/clear", &[], Some(body)).await?;
    if args.json {
        writeln!(out, "{answer}").map_err(io)?;
    } else {
        writeln!(out, "{}", describe_clear(&answer)).map_err(io)?;
    }
    Ok(EXIT_OK)
}

/// What was cleared, in one sentence: whose record, of what.
pub fn describe_clear(r: &Value) -> String {
    let cleared = r["cleared"].as_array().map_or(&[][..], Vec::as_slice);
    let request = match &r["request_id"] {
        Value::Null => cleared.first().map_or(Value::Null, |c| c["request_id"].clone()),
        id => id.clone(),
    };
    let (what, of) = if r["tag"].is_null() {
        (
            "delete",
            format!("{}@{}", output::text(&r["repository"]), output::text(&r["digest"])),
        )
    } else {
        let digest = cleared.first().map_or(Value::Null, |c| c["digest"].clone());
        (
            "write",
            format!(
                "{}:{} ({})",
                output::text(&r["repository"]),
                output::text(&r["tag"]),
                output::short_digest(&digest)
            ),
        )
    };
    format!(
        "cleared the {what} record of request {} on {of} (by {}: {})",
        output::text(&request),
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
    fn clear_needs_a_target_a_request_and_a_reason() {
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("claims").chain(args.iter().copied()));
        let clear = |args: &[&str]| match parse(args).unwrap().claims {
            ClaimsCommand::Clear(a) => a,
            ClaimsCommand::List(_) => panic!("not a clear"),
        };
        let args = clear(&[
            "clear",
            "a/b:v1",
            "--request",
            "r-1",
            "--reason",
            "lost at the upstream",
        ]);
        assert_eq!(args.request.as_deref(), Some("r-1"));
        assert_eq!(args.reason.as_deref(), Some("lost at the upstream"));
        assert!(matches!(args.target, Target::Tag(..)));
        assert_eq!(request(&args).unwrap(), "r-1");
        assert_eq!(reason(&args).unwrap(), "lost at the upstream");
        let args = clear(&["clear", &format!("a/b@{D1}"), "--request", "r-2", "--reason", "x"]);
        assert!(matches!(args.target, Target::Digest(..)));
        assert_eq!(request(&args).unwrap(), "r-2");

        // `reason` is what `dispatch` checks before the token: it wants both flags.
        for missing in [
            &["clear", "a/b:v1", "--reason", "x"][..],
            &["clear", "a/b:v1", "--request", " ", "--reason", "x"],
            &["clear", "a/b:v1"],
        ] {
            let args = clear(missing);
            let e = reason(&args).unwrap_err();
            assert!(matches!(e, CliError::Usage(_)), "{missing:?}");
            let e = e.to_string();
            assert!(e.contains("--request ID") && !e.contains('\n'), "{missing:?}: {e}");
        }
        for missing in [
            &["clear", "a/b:v1", "--request", "r-1"][..],
            &["clear", "a/b:v1", "--request", "r-1", "--reason", "  "],
        ] {
            let e = reason(&clear(missing)).unwrap_err().to_string();
            assert!(e.contains("--reason") && !e.contains('\n'), "{missing:?}: {e}");
        }
        assert!(
            parse(&["clear", "--request", "r", "--reason", "x"]).is_err(),
            "a target is required"
        );
        assert!(parse(&["clear", "a/b", "--request", "r", "--reason", "x"]).is_err());
        let cli = parse(&["list", "--repository", "a/b", "--json"]).unwrap();
        let ClaimsCommand::List(args) = cli.claims else {
            panic!("not a list")
        };
        assert_eq!((args.repository.as_deref(), args.json), (Some("a/b"), true));
    }

    #[test]
    fn the_help_says_to_clear_only_a_request_known_to_have_failed() {
        use clap::CommandFactory;
        let cli = Cli::command();
        for name in ["list", "clear"] {
            let sub = cli.find_subcommand(name).unwrap();
            let help = sub.get_after_help().unwrap().to_string();
            for words in ["request you know failed", "504", "may still be in flight", "left alone"] {
                assert!(help.contains(words), "{name}: {words:?} not in {help}");
            }
        }
        let clear = cli.find_subcommand("clear").unwrap();
        let request = clear.get_arguments().find(|a| a.get_id() == "request").unwrap();
        assert!(request.get_help().unwrap().to_string().contains("claims list"));
    }

    #[test]
    fn clears_read_as_one_sentence() {
        let tag = json!({"repository": "a/b", "tag": "v1", "request_id": "r-1", "by": "alice",
                         "reason": "504, never landed",
                         "cleared": [{"digest": D1, "request_id": "r-1", "kind": "new", "claimed_at": 0}]});
        assert_eq!(
            describe_clear(&tag),
            "cleared the write record of request r-1 on a/b:v1 (sha256:111111111111) (by alice: 504, never landed)"
        );
        let digest = json!({"repository": "a/b", "digest": D2, "request_id": "r-2", "by": "bob", "reason": "refused",
                            "cleared": [{"request_id": "r-2", "started_at": 0}]});
        assert_eq!(
            describe_clear(&digest),
            format!("cleared the delete record of request r-2 on a/b@{D2} (by bob: refused)")
        );
    }

    #[test]
    fn the_list_shows_writes_then_deletes_one_row_per_request() {
        let answer = json!({
            "claims": [{"repository": "a/b", "tag": "v1", "digest": D1, "request_id": "7cf3d645037894d8-0",
                        "kind": "new", "claimed_at": 0, "age_seconds": 4000, "past_horizon": true,
                        "pinned_digest": null},
                       {"repository": "a/b", "tag": "v1", "digest": D1, "request_id": "7cf3d645037894d8-1",
                        "kind": "new", "claimed_at": 0, "age_seconds": 30, "past_horizon": false,
                        "pinned_digest": null}],
            "deletes": [{"repository": "a/b", "digest": D2, "request_id": "r-2", "started_at": 0,
                         "age_seconds": 30, "past_horizon": false}]
        });
        let mut out = Vec::new();
        render_list(&answer, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "WRITES (2)");
        assert!(
            lines[1].starts_with("REPOSITORY") && lines[1].ends_with("REQUEST ID"),
            "{text}"
        );
        let row: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            row,
            [
                "a/b",
                "v1",
                "sha256:111111111111",
                "new",
                "-",
                "66m",
                "yes",
                "7cf3d645037894d8-0"
            ],
            "{text}"
        );
        // Each request's id in full, in the same column.
        let col = lines[1].find("REQUEST ID").unwrap();
        assert_eq!(&lines[2][col..], "7cf3d645037894d8-0", "{text}");
        assert_eq!(&lines[3][col..], "7cf3d645037894d8-1", "{text}");
        assert_eq!(lines[5], "DELETES (1)");
        assert!(lines[6].ends_with("REQUEST ID"), "{text}");
        let row: Vec<&str> = lines[7].split_whitespace().collect();
        assert_eq!(row, ["a/b", "sha256:222222222222", "30s", "no", "r-2"], "{text}");

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
