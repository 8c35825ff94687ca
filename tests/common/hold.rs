//! A relay between tagpin and the upstream that holds chosen requests until the test
//! releases them: the request has left tagpin (it is forwarded, its outcome unknown to
//! tagpin) but has not reached the upstream, for as long as the test needs, whatever the
//! machine's speed. Every other request passes through unchanged.
//!
//! A held request is read whole (head and `Content-Length` body) and kept. Released, it
//! is sent to the upstream on a connection of its own with `Connection: close`, and the
//! answer goes back to tagpin if tagpin is still waiting (it may have given up with a
//! 504: the request lands all the same, as a late write does). The upstream's status is
//! kept for [`HoldRelay::wait_answered`].

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a test may wait for something the relay reports.
const LIMIT: Duration = Duration::from_secs(60);

/// Requests of one method and path (without the query) to catch, `remaining` more times.
struct Trap {
    method: String,
    path: String,
    remaining: usize,
}

/// A caught request.
struct Held {
    line: String,
    released: bool,
    /// The upstream's status once the released request was answered, or why not.
    answer: Option<Result<u16, String>>,
}

#[derive(Default)]
struct State {
    traps: Vec<Trap>,
    held: Vec<Held>,
    /// Every request line seen, in order.
    lines: Vec<String>,
    /// The relay was dropped: held requests are abandoned, never sent.
    closed: bool,
}

