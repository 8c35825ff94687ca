//! Deterministic simulation of the pinning state machine: three replicas share one model
//! store; requests (pushes by tag and by digest with `?tag=`, deletes by tag, digest and
//! blob, and on odd seeds pulls by tag) run one atomic step at a time in an order drawn
//! from a seed, beside operators (releases, cancels, reloads between modes, clearing
//! claims), on odd seeds writers straight to the upstream, a clock, replica kills, store
//! crashes, and a model upstream that refuses, loses answers and applies writes late.
//! After every step the ghost checks:
//! - the upstream never takes a write under a protected tag except while the tag is
//!   still held to what the write's decision allowed (checked as each write lands);
//! - every decision that let a write through was allowed by the policy, the release
//!   and the clock at that moment;
//! - a pin never disappears and changes only by an applied, licensed move; history
//!   names only writes the upstream applied; a release moves a tag at most once;
//! - every pin a client was told about survives, and every pinned manifest of an
//!   enforcing tag, with its layers, can still be pulled from the upstream (content
//!   already gone, or being deleted, when a tag was adopted from a writer tagpin never
//!   saw is not owed);
//! - a pull of an enforcing tag with a pin gets the pin, and a first pull's answer is
//!   the pin in force after its adoption (`read.rs`).
//!
//! `SIM_RUNS=n` runs more seeds; `SIM_SEED=s` replays one seed with its whole trace.
//! Each regression in [`crate::pinning::mutation`] puts back one way a tag moved before;
//! `every_regression_is_found` shows each is caught within the default seeds.

mod cache;
mod digest;
mod operator;
mod procs;
mod read;
mod world;

use std::collections::BTreeMap;

use self::procs::{Answer, Kind, Next, Phase, Proc};
use self::world::{Fate, Ghost, Rng, Store, Upstream, Write};
use crate::oci::{Digest, Tag};
use crate::pinning::mutation::{self, Mutation};
use crate::policy::Mode;
use crate::store::TagRecord;

const REPLICAS: usize = 3;
const TAGS: usize = 3;

