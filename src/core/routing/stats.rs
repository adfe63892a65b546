//! A route's counters: plain atomics that hang off the route, so that counting a record costs an atomic
//! add and no lookup. What they mean to an operator, and how they are kept across reloads and exposed,
//! is `ops::metrics`'s business; the route only carries them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::core::envelope::DeadLetterReason;
use crate::core::routing::DeviceIdSource;

/// Upper bounds of the delivery latency buckets, in seconds (MQTT receive → Kafka ack).
pub const LATENCY_BUCKETS: [f64; 15] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// A histogram of durations in fixed buckets, updated with atomics only.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last one is +Inf.
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|&le| secs <= le).unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros().min(u64::MAX as u128) as u64, Relaxed);
    }

    /// Sum in seconds, count, and `(upper bound, count in that bucket)` with +Inf as `f64::MAX`.
    pub fn read(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, c)| (LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::MAX), c.load(Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        (self.sum_us.load(Relaxed) as f64 / 1e6, count, buckets)
    }
}

/// One route's counters. Labels: the route's name and its configured topic (a template stays a
/// template: a label never carries a device id or an MQTT topic).
#[derive(Debug, Default)]
pub struct RouteStats {
    pub route: Arc<str>,
    pub topic: String,
    pub delivered: AtomicU64,
    pub dead_letters_delivered: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    /// Dead letters decided, by [`DeadLetterReason`].
    pub dead_letters: [AtomicU64; DeadLetterReason::ALL.len()],
    /// Device ids taken, by [`DeviceIdSource`] (regex, fallback, default).
    pub device_id: [AtomicU64; 3],
    pub latency: Histogram,
    /// Records held back by the route's rate limit, and QoS 0 records it dropped.
    pub delayed: AtomicU64,
    pub rate_limited: AtomicU64,
    /// The registry schema id of the route's last encoded record (0: none yet, or plain JSON).
    pub schema_id: AtomicU64,
}

impl RouteStats {
    pub fn device_id(&self, source: DeviceIdSource) {
        let i = match source {
            DeviceIdSource::Regex => 0,
            DeviceIdSource::Fallback => 1,
            DeviceIdSource::Default => 2,
        };
        self.device_id[i].fetch_add(1, Relaxed);
    }

    pub fn dead_letter(&self, reason: DeadLetterReason) {
        self.dead_letters[reason as usize].fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_puts_each_duration_in_the_first_bucket_that_holds_it() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(7));
        h.observe(Duration::from_secs(3600));
        let (sum, count, buckets) = h.read();
        assert_eq!(count, 4);
        assert!((sum - 3600.0085).abs() < 1e-6, "{sum}");
        assert_eq!(buckets[0], (0.001, 2));
        assert_eq!(buckets[3], (0.01, 1));
        assert_eq!(*buckets.last().unwrap(), (f64::MAX, 1));
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 4);
    }
}
