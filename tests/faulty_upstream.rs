//! A faulty upstream: refused connections, hangs at connect, at headers and mid-body,
//! resets, 5xx answers, a wrong `Docker-Content-Digest`. Each gets a prompt OCI error
//! (502, 503 or 504) within the configured timeouts, a push that failed records no pin,
//! and tagpin keeps serving.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fake::{refused_port, Action, FakeUpstream};
use common::*;

const SHORT: [&str; 6] = [
    "--upstream-connect-timeout-ms",
    "500",
    "--upstream-header-timeout-ms",
    "1500",
    "--body-idle-timeout-ms",
    "1000",
];

/// Timeouts are configured at 1.5 s at most; an answer that takes ten times that means a
/// timeout was not enforced. (A bound on correctness, not a performance figure.)
const PROMPT: Duration = Duration::from_secs(15);

fn timed(f: impl FnOnce() -> Resp) -> Resp {
    let start = Instant::now();
    let r = f();
    assert!(start.elapsed() < PROMPT, "answer took {:?}", start.elapsed());
    r
}

fn tagpin_for(upstream: &str) -> (Tagpin, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    (Tagpin::start(upstream, data.path(), &SHORT), data)
}

fn put(t: &Tagpin, img: &Image, tag: &str) -> Resp {
    timed(|| img.put_manifest(t.addr, "f", tag, ""))
}

fn assert_serving(t: &Tagpin) {
    assert_eq!(request(t.addr, "GET", "/healthz", &[], b"").status, 200);
}

#[test]
fn a_refused_connection_is_a_502_and_pins_nothing() {
    let port = refused_port();
    let (t, _d) = tagpin_for(&format!("http://{port}"));
    let r = timed(|| request(t.addr, "GET", "/v2/", &[], b""));
    assert_eq!((r.status, r.oci_code().as_str()), (502, "UNAVAILABLE"));
    assert!(
        !r.text().contains(&port.to_string()),
        "5xx body leaks internals: {}",
        r.text()
    );
    let r = put(&t, &Image::random(200, 10), "v1");
    assert_eq!((r.status, r.oci_code().as_str()), (502, "UNAVAILABLE"));
    assert_eq!(request(t.addr, "GET", "/readyz", &[], b"").status, 503);
    assert_serving(&t);
}

#[test]
fn a_hang_at_connect_is_cut_by_the_connect_timeout() {
    // A listener whose accept queue is full: further SYNs are dropped, so connect hangs.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        s.listen(1).unwrap()
    });
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => fillers.push(s),
            Err(_) => break,
        }
    }
    let (t, _d) = tagpin_for(&format!("http://{addr}"));
    let r = timed(|| request(t.addr, "GET", "/v2/", &[], b""));
    assert!(r.status == 502 || r.status == 504, "{}", r.status);
    assert_eq!(r.oci_code(), "UNAVAILABLE");
    assert_serving(&t);
    drop(listener);
}

#[test]
fn a_hang_at_headers_is_a_504_and_nothing_is_forwarded() {
    let fake = FakeUpstream::start(|_, _| Action::Hang);
    let (t, _d) = tagpin_for(&fake.url());
    let r = timed(|| request(t.addr, "GET", "/v2/", &[], b""));
    assert_eq!((r.status, r.oci_code().as_str()), (504, "UNAVAILABLE"));
    let r = put(&t, &Image::random(201, 10), "v1");
    assert_eq!((r.status, r.oci_code().as_str()), (504, "UNAVAILABLE"));
    assert!(
        fake.requests().iter().all(|s| s.method != "PUT"),
        "{:?}",
        fake.requests()
    );
    let metrics = request(t.addr, "GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains("tagpin_upstream_failures_total{kind=\"timeout\"} 2"),
        "{metrics}"
    );
    assert_serving(&t);
}

