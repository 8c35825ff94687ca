//! Body types shared by the server and the upstream client.
//!
//! Bodies are streamed frame by frame; nothing here buffers. [`IdleTimeout`] cuts a body
//! that makes no progress for too long, so a stalled peer cannot hold a connection (and
//! any tag lock behind it) forever.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type that flows through tagpin in both directions.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body made no progress within the idle limit.
#[derive(Debug, thiserror::Error)]
#[error("body made no progress for {0:?}")]
pub struct IdleTimeoutError(pub Duration);

/// Wraps a body and fails it when no frame arrives for `idle`.
///
/// The timer is re-armed lazily: each frame only records the time, and the sleep is
/// pushed back when it fires early. That keeps the per-frame cost to one clock read on
/// multi-gigabyte transfers.
pub struct IdleTimeout<B> {
    inner: B,
    idle: Duration,
    last_progress: Instant,
    /// Created on the first `Pending`: a body that is always ready (most small bodies)
    /// never touches the timer.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            last_progress: Instant::now(),
            sleep: None,
        }
    }
}

impl<B> HttpBody for IdleTimeout<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.last_progress = Instant::now();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => loop {
                let deadline = this.last_progress + this.idle;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() < deadline {
                    sleep.as_mut().reset(deadline);
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) if Instant::now() >= deadline => {
                        return Poll::Ready(Some(Err(Box::new(IdleTimeoutError(this.idle)))));
                    }
                    Poll::Ready(()) => continue,
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reports through a oneshot channel when the wrapped body has been read to its end (or
/// is dropped before that), so the sender of a request knows its body is out; and
/// records in [`Progress`] when it last handed out a frame, so the sender can tell a
/// peer that stopped reading it (the body is then not polled at all, and its own idle
/// timer never runs).
pub struct NotifyEnd {
    inner: Body,
    done: Option<tokio::sync::oneshot::Sender<()>>,
    progress: std::sync::Arc<Progress>,
}

/// When a body last made progress, readable from another task.
pub struct Progress {
    start: Instant,
    /// Milliseconds since `start`.
    last_ms: std::sync::atomic::AtomicU64,
}

impl Progress {
    pub fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            start: Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn record(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl NotifyEnd {
    pub fn wrap(inner: Body, done: tokio::sync::oneshot::Sender<()>, progress: std::sync::Arc<Progress>) -> Body {
        Self {
            inner,
            done: Some(done),
            progress,
        }
        .boxed_unsync()
    }
}

impl HttpBody for NotifyEnd {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(Some(_))) {
            self.progress.record();
        }
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            if let Some(done) = self.done.take() {
                let _ = done.send(());
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body fed by a channel: each message is one frame, and the body ends when the
/// sender is dropped. For answers produced page by page (an export), so memory holds one
/// page, not the whole answer. [`BodySender::fail`] ends it with an error instead, which
/// cuts the response short on the wire (no final chunk), so a client can never take a
/// truncated answer for a whole one.
pub fn channel(capacity: usize) -> (BodySender, Body) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity);
    (BodySender(tx), ChannelBody(rx).boxed_unsync())
}

/// The sending half of [`channel`].
pub struct BodySender(tokio::sync::mpsc::Sender<Result<Bytes, BoxError>>);

/// The receiving body went away (the client left).
#[derive(Debug)]
pub struct Gone;

impl BodySender {
    pub async fn send(&self, bytes: Bytes) -> Result<(), Gone> {
        self.0.send(Ok(bytes)).await.map_err(|_| Gone)
    }

    /// [`BodySender::send`] from a thread outside the runtime (a reader of a file).
    pub fn blocking_send(&self, bytes: Bytes) -> Result<(), Gone> {
        self.0.blocking_send(Ok(bytes)).map_err(|_| Gone)
    }

    /// [`BodySender::fail`] from a thread outside the runtime.
    pub fn blocking_fail(&self, why: String) {
        let _ = self.0.blocking_send(Err(why.into()));
    }

    /// End the body with an error: the answer is incomplete.
    pub async fn fail(&self, why: String) {
        let _ = self.0.send(Err(why.into())).await;
    }
}

struct ChannelBody(tokio::sync::mpsc::Receiver<Result<Bytes, BoxError>>);

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|m| m.map(|r| r.map(Frame::data)))
    }
}

/// Box `inner` behind an idle timeout; a body that is already complete (a GET's empty
/// request body) needs no timer and becomes a plain empty body.
pub fn with_idle_timeout<B>(inner: B, idle: Duration) -> Body
where
    B: HttpBody<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    if inner.is_end_stream() {
        return empty();
    }
    IdleTimeout::new(inner, idle).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields one frame, then never makes progress again.
    struct OneThenStall(bool);

    impl HttpBody for OneThenStall {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            if std::mem::replace(&mut self.0, true) {
                Poll::Pending
            } else {
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_idle_limit() {
        let mut body = IdleTimeout::new(OneThenStall(false), Duration::from_secs(5));
        assert!(body.frame().await.unwrap().is_ok());
        let started = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<IdleTimeoutError>(), "{err}");
        assert!(started.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_complete_body_passes_unchanged() {
        let body = IdleTimeout::new(Full::new(Bytes::from_static(b"hello")), Duration::from_secs(5));
        assert_eq!(body.size_hint().exact(), Some(5));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
    }
}
