//! The verifiable log on the sled store, end to end: every binding a mixed workload makes
//! is one entry, and every root, proof and checkpoint tagpin serves is recomputed by the
//! independent verifier of `tests/common/tlog.rs` (RFC 6962 hashing, C2SP signed notes,
//! Ed25519 through another crate than tagpin's); a data dir restored from an older copy
//! and grown differently, and an unsigned or foreign checkpoint, make `tagpin log verify`
//! exit 1; a SIGKILL during pushes loses no entry of a pin; a store of the previous record
//! format gets one `genesis` entry per pin, once.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::image::{random_bytes, sha256, OCI_MANIFEST};
use common::log_api::{check_pins_show, keygen, replay, tagpin_cli, Entry};
use common::log_stack::{copy_dir, said, write_format_3, LogStack, KEY_NAME};
use common::reads::{put_straight, read, served};
use common::tlog::{self, NoteVerifier};
use common::*;

/// The independent verifier against published vectors (RFC 6962's test leaves and Go's
/// `sumdb/note` example), before it is trusted to judge tagpin.
mod verifier {
    use super::common::tlog::vectors;

    #[test]
    fn rfc_6962_roots_of_the_published_test_leaves() {
        vectors::the_tree_hash_of_the_rfc_6962_vectors_matches_every_published_root();
    }

    #[test]
    fn rfc_6962_audit_paths_of_the_published_test_leaves() {
        vectors::audit_paths_match_the_published_ones_and_fold_into_the_root();
    }

    #[test]
    fn rfc_6962_consistency_proofs_of_the_published_test_leaves() {
        vectors::consistency_proofs_match_the_published_ones();
    }

    #[test]
    fn go_sumdb_note_signature_verifies_and_fails_on_a_changed_text() {
        vectors::the_go_note_vector_verifies_and_a_changed_text_does_not();
    }

    #[test]
    fn signed_and_unsigned_checkpoints_parse() {
        vectors::checkpoints_signed_and_unsigned_are_parsed_into_text_and_signatures();
    }
}

/// Who an entry names in `by`.
#[derive(Debug)]
enum By {
    /// The client request of the audit event with this action.
    Request(&'static str),
    /// The admin token's name.
    Admin,
}

/// An entry the workload must have appended.
#[derive(Debug)]
struct Want {
    repo: &'static str,
    tag: String,
    event: &'static str,
    source: Option<&'static str>,
    digest: String,
    previous: Option<String>,
    by: By,
}

fn want(repo: &'static str, tag: &str, event: &'static str, digest: String, by: By) -> Want {
    Want {
        repo,
        tag: tag.to_owned(),
        event,
        source: None,
        digest,
        previous: None,
        by,
    }
}

impl Want {
    fn source(mut self, s: &'static str) -> Self {
        self.source = Some(s);
        self
    }

    fn previous(mut self, d: String) -> Self {
        self.previous = Some(d);
        self
    }

    fn check(&self, env: &LogStack, e: &Entry) {
        let what = format!("entry {} ({}:{} {})", e.index, self.repo, self.tag, self.event);
        assert_eq!(e.str("repository"), Some(self.repo), "{what}: {}", e.fields);
        assert_eq!(e.str("tag"), Some(self.tag.as_str()), "{what}: {}", e.fields);
        assert_eq!(e.str("event"), Some(self.event), "{what}: {}", e.fields);
        assert_eq!(e.str("source"), self.source, "{what}: {}", e.fields);
        assert_eq!(e.str("digest"), Some(self.digest.as_str()), "{what}: {}", e.fields);
        assert_eq!(e.str("previous"), self.previous.as_deref(), "{what}: {}", e.fields);
        assert!(e.fields.get("previous").is_some(), "{what}: previous is always present");
        let by = match self.by {
            By::Request(action) => env.request_id(action, self.repo, &self.tag),
            By::Admin => "alice".to_owned(),
        };
        assert_eq!(e.str("by"), Some(by.as_str()), "{what}: {}", e.fields);
    }
}

/// An image manifest over `config` and `layers` (all with one annotation), so a longer
/// list of the same layers is an append.
fn manifest(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let layers: Vec<String> = layers
        .iter()
        .map(|l| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}"#,
                sha256(l),
                l.len()
            )
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{}],"annotations":{{"test.note":"signatures"}}}}"#,
        sha256(config),
        config.len(),
        layers.join(",")
    )
    .into_bytes()
}

