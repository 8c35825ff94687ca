//! The simulated world: one model store shared by every replica, a model upstream that
//! applies writes late, refuses and loses answers, and the ghost that knows what the
//! policy allowed and checks every step against it.

use std::collections::{BTreeMap, BTreeSet};

use crate::oci::{Digest, Tag};
use crate::pinning::mutation::{self, Mutation};
use crate::pinning::Clock;
use crate::policy::{Decided, DecidedBy, Mode};
use crate::store::{ClaimKind, HistoryEvent, TagRecord};

/// The in-doubt horizon of the simulation, in seconds.
pub const HORIZON: u64 = 120;

/// The latest a write lands, after its record was written: a decision is carried out
/// within a quarter of the horizon ([`crate::pinning::flow::fresh`]) and the upstream
/// applies a write within half of it after receiving it (the configuration's rule).
pub const LANDS_WITHIN: u64 = HORIZON * 3 / 4;

/// A small deterministic generator (splitmix64): the whole run follows from the seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Manifests and their layers: manifest `i` depends on `LAYERS[i]`. For append-only
/// tags a manifest extends another when its layers include the other's.
pub const LAYERS: &[&[usize]] = &[&[0], &[0, 1], &[1], &[0, 1, 2], &[2], &[3]];

pub fn manifest(i: usize) -> Digest {
    Digest::sha256_of(format!("manifest-{i}").as_bytes())
}

pub fn layer(i: usize) -> Digest {
    Digest::sha256_of(format!("layer-{i}").as_bytes())
}

pub fn tag(i: usize) -> Tag {
    Tag::parse(&format!("t{i}")).expect("valid tag")
}

pub fn layers_of(d: &Digest) -> Vec<Digest> {
    (0..LAYERS.len())
        .find(|&i| &manifest(i) == d)
        .map(|i| LAYERS[i].iter().map(|&l| layer(l)).collect())
        .unwrap_or_default()
}

/// Whether `new` keeps every entry of `pinned`.
pub fn extends(pinned: &Digest, new: &Digest) -> bool {
    let new = layers_of(new);
    layers_of(pinned).iter().all(|l| new.contains(l))
}

pub fn decided(mode: Mode) -> Decided {
    Decided {
        mode,
        by: DecidedBy::Default,
    }
}

/// The model store: what [`crate::store::PinStore`] keeps, applied one atomic step at a
/// time.
#[derive(Clone, Default)]
pub struct Store {
    pub tags: BTreeMap<Tag, TagRecord>,
    /// The history log, as (tag, digest) per entry: appended by the same step as the
    /// records ([`crate::log::entry::bindings`]), so a crash loses both or neither.
    pub log: Vec<(Tag, Digest)>,
    /// Changes the log's guard refused (a real store fails the whole write).
    pub log_refused: Vec<String>,
    /// Digest delete records: (digest, request, started).
    pub deletes: Vec<(Digest, String, u64)>,
    pub refs: BTreeMap<Digest, Vec<Digest>>,
}

impl Store {
    pub fn record(&self, t: &Tag) -> TagRecord {
        self.tags.get(t).cloned().unwrap_or_default()
    }

    pub fn tags_pinned_to(&self, d: &Digest) -> Vec<Tag> {
        self.tags
            .iter()
            .filter(|(_, r)| r.digests().contains(d))
            .map(|(t, _)| t.clone())
            .collect()
    }

    pub fn referenced_by(&self, d: &Digest) -> Vec<Digest> {
        self.refs
            .iter()
            .filter(|(_, refs)| refs.contains(d))
            .map(|(h, _)| h.clone())
            .collect()
    }

    pub fn deletes_in_flight(&self, digests: &[Digest], now: u64) -> Vec<Digest> {
        digests
            .iter()
            .filter(|d| self.deletes.iter().any(|(x, _, at)| x == *d && at + HORIZON >= now))
            .cloned()
            .collect()
    }
}

/// A write forwarded to the model upstream.
#[derive(Clone)]
pub enum Write {
    /// A manifest push; `tag` is applied unless it came as an ignored `?tag=`.
    Manifest {
        digest: Digest,
        tag: Option<Tag>,
    },
    DeleteTag(Tag),
    DeleteManifest(Digest),
    DeleteBlob(Digest),
}

