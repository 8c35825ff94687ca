//! Misbehaving peers for failure tests: a scripted fake upstream and a port nobody listens
//! on. All on 127.0.0.1. (The relay that delays answers is `watch::WatchRelay`.)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the fake upstream does with one request.
pub enum Action {
    /// A complete response.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Read the request and never answer.
    Hang,
    /// Read the request's headers, then neither read its body nor answer (an upstream
    /// that stopped reading).
    StopReading,
    /// Send headers announcing `len` bytes, then `sent` of them, then stall forever.
    StallBody { len: usize, sent: usize },
    /// Send headers announcing `len` bytes, then `sent` of them, then close the connection.
    CloseMidBody { len: usize, sent: usize },
    /// A 200 whose `body` is sent one byte per `every`.
    Trickle { body: Vec<u8>, every: Duration },
    /// A 200 of `len` bytes (`{"repositories":["aaa…`), written as fast as it is read.
    Big { len: usize },
}

impl Action {
    pub fn status(status: u16) -> Self {
        Self::Respond {
            status,
            headers: vec![],
            body: vec![],
        }
    }

    pub fn with_header(status: u16, name: &str, value: &str) -> Self {
        Self::Respond {
            status,
            headers: vec![(name.into(), value.into())],
            body: vec![],
        }
    }
}

/// A request the fake upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
}

type Script = dyn Fn(&str, &str) -> Action + Send + Sync;

/// An HTTP/1.1 server that answers each request as `script(method, target)` says, with
/// keep-alive, and records every request.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl FakeUpstream {
    pub fn start(script: impl Fn(&str, &str) -> Action + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let script: Arc<Script> = Arc::new(script);
        let (seen2, stop2) = (Arc::clone(&seen), Arc::clone(&stop));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (script, seen, stop) = (Arc::clone(&script), Arc::clone(&seen2), Arc::clone(&stop2));
                std::thread::spawn(move || serve_conn(conn, &*script, &seen, &stop));
            }
        });
        Self { addr, seen, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve_conn(conn: TcpStream, script: &Script, seen: &Mutex<Vec<Seen>>, stop: &AtomicBool) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("").to_owned(),
        );
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let action = script(&method, &target);
        if let Action::StopReading = action {
            seen.lock().unwrap().push(Seen { method, target });
            hang(stop);
            return;
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        seen.lock().unwrap().push(Seen {
            method: method.clone(),
            target: target.clone(),
        });
        match action {
            Action::Respond { status, headers, body } => {
                let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
                for (k, v) in headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                if out
                    .write_all(head.as_bytes())
                    .and_then(|_| out.write_all(&body))
                    .is_err()
                {
                    return;
                }
            }
            Action::Hang | Action::StopReading => hang(stop),
            Action::StallBody { len, sent } => {
                let _ = out.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").as_bytes());
                let _ = out.write_all(&vec![b'x'; sent]);
                hang(stop);
                return;
            }
            Action::CloseMidBody { len, sent } => {
                let _ = out.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").as_bytes());
                let _ = out.write_all(&vec![b'x'; sent]);
                return;
            }
            Action::Trickle { body, every } => {
                let len = body.len();
                let _ = out.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").as_bytes());
                for b in body {
                    if stop.load(Ordering::Relaxed) || out.write_all(&[b]).is_err() {
                        return;
                    }
                    std::thread::sleep(every);
                }
            }
            Action::Big { len } => {
                let _ = out.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").as_bytes());
                let head = br#"{"repositories":[""#;
                let chunk = vec![b'a'; 64 * 1024];
                let mut left = len.saturating_sub(head.len());
                if out.write_all(&head[..head.len().min(len)]).is_err() {
                    return;
                }
                while left > 0 {
                    let n = left.min(chunk.len());
                    if stop.load(Ordering::Relaxed) || out.write_all(&chunk[..n]).is_err() {
                        return;
                    }
                    left -= n;
                }
            }
        }
    }
}

/// Block until the fake is dropped (bounded, so a forgotten fake cannot outlive a test run).
fn hang(stop: &AtomicBool) {
    for _ in 0..600 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A 127.0.0.1 port with no listener: connections are refused.
pub fn refused_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
