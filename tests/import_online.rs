//! Online imports (`tagpin import` through the admin API) against a running tagpin, on
//! the store `TAGPIN_TEST_STORE` names: pushes racing the import bind each tag once;
//! pushes of other tags settling meanwhile are pinned (sled) or answered 503 with the
//! tag reserved (PostgreSQL, whose import holds the log's head); a body cut short by a
//! shutdown, by a client going away, or over `max_import_bytes` writes nothing.

mod common;

use std::time::{Duration, Instant};

use common::admin::AdminSecrets;
use common::import::*;
use common::procs::store_url;
use common::*;

/// An online import of 3,000 other tags and then `repo:r0`…`r9`, and pushes of other
/// digests to those ten tags through tagpin, sent 25 ms apart once the import reached
/// `phase`. Checks that each tag ends bound once (the upstream holds what tagpin holds
/// it to), that a push that got 201 means the import wrote nothing, and an import that
/// succeeded means no push landed; returns the import's exit status.
fn race(a: &Admin, repo: &str, phase: Phase) -> i32 {
    const TAGS: usize = 10;
    let (addr, admin) = (a.stack.tagpin.addr, a.stack.tagpin.admin_addr());
    let url = store_url(a.stack.data.path());
    let images: Vec<Image> = (0..TAGS)
        .map(|i| Image::random(7200 + i as u64, 300).variant(repo))
        .collect();
    for img in &images {
        img.push_blobs(addr, repo, "");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut lines = records(&format!("{repo}-filler"), 3_000, repo);
    lines.extend((0..TAGS).map(|i| record(repo, &format!("r{i}"), &digest(repo, i))));
    let file = write_file(dir.path(), "race.jsonl", &lines);
    let log_before = a.log_size();
    let import = import_online(&a.secrets, admin, &file);
    let in_time = wait_for(a, url.as_deref(), phase, log_before, &import);
    let pushes: Vec<_> = images
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, img)| {
            let repo = repo.to_owned();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(25 * i as u64));
                let r = img.put_manifest(addr, &repo, &format!("r{i}"), "");
                (r.status, r.text())
            })
        })
        .collect();
    let answers: Vec<(u16, String)> = pushes.into_iter().map(|p| p.join().unwrap()).collect();
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    // A push that waited for the import's write too long is told so (sled).
    for (status, text) in &answers {
        if *status == 503 && url.is_none() {
            assert!(
                text.contains("an import into tagpin's pin store is being written"),
                "{text}"
            );
        }
    }
    let out = import.join().unwrap();
    println!(
        "{repo}, pushes once {phase:?} ({}): import exit {}, {}{}pushes {statuses:?}",
        if in_time { "in time" } else { "the import had ended" },
        out.code,
        out.stdout,
        out.stderr
    );
    assert!(matches!(out.code, 0 | 1), "{out:?}");
    for (i, img) in images.iter().enumerate() {
        let reference = format!("{repo}:r{i}");
        let upstream = upstream_digest(&a.stack.registry, repo, &format!("r{i}"));
        let held = held_to(a, &reference);
        let (imported, pushed) = (digest(repo, i), img.digest());
        // Whatever the upstream holds is what tagpin holds the tag to.
        if let Some(up) = &upstream {
            assert_eq!(held.as_ref(), Some(up), "{reference}: the upstream and tagpin disagree");
        }
        if statuses[i] == 201 {
            assert_eq!(upstream.as_deref(), Some(pushed.as_str()), "{reference}");
            assert_eq!(out.code, 1, "{reference}: pushed, and the import says it wrote too");
        } else {
            assert_ne!(
                upstream.as_deref(),
                Some(pushed.as_str()),
                "{reference}: refused, yet at the upstream"
            );
        }
        match out.code {
            0 => assert_eq!(held.as_deref(), Some(imported.as_str()), "{reference}"),
            _ => assert_ne!(
                held.as_deref(),
                Some(imported.as_str()),
                "{reference}: written by a conflicting import"
            ),
        }
    }
    match out.code {
        0 => assert_eq!(
            out.stdout.trim(),
            format!("imported {} pins; 0 already held unchanged", 3_000 + TAGS)
        ),
        _ => {
            assert!(out.stderr.contains("nothing written"), "{out:?}");
            assert_eq!(
                held_to(a, &format!("{repo}-filler:t000000")),
                None,
                "a conflicting import wrote"
            );
        }
    }
    if phase == Phase::Writing && in_time {
        // Once the import writes, no write can come between its check and its write.
        assert_eq!(
            out.code, 0,
            "pushes that came after the import began writing made it conflict"
        );
    }
    out.code
}

#[test]
fn an_online_import_racing_pushes_binds_each_tag_once() {
    let a = Admin::start();
    // Pushes while the import checks: they may land first (the import then finds them
    // and writes nothing), or wait for its write and be refused.
    race(&a, "race/checking", Phase::Checking);
    // Pushes while it writes: they wait for it, and are refused.
    race(&a, "race/writing", Phase::Writing);
}

