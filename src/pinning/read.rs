//! Pin on first pull: a read by tag of a protected tag that has neither pin nor write in
//! flight adopts the digest the upstream answered with, under the same rule as adoption
//! at push time. It never overrides a pin or a write in flight, so of a first pull and a
//! push of another digest racing for a free tag exactly one binds it: the push's record
//! is written before it is forwarded, and this transition, applied atomically by the
//! store, finds either that record (and adopts nothing) or no record (and the push then
//! finds the pin and is decided against it).

use super::{expire, Clock};
use crate::oci::Digest;
use crate::store::{Pin, PinSource, TagRecord};

/// What a first pull found, or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstPull {
    /// The tag had neither pin nor write in flight: it is now pinned to the digest read.
    Adopted,
    /// The tag is pinned (maybe by a push that won the race) to this digest.
    Pinned(Digest),
    /// A write of the tag is in flight and has no pin yet: nothing is adopted.
    InFlight,
}

/// Adopt `served` (the digest the upstream answered a read of the tag with) as the pin,
/// unless the tag is pinned or a write of it is in flight. `how` names the read
/// (`GET`, `HEAD`) for the history entry.
pub fn adopt_on_read(record: &mut TagRecord, served: &Digest, how: &str, clock: Clock) -> FirstPull {
    expire(record, clock);
    if let Some(pin) = &record.pin {
        return FirstPull::Pinned(pin.digest.clone());
    }
    if !record.writes.is_empty() && !super::mutation::on(super::mutation::Mutation::AdoptOverClaim) {
        return FirstPull::InFlight;
    }
    let mut pin = Pin::now(served.clone(), PinSource::Adopted);
    pin.pinned_at = clock.now;
    for entry in &mut pin.history {
        entry.at = clock.now;
        entry.reason = Some(format!("first pull ({how})"));
        entry.via = Some(crate::store::AdoptedVia::Read);
    }
    record.set_pin(pin);
    FirstPull::Adopted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Claim, HistoryEvent};

    const CLOCK: Clock = Clock { now: 1000, horizon: 60 };

    fn digest(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    #[test]
    fn a_free_tag_is_adopted_with_the_read_in_its_history() {
        let mut record = TagRecord::default();
        assert_eq!(
            adopt_on_read(&mut record, &digest('a'), "GET", CLOCK),
            FirstPull::Adopted
        );
        let pin = record.pin.as_ref().unwrap();
        assert_eq!(
            (pin.digest.clone(), pin.source, pin.pinned_at),
            (digest('a'), PinSource::Adopted, 1000)
        );
        assert_eq!(pin.history.len(), 1);
        assert_eq!(pin.history[0].event, HistoryEvent::Adopted);
        assert_eq!(pin.history[0].reason.as_deref(), Some("first pull (GET)"));
    }

    #[test]
    fn a_pin_or_a_write_in_flight_is_never_overridden() {
        let mut record = TagRecord::default();
        adopt_on_read(&mut record, &digest('a'), "HEAD", CLOCK);
        let before = record.clone();
        assert_eq!(
            adopt_on_read(&mut record, &digest('b'), "GET", CLOCK),
            FirstPull::Pinned(digest('a'))
        );
        assert_eq!(record, before);

        let mut claimed = TagRecord::default();
        claimed.writes.push(Claim::now(digest('c'), "req-1"));
        let before = claimed.clone();
        // Even long past the horizon: a write on a tag with no pin stays until settled.
        let late = Clock {
            now: 10_000_000,
            horizon: 60,
        };
        assert_eq!(
            adopt_on_read(&mut claimed, &digest('b'), "GET", late),
            FirstPull::InFlight
        );
        assert_eq!(claimed, before);
    }
}