pub struct HoldRelay {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl HoldRelay {
    pub fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if shared.lock().unwrap().closed {
                    return;
                }
                let Ok(client) = client else { continue };
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || serve(client, target, &shared));
            }
        });
        Self { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Catch the next `count` requests `METHOD path` (the path without its query).
    pub fn hold(&self, method: &str, path: &str, count: usize) {
        self.state.lock().unwrap().traps.push(Trap {
            method: method.to_owned(),
            path: path.to_owned(),
            remaining: count,
        });
    }

    /// How many requests have been caught so far.
    pub fn held(&self) -> usize {
        self.state.lock().unwrap().held.len()
    }

    /// Wait until `n` requests have been caught in all.
    pub fn wait_held(&self, n: usize) {
        self.wait(&format!("{n} held request(s)"), |s| (s.held.len() >= n).then_some(()));
    }

    /// Send caught request `i` (numbered from 0 in the order caught) to the upstream.
    pub fn release(&self, i: usize) {
        let mut s = self.state.lock().unwrap();
        assert!(i < s.held.len(), "no held request {i}");
        s.held[i].released = true;
    }

    /// Wait until released request `i` was answered by the upstream; its status.
    pub fn wait_answered(&self, i: usize) -> u16 {
        let answer = self.wait(&format!("an answer to held request {i}"), |s| {
            s.held.get(i).and_then(|h| h.answer.clone())
        });
        let line = self.state.lock().unwrap().held[i].line.clone();
        answer.unwrap_or_else(|e| panic!("{line}: the upstream did not answer: {e}"))
    }

    /// The request lines (`METHOD target`) seen so far.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().lines.clone()
    }

    fn wait<T>(&self, what: &str, found: impl Fn(&State) -> Option<T>) -> T {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(v) = found(&self.state.lock().unwrap()) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "the relay never saw {what}; requests: {:#?}",
                self.requests()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for HoldRelay {
    fn drop(&mut self) {
        self.state.lock().unwrap().closed = true;
        let _ = TcpStream::connect(self.addr);
    }
}

/// One request's head as read: the raw bytes, its method, path and body length.
struct Head {
    raw: Vec<u8>,
    method: String,
    target: String,
    length: usize,
    /// A body the relay cannot delimit by `Content-Length` (chunked, or waiting for
    /// `100 Continue`): the rest of the connection is piped untouched.
    opaque: bool,
}

fn read_head(reader: &mut impl BufRead) -> Option<Head> {
    let mut raw = Vec::new();
    loop {
        let start = raw.len();
        if reader.read_until(b'\n', &mut raw).ok()? == 0 {
            return None;
        }
        if &raw[start..] == b"\r\n" {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_owned(), first.next()?.to_owned());
    let (mut length, mut opaque) = (0, false);
    for (k, v) in lines.filter_map(|l| l.split_once(':')) {
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
        match k.as_str() {
            "content-length" => length = v.parse().unwrap_or(0),
            "transfer-encoding" => opaque = true,
            "expect" => opaque |= v.contains("100-continue"),
            _ => {}
        }
    }
    Some(Head {
        raw,
        method,
        target,
        length,
        opaque,
    })
}

fn serve(client: TcpStream, target: SocketAddr, state: &Mutex<State>) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    // The connection to the upstream that requests passing through share, and the thread
    // copying its answers back.
    let mut upstream: Option<TcpStream> = None;
    while let Some(head) = read_head(&mut reader) {
        let line = format!("{} {}", head.method, head.target);
        let caught = {
            let mut s = state.lock().unwrap();
            s.lines.push(line.clone());
            let path = head.target.split('?').next().unwrap_or("");
            let trap = s
                .traps
                .iter_mut()
                .find(|t| t.remaining > 0 && t.method == head.method && t.path == path);
            match trap {
                Some(t) if !head.opaque => {
                    t.remaining -= 1;
                    s.held.push(Held {
                        line: line.clone(),
                        released: false,
                        answer: None,
                    });
                    Some(s.held.len() - 1)
                }
                _ => None,
            }
        };
        if upstream.is_none() && caught.is_none() {
            let Ok(server) = TcpStream::connect(target) else { break };
            let (mut from, mut to) = (server.try_clone().unwrap(), client.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(Shutdown::Write);
            });
            upstream = Some(server);
        }
        if head.opaque {
            let server = upstream.as_mut().unwrap();
            if server.write_all(&head.raw).is_err() {
                break;
            }
            let _ = std::io::copy(&mut reader, server);
            break;
        }
        let mut body = vec![0; head.length];
        if reader.read_exact(&mut body).is_err() {
            break;
        }
        if let Some(i) = caught {
            if !wait_release(state, i) {
                break;
            }
            let answer = send_alone(target, &head.raw, &body, &client);
            state.lock().unwrap().held[i].answer = Some(answer);
            break;
        }
        let server = upstream.as_mut().unwrap();
        if server
            .write_all(&head.raw)
            .and_then(|_| server.write_all(&body))
            .is_err()
        {
            break;
        }
    }
    if let Some(server) = upstream {
        let _ = server.shutdown(Shutdown::Write);
    }
}

/// Block until held request `i` is released (true) or the relay is dropped (false).
fn wait_release(state: &Mutex<State>, i: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        {
            let s = state.lock().unwrap();
            if s.closed {
                return false;
            }
            if s.held[i].released {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Send one request on a connection of its own, copy the answer to `client` (who may be
/// gone) and close it; the upstream's status.
fn send_alone(target: SocketAddr, head: &[u8], body: &[u8], client: &TcpStream) -> Result<u16, String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
    let mut out = format!("{}\r\n", lines.next().unwrap_or(""));
    for l in lines.filter(|l| !l.to_ascii_lowercase().starts_with("connection:")) {
        out.push_str(l);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut server = TcpStream::connect(target).map_err(|e| format!("connect: {e}"))?;
    server.set_read_timeout(Some(LIMIT)).map_err(|e| e.to_string())?;
    server
        .write_all(out.as_bytes())
        .and_then(|_| server.write_all(body))
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::new();
    server.read_to_end(&mut answer).map_err(|e| format!("read: {e}"))?;
    let mut c = client;
    let _ = c.write_all(&answer);
    let _ = c.shutdown(Shutdown::Both);
    let status = String::from_utf8_lossy(&answer)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok());
    status.ok_or_else(|| format!("no status in {:?}", String::from_utf8_lossy(&answer)))
}
