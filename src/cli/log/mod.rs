//! `tagpin log …`: the verifiable history (see [`crate::log`]) from the outside. `keygen`
//! writes a checkpoint signing key; `checkpoint` prints the current checkpoint; `prove`
//! checks a tag's latest entry against it with an inclusion proof; `verify` checks the
//! whole log ([`verify`]). They read through the admin API, or offline on `--data-dir`
//! / `--database-url` ([`source`]), and check every hash themselves: a proof is only
//! believed once it recomputes to the root.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::json;

use super::client::{CliError, EXIT_FOUND, EXIT_OK};
use crate::log::{merkle, Checkpoint, LogEntry, Note, SigningKey};

pub mod replay;
mod settle;
pub mod source;
#[cfg(test)]
mod testing;
pub mod verify;

use self::source::{Source, SourceArgs};

#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Write a new Ed25519 checkpoint signing key to FILE (mode 0600) and print its verifier key.
    Keygen(KeygenArgs),
    /// Print the current checkpoint (admin API; unsigned from --data-dir or --database-url).
    Checkpoint(CheckpointArgs),
    /// Check a tag's latest log entry against the current checkpoint with its inclusion proof.
    Prove(ProveArgs),
    /// Check the whole log: its signature, a saved checkpoint, every entry, and the pins.
    Verify(verify::VerifyArgs),
}

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 written (the verifier key is printed on stdout); 2 on any error, \
                        FILE existing already among them: a key is never overwritten."
)]
pub struct KeygenArgs {
    /// The key's name, which checkpoints are signed under (e.g. tagpin.example.com/log);
    /// no spaces and no '+'.
    pub name: String,
    /// Where to write the signing key; it must not exist yet.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
#[command(after_help = "Exit status: 0 printed; 2 on any error.")]
pub struct CheckpointArgs {
    /// Offline, the origin line of the unsigned checkpoint printed [default: tagpin].
    #[arg(long, value_name = "ORIGIN")]
    pub log_origin: Option<String>,
    #[command(flatten)]
    pub source: SourceArgs,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 the tag's latest entry is in the checkpoint's tree; 1 it has no \
                        pin or no entry, or the proof does not check; 2 on any other error."
)]
pub struct ProveArgs {
    /// The tag, as REPOSITORY:TAG (e.g. prod/api:1.4.2).
    pub reference: String,
    /// One JSON object (entry, leaf, checkpoint, proof and whether it verified), for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub source: SourceArgs,
}

pub async fn run(
    command: LogCommand,
    env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
    out: &mut dyn Write,
) -> Result<u8, CliError> {
    match command {
        LogCommand::Keygen(a) => keygen(&a, out),
        LogCommand::Checkpoint(a) => checkpoint(&a, &Source::open(&a.source, env).await?, out).await,
        LogCommand::Prove(a) => {
            // A malformed reference is named before any store is opened.
            super::policy::parse_reference(&a.reference).map_err(|e| CliError::Usage(e.to_string()))?;
            prove(&a, &Source::open(&a.source, env).await?, out).await
        }
        LogCommand::Verify(a) => verify::run(&a, env, out).await,
    }
}

fn io(e: std::io::Error) -> CliError {
    CliError::Io(format!("cannot write the output: {e}"))
}

/// Create `path` for a secret: mode 0600, and never over an existing file.
pub fn create_secret(path: &Path, content: &str) -> Result<(), CliError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| {
        CliError::Usage(if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!(
                "{} exists already; a signing key is never overwritten: remove it first or choose another --out",
                path.display()
            )
        } else {
            format!("cannot create {}: {e}", path.display())
        })
    })?;
    file.write_all(content.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| CliError::Io(format!("cannot write {}: {e}", path.display())))
}

/// `log keygen`: the signing key to FILE, the verifier key to stdout.
pub fn keygen(args: &KeygenArgs, out: &mut dyn Write) -> Result<u8, CliError> {
    let (secret, verifier) = SigningKey::generate(&args.name).map_err(CliError::Usage)?;
    create_secret(&args.out, &secret)?;
    writeln!(out, "{verifier}").map_err(io)?;
    Ok(EXIT_OK)
}

