//! `tagpin verify [--repository R | --after R] [--concurrency N]`: does the upstream
//! still hold every pinned tag at its pinned digest? Asked through `GET
//! /admin/v1/verify?format=ndjson`, which compares each pin with what the upstream
//! answers for the tag and streams what it finds with progress lines; interrupted, it
//! names the `--after` to resume with. An older server answers one JSON object, read
//! whole as before.

use std::io::Write;

use clap::Args;
use http::{header, Method};
use serde_json::{json, Value};

use super::client::{collect, AdminArgs, CliError, Client, Lines, EXIT_FOUND, EXIT_OK};
use super::output;
use super::walk::{self, WalkArgs};

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 every pinned tag is the same at the upstream; 1 a tag moved or is \
                        missing there; 2 on any other error (and Ctrl-C), with the --after to resume with."
)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub walk: WalkArgs,
    /// One JSON object, every tag checked and the counts (`{"tags":[…],"counts":{…},
    /// "unpinned":[…]}`), written as the tags are checked, for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

fn count(report: &Value, key: &str) -> u64 {
    report["counts"][key].as_u64().unwrap_or(0)
}

/// Whether anything moved or went missing: from the counts, or the tags when a report
/// has no counts.
pub fn drifted(report: &Value) -> bool {
    if report["counts"].is_object() {
        return count(report, "moved") + count(report, "missing") > 0;
    }
    report["tags"]
        .as_array()
        .is_some_and(|tags| tags.iter().any(|t| t["state"] != "same"))
}

/// The report for people: only the tags that differ, then the counts.
pub fn render(report: &Value, out: &mut dyn Write) -> std::io::Result<()> {
    let tags = report["tags"].as_array().map_or(&[][..], Vec::as_slice);
    let mut t = output::table(&["REPOSITORY", "TAG", "STATE", "PINNED", "UPSTREAM"]);
    for tag in tags.iter().filter(|t| t["state"] != "same") {
        t.add_row(vec![
            output::text(&tag["repository"]),
            output::text(&tag["tag"]),
            output::text(&tag["state"]),
            output::short_digest(&tag["pinned_digest"]),
            output::short_digest(&tag["upstream_digest"]),
        ]);
    }
    // The upstream's tags tagpin has no pin for: the first ones, as the API names them.
    let unpinned = report["unpinned"].as_array().map_or(&[][..], Vec::as_slice);
    for u in unpinned {
        t.add_row(vec![
            output::text(&u["repository"]),
            output::text(&u["tag"]),
            "unpinned".into(),
            "-".into(),
            "-".into(),
        ]);
    }
    output::print(out, &t)?;
    if t.row_count() > 0 {
        writeln!(out)?;
    }
    let beyond = count(report, "unpinned").saturating_sub(unpinned.len() as u64);
    // An older server's report names none: nothing to say beyond its count.
    if beyond > 0 && report["unpinned"].is_array() {
        writeln!(out, "... and {beyond} more unpinned (tagpin seed adopts them)")?;
    }
    writeln!(
        out,
        "{} same, {} moved, {} missing, {} unpinned at the upstream",
        count(report, "same"),
        count(report, "moved"),
        count(report, "missing"),
        count(report, "unpinned")
    )
}

/// The progress line a terminal shows.
pub fn progress_message(p: &Value) -> String {
    let n = |key: &str| p[key].as_u64().unwrap_or(0);
    format!(
        "{} repositories, {} same, {} moved, {} missing, {} unpinned; at {}{}",
        n("repositories"),
        n("same"),
        n("moved"),
        n("missing"),
        n("unpinned"),
        output::text(&p["current"]),
        super::seed::done_through(p),
    )
}

pub async fn run(client: &Client, args: &VerifyArgs, out: &mut dyn Write) -> Result<u8, CliError> {
    let mut query = args.walk.query();
    query.push(("format", "ndjson".into()));
    let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let resp = client.send(Method::GET, "verify", &query, None).await?;
    let lines = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/x-ndjson"));
    let io = |e: std::io::Error| CliError::Io(format!("cannot write the output: {e}"));
    let report = if lines {
        let mut lines = Lines::new(resp.into_body());
        let progress = output::Progress::start("verifying");
        let mut after = args.walk.after.clone();
        let json_out: Option<&mut dyn Write> = if args.json { Some(&mut *out) } else { None };
        let read = walk::interruptible(read(&mut lines, &progress, &mut after, json_out)).await;
        progress.finish();
        read.map_err(|e| walk::with_hint(e, &args.walk.resume_hint("verify", after.as_deref())))?
    } else {
        let bytes = collect(resp.into_body()).await?;
        let report: Value = serde_json::from_slice(&bytes).map_err(|e| CliError::Protocol(format!("not JSON: {e}")))?;
        if !report["tags"].is_array() {
            return Err(CliError::Protocol("a verify report without a tags list".into()));
        }
        if args.json {
            writeln!(out, "{report}").map_err(io)?;
        }
        report
    };
    if !args.json {
        render(&report, out).map_err(io)?;
    }
    Ok(if drifted(&report) { EXIT_FOUND } else { EXIT_OK })
}

