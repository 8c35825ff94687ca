//! Every forwarded write holds a record of its own until its own answer settles it
//! (README, "The in-flight rule"): regressions for the ways the tag-by-tag claims of the
//! old decision code let a protected tag move, against the real registry.
//!
//! The window a test needs is held open by a relay in front of the registry
//! ([`common::hold::HoldRelay`]): a chosen write has left tagpin but reaches the registry
//! only when the test releases it, so nothing depends on the machine's speed. Replicas are
//! several tagpins on one PostgreSQL database (a throwaway server, as `tests/replicas.rs`
//! starts). Whether a tag moved is decided by asking the registry directly.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::thread::JoinHandle;
use std::time::Duration;

use common::hold::HoldRelay;
use common::image::push_blob;
use common::postgres::{fresh_database, shared};
use common::signing::{
    push_signature_blobs, put, signature_manifest, signature_tag, to_bytes, upstream_manifest, Signature,
};
use common::*;
use serde_json::Value;

/// The `detail` of a 409 `DENIED` refusal whose reason is `reason`.
fn refused(r: &Resp, reason: &str, what: &str) -> Value {
    assert_eq!(
        r.status,
        409,
        "{what}: expected a refusal ({reason}), got {}: {}",
        r.status,
        r.text()
    );
    let detail = r.json()["errors"][0]["detail"].clone();
    assert_eq!(detail["reason"], reason, "{what}: {}", r.text());
    detail
}

fn created(r: &Resp, what: &str) {
    assert_eq!(r.status, 201, "{what}: {}", r.text());
}

/// PUT manifest bytes in the background (the relay may hold them).
fn put_in_background(addr: SocketAddr, repo: &str, reference: &str, bytes: &[u8]) -> JoinHandle<Resp> {
    let (repo, reference, bytes) = (repo.to_owned(), reference.to_owned(), bytes.to_vec());
    std::thread::spawn(move || put(addr, &repo, &reference, &bytes))
}

/// The path of `repo:reference`'s manifest, as the relay sees it.
fn manifest_path(repo: &str, reference: &str) -> String {
    format!("/v2/{repo}/manifests/{reference}")
}

/// A registry, a holding relay in front of it and three tagpins on one fresh database,
/// talking to the registry through the relay.
struct Cluster {
    registry: Registry,
    relay: HoldRelay,
    replicas: Vec<Tagpin>,
}

impl Cluster {
    fn start(prefix: &str) -> Self {
        let registry = Registry::start();
        let relay = HoldRelay::start(registry.addr);
        let url = shared().url(&fresh_database(prefix));
        let replicas = (0..3)
            .map(|_| Tagpin::start_on_database(&relay.url(), &url, &[]))
            .collect();
        Self {
            registry,
            relay,
            replicas,
        }
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.replicas[i].addr
    }
}

/// Review item 1a: A, through replica 1, pushes M1 to the free tag `1.0` before M1's layer
/// is uploaded; B, through replica 2, pushes the same M1; both are held on their way to the
/// registry. A is released and refused (400): that withdraws A's record and nobody else's,
/// so B's own record still holds `1.0` for M1 and C's push of M2 through replica 3 is
/// refused (`tag_in_flight`). B lands, and `1.0` is pinned to M1 at the registry and on
/// every replica.
///
/// The old code gave B no claim of its own (it "completed" A's), so A's 400 freed the
/// tag: C got 201 and the pin M2, then B landed and the registry held M1 under a tag
/// pinned to M2.
#[test]
fn a_refused_push_frees_only_its_own_record_not_an_identical_push_in_flight_on_another_replica() {
    let c = Cluster::start("records_1a");
    let repo = "inflight/app";
    let m1 = Image::random(1301, 256);
    let m2 = m1.variant("m2");
    // Only the config: the registry refuses M1 until its layer is there.
    push_blob(c.registry.addr, repo, &m1.config, "");
    c.relay.hold("PUT", &manifest_path(repo, "1.0"), 2);
    let a = put_in_background(c.addr(0), repo, "1.0", &m1.manifest);
    c.relay.wait_held(1);
    let b = put_in_background(c.addr(1), repo, "1.0", &m1.manifest);
    c.relay.wait_held(2);

    c.relay.release(0);
    let r = a.join().unwrap();
    assert_eq!(r.status, 400, "A's push without its layer: {}", r.text());
    assert_eq!(r.oci_code(), "MANIFEST_BLOB_UNKNOWN", "{}", r.text());
    // B's layer arrives while B's push is still on its way.
    push_blob(c.registry.addr, repo, &m1.layer, "");

    let r = m2.put_manifest(c.addr(2), repo, "1.0", "");
    let detail = refused(&r, "tag_in_flight", "C's push of M2 while B's M1 is in flight");
    assert_eq!(detail["pinned_digest"], m1.digest(), "{}", r.text());
    assert_eq!(detail["state"], "claimed", "{}", r.text());
    assert_eq!(upstream_digest(&c.registry, repo, "1.0"), None, "nothing landed yet");

    c.relay.release(1);
    created(&b.join().unwrap(), "B's push of M1");
    assert_eq!(upstream_digest(&c.registry, repo, "1.0"), Some(m1.digest()));
    for i in 0..3 {
        let r = m2.put_manifest(c.addr(i), repo, "1.0", "");
        let detail = refused(&r, "tag_immutable", &format!("M2 through replica {i}"));
        assert_eq!(detail["pinned_digest"], m1.digest(), "replica {i}");
        assert_eq!(detail["state"], "pinned", "replica {i}");
    }
    assert_eq!(upstream_digest(&c.registry, repo, "1.0"), Some(m1.digest()));
}