impl std::fmt::Debug for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Manifest { digest, tag: Some(t) } => write!(f, "PUT {t} = {}", short(digest)),
            Self::Manifest { digest, tag: None } => write!(f, "PUT {} (no tag)", short(digest)),
            Self::DeleteTag(t) => write!(f, "DELETE {t}"),
            Self::DeleteManifest(d) | Self::DeleteBlob(d) => write!(f, "DELETE {}", short(d)),
        }
    }
}

/// What the upstream will do with a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Applied (when valid), then answered.
    Answered,
    /// Refused at once (401, 400, ...), never applied.
    Refused,
    /// Applied, and its answer lost (504).
    AppliedLost,
    /// Answered 504 at once, applied later (before the horizon).
    LateApply,
    /// Answered 504, never applied.
    Lost,
}

#[derive(Clone, Debug)]
pub struct Op {
    pub request: String,
    pub write: Write,
    pub fate: Fate,
    pub applied: bool,
    pub answered: bool,
    /// Whether the applied write changed anything (a push of a manifest whose layers are
    /// missing is refused; a delete of something absent is a 404).
    pub took_effect: Option<bool>,
    pub deadline: u64,
}

/// The model upstream.
#[derive(Clone, Default)]
pub struct Upstream {
    pub tags: BTreeMap<Tag, Digest>,
    pub manifests: BTreeSet<Digest>,
    pub blobs: BTreeSet<Digest>,
    /// Whether `?tag=` is honoured (distribution 2.8 ignores it).
    pub tag_param: bool,
    pub ops: Vec<Op>,
}

impl Upstream {
    /// Apply a write; whether it took effect.
    pub fn apply(&mut self, w: &Write) -> bool {
        match w {
            Write::Manifest { digest, tag } => {
                if !layers_of(digest).iter().all(|l| self.blobs.contains(l)) {
                    return false; // MANIFEST_BLOB_UNKNOWN
                }
                self.manifests.insert(digest.clone());
                if let Some(t) = tag {
                    self.tags.insert(t.clone(), digest.clone());
                }
                true
            }
            Write::DeleteTag(t) => self.tags.remove(t).is_some(),
            Write::DeleteManifest(d) => {
                // Deleting a manifest removes the tags on it.
                self.tags.retain(|_, v| v != d);
                self.manifests.remove(d)
            }
            Write::DeleteBlob(d) => self.blobs.remove(d),
        }
    }
}

/// What the ghost knows a decision was allowed to do.
#[derive(Clone, Debug)]
pub struct Licence {
    pub tag: Tag,
    /// The pin when the write was decided; the write may land only while it still holds.
    pub from: Option<Digest>,
    pub to: Option<Digest>,
    pub release: Option<String>,
    /// An audited delete of the tag: audit mode allows it whatever the tag holds.
    pub any: bool,
}

/// A release as the operator sees it.
#[derive(Clone, Debug)]
pub struct GhostRelease {
    pub tag: Tag,
    pub expires_at: u64,
    /// The operator was told it is cancelled (or found none when cancelling it).
    pub cancelled: bool,
    /// Applied writes that used it and changed what the upstream holds under the tag.
    pub moves: usize,
    /// Where the applied writes that used it took the tag (a digest, or `None` for a
    /// delete): more than one is a second move.
    pub targets: BTreeSet<Option<Digest>>,
}

/// The ghost: the truth the checks hold the store and the upstream to.
#[derive(Default)]
pub struct Ghost {
    pub modes: BTreeMap<Tag, Mode>,
    pub licences: BTreeMap<String, Vec<Licence>>,
    pub releases: BTreeMap<String, GhostRelease>,
    /// Requests whose write the upstream applied.
    pub applied: BTreeSet<String>,
    /// Content deleted with a licence (audited or released) for a tag: not owed to that
    /// tag's pin.
    pub excused: BTreeSet<(Tag, Digest)>,
    /// Digest deletes decided past audited or released holders: those tags.
    pub excusing: BTreeMap<String, Vec<Tag>>,
    /// Pins acknowledged to a client.
    pub acked: BTreeMap<Tag, Digest>,
}