/// Rules of the mixed workload: signature tags append-only, `audited` in audit mode, the
/// rest immutable.
const RULES: &str = r#"
[[rules]]
tags = ["sha256-*", "sha512-*"]
mode = "append-only"

[[rules]]
repositories = ["audited"]
mode = "audit"
"#;

#[test]
fn a_mixed_workload_is_one_entry_per_binding_and_every_root_proof_and_signature_checks() {
    let mut env = LogStack::new();
    let rules = env.file("tagpin.toml", RULES);
    let key = env.key.clone();
    env.start(Some(&key), &["--config", &rules, "--log-checkpoint-interval", "1s"]);
    let mut wants = Vec::new();

    // New tags pushed through tagpin.
    let a = Image::random(7_100, 300);
    let b = Image::random(7_101, 300);
    env.pushed("team/app", "1.0", &a);
    wants.push(want("team/app", "1.0", "push", a.digest(), By::Request("pin_created")));
    env.pushed("team/app", "2.0", &b);
    wants.push(want("team/app", "2.0", "push", b.digest(), By::Request("pin_created")));

    // Adoption on push: the upstream holds 3.0 already; another digest pushed through
    // tagpin is refused, and what the upstream held is the pin.
    let c = Image::random(7_102, 300);
    c.push_blobs(env.registry.addr, "team/app", "");
    put_straight(&env.registry, "team/app", "3.0", &c);
    let r = env.push("team/app", "3.0", &c.variant("other"));
    assert_eq!(r.status, 409, "{}", r.text());
    wants.push(want("team/app", "3.0", "adopted", c.digest(), By::Request("pin_adopted")).source("push"));

    // Adoption on read: the first pull of a tag the upstream holds.
    let e = Image::random(7_103, 300);
    e.push_blobs(env.registry.addr, "legacy/app", "");
    put_straight(&env.registry, "legacy/app", "1.0", &e);
    let pulled = served(&read(env.tagpin().addr, "GET", "legacy/app", "1.0", ""), "first pull");
    assert_eq!(pulled, e.digest());
    wants.push(
        want(
            "legacy/app",
            "1.0",
            "adopted",
            e.digest(),
            By::Request("pin_adopted_on_read"),
        )
        .source("read"),
    );
    let early = env.api().checkpoint_text();
    let early_file = env.file("early.checkpoint", &early);

    // An append-only tag grows.
    let sig_tag = format!("sha256-{}.sig", "ab".repeat(32));
    let base = Image::random(7_104, 300);
    let extra = random_bytes(7_105, 300);
    let one = Image {
        manifest: manifest(&base.config, &[&base.layer]),
        ..base.clone()
    };
    let two = Image {
        manifest: manifest(&base.config, &[&base.layer, &extra]),
        ..base.clone()
    };
    common::image::push_blob(env.tagpin().addr, "team/app", &extra, "");
    env.pushed("team/app", &sig_tag, &one);
    wants.push(want(
        "team/app",
        &sig_tag,
        "push",
        one.digest(),
        By::Request("pin_created"),
    ));
    env.pushed("team/app", &sig_tag, &two);
    wants.push(
        want(
            "team/app",
            &sig_tag,
            "append",
            two.digest(),
            By::Request("pin_advanced"),
        )
        .previous(one.digest()),
    );

    // An audited tag moves.
    let x = Image::random(7_106, 300);
    let y = x.variant("moved");
    env.pushed("audited", "1", &x);
    wants.push(want("audited", "1", "push", x.digest(), By::Request("pin_created")));
    env.pushed("audited", "1", &y);
    wants.push(want("audited", "1", "audit_move", y.digest(), By::Request("push_audited")).previous(x.digest()));

    // A release used.
    env.cli(&["release", "team/app:1.0", "--reason", "rebuild"]).ok();
    let fixed = a.variant("fixed");
    env.pushed("team/app", "1.0", &fixed);
    wants.push(want("team/app", "1.0", "released", fixed.digest(), By::Admin).previous(a.digest()));

    // An import of another store's export.
    let export = env.export_of_another_store("imported/app");
    let export_file = env.file("export.jsonl", &export.text);
    env.cli(&["import", &export_file]).ok();
    for (tag, digest) in &export.pins {
        wants.push(want("imported/app", tag, "imported", digest.clone(), By::Admin));
    }

    // A seed of tags the upstream holds.
    let seeded: Vec<(&str, Image)> = vec![("1.0", Image::random(7_110, 300)), ("2.0", Image::random(7_111, 300))];
    for (tag, img) in &seeded {
        img.push_blobs(env.registry.addr, "seeded/app", "");
        put_straight(&env.registry, "seeded/app", tag, img);
    }
    let seed = env.cli(&["seed", "--json"]).ok();
    let done: Value = serde_json::from_str(seed.stdout.lines().last().unwrap_or("")).unwrap();
    let counts = done.get("done").unwrap_or(&done);
    assert_eq!(counts["adopted"], 2, "{}", seed.stdout);
    let seed_start = wants.len();
    for (tag, img) in &seeded {
        wants.push(want("seeded/app", tag, "adopted", img.digest(), By::Admin).source("seed"));
    }

    // Every entry, root and proof against the independent verifier.
    let api = env.api();
    let (cp, mut entries) = api.check_all();
    assert_eq!(
        entries.len(),
        wants.len(),
        "entries: {:#?}",
        entries.iter().map(|e| &e.fields).collect::<Vec<_>>()
    );
    // The seed's two adoptions in whatever order it walked the tags.
    entries[seed_start..].sort_by_key(|e| e.reference());
    for (w, e) in wants.iter().zip(&entries) {
        w.check(&env, e);
    }
    assert_eq!(replay(&entries), api.pinned(), "the entries replayed are not the pins");

    // The checkpoint is a signed note by the keygen'd key, with the key's name as origin.
    let verifier = NoteVerifier::parse(&env.verifier).unwrap();
    assert_eq!(cp.origin, KEY_NAME);
    assert!(
        verifier.verifies(&cp.text, &cp.signatures),
        "the checkpoint's signature does not verify: {:?}",
        api.checkpoint_text()
    );
    // The checkpoints shipped as audit events are signed prefixes of the same tree.
    let shipped = env.tagpin().wait_for_audit(|e| e["action"] == "log_checkpoint");
    let note = tlog::parse_checkpoint(shipped["checkpoint"].as_str().unwrap_or("")).unwrap();
    assert!(verifier.verifies(&note.text, &note.signatures), "{shipped}");
    let entries = entries_by_index(&entries);
    let leaves: Vec<tlog::Hash> = entries.iter().map(Entry::hash).collect();
    assert!(note.size >= 1 && note.size <= cp.size, "{shipped}");
    assert_eq!(note.root, tlog::mth(&leaves[..note.size as usize]), "{shipped}");
    check_pins_show(&env.secrets, env.admin(), &entries);

    let printed = env.cli(&["log", "checkpoint"]).ok();
    assert_eq!(
        printed.stdout,
        api.checkpoint_text(),
        "`tagpin log checkpoint` is the served note"
    );
    // `log verify` against the checkpoint saved early, with the verifier key.
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "log",
            "verify",
            "--checkpoint",
            &early_file,
            "--verifier-key",
            &env.verifier,
        ];
        args.extend_from_slice(extra);
        env.cli(&args)
    };
    let out = verify(&[]);
    assert_eq!(out.code, 0, "{out:?}");
    let json = verify(&["--json"]).ok().json();
    assert_eq!(json["ok"], true, "{json}");
    assert_eq!(json["signature"], "verified", "{json}");
    assert_eq!(json["size"].as_u64(), Some(cp.size), "{json}");
    let proved = env.cli(&["log", "prove", "team/app:1.0"]);
    assert_eq!(proved.code, 0, "{proved:?}");
}

