//! Pinned reads against the real upstream: a protected tag pulled through tagpin is the
//! pinned manifest, whatever the upstream holds under the tag now (moved, deleted, never
//! changed), and a tag that predates tagpin is pinned by its first pull. Tags are moved
//! and deleted straight at the upstream, behind tagpin's back; what a client gets is
//! checked with skopeo and raw HTTP, and what the upstream holds by asking it directly.

mod common;

use common::admin::{history, AdminSecrets};
use common::reads::*;
use common::*;

/// An upstream, a tagpin with its admin API in front of it, and the admin's secrets.
struct Env {
    registry: Registry,
    tagpin: Tagpin,
    secrets: AdminSecrets,
    _data: tempfile::TempDir,
}

impl Env {
    fn start() -> Self {
        Self::on(Registry::start())
    }

    fn on(registry: Registry) -> Self {
        let secrets = AdminSecrets::new();
        let data = tempfile::tempdir().unwrap();
        let flags = secrets.flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let tagpin = Tagpin::start(&registry.url(), data.path(), &flags);
        Self {
            registry,
            tagpin,
            secrets,
            _data: data,
        }
    }

    /// `tagpin pins show repo:tag --json`.
    fn pin(&self, reference: &str) -> Option<serde_json::Value> {
        self.secrets.pin(self.tagpin.admin_addr(), reference)
    }

    /// A later event than any the test caused so far: a pin of a fresh tag.
    fn marker(&self, name: &str) -> impl Fn(&serde_json::Value) -> bool {
        let img = Image::random(9_999, 64);
        img.push_blobs(self.tagpin.addr, "marker", "");
        let r = img.put_manifest(self.tagpin.addr, "marker", name, "");
        assert_eq!(r.status, 201, "marker push: {}", r.text());
        let name = name.to_owned();
        move |e: &serde_json::Value| e["action"] == "pin_created" && e["repository"] == "marker" && e["tag"] == name
    }
}

#[test]
fn a_tag_moved_at_the_upstream_is_pulled_at_its_pin_by_skopeo_and_raw_http() {
    let env = Env::start();
    let (tagpin, registry) = (env.tagpin.addr, env.registry.addr);
    let a = Image::random(3_001, 4_000);
    let b = a.variant("moved behind tagpin's back");
    push_layout(&docker(tagpin, "app:v1"), false, |d| a.write_layout(d, "t"));
    assert_eq!(upstream_digest(&env.registry, "app", "v1"), Some(a.digest()));
    put_straight(&env.registry, "app", "v1", &b);
    assert_eq!(upstream_digest(&env.registry, "app", "v1"), Some(b.digest()));

    assert_eq!(inspect(&docker(tagpin, "app:v1")), (a.digest(), a.digest()));
    assert_eq!(inspect(&docker(registry, "app:v1")), (b.digest(), b.digest()));
    let pulled = Pulled::copy(&docker(tagpin, "app:v1"), false);
    assert_eq!(pulled.top(), a.digest());
    assert!(
        pulled.blob(&a.digest()) == Some(a.manifest.clone()),
        "the pulled manifest's bytes"
    );
    assert!(
        pulled.blob(&image::sha256(&a.layer)) == Some(a.layer.clone()),
        "the pulled layer"
    );
    assert_eq!(Pulled::copy(&docker(registry, "app:v1"), false).top(), b.digest());

    let before = reads_total(&env.tagpin, "pinned");
    assert_serves(tagpin, "app", "v1", &a.digest(), "through tagpin");
    assert_eq!(reads_total(&env.tagpin, "pinned"), before + 2, "a HEAD and a GET");
    assert_serves(registry, "app", "v1", &b.digest(), "straight from the upstream");
    assert_eq!(reads_total(&env.tagpin, "adopted"), 0, "the tag was pinned by its push");
    // Reading changed nothing at the upstream.
    assert_eq!(upstream_digest(&env.registry, "app", "v1"), Some(b.digest()));
}