#[test]
fn a_body_that_stalls_or_breaks_midway_is_cut_and_tagpin_keeps_serving() {
    let fake = FakeUpstream::start(|_, target| {
        if target.ends_with("stall") {
            Action::StallBody {
                len: 100_000,
                sent: 1_000,
            }
        } else {
            Action::CloseMidBody {
                len: 100_000,
                sent: 2_000,
            }
        }
    });
    let (t, _d) = tagpin_for(&fake.url());
    for (path, sent) in [("/v2/f/blobs/stall", 1_000), ("/v2/f/blobs/close", 2_000)] {
        let r = timed(|| request(t.addr, "GET", path, &[], b""));
        assert_eq!(r.status, 200);
        assert!(
            r.body.len() < 100_000,
            "{path}: a truncated body must not look complete"
        );
        assert!(r.body.len() <= sent, "{path}");
        assert_serving(&t);
    }
}

#[test]
fn a_5xx_on_the_tag_check_refuses_the_push() {
    let fake = FakeUpstream::start(|method, _| match method {
        "HEAD" => Action::status(500),
        _ => Action::status(201),
    });
    let (t, _d) = tagpin_for(&fake.url());
    let r = put(&t, &Image::random(202, 10), "v1");
    assert_eq!((r.status, r.oci_code().as_str()), (502, "UNAVAILABLE"), "{}", r.text());
    assert!(
        fake.requests().iter().all(|s| s.method != "PUT"),
        "fail closed: nothing forwarded"
    );
    assert_serving(&t);
}

/// An upstream whose manifest PUT misbehaves in mode 0 and works in mode 1; HEAD is 404
/// (the tag is new) throughout.
fn two_mode_upstream(
    first: impl Fn() -> Action + Send + Sync + 'static,
    good: Image,
) -> (FakeUpstream, Arc<AtomicUsize>) {
    let mode = Arc::new(AtomicUsize::new(0));
    let m = Arc::clone(&mode);
    let fake = FakeUpstream::start(move |method, _| match (method, m.load(Ordering::SeqCst)) {
        ("HEAD", _) => Action::status(404),
        ("PUT", 0) => first(),
        ("PUT", _) => Action::with_header(201, "Docker-Content-Digest", &good.digest()),
        _ => Action::status(200),
    });
    (fake, mode)
}

#[test]
fn an_upstream_5xx_on_the_push_passes_through_and_pins_nothing() {
    let (a, b) = (Image::random(203, 10), Image::random(204, 10));
    let (fake, mode) = two_mode_upstream(|| Action::status(503), b.clone());
    let (t, _d) = tagpin_for(&fake.url());
    assert_eq!(put(&t, &a, "v1").status, 503);
    mode.store(1, Ordering::SeqCst);
    // No pin was recorded for `a`, so `b` may take the tag; then `a` may not.
    assert_eq!(put(&t, &b, "v1").status, 201);
    assert_eq!(put(&t, &a, "v1").status, 409);
}

#[test]
fn a_wrong_docker_content_digest_is_a_502_and_keeps_the_tag_reserved() {
    let (a, b) = (Image::random(205, 10), Image::random(206, 10));
    let wrong = format!("sha256:{}", "1".repeat(64));
    let (fake, mode) = two_mode_upstream(
        move || Action::with_header(201, "Docker-Content-Digest", &wrong),
        b.clone(),
    );
    let (t, _d) = tagpin_for(&fake.url());
    let r = put(&t, &a, "v1");
    assert_eq!((r.status, r.oci_code().as_str()), (502, "UNAVAILABLE"), "{}", r.text());
    // The upstream accepted something under the tag: that is no refusal, so the claim
    // made for `a` before forwarding stays and no other digest may take the tag.
    mode.store(1, Ordering::SeqCst);
    let r = put(&t, &b, "v1");
    assert_eq!(r.status, 409, "{}", r.text());
    let detail = &r.json()["errors"][0]["detail"];
    assert_eq!(
        (detail["state"].as_str(), detail["pinned_digest"].as_str()),
        (Some("claimed"), Some(a.digest().as_str()))
    );
    let puts = fake.requests().iter().filter(|s| s.method == "PUT").count();
    assert_eq!(puts, 1, "the refused push must not be forwarded");
}