/// The entries back in index order (the comparison sorted the seed's).
fn entries_by_index(entries: &[Entry]) -> Vec<Entry> {
    let mut v = entries.to_vec();
    v.sort_by_key(|e| e.index);
    v
}

#[test]
fn a_data_dir_restored_from_an_older_copy_and_grown_differently_fails_verification() {
    let mut env = LogStack::new();
    env.start_signed();
    for (i, tag) in ["t1", "t2", "t3"].iter().enumerate() {
        env.pushed("tamper/app", tag, &Image::random(7_200 + i as u64, 200));
    }
    env.stop();
    let older = env.data.path().join("older");
    copy_dir(&env.dir(), &older);

    env.start_signed();
    for (i, tag) in ["t4", "t5"].iter().enumerate() {
        env.pushed("tamper/app", tag, &Image::random(7_210 + i as u64, 200));
    }
    let saved = env.api().checkpoint_text();
    assert_eq!(tlog::parse_checkpoint(&saved).unwrap().size, 5);
    let saved = env.file("saved.checkpoint", &saved);
    let key = env.verifier.clone();
    let fine = env.cli(&["log", "verify", "--checkpoint", &saved, "--verifier-key", &key]);
    assert_eq!(fine.code, 0, "before the restore: {fine:?}");
    env.stop();

    // The older copy comes back: three entries, fewer than the saved checkpoint's five.
    std::fs::remove_dir_all(env.dir()).unwrap();
    copy_dir(&older, &env.dir());
    env.start_signed();
    let short = env.cli(&["log", "verify", "--checkpoint", &saved, "--verifier-key", &key]);
    assert_eq!(short.code, 1, "{short:?}");
    assert!(said(&short).contains("fewer than the checkpoint's 5"), "{short:?}");

    // Grown differently past the saved size: the saved tree is no prefix of it.
    for (i, tag) in ["u4", "u5", "u6"].iter().enumerate() {
        env.pushed("tamper/app", tag, &Image::random(7_220 + i as u64, 200));
    }
    assert_eq!(env.api().checkpoint().size, 6);
    let forked = env.cli(&["log", "verify", "--checkpoint", &saved, "--verifier-key", &key]);
    assert_eq!(forked.code, 1, "{forked:?}");
    assert!(
        said(&forked).contains("the checkpoint at size 5 is not a prefix of the log now"),
        "{forked:?}"
    );
    let json = env
        .cli(&[
            "log",
            "verify",
            "--checkpoint",
            &saved,
            "--verifier-key",
            &key,
            "--json",
        ])
        .json();
    assert_eq!(json["ok"], false, "{json}");
    assert!(
        json["problem"].as_str().unwrap_or("").contains("not a prefix"),
        "{json}"
    );
    // The grown log is consistent in itself: only the saved checkpoint exposes it.
    env.api().check_all();
    env.stop();

    let dir = env.dir().display().to_string();
    let offline = tagpin_cli(&["log", "verify", "--data-dir", &dir, "--checkpoint", &saved]);
    assert_eq!(offline.code, 1, "{offline:?}");
    assert!(said(&offline).contains("not a prefix"), "{offline:?}");
}

