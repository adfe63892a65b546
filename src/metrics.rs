//! Counters, and the one function per notable event that both logs it and counts it, so that logs and
//! numbers never disagree.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::route::DeviceIdSource;

#[derive(Debug, Default)]
pub struct Metrics {
    pub mqtt_connected: AtomicBool,
    pub mqtt_connects: AtomicU64,
    pub mqtt_connection_errors: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_unrouted: AtomicU64,
    pub records_enqueued: AtomicU64,
    pub records_delivered: AtomicU64,
    pub records_failed: AtomicU64,
    pub dead_letters_enqueued: AtomicU64,
    pub dead_letters_delivered: AtomicU64,
    pub producer_queue_full: AtomicU64,
    pub device_id_regex: AtomicU64,
    pub device_id_fallback: AtomicU64,
    pub device_id_default: AtomicU64,
    pub subscriptions_rejected: AtomicU64,
    pub reloads: AtomicU64,
    /// Messages dropped, by [`DropReason`].
    pub dropped: [AtomicU64; DropReason::ALL.len()],
    /// Times reading from MQTT paused because the intake was full, and for how long in total.
    pub intake_stalls: AtomicU64,
    pub intake_stalled_us: AtomicU64,
    pub acks_sent: AtomicU64,
    pub stale_acks_dropped: AtomicU64,
    pub records_retried: AtomicU64,
    pub oversize_messages: AtomicU64,
    pub messages_not_acked: AtomicU64,
    pub reload_failures: AtomicU64,
    unrouted_warned: Mutex<Option<Instant>>,
    stall_logged: Mutex<Option<Instant>>,
}

/// Why a message was dropped. A drop is the last resort; each has a reason an operator can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// It arrived after shutdown began; not taken (and not acknowledged: QoS 1/2 come again).
    Shutdown,
}

impl DropReason {
    pub const ALL: [DropReason; 1] = [DropReason::Shutdown];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Shutdown => "shutdown",
        }
    }
}

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub messages_received: u64,
    pub messages_unrouted: u64,
    pub records_enqueued: u64,
    pub records_delivered: u64,
    pub records_failed: u64,
    pub dead_letters_delivered: u64,
    pub messages_dropped: u64,
    pub intake_stalls: u64,
    pub intake_stalled_us: u64,
    pub messages_not_acked: u64,
    pub records_retried: u64,
    pub acks_sent: u64,
    pub oversize_messages: u64,
    pub reloads: u64,
    pub reload_failures: u64,
    pub device_id_regex: u64,
    pub device_id_fallback: u64,
    pub device_id_default: u64,
}