/// An import request to the admin API at `admin` sending `lines` whole records of `repo`
/// under a `Content-Length` of twice as much: the rest never comes.
fn half_sent_import(admin: std::net::SocketAddr, repo: &str, lines: usize) -> std::net::TcpStream {
    use std::io::Write;
    let body: String = records(repo, lines, repo).iter().map(|l| format!("{l}\n")).collect();
    let mut conn = std::net::TcpStream::connect(admin).unwrap();
    write!(
        conn,
        "POST /admin/v1/import HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
        common::admin::TOKEN,
        2 * body.len()
    )
    .unwrap();
    conn.write_all(body.as_bytes()).unwrap();
    conn
}

/// Review (streaming import): an online import whose body is still arriving when tagpin
/// is asked to stop, and whose client is still connected when the grace period ends,
/// must write nothing: the body it read is cut short. (Seen on sled: the request's task
/// is dropped with the runtime, so the channel feeding the body to the import closes,
/// which the import reads as the body's end; it then writes the lines it received, and
/// the runtime waits for that blocking write before the process exits.)
#[test]
fn an_online_import_cut_short_by_a_shutdown_writes_nothing() {
    const SENT: usize = 400;
    let secrets = AdminSecrets::new();
    let mut flags = secrets.flags();
    flags.extend(["--shutdown-grace-ms".to_owned(), "300".to_owned()]);
    let stack = Stack::start(&flags.iter().map(String::as_str).collect::<Vec<_>>());
    let mut a = Admin { stack, secrets };
    let before = a.log_size();
    let admin = a.stack.tagpin.admin_addr();
    let conn = half_sent_import(admin, "cut/app", SENT);
    // Stop tagpin once it has read every byte sent (its request is then being served).
    let client = conn.local_addr().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while unread_by_server(admin, client) != Some(0) {
        assert!(Instant::now() < deadline, "tagpin never read the body");
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = a.stack.tagpin.terminate();
    println!("tagpin stopped mid-import: {status}");
    drop(conn);
    a.restart();
    let pinned: Vec<String> = a.pinned().into_keys().filter(|r| r.starts_with("cut/app:")).collect();
    println!("pins of the cut import after the restart: {}", pinned.len());
    assert_eq!(
        pinned.len(),
        0,
        "an import whose body was cut short by a shutdown wrote {} of the {SENT} lines it received",
        pinned.len()
    );
    assert_eq!(a.log_size(), before, "the log grew");
}

/// Review (streaming import): pushes of other tags whose claims were made before an
/// online import began (forwarded, held at a relay on their way to the upstream), and
/// which the upstream applies while the import writes. Nothing conflicts: each push must
/// be answered 201 and pinned, and the import must succeed. (Seen: on sled, a push's
/// settlement, which does not wait for the import, makes the import's batch find the
/// log grown; the import is answered with an error though the store then writes it
/// whole when it reopens. On PostgreSQL, the settlement waits for the log's head, which
/// the import holds to its commit, and is refused once `lock_timeout` passes: the
/// upstream holds the push, its client got an error.)
#[test]
fn pushes_of_other_tags_settling_while_an_import_writes_are_pinned_and_the_import_succeeds() {
    const PUSHES: usize = 16;
    let registry = Registry::start();
    let relay = hold::HoldRelay::start(registry.addr);
    let data = tempfile::tempdir().unwrap();
    let secrets = AdminSecrets::new();
    let flags = secrets.flags();
    let tagpin = Tagpin::start(
        &relay.url(),
        data.path(),
        &flags.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let a = Admin {
        stack: Stack { registry, tagpin, data },
        secrets,
    };
    let (addr, admin) = (a.stack.tagpin.addr, a.stack.tagpin.admin_addr());
    let url = store_url(a.stack.data.path());
    let pins = 20_000;
    // sled: the settlement must land in a batch's preparation; a few rounds, each with
    // pushes of their own, stopping at the first that goes wrong.
    let rounds = if url.is_some() { 1 } else { 3 };
    for round in 0..rounds {
        let repo = format!("held/app{round}");
        let repo = repo.as_str();
        let other = format!("other{round}/app");
        let images: Vec<Image> = (0..PUSHES)
            .map(|i| Image::random(7300 + 100 * round as u64 + i as u64, 300))
            .collect();
        for (i, img) in images.iter().enumerate() {
            img.push_blobs(a.stack.registry.addr, repo, "");
            relay.hold("PUT", &format!("/v2/{repo}/manifests/p{i}"), 1);
        }
        let pushes: Vec<_> = images
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, img)| {
                let repo = repo.to_owned();
                std::thread::spawn(move || img.put_manifest(addr, &repo, &format!("p{i}"), "").status)
            })
            .collect();
        relay.wait_held(PUSHES * (round + 1));
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(dir.path(), "other.jsonl", &records(&other, pins, "other"));
        let log_before = a.log_size();
        let started = Instant::now();
        let import = import_online(&a.secrets, admin, &file);
        let in_time = wait_for(&a, url.as_deref(), Phase::Writing, log_before, &import);
        assert!(in_time, "the import ended before it was seen writing");
        // The upstream gets the pushes, 10 ms apart, while the import writes.
        let requests = relay.requests();
        for i in 0..PUSHES {
            relay.release(PUSHES * round + i);
            std::thread::sleep(Duration::from_millis(10));
        }
        let statuses: Vec<u16> = pushes.into_iter().map(|p| p.join().unwrap()).collect();
        let out = import.join().unwrap();
        println!(
            "round {round}: import of {pins} in {:?}: exit {}\n{}{}pushes {statuses:?}",
            started.elapsed(),
            out.code,
            out.stdout,
            out.stderr
        );
        println!(
            "after the import: {other}:t000000 held to {:?}, log grew by {}",
            held_to(&a, &format!("{other}:t000000")),
            a.log_size() - log_before
        );
        for (i, img) in images.iter().enumerate() {
            let tag = format!("p{i}");
            assert_eq!(
                upstream_digest(&a.stack.registry, repo, &tag).as_deref(),
                Some(img.digest().as_str()),
                "{repo}:{tag}: the upstream did not apply the push ({requests:?})"
            );
        }
        assert_eq!(out.code, 0, "an import that conflicts with nothing failed: {out:?}");
        if url.is_none() {
            assert!(
                statuses.iter().all(|s| *s == 201),
                "pushes the upstream applied, of tags the import does not name, were answered {statuses:?}"
            );
        }
        // PostgreSQL: the import holds the log's head until it commits, and a settlement
        // appends to the log, so one that waits longer than `lock_timeout` is answered
        // 503 (README, "Backup and restore"). The tag stays reserved for the pushed
        // digest, and repeating the push once the import is done pins it.
        for (i, img) in images.iter().enumerate() {
            let tag = format!("p{i}");
            assert!(matches!(statuses[i], 201 | 503), "{repo}:{tag}: {}", statuses[i]);
            assert_eq!(
                held_to(&a, &format!("{repo}:{tag}")).as_deref(),
                Some(img.digest().as_str()),
                "{repo}:{tag}: not held to the digest the upstream applied"
            );
            if statuses[i] == 503 {
                assert_eq!(
                    img.put_manifest(addr, repo, &tag, "").status,
                    201,
                    "{repo}:{tag}: repeated"
                );
            }
        }
    }
}

