//! The alert rules in `deploy/prometheus/tagpin-alerts.yml` against a running tagpin:
//! every metric a rule names is one tagpin exports (on sled and on PostgreSQL), the
//! metrics added for the rules move (readiness, upstream latency, the log's checkpoints),
//! every alert has its runbook in the README, and the promtool tests show every alert
//! firing and not firing. (`tests/deploy_check.sh` runs `promtool check rules` and
//! `promtool test rules`.)

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::postgres::{fresh_database, shared};
use common::{request, Image, Registry, Stack, Tagpin};

const RULES: &str = "deploy/prometheus/tagpin-alerts.yml";
const RULE_TESTS: &str = "deploy/prometheus/tests";

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// One alerting rule as written: its name, expression and annotations.
struct Alert {
    name: String,
    expr: String,
    annotations: Vec<(String, String)>,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The alerts of the rules file. The file keeps every value on one line or in a block
/// scalar (`|`, `>-`), which is all this reads; each alert must come out with an
/// expression, so a shape this misreads fails the tests instead of hiding a rule.
fn alerts(text: &str) -> Vec<Alert> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<Alert> = Vec::new();
    let mut in_annotations = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim_start();
        i += 1;
        if let Some(name) = t.strip_prefix("- alert:") {
            out.push(Alert {
                name: name.trim().to_owned(),
                expr: String::new(),
                annotations: Vec::new(),
            });
            in_annotations = None;
            continue;
        }
        let Some(alert) = out.last_mut() else { continue };
        if in_annotations.is_some_and(|at| indent(line) <= at) {
            in_annotations = None;
        }
        let Some((key, value)) = t.split_once(':') else {
            continue;
        };
        let mut value = value.trim().to_owned();
        if matches!(value.as_str(), "|" | "|-" | ">" | ">-") {
            let at = indent(line);
            let mut block = Vec::new();
            while i < lines.len() && (lines[i].trim().is_empty() || indent(lines[i]) > at) {
                block.push(lines[i].trim());
                i += 1;
            }
            value = block.join(" ").trim().to_owned();
        }
        match key {
            "expr" => alert.expr = value,
            "annotations" => in_annotations = Some(indent(line)),
            _ if in_annotations.is_some() => alert.annotations.push((key.to_owned(), value)),
            _ => {}
        }
    }
    for a in &out {
        assert!(!a.expr.is_empty(), "alert {} has no expr the test could read", a.name);
    }
    out
}

/// The metric families the rules read, each with the types its series name allows: a
/// `_total` series is a counter's, `_bucket`/`_sum`/`_count` a histogram's.
fn families(alerts: &[Alert]) -> BTreeSet<(String, &'static str)> {
    let name = regex::Regex::new(r"tagpin_[a-z_]+").unwrap();
    let mut out = BTreeSet::new();
    for a in alerts {
        for m in name.find_iter(&a.expr) {
            let series = m.as_str();
            let family = [
                ("_total", "counter"),
                ("_bucket", "histogram"),
                ("_sum", "histogram"),
                ("_count", "histogram"),
            ]
            .iter()
            .find_map(|(suffix, kind)| series.strip_suffix(suffix).map(|f| (f.to_owned(), *kind)))
            .unwrap_or_else(|| (series.to_owned(), "gauge"));
            out.insert(family);
        }
    }
    out
}

