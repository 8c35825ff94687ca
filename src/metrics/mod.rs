//! Prometheus metrics, served at `GET /metrics` in the OpenMetrics text format: the
//! decisions (the same counts as the audit log), responses by status class, upstream and
//! store failures, open connections, and the last drift check's tags by state; beside
//! them (`health`) readiness by component, upstream latency and the history log's
//! checkpoints, which the alert rules in `deploy/prometheus/` read.

mod health;

pub use health::{HealthMetrics, UpstreamLatency};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::telemetry::AuditAction;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnswerLabel {
    answer: &'static str,
}

pub struct Metrics {
    registry: Registry,
    decisions: Family<ActionLabel, Counter>,
    unauthenticated_refusals: Family<ActionLabel, Counter>,
    /// The counters of `responses` for 1xx to 5xx, looked up once: every response
    /// counts, and a family lookup takes a lock and hashes the label.
    responses_by_class: [Counter; 5],
    upstream_failures: Family<KindLabel, Counter>,
    store_failures: Counter,
    policy_reload_failures: Counter,
    open_connections: Gauge,
    /// Follows [`crate::store::PinStore::durable_writes`]; the lock keeps two renders from
    /// adding the same writes twice.
    store_durable_writes: std::sync::Mutex<Counter>,
    drift_tags: Family<StateLabel, Gauge>,
    manifest_memory_refusals: Family<ReasonLabel, Counter>,
    write_stalls: Counter,
    /// `reads{answer}`, looked up once per answer: every pinned read counts.
    reads: [Counter; 4],
    /// The webhooks' deliveries and outbox.
    pub notify: crate::notify::NotifyMetrics,
    /// Readiness, upstream latency, the log's size and checkpoints.
    pub health: HealthMetrics,
}

/// How a manifest read by a protected tag was answered (`reads = "pinned"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAnswer {
    /// With the pinned manifest, fetched by digest.
    Pinned = 0,
    /// The tag had no pin: the digest read was adopted as its pin.
    Adopted = 1,
    /// The pinned manifest is gone from the upstream: 404 `pinned_manifest_missing`.
    PinnedMissing = 2,
    /// Audit mode: forwarded by tag, and the upstream served another digest than the pin.
    Drift = 3,
}

const READ_ANSWERS: [&str; 4] = ["pinned", "adopted", "pinned_missing", "drift"];

/// The decisions the alert rules read (`deploy/prometheus/tagpin-alerts.yml`) and the
/// upstream failures they sum. Their series show from the start at 0: `increase()` cannot
/// see the first count of a series that appears with it.
const ALERTED_ACTIONS: [AuditAction; 10] = [
    AuditAction::PushRefused,
    AuditAction::DriftDetected,
    AuditAction::ReadDrift,
    AuditAction::PinCreated,
    AuditAction::PinAdopted,
    AuditAction::PinAdvanced,
    AuditAction::PushAudited,
    AuditAction::PushReleased,
    AuditAction::DeleteReleased,
    AuditAction::PinAdoptedOnRead,
];
const ALERTED_FAILURES: [&str; 3] = ["connect", "timeout", "transport"];

/// Tags by state in one drift check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DriftCounts {
    /// Pinned, and the upstream holds the pinned digest.
    pub same: u64,
    /// Pinned, and the upstream holds another digest.
    pub moved: u64,
    /// Pinned, and the upstream holds nothing under the tag.
    pub missing: u64,
    /// Protected tags at the upstream that have no pin.
    pub unpinned: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tagpin");
        let decisions = Family::<ActionLabel, Counter>::default();
        registry.register(
            "decisions",
            "Decisions on protected tags, by audit action",
            decisions.clone(),
        );
        let unauthenticated_refusals = Family::<ActionLabel, Counter>::default();
        registry.register(
            "unauthenticated_refusals",
            "Refused writes from clients the upstream did not let read the repository (not audited)",
            unauthenticated_refusals.clone(),
        );
        let responses = Family::<ClassLabel, Counter>::default();
        registry.register(
            "responses",
            "Responses sent to clients, by status class",
            responses.clone(),
        );
        let upstream_failures = Family::<KindLabel, Counter>::default();
        registry.register(
            "upstream_failures",
            "Requests that failed at the upstream (connect, timeout, transport, check, digest)",
            upstream_failures.clone(),
        );
        let store_failures = Counter::default();
        registry.register(
            "store_failures",
            "Writes refused because the pin store failed",
            store_failures.clone(),
        );
        let policy_reload_failures = Counter::default();
        registry.register(
            "policy_reload_failures",
            "SIGHUP reloads refused because the new config was invalid",
            policy_reload_failures.clone(),
        );
        let store_durable_writes = Counter::default();
        registry.register(
            "store_durable_writes",
            "Durable writes (fsyncs, synchronous commits) the pin store waited for: one per push of a new tag",
            store_durable_writes.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        let drift_tags = Family::<StateLabel, Gauge>::default();
        registry.register(
            "drift_tags",
            "Tags by state in the last periodic drift check (same, moved, missing, unpinned)",
            drift_tags.clone(),
        );
        let manifest_memory_refusals = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "manifest_memory_refusals",
            "Manifest pushes refused with 503 for want of memory, by what ran out (budget, client_share)",
            manifest_memory_refusals.clone(),
        );
        let write_stalls = Counter::default();
        registry.register(
            "client_write_stalls",
            "Connections closed because the client read nothing of a response for the body idle timeout",
            write_stalls.clone(),
        );
        let read_family = Family::<AnswerLabel, Counter>::default();
        registry.register(
            "reads",
            "Manifest reads by a protected tag with reads = pinned, by answer (pinned, adopted, pinned_missing, drift)",
            read_family.clone(),
        );
        for action in ALERTED_ACTIONS {
            let _ = decisions.get_or_create(&ActionLabel {
                action: action.as_str(),
            });
        }
        for kind in ALERTED_FAILURES {
            let _ = upstream_failures.get_or_create(&KindLabel { kind });
        }
        let notify = crate::notify::NotifyMetrics::default();
        notify.register(&mut registry);
        let health = HealthMetrics::default();
        health.register(&mut registry);
        let reads = READ_ANSWERS.map(|answer| read_family.get_or_create(&AnswerLabel { answer }).clone());
        let responses_by_class =
            ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| responses.get_or_create(&ClassLabel { class }).clone());
        Self {
            drift_tags,
            registry,
            decisions,
            unauthenticated_refusals,
            responses_by_class,
            upstream_failures,
            store_failures,
            store_durable_writes: std::sync::Mutex::new(store_durable_writes),
            policy_reload_failures,
            open_connections,
            manifest_memory_refusals,
            write_stalls,
            reads,
            notify,
            health,
        }
    }
}

