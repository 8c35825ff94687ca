//! Releases (break glass) end to end, as regressions for the ways a review found the old
//! code let one release move a tag more than once, forge history, outlive a cancel or its
//! expiry, or not cover a digest delete. Every test runs against the real distribution
//! 2.8; a relay between tagpin and the upstream ([`GateRelay`]) holds chosen requests
//! until the test lets them go, so each interleaving is forced, never hoped for. Whether
//! a tag moved is decided by asking the upstream directly, and by the pin's history
//! (`tagpin pins show --json`).
//!
//! Distribution 2.8 answers `DELETE /v2/<name>/manifests/<tag>` with 400
//! `DIGEST_INVALID` (it deletes by digest only): a released tag delete is always refused
//! by this upstream, which is what makes "the release comes back" reachable.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::admin::{history, AdminSecrets};
use common::gate::GateRelay;
use common::postgres::{fresh_database, shared};
use common::procs::require_binary;
use common::*;

const WAIT: Duration = Duration::from_secs(60);

/// `serve` flags: the admin API, and a check timeout far longer than any hold here.
fn flags(secrets: &AdminSecrets) -> Vec<String> {
    let mut f = secrets.flags();
    f.extend(["--upstream-check-timeout-ms".into(), "60000".into()]);
    f
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn delete_tag(addr: SocketAddr, repo: &str, tag: &str, auth: &str) -> Resp {
    request(
        addr,
        "DELETE",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Authorization", auth)],
        b"",
    )
}

fn put_index(addr: SocketAddr, repo: &str, tag: &str, index: &Index) -> Resp {
    request(
        addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Content-Type", image::OCI_INDEX)],
        &index.index,
    )
}

fn release(secrets: &AdminSecrets, admin: SocketAddr, reference: &str, ttl: &str) -> serde_json::Value {
    secrets
        .cli(
            admin,
            &["release", reference, "--reason", "rebuild", "--ttl", ttl, "--json"],
        )
        .ok()
        .json()
}

/// A registry, a [`GateRelay`] in front of it and one tagpin (admin API on) behind that.
struct Single {
    registry: Registry,
    relay: GateRelay,
    tagpin: Tagpin,
    admin: SocketAddr,
    secrets: AdminSecrets,
    _data: tempfile::TempDir,
}

impl Single {
    fn start() -> Self {
        let registry = Registry::start();
        let relay = GateRelay::start(registry.addr);
        let secrets = AdminSecrets::new();
        let data = tempfile::tempdir().unwrap();
        let tagpin = Tagpin::start(&relay.url(), data.path(), &strs(&flags(&secrets)));
        let admin = tagpin.admin_addr();
        Self {
            registry,
            relay,
            tagpin,
            admin,
            secrets,
            _data: data,
        }
    }

    /// Pin `repo:tag` to `img` (blobs straight to the registry) and release it.
    fn pinned_and_released(&self, repo: &str, tag: &str, img: &Image) {
        img.push_blobs(self.registry.addr, repo, "");
        assert_eq!(img.put_manifest(self.tagpin.addr, repo, tag, "").status, 201);
        release(&self.secrets, self.admin, &format!("{repo}:{tag}"), "15m");
    }

    fn cancel(&self, reference: &str) -> common::admin::CliOut {
        self.secrets.cli(self.admin, &["release", "--cancel", reference])
    }
}

/// The cancel was answered as the README says: withdrawn, or refused because a write in
/// flight uses the release. Never "no release": nothing has spent it.
fn assert_cancel_answered(out: &common::admin::CliOut, when: &str) {
    let cancelled = out.code == 0 && out.stdout.starts_with("cancelled the release");
    let in_use = out.code == 2 && out.stderr.contains("is being used by request");
    assert!(cancelled || in_use, "{when}: the cancel was answered {out:?}");
}

/// Review item 3: One release, two replicas on one PostgreSQL database, and a push racing
/// a released tag delete that the upstream refuses. R1's push of an index D1 is held
/// while tagpin fetches the index's children (the old code had read the release by then
/// and was still deciding); meanwhile R2's `DELETE` of the tag uses the release and is
/// held on its way to the upstream; then the push goes on, then the delete gets the
/// upstream's 400. Then D2 via R2 and D3 via R1. However the push is decided, the release
/// moves the tag exactly once: one push of another digest succeeds, the upstream holds
/// it, and the history has one `released` entry, from P.
///
/// Old code: the push moved the tag to D1 (201) with the release it had read; the
/// refused delete then gave the release back, and D2 moved the tag a second time (201),
/// with three `released` entries (one written before the delete was even forwarded).
/// (The new code decides the push atomically with taking the release, so here it is
/// refused while the delete holds the release, and D2 uses it once the upstream refused
/// the delete: no sequence in which D1 lands and D2 is refused can also fail the old
/// code, which needs the push to read the release before the delete takes it.)
#[test]
fn a_release_moves_a_tag_at_most_once_when_a_refused_delete_on_another_replica_races_a_push() {
    let secrets = AdminSecrets::new();
    let registry = Registry::start();
    let relay = GateRelay::start(registry.addr);
    let url = shared().url(&fresh_database("once"));
    let f = flags(&secrets);
    let r1 = Tagpin::start_on_database(&relay.url(), &url, &strs(&f));
    let r2 = Tagpin::start_on_database(&relay.url(), &url, &strs(&f));
    let admin = r1.admin_addr();
    let repo = "once/app";
    let p = Image::random(3100, 256);
    p.push_blobs(registry.addr, repo, "");
    assert_eq!(p.put_manifest(r1.addr, repo, "t5", "").status, 201);
    let d1 = Index::new(3101, 128);
    for img in &d1.images {
        img.push_blobs(registry.addr, repo, "");
        assert_eq!(img.put_manifest(registry.addr, repo, &img.digest(), "").status, 201);
    }
    let (d1_digest, d2, d3) = (d1.digest(), p.variant("d2"), p.variant("d3"));
    release(&secrets, admin, &format!("{repo}:t5"), "15m");

    let child = relay.hold(&format!("GET /v2/{repo}/manifests/sha256:"));
    let push = std::thread::spawn({
        let addr = r1.addr;
        move || put_index(addr, repo, "t5", &d1)
    });
    child.wait_caught(WAIT);
    let gate = relay.hold(&format!("DELETE /v2/{repo}/manifests/t5 "));
    let delete = std::thread::spawn({
        let addr = r2.addr;
        move || delete_tag(addr, repo, "t5", "")
    });
    let deadline = Instant::now() + WAIT;
    while !gate.caught() && !delete.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the delete was neither forwarded nor answered"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        gate.caught(),
        "the released delete was not forwarded while the push was undecided: {:?}",
        delete.join().unwrap()
    );
    child.open();
    let pushed = push.join().unwrap();
    gate.open();
    let deleted = delete.join().unwrap();
    assert_eq!(deleted.status, 400, "the upstream's refusal: {}", deleted.text());
    let answers = [
        ("D1 via R1 (raced the delete)", d1_digest, pushed.status),
        (
            "D2 via R2",
            d2.digest(),
            d2.put_manifest(r2.addr, repo, "t5", "").status,
        ),
        (
            "D3 via R1",
            d3.digest(),
            d3.put_manifest(r1.addr, repo, "t5", "").status,
        ),
    ];
    println!("the delete: {}; the pushes: {answers:?}", deleted.status);
    for (what, _, status) in &answers {
        assert!(*status == 201 || *status == 409, "{what}: {status}");
    }
    let moved: Vec<_> = answers.iter().filter(|(_, _, s)| *s == 201).collect();
    assert_eq!(
        moved.len(),
        1,
        "one release must move t5 exactly once; answers: {answers:?} (the delete: {})",
        deleted.status
    );
    let winner = &moved[0].1;
    assert_eq!(upstream_digest(&registry, repo, "t5").as_ref(), Some(winner));
    let pin = secrets.pin(admin, &format!("{repo}:t5")).expect("a pin");
    let released = history(&pin, "released");
    assert_eq!(released.len(), 1, "one `released` entry: {pin}");
    assert_eq!(
        (&released[0]["digest"], &released[0]["from"]),
        (&serde_json::json!(winner), &serde_json::json!(p.digest())),
        "{pin}"
    );
    assert!(pin["release"].is_null(), "the release is spent: {pin}");
}

