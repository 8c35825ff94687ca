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
