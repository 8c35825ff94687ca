//! End-to-end regressions for the holes an adversarial review reproduced (A, B, C, E),
//! each driven through real tagpin processes, the real registry and, for replicas, one
//! PostgreSQL database. Every test asserts the guarantee itself: what the upstream holds
//! under a protected tag against tagpin's pin, and that pinned content stays pullable;
//! never how long anything took. Everything listens on 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::admin::AdminSecrets;
use common::hold::HoldRelay;
use common::image::{sha256, ACCEPT_ALL};
use common::postgres::{fresh_database, shared};
use common::signing::{
    push_signature_blobs, put, signature_manifest, signature_tag, to_bytes, upstream_manifest, Signature,
};
use common::*;
use serde_json::{json, Value};

/// The in-doubt horizon and header timeout of hole C: a configuration the validation
/// accepts (the horizon is at least twice the header timeout).
const HORIZON: Duration = Duration::from_secs(4);
const C_FLAGS: [&str; 4] = ["--upstream-header-timeout-ms", "1000", "--in-doubt-horizon", "4s"];

fn manifest_path(repo: &str, reference: &str) -> String {
    format!("/v2/{repo}/manifests/{reference}")
}

fn put_in_background(addr: SocketAddr, repo: &str, reference: &str, bytes: &[u8]) -> JoinHandle<Resp> {
    let (repo, reference, bytes) = (repo.to_owned(), reference.to_owned(), bytes.to_vec());
    std::thread::spawn(move || put(addr, &repo, &reference, &bytes))
}

/// A tagpin config file that puts the tag `dev` in audit mode (every other tag keeps the
/// default, enforcing, mode).
struct AuditDev {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl AuditDev {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tagpin.toml");
        std::fs::write(&path, "[[rules]]\ntags = [\"dev\"]\nmode = \"audit\"\n").unwrap();
        Self { _dir: dir, path }
    }
}

