//! The log as tagpin serves it on the admin API (`/admin/v1/log/*`), read with raw HTTP
//! and checked with the independent verifier of [`super::tlog`]: every root and proof is
//! recomputed from the leaves and compared hash for hash.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::Value;

use super::admin::{AdminSecrets, CliOut, TOKEN};
use super::http::{request, Resp};
use super::tlog::{self, Checkpoint, Hash};

/// Entries tagpin answers at most per page (the rest is asked for again).
pub const PAGE: u64 = 1000;

/// One served log entry: its leaf bytes and the fields served beside them.
#[derive(Debug, Clone)]
pub struct Entry {
    pub index: u64,
    /// The exact leaf bytes (base64-decoded `leaf`).
    pub leaf: Vec<u8>,
    /// The leaf parsed as JSON.
    pub fields: Value,
}

impl Entry {
    pub fn hash(&self) -> Hash {
        tlog::leaf_hash(&self.leaf)
    }

    pub fn str(&self, field: &str) -> Option<&str> {
        self.fields[field].as_str()
    }

    /// `repository:tag`.
    pub fn reference(&self) -> String {
        format!(
            "{}:{}",
            self.fields["repository"].as_str().unwrap_or(""),
            self.fields["tag"].as_str().unwrap_or("")
        )
    }
}

/// The admin API of one running tagpin.
#[derive(Clone, Copy)]
pub struct LogApi {
    pub admin: SocketAddr,
}

impl LogApi {
    pub fn new(admin: SocketAddr) -> Self {
        Self { admin }
    }

    pub fn get(&self, target: &str) -> Resp {
        let bearer = format!("Bearer {TOKEN}");
        request(self.admin, "GET", target, &[("Authorization", &bearer)], b"")
    }

    /// The checkpoint note exactly as served.
    pub fn checkpoint_text(&self) -> String {
        let r = self.get("/admin/v1/log/checkpoint");
        assert_eq!(r.status, 200, "checkpoint: {}", r.text());
        let ct = r.header("content-type").unwrap_or("");
        assert!(ct.starts_with("text/plain"), "checkpoint content type {ct:?}");
        r.text()
    }

    pub fn checkpoint(&self) -> Checkpoint {
        let text = self.checkpoint_text();
        tlog::parse_checkpoint(&text).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Entries `start..end`, asking again from the last index + 1 while a page comes back
    /// short.
    pub fn entries(&self, start: u64, end: u64) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut next = start;
        while next < end {
            let r = self.get(&format!("/admin/v1/log/entries?start={next}&end={end}"));
            assert_eq!(r.status, 200, "entries {next}..{end}: {}", r.text());
            let page: Vec<Entry> = r.text().lines().map(parse_line).collect();
            assert!(!page.is_empty(), "entries {next}..{end}: an empty page");
            assert!(page.len() as u64 <= PAGE, "a page of {} lines", page.len());
            for e in page {
                assert_eq!(e.index, next, "entries {start}..{end}: out of order");
                next += 1;
                out.push(e);
            }
        }
        out
    }

    /// Every entry of the tree the current checkpoint commits to, and that checkpoint.
    pub fn all(&self) -> (Checkpoint, Vec<Entry>) {
        let cp = self.checkpoint();
        let entries = self.entries(0, cp.size);
        (cp, entries)
    }

    pub fn inclusion(&self, index: u64, size: u64) -> Vec<Hash> {
        let r = self.get(&format!("/admin/v1/log/proof/inclusion?index={index}&size={size}"));
        assert_eq!(r.status, 200, "inclusion {index} in {size}: {}", r.text());
        let v = r.json();
        assert_eq!(
            (v["index"].as_u64(), v["size"].as_u64()),
            (Some(index), Some(size)),
            "{v}"
        );
        hashes(&v)
    }

    pub fn consistency(&self, from: u64, to: u64) -> Vec<Hash> {
        let r = self.get(&format!("/admin/v1/log/proof/consistency?from={from}&to={to}"));
        assert_eq!(r.status, 200, "consistency {from} to {to}: {}", r.text());
        let v = r.json();
        assert_eq!((v["from"].as_u64(), v["to"].as_u64()), (Some(from), Some(to)), "{v}");
        hashes(&v)
    }

