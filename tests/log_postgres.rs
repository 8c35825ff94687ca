//! The verifiable log on PostgreSQL: replicas sharing one database keep one log in one
//! total order, every binding recorded once; tampering with the database by hand (a pin,
//! an entry, a truncated log, another signing key, no key) is found by `tagpin log
//! verify`; a store written by the previous version gets its genesis entries once; a
//! replica killed mid-push leaves no pin without its entry. Every root, proof and
//! signature tagpin serves is recomputed by a second, independent implementation
//! (`tlog`), never by tagpin's own code.

mod common;
#[path = "log_postgres/support.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::http::try_request;
use common::postgres::shared;
use common::reads::{put_straight, read, served};
use common::signing::{push_signature_blobs, put, signature_manifest, signature_tag, to_bytes, Signature};
use common::tlog;
use common::*;
use serde_json::{json, Value};
use support::*;

#[test]
fn three_replicas_pushing_at_once_keep_one_log_with_every_binding_once_and_proofs_that_check() {
    const ROUNDS: usize = 5;
    const RACERS: usize = 6;
    let site = Site::new("logrepl");
    let key = Key::new("log.example.test");
    let mode = std::fs::metadata(&key.path).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    assert_eq!(mode.unwrap() & 0o777, 0o600, "the signing key's file mode");
    let text = std::fs::read_to_string(&key.path).unwrap();
    assert!(
        text.starts_with("PRIVATE+KEY+log.example.test+"),
        "the key file: {text:?}"
    );
    let replicas: Vec<Tagpin> = (0..3).map(|_| site.replica(Some(&key))).collect();
    let addrs: Vec<SocketAddr> = replicas.iter().map(|t| t.addr).collect();
    let admins: Vec<SocketAddr> = replicas.iter().map(Tagpin::admin_addr).collect();

    // Each round: half the racers push a tag of their own, the other half race for one
    // shared tag; spread over the replicas.
    let mut bound = 0;
    for round in 0..ROUNDS {
        let answers = race(2 * RACERS, |i| {
            let (tag, note) = match i % 2 {
                0 => (format!("d{round}-{i}"), format!("d{round}-{i}")),
                _ => (format!("s{round}"), format!("s{round}-{i}")),
            };
            site.push(addrs[(i + round) % 3], &tag, &note).0
        });
        for (i, s) in answers.iter().enumerate() {
            let expected: &[u16] = if i % 2 == 0 { &[201] } else { &[201, 409] };
            assert!(expected.contains(s), "round {round} racer {i}: {answers:?}");
        }
        let shared_wins = answers.iter().skip(1).step_by(2).filter(|s| **s == 201).count();
        assert_eq!(shared_wins, 1, "round {round}: {answers:?}");
        bound += answers.iter().filter(|s| **s == 201).count();
    }
    // Adoptions: on read (second replica), on push (third), by a seed (first).
    for tag in ["old", "prior", "seeded"] {
        put_straight(&site.registry, REPO, tag, &site.base.variant(tag));
    }
    let old = site.base.variant("old").digest();
    assert_eq!(served(&read(addrs[1], "GET", REPO, "old", ""), "first pull"), old);
    assert_eq!(site.push(addrs[2], "prior", "not the prior").0, 409, "adopted on push");
    site.secrets.cli(admins[0], &["seed", "--repository", REPO]).ok();
    // An append-only tag pinned by its first push (second replica), grown by the third.
    let signed = upstream_digest(&site.registry, REPO, "d0-0").unwrap();
    let sigs = [Signature::new(&signed, 0), Signature::new(&signed, 1)];
    for (n, replica) in [(1, 1), (2, 2)] {
        let layers: Vec<Value> = sigs[..n].iter().map(Signature::layer).collect();
        let (config, manifest) = signature_manifest(&layers);
        push_signature_blobs(site.registry.addr, REPO, &config, &[&sigs[n - 1]]);
        let r = put(addrs[replica], REPO, &signature_tag(&signed), &to_bytes(&manifest));
        assert_eq!(r.status, 201, "signature manifest {n}: {}", r.text());
    }
    // A release used, asked of the third replica, used through the first.
    site.secrets
        .cli(admins[2], &["release", &format!("{REPO}:d0-0"), "--reason", "rebuild"])
        .ok();
    let (status, released) = site.push(addrs[0], "d0-0", "released");
    assert_eq!(status, 201, "the released push");
    // Bound: the winning pushes, the first signature, three adoptions, the append, the release.
    let expected = bound as u64 + 6;

    let note = agreed_checkpoint(&admins, expected);
    let body = tlog::verify_note(&note, &key.vkey).unwrap_or_else(|e| panic!("{e}: {note}"));
    assert_eq!(
        body.lines().next(),
        Some("log.example.test"),
        "the origin defaults to the key's name"
    );
    let (size, root) = size_and_root(&note);
    let log = entries(admins[1], size);
    assert_eq!(log.len() as u64, size);
    for (i, (line, leaf)) in log.iter().enumerate() {
        check_entry(i, line, leaf);
    }
    let leaves: Vec<[u8; 32]> = log.iter().map(|(_, l)| tlog::leaf_hash(l)).collect();
    assert_eq!(tlog::mth(&leaves), root, "the independent root over every leaf");

    let events: Vec<(String, String)> = log
        .iter()
        .map(|(e, _)| {
            (
                e["event"].as_str().unwrap().to_owned(),
                e["source"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let count = |ev: &str, src: &str| events.iter().filter(|(e, s)| e == ev && s == src).count();
    let counts = [
        count("push", ""),
        count("adopted", "read"),
        count("adopted", "push"),
        count("adopted", "seed"),
        count("append", ""),
        count("released", ""),
    ];
    assert_eq!(counts, [bound + 1, 1, 1, 1, 1, 1], "{events:?}");
    let released_entry = &log.iter().find(|(e, _)| e["event"] == "released").unwrap().0;
    assert_eq!(released_entry["digest"], released.as_str());
    let seeded = &log.iter().find(|(e, _)| e["source"] == "seed").unwrap().0;
    // The admin token's name for a seed and a release (the token file says `alice`).
    assert_eq!(
        (&seeded["by"], &released_entry["by"]),
        (&Value::from("alice"), &Value::from("alice"))
    );
    assert!(
        log.iter().all(|(e, _)| e["by"].is_string()),
        "every entry names who bound the tag"
    );

    // Replaying the log gives every pin, and what the upstream holds under each tag.
    let replayed = replay(&log);
    assert_eq!(replayed, pins_in(&mut site.sql()), "the replayed log and the pins");
    for ((repo, tag), digest) in &replayed {
        assert_eq!(
            upstream_digest(&site.registry, repo, tag).as_ref(),
            Some(digest),
            "{repo}:{tag}"
        );
    }

    // Proofs from every replica agree with the independent ones.
    let n = size as usize;
    for (k, (index, at)) in [(0, n), (n / 2, n), (n - 1, n), (3, n / 2 + 1), (0, 1)]
        .into_iter()
        .enumerate()
    {
        let served = proof(admins[k % 3], &format!("inclusion?index={index}&size={at}"));
        assert_eq!(served, tlog::path(index, &leaves[..at]), "inclusion of {index} at {at}");
    }
    for (k, (from, to)) in [(1, n), (n / 3, n), (n - 1, n), (n, n), (7, n / 2 + 3)]
        .into_iter()
        .enumerate()
    {
        let served = proof(admins[k % 3], &format!("consistency?from={from}&to={to}"));
        assert_eq!(served, tlog::proof(from, &leaves[..to]), "consistency {from} -> {to}");
    }
    for bad in [
        format!("inclusion?index={n}&size={n}"),
        format!("inclusion?index=0&size={}", n + 1),
        format!("consistency?from=0&to={n}"),
        format!("consistency?from=1&to={}", n + 1),
        "consistency?from=two&to=3".to_owned(),
    ] {
        let r = admin_get(admins[0], &format!("/admin/v1/log/proof/{bad}"));
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(!r.oci_code().is_empty(), "{bad}: an OCI envelope: {}", r.text());
    }

    // The CLI agrees: the checkpoint verbatim, a tag's proof, and the whole log verified.
    assert_eq!(site.secrets.cli(admins[0], &["log", "checkpoint"]).ok().stdout, note);
    site.secrets
        .cli(admins[2], &["log", "prove", &format!("{REPO}:d0-0")])
        .ok();
    let saved = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(saved.path(), &note).unwrap();
    let cp = saved.path().to_str().unwrap();
    let (code, v) = site.verify(admins[2], &["--verifier-key", &key.vkey, "--checkpoint", cp]);
    assert_eq!(
        (code, &v["ok"], &v["signature"]),
        (0, &Value::Bool(true), &Value::from("verified")),
        "{v}"
    );
    assert_eq!(v["size"], size, "{v}");
    let (code, v) = site.verify_offline(&["--checkpoint", cp]);
    assert_eq!((code, &v["ok"]), (0, &Value::Bool(true)), "offline: {v}");
}

#[test]
fn a_pin_changed_in_postgres_by_hand_is_named_with_both_digests_and_its_entry() {
    let (site, key, replica) = signed_site("logpin", 4);
    let admin = replica.admin_addr();
    let (_, saved) = save_checkpoint(admin);
    let log = entries(admin, 4);
    let entry = log.iter().find(|(e, _)| e["tag"] == "t2").unwrap().0["index"]
        .as_u64()
        .unwrap();
    let logged = site.base.variant("t2").digest();
    let forged = site.base.variant("forged").digest();
    let mut db = site.sql();
    db.batch_execute(&format!(
        "SET tagpin.log = 'on'; UPDATE pins SET digest = '{forged}' WHERE repository = '{REPO}' AND tag = 't2'"
    ))
    .unwrap();

    let args = ["--verifier-key", key.vkey.as_str(), "--checkpoint", path_str(&saved)];
    for (how, p) in [
        ("admin API", problem(site.verify(admin, &args), "admin API")),
        ("offline", problem(site.verify_offline(&args[2..]), "offline")),
    ] {
        for part in [
            format!("{REPO}:t2"),
            forged.clone(),
            logged.clone(),
            format!("entry {entry}"),
        ] {
            assert!(p.contains(&part), "{how}: {part} missing from {p:?}");
        }
    }
    let plain = site.secrets.cli(admin, &["log", "verify", "--verifier-key", &key.vkey]);
    assert_eq!(plain.code, 1, "{plain:?}");
    assert!(
        format!("{}{}", plain.stdout, plain.stderr).contains(&forged),
        "{plain:?}"
    );
}

#[test]
fn a_log_entry_changed_in_postgres_by_hand_no_longer_matches_a_saved_checkpoint() {
    let (site, key, replica) = signed_site("logleaf", 5);
    let admin = replica.admin_addr();
    let (note, saved) = save_checkpoint(admin);
    // The time of entry 2 set back a millennium: the pins and the replay still agree, only
    // the leaf bytes differ from what the checkpoint committed to.
    site.sql()
        .batch_execute(
            "SET tagpin.log = 'on';
             UPDATE log_entries SET leaf = convert_to(regexp_replace(convert_from(leaf, 'UTF8'),
               '\"time\":\"2', '\"time\":\"1'), 'UTF8') WHERE idx = 2",
        )
        .unwrap();
    let log = entries(admin, 5);
    assert!(
        std::str::from_utf8(&log[2].1).unwrap().contains("\"time\":\"1"),
        "the forged leaf is served"
    );
    let leaves: Vec<[u8; 32]> = log.iter().map(|(_, l)| tlog::leaf_hash(l)).collect();
    assert_ne!(
        tlog::mth(&leaves),
        size_and_root(&note).1,
        "the forged leaves do not give the root"
    );

    let args = ["--verifier-key", key.vkey.as_str(), "--checkpoint", path_str(&saved)];
    let p = problem(site.verify(admin, &args), "admin API");
    assert!(p.contains("root"), "admin API: {p:?}");
    let p = problem(site.verify_offline(&args[2..]), "offline");
    assert!(p.contains("root") || p.contains("prefix"), "offline: {p:?}");
}

#[test]
fn a_log_signed_with_another_key_or_served_unsigned_fails_the_verifier_key() {
    let (site, key, mut replica) = signed_site("logkey", 3);
    let (_, saved) = save_checkpoint(replica.admin_addr());
    let args = ["--verifier-key", key.vkey.as_str(), "--checkpoint", path_str(&saved)];
    assert_eq!(site.verify(replica.admin_addr(), &args).0, 0, "before the key changed");
    // Another key under the same name: an attacker's, signing what the database says.
    let other = Key::new("log.example.test");
    assert_ne!(other.vkey, key.vkey);
    replica.kill();
    let replica = site.replica(Some(&other));
    let admin = replica.admin_addr();
    let note = checkpoint(admin);
    assert!(
        tlog::verify_note(&note, &other.vkey).is_ok(),
        "signed by the new key: {note}"
    );
    assert!(
        tlog::verify_note(&note, &key.vkey).is_err(),
        "not by the old one: {note}"
    );
    let (code, v) = site.verify(admin, &args);
    let p = problem((code, v.clone()), "another key");
    assert_eq!(v["signature"], "bad", "{v}");
    // `name+hash`: the verifier key without its base64 (which may hold a `+` itself).
    let named: String = key.vkey.splitn(3, '+').take(2).collect::<Vec<_>>().join("+");
    assert!(p.contains("not signed by") && p.contains(&named), "another key: {p:?}");

    // The same log served with no key at all.
    drop(replica);
    let replica = site.replica(None);
    let admin = replica.admin_addr();
    let note = checkpoint(admin);
    assert!(
        !note.contains('\u{2014}'),
        "an unsigned checkpoint carries no signature line: {note:?}"
    );
    let (code, v) = site.verify(admin, &args);
    let p = problem((code, v.clone()), "unsigned");
    assert_eq!(v["signature"], "unsigned", "{v}");
    assert!(p.contains("not signed"), "unsigned: {p:?}");
    // Without a verifier key the log itself checks out, and says what it did not check.
    let (code, v) = site.verify(admin, &["--checkpoint", path_str(&saved)]);
    assert_eq!(
        (code, &v["ok"], &v["signature"]),
        (0, &Value::Bool(true), &Value::from("unchecked")),
        "{v}"
    );
}

#[test]
fn entries_deleted_from_the_end_fail_consistency_with_a_saved_checkpoint() {
    let (site, key, replica) = signed_site("logcut", 6);
    let admin = replica.admin_addr();
    let (_, saved) = save_checkpoint(admin);
    let leaves: Vec<[u8; 32]> = entries(admin, 6).iter().map(|(_, l)| tlog::leaf_hash(l)).collect();
    let args = ["--verifier-key", key.vkey.as_str(), "--checkpoint", path_str(&saved)];
    // A careless attacker cuts the last two entries and the pins they bound, so the
    // replay agrees; the log's head still counts them.
    site.sql()
        .batch_execute(&format!(
            "SET tagpin.log = 'on';
             DELETE FROM log_entries WHERE idx >= 4;
             DELETE FROM pins WHERE repository = '{REPO}' AND tag IN ('t4', 't5')"
        ))
        .unwrap();
    for (how, p) in [
        ("admin API", problem(site.verify(admin, &args), "admin API")),
        ("offline", problem(site.verify_offline(&args[2..]), "offline")),
    ] {
        assert!(p.contains("size is 6") && p.contains("entry 4"), "{how}: {p:?}");
    }
    // A careful one also cuts the subtrees those entries completed and sets the head back
    // to 4: tagpin itself then signs the shorter log, and only the saved checkpoint tells.
    let mut db = site.sql();
    let mut tx = db.transaction().unwrap();
    tx.batch_execute(
        "SET LOCAL tagpin.log = 'on';
         DELETE FROM log_nodes WHERE (idx + 1) * (1::bigint << level) > 4",
    )
    .unwrap();
    let head = [&4u64.to_be_bytes()[..], &tlog::mth(&leaves[..4])].concat();
    tx.execute("UPDATE log_head SET size = 4, frontier = $1", &[&head])
        .unwrap();
    tx.commit().unwrap();
    let note = checkpoint(admin);
    assert_eq!(size_and_root(&note), (4, tlog::mth(&leaves[..4])), "{note}");
    assert!(
        tlog::verify_note(&note, &key.vkey).is_ok(),
        "signed by the real key: {note}"
    );
    let (code, v) = site.verify(admin, &args[..2]);
    assert_eq!(
        (code, &v["ok"]),
        (0, &Value::Bool(true)),
        "without the saved checkpoint: {v}"
    );
    for (how, p) in [
        ("admin API", problem(site.verify(admin, &args), "admin API")),
        ("offline", problem(site.verify_offline(&args[2..]), "offline")),
    ] {
        assert!(
            p.contains("4 entries") && p.contains("6"),
            "{how}: the sizes are named: {p:?}"
        );
    }
}

#[test]
fn a_database_restored_from_an_older_backup_and_grown_again_is_no_extension_of_a_saved_checkpoint() {
    let (site, key, mut replica) = signed_site("logbackup", 4);
    // Yesterday's backup: a copy of the database at 4 entries.
    replica.kill();
    let backup = format!("{}_old", site.db);
    let deadline = Instant::now() + Duration::from_secs(10);
    // The killed replica's sessions end a moment after it; until then the copy is refused.
    while let Err(e) = shared()
        .connect("postgres")
        .batch_execute(&format!("CREATE DATABASE {backup} TEMPLATE {}", site.db))
    {
        assert!(Instant::now() < deadline, "copy of the database: {e}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let replica = site.replica(Some(&key));
    for tag in ["t4", "t5"] {
        assert_eq!(site.push(replica.addr, tag, tag).0, 201);
    }
    let (note, saved) = save_checkpoint(replica.admin_addr());
    assert_eq!(size_and_root(&note).0, 6);
    drop(replica);
    // The backup restored, and the log grown past the saved size with other bindings, all
    // signed by the real key: only the saved checkpoint tells.
    let restored = site.replica_on(&shared().url(&backup), Some(&key));
    for tag in ["u4", "u5", "u6"] {
        assert_eq!(site.push(restored.addr, tag, tag).0, 201);
    }
    let admin = restored.admin_addr();
    let now = checkpoint(admin);
    assert!(tlog::verify_note(&now, &key.vkey).is_ok(), "{now}");
    assert_eq!(size_and_root(&now).0, 7);
    let args = ["--verifier-key", key.vkey.as_str(), "--checkpoint", path_str(&saved)];
    let p = problem(site.verify(admin, &args), "the restored database");
    assert!(p.contains("prefix") && p.contains('6'), "{p:?}");
    // Without the saved checkpoint the rewritten log is, by itself, consistent.
    let (code, v) = site.verify(admin, &["--verifier-key", &key.vkey]);
    assert_eq!((code, &v["ok"]), (0, &Value::Bool(true)), "{v}");
}

#[test]
fn a_database_written_before_the_log_gets_one_genesis_entry_per_pin_once() {
    let site = Site::new("loggenesis");
    let mut db = site.sql();
    let d = |n: &str| site.base.variant(n).digest();
    // Pins as the previous version wrote them: a push, an adoption, an append-only advance.
    let pins = [
        (
            "team/app",
            "1.0",
            "push",
            json!([{"at": 1_700_000_000, "event": "push", "digest": d("a"), "request_id": "r-1"}]),
        ),
        (
            "team/app",
            "2.0",
            "adopted",
            json!([{"at": 1_700_000_100, "event": "adopted", "digest": d("b"), "reason": "first pull (GET)"}]),
        ),
        (
            "team/sig",
            "sha256-x",
            "push",
            json!([
                {"at": 1_700_000_200, "event": "push", "digest": d("c1"), "request_id": "r-2"},
                {"at": 1_700_000_300, "event": "append", "digest": d("c2"), "from": d("c1"), "request_id": "r-3"}
            ]),
        ),
    ];
    let expected = schema_4_with_pins(&mut db, &pins);

    // Two replicas of the new version start at once on the old database.
    let mut replicas = race(2, |_| site.replica(None));
    let log = entries(replicas[0].admin_addr(), 3);
    assert_eq!(
        size_and_root(&checkpoint(replicas[1].admin_addr())).0,
        3,
        "one entry per pin"
    );
    assert!(log
        .iter()
        .all(|(e, _)| e["event"] == "genesis" && e["previous"].is_null() && e["by"].is_null()));
    assert_eq!(replay(&log), expected);
    for (i, (line, leaf)) in log.iter().enumerate() {
        check_entry(i, line, leaf);
    }
    // Every history entry from before the log points at its tag's genesis entry.
    for (e, _) in &log {
        let reference = format!("{}:{}", e["repository"].as_str().unwrap(), e["tag"].as_str().unwrap());
        let pin = site.secrets.pin(replicas[0].admin_addr(), &reference).expect("the pin");
        let history = pin["history"].as_array().unwrap();
        assert!(history.iter().all(|h| h["log"] == e["index"]), "{reference}: {pin}");
    }
    // A restart adds nothing; the upgraded log verifies.
    replicas[1].kill();
    replicas[1] = site.replica(None);
    let admin = replicas[1].admin_addr();
    assert_eq!(
        size_and_root(&checkpoint(admin)).0,
        3,
        "still one entry per pin after a restart"
    );
    let versions: Vec<i32> = db
        .query("SELECT version FROM tagpin_schema ORDER BY version", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6]);
    let (code, v) = site.verify(admin, &[]);
    assert_eq!((code, &v["ok"]), (0, &Value::Bool(true)), "{v}");
    assert_eq!(site.verify_offline(&[]).0, 0);
    let leaves: Vec<[u8; 32]> = log.iter().map(|(_, l)| tlog::leaf_hash(l)).collect();
    assert_eq!(tlog::mth(&leaves), size_and_root(&checkpoint(admin)).1);
}

#[test]
fn a_replica_killed_during_a_stream_of_pushes_leaves_every_pin_with_its_entry() {
    const PUSHERS: usize = 3;
    const KILLS: usize = 2;
    let site = Site::new("logkill");
    let key = Key::new("log.example.test");
    let survivor = site.replica(Some(&key));
    let mut victim = site.replica(Some(&key));
    assert_eq!(site.push(victim.addr, "warm", "warm").0, 201);
    let (_, before) = save_checkpoint(survivor.admin_addr());
    let acked: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
    let cut_off = AtomicUsize::new(0);
    // The first pusher goes through the survivor, which appends to the same log meanwhile;
    // the others through the victim. Kills until some push was cut off (bounded).
    let mut kill = 0;
    while kill < KILLS || cut_off.load(Ordering::SeqCst) == 0 {
        assert!(kill < 2 * KILLS, "{kill} kills cut no push off: too little exercised");
        let (stop, site) = (AtomicBool::new(false), &site);
        let addrs = [survivor.addr, victim.addr];
        std::thread::scope(|s| {
            for p in 0..PUSHERS {
                let (acked, stop, cut_off, addr) = (&acked, &stop, &cut_off, addrs[usize::from(p > 0)]);
                s.spawn(move || {
                    for i in 0..200 {
                        let tag = format!("k{kill}-p{p}-{i}");
                        let img = site.base.variant(&tag);
                        let target = format!("/v2/{REPO}/manifests/{tag}");
                        let headers = [("Content-Type", image::OCI_MANIFEST)];
                        match try_request(addr, "PUT", &target, &headers, &img.manifest) {
                            Ok(r) if r.status == 201 => acked.lock().unwrap().push((tag, img.digest())),
                            Ok(r) => panic!("{tag}: {} {}", r.status, r.text()),
                            // The kill cuts the victim's pushes off, and ends its pusher.
                            Err(e) => {
                                assert!(p > 0 && stop.load(Ordering::SeqCst), "{tag}: {e}");
                                cut_off.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                        }
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                    }
                });
            }
            // Kill once a few pushes landed, while the pushers keep going.
            let deadline = Instant::now() + Duration::from_secs(20);
            while acked.lock().unwrap().len() < 8 * (kill + 1) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            stop.store(true, Ordering::SeqCst);
            victim.kill();
        });
        victim = site.replica(Some(&key));
        kill += 1;
    }
    let acked = acked.into_inner().unwrap();
    eprintln!(
        "{kill} kills cut {} pushes off; {} pushes acknowledged",
        cut_off.load(Ordering::SeqCst),
        acked.len()
    );
    assert!(
        acked.len() >= 8 * KILLS,
        "too few pushes landed to vouch for anything: {}",
        acked.len()
    );

    let admin = victim.admin_addr();
    let args = ["--verifier-key", key.vkey.as_str(), "--checkpoint", path_str(&before)];
    let (code, v) = site.verify(admin, &args);
    assert_eq!((code, &v["ok"]), (0, &Value::Bool(true)), "{v}");
    assert_eq!(site.verify_offline(&args[2..]).0, 0, "offline");
    let note = agreed_checkpoint(&[admin, survivor.admin_addr()], size_and_root(&checkpoint(admin)).0);
    let (size, root) = size_and_root(&note);
    let log = entries(admin, size);
    let leaves: Vec<[u8; 32]> = log.iter().map(|(_, l)| tlog::leaf_hash(l)).collect();
    assert_eq!(tlog::mth(&leaves), root);
    let replayed = replay(&log);
    assert_eq!(
        replayed,
        pins_in(&mut site.sql()),
        "every pin has its entry, every entry its pin"
    );
    for (tag, digest) in &acked {
        assert_eq!(
            replayed.get(&(REPO.to_owned(), tag.clone())),
            Some(digest),
            "acknowledged {tag}"
        );
    }
}
