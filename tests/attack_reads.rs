//! Attempts to read a protected, pinned tag through tagpin at other content than its pin,
//! each checked against the real upstream: the tag is pinned by a push through tagpin,
//! then moved straight at the upstream, and every way of asking for it through tagpin
//! must answer with the pin or not with content at all.

mod common;

use common::image::ACCEPT_ALL;
use common::reads::*;
use common::*;

/// A stack with `repo:tag` pushed through tagpin at `a` and moved at the upstream to `b`.
fn moved(repo: &str, tag: &str) -> (Stack, Image, Image) {
    let stack = Stack::start(&[]);
    let a = Image::random(7_001, 512);
    let b = a.variant("moved behind tagpin's back");
    a.push_blobs(stack.tagpin.addr, repo, "");
    let r = a.put_manifest(stack.tagpin.addr, repo, tag, "");
    assert_eq!(r.status, 201, "push through tagpin: {}", r.text());
    put_straight(&stack.registry, repo, tag, &b);
    assert_eq!(upstream_digest(&stack.registry, repo, tag), Some(b.digest()));
    (stack, a, b)
}

/// distribution 2.8 routes on the percent-decoded path, so an escape anywhere in it (the
/// keyword `manifests`, or a `/` between the name, keyword and tag) still names the
/// manifest by tag; tagpin must not forward such a read for the upstream's tag content.
#[test]
fn a_percent_encoded_keyword_or_separator_never_reads_a_moved_tag_past_its_pin() {
    let (stack, a, b) = moved("app", "v1");
    for target in [
        "/v2/app/m%61nifests/v1",
        "/v2/app/%6Danifests/v1",
        "/v2/app/manifests%2Fv1",
        "/v2/app%2Fmanifests%2Fv1",
        "/v2/app%2fmanifests/v1",
    ] {
        for method in ["GET", "HEAD"] {
            let straight = request(stack.registry.addr, method, target, &[("Accept", ACCEPT_ALL)], b"");
            assert_eq!(
                straight.header("docker-content-digest"),
                Some(b.digest().as_str()),
                "{method} {target} straight at the upstream reads the tag"
            );
            let r = request(stack.tagpin.addr, method, target, &[("Accept", ACCEPT_ALL)], b"");
            let served = r.header("docker-content-digest");
            assert!(
                served.is_none() || served == Some(a.digest().as_str()),
                "{method} {target} through tagpin: {} at {served:?}, pinned at {}",
                r.status,
                a.digest()
            );
            assert_eq!(r.status, 400, "{method} {target}: the encoded read is refused");
        }
    }
    // The plain read is still the pin.
    assert_serves(stack.tagpin.addr, "app", "v1", &a.digest(), "the plain read");
}

/// A Docker schema 2 image whose config distribution can rewrite in schema 1 (it needs a
/// history), under a Docker manifest list: the tag a client without `Accept` is answered
/// with a schema 1 rewrite of, at a digest the upstream holds no manifest under.
fn rewritable_list(registry: &Registry, repo: &str, tag: &str, seed: u64) -> DockerList {
    let mut img = Image::random(seed, 300);
    img.config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"history":[{{"created_by":"/bin/sh -c x"}}],"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        image::sha256(&img.layer)
    )
    .into_bytes();
    img.push_blobs(registry.addr, repo, &registry.auth_header());
    let list = DockerList::new(&img);
    list.push(registry.addr, repo, tag, &registry.auth_header());
    list
}

/// A header the client names in `Connection` is hop-by-hop: tagpin drops it before
/// forwarding (RFC 9110 7.6.1). A first pull whose `Accept` is so dropped is answered by
/// the upstream as for a client without one (a schema 1 rewrite of the list's platform
/// manifest, which has no digest of its own there), and must not pin the tag to it: such
/// a pin would answer every later pull with 404.
#[test]
fn an_accept_named_in_connection_never_makes_a_first_pull_pin_another_manifest_than_the_tags() {
    let stack = Stack::start(&[]);
    let (registry, tagpin) = (&stack.registry, stack.tagpin.addr);
    for (i, method) in ["GET", "HEAD"].into_iter().enumerate() {
        let tag = format!("v{i}");
        let list = rewritable_list(registry, "multi", &tag, 7_201 + i as u64);
        let own = image::sha256(&list.list);
        let straight = request(registry.addr, method, &format!("/v2/multi/manifests/{tag}"), &[], b"");
        assert_eq!(straight.status, 200, "straight, without Accept");
        assert_ne!(
            straight.header("docker-content-digest"),
            Some(own.as_str()),
            "straight, without Accept, the upstream answers with a rewrite"
        );

        let first = request(
            tagpin,
            method,
            &format!("/v2/multi/manifests/{tag}"),
            &[("Accept", ACCEPT_ALL), ("Connection", "Accept")],
            b"",
        );
        assert_eq!(first.status, 200, "{method}: the first pull: {}", first.text());
        assert_serves(
            tagpin,
            "multi",
            &tag,
            &own,
            &format!("after a first {method}, every type accepted"),
        );
        assert_eq!(upstream_digest(registry, "multi", &tag), Some(own));
    }
}