#[test]
fn a_multi_arch_index_moved_at_the_upstream_is_pulled_at_its_pin_with_every_image() {
    let env = Env::start();
    let (tagpin, registry) = (env.tagpin.addr, env.registry.addr);
    let (a, b) = (Index::new(31, 1_000), Index::new(32, 1_000));
    push_layout(&docker(tagpin, "multi:1.0"), true, |d| a.write_layout(d, "t"));
    push_layout(&docker(registry, "multi:1.0"), true, |d| b.write_layout(d, "t"));
    assert_eq!(upstream_digest(&env.registry, "multi", "1.0"), Some(b.digest()));

    // skopeo reports the index's digest, and --raw gets the index's bytes.
    assert_eq!(
        inspect(&docker(tagpin, "multi:1.0")),
        (a.digest(), a.digest()),
        "through tagpin"
    );
    assert_eq!(
        inspect(&docker(registry, "multi:1.0")),
        (b.digest(), b.digest()),
        "straight"
    );

    let pulled = Pulled::copy(&docker(tagpin, "multi:1.0"), true);
    assert_eq!(pulled.top(), a.digest());
    assert!(
        pulled.blob(&a.digest()) == Some(a.index.clone()),
        "the pulled index's bytes"
    );
    for (img, other) in a.images.iter().zip(&b.images) {
        assert!(
            pulled.blob(&img.digest()) == Some(img.manifest.clone()),
            "{}",
            img.digest()
        );
        assert!(pulled.blob(&image::sha256(&img.layer)) == Some(img.layer.clone()));
        assert!(
            pulled.blob(&other.digest()).is_none(),
            "an image of the moved index was pulled"
        );
    }
    assert_eq!(Pulled::copy(&docker(registry, "multi:1.0"), true).top(), b.digest());
    assert_serves(tagpin, "multi", "1.0", &a.digest(), "through tagpin");
}

#[test]
fn a_deleted_tag_is_served_at_its_pin_and_a_deleted_manifest_is_a_404_that_says_so() {
    let env = Env::start();
    let tagpin = env.tagpin.addr;
    let a = Image::random(3_010, 1_000);
    let b = a.variant("written after the pinned manifest was deleted");
    a.push_blobs(tagpin, "app", "");
    assert_eq!(a.put_manifest(tagpin, "app", "v1", "").status, 201);

    untag_straight(&env.registry, "app", "v1");
    assert_eq!(upstream_digest(&env.registry, "app", "v1"), None);
    assert_serves(tagpin, "app", "v1", &a.digest(), "the tag deleted, its manifest kept");

    delete_manifest_straight(&env.registry, "app", &a.digest());
    put_straight(&env.registry, "app", "v1", &b);
    assert_eq!(upstream_digest(&env.registry, "app", "v1"), Some(b.digest()));
    for round in 0..3 {
        for method in ["GET", "HEAD"] {
            let r = read(tagpin, method, "app", "v1", "");
            assert_eq!(r.status, 404, "{method} round {round}: {}", r.text());
            assert_ne!(r.header("docker-content-digest"), Some(b.digest().as_str()));
            if method == "HEAD" {
                continue;
            }
            assert_eq!(r.oci_code(), "MANIFEST_UNKNOWN", "{}", r.text());
            assert!(
                !r.text().contains(&b.digest()),
                "the tag's current content leaked: {}",
                r.text()
            );
            let detail = &r.json()["errors"][0]["detail"];
            assert_eq!(detail["reason"], "pinned_manifest_missing", "{}", r.text());
            assert_eq!(detail["tag"], "v1");
            assert_eq!(detail["repository"], "app");
            assert_eq!(detail["pinned_digest"], a.digest());
        }
    }
    let out = skopeo(&["inspect", "--tls-verify=false", "--raw", &docker(tagpin, "app:v1")]);
    assert!(
        !out.status.success(),
        "skopeo pulled a tag whose pinned manifest is gone"
    );

    let missing = events_before(
        &env.tagpin,
        "pinned_manifest_missing",
        "app",
        "v1",
        env.marker("after-missing"),
    );
    assert_eq!(missing.len(), 1, "one event for repeated reads: {missing:?}");
    assert_eq!(missing[0]["pinned_digest"], a.digest());
    assert_eq!(reads_total(&env.tagpin, "pinned_missing"), 1);
    assert_eq!(upstream_digest(&env.registry, "app", "v1"), Some(b.digest()));
}

#[test]
fn a_tag_that_predates_tagpin_is_pinned_by_its_first_pull_and_kept_there() {
    let env = Env::start();
    let tagpin = env.tagpin.addr;
    let x = Image::random(3_020, 1_000);
    let (y, z) = (x.variant("moved"), x.variant("pushed through tagpin"));
    x.push_blobs(env.registry.addr, "old", "");
    for (tag, method) in [("1.0", "GET"), ("2.0", "HEAD")] {
        put_straight(&env.registry, "old", tag, &x);
        assert_eq!(env.pin(&format!("old:{tag}")), None, "pinned before any read");

        assert_eq!(served(&read(tagpin, method, "old", tag, ""), "first pull"), x.digest());
        let pin = env.pin(&format!("old:{tag}")).expect("the first pull pinned the tag");
        assert_eq!(
            (pin["digest"].as_str(), pin["source"].as_str()),
            (Some(x.digest().as_str()), Some("adopted"))
        );
        let adopted = history(&pin, "adopted");
        assert_eq!(pin["history"].as_array().unwrap().len(), 1, "{pin}");
        let reason = adopted[0]["reason"].as_str().unwrap_or("");
        assert!(reason.contains("first pull") && reason.contains(method), "{pin}");
        let e = env
            .tagpin
            .wait_for_audit(|e| e["action"] == "pin_adopted_on_read" && e["tag"] == tag);
        assert_eq!(e["pinned_digest"], x.digest());

        put_straight(&env.registry, "old", tag, &y);
        assert_serves(tagpin, "old", tag, &x.digest(), "moved after its first pull");
        assert_eq!(inspect(&docker(tagpin, &format!("old:{tag}"))).0, x.digest());
        for other in [&z, &y] {
            let r = other.put_manifest(tagpin, "old", tag, "");
            assert_eq!(r.status, 409, "{}", r.text());
            assert_eq!(r.json()["errors"][0]["detail"]["pinned_digest"], x.digest());
            assert_eq!(upstream_digest(&env.registry, "old", tag), Some(y.digest()));
        }
    }
    assert_eq!(reads_total(&env.tagpin, "adopted"), 2);
}

