//! `tagpin pins list` and `tagpin pins show REPOSITORY:TAG`: what tagpin holds each tag
//! to, read through the admin API (`GET /admin/v1/pins`, `GET /admin/v1/pin`); with
//! `pins list --at TIME`, every tag as it stood at TIME (`GET /admin/v1/pins?at=`).

use std::io::Write;

use clap::{Args, Subcommand};
use http::Method;
use serde_json::Value;

use super::client::{AdminArgs, CliError, Client, EXIT_FOUND, EXIT_OK};
use super::output;

#[derive(Debug, Subcommand)]
pub enum PinsCommand {
    /// List every pin (or one repository's), a page at a time as the admin API serves them.
    List(ListArgs),
    /// Show one pin with its history, refused attempts and release.
    Show(ShowArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Exit status: 0 listed (none is a success); 2 on any error.")]
pub struct ListArgs {
    /// Only this repository's pins.
    #[arg(long)]
    pub repository: Option<String>,
    /// Every tag as it stood at this time (RFC 3339 with Z or an offset, e.g.
    /// 2026-12-01T14:00:00Z): the digest then in force and the event that set it; tags
    /// first seen after TIME are left out.
    #[arg(long, value_name = "TIME", value_parser = super::resolve::parse_at)]
    pub at: Option<i64>,
    /// One JSON object per line (the admin API's pin records), for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Args)]
#[command(after_help = "Exit status: 0 shown; 1 the tag has no pin; 2 on any other error.")]
pub struct ShowArgs {
    /// The tag, as REPOSITORY:TAG (e.g. prod/api:1.4.2).
    pub reference: String,
    /// The admin API's JSON record, for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Pins asked for per page: the admin API's largest page.
const PAGE: &str = "1000";

/// Column widths of the list, so every page lines up under the first one's header.
const LIST_WIDTHS: [u16; 6] = [24, 12, 9, 19, 11, 20];
const LIST_AT_WIDTHS: [u16; 5] = [24, 12, 19, 10, 20];

/// `pins list`: follow `next` until the last page, writing each page as it arrives, so
/// memory holds one page however many pins there are.
pub async fn list(client: &Client, args: &ListArgs, out: &mut dyn Write) -> Result<u8, CliError> {
    let mut after: Option<String> = None;
    let mut shown = 0usize;
    let at = args.at.map(crate::store::rfc3339);
    loop {
        let mut query = vec![("limit", PAGE)];
        if let Some(r) = &args.repository {
            query.push(("repository", r.as_str()));
        }
        if let Some(a) = &after {
            query.push(("after", a.as_str()));
        }
        if let Some(t) = &at {
            query.push(("at", t.as_str()));
        }
        let page = client.json(Method::GET, "pins", &query, None).await?;
        if args.at.is_some() && page["at"].as_i64() != args.at {
            // A tagpin that does not know `at=` lists the pins as they are now.
            return Err(CliError::Protocol(
                "the admin API ignored at= (a tagpin older than `pins list --at`); upgrade the server".into(),
            ));
        }
        let pins = page["pins"]
            .as_array()
            .ok_or_else(|| CliError::Protocol("a pins page without a pins list".into()))?;
        if args.json {
            for pin in pins {
                writeln!(out, "{pin}").map_err(io)?;
            }
        } else if args.at.is_some() {
            output::print(out, &list_at_table(pins, shown == 0)).map_err(io)?;
        } else {
            output::print(out, &list_table(pins, shown == 0)).map_err(io)?;
        }
        out.flush().map_err(io)?;
        shown += pins.len();
        // A page of tags as they stood at a time may be empty (none was pinned then) and
        // still have a next one.
        let more = !pins.is_empty() || args.at.is_some();
        match page["next"].as_str() {
            // A cursor that does not move would loop forever.
            Some(next) if after.as_deref() != Some(next) && more => after = Some(next.to_owned()),
            _ => break,
        }
    }
    if shown == 0 && !args.json {
        match &at {
            Some(t) => writeln!(out, "no pins at {t}").map_err(io)?,
            None => writeln!(out, "no pins").map_err(io)?,
        }
    }
    Ok(EXIT_OK)
}

/// One page of the list at a time: each tag's digest then and the entry that set it.
pub fn list_at_table(pins: &[Value], header: bool) -> comfy_table::Table {
    let mut t = output::table(if header {
        &["REPOSITORY", "TAG", "DIGEST", "EVENT", "SINCE"]
    } else {
        &[]
    });
    for p in pins {
        t.add_row(vec![
            output::text(&p["repository"]),
            output::text(&p["tag"]),
            output::short_digest(&p["digest"]),
            output::text(&p["entry"]["event"]),
            output::time(&p["entry"]["at"]),
        ]);
    }
    output::min_widths(&mut t, &LIST_AT_WIDTHS);
    t
}

/// One page of the list as a table; the header only on the first page.
pub fn list_table(pins: &[Value], header: bool) -> comfy_table::Table {
    let mut t = output::table(if header {
        &["REPOSITORY", "TAG", "STATE", "DIGEST", "MODE", "PINNED AT"]
    } else {
        &[]
    });
    for p in pins {
        t.add_row(vec![
            output::text(&p["repository"]),
            output::text(&p["tag"]),
            output::text(&p["state"]),
            output::short_digest(&p["digest"]),
            output::text(&p["mode"]),
            // When the tag got its current digest (the API's older answers lack it).
            output::time(if p["digest_set_at"].is_null() {
                &p["pinned_at"]
            } else {
                &p["digest_set_at"]
            }),
        ]);
    }
    // After the rows: comfy-table keeps constraints only for columns it has.
    output::min_widths(&mut t, &LIST_WIDTHS);
    t
}

/// `pins show`: exit 1 when the tag has no pin.
pub async fn show(client: &Client, args: &ShowArgs, out: &mut dyn Write) -> Result<u8, CliError> {
    let (repo, tag) = super::policy::parse_reference(&args.reference).map_err(|e| CliError::Usage(e.to_string()))?;
    let query = [("repository", repo.as_str()), ("tag", tag.as_str())];
    let pin = match client.json(Method::GET, "pin", &query, None).await {
        Ok(pin) => pin,
        Err(e) if e.status() == Some(404) => {
            eprintln!("tagpin: {repo}:{tag} has no pin");
            return Ok(EXIT_FOUND);
        }
        Err(e) => return Err(e),
    };
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&pin).unwrap_or_default()).map_err(io)?;
    } else {
        render_show(&pin, out).map_err(io)?;
    }
    Ok(EXIT_OK)
}

/// One pin for people: its fields, then its history and refused attempts as tables.
pub fn render_show(p: &Value, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "{}:{}", output::text(&p["repository"]), output::text(&p["tag"]))?;
    let mut fields = output::table(&[]);
    fields.add_row(vec!["state".into(), output::text(&p["state"])]);
    fields.add_row(vec!["digest".into(), output::text(&p["digest"])]);
    fields.add_row(vec!["source".into(), output::text(&p["source"])]);
    // When the tag got the digest it holds now; a release or an audited move changes it.
    let set_at = if p["digest_set_at"].is_null() {
        &p["pinned_at"]
    } else {
        &p["digest_set_at"]
    };
    fields.add_row(vec!["pinned at".into(), output::time(set_at)]);
    if !p["digest_set_at"].is_null() && p["digest_set_at"] != p["pinned_at"] {
        fields.add_row(vec!["first pin".into(), output::time(&p["pinned_at"])]);
    }
    fields.add_row(vec![
        "mode".into(),
        format!("{} (rule {})", output::text(&p["mode"]), output::text(&p["rule"])),
    ]);
    if !p["claimed_digest"].is_null() {
        fields.add_row(vec![
            "in flight".into(),
            format!(
                "{} since {}",
                output::text(&p["claimed_digest"]),
                output::time(&p["claimed_at"])
            ),
        ]);
    }
    let release = &p["release"];
    fields.add_row(vec![
        "release".into(),
        if release.is_null() {
            "none".into()
        } else if release["expired"].as_bool() == Some(true) {
            format!(
                "expired unused at {} (by {}: {})",
                output::time(&release["expires_at"]),
                output::text(&release["by"]),
                output::text(&release["reason"])
            )
        } else {
            format!(
                "by {} until {}: {}",
                output::text(&release["by"]),
                output::time(&release["expires_at"]),
                output::text(&release["reason"])
            )
        },
    ]);
    output::print(out, &fields)?;

