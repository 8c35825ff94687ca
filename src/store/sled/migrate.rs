//! Bringing a data dir written by an earlier tagpin up to the current record format.

use super::records::{self, corrupt, decode_pin, decode_writes, encode_pin, encode_writes};
use super::{io, Trees};
use crate::store::StoreError;

impl Trees {
    /// Bring records of an earlier format up to date, once, on open. Every step is
    /// idempotent and the format is written last, so an interrupted migration runs again
    /// whole at the next open.
    pub(super) fn migrate(&self) -> Result<(), StoreError> {
        let from = match self.meta.get(records::FORMAT_KEY).map_err(io)? {
            None => 1,
            Some(v) => match v.as_ref() {
                [f] => *f,
                _ => return Err(corrupt(records::FORMAT_KEY, "not a format number")),
            },
        };
        if from == records::FORMAT {
            return Ok(());
        }
        if from > records::FORMAT {
            return Err(StoreError::Corrupt {
                key: "format".into(),
                why: format!(
                    "the data dir holds record format {from}, this tagpin knows up to {}: upgrade tagpin",
                    records::FORMAT
                ),
            });
        }
        let (mut pins, mut claims, mut refs) = (0usize, 0usize, 0usize);
        if from < 2 {
            for item in self.pins.iter() {
                let (k, v) = item.map_err(io)?;
                // Decoding fills in the history a format-1 record implies.
                self.pins.insert(&k, encode_pin(&decode_pin(&k, &v)?)).map_err(io)?;
                pins += 1;
            }
        }
        if from < 3 {
            for item in self.claims.iter() {
                let (k, v) = item.map_err(io)?;
                // A single claim object becomes a list of one write.
                self.claims
                    .insert(&k, encode_writes(&decode_writes(&k, &v)?))
                    .map_err(io)?;
                claims += 1;
            }
            for key in self.refs.iter().keys() {
                let key = key.map_err(io)?;
                let reversed = reverse_ref_key(&key).ok_or_else(|| corrupt(&key, "not repo, ref and holder"))?;
                self.refs_by_holder.insert(reversed, &[][..]).map_err(io)?;
                refs += 1;
            }
        }
        let genesis = if from < 4 { self.genesis()? } else { 0 };
        self.meta
            .insert(records::FORMAT_KEY, &[records::FORMAT][..])
            .map_err(io)?;
        self.db.flush().map_err(io)?;
        if pins + claims + refs > 0 {
            tracing::info!(pins, claims, refs, from, format = records::FORMAT, "pin store migrated");
        }
        if genesis > 0 {
            tracing::info!(
                entries = genesis,
                "history log started: one genesis entry per pin bound before the log existed"
            );
        }
        Ok(())
    }
}

/// `repo \0 ref \0 holder` as `repo \0 holder \0 ref`.
fn reverse_ref_key(key: &[u8]) -> Option<Vec<u8>> {
    let mut parts = key.splitn(3, |b| *b == 0);
    let (repo, reference, holder) = (parts.next()?, parts.next()?, parts.next()?);
    Some([repo, b"\0", holder, b"\0", reference].concat())
}
