//! What one connection may cost, on both listeners: a client that stops reading a
//! response is cut after the body idle timeout and frees its slot; a request head is
//! bounded in size (431 beyond it), so unfinished heads cannot grow memory past
//! `max_connections` times the bound; and the admin listener has a connection limit of
//! its own, so idle connections to it cannot take the descriptors the registry port needs.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::admin::{AdminSecrets, TOKEN};
use common::*;

/// Read a response head (up to the blank line) and return its status; `None` when the
/// server sent none before closing or before `wait` passed.
fn read_status(s: &mut TcpStream, wait: Duration) -> Option<u16> {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    String::from_utf8_lossy(&head).split(' ').nth(1)?.parse().ok()
}

/// `GET /v2/` on a fresh connection: its status, or `None` if no answer came within `wait`.
fn get_v2(addr: SocketAddr, wait: Duration) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: tagpin\r\nConnection: close\r\n\r\n")
        .ok()?;
    read_status(&mut s, wait)
}

/// Ask `GET /v2/` until it is answered, at most for `bound`; the status it got.
fn wait_answered(addr: SocketAddr, bound: Duration) -> Option<u16> {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if let Some(status) = get_v2(addr, Duration::from_secs(5)) {
            return Some(status);
        }
    }
    None
}

/// Read until the server ends the connection (EOF or reset); the bytes that came, or
/// `None` if it was still open after `bound`.
fn drain_until_closed(s: &mut TcpStream, bound: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + bound;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(got),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading: {e}"),
        }
    }
    None
}

/// The value of an unlabelled metric in tagpin's `/metrics`.
fn metric(tagpin: &Tagpin, name: &str) -> f64 {
    let text = request(tagpin.addr, "GET", "/metrics", &[], b"").text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// Connections accepted on `port` that process `pid` holds open now: its descriptors
/// matched against the loopback TCP table (the listening socket left out).
fn accepted_on(pid: u32, port: u16) -> usize {
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap();
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            // 0A: LISTEN.
            (local_port == port && *f.get(3)? != "0A").then(|| f.get(9).map(|i| i.to_string()))?
        })
        .collect();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .filter(|inode| inodes.contains(inode))
        .count()
}

#[test]
fn clients_that_stop_reading_are_cut_and_free_their_slots() {
    const SLOTS: usize = 2;
    let registry = Registry::start();
    // Far more than the socket buffers between the upstream and the client hold, so
    // tagpin's own writes wait for the client.
    let blob = image::random_bytes(5, 64 << 20);
    image::push_blob(registry.addr, "stall/big", &blob, "");
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(
        &registry.url(),
        data.path(),
        &[
            "--max-connections",
            "2",
            "--body-idle-timeout-ms",
            "2000",
            "--workers",
            "1",
        ],
    );
    let get_blob = format!(
        "GET /v2/stall/big/blobs/{} HTTP/1.1\r\nHost: tagpin\r\n\r\n",
        image::sha256(&blob)
    );
    // Every slot taken by a client that reads the response head and then nothing more.
    let mut stalled: Vec<TcpStream> = (0..SLOTS)
        .map(|_| {
            let mut s = TcpStream::connect(tagpin.addr).unwrap();
            s.write_all(get_blob.as_bytes()).unwrap();
            assert_eq!(read_status(&mut s, Duration::from_secs(30)), Some(200));
            s
        })
        .collect();
    assert_eq!(
        wait_answered(tagpin.addr, Duration::from_secs(60)),
        Some(200),
        "no slot came free: clients that stopped reading still hold them"
    );
    // Reading now would make progress: first wait until tagpin has given up on both.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&tagpin, "tagpin_client_write_stalls_total") < SLOTS as f64 {
        assert!(
            Instant::now() < deadline,
            "tagpin did not count {SLOTS} stalled clients"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for s in &mut stalled {
        let got = drain_until_closed(s, Duration::from_secs(60)).expect("tagpin kept the stalled connection open");
        assert!(
            got.len() < blob.len(),
            "the whole blob arrived: the connection was not cut"
        );
    }
}

#[test]
fn a_request_head_over_64_kib_gets_431_and_one_under_it_is_served() {
    let Stack {
        registry: _registry,
        tagpin,
        data: _data,
    } = Stack::start(&[]);
    let under = "a".repeat(60 * 1024);
    assert_eq!(
        request(tagpin.addr, "GET", "/v2/", &[("X-Fill", &under)], b"").status,
        200
    );
    let over = "a".repeat(64 * 1024 + 100);
    let r = request(tagpin.addr, "GET", "/v2/", &[("X-Fill", &over)], b"");
    assert_eq!(
        r.status,
        431,
        "a head of {} bytes was not refused: {}",
        over.len(),
        r.text()
    );
    // The connection that was refused leaves the others served.
    assert_eq!(request(tagpin.addr, "GET", "/v2/", &[], b"").status, 200);
}

#[test]
fn unfinished_heads_over_the_limit_are_refused_and_memory_stays_bounded() {
    const CONNECTIONS: usize = 256;
    const LIMIT_KIB: u64 = 64;
    // Under hyper's own default bound (about 400 KiB), over tagpin's.
    const SENT: usize = 400_000;
    let Stack {
        registry: _registry,
        tagpin,
        data: _data,
    } = Stack::start(&["--workers", "1"]);
    assert_eq!(request(tagpin.addr, "GET", "/v2/", &[], b"").status, 200);
    let baseline = tagpin.rss_kib();
    let fill = vec![b'a'; SENT];
    let mut open: Vec<(TcpStream, Vec<u8>)> = (0..CONNECTIONS)
        .map(|_| {
            let mut s = TcpStream::connect(tagpin.addr).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
            // tagpin may refuse and close midway: the rest of the write then fails.
            let _ = s
                .write_all(b"GET /v2/ HTTP/1.1\r\nHost: tagpin\r\nX-Fill: ")
                .and_then(|()| s.write_all(&fill));
            s.set_nonblocking(true).unwrap();
            (s, Vec::new())
        })
        .collect();
    // Each connection holds at most the limit, in a buffer at most twice that size.
    let bound = CONNECTIONS as u64 * LIMIT_KIB * 2 + 16 * 1024;
    // Until tagpin has ended every one of them (or read all they sent), memory stays bounded.
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let grown = tagpin.rss_kib().saturating_sub(baseline);
        assert!(
            grown <= bound,
            "{} unfinished heads of {SENT} bytes grew RSS by {grown} KiB (bound {bound} KiB)",
            open.len()
        );
        open.retain_mut(|(s, got)| still_open(s, got));
        if open.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} heads over the limit are still open",
            open.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(request(tagpin.addr, "GET", "/v2/", &[], b"").status, 200);
}