/// Review item 4a: A cancel racing released tag deletes (each refused by the upstream,
/// 400). First forced: a delete holds the release on its way to the upstream when the
/// cancel comes; then free-running: a loop of deletes with the cancel sent in the middle,
/// five rounds. After the cancel was answered (cancelled, or refused as in use), every
/// push of another digest is refused and the upstream keeps P.
///
/// Old code: the delete removed the release before forwarding, so the cancel found "no
/// release"; the refused delete then put the release back and a push moved the tag.
#[test]
fn after_a_cancel_racing_refused_tag_deletes_no_push_moves_the_tag() {
    let s = Single::start();
    let (repo, reference) = ("cancel/app", "cancel/app:t6");
    let p = Image::random(3200, 256);
    s.pinned_and_released(repo, "t6", &p);
    let other = |n: usize| p.variant(&format!("other-{n}"));

    let gate = s.relay.hold(&format!("DELETE /v2/{repo}/manifests/t6 "));
    let delete = std::thread::spawn({
        let addr = s.tagpin.addr;
        move || delete_tag(addr, repo, "t6", "")
    });
    gate.wait_caught(WAIT);
    let cancel = s.cancel(reference);
    gate.open();
    let deleted = delete.join().unwrap();
    assert_eq!(deleted.status, 400, "the upstream's refusal: {}", deleted.text());
    let r = other(0).put_manifest(s.tagpin.addr, repo, "t6", "");
    assert_eq!(
        r.status,
        409,
        "a push after the cancel (answered {cancel:?}) moved t6: {}",
        r.text()
    );
    assert_eq!(upstream_digest(&s.registry, repo, "t6"), Some(p.digest()));
    // The delete held the release when the cancel came: refused as in use (409).
    assert!(
        cancel.code == 2 && cancel.stderr.contains("409") && cancel.stderr.contains("is being used by request"),
        "the cancel while a delete used the release: {cancel:?}"
    );

    for round in 1..=5 {
        release(&s.secrets, s.admin, reference, "15m");
        let (stop, done) = (AtomicBool::new(false), AtomicUsize::new(0));
        let (cancel, during, statuses) = std::thread::scope(|sc| {
            let deletes = sc.spawn(|| {
                let mut statuses = Vec::new();
                while !stop.load(Ordering::SeqCst) && statuses.len() < 500 {
                    statuses.push(delete_tag(s.tagpin.addr, repo, "t6", "").status);
                    done.fetch_add(1, Ordering::SeqCst);
                }
                statuses
            });
            let deadline = Instant::now() + WAIT;
            while done.load(Ordering::SeqCst) < round {
                assert!(Instant::now() < deadline, "round {round}: the deletes did not run");
                std::thread::sleep(Duration::from_millis(1));
            }
            let cancel = s.cancel(reference);
            // Deletes still run: the push races them.
            let during = other(round).put_manifest(s.tagpin.addr, repo, "t6", "");
            stop.store(true, Ordering::SeqCst);
            (cancel, during, deletes.join().unwrap())
        });
        println!(
            "round {round}: the cancel exited {} after {} of {} deletes",
            cancel.code,
            round,
            statuses.len()
        );
        assert!(
            statuses.iter().all(|&st| st == 400 || st == 409),
            "round {round}: {statuses:?}"
        );
        assert_eq!(
            during.status,
            409,
            "round {round} (cancel: {cancel:?}): {}",
            during.text()
        );
        let after = other(round + 10).put_manifest(s.tagpin.addr, repo, "t6", "");
        assert_eq!(
            after.status,
            409,
            "round {round} (cancel: {cancel:?}): {}",
            after.text()
        );
        assert_eq!(
            upstream_digest(&s.registry, repo, "t6"),
            Some(p.digest()),
            "round {round}"
        );
        assert_cancel_answered(&cancel, &format!("round {round}"));
    }
    let pin = s.secrets.pin(s.admin, reference).expect("a pin");
    assert!(history(&pin, "released").is_empty(), "{pin}");
}

