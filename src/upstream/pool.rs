//! Keep-alive HTTP/1.1 connections to the upstream's own origin, one pool per worker.
//!
//! Every proxied request goes to one origin, so the pool is a plain stack of idle
//! connections: no key to hash, no per-host map. (hyper-util's general client hashes
//! scheme and authority byte by byte with SipHash several times per request; that and
//! its checkout machinery were a sixth of tagpin's instructions per proxied request.)
//! Requests to other origins (a token realm) go through the general client instead.
//!
//! A connection is taken most-recently-used first (its TCP state is the warmest), and
//! goes back once hyper reports it ready for the next request, that is once the
//! response body has been read to its end. A connection whose response body is dropped
//! unread is closed by hyper and never comes back. A request that hyper had not yet
//! taken for a reused connection when that connection turned out closed is retried on
//! another one; a request that may have been written is never retried here. So when the
//! upstream closes an idle connection (RFC 9112 9.3.1) and the close has not been
//! noticed yet as a request is written on it, that request fails (502), as it did with
//! the general client: HTTP/1.1 cannot tell that close from one after reading.
//!
//! An upstream that sends bytes nobody asked for (a second response after a complete
//! one) could hand them to the next request on that connection, another client's. hyper
//! reads an idle connection once tokio reports it readable and closes it on any byte;
//! and before a connection is handed out, the pool asks the kernel whether anything is
//! waiting on its socket ([`socket::Socket::waiting`]) and discards it if so. Bytes that
//! arrive after the next request was written cannot be told from its response by any
//! HTTP/1.1 client; so once the upstream has been caught once, on any connection of any
//! worker, no connection to it is reused again: each request gets its own connection,
//! and what the upstream sends after its response is read by nobody ([`Unsolicited`]).

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;
use tower_service::Service;

use super::socket::{Socket, Waiting};
use super::{error_chain, UpstreamError};
use crate::body::Body;
use crate::config::Origin;

pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    /// `scheme://authority/`, what the connector dials.
    dial: Uri,
    host: HeaderValue,
    idle: Arc<Idle>,
    unsolicited: Unsolicited,
}

/// Whether the upstream has sent bytes on a connection where no response was due. Shared
/// by every worker's pool; once set, it stays set for the life of the process and no
/// connection is reused.
#[derive(Clone, Default)]
pub struct Unsolicited(Arc<AtomicBool>);

impl Unsolicited {
    pub fn seen(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// What a connection's driver ended with: hyper's error for bytes read where no
    /// response was due (an idle connection, or more after a complete response).
    fn note(&self, e: &hyper::Error) {
        if e.to_string() == UNEXPECTED_MESSAGE {
            self.record();
        }
    }

    fn record(&self) {
        if !self.0.swap(true, Ordering::Relaxed) {
            tracing::error!(
                "the upstream sent a response no request was waiting for; no upstream connection is reused from now on"
            );
        }
    }
}

/// hyper's text for `Kind::UnexpectedMessage`, which it has no predicate for (the pool's
/// tests fail if it changes).
const UNEXPECTED_MESSAGE: &str = "received unexpected message from connection";

struct Idle {
    conns: Mutex<Vec<(SendRequest<Body>, Socket, Instant)>>,
    max: usize,
    timeout: Duration,
}

impl Idle {
    fn take(&self) -> Option<(SendRequest<Body>, Socket)> {
        let mut conns = self.conns.lock().expect("the idle list is never poisoned");
        while let Some((conn, socket, since)) = conns.pop() {
            if !conn.is_closed() && since.elapsed() < self.timeout {
                return Some((conn, socket));
            }
        }
        None
    }

    /// Close every idle connection.
    fn clear(&self) {
        self.conns.lock().expect("the idle list is never poisoned").clear();
    }