impl Ghost {
    pub fn mode(&self, t: &Tag) -> Mode {
        self.modes.get(t).copied().unwrap_or(Mode::Immutable)
    }

    /// Whether a release with this id may be used now.
    pub fn release_valid(&self, id: &str, now: u64) -> bool {
        self.releases
            .get(id)
            .is_some_and(|r| !r.cancelled && r.expires_at > now)
    }

    /// Whether the policy allows moving `t` from `from` to `to` now.
    pub fn may_move(&self, t: &Tag, record: &TagRecord, to: &Digest, now: u64) -> Result<(), String> {
        let from = record.pin.as_ref().map(|p| &p.digest);
        match from {
            None => Ok(()),
            Some(p) if p == to => Ok(()),
            Some(p) => {
                let release = record.release.as_ref().map(|r| r.id.as_str());
                if release.is_some_and(|id| self.release_valid(id, now)) {
                    return Ok(());
                }
                match self.mode(t) {
                    Mode::Audit => Ok(()),
                    Mode::AppendOnly if extends(p, to) => Ok(()),
                    mode => Err(format!(
                        "{t} is {} and pinned to {} with no valid release; moving it to {} is not allowed",
                        mode.as_str(),
                        short(p),
                        short(to)
                    )),
                }
            }
        }
    }
}

pub fn short(d: &Digest) -> String {
    let hex = d.as_str().trim_start_matches("sha256:");
    (0..LAYERS.len())
        .find(|&i| &manifest(i) == d)
        .map(|i| format!("M{i}"))
        .or_else(|| (0..4).find(|&i| &layer(i) == d).map(|i| format!("L{i}")))
        .unwrap_or_else(|| hex[..8].to_owned())
}

/// The store's clock for a transition.
pub fn clock(now: u64) -> Clock {
    Clock { now, horizon: HORIZON }
}