    /// Every tag with a pin (state `pinned` or `advancing`) and its pinned digest, from
    /// `/admin/v1/pins`, page by page.
    pub fn pinned(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut after: Option<String> = None;
        for _ in 0..10_000 {
            let query = match &after {
                Some(a) => format!("?limit=100&after={}", encode(a)),
                None => "?limit=100".to_owned(),
            };
            let r = self.get(&format!("/admin/v1/pins{query}"));
            assert_eq!(r.status, 200, "pins: {}", r.text());
            let v = r.json();
            for p in v["pins"].as_array().expect("a pins list") {
                if matches!(p["state"].as_str(), Some("pinned" | "advancing")) {
                    let reference = format!("{}:{}", p["repository"].as_str().unwrap(), p["tag"].as_str().unwrap());
                    out.insert(reference, p["digest"].as_str().unwrap().to_owned());
                }
            }
            match v["next"].as_str() {
                Some(n) => after = Some(n.to_owned()),
                None => return out,
            }
        }
        panic!("more than a million pins");
    }

    /// Check everything the log serves against the independent verifier: the entries
    /// against their leaves, the checkpoint's size and root against the tree of every
    /// leaf, the inclusion proof of every entry at the full size and of a sample at
    /// smaller sizes, and the consistency proof from every size to the full one and a
    /// sample between smaller sizes; out-of-range questions are 400s. Returns the
    /// checkpoint and the entries.
    pub fn check_all(&self) -> (Checkpoint, Vec<Entry>) {
        let (cp, entries) = self.all();
        let n = cp.size;
        assert_eq!(entries.len() as u64, n);
        let leaves: Vec<Hash> = entries.iter().map(Entry::hash).collect();
        assert_eq!(
            tlog::hex(&tlog::mth(&leaves)),
            tlog::hex(&cp.root),
            "the checkpoint's root is not the tree hash of the {n} served entries"
        );
        for size in 1..=n {
            let tree = &leaves[..size as usize];
            let root = tlog::mth(tree);
            // Every index at the full size; first, middle and last at each smaller one.
            let indexes: Vec<u64> = if size == n {
                (0..n).collect()
            } else {
                let mut v = vec![0, size / 2, size - 1];
                v.dedup();
                v
            };
            for i in indexes {
                let served = self.inclusion(i, size);
                let want = tlog::path(i as usize, tree);
                assert_eq!(hexes(&served), hexes(&want), "inclusion proof of {i} in {size}");
                let folded = tlog::root_from_inclusion(i, size, &leaves[i as usize], &served);
                assert_eq!(
                    folded,
                    Some(root),
                    "the inclusion proof of {i} in {size} does not lead to the root"
                );
            }
            // From every size to the full one; to a smaller size from its first and half.
            let froms: Vec<u64> = if size == n {
                (1..=n).collect()
            } else {
                vec![1, size.div_ceil(2)]
            };
            for from in froms {
                let served = self.consistency(from, size);
                let want = tlog::proof(from as usize, tree);
                assert_eq!(hexes(&served), hexes(&want), "consistency proof from {from} to {size}");
            }
        }
        self.check_refusals(n);
        (cp, entries)
    }