/// Review (streaming import): an online import whose client goes away after whole lines,
/// before the length it declared, writes nothing (the body's end is an error, not the
/// end of the import), and tagpin goes on serving.
#[test]
fn an_online_import_whose_client_goes_away_after_whole_lines_writes_nothing() {
    use std::io::Read;
    const SENT: usize = 400;
    let a = Admin::start();
    let before = a.log_size();
    let admin = a.stack.tagpin.admin_addr();
    let mut conn = half_sent_import(admin, "gone/app", SENT);
    // Half-close: tagpin sees the body end early, and can still answer.
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    println!("answer to the cut body: {}", answer.lines().next().unwrap_or("(none)"));
    let pinned = a.pinned().into_keys().filter(|r| r.starts_with("gone/app:")).count();
    assert_eq!(pinned, 0, "a body cut after {SENT} whole lines wrote {pinned} pins");
    assert_eq!(a.log_size(), before, "the log grew");
}

/// Review (streaming import): a chunked body (no length declared) of whole lines that
/// passes `max_import_bytes` is refused and writes nothing, though every line before the
/// limit is a good record.
#[test]
fn a_chunked_online_import_over_max_import_bytes_writes_nothing() {
    use std::io::{Read, Write};
    const LIMIT_BYTES: usize = 1 << 20;
    let secrets = AdminSecrets::new();
    let mut flags = secrets.flags();
    flags.extend(["--max-import-bytes".to_owned(), LIMIT_BYTES.to_string()]);
    let stack = Stack::start(&flags.iter().map(String::as_str).collect::<Vec<_>>());
    let a = Admin { stack, secrets };
    let before = a.log_size();
    let admin = a.stack.tagpin.admin_addr();
    let mut conn = std::net::TcpStream::connect(admin).unwrap();
    write!(
        conn,
        "POST /admin/v1/import HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        common::admin::TOKEN,
    )
    .unwrap();
    let mut sent = 0;
    for line in records("over/app", 6_000, "over") {
        let chunk = format!("{line}\n");
        sent += chunk.len();
        // tagpin may answer and close once the limit is passed.
        if write!(conn, "{:x}\r\n{chunk}\r\n", chunk.len()).is_err() {
            break;
        }
    }
    let _ = conn.write_all(b"0\r\n\r\n");
    assert!(sent > LIMIT_BYTES, "the body passes the limit");
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    println!("answer to {sent} bytes: {}", answer.lines().next().unwrap_or("(none)"));
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let pinned = a.pinned().into_keys().filter(|r| r.starts_with("over/app:")).count();
    assert_eq!(pinned, 0, "a body over the limit wrote {pinned} pins");
    assert_eq!(a.log_size(), before, "the log grew");
}