/// Check the step's effect on pins: a pin never disappears, and changes only by a move
/// the upstream applied under a licence from the old pin; history entries name only
/// writes the upstream applied.
pub fn check_pins(before: &Store, after: &Store, ghost: &Ghost) -> Result<(), String> {
    for (t, old) in &before.tags {
        let new = after.tags.get(t);
        let (Some(p), new_pin) = (&old.pin, new.and_then(|r| r.pin.as_ref())) else {
            continue;
        };
        let Some(q) = new_pin else {
            // A store crash may take back a new pin settled without a flush: its claim,
            // durable since before the push was forwarded, must still hold the tag.
            if new.is_some_and(|r| claimed_new(r, &p.digest)) {
                continue;
            }
            return Err(format!("the pin of {t} ({}) was lost", short(&p.digest)));
        };
        if p.history.len() > q.history.len() || q.history[..p.history.len()] != p.history[..] {
            return Err(format!("the history of {t} was rewritten"));
        }
        if p.digest != q.digest {
            let last = q.history.last().expect("a moved pin has history");
            let licensed = last.from.as_ref() == Some(&p.digest)
                && matches!(
                    last.event,
                    HistoryEvent::Append | HistoryEvent::AuditMove | HistoryEvent::Released
                )
                && last.request_id.as_ref().is_some_and(|r| {
                    ghost.applied.contains(r)
                        && ghost.licences.get(r).is_some_and(|ls| {
                            ls.iter().any(|l| {
                                &l.tag == t && l.from.as_ref() == Some(&p.digest) && l.to.as_ref() == Some(&q.digest)
                            })
                        })
                });
            if !licensed {
                return Err(format!(
                    "the pin of {t} moved {} -> {} without an applied, licensed move",
                    short(&p.digest),
                    short(&q.digest)
                ));
            }
        }
    }
    for (t, rec) in &after.tags {
        let Some(pin) = &rec.pin else { continue };
        let old = before
            .tags
            .get(t)
            .and_then(|r| r.pin.as_ref())
            .map_or(0, |p| p.history.len());
        for e in pin.history.iter().skip(old) {
            let needs_write = matches!(
                e.event,
                HistoryEvent::Released | HistoryEvent::AuditMove | HistoryEvent::Append | HistoryEvent::AuditDelete
            );
            if let (true, Some(r)) = (needs_write, &e.request_id) {
                if !ghost.applied.contains(r) {
                    return Err(format!(
                        "{t}'s history records {:?} by {r}, whose write the upstream never applied",
                        e.event
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Every pin the clients were told about is still there, and every pinned manifest of
/// an enforcing tag can still be pulled (unless deleted under a licence).
/// The log replayed gives exactly the pins: every pinned tag's last entry names its
/// digest, and no entry names a tag without a pin. No change was refused by the log's
/// guard (that write would have failed).
pub fn check_log(store: &Store) -> Result<(), String> {
    if let Some(refused) = store.log_refused.first() {
        return Err(format!("the log refused a change: {refused}"));
    }
    let mut replayed: BTreeMap<&Tag, &Digest> = BTreeMap::new();
    for (t, d) in &store.log {
        replayed.insert(t, d);
    }
    for (t, r) in &store.tags {
        let pinned = r.pin.as_ref().map(|p| &p.digest);
        if pinned != replayed.get(t).copied() {
            return Err(format!(
                "{t} is pinned to {pinned:?} in the store; the log says {:?}",
                replayed.get(t)
            ));
        }
    }
    match replayed.keys().find(|t| !store.tags.contains_key(**t)) {
        Some(t) => Err(format!("the log binds {t}, which the store does not hold")),
        None => Ok(()),
    }
}

/// Whether `r` has no pin and a push of `digest` to a free tag in flight: a new pin
/// whose settlement a crash took back (`handler::recover` completes it).
fn claimed_new(r: &TagRecord, digest: &Digest) -> bool {
    r.pin.is_none() && r.writes.iter().any(|w| &w.digest == digest && w.kind == ClaimKind::New)
}

pub fn check_content(store: &Store, up: &Upstream, ghost: &Ghost) -> Result<(), String> {
    for (t, d) in &ghost.acked {
        let Some(r) = store.tags.get(t) else {
            return Err(format!("{t} was answered as pinned to {} but has no pin", short(d)));
        };
        if r.pin.is_none() && !claimed_new(r, d) {
            return Err(format!("{t} was answered as pinned to {} but has no pin", short(d)));
        }
    }
    for (t, rec) in &store.tags {
        let Some(pin) = &rec.pin else { continue };
        let excused = |d: &Digest| ghost.excused.contains(&(t.clone(), d.clone()));
        if ghost.mode(t) == Mode::Audit || excused(&pin.digest) {
            continue;
        }
        let mut needed = vec![pin.digest.clone()];
        needed.extend(layers_of(&pin.digest));
        for d in needed {
            let present = up.manifests.contains(&d) || up.blobs.contains(&d);
            if !present && !excused(&d) {
                return Err(format!(
                    "{t} is pinned to {} but {} is gone from the upstream",
                    short(&pin.digest),
                    short(&d)
                ));
            }
        }
    }
    Ok(())
}

/// A tag adopted at `d` (content a writer tagpin never saw bound at the upstream) is not
/// owed what was already gone when it was adopted, nor content whose delete was already
/// forwarded: tagpin decided that delete before the tag was pinned, and the writer
/// straight to the upstream raced it.
pub fn excuse_adopted(w: &mut super::World, t: &Tag, d: &Digest) {
    if !w.bypass {
        return;
    }
    let (ghost, up) = (&mut w.ghost, &w.up);
    let mut needed = vec![d.clone()];
    needed.extend(layers_of(d));
    for x in &needed {
        let present = up.manifests.contains(x) || up.blobs.contains(x);
        let deleting = up
            .ops
            .iter()
            .any(|o| !o.applied && matches!(&o.write, Write::DeleteManifest(y) | Write::DeleteBlob(y) if y == x));
        if !present || deleting {
            ghost.excused.insert((t.clone(), x.clone()));
        }
    }
}

/// The acting replica's clock offset, for the replica-clock regression.
pub fn acting(skew: i64) {
    mutation::set_skew(skew);
}

/// Whether the regression of durable commits is on.
pub fn async_commit() -> bool {
    mutation::on(Mutation::AsyncCommit)
}
