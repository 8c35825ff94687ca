//! The records the sled backend stores, as JSON, and the migration of records written by
//! earlier versions (a pin without a history gets the one its source implies).

use serde::{Deserialize, Serialize};

use crate::oci::Digest;
use crate::store::{Claim, HistoryEntry, HistoryEvent, Pin, PinSource, Refused, StoreError};

/// Records carry no version of their own; this key of the `meta` tree says which format
/// the whole store is in. 1 (or absent): pins without history. 2: with history.
pub const FORMAT_KEY: &[u8] = b"format";
pub const FORMAT: u8 = 2;

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

pub fn encode_pin(pin: &Pin) -> Vec<u8> {
    serde_json::to_vec(&PinRecord {
        digest: pin.digest.clone(),
        source: pin.source,
        pinned_at: pin.pinned_at,
        history: pin.history.clone(),
    })
    .expect("serialising a pin record cannot fail")
}

pub fn decode_claim(key: &[u8], bytes: &[u8]) -> Result<Claim, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(key, e))
}

pub fn encode_claim(claim: &Claim) -> Vec<u8> {
    serde_json::to_vec(claim).expect("serialising a claim record cannot fail")
}

pub fn decode_refusals(key: &[u8], bytes: &[u8]) -> Result<Vec<Refused>, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(key, e))
}

pub fn encode_refusals(list: &[Refused]) -> Vec<u8> {
    serde_json::to_vec(list).expect("serialising refusals cannot fail")
}

#[derive(Serialize, Deserialize)]
pub struct DeleteRecord {
    pub request_id: String,
    pub started_at: u64,
}
