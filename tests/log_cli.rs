//! `tagpin log` from the command line without a server: keygen's key file, the offline
//! commands on a data dir an offline import wrote, and the errors that exit 2 before
//! anything is checked (a garbled verifier key, a missing checkpoint file, no store).

mod common;

use std::path::Path;

// The CLI with no admin, database or key settings from the environment.
use common::log_api::tagpin_cli as tagpin;

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `log keygen NAME --out FILE`: the verifier key printed.
fn keygen(dir: &Path, name: &str, file: &str) -> String {
    let key = dir.join(file);
    let out = tagpin(&["log", "keygen", name, "--out", path(&key)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout.trim().to_owned()
}

#[test]
fn keygen_writes_a_key_file_only_its_owner_reads_and_never_overwrites_one() {
    let dir = tempfile::tempdir().unwrap();
    let verifier = keygen(dir.path(), "tagpin.test/log", "log.key");
    let key = dir.path().join("log.key");
    let secret = std::fs::read_to_string(&key).unwrap();
    assert!(secret.starts_with("PRIVATE+KEY+tagpin.test/log+"), "{secret}");
    let hash = secret.split('+').nth(3).unwrap();
    assert!(
        verifier.starts_with(&format!("tagpin.test/log+{hash}+")),
        "{verifier} {secret}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    let again = tagpin(&["log", "keygen", "other.test/log", "--out", path(&key)]);
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(again.stderr.contains("exists already"), "{}", again.stderr);
    assert!(again.stdout.is_empty(), "{}", again.stdout);
    assert_eq!(std::fs::read_to_string(&key).unwrap(), secret);
}

#[test]
fn the_offline_commands_check_a_data_dir_an_import_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let digest = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let lines: String = ["1.0", "1.1", "2.0"]
        .iter()
        .zip(['a', 'b', 'c'])
        .map(|(tag, c)| {
            format!(
                r#"{{"repository":"team/app","tag":"{tag}","digest":"{d}","source":"push","pinned_at":1700000000,"history":[{{"at":1700000000,"event":"push","digest":"{d}"}}]}}"#,
                d = digest(c)
            ) + "\n"
        })
        .collect();
    let export = dir.path().join("pins.jsonl");
    std::fs::write(&export, lines).unwrap();
    let import = tagpin(&["import", path(&export), "--data-dir", path(&data)]);
    assert_eq!(import.code, 0, "{}", import.stderr);

    let cp = tagpin(&["log", "checkpoint", "--data-dir", path(&data)]);
    assert_eq!(cp.code, 0, "{}", cp.stderr);
    let lines: Vec<&str> = cp.stdout.lines().collect();
    assert_eq!(lines[..2], ["tagpin", "3"], "{}", cp.stdout);
    let saved = dir.path().join("saved.checkpoint");
    std::fs::write(&saved, &cp.stdout).unwrap();

    let verify = tagpin(&["log", "verify", "--data-dir", path(&data), "--checkpoint", path(&saved)]);
    assert_eq!(verify.code, 0, "{} {}", verify.stdout, verify.stderr);
    assert!(
        verify.stdout.contains("replayed 3 entries against 3 pins: all match"),
        "{}",
        verify.stdout
    );
    assert_eq!(verify.stdout.lines().last(), Some("ok"), "{}", verify.stdout);

    let prove = tagpin(&["log", "prove", "team/app:1.1", "--data-dir", path(&data)]);
    assert_eq!(prove.code, 0, "{} {}", prove.stdout, prove.stderr);
    assert!(
        prove.stdout.starts_with("entry  1 (team/app:1.1 -> "),
        "{}",
        prove.stdout
    );
    assert_eq!(prove.stdout.lines().last(), Some("verified"), "{}", prove.stdout);
    let none = tagpin(&["log", "prove", "team/app:9.9", "--data-dir", path(&data)]);
    assert_eq!((none.code, none.stderr.trim()), (1, "tagpin: team/app:9.9 has no pin"));
}

#[test]
fn errors_before_any_check_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let verifier = keygen(dir.path(), "tagpin.test/log", "log.key");
    let garbled = verifier.replacen('+', "+0", 1);
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let missing = dir.path().join("missing.checkpoint");
    for (args, says) in [
        (
            vec!["log", "verify", "--verifier-key", garbled.as_str()],
            "--verifier-key: not a verifier key",
        ),
        (
            vec!["log", "verify", "--checkpoint", path(&missing)],
            "cannot read the checkpoint",
        ),
        (
            vec!["log", "verify", "--data-dir", path(&empty)],
            "holds no tagpin pin store",
        ),
        (
            vec![
                "log",
                "verify",
                "--data-dir",
                path(&empty),
                "--verifier-key",
                verifier.as_str(),
            ],
            "give one",
        ),
        (
            vec!["log", "prove", "team/app", "--data-dir", path(&empty)],
            "no ':' before the tag",
        ),
        (
            vec!["log", "keygen", "two words", "--out", "unused.key"],
            "not a key name",
        ),
        (vec!["log", "verfy"], "unrecognized subcommand"),
    ] {
        let out = tagpin(&args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
    assert!(!Path::new("unused.key").exists());
}