/// Review item 4b: A cancel while a released push is forwarded (held in the relay before
/// the upstream): refused as in use (409, exit 2); the push, decided before the cancel,
/// lands (201) and a further push is refused. Variant: the held push is refused by the
/// upstream (400, a blob it lacks) after the cancel; the release does not come back.
///
/// Old code: the cancel answered "cancelled" while the push it could not call back was
/// on its way, so the operator believed nothing would move.
#[test]
fn a_cancel_while_a_released_push_is_in_flight_is_refused_and_the_release_never_returns() {
    let s = Single::start();
    let repo = "inuse/app";
    let p = Image::random(3300, 256);
    s.pinned_and_released(repo, "t1", &p);
    let (d1, d2) = (p.variant("d1"), p.variant("d2"));
    let gate = s.relay.hold(&format!("PUT /v2/{repo}/manifests/t1 "));
    let push = std::thread::spawn({
        let (addr, d1) = (s.tagpin.addr, d1.clone());
        move || d1.put_manifest(addr, repo, "t1", "")
    });
    gate.wait_caught(WAIT);
    let cancel = s.cancel(&format!("{repo}:t1"));
    gate.open();
    let pushed = push.join().unwrap();
    assert_eq!(
        (cancel.code, cancel.stderr.contains("is being used by request")),
        (2, true),
        "a cancel while the push using the release is in flight: {cancel:?}"
    );
    assert!(cancel.stderr.contains("409"), "{cancel:?}");
    assert_eq!(pushed.status, 201, "{}", pushed.text());
    assert_eq!(upstream_digest(&s.registry, repo, "t1"), Some(d1.digest()));
    assert_eq!(d2.put_manifest(s.tagpin.addr, repo, "t1", "").status, 409);
    assert_eq!(upstream_digest(&s.registry, repo, "t1"), Some(d1.digest()));

    // The held push is refused by the upstream after the cancel.
    s.pinned_and_released(repo, "t2", &p);
    let orphan = Image::random(3301, 256); // its blobs never reach the registry
    let gate = s.relay.hold(&format!("PUT /v2/{repo}/manifests/t2 "));
    let push = std::thread::spawn({
        let addr = s.tagpin.addr;
        move || orphan.put_manifest(addr, repo, "t2", "")
    });
    gate.wait_caught(WAIT);
    let cancel = s.cancel(&format!("{repo}:t2"));
    gate.open();
    let refused = push.join().unwrap();
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert_eq!(
        d2.put_manifest(s.tagpin.addr, repo, "t2", "").status,
        409,
        "the release came back after the cancel (answered {cancel:?})"
    );
    assert_eq!(upstream_digest(&s.registry, repo, "t2"), Some(p.digest()));
    assert_eq!(cancel.code, 2, "{cancel:?}");
    let pin = s.secrets.pin(s.admin, &format!("{repo}:t2")).expect("a pin");
    assert!(pin["release"].is_null(), "{pin}");
    assert!(history(&pin, "released").is_empty(), "{pin}");
}

