//! End-to-end: skopeo and raw HTTP through tagpin to a real distribution 2.8, deciding
//! every outcome by asking the upstream directly.

mod common;

use common::*;

type Env = Stack;

/// skopeo helpers on top of the shared test stack.
trait SkopeoPush {
    fn docker(&self, repo_tag: &str) -> String;
    fn push_layout(&self, image: &Image, repo_tag: &str) -> std::process::Output;
}

impl SkopeoPush for Stack {
    fn docker(&self, repo_tag: &str) -> String {
        format!("docker://{}/{repo_tag}", self.tagpin.host())
    }

    fn push_layout(&self, image: &Image, repo_tag: &str) -> std::process::Output {
        let dir = tempfile::tempdir().unwrap();
        image.write_layout(dir.path(), "t");
        skopeo_copy(&format!("oci:{}:t", dir.path().display()), &self.docker(repo_tag), &[])
    }
}

fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "skopeo failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn push_and_pull_round_trip_is_byte_identical() {
    let env = Env::start(&[]);
    let img = Image::random(1, 300_000);
    ok(&env.push_layout(&img, "app/api:1.0"));
    assert_eq!(upstream_digest(&env.registry, "app/api", "1.0"), Some(img.digest()));

    // Pull back through tagpin with skopeo into a fresh layout and compare bytes.
    let out_dir = tempfile::tempdir().unwrap();
    ok(&skopeo_copy(
        &env.docker("app/api:1.0"),
        &format!("oci:{}:x", out_dir.path().display()),
        &[],
    ));
    let blob = |d: &str| {
        std::fs::read(
            out_dir
                .path()
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    assert_eq!(blob(&img.digest()), img.manifest);
    assert_eq!(blob(&image::sha256(&img.layer)), img.layer);
    assert_eq!(blob(&image::sha256(&img.config)), img.config);

    // Raw GET through tagpin returns the upstream's exact bytes and headers that matter.
    let via = request(
        env.tagpin.addr,
        "GET",
        "/v2/app/api/manifests/1.0",
        &[("Accept", image::ACCEPT_ALL)],
        b"",
    );
    let direct = request(
        env.registry.addr,
        "GET",
        "/v2/app/api/manifests/1.0",
        &[("Accept", image::ACCEPT_ALL)],
        b"",
    );
    assert_eq!(via.status, 200);
    assert_eq!(via.body, direct.body);
    for h in ["docker-content-digest", "content-type", "content-length", "etag"] {
        assert_eq!(via.header(h), direct.header(h), "header {h}");
    }
    let head = request(
        env.tagpin.addr,
        "HEAD",
        "/v2/app/api/manifests/1.0",
        &[("Accept", image::ACCEPT_ALL)],
        b"",
    );
    assert_eq!(
        head.header("content-length"),
        Some(img.manifest.len().to_string().as_str())
    );
    assert_eq!(head.header("docker-content-digest"), Some(img.digest().as_str()));
}

#[test]
fn identical_repush_is_allowed() {
    let env = Env::start(&[]);
    let img = Image::random(2, 1000);
    ok(&env.push_layout(&img, "app:1.0"));
    ok(&env.push_layout(&img, "app:1.0"));
    let raw = img.put_manifest(env.tagpin.addr, "app", "1.0", "");
    assert_eq!(raw.status, 201, "{}", raw.text());
    assert_eq!(upstream_digest(&env.registry, "app", "1.0"), Some(img.digest()));
    env.tagpin
        .wait_for_audit(|e| e["action"] == "identical_repush" && e["tag"] == "1.0");
}

#[test]
fn a_different_digest_is_refused_and_the_upstream_tag_stays() {
    let env = Env::start(&[]);
    let first = Image::random(3, 1000);
    let second = Image::random(4, 1000);
    ok(&env.push_layout(&first, "my-api:1.4.2"));
    let out = env.push_layout(&second, "my-api:1.4.2");
    assert!(!out.status.success(), "moving a pinned tag must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("denied: tag my-api:1.4.2 is immutable"),
        "skopeo said: {stderr}"
    );
    assert!(
        stderr.contains(&first.digest()) && stderr.contains(&second.digest()),
        "{stderr}"
    );
    assert_eq!(upstream_digest(&env.registry, "my-api", "1.4.2"), Some(first.digest()));

    // The raw refusal: status, code and machine-readable detail.
    let raw = second.put_manifest(env.tagpin.addr, "my-api", "1.4.2", "");
    assert_eq!(raw.status, 409);
    let v = raw.json();
    assert_eq!(v["errors"][0]["code"], "DENIED");
    assert_eq!(v["errors"][0]["detail"]["repository"], "my-api");
    assert_eq!(v["errors"][0]["detail"]["tag"], "1.4.2");
    assert_eq!(v["errors"][0]["detail"]["pinned_digest"], first.digest());
    assert_eq!(v["errors"][0]["detail"]["attempted_digest"], second.digest());
    assert_eq!(upstream_digest(&env.registry, "my-api", "1.4.2"), Some(first.digest()));
}

#[test]
fn refusal_status_can_be_403() {
    let env = Env::start(&["--refuse-status", "403"]);
    let a = Image::random(5, 100);
    a.push_blobs(env.tagpin.addr, "r", "");
    assert_eq!(a.put_manifest(env.tagpin.addr, "r", "v1", "").status, 201);
    let r = a.variant("other").put_manifest(env.tagpin.addr, "r", "v1", "");
    assert_eq!((r.status, r.oci_code().as_str()), (403, "DENIED"));
    assert_eq!(upstream_digest(&env.registry, "r", "v1"), Some(a.digest()));
}

#[test]
fn the_refusal_survives_a_restart_on_the_same_data_dir() {
    let mut env = Env::start(&[]);
    let a = Image::random(6, 1000);
    a.push_blobs(env.tagpin.addr, "svc", "");
    assert_eq!(a.put_manifest(env.tagpin.addr, "svc", "2.0", "").status, 201);
    env.tagpin.terminate();
    // Delete the tag's manifest behind tagpin's back: the pin is a tombstone.
    let del = request(
        env.registry.addr,
        "DELETE",
        &format!("/v2/svc/manifests/{}", a.digest()),
        &[],
        b"",
    );
    assert_eq!(del.status, 202, "{}", del.text());
    assert_eq!(upstream_digest(&env.registry, "svc", "2.0"), None);

    env.tagpin = Tagpin::start(&env.registry.url(), env.data.path(), &[]);
    let b = a.variant("moved");
    let r = b.put_manifest(env.tagpin.addr, "svc", "2.0", "");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(upstream_digest(&env.registry, "svc", "2.0"), None);
    // The pinned content itself may come back.
    assert_eq!(a.put_manifest(env.tagpin.addr, "svc", "2.0", "").status, 201);
    assert_eq!(upstream_digest(&env.registry, "svc", "2.0"), Some(a.digest()));
}

#[test]
fn a_tag_that_predates_tagpin_is_adopted() {
    let env = Env::start(&[]);
    let old = Image::random(7, 1000);
    old.push_blobs(env.registry.addr, "legacy", "");
    assert_eq!(old.put_manifest(env.registry.addr, "legacy", "1.0", "").status, 201);

    let new = old.variant("new");
    let r = new.put_manifest(env.tagpin.addr, "legacy", "1.0", "");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["errors"][0]["detail"]["pinned_digest"], old.digest());
    assert_eq!(upstream_digest(&env.registry, "legacy", "1.0"), Some(old.digest()));
    let e = env.tagpin.wait_for_audit(|e| e["action"] == "pin_adopted");
    assert_eq!(e["pinned_digest"], old.digest());
    assert_eq!(old.put_manifest(env.tagpin.addr, "legacy", "1.0", "").status, 201);
}

