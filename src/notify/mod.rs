//! Webhooks: the events security teams and operators want to hear about, delivered at
//! least once from a durable outbox.

mod metrics;

pub use self::metrics::{Dropped, NotifyMetrics, Outcome};
