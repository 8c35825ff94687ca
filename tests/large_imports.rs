//! `tagpin import` at sizes that matter, on the store `TAGPIN_TEST_STORE` names (sled by
//! default, PostgreSQL in the suite's second pass): a file larger than the memory the
//! process may take still imports (it is streamed, never held whole); a conflict in the
//! very last line writes nothing; pins with long histories stay within the same memory;
//! a tagpin killed while importing finishes the import when it starts again (sled) or
//! has imported nothing (PostgreSQL), as the README says. Online races: import_online.rs.

mod common;

use common::import::*;
use common::procs::store_url;
use common::*;
use serde_json::json;

/// Pins in the file of the memory test, and the address space the import may take: the
/// streaming import fits with room to spare; reading the file whole and writing it in one
/// transaction does not (shown with `TAGPIN_TEST_BIN=/work/old-bin/tagpin`, which aborts
/// for want of memory at 10,000 pins under this limit, at about 430 MiB peak for 30,000).
const MANY: usize = 10_000;
const LIMIT: u64 = 256 << 20;

#[test]
fn an_import_larger_than_the_memory_allowed_streams_through() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "many.jsonl", &records("many/app", MANY, "many"));
    let size = std::fs::metadata(&file).unwrap().len();
    let data = dir.path().join("data");
    let store = offline_store(&data);
    let out = run(&with(&["import", &file], &store), Some(LIMIT));
    println!(
        "import of {size} bytes under a {LIMIT}-byte address space: exit {}\n{}{}",
        out.code, out.stdout, out.stderr
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        format!("imported {MANY} pins; 0 already held unchanged")
    );
    let export = run(&with(&["export"], &store), None);
    assert_eq!(export.code, 0, "{export:?}");
    assert_eq!(export.stdout.lines().count(), MANY);
}

#[test]
fn a_conflict_in_the_last_line_writes_nothing() {
    let mut a = Admin::start();
    let held = Image::random(7101, 500);
    held.push_blobs(a.stack.tagpin.addr, "team/app", "");
    assert_eq!(
        held.put_manifest(a.stack.tagpin.addr, "team/app", "held", "").status,
        201
    );
    let dir = tempfile::tempdir().unwrap();
    // More records than one batch of either store, then the one that conflicts.
    let new = records("team/app", 2_500, "new");
    let held_elsewhere = record("team/app", "held", &digest("other", 0));
    let twice = record("team/app", "t000000", &digest("other", 1));
    let files = [
        ("held.jsonl", held_elsewhere, "team/app:held is held to"),
        (
            "twice.jsonl",
            twice,
            "team/app:t000000 appears twice with different digests",
        ),
    ];
    let (pins, size) = (a.pinned(), a.log_size());
    assert_eq!(pins.len(), 1);
    for (name, last, says) in &files {
        let mut lines = new.clone();
        lines.push(last.clone());
        let file = write_file(dir.path(), name, &lines);
        let out = a.cli(&["import", &file]);
        println!("online, {name}: exit {}\n{}", out.code, out.stderr);
        assert_eq!(out.code, 1, "{out:?}");
        assert!(
            out.stderr.contains("1 conflicting record(s), nothing written"),
            "{out:?}"
        );
        assert!(out.stderr.contains(says), "{out:?}");
        assert_eq!(a.pinned(), pins, "{name}: a pin was written");
        assert_eq!(a.log_size(), size, "{name}: the log grew");
    }
    // The same offline, once tagpin has stopped.
    a.stack.tagpin.terminate();
    let store = offline_store(a.stack.data.path());
    for (name, _, says) in &files {
        let file = dir.path().join(name).display().to_string();
        let out = run(&with(&["import", &file], &store), None);
        println!("offline, {name}: exit {}\n{}", out.code, out.stderr);
        assert_eq!(out.code, 1, "{out:?}");
        assert!(out.stderr.contains(says), "{out:?}");
    }
    let export = run(&with(&["export"], &store), None);
    assert_eq!(export.stdout.lines().count(), 1, "{export:?}");
    a.restart();
    assert_eq!(a.pinned(), pins);
    assert_eq!(a.log_size(), size, "the log grew");
}