#[test]
fn the_adoption_event_reports_the_pushed_digest_as_attempted() {
    let env = Env::start(&[]);
    let old = Image::random(19, 1000);
    old.push_blobs(env.registry.addr, "legacy2", "");
    assert_eq!(old.put_manifest(env.registry.addr, "legacy2", "1.0", "").status, 201);

    let new = old.variant("new");
    assert_eq!(new.put_manifest(env.tagpin.addr, "legacy2", "1.0", "").status, 409);
    let e = env
        .tagpin
        .wait_for_audit(|e| e["action"] == "pin_adopted" && e["tag"] == "1.0");
    assert_eq!(e["pinned_digest"], old.digest(), "{e}");
    assert_eq!(e["attempted_digest"], new.digest(), "{e}");
}

#[test]
fn deleting_a_protected_tag_or_its_pinned_digest_is_refused() {
    let env = Env::start(&[]);
    let a = Image::random(8, 1000);
    a.push_blobs(env.tagpin.addr, "d", "");
    assert_eq!(a.put_manifest(env.tagpin.addr, "d", "v1", "").status, 201);

    let by_tag = request(env.tagpin.addr, "DELETE", "/v2/d/manifests/v1", &[], b"");
    assert_eq!((by_tag.status, by_tag.oci_code().as_str()), (409, "DENIED"));
    let by_digest = request(
        env.tagpin.addr,
        "DELETE",
        &format!("/v2/d/manifests/{}", a.digest()),
        &[],
        b"",
    );
    assert_eq!(
        (by_digest.status, by_digest.oci_code().as_str()),
        (409, "DENIED"),
        "{}",
        by_digest.text()
    );
    assert_eq!(by_digest.json()["errors"][0]["detail"]["tags"][0], "v1");
    assert_eq!(upstream_digest(&env.registry, "d", "v1"), Some(a.digest()));
    env.tagpin
        .wait_for_audit(|e| e["action"] == "delete_refused" && e["tag"] == "v1");

    // An unpinned digest can still be deleted through tagpin.
    let b = a.variant("untagged");
    assert_eq!(b.put_manifest(env.tagpin.addr, "d", &b.digest(), "").status, 201);
    let del = request(
        env.tagpin.addr,
        "DELETE",
        &format!("/v2/d/manifests/{}", b.digest()),
        &[],
        b"",
    );
    assert_eq!(del.status, 202, "{}", del.text());
}

