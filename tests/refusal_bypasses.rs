//! Ways around the guarantees for clients the upstream turns away, each found against a
//! version that had them and each failing there: a refusal told apart from a forwarded
//! write's answer, a user named on no one's word, references hidden from the record, a
//! push-only credential blinding a check, request heads piling up past the connection
//! bound. The upstream is Debian's `docker-registry` with htpasswd auth; whether content
//! survived is asked of it directly.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::admin::AdminSecrets;
use common::push_only::{PushOnlyRelay, BOB, BOB_PASSWORD};
use common::*;

const USER: &str = "alice";
const PASSWORD: &str = "wonderland-7";

fn authenticating_registry() -> Registry {
    Registry::start_with(RegistryOptions {
        basic_auth: Some((USER.into(), PASSWORD.into())),
        ..Default::default()
    })
}

fn alice() -> String {
    basic(USER, PASSWORD)
}

/// tagpin's own upstream credentials (alice's), as a file for `--upstream-credentials-file`.
fn own_credentials(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("upstream-credentials");
    std::fs::write(&path, format!("{USER}:{PASSWORD}\n")).unwrap();
    path.to_str().unwrap().to_owned()
}

fn put(addr: SocketAddr, repo: &str, reference: &str, manifest: &[u8], auth: Option<&str>) -> Resp {
    let mut headers = vec![("Content-Type", image::OCI_MANIFEST)];
    if let Some(a) = auth {
        headers.push(("Authorization", a));
    }
    request(
        addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &headers,
        manifest,
    )
}

fn with_auth(auth: Option<&str>) -> Vec<(&str, &str)> {
    auth.map(|a| vec![("Authorization", a)]).unwrap_or_default()
}

/// Whether the upstream still holds `digest` as a blob of `repo` (asked directly).
fn blob_present(registry: &Registry, repo: &str, digest: &str) -> bool {
    let r = request(
        registry.addr,
        "HEAD",
        &format!("/v2/{repo}/blobs/{digest}"),
        &[("Authorization", &registry.auth_header())],
        b"",
    );
    r.status == 200
}

/// What an answer looks like from outside, without what differs on every request (the
/// request id, `Date`): status, the sorted header names and values, and the body.
fn shape(r: &Resp) -> String {
    let mut headers: Vec<String> = r
        .headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("date") && !k.eq_ignore_ascii_case("x-request-id"))
        .map(|(k, v)| format!("{}: {v}", k.to_ascii_lowercase()))
        .collect();
    headers.sort();
    let mut body = r.text();
    if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&body) {
        if let Some(errors) = v["errors"].as_array_mut() {
            for e in errors {
                if let Some(d) = e["detail"].as_object_mut() {
                    d.remove("request_id");
                }
            }
        }
        body = v.to_string();
    }
    format!("{} | {} | {body}", r.status, headers.join(" ; "))
}

/// Pre-auth oracle. With tagpin's own credentials configured (the setup that
/// keeps a push-only credential from blinding adoption), a write to a free protected tag or an unpinned digest is
/// forwarded and answered by the upstream, while the same write to a pinned tag or digest
/// is answered by tagpin's refusal check (`refused::answer`, `challenge::for_write`).
/// The two 401s differ (body, length), so a client with no credentials at all learns
/// which tags exist and are pinned to something else, and which digests are pinned.
#[test]
fn anonymous_writes_tell_pinned_tags_and_digests_from_free_ones_by_the_401_they_get() {
    let registry = authenticating_registry();
    let files = tempfile::tempdir().unwrap();
    let creds = own_credentials(&files);
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(&registry.url(), data.path(), &["--upstream-credentials-file", &creds]);
    let (a, b) = (Image::random(16_01, 512), Image::random(16_02, 512));
    a.push_blobs(registry.addr, "app", &alice());
    b.push_blobs(registry.addr, "app", &alice());
    assert_eq!(put(tagpin.addr, "app", "v1", &a.manifest, Some(&alice())).status, 201);
    // b is at the upstream too, by digest only: a manifest nobody pinned.
    assert_eq!(
        put(tagpin.addr, "app", &b.digest(), &b.manifest, Some(&alice())).status,
        201
    );

    let mut leaks = Vec::new();
    for auth in [None, Some(basic(USER, "guessed"))] {
        let auth = auth.as_deref();
        let pinned = put(tagpin.addr, "app", "v1", &b.manifest, auth);
        let free = put(tagpin.addr, "app", "never-pushed", &b.manifest, auth);
        assert_eq!((pinned.status, free.status), (401, 401), "{auth:?}");
        if shape(&pinned) != shape(&free) {
            leaks.push(format!(
                "push {auth:?}\n  pinned tag: {}\n  free tag:   {}",
                shape(&pinned),
                shape(&free)
            ));
        }
        let target = |d: &str| format!("/v2/app/manifests/{d}");
        let pinned = request(tagpin.addr, "DELETE", &target(&a.digest()), &with_auth(auth), b"");
        let free = request(tagpin.addr, "DELETE", &target(&b.digest()), &with_auth(auth), b"");
        assert_eq!((pinned.status, free.status), (401, 401), "{auth:?}");
        if shape(&pinned) != shape(&free) {
            leaks.push(format!(
                "delete by digest {auth:?}\n  pinned digest:   {}\n  unpinned digest: {}",
                shape(&pinned),
                shape(&free)
            ));
        }
    }
    assert!(
        leaks.is_empty(),
        "a client the upstream rejects tells pinned from free by the answer:\n{}",
        leaks.join("\n")
    );
}

