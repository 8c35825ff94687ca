//! The periodic drift check (`--drift-interval`): [`verify::check`] over every pin, on
//! the main runtime. Each check sets the gauge `tagpin_drift_tags{state}` and emits one
//! `drift_detected` audit event per tag that became moved or missing (or moved to yet
//! another digest) since the last check, so a tag that stays moved is reported once,
//! not every interval. The event's `pinned_digest` is the pin, its `attempted_digest`
//! the digest the upstream holds now (empty when the tag is missing there).
//!
//! A check that fails (the upstream is down, refuses tagpin's credentials) is logged and
//! changes nothing: the gauge keeps the last check's counts and the memory its states.
//! A check that overruns (it takes longer than [`round_deadline`]) is abandoned the same
//! way, and one that panics is logged at error; each of these is counted in
//! `tagpin_upstream_failures_total{kind="drift_check"}`, and the next round follows at
//! the next tick.
//! The memory is the process's own: after a restart, each tag still drifted is reported
//! once more by the first check.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;

use super::verify::{self, Checked, Drift, Report};
use crate::app::App;
use crate::oci::{Digest, Repository, Tag};
use crate::telemetry::{AuditAction, AuditEvent, Requester};

/// Who acts in the check's audit events.
pub const DRIFT_USER: &str = "tagpin:drift-check";
/// The `kind` of `tagpin_upstream_failures_total` a failed, overrun or panicked check
/// counts under.
pub const DRIFT_FAILURE_KIND: &str = "drift_check";
/// A check may always take this long, however short the interval.
const MIN_ROUND: Duration = Duration::from_secs(60);

/// How long one check may run before it is abandoned: the interval, but at least
/// [`MIN_ROUND`] and at least a few upstream checks' time.
pub fn round_deadline(every: Duration, check_timeout: Duration) -> Duration {
    every.max(MIN_ROUND).max(check_timeout.saturating_mul(4))
}

/// The last state of each pinned tag that was not `same`.
#[derive(Default)]
pub struct Memory {
    last: HashMap<(Repository, Tag), (Drift, Option<Digest>)>,
}

impl Memory {
    /// The tags whose drift is new since the last report; the memory becomes `report`'s.
    pub fn changes<'r>(&mut self, report: &'r Report) -> Vec<&'r Checked> {
        let mut now = HashMap::new();
        let mut changed = Vec::new();
        for c in report.tags.iter().filter(|c| c.state != Drift::Same) {
            let key = (c.repository.clone(), c.tag.clone());
            let state = (c.state, c.upstream_digest.clone());
            if self.last.get(&key) != Some(&state) {
                changed.push(c);
            }
            now.insert(key, state);
        }
        self.last = now;
        changed
    }
}

/// Run a check every `every` until `stop` resolves.
pub async fn run(app: App, every: Duration, stop: impl Future<Output = ()>) {
    let app = Arc::new(app);
    let deadline = round_deadline(every, app.upstream.check_timeout());
    tokio::pin!(stop);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut memory = Memory::default();
    tracing::info!(every = ?every, "drift check scheduled");
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = &mut stop => return,
        }
        // One replica at a time runs the check, so each drift is reported once.
        match app.store_call(|s| s.lead()).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "drift check skipped: the store cannot say which replica leads");
                continue;
            }
        }
        // Its own task, so a panic in it ends this round only.
        let round = {
            let app = Arc::clone(&app);
            tokio::spawn(async move { verify::check(app).await })
        };
        let abort = round.abort_handle();
        let outcome = tokio::select! {
            r = tokio::time::timeout(deadline, round) => r,
            () = &mut stop => {
                abort.abort();
                return;
            }
        };
        let report = match outcome {
            Ok(Ok(Ok(r))) => r,
            Ok(Ok(Err(e))) => {
                app.metrics.upstream_failure(DRIFT_FAILURE_KIND);
                tracing::warn!(error = %e, "drift check failed; the last counts stay");
                continue;
            }
            Ok(Err(e)) => {
                app.metrics.upstream_failure(DRIFT_FAILURE_KIND);
                tracing::error!(error = %e, "drift check panicked; the last counts stay, the next check follows");
                continue;
            }
            Err(_) => {
                abort.abort();
                app.metrics.upstream_failure(DRIFT_FAILURE_KIND);
                tracing::warn!(deadline = ?deadline, "drift check overran and was abandoned; the last counts stay");
                continue;
            }
        };
        app.metrics.drift(&report.counts);
        let who = requester(&app);
        for c in memory.changes(&report) {
            AuditEvent {
                action: AuditAction::DriftDetected,
                who: &who,
                repository: &c.repository,
                tag: Some(&c.tag),
                pinned: Some(&c.pinned_digest),
                attempted: c.upstream_digest.as_ref(),
                decided: Some(app.policy().decide(&c.repository, &c.tag)),
            }
            .emit(&app);
        }
        let n = report.counts;
        tracing::info!(
            request_id = who.request_id,
            same = n.same,
            moved = n.moved,
            missing = n.missing,
            unpinned = n.unpinned,
            "drift check done"
        );
    }
}

fn requester(app: &App) -> Requester {
    let mut who = Requester::from_headers(
        app.next_request_id(),
        SocketAddr::from(([0, 0, 0, 0], 0)),
        &HeaderMap::new(),
    );
    who.user = Some(DRIFT_USER.into());
    who
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::DriftCounts;

    fn checked(tag: &str, state: Drift, upstream: Option<&str>) -> Checked {
        let d = |c: char| Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap();
        Checked {
            repository: Repository::parse("a").unwrap(),
            tag: Tag::parse(tag).unwrap(),
            pinned_digest: d('0'),
            upstream_digest: upstream.map(|u| d(u.chars().next().unwrap())),
            state,
        }
    }

    fn report(tags: Vec<Checked>) -> Report {
        Report {
            tags,
            counts: DriftCounts::default(),
            unpinned: Vec::new(),
        }
    }

    fn names(c: Vec<&Checked>) -> Vec<String> {
        c.iter().map(|c| format!("{}:{:?}", c.tag, c.state)).collect()
    }

    #[test]
    fn each_change_is_reported_once() {
        let mut m = Memory::default();
        let first = report(vec![
            checked("same", Drift::Same, Some("0")),
            checked("moved", Drift::Moved, Some("1")),
        ]);
        assert_eq!(names(m.changes(&first)), ["moved:Moved"]);
        assert!(
            m.changes(&first).is_empty(),
            "a tag that stays moved is not reported again"
        );
        // Moved again to another digest, and the other tag deleted: two new changes.
        let second = report(vec![
            checked("same", Drift::Missing, None),
            checked("moved", Drift::Moved, Some("2")),
        ]);
        assert_eq!(names(m.changes(&second)), ["same:Missing", "moved:Moved"]);
        // Back to the pin, then moved once more: reported again.
        assert!(m
            .changes(&report(vec![checked("moved", Drift::Same, Some("0"))]))
            .is_empty());
        assert_eq!(
            names(m.changes(&report(vec![checked("moved", Drift::Moved, Some("2"))]))),
            ["moved:Moved"]
        );
    }
}
