//! Manifest bodies are the one thing tagpin buffers, so they are where a client could
//! exhaust its memory: these tests open many large manifest bodies that stall, and
//! trickle one, and check that memory stays within the budget, that ordinary pushes are
//! still served beside them, and that every refusal is an OCI error.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1024 * 1024;

/// A manifest PUT whose body declares `declared` bytes and sends only `sent` of them.
struct StalledPut {
    stream: TcpStream,
    to_send: usize,
    written: usize,
    /// tagpin ended the connection (after a refusal) before the body was out.
    ended: bool,
}

impl StalledPut {
    fn open(addr: SocketAddr, tag: &str, declared: usize, sent: usize) -> Self {
        let mut stream = TcpStream::connect(addr).unwrap();
        let head = format!(
            "PUT /v2/mem/manifests/{tag} HTTP/1.1\r\nHost: x\r\nContent-Type: {}\r\nContent-Length: {declared}\r\n\r\n",
            image::OCI_MANIFEST
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.set_nonblocking(true).unwrap();
        Self {
            stream,
            to_send: sent,
            written: 0,
            ended: false,
        }
    }

    fn done(&self) -> bool {
        self.ended || self.written == self.to_send
    }

    /// tagpin's whole answer once it has ended the connection after answering (without
    /// blocking; `None` while the connection is open or if it ended without an answer).
    fn answer(&mut self) -> Option<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return (!got.is_empty()).then_some(got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock && got.is_empty() => return None,
                // Answered but not closed within the bound: what came is the answer.
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() > deadline => return Some(got),
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => return (!got.is_empty()).then_some(got),
            }
        }
    }

    /// The status line tagpin has answered with so far, if any (without blocking).
    fn status_line(&mut self) -> Option<String> {
        let mut buf = [0u8; 512];
        match self.stream.read(&mut buf) {
            Ok(n) if n > 0 => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                text.lines().next().map(str::to_owned)
            }
            _ => None,
        }
    }

    /// Write what the socket takes without blocking; returns the bytes written.
    fn pump(&mut self, chunk: &[u8]) -> usize {
        let mut total = 0;
        while !self.done() {
            let n = chunk.len().min(self.to_send - self.written);
            match self.stream.write(&chunk[..n]) {
                Ok(0) => self.ended = true,
                Ok(n) => {
                    self.written += n;
                    total += n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => self.ended = true,
            }
        }
        total
    }
}

