//! `tagpin log verify`: check the log as an auditor would, trusting neither the database
//! nor the server's word for any hash.
//!
//! In order, stopping at the first problem: (1) with `--verifier-key`, the current
//! checkpoint carries that key's signature; (2) a saved `--checkpoint` is no larger than
//! the log and (online) the consistency proof from it to the current checkpoint checks;
//! (3) every entry, streamed a page at a time, is numbered where it stands and the leaves
//! hash (in a right frontier, O(log n) memory) to the current root and, at the saved
//! size, to the saved root; offline, the stored head and subtree hashes must give the
//! same root; (4) the entries replayed give exactly the store's pins ([`super::replay`]).
//! Offline there is no served checkpoint: the tree checked is the store's head.

use std::io::Write;
use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use clap::Args;
use serde::Serialize;

use super::replay::{Mismatch, Spill};
use super::source::{Source, SourceArgs, PAGE};
use super::{parse_checkpoint, settle};
use crate::cli::client::{CliError, EXIT_FOUND, EXIT_OK};
use crate::cli::output::Progress;
use crate::log::{merkle, Checkpoint, Frontier, Hash, LogEntry, Note, VerifierKey};

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 every check held; 1 one did not (an unsigned checkpoint or one \
                        signed by another key, a saved checkpoint the log does not extend, entries that \
                        do not hash to the root, a pin the entries do not give), named on stderr, or in \
                        \"problem\" with --json; 2 on any other error."
)]
pub struct VerifyArgs {
    /// A checkpoint saved earlier (the note as `tagpin log checkpoint` printed it, signed
    /// or not): the log now must extend it.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// The verifier key (as `tagpin log keygen` printed it) whose signature the current
    /// checkpoint, and the saved one, must carry [default: signatures are not checked].
    #[arg(long, value_name = "KEY", env = "TAGPIN_LOG_VERIFIER_KEY")]
    pub verifier_key: Option<String>,
    /// One JSON object (ok, size, root, signature, checkpoint, entries, pins, problem), for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub source: SourceArgs,
}

/// What was checked, as `--json` gives it.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub ok: bool,
    pub size: u64,
    /// Base64, as in the checkpoint.
    pub root: String,
    /// `verified`, `unchecked` (no `--verifier-key`, or offline), `unsigned` or `bad`.
    pub signature: &'static str,
    /// The saved checkpoint: `none`, `consistent`, `shrunk` (larger than the log),
    /// `inconsistent`, `unsigned` or `bad` (its signature), or `unchecked` when an earlier
    /// check failed first.
    pub checkpoint: &'static str,
    /// Entries streamed and pins compared.
    pub entries: u64,
    pub pins: u64,
    pub problem: Option<String>,
    /// The lines for people, in order.
    #[serde(skip)]
    lines: Vec<String>,
}

impl Report {
    fn say(&mut self, line: String) {
        self.lines.push(line);
    }
}

/// What a signature check found.
fn signature(key: &VerifierKey, note: &Note) -> &'static str {
    if key.verifies(note) {
        "verified"
    } else if note.signatures.is_empty() {
        "unsigned"
    } else {
        "bad"
    }
}

/// The saved checkpoint, read and parsed (a usage error when it is not one).
fn read_saved(path: &std::path::Path) -> Result<(Note, Checkpoint), CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read the checkpoint {}: {e}", path.display())))?;
    parse_checkpoint(&text).map_err(|e| CliError::Usage(format!("{} is not a checkpoint: {e}", path.display())))
}

pub async fn run(
    args: &VerifyArgs,
    env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
    out: &mut dyn Write,
) -> Result<u8, CliError> {
    let key = args
        .verifier_key
        .as_deref()
        .map(VerifierKey::parse)
        .transpose()
        .map_err(|e| CliError::Usage(format!("--verifier-key: {e}")))?;
    let saved = args.checkpoint.as_deref().map(read_saved).transpose()?;
    if args.source.offline() && key.is_some() && saved.is_none() {
        return Err(CliError::Usage(
            "offline there is no served checkpoint: --verifier-key checks the saved --checkpoint FILE; give one".into(),
        ));
    }
    let source = Source::open(&args.source, env).await?;
    let mut report = Report {
        signature: "unchecked",
        checkpoint: "none",
        ..Report::default()
    };
    let progress = Progress::start("log verify");
    let problem = check(&source, key.as_ref(), saved.as_ref(), &mut report, &progress).await?;
    progress.finish();
    report.ok = problem.is_none();
    report.problem = problem;
    let io = |e: std::io::Error| CliError::Io(format!("cannot write the output: {e}"));
    if args.json {
        let v = serde_json::to_string(&report).map_err(|e| CliError::Io(e.to_string()))?;
        writeln!(out, "{v}").map_err(io)?;
    } else {
        for line in &report.lines {
            writeln!(out, "{line}").map_err(io)?;
        }
        match &report.problem {
            None => writeln!(out, "ok").map_err(io)?,
            Some(p) => {
                out.flush().map_err(io)?;
                eprintln!("tagpin: {p}");
            }
        }
    }
    Ok(if report.ok { EXIT_OK } else { EXIT_FOUND })
}