impl Metrics {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            messages_received: self.messages_received.load(Relaxed),
            messages_unrouted: self.messages_unrouted.load(Relaxed),
            records_enqueued: self.records_enqueued.load(Relaxed),
            records_delivered: self.records_delivered.load(Relaxed),
            records_failed: self.records_failed.load(Relaxed),
            dead_letters_delivered: self.dead_letters_delivered.load(Relaxed),
            messages_dropped: self.dropped.iter().map(|d| d.load(Relaxed)).sum(),
            intake_stalls: self.intake_stalls.load(Relaxed),
            intake_stalled_us: self.intake_stalled_us.load(Relaxed),
            messages_not_acked: self.messages_not_acked.load(Relaxed),
            records_retried: self.records_retried.load(Relaxed),
            acks_sent: self.acks_sent.load(Relaxed),
            oversize_messages: self.oversize_messages.load(Relaxed),
            reloads: self.reloads.load(Relaxed),
            reload_failures: self.reload_failures.load(Relaxed),
            device_id_regex: self.device_id_regex.load(Relaxed),
            device_id_fallback: self.device_id_fallback.load(Relaxed),
            device_id_default: self.device_id_default.load(Relaxed),
        }
    }

    pub fn device_id(&self, source: DeviceIdSource) {
        match source {
            DeviceIdSource::Regex => &self.device_id_regex,
            DeviceIdSource::Fallback => &self.device_id_fallback,
            DeviceIdSource::Default => &self.device_id_default,
        }
        .fetch_add(1, Relaxed);
    }

    pub fn mqtt_connected(&self, broker: &str, session_present: bool) {
        self.mqtt_connected.store(true, Relaxed);
        self.mqtt_connects.fetch_add(1, Relaxed);
        tracing::info!(broker, session_present, "connected to the MQTT broker");
    }

    pub fn mqtt_connection_error(&self, broker: &str, error: &dyn std::error::Error, attempt: u32, retry_in: Duration) {
        let was_connected = self.mqtt_connected.swap(false, Relaxed);
        self.mqtt_connection_errors.fetch_add(1, Relaxed);
        let retry_in_ms = retry_in.as_millis() as u64;
        if was_connected {
            tracing::error!(broker, error = %error, retry_in_ms, "lost the connection to the MQTT broker; reconnecting");
        } else {
            tracing::error!(broker, error = %error, attempt, retry_in_ms, "cannot connect to the MQTT broker; retrying");
        }
    }

    pub fn message_received(&self, topic: &str, qos: u8, bytes: usize) {
        self.messages_received.fetch_add(1, Relaxed);
        tracing::debug!(topic, qos, bytes, "message received");
    }

    /// A message no route wants (a wider subscription, or a session that kept an old one). Warned about
    /// at most once a minute, counted always.
    pub fn message_unrouted(&self, topic: &str) {
        let n = self.messages_unrouted.fetch_add(1, Relaxed) + 1;
        if once_a_minute(&self.unrouted_warned) {
            tracing::warn!(topic, total_unrouted = n, "message matches no route; dropped (warned at most once a minute)");
        } else {
            tracing::debug!(topic, "message matches no route; dropped");
        }
    }

    /// Counts a failed reload and returns the total so far.
    pub fn reload_failed(&self) -> u64 {
        self.reload_failures.fetch_add(1, Relaxed) + 1
    }

    /// A message dropped for `reason`; counted, and logged at DEBUG (the shutdown summary has the count).
    pub fn message_dropped(&self, reason: DropReason, topic: &str) {
        self.dropped[reason as usize].fetch_add(1, Relaxed);
        match reason {
            DropReason::Shutdown => tracing::debug!(topic, reason = reason.as_str(), "message arrived after shutdown began; not taken"),
        }
    }

    /// Reading from MQTT paused: the intake is full because Kafka (or the pipeline) is behind. Logged at
    /// most once a minute; the broker holds the messages meanwhile.
    pub fn intake_stalled(&self, buffered_bytes: usize) {
        let n = self.intake_stalls.fetch_add(1, Relaxed) + 1;
        if once_a_minute(&self.stall_logged) {
            tracing::info!(buffered_bytes, pauses = n, "intake full: pausing reads from MQTT so the broker holds the rest (Kafka is slower than MQTT; logged at most once a minute)");
        }
    }

    pub fn intake_resumed(&self, after: Duration) {
        self.intake_stalled_us.fetch_add(after.as_micros() as u64, Relaxed);
    }

    pub fn dead_lettered(&self, route: &str, topic: &str, device_id: &str, dead_letter_topic: &str, reason: &str) {
        self.dead_letters_enqueued.fetch_add(1, Relaxed);
        tracing::warn!(route, topic, device_id, dead_letter_topic, reason, "message sent to the dead-letter topic");
    }

    pub fn record_delivered(&self, dead_letter: bool, route: &str, partition: i32, offset: i64) {
        if dead_letter {
            self.dead_letters_delivered.fetch_add(1, Relaxed);
        } else {
            self.records_delivered.fetch_add(1, Relaxed);
        }
        tracing::trace!(route, partition, offset, "record delivered");
    }

    /// A record Kafka did not take that will be produced again.
    pub fn record_retry(&self, route: &str, topic: &str, device_id: &str, error: &dyn std::error::Error) {
        self.records_retried.fetch_add(1, Relaxed);
        tracing::warn!(route, topic, device_id, error = %error, "record not delivered; producing it again");
    }

    /// A QoS 1/2 message the gateway gave up on without acknowledging it (the broker sends it again).
    pub fn message_not_acked(&self, seq: u64) {
        self.messages_not_acked.fetch_add(1, Relaxed);
        tracing::error!(seq, "message not acknowledged: a record of it could not be delivered; the broker sends it again after a reconnect");
    }

    pub fn record_failed(&self, route: &str, topic: &str, device_id: &str, error: &dyn std::error::Error) {
        self.records_failed.fetch_add(1, Relaxed);
        tracing::error!(route, topic, device_id, error = %error, "record could not be delivered to Kafka");
    }
}

/// True at most once a minute per `last`: for WARNs that could otherwise flood the log.
fn once_a_minute(last: &Mutex<Option<Instant>>) -> bool {
    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
        *last = Some(Instant::now());
        true
    } else {
        false
    }
}

/// Logs the counters and rates since the previous line, as the spec's "metrics available via logs".
pub fn log_stats(now: Snapshot, before: Snapshot, elapsed: Duration, metrics: &Metrics) {
    let secs = elapsed.as_secs_f64().max(0.001);
    let ids = now.device_id_regex + now.device_id_fallback + now.device_id_default;
    let rate = |n: u64, d: u64| if d == 0 { 100.0 } else { (n as f64 * 1000.0 / d as f64).round() / 10.0 };
    let delivered = now.records_delivered + now.dead_letters_delivered;
    tracing::info!(
        mqtt_connected = metrics.mqtt_connected.load(Relaxed),
        messages_per_sec = ((now.messages_received - before.messages_received) as f64 / secs * 10.0).round() / 10.0,
        messages_received = now.messages_received,
        messages_unrouted = now.messages_unrouted,
        records_delivered = now.records_delivered,
        dead_letters_delivered = now.dead_letters_delivered,
        records_failed = now.records_failed,
        messages_dropped = now.messages_dropped,
        intake_pauses = now.intake_stalls,
        intake_paused_ms = now.intake_stalled_us / 1000,
        messages_not_acked = now.messages_not_acked,
        records_retried = now.records_retried,
        acks_sent = now.acks_sent,
        oversize_messages = now.oversize_messages,
        reloads = now.reloads,
        reload_failures = now.reload_failures,
        delivery_success_pct = rate(delivered, delivered + now.records_failed),
        device_id_regex_pct = rate(now.device_id_regex, ids),
        device_id_default = now.device_id_default,
        "statistics"
    );
}