    fn put(&self, conn: SendRequest<Body>, socket: Socket) {
        if conn.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut conns = self.conns.lock().expect("the idle list is never poisoned");
        // The oldest sit at the front: drop those the upstream has closed or that have
        // idled too long, so a burst's leftovers do not hold sockets forever.
        let stale = conns
            .iter()
            .take_while(|(c, _, since)| c.is_closed() || now.duration_since(*since) >= self.timeout)
            .count();
        conns.drain(..stale);
        if conns.len() < self.max {
            conns.push((conn, socket, now));
        }
    }
}

/// `Host` for `origin`: its host, and its port unless that is the scheme's default
/// (RFC 9110 7.2 allows either; the general client omits it, and a registry that builds
/// absolute URLs from `Host` must see the same value through either path).
fn host_header(origin: &Origin) -> String {
    let default = if origin.scheme == http::uri::Scheme::HTTPS {
        443
    } else {
        80
    };
    match origin.authority.port_u16() {
        Some(port) if port != default => format!("{}:{port}", origin.authority.host()),
        _ => origin.authority.host().to_string(),
    }
}

impl Pool {
    pub fn new(
        connector: HttpsConnector<HttpConnector>,
        origin: &Origin,
        max_idle: usize,
        idle_timeout: Duration,
        unsolicited: Unsolicited,
    ) -> Self {
        let dial = Uri::builder()
            .scheme(origin.scheme.clone())
            .authority(origin.authority.clone())
            .path_and_query("/")
            .build()
            .expect("a validated origin is a valid URI");
        let host = HeaderValue::from_str(&host_header(origin)).expect("an authority is a valid header value");
        Self {
            connector,
            dial,
            host,
            idle: Arc::new(Idle {
                conns: Mutex::new(Vec::new()),
                max: max_idle,
                timeout: idle_timeout,
            }),
            unsolicited,
        }
    }

