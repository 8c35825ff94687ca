//! Reading a manifest push: the only body tagpin buffers. The read is bounded in size,
//! in total time and, across all connections, in memory ([`Budget`]); the bytes returned
//! are exactly the bytes received, so their sha256 is the digest the upstream computes
//! (distribution-spec `spec.md`, "Pushing Manifests").

mod budget;
mod share;

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;

pub use budget::{Budget, Exhausted, Reservation, Scarce, SMALL_BODY_BYTES};

use crate::body::Body;
use crate::oci::strict_json;

/// The buffer's first allocation for a body of unknown length.
const FIRST_ALLOCATION: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is larger than the {limit}-byte limit")]
    TooLarge { limit: usize },
    #[error("could not read the manifest body: {0}")]
    Body(String),
    #[error("manifest is not valid JSON: {0}")]
    NotJson(String),
    #[error("manifest is ambiguous: {0}")]
    Ambiguous(crate::oci::strict_json::Ambiguity),
    #[error("the manifest body took longer than {limit:?} to arrive; nothing was changed")]
    TooSlow { limit: Duration },
    #[error("the manifest body got no memory: {0}")]
    Busy(#[from] Exhausted),
}

/// How every manifest body is read: shared by all workers.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest body accepted.
    pub max_bytes: usize,
    /// The whole body must arrive within this, counted from the start of the read. The
    /// per-read idle timeout alone would let a client trickle a byte at a time and hold
    /// its memory indefinitely.
    pub deadline: Duration,
    pub budget: Budget,
}

/// Read the whole body within `limits`. A declared `Content-Length` over the size limit
/// fails before anything is read; a body that goes past it fails as soon as it does.
///
/// The returned bytes keep their memory counted against the budget, and against the
/// share of `client` (the connection's peer address), until dropped.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limits: &Limits,
    client: IpAddr,
) -> Result<Bytes, ManifestError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = limits.max_bytes;
    let declared = match declared {
        Some(n) if n > limit as u64 => return Err(ManifestError::TooLarge { limit }),
        // Within the limit, so it fits in usize.
        Some(n) => Some(n as usize),
        None => None,
    };
    tokio::time::timeout(limits.deadline, read_within_budget(declared, body, limits, client))
        .await
        .map_err(|_| ManifestError::TooSlow { limit: limits.deadline })?
}

async fn read_within_budget(
    declared: Option<usize>,
    mut body: Body,
    limits: &Limits,
    client: IpAddr,
) -> Result<Bytes, ManifestError> {
    let limit = limits.max_bytes;
    let mut reservation = limits.budget.reservation(client);
    // A body with a declared length is admitted for all of it or not at all, before any
    // byte is read: bodies that each held part of the budget while waiting for the rest
    // could starve one another, and a refused body has cost nothing. (The memory itself
    // is only allocated as bytes arrive.)
    if let Some(n) = declared {
        reservation.grow_to(n).await?;
    }
    let ceiling = declared.unwrap_or(limit);
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ManifestError::Body(crate::upstream::error_chain(&*e)))?;
        let Ok(data) = frame.into_data() else { continue };
        let needed = buf.len() + data.len();
        if needed > limit {
            return Err(ManifestError::TooLarge { limit });
        }
        if needed > buf.capacity() {
            // Doubling, capped at the declared length (or the limit): the allocation, not
            // the length, is what the budget must cover, so it is never left to `Vec`'s
            // own growth. A body without a length is granted memory as it grows.
            let capacity = needed
                .max(buf.capacity() * 2)
                .max(FIRST_ALLOCATION)
                .min(ceiling)
                .max(needed);
            reservation.grow_to(capacity).await?;
            buf.reserve_exact(capacity - buf.len());
        }
        buf.extend_from_slice(&data);
    }
    Ok(reservation.hold(buf))
}