/// Open `count` manifest PUTs that each declare `declared` bytes, send all but the last
/// byte and stall. Returns the connections (still open) and the peak RSS seen while the
/// bodies were being sent. Bounded: gives up pushing bytes after `within`.
fn stall_many(tagpin: &Tagpin, count: usize, declared: usize, within: Duration) -> (Vec<StalledPut>, u64) {
    let mut puts: Vec<StalledPut> = (0..count)
        .map(|i| StalledPut::open(tagpin.addr, &format!("big-{i}"), declared, declared - 1))
        .collect();
    let chunk = vec![b' '; 64 * 1024];
    let started = Instant::now();
    let mut peak = tagpin.rss_kib();
    while started.elapsed() < within && !puts.iter().all(StalledPut::done) {
        let moved: usize = puts.iter_mut().map(|p| p.pump(&chunk)).sum();
        peak = peak.max(tagpin.rss_kib());
        if moved == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    (puts, peak)
}

/// Sample RSS for `how_long` and return the highest value.
fn peak_rss_over(tagpin: &Tagpin, how_long: Duration) -> u64 {
    let started = Instant::now();
    let mut peak = 0;
    while started.elapsed() < how_long {
        peak = peak.max(tagpin.rss_kib());
        std::thread::sleep(Duration::from_millis(50));
    }
    peak
}

#[test]
fn a_hundred_stalled_4_mib_manifest_bodies_stay_within_the_memory_budget() {
    // Every body comes from 127.0.0.1: the per-client share is set to the whole budget
    // (as behind a load balancer), so the budget and its small reserve are what is tested.
    let Stack {
        registry,
        tagpin,
        data: _data,
    } = Stack::start(&["--manifest-memory-per-client-bytes", "67108864"]);
    let img = Image::random(7100, 2000);
    img.push_blobs(tagpin.addr, "mem", "");
    let before = tagpin.rss_kib();

    let (mut puts, peak_sending) = stall_many(&tagpin, 100, 4 * MIB, Duration::from_secs(30));

    // All 100 connections are open: some hold the budget, the rest wait for it. An
    // ordinary push on a new connection still lands (how fast is shown, not asserted).
    let started = Instant::now();
    let r = img.put_manifest(tagpin.addr, "mem", "small", "");
    let took = started.elapsed();
    assert_eq!(r.status, 201, "small push beside stalled bodies: {}", r.text());
    assert_eq!(upstream_digest(&registry, "mem", "small"), Some(img.digest()));

    // Long enough for the bodies that got no memory to be refused (the wait is 2 s).
    let peak_stalled = peak_rss_over(&tagpin, Duration::from_secs(3));
    let peak = peak_sending.max(peak_stalled);
    let answers: Vec<Option<String>> = puts.iter_mut().map(StalledPut::status_line).collect();
    let answered_503 = answers.iter().flatten().filter(|l| l.contains(" 503 ")).count();
    let unanswered = answers.iter().filter(|a| a.is_none()).count();
    eprintln!(
        "RSS before {before} KiB, peak {peak} KiB; small push took {took:?}; \
         {answered_503} bodies answered 503, {unanswered} still open"
    );
    // The default budget is 64 MiB; anything near 160 MiB means bodies escaped it.
    assert!(
        peak < 160 * 1024,
        "RSS rose from {before} KiB to {peak} KiB with 100 stalled 4 MiB manifest bodies \
         ({answered_503} answered 503, {unanswered} still open)"
    );
    assert!(
        answers.iter().flatten().all(|l| l.contains(" 503 ")),
        "bodies without memory must get a 503: {answers:?}"
    );
    assert!(answered_503 > 0, "100 bodies of 4 MiB cannot all fit in 64 MiB");
    assert!(unanswered > 0, "the admitted bodies should still be open and stalled");
    drop(puts);
}

#[test]
fn a_large_manifest_beyond_the_budget_is_refused_with_503_and_retry_after() {
    let Stack {
        registry,
        tagpin,
        data: _data,
    } = Stack::start(&[
        "--max-manifest-bytes",
        "524288",
        "--manifest-memory-budget-bytes",
        "1048576",
        "--manifest-memory-per-client-bytes",
        "1048576",
        "--manifest-budget-wait-ms",
        "300",
    ]);
    // Two 512 KiB bodies, declared and stalled: one holds most of the budget's large
    // share, so the other cannot get its memory and is told to come back. Which one is
    // whichever tagpin reads first; the test waits for the refusal, not for a moment.
    let mut bodies = [
        StalledPut::open(tagpin.addr, "first", 512 * 1024, 0),
        StalledPut::open(tagpin.addr, "second", 512 * 1024, 0),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let (refused, raw) = loop {
        if let Some(found) = bodies
            .iter_mut()
            .enumerate()
            .find_map(|(i, b)| b.answer().map(|a| (i, a)))
        {
            break found;
        }
        assert!(Instant::now() < deadline, "neither body was refused");
        std::thread::sleep(Duration::from_millis(10));
    };
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.to_ascii_lowercase().contains("retry-after:"), "{text}");
    assert!(text.contains("\"UNAVAILABLE\"") && text.contains("retry"), "{text}");
    // The other one holds its memory, still waiting for its body.
    let holder = &mut bodies[1 - refused];
    assert_eq!(holder.answer(), None, "both bodies were answered");
    for tag in ["first", "second"] {
        assert_eq!(upstream_digest(&registry, "mem", tag), None);
    }
}

#[test]
fn a_trickled_manifest_body_is_cut_at_the_total_deadline() {
    let Stack {
        registry,
        tagpin,
        data: _data,
    } = Stack::start(&["--manifest-body-timeout-ms", "1500", "--manifest-budget-wait-ms", "500"]);
    let mut s = TcpStream::connect(tagpin.addr).unwrap();
    s.write_all(b"PUT /v2/mem/manifests/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"sch")
        .unwrap();
    let started = Instant::now();
    // One byte every 200 ms: never idle long enough for the idle timeout (60 s), so only
    // a total deadline ends it. At most 60 bytes (12 s).
    let mut writer = s.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        let mut sent = 0;
        for _ in 0..60 {
            if writer.write_all(b" ").is_err() {
                break;
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        sent
    });
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 408"), "after {took:?}: {text}");
    assert!(
        text.contains("MANIFEST_INVALID") && text.contains("took longer"),
        "{text}"
    );
    // Cut before the trickle ran out, by the total deadline ("took longer"), not by
    // the idle timeout (a minute) nor by the client giving up (no answer then).
    let sent = trickle.join().unwrap();
    assert!(
        sent < 60,
        "the trickle sent all {sent} bytes: never cut (after {took:?})"
    );
    assert_eq!(upstream_digest(&registry, "mem", "slow"), None);
}