/// Forged evidence. A release that expires is announced by whichever request
/// first looks at the tag afterwards (`release::report_expired`), and the audit event
/// names that request's claimed user before the upstream has been asked about it: a
/// client with a made-up `Basic alice:guess` gets `release_expired` logged as alice's.
#[test]
fn a_forged_user_is_named_in_the_release_expired_event_its_refused_push_triggers() {
    let registry = authenticating_registry();
    let secrets = AdminSecrets::new();
    let data = tempfile::tempdir().unwrap();
    let flags = secrets.flags();
    let tagpin = Tagpin::start(
        &registry.url(),
        data.path(),
        &flags.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let (a, b) = (Image::random(16_03, 512), Image::random(16_04, 512));
    a.push_blobs(registry.addr, "svc", &alice());
    b.push_blobs(registry.addr, "svc", &alice());
    assert_eq!(put(tagpin.addr, "svc", "1.0", &a.manifest, Some(&alice())).status, 201);
    let admin = tagpin.admin_addr();
    let out = secrets.cli(
        admin,
        &["release", "svc:1.0", "--reason", "rebuild", "--ttl", "1s", "--json"],
    );
    assert_eq!(out.code, 0, "release: {} {}", out.stdout, out.stderr);
    // Past the release's one-second TTL (expiry is whole seconds; a bounded wait).
    std::thread::sleep(Duration::from_millis(2500));

    const FORGED_USER: &str = "mallory-as-alice";
    let forged = basic(FORGED_USER, "guessed");
    let moved = put(tagpin.addr, "svc", "1.0", &b.manifest, Some(&forged));
    assert_eq!(moved.status, 401, "{}", moved.text());
    assert_eq!(upstream_digest(&registry, "svc", "1.0"), Some(a.digest()));
    // Events are written around the response: give them a moment (bounded).
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !tagpin.audit_events().iter().any(|e| e["action"] == "release_expired") {
        std::thread::sleep(Duration::from_millis(50));
    }
    let named: Vec<_> = tagpin
        .audit_events()
        .into_iter()
        .filter(|e| e["user"] == FORGED_USER)
        .collect();
    assert!(
        named.is_empty(),
        "a user the upstream never accepted is named in the audit log: {named:?}"
    );
}

/// A manifest with the member `filler` between its config and its layers: an unknown
/// field Go's `encoding/json` skips, and a key serde_json cannot read.
fn manifest_with(img: &Image, filler: &[u8]) -> Vec<u8> {
    let mut m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"#,
        image::OCI_MANIFEST,
        image::sha256(&img.config),
        img.config.len()
    )
    .into_bytes();
    m.extend_from_slice(filler);
    m.extend_from_slice(
        format!(
            r#","layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
            image::sha256(&img.layer),
            img.layer.len()
        )
        .as_bytes(),
    );
    m
}