/// Read what a non-blocking connection has; whether it is still open. What tagpin sent
/// before closing must be a 431 (or nothing: a reset can overtake it).
fn still_open(s: &mut TcpStream, got: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    let open = loop {
        match s.read(&mut buf) {
            Ok(0) => break false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break true,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break false,
            Err(e) => panic!("reading: {e}"),
        }
    };
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&got[..got.len().min(200)])
    );
    open
}

#[test]
fn idle_admin_connections_beyond_their_limit_leave_the_registry_port_answering() {
    const ADMIN_LIMIT: usize = 8;
    const IDLE: usize = 100;
    // Room for tagpin's own descriptors and a few connections, not for every idle one.
    const NOFILE: u64 = 64;
    let registry = Registry::start();
    let data = tempfile::tempdir().unwrap();
    let secrets = AdminSecrets::new();
    let mut flags = secrets.flags();
    // Idle connections are not ended by the header timeout while the test runs.
    flags.extend(["--client-header-timeout-ms", "120000", "--workers", "1"].map(String::from));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // Through the environment, which a build without the option ignores.
    let limit = ADMIN_LIMIT.to_string();
    let env = [("TAGPIN_ADMIN_MAX_CONNECTIONS", limit.as_str())];
    let tagpin = Tagpin::start_with_nofile(&registry.url(), data.path(), &flags, &env, NOFILE);
    let admin = tagpin.admin_addr();
    let idle: Vec<TcpStream> = (0..IDLE).map(|_| TcpStream::connect(admin).unwrap()).collect();
    assert_eq!(
        wait_answered(tagpin.addr, Duration::from_secs(30)),
        Some(200),
        "the registry port stopped answering while {IDLE} idle admin connections were open"
    );
    // tagpin takes up to the limit and leaves the rest in the kernel's accept queue.
    let deadline = Instant::now() + Duration::from_secs(30);
    let accepted = || accepted_on(tagpin.pid(), admin.port());
    while accepted() < ADMIN_LIMIT {
        assert!(
            Instant::now() < deadline,
            "tagpin accepted only {} admin connections",
            accepted()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(accepted(), ADMIN_LIMIT, "admin connections accepted beyond the limit");

    drop(idle);
    let bearer = format!("Bearer {TOKEN}");
    let r = request(admin, "GET", "/admin/v1/pins", &[("Authorization", &bearer)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
}
