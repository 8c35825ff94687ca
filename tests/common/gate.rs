//! A TCP relay between tagpin and the upstream that holds chosen requests until the test
//! lets them go, so a test can force an interleaving instead of hoping for one: "tagpin
//! has sent this request and waits for its answer" lasts exactly as long as the test
//! wants, whatever the machine's speed.
//!
//! A [`Gate`] catches the first request whose request line starts with its prefix (armed
//! before the request is sent); that request goes no further until [`Gate::open`] (or
//! the gate is dropped). Every other request, and every answer, streams through. Like
//! [`super::watch::WatchRelay`], it relies on tagpin writing each request's head at once,
//! at the start of a read (requests are not pipelined on a connection).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Longest a caught request is held when a test never opens its gate.
const MAX_HOLD: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Armed,
    Caught(String),
    Open,
}

struct Hold {
    prefix: String,
    state: Mutex<State>,
    changed: Condvar,
}

impl Hold {
    fn set(&self, s: State) {
        *self.state.lock().unwrap() = s;
        self.changed.notify_all();
    }
}

/// One held request (see the module doc).
pub struct Gate(Arc<Hold>);

impl Gate {
    /// Wait until the gate caught its request; returns the request line.
    pub fn wait_caught(&self, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        let mut s = self.0.state.lock().unwrap();
        loop {
            if let State::Caught(line) = &*s {
                return line.clone();
            }
            assert!(
                *s != State::Open,
                "the gate for {:?} was opened before it caught anything",
                self.0.prefix
            );
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no request {:?} reached the relay", self.0.prefix);
            s = self.0.changed.wait_timeout(s, left).unwrap().0;
        }
    }

    /// Whether the gate holds a request now.
    pub fn caught(&self) -> bool {
        matches!(*self.0.state.lock().unwrap(), State::Caught(_))
    }

    /// Let the caught request (if any) go on to the upstream; catch nothing more.
    pub fn open(&self) {
        self.0.set(State::Open);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.open();
    }
}

pub struct GateRelay {
    pub addr: SocketAddr,
    holds: Arc<Mutex<Vec<Arc<Hold>>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl GateRelay {
    pub fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let holds: Arc<Mutex<Vec<Arc<Hold>>>> = Arc::default();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let (h, r) = (Arc::clone(&holds), Arc::clone(&requests));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (holds, requests) = (Arc::clone(&h), Arc::clone(&r));
                std::thread::spawn(move || {
                    let mut buf = vec![0; 64 * 1024];
                    loop {
                        match c_read.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if let Some(line) = request_line(&buf[..n]) {
                                    requests.lock().unwrap().push(line.clone());
                                    hold_if_armed(&holds, &line);
                                }
                                if s_write.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = s_write.shutdown(std::net::Shutdown::Write);
                });
                let (mut s_read, mut c_write) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_read, &mut c_write);
                    let _ = c_write.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Self { addr, holds, requests }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Catch the next request whose line (`METHOD target`) starts with `prefix`.
    pub fn hold(&self, prefix: &str) -> Gate {
        let hold = Arc::new(Hold {
            prefix: prefix.to_owned(),
            state: Mutex::new(State::Armed),
            changed: Condvar::new(),
        });
        self.holds.lock().unwrap().push(Arc::clone(&hold));
        Gate(hold)
    }

    /// The request lines that reached the relay so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// How many request lines so far start with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.requests().iter().filter(|l| l.starts_with(prefix)).count()
    }
}

/// Block this connection while an armed gate catches `line` (until it is opened).
fn hold_if_armed(holds: &Mutex<Vec<Arc<Hold>>>, line: &str) {
    let caught = {
        let holds = holds.lock().unwrap();
        holds.iter().find_map(|h| {
            let mut s = h.state.lock().unwrap();
            if *s == State::Armed && line.starts_with(&h.prefix) {
                *s = State::Caught(line.to_owned());
                h.changed.notify_all();
                Some(Arc::clone(h))
            } else {
                None
            }
        })
    };
    let Some(h) = caught else { return };
    let deadline = Instant::now() + MAX_HOLD;
    let mut s = h.state.lock().unwrap();
    while *s != State::Open {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        s = h.changed.wait_timeout(s, left).unwrap().0;
    }
}

fn request_line(chunk: &[u8]) -> Option<String> {
    const METHODS: [&str; 6] = ["GET ", "HEAD ", "PUT ", "POST ", "PATCH ", "DELETE "];
    let end = chunk.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&chunk[..end]).ok()?;
    METHODS.iter().any(|m| line.starts_with(m)).then(|| line.to_owned())
}