#[test]
fn a_tagpin_killed_while_importing_finishes_the_import_or_has_imported_nothing() {
    let mut a = Admin::start();
    let url = store_url(a.stack.data.path());
    let before = a.log_size();
    let dir = tempfile::tempdir().unwrap();
    // Kill tagpin once part of the import is written (sled: its first batch of 2,000 is
    // in the log; PostgreSQL: its transaction has inserted pins), before all of it is. A
    // machine fast enough to finish first gets a file four times larger.
    let mut n = 3_000;
    let mut attempt = 0;
    let (n, file) = loop {
        attempt += 1;
        let lines = records(&format!("kill/app{attempt}"), n, "kill");
        let file = write_file(dir.path(), &format!("kill{attempt}.jsonl"), &lines);
        let import = import_online(&a.secrets, a.stack.tagpin.admin_addr(), &file);
        let caught = wait_for(&a, url.as_deref(), Phase::Writing, before, &import);
        if caught && (url.is_some() || a.log_size() < before + n as u64) {
            a.stack.tagpin.kill();
            let out = import.join().unwrap();
            println!("import of {n} cut by SIGKILL: exit {}\n{}", out.code, out.stderr);
            assert_eq!(out.code, 2, "{out:?}");
            break (n, file);
        }
        let out = import.join().unwrap();
        assert_eq!(out.code, 0, "{out:?}");
        assert!(attempt < 3, "the import always finished before it could be killed");
        n *= 4;
        a.stack.tagpin.kill();
        a = Admin::start();
    };
    a.restart();
    let repo = format!("kill/app{attempt}");
    match url {
        None => {
            // sled: the next start finished the import before serving.
            assert!(
                a.stack
                    .tagpin
                    .logs()
                    .iter()
                    .any(|l| l.contains("finished an import that was interrupted")),
                "{}",
                a.stack.tagpin.logs().join("\n")
            );
            let size = a.log_size();
            assert_eq!(size, before + n as u64, "one log entry per imported pin");
            let entries = logged(&a, before, size);
            assert!(entries.iter().all(|(_, event)| event == "imported"), "{entries:?}");
            let tags: std::collections::BTreeSet<&String> = entries.iter().map(|(r, _)| r).collect();
            assert_eq!(tags.len(), n, "a tag logged twice");
            for i in [0, n / 2, n - 1] {
                assert_eq!(held_to(&a, &format!("{repo}:t{i:06}")), Some(digest("kill", i)));
            }
        }
        Some(_) => {
            // PostgreSQL: the import's transaction died with its session.
            assert_eq!(a.log_size(), before, "part of an import was committed");
            assert_eq!(held_to(&a, &format!("{repo}:t000000")), None);
            let out = a.cli(&["import", &file]);
            assert_eq!(out.code, 0, "{out:?}");
            assert_eq!(a.log_size(), before + n as u64);
        }
    }
}

/// Memory stays bounded by the import's own batches, counted in history entries as well
/// as records: pins with long histories (600 entries, about 90 KB a line, far below the
/// 16 MiB a line may take) would fill a batch of records with a hundred MiB and more.
/// (Before the batches were weighed, 2,500 such pins ran out of memory under [`LIMIT`];
/// 1,000 keep sled's own memory, which grows with the values written, well inside it.)
#[test]
fn an_import_of_pins_with_long_histories_stays_within_the_memory_allowed() {
    const PINS: usize = 1_000;
    const EVENTS: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.jsonl");
    {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for i in 0..PINS {
            let d = digest("long", i);
            let history: Vec<serde_json::Value> = (0..EVENTS)
                .map(|n| json!({"at": 1_700_000_000 + n, "event": "push", "digest": d, "request_id": format!("req-{i}-{n}")}))
                .collect();
            let line = json!({
                "repository": "long/app",
                "tag": format!("t{i:06}"),
                "digest": d,
                "source": "push",
                "pinned_at": 1_700_000_000,
                "history": history,
            });
            writeln!(out, "{line}").unwrap();
        }
    }
    let size = std::fs::metadata(&path).unwrap().len();
    let store = offline_store(&dir.path().join("data"));
    let out = run(&with(&["import", &path.display().to_string()], &store), Some(LIMIT));
    println!(
        "import of {size} bytes ({PINS} pins of {EVENTS} events) under a {LIMIT}-byte address space: exit {}\n{}{}",
        out.code, out.stdout, out.stderr
    );
    if let Ok(files) = std::fs::read_dir(dir.path().join("data")) {
        let names: Vec<_> = files.flatten().map(|e| e.file_name()).collect();
        println!("the data dir after it: {names:?}");
    }
    if out.code != 0 {
        // Whether the store opens again under the same limit (sled finishes an import
        // whose journal was written before it does anything else).
        let again = run(&with(&["export"], &store), Some(LIMIT));
        println!(
            "export under the same limit after it: exit {}, {} lines\n{}",
            again.code,
            again.stdout.lines().count(),
            again.stderr.lines().take(3).collect::<Vec<_>>().join("\n")
        );
    }
    assert_eq!(out.code, 0, "{out:?}");
}