/// The stream to its `done` line, as a report of the tags that differ, the unpinned
/// ones named and the counts. With `json_out`, every tag is written there as it comes,
/// inside `{"tags":[…],"counts":{…},"unpinned":[…]}`.
async fn read(
    lines: &mut Lines,
    progress: &output::Progress,
    after: &mut Option<String>,
    mut json_out: Option<&mut dyn Write>,
) -> Result<Value, CliError> {
    let io = |e: std::io::Error| CliError::Io(format!("cannot write the output: {e}"));
    let (mut differ, mut unpinned, mut first) = (Vec::new(), Vec::new(), true);
    if let Some(o) = json_out.as_mut() {
        write!(o, "{{\"tags\":[").map_err(io)?;
    }
    loop {
        let Some((line, _)) = lines.next().await? else {
            return Err(CliError::Protocol("the verify stream ended without a result".into()));
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let v: Value =
            serde_json::from_slice(&line).map_err(|e| CliError::Protocol(format!("a verify line is not JSON: {e}")))?;
        if let Some(a) = walk::resume_point(&v) {
            *after = Some(a);
        }
        if let Some(p) = v.get("progress") {
            progress.message(progress_message(p));
        } else if let Some(t) = v.get("tag") {
            match json_out.as_mut() {
                Some(o) => {
                    write!(o, "{}{t}", if first { "" } else { "," }).map_err(io)?;
                    first = false;
                }
                None if t["state"] != "same" => differ.push(t.clone()),
                None => {}
            }
        } else if let Some(u) = v.get("unpinned") {
            unpinned.push(u.clone());
        } else if let Some(d) = v.get("done") {
            let report = json!({"tags": differ, "counts": d["counts"], "unpinned": unpinned});
            if let Some(o) = json_out.as_mut() {
                writeln!(
                    o,
                    "],\"counts\":{},\"unpinned\":{}}}",
                    report["counts"], report["unpinned"]
                )
                .map_err(io)?;
            }
            return Ok(report);
        } else if let Some(e) = v.get("error") {
            return Err(CliError::Failed(format!("verify failed: {}", output::text(e))));
        } else {
            return Err(CliError::Protocol(format!("an unknown verify line: {v}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn report() -> Value {
        json!({
            "tags": [
                {"repository": "a/b", "tag": "v1", "pinned_digest": D1, "upstream_digest": D1, "state": "same"},
                {"repository": "a/b", "tag": "v2", "pinned_digest": D1, "upstream_digest": D2, "state": "moved"},
                {"repository": "a/c", "tag": "v1", "pinned_digest": D2, "upstream_digest": null, "state": "missing"}
            ],
            "counts": {"same": 1, "moved": 1, "missing": 1, "unpinned": 4},
            "unpinned": [{"repository": "a/d", "tag": "old"}, {"repository": "a/d", "tag": "older"}]
        })
    }

    #[test]
    fn only_tags_that_differ_are_listed_then_the_counts() {
        let mut out = Vec::new();
        render(&report(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("REPOSITORY"), "{text}");
        assert!(lines[1].contains("v2") && lines[1].contains("moved") && lines[1].contains("sha256:222222222222"));
        assert!(lines[2].contains("a/c") && lines[2].contains("missing") && lines[2].trim_end().ends_with('-'));
        assert!(lines[3].contains("a/d") && lines[3].contains("old") && lines[3].contains("unpinned"));
        assert!(lines[4].contains("older") && lines[4].contains("unpinned"), "{text}");
        assert!(
            text.contains("\n... and 2 more unpinned (tagpin seed adopts them)\n"),
            "{text}"
        );
        assert_eq!(
            lines.last(),
            Some(&"1 same, 1 moved, 1 missing, 4 unpinned at the upstream")
        );
        assert!(!text.contains(" same "), "{text}");
    }

    #[test]
    fn drift_is_a_move_or_a_missing_tag() {
        assert!(drifted(&report()));
        let clean = json!({"tags": [], "counts": {"same": 3, "moved": 0, "missing": 0, "unpinned": 2}});
        assert!(!drifted(&clean));
        let mut out = Vec::new();
        render(&clean, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "3 same, 0 moved, 0 missing, 2 unpinned at the upstream\n"
        );
        assert!(drifted(&json!({"tags": [{"state": "missing"}]})));
    }
}
