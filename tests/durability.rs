//! A pin tagpin answered 201 for survives the database crashing right after, whatever the
//! server's own `synchronous_commit` default: tagpin's sessions commit the claim that
//! precedes every forwarded push synchronously, so the tag stays held for the pushed
//! digest; the settlement after the upstream's answer is committed without waiting for
//! the disk, and when the crash took it back, tagpin completes it from what the upstream
//! holds once the claim is past the in-doubt horizon. Decided by killing every process of
//! a private PostgreSQL server (SIGKILL, nothing flushed) and asking the restarted
//! server, through tagpin, what is pinned.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::admin::AdminSecrets;
use common::postgres::PgServer;
use common::procs::RegistryOptions;
use common::*;

/// The postmaster's pid, from `postmaster.pid` in the data dir.
fn postmaster_pid(data: &Path) -> u32 {
    let text = std::fs::read_to_string(data.join("postmaster.pid")).expect("postmaster.pid of a running server");
    text.lines().next().unwrap().trim().parse().expect("a pid")
}

/// The pids whose parent is `parent` (a postmaster's backends and helpers).
fn children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

fn signal(sig: &str, pids: &[u32]) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(u32::to_string))
        .status()
        .unwrap();
    assert!(ok.success(), "kill -{sig} {pids:?}");
}