#[test]
fn deleting_the_digest_of_a_tag_that_predates_tagpin_is_refused() {
    let env = Env::start(&[]);
    let old = Image::random(18, 500);
    old.push_blobs(env.registry.addr, "pre", "");
    assert_eq!(old.put_manifest(env.registry.addr, "pre", "1.0", "").status, 201);
    // More tags of the repository, all adopted before the delete is decided.
    for t in ["1.1", "1.2", "1.3"] {
        assert_eq!(old.variant(t).put_manifest(env.registry.addr, "pre", t, "").status, 201);
    }
    let del = request(
        env.tagpin.addr,
        "DELETE",
        &format!("/v2/pre/manifests/{}", old.digest()),
        &[],
        b"",
    );
    assert_eq!((del.status, del.oci_code().as_str()), (409, "DENIED"), "{}", del.text());
    assert_eq!(upstream_digest(&env.registry, "pre", "1.0"), Some(old.digest()));
    env.tagpin
        .wait_for_audit(|e| e["action"] == "pin_adopted" && e["tag"] == "1.0");
    env.tagpin
        .wait_for_audit(|e| e["action"] == "pin_adopted" && e["tag"] == "1.3");
}

#[test]
fn tag_query_pushes_are_checked() {
    let env = Env::start(&[]);
    let a = Image::random(9, 1000);
    a.push_blobs(env.tagpin.addr, "q", "");
    assert_eq!(a.put_manifest(env.tagpin.addr, "q", "v1", "").status, 201);
    let b = a.variant("b");
    // distribution-spec end-7b: every `tag` parameter counts.
    let r = b.put_manifest(env.tagpin.addr, "q", &format!("{}?tag=v9&tag=v1", b.digest()), "");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["errors"][0]["detail"]["tag"], "v1");
    // Nothing at all was forwarded: the manifest is unknown upstream.
    let direct = request(
        env.registry.addr,
        "HEAD",
        &format!("/v2/q/manifests/{}", b.digest()),
        &[("Accept", image::ACCEPT_ALL)],
        b"",
    );
    assert_eq!(direct.status, 404);
    // distribution 2.8 predates `?tag=` and ignores it: the push by digest succeeds but
    // creates no tag, so tagpin must not pin one (nor audit a pin it did not make).
    let r = b.put_manifest(env.tagpin.addr, "q", &format!("{}?tag=v2", b.digest()), "");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        upstream_digest(&env.registry, "q", "v2"),
        None,
        "the upstream ignored ?tag="
    );
    assert!(
        !env.tagpin
            .audit_events()
            .iter()
            .any(|e| e["action"] == "pin_created" && e["tag"] == "v2"),
        "a pin_created event for a tag the upstream never created"
    );
    // The upstream's answer (a HEAD showing v2 absent) settles that the tag was not
    // created: nothing is pinned or reserved, the client is warned, and the next push of
    // any digest decides v2 afresh.
    let warning = r.header("warning").unwrap_or_default().to_owned();
    assert!(warning.contains("v2") && warning.contains("not pinned"), "{warning:?}");
    let c = a.variant("c");
    assert_eq!(c.put_manifest(env.tagpin.addr, "q", "v2", "").status, 201);
    assert_eq!(upstream_digest(&env.registry, "q", "v2"), Some(c.digest()));
    let r = b.put_manifest(env.tagpin.addr, "q", "v2", "");
    assert_eq!(
        (r.status, r.json()["errors"][0]["detail"]["state"].as_str()),
        (409, Some("pinned"))
    );
}