#[test]
fn anonymous_pulls_of_a_pinned_tag_get_the_upstreams_challenge_like_an_unpinned_one() {
    let (user, password) = ("alice", "wonderland-7");
    let env = Env::on(Registry::start_with(RegistryOptions {
        basic_auth: Some((user.into(), password.into())),
        ..Default::default()
    }));
    let (tagpin, alice) = (env.tagpin.addr, basic(user, password));
    let a = Image::random(3_030, 1_000);
    let (b, c) = (a.variant("moved"), a.variant("never pushed through tagpin"));
    a.push_blobs(tagpin, "app", &alice);
    assert_eq!(a.put_manifest(tagpin, "app", "v1", &alice).status, 201);
    put_straight(&env.registry, "app", "v1", &b);
    put_straight(&env.registry, "app", "free", &c);

    let forged = basic(user, "guessed");
    for auth in ["", forged.as_str()] {
        for method in ["GET", "HEAD"] {
            let pinned = read(tagpin, method, "app", "v1", auth);
            let free = read(tagpin, method, "app", "free", auth);
            let direct = read(env.registry.addr, method, "app", "v1", auth);
            let what = format!("{method} with {auth:?}");
            for r in [&pinned, &free, &direct] {
                assert_eq!(r.status, 401, "{what}: {}", r.text());
                assert_eq!(r.header("docker-content-digest"), None, "{what}");
            }
            assert_eq!(
                pinned.header("www-authenticate"),
                free.header("www-authenticate"),
                "{what}"
            );
            assert_eq!(
                pinned.header("www-authenticate"),
                direct.header("www-authenticate"),
                "{what}"
            );
            for text in [pinned.text(), free.text()] {
                for d in [a.digest(), b.digest(), c.digest()] {
                    assert!(!text.contains(&d), "{what}: a digest leaked: {text}");
                }
            }
        }
    }
    assert_eq!(env.pin("app:free"), None, "a read the upstream refused pinned the tag");
    // With credentials the upstream accepts: the pin, and the first pull of the other tag.
    assert_eq!(served(&read(tagpin, "GET", "app", "v1", &alice), "alice"), a.digest());
    assert_eq!(
        served(&read(tagpin, "HEAD", "app", "free", &alice), "alice"),
        c.digest()
    );
    assert_eq!(env.pin("app:free").unwrap()["digest"], c.digest());
}

#[test]
fn a_first_pull_answered_with_a_platform_manifest_pins_the_tags_own_list() {
    let env = Env::start();
    let tagpin = env.tagpin.addr;
    let img = Image::random(3_040, 500);
    img.push_blobs(env.registry.addr, "docker", "");
    let list = DockerList::new(&img);
    list.push(env.registry.addr, "docker", "1.0", "");
    let (list_digest, image_digest) = (image::sha256(&list.list), image::sha256(&list.image));
    // A client that takes schema 2 but not lists: straight from the upstream, the tag
    // answers with its platform manifest, which is not what the tag holds.
    let narrow = |addr, method| {
        request(
            addr,
            method,
            "/v2/docker/manifests/1.0",
            &[("Accept", DOCKER_MANIFEST)],
            b"",
        )
    };
    assert_eq!(served(&narrow(env.registry.addr, "GET"), "straight"), image_digest);

    let first = narrow(tagpin, "HEAD");
    assert_eq!(first.status, 200, "{}", first.text());
    let pin = env.pin("docker:1.0").expect("the first pull pinned the tag");
    assert_eq!(
        pin["digest"],
        list_digest.as_str(),
        "the pin is the tag's own list: {pin}"
    );
    assert_eq!(
        first.header("docker-content-digest"),
        Some(list_digest.as_str()),
        "the first pull is answered with the pin"
    );
    assert_eq!(served(&narrow(tagpin, "GET"), "narrow, pinned"), list_digest);
    assert_serves(tagpin, "docker", "1.0", &list_digest, "every type accepted");
    assert_eq!(inspect(&docker(tagpin, "docker:1.0")).1, list_digest);
}
