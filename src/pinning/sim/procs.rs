//! Requests as the handlers carry them out, one atomic step at a time: each step is one
//! store transition, one store read, or one exchange with the upstream, in the order
//! `handler/push.rs` and `handler/delete.rs` take them.

use super::world::{self, decided, extends, Fate, Licence, Op, Write, HORIZON};
use super::World;
use crate::oci::{Digest, Tag};
use crate::pinning::flow::{self, HeldBy, TagWord};
use crate::pinning::mutation::{self, Mutation};
use crate::pinning::{self as machine, Outcome, PushTag, TagDelete};
use crate::policy::{Mode, NotAppend};
use crate::store::{HistoryEvent, Pin, PinSource, Release, TagRecord};

#[derive(Clone)]
pub enum Kind {
    Push {
        tag: Tag,
        digest: Digest,
        by_tag: bool,
    },
    TagDelete {
        tag: Tag,
    },
    DigestDelete {
        digest: Digest,
        manifest: bool,
    },
    /// A manifest pull by tag.
    Read {
        tag: Tag,
    },
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Push {
                tag,
                digest,
                by_tag: true,
            } => write!(f, "PUT {tag} = {}", world::short(digest)),
            Self::Push { tag, digest, .. } => write!(f, "PUT {}?tag={tag}", world::short(digest)),
            Self::TagDelete { tag } => write!(f, "DELETE {tag}"),
            Self::DigestDelete { digest, .. } => write!(f, "DELETE {}", world::short(digest)),
            Self::Read { tag } => write!(f, "GET {tag}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Adopt,
    Gather,
    Decide,
    Check,
    Record,
    Forward,
    Await,
    Settle,
    /// A pull looks at the tag's records.
    ReadView,
    /// A pull of a tag with no pin reads it at the upstream.
    ReadFetch,
    /// The pull adopts what it read.
    ReadAdopt,
    /// The pull's fresh read fills its replica's cache.
    ReadFill,
}

/// The upstream's answer as the handler classifies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Ok,
    NotFound,
    Refused,
    Unknown,
}

#[derive(Clone, Debug)]
pub struct Proc {
    pub id: String,
    pub replica: usize,
    pub kind: Kind,
    pub phase: Phase,
    pub answer: Option<Answer>,
    snapshot: TagRecord,
    append: Option<(Digest, Result<(), NotAppend>)>,
    new_refs: Vec<Digest>,
    pub(super) held: HeldBy,
    pub(super) released: Vec<Tag>,
    pub(super) audited: bool,
    stash: Option<Release>,
    /// When its record was written: the write must reach the upstream soon after, and
    /// lands (if ever) within the horizon of it.
    pub(super) recorded_at: u64,
    /// What a pull read at the upstream.
    pub(super) served: Option<Digest>,
    /// A pull's fresh read of an immutable tag, to keep in its replica's cache: the
    /// generation it began at and what it found.
    pub(super) fill: Option<(u64, crate::store::ReadView)>,
    /// The push's decision moves a pin: it waits the grace before forwarding.
    moves_pin: bool,
    /// The push's verdict, once decided.
    verdict: Vec<machine::Verdict>,
}

impl Proc {
    pub fn new(id: String, replica: usize, kind: Kind) -> Self {
        let phase = match kind {
            Kind::TagDelete { .. } => Phase::Decide,
            Kind::DigestDelete { .. } => Phase::Adopt,
            Kind::Push { .. } => Phase::Gather,
            Kind::Read { .. } => Phase::ReadView,
        };
        Self {
            id,
            replica,
            kind,
            phase,
            answer: None,
            snapshot: TagRecord::default(),
            append: None,
            new_refs: Vec::new(),
            held: HeldBy::default(),
            released: Vec::new(),
            audited: false,
            stash: None,
            recorded_at: 0,
            served: None,
            fill: None,
            moves_pin: false,
            verdict: Vec::new(),
        }
    }
}

/// What a step did: go on, or the request is answered.
pub enum Next {
    Continue,
    Done,
}

