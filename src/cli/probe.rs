//! `tagpin probe [--url URL]`: GET one URL of a tagpin (its `/readyz` by default) and
//! exit 0 on `200`, 1 on anything else, with a one-line reason. It is the container
//! healthcheck of the compose files: the slim image has no curl, and its `/bin/sh`
//! (dash) cannot open TCP connections, so the image checks itself with its own binary.
//!
//! Plain HTTP/1.1 over a blocking socket, one request, the status line read and the rest
//! ignored: the probe runs next to the server (loopback), never through a proxy.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use clap::Args;
use http::Uri;

use super::client::{EXIT_FOUND, EXIT_OK};

#[derive(Debug, Args)]
#[command(after_help = "Exit status: 0 when the URL answers 200; 1 otherwise (the reason on stderr).")]
pub struct ProbeArgs {
    /// The URL to GET, plain http://.
    #[arg(long, env = "TAGPIN_PROBE_URL", default_value = "http://127.0.0.1:5050/readyz")]
    pub url: String,
    /// Seconds the connection and the answer's status line may take together.
    #[arg(long, default_value_t = 5)]
    pub timeout_secs: u64,
}

pub fn run(args: &ProbeArgs, out: &mut dyn Write) -> u8 {
    match check(&args.url, Duration::from_secs(args.timeout_secs.max(1))) {
        Ok(status) => {
            let _ = writeln!(out, "tagpin probe: {} answered {status}", args.url);
            EXIT_OK
        }
        Err(why) => {
            eprintln!("tagpin probe: {}: {why}", args.url);
            EXIT_FOUND
        }
    }
}

/// The status line of a `200` answer from `url`, or why there was none.
pub fn check(url: &str, timeout: Duration) -> Result<String, String> {
    let uri: Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only plain http:// URLs can be probed".into());
    }
    let host = uri.host().ok_or("the URL has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let addrs: Vec<SocketAddr> = (host.trim_start_matches('[').trim_end_matches(']'), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut last = format!("{host} has no address");
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    let mut stream = stream.ok_or(last)?;
    let io = |e: std::io::Error| format!("no answer: {e}");
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: tagpin-probe\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut line = String::new();
    BufReader::new(stream.take(1024)).read_line(&mut line).map_err(io)?;
    let line = line.trim_end();
    let mut parts = line.splitn(3, ' ');
    match (parts.next(), parts.next()) {
        (Some(v), Some("200")) if v.starts_with("HTTP/1.") => Ok(line.trim_start_matches(v).trim().to_owned()),
        (Some(v), Some(_)) if v.starts_with("HTTP/1.") => {
            Err(format!("answered {}", line.trim_start_matches(v).trim()))
        }
        _ if line.is_empty() => Err("the connection closed without an answer".into()),
        _ => Err("the answer is not HTTP/1.x".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot server that answers `reply` to the first connection.
    fn serve_once(reply: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(reply.as_bytes());
            }
        });
        format!("http://{addr}/readyz")
    }

    #[test]
    fn only_a_200_passes() {
        let t = Duration::from_secs(5);
        assert_eq!(
            check(&serve_once("HTTP/1.1 200 OK\r\n\r\nready\n"), t).unwrap(),
            "200 OK"
        );
        let e = check(&serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n"), t).unwrap_err();
        assert_eq!(e, "answered 503 Service Unavailable");
        assert!(check(&serve_once(""), t)
            .unwrap_err()
            .contains("closed without an answer"));
        assert!(check(&serve_once("SSH-2.0-x\r\n"), t).unwrap_err().contains("not HTTP"));
        assert!(check("https://127.0.0.1:1/readyz", t)
            .unwrap_err()
            .contains("plain http"));
    }

    #[test]
    fn a_closed_port_is_a_failure_with_its_reason() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let e = check(&format!("http://127.0.0.1:{port}/readyz"), Duration::from_secs(5)).unwrap_err();
        assert!(e.starts_with("cannot connect to 127.0.0.1:"), "{e}");
    }
}