#[test]
fn an_excluded_tag_can_move() {
    let env = Env::start(&["--exclude", "latest", "--exclude", "dev-*"]);
    let a = Image::random(10, 1000);
    let b = a.variant("b");
    a.push_blobs(env.tagpin.addr, "x", "");
    for tag in ["latest", "dev-1"] {
        assert_eq!(a.put_manifest(env.tagpin.addr, "x", tag, "").status, 201);
        assert_eq!(b.put_manifest(env.tagpin.addr, "x", tag, "").status, 201);
        assert_eq!(upstream_digest(&env.registry, "x", tag), Some(b.digest()));
    }
    let del = request(env.tagpin.addr, "DELETE", "/v2/x/manifests/latest", &[], b"");
    // Not refused by tagpin but forwarded: the answer is distribution 2.8's own to a
    // delete by tag (it deletes by digest only), the same as when asked directly.
    assert_eq!(
        (del.status, del.oci_code().as_str()),
        (400, "DIGEST_INVALID"),
        "{}",
        del.text()
    );
    let direct = request(env.registry.addr, "DELETE", "/v2/x/manifests/dev-1", &[], b"");
    assert_eq!((direct.status, direct.oci_code()), (del.status, del.oci_code()));
    assert_eq!(upstream_digest(&env.registry, "x", "latest"), Some(b.digest()));
    assert_eq!(a.put_manifest(env.tagpin.addr, "x", "1.0", "").status, 201);
    assert_eq!(b.put_manifest(env.tagpin.addr, "x", "1.0", "").status, 409);
}

#[test]
fn a_multi_arch_index_pushed_with_skopeo_all_is_protected() {
    let env = Env::start(&[]);
    let idx = Index::new(11, 2000);
    let dir = tempfile::tempdir().unwrap();
    idx.write_layout(dir.path(), "t");
    ok(&skopeo_copy(
        &format!("oci:{}:t", dir.path().display()),
        &env.docker("multi:1.0"),
        &["--all"],
    ));
    assert_eq!(upstream_digest(&env.registry, "multi", "1.0"), Some(idx.digest()));

    let other = Index::new(12, 2000);
    let dir2 = tempfile::tempdir().unwrap();
    other.write_layout(dir2.path(), "t");
    // Without --preserve-digests, as users run it: skopeo tries each list type in turn and
    // reports every refusal (with --preserve-digests it gives up before showing ours).
    let src = format!("oci:{}:t", dir2.path().display());
    let out = skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--all",
        &src,
        &env.docker("multi:1.0"),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is immutable"), "{stderr}");
    assert_eq!(upstream_digest(&env.registry, "multi", "1.0"), Some(idx.digest()));
}