pub fn step(w: &mut World, p: &mut Proc) -> Result<Next, String> {
    world::acting(w.skews[p.replica]);
    match p.kind.clone() {
        Kind::Push { tag, digest, by_tag } => push(w, p, &tag, &digest, by_tag),
        Kind::TagDelete { tag } => tag_delete(w, p, &tag),
        Kind::DigestDelete { digest, manifest } => super::digest::digest_delete(w, p, &digest, manifest),
        Kind::Read { tag } => super::read::read(w, p, &tag),
    }
}

fn push(w: &mut World, p: &mut Proc, tag: &Tag, digest: &Digest, by_tag: bool) -> Result<Next, String> {
    match p.phase {
        Phase::Gather => {
            // The client uploads the layers first, most of the time.
            if w.rng.chance(85) {
                w.up.blobs.extend(world::layers_of(digest));
            }
            adopt(w, p, tag);
            p.snapshot = w.store.record(tag);
            p.append = match (&p.snapshot.pin, w.ghost.mode(tag)) {
                (Some(pin), Mode::AppendOnly) if &pin.digest != digest => Some((
                    pin.digest.clone(),
                    if extends(&pin.digest, digest) {
                        Ok(())
                    } else {
                        Err(NotAppend::MediaTypeChanged)
                    },
                )),
                _ => None,
            };
            if !w.store.refs.contains_key(digest) {
                p.new_refs = world::layers_of(digest);
                w.store.refs.insert(digest.clone(), p.new_refs.clone());
            }
            p.phase = Phase::Decide;
            Ok(Next::Continue)
        }
        Phase::Decide => {
            let mode = w.ghost.mode(tag);
            let input = [PushTag {
                tag: tag.clone(),
                decided: decided(mode),
                append: p.append.clone(),
            }];
            let stale = mutation::on(Mutation::ReleaseTakenByRemoval)
                .then(|| p.snapshot.release.clone())
                .flatten();
            let mut before = w.store.record(tag);
            if before.release.is_none() {
                before.release = stale.clone();
            }
            let (id, d) = (p.id.clone(), digest.clone());
            let mut begun = None;
            w.update(std::slice::from_ref(tag), |now, recs| {
                if recs[0].release.is_none() {
                    recs[0].release = stale.clone();
                }
                begun = Some(machine::begin_push(recs, &input, &d, &id, world::clock(now)));
            });
            let begun = begun.expect("transition ran");
            w.log(format!(
                "{} decides push {} -> {tag}: {:?}",
                p.id,
                world::short(digest),
                verdicts(&begun.decision)
            ));
            let Ok(verdicts) = begun.decision else {
                return Ok(Next::Done);
            };
            let ghost_before = w.store.record(tag);
            let check = w.ghost.may_move(tag, &before, digest, w.now);
            check.map_err(|e| format!("decision without licence: {e}"))?;
            p.moves_pin = verdicts.iter().any(machine::Verdict::moves_pin);
            p.verdict = verdicts.clone();
            let release = matches!(verdicts[0], machine::Verdict::Released { .. })
                .then(|| {
                    ghost_before
                        .writes
                        .iter()
                        .find(|x| x.request_id == p.id)
                        .and_then(|x| x.release_id.clone())
                })
                .flatten();
            w.licence(
                &p.id,
                tag,
                before.pin.as_ref().map(|x| x.digest.clone()),
                Some(digest.clone()),
                release,
            );
            p.recorded_at = w.now;
            p.phase = Phase::Check;
            Ok(Next::Continue)
        }
        Phase::Check => {
            let recorded = w.store.refs.get(digest).cloned().unwrap_or_default();
            let checks = flow::delete_checks(digest, &p.new_refs, &recorded);
            let busy = w.store.deletes_in_flight(&checks, w.now);
            if !busy.is_empty() {
                settle_push(w, p, tag, digest, Outcome::NotApplied);
                w.log(format!(
                    "{} refused: delete in flight of {}",
                    p.id,
                    world::short(&busy[0])
                ));
                return Ok(Next::Done);
            }
            p.phase = Phase::Forward;
            Ok(Next::Continue)
        }
        Phase::Forward => {
            let grace = w.extended && p.moves_pin && !mutation::on(Mutation::NoMoveGrace);
            if grace && w.now < p.recorded_at + super::cache::GRACE {
                return Ok(Next::Continue);
            }
            if stale(w, p) {
                settle_push(w, p, tag, digest, Outcome::NotApplied);
                return Ok(Next::Done);
            }
            let applies = by_tag || w.up.tag_param;
            let write = Write::Manifest {
                digest: digest.clone(),
                tag: applies.then(|| tag.clone()),
            };
            forward(w, p, write);
            Ok(Next::Continue)
        }
        Phase::Settle => {
            let outcome = match p.answer.expect("answered") {
                Answer::Ok => {
                    let word = if by_tag {
                        TagWord::PathTag
                    } else if w.up.tag_param {
                        TagWord::Listed(true)
                    } else {
                        TagWord::Head(w.up.tags.get(tag).cloned())
                    };
                    flow::tag_outcome(digest, by_tag, &word)
                }
                Answer::NotFound | Answer::Refused => Outcome::NotApplied,
                Answer::Unknown => Outcome::Unknown,
            };
            // As the handler does: an applied new pin or identical push settles without
            // waiting for the disk, and a store crash may take it back (`recover`).
            let settled = if flow::settles_lazily(&[outcome], &p.verdict) {
                w.lazily(|w| settle_push(w, p, tag, digest, outcome))
            } else {
                settle_push(w, p, tag, digest, outcome)
            };
            retry_lost(w, p, outcome);
            if outcome == Outcome::Applied && !matches!(settled, machine::Settled::LandedAgainstPin { .. }) {
                if let Some(pin) = w.store.record(tag).pin {
                    w.ghost.acked.insert(tag.clone(), pin.digest);
                }
            }
            Ok(Next::Done)
        }
        _ => Ok(Next::Continue),
    }
}