/// A signed image and its signature tag, with signature 1 alone (S1) and signatures 1
/// and 2 (S2, an append to S1), their blobs pushed to the registry.
struct Signed {
    repo: &'static str,
    tag: String,
    s1: Vec<u8>,
    s2: Vec<u8>,
}

impl Signed {
    /// The image is pushed through `tagpin` (an immutable tag) and S1 pinned on its
    /// signature tag (append-only by the built-in rules).
    fn pinned(registry: &Registry, tagpin: SocketAddr, seed: u64) -> Self {
        let repo = "signed/app";
        let img = Image::random(seed, 64);
        img.push_blobs(registry.addr, repo, "");
        created(&img.put_manifest(tagpin, repo, "v1", ""), "the signed image");
        let sigs = [1, 2].map(|n| Signature::new(&img.digest(), n));
        let over = |n: usize| {
            let layers: Vec<Value> = sigs[..n].iter().map(Signature::layer).collect();
            let (config, manifest) = signature_manifest(&layers);
            push_signature_blobs(registry.addr, repo, &config, &sigs[..n].iter().collect::<Vec<_>>());
            to_bytes(&manifest)
        };
        let s = Self {
            repo,
            tag: signature_tag(&img.digest()),
            s1: over(1),
            s2: over(2),
        };
        created(&put(tagpin, repo, &s.tag, &s.s1), "S1 on the signature tag");
        assert_eq!(s.upstream(registry), Some(s.s1.clone()));
        s
    }

    fn path(&self) -> String {
        manifest_path(self.repo, &self.tag)
    }

    fn upstream(&self, registry: &Registry) -> Option<Vec<u8>> {
        upstream_manifest(registry, self.repo, &self.tag)
    }
}

/// Review item 1b: The signature tag is pinned to S1; an identical re-push of S1 through
/// replica 1 is held on its way to the registry. The append S2 through replica 2 is refused
/// (`tag_in_flight`) while it is in flight; once S1's re-push has landed, S2 is accepted
/// and the registry holds both signatures.
///
/// The old code forwarded identical re-pushes without a record: S2 was accepted while
/// S1 was in flight, then S1 landed and the registry rolled back to S1, signature 2 gone.
#[test]
fn an_identical_repush_in_flight_on_one_replica_holds_back_an_append_on_another() {
    let c = Cluster::start("records_1b");
    let s = Signed::pinned(&c.registry, c.addr(0), 1302);
    c.relay.hold("PUT", &s.path(), 1);
    let again = put_in_background(c.addr(0), s.repo, &s.tag, &s.s1);
    c.relay.wait_held(1);

    let r = put(c.addr(1), s.repo, &s.tag, &s.s2);
    let detail = refused(&r, "tag_in_flight", "the append S2 while S1's re-push is in flight");
    assert_eq!(detail["pinned_digest"], image::sha256(&s.s1), "{}", r.text());
    assert_eq!(s.upstream(&c.registry), Some(s.s1.clone()));

    c.relay.release(0);
    created(&again.join().unwrap(), "S1's identical re-push");
    assert_eq!(s.upstream(&c.registry), Some(s.s1.clone()));
    created(&put(c.addr(1), s.repo, &s.tag, &s.s2), "the append S2 once S1 landed");
    assert_eq!(s.upstream(&c.registry), Some(s.s2.clone()), "both signatures");
    created(&put(c.addr(2), s.repo, &s.tag, &s.s2), "S2 again, on replica 3");
}