/// Review item 4c: Anonymous clients write no history: an upstream with htpasswd auth, t7
/// pinned and released, then 50 anonymous `DELETE`s of t7, each answered 401 by the
/// upstream and passed through. The history has no `released` entry and the release still
/// holds: a push with credentials uses it (201), once.
///
/// Old code: each delete took the release (writing a `released` entry) before it was
/// forwarded and gave it back on the 401: 50 forged entries, by anyone who can connect.
#[test]
fn refused_anonymous_tag_deletes_write_no_history_and_leave_the_release() {
    let registry = Registry::start_with(RegistryOptions {
        basic_auth: Some(("alice".into(), "pw-release-once".into())),
        ..Default::default()
    });
    let auth = registry.auth_header();
    let secrets = AdminSecrets::new();
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(&registry.url(), data.path(), &strs(&flags(&secrets)));
    let admin = tagpin.admin_addr();
    let (repo, reference) = ("auth/app", "auth/app:t7");
    let p = Image::random(3400, 256);
    p.push_blobs(tagpin.addr, repo, &auth);
    assert_eq!(p.put_manifest(tagpin.addr, repo, "t7", &auth).status, 201);
    release(&secrets, admin, reference, "15m");
    for i in 0..50 {
        let r = delete_tag(tagpin.addr, repo, "t7", "");
        assert_eq!(r.status, 401, "anonymous delete {i}: {}", r.text());
    }
    let pin = secrets.pin(admin, reference).expect("a pin");
    let forged = history(&pin, "released");
    assert!(
        forged.is_empty(),
        "{} refused anonymous deletes wrote `released` entries (the first: {})",
        forged.len(),
        forged[0]
    );
    assert!(!pin["release"].is_null(), "the release is still in force: {pin}");

    let (d1, d2) = (p.variant("d1"), p.variant("d2"));
    assert_eq!(d1.put_manifest(tagpin.addr, repo, "t7", &auth).status, 201);
    assert_eq!(d2.put_manifest(tagpin.addr, repo, "t7", &auth).status, 409);
    assert_eq!(upstream_digest(&registry, repo, "t7"), Some(d1.digest()));
    let pin = secrets.pin(admin, reference).expect("a pin");
    assert_eq!(history(&pin, "released").len(), 1, "{pin}");
}