pub struct World {
    pub store: Store,
    pub up: Upstream,
    pub ghost: Ghost,
    pub now: u64,
    pub rng: Rng,
    pub skews: [i64; REPLICAS],
    trace: Vec<String>,
    /// The store before the last transition, lost by a crash when commits are not durable.
    last: Option<Store>,
    /// The store before the first settlement written without a flush since the last
    /// flush (`PinStore::confirm`): what a store crash goes back to.
    undurable: Option<Store>,
    releases: usize,
    /// Requests whose answer was lost, which their clients repeat.
    pub retries: Vec<Kind>,
    /// How many tags and manifests this seed's clients use: few make collisions likely.
    tags: usize,
    manifests: usize,
    /// This seed's mix of requests (see `fresh`).
    mix: [usize; 6],
    /// Whether this seed has writers straight to the upstream, behind tagpin's back.
    pub bypass: bool,
    /// Odd seeds: pulls, and the replicas' read caches.
    pub extended: bool,
    pub caches: [cache::ReplicaCache; REPLICAS],
    /// How often (of 100 listener events) a listener delivers: some seeds lag far behind.
    listener_speed: usize,
    /// First pulls that adopted the tag, and pulls served a pin.
    pub read_adoptions: usize,
    pub pinned_reads: usize,
    pub cache_hits: usize,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let up = Upstream {
            tag_param: rng.chance(20),
            ..Upstream::default()
        };
        let mut ghost = Ghost::default();
        let tags = 1 + rng.below(TAGS);
        let manifests = 2 + rng.below(world::LAYERS.len() - 1);
        let mut mix = [
            30 + rng.below(30),
            rng.below(20),
            rng.below(20),
            rng.below(25),
            rng.below(25),
            0,
        ];
        // Odd seeds add pulls and writers straight to the upstream; even seeds draw
        // exactly what they drew before those existed, so what they found, they find.
        let (mut bypass, mut listener_speed) = (false, 0);
        if seed % 2 == 1 {
            mix[5] = 10 + rng.below(30);
            bypass = rng.chance(70);
            listener_speed = 10 + rng.below(80);
            if rng.chance(30) {
                // Mostly pulls: what a replica's cache is for.
                mix.iter_mut().for_each(|m| *m /= 4);
                mix[5] = 150;
            }
        }
        for t in 0..TAGS {
            ghost.modes.insert(world::tag(t), pick_mode(&mut rng));
        }
        Self {
            store: Store::default(),
            up,
            ghost,
            now: 1_000_000,
            rng,
            skews: [0, -150, 45],
            trace: Vec::new(),
            last: None,
            undurable: None,
            releases: 0,
            retries: Vec::new(),
            tags,
            manifests,
            mix,
            bypass,
            extended: seed % 2 == 1,
            caches: Default::default(),
            listener_speed,
            read_adoptions: 0,
            pinned_reads: 0,
            cache_hits: 0,
        }
    }

    /// Run `f`, whose transitions are written without a flush, as `PinStore::confirm`
    /// writes them: kept in memory until the next durable write or the flusher.
    pub fn lazily<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        let before = self.undurable.take().unwrap_or_else(|| self.store.clone());
        let out = f(self);
        self.undurable = Some(before);
        out
    }

    /// What `handler::recover` does on the leading replica: complete every push past the
    /// horizon whose settlement was lost, when the upstream shows its digest.
    fn recover(&mut self) {
        let tags: Vec<Tag> = self.store.tags.keys().cloned().collect();
        for t in tags {
            for write in crate::pinning::lost_settlements(&self.store.record(&t), world::clock(self.now)) {
                let seen = self.up.tags.get(&t).cloned();
                let mut out = None;
                self.update(std::slice::from_ref(&t), |now, recs| {
                    out = crate::pinning::complete_lost(&mut recs[0], &write, seen.as_ref(), world::clock(now));
                });
                if let Some(settled) = out {
                    self.log(format!(
                        "recover: {} -> {t} of {} => {settled:?}",
                        world::short(&write.digest),
                        write.request_id
                    ));
                }
            }
        }
    }

    pub fn log(&mut self, line: String) {
        self.trace.push(format!("t={} {line}", self.now - 1_000_000));
    }

    /// One atomic, durable store transition over `tags`, as `PinStore::update` makes it.
    pub fn update(&mut self, tags: &[Tag], mut change: impl FnMut(u64, &mut [TagRecord])) -> Vec<TagRecord> {
        self.last = Some(self.store.clone());
        let mut recs: Vec<TagRecord> = tags.iter().map(|t| self.store.record(t)).collect();
        change(self.now, &mut recs);
        let repo = crate::oci::Repository::parse("sim/app").expect("a valid name");
        for (t, r) in tags.iter().zip(recs.iter_mut()) {
            let before = self.store.record(t);
            if before != *r {
                let next = self.store.log.len() as u64;
                match crate::log::entry::bindings(&repo, t, &before, r, next) {
                    Ok(entries) => self.store.log.extend(entries.into_iter().map(|e| (e.tag, e.digest))),
                    Err(e) => self.store.log_refused.push(e.to_string()),
                }
            }
        }
        for (t, r) in tags.iter().zip(&recs) {
            if self.store.record(t) != *r {
                // NOTIFY in the transaction: every replica's listener hears of it.
                self.caches.iter_mut().for_each(|c| c.committed(t));
                // Its flush (its synchronous commit) writes out every earlier lazy one.
                self.undurable = None;
            }
            if r.is_empty() {
                self.store.tags.remove(t);
            } else {
                self.store.tags.insert(t.clone(), r.clone());
            }
        }
        recs
    }

    pub fn licence(&mut self, id: &str, tag: &Tag, from: Option<Digest>, to: Option<Digest>, release: Option<String>) {
        procs::licence(self, id, tag, from, to, release);
    }
}

fn pick_mode(rng: &mut Rng) -> Mode {
    [Mode::Immutable, Mode::AppendOnly, Mode::Audit][rng.below(3)]
}

/// What one run saw, to show the simulation exercised what it claims.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub steps: usize,
    pub applied: usize,
    pub late: usize,
    pub moves: usize,
    pub read_adoptions: usize,
    pub pinned_reads: usize,
    pub cache_hits: usize,
}