/// Parser difference. `references` reads a manifest tagpin did not check (a
/// tag that predates tagpin, adopted; an index's child pushed by digest) with serde_json
/// and keeps only what it read before an error. Go reads an object key with invalid
/// UTF-8 or a lone surrogate escape (`"\ud800"`) as one with U+FFFD, an unknown field it
/// skips, and distribution accepts the manifest; serde_json cannot read such a key as a
/// `String` and stops. Layers listed after it are not recorded, so deleting one through
/// tagpin is forwarded and the pinned tag can no longer be pulled. (Values serde_json
/// ignores are fine: `1e400`, a lone surrogate or invalid UTF-8 in a skipped value, or
/// 200 levels of nesting there were all protected when tried.)
#[test]
fn a_key_serde_json_cannot_read_hides_the_layers_after_it_and_a_pinned_layer_is_deleted() {
    let registry = authenticating_registry();
    let data = tempfile::tempdir().unwrap();
    let fillers: Vec<(&str, Vec<u8>)> = vec![
        ("a key with invalid UTF-8", b"\"\xff\xfe\":1".to_vec()),
        ("a key with a lone surrogate escape", br#""\ud800":1"#.to_vec()),
    ];
    // The tags predate tagpin: pushed straight to the upstream, which accepts them.
    let mut cases = Vec::new();
    for (i, (what, filler)) in fillers.iter().enumerate() {
        let repo = format!("legacy{i}");
        let img = Image::random(16_10 + i as u64, 512);
        img.push_blobs(registry.addr, &repo, &alice());
        let manifest = manifest_with(&img, filler);
        let pushed = put(registry.addr, &repo, "stable", &manifest, Some(&alice()));
        assert_eq!(pushed.status, 201, "{what}: the upstream refused it: {}", pushed.text());
        cases.push((*what, repo, image::sha256(&img.layer)));
    }
    let tagpin = Tagpin::start(&registry.url(), data.path(), &[]);
    let mut deleted = Vec::new();
    for (what, repo, layer) in &cases {
        let r = request(
            tagpin.addr,
            "DELETE",
            &format!("/v2/{repo}/blobs/{layer}"),
            &[("Authorization", &alice())],
            b"",
        );
        if !blob_present(&registry, repo, layer) {
            deleted.push(format!("{what}: DELETE answered {} and the layer is gone", r.status));
        }
    }
    assert!(
        deleted.is_empty(),
        "layers of pinned (adopted) tags were deleted through tagpin:\n{}",
        deleted.join("\n")
    );
}

/// Checks a push-only credential can blind. Adoption now asks with tagpin's
/// own credentials, but the references of the adopted pin are still learned with the
/// client's (`refs::protect_repository`): bob's reads get 404, which `protect` takes as
/// "the pinned manifest is gone, nothing to protect", so bob's delete of the layer of a
/// tag that predates tagpin is forwarded and the pinned image is broken.
#[test]
fn a_push_only_credential_blinds_the_reference_check_and_deletes_a_pinned_layer() {
    let registry = authenticating_registry();
    let relay = PushOnlyRelay::start(registry.addr, &alice());
    let img = Image::random(16_20, 512);
    img.push_blobs(registry.addr, "legacy", &alice());
    assert_eq!(
        img.put_manifest(registry.addr, "legacy", "stable", &alice()).status,
        201
    );
    let files = tempfile::tempdir().unwrap();
    let creds = own_credentials(&files);
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(
        &format!("http://{}", relay.addr),
        data.path(),
        &["--upstream-credentials-file", &creds],
    );
    let layer = image::sha256(&img.layer);
    let bob = basic(BOB, BOB_PASSWORD);
    let r = request(
        tagpin.addr,
        "DELETE",
        &format!("/v2/legacy/blobs/{layer}"),
        &[("Authorization", &bob)],
        b"",
    );
    assert_eq!(upstream_digest(&registry, "legacy", "stable"), Some(img.digest()));
    assert!(
        blob_present(&registry, "legacy", &layer),
        "bob's DELETE of the layer of the pinned tag legacy:stable was forwarded ({}: {})",
        r.status,
        r.text()
    );
    assert_eq!(r.status, 409, "{}", r.text());
}

/// Connection bounds. `max_connections x max_header_bytes` is documented
/// as the bound on request heads in memory, but a request that reaches a decision runs
/// as a detached task that keeps its request head (`Parts`, whose header values share
/// the bytes hyper read) after the client has gone and its connection slot is free. A
/// tag delete waits without limit for the tag's lock (`locks.push`), which a first
/// delete holds while the upstream is slow to answer its refusal check; any client, no
/// credentials needed, can queue heads of 60 KiB behind it one connection at a time, and
/// they pile up far beyond the connection limit.
#[test]
fn heads_of_requests_whose_clients_left_pile_up_in_detached_tasks_beyond_the_connection_bound() {
    const SENT: usize = 1500;
    const FILL: usize = 60 * 1024;
    const MAX_CONNECTIONS: u64 = 8;
    // The upstream answers `GET /v2/` and nothing else (its checks hang).
    let fake = fake::FakeUpstream::start(|_, target| match target {
        "/v2/" => fake::Action::status(200),
        _ => fake::Action::Hang,
    });
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(
        &fake.url(),
        data.path(),
        &[
            "--workers",
            "1",
            "--max-connections",
            "8",
            "--upstream-check-timeout-ms",
            "60000",
        ],
    );
    assert_eq!(request(tagpin.addr, "GET", "/healthz", &[], b"").status, 200);
    let baseline = tagpin.rss_kib();
    let fill = "a".repeat(FILL);
    let head = format!("DELETE /v2/app/manifests/v1 HTTP/1.1\r\nHost: tagpin\r\nX-Fill: {fill}\r\n\r\n");
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..SENT {
        assert!(Instant::now() < deadline, "sending took too long");
        let mut s = TcpStream::connect(tagpin.addr).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = s.write_all(head.as_bytes());
        // The client leaves at once: its slot is free again as soon as tagpin sees it.
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    // Give tagpin a moment to have read what was sent (bounded), then measure.
    let bound = MAX_CONNECTIONS * 64 * 2 + 16 * 1024;
    let mut grown = 0;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(100));
        grown = grown.max(tagpin.rss_kib().saturating_sub(baseline));
    }
    assert!(
        grown <= bound,
        "{SENT} heads of {FILL} bytes from clients that left grew RSS by {grown} KiB; the \
         connection bound ({MAX_CONNECTIONS} x 64 KiB) allows {bound} KiB"
    );
}