#[test]
fn an_unsigned_checkpoint_or_one_signed_by_another_key_fails_verification_with_a_verifier_key() {
    let mut env = LogStack::new();
    env.start(None, &[]);
    env.pushed("plain/app", "1", &Image::random(7_300, 200));
    let text = env.api().checkpoint_text();
    let cp = tlog::parse_checkpoint(&text).unwrap();
    assert!(cp.signatures.is_empty() && !text.contains("\n\n"), "unsigned: {text:?}");
    assert_eq!((cp.origin.as_str(), cp.size), ("tagpin", 1), "{text:?}");

    let key = env.verifier.clone();
    let out = env.cli(&["log", "verify", "--verifier-key", &key]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(said(&out).contains("not signed"), "{out:?}");
    let json = env.cli(&["log", "verify", "--verifier-key", &key, "--json"]).json();
    assert_eq!(
        (&json["ok"], &json["signature"]),
        (&Value::from(false), &Value::from("unsigned")),
        "{json}"
    );
    // Without a verifier key the log itself still checks, and the answer says the
    // signature was not.
    let json = env.cli(&["log", "verify", "--json"]).ok().json();
    assert_eq!(json["ok"], true, "{json}");
    assert_ne!(json["signature"], "verified", "{json}");
    env.stop();

    // Signed by this key now; another key's verifier refuses it.
    env.start_signed();
    let (_, stranger) = keygen(env.files.path(), "stranger.test/log");
    let out = env.cli(&["log", "verify", "--verifier-key", &stranger]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(said(&out).contains("not signed by stranger.test/log"), "{out:?}");
    let ok = env.cli(&["log", "verify", "--verifier-key", &key]);
    assert_eq!(ok.code, 0, "{ok:?}");
}

#[test]
fn a_sigkill_during_concurrent_pushes_leaves_every_pin_with_its_entry() {
    const WRITERS: usize = 3;
    const ENOUGH: usize = 12;
    let mut env = LogStack::new();
    env.start_signed();
    let base = Image::random(7_400, 200);
    base.push_blobs(env.tagpin().addr, "crash/app", "");

    let addr = env.tagpin().addr;
    let stop = Arc::new(AtomicBool::new(false));
    let created = Arc::new(AtomicUsize::new(0));
    let pinned: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (stop, created, pinned, base) = (stop.clone(), created.clone(), pinned.clone(), base.clone());
            std::thread::spawn(move || {
                for i in 0..100 {
                    if stop.load(Ordering::SeqCst) {
                        return false;
                    }
                    let tag = format!("w{w}-{i}");
                    let img = base.variant(&tag);
                    let target = format!("/v2/crash/app/manifests/{tag}");
                    let headers = [("Content-Type", OCI_MANIFEST)];
                    match try_request(addr, "PUT", &target, &headers, &img.manifest) {
                        Ok(r) if r.status == 201 => {
                            pinned.lock().unwrap().push((tag, img.digest()));
                            created.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(r) => panic!("push {tag}: {} {}", r.status, r.text()),
                        // The kill cut it off.
                        Err(_) => return true,
                    }
                }
                false
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while created.load(Ordering::SeqCst) < ENOUGH && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    env.tagpin.as_mut().unwrap().kill();
    stop.store(true, Ordering::SeqCst);
    let cut = writers
        .into_iter()
        .map(|w| w.join().expect("a writer panicked"))
        .filter(|cut| *cut)
        .count();
    let pinned = pinned.lock().unwrap().clone();
    assert!(
        pinned.len() >= ENOUGH,
        "only {} pushes got 201 before the kill",
        pinned.len()
    );
    env.tagpin = None;

    env.start_signed();
    let api = env.api();
    let (cp, entries) = api.check_all();
    let replayed = replay(&entries);
    let pins = api.pinned();
    assert_eq!(replayed, pins, "after the kill, the entries replayed are not the pins");
    // A 201 survives as the pin, or (its settlement, written after the answer, undone by
    // the kill) as its claim, which holds the tag for that digest: another is refused.
    let addr = env.tagpin().addr;
    for (tag, digest) in &pinned {
        match pins.get(&format!("crash/app:{tag}")) {
            Some(d) => assert_eq!(d, digest, "{tag} got 201"),
            None => {
                let other = base.variant(&format!("{tag}-other"));
                let target = format!("/v2/crash/app/manifests/{tag}");
                let r = request(addr, "PUT", &target, &[("Content-Type", OCI_MANIFEST)], &other.manifest);
                assert_eq!(
                    r.status,
                    409,
                    "{tag} got 201 for {digest} and is not held: {}",
                    r.text()
                );
            }
        }
    }
    // Each 201 kept as a pin has its entry (one kept by its claim gets it when recovered).
    let kept = |(t, _): &&(String, String)| pins.contains_key(&format!("crash/app:{t}"));
    assert!(cp.size as usize >= pinned.iter().filter(kept).count(), "{}", cp.size);
    eprintln!(
        "{} pushes answered 201 before the kill, {cut} cut off by it; after the restart the log has {} entries \
         and {} pins",
        pinned.len(),
        cp.size,
        pins.len()
    );
    let key = env.verifier.clone();
    let out = env.cli(&["log", "verify", "--verifier-key", &key]);
    assert_eq!(out.code, 0, "{out:?}");
    let saved = env.file("after-crash.checkpoint", &api.checkpoint_text());
    env.stop();
    let dir = env.dir().display().to_string();
    let offline = tagpin_cli(&["log", "verify", "--data-dir", &dir, "--checkpoint", &saved]);
    assert_eq!(offline.code, 0, "{offline:?}");
}

#[test]
fn a_store_of_the_previous_format_gets_one_genesis_entry_per_pin_once() {
    let mut env = LogStack::new();
    let d: Vec<String> = (0..4).map(|i| Image::random(7_500 + i, 100).digest()).collect();
    let at = |event: &str, digest: &str| serde_json::json!({"at": 1_700_000_000u64, "event": event, "digest": digest});
    let mut released = at("released", &d[3]);
    released["from"] = d[2].clone().into();
    released["by"] = "alice".into();
    released["reason"] = "rebuild".into();
    // Written out of key order on purpose: genesis follows the keys.
    write_format_3(
        &env.dir(),
        &[
            ("old/db:7", &d[3], "push", &[at("push", &d[2]), released]),
            ("old/app:2.0", &d[1], "adopted", &[at("adopted", &d[1])]),
            ("old/app:1.0", &d[0], "push", &[at("push", &d[0])]),
        ],
    );
    let want = [("old/app:1.0", &d[0]), ("old/app:2.0", &d[1]), ("old/db:7", &d[3])];

    env.start_signed();
    let (first, entries) = env.api().check_all();
    assert_eq!(
        entries.len(),
        want.len(),
        "{:#?}",
        entries.iter().map(|e| &e.fields).collect::<Vec<_>>()
    );
    for (e, (reference, digest)) in entries.iter().zip(want) {
        assert_eq!(e.reference(), reference, "{}", e.fields);
        assert_eq!(e.str("event"), Some("genesis"), "{}", e.fields);
        assert_eq!(e.str("digest"), Some(digest.as_str()), "{}", e.fields);
        assert!(
            e.fields["previous"].is_null() && e.fields["by"].is_null(),
            "{}",
            e.fields
        );
    }
    // Every history entry from before the log points at its tag's genesis entry.
    check_pins_show(&env.secrets, env.admin(), &entries);
    let key = env.verifier.clone();
    assert_eq!(env.cli(&["log", "verify", "--verifier-key", &key]).code, 0);
    env.stop();

    // Genesis happens once: a restart appends nothing, a push appends after it.
    env.start_signed();
    let again = env.api().checkpoint();
    assert_eq!((again.size, again.root), (first.size, first.root));
    env.pushed("old/app", "3.0", &Image::random(7_510, 100));
    let (_, entries) = env.api().check_all();
    assert_eq!(entries.len(), 4);
    assert_eq!(
        (entries[3].reference(), entries[3].str("event")),
        ("old/app:3.0".to_owned(), Some("push"))
    );
    let out = env.cli(&["log", "verify", "--verifier-key", &key]);
    assert_eq!(out.code, 0, "{out:?}");
}