pub struct Failure {
    pub seed: u64,
    pub message: String,
    pub trace: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "seed {}: {}", self.seed, self.message)?;
        writeln!(
            f,
            "replay: SIM_SEED={} cargo test --lib pinning::sim::replay -- --nocapture",
            self.seed
        )?;
        let keep = std::env::var("SIM_TRACE")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60);
        let skip = self.trace.len().saturating_sub(keep);
        for line in &self.trace[skip..] {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// Run one seed: `steps` steps with new requests, then until everything settled.
pub fn run(seed: u64, steps: usize) -> Result<Stats, Failure> {
    let mut w = World::new(seed);
    let mut procs: Vec<Proc> = Vec::new();
    let mut stats = Stats::default();
    let mut next_id = 0;
    let result = (|| {
        for i in 0..steps + 2000 {
            let spawning = i < steps;
            if !spawning && procs.is_empty() && w.up.ops.iter().all(|o| o.answered) {
                break;
            }
            let before = w.store.clone();
            one_step(&mut w, &mut procs, spawning, &mut next_id, &mut stats)?;
            world::check_pins(&before, &w.store, &w.ghost)?;
            world::check_content(&w.store, &w.up, &w.ghost)?;
            world::check_log(&w.store)?;
            stats.steps += 1;
        }
        Ok::<_, String>(())
    })();
    mutation::set_skew(0);
    stats.read_adoptions = w.read_adoptions;
    stats.pinned_reads = w.pinned_reads;
    stats.cache_hits = w.cache_hits;
    match result {
        Ok(()) => Ok(stats),
        Err(message) => Err(Failure {
            seed,
            message,
            trace: std::mem::take(&mut w.trace),
        }),
    }
}

fn one_step(
    w: &mut World,
    procs: &mut Vec<Proc>,
    spawning: bool,
    next_id: &mut usize,
    stats: &mut Stats,
) -> Result<(), String> {
    let runnable: Vec<usize> = (0..procs.len()).filter(|&i| procs[i].phase != Phase::Await).collect();
    let pending: Vec<usize> = (0..w.up.ops.len())
        .filter(|&i| {
            let o = &w.up.ops[i];
            !o.answered || (!o.applied && matches!(o.fate, Fate::LateApply))
        })
        .collect();
    if w.extended && w.rng.chance(25) {
        operator::cache_event(w);
        return Ok(());
    }
    let roll = w.rng.below(100);
    if spawning && (roll < 22 || (runnable.is_empty() && pending.is_empty())) {
        spawn(w, procs, next_id);
    } else if roll < 60 && !runnable.is_empty() {
        let i = runnable[w.rng.below(runnable.len())];
        let mut p = procs[i].clone();
        match procs::step(w, &mut p)? {
            Next::Done => {
                procs.remove(i);
            }
            Next::Continue => procs[i] = p,
        }
    } else if roll < 85 && !pending.is_empty() {
        let i = pending[w.rng.below(pending.len())];
        upstream_event(w, procs, i, stats)?;
    } else if spawning && roll < 93 {
        operator::operator(w, procs);
    } else if roll < 97 || !spawning {
        let dt = 1 + w.rng.below(30) as u64;
        w.now += dt;
        for o in w.up.ops.iter_mut().filter(|o| !o.applied && o.deadline < w.now) {
            // Past the horizon a write can no longer land.
            o.fate = Fate::Lost;
        }
        w.log(format!("clock +{dt}"));
        // Seconds pass: the store's flusher has written out every lazy settlement.
        w.undurable = None;
        w.recover();
    } else if w.rng.chance(50) {
        let r = w.rng.below(REPLICAS);
        procs.retain(|p| p.replica != r);
        w.caches[r] = cache::ReplicaCache::default();
        w.log(format!("replica R{r} killed"));
    } else if world::async_commit() {
        if let Some(s) = w.last.take() {
            w.store = s;
            w.log("store crashed; the last commit was not durable".into());
        }
    } else if let Some(s) = w.undurable.take() {
        w.store = s;
        // The database went away under every replica's listener: each forgets its cache.
        w.caches.iter_mut().for_each(cache::ReplicaCache::disconnect);
        w.log("store crashed before its flush: the settlements written since are lost".into());
    }
    Ok(())
}

fn spawn(w: &mut World, procs: &mut Vec<Proc>, next_id: &mut usize) {
    *next_id += 1;
    let id = format!("r{next_id}");
    let replica = w.rng.below(REPLICAS);
    let tag = world::tag(w.rng.below(w.tags));
    let m = world::manifest(w.rng.below(w.manifests));
    let retry = (!w.retries.is_empty() && w.rng.chance(60)).then(|| w.retries.remove(0));
    let kind = match retry {
        Some(kind) => kind,
        None => fresh(w, tag, m),
    };
    w.log(format!("{id}@R{replica} arrives: {kind:?}"));
    procs.push(Proc::new(id, replica, kind));
}

fn fresh(w: &mut World, tag: Tag, m: Digest) -> Kind {
    // Weights of push by tag, push with `?tag=`, tag delete, digest delete, blob delete,
    // pull by tag.
    let weights = w.mix;
    let mut roll = w.rng.below(weights.iter().sum());
    let pick = weights
        .iter()
        .position(|&x| {
            let hit = roll < x;
            roll = roll.saturating_sub(x);
            hit
        })
        .unwrap_or(0);
    match pick {
        0 => Kind::Push {
            tag,
            digest: m,
            by_tag: true,
        },
        1 => Kind::Push {
            tag,
            digest: m,
            by_tag: false,
        },
        2 => Kind::TagDelete { tag },
        3 => Kind::DigestDelete {
            digest: m,
            manifest: true,
        },
        5 => Kind::Read { tag },
        _ => {
            // A layer of a manifest in play.
            let layers = world::layers_of(&m);
            Kind::DigestDelete {
                digest: layers[w.rng.below(layers.len())].clone(),
                manifest: false,
            }
        }
    }
}

fn upstream_event(w: &mut World, procs: &mut [Proc], i: usize, stats: &mut Stats) -> Result<(), String> {
    let o = w.up.ops[i].clone();
    let can_apply = !o.applied && matches!(o.fate, Fate::Answered | Fate::AppliedLost | Fate::LateApply);
    let apply_first = matches!(o.fate, Fate::Answered | Fate::AppliedLost);
    if can_apply && (apply_first || o.answered) {
        let took = apply(w, &o, stats)?;
        let op = &mut w.up.ops[i];
        op.applied = true;
        op.took_effect = Some(took);
        return Ok(());
    }
    if o.answered {
        return Ok(());
    }
    let answer = match o.fate {
        Fate::Answered if o.took_effect == Some(true) => Answer::Ok,
        Fate::Answered if matches!(o.write, Write::Manifest { .. }) => Answer::Refused,
        Fate::Answered => Answer::NotFound,
        Fate::Refused => Answer::Refused,
        _ => Answer::Unknown,
    };
    w.up.ops[i].answered = true;
    w.log(format!("{} gets {answer:?}", o.request));
    if let Some(p) = procs.iter_mut().find(|p| p.id == o.request && p.phase == Phase::Await) {
        p.answer = Some(answer);
        p.phase = Phase::Settle;
    }
    Ok(())
}

/// The upstream applies a write, after checking it against its licence.
fn apply(w: &mut World, o: &world::Op, stats: &mut Stats) -> Result<bool, String> {
    w.log(format!("upstream applies {}'s {:?}", o.request, o.write));
    let target = match &o.write {
        Write::Manifest { digest, tag: Some(t) } => Some((t.clone(), Some(digest.clone()))),
        Write::DeleteTag(t) => Some((t.clone(), None)),
        _ => None,
    };
    if let Some((t, to)) = &target {
        let pin = w.store.record(t).pin.map(|p| p.digest);
        let licence = w
            .ghost
            .licences
            .get(&o.request)
            .and_then(|ls| ls.iter().find(|l| &l.tag == t))
            .cloned()
            .ok_or_else(|| format!("{} lands on {t} with no decision", o.request))?;
        let still = licence.any || pin == licence.from || (to.is_some() && &pin == to);
        if !still {
            return Err(format!(
                "{} lands {:?} on {t} while it is pinned to {}; its decision was made against {}",
                o.request,
                to.as_ref().map(world::short),
                pin.as_ref().map_or("nothing".into(), world::short),
                licence.from.as_ref().map_or("nothing".into(), world::short)
            ));
        }
        // A move is a change of what the upstream holds under the tag.
        let moves = w.up.tags.get(t) != to.as_ref();
        if let (true, Some(id)) = (moves, &licence.release) {
            let r = w.ghost.releases.get_mut(id).expect("licensed releases exist");
            // With writers straight to the upstream, which may move the tag back before a
            // repeat of the same released write lands, moves are counted by where they take
            // the tag; without them, every change counts, except a repeat of the released
            // write landing its own digest again on a tag a licensed delete removed.
            let relanding = !w.up.tags.contains_key(t) && r.targets.contains(to);
            r.moves += usize::from(!relanding);
            r.targets.insert(to.clone());
            if (if w.bypass { r.targets.len() } else { r.moves }) > 1 {
                return Err(format!("release {id} of {t} moved it a second time"));
            }
        }
        stats.moves += usize::from(moves && pin.is_some());
    }
    let took = w.up.apply(&o.write);
    if took {
        w.ghost.applied.insert(o.request.clone());
        stats.applied += 1;
        stats.late += usize::from(o.answered);
        if let Write::DeleteManifest(d) | Write::DeleteBlob(d) = &o.write {
            for t in w.ghost.excusing.get(&o.request).cloned().unwrap_or_default() {
                w.ghost.excused.insert((t, d.clone()));
            }
        }
    }
    if !took {
        w.log("  (no effect)".into());
    }
    Ok(took)
}

/// Seeds run by default: a few thousand, under a minute in a debug build.
fn default_runs() -> u64 {
    std::env::var("SIM_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000)
}

const STEPS: usize = 300;

/// Seeds searched for each regression at least.
const MUTANT_RUNS: u64 = 8000;

#[test]
fn no_seed_moves_a_protected_tag() {
    mutation::set(None);
    let mut total = Stats::default();
    for seed in 0..default_runs() {
        match run(seed, STEPS) {
            Ok(s) => {
                total.steps += s.steps;
                total.applied += s.applied;
                total.late += s.late;
                total.moves += s.moves;
                total.read_adoptions += s.read_adoptions;
                total.pinned_reads += s.pinned_reads;
                total.cache_hits += s.cache_hits;
            }
            Err(f) => panic!("{f}"),
        }
    }
    println!(
        "simulated {} steps: {} writes applied, {} after their answer, {} moves, {} first pulls adopted, {} pulls served a pin ({} from a replica's cache)",
        total.steps, total.applied, total.late, total.moves, total.read_adoptions, total.pinned_reads, total.cache_hits
    );
    // The runs must have exercised what the checks are about.
    assert!(total.applied > 1000 && total.late > 50 && total.moves > 50, "{total:?}");
    assert!(
        total.read_adoptions > 25 && total.pinned_reads > 1000 && total.cache_hits > 40,
        "{total:?}"
    );
}

#[test]
fn replay() {
    let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) else {
        return;
    };
    mutation::set(std::env::var("SIM_MUTATION").ok().and_then(|m| mutant(&m)));
    let out = run(seed, STEPS);
    mutation::set(None);
    match out {
        Ok(s) => println!("seed {seed} passed: {s:?}"),
        Err(f) => panic!("{f}"),
    }
}

fn mutant(name: &str) -> Option<Mutation> {
    MUTANTS.iter().find(|(n, _)| *n == name).map(|(_, m)| *m)
}

/// Each regression, named by the way a tag moved before (issue items 1 to 9).
const MUTANTS: &[(&str, Mutation)] = &[
    ("1-repush-without-record", Mutation::RepushWithoutRecord),
    ("2-ignored-tag-completes", Mutation::JoinWithoutDecision),
    ("3-4-release-taken-by-removal", Mutation::ReleaseTakenByRemoval),
    ("5-replica-clock", Mutation::ReplicaClock),
    ("6-refs-not-checked", Mutation::RefsNotChecked),
    ("7-delete-settled-by-any-answer", Mutation::DeleteSettledByAnyAnswer),
    ("8-no-release-for-digest-delete", Mutation::NoReleaseForDigestDelete),
    ("9-async-commit", Mutation::AsyncCommit),
    ("review-a-dependents-by-digest", Mutation::DependentsByDigest),
    ("review-b-clear-all-writes", Mutation::ClearAllWrites),
    ("review-c-stale-forward", Mutation::StaleForward),
    ("read-a-pinned-tag-read-by-tag", Mutation::ReadByTag),
    ("read-b-adopted-over-a-write-in-flight", Mutation::AdoptOverClaim),
    ("read-c-cache-without-lease", Mutation::NoLease),
    ("read-d-move-without-grace", Mutation::NoMoveGrace),
    ("log-a-adoption-not-logged", Mutation::LogSkipsAdoption),
    ("scale-a-lazy-moves", Mutation::LazyMoves),
];

#[test]
fn every_regression_is_found() {
    let mut found = BTreeMap::new();
    let only = std::env::var("SIM_MUTANT").ok();
    for (name, m) in MUTANTS.iter().filter(|(n, _)| only.as_deref().is_none_or(|o| o == *n)) {
        mutation::set(Some(*m));
        // Regressions are searched further than the correct machine is checked.
        let hit = (0..default_runs().max(MUTANT_RUNS)).find_map(|seed| run(seed, STEPS).err());
        mutation::set(None);
        match hit {
            Some(f) => {
                println!("== {name}: found\n{f}");
                found.insert(*name, f.seed);
            }
            None => panic!(
                "the simulation did not find regression {name} in {} seeds",
                default_runs()
            ),
        }
    }
    println!("{found:?}");
}