    /// Questions about trees or entries that do not exist are 400s in the OCI envelope.
    pub fn check_refusals(&self, n: u64) {
        let mut bad = vec![
            format!("/admin/v1/log/proof/inclusion?index={n}&size={n}"),
            format!("/admin/v1/log/proof/inclusion?index=0&size={}", n + 1),
            format!("/admin/v1/log/proof/consistency?from=0&to={n}"),
            format!("/admin/v1/log/proof/consistency?from=1&to={}", n + 1),
            format!("/admin/v1/log/entries?start=0&end={}", n + 1),
            "/admin/v1/log/proof/inclusion?index=x&size=1".to_owned(),
            "/admin/v1/log/proof/consistency?to=1".to_owned(),
        ];
        if n > 1 {
            bad.push(format!("/admin/v1/log/proof/consistency?from={n}&to=1"));
            bad.push("/admin/v1/log/entries?start=1&end=1".to_owned());
        }
        for target in bad {
            let r = self.get(&target);
            assert_eq!(r.status, 400, "{target}: {}", r.text());
            assert!(
                !r.oci_code().is_empty(),
                "{target}: not an OCI error envelope: {}",
                r.text()
            );
        }
    }
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn hashes(v: &Value) -> Vec<Hash> {
    v["hashes"]
        .as_array()
        .unwrap_or_else(|| panic!("no hashes in {v}"))
        .iter()
        .map(|h| tlog::b64_hash(h.as_str().expect("a base64 string")))
        .collect()
}

fn hexes(h: &[Hash]) -> Vec<String> {
    h.iter().map(tlog::hex).collect()
}

/// One `entries` line: `index`, `leaf` and every field of the leaf beside them, equal to
/// the leaf's own.
fn parse_line(line: &str) -> Entry {
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let index = v["index"].as_u64().unwrap_or_else(|| panic!("no index: {line}"));
    let leaf = B64
        .decode(v["leaf"].as_str().unwrap_or_else(|| panic!("no leaf: {line}")))
        .unwrap_or_else(|e| panic!("leaf not base64 ({e}): {line}"));
    let fields: Value = serde_json::from_slice(&leaf)
        .unwrap_or_else(|e| panic!("leaf not JSON ({e}): {}", String::from_utf8_lossy(&leaf)));
    let object = fields
        .as_object()
        .unwrap_or_else(|| panic!("leaf not an object: {fields}"));
    for (k, value) in object {
        assert_eq!(&v[k], value, "served field {k} differs from the leaf's: {line}");
    }
    assert_eq!(fields["index"].as_u64(), Some(index), "the leaf's own index: {line}");
    check_leaf_shape(&leaf, &fields);
    Entry { index, leaf, fields }
}

/// The leaf's fields, in the order the log's format fixes (`source` only for adoptions),
/// a UTC RFC 3339 time and a known event.
fn check_leaf_shape(leaf: &[u8], fields: &Value) {
    let text = String::from_utf8_lossy(leaf);
    let adopted = fields["event"] == "adopted";
    let mut order = vec!["index", "time", "repository", "tag", "digest", "previous", "event"];
    if adopted {
        order.push("source");
    }
    order.push("by");
    let positions: Vec<usize> = order
        .iter()
        .map(|k| {
            text.find(&format!("\"{k}\":"))
                .unwrap_or_else(|| panic!("no {k} in {text}"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "fields out of order: {text}");
    assert_eq!(
        fields.as_object().unwrap().len(),
        order.len(),
        "unexpected fields: {text}"
    );
    let time = fields["time"].as_str().unwrap_or("");
    let rfc3339 = regex::Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$").unwrap();
    assert!(rfc3339.is_match(time), "time {time:?} is not RFC 3339 UTC: {text}");
    let events = [
        "genesis",
        "push",
        "adopted",
        "append",
        "audit_move",
        "released",
        "imported",
    ];
    assert!(
        events.contains(&fields["event"].as_str().unwrap_or("")),
        "unknown event: {text}"
    );
    if adopted {
        assert!(
            matches!(fields["source"].as_str(), Some("push" | "read" | "seed")),
            "unknown source: {text}"
        );
    }
}

/// Replay entries into `repository:tag -> digest` (the last entry of each tag wins).
pub fn replay(entries: &[Entry]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in entries {
        out.insert(e.reference(), e.str("digest").unwrap_or("").to_owned());
    }
    out
}

/// Run the tagpin CLI cargo built with `args` and nothing else (no admin flags added).
pub fn tagpin_cli(args: &[&str]) -> CliOut {
    let out = Command::new(env!("CARGO_BIN_EXE_tagpin"))
        .args(args)
        .env_remove("TAGPIN_ADMIN_TOKEN")
        .env_remove("TAGPIN_ADMIN_URL")
        .env_remove("TAGPIN_LOG_SIGNING_KEY")
        .env_remove("TAGPIN_LOG_VERIFIER_KEY")
        .env_remove("TAGPIN_DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .expect("run the tagpin CLI");
    CliOut::from(out)
}

/// `tagpin log keygen NAME --out DIR/NAME.key`: the key file's path and the verifier key
/// it printed (checked to parse with the independent verifier).
pub fn keygen(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    let file = dir.join(format!("{}.key", name.replace('/', "_")));
    let out = tagpin_cli(&["log", "keygen", name, "--out", file.to_str().unwrap()]).ok();
    let verifier = out
        .stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&format!("{name}+")))
        .unwrap_or_else(|| panic!("no verifier key line in {out:?}"))
        .to_owned();
    let parsed = tlog::NoteVerifier::parse(&verifier).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parsed.name, name);
    // The signing key: C2SP's private key format, readable by its owner alone.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key file's mode is {mode:o}");
    let text = std::fs::read_to_string(&file).unwrap();
    let hash = verifier.split('+').nth(1).unwrap_or("");
    assert!(
        text.starts_with(&format!("PRIVATE+KEY+{name}+{hash}+")),
        "the key file: {text:?}"
    );
    (file, verifier)
}

/// `tagpin pins show` gives every history entry its log index, in JSON (`log`) and in the
/// table's LOG column alike: each binding entry the index of its own log entry, in order;
/// every entry of an imported pin, or of one from before the log, the import's or the
/// genesis entry's.
pub fn check_pins_show(secrets: &AdminSecrets, admin: SocketAddr, entries: &[Entry]) {
    let mut by_tag: BTreeMap<String, Vec<&Entry>> = BTreeMap::new();
    for e in entries {
        by_tag.entry(e.reference()).or_default().push(e);
    }
    for (reference, logged) in by_tag {
        let pin = secrets.pin(admin, &reference).expect("a pin");
        let history = pin["history"].as_array().unwrap();
        let logs: Vec<Option<u64>> = history.iter().map(|h| h["log"].as_u64()).collect();
        if matches!(logged[0].str("event"), Some("imported" | "genesis")) {
            let first = Some(logged[0].index);
            let stamped = logs.iter().take_while(|i| **i == first).count();
            assert!(
                stamped > 0,
                "{reference}: history not stamped with entry {}: {pin}",
                logged[0].index
            );
            let rest: Vec<Option<u64>> = logged[1..].iter().map(|e| Some(e.index)).collect();
            assert_eq!(binding_logs(&history[stamped..]), rest, "{reference}: {pin}");
        } else {
            let want: Vec<Option<u64>> = logged.iter().map(|e| Some(e.index)).collect();
            assert_eq!(binding_logs(history), want, "{reference}: {pin}");
        }
        let human = secrets.cli(admin, &["pins", "show", &reference]).ok();
        let shown = log_column(&human.stdout);
        let want: Vec<String> = logs
            .iter()
            .map(|l| l.map_or("-".to_owned(), |i| i.to_string()))
            .collect();
        assert_eq!(shown, want, "{reference}: the LOG column of:\n{}", human.stdout);
    }
}

/// The `log` of each history entry that binds the tag.
fn binding_logs(history: &[Value]) -> Vec<Option<u64>> {
    history
        .iter()
        .filter(|h| {
            matches!(
                h["event"].as_str(),
                Some("push" | "adopted" | "append" | "audit_move" | "released")
            )
        })
        .map(|h| h["log"].as_u64())
        .collect()
}

/// The last column of the HISTORY table of `tagpin pins show`.
fn log_column(text: &str) -> Vec<String> {
    let mut lines = text.lines().skip_while(|l| l.trim() != "HISTORY").skip(1);
    let header = lines.next().unwrap_or("");
    assert!(header.trim_end().ends_with("LOG"), "no LOG column: {text}");
    lines
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().last().unwrap_or("").to_owned())
        .collect()
}
