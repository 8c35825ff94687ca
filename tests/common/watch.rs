//! A TCP relay that counts the bytes it has passed from tagpin to the upstream, so a test
//! can act at a precise point: "tagpin has forwarded the whole request" is the moment to
//! kill it inside the in-flight window.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct WatchRelay {
    pub addr: SocketAddr,
    forwarded: Arc<AtomicUsize>,
    /// The request lines (`METHOD target`) seen so far, in order.
    requests: Arc<Mutex<Vec<String>>>,
    /// Connections to the upstream the upstream has not closed yet.
    open: Arc<AtomicUsize>,
}

impl WatchRelay {
    pub fn start(target: SocketAddr) -> Self {
        Self::start_with_delay(target, Duration::ZERO)
    }

    /// Like [`WatchRelay::start`], holding every chunk the upstream answers back by
    /// `delay`: the upstream has acted while tagpin still waits for its answer.
    pub fn start_with_delay(target: SocketAddr, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let forwarded = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&forwarded);
        let lines = Arc::clone(&requests);
        let live = Arc::clone(&open);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                live.fetch_add(1, Ordering::SeqCst);
                let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (count, lines) = (Arc::clone(&count), Arc::clone(&lines));
                std::thread::spawn(move || {
                    let mut buf = vec![0; 64 * 1024];
                    loop {
                        match c_read.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                record_request_lines(&buf[..n], &lines);
                                if s_write.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                                count.fetch_add(n, Ordering::SeqCst);
                            }
                        }
                    }
                    let _ = s_write.shutdown(std::net::Shutdown::Write);
                });
                let (mut s_read, mut c_write) = (server, client);
                let live = Arc::clone(&live);
                std::thread::spawn(move || {
                    let mut buf = vec![0; 64 * 1024];
                    // Once tagpin is gone, the upstream's answers are read and dropped, so
                    // the connection counts as open until the upstream itself closes it.
                    let mut tagpin_gone = false;
                    loop {
                        match s_read.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(_) if tagpin_gone => {}
                            Ok(n) => {
                                std::thread::sleep(delay);
                                tagpin_gone = c_write.write_all(&buf[..n]).is_err();
                            }
                        }
                    }
                    let _ = c_write.shutdown(std::net::Shutdown::Write);
                    live.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            forwarded,
            requests,
            open,
        }
    }

    /// Wait until the upstream has closed every connection tagpin opened through the
    /// relay: after tagpin was killed, every request it forwarded has then been carried
    /// out (or dropped) by the upstream, and nothing it sent can still land.
    pub fn wait_upstream_done(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.open.load(Ordering::SeqCst) > 0 {
            assert!(
                Instant::now() < deadline,
                "the upstream still holds {} connection(s) from tagpin",
                self.open.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Wait until a request whose line starts with `prefix` (e.g. `"DELETE /v2/a/"`) has
    /// passed towards the upstream.
    pub fn wait_request(&self, prefix: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.requests.lock().unwrap().iter().any(|l| l.starts_with(prefix)) {
            assert!(Instant::now() < deadline, "no {prefix} request reached the upstream");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The request lines (`METHOD target`) that have passed towards the upstream so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn forwarded(&self) -> usize {
        self.forwarded.load(Ordering::SeqCst)
    }

    /// Wait until at least `bytes` more than `base` have passed towards the upstream.
    pub fn wait_forwarded(&self, base: usize, bytes: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.forwarded() < base + bytes {
            assert!(Instant::now() < deadline, "tagpin never forwarded the request");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Note the request lines a chunk starts. Requests from tagpin start at chunk boundaries
/// often enough for the small requests the tests look for (headers are written at once).
fn record_request_lines(chunk: &[u8], lines: &Mutex<Vec<String>>) {
    const METHODS: [&str; 6] = ["GET ", "HEAD ", "PUT ", "POST ", "PATCH ", "DELETE "];
    let Some(end) = chunk.windows(2).position(|w| w == b"\r\n") else {
        return;
    };
    let Ok(line) = std::str::from_utf8(&chunk[..end]) else {
        return;
    };
    if METHODS.iter().any(|m| line.starts_with(m)) {
        lines.lock().unwrap().push(line.to_owned());
    }
}
