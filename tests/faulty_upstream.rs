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

const SHORT: [&str; 8] = [
    "--upstream-connect-timeout-ms",
    "500",
    "--upstream-header-timeout-ms",
    "1500",
    "--upstream-check-timeout-ms",
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
    // A connect that never completes is a failure to reach the upstream (502), counted
    // as a connect failure: not a header timeout (504), which would mean the connect
    // timeout did not apply and the request waited for an answer instead.
    assert_eq!((r.status, r.oci_code().as_str()), (502, "UNAVAILABLE"), "{}", r.text());
    assert!(r.text().contains("cannot be reached"), "{}", r.text());
    let metrics = request(t.addr, "GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains("tagpin_upstream_failures_total{kind=\"connect\"} 1"),
        "{metrics}"
    );
    assert_serving(&t);
    drop(listener);
}

#[test]
fn a_hung_upstream_fails_a_push_at_the_check_timeout_not_the_header_timeout() {
    // Every request reaches the upstream and gets no answer. The forwarded-request header
    // timeout is a minute; tagpin's own tag check gives up after 800 ms, so the push is
    // answered long before the minute (the bound below is which timeout applied, not a
    // performance figure) and nothing is forwarded or pinned.
    let fake = FakeUpstream::start(|_, _| Action::Hang);
    let data = tempfile::tempdir().unwrap();
    let t = Tagpin::start(
        &fake.url(),
        data.path(),
        &[
            "--upstream-header-timeout-ms",
            "60000",
            "--upstream-check-timeout-ms",
            "800",
        ],
    );
    let img = Image::random(220, 10);
    let start = Instant::now();
    let r = img.put_manifest(t.addr, "f", "v1", "");
    let took = start.elapsed();
    assert_eq!((r.status, r.oci_code().as_str()), (504, "UNAVAILABLE"), "{}", r.text());
    assert!(
        took < Duration::from_secs(30),
        "the 60 s header timeout applied: {took:?}"
    );
    assert!(
        fake.requests().iter().all(|s| s.method != "PUT"),
        "{:?}",
        fake.requests()
    );
    // Nothing was pinned or claimed: against an upstream that answers, another digest
    // takes the tag.
    drop(t);
    let registry = Registry::start();
    let t = Tagpin::start(&registry.url(), data.path(), &[]);
    let other = Image::random(221, 10);
    other.push_blobs(t.addr, "f", "");
    assert_eq!(other.put_manifest(t.addr, "f", "v1", "").status, 201);
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
fn an_upstream_that_stops_reading_an_upload_is_a_504_at_the_body_idle_timeout() {
    use std::io::{Read, Write};
    let fake = FakeUpstream::start(|_, _| Action::StopReading);
    let (t, _d) = tagpin_for(&fake.url());
    let started = Instant::now();
    let mut conn = std::net::TcpStream::connect(t.addr).unwrap();
    conn.set_read_timeout(Some(PROMPT)).unwrap();
    // 256 MiB announced, far beyond what the kernel buffers between the three peers: the
    // upload stalls once the fake's socket is full.
    let len: usize = 256 << 20;
    let head = format!(
        "PATCH /v2/f/blobs/uploads/u HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
    );
    let mut writer = conn.try_clone().unwrap();
    let feeder = std::thread::spawn(move || {
        writer.write_all(head.as_bytes()).unwrap();
        let chunk = vec![b'x'; 64 << 10];
        let mut sent = 0;
        while sent < len && writer.write_all(&chunk).is_ok() {
            sent += chunk.len();
            if started.elapsed() > PROMPT {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer).to_string();
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    assert!(started.elapsed() < PROMPT, "answered after {:?}", started.elapsed());
    // Both directions, so the feeder's blocked write fails at once.
    let _ = conn.shutdown(std::net::Shutdown::Both);
    let _ = feeder.join();
    assert_eq!(fake.requests().len(), 1, "{:?}", fake.requests());
    let metrics = request(t.addr, "GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains("tagpin_upstream_failures_total{kind=\"timeout\"} 1"),
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
fn an_upstream_500_on_the_push_passes_through_and_pins_nothing() {
    let (a, b) = (Image::random(203, 10), Image::random(204, 10));
    let (fake, mode) = two_mode_upstream(|| Action::status(500), b.clone());
    let (t, _d) = tagpin_for(&fake.url());
    assert_eq!(put(&t, &a, "v1").status, 500);
    mode.store(1, Ordering::SeqCst);
    // No pin was recorded for `a`, so `b` may take the tag; then `a` may not.
    assert_eq!(put(&t, &b, "v1").status, 201);
    assert_eq!(put(&t, &a, "v1").status, 409);
    // Asked of the upstream: `a` was forwarded once (answered 500), `b` once, and the
    // refused retry of `a` never reached it.
    assert_eq!(puts_to(&fake, "/v2/f/manifests/v1"), 2, "{:?}", fake.requests());
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
    // The upstream stored *something* under v1: no pin, but the claim for `a` stays
    // (fail closed), so no other digest is forwarded to the tag.
    let r = put(&t, &b, "v1");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(detail(&r)["state"], "claimed");
    assert_eq!(detail(&r)["pinned_digest"], a.digest());
    assert_eq!(
        puts_to(&fake, "/v2/f/manifests/v1"),
        1,
        "the rival digest was forwarded"
    );
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
fn detail(r: &Resp) -> serde_json::Value {
    r.json()["errors"][0]["detail"].clone()
}

/// The manifest PUTs the fake received for `target` (path and query).
fn puts_to(fake: &FakeUpstream, target: &str) -> usize {
    fake.requests()
        .iter()
        .filter(|s| s.method == "PUT" && s.target == target)
        .count()
}

#[test]
fn a_tag_query_push_pins_only_the_tags_the_upstream_lists_in_oci_tag() {
    let (a, b) = (Image::random(207, 10), Image::random(208, 10));
    let (da, db) = (a.digest(), b.digest());
    let by_digest = format!("/v2/f/manifests/{da}?tag=v1&tag=v2");
    let fake = FakeUpstream::start({
        let by_digest = by_digest.clone();
        move |method, target| match method {
            "HEAD" => Action::status(404),
            // A registry that supports `?tag=` and applied only v1 (spec.md, "Pushing
            // Manifests": it lists the tags it applied in `OCI-Tag`).
            "PUT" if target == by_digest => Action::Respond {
                status: 201,
                headers: vec![
                    ("Docker-Content-Digest".into(), da.clone()),
                    ("OCI-Tag".into(), "v1".into()),
                ],
                body: vec![],
            },
            "PUT" => Action::with_header(201, "Docker-Content-Digest", &db),
            _ => Action::status(200),
        }
    });
    let (t, _d) = tagpin_for(&fake.url());
    let r = timed(|| a.put_manifest(t.addr, "f", &format!("{}?tag=v1&tag=v2", a.digest()), ""));
    assert_eq!(r.status, 201, "{}", r.text());

    let r = put(&t, &b, "v1");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(detail(&r)["pinned_digest"], a.digest());
    assert_eq!(detail(&r)["state"], "pinned");
    assert_eq!(puts_to(&fake, "/v2/f/manifests/v1"), 0, "a refused push was forwarded");

    // The upstream did not apply v2, so nothing holds it: another digest may take it.
    let r = put(&t, &b, "v2");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(puts_to(&fake, "/v2/f/manifests/v2"), 1);
}

#[test]
fn a_201_without_docker_content_digest_is_confirmed_with_a_head_and_pinned() {
    let (a, b) = (Image::random(209, 10), Image::random(210, 10));
    // What the fake holds under v1: set by the first PUT, taken away by the test.
    let v1: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let fake = FakeUpstream::start({
        let (v1, da) = (Arc::clone(&v1), a.digest());
        move |method, target| match (method, target) {
            ("HEAD", "/v2/f/manifests/v1") => match v1.lock().unwrap().clone() {
                Some(d) => Action::with_header(200, "Docker-Content-Digest", &d),
                None => Action::status(404),
            },
            ("PUT", "/v2/f/manifests/v1") => {
                v1.lock().unwrap().get_or_insert(da.clone());
                Action::status(201)
            }
            // A registry's base endpoint, open to anyone here.
            ("GET", "/v2/") => Action::status(200),
            _ => Action::status(404),
        }
    });
    let (t, _d) = tagpin_for(&fake.url());
    let r = put(&t, &a, "v1");
    assert_eq!(r.status, 201, "{}", r.text());
    let seen: Vec<String> = fake
        .requests()
        .iter()
        .map(|s| format!("{} {}", s.method, s.target))
        .collect();
    assert_eq!(
        seen,
        [
            "HEAD /v2/f/manifests/v1",
            "PUT /v2/f/manifests/v1",
            "HEAD /v2/f/manifests/v1"
        ],
        "the 201 is confirmed with a HEAD"
    );
    t.wait_for_audit(|e| e["action"] == "pin_created" && e["tag"] == "v1");

    // The tag goes away at the upstream (deleted behind tagpin's back): the pin is a
    // tombstone, so the refusal comes from the store, not from adopting what is there.
    *v1.lock().unwrap() = None;
    let r = put(&t, &b, "v1");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(detail(&r)["pinned_digest"], a.digest());
    assert_eq!(detail(&r)["state"], "pinned");
    assert_eq!(
        puts_to(&fake, "/v2/f/manifests/v1"),
        1,
        "the second digest was forwarded"
    );
}

#[test]
fn a_gateway_error_on_the_push_keeps_the_tag_reserved_and_a_400_frees_it() {
    let (a, b) = (Image::random(211, 10), Image::random(212, 10));
    let db = b.digest();
    // Each tag's first PUT gets the status in its name; later PUTs are accepted as `b`.
    let answered: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let fake = FakeUpstream::start({
        let answered = Arc::clone(&answered);
        move |method, target| match method {
            "HEAD" => Action::status(404),
            "PUT" => {
                let mut answered = answered.lock().unwrap();
                if answered.iter().any(|t| t == target) {
                    return Action::with_header(201, "Docker-Content-Digest", &db);
                }
                answered.push(target.to_owned());
                let status = target.rsplit('-').next().and_then(|s| s.parse().ok()).unwrap_or(500);
                Action::status(status)
            }
            _ => Action::status(200),
        }
    });
    let (t, _d) = tagpin_for(&fake.url());
    for status in [502, 503, 504] {
        let tag = format!("gw-{status}");
        assert_eq!(put(&t, &a, &tag).status, status);
        let r = put(&t, &b, &tag);
        assert_eq!(r.status, 409, "{tag}: {}", r.text());
        assert_eq!(detail(&r)["state"], "claimed", "{tag}");
        assert_eq!(detail(&r)["pinned_digest"], a.digest(), "{tag}");
        assert_eq!(
            puts_to(&fake, &format!("/v2/f/manifests/{tag}")),
            1,
            "{tag}: the rival digest was forwarded"
        );
    }
    // A 400 is the upstream's definitive refusal: the claim is withdrawn.
    assert_eq!(put(&t, &a, "bad-400").status, 400);
    let r = put(&t, &b, "bad-400");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(puts_to(&fake, "/v2/f/manifests/bad-400"), 2);
    assert_eq!(put(&t, &a, "bad-400").status, 409, "b holds it now");
}

/// After a 2xx without `Docker-Content-Digest` to a push *by tag*, tagpin confirms the
/// digest with a HEAD. A HEAD served stale (a cache or replica in front of the registry,
/// still holding the 404 of the pre-push check) must not free the tag: the claim stays,
/// the client hears that the outcome is unknown, and the next digest is refused.
#[test]
fn a_2xx_by_tag_whose_confirming_head_is_stale_keeps_the_tag_reserved() {
    let (a, b) = (Image::random(213, 10), Image::random(214, 10));
    // A registry behind a cache that keeps answering the tag's HEAD with 404.
    let fake = FakeUpstream::start(|method, target| match method {
        "HEAD" => Action::status(404),
        "PUT" => Action::status(201),
        "GET" if target == "/v2/" => Action::status(200),
        _ => Action::status(404),
    });
    let (t, _d) = tagpin_for(&fake.url());
    let r = put(&t, &a, "v1");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("not known"), "{}", r.text());
    let r = put(&t, &b, "v1");
    assert_eq!(
        puts_to(&fake, "/v2/f/manifests/v1"),
        1,
        "after the push of a, b was forwarded to the same tag (answered {})",
        r.status
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(detail(&r)["state"], "claimed");
}

/// The delete-in-flight record of a digest is not settled by a later delete the upstream
/// refused (401 for a client without delete rights) while the first delete's outcome is
/// still unknown; otherwise a push could pin a tag to a manifest the upstream deletes a
/// moment later.
#[test]
fn a_refused_delete_does_not_settle_an_earlier_delete_with_an_unknown_outcome() {
    let img = Image::random(215, 10);
    let digest = img.digest();
    let deletes = Arc::new(AtomicUsize::new(0));
    let fake = FakeUpstream::start({
        let (deletes, digest) = (Arc::clone(&deletes), digest.clone());
        move |method, target| match method {
            // The first delete never gets an answer (it may yet be applied); the second
            // is refused for lack of credentials.
            "DELETE" if deletes.fetch_add(1, Ordering::SeqCst) == 0 => Action::Hang,
            "DELETE" => Action::status(401),
            "PUT" => Action::with_header(201, "Docker-Content-Digest", &digest),
            "GET" if target == "/v2/" => Action::status(200),
            _ => Action::status(404),
        }
    });
    let (t, _d) = tagpin_for(&fake.url());
    let target = format!("/v2/f/manifests/{digest}");
    assert_eq!(timed(|| request(t.addr, "DELETE", &target, &[], b"")).status, 504);
    let r = put(&t, &img, "v1");
    assert_eq!(detail(&r)["reason"], "delete_in_flight", "{}", r.text());

    assert_eq!(timed(|| request(t.addr, "DELETE", &target, &[], b"")).status, 401);
    let r = put(&t, &img, "v1");
    assert_eq!(
        puts_to(&fake, "/v2/f/manifests/v1"),
        0,
        "a tag was pinned to a digest whose delete has an unknown outcome (answered {})",
        r.status
    );
    assert_eq!(detail(&r)["reason"], "delete_in_flight", "{}", r.text());
}