/// A refusal and its evidence on a registry open for reads and closed for writes (public
/// repositories; a front that asks credentials only for `PUT`/`POST`/`DELETE`): the
/// refusal check is a read (`HEAD` of the pinned manifest, tags/list, `GET /v2/`), and a
/// read succeeds whatever `Authorization` says. So a client whose push the upstream
/// would refuse with 401 is shown the refusal with its details, and its made-up user is
/// kept in the tag's refused attempts and named in the audit log as confirmed.
#[test]
fn on_a_registry_open_for_reads_a_made_up_user_is_never_named_in_the_evidence() {
    let pinned = format!("sha256:{}", "a".repeat(64));
    let head_digest = pinned.clone();
    let fake = fake::FakeUpstream::start(move |method, target| match (method, target) {
        ("GET", "/v2/") => fake::Action::status(200),
        ("HEAD", t) if t.starts_with("/v2/app/manifests/") => fake::Action::Respond {
            status: 200,
            headers: vec![
                ("Docker-Content-Digest".into(), head_digest.clone()),
                ("Content-Type".into(), image::OCI_MANIFEST.into()),
                ("Content-Length".into(), "300".into()),
            ],
            body: vec![],
        },
        ("GET", t) if t.starts_with("/v2/app/tags/list") => fake::Action::Respond {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: br#"{"name":"app","tags":["v1"]}"#.to_vec(),
        },
        // Writes need credentials, and no made-up ones pass.
        _ => fake::Action::with_header(401, "WWW-Authenticate", "Basic realm=\"writes\""),
    });
    let secrets = AdminSecrets::new();
    let data = tempfile::tempdir().unwrap();
    let flags = secrets.flags();
    let tagpin = Tagpin::start(
        &fake.url(),
        data.path(),
        &flags.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    const MADE_UP: &str = "alice-made-up";
    let forged = basic(MADE_UP, "guessed");
    let other = Image::random(16_30, 64);
    let r = put(tagpin.addr, "app", "v1", &other.manifest, Some(&forged));
    // The upstream itself answers every write 401 (the script's last arm), this one
    // included: nothing but reads ever succeeds there.
    assert!(
        fake.requests().iter().all(|q| q.method != "PUT"),
        "nothing was forwarded"
    );
    let admin = tagpin.admin_addr();
    let pin = secrets.pin(admin, "app:v1").expect("v1 was adopted");
    let kept: Vec<_> = pin["refused"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["user"] == MADE_UP)
        .cloned()
        .collect();
    let named: Vec<_> = tagpin
        .audit_events()
        .into_iter()
        .filter(|e| e["user"] == MADE_UP)
        .map(|e| e["action"].clone())
        .collect();
    // The refusal itself may be shown: on this upstream anyone can read the pin with a
    // HEAD of the tag. What must not happen is evidence naming a user nobody vouched for.
    assert!(
        kept.is_empty() && named.is_empty(),
        "a client the upstream would not let push got {} ({}), its made-up user was kept as \
         evidence {kept:?} and named in audit events {named:?}",
        r.status,
        r.text()
    );
}

/// The pre-auth oracle, without tagpin's own credentials: a client with no credentials pushing
/// the pinned manifest again is forwarded (an identical push decides nothing) and gets
/// the upstream's 401, while any other manifest gets tagpin's refusal-check 401. The two
/// differ, so such a client can confirm a guessed digest of a pinned tag.
#[test]
fn an_anonymous_push_confirms_a_guessed_pinned_digest_by_the_401_it_gets() {
    let registry = authenticating_registry();
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(&registry.url(), data.path(), &[]);
    let (a, b) = (Image::random(16_40, 512), Image::random(16_41, 512));
    a.push_blobs(registry.addr, "app", &alice());
    b.push_blobs(registry.addr, "app", &alice());
    assert_eq!(put(tagpin.addr, "app", "v1", &a.manifest, Some(&alice())).status, 201);
    let right = put(tagpin.addr, "app", "v1", &a.manifest, None);
    let wrong = put(tagpin.addr, "app", "v1", &b.manifest, None);
    assert_eq!((right.status, wrong.status), (401, 401));
    assert_eq!(
        shape(&right),
        shape(&wrong),
        "an anonymous push of the pinned digest is answered unlike one of another digest"
    );
}
