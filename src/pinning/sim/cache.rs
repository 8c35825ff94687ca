//! The PostgreSQL replicas' read cache of immutable pins (`store/postgres/cache.rs`), as
//! the simulation runs it on odd seeds: each replica keeps pins it read fresh, every
//! store change reaches every replica's listener as a notification in commit order and
//! is delivered whenever the seed says, the listener's pings come back through the same
//! queue, and a replica answers from its cache only while the last ping it got back was
//! sent less than [`LEASE`] ago. A push that moves a pin waits [`GRACE`] between its
//! record and forwarding. The check (in `read.rs`): a pull answered from a cache gets the
//! pin in force when it began.

use std::collections::{BTreeMap, VecDeque};

use crate::oci::{Digest, Tag};
use crate::pinning::mutation::{self, Mutation};
use crate::store::ReadView;

/// How long after the ping it last got back was sent a replica may answer from memory.
pub const LEASE: u64 = 8;
/// How long a push that moves a pin waits between its record and forwarding (more than
/// the lease, as `GRACE > 2 * LEASE` in the store).
pub const GRACE: u64 = 17;

#[derive(Debug, Clone)]
enum Note {
    Changed(Tag),
    /// A ping the listener sent at this time.
    Ping(u64),
}

#[derive(Debug, Clone, Default)]
pub struct ReplicaCache {
    pins: BTreeMap<Tag, Digest>,
    generation: u64,
    caught_up: Option<u64>,
    inbox: VecDeque<Note>,
}

impl ReplicaCache {
    /// The cached pin of `tag`, if the lease holds at `now`.
    pub fn get(&self, tag: &Tag, now: u64) -> Option<Digest> {
        let leased = self.caught_up.is_some_and(|c| now < c + LEASE);
        if !leased && !mutation::on(Mutation::NoLease) {
            return None;
        }
        self.pins.get(tag).cloned()
    }

    /// Taken before a fresh read's query.
    pub fn begin_fill(&self) -> u64 {
        self.generation
    }

    /// Keep what a fresh read begun at `seen` found, unless a notification came since.
    pub fn fill(&mut self, tag: &Tag, seen: u64, view: &ReadView) {
        if let (Some(pin), false, true) = (&view.pin, view.in_flight, self.generation == seen) {
            self.pins.insert(tag.clone(), pin.clone());
        }
    }

    /// A commit changed `tag`: its notification joins the queue.
    pub fn committed(&mut self, tag: &Tag) {
        self.inbox.push_back(Note::Changed(tag.clone()));
    }

    /// The listener sends a ping at `now`, behind every notification committed so far.
    pub fn ping(&mut self, now: u64) {
        self.inbox.push_back(Note::Ping(now));
    }

    /// The listener processes the oldest notification. Returns what it was, for the trace.
    pub fn deliver(&mut self) -> Option<String> {
        Some(match self.inbox.pop_front()? {
            Note::Changed(t) => {
                self.pins.remove(&t);
                self.generation += 1;
                format!("hears {t} changed")
            }
            Note::Ping(at) => {
                self.caught_up = Some(at);
                format!("gets its ping of t={} back", at - 1_000_000)
            }
        })
    }

    /// The listener's connection is lost: everything it vouched for goes.
    pub fn disconnect(&mut self) {
        *self = Self {
            generation: self.generation + 1,
            ..Self::default()
        };
    }
}