/// Review item 1c: The shape of 1b on one tagpin (sled): the identical re-push of S1 is
/// held by the relay until tagpin's upstream header timeout answers the client 504, which
/// ends the request and its in-process tag lock, while the write itself is still on its
/// way. The append S2 must be refused (`tag_in_flight`) until that write has landed.
/// Afterwards the timed-out write's record may stay until the in-doubt horizon (tagpin
/// never saw its answer); whatever tagpin then decides on S2 must be what the registry
/// holds.
///
/// The old code kept no record of the re-push: after the 504 nothing held the tag, S2
/// was accepted, and the late S1 rolled the registry back, signature 2 gone.
#[test]
fn an_identical_repush_cut_off_by_a_timeout_holds_back_an_append_until_it_lands() {
    let registry = Registry::start();
    let relay = HoldRelay::start(registry.addr);
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start_on_data_dir(&relay.url(), data.path(), &["--upstream-header-timeout-ms", "1500"]);
    let s = Signed::pinned(&registry, tagpin.addr, 1303);
    relay.hold("PUT", &s.path(), 1);
    let r = put(tagpin.addr, s.repo, &s.tag, &s.s1);
    assert_eq!(r.status, 504, "the held re-push times out: {}", r.text());
    assert_eq!(relay.held(), 1, "the re-push is still on its way");

    let r = put(tagpin.addr, s.repo, &s.tag, &s.s2);
    let detail = refused(&r, "tag_in_flight", "the append S2 after S1's re-push timed out");
    assert_eq!(detail["pinned_digest"], image::sha256(&s.s1), "{}", r.text());
    assert_eq!(s.upstream(&registry), Some(s.s1.clone()));

    relay.release(0);
    assert_eq!(relay.wait_answered(0), 201, "the late re-push lands");
    assert_eq!(s.upstream(&registry), Some(s.s1.clone()));
    let r = put(tagpin.addr, s.repo, &s.tag, &s.s2);
    match r.status {
        201 => assert_eq!(s.upstream(&registry), Some(s.s2.clone())),
        _ => {
            refused(&r, "tag_in_flight", "S2 while the lost answer is in doubt");
            assert_eq!(s.upstream(&registry), Some(s.s1.clone()));
        }
    }
}

/// A `--config` file, rewritten in place for reloads.
struct ConfigFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl ConfigFile {
    fn new(text: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tagpin.toml");
        std::fs::write(&path, text).unwrap();
        Self { _dir: dir, path }
    }

    fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// Rewrite the file, SIGHUP `tagpin` and wait for its `policy_reloaded` event.
    fn reload(&self, tagpin: &Tagpin, text: &str) {
        let seen = tagpin.audit_events().len();
        std::fs::write(&self.path, text).unwrap();
        let status = Command::new("kill")
            .args(["-HUP", &tagpin.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -HUP failed");
        for _ in 0..500 {
            if tagpin
                .audit_events()
                .iter()
                .skip(seen)
                .any(|e| e["action"] == "policy_reloaded")
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no policy_reloaded after SIGHUP:\n{}", tagpin.logs().join("\n"));
    }
}

/// A rule for `app:v1` alone, in `mode`.
fn v1_rule(mode: &str) -> String {
    format!("[[rules]]\nrepositories = [\"app\"]\ntags = [\"v1\"]\nmode = \"{mode}\"\n")
}

/// `PUT /v2/<repo>/manifests/<digest>?tag=<tag>` (distribution-spec end-7b), which
/// distribution 2.8 accepts (201) while ignoring the `tag`.
fn put_with_tag_parameter(addr: SocketAddr, repo: &str, img: &Image, tag: &str) -> Resp {
    let r = request(
        addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{}?tag={tag}", img.digest()),
        &[("Content-Type", image::OCI_MANIFEST)],
        &img.manifest,
    );
    created(&r, &format!("{}?tag={tag}", img.digest()));
    assert_eq!(r.header("docker-content-digest"), Some(img.digest().as_str()));
    r
}

/// Three images over the same blobs (pushed to the registry): m1, m2, m3.
fn images(registry: &Registry, repo: &str, seed: u64) -> [Image; 3] {
    let m1 = Image::random(seed, 256);
    m1.push_blobs(registry.addr, repo, "");
    [m1.variant("m1"), m1.variant("m2"), m1.variant("m3")]
}

/// Review item 2a: `app:v1` is audited and pinned to m1. m2 pushed by digest with
/// `?tag=v1`: the registry ignores the parameter, so v1 stays at m1 and the answer warns
/// that v1 was not pinned (its record is withdrawn). A reload makes v1 immutable; then m3
/// and m2 pushed by tag are both refused, and the registry still holds m1.
///
/// The old code kept the audited move's claim of the ignored `?tag=`, and a later push
/// of m2 by tag "completed" it under the immutable rule: 201, and v1 moved to m2.
#[test]
fn an_ignored_tag_parameter_under_audit_leaves_no_move_for_after_the_reload() {
    let registry = Registry::start();
    let config = ConfigFile::new(&v1_rule("audit"));
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(&registry.url(), data.path(), &["--config", config.arg()]);
    let [m1, m2, m3] = images(&registry, "app", 1304);
    created(&m1.put_manifest(tagpin.addr, "app", "v1", ""), "m1 to v1");

    let r = put_with_tag_parameter(tagpin.addr, "app", &m2, "v1");
    assert_eq!(
        upstream_digest(&registry, "app", "v1"),
        Some(m1.digest()),
        "?tag= ignored"
    );
    let warnings: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("warning"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(
        warnings.iter().any(|w| w.contains(" v1 ") && w.contains("not pinned")),
        "a warning that v1 was not applied: {warnings:?}"
    );

    config.reload(&tagpin, &v1_rule("immutable"));
    let r = m3.put_manifest(tagpin.addr, "app", "v1", "");
    assert_eq!(r.status, 409, "m3 to the now immutable v1: {}", r.text());
    let r = m2.put_manifest(tagpin.addr, "app", "v1", "");
    let detail = refused(&r, "tag_immutable", "m2 by tag to the now immutable v1");
    assert_eq!(detail["pinned_digest"], m1.digest());
    assert_eq!(upstream_digest(&registry, "app", "v1"), Some(m1.digest()));
}

/// Review item 2b: v1 is immutable, pinned to m1, and an operator releases it. m2 pushed by
/// digest with `?tag=v1` is accepted by the registry, which ignores the parameter; then the
/// release is cancelled. m2 pushed by tag is refused, and the registry still holds m1.
///
/// The old code kept the released move's claim of the ignored `?tag=`, and completed
/// it with the push by tag after the release was cancelled: 201, v1 moved to m2.
#[test]
fn an_ignored_tag_parameter_under_a_cancelled_release_leaves_no_move() {
    const TOKEN: &str = "records-test-token-9c2e71d04b";
    let registry = Registry::start();
    let secrets = tempfile::tempdir().unwrap();
    let tokens = secrets.path().join("tokens");
    std::fs::write(&tokens, format!("alice:{TOKEN}\n")).unwrap();
    let data = tempfile::tempdir().unwrap();
    let flags = [
        "--admin-listen",
        "127.0.0.1:0",
        "--admin-token-file",
        tokens.to_str().unwrap(),
    ];
    let tagpin = Tagpin::start(&registry.url(), data.path(), &flags);
    let admin = tagpin.admin_addr();
    let bearer = format!("Bearer {TOKEN}");
    let [m1, m2, _] = images(&registry, "app", 1305);
    created(&m1.put_manifest(tagpin.addr, "app", "v1", ""), "m1 to v1");

    let r = request(
        admin,
        "POST",
        "/admin/v1/releases",
        &[("Authorization", &bearer), ("Content-Type", "application/json")],
        br#"{"repository":"app","tag":"v1","reason":"replace a broken build","ttl_seconds":900}"#,
    );
    created(&r, "the release");
    put_with_tag_parameter(tagpin.addr, "app", &m2, "v1");
    assert_eq!(
        upstream_digest(&registry, "app", "v1"),
        Some(m1.digest()),
        "?tag= ignored"
    );
    let r = request(
        admin,
        "DELETE",
        "/admin/v1/releases?repository=app&tag=v1",
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(r.status, 200, "cancelling the release: {}", r.text());

    let r = m2.put_manifest(tagpin.addr, "app", "v1", "");
    let detail = refused(&r, "tag_immutable", "m2 by tag after the release was cancelled");
    assert_eq!(detail["pinned_digest"], m1.digest());
    assert_eq!(upstream_digest(&registry, "app", "v1"), Some(m1.digest()));
}

/// Review item 2c: An ignored `?tag=v2` of m1 on a free tag leaves v2 free: another digest
/// pushed by tag to v2 is accepted and pinned.
///
/// The old code kept the ignored `?tag=`'s claim on v2, refusing every other digest
/// (409) until someone pushed m1 by tag.
#[test]
fn an_ignored_tag_parameter_on_a_free_tag_leaves_it_free() {
    let Stack {
        registry,
        tagpin,
        data: _data,
    } = Stack::start(&[]);
    let [m4, m5, _] = images(&registry, "app", 1306);
    put_with_tag_parameter(tagpin.addr, "app", &m4, "v2");
    assert_eq!(upstream_digest(&registry, "app", "v2"), None, "?tag= ignored");
    created(
        &m5.put_manifest(tagpin.addr, "app", "v2", ""),
        "m5 by tag to the free v2",
    );
    assert_eq!(upstream_digest(&registry, "app", "v2"), Some(m5.digest()));
    let r = m4.put_manifest(tagpin.addr, "app", "v2", "");
    let detail = refused(&r, "tag_immutable", "m4 by tag to v2, pinned to m5");
    assert_eq!(detail["pinned_digest"], m5.digest());
    assert_eq!(upstream_digest(&registry, "app", "v2"), Some(m5.digest()));
}