    let history = p["history"].as_array().map_or(&[][..], Vec::as_slice);
    writeln!(out, "\nHISTORY")?;
    let mut t = output::table(&["AT", "EVENT", "DIGEST", "FROM", "BY", "REASON", "LOG"]);
    for h in history {
        t.add_row(vec![
            output::time(&h["at"]),
            output::text(&h["event"]),
            output::short_digest(&h["digest"]),
            output::short_digest(&h["from"]),
            output::text(&h["by"]),
            output::text(&h["reason"]),
            // The index of the log entry that records it (`tagpin log prove`).
            h["log"].as_u64().map_or_else(|| "-".to_owned(), |i| i.to_string()),
        ]);
    }
    output::print(out, &t)?;

    let refused = p["refused"].as_array().map_or(&[][..], Vec::as_slice);
    writeln!(out, "\nREFUSED ({})", refused.len())?;
    let mut t = output::table(&["AT", "ATTEMPTED", "CLIENT", "USER", "USER AGENT"]);
    for r in refused {
        t.add_row(vec![
            output::time(&r["at"]),
            match (r["delete"].as_bool() == Some(true), r["attempted"].is_null()) {
                (_, true) => "(delete)".into(),
                (true, false) => format!("(delete) {}", output::short_digest(&r["attempted"])),
                (false, false) => output::short_digest(&r["attempted"]),
            },
            output::text(&r["client"]),
            output::text(&r["user"]),
            output::text(&r["user_agent"]),
        ]);
    }
    output::print(out, &t)
}

