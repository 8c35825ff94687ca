//! Reading a manifest push: the only body tagpin buffers. The read is bounded, and the
//! bytes returned are exactly the bytes received, so their sha256 is the digest the
//! upstream computes (distribution-spec `spec.md`, "Pushing Manifests").

mod budget;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt;

pub use budget::{Budget, Exhausted, Reservation, SMALL_BODY_BYTES};

use crate::body::Body;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is larger than the {limit}-byte limit")]
    TooLarge { limit: usize },
    #[error("could not read the manifest body: {0}")]
    Body(String),
    #[error("manifest is not valid JSON: {0}")]
    NotJson(String),
}

/// Read the whole body, failing as soon as it passes `limit` bytes. A declared
/// `Content-Length` over the limit fails before anything is read.
pub async fn read_limited(headers: &HeaderMap, mut body: Body, limit: usize) -> Result<Bytes, ManifestError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ManifestError::TooLarge { limit });
    }
    let mut buf = BytesMut::with_capacity(declared.map_or(16 * 1024, |n| n as usize));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ManifestError::Body(crate::upstream::error_chain(&*e)))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ManifestError::TooLarge { limit });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// A manifest must at least be JSON (image-spec `manifest.md`); anything else is refused
/// with MANIFEST_INVALID before it can be pinned.
pub fn check_json(bytes: &[u8]) -> Result<(), ManifestError> {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
        .map(|_| ())
        .map_err(|e| ManifestError::NotJson(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::full;

    fn len_header(n: usize) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_LENGTH, n.into());
        h
    }

    #[tokio::test]
    async fn bytes_come_back_exactly() {
        let raw = b"{ \"schemaVersion\" : 2 }\n".to_vec();
        let got = read_limited(&HeaderMap::new(), full(raw.clone()), 1024).await.unwrap();
        assert_eq!(&got[..], &raw[..]);
    }

    #[tokio::test]
    async fn the_limit_is_inclusive() {
        assert!(read_limited(&HeaderMap::new(), full(vec![b' '; 1024]), 1024)
            .await
            .is_ok());
        let e = read_limited(&HeaderMap::new(), full(vec![b' '; 1025]), 1024)
            .await
            .unwrap_err();
        assert!(matches!(e, ManifestError::TooLarge { limit: 1024 }));
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_fails_before_reading() {
        let e = read_limited(&len_header(5000), full(vec![]), 1024).await.unwrap_err();
        assert!(matches!(e, ManifestError::TooLarge { .. }));
    }

    #[test]
    fn json_check() {
        assert!(check_json(b"{\"a\":[1,2]}").is_ok());
        assert!(check_json(b"not json").is_err());
        assert!(check_json(b"{\"a\":1} trailing").is_err());
    }
}
