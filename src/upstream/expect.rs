//! `Expect: 100-continue` decided by the upstream (RFC 9110 10.1.1).
//!
//! hyper's server answers an expectation itself: it sends `100 Continue` the first time
//! the request body is polled. A proxy that polls at once has the client send a whole
//! upload before the upstream can refuse it (a 401 from an authenticating registry costs
//! the client the megabytes it sent). So the expectation is forwarded, and the client's
//! body is held, unpolled, until the upstream sends its own `100 Continue`. If the
//! upstream answers with a final status first, that answer goes to the client and its
//! body is never read: hyper sends `100 Continue` only before a response has started, so
//! the client never sees one, and the connection is closed instead of being drained.
//!
//! An upstream that ignores the expectation and waits for the body gets it after
//! [`CONTINUE_TIMEOUT`], as RFC 9110 10.1.1 lets a client proceed without waiting
//! indefinitely for `100 Continue`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::Sleep;

use crate::body::{self, Body, BoxError};

/// How long the body waits for the upstream's `100 Continue` before it is sent anyway;
/// curl and Go's `http.Transport` wait one second too.
pub const CONTINUE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether a request carries the `100-continue` expectation (RFC 9110 10.1.1; the only
/// expectation defined, compared without case).
pub fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::EXPECT)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Where the exchange stands. It only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Headers sent, neither `100 Continue` nor a final answer yet: the body waits.
    Waiting,
    /// The upstream wants the body (or did not answer in time): it flows.
    Continue,
    /// A final answer came first; it is being passed to the client.
    Answered,
    /// That answer has gone to the client (or the request failed): the body is dropped
    /// unread and the upstream connection, left mid-request, is given up.
    Released,
}

struct Signal {
    state: Mutex<(Phase, Option<Waker>)>,
}

impl Signal {
    fn lock(&self) -> MutexGuard<'_, (Phase, Option<Waker>)> {
        // A panic while holding this lock cannot leave the phase half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Move from any of `from` to `to`, waking the body; false when in another phase.
    fn advance(&self, from: &[Phase], to: Phase) -> bool {
        let mut state = self.lock();
        if !from.contains(&state.0) {
            return false;
        }
        state.0 = to;
        if let Some(waker) = state.1.take() {
            waker.wake();
        }
        true
    }
}

/// The handler's side of a forwarded expectation; see [`Expectation::answered`].
pub struct Expectation {
    signal: Arc<Signal>,
}

/// Forward the expectation on `req`, and hold its body until the upstream's
/// `100 Continue` (seen through hyper's informational-response callback).
pub fn forward(req: &mut Request<Body>) -> Expectation {
    let signal = Arc::new(Signal {
        state: Mutex::new((Phase::Waiting, None)),
    });
    req.headers_mut()
        .insert(header::EXPECT, HeaderValue::from_static("100-continue"));
    let on_continue = Arc::clone(&signal);
    hyper::ext::on_informational(req, move |res| {
        if res.status() == StatusCode::CONTINUE {
            on_continue.advance(&[Phase::Waiting], Phase::Continue);
        }
    });
    let inner = std::mem::replace(req.body_mut(), body::empty());
    *req.body_mut() = Gated {
        inner: Some(inner),
        signal: Arc::clone(&signal),
        timeout: None,
    }
    .boxed_unsync();
    Expectation { signal }
}

impl Expectation {
    /// The upstream's final response, for the client. When it came before
    /// `100 Continue`, the held body is dropped unread once this response has been passed
    /// on (so the response itself still streams from the upstream connection).
    pub fn answered(self, resp: Response<Body>) -> Response<Body> {
        if !self.signal.advance(&[Phase::Waiting], Phase::Answered) {
            return resp;
        }
        resp.map(|inner| {
            ReleaseOnDrop {
                inner,
                _expectation: self,
            }
            .boxed_unsync()
        })
    }
}

impl Drop for Expectation {
    fn drop(&mut self) {
        self.signal.advance(&[Phase::Waiting, Phase::Answered], Phase::Released);
    }
}

/// The upstream answered before it wanted the body, so the body was never sent.
#[derive(Debug, thiserror::Error)]
#[error("the upstream answered before asking for the request body; the body was not sent")]
pub struct NotSent;

