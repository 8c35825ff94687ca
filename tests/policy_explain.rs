//! `tagpin policy explain` and rule errors, run as a user runs the binary.

use std::process::{Command, Output};

fn tagpin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tagpin"))
        .args(args)
        .output()
        .expect("run tagpin")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const PRODUCTION: &str = r#"
upstream = "http://127.0.0.1:5000"

[[rules]]
tags = ["sha256-*", "sha512-*"]
mode = "append-only"

[[rules]]
repositories = ["sandbox/**"]
mode = "mutable"

[[rules]]
repositories = ["legacy/**"]
mode = "audit"

[[rules]]
tags = ["latest", "main", "pr-*"]
mode = "mutable"
"#;

#[test]
fn explain_names_the_mode_and_the_deciding_rule() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tagpin.toml");
    std::fs::write(&file, PRODUCTION).unwrap();
    let file = file.to_str().unwrap();
    let cases = [
        ("prod/api:1.4.2", "prod/api:1.4.2: immutable (decided by default: no rule matched"),
        ("prod/api:latest", "prod/api:latest: mutable (decided by rule 3: repositories = [\"**\"], tags = [\"latest\", \"main\", \"pr-*\"])"),
        ("sandbox/x/y:1.0", "sandbox/x/y:1.0: mutable (decided by rule 1: repositories = [\"sandbox/**\"]"),
        ("sandbox:1.0", "sandbox:1.0: immutable (decided by default"),
        ("legacy/app:2.0", "legacy/app:2.0: audit (decided by rule 2"),
        ("sandbox/x:sha256-abc.sig", "sandbox/x:sha256-abc.sig: append-only (decided by rule 0"),
    ];
    for (reference, want) in cases {
        let out = tagpin(&["policy", "explain", reference, "--config", file]);
        assert_eq!(out.status.code(), Some(0), "{reference}: {}", stderr(&out));
        assert!(stdout(&out).starts_with(want), "{reference}: {}", stdout(&out));
    }
    // An --exclude comes before every rule, as for `serve`.
    let out = tagpin(&[
        "policy",
        "explain",
        "prod/api:1.4.2",
        "--config",
        file,
        "--exclude",
        "1.*",
    ]);
    assert!(
        stdout(&out).starts_with("prod/api:1.4.2: mutable (decided by exclude 0"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn without_a_config_the_built_in_rules_are_explained() {
    let out = tagpin(&["policy", "explain", "team/app:sha256-0123.att"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("team/app:sha256-0123.att: append-only (decided by default rule 0"),
        "{}",
        stdout(&out)
    );
    let out = tagpin(&["policy", "explain", "team/app:v1"]);
    assert!(
        stdout(&out).starts_with("team/app:v1: immutable (decided by default:"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn bad_configs_and_references_exit_64_with_one_line_naming_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let bad_mode = write(
        "mode.toml",
        "[[rules]]\nmode = \"immutable\"\n[[rules]]\nmode = \"frozen\"\n",
    );
    let bad_key = write("key.toml", "[[rules]]\nmode = \"audit\"\nrepository = [\"a\"]\n");
    let bad_glob = write("glob.toml", "[[rules]]\ntags = [\"v[\"]\nmode = \"audit\"\n");
    let empty = write("empty.toml", "rules = []\n");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["policy", "explain", "a:b", "--config", &bad_mode], "rules[1].mode"),
        (
            vec!["policy", "explain", "a:b", "--config", &bad_key],
            "rules[0].repository",
        ),
        (vec!["policy", "explain", "a:b", "--config", &bad_glob], "rules[0].tags"),
        (vec!["policy", "explain", "a:b", "--config", &empty], "rules:"),
        (
            vec!["policy", "explain", "a:b", "--config", "/nonexistent.toml"],
            "cannot read",
        ),
        (vec!["policy", "explain", "NotARepo:v1"], "is not REPOSITORY:TAG"),
        (vec!["policy", "explain", "repo-without-tag"], "is not REPOSITORY:TAG"),
        (
            vec!["serve", "--upstream", "http://127.0.0.1:1", "--config", &bad_mode],
            "rules[1].mode",
        ),
    ];
    for (args, want) in cases {
        let out = tagpin(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
