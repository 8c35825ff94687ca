//! An upstream connection's socket, shared between hyper (which reads and writes it) and
//! the pool (which looks at it before reusing the connection).
//!
//! hyper notices bytes on an idle connection only once tokio's reactor has reported the
//! socket readable; a connection checked out between the bytes' arrival and that report
//! would have its next request answered with them. [`Socket::quiet`] asks the kernel
//! directly (a non-blocking `MSG_PEEK`, which tokio's readiness cache cannot hide).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

type Stream = MaybeHttpsStream<TokioIo<TcpStream>>;

/// What is waiting on an idle connection's socket.
#[derive(Debug, PartialEq, Eq)]
pub enum Waiting {
    Nothing,
    /// Bytes, in the clear: an HTTP message nobody asked for.
    Plain,
    /// Bytes under TLS: a record that may carry no data (a session ticket, a key
    /// update) as well as a response; the connection is not reused, and that is all.
    Tls,
    /// The upstream closed, or the socket failed.
    Closed,
}

#[derive(Clone)]
pub struct Socket(Arc<Mutex<Stream>>);

impl Socket {
    pub fn new(stream: Stream) -> Self {
        Self(Arc::new(Mutex::new(stream)))
    }

    fn lock(&self) -> MutexGuard<'_, Stream> {
        // A panic inside a read or write leaves the stream as usable as the error it
        // returned; hyper sees that error.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the kernel holds for this socket right now, without consuming it.
    pub fn waiting(&self) -> Waiting {
        let stream = self.lock();
        let (tcp, tls) = match &*stream {
            MaybeHttpsStream::Http(io) => (io.inner(), false),
            MaybeHttpsStream::Https(io) => (io.inner().get_ref().0.inner().inner(), true),
        };
        let mut byte = [MaybeUninit::<u8>::uninit()];
        match socket2::SockRef::from(tcp).peek(&mut byte) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Waiting::Nothing,
            Ok(0) | Err(_) => Waiting::Closed,
            Ok(_) if tls => Waiting::Tls,
            Ok(_) => Waiting::Plain,
        }
    }
}

impl Read for Socket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_read(cx, buf)
    }
}

impl Write for Socket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.lock()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.lock().is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.lock()).poll_write_vectored(cx, bufs)
    }
}