/// `serve` flags: the admin API (for `pins show` and `claims`), then `extra`.
fn flags(admin: &AdminSecrets, extra: &[&str]) -> Vec<String> {
    let mut f = admin.flags();
    f.extend(extra.iter().map(|s| (*s).to_owned()));
    f
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The digest tagpin has `repo:tag` pinned to, if any.
fn pinned(admin: &AdminSecrets, tagpin: &Tagpin, repo: &str, tag: &str) -> Option<String> {
    let pin = admin.pin(tagpin.admin_addr(), &format!("{repo}:{tag}"))?;
    Some(
        pin["digest"]
            .as_str()
            .unwrap_or_else(|| panic!("pin without digest: {pin}"))
            .to_owned(),
    )
}

/// The manifest bytes a client pulls through tagpin, if any.
fn pull(addr: SocketAddr, repo: &str, tag: &str) -> Option<Vec<u8>> {
    let r = request(addr, "GET", &manifest_path(repo, tag), &[("Accept", ACCEPT_ALL)], b"");
    (r.status == 200).then_some(r.body)
}

/// A blob's bytes as a client pulls them through `addr`, if it is there.
fn pull_blob(addr: SocketAddr, repo: &str, digest: &str) -> Option<Vec<u8>> {
    let r = request(addr, "GET", &format!("/v2/{repo}/blobs/{digest}"), &[], b"");
    (r.status == 200).then_some(r.body)
}

/// `tagpin claims list --json`.
fn claims(admin: &AdminSecrets, tagpin: &Tagpin) -> Value {
    admin
        .cli(tagpin.admin_addr(), &["claims", "list", "--json"])
        .ok()
        .json()
}

/// The request ids of the write records `claims` lists for `repo:tag`.
fn claim_ids(listed: &Value, repo: &str, tag: &str) -> Vec<String> {
    let all = listed["claims"]
        .as_array()
        .unwrap_or_else(|| panic!("no claims list: {listed}"));
    all.iter()
        .filter(|c| c["repository"] == repo && c["tag"] == tag)
        .map(|c| c["request_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The request id tagpin gave a request it answered with an error.
fn request_id(r: &Resp) -> String {
    let id = r.json()["errors"][0]["detail"]["request_id"].clone();
    id.as_str()
        .unwrap_or_else(|| panic!("no request id in {}", r.text()))
        .to_owned()
}

/// Bounded wait until `done` holds.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Hole A, on two replicas sharing one database. Manifest H is pinned to the audited tag
/// `dev`. A delete of H's layer through replica 0 takes its first look (only `dev`, an
/// audited holder, depends on H: it may go through) and then waits to write its record
/// (an exclusive lock on `deletes`, standing in for a slow insert or a paused replica;
/// reads pass). Meanwhile replica 1 pins H to the enforcing tag `1.0`. The delete's second
/// look must see that H is now held by `1.0`, even though H was a dependent already, and
/// must not be forwarded. Guarantee: whatever tagpin pins `1.0` to is what the registry
/// holds, and H's config and layer are still there and pullable.
#[test]
fn a_a_blob_delete_never_strips_a_manifest_an_enforcing_tag_pinned_between_its_looks() {
    let registry = Registry::start();
    let db = fresh_database("holes_a");
    let url = shared().url(&db);
    let (admin, config) = (AdminSecrets::new(), AuditDev::new());
    let f = flags(&admin, &["--config", config.path.to_str().unwrap()]);
    let r0 = Tagpin::start_on_database(&registry.url(), &url, &strs(&f));
    let r1 = Tagpin::start_on_database(&registry.url(), &url, &strs(&f));
    let repo = "holes/a";
    let h = Image::random(7101, 256);
    h.push_blobs(registry.addr, repo, "");
    let r = h.put_manifest(r0.addr, repo, "dev", "");
    assert_eq!(r.status, 201, "dev (audit) pinned to H: {}", r.text());

    let mut locker = shared().connect(&db);
    let mut tx = locker.transaction().unwrap();
    tx.batch_execute("LOCK TABLE deletes IN EXCLUSIVE MODE").unwrap();
    let layer = sha256(&h.layer);
    let del = {
        let (addr, target) = (r0.addr, format!("/v2/{repo}/blobs/{layer}"));
        std::thread::spawn(move || request(addr, "DELETE", &target, &[], b""))
    };
    // The delete has taken its first look once it waits for the lock to write its record.
    let mut watcher = shared().connect(&db);
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'";
    wait_until("the delete waits to write its record", || {
        watcher.query_one(waiting, &[&db]).unwrap().get::<_, i64>(0) >= 1
    });
    let push = h.put_manifest(r1.addr, repo, "1.0", "");
    tx.commit().unwrap();
    let del = del.join().unwrap();

    let up = upstream_digest(&registry, repo, "1.0");
    let pin = pinned(&admin, &r1, repo, "1.0");
    let seen = format!(
        "push of H to 1.0: {} {}; delete of H's layer: {} {}; upstream 1.0 = {up:?}, pin = {pin:?}, H = {}",
        push.status,
        push.text(),
        del.status,
        del.text(),
        h.digest()
    );
    assert_eq!(pin, up, "the pin and the registry disagree: {seen}");
    if push.status == 201 {
        assert_eq!(pin, Some(h.digest()), "{seen}");
    }
    if pin.is_some() {
        assert_eq!(pull(r0.addr, repo, "1.0"), Some(h.manifest.clone()), "{seen}");
        for (what, blob) in [("layer", &h.layer), ("config", &h.config)] {
            let got = pull_blob(r0.addr, repo, &sha256(blob));
            assert!(
                got.as_ref() == Some(blob),
                "BROKEN: 1.0 is pinned to H but H's {what} is gone: {seen}"
            );
        }
    }
}

/// Hole B, on two replicas. A push of M1 to the new tag `1.0` through replica 0 is lost
/// (504; the relay never delivers it). The client's retry through replica 1 is forwarded
/// and still in flight (held by the relay). The operator, who knows the first request
/// failed, clears that request's record (`claims clear --request`, its id from `claims
/// list --json` and the 504). The retry's record must keep holding the tag: another
/// digest M2 pushed through replica 0 is refused (409). When the held retry lands, the
/// registry and the pin agree on M1, and M1 is pullable.
#[test]
fn b_clearing_a_failed_request_leaves_a_retry_in_flight_holding_the_tag() {
    let registry = Registry::start();
    let relay = HoldRelay::start(registry.addr);
    let db = fresh_database("holes_b");
    let url = shared().url(&db);
    let admin = AdminSecrets::new();
    let f0 = flags(&admin, &["--upstream-header-timeout-ms", "1500"]);
    let r0 = Tagpin::start_on_database(&relay.url(), &url, &strs(&f0));
    let r1 = Tagpin::start_on_database(&relay.url(), &url, &strs(&admin.flags()));
    let (repo, tag) = ("holes/b", "1.0");
    let m1 = Image::random(7201, 128);
    let m2 = m1.variant("m2");
    m1.push_blobs(registry.addr, repo, "");
    relay.hold("PUT", &manifest_path(repo, tag), 2);

    let lost = m1.put_manifest(r0.addr, repo, tag, "");
    assert_eq!(lost.status, 504, "the first push's answer is lost: {}", lost.text());
    let lost_id = request_id(&lost);
    let retry = put_in_background(r1.addr, repo, tag, &m1.manifest);
    relay.wait_held(2);
    wait_until("the retry's record is listed", || {
        claim_ids(&claims(&admin, &r0), repo, tag).len() == 2
    });
    let ids = claim_ids(&claims(&admin, &r0), repo, tag);
    assert!(ids.contains(&lost_id), "the lost request {lost_id} is listed: {ids:?}");

    // The registry never saw the first request: the operator clears its record, and only its.
    assert_eq!(upstream_digest(&registry, repo, tag), None);
    let target = format!("{repo}:{tag}");
    let reason = "its 504 came long ago and the registry never received it";
    let args = ["claims", "clear", &target, "--request", &lost_id, "--reason", reason];
    let out = admin.cli(r0.admin_addr(), &args).ok();
    let left = claim_ids(&claims(&admin, &r0), repo, tag);
    assert_eq!(left.len(), 1, "{}: {left:?}", out.stdout);
    assert_ne!(left[0], lost_id, "the retry's record stays");

    // Through replica 0: replica 1's own push lock is held by the retry it waits for.
    let r = m2.put_manifest(r0.addr, repo, tag, "");
    assert_eq!(r.status, 409, "M2 while the retry of M1 is in flight: {}", r.text());
    relay.release(1);
    assert_eq!(relay.wait_answered(1), 201, "the registry applied the retry");
    let retry = retry.join().unwrap();
    assert_eq!(retry.status, 201, "{}", retry.text());

    let up = upstream_digest(&registry, repo, tag);
    assert_eq!(up, Some(m1.digest()), "the registry holds the retry's M1");
    for via in [&r0, &r1] {
        assert_eq!(pinned(&admin, via, repo, tag), up, "the pin agrees with the registry");
        assert_eq!(pull(via.addr, repo, tag), Some(m1.manifest.clone()));
    }
}

/// A signature tag pinned to S1; S2 appends a second signature. Both carry the same
/// top-level annotation so that S2 is an append of S1.
struct Signed {
    repo: &'static str,
    tag: String,
    s1: Vec<u8>,
    s2: Vec<u8>,
}

impl Signed {
    fn pinned(registry: &Registry, tagpin: SocketAddr, seed: u64) -> Self {
        let repo = "holes/signed";
        let img = Image::random(seed, 64);
        img.push_blobs(registry.addr, repo, "");
        assert_eq!(img.put_manifest(tagpin, repo, "v1", "").status, 201);
        let sigs = [1, 2].map(|n| Signature::new(&img.digest(), n));
        let over = |n: usize| {
            let layers: Vec<Value> = sigs[..n].iter().map(Signature::layer).collect();
            let (config, mut manifest) = signature_manifest(&layers);
            manifest["annotations"] = json!({"test.seed": seed.to_string()});
            push_signature_blobs(registry.addr, repo, &config, &sigs[..n].iter().collect::<Vec<_>>());
            to_bytes(&manifest)
        };
        let s = Self {
            repo,
            tag: signature_tag(&img.digest()),
            s1: over(1),
            s2: over(2),
        };
        let r = put(tagpin, repo, &s.tag, &s.s1);
        assert_eq!(r.status, 201, "S1 pinned: {}", r.text());
        s
    }
}

/// Hole C (see the two tests below). `tagpins[0]` takes the held write, the last one the
/// append. tagpin forwards an identical re-push A of the pinned S1 and the relay holds
/// it. The test pushes the append S2 until it is accepted (A's record lapses at the
/// horizon). Then, as the reviewer did, it releases A if A may still land: tagpin still
/// waits for its answer, or A reached the upstream less than half a horizon ago (what the
/// horizon assumes: an upstream applies a write, if ever, within half the horizon of
/// receiving it; past that, and with tagpin no longer waiting, A never lands). Either the
/// append was refused until A was settled, or tagpin gave up on A in time and A never
/// lands late. Guarantee: the accepted append is never rolled back: the registry and the
/// pin both hold S2, and S2 is what clients pull.
fn held_repush_never_rolls_back_an_accepted_append(
    tagpins: &[Tagpin],
    admin: &AdminSecrets,
    registry: &Registry,
    relay: &HoldRelay,
) {
    let (via_a, via_s2) = (&tagpins[0], tagpins.last().unwrap());
    let s = Signed::pinned(registry, via_a.addr, 7301);
    // Start A late in a second, where a record dated by whole seconds would lapse early.
    for _ in 0..400 {
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_millis();
        if (850..900).contains(&ms) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    relay.hold("PUT", &manifest_path(s.repo, &s.tag), 1);
    let a = put_in_background(via_a.addr, s.repo, &s.tag, &s.s1);
    wait_until("A is forwarded or answered", || relay.held() == 1 || a.is_finished());
    let received = Instant::now();
    let forwarded = relay.held() == 1;

    let mut accepted = None;
    for _ in 0..300 {
        let r = put(via_s2.addr, s.repo, &s.tag, &s.s2);
        match r.status {
            201 => {
                accepted = Some(!a.is_finished() || received.elapsed() < HORIZON / 2);
                break;
            }
            409 => std::thread::sleep(Duration::from_millis(30)),
            other => panic!("S2: {other} {}", r.text()),
        }
    }
    let may_land = accepted.expect("S2 is accepted once A's record lapsed at the horizon");
    if forwarded && may_land {
        relay.release(0);
        relay.wait_answered(0);
    }
    let a = a.join().unwrap();

    let (s1, s2) = (sha256(&s.s1), sha256(&s.s2));
    let up = upstream_manifest(registry, s.repo, &s.tag).map(|b| sha256(&b));
    let pin = pinned(admin, via_a, s.repo, &s.tag);
    let seen = format!(
        "S1 = {s1}, S2 = {s2}; upstream = {up:?}, pin = {pin:?}; A answered {} {}, released late: {}",
        a.status,
        a.text(),
        forwarded && may_land
    );
    assert_eq!(
        up.as_deref(),
        Some(s2.as_str()),
        "BROKEN: the registry rolled back the accepted S2: {seen}"
    );
    assert_eq!(pin.as_deref(), Some(s2.as_str()), "the pin holds S2: {seen}");
    for t in tagpins {
        assert_eq!(pull(t.addr, s.repo, &s.tag), Some(s.s2.clone()), "{seen}");
    }
}

/// Hole C on one tagpin (sled): see [`held_repush_never_rolls_back_an_accepted_append`].
/// Here the append also waits for the tag's push lock, which A's push holds until tagpin
/// gives up on it; the replica test below has no such lock in the way.
#[test]
fn c_a_held_repush_never_rolls_back_an_accepted_append() {
    let registry = Registry::start();
    let relay = HoldRelay::start(registry.addr);
    let (admin, data) = (AdminSecrets::new(), tempfile::tempdir().unwrap());
    let tagpin = Tagpin::start_on_data_dir(&relay.url(), data.path(), &strs(&flags(&admin, &C_FLAGS)));
    held_repush_never_rolls_back_an_accepted_append(&[tagpin], &admin, &registry, &relay);
}

/// Hole C on two replicas: A goes through replica 0, the append through replica 1, so no
/// in-process lock stands between them; only A's record in the shared database does.
#[test]
fn c_a_held_repush_on_one_replica_never_rolls_back_an_append_on_another() {
    let registry = Registry::start();
    let relay = HoldRelay::start(registry.addr);
    let db = fresh_database("holes_c");
    let url = shared().url(&db);
    let admin = AdminSecrets::new();
    let f = flags(&admin, &C_FLAGS);
    let replicas = [0, 1].map(|_| Tagpin::start_on_database(&relay.url(), &url, &strs(&f)));
    held_repush_never_rolls_back_an_accepted_append(&replicas, &admin, &registry, &relay);
}

/// Hole C's configuration: `tagpin serve` refuses an in-doubt horizon shorter than twice
/// the upstream header timeout (exit 64, naming `in_doubt_horizon`), and starts with one
/// of exactly twice.
#[test]
fn c_a_horizon_shorter_than_twice_the_header_timeout_is_refused() {
    let bin = std::env::var_os("TAGPIN_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_tagpin").into());
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9"])
        .arg("--data-dir")
        .arg(data.path())
        .args(["--upstream-header-timeout-ms", "1000", "--in-doubt-horizon", "1999ms"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tagpin serve");
    let mut status = None;
    for _ in 0..200 {
        status = child.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(64),
        "a 1999ms horizon with a 1s header timeout: {text}"
    );
    assert!(text.contains("--in-doubt-horizon"), "{text}");

    let data = tempfile::tempdir().unwrap();
    let flags = ["--upstream-header-timeout-ms", "1000", "--in-doubt-horizon", "2s"];
    let _starts = Tagpin::start_on_data_dir("http://127.0.0.1:9", data.path(), &flags);
}

/// Hole E. An audited (`dev`) delete of a tag is forwarded and its upstream times out
/// (the relay holds it, for good). On a tag with no pin it holds no record, so its 504
/// must not promise one, and `claims list` has none; on a pinned tag it holds one (not
/// listed: a pinned tag's records of its own digest lapse at the horizon), and its 504
/// says so. Guarantee: the 504 promises a record exactly when tagpin keeps the tag held
/// by one, as seen by a push of another digest (refused only while a record holds it).
#[test]
fn e_a_timed_out_delete_promises_a_record_only_when_it_holds_one() {
    let registry = Registry::start();
    let relay = HoldRelay::start(registry.addr);
    let (admin, config, data) = (AdminSecrets::new(), AuditDev::new(), tempfile::tempdir().unwrap());
    let extra = [
        "--upstream-header-timeout-ms",
        "1000",
        "--config",
        config.path.to_str().unwrap(),
    ];
    let tagpin = Tagpin::start_on_data_dir(&relay.url(), data.path(), &strs(&flags(&admin, &extra)));
    let img = Image::random(7501, 64);
    let other = img.variant("other");
    for (repo, pinned_first) in [("holes/e-unpinned", false), ("holes/e-pinned", true)] {
        img.push_blobs(registry.addr, repo, "");
        if pinned_first {
            assert_eq!(img.put_manifest(tagpin.addr, repo, "dev", "").status, 201);
        }
        relay.hold("DELETE", &manifest_path(repo, "dev"), 1);
        let r = request(tagpin.addr, "DELETE", &manifest_path(repo, "dev"), &[], b"");
        assert_eq!(r.status, 504, "{repo}: {}", r.text());
        let promises = r.text().contains("keeps its record");
        let listed = claims(&admin, &tagpin);
        let push = other.put_manifest(tagpin.addr, repo, "dev", "");
        let held = push.status == 409;
        let seen = format!(
            "{repo}: the 504 {}; then another digest: {} {}",
            r.text(),
            push.status,
            push.text()
        );
        assert_eq!(
            promises, held,
            "the 504's word on a record is not what tagpin enforces: {seen}"
        );
        assert_eq!(held, pinned_first, "{seen}");
        if !pinned_first {
            assert_eq!(claim_ids(&listed, repo, "dev"), Vec::<String>::new(), "{listed}");
        }
        // Whatever tagpin pins `dev` to is what the registry holds and what clients pull.
        let want = if pinned_first { &img } else { &other };
        assert_eq!(pinned(&admin, &tagpin, repo, "dev"), Some(want.digest()), "{seen}");
        assert_eq!(upstream_digest(&registry, repo, "dev"), Some(want.digest()), "{seen}");
        assert_eq!(pull(tagpin.addr, repo, "dev"), Some(want.manifest.clone()), "{seen}");
    }
}
