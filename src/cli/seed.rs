//! `tagpin seed [--repository R | --after R] [--concurrency N]`: adopt what the upstream
//! already holds, through `POST /admin/v1/seed`, whose answer is JSON lines:
//! `{"progress":{…}}` while it walks the upstream's catalog, then one `{"done":{…}}` or
//! `{"error":"…"}`. Interrupted (Ctrl-C, a cut connection, a failure), it names the
//! `--after` to resume with.

use std::io::Write;

use clap::Args;
use http::Method;
use serde_json::Value;

use super::client::{AdminArgs, CliError, Client, Lines, EXIT_OK};
use super::output;
use super::walk::{self, WalkArgs};

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 seeded; 2 on any error (including a seed the server reports as failed, and \
                  Ctrl-C), with the --after to resume with."
)]
pub struct SeedArgs {
    #[command(flatten)]
    pub walk: WalkArgs,
    /// Print the final counts as one JSON object, for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// One line of the seed stream.
#[derive(Debug, Clone, PartialEq)]
pub enum SeedLine {
    Progress(Value),
    Done(Value),
    Error(String),
}

pub fn parse_line(line: &[u8]) -> Result<SeedLine, CliError> {
    let v: Value =
        serde_json::from_slice(line).map_err(|e| CliError::Protocol(format!("a seed line is not JSON: {e}")))?;
    if let Some(p) = v.get("progress") {
        Ok(SeedLine::Progress(p.clone()))
    } else if let Some(d) = v.get("done") {
        Ok(SeedLine::Done(d.clone()))
    } else if let Some(e) = v.get("error") {
        Ok(SeedLine::Error(output::text(e)))
    } else {
        Err(CliError::Protocol(format!("an unknown seed line: {v}")))
    }
}

fn count(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// The progress line a terminal shows.
pub fn progress_message(p: &Value) -> String {
    format!(
        "{} repositories, {} tags seen, {} adopted, {} already pinned, {} mutable skipped; at {}{}",
        count(p, "repositories"),
        count(p, "tags_seen"),
        count(p, "adopted"),
        count(p, "already_pinned"),
        count(p, "skipped_mutable"),
        output::text(&p["current"]),
        done_through(p),
    )
}

/// `; done through R` for a progress line with a resume point.
pub fn done_through(p: &Value) -> String {
    p["after"]
        .as_str()
        .map(|a| format!("; done through {a}"))
        .unwrap_or_default()
}

/// The final counts for people.
pub fn summary(done: &Value) -> comfy_table::Table {
    let mut t = output::table(&[]);
    for (label, key) in [
        ("repositories", "repositories"),
        ("tags seen", "tags_seen"),
        ("adopted", "adopted"),
        ("already pinned", "already_pinned"),
        ("skipped (mutable)", "skipped_mutable"),
        ("skipped repositories", "skipped_repositories"),
    ] {
        t.add_row(vec![label.to_owned(), count(done, key).to_string()]);
    }
    t
}

pub async fn run(client: &Client, args: &SeedArgs, out: &mut dyn Write) -> Result<u8, CliError> {
    let query = args.walk.query();
    let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let resp = client.send(Method::POST, "seed", &query, None).await?;
    let mut lines = Lines::new(resp.into_body());
    let progress = output::Progress::start("seeding");
    let mut after = args.walk.after.clone();
    let read = walk::interruptible(read(&mut lines, &progress, &mut after)).await;
    progress.finish();
    let done = read.map_err(|e| walk::with_hint(e, &args.walk.resume_hint("seed", after.as_deref())))?;
    let io = |e: std::io::Error| CliError::Io(format!("cannot write the output: {e}"));
    if args.json {
        writeln!(out, "{done}").map_err(io)?;
    } else {
        output::print(out, &summary(&done)).map_err(io)?;
    }
    Ok(EXIT_OK)
}

/// The stream up to its `done` line; `after` follows the resume point it reports.
async fn read(lines: &mut Lines, progress: &output::Progress, after: &mut Option<String>) -> Result<Value, CliError> {
    loop {
        let Some((line, _)) = lines.next().await? else {
            return Err(CliError::Protocol(
                "the seed stream ended without a result; what was adopted stays adopted".into(),
            ));
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if let Some(a) = serde_json::from_slice(&line).ok().as_ref().and_then(walk::resume_point) {
            *after = Some(a);
        }
        match parse_line(&line)? {
            SeedLine::Progress(p) => progress.message(progress_message(&p)),
            SeedLine::Done(d) => return Ok(d),
            SeedLine::Error(e) => return Err(CliError::Failed(format!("seed failed: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn seed_lines_are_progress_done_or_error() {
        let p = parse_line(br#"{"progress":{"repositories":1,"tags_seen":4,"adopted":3,"already_pinned":1,"skipped_mutable":0,"current":"team/app"}}"#).unwrap();
        let SeedLine::Progress(p) = p else { panic!("{p:?}") };
        assert_eq!(
            progress_message(&p),
            "1 repositories, 4 tags seen, 3 adopted, 1 already pinned, 0 mutable skipped; at team/app"
        );
        let p = json!({"repositories": 2, "current": "b", "after": "a"});
        assert!(
            progress_message(&p).ends_with("; at b; done through a"),
            "{}",
            progress_message(&p)
        );
        assert_eq!(
            parse_line(br#"{"error":"the upstream refused the catalog"}"#).unwrap(),
            SeedLine::Error("the upstream refused the catalog".into())
        );
        assert!(parse_line(b"{}").is_err());
        assert!(parse_line(b"not json").is_err());
    }

    #[test]
    fn the_final_counts_are_a_table() {
        let done = json!({"repositories":2,"tags_seen":10,"adopted":7,"already_pinned":2,"skipped_mutable":1,"skipped_repositories":0});
        let text = summary(&done).lines().collect::<Vec<_>>().join("\n");
        let row = |label: &str| text.lines().find(|l| l.contains(label)).unwrap().to_owned();
        assert!(row("adopted").trim_end().ends_with(" 7"), "{text}");
        assert!(row("skipped (mutable)").trim_end().ends_with(" 1"), "{text}");
        assert!(row("skipped repositories").trim_end().ends_with(" 0"), "{text}");
        assert_eq!(text.lines().count(), 6);
    }
}
