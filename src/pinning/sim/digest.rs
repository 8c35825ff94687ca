//! A delete by digest (manifest or blob), step by step as `handler/delete.rs` takes it:
//! adopt the repository's tags, decide against holders and dependents, take releases,
//! record, look again, forward, settle its own record.

use super::procs::{adopt, classify, forward, retry_lost, stale, Answer, Next, Phase, Proc};
use super::world::{self, decided, Write};
use super::World;
use crate::oci::{Digest, Tag};
use crate::pinning::flow::{self, HeldBy};
use crate::pinning::mutation::{self, Mutation};
use crate::pinning::{self as machine, DigestDelete, Holder, Outcome};
use crate::policy::Mode;

/// The protected tags holding `d`, with their records.
fn holders(w: &World, d: &Digest) -> Vec<Holder> {
    w.store
        .tags_pinned_to(d)
        .into_iter()
        .map(|t| Holder {
            decided: decided(w.ghost.mode(&t)),
            record: w.store.record(&t),
            tag: t,
        })
        .collect()
}

fn held_by(w: &World, d: &Digest) -> (Vec<Holder>, machine::Dependents, HeldBy) {
    let direct = holders(w, d);
    let dependents: machine::Dependents = w
        .store
        .referenced_by(d)
        .into_iter()
        .map(|h| {
            let tags = holders(w, &h);
            (h, tags)
        })
        .filter(|(_, tags)| !tags.is_empty())
        .collect();
    let held = HeldBy {
        tags: direct.iter().map(|h| h.tag.clone()).collect(),
        dependents: dependents
            .iter()
            .flat_map(|(h, tags)| tags.iter().map(move |t| (h.clone(), t.tag.clone())))
            .collect(),
    };
    (direct, dependents, held)
}

pub(super) fn digest_delete(w: &mut World, p: &mut Proc, d: &Digest, manifest: bool) -> Result<Next, String> {
    match p.phase {
        Phase::Adopt => {
            // `adopt_repository`: every tag the upstream lists, before any lock.
            let tags: Vec<Tag> = w.up.tags.keys().cloned().collect();
            for t in tags {
                adopt(w, p, &t);
            }
            p.phase = Phase::Gather;
            Ok(Next::Continue)
        }
        Phase::Gather => {
            let (direct, dependents, held) = held_by(w, d);
            let direct = if manifest { direct } else { Vec::new() };
            let decision = machine::decide_digest_delete(&direct, &dependents, world::clock(w.now));
            w.log(format!("{} decides delete of {}: {decision:?}", p.id, world::short(d)));
            let all_released = !direct.is_empty()
                && direct.iter().all(|h| {
                    h.record.writes.is_empty()
                        && h.record.pin.as_ref().is_some_and(|x| &x.digest == d)
                        && h.record
                            .release
                            .as_ref()
                            .is_some_and(|r| w.ghost.release_valid(&r.id, w.now))
                })
                && dependents.is_empty();
            let (released, audited) = match decision {
                DigestDelete::Forward { released, audited } => (released, audited),
                DigestDelete::RefuseHeld(_) if all_released => {
                    return Err(format!(
                        "a delete of {} was refused though every tag on it is released",
                        world::short(d)
                    ))
                }
                _ => return Ok(Next::Done),
            };
            if !released.is_empty() {
                let (id, dd) = (p.id.clone(), d.clone());
                let mut took = false;
                w.update(&released, |now, recs| {
                    took = machine::take_releases(recs, &dd, &id, world::clock(now))
                });
                if !took {
                    return Ok(Next::Done);
                }
                p.recorded_at = w.now;
                for h in direct.iter().filter(|h| released.contains(&h.tag)) {
                    let rel = h.record.release.as_ref().map(|r| r.id.clone());
                    if !rel.as_ref().is_some_and(|id| w.ghost.release_valid(id, w.now)) {
                        return Err(format!(
                            "decision without licence: delete of {} under {}'s invalid release",
                            world::short(d),
                            h.tag
                        ));
                    }
                    w.licence(
                        &p.id,
                        &h.tag,
                        h.record.pin.as_ref().map(|x| x.digest.clone()),
                        None,
                        rel,
                    );
                }
            }
            for h in &direct {
                if h.decided.mode != Mode::Audit && !released.contains(&h.tag) {
                    return Err(format!(
                        "decision without licence: delete of {} held by {}",
                        world::short(d),
                        h.tag
                    ));
                }
            }
            p.audited = !audited.is_empty();
            let licensed: Vec<Tag> = audited
                .iter()
                .map(|(t, _)| t.clone())
                .chain(released.iter().cloned())
                .collect();
            if !licensed.is_empty() {
                w.ghost.excusing.insert(p.id.clone(), licensed);
            }
            p.released = released;
            p.held = held;
            p.phase = Phase::Record;
            Ok(Next::Continue)
        }
        Phase::Record => {
            w.store.deletes.push((d.clone(), p.id.clone(), w.now));
            if p.released.is_empty() {
                p.recorded_at = w.now;
            }
            p.phase = Phase::Check;
            Ok(Next::Continue)
        }
        Phase::Check => {
            let (_, _, after) = held_by(w, d);
            let after = if manifest {
                after
            } else {
                HeldBy {
                    tags: Vec::new(),
                    ..after
                }
            };
            let before = if manifest {
                p.held.clone()
            } else {
                HeldBy {
                    tags: Vec::new(),
                    ..p.held.clone()
                }
            };
            if flow::newly_held(&before, &after) || stale(w, p) {
                w.log(format!("{} sees {} newly held: refused", p.id, world::short(d)));
                settle_digest_delete(w, p, d, Outcome::NotApplied, false);
                return Ok(Next::Done);
            }
            let write = if manifest {
                Write::DeleteManifest(d.clone())
            } else {
                Write::DeleteBlob(d.clone())
            };
            forward(w, p, write);
            Ok(Next::Continue)
        }
        Phase::Settle => {
            let answer = p.answer.expect("answered");
            let outcome = classify(p);
            settle_digest_delete(w, p, d, outcome, answer == Answer::Ok || answer == Answer::NotFound);
            retry_lost(w, p, outcome);
            Ok(Next::Done)
        }
        _ => Ok(Next::Continue),
    }
}

/// Settle a digest delete's own record (`gone`: the answer says the content is gone) and
/// the releases it took.
fn settle_digest_delete(w: &mut World, p: &Proc, d: &Digest, outcome: Outcome, gone: bool) {
    if outcome != Outcome::Unknown {
        if gone && mutation::on(Mutation::DeleteSettledByAnyAnswer) {
            w.store.deletes.retain(|(x, _, _)| x != d);
        } else {
            w.store.deletes.retain(|(x, id, _)| !(x == d && id == &p.id));
        }
    }
    if !p.released.is_empty() {
        let id = p.id.clone();
        w.update(&p.released, |now, recs| {
            for r in recs.iter_mut() {
                machine::settle_tag_delete(r, &id, outcome, world::clock(now));
            }
        });
    }
    w.log(format!("{} settles delete of {}: {outcome:?}", p.id, world::short(d)));
}
