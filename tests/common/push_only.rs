//! A registry with a push-only user, played by a relay in front of the real one.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use super::basic;

/// A relay in front of the upstream that plays a registry with a second user, `bob`, who
/// may push but not read: his reads are answered 404 (as some registries answer a user
/// without pull rights), his other requests (and his `GET /v2/`, which shows his
/// credentials are good) go on as `alice`'s.
pub struct PushOnlyRelay {
    pub addr: SocketAddr,
}

pub const BOB: &str = "bob";
pub const BOB_PASSWORD: &str = "push-only-1";

impl PushOnlyRelay {
    /// A relay to `target`, whose own user is `alice` (`Authorization` value `alice`).
    pub fn start(target: SocketAddr, alice: &str) -> Self {
        let alice = alice.to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let (c_write, s_read) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let (mut s_read, mut c_write) = (s_read, c_write);
                    let _ = std::io::copy(&mut s_read, &mut c_write);
                    let _ = c_write.shutdown(std::net::Shutdown::Write);
                });
                let alice = alice.clone();
                std::thread::spawn(move || relay_requests(client, server, &alice));
            }
        });
        Self { addr }
    }
}

/// Requests one at a time (tagpin does not pipeline): the head, then its
/// `Content-Length` bytes of body.
fn relay_requests(client: TcpStream, mut server: TcpStream, alice: &str) {
    let mut answer = client.try_clone().unwrap();
    let mut reader = BufReader::new(client);
    let bob = format!("authorization: {}", basic(BOB, BOB_PASSWORD));
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let end = line == "\r\n";
            head.push(line);
            if end {
                break;
            }
        }
        let is_bob = head.iter().any(|l| l.trim_end().eq_ignore_ascii_case(&bob));
        let read = head[0].starts_with("HEAD ") || head[0].starts_with("GET ");
        if is_bob && read && !head[0].starts_with("GET /v2/ ") {
            let _ = answer.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\
                  Docker-Distribution-Api-Version: registry/2.0\r\n\r\n",
            );
            continue;
        }
        let length: u64 = head
            .iter()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let head: String = head
            .into_iter()
            .map(|l| match l.trim_end().eq_ignore_ascii_case(&bob) {
                true => format!("Authorization: {alice}\r\n"),
                false => l,
            })
            .collect();
        if server.write_all(head.as_bytes()).is_err() {
            return;
        }
        let copied = std::io::copy(&mut (&mut reader).take(length), &mut server);
        if copied.map_or(true, |n| n != length) {
            return;
        }
    }
}