/// The tree being checked.
#[derive(Debug, Clone, Copy)]
pub struct Tree {
    pub size: u64,
    pub root: Hash,
}

/// Every check in order; `Some(problem)` at the first that fails.
async fn check(
    source: &Source,
    key: Option<&VerifierKey>,
    saved: Option<&(Note, Checkpoint)>,
    report: &mut Report,
    progress: &Progress,
) -> Result<Option<String>, CliError> {
    let tree = match current(source, key, report).await? {
        Ok(tree) => tree,
        Err(problem) => return Ok(Some(problem)),
    };
    match saved {
        Some((note, cp)) => {
            // Until the saved checkpoint's checks are reached.
            report.checkpoint = "unchecked";
            if let Some(problem) = against_saved(source, key, note, cp, tree, report).await? {
                return Ok(Some(problem));
            }
        }
        None => report.say("no saved checkpoint (--checkpoint FILE checks that the log only grew)".into()),
    }
    let saved_size = saved.map(|(_, cp)| cp.size);
    let mut spill = Spill::new(tree.size).map_err(spill_error)?;
    let streamed = match stream(source, tree.size, saved_size, &mut spill, progress).await? {
        Ok(streamed) => streamed,
        Err(problem) => return Ok(Some(problem)),
    };
    report.entries = tree.size;
    if streamed.root != tree.root {
        let (what, says) = if source.offline() {
            ("the stored tree does not match its entries", "the stored head says")
        } else {
            (
                "the log's entries do not hash to the checkpoint's root",
                "the checkpoint says",
            )
        };
        return Ok(Some(format!(
            "{what}: {} entries give root {}, {says} {}",
            tree.size,
            B64.encode(streamed.root),
            B64.encode(tree.root)
        )));
    }
    if source.offline() {
        if let Some(problem) = stored_tree(source, tree).await? {
            return Ok(Some(problem));
        }
    }
    if let (Some((_, cp)), Some(root)) = (saved, streamed.at_saved) {
        if root != cp.root {
            report.checkpoint = "inconsistent";
            return Ok(Some(format!(
                "the checkpoint at size {} is not a prefix of the log now: its first {} entries give root {}, the checkpoint says {}",
                cp.size,
                cp.size,
                B64.encode(root),
                B64.encode(cp.root)
            )));
        }
        report.checkpoint = "consistent";
        report.say(format!("saved checkpoint at size {}: a prefix of the log now", cp.size));
    }
    replay(source, tree, key, spill, report, progress).await
}

/// The tree to check: the served checkpoint, its signature checked when a key is given;
/// offline, the store's head.
async fn current(
    source: &Source,
    key: Option<&VerifierKey>,
    report: &mut Report,
) -> Result<Result<Tree, String>, CliError> {
    if source.offline() {
        let head = source.head().await?;
        let tree = Tree {
            size: head.size(),
            root: head.root(),
        };
        (report.size, report.root) = (tree.size, B64.encode(tree.root));
        report.say(format!(
            "size {}, root {} (the store's head: offline there is no served checkpoint)",
            report.size, report.root
        ));
        report.say("signature not checked (offline: no served checkpoint)".into());
        return Ok(Ok(tree));
    }
    let text = source.served_checkpoint().await?;
    let (note, cp) = parse_checkpoint(&text).map_err(|e| CliError::Protocol(format!("the served checkpoint: {e}")))?;
    (report.size, report.root) = (cp.size, B64.encode(cp.root));
    report.say(format!("size {}, root {}", report.size, report.root));
    if let Some(key) = key {
        report.signature = signature(key, &note);
        match report.signature {
            "verified" => report.say(format!("signature verified ({})", key.id())),
            "unsigned" => return Ok(Err("the checkpoint is not signed".into())),
            _ => return Ok(Err(format!("the checkpoint is not signed by {}", key.id()))),
        }
    } else {
        report.say("signature not checked (no --verifier-key)".into());
    }
    Ok(Ok(Tree {
        size: cp.size,
        root: cp.root,
    }))
}