/// libfaketime's preload library, from Debian's `faketime` package.
fn libfaketime() -> String {
    require_binary("faketime", "faketime");
    let mut found = Vec::new();
    for dir in ["/usr/lib", "/usr/lib64"] {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for e in entries.filter_map(Result::ok) {
            found.push(e.path().join("faketime/libfaketime.so.1"));
        }
        found.push(std::path::Path::new(dir).join("faketime/libfaketime.so.1"));
    }
    let lib = found.into_iter().find(|p| p.is_file());
    lib.expect("libfaketime.so.1 of Debian's `faketime` package is not installed")
        .display()
        .to_string()
}

/// Seconds since the epoch of an HTTP `Date` (IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`).
fn http_date(value: &str) -> i64 {
    let bad = || -> ! { panic!("not an HTTP date: {value:?}") };
    let f: Vec<&str> = value.split([' ', ':']).collect();
    if f.len() != 8 {
        bad();
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let Some(m) = MONTHS.iter().position(|m| *m == f[2]) else {
        bad()
    };
    let n = |i: usize| -> i64 { f[i].parse().unwrap_or_else(|_| bad()) };
    let month = m as i64 + 1;
    let (y, d) = (if month <= 2 { n(3) - 1 } else { n(3) }, n(1));
    // Days from the civil date (Howard Hinnant's algorithm).
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    days * 86_400 + n(4) * 3600 + n(5) * 60 + n(6)
}

/// What `tagpin`'s own clock says, from the `Date` of a response it makes itself.
fn clock_of(tagpin: &Tagpin) -> i64 {
    let r = request(tagpin.addr, "GET", "/readyz", &[], b"");
    http_date(r.header("date").expect("a Date header"))
}

/// Review item 5: Release expiry is judged by the database's clock. Two replicas on one
/// database, one started under libfaketime an hour behind. A release with a TTL of 2 s is
/// made through the other, and once the database's clock is 3 s on, a push of another
/// digest through the skewed replica is refused (409) and the upstream keeps P.
///
/// Old code: each replica compared the expiry with its own clock, so the skewed one let
/// the push through (201) an hour after the release expired.
#[test]
fn a_release_expired_by_the_database_clock_lets_nothing_through_a_replica_an_hour_behind() {
    let name = fresh_database("skew");
    let url = shared().url(&name);
    let registry = Registry::start();
    let secrets = AdminSecrets::new();
    let f = flags(&secrets);
    let normal = Tagpin::start_on_database(&registry.url(), &url, &strs(&f));
    let lib = libfaketime();
    let skewed = Tagpin::start_on_database_env(
        &registry.url(),
        &url,
        &strs(&f),
        &[
            ("LD_PRELOAD", lib.as_str()),
            ("FAKETIME", "-3600"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ("DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let behind = clock_of(&normal) - clock_of(&skewed);
    assert!(
        (3000..4200).contains(&behind),
        "the skewed replica is {behind} s behind, not an hour"
    );
    let admin = normal.admin_addr();
    let (repo, reference) = ("skew/app", "skew/app:t9");
    let p = Image::random(3500, 256);
    p.push_blobs(registry.addr, repo, "");
    assert_eq!(p.put_manifest(normal.addr, repo, "t9", "").status, 201);
    let rel = release(&secrets, admin, reference, "2s");
    let expires = rel["expires_at"].as_i64().expect("expires_at");
    let mut db = shared().connect(&name);
    let deadline = Instant::now() + WAIT;
    loop {
        let now: i64 = db
            .query_one("SELECT extract(epoch FROM now())::bigint", &[])
            .unwrap()
            .get(0);
        if now > expires {
            break;
        }
        assert!(Instant::now() < deadline, "the database's clock did not pass {expires}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let d1 = p.variant("d1");
    let r = d1.put_manifest(skewed.addr, repo, "t9", "");
    assert_eq!(r.status, 409, "an expired release let a push through: {}", r.text());
    assert_eq!(upstream_digest(&registry, repo, "t9"), Some(p.digest()));
    let pin = secrets.pin(admin, reference).expect("a pin");
    assert!(history(&pin, "released").is_empty(), "{pin}");
    assert_eq!(history(&pin, "release_expired").len(), 1, "{pin}");
    assert!(pin["release"].is_null(), "{pin}");
}

/// Review item 8: A release covers deleting the tag's digest: t8 pinned to P (no other
/// tag holds P), released; `DELETE /v2/<repo>/manifests/<P>` is forwarded (202), the
/// upstream no longer serves P, the history has a `released` entry and the release is
/// spent.
///
/// Old code: refused (409, `digest_pinned`) whatever the release.
#[test]
fn a_release_lets_one_delete_of_the_pinned_digest_through() {
    let s = Single::start();
    let (repo, reference) = ("digest/app", "digest/app:t8");
    let p = Image::random(3600, 256);
    s.pinned_and_released(repo, "t8", &p);
    let target = format!("/v2/{repo}/manifests/{}", p.digest());
    let r = request(s.tagpin.addr, "DELETE", &target, &[], b"");
    assert_eq!(r.status, 202, "{}", r.text());
    let gone = request(s.registry.addr, "GET", &target, &[("Accept", image::ACCEPT_ALL)], b"");
    assert_eq!(gone.status, 404, "the upstream still serves P: {}", gone.text());
    let pin = s.secrets.pin(s.admin, reference).expect("the pin stays");
    assert_eq!(pin["digest"], p.digest(), "{pin}");
    assert_eq!(history(&pin, "released").len(), 1, "{pin}");
    assert!(pin["release"].is_null(), "the release is spent: {pin}");
    // Spent: the tag cannot be moved now.
    let d1 = p.variant("d1");
    assert_eq!(d1.put_manifest(s.tagpin.addr, repo, "t8", "").status, 409);
}
