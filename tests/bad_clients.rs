//! Clients that misbehave: trickled headers, abandoned uploads, floods of idle
//! connections. Each gets a clear end, memory stays bounded, and others keep being
//! served. Also: graceful drain on SIGTERM, and no secret in any log line.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::watch::WatchRelay;
use common::*;

/// Generous bound for "the server ended it": the configured limits are about 1 s.
const ENDED_WITHIN: Duration = Duration::from_secs(15);

/// Read until the server closes the connection; returns what it sent.
fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(ENDED_WITHIN)).unwrap();
    let mut out = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("server did not end the connection within {:?}: {e}", start.elapsed()),
        }
    }
}

#[test]
fn trickled_headers_hit_the_header_timeout() {
    let Stack {
        registry: _registry,
        tagpin,
        data: _data,
    } = Stack::start(&["--client-header-timeout-ms", "1000"]);
    let mut s = TcpStream::connect(tagpin.addr).unwrap();
    s.write_all(b"PUT /v2/a/manifests/v1 HTTP/1.1\r\nHost: x\r\n").unwrap();
    let writer = s.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        let mut w = writer;
        for _ in 0..40 {
            if w.write_all(b"X").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    let got = read_until_closed(&mut s);
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    trickle.join().unwrap();
    assert_eq!(request(tagpin.addr, "GET", "/v2/", &[], b"").status, 200);
}

#[test]
fn an_abandoned_upload_is_cut_by_the_body_idle_timeout() {
    let Stack {
        registry,
        tagpin,
        data: _data,
    } = Stack::start(&["--body-idle-timeout-ms", "1000"]);
    let start = request(tagpin.addr, "POST", "/v2/ab/blobs/uploads/", &[], b"");
    let loc = start.header("location").unwrap();
    let path = &loc[loc.find("/v2/").unwrap()..];
    let mut s = TcpStream::connect(tagpin.addr).unwrap();
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1048576\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&[7u8; 1024]).unwrap();
    // ... and the client goes quiet. tagpin must end the exchange on its own: the cut
    // body aborts the forwarded PATCH, whose failure is the answer (504 while the
    // upstream still waits for the rest, 502 once it has dropped the connection).
    let got = read_until_closed(&mut s);
    let text = String::from_utf8_lossy(&got);
    assert!(
        (text.starts_with("HTTP/1.1 504") || text.starts_with("HTTP/1.1 502")) && text.contains("\"UNAVAILABLE\""),
        "{text}"
    );
    // The upstream kept none of the stalled body: the session is empty, or gone.
    let upload = request(registry.addr, "GET", path, &[], b"");
    assert!(
        (upload.status, upload.header("range")) == (204, Some("0-0"))
            || (upload.status == 404
                && ["BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID"].contains(&upload.oci_code().as_str())),
        "{} {:?} {}",
        upload.status,
        upload.header("range"),
        upload.text()
    );
    // A manifest push whose body never arrives is cut the same way.
    let mut s = TcpStream::connect(tagpin.addr).unwrap();
    s.write_all(b"PUT /v2/ab/manifests/v1 HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"sch")
        .unwrap();
    let got = read_until_closed(&mut s);
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 400") && text.contains("MANIFEST_INVALID"),
        "{text}"
    );
    assert_eq!(upstream_digest(&registry, "ab", "v1"), None);
    assert_eq!(request(tagpin.addr, "GET", "/v2/", &[], b"").status, 200);
}

/// A connection to `addr` that asks for `/metrics` at once: tagpin answers as soon as
/// it accepts it.
fn ask_metrics(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    s
}

