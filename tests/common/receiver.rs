//! A webhook receiver on loopback: records what tagpin posts, and answers as the test
//! says (200, another status, a closed connection, or nothing at all).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How the receiver answers the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Ok,
    /// Answer this status (with `Retry-After: 0` for 429 and 503).
    Status(u16),
    /// Close the connection without an answer: a receiver that is down.
    Down,
    /// Read the request and never answer.
    Hang,
}

/// One request the receiver answered 2xx.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Delivery {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// Whether `X-Tagpin-Signature-256` is HMAC-SHA256(secret, timestamp "." body).
    pub fn signed_with(&self, secret: &str) -> bool {
        let (Some(ts), Some(sig)) = (self.header("x-tagpin-timestamp"), self.header("x-tagpin-signature-256")) else {
            return false;
        };
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let mut msg = format!("{ts}.").into_bytes();
        msg.extend_from_slice(&self.body);
        let tag = ring::hmac::sign(&key, &msg);
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        sig == format!("sha256={hex}")
    }
}

#[derive(Default)]
struct State {
    mode: Option<Mode>,
    /// Answer `Mode::Status(status)` this many times, then as `mode` says.
    fail_next: Option<(u16, usize)>,
    delivered: Vec<Delivery>,
    /// Every request that arrived, whatever it was answered.
    attempts: usize,
    held: Vec<TcpStream>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Receiver {
    pub fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            mode: Some(mode),
            ..State::default()
        }));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = Arc::clone(&shared);
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        Self { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        let mut s = self.state.lock().unwrap();
        s.mode = Some(mode);
        if mode != Mode::Hang {
            s.held.clear();
        }
    }

    /// Answer `status` to the next `n` requests.
    pub fn fail_next(&self, status: u16, n: usize) {
        self.state.lock().unwrap().fail_next = Some((status, n));
    }

    pub fn delivered(&self) -> Vec<Delivery> {
        self.state.lock().unwrap().delivered.clone()
    }

    pub fn attempts(&self) -> usize {
        self.state.lock().unwrap().attempts
    }

    /// Wait (at most `secs`) until `pred` holds for what was delivered; returns it.
    pub fn wait_for(&self, secs: u64, what: &str, pred: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.delivered();
            if pred(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not delivered within {secs}s; got {} deliveries: {:?}",
                got.len(),
                got.iter()
                    .map(|d| String::from_utf8_lossy(&d.body).into_owned())
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The CloudEvents delivered, as JSON.
    pub fn events(&self) -> Vec<Value> {
        self.delivered().iter().map(Delivery::json).collect()
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut headers = Vec::new();
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0usize);
    let mut body = vec![0; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let mut s = state.lock().unwrap();
    s.attempts += 1;
    let status = match s.fail_next {
        Some((status, n)) if n > 0 => {
            s.fail_next = Some((status, n - 1));
            status
        }
        _ => match s.mode.unwrap_or(Mode::Ok) {
            Mode::Ok => 200,
            Mode::Status(code) => code,
            Mode::Down => return,
            Mode::Hang => {
                s.held.push(stream);
                return;
            }
        },
    };
    if (200..300).contains(&status) {
        s.delivered.push(Delivery { headers, body });
    }
    drop(s);
    let extra = if status == 429 || status == 503 {
        "Retry-After: 0\r\n"
    } else {
        ""
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
}
