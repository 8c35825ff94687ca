//! Requests that try to get around the pin: paths the upstream would read differently,
//! odd methods and headers, oversized or malformed bodies. Each must be refused with a
//! 4xx before anything is forwarded, the pinned tag must stay put at the upstream, and
//! tagpin must keep serving.

mod common;

use common::*;

struct Pinned {
    registry: Registry,
    tagpin: Tagpin,
    _data: tempfile::TempDir,
    pinned: Image,
    other: Image,
}

/// `a/b:v1` pinned through tagpin; `other` is content that must never land on it.
fn pinned_env(extra: &[&str]) -> Pinned {
    let Stack { registry, tagpin, data } = Stack::start(extra);
    let pinned = Image::random(100, 500);
    pinned.push_blobs(tagpin.addr, "a/b", "");
    assert_eq!(pinned.put_manifest(tagpin.addr, "a/b", "v1", "").status, 201);
    let other = pinned.variant("intruder");
    Pinned {
        registry,
        tagpin,
        _data: data,
        pinned,
        other,
    }
}

impl Pinned {
    fn assert_unmoved(&self) {
        assert_eq!(
            upstream_digest(&self.registry, "a/b", "v1"),
            Some(self.pinned.digest()),
            "a/b:v1 moved"
        );
        assert_eq!(
            request(self.tagpin.addr, "GET", "/v2/", &[], b"").status,
            200,
            "tagpin stopped serving"
        );
    }
}

#[test]
fn the_upstream_really_decodes_encoded_paths() {
    // Why encoded paths are refused: sent straight to distribution 2.8, `a%2Fb` is `a/b`.
    let registry = Registry::start();
    let img = Image::random(101, 100);
    img.push_blobs(registry.addr, "a/b", "");
    let r = img.put_manifest(registry.addr, "a%2Fb", "v%31", "");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(upstream_digest(&registry, "a/b", "v1"), Some(img.digest()));
}

/// Method, target, extra headers, expected status and OCI code.
type Case = (
    &'static str,
    String,
    &'static [(&'static str, &'static str)],
    u16,
    &'static str,
);

#[test]
fn hostile_manifest_paths_are_refused_and_never_forwarded() {
    let env = pinned_env(&[]);
    let d = env.other.digest();
    let up = env.registry.addr;
    let long_name = "a".repeat(256);
    let long_tag = "t".repeat(129);
    let cases: Vec<Case> = vec![
        ("PUT", "/v2/a%2Fb/manifests/v1".into(), &[], 400, "NAME_INVALID"),
        ("PUT", "/v2/a%2fb/manifests/v1".into(), &[], 400, "NAME_INVALID"),
        ("PUT", "/v2/%61/b/manifests/v1".into(), &[], 400, "NAME_INVALID"),
        ("PUT", "/v2/a/b/manifests/v%31".into(), &[], 400, "TAG_INVALID"),
        ("PUT", "/v2/a/b/m%61nifests/v1".into(), &[], 404, "UNSUPPORTED"),
        ("PUT", "/v2/a/b/manifests%2Fv1".into(), &[], 404, "UNSUPPORTED"),
        (
            "PUT",
            format!("http://{up}/v2/a/b/manifests/v1"),
            &[],
            400,
            "UNSUPPORTED",
        ),
        ("PUT", "/v2//a/b/manifests/v1".into(), &[], 400, "NAME_INVALID"),
        ("PUT", "/v2/a//b/manifests/v1".into(), &[], 400, "NAME_INVALID"),
        ("PUT", "/v2/a/./b/manifests/v1".into(), &[], 400, "NAME_INVALID"),
        ("PUT", "/v2/a/x/../b/manifests/v1".into(), &[], 400, "NAME_INVALID"),
        ("PUT", "/v2/a/b/manifests/v1/".into(), &[], 404, "UNSUPPORTED"),
        ("PUT", "/v2/a/b/manifests/v1;x=1".into(), &[], 400, "TAG_INVALID"),
        ("PUT", "/v2/a;x=1/b/manifests/v1".into(), &[], 400, "NAME_INVALID"),
        ("PUT", "/v2/A/b/manifests/v1".into(), &[], 400, "NAME_INVALID"),
        ("PUT", format!("/v2/{long_name}/manifests/v1"), &[], 400, "NAME_INVALID"),
        ("PUT", format!("/v2/a/b/manifests/{long_tag}"), &[], 400, "TAG_INVALID"),
        ("PUT", "/V2/a/b/manifests/v1".into(), &[], 404, "UNSUPPORTED"),
        ("PUT", "/v2x/a/b/manifests/v1".into(), &[], 404, "UNSUPPORTED"),
        ("PUT", "//v2/a/b/manifests/v1".into(), &[], 404, "UNSUPPORTED"),
        ("PUT", "/v2/a/b/manifests/v1?foo=bar".into(), &[], 400, "UNSUPPORTED"),
        (
            "PUT",
            format!("/v2/a/b/manifests/{d}?t%61g=v1"),
            &[],
            400,
            "UNSUPPORTED",
        ),
        (
            "PUT",
            format!("/v2/a/b/manifests/{d}?tag=v%31"),
            &[],
            400,
            "TAG_INVALID",
        ),
        (
            "PUT",
            format!("/v2/a/b/manifests/{d}?tag=v1;tag=v2"),
            &[],
            400,
            "TAG_INVALID",
        ),
        ("POST", "/v2/a/b/manifests/v1".into(), &[], 405, "UNSUPPORTED"),
        ("PATCH", "/v2/a/b/manifests/v1".into(), &[], 405, "UNSUPPORTED"),
        (
            "POST",
            "/v2/a/b/manifests/v1".into(),
            &[("X-HTTP-Method-Override", "PUT")],
            400,
            "UNSUPPORTED",
        ),
        (
            "GET",
            "/v2/a/b/manifests/v1".into(),
            &[("X-Method-Override", "DELETE")],
            400,
            "UNSUPPORTED",
        ),
        ("DELETE", "/v2/a%2Fb/manifests/v1".into(), &[], 400, "NAME_INVALID"),
        ("DELETE", "/v2/a/b/manifests/v1?x=y".into(), &[], 400, "UNSUPPORTED"),
        (
            "DELETE",
            format!("/v2/a%2Fb/manifests/{}", env.pinned.digest()),
            &[],
            400,
            "NAME_INVALID",
        ),
    ];
    for (method, target, headers, status, code) in cases {
        let mut h: Vec<(&str, &str)> = vec![("Content-Type", image::OCI_MANIFEST)];
        h.extend_from_slice(headers);
        let r = request(env.tagpin.addr, method, &target, &h, &env.other.manifest);
        assert_eq!(
            (r.status, r.oci_code().as_str()),
            (status, code),
            "{method} {target}: {}",
            r.text()
        );
        env.assert_unmoved();
    }
    // Targets the HTTP parser itself rejects (backslash, raw non-ASCII) get a 400 too.
    for target in ["/v2/a\\b/manifests/v1", "/v2/a/b/manifests/v\u{e9}"] {
        let r = request(env.tagpin.addr, "PUT", target, &[], &env.other.manifest);
        assert_eq!(r.status, 400, "{target}");
        env.assert_unmoved();
    }
    // The manifest was never forwarded under any spelling.
    let by_digest = request(
        env.registry.addr,
        "HEAD",
        &format!("/v2/a/b/manifests/{d}"),
        &[("Accept", image::ACCEPT_ALL)],
        b"",
    );
    assert_eq!(by_digest.status, 404);
}