    /// Send `req` (whose URI names this pool's origin) and wait for the response head.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        // HTTP/1.1 requests to an origin server carry the origin form and a Host
        // (RFC 9112 3.2.1, 3.2); a Host the caller set is kept.
        let origin_form = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(origin_form);
        req.headers_mut()
            .entry(header::HOST)
            .or_insert_with(|| self.host.clone());
        loop {
            let (mut conn, socket, reused) = match self.checkout() {
                Some((conn, socket)) => {
                    tracing::trace!("reusing an idle upstream connection");
                    (conn, socket, true)
                }
                None => {
                    let (conn, socket) = self.connect().await?;
                    (conn, socket, false)
                }
            };
            if conn.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err(UpstreamError::Transport(
                    "the new upstream connection closed at once".into(),
                ));
            }
            match conn.try_send_request(req).await {
                Ok(resp) => {
                    self.give_back(conn, socket);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the idle connection had gone; another one can take it.
                    Some(unsent) if reused => {
                        tracing::trace!(error = %e.error(), "idle upstream connection had closed; retrying on another");
                        req = unsent;
                    }
                    _ => return Err(UpstreamError::Transport(error_chain(&e.into_error()))),
                },
            }
        }
    }

    /// An idle connection with nothing waiting on its socket, unless reuse has stopped.
    fn checkout(&self) -> Option<(SendRequest<Body>, Socket)> {
        while !self.unsolicited.seen() {
            let (conn, socket) = self.idle.take()?;
            match socket.waiting() {
                Waiting::Nothing => return Some((conn, socket)),
                Waiting::Plain => self.unsolicited.record(),
                other => tracing::trace!(waiting = ?other, "idle upstream connection not reused"),
            }
        }
        self.idle.clear();
        None
    }

    async fn connect(&self) -> Result<(SendRequest<Body>, Socket), UpstreamError> {
        let mut connector = self.connector.clone();
        let failed = |e: &dyn std::error::Error| UpstreamError::Connect(error_chain(e));
        poll_fn(|cx| connector.poll_ready(cx)).await.map_err(|e| failed(&*e))?;
        let io = connector.call(self.dial.clone()).await.map_err(|e| failed(&*e))?;
        let socket = Socket::new(io);
        let (conn, driver) = http1::Builder::new()
            .handshake(socket.clone())
            .await
            .map_err(|e| failed(&e))?;
        tracing::trace!(upstream = %self.dial, "new upstream connection");
        let unsolicited = self.unsolicited.clone();
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(error = %error_chain(&e), "upstream connection ended with an error");
                unsolicited.note(&e);
            }
        });
        Ok((conn, socket))
    }

    /// Back to the idle stack once the connection can take the next request: at once
    /// when the response had no body, otherwise when its body has been read (a task
    /// waits for that; an abandoned body closes the connection and ends the wait). Once
    /// the upstream has sent unsolicited bytes, never: dropping `conn` closes the
    /// connection after its response.
    fn give_back(&self, mut conn: SendRequest<Body>, socket: Socket) {
        if self.unsolicited.seen() {
            return;
        }
        if conn.is_ready() {
            tracing::trace!("upstream connection idle again");
            self.idle.put(conn, socket);
            return;
        }
        let idle = Arc::clone(&self.idle);
        let unsolicited = self.unsolicited.clone();
        tokio::spawn(async move {
            if conn.ready().await.is_ok() && !unsolicited.seen() {
                tracing::trace!("upstream connection idle again after its response body");
                idle.put(conn, socket);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// How a test upstream treats each connection after its first response.
    #[derive(Clone, Copy)]
    enum After {
        /// Keep serving requests on it.
        KeepAlive,
        /// Close it without saying so (no `Connection: close`), as an upstream whose
        /// idle timeout fired does.
        Close,
        /// Keep serving, but send each body's second half 300 ms after its first, so a
        /// response is still streaming when the test sends its next request.
        Slow,
        /// Keep serving, and 30 ms after each response write a second one, `late`,
        /// that no request asked for.
        Late,
    }

    /// A raw HTTP/1.1 upstream answering every request with `hello`; it counts the
    /// connections it accepted and the requests it answered.
    async fn upstream(after: After) -> (Origin, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (conns, reqs) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (c, r) = (Arc::clone(&conns), Arc::clone(&reqs));
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                let r = Arc::clone(&r);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        buf.drain(..end);
                        r.fetch_add(1, Ordering::SeqCst);
                        let (head, tail) = match after {
                            After::Slow => (&b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel"[..], &b"lo"[..]),
                            _ => (&b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"[..], &b""[..]),
                        };
                        if sock.write_all(head).await.is_err() {
                            return;
                        }
                        if !tail.is_empty() {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            if sock.write_all(tail).await.is_err() {
                                return;
                            }
                        }
                        if let After::Close = after {
                            return;
                        }
                        if let After::Late = after {
                            tokio::time::sleep(Duration::from_millis(30)).await;
                            if sock
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlate")
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                });
            }
        });
        let origin = Origin {
            scheme: http::uri::Scheme::HTTP,
            authority: addr.to_string().parse().unwrap(),
        };
        (origin, conns, reqs)
    }

    fn pool(origin: &Origin) -> Pool {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        Pool::new(
            super::super::connector(tls, Duration::from_secs(5)),
            origin,
            4,
            Duration::from_secs(90),
            Unsolicited::default(),
        )
    }

    fn get(origin: &Origin) -> Request<Body> {
        Request::get(format!("{origin}/v2/"))
            .body(crate::body::empty())
            .unwrap()
    }

    async fn read_all(resp: Response<Incoming>) -> Vec<u8> {
        resp.into_body().collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_body_is_read() {
        let (origin, conns, reqs) = upstream(After::KeepAlive).await;
        let pool = pool(&origin);
        for _ in 0..5 {
            let resp = pool.send(get(&origin)).await.unwrap();
            assert_eq!(read_all(resp).await, b"hello");
            // Let the connection's task see the end of the response.
            tokio::task::yield_now().await;
        }
        assert_eq!(reqs.load(Ordering::SeqCst), 5);
        assert_eq!(
            conns.load(Ordering::SeqCst),
            1,
            "five requests in a row share one connection"
        );
    }

    #[tokio::test]
    async fn a_connection_whose_body_is_still_being_read_is_not_handed_to_another_request() {
        let (origin, conns, _) = upstream(After::Slow).await;
        let pool = pool(&origin);
        let first = pool.send(get(&origin)).await.unwrap();
        let second = pool.send(get(&origin)).await.unwrap();
        assert_eq!(read_all(second).await, b"hello");
        assert_eq!(read_all(first).await, b"hello");
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_abandoned_body_closes_its_connection_and_the_next_request_gets_a_new_one() {
        let (origin, conns, _) = upstream(After::Slow).await;
        let pool = pool(&origin);
        drop(pool.send(get(&origin)).await.unwrap());
        let resp = pool.send(get(&origin)).await.unwrap();
        assert_eq!(read_all(resp).await, b"hello");
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_upstream_that_closes_idle_connections_costs_no_request() {
        let (origin, conns, reqs) = upstream(After::Close).await;
        let pool = pool(&origin);
        for i in 0..20 {
            let resp = pool
                .send(get(&origin))
                .await
                .unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(read_all(resp).await, b"hello");
            // Sometimes the next request comes at once, sometimes after the close has
            // surely arrived: a closed connection is never handed out either way. (The
            // retry of a request that found its connection closed before writing it
            // needs the close to land between checkout and write, which no test can
            // place on purpose.)
            if i % 2 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        assert_eq!(
            reqs.load(Ordering::SeqCst),
            20,
            "each request reached the upstream once"
        );
        assert_eq!(conns.load(Ordering::SeqCst), 20);
    }

    #[tokio::test]
    async fn bytes_on_an_idle_connection_close_it_and_stop_all_reuse() {
        let (origin, conns, _) = upstream(After::Late).await;
        let pool = pool(&origin);
        let resp = pool.send(get(&origin)).await.unwrap();
        assert_eq!(read_all(resp).await, b"hello");
        // The unsolicited response arrives while the connection is idle in the pool.
        for _ in 0..200 {
            if pool.unsolicited.seen() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(pool.unsolicited.seen(), "hyper's error for it was recognised");
        for i in 0..3 {
            let resp = pool.send(get(&origin)).await.unwrap();
            assert_eq!(read_all(resp).await, b"hello", "request {i}");
            tokio::task::yield_now().await;
        }
        assert_eq!(conns.load(Ordering::SeqCst), 4, "no connection is reused any more");
    }

    #[tokio::test]
    async fn a_connection_with_bytes_waiting_is_not_used_for_the_next_request() {
        // The upstream on a runtime of its own, so it runs while this one is blocked.
        let other = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (other, (origin, conns, _)) = std::thread::spawn(move || {
            let up = other.block_on(upstream(After::Late));
            (other, up)
        })
        .join()
        .unwrap();
        let pool = pool(&origin);
        let resp = pool.send(get(&origin)).await.unwrap();
        assert_eq!(read_all(resp).await, b"hello");
        tokio::task::yield_now().await;
        // Block this (only) runtime thread: the unsolicited bytes arrive in the socket but
        // the connection's task cannot see them before it is checked out again.
        std::thread::sleep(Duration::from_millis(200));
        let resp = pool.send(get(&origin)).await.unwrap();
        assert_eq!(read_all(resp).await, b"hello");
        assert_eq!(conns.load(Ordering::SeqCst), 2);
        assert!(pool.unsolicited.seen());
        other.shutdown_background();
    }

    #[test]
    fn host_carries_the_port_only_when_it_is_not_the_default() {
        let origin = |scheme: http::uri::Scheme, authority: &str| Origin {
            scheme,
            authority: authority.parse().unwrap(),
        };
        use http::uri::Scheme;
        for (o, host) in [
            (origin(Scheme::HTTP, "reg:80"), "reg"),
            (origin(Scheme::HTTP, "reg:5000"), "reg:5000"),
            (origin(Scheme::HTTP, "reg"), "reg"),
            (origin(Scheme::HTTPS, "reg.example:443"), "reg.example"),
            (origin(Scheme::HTTPS, "reg.example:80"), "reg.example:80"),
            (origin(Scheme::HTTP, "[::1]:80"), "[::1]"),
            (origin(Scheme::HTTP, "[::1]:5001"), "[::1]:5001"),
        ] {
            assert_eq!(host_header(&o), host, "{o}");
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let origin = Origin {
            scheme: http::uri::Scheme::HTTP,
            authority: listener.local_addr().unwrap().to_string().parse().unwrap(),
        };
        drop(listener);
        match pool(&origin).send(get(&origin)).await {
            Err(UpstreamError::Connect(_)) => {}
            other => panic!("expected a connect error, got {:?}", other.map(|r| r.status())),
        }
    }
}