fn io(e: std::io::Error) -> CliError {
    CliError::Io(format!("cannot write the output: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn pin() -> Value {
        json!({
            "repository": "prod/api", "tag": "1.0", "state": "pinned", "digest": D2,
            "source": "push", "pinned_at": 0, "claimed_digest": null, "claimed_at": null,
            "mode": "immutable", "rule": "default",
            "history": [
                {"at": 0, "event": "push", "digest": D1},
                {"at": 60, "event": "released", "digest": D2, "from": D1, "by": "alice", "reason": "bad build", "log": 17}
            ],
            "refused": [{"at": 120, "attempted": D1, "client": "127.0.0.1:1", "user": null, "user_agent": "skopeo", "request_id": "r1"}],
            "release": null
        })
    }

    #[test]
    fn show_lists_fields_history_and_refusals() {
        let mut out = Vec::new();
        render_show(&pin(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("prod/api:1.0\n"), "{text}");
        assert!(text.contains(&format!("\ndigest     {D2}")), "{text}");
        assert!(text.contains("immutable (rule default)"), "{text}");
        assert!(text.contains("\nrelease    none"), "{text}");
        let released = text.lines().find(|l| l.contains("released")).unwrap();
        assert!(
            released.contains("alice")
                && released.contains("bad build")
                && released.contains("sha256:111111111111")
                && released.trim_end().ends_with("17"),
            "{text}"
        );
        assert!(text.contains("REFUSED (1)"), "{text}");
    }

    #[test]
    fn show_gives_when_the_digest_was_set_and_an_expired_release_as_expired() {
        let mut p = pin();
        p["pinned_at"] = json!(0);
        p["digest_set_at"] = json!(60);
        p["release"] =
            json!({"by": "alice", "reason": "hotfix", "created_at": 100, "expires_at": 400, "expired": true});
        let mut out = Vec::new();
        render_show(&p, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\npinned at  1970-01-01T00:01:00Z\n"), "{text}");
        assert!(text.contains("\nfirst pin  1970-01-01T00:00:00Z\n"), "{text}");
        assert!(
            text.contains("\nrelease    expired unused at 1970-01-01T00:06:40Z (by alice: hotfix)"),
            "{text}"
        );
        assert!(list_table(&[p], false).to_string().contains("1970-01-01T00:01:00Z"));
    }

    #[test]
    fn a_list_at_a_time_shows_the_digest_then_and_the_event_that_set_it() {
        let p = json!({
            "repository": "prod/api", "tag": "1.0", "at": 90, "digest": D2, "first_seen": 0,
            "entry": {"at": 60, "event": "released", "digest": D2, "from": D1, "by": "alice"}
        });
        let first = list_at_table(std::slice::from_ref(&p), true)
            .lines()
            .collect::<Vec<_>>();
        assert!(
            first[0].trim_start().starts_with("REPOSITORY") && first[0].contains("EVENT"),
            "{first:?}"
        );
        let row = &first[1];
        assert!(
            row.contains("prod/api") && row.contains("sha256:222222222222 ") && row.contains("released"),
            "{row}"
        );
        assert!(row.contains("1970-01-01T00:01:00Z"), "{row}");
        let second = list_at_table(&[p], false).lines().collect::<Vec<_>>();
        assert_eq!(second, vec![first[1].clone()]);
    }

    #[test]
    fn pages_after_the_first_have_no_header_and_line_up() {
        let first = list_table(&[pin()], true).lines().collect::<Vec<_>>();
        let second = list_table(&[pin()], false).lines().collect::<Vec<_>>();
        assert_eq!(first.len(), 2);
        assert!(first[0].contains("REPOSITORY"));
        assert_eq!(second, vec![first[1].clone()]);
        assert!(first[1].contains("sha256:222222222222 "), "{first:?}");
    }
}