/// The saved checkpoint's signature and size, and online the consistency proof from it
/// to the current tree.
async fn against_saved(
    source: &Source,
    key: Option<&VerifierKey>,
    note: &Note,
    saved: &Checkpoint,
    tree: Tree,
    report: &mut Report,
) -> Result<Option<String>, CliError> {
    if let Some(key) = key {
        match signature(key, note) {
            "verified" => report.say(format!("saved checkpoint signature verified ({})", key.id())),
            "unsigned" => {
                report.checkpoint = "unsigned";
                return Ok(Some("the saved checkpoint is not signed".into()));
            }
            other => {
                report.checkpoint = other;
                return Ok(Some(format!("the saved checkpoint is not signed by {}", key.id())));
            }
        }
    }
    if saved.size > tree.size {
        report.checkpoint = "shrunk";
        return Ok(Some(format!(
            "the log has {} entries, fewer than the checkpoint's {}",
            tree.size, saved.size
        )));
    }
    if !source.offline() && saved.size > 0 {
        let proof = source.consistency(saved.size, tree.size).await?;
        if !merkle::verify_consistency(saved.size, tree.size, &saved.root, &tree.root, &proof) {
            report.checkpoint = "inconsistent";
            return Ok(Some(format!(
                "the checkpoint at size {} is not a prefix of the log now: the consistency proof from {} to {} entries does not check",
                saved.size, saved.size, tree.size
            )));
        }
    }
    Ok(None)
}

/// What streaming the entries computed.
struct Streamed {
    root: Hash,
    /// The root at the saved checkpoint's size.
    at_saved: Option<Hash>,
}

/// Stream entries `[0, size)` through a frontier and into the replay's spill.
async fn stream(
    source: &Source,
    size: u64,
    saved: Option<u64>,
    spill: &mut Spill,
    progress: &Progress,
) -> Result<Result<Streamed, String>, CliError> {
    let mut frontier = Frontier::default();
    let mut at_saved = (saved == Some(0)).then(|| frontier.root());
    let mut next = 0u64;
    while next < size {
        let page = source.leaves(next, size.min(next + PAGE)).await?;
        if page.is_empty() {
            return Ok(Err(format!("the log's size is {size} but entry {next} is missing")));
        }
        for leaf in page {
            let Some(entry) = LogEntry::parse(&leaf) else {
                return Ok(Err(format!("entry {next} is not a log entry: its leaf does not parse")));
            };
            if entry.index != next {
                return Ok(Err(format!("entry {next}'s leaf says it is entry {}", entry.index)));
            }
            frontier.append(merkle::leaf_hash(&leaf));
            let key = format!("{}:{}", entry.repository, entry.tag);
            spill.entry(&key, entry.digest.as_str(), next).map_err(spill_error)?;
            next += 1;
            if Some(next) == saved {
                at_saved = Some(frontier.root());
            }
        }
        progress.message(format!("{next} of {size} entries"));
    }
    Ok(Ok(Streamed {
        root: frontier.root(),
        at_saved,
    }))
}

/// Offline: the stored head and the stored subtree hashes (what proofs are built from)
/// must give the root the entries give.
async fn stored_tree(source: &Source, tree: Tree) -> Result<Option<String>, CliError> {
    let what = |why: String| Some(format!("the stored tree does not match its entries: {why}"));
    // `tree` is the head; its root was compared with the entries' already.
    Ok(match source.stored_root(tree.size).await? {
        Err(why) => what(why),
        Ok(root) if root != tree.root => what(format!(
            "the stored subtree hashes give root {}, the entries give {}",
            B64.encode(root),
            B64.encode(tree.root)
        )),
        Ok(_) => None,
    })
}

/// Compare the replayed entries with every pin the store holds.
async fn replay(
    source: &Source,
    tree: Tree,
    key: Option<&VerifierKey>,
    mut spill: Spill,
    report: &mut Report,
    progress: &Progress,
) -> Result<Option<String>, CliError> {
    let mut after = None;
    loop {
        let (pins, next) = source.pins(after).await?;
        for (key, digest) in &pins {
            spill.pin(key, digest).map_err(spill_error)?;
        }
        progress.message(format!("pins read to {}", next.as_deref().unwrap_or("the end")));
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let (found, pins) = tokio::task::spawn_blocking(move || spill.compare())
        .await
        .map_err(|e| CliError::Io(e.to_string()))?
        .map_err(spill_error)?;
    report.pins = pins;
    let first = settle::first_standing(source, tree, key, &found.first).await?;
    let summary = format!("replayed {} entries against {pins} pins", tree.size);
    Ok(match first {
        None if found.count == 0 => {
            report.say(format!("{summary}: all match"));
            None
        }
        None => {
            // Every mismatch kept was a tag bound after the checkpoint: a live store.
            report.say(format!(
                "{summary}: {} tags changed after the checkpoint",
                found.first.len()
            ));
            if found.count > found.first.len() as u64 {
                return Err(CliError::Failed(format!(
                    "{} pins differ from the log at size {} and the first {} were bound after it; \
                     run log verify again when fewer writes are landing",
                    found.count,
                    tree.size,
                    found.first.len()
                )));
            }
            None
        }
        Some(m) => {
            let noun = if found.count == 1 { "mismatch" } else { "mismatches" };
            report.say(format!("{summary}: {} {noun}", found.count));
            Some(Mismatch::message(&m))
        }
    })
}

fn spill_error(e: std::io::Error) -> CliError {
    CliError::Io(format!(
        "cannot spill the replay to {}: {e}",
        std::env::temp_dir().display()
    ))
}

#[cfg(test)]
mod tests;