/// A manifest must at least be JSON (image-spec `manifest.md`), and JSON the upstream
/// registry reads as tagpin does: no duplicate keys, no key that differs only in case
/// from a field name or another key ([`strict_json`]). Anything else is refused with
/// MANIFEST_INVALID before it can be pinned.
pub fn check_json(bytes: &[u8]) -> Result<(), ManifestError> {
    strict_json::check(bytes).map_err(|e| match e {
        strict_json::Refused::NotJson(e) => ManifestError::NotJson(e.to_string()),
        strict_json::Refused::Ambiguous(a) => ManifestError::Ambiguous(a),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http_body::Frame;

    use super::*;
    use crate::body::{full, BoxError};

    const KIB: usize = 1024;
    const C: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// 1 MiB of budget (128 KiB reserved for small bodies), 512 KiB bodies at most.
    fn limits() -> Limits {
        Limits {
            max_bytes: 512 * KIB,
            deadline: Duration::from_secs(30),
            budget: Budget::new(1024 * KIB, 1024 * KIB, Duration::from_secs(1)),
        }
    }

    fn with_max(max_bytes: usize) -> Limits {
        Limits { max_bytes, ..limits() }
    }

    fn len_header(n: usize) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_LENGTH, n.into());
        h
    }

    /// Yields its chunks, then either ends or never makes progress again.
    struct Chunks {
        chunks: VecDeque<Bytes>,
        then_stall: bool,
    }

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.chunks.pop_front() {
                Some(c) => Poll::Ready(Some(Ok(Frame::data(c)))),
                None if self.then_stall => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    fn chunks(sizes: &[usize], then_stall: bool) -> Body {
        let chunks = sizes.iter().map(|&n| Bytes::from(vec![b' '; n])).collect();
        Chunks { chunks, then_stall }.boxed_unsync()
    }

    #[tokio::test]
    async fn bytes_come_back_exactly() {
        let raw = b"{ \"schemaVersion\" : 2 }\n".to_vec();
        let got = read_limited(&HeaderMap::new(), full(raw.clone()), &limits(), C)
            .await
            .unwrap();
        assert_eq!(&got[..], &raw[..]);
    }

    #[tokio::test]
    async fn the_limit_is_inclusive() {
        assert!(
            read_limited(&HeaderMap::new(), full(vec![b' '; 1024]), &with_max(1024), C)
                .await
                .is_ok()
        );
        let e = read_limited(&HeaderMap::new(), full(vec![b' '; 1025]), &with_max(1024), C)
            .await
            .unwrap_err();
        assert!(matches!(e, ManifestError::TooLarge { limit: 1024 }));
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_fails_before_reading() {
        let e = read_limited(&len_header(5000), full(vec![]), &with_max(1024), C)
            .await
            .unwrap_err();
        assert!(matches!(e, ManifestError::TooLarge { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_still_arriving_at_the_deadline_is_cut() {
        let l = Limits {
            deadline: Duration::from_secs(3),
            ..limits()
        };
        let started = tokio::time::Instant::now();
        let e = read_limited(&len_header(100), chunks(&[10], true), &l, C)
            .await
            .unwrap_err();
        assert!(matches!(e, ManifestError::TooSlow { .. }), "{e}");
        assert!(started.elapsed() >= Duration::from_secs(3));
        assert_eq!(l.budget.available(), 1024 * KIB, "a cut body gives its memory back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_declared_body_is_admitted_whole_or_refused_as_busy() {
        let l = limits();
        // 512 KiB stalled bodies: one fits beside another only in the 896 KiB shared pool
        // if nothing else holds it.
        let half = len_header(512 * KIB);
        let first = read_limited(&half, chunks(&[10], true), &l, C);
        tokio::pin!(first);
        assert!(tokio::time::timeout(Duration::from_millis(10), &mut first)
            .await
            .is_err());
        assert_eq!(l.budget.available(), 512 * KIB, "admitted for all it declared");
        let e = read_limited(&half, chunks(&[10], true), &l, C).await.unwrap_err();
        assert!(matches!(e, ManifestError::Busy(_)), "{e}");
        // A small body still gets its memory from the reserve.
        let small = read_limited(&len_header(2 * KIB), chunks(&[2 * KIB], false), &l, C).await;
        assert_eq!(small.unwrap().len(), 2 * KIB);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_without_a_length_is_granted_memory_as_it_grows() {
        let l = limits();
        let mut hog = l.budget.reservation(C);
        hog.grow_to(700 * KIB).await.unwrap();
        // 324 KiB remain (196 shared, 128 reserved): 100 KiB of chunks fit...
        let ok = read_limited(&HeaderMap::new(), chunks(&[40 * KIB, 60 * KIB], false), &l, C).await;
        assert_eq!(ok.unwrap().len(), 100 * KIB);
        // ... 400 KiB do not, and nothing stays held once refused.
        let e = read_limited(&HeaderMap::new(), chunks(&[100 * KIB; 4], false), &l, C)
            .await
            .unwrap_err();
        assert!(matches!(e, ManifestError::Busy(_)), "{e}");
        assert_eq!(l.budget.available(), 324 * KIB);
    }

    #[tokio::test]
    async fn the_bytes_returned_hold_their_memory_until_dropped() {
        let l = limits();
        let got = read_limited(&len_header(3000), chunks(&[1000, 2000], false), &l, C)
            .await
            .unwrap();
        assert_eq!(got.len(), 3000);
        assert_eq!(l.budget.available(), 1024 * KIB - 3000);
        drop(got);
        assert_eq!(l.budget.available(), 1024 * KIB);
    }

    #[test]
    fn json_check() {
        assert!(check_json(b"{\"a\":[1,2]}").is_ok());
        assert!(check_json(b"not json").is_err());
        assert!(check_json(b"{\"a\":1} trailing").is_err());
        let e = check_json(br#"{"schemaVersion":2,"Layers":[]}"#).unwrap_err();
        assert!(matches!(e, ManifestError::Ambiguous(_)), "{e}");
        assert!(e
            .to_string()
            .starts_with(r#"manifest is ambiguous: the key "Layers" at the top level"#));
    }
}