/// The open-connection gauge in the answer on `s` (see [`ask_metrics`]), or what came
/// instead.
fn open_connections_in(mut s: TcpStream) -> Result<u64, String> {
    let got = read_until_closed(&mut s);
    let text = String::from_utf8_lossy(&got);
    if !text.starts_with("HTTP/1.1 200") {
        return Err(text.lines().next().unwrap_or("no answer").to_owned());
    }
    text.lines()
        .find_map(|l| l.strip_prefix("tagpin_open_connections "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no open-connection gauge in {text}"))
}

#[test]
fn a_flood_of_idle_connections_is_bounded_and_others_are_still_served() {
    const LIMIT: u64 = 64;
    let registry = Registry::start();
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(
        &registry.url(),
        data.path(),
        &["--max-connections", "64", "--client-header-timeout-ms", "2000"],
    );
    let before = tagpin.rss_kib();
    // Far more silent connections than the limit. The kernel queues the excess (accepts
    // are in order); tagpin holds at most 64 and closes each silent one at the header
    // timeout, so a real client behind them is served after a few timeouts' worth of
    // waiting. Two of them ask for the open-connection gauge as soon as they are
    // accepted: the 64th, which fills the last slot, and one queued behind the limit.
    let mut idle: Vec<TcpStream> = (0..LIMIT - 1)
        .filter_map(|_| TcpStream::connect(tagpin.addr).ok())
        .collect();
    let at_limit = ask_metrics(tagpin.addr);
    idle.extend((0..LIMIT).filter_map(|_| TcpStream::connect(tagpin.addr).ok()));
    let beyond = ask_metrics(tagpin.addr);
    idle.extend((0..120).filter_map(|_| TcpStream::connect(tagpin.addr).ok()));
    assert_eq!(idle.len(), 247);
    let (at_limit, beyond) = std::thread::scope(|s| {
        let a = s.spawn(|| open_connections_in(at_limit));
        let b = s.spawn(|| open_connections_in(beyond));
        (a.join().unwrap(), b.join().unwrap())
    });
    // All 63 before it were accepted first and are still open (within the timeout): the
    // gauge counts exactly the limit. A gauge that counted nothing, or a limit that let
    // more in, shows here.
    assert_eq!(at_limit, Ok(LIMIT), "the 64th connection's reading");
    let beyond = beyond.unwrap();
    assert!(
        (1..=LIMIT).contains(&beyond),
        "a connection queued behind the limit saw {beyond} open"
    );
    let r = request(tagpin.addr, "GET", "/v2/", &[], b"");
    assert_eq!(r.status, 200);
    let after = tagpin.rss_kib();
    assert!(after < before + 64 * 1024, "RSS grew from {before} KiB to {after} KiB");
    drop(idle);
}

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let registry = Registry::start();
    let relay = WatchRelay::start_with_delay(registry.addr, Duration::from_millis(1500));
    let data = tempfile::tempdir().unwrap();
    let mut tagpin = Tagpin::start(&relay.url(), data.path(), &["--shutdown-grace-ms", "20000"]);
    let addr = tagpin.addr;
    let forwarded = || relay.requests().iter().filter(|l| l.starts_with("GET /v2/ ")).count();
    let before = forwarded();
    let in_flight = std::thread::spawn(move || request(addr, "GET", "/v2/", &[], b""));
    // In flight: tagpin has forwarded it and waits for the upstream's (held back) answer.
    let deadline = Instant::now() + Duration::from_secs(30);
    while forwarded() == before {
        assert!(Instant::now() < deadline, "the request never reached the upstream");
        std::thread::sleep(Duration::from_millis(2));
    }
    let status = tagpin.terminate();
    assert!(status.success(), "{status:?}");
    let r = in_flight.join().unwrap();
    assert_eq!(r.status, 200, "the in-flight request was dropped");
    assert!(TcpStream::connect(addr).is_err(), "still accepting after shutdown");
}

#[test]
fn no_credential_reaches_any_log_line() {
    let registry = Registry::start_with(RegistryOptions {
        basic_auth: Some(("carol".into(), "pw-LEAKCHECK-1".into())),
        ..Default::default()
    });
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start_env(&registry.url(), data.path(), &[], &[("RUST_LOG", "trace")]);
    let basic = basic("carol", "pw-LEAKCHECK-1");
    let secrets = [
        "pw-LEAKCHECK-1",
        &basic[6..],
        "tok-LEAKCHECK-2",
        "cookie-LEAKCHECK-3",
        "query-LEAKCHECK-4",
        "query-LEAKCHECK-5",
    ];
    let img = Image::random(500, 100);
    img.push_blobs(tagpin.addr, "sec", &basic);
    let auth = [
        ("Authorization", basic.as_str()),
        ("Content-Type", image::OCI_MANIFEST),
        ("Cookie", "session=cookie-LEAKCHECK-3"),
    ];
    assert_eq!(
        request(tagpin.addr, "PUT", "/v2/sec/manifests/v1", &auth, &img.manifest).status,
        201
    );
    assert_eq!(
        request(
            tagpin.addr,
            "PUT",
            "/v2/sec/manifests/v1",
            &auth,
            &img.variant("x").manifest
        )
        .status,
        409
    );
    let bearer = [("Authorization", "Bearer tok-LEAKCHECK-2")];
    request(tagpin.addr, "GET", "/v2/sec/tags/list", &bearer, b"");
    request(tagpin.addr, "PUT", "/v2/sec/manifests/v2", &bearer, &img.manifest);
    request(
        tagpin.addr,
        "GET",
        "/v2/sec/tags/list?access_token=query-LEAKCHECK-4",
        &auth,
        b"",
    );
    let r = request(
        tagpin.addr,
        "PUT",
        "/v2/sec/manifests/v3?token=query-LEAKCHECK-5",
        &auth,
        &img.manifest,
    );
    assert_eq!(r.status, 400);
    assert!(!r.text().contains("LEAKCHECK"), "echoed a secret: {}", r.text());
    request(tagpin.addr, "DELETE", "/v2/sec/manifests/v1", &auth, b"");
    tagpin.wait_for_audit(|e| e["action"] == "delete_refused");
    let logs = tagpin.logs();
    assert!(logs.len() > 10, "expected a verbose log at trace level");
    for line in &logs {
        for secret in secrets {
            assert!(!line.contains(secret), "secret {secret:?} in log line: {line}");
        }
    }
}
