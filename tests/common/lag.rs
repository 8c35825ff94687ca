//! A TCP relay in front of PostgreSQL that makes the server's messages reach the client
//! late: every connection by a fixed delay (a replica on a slow or busy link), and the
//! connections whose startup message names a marked `application_name` not at all while
//! the test freezes them (a session that hangs without closing). What clients send passes
//! at once. Bytes keep their order; a connection's end comes after its last bytes.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest a freeze holds when a test never thaws it.
const MAX_FREEZE: Duration = Duration::from_secs(30);

pub struct LagRelay {
    pub addr: SocketAddr,
    frozen: Arc<Mutex<Option<Instant>>>,
}

/// What every connection of one relay shares.
#[derive(Clone)]
struct Setup {
    target: SocketAddr,
    delay: Duration,
    marker: String,
    /// Since when marked connections are frozen.
    frozen: Arc<Mutex<Option<Instant>>>,
}

impl LagRelay {
    /// Relay 127.0.0.1:<ephemeral> to `target`, delaying the server's bytes by `delay`;
    /// [`Self::freeze`] holds those of connections whose startup contains `marker`. The
    /// relay's threads end with their connections; the accepting one with the process.
    pub fn start(target: SocketAddr, delay: Duration, marker: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(Mutex::new(None));
        let setup = Setup {
            target,
            delay,
            marker: marker.to_owned(),
            frozen: frozen.clone(),
        };
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let setup = setup.clone();
                std::thread::spawn(move || relay(client, &setup));
            }
        });
        Self { addr, frozen }
    }

    /// Hold (or, with `false`, let go) everything the server sends on marked connections,
    /// for at most [`MAX_FREEZE`].
    pub fn freeze(&self, on: bool) {
        *self.frozen.lock().unwrap() = on.then(Instant::now);
    }
}

impl Drop for LagRelay {
    fn drop(&mut self) {
        self.freeze(false);
    }
}

fn frozen(since: &Mutex<Option<Instant>>) -> bool {
    since.lock().unwrap().is_some_and(|at| at.elapsed() < MAX_FREEZE)
}

fn relay(client: TcpStream, setup: &Setup) {
    let Ok(server) = TcpStream::connect(setup.target) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let marked = Arc::new(AtomicBool::new(false));
    let (mut up_from, mut up_to) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let (marker, seen) = (setup.marker.clone(), marked.clone());
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut first = true;
        while let Ok(n) = up_from.read(&mut buf) {
            if n == 0 {
                break;
            }
            // The startup message is the first a client sends, after the SSLRequest of
            // `sslmode=prefer` (the server here answers it `N`: no TLS).
            if first && contains(&buf[..n], marker.as_bytes()) {
                seen.store(true, Ordering::Release);
            }
            first = first && buf[..n] == SSL_REQUEST;
            if up_to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = up_to.shutdown(Shutdown::Write);
    });
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let mut down_to = client;
    let since = setup.frozen.clone();
    std::thread::spawn(move || {
        for (due, bytes) in rx {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            while marked.load(Ordering::Acquire) && frozen(&since) {
                std::thread::sleep(Duration::from_millis(5));
            }
            if down_to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = down_to.shutdown(Shutdown::Both);
    });
    let mut down_from = server;
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = down_from.read(&mut buf) {
        if n == 0 || tx.send((Instant::now() + setup.delay, buf[..n].to_vec())).is_err() {
            break;
        }
    }
}

/// The 8 bytes of an SSLRequest (length 8, code 80877103), sent before the startup
/// message when the client would take TLS.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
