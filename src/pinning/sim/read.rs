//! A manifest pull by tag through tagpin (`handler/reads.rs`), in three steps so pushes,
//! deletes, operators and writers straight to the upstream interleave with it: look at
//! the tag's records; with no pin, read the tag at the upstream; then adopt what was read
//! (`pinning::adopt_on_read`). The checks: a pull of an enforcing tag that has a pin gets
//! the pin; a first pull's answer is the pin in force after its adoption (unless a write
//! was in flight, when the upstream's current content is served as before); and every
//! adoption is held to the checks at apply time like any pin (a push whose decision was
//! made against a free tag must not land on one a pull adopted in between).

use super::procs::{Next, Phase, Proc};
use super::world;
use super::World;
use crate::oci::Tag;
use crate::pinning::{self as machine, FirstPull};
use crate::policy::Mode;
use crate::store::ReadView;

pub(super) fn read(w: &mut World, p: &mut Proc, tag: &Tag) -> Result<Next, String> {
    match p.phase {
        Phase::ReadView => {
            let mode = w.ghost.mode(tag);
            let cached = mode == Mode::Immutable && w.extended;
            let now = w.now;
            if let Some(d) = cached.then(|| w.caches[p.replica].get(tag, now)).flatten() {
                let pin = w.store.record(tag).pin.map(|x| x.digest);
                w.log(format!(
                    "{} pulls {tag}: R{}'s cache has {}",
                    p.id,
                    p.replica,
                    world::short(&d)
                ));
                if pin.as_ref() != Some(&d) {
                    return Err(format!(
                        "R{} answered a pull of {tag} from its cache with {} while the tag is pinned to {}",
                        p.replica,
                        world::short(&d),
                        pin.as_ref().map_or("nothing".into(), world::short)
                    ));
                }
                w.pinned_reads += 1;
                w.cache_hits += 1;
                return Ok(Next::Done);
            }
            let seen = w.caches[p.replica].begin_fill();
            let view = ReadView::of(&w.store.record(tag));
            if cached {
                // The query's answer fills the cache as it comes back: mostly at once,
                // sometimes after other steps (a notification may be processed between).
                if w.rng.chance(75) {
                    w.caches[p.replica].fill(tag, seen, &view);
                } else {
                    p.fill = Some((seen, view.clone()));
                }
            }
            let enforcing = mode != Mode::Audit;
            match view.pin {
                Some(pin) if enforcing => {
                    let served = if machine::mutation::on(machine::mutation::Mutation::ReadByTag) {
                        w.up.tags.get(tag).cloned()
                    } else {
                        Some(pin.clone())
                    };
                    w.log(format!("{} pulls {tag}: the pin {}", p.id, world::short(&pin)));
                    w.pinned_reads += 1;
                    if served.as_ref() != Some(&pin) {
                        return Err(format!(
                            "a pull of {tag}, pinned to {}, was served {}",
                            world::short(&pin),
                            served.as_ref().map_or("nothing".into(), world::short)
                        ));
                    }
                    if p.fill.is_some() {
                        p.phase = Phase::ReadFill;
                        return Ok(Next::Continue);
                    }
                    Ok(Next::Done)
                }
                Some(_) => Ok(Next::Done),
                None if view.in_flight => {
                    // As `handler/reads.rs`: a tag held by pushes of one new pin is served
                    // that digest when the upstream has it, read by tag otherwise.
                    let served = match view.reserved.as_ref().filter(|d| w.up.manifests.contains(*d)) {
                        Some(d) => Some(d.clone()),
                        None => w.up.tags.get(tag).cloned(),
                    };
                    w.log(format!(
                        "{} pulls {tag}: a write is in flight, read as {served:?}",
                        p.id
                    ));
                    // A tag answered as pinned whose settlement a crash took back is held
                    // by its push's claim: its pull is still owed the acknowledged pin.
                    let owed = w.ghost.acked.get(tag).filter(|_| enforcing);
                    if let Some(acked) = owed.filter(|d| served.as_ref() != Some(*d)) {
                        return Err(format!(
                            "a pull of {tag}, answered as pinned to {} (no pin now, a write in flight), was served {} by tag",
                            world::short(acked),
                            served.as_ref().map_or("nothing".into(), world::short)
                        ));
                    }
                    Ok(Next::Done)
                }
                None => {
                    p.phase = Phase::ReadFetch;
                    Ok(Next::Continue)
                }
            }
        }
        Phase::ReadFetch => {
            p.served = w.up.tags.get(tag).cloned();
            let Some(served) = p.served.clone() else {
                w.log(format!("{} pulls {tag}: the upstream has no such tag", p.id));
                return Ok(Next::Done);
            };
            w.log(format!(
                "{} reads {tag} at the upstream: {}",
                p.id,
                world::short(&served)
            ));
            p.phase = Phase::ReadAdopt;
            Ok(Next::Continue)
        }
        Phase::ReadAdopt => {
            let served = p.served.clone().expect("read before adopting");
            let mut found = None;
            w.update(std::slice::from_ref(tag), |now, recs| {
                found = Some(machine::adopt_on_read(&mut recs[0], &served, "GET", world::clock(now)));
            });
            let found = found.expect("transition ran");
            w.log(format!("{} adopts {tag} on read: {found:?}", p.id));
            let pin = w.store.record(tag).pin.map(|x| x.digest);
            let answer = match &found {
                FirstPull::Adopted => {
                    w.read_adoptions += 1;
                    w.store
                        .refs
                        .entry(served.clone())
                        .or_insert_with(|| world::layers_of(&served));
                    world::excuse_adopted(w, tag, &served);
                    Some(served)
                }
                FirstPull::Pinned(d) => Some(d.clone()),
                FirstPull::InFlight => None,
            };
            if let Some(answer) = answer {
                if pin.as_ref() != Some(&answer) {
                    return Err(format!(
                        "a first pull of {tag} was answered {} but the tag is pinned to {}",
                        world::short(&answer),
                        pin.as_ref().map_or("nothing".into(), world::short)
                    ));
                }
                if w.ghost.mode(tag) != Mode::Audit {
                    w.ghost.acked.insert(tag.clone(), answer);
                }
            }
            Ok(Next::Done)
        }
        Phase::ReadFill => {
            let (seen, view) = p.fill.take().expect("a fill was begun");
            w.caches[p.replica].fill(tag, seen, &view);
            Ok(Next::Done)
        }
        _ => Ok(Next::Continue),
    }
}