/// SIGKILL the server and every process it started: first all are stopped (so none acts
/// on another's death, e.g. a WAL writer flushing on its way out), then all are killed.
fn crash(server: &mut PgServer) {
    let postmaster = postmaster_pid(&server.dir().join("data"));
    let mut pids = vec![postmaster];
    pids.extend(children(postmaster));
    signal("STOP", &pids);
    signal("KILL", &pids);
    let deadline = Instant::now() + Duration::from_secs(30);
    while pids
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}/stat")).exists() && !zombie(*p))
    {
        assert!(Instant::now() < deadline, "postgres processes survived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The supervising shell has exited with the postmaster; collect it.
    server.stop();
}

fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Review item 9: With the server's default `synchronous_commit = off`, three rounds of:
/// push a new tag through tagpin (201), at once SIGKILL every process of the PostgreSQL
/// server, start it again on the same data dir, and ask tagpin (`pins show`) what the tag
/// is held to (pinned, or claimed by the push whose settlement the crash took back); a
/// push of another digest is refused; and the tag ends pinned to the pushed digest.
///
/// Old code: its sessions took the server's default, so a commit returned before its WAL
/// was written and the crash lost it: 3 rounds of 3 came back with no pin (`pins show`
/// exit 1; the push of another digest was refused only because tagpin then adopted what
/// the upstream held, with the pin's history gone). Started before its schema existed, it
/// lost the tables too.
#[test]
fn a_pin_answered_201_survives_the_database_being_killed_at_once_with_async_commit_as_default() {
    let mut server = PgServer::start();
    let url = server.create_database("durable");
    let registry = Registry::start();
    let secrets = AdminSecrets::new();
    let mut flags = secrets.flags();
    // A short horizon, so a claim whose settlement was lost is completed within the test.
    flags.extend(["--upstream-header-timeout-ms", "1000", "--in-doubt-horizon", "2s"].map(String::from));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // Started (its schema created) before the default changes, so what a crash can lose
    // is the pins, not the tables.
    let tagpin = Tagpin::start_on_database(&registry.url(), &url, &flags);
    let admin = tagpin.admin_addr();
    {
        let mut db = server.connect("postgres");
        // One statement each: ALTER SYSTEM cannot run in a multi-statement batch.
        db.batch_execute("ALTER SYSTEM SET synchronous_commit = off").unwrap();
        db.batch_execute("SELECT pg_reload_conf()").unwrap();
    }
    // A new session sees the new default (the reload is asynchronous).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now: String = server
            .connect("durable")
            .query_one("SHOW synchronous_commit", &[])
            .unwrap()
            .get(0);
        if now == "off" {
            break;
        }
        assert!(Instant::now() < deadline, "synchronous_commit stayed {now}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let repo = "durable/app";
    let base = Image::random(3900, 256);
    base.push_blobs(registry.addr, repo, "");
    let mut lost = Vec::new();
    for round in 0..3 {
        let tag = format!("r{round}");
        let img = base.variant(&tag);
        let r = img.put_manifest(tagpin.addr, repo, &tag, "");
        assert_eq!(r.status, 201, "round {round}: {}", r.text());
        crash(&mut server);
        server.start_again();

        // tagpin reconnects on its own; until it has, the CLI says the API failed (2).
        let reference = format!("{repo}:{tag}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let shown = loop {
            let out = secrets.cli(admin, &["pins", "show", &reference, "--json"]);
            if out.code != 2 {
                break out;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: {out:?}\n{}",
                tagpin.logs().join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let pin = (shown.code == 0).then(|| shown.json());
        let held = pin.as_ref().map(|p| (p["state"].clone(), p["digest"].clone()));
        let other = base.variant(&format!("{tag}-other"));
        let deadline = Instant::now() + Duration::from_secs(60);
        let refused = loop {
            let r = other.put_manifest(tagpin.addr, repo, &tag, "");
            if r.status != 503 {
                break r;
            }
            assert!(Instant::now() < deadline, "round {round}: {}", r.text());
            std::thread::sleep(Duration::from_millis(200));
        };
        let upstream = upstream_digest(&registry, repo, &tag);
        let held_for_it = held.as_ref().is_some_and(|(state, digest)| {
            (state == "pinned" || state == "claimed") && digest == &serde_json::Value::from(img.digest())
        });
        // Held, and then pinned: a lost settlement is completed past the horizon.
        let deadline = Instant::now() + Duration::from_secs(60);
        let pinned = held_for_it
            && loop {
                let out = secrets.cli(admin, &["pins", "show", &reference, "--json"]);
                if out.code == 0 && out.json()["state"] == "pinned" {
                    break out.json()["digest"] == img.digest().as_str();
                }
                if Instant::now() > deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(200));
            };
        if !pinned || refused.status != 409 || upstream.as_ref() != Some(&img.digest()) {
            lost.push(format!(
                "round {round}: {repo}:{tag} (answered 201 for {}) after the crash: pins show {}; \
                 a push of another digest {}; the upstream holds {upstream:?}",
                img.digest(),
                pin.map_or_else(|| format!("{shown:?}"), |p| p.to_string()),
                refused.status,
            ));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of 3 pins answered 201 did not survive the crash:\n{}",
        lost.len(),
        lost.join("\n")
    );
}

/// Set a server parameter with `ALTER SYSTEM`, reload, and wait until a new session sees it.
fn set_server(server: &PgServer, db: &str, name: &str, value: &str) {
    let mut c = server.connect("postgres");
    // One statement each: ALTER SYSTEM cannot run in a multi-statement batch.
    c.batch_execute(&format!("ALTER SYSTEM SET {name} = '{value}'"))
        .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now: String = server
            .connect(db)
            .query_one(&format!("SHOW {name}"), &[])
            .unwrap()
            .get(0);
        if now == value {
            return;
        }
        assert!(Instant::now() < deadline, "{name} stayed {now}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Review (one durable write per push): a signed checkpoint counts only entries a crash
/// cannot take back. Three rounds of: push a new tag through tagpin (201; its settlement,
/// with its log entry, commits without waiting for the disk), read the signed checkpoint,
/// at once SIGKILL every process of the PostgreSQL server, start it again, and wait until
/// the log is at least as long as that checkpoint (the recovery appends the completed
/// pin's entry again); the entries up to its size must hash to its root.
///
/// The server's WAL writer runs every 10 s (`wal_writer_delay`, a legal setting; the
/// default 200 ms only narrows the window), so an asynchronous commit stays in memory
/// until something flushes the WAL. The checkpoint's `log_head` commits a transaction
/// that took a txid but wrote nothing: PostgreSQL writes its commit record but does not
/// flush (xact.c, RecordTransactionCommit: only a transaction that wrote WAL before its
/// commit record waits for it), so the checkpoint counts the lost entry, and the entry
/// the recovery writes at that index later (another time) gives another root: the log
/// contradicts a checkpoint tagpin signed.
#[test]
fn no_signed_checkpoint_counts_a_log_entry_the_database_crash_took_back() {
    let mut server = PgServer::start();
    let url = server.create_database("logcrash");
    set_server(&server, "logcrash", "wal_writer_delay", "10s");
    let registry = Registry::start();
    let secrets = AdminSecrets::new();
    let keys = tempfile::tempdir().unwrap();
    let (key, verifier) = common::log_api::keygen(keys.path(), "crash.test/log");
    let mut flags = secrets.flags();
    flags.extend(["--log-signing-key".into(), key.display().to_string()]);
    flags.extend(["--upstream-header-timeout-ms", "1000", "--in-doubt-horizon", "2s"].map(String::from));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let tagpin = Tagpin::start_on_database(&registry.url(), &url, &flags);
    let api = common::log_api::LogApi::new(tagpin.admin_addr());
    let repo = "durable/log";
    let base = Image::random(3901, 256);
    base.push_blobs(registry.addr, repo, "");
    let mut contradicted = Vec::new();
    for round in 0..3 {
        let tag = format!("r{round}");
        let r = base.variant(&tag).put_manifest(tagpin.addr, repo, &tag, "");
        assert_eq!(r.status, 201, "round {round}: {}", r.text());
        let note = api.checkpoint_text();
        common::tlog::verify_note(&note, &verifier).unwrap_or_else(|e| panic!("{e}: {note}"));
        let signed = common::tlog::parse_checkpoint(&note).unwrap();
        crash(&mut server);
        server.start_again();

        // tagpin reconnects on its own; the recovery completes a lost settlement once its
        // claim is past the horizon, so the log grows back to the checkpoint's size.
        let deadline = Instant::now() + Duration::from_secs(60);
        let now = loop {
            let r = api.get("/admin/v1/log/checkpoint");
            if r.status == 200 {
                let now = common::tlog::parse_checkpoint(&r.text()).unwrap();
                if now.size >= signed.size {
                    break Some(now);
                }
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let Some(now) = now else {
            contradicted.push(format!(
                "round {round}: signed size {} and the log never grew back to it",
                signed.size
            ));
            continue;
        };
        let leaves: Vec<_> = api.entries(0, signed.size).iter().map(|e| e.hash()).collect();
        let root = common::tlog::mth(&leaves);
        if root != signed.root {
            contradicted.push(format!(
                "round {round}: the checkpoint signed before the crash (size {}, root {}) is \
                 contradicted by the log after it (size {}, root at {} is {})",
                signed.size,
                common::tlog::hex(&signed.root),
                now.size,
                signed.size,
                common::tlog::hex(&root)
            ));
        }
    }
    assert!(
        contradicted.is_empty(),
        "{} of 3 signed checkpoints were contradicted after a crash:\n{}",
        contradicted.len(),
        contradicted.join("\n")
    );
}

/// Review (one durable write per push), README "Reads": a tag pushed through tagpin (201)
/// is pulled through tagpin as the pushed bytes, whatever a writer straight to the
/// upstream puts under it later. Three rounds on the sled store of: push a new tag (201),
/// SIGKILL tagpin at once (sled writes a settlement that was not waited for within
/// 200 ms, so it is usually lost), put other bytes under the tag straight at the
/// upstream, start tagpin again, and pull the tag through it.
///
/// With the settlement lost, the tag has no pin, only the push's claim: a "write in
/// flight", so the pull is forwarded by tag and gets the other bytes; and since the
/// upstream no longer shows the claim's digest, `recover` never completes it either, so
/// the tag is never pinned to what its client was answered 201 for (an operator who then
/// clears the claim lets the first pull adopt the other bytes).
#[test]
fn a_tag_pushed_through_tagpin_is_pulled_as_pushed_after_a_crash_and_a_write_straight_to_the_upstream() {
    let registry = Registry::start();
    let data = tempfile::tempdir().unwrap();
    let secrets = AdminSecrets::new();
    let mut flags = secrets.flags();
    flags.extend(["--upstream-header-timeout-ms", "1000", "--in-doubt-horizon", "2s"].map(String::from));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let repo = "durable/reads";
    let base = Image::random(3902, 256);
    base.push_blobs(registry.addr, repo, "");
    let auth = registry.auth_header();
    let mut wrong = Vec::new();
    let mut lost = 0;
    for round in 0..3 {
        let tag = format!("r{round}");
        let pushed = base.variant(&tag);
        let mut tagpin = Tagpin::start_on_data_dir(&registry.url(), data.path(), &flags);
        let r = pushed.put_manifest(tagpin.addr, repo, &tag, "");
        assert_eq!(r.status, 201, "round {round}: {}", r.text());
        tagpin.kill();
        let behind = base.variant(&format!("{tag} behind tagpin's back"));
        common::reads::put_straight(&registry, repo, &tag, &behind);
        let tagpin = Tagpin::start_on_data_dir(&registry.url(), data.path(), &flags);
        let reference = format!("{repo}:{tag}");
        let state = secrets.pin(tagpin.admin_addr(), &reference).map(|p| p["state"].clone());
        if state.as_ref().and_then(|s| s.as_str()) != Some("pinned") {
            lost += 1;
        }
        let r = common::reads::read(tagpin.addr, "GET", repo, &tag, &auth);
        let served = common::reads::served(&r, &format!("round {round}: the pull"));
        if served != pushed.digest() {
            wrong.push(format!(
                "round {round}: {reference} answered 201 for {}, pulled through tagpin as {served} \
                 (the bytes put straight at the upstream); state after the restart {state:?}",
                pushed.digest()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of 3 tags pushed through tagpin were pulled as other bytes ({lost} settlements lost):\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// Review (one durable write per push): `recover` completes a settlement a crash took
/// back only by asking the upstream with tagpin's own credentials, which default to none.
/// On an upstream that wants credentials it cannot, and says so; the tag stays held for
/// the pushed digest all the same (README, "The in-flight rule"). Three rounds on the sled
/// store of: push a new tag with the client's credentials (201), SIGKILL tagpin at once,
/// start it again; then the tag is pinned, or it is claimed for the pushed digest, a pull
/// by tag with the client's credentials is served the pushed digest, a push of another
/// digest is refused, and the recovery has said it could not check the claim.
#[test]
fn without_credentials_of_its_own_tagpin_keeps_a_tag_whose_settlement_a_crash_took_back_held_as_pushed() {
    let (user, pass) = ("ci", "pw-recover-1");
    let registry = Registry::start_with(RegistryOptions {
        basic_auth: Some((user.into(), pass.into())),
        ..Default::default()
    });
    let auth = registry.auth_header();
    let data = tempfile::tempdir().unwrap();
    let secrets = AdminSecrets::new();
    let mut flags = secrets.flags();
    flags.extend(["--upstream-header-timeout-ms", "1000", "--in-doubt-horizon", "2s"].map(String::from));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let repo = "durable/authed";
    let base = Image::random(3903, 256);
    base.push_blobs(registry.addr, repo, &auth);
    let mut never = Vec::new();
    for round in 0..3 {
        let tag = format!("r{round}");
        let pushed = base.variant(&tag);
        let mut tagpin = Tagpin::start_on_data_dir(&registry.url(), data.path(), &flags);
        let r = pushed.put_manifest(tagpin.addr, repo, &tag, &auth);
        assert_eq!(r.status, 201, "round {round}: {}", r.text());
        tagpin.kill();
        let tagpin = Tagpin::start_on_data_dir(&registry.url(), data.path(), &flags);
        let reference = format!("{repo}:{tag}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let (state, failed_rounds) = loop {
            let state = secrets.pin(tagpin.admin_addr(), &reference).map(|p| p["state"].clone());
            let failed_rounds = tagpin
                .logs()
                .iter()
                .filter(|l| {
                    l.contains("\"level\":\"WARN\"")
                        && l.contains("whose settlement was lost")
                        && !l.contains("pin store opening")
                })
                .count();
            if state.as_ref().and_then(|s| s.as_str()) == Some("pinned") || failed_rounds >= 2 {
                break (state, failed_rounds);
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: {reference} {state:?}\n{}",
                tagpin.logs().join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        if state.as_ref().and_then(|s| s.as_str()) != Some("pinned") {
            let shown = secrets.pin(tagpin.admin_addr(), &reference).expect("the tag is held");
            let pulled = request(
                tagpin.addr,
                "GET",
                &format!("/v2/{repo}/manifests/{tag}"),
                &[("Authorization", auth.as_str()), ("Accept", common::image::ACCEPT_ALL)],
                b"",
            );
            let other = base
                .variant(&format!("{tag}-other"))
                .put_manifest(tagpin.addr, repo, &tag, &auth);
            let held = shown["state"] == "claimed" && shown["digest"] == pushed.digest().as_str();
            let served = pulled.header("docker-content-digest") == Some(pushed.digest().as_str());
            if !(held && served && other.status == 409 && failed_rounds >= 1) {
                never.push(format!(
                    "round {round}: {reference} (answered 201 for {}): {shown}; pulled as {:?} ({}); another digest {}",
                    pushed.digest(),
                    pulled.header("docker-content-digest"),
                    pulled.status,
                    other.status
                ));
            }
        }
    }
    assert!(
        never.is_empty(),
        "{} of 3 tags answered 201 were neither pinned again nor held as pushed:\n{}",
        never.len(),
        never.join("\n")
    );
}