#[test]
fn chunked_manifest_bodies_are_read_and_limited_like_any_other() {
    let env = pinned_env(&["--max-manifest-bytes", "2048"]);
    let chunked = |body: &[u8]| {
        let mut out = Vec::new();
        for part in body.chunks(100) {
            out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            out.extend_from_slice(part);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    };
    let te = [("Content-Type", image::OCI_MANIFEST), ("Transfer-Encoding", "chunked")];
    // Different content, chunked: decided on the exact bytes and refused.
    let r = request(
        env.tagpin.addr,
        "PUT",
        "/v2/a/b/manifests/v1",
        &te,
        &chunked(&env.other.manifest),
    );
    assert_eq!((r.status, r.oci_code().as_str()), (409, "DENIED"), "{}", r.text());
    // The pinned content, chunked: an identical re-push.
    let r = request(
        env.tagpin.addr,
        "PUT",
        "/v2/a/b/manifests/v1",
        &te,
        &chunked(&env.pinned.manifest),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    // Over the limit, chunked and with a length: 413.
    let mut big = env.other.manifest.clone();
    big.extend(std::iter::repeat_n(b' ', 4096));
    let r = request(env.tagpin.addr, "PUT", "/v2/a/b/manifests/v2", &te, &chunked(&big));
    assert_eq!((r.status, r.oci_code().as_str()), (413, "SIZE_INVALID"), "{}", r.text());
    let r = request(
        env.tagpin.addr,
        "PUT",
        "/v2/a/b/manifests/v2",
        &[("Content-Type", image::OCI_MANIFEST)],
        &big,
    );
    assert_eq!((r.status, r.oci_code().as_str()), (413, "SIZE_INVALID"));
    assert_eq!(upstream_digest(&env.registry, "a/b", "v2"), None);
    env.assert_unmoved();
}

#[test]
fn bad_bodies_headers_and_tag_lists_get_clear_errors() {
    let env = pinned_env(&["--max-tags-per-push", "4"]);
    let ct = [("Content-Type", image::OCI_MANIFEST)];
    let r = request(env.tagpin.addr, "PUT", "/v2/a/b/manifests/v7", &ct, b"{not json");
    assert_eq!((r.status, r.oci_code().as_str()), (400, "MANIFEST_INVALID"));
    let d = env.other.digest();
    let r = request(
        env.tagpin.addr,
        "PUT",
        &format!("/v2/a/b/manifests/{d}?tag=a&tag=b&tag=c&tag=d&tag=e"),
        &ct,
        &env.other.manifest,
    );
    assert_eq!((r.status, r.oci_code().as_str()), (414, "UNSUPPORTED"));
    let wrong = format!("sha256:{}", "1".repeat(64));
    let r = request(
        env.tagpin.addr,
        "PUT",
        &format!("/v2/a/b/manifests/{wrong}?tag=v9"),
        &ct,
        &env.other.manifest,
    );
    assert_eq!((r.status, r.oci_code().as_str()), (400, "DIGEST_INVALID"));
    // A header block far beyond any registry client's is refused by the HTTP layer.
    let huge = "x".repeat(512 * 1024);
    let r = request(env.tagpin.addr, "GET", "/v2/", &[("X-Huge", &huge)], b"");
    assert!(r.status == 431 || r.status == 400, "{}", r.status);
    env.assert_unmoved();
}

/// The manifest of `img` with every `from` key written as `to`.
fn respelled(img: &Image, edits: &[(&str, &str)]) -> Vec<u8> {
    let mut m = String::from_utf8(img.manifest.clone()).unwrap();
    for (from, to) in edits {
        assert!(m.contains(from), "{from} not in the manifest");
        m = m.replacen(from, to, 1);
    }
    m.into_bytes()
}

#[test]
fn manifests_the_upstream_reads_differently_are_refused_naming_the_key() {
    // distribution decodes with Go's encoding/json: keys match fields in any case and the
    // last of duplicate keys wins, so each of these is a valid image to the upstream
    // (checked below) whose config and layers another reader would not see.
    let Stack {
        registry,
        tagpin,
        data: _data,
    } = Stack::start(&[]);
    let img = Image::random(110, 300);
    img.push_blobs(tagpin.addr, "a/b", "");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "case",
            respelled(
                &img,
                &[(r#""config":"#, r#""Config":"#), (r#""layers":"#, r#""Layers":"#)],
            ),
            r#"manifest is ambiguous: the key "Config" at the top level differs only in case from the field "config""#,
        ),
        (
            "twice",
            respelled(&img, &[(r#""layers":["#, r#""layers":[],"layers":["#)]),
            r#"manifest is ambiguous: the key "layers" appears twice at the top level"#,
        ),
        (
            "inner",
            respelled(&img, &[(r#""layers":[{"mediaType":"#, r#""layers":[{"MediaType":"#)]),
            r#"the key "MediaType" in layers[0] differs only in case from the field "mediaType""#,
        ),
    ];
    let ct = [("Content-Type", image::OCI_MANIFEST)];
    for (tag, manifest, message) in &cases {
        let r = request(tagpin.addr, "PUT", &format!("/v2/a/b/manifests/{tag}"), &ct, manifest);
        assert_eq!(r.status, 400, "{tag} was not refused: {}", r.text());
        assert_eq!(r.oci_code(), "MANIFEST_INVALID");
        let said = r.json()["errors"][0]["message"].as_str().unwrap_or_default().to_owned();
        assert!(said.contains(message), "{tag}: {said}");
        assert_eq!(
            upstream_digest(&registry, "a/b", tag),
            None,
            "{tag} reached the upstream"
        );
    }
    // What tagpin refuses, the upstream itself takes as it stands.
    for (tag, manifest, _) in &cases {
        let r = request(
            registry.addr,
            "PUT",
            &format!("/v2/a/b/manifests/direct-{tag}"),
            &ct,
            manifest,
        );
        assert_eq!(r.status, 201, "{tag}: {}", r.text());
    }
    // A manifest in the usual spelling is pinned as before.
    assert_eq!(img.put_manifest(tagpin.addr, "a/b", "fine", "").status, 201);
    assert_eq!(upstream_digest(&registry, "a/b", "fine"), Some(img.digest()));
}

#[test]
fn a_pinned_manifest_keeps_its_layers_whatever_the_case_of_its_keys() {
    // Pushed straight to the upstream, so tagpin first reads it when it adopts the tag:
    // it must find the config and layer the upstream finds under "Config" and "Layers".
    let Stack {
        registry,
        tagpin,
        data: _data,
    } = Stack::start(&[]);
    let img = Image::random(111, 300);
    img.push_blobs(registry.addr, "old", "");
    let manifest = respelled(
        &img,
        &[(r#""config":"#, r#""Config":"#), (r#""layers":"#, r#""Layers":"#)],
    );
    let r = request(
        registry.addr,
        "PUT",
        "/v2/old/manifests/v1",
        &[("Content-Type", image::OCI_MANIFEST)],
        &manifest,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    for blob in [&img.layer, &img.config] {
        let digest = image::sha256(blob);
        let r = request(tagpin.addr, "DELETE", &format!("/v2/old/blobs/{digest}"), &[], b"");
        assert_eq!(r.status, 409, "deleting {digest} was not refused: {}", r.text());
        assert_eq!(r.json()["errors"][0]["detail"]["reason"], "referenced_by_pin");
        let up = request(registry.addr, "HEAD", &format!("/v2/old/blobs/{digest}"), &[], b"");
        assert_eq!(up.status, 200, "the upstream lost {digest}");
    }
}
