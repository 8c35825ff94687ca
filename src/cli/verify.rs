//! `tagpin verify [--repository R]`: does the upstream still hold every pinned tag at its
//! pinned digest? Asked through `GET /admin/v1/verify`, which compares each pin with
//! what the upstream answers for the tag.

use std::io::Write;

use clap::Args;
use http::Method;
use serde_json::Value;

use super::client::{AdminArgs, CliError, Client, EXIT_FOUND, EXIT_OK};
use super::output;

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 every pinned tag is the same at the upstream; 1 a tag moved or is \
                        missing there; 2 on any other error."
)]
pub struct VerifyArgs {
    /// Only this repository.
    #[arg(long)]
    pub repository: Option<String>,
    /// The admin API's JSON answer (every tag and the counts), for scripts.
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

pub async fn run(client: &Client, args: &VerifyArgs, out: &mut dyn Write) -> Result<u8, CliError> {
    let query: Vec<(&str, &str)> = args.repository.iter().map(|r| ("repository", r.as_str())).collect();
    let report = client.json(Method::GET, "verify", &query, None).await?;
    if !report["tags"].is_array() {
        return Err(CliError::Protocol("a verify report without a tags list".into()));
    }
    let io = |e: std::io::Error| CliError::Io(format!("cannot write the output: {e}"));
    if args.json {
        writeln!(out, "{report}").map_err(io)?;
    } else {
        render(&report, out).map_err(io)?;
    }
    Ok(if drifted(&report) { EXIT_FOUND } else { EXIT_OK })
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