/// The current checkpoint: the served note, or offline the unsigned checkpoint of the
/// stored head.
async fn current_text(source: &Source, origin: Option<&str>) -> Result<String, CliError> {
    if !source.offline() {
        return source.served_checkpoint().await;
    }
    let head = source.head().await?;
    Ok(crate::log::Signer::new(None, origin.map(str::to_owned)).checkpoint(&head))
}

/// A checkpoint note and its body.
pub fn parse_checkpoint(text: &str) -> Result<(Note, Checkpoint), String> {
    let note = Note::parse(text)?;
    let checkpoint = Checkpoint::parse(&note.text)?;
    Ok((note, checkpoint))
}

/// `log checkpoint`: printed verbatim.
async fn checkpoint(args: &CheckpointArgs, source: &Source, out: &mut dyn Write) -> Result<u8, CliError> {
    let text = current_text(source, args.log_origin.as_deref()).await?;
    out.write_all(text.as_bytes()).map_err(io)?;
    Ok(EXIT_OK)
}

/// `log prove R:T`: exit 1 when the tag has no entry or the proof does not check.
async fn prove(args: &ProveArgs, source: &Source, out: &mut dyn Write) -> Result<u8, CliError> {
    let (repo, tag) = super::policy::parse_reference(&args.reference).map_err(|e| CliError::Usage(e.to_string()))?;
    let found = |why: String| {
        eprintln!("tagpin: {why}");
        Ok(EXIT_FOUND)
    };
    let Some(latest) = source.latest(&repo, &tag).await? else {
        return found(format!("{repo}:{tag} has no pin"));
    };
    let Some(index) = latest.log else {
        return found(format!("{repo}:{tag} has no log entry"));
    };
    let text = current_text(source, None).await?;
    let (_, cp) = parse_checkpoint(&text).map_err(|e| CliError::Protocol(format!("the checkpoint: {e}")))?;
    if index >= cp.size {
        return found(format!(
            "entry {index} of {repo}:{tag} is not in the checkpoint's tree of {} entries",
            cp.size
        ));
    }
    let Some(leaf) = source.leaves(index, index + 1).await?.pop() else {
        return found(format!("the log does not serve entry {index}"));
    };
    let entry = LogEntry::parse(&leaf);
    let hashes = source.inclusion(index, cp.size).await?;
    let included = merkle::verify_inclusion(index, cp.size, &merkle::leaf_hash(&leaf), &hashes, &cp.root);
    // The leaf must be the tag's, bind it to its pin, and be numbered where it stands.
    let problem = match &entry {
        None => Some(format!("entry {index} is not a log entry")),
        Some(e) if e.index != index => Some(format!("entry {index}'s leaf says it is entry {}", e.index)),
        Some(e) if e.repository != repo || e.tag != tag => Some(format!(
            "entry {index} is of {}:{}, not {repo}:{tag}",
            e.repository, e.tag
        )),
        Some(e) if e.digest.as_str() != latest.digest => Some(format!(
            "{repo}:{tag} is pinned to {}; its latest entry {index} binds it to {}",
            latest.digest, e.digest
        )),
        Some(_) if !included => Some(format!(
            "the inclusion proof of entry {index} does not give the checkpoint's root at size {}",
            cp.size
        )),
        Some(_) => None,
    };
    let encoded: Vec<String> = hashes.iter().map(|h| B64.encode(h)).collect();
    if args.json {
        let v = json!({
            "index": index,
            "size": cp.size,
            "root": B64.encode(cp.root),
            "hashes": encoded,
            "leaf": B64.encode(&leaf),
            "entry": entry,
            "checkpoint": text,
            "verified": problem.is_none(),
            "problem": problem,
        });
        writeln!(out, "{v}").map_err(io)?;
    } else {
        let what = entry.as_ref().map_or_else(String::new, |e| {
            format!(" ({}:{} -> {}, {})", e.repository, e.tag, e.digest, event_name(e))
        });
        writeln!(out, "entry  {index}{what}").map_err(io)?;
        writeln!(out, "size   {}", cp.size).map_err(io)?;
        writeln!(out, "root   {}", B64.encode(cp.root)).map_err(io)?;
        for (i, h) in encoded.iter().enumerate() {
            writeln!(out, "{}{h}", if i == 0 { "proof  " } else { "       " }).map_err(io)?;
        }
        if encoded.is_empty() {
            writeln!(out, "proof  (none: the tree has one entry)").map_err(io)?;
        }
        if problem.is_none() {
            writeln!(out, "verified").map_err(io)?;
        }
    }
    match problem {
        None => Ok(EXIT_OK),
        Some(why) => found(why),
    }
}

