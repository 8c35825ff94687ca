//! Transparency: the same scripted walk through the Distribution API (the areas of the
//! OCI conformance suite: pull, push, content discovery, content management) is run
//! against a fresh upstream directly and against a fresh upstream through tagpin, and
//! every step must be observed identically. With every tag mutable (`--exclude '*'`)
//! nothing may differ; with protection on, only the steps that move or delete a tag may.

mod common;

use std::net::SocketAddr;

use common::image::{push_blob, sha256, ACCEPT_ALL, OCI_MANIFEST};
use common::*;

/// One step's observable outcome, with per-run noise (upload ids, hosts, dates) removed.
#[derive(Debug, PartialEq)]
struct Seen {
    step: &'static str,
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

/// Headers a client acts on; `Date` and the like are noise.
const COMPARED: [&str; 8] = [
    "content-type",
    "docker-content-digest",
    "content-length",
    "range",
    "location",
    "link",
    "www-authenticate",
    "content-range",
];

fn observe(step: &'static str, r: &Resp) -> Seen {
    let mut headers = Vec::new();
    for name in COMPARED {
        if let Some(v) = r.header(name) {
            headers.push((name.to_owned(), normalize_location(v)));
        }
    }
    headers.push((
        "docker-upload-uuid?".into(),
        r.header("docker-upload-uuid").is_some().to_string(),
    ));
    let body = if r.body.starts_with(b"{\"errors\"") || r.body.starts_with(b"{\n    \"errors\"") {
        // Error bodies: the codes must agree; messages (and so lengths) may be worded differently.
        headers.retain(|(k, _)| k != "content-length");
        let v = r.json();
        let codes: Vec<String> = v["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["code"].as_str().unwrap_or("").to_owned())
            .collect();
        format!("errors {codes:?}")
    } else {
        sha256(&r.body)
    };
    Seen {
        step,
        status: r.status,
        headers,
        body,
    }
}

/// Strip the origin and the per-run upload id and state from URLs.
fn normalize_location(v: &str) -> String {
    let path = match v.find("/v2/") {
        Some(i) => &v[i..],
        None => v,
    };
    match path.find("/uploads/") {
        Some(i) => format!("{}/uploads/<id>", &path[..i]),
        None => path.to_owned(),
    }
}

fn path_of(location: &str) -> String {
    match location.find("/v2/") {
        Some(i) => location[i..].to_owned(),
        None => location.to_owned(),
    }
}

fn join(target: &str, query: &str) -> String {
    format!("{target}{}{query}", if target.contains('?') { '&' } else { '?' })
}

/// Steps that move or delete a tag: the only ones allowed to differ under protection.
const TAG_MOVING_STEPS: [&str; 4] = [
    "retag v1 to the variant",
    "delete manifest by tag",
    "delete tagged manifest by digest",
    // The blob is a layer of a pinned manifest: deleting it would leave the pinned tag
    // unpullable, so it is refused like a move.
    "delete blob",
];

fn script(addr: SocketAddr) -> Vec<Seen> {
    let img = Image::random(4242, 64 * 1024);
    let variant = img.variant("variant");
    let (config, layer) = (img.config.clone(), img.layer.clone());
    let (cd, ld) = (sha256(&config), sha256(&layer));
    let unknown = format!("sha256:{}", "0".repeat(64));
    let mut seen = Vec::new();
    let mut step = |name: &'static str, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]| {
        let r = request(addr, method, target, headers, body);
        seen.push(observe(name, &r));
        r
    };

    step("base GET", "GET", "/v2/", &[], b"");
    step("base HEAD", "HEAD", "/v2/", &[], b"");
    step(
        "unknown manifest",
        "GET",
        "/v2/t/manifests/nope",
        &[("Accept", ACCEPT_ALL)],
        b"",
    );
    step("unknown blob HEAD", "HEAD", &format!("/v2/t/blobs/{unknown}"), &[], b"");
    step("unknown blob GET", "GET", &format!("/v2/t/blobs/{unknown}"), &[], b"");

    // Push: monolithic (POST then PUT).
    let start = step("upload start", "POST", "/v2/t/blobs/uploads/", &[], b"");
    let loc = path_of(start.header("location").unwrap());
    step("upload status", "GET", &loc, &[], b"");
    step(
        "monolithic PUT",
        "PUT",
        &join(&loc, &format!("digest={cd}")),
        &[("Content-Type", "application/octet-stream")],
        &config,
    );

    // Push: chunked (POST, PATCH, PATCH, PUT).
    let start = step("chunked start", "POST", "/v2/t/blobs/uploads/", &[], b"");
    let loc = path_of(start.header("location").unwrap());
    let half = layer.len() / 2;
    let r1 = format!("0-{}", half - 1);
    let p1 = step(
        "chunk 1",
        "PATCH",
        &loc,
        &[("Content-Type", "application/octet-stream"), ("Content-Range", &r1)],
        &layer[..half],
    );
    let loc = path_of(p1.header("location").unwrap());
    let r2 = format!("{half}-{}", layer.len() - 1);
    let p2 = step(
        "chunk 2",
        "PATCH",
        &loc,
        &[("Content-Type", "application/octet-stream"), ("Content-Range", &r2)],
        &layer[half..],
    );
    let loc = path_of(p2.header("location").unwrap());
    step("chunked close", "PUT", &join(&loc, &format!("digest={ld}")), &[], b"");

    let start = step("bad chunk start", "POST", "/v2/t/blobs/uploads/", &[], b"");
    let loc = path_of(start.header("location").unwrap());
    step(
        "first chunk",
        "PATCH",
        &loc,
        &[("Content-Type", "application/octet-stream"), ("Content-Range", "0-3")],
        b"abcd",
    );
    step(
        "out-of-order chunk",
        "PATCH",
        &loc,
        &[("Content-Type", "application/octet-stream"), ("Content-Range", "9-12")],
        b"oops",
    );

    // Pull the blobs.
    step("blob GET", "GET", &format!("/v2/t/blobs/{ld}"), &[], b"");
    step("blob HEAD", "HEAD", &format!("/v2/t/blobs/{ld}"), &[], b"");
    step(
        "blob range",
        "GET",
        &format!("/v2/t/blobs/{ld}"),
        &[("Range", "bytes=10-99")],
        b"",
    );

    // Single-POST monolithic upload and a wrong digest.
    step(
        "POST with digest",
        "POST",
        &format!("/v2/t/blobs/uploads/?digest={cd}"),
        &[("Content-Type", "application/octet-stream")],
        &config,
    );
    let start = step("bad digest start", "POST", "/v2/t/blobs/uploads/", &[], b"");
    let loc = path_of(start.header("location").unwrap());
    step(
        "bad digest PUT",
        "PUT",
        &join(&loc, &format!("digest={unknown}")),
        &[("Content-Type", "application/octet-stream")],
        b"xyz",
    );

    // Cross-repository mount, and a mount of an unknown blob.
    step(
        "mount",
        "POST",
        &format!("/v2/u/blobs/uploads/?mount={ld}&from=t"),
        &[],
        b"",
    );
    step(
        "mount config",
        "POST",
        &format!("/v2/u/blobs/uploads/?mount={cd}&from=t"),
        &[],
        b"",
    );
    step(
        "mount unknown",
        "POST",
        &format!("/v2/u/blobs/uploads/?mount={unknown}&from=t"),
        &[],
        b"",
    );

    // Manifests.
    let ct = [("Content-Type", OCI_MANIFEST)];
    step("manifest PUT by tag", "PUT", "/v2/t/manifests/v1", &ct, &img.manifest);
    step("manifest re-PUT", "PUT", "/v2/t/manifests/v1", &ct, &img.manifest);
    step(
        "manifest GET by tag",
        "GET",
        "/v2/t/manifests/v1",
        &[("Accept", ACCEPT_ALL)],
        b"",
    );
    step(
        "manifest HEAD by tag",
        "HEAD",
        "/v2/t/manifests/v1",
        &[("Accept", ACCEPT_ALL)],
        b"",
    );
    step(
        "manifest GET by digest",
        "GET",
        &format!("/v2/t/manifests/{}", img.digest()),
        &[("Accept", ACCEPT_ALL)],
        b"",
    );
    step(
        "manifest PUT by digest",
        "PUT",
        &format!("/v2/t/manifests/{}", variant.digest()),
        &ct,
        &variant.manifest,
    );
    step(
        "manifest PUT other tag",
        "PUT",
        "/v2/t/manifests/v2",
        &ct,
        &img.manifest,
    );
    step(
        "manifest in mounted repo",
        "PUT",
        "/v2/u/manifests/m1",
        &ct,
        &img.manifest,
    );
    step(
        "manifest not JSON",
        "PUT",
        "/v2/t/manifests/bad",
        &ct,
        b"this is not json",
    );
    let missing_blob = Image::random(99, 10);
    step(
        "manifest with unknown blob",
        "PUT",
        "/v2/t/manifests/nb",
        &ct,
        &missing_blob.manifest,
    );
    step(
        "manifest digest mismatch",
        "PUT",
        &format!("/v2/t/manifests/{unknown}"),
        &ct,
        &img.manifest,
    );

    // Content discovery.
    step("tags list", "GET", "/v2/t/tags/list", &[], b"");
    step("tags page 1", "GET", "/v2/t/tags/list?n=1", &[], b"");
    step("tags page 2", "GET", "/v2/t/tags/list?n=1&last=v1", &[], b"");
    step("tags unknown repo", "GET", "/v2/nope/tags/list", &[], b"");
    step("catalog", "GET", "/v2/_catalog", &[], b"");
    step("catalog page", "GET", "/v2/_catalog?n=1", &[], b"");
    step(
        "referrers",
        "GET",
        &format!("/v2/t/referrers/{}", img.digest()),
        &[],
        b"",
    );

    // Content management.
    step(
        "retag v1 to the variant",
        "PUT",
        "/v2/t/manifests/v1",
        &ct,
        &variant.manifest,
    );
    step(
        "manifest after retag",
        "GET",
        "/v2/t/manifests/v1",
        &[("Accept", ACCEPT_ALL)],
        b"",
    );
    step(
        "delete untagged manifest by digest",
        "DELETE",
        &format!("/v2/t/manifests/{}", variant.digest()),
        &[],
        b"",
    );
    step(
        "delete tagged manifest by digest",
        "DELETE",
        &format!("/v2/t/manifests/{}", img.digest()),
        &[],
        b"",
    );
    step("delete manifest by tag", "DELETE", "/v2/t/manifests/v2", &[], b"");
    step(
        "delete unknown manifest",
        "DELETE",
        &format!("/v2/t/manifests/{unknown}"),
        &[],
        b"",
    );
    let start = step("cancel start", "POST", "/v2/t/blobs/uploads/", &[], b"");
    let loc = path_of(start.header("location").unwrap());
    step("cancel upload", "DELETE", &loc, &[], b"");
    step("cancelled upload status", "GET", &loc, &[], b"");
    step("delete blob", "DELETE", &format!("/v2/u/blobs/{cd}"), &[], b"");
    step("deleted blob HEAD", "HEAD", &format!("/v2/u/blobs/{cd}"), &[], b"");
    step(
        "delete unknown blob",
        "DELETE",
        &format!("/v2/u/blobs/{unknown}"),
        &[],
        b"",
    );
    seen
}

fn compare(direct: &[Seen], proxied: &[Seen], may_differ: &[&str]) {
    assert_eq!(direct.len(), proxied.len());
    let mut differences = Vec::new();
    for (d, p) in direct.iter().zip(proxied) {
        if d != p && !may_differ.contains(&d.step) {
            differences.push(format!("step {:?}:\n  direct:  {d:?}\n  tagpin:  {p:?}", d.step));
        }
    }
    assert!(
        differences.is_empty(),
        "{} step(s) differ:\n{}",
        differences.len(),
        differences.join("\n")
    );
}

#[test]
fn every_step_matches_the_upstream_when_all_tags_are_mutable() {
    let direct_upstream = Registry::start();
    let direct = script(direct_upstream.addr);

    let upstream = Registry::start();
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(&upstream.url(), data.path(), &["--exclude", "*"]);
    let proxied = script(tagpin.addr);
    compare(&direct, &proxied, &[]);
}

#[test]
fn with_protection_only_tag_moving_steps_differ() {
    let direct_upstream = Registry::start();
    let direct = script(direct_upstream.addr);

    let upstream = Registry::start();
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(&upstream.url(), data.path(), &[]);
    let proxied = script(tagpin.addr);
    // "manifest after retag" reads the tag the refused retag would have moved.
    let mut allowed: Vec<&str> = TAG_MOVING_STEPS.to_vec();
    allowed.push("manifest after retag");
    // Reads the blob the refused delete would have removed.
    allowed.push("deleted blob HEAD");
    compare(&direct, &proxied, &allowed);
    for s in proxied.iter().filter(|s| TAG_MOVING_STEPS.contains(&s.step)) {
        assert_eq!((s.status, s.body.as_str()), (409, "errors [\"DENIED\"]"), "{s:?}");
    }
}

/// CORS preflights of registry web UIs (RFC 9110 9.3.7): the upstream answers them, so
/// tagpin must forward them rather than refuse a method it does not route.
#[test]
fn options_requests_get_the_upstreams_answer() {
    let stack = Stack::start(&[]);
    let img = Image::random(77, 1000);
    img.push_blobs(stack.registry.addr, "opt", "");
    assert_eq!(img.put_manifest(stack.registry.addr, "opt", "v1", "").status, 201);
    let preflight = [
        ("Origin", "http://ui.example"),
        ("Access-Control-Request-Method", "GET"),
    ];
    for target in ["/v2/", "/v2/opt/manifests/v1"] {
        let direct = request(stack.registry.addr, "OPTIONS", target, &preflight, b"");
        let proxied = request(stack.tagpin.addr, "OPTIONS", target, &preflight, b"");
        assert_eq!(proxied.status, direct.status, "OPTIONS {target}: {}", proxied.text());
        assert_eq!(proxied.header("allow"), direct.header("allow"), "OPTIONS {target}");
    }
}

/// An HTTP/1.0 client may omit `Host`: tagpin then cannot name its own origin, and the
/// upstream builds its upload URL from the host tagpin's client sent it, its internal
/// address. The client must get a relative location instead (RFC 7231 7.1.2), never that.
#[test]
fn an_upload_location_without_host_is_relative_not_the_upstreams() {
    let stack = Stack::start(&[]);
    let start = request_without_host(stack.tagpin.addr, "POST", "/v2/nohost/blobs/uploads/", &[], b"");
    assert_eq!(start.status, 202, "{}", start.text());
    let location = start.header("location").expect("upload without Location");
    let internal = stack.registry.addr.to_string();
    assert!(!location.contains(&internal), "leaks the upstream: {location}");
    assert!(location.starts_with("/v2/nohost/blobs/uploads/"), "{location}");
    // The relative location works: resolved against tagpin, the upload completes.
    let blob = b"no host header";
    let put = request(
        stack.tagpin.addr,
        "PUT",
        &join(location, &format!("digest={}", sha256(blob))),
        &[("Content-Type", "application/octet-stream")],
        blob,
    );
    assert_eq!(put.status, 201, "{}", put.text());
}

/// Catalog pagination (distribution-spec `spec.md` "Listing Repositories", RFC 8288):
/// through tagpin a client walks the same pages as directly. distribution 2.8 writes a
/// relative `Link`, which must arrive as it is.
#[test]
fn catalog_pages_link_like_the_upstream() {
    let stack = Stack::start(&[]);
    for repo in ["cat-a", "cat-b", "cat-c"] {
        push_blob(stack.registry.addr, repo, repo.as_bytes(), "");
    }
    let direct = request(stack.registry.addr, "GET", "/v2/_catalog?n=1", &[], b"");
    let proxied = request(stack.tagpin.addr, "GET", "/v2/_catalog?n=1", &[], b"");
    assert_eq!(direct.status, 200, "{}", direct.text());
    let link = direct
        .header("link")
        .expect("distribution pages a catalog of 3 with n=1");
    assert!(
        link.starts_with("</v2/_catalog?"),
        "distribution's Link is relative: {link}"
    );
    assert_eq!(proxied.status, 200);
    assert_eq!(proxied.header("link"), Some(link));
    assert_eq!(proxied.body, direct.body);
}

/// A registry that writes absolute `Link` URLs on its own origin (RFC 8288 allows either)
/// must not hand its internal address to clients: the link points at tagpin instead.
#[test]
fn an_absolute_link_on_the_upstream_origin_points_at_tagpin() {
    use std::sync::{Arc, OnceLock};
    let own: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    let own2 = Arc::clone(&own);
    let fake = common::fake::FakeUpstream::start(move |_, target| match target {
        "/v2/_catalog?n=1" => common::fake::Action::Respond {
            status: 200,
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                (
                    "Link".into(),
                    format!(r#"<{}/v2/_catalog?last=a&n=1>; rel="next""#, own2.get().unwrap()),
                ),
            ],
            body: br#"{"repositories":["a"]}"#.to_vec(),
        },
        _ => common::fake::Action::status(404),
    });
    own.set(fake.url()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(&fake.url(), data.path(), &[]);
    let r = request(tagpin.addr, "GET", "/v2/_catalog?n=1", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("link"),
        Some(format!(r#"<http://{}/v2/_catalog?last=a&n=1>; rel="next""#, tagpin.addr).as_str())
    );
    let r = request_without_host(tagpin.addr, "GET", "/v2/_catalog?n=1", &[], b"");
    assert_eq!(r.header("link"), Some(r#"</v2/_catalog?last=a&n=1>; rel="next""#));
}

/// `Expect: 100-continue` is the upstream's to answer (RFC 9110 10.1.1): an upload that
/// an authenticating registry refuses costs the client its headers, not its body.
mod expect_continue {
    use super::*;
    use common::http::expect_continue;

    const USER: (&str, &str) = ("pusher", "secret");

    fn auth_registry() -> Registry {
        Registry::start_with(RegistryOptions {
            basic_auth: Some((USER.0.into(), USER.1.into())),
            ..RegistryOptions::default()
        })
    }

    /// Start an upload session (with credentials) and finish it with one `PUT` that
    /// expects `100 Continue` and carries `auth` (end-4a, end-6).
    fn upload(addr: SocketAddr, blob: &[u8], auth: &str) -> common::http::Expected {
        let start = request(
            addr,
            "POST",
            "/v2/exp/blobs/uploads/",
            &[("Authorization", &basic(USER.0, USER.1))],
            b"",
        );
        assert_eq!(start.status, 202, "{}", start.text());
        let target = path_of(start.header("location").unwrap());
        expect_continue(
            addr,
            "PUT",
            &join(&target, &format!("digest={}", sha256(blob))),
            &[("Content-Type", "application/octet-stream"), ("Authorization", auth)],
            blob,
        )
    }

    #[test]
    fn without_credentials_the_401_comes_before_any_100_continue() {
        let blob = common::image::random_bytes(7, 1 << 20);
        let direct_upstream = auth_registry();
        let direct = upload(direct_upstream.addr, &blob, "");
        assert_eq!(
            (direct.interim, direct.response.status),
            (None, 401),
            "direct: {direct:?}"
        );

        let upstream = auth_registry();
        let data = tempfile::tempdir().unwrap();
        let tagpin = Tagpin::start(&upstream.url(), data.path(), &[]);
        let proxied = upload(tagpin.addr, &blob, "");
        assert_eq!(
            proxied.interim, None,
            "tagpin asked for the body before the upstream decided"
        );
        assert_eq!(proxied.response.status, 401, "{}", proxied.response.text());
        assert_eq!(
            proxied.response.header("www-authenticate"),
            direct.response.header("www-authenticate")
        );
        // tagpin keeps serving, and the next upload with credentials works.
        let auth = basic(USER.0, USER.1);
        let ok = upload(tagpin.addr, &blob, &auth);
        assert_eq!(
            (ok.interim, ok.response.status),
            (Some(100), 201),
            "{}",
            ok.response.text()
        );
    }

    #[test]
    fn with_credentials_the_upstreams_100_continue_is_relayed_and_the_upload_works() {
        let blob = common::image::random_bytes(8, 1 << 20);
        let auth = basic(USER.0, USER.1);
        let direct_upstream = auth_registry();
        let direct = upload(direct_upstream.addr, &blob, &auth);
        assert_eq!(
            (direct.interim, direct.response.status),
            (Some(100), 201),
            "direct: {direct:?}"
        );

        let upstream = auth_registry();
        let data = tempfile::tempdir().unwrap();
        let tagpin = Tagpin::start(&upstream.url(), data.path(), &[]);
        let proxied = upload(tagpin.addr, &blob, &auth);
        assert_eq!(proxied.interim, Some(100));
        assert_eq!(proxied.response.status, 201, "{}", proxied.response.text());
        assert_eq!(
            proxied.response.header("docker-content-digest"),
            direct.response.header("docker-content-digest")
        );
        // (Whether that 100 was the upstream's own or tagpin's fallback is not asserted
        // here, as it could only be told by timing; the test above shows tagpin sends
        // none before the upstream has decided.)
        let head = request(
            upstream.addr,
            "HEAD",
            &format!("/v2/exp/blobs/{}", sha256(&blob)),
            &[("Authorization", &auth)],
            b"",
        );
        assert_eq!(head.status, 200, "the blob reached the upstream");
    }

    /// An upstream that ignores the expectation and simply waits for the body (allowed:
    /// the expectation is a request, RFC 9110 10.1.1) still gets it, a moment later.
    #[test]
    fn an_upstream_that_ignores_the_expectation_still_gets_the_body() {
        use common::fake::{Action, FakeUpstream};
        let fake = FakeUpstream::start(|method, _| match method {
            "POST" => Action::with_header(202, "Location", "/v2/exp/blobs/uploads/u1"),
            "PUT" => Action::status(201),
            _ => Action::status(404),
        });
        let data = tempfile::tempdir().unwrap();
        let tagpin = Tagpin::start(&fake.url(), data.path(), &[]);
        let blob = common::image::random_bytes(9, 64 * 1024);
        let r = upload(tagpin.addr, &blob, "");
        assert_eq!((r.interim, r.response.status), (Some(100), 201), "{r:?}");
        let methods: Vec<String> = fake.requests().into_iter().map(|r| r.method).collect();
        assert_eq!(methods, ["POST", "PUT"]);
    }
}