#[test]
fn a_256_mib_layer_is_pushed_and_pulled_intact() {
    let env = Env::start(&[]);
    let img = Image::random(13, 256 * 1024 * 1024);
    ok(&env.push_layout(&img, "big:1"));
    let out_dir = tempfile::tempdir().unwrap();
    ok(&skopeo_copy(
        &env.docker("big:1"),
        &format!("oci:{}:x", out_dir.path().display()),
        &[],
    ));
    let layer_digest = image::sha256(&img.layer);
    let pulled = std::fs::read(
        out_dir
            .path()
            .join("blobs/sha256")
            .join(layer_digest.trim_start_matches("sha256:")),
    )
    .unwrap();
    assert_eq!(pulled.len(), img.layer.len());
    assert!(pulled == img.layer, "layer bytes differ");
}

#[test]
fn upload_locations_point_at_tagpin() {
    let env = Env::start(&[]);
    let r = request(env.tagpin.addr, "POST", "/v2/loc/blobs/uploads/", &[], b"");
    assert_eq!(r.status, 202);
    let loc = r.header("location").unwrap();
    assert!(
        loc.starts_with(&format!("http://{}/v2/loc/blobs/uploads/", env.tagpin.addr)),
        "{loc}"
    );

    // With a public URL configured, that origin is used instead.
    let data = tempfile::tempdir().unwrap();
    let t2 = Tagpin::start(
        &env.registry.url(),
        data.path(),
        &["--public-url", "https://registry.example.com"],
    );
    let r = request(t2.addr, "POST", "/v2/loc/blobs/uploads/", &[], b"");
    let loc = r.header("location").unwrap();
    assert!(
        loc.starts_with("https://registry.example.com/v2/loc/blobs/uploads/"),
        "{loc}"
    );
}