fn metrics(addr: std::net::SocketAddr) -> String {
    let r = request(addr, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

/// Every family a rule reads has a `# TYPE` line of the kind its series name implies.
fn assert_rules_read_exported_metrics(exposition: &str) {
    let alerts = alerts(&read(RULES));
    let families = families(&alerts);
    assert!(families.len() >= 12, "the rules read only {families:?}");
    let missing: Vec<String> = families
        .iter()
        .filter(|(family, kind)| !exposition.lines().any(|l| l == format!("# TYPE {family} {kind}")))
        .map(|(family, kind)| format!("{family} ({kind})"))
        .collect();
    assert!(
        missing.is_empty(),
        "rules name metrics tagpin does not export: {missing:?}\n{exposition}"
    );
}

/// The value of the one series `series` (name and labels as exposed), if it is there.
fn value(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrape until `done` holds, at most `limit`; the last exposition either way.
fn scrape_until(addr: std::net::SocketAddr, limit: Duration, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let text = metrics(addr);
        if done(&text) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn every_metric_the_rules_read_is_exported_on_sled_and_readiness_has_no_database() {
    let env = Stack::start(&[]);
    assert_eq!(request(env.tagpin.addr, "GET", "/readyz", &[], b"").status, 200);
    assert_eq!(request(env.tagpin.addr, "GET", "/v2/", &[], b"").status, 200);
    let text = metrics(env.tagpin.addr);
    assert_rules_read_exported_metrics(&text);
    assert_eq!(value(&text, "tagpin_ready{component=\"store\"}"), Some(1.0), "{text}");
    assert_eq!(
        value(&text, "tagpin_ready{component=\"upstream\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(!text.contains("component=\"database\""), "sled has no database: {text}");
    // The readiness probe is one of tagpin's own requests; `GET /v2/` was forwarded.
    for request in ["check", "forwarded"] {
        let count = value(
            &text,
            &format!("tagpin_upstream_request_duration_seconds_count{{request=\"{request}\"}}"),
        );
        assert!(count.is_some_and(|n| n >= 1.0), "{request}: {count:?}\n{text}");
    }
    // The decisions the rules read show from the start, before any was made.
    assert_eq!(
        value(&text, "tagpin_decisions_total{action=\"push_refused\"}"),
        Some(0.0),
        "{text}"
    );
}

#[test]
fn every_metric_the_rules_read_is_exported_on_postgres_with_the_database_ready() {
    let registry = Registry::start();
    let url = shared().url(&fresh_database("alert_rules"));
    let tagpin = Tagpin::start_on_database(&registry.url(), &url, &[]);
    assert_eq!(request(tagpin.addr, "GET", "/readyz", &[], b"").status, 200);
    let text = metrics(tagpin.addr);
    assert_rules_read_exported_metrics(&text);
    for component in ["store", "upstream", "database"] {
        let series = format!("tagpin_ready{{component=\"{component}\"}}");
        assert_eq!(value(&text, &series), Some(1.0), "{series}\n{text}");
    }
}

/// Nobody calls `/readyz`: the background probe sets the gauges all the same, one
/// refresh period (15 s) after start; the upstream's death shows at a later refresh.
#[test]
fn the_ready_gauges_are_kept_current_without_readyz_calls() {
    let Stack {
        registry,
        tagpin,
        data: _data,
    } = Stack::start(&[]);
    let ready = |text: &str, component: &str| value(text, &format!("tagpin_ready{{component=\"{component}\"}}"));
    let text = scrape_until(tagpin.addr, Duration::from_secs(60), |t| ready(t, "store").is_some());
    assert_eq!(ready(&text, "store"), Some(1.0), "{text}");
    assert_eq!(ready(&text, "upstream"), Some(1.0), "{text}");
    drop(registry);
    let text = scrape_until(tagpin.addr, Duration::from_secs(60), |t| {
        ready(t, "upstream") == Some(0.0)
    });
    assert_eq!(ready(&text, "upstream"), Some(0.0), "{text}");
    assert_eq!(ready(&text, "store"), Some(1.0), "{text}");
}

/// A pin written makes the log grow; the checkpoint task reports the size and stamps the
/// checkpoint it ships.
#[test]
fn the_log_gauges_follow_pins_and_shipped_checkpoints() {
    let env = Stack::start(&["--log-checkpoint-interval", "1s"]);
    let before = metrics(env.tagpin.addr);
    assert_eq!(
        value(&before, "tagpin_log_checkpoint_timestamp_seconds"),
        Some(0.0),
        "{before}"
    );
    let img = Image::random(7, 64);
    img.push_blobs(env.tagpin.addr, "alerts/app", "");
    let pushed = img.put_manifest(env.tagpin.addr, "alerts/app", "1.0", "");
    assert_eq!(pushed.status, 201, "{}", pushed.text());
    let text = scrape_until(env.tagpin.addr, Duration::from_secs(30), |t| {
        value(t, "tagpin_log_entries") == Some(1.0)
            && value(t, "tagpin_log_checkpoint_timestamp_seconds").is_some_and(|s| s > 0.0)
    });
    assert_eq!(value(&text, "tagpin_log_entries"), Some(1.0), "{text}");
    let shipped = value(&text, "tagpin_log_checkpoint_timestamp_seconds").unwrap_or(0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        shipped > 0.0 && shipped <= now,
        "shipped at {shipped}, now {now}\n{text}"
    );
    assert_eq!(
        value(&text, "tagpin_decisions_total{action=\"pin_created\"}"),
        Some(1.0),
        "{text}"
    );
}

#[test]
fn every_alert_has_annotations_and_a_runbook_section_in_the_readme() {
    let readme = read("README.md");
    let alerts = alerts(&read(RULES));
    assert!(alerts.len() >= 13, "only {} alerts", alerts.len());
    for a in &alerts {
        let keys: Vec<&str> = a.annotations.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["summary", "description", "runbook_url"], "alert {}", a.name);
        let url = &a.annotations[2].1;
        assert_eq!(*url, format!("README.md#{}", a.name.to_lowercase()), "alert {}", a.name);
        // GitHub's anchor of a heading `### TagpinX` is `#tagpinx`.
        assert!(
            readme.lines().any(|l| l == format!("### {}", a.name)),
            "README.md has no `### {}` runbook section",
            a.name
        );
    }
}

#[test]
fn the_promtool_tests_show_every_alert_firing_and_not_firing() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(RULE_TESTS);
    let mut text = String::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yml") {
            text.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for a in alerts(&read(RULES)) {
        let expectations: Vec<&str> = lines
            .windows(2)
            .filter(|w| w[0] == format!("alertname: {}", a.name))
            .map(|w| w[1])
            .collect();
        assert!(
            expectations.contains(&"exp_alerts: []"),
            "no promtool test shows {} not firing",
            a.name
        );
        assert!(
            expectations.contains(&"exp_alerts:"),
            "no promtool test shows {} firing",
            a.name
        );
    }
}