/// Adoption (`handler/pins.rs`): a tag tagpin holds nothing for takes what the upstream
/// holds under it as its pin.
pub(super) fn adopt(w: &mut World, p: &Proc, tag: &Tag) {
    let rec = w.store.record(tag);
    if rec.pin.is_some() || !rec.writes.is_empty() {
        return;
    }
    let Some(there) = w.up.tags.get(tag).cloned() else {
        return;
    };
    let now = w.now;
    w.update(std::slice::from_ref(tag), |_, recs| {
        if recs[0].pin.is_none() && recs[0].writes.is_empty() {
            let mut pin = Pin::now(there.clone(), PinSource::Adopted);
            pin.pinned_at = now;
            recs[0].set_pin(pin);
        }
    });
    w.store
        .refs
        .entry(there.clone())
        .or_insert_with(|| world::layers_of(&there));
    world::excuse_adopted(w, tag, &there);
    w.log(format!("{} adopts {tag} at {}", p.id, world::short(&there)));
}

fn verdicts(d: &Result<Vec<machine::Verdict>, Vec<crate::policy::Conflict>>) -> String {
    match d {
        Ok(v) => format!("{v:?}"),
        Err(c) => format!("refused ({:?})", c.iter().map(|c| &c.reason).collect::<Vec<_>>()),
    }
}

fn settle_push(w: &mut World, p: &Proc, tag: &Tag, digest: &Digest, outcome: Outcome) -> machine::Settled {
    let (id, d) = (p.id.clone(), digest.clone());
    let mut out = None;
    w.update(std::slice::from_ref(tag), |now, recs| {
        out = Some(machine::settle_push(&mut recs[0], &d, &id, outcome, world::clock(now)).0);
    });
    let out = out.expect("transition ran");
    w.log(format!(
        "{} settles push {} -> {tag}: {outcome:?} => {out:?}",
        p.id,
        world::short(digest)
    ));
    out
}

/// A client whose request got no answer usually repeats it.
pub(super) fn retry_lost(w: &mut World, p: &Proc, outcome: Outcome) {
    if outcome == Outcome::Unknown && w.rng.chance(70) {
        w.retries.push(p.kind.clone());
    }
}

/// A decision too old to act on ([`flow::fresh`]).
pub(super) fn stale(w: &World, p: &Proc) -> bool {
    let secs = std::time::Duration::from_secs;
    !flow::fresh(secs(w.now - p.recorded_at), secs(HORIZON))
}

