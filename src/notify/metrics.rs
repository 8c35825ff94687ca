//! The webhook metrics: deliveries by target and outcome, the outbox's size and age, and
//! the events dropped undelivered.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    /// The entry's `name`, or its URL's host: never the URL itself.
    target: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabel {
    reason: &'static str,
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: delivered.
    Delivered,
    /// A connection error, a timeout, 429 or 5xx: tried again later.
    Retry,
    /// Any other answer (a 4xx other than 429): not tried again.
    Rejected,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retry => "retry",
            Self::Rejected => "rejected",
        }
    }
}

/// Why an event was dropped before a target answered it 2xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Still undelivered after `notify_max_age`.
    MaxAge,
    /// The outbox held `notify_outbox_max_events`: the oldest event made room.
    OutboxFull,
    /// The target answered with a 4xx other than 429.
    Rejected,
}

impl Dropped {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxAge => "max_age",
            Self::OutboxFull => "outbox_full",
            Self::Rejected => "rejected",
        }
    }
}

#[derive(Default)]
pub struct NotifyMetrics {
    deliveries: Family<DeliveryLabels, Counter>,
    outbox_events: Gauge,
    oldest_undelivered: Gauge,
    dropped: Family<DropLabel, Counter>,
}

impl NotifyMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "notify_deliveries",
            "Webhook delivery attempts, by target (name or host) and outcome (delivered, retry, rejected)",
            self.deliveries.clone(),
        );
        registry.register(
            "notify_outbox_events",
            "Events in the webhook outbox not yet delivered to every target that wants them",
            self.outbox_events.clone(),
        );
        registry.register(
            "notify_oldest_undelivered_seconds",
            "Age of the oldest event some target has not been delivered yet (0 when none)",
            self.oldest_undelivered.clone(),
        );
        registry.register(
            "notify_dropped",
            "Webhook events dropped undelivered, by reason (max_age, outbox_full, rejected)",
            self.dropped.clone(),
        );
        // Every reason shows from the start, so an alert on a rate has a series to read.
        for reason in [Dropped::MaxAge, Dropped::OutboxFull, Dropped::Rejected] {
            let _ = self.dropped.get_or_create(&DropLabel {
                reason: reason.as_str(),
            });
        }
    }

    pub fn delivery(&self, target: &str, outcome: Outcome) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                target: target.to_owned(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub fn dropped(&self, reason: Dropped, n: u64) {
        self.dropped
            .get_or_create(&DropLabel {
                reason: reason.as_str(),
            })
            .inc_by(n);
    }

    pub fn outbox(&self, events: u64, oldest_seconds: u64) {
        self.outbox_events.set(i64::try_from(events).unwrap_or(i64::MAX));
        self.oldest_undelivered
            .set(i64::try_from(oldest_seconds).unwrap_or(i64::MAX));
    }
}