fn event_name(e: &LogEntry) -> String {
    serde_json::to_value(e.event)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::testing::{digest, replace, source_args, store_with, tamper};
    use super::*;

    async fn prove_offline(dir: &Path, reference: &str) -> (u8, serde_json::Value) {
        let args = ProveArgs {
            reference: reference.into(),
            json: true,
            source: source_args(dir),
        };
        let source = Source::open(&args.source, &|_| None).await.unwrap();
        let mut out = Vec::new();
        let code = prove(&args, &source, &mut out).await.unwrap();
        let v = if out.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&out).unwrap()
        };
        (code, v)
    }

    #[tokio::test]
    async fn prove_checks_the_latest_entry_of_a_tag_against_the_head() {
        let dir = tempfile::tempdir().unwrap();
        store_with(dir.path(), 5);
        let (code, v) = prove_offline(dir.path(), "team/app:v3").await;
        assert_eq!(code, EXIT_OK, "{v}");
        assert_eq!(
            (&v["index"], &v["size"], &v["verified"]),
            (&3.into(), &5.into(), &true.into())
        );
        assert_eq!(v["entry"]["digest"], digest(3).as_str());
        assert_eq!(v["hashes"].as_array().map(Vec::len), Some(3), "{v}");
        let cp = Checkpoint::parse(v["checkpoint"].as_str().unwrap()).unwrap();
        assert_eq!(
            (cp.origin.as_str(), B64.encode(cp.root)),
            ("tagpin", v["root"].as_str().unwrap().to_owned())
        );

        let (code, v) = prove_offline(dir.path(), "team/app:v9").await;
        assert_eq!((code, v), (EXIT_FOUND, serde_json::Value::Null));
    }

    #[tokio::test]
    async fn prove_fails_for_a_leaf_changed_under_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        store_with(dir.path(), 4);
        tamper(dir.path(), "log_leaves", &2u64.to_be_bytes(), |v| {
            Some(replace(v, "\"time\":\"2", "\"time\":\"1"))
        });
        let (code, v) = prove_offline(dir.path(), "team/app:v2").await;
        assert_eq!((code, &v["verified"]), (EXIT_FOUND, &false.into()), "{v}");
        assert_eq!(
            v["problem"],
            "the inclusion proof of entry 2 does not give the checkpoint's root at size 4"
        );
    }

    #[tokio::test]
    async fn the_offline_checkpoint_is_the_unsigned_one_of_the_head() {
        let dir = tempfile::tempdir().unwrap();
        store_with(dir.path(), 2);
        let args = CheckpointArgs {
            log_origin: Some("example.test/log".into()),
            source: source_args(dir.path()),
        };
        let source = Source::open(&args.source, &|_| None).await.unwrap();
        let mut out = Vec::new();
        assert_eq!(checkpoint(&args, &source, &mut out).await.unwrap(), EXIT_OK);
        let text = String::from_utf8(out).unwrap();
        let (note, cp) = parse_checkpoint(&text).unwrap();
        assert!(note.signatures.is_empty(), "{text}");
        assert_eq!((cp.origin.as_str(), cp.size), ("example.test/log", 2));
    }

    #[test]
    fn keygen_writes_a_key_only_its_owner_reads_and_prints_its_verifier() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.key");
        let args = KeygenArgs {
            name: "tagpin.example/log".into(),
            out: path.clone(),
        };
        let mut out = Vec::new();
        assert_eq!(keygen(&args, &mut out).unwrap(), EXIT_OK);
        let printed = String::from_utf8(out).unwrap();
        let key = SigningKey::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(printed, format!("{}\n", key.verifier()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        }
    }

    #[test]
    fn keygen_never_overwrites_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.key");
        std::fs::write(&path, "precious").unwrap();
        let args = KeygenArgs {
            name: "tagpin.example/log".into(),
            out: path.clone(),
        };
        let e = keygen(&args, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("exists already"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
        let bad = KeygenArgs {
            name: "two words".into(),
            out: dir.path().join("other.key"),
        };
        assert!(keygen(&bad, &mut Vec::new()).is_err());
        assert!(!dir.path().join("other.key").exists());
    }
}
