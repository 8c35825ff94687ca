//! Clients the upstream would not let in: they learn nothing about private pins, cannot
//! write the security team's evidence under a made-up name, and a credential that may
//! push but not read cannot make a tag that predates tagpin look free. The upstream is
//! Debian's `docker-registry` with htpasswd auth; whether a tag moved is asked of it
//! directly.

mod common;

use std::net::SocketAddr;

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

/// `PUT` an image's manifest under `reference`, with `auth` or with no `Authorization`.
fn put(addr: SocketAddr, repo: &str, reference: &str, image: &Image, auth: Option<&str>) -> Resp {
    let mut headers = vec![("Content-Type", image::OCI_MANIFEST)];
    if let Some(a) = auth {
        headers.push(("Authorization", a));
    }
    request(
        addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &headers,
        &image.manifest,
    )
}

/// A pushed image and a different one whose blobs the upstream holds too.
fn two_images(registry: &Registry, repo: &str) -> (Image, Image) {
    let (a, b) = (Image::random(1601, 512), Image::random(1602, 512));
    a.push_blobs(registry.addr, repo, &alice());
    b.push_blobs(registry.addr, repo, &alice());
    (a, b)
}

#[test]
fn clients_the_upstream_rejects_get_its_answer_and_never_the_pinned_digest() {
    let registry = authenticating_registry();
    let secrets = AdminSecrets::new();
    let data = tempfile::tempdir().unwrap();
    let flags = secrets.flags();
    let tagpin = Tagpin::start(
        &registry.url(),
        data.path(),
        &flags.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let (a, b) = two_images(&registry, "app");
    assert_eq!(put(tagpin.addr, "app", "v1", &a, Some(&alice())).status, 201);

    let forged = basic(USER, "not-the-password");
    for auth in [None, Some(forged.as_str())] {
        let pinned = put(tagpin.addr, "app", "v1", &b, auth);
        let free = put(tagpin.addr, "app", "never-pushed", &b, auth);
        assert_eq!(pinned.status, 401, "{auth:?}: {}", pinned.text());
        assert_eq!(free.status, 401, "{auth:?}: {}", free.text());
        assert_eq!(
            pinned.header("www-authenticate"),
            free.header("www-authenticate"),
            "a pinned tag must not be told apart from a free one by its challenge"
        );
        assert_eq!(pinned.oci_code(), "UNAUTHORIZED");
        for text in [pinned.text(), free.text()] {
            assert!(
                !text.contains(&a.digest()),
                "{auth:?}: the pinned digest leaked: {text}"
            );
        }
        let delete = request(
            tagpin.addr,
            "DELETE",
            "/v2/app/manifests/v1",
            &auth.map(|a| vec![("Authorization", a)]).unwrap_or_default(),
            b"",
        );
        assert_eq!(delete.status, 401, "{auth:?}: {}", delete.text());
        assert!(!delete.text().contains(&a.digest()), "{}", delete.text());
    }

    // The same write with credentials the upstream accepts gets the refusal and its facts.
    let refused = put(tagpin.addr, "app", "v1", &b, Some(&alice()));
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert_eq!(refused.json()["errors"][0]["detail"]["pinned_digest"], a.digest());
    assert_eq!(upstream_digest(&registry, "app", "v1"), Some(a.digest()));
    assert_eq!(upstream_digest(&registry, "app", "never-pushed"), None);
}

#[test]
fn only_users_the_upstream_accepted_are_named_in_the_evidence() {
    const FORGED: usize = 30;
    let registry = authenticating_registry();
    let secrets = AdminSecrets::new();
    let data = tempfile::tempdir().unwrap();
    let flags = secrets.flags();
    let tagpin = Tagpin::start(
        &registry.url(),
        data.path(),
        &flags.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let (a, b) = two_images(&registry, "svc");
    assert_eq!(put(tagpin.addr, "svc", "1.0", &a, Some(&alice())).status, 201);

    let forged = basic(USER, "guessed");
    for _ in 0..FORGED {
        assert_eq!(put(tagpin.addr, "svc", "1.0", &b, Some(&forged)).status, 401);
    }
    let admin = tagpin.admin_addr();
    let pin = secrets.pin(admin, "svc:1.0").expect("the tag is pinned");
    assert_eq!(
        pin["refused"].as_array().unwrap().len(),
        0,
        "forged attempts were kept: {pin}"
    );
    let named = |events: &[serde_json::Value]| {
        events
            .iter()
            .filter(|e| e["action"] == "push_refused" && e["user"] == USER)
            .count()
    };
    assert_eq!(
        named(&tagpin.audit_events()),
        0,
        "a forged user was named in the audit log"
    );
    let metrics = request(tagpin.addr, "GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains(&format!(
            "tagpin_unauthenticated_refusals_total{{action=\"push_refused\"}} {FORGED}"
        )),
        "{metrics}"
    );
    assert!(
        tagpin
            .logs()
            .iter()
            .any(|l| l.contains("the upstream did not authenticate")),
        "no log line says the user was not authenticated"
    );

    // The real user's refused attempt is kept and named.
    assert_eq!(put(tagpin.addr, "svc", "1.0", &b, Some(&alice())).status, 409);
    tagpin.wait_for_audit(|e| e["action"] == "push_refused" && e["user"] == USER);
    let pin = secrets.pin(admin, "svc:1.0").unwrap();
    let refused = pin["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{pin}");
    assert_eq!(refused[0]["user"], USER);
    assert_eq!(refused[0]["attempted"], b.digest());
    assert_eq!(upstream_digest(&registry, "svc", "1.0"), Some(a.digest()));
}

#[test]
fn a_push_only_credential_cannot_make_a_tag_that_predates_tagpin_look_free() {
    let registry = authenticating_registry();
    let relay = PushOnlyRelay::start(registry.addr, &alice());
    let (a, b) = two_images(&registry, "legacy");
    // The tag predates tagpin: pushed straight to the upstream.
    assert_eq!(a.put_manifest(registry.addr, "legacy", "stable", &alice()).status, 201);
    let bob = basic(BOB, BOB_PASSWORD);

    // tagpin's own read credentials are what keep bob from moving it.
    let files = tempfile::tempdir().unwrap();
    let credentials = files.path().join("upstream-credentials");
    std::fs::write(&credentials, format!("{USER}:{PASSWORD}\n")).unwrap();
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(
        &format!("http://{}", relay.addr),
        data.path(),
        &["--upstream-credentials-file", credentials.to_str().unwrap()],
    );
    let moved = put(tagpin.addr, "legacy", "stable", &b, Some(&bob));
    assert_eq!(
        upstream_digest(&registry, "legacy", "stable"),
        Some(a.digest()),
        "bob's push ({}: {}) moved a tag that predates tagpin",
        moved.status,
        moved.text()
    );
    // bob's credentials are good (the upstream lets him push), so he is told why.
    assert_eq!(moved.status, 409, "{}", moved.text());
    assert_eq!(moved.json()["errors"][0]["detail"]["pinned_digest"], a.digest());
    // A tag bob may create is still his to create.
    assert_eq!(put(tagpin.addr, "legacy", "bobs-own", &b, Some(&bob)).status, 201);
    assert_eq!(upstream_digest(&registry, "legacy", "bobs-own"), Some(b.digest()));
}
