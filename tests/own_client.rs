//! tagpin's own client to the upstream: its connection pool against an upstream that
//! answers requests nobody sent, and its own credentials against token realms.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{request, Tagpin};

/// The header only the unsolicited responses carry.
const LATE: &str = "x-late-response";

/// An upstream that answers every request in full and then, 30 ms later, writes a second,
/// unsolicited response on the same connection (`LATE: yes`, body `late`).
fn late_responder() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || answer_twice(conn));
        }
    });
    addr
}

fn answer_twice(conn: TcpStream) {
    let out = Arc::new(Mutex::new(conn.try_clone().unwrap()));
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
        }
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        if out.lock().unwrap().write_all(ok).is_err() {
            return;
        }
        let out = Arc::clone(&out);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            let late = format!("HTTP/1.1 200 OK\r\n{LATE}: yes\r\nContent-Length: 4\r\n\r\nlate");
            let _ = out.lock().unwrap().write_all(late.as_bytes());
        });
    }
}

#[test]
fn a_late_unsolicited_upstream_response_never_reaches_a_client() {
    let upstream = late_responder();
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(&format!("http://{upstream}"), data.path(), &[]);
    let (late, answered) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let one = || {
        let r = request(tagpin.addr, "GET", "/v2/", &[], b"");
        if r.header(LATE).is_some() || r.body == b"late" {
            late.fetch_add(1, Ordering::Relaxed);
        } else if r.status == 200 && r.body == b"{}" {
            answered.fetch_add(1, Ordering::Relaxed);
        }
    };
    // One exchange, then let its unsolicited follow-up reach the idle connection. (One
    // that arrives while the connection carries the next request is that request's
    // answer to any HTTP/1.1 client: SECURITY.md.)
    one();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !tagpin.logs().iter().any(|l| l.contains("no request was waiting for")) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Then 300 requests one after another and 300 from four clients at once, each
    // bounded by the harness's own timeouts.
    for _ in 0..300 {
        one();
    }
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| (0..75).for_each(|_| one()));
        }
    });
    let (late, answered) = (late.into_inner(), answered.into_inner());
    assert_eq!(late, 0, "clients received the upstream's unsolicited response");
    assert_eq!(answered, 601, "every request got its own answer");
}