/// The request body as the upstream client sees it: pending while the upstream decides.
struct Gated {
    inner: Option<Body>,
    signal: Arc<Signal>,
    /// Started on the first poll, when hyper has written the request headers.
    timeout: Option<Pin<Box<Sleep>>>,
}

impl HttpBody for Gated {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let phase = {
                let mut state = this.signal.lock();
                if matches!(state.0, Phase::Waiting | Phase::Answered) {
                    state.1 = Some(cx.waker().clone());
                }
                state.0
            };
            match phase {
                Phase::Continue => {
                    let Some(inner) = this.inner.as_mut() else {
                        return Poll::Ready(None);
                    };
                    return Pin::new(inner).poll_frame(cx);
                }
                Phase::Waiting => {
                    let timeout = this
                        .timeout
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(CONTINUE_TIMEOUT)));
                    match timeout.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        // Lost a race with a final answer: the loop sees `Answered`.
                        Poll::Ready(()) => {
                            this.signal.advance(&[Phase::Waiting], Phase::Continue);
                        }
                    }
                }
                Phase::Answered => return Poll::Pending,
                Phase::Released => {
                    // Dropping the client's body unread tells hyper's server not to send
                    // `100 Continue` and to close that connection; the error makes hyper's
                    // client close the upstream one, which expects a body it will not get.
                    this.inner = None;
                    return Poll::Ready(Some(Err(Box::new(NotSent))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map(|b| b.size_hint()).unwrap_or_default()
    }
}

/// A response body that releases the held request body when it is dropped: after its
/// last frame went to the client, or when the client went away.
struct ReleaseOnDrop {
    inner: Body,
    _expectation: Expectation,
}

impl HttpBody for ReleaseOnDrop {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &'static [u8]) -> Request<Body> {
        Request::new(body::full(body))
    }

    fn signal_of(e: &Expectation) -> Phase {
        e.signal.lock().0
    }

    #[test]
    fn the_expectation_is_recognised_without_case() {
        let mut h = HeaderMap::new();
        assert!(!expects_continue(&h));
        h.insert(header::EXPECT, HeaderValue::from_static("100-Continue"));
        assert!(expects_continue(&h));
        h.insert(header::EXPECT, HeaderValue::from_static("something-else"));
        assert!(!expects_continue(&h));
    }

    #[tokio::test(start_paused = true)]
    async fn the_body_waits_for_continue_then_flows_unchanged() {
        let mut req = request(b"payload");
        let e = forward(&mut req);
        assert_eq!(req.headers()[header::EXPECT], "100-continue");
        assert_eq!(req.body().size_hint().exact(), Some(7));
        let mut body = req.into_body();
        let early = tokio::time::timeout(CONTINUE_TIMEOUT / 2, body.frame()).await;
        assert!(early.is_err(), "the body moved before 100 Continue");
        e.signal.advance(&[Phase::Waiting], Phase::Continue);
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"payload");
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_that_never_sends_continue_gets_the_body_after_the_timeout() {
        let mut req = request(b"payload");
        let e = forward(&mut req);
        let started = tokio::time::Instant::now();
        let bytes = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"payload");
        assert!(started.elapsed() >= CONTINUE_TIMEOUT);
        assert_eq!(signal_of(&e), Phase::Continue);
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_answer_first_keeps_the_body_unsent_until_it_is_passed_on() {
        let mut req = request(b"payload");
        let e = forward(&mut req);
        let mut body = req.into_body();
        let resp = e.answered(Response::new(body::full("denied")));
        // Long past the timeout: a final answer means the body is never sent.
        let held = tokio::time::timeout(CONTINUE_TIMEOUT * 5, body.frame()).await;
        assert!(held.is_err(), "the body moved after a final answer");
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&text[..], b"denied");
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<NotSent>(), "{err}");
    }

    #[tokio::test]
    async fn a_final_answer_after_continue_changes_nothing() {
        let mut req = request(b"payload");
        let e = forward(&mut req);
        e.signal.advance(&[Phase::Waiting], Phase::Continue);
        let resp = e.answered(Response::new(body::full("ok")));
        let bytes = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"payload");
        assert_eq!(&resp.into_body().collect().await.unwrap().to_bytes()[..], b"ok");
    }
}
