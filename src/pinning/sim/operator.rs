//! What happens beside the clients: operators (releases, cancels, reloads, clearing a
//! failed write's record), writers straight to the upstream, and each replica's cache
//! listener.

use super::procs::Proc;
use super::world::{self, Fate, GhostRelease};
use super::{pick_mode, World, REPLICAS};
use crate::pinning::{self as machine, SetRelease};
use crate::store::Release;

/// A replica's cache listener acts: delivers a notification, pings, or loses its
/// connection.
pub(super) fn cache_event(w: &mut World) {
    let r = w.rng.below(REPLICAS);
    let roll = w.rng.below(100);
    if roll < w.listener_speed {
        // A burst of notifications, as a listener catches up.
        for _ in 0..1 + w.rng.below(6) {
            if let Some(what) = w.caches[r].deliver() {
                w.log(format!("R{r}'s listener {what}"));
            }
        }
    } else if roll < 98 {
        let now = w.now;
        w.caches[r].ping(now);
    } else {
        w.caches[r].disconnect();
        w.log(format!("R{r}'s listener loses its connection"));
    }
}

pub(super) fn operator(w: &mut World, procs: &[Proc]) {
    let t = world::tag(w.rng.below(w.tags));
    match w.rng.below(if w.bypass { 12 } else { 10 }) {
        10 | 11 => {
            // Someone with the upstream's own address and a credential: no decision.
            let m = world::manifest(w.rng.below(w.manifests));
            w.up.blobs.extend(world::layers_of(&m));
            w.up.manifests.insert(m.clone());
            w.up.tags.insert(t.clone(), m.clone());
            w.log(format!(
                "a writer straight to the upstream sets {t} = {}",
                world::short(&m)
            ));
        }
        0..=3 => {
            w.releases += 1;
            let release = Release {
                id: format!("rel{}", w.releases),
                cancelled: false,
                by: "op".into(),
                reason: "sim".into(),
                created_at: w.now,
                expires_at: w.now + 20 + w.rng.below(100) as u64,
            };
            let mut out = None;
            let replaced = w.store.record(&t).release.map(|r| r.id);
            w.update(std::slice::from_ref(&t), |now, recs| {
                out = Some(machine::set_release(&mut recs[0], &release, world::clock(now)).0);
            });
            if out == Some(SetRelease::Set) {
                if let Some(old) = replaced.and_then(|id| w.ghost.releases.get_mut(&id)) {
                    old.cancelled = true;
                }
                w.ghost.releases.insert(
                    release.id.clone(),
                    GhostRelease {
                        tag: t.clone(),
                        expires_at: release.expires_at,
                        cancelled: false,
                        moves: 0,
                        targets: Default::default(),
                    },
                );
            }
            w.log(format!("operator releases {t} ({}): {out:?}", release.id));
        }
        4 | 5 => {
            let mut out = None;
            w.update(std::slice::from_ref(&t), |now, recs| {
                out = Some(machine::cancel_release(&mut recs[0], "op", world::clock(now)).0);
            });
            // Whatever the answer, the operator's intent stands: no release of this tag
            // made before the cancel may be used by a decision after it.
            for r in w.ghost.releases.values_mut().filter(|r| r.tag == t) {
                r.cancelled = true;
            }
            w.log(format!("operator cancels the release of {t}: {out:?}"));
        }
        6..=8 => {
            let mode = pick_mode(&mut w.rng);
            w.ghost.modes.insert(t.clone(), mode);
            w.log(format!("reload: {t} is {}", mode.as_str()));
        }
        _ => {
            // An operator clears the record of one request known to have failed: over,
            // and never applied (or applied without effect). Others may be in flight.
            let rec = w.store.record(&t);
            let failed =
                rec.writes.iter().find(|c| {
                    !procs.iter().any(|p| p.id == c.request_id)
                        && w.up.ops.iter().filter(|o| o.request == c.request_id).all(|o| {
                            o.answered && o.took_effect != Some(true) && (o.applied || o.fate != Fate::LateApply)
                        })
                });
            if let Some(c) = failed.map(|c| c.request_id.clone()) {
                w.update(std::slice::from_ref(&t), |now, recs| {
                    machine::clear_writes(&mut recs[0], &c, "op", "sim", world::clock(now));
                });
                w.log(format!("operator clears {c}'s record on {t}"));
            }
        }
    }
}
