//! A deliberately raw HTTP/1.1 client: it sends the request target byte for byte, so
//! tests can send paths no well-behaved library would.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The OCI error code of an error envelope.
    pub fn oci_code(&self) -> String {
        self.json()["errors"][0]["code"].as_str().unwrap_or("").to_owned()
    }
}

/// Send one request on a fresh connection (`Connection: close`) and read the response.
pub fn request(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    try_request(addr, method, target, headers, body).unwrap_or_else(|e| panic!("{method} {target}: {e}"))
}

/// Like [`request`], for tests where the server may die mid-request.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Resp, String> {
    exchange(
        addr,
        &format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\n"),
        method,
        headers,
        body,
    )
}

/// Like [`request`], from a connection bound to `local` (any address of 127.0.0.0/8 on
/// Linux): for tests of what tagpin counts per client address.
pub fn request_from(
    local: IpAddr,
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let s = connect_from(local, addr).unwrap_or_else(|e| panic!("connect {addr} from {local}: {e}"));
    let start = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\n");
    exchange_on(s, &start, method, headers, body).unwrap_or_else(|e| panic!("{method} {target} from {local}: {e}"))
}

/// A blocking connection to `addr` from `local` (std cannot bind before connecting).
pub fn connect_from(local: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    rt.block_on(async {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(local, 0))?;
        let stream = socket.connect(addr).await?.into_std()?;
        stream.set_nonblocking(false)?;
        Ok(stream)
    })
}

/// An HTTP/1.0 request with no `Host` header, which HTTP/1.0 allows (RFC 9112 3.2 only
/// requires it of HTTP/1.1): the server cannot tell which origin the client used.
pub fn request_without_host(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    exchange(addr, &format!("{method} {target} HTTP/1.0\r\n"), method, headers, body)
        .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
}

/// Send `start` (the request line and any fixed headers), `headers` and `body`, and read
/// the response to the end of the connection.
fn exchange(
    addr: SocketAddr,
    start: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Resp, String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    exchange_on(s, start, method, headers, body)
}

/// [`exchange`] on a connection already open.
fn exchange_on(
    mut s: TcpStream,
    start: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Resp, String> {
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    let mut head = format!("{start}Connection: close\r\n");
    let mut has_len = false;
    for (k, v) in headers {
        if v.is_empty() {
            continue;
        }
        has_len |= k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding");
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_len && (!body.is_empty() || matches!(method, "PUT" | "POST" | "PATCH")) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).map_err(|e| format!("send: {e}"))?;
    // The server may answer (and close) before reading a body it refuses.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    // A server may close early (e.g. a refused oversized body): read what arrived.
    let _ = s.read_to_end(&mut raw);
    parse(&raw, method == "HEAD").ok_or_else(|| format!("unparseable response: {:?}", String::from_utf8_lossy(&raw)))
}

fn parse(raw: &[u8], head_only: bool) -> Option<Resp> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if head_only {
        Vec::new()
    } else if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Some(Resp { status, headers, body })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..nl]).ok()?.split(';').next()?.trim(), 16).ok()?;
        b = &b[nl + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// What a client that honours `Expect: 100-continue` saw.
#[derive(Debug)]
pub struct Expected {
    /// The interim status before the final one (`Some(100)`), if any.
    pub interim: Option<u16>,
    /// How long the first response line took after the headers were sent.
    pub first_answer_after: Duration,
    pub response: Resp,
}

/// An `Expect: 100-continue` exchange as a careful client runs it (RFC 9110 10.1.1): send
/// the headers only, wait for the first response; send the body only after
/// `100 Continue`, and never when a final status came first.
pub fn expect_continue(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Expected {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nExpect: 100-continue\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers.iter().filter(|(_, v)| !v.is_empty()) {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let sent = std::time::Instant::now();
    // Read only up to the end of the first response head.
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => raw.push(byte[0]),
            other => panic!("no response head ({other:?}) after {:?}", String::from_utf8_lossy(&raw)),
        }
    }
    let first_answer_after = sent.elapsed();
    let status: u16 = String::from_utf8_lossy(&raw)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {:?}", String::from_utf8_lossy(&raw)));
    let interim = if status == 100 {
        // A server may still refuse midway and close: read whatever answer it sent.
        let _ = s.write_all(body);
        raw.clear();
        Some(100)
    } else {
        None
    };
    let _ = s.read_to_end(&mut raw);
    let response = parse(&raw, method == "HEAD")
        .unwrap_or_else(|| panic!("unparseable response: {:?}", String::from_utf8_lossy(&raw)));
    Expected {
        interim,
        first_answer_after,
        response,
    }
}