pub(super) fn forward(w: &mut World, p: &mut Proc, write: Write) {
    let fate = match w.rng.below(20) {
        0..=8 => Fate::Answered,
        9..=11 => Fate::Refused,
        12 | 13 => Fate::AppliedLost,
        14..=17 => Fate::LateApply,
        _ => Fate::Lost,
    };
    w.log(format!("{} forwards {write:?} ({fate:?})", p.id));
    w.up.ops.push(Op {
        request: p.id.clone(),
        write,
        fate,
        applied: false,
        answered: false,
        took_effect: None,
        deadline: p.recorded_at + world::LANDS_WITHIN,
    });
    p.phase = Phase::Await;
}

pub(super) fn classify(p: &Proc) -> Outcome {
    match p.answer.expect("answered") {
        Answer::Ok => Outcome::Applied,
        Answer::NotFound | Answer::Refused => Outcome::NotApplied,
        Answer::Unknown => Outcome::Unknown,
    }
}

fn tag_delete(w: &mut World, p: &mut Proc, tag: &Tag) -> Result<Next, String> {
    match p.phase {
        Phase::Decide => {
            let mode = w.ghost.mode(tag);
            let before = w.store.record(tag);
            let id = p.id.clone();
            let mut decision = None;
            if mutation::on(Mutation::ReleaseTakenByRemoval) {
                // The old way: the release removed and its use recorded before forwarding.
                let now = w.now;
                let mut stash = None;
                w.update(std::slice::from_ref(tag), |_, recs| {
                    let r = &mut recs[0];
                    let ok = r.pin.is_some() && r.writes.is_empty();
                    stash = r.release.clone().filter(|rel| ok && rel.expires_at > now);
                    if let Some(rel) = &stash {
                        r.release = None;
                        let pin = r.pin.as_mut().expect("checked");
                        let mut e = crate::store::HistoryEntry::new(HistoryEvent::Released, pin.digest.clone(), None);
                        e.request_id = Some(id.clone());
                        e.by = Some(rel.by.clone());
                        pin.history.push(e);
                    }
                });
                p.stash = stash;
                if p.stash.is_some() {
                    decision = Some(TagDelete::Forward { released: true });
                }
            }
            let decision = match decision {
                Some(d) => d,
                None => {
                    let mut out = None;
                    w.update(std::slice::from_ref(tag), |now, recs| {
                        out = Some(machine::begin_tag_delete(&mut recs[0], mode, &id, world::clock(now)).0);
                    });
                    out.expect("transition ran")
                }
            };
            w.log(format!("{} decides delete of {tag}: {decision:?}", p.id));
            let TagDelete::Forward { released } = decision else {
                return Ok(Next::Done);
            };
            let release = if released {
                let rel = p.stash.clone().or(before.release.clone());
                let valid = rel.as_ref().is_some_and(|r| w.ghost.release_valid(&r.id, w.now));
                if !valid {
                    return Err(format!(
                        "decision without licence: delete of {tag} under a release that is not valid"
                    ));
                }
                rel.map(|r| r.id)
            } else if mode != Mode::Audit {
                return Err(format!(
                    "decision without licence: delete of {mode:?} {tag} without a release"
                ));
            } else {
                None
            };
            w.licence(&p.id, tag, before.pin.map(|x| x.digest), None, release);
            p.recorded_at = w.now;
            let write = Write::DeleteTag(tag.clone());
            forward(w, p, write);
            Ok(Next::Continue)
        }
        Phase::Settle => {
            let outcome = classify(p);
            if let Some(rel) = p.stash.clone() {
                if outcome == Outcome::NotApplied {
                    w.update(std::slice::from_ref(tag), |_, recs| recs[0].release = Some(rel.clone()));
                }
            } else {
                let id = p.id.clone();
                w.update(std::slice::from_ref(tag), |now, recs| {
                    machine::settle_tag_delete(&mut recs[0], &id, outcome, world::clock(now));
                });
            }
            w.log(format!("{} settles delete of {tag}: {outcome:?}", p.id));
            retry_lost(w, p, outcome);
            Ok(Next::Done)
        }
        _ => Ok(Next::Continue),
    }
}

/// The licence a forwarded write carries, for the checks at apply time.
pub fn licence(w: &mut World, id: &str, tag: &Tag, from: Option<Digest>, to: Option<Digest>, release: Option<String>) {
    let any = to.is_none() && release.is_none();
    w.ghost.licences.entry(id.to_owned()).or_default().push(Licence {
        tag: tag.clone(),
        from,
        to,
        release,
        any,
    });
}
