//! The records the sled backend stores, as JSON, and the reading of records written by
//! earlier versions: a pin without a history gets the one its source implies, and a
//! tag's single claim object reads as a list of one write.

use serde::{Deserialize, Serialize};

use crate::oci::Digest;
use crate::store::{Claim, HistoryEntry, HistoryEvent, Pin, PinSource, Refused, Release, StoreError};

/// Records carry no version of their own; this key of the `meta` tree says which format
/// the whole store is in. 1 (or absent): pins without history. 2: with history.
/// 3: a tag's writes in flight as a list, and the `refs_by_holder` index. The `notes`
/// tree came later without a new format: a store without it has no notes, which is
/// what an absent tree reads as, so there is nothing to migrate. 4: the history log, begun
/// with a `genesis` entry per pin.
pub const FORMAT_KEY: &[u8] = b"format";
pub const FORMAT: u8 = 4;

#[derive(Serialize, Deserialize)]
pub struct PinRecord {
    pub digest: Digest,
    pub source: PinSource,
    pub pinned_at: u64,
    /// Absent in records of format 1.
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

pub fn corrupt(key: &[u8], why: impl ToString) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).replace('\0', ":"),
        why: why.to_string(),
    }
}

pub fn decode_pin(key: &[u8], bytes: &[u8]) -> Result<Pin, StoreError> {
    let r: PinRecord = serde_json::from_slice(bytes).map_err(|e| corrupt(key, e))?;
    let history = if r.history.is_empty() {
        // Format 1: the pin's own creation is its whole history.
        let event = match r.source {
            PinSource::Push => HistoryEvent::Push,
            PinSource::Adopted => HistoryEvent::Adopted,
        };
        let mut first = HistoryEntry::new(event, r.digest.clone(), None);
        first.at = r.pinned_at;
        vec![first]
    } else {
        r.history
    };
    Ok(Pin {
        digest: r.digest,
        source: r.source,
        pinned_at: r.pinned_at,
        history,
    })
}

/// Only the digest of a stored pin: what a read needs, without building its history.
/// [`encode_pin`] writes the digest first, so it is taken from the front of the record
/// without parsing the rest; a record in another shape is parsed whole.
pub fn decode_pin_digest(key: &[u8], bytes: &[u8]) -> Result<Digest, StoreError> {
    const FRONT: &[u8] = br#"{"digest":""#;
    let front = bytes
        .strip_prefix(FRONT)
        .and_then(|rest| rest.iter().position(|&b| b == b'"').map(|end| &rest[..end]))
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|d| Digest::parse(d).ok());
    if let Some(digest) = front {
        return Ok(digest);
    }
    #[derive(serde::Deserialize)]
    struct DigestOnly {
        digest: Digest,
    }
    let r: DigestOnly = serde_json::from_slice(bytes).map_err(|e| corrupt(key, e))?;
    Ok(r.digest)
}

pub fn encode_pin(pin: &Pin) -> Vec<u8> {
    serde_json::to_vec(&PinRecord {
        digest: pin.digest.clone(),
        source: pin.source,
        pinned_at: pin.pinned_at,
        history: pin.history.clone(),
    })
    .expect("serialising a pin record cannot fail")
}

/// A tag's writes in flight. Formats before 3 held at most one, as a single object.
pub fn decode_writes(key: &[u8], bytes: &[u8]) -> Result<Vec<Claim>, StoreError> {
    let is_list = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    if is_list {
        serde_json::from_slice(bytes).map_err(|e| corrupt(key, e))
    } else {
        serde_json::from_slice(bytes)
            .map(|one: Claim| vec![one])
            .map_err(|e| corrupt(key, e))
    }
}

pub fn encode_writes(writes: &[Claim]) -> Vec<u8> {
    serde_json::to_vec(writes).expect("serialising claim records cannot fail")
}

pub fn decode_release(key: &[u8], bytes: &[u8]) -> Result<Release, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(key, e))
}

pub fn encode_release(release: &Release) -> Vec<u8> {
    serde_json::to_vec(release).expect("serialising a release cannot fail")
}

/// The history of a tag that has no pin yet.
pub fn decode_notes(key: &[u8], bytes: &[u8]) -> Result<Vec<HistoryEntry>, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(key, e))
}

pub fn encode_notes(history: &[HistoryEntry]) -> Vec<u8> {
    serde_json::to_vec(history).expect("serialising history cannot fail")
}

pub fn decode_refusals(key: &[u8], bytes: &[u8]) -> Result<Vec<Refused>, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(key, e))
}

pub fn encode_refusals(list: &[Refused]) -> Vec<u8> {
    serde_json::to_vec(list).expect("serialising refusals cannot fail")
}

/// The value of a `deletes` entry (the key holds repository, digest and request).
#[derive(Serialize, Deserialize)]
pub struct DeleteEntry {
    pub request_id: String,
    /// Seconds since the Unix epoch, by this host's clock.
    pub started_at: u64,
}

pub fn decode_delete(key: &[u8], bytes: &[u8]) -> Result<DeleteEntry, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(key, e))
}

pub fn encode_delete(entry: &DeleteEntry) -> Vec<u8> {
    serde_json::to_vec(entry).expect("serialising a delete record cannot fail")
}

/// Keep a refused attempt among the tag's last [`MAX_REFUSALS`].
pub(super) fn push_refusal(
    tx: &sled::transaction::TransactionalTree,
    key: &[u8],
    refused: &Refused,
) -> super::keys::TxResult<()> {
    let mut list = match tx.get(key)? {
        Some(v) => decode_refusals(key, &v).map_err(super::keys::abort)?,
        None => Vec::new(),
    };
    list.push(refused.clone());
    if list.len() > crate::store::MAX_REFUSALS {
        list.drain(..list.len() - crate::store::MAX_REFUSALS);
    }
    tx.insert(key, encode_refusals(&list))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pins_digest_is_read_from_the_front_of_its_record_and_from_any_other_shape() {
        let d = Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
        let mut pin = Pin::now(d.clone(), PinSource::Push);
        pin.history[0].reason = Some("x\"y".into());
        let bytes = encode_pin(&pin);
        assert!(bytes.starts_with(br#"{"digest":"sha256:"#), "the fast path's shape");
        assert_eq!(decode_pin_digest(b"k", &bytes).unwrap(), d);
        // Another order, or an escaped digest, is parsed whole.
        let other = format!(r#"{{"source":"push","digest":"{d}","pinned_at":1}}"#);
        assert_eq!(decode_pin_digest(b"k", other.as_bytes()).unwrap(), d);
        let escaped = format!(
            r#"{{"digest":"\u0073ha256:{}","source":"push","pinned_at":1}}"#,
            "a".repeat(64)
        );
        assert_eq!(decode_pin_digest(b"k", escaped.as_bytes()).unwrap(), d);
        assert!(decode_pin_digest(b"k", br#"{"digest":"sha256:zz"}"#).is_err());
    }
}