#[test]
fn a_slow_upload_is_not_cut_by_the_upstream_header_timeout() {
    use std::io::{Read, Write};
    // The header timeout (1.5 s) counts from the end of the request body: an upload that
    // keeps flowing for longer than that must go through.
    let registry = Registry::start();
    let (t, _d) = tagpin_for(&registry.url());
    let start = request(t.addr, "POST", "/v2/slow/blobs/uploads/", &[], b"");
    let loc = start.header("location").unwrap();
    let path = &loc[loc.find("/v2/").unwrap()..];
    let blob = image::random_bytes(7, 10 * 64 * 1024);
    let target = format!("{path}&digest={}", image::sha256(&blob));
    let mut s = std::net::TcpStream::connect(t.addr).unwrap();
    let head = format!(
        "PUT {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        t.addr,
        blob.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    for chunk in blob.chunks(64 * 1024) {
        s.write_all(chunk).unwrap();
        // Slower overall than the header timeout, never idle as long as the body timeout.
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
}

/// Two images in one repository at the upstream, tagged `a1` and `b2`: with one tag per
/// page, `b2` is only on the second page of the tag list.
fn two_pages(registry: &Registry) -> (Image, Image) {
    let (first, second) = (Image::random(51, 300), Image::random(52, 300));
    for (img, tag) in [(&first, "a1"), (&second, "b2")] {
        img.push_blobs(registry.addr, "paged", "");
        assert_eq!(img.put_manifest(registry.addr, "paged", tag, "").status, 201);
    }
    (first, second)
}

fn delete_digest(t: &Tagpin, digest: &str) -> Resp {
    timed(|| request(t.addr, "DELETE", &format!("/v2/paged/manifests/{digest}"), &[], b""))
}

/// An upstream whose next link is an absolute URL on its own origin: tagpin follows it,
/// so a tag on page 2 is adopted and protects its digest.
#[test]
fn a_tag_on_an_absolutely_linked_second_page_protects_its_digest() {
    let registry = Registry::start();
    let (_, second) = two_pages(&registry);
    let relay = paging::start(registry.addr, paging::Links::Own);
    let (t, _data) = tagpin_for(&relay.url());
    let del = delete_digest(&t, &second.digest());
    assert_eq!(del.status, 409, "{}", del.text());
    assert_eq!(del.oci_code(), "DENIED");
    assert_eq!(upstream_digest(&registry, "paged", "b2"), Some(second.digest()));
    let lists = relay
        .requests()
        .iter()
        .filter(|r| r.target.contains("/tags/list"))
        .count();
    assert_eq!(lists, 2, "both pages were read: {:?}", relay.requests());
    assert!(relay.requests().iter().all(|r| r.method != "DELETE"));
}

/// A next link to another origin is neither followed (it would carry the client's
/// credentials there) nor taken for the end of the list: the delete is refused as a
/// failure of the upstream, counted under `check`, and nothing is deleted.
#[test]
fn a_next_link_to_another_origin_refuses_the_delete() {
    let registry = Registry::start();
    let (_, second) = two_pages(&registry);
    let elsewhere = FakeUpstream::start(|_, _| Action::status(200));
    let relay = paging::start(registry.addr, paging::Links::Other(elsewhere.url()));
    let (t, _data) = tagpin_for(&relay.url());
    let del = delete_digest(&t, &second.digest());
    assert_eq!(del.status, 502, "{}", del.text());
    assert_eq!(del.oci_code(), "UNAVAILABLE");
    assert_eq!(upstream_digest(&registry, "paged", "b2"), Some(second.digest()));
    assert!(relay.requests().iter().all(|r| r.method != "DELETE"));
    assert!(elsewhere.requests().is_empty(), "followed: {:?}", elsewhere.requests());
    let metrics = request(t.addr, "GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains("tagpin_upstream_failures_total{kind=\"check\"} 1"),
        "{metrics}"
    );
}
