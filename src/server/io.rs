//! A deadline on writing to a client. The body idle timer ([`crate::body::IdleTimeout`])
//! runs only while hyper polls the body, and hyper stops polling it as soon as the
//! client stops reading: the socket's send buffer is full and the response waits. Without
//! a deadline here, such a client would hold its connection (and its slot under the
//! connection limit) for as long as it likes.
//!
//! [`WriteDeadline`] wraps an accepted connection (plain or TLS) and fails a write, flush
//! or shutdown that has waited for the client for the idle limit without any progress,
//! with an [`io::ErrorKind::TimedOut`] carrying [`WriteStalled`]. hyper then ends the
//! connection and the caller releases its slot.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The client read nothing of what tagpin wrote for the idle limit.
#[derive(Debug, thiserror::Error)]
#[error("the client read nothing for {0:?}")]
pub struct WriteStalled(pub Duration);

/// Whether `err` (a connection's error, as hyper returns it) is a [`WriteStalled`].
pub fn is_write_stall(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io.get_ref().is_some_and(|inner| inner.is::<WriteStalled>()) {
                return true;
            }
        }
        next = e.source();
    }
    false
}

/// A connection whose writes fail once they have waited `idle` without progress.
pub struct WriteDeadline<I> {
    inner: I,
    idle: Duration,
    /// Armed when a write first waits and disarmed by any progress. Created on the first
    /// wait, and only reset after that, so a client that always keeps up costs nothing.
    sleep: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl<I> WriteDeadline<I> {
    pub fn new(inner: I, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            sleep: None,
            waiting: false,
        }
    }

    /// Account for one poll of a write-side operation: progress disarms the deadline; a
    /// wait arms it (from now, if it was not already running) and turns into an error
    /// once it has run out.
    fn account<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.waiting = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let deadline = Instant::now() + self.idle;
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !std::mem::replace(&mut self.waiting, true) {
                    sleep.as_mut().reset(deadline);
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => {
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, WriteStalled(self.idle))))
                    }
                }
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteDeadline<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.account(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.account(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.account(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.account(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_reads_fails_after_the_idle_limit() {
        // A pipe with room for 16 bytes whose other end never reads.
        let (ours, _theirs) = tokio::io::duplex(16);
        let mut conn = WriteDeadline::new(ours, Duration::from_secs(5));
        let started = Instant::now();
        let err = conn.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(is_write_stall(&err), "{err}");
        assert!(started.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_up_is_never_cut() {
        use tokio::io::AsyncReadExt;
        let (ours, mut theirs) = tokio::io::duplex(16);
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 8];
            loop {
                tokio::time::sleep(Duration::from_secs(3)).await;
                match theirs.read(&mut buf).await.unwrap() {
                    0 => return got,
                    n => got += n,
                }
            }
        });
        let mut conn = WriteDeadline::new(ours, Duration::from_secs(5));
        conn.write_all(&[0u8; 256]).await.unwrap();
        conn.shutdown().await.unwrap();
        drop(conn);
        assert_eq!(reader.await.unwrap(), 256);
    }
}
