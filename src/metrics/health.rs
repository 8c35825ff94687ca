//! The metrics the alert rules (`deploy/prometheus/tagpin-alerts.yml`) read beside the
//! counters: readiness by component, how long the upstream takes to answer, and the
//! history log's size and the time its last checkpoint was shipped.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::readiness::Readiness;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabel {
    component: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabel {
    request: &'static str,
}

/// Upper bounds of the upstream latency buckets, in seconds: a registry answers a HEAD in
/// milliseconds, and the longest wait is the header timeout (60 s by default).
const LATENCY_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.into_iter())
}

/// The two series of `tagpin_upstream_request_duration_seconds`, looked up once: every
/// upstream request observes one, and a family lookup takes a lock and hashes the label.
/// Each worker's upstream client holds a clone (the histograms are shared).
#[derive(Clone)]
pub struct UpstreamLatency {
    /// Clients' requests forwarded to the upstream.
    forwarded: Histogram,
    /// Requests tagpin makes for its own decisions: tag checks, pinned manifest fetches,
    /// listings, walks, token fetches and the readiness probe.
    check: Histogram,
}

/// Unregistered histograms, for an upstream client outside a running tagpin.
impl Default for UpstreamLatency {
    fn default() -> Self {
        Self {
            forwarded: latency_histogram(),
            check: latency_histogram(),
        }
    }
}

impl UpstreamLatency {
    /// The time from the moment a request had been sent whole to its response headers (or
    /// its failure). `check` says which series: tagpin's own request or a client's.
    pub fn observe(&self, check: bool, seconds: f64) {
        if check { &self.check } else { &self.forwarded }.observe(seconds);
    }
}

pub struct HealthMetrics {
    ready: Family<ComponentLabel, Gauge>,
    latency_family: Family<RequestLabel, Histogram, fn() -> Histogram>,
    latency: UpstreamLatency,
    log_entries: Gauge,
    log_checkpoint_time: Gauge,
}

impl Default for HealthMetrics {
    fn default() -> Self {
        let latency_family: Family<RequestLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        // One statement each: a lookup's guard lives to the end of its statement, and a
        // second lookup that creates a series under it would wait for it forever.
        let forwarded = latency_family
            .get_or_create(&RequestLabel { request: "forwarded" })
            .clone();
        let check = latency_family.get_or_create(&RequestLabel { request: "check" }).clone();
        let latency = UpstreamLatency { forwarded, check };
        Self {
            ready: Family::default(),
            latency_family,
            latency,
            log_entries: Gauge::default(),
            log_checkpoint_time: Gauge::default(),
        }
    }
}

impl HealthMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "ready",
            "1 when the component answered the last readiness probe, else 0: store, upstream, and \
             database (the PostgreSQL store only)",
            self.ready.clone(),
        );
        registry.register(
            "upstream_request_duration_seconds",
            "Seconds from a request sent whole to the upstream to its response headers or failure, \
             by request (forwarded: a client's; check: tagpin's own)",
            self.latency_family.clone(),
        );
        registry.register(
            "log_entries",
            "Entries in the history log (its size), as last read by the checkpoint task",
            self.log_entries.clone(),
        );
        registry.register(
            "log_checkpoint_timestamp_seconds",
            "Unix time this process last shipped a log checkpoint (0 before the first)",
            self.log_checkpoint_time.clone(),
        );
    }

    /// A clone of the upstream latency histograms, for an upstream client.
    pub fn upstream_latency(&self) -> UpstreamLatency {
        self.latency.clone()
    }

    /// The answer of a readiness probe. `database` is set for the PostgreSQL store, whose
    /// readiness check is a round trip to the database: there the two are the same answer.
    pub fn ready(&self, found: &Readiness, database: bool) {
        let set = |component, ok: bool| {
            self.ready
                .get_or_create(&ComponentLabel { component })
                .set(i64::from(ok));
        };
        set("store", found.store);
        set("upstream", found.upstream);
        if database {
            set("database", found.store);
        }
    }

    /// The log's size as the checkpoint task last read it.
    pub fn log_size(&self, entries: u64) {
        self.log_entries.set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// A checkpoint was shipped now.
    pub fn checkpoint_shipped(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.log_checkpoint_time.set(i64::try_from(now).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(m: &HealthMetrics) -> String {
        let mut registry = Registry::with_prefix("tagpin");
        m.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn readiness_sets_one_gauge_per_component_and_database_only_when_asked() {
        let m = HealthMetrics::default();
        let text = render(&m);
        assert!(text.contains("# TYPE tagpin_ready gauge"), "{text}");
        assert!(!text.contains("tagpin_ready{"), "no probe yet: {text}");
        m.ready(
            &Readiness {
                upstream: true,
                store: false,
            },
            false,
        );
        let text = render(&m);
        assert!(text.contains("tagpin_ready{component=\"store\"} 0"), "{text}");
        assert!(text.contains("tagpin_ready{component=\"upstream\"} 1"), "{text}");
        assert!(!text.contains("component=\"database\""), "{text}");
        m.ready(
            &Readiness {
                upstream: true,
                store: true,
            },
            true,
        );
        let text = render(&m);
        assert!(text.contains("tagpin_ready{component=\"database\"} 1"), "{text}");
        assert!(text.contains("tagpin_ready{component=\"store\"} 1"), "{text}");
    }

    #[test]
    fn upstream_latency_lands_in_its_series_buckets() {
        let m = HealthMetrics::default();
        let latency = m.upstream_latency();
        latency.observe(true, 0.003);
        latency.observe(false, 7.0);
        let text = render(&m);
        assert!(
            text.contains("tagpin_upstream_request_duration_seconds_bucket{le=\"0.005\",request=\"check\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tagpin_upstream_request_duration_seconds_bucket{le=\"5.0\",request=\"forwarded\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("tagpin_upstream_request_duration_seconds_count{request=\"forwarded\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn log_gauges_follow_the_checkpoint_task() {
        let m = HealthMetrics::default();
        assert!(render(&m).contains("tagpin_log_checkpoint_timestamp_seconds 0"));
        m.log_size(42);
        m.checkpoint_shipped();
        let text = render(&m);
        assert!(text.contains("tagpin_log_entries 42"), "{text}");
        assert!(!text.contains("tagpin_log_checkpoint_timestamp_seconds 0\n"), "{text}");
    }
}