#[test]
fn basic_auth_upstream_works_through_tagpin() {
    let registry = Registry::start_with(RegistryOptions {
        basic_auth: Some(("alice".into(), "wonder-pass-77".into())),
        ..Default::default()
    });
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(&registry.url(), data.path(), &[]);

    let anon = request(tagpin.addr, "GET", "/v2/", &[], b"");
    assert_eq!(anon.status, 401);
    assert!(anon
        .header("www-authenticate")
        .unwrap()
        .starts_with("Basic realm=\"tagpin-test\""));
    let anon_put = Image::random(14, 10).put_manifest(tagpin.addr, "sec", "v1", "");
    assert_eq!(anon_put.status, 401, "{}", anon_put.text());

    let img = Image::random(15, 1000);
    let dir = tempfile::tempdir().unwrap();
    img.write_layout(dir.path(), "t");
    let dst = format!("docker://{}/sec:v1", tagpin.host());
    let out = skopeo_copy(
        &format!("oci:{}:t", dir.path().display()),
        &dst,
        &["--dest-creds", "alice:wonder-pass-77"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(upstream_digest(&registry, "sec", "v1"), Some(img.digest()));
    let e = tagpin.wait_for_audit(|e| e["action"] == "pin_created");
    assert_eq!(e["user"], "alice");
    for line in tagpin.logs() {
        assert!(!line.contains("wonder-pass-77"), "password leaked: {line}");
        assert!(
            !line.contains(&registry.auth_header()[6..]),
            "credentials leaked: {line}"
        );
    }
}

#[test]
fn a_push_without_credentials_is_challenged_like_the_upstream_with_an_oci_error_body() {
    let registry = Registry::start_with(RegistryOptions {
        basic_auth: Some(("alice".into(), "wonder-pass-77".into())),
        ..Default::default()
    });
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(&registry.url(), data.path(), &[]);
    let img = Image::random(20, 10);
    let direct = img.put_manifest(registry.addr, "sec", "v1", "");
    let via = img.put_manifest(tagpin.addr, "sec", "v1", "");
    assert_eq!(via.status, direct.status, "{}", via.text());
    assert_eq!(via.status, 401);
    // The tag check was a HEAD, whose answer has no body: the client still gets the
    // error envelope a PUT gets (distribution-spec `spec.md`, "Error Codes").
    assert_eq!(via.oci_code(), "UNAUTHORIZED", "{}", via.text());
    assert_eq!(
        via.header("www-authenticate"),
        direct.header("www-authenticate"),
        "a Basic challenge passes unchanged"
    );
    assert!(via
        .header("www-authenticate")
        .is_some_and(|v| v.starts_with("Basic realm=\"tagpin-test\"")));
    assert_eq!(upstream_digest(&registry, "sec", "v1"), None);
}

#[test]
fn concurrent_pushes_of_different_digests_produce_one_winner() {
    let env = Env::start(&[]);
    let base = Image::random(16, 1000);
    base.push_blobs(env.tagpin.addr, "race", "");
    let variants: Vec<Image> = (0..8).map(|i| base.variant(&format!("racer-{i}"))).collect();
    let addr = env.tagpin.addr;
    let results: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = variants
            .iter()
            .map(|v| s.spawn(move || (v.put_manifest(addr, "race", "v1", "").status, v.digest())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<&(u16, String)> = results.iter().filter(|(s, _)| *s == 201).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert!(results.iter().all(|(s, _)| *s == 201 || *s == 409), "{results:?}");
    assert_eq!(
        upstream_digest(&env.registry, "race", "v1").as_ref(),
        Some(&winners[0].1)
    );
}

#[test]
fn audit_events_carry_who_what_and_which_digests() {
    let env = Env::start(&[]);
    let a = Image::random(17, 100);
    let b = a.variant("b");
    a.push_blobs(env.tagpin.addr, "aud", "");
    let auth = basic("bob", "not-checked-upstream");
    let ua = [
        ("X-Forwarded-For", "127.0.0.99"),
        ("Content-Type", image::OCI_MANIFEST),
        ("Authorization", auth.as_str()),
        ("User-Agent", "audit-test/1.0"),
    ];
    assert_eq!(
        request(env.tagpin.addr, "PUT", "/v2/aud/manifests/v1", &ua, &a.manifest).status,
        201
    );
    assert_eq!(
        request(env.tagpin.addr, "PUT", "/v2/aud/manifests/v1", &ua, &a.manifest).status,
        201
    );
    assert_eq!(
        request(env.tagpin.addr, "PUT", "/v2/aud/manifests/v1", &ua, &b.manifest).status,
        409
    );
    assert_eq!(
        request(env.tagpin.addr, "DELETE", "/v2/aud/manifests/v1", &ua, b"").status,
        409
    );
    for action in ["pin_created", "identical_repush", "push_refused", "delete_refused"] {
        let e = env.tagpin.wait_for_audit(|e| e["action"] == action);
        assert_eq!(e["repository"], "aud", "{e}");
        assert_eq!(e["tag"], "v1", "{e}");
        assert_eq!(e["pinned_digest"], a.digest(), "{e}");
        // This upstream lets anyone read, so it vouches for no user of a refused write
        // (the check tagpin makes succeeds without credentials too); an accepted write
        // names the user it carried.
        let user = if action.ends_with("_refused") { "" } else { "bob" };
        assert_eq!(e["user"], user, "{e}");
        assert_eq!(e["user_agent"], "audit-test/1.0", "{e}");
        assert_eq!(e["forwarded_for"], "127.0.0.99", "{e}");
        assert!(e["client"].as_str().unwrap().starts_with("127.0.0.1:"), "{e}");
        assert!(e["request_id"].as_str().is_some_and(|s| !s.is_empty()), "{e}");
    }
    let refused = env.tagpin.wait_for_audit(|e| e["action"] == "push_refused");
    assert_eq!(refused["attempted_digest"], b.digest());
    // The same decisions, counted for Prometheus.
    let metrics = request(env.tagpin.addr, "GET", "/metrics", &[], b"");
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = metrics.text();
    for line in [
        "tagpin_decisions_total{action=\"pin_created\"} 1",
        "tagpin_decisions_total{action=\"identical_repush\"} 1",
        "tagpin_decisions_total{action=\"push_refused\"} 1",
        "tagpin_decisions_total{action=\"delete_refused\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
    }
    assert!(text.contains("tagpin_responses_total{class=\"4xx\"}"), "{text}");
    for line in env.tagpin.logs() {
        assert!(
            !line.contains("not-checked-upstream") && !line.contains(&auth[6..]),
            "credential in log: {line}"
        );
    }
}
