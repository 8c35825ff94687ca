//! Output for people, in one place: tables (comfy-table, no borders, like `kubectl get`),
//! times as RFC 3339, shortened digests, and the seed progress line, drawn only when
//! stderr is a terminal. `--json` output never goes through here: scripts get the
//! admin API's own JSON.

use std::io::{IsTerminal, Write};
use std::time::{Duration, UNIX_EPOCH};

use comfy_table::{presets, ColumnConstraint, ContentArrangement, Table, Width};
use serde_json::Value;

/// A borderless table with the given header (empty: none).
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    if !header.is_empty() {
        t.set_header(header.to_vec());
    }
    t
}

/// Give each column at least `widths[i]` characters, so tables printed page by page
/// line up with each other.
pub fn min_widths(t: &mut Table, widths: &[u16]) {
    t.set_constraints(widths.iter().map(|w| ColumnConstraint::LowerBoundary(Width::Fixed(*w))));
}

/// Write a table, flush left; a table without rows writes nothing.
pub fn print(out: &mut dyn Write, t: &Table) -> std::io::Result<()> {
    if t.row_count() == 0 {
        return Ok(());
    }
    for line in t.lines() {
        // Every line starts with the first column's padding: drop it.
        let line = line.strip_prefix(' ').unwrap_or(&line);
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// Seconds since the epoch as `2024-05-01T12:00:00Z`; `-` for null.
pub fn time(v: &Value) -> String {
    match v.as_u64() {
        Some(secs) => humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string(),
        None => "-".into(),
    }
}

/// A JSON string as text; `-` for null or absent.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `sha256:0123456789ab`: enough to tell digests apart in a list.
pub fn short_digest(v: &Value) -> String {
    let s = text(v);
    match s.split_once(':') {
        Some((alg, hex)) if hex.len() > 12 => format!("{alg}:{}", &hex[..12]),
        _ => s,
    }
}

/// A progress line on stderr, or nothing when stderr is not a terminal (a pipe, a log
/// file, CI), so scripts see only the result.
pub struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    pub fn start(what: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let bar = indicatif::ProgressBar::new_spinner();
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {prefix} {elapsed} {wide_msg}") {
            bar.set_style(style);
        }
        bar.set_prefix(what.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        Self(Some(bar))
    }

    pub fn message(&self, msg: String) {
        if let Some(bar) = &self.0 {
            bar.set_message(msg);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_format_for_people() {
        assert_eq!(time(&json!(0)), "1970-01-01T00:00:00Z");
        assert_eq!(time(&Value::Null), "-");
        assert_eq!(text(&json!("x")), "x");
        assert_eq!(text(&json!(3)), "3");
        assert_eq!(text(&Value::Null), "-");
        assert_eq!(
            short_digest(&json!("sha256:0123456789abcdef0123456789abcdef")),
            "sha256:0123456789ab"
        );
    }

    #[test]
    fn tables_have_no_borders_and_no_trailing_spaces() {
        let mut t = table(&["A", "LONGER"]);
        t.add_row(vec!["x", "y"]);
        let mut out = Vec::new();
        print(&mut out, &t).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.lines().all(|l| !l.ends_with(' ')), "{text:?}");
        assert!(text.starts_with("A "), "{text:?}");
        assert!(text.contains("\nx "), "{text:?}");
    }
}