impl Metrics {
    pub fn decision(&self, action: AuditAction) {
        self.decisions
            .get_or_create(&ActionLabel {
                action: action.as_str(),
            })
            .inc();
    }

    /// A refusal whose client the upstream did not accept: counted, not audited.
    pub fn unauthenticated_refusal(&self, action: AuditAction) {
        self.unauthenticated_refusals
            .get_or_create(&ActionLabel {
                action: action.as_str(),
            })
            .inc();
    }

    pub fn response(&self, status: http::StatusCode) {
        let class = match status.as_u16() {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        self.responses_by_class[class].inc();
    }

    pub fn upstream_failure(&self, kind: &'static str) {
        self.upstream_failures.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn store_failure(&self) {
        self.store_failures.inc();
    }

    /// A manifest body refused because the budget (`budget`) or its client address's
    /// share of it (`client_share`) had no memory for it.
    pub fn manifest_memory_refused(&self, reason: &'static str) {
        self.manifest_memory_refusals
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn read(&self, answer: ReadAnswer) {
        self.reads[answer as usize].inc();
    }

    /// A connection was closed because its client stopped reading.
    pub fn write_stall(&self) {
        self.write_stalls.inc();
    }

    pub fn policy_reload_failed(&self) {
        self.policy_reload_failures.inc();
    }

    /// The result of a drift check.
    pub fn drift(&self, counts: &DriftCounts) {
        for (state, n) in [
            ("same", counts.same),
            ("moved", counts.moved),
            ("missing", counts.missing),
            ("unpinned", counts.unpinned),
        ] {
            self.drift_tags
                .get_or_create(&StateLabel { state })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The text exposition, with the connection gauge set to `open_connections` and the
    /// store's durable writes counted up to `durable_writes`.
    pub fn render(&self, open_connections: usize, durable_writes: u64) -> String {
        self.open_connections
            .set(i64::try_from(open_connections).unwrap_or(i64::MAX));
        {
            let counter = self.store_durable_writes.lock().unwrap_or_else(|p| p.into_inner());
            let seen = counter.get();
            if durable_writes > seen {
                counter.inc_by(durable_writes - seen);
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_appear_in_the_exposition() {
        let m = Metrics::default();
        m.decision(AuditAction::PushRefused);
        m.decision(AuditAction::PushRefused);
        m.response(http::StatusCode::CONFLICT);
        m.upstream_failure("timeout");
        m.store_failure();
        m.manifest_memory_refused("client_share");
        m.write_stall();
        m.read(ReadAnswer::Pinned);
        m.read(ReadAnswer::Drift);
        m.drift(&DriftCounts {
            same: 4,
            moved: 1,
            ..DriftCounts::default()
        });
        let text = m.render(3, 7);
        assert!(text.contains("tagpin_store_durable_writes_total 7"), "{text}");
        assert!(text.contains("tagpin_drift_tags{state=\"moved\"} 1"), "{text}");
        assert!(text.contains("tagpin_drift_tags{state=\"missing\"} 0"), "{text}");
        assert!(
            text.contains("tagpin_decisions_total{action=\"push_refused\"} 2"),
            "{text}"
        );
        assert!(text.contains("tagpin_responses_total{class=\"4xx\"} 1"), "{text}");
        assert!(text.contains("tagpin_responses_total{class=\"2xx\"} 0"), "{text}");
        assert!(
            text.contains("tagpin_upstream_failures_total{kind=\"timeout\"} 1"),
            "{text}"
        );
        assert!(text.contains("tagpin_store_failures_total 1"), "{text}");
        assert!(
            text.contains("tagpin_manifest_memory_refusals_total{reason=\"client_share\"} 1"),
            "{text}"
        );
        assert!(text.contains("tagpin_client_write_stalls_total 1"), "{text}");
        assert!(text.contains("tagpin_reads_total{answer=\"pinned\"} 1"), "{text}");
        assert!(text.contains("tagpin_reads_total{answer=\"adopted\"} 0"), "{text}");
        assert!(text.contains("tagpin_open_connections 3"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
