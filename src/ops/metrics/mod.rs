//! Counters, and the one function per notable event that both logs it and counts it, so that logs and
//! numbers never disagree. The statistics log line ([`log_stats`]) and `/metrics` ([`exposition`]) read
//! the same counters.
//!
//! Counting costs an atomic add on the message path, nothing more: per-route counters hang off the
//! route itself ([`routes`]), and everything else is read only when someone looks.

pub mod downlinks;
pub mod exposition;
pub mod routes;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use crate::core::envelope::DeadLetterReason;
use crate::core::routing::{DeviceIdSource, Route};
use crate::ops::diagnosis::Diagnosis;
use crate::ops::health::Health;
pub use routes::{RouteRegistry, RouteStats};

#[derive(Debug, Default)]
pub struct Metrics {
    pub mqtt_connected: AtomicBool,
    pub mqtt_connects: AtomicU64,
    pub mqtt_reconnects: AtomicU64,
    pub mqtt_connection_errors: AtomicU64,
    /// Messages received, by QoS.
    pub messages_received: [AtomicU64; 3],
    pub messages_unrouted: AtomicU64,
    pub records_enqueued: AtomicU64,
    /// Records written to the disk spool, read back from it, dropped from it (`when_full: drop_oldest`),
    /// found unreadable in it; and its disk errors.
    pub spooled: AtomicU64,
    pub replayed: AtomicU64,
    pub spool_dropped: AtomicU64,
    pub spool_unreadable: AtomicU64,
    pub spool_errors: AtomicU64,
    /// Bytes found damaged in the spool at start (a torn tail, corrupt segments) and skipped.
    pub spool_damaged_bytes: AtomicU64,
    /// Kafka producers swapped in for new settings, and new settings refused (the old producer stayed).
    pub kafka_swaps: AtomicU64,
    pub kafka_swaps_refused: AtomicU64,
    /// MQTT connections switched to new settings, and new settings refused (the old ones came back).
    pub mqtt_switches: AtomicU64,
    pub mqtt_switches_refused: AtomicU64,
    /// When the oldest record read back from the spool and not yet in Kafka was received from MQTT
    /// (Unix milliseconds; 0: none).
    pub spool_oldest_ms: AtomicU64,
    /// The spool's size, read at scrape time; unset without `spool.dir`.
    spool_size: OnceLock<SpoolSize>,
    /// Times a record found librdkafka's queue full and waited (counted with each warning).
    pub producer_queue_full: AtomicU64,
    pub subscriptions_rejected: AtomicU64,
    pub reloads: AtomicU64,
    /// The route set in effect: 1 at start, one more per reload that changed a route.
    pub config_generation: AtomicU64,
    /// When the route set in effect was loaded (Unix seconds).
    pub config_loaded_at: AtomicU64,
    /// The routes file as it is now was loaded (or is what is in effect); false while it is invalid,
    /// unreadable or gone, however long that lasts.
    pub config_file_valid: AtomicBool,
    /// Messages taken and not settled (the window `mqtt.max_unacked_messages` bounds).
    pub unacked: AtomicU64,
    /// Per-route counters.
    pub routes: RouteRegistry,
    /// Per-downlink counters (Kafka → MQTT).
    pub downlinks: downlinks::DownlinkRegistry,
    /// What `/healthz` and `/readyz` answer from.
    pub health: Health,
    /// Gauges read from their owners at scrape time.
    live: OnceLock<LiveGauges>,
    /// Messages dropped, by [`DropReason`].
    pub dropped: [AtomicU64; DropReason::ALL.len()],
    /// Times reading from MQTT paused because the intake was full, and for how long in total.
    pub intake_stalls: AtomicU64,
    pub intake_stalled_us: AtomicU64,
    pub acks_sent: AtomicU64,
    pub stale_acks_dropped: AtomicU64,
    pub oversize_messages: AtomicU64,
    /// Records skipped because their device belongs to another replica (`replicas.count` > 1).
    pub records_for_other_replicas: AtomicU64,
    pub messages_not_acked: AtomicU64,
    pub reload_failures: AtomicU64,
    /// Requests to the Schema Registry, those that failed (unreachable, refused, an error status), and
    /// the time they took in total (microseconds).
    pub registry_requests: AtomicU64,
    pub registry_errors: AtomicU64,
    pub registry_request_us: AtomicU64,
    /// Records encoded by a registry schema, by [`EncodingKind`](crate::core::encoding::EncodingKind)
    /// (plain JSON stays 0); and those that could not be, by kind and
    /// [`Failure`](crate::core::encoding::Failure).
    pub records_encoded: [AtomicU64; 4],
    pub encoding_failures: [[AtomicU64; 3]; 4],
    /// Records waiting for their route's registry schema to be resolved.
    pub awaiting_schema: AtomicU64,
    unrouted_warned: Mutex<Option<Instant>>,
    stall_logged: Mutex<Option<Instant>>,
    rate_limit_warned: Mutex<Option<Instant>>,
}

/// Gauges whose owners know them best, read when scraped: nothing on the message path updates them.
pub struct LiveGauges {
    /// Records in librdkafka's queue, not yet acknowledged by Kafka.
    pub producer_queue: Box<dyn Fn() -> i64 + Send + Sync>,
    /// Bytes of messages in the intake (MQTT → pipeline).
    pub intake_bytes: Box<dyn Fn() -> i64 + Send + Sync>,
}

/// The disk spool's size, read from its thread's gauges when scraped.
pub struct SpoolSize {
    /// (bytes, records) not yet in Kafka.
    pub held: Box<dyn Fn() -> (u64, u64) + Send + Sync>,
    /// (now, the most since start) records not yet in Kafka whose fsync is still to come.
    pub not_durable: Box<dyn Fn() -> (u64, u64) + Send + Sync>,
    /// `spool.max_bytes` in effect (a reload may change it).
    pub max_bytes: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl std::fmt::Debug for SpoolSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpoolSize")
    }
}

impl std::fmt::Debug for LiveGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveGauges")
    }
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
    pub dead_letters: u64,
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
        let mut s = Snapshot {
            messages_received: self.messages_received.iter().map(|c| c.load(Relaxed)).sum(),
            messages_unrouted: self.messages_unrouted.load(Relaxed),
            records_enqueued: self.records_enqueued.load(Relaxed),
            messages_dropped: self.dropped.iter().map(|d| d.load(Relaxed)).sum(),
            intake_stalls: self.intake_stalls.load(Relaxed),
            intake_stalled_us: self.intake_stalled_us.load(Relaxed),
            messages_not_acked: self.messages_not_acked.load(Relaxed),
            acks_sent: self.acks_sent.load(Relaxed),
            oversize_messages: self.oversize_messages.load(Relaxed),
            reloads: self.reloads.load(Relaxed),
            reload_failures: self.reload_failures.load(Relaxed),
            ..Snapshot::default()
        };
        for r in self.routes.all() {
            s.records_delivered += r.delivered.load(Relaxed);
            s.records_failed += r.failed.load(Relaxed);
            s.records_retried += r.retried.load(Relaxed);
            s.dead_letters_delivered += r.dead_letters_delivered.load(Relaxed);
            s.dead_letters += r.dead_letters.iter().map(|c| c.load(Relaxed)).sum::<u64>();
            s.device_id_regex += r.device_id[0].load(Relaxed);
            s.device_id_fallback += r.device_id[1].load(Relaxed);
            s.device_id_default += r.device_id[2].load(Relaxed);
        }
        s
    }

    /// Sets the gauges read at scrape time (once; later calls are ignored).
    pub fn set_live_gauges(&self, live: LiveGauges) {
        let _ = self.live.set(live);
    }

    pub fn live_gauges(&self) -> Option<&LiveGauges> {
        self.live.get()
    }

    /// Says how to read the spool's size (once, when it is opened).
    pub fn set_spool_size(&self, size: SpoolSize) {
        let _ = self.spool_size.set(size);
    }

    pub fn spool_size(&self) -> Option<&SpoolSize> {
        self.spool_size.get()
    }

    /// A route set was put in effect: the first at start, then each reload that changed a route.
    pub fn routes_loaded(&self, generation: u64) {
        self.config_file_valid.store(true, Relaxed);
        self.config_generation.store(generation, Relaxed);
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        self.config_loaded_at.store(now, Relaxed);
    }

    pub fn device_id(&self, route: &Route, source: DeviceIdSource) {
        route.stats.device_id(source);
    }

    pub fn mqtt_connected(&self, broker: &str, session_present: bool) {
        self.mqtt_connected.store(true, Relaxed);
        if self.mqtt_connects.fetch_add(1, Relaxed) > 0 {
            self.mqtt_reconnects.fetch_add(1, Relaxed);
        }
        tracing::info!(broker, session_present, "connected to the MQTT broker");
    }

    /// The gateway disconnected on purpose (shutdown).
    pub fn mqtt_disconnected(&self) {
        self.mqtt_connected.store(false, Relaxed);
    }

    /// One ERROR line per failed attempt: the broker, what failed, a hint, and when the next attempt is.
    pub fn mqtt_connection_error(
        &self,
        broker: &str,
        error: &dyn std::error::Error,
        diagnosis: &Diagnosis,
        attempt: u32,
        retry_in: Duration,
        was_connected: bool,
    ) {
        self.mqtt_connected.store(false, Relaxed);
        self.mqtt_connection_errors.fetch_add(1, Relaxed);
        let retry_in_ms = retry_in.as_millis() as u64;
        let (what, hint) = (diagnosis.what.as_str(), diagnosis.hint);
        if was_connected {
            tracing::error!(broker, what, hint, error = %error, retry_in_ms, "lost the connection to the MQTT broker; reconnecting");
        } else {
            tracing::error!(broker, what, hint, error = %error, attempt, retry_in_ms, "cannot connect to the MQTT broker; retrying");
        }
    }

    pub fn message_received(&self, topic: &str, qos: u8, bytes: usize) {
        self.messages_received[usize::from(qos.min(2))].fetch_add(1, Relaxed);
        tracing::debug!(topic, qos, bytes, "message received");
    }

    /// A message no route wants (a wider subscription, or a session that kept an old one). Warned about
    /// at most once a minute, counted always.
    pub fn message_unrouted(&self, topic: &str) {
        let n = self.messages_unrouted.fetch_add(1, Relaxed) + 1;
        if once_a_minute(&self.unrouted_warned) {
            tracing::warn!(
                topic,
                total_unrouted = n,
                "message matches no route; dropped (warned at most once a minute)"
            );
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
            DropReason::Shutdown => {
                tracing::debug!(topic, reason = reason.as_str(), "message arrived after shutdown began; not taken")
            }
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

    /// librdkafka's queue has been full for `waited` while a record for `topic` waits for room (the
    /// backpressure reaching Kafka's side). Logged on the first wait and every 10 s of it.
    pub fn producer_queue_full(&self, topic: &str, waited: Duration) {
        self.producer_queue_full.fetch_add(1, Relaxed);
        let waited_ms = waited.as_millis() as u64;
        tracing::warn!(topic, waited_ms, "Kafka producer queue is full; waiting for room (backpressure)");
    }

    pub fn intake_resumed(&self, after: Duration) {
        self.intake_stalled_us.fetch_add(after.as_micros() as u64, Relaxed);
    }

    /// A QoS 0 record whose turn under its route's rate limit was too far away: dropped. Counted per
    /// route; a WARN at most once a minute.
    pub fn rate_limited(&self, route: &Route, topic: &str) {
        let n = route.stats.rate_limited.fetch_add(1, Relaxed) + 1;
        if once_a_minute(&self.rate_limit_warned) {
            tracing::warn!(route = &*route.name, topic, dropped = n, "QoS 0 record dropped: over the route's rate limit for longer than rate_limit.qos0_max_delay_ms (warned at most once a minute)");
        } else {
            tracing::debug!(route = &*route.name, topic, "QoS 0 record dropped: over the route's rate limit");
        }
    }

    pub fn dead_lettered(
        &self,
        route: &Route,
        kind: DeadLetterReason,
        topic: &str,
        device_id: &str,
        dead_letter_topic: &str,
        reason: &str,
    ) {
        route.stats.dead_letter(kind);
        let (route, kind) = (&*route.name, kind.as_str());
        tracing::warn!(
            route,
            topic,
            device_id,
            dead_letter_topic,
            kind,
            reason,
            "message sent to the dead-letter topic"
        );
    }

    /// A record Kafka acknowledged, `latency` after its message arrived.
    pub fn record_delivered(&self, dead_letter: bool, route: &Route, partition: i32, offset: i64, latency: Duration) {
        if dead_letter {
            route.stats.dead_letters_delivered.fetch_add(1, Relaxed);
        } else {
            route.stats.delivered.fetch_add(1, Relaxed);
        }
        route.stats.latency.observe(latency);
        tracing::trace!(route = &*route.name, partition, offset, "record delivered");
    }

    /// A record Kafka did not take that will be produced again.
    pub fn record_retry(&self, route: &Route, topic: &str, device_id: &str, error: &dyn std::error::Error) {
        route.stats.retried.fetch_add(1, Relaxed);
        tracing::warn!(route = &*route.name, topic, device_id, error = %error, "record not delivered; producing it again");
    }

    /// A QoS 1/2 message the gateway gave up on without acknowledging it (the broker sends it again).
    pub fn message_not_acked(&self, seq: u64) {
        self.messages_not_acked.fetch_add(1, Relaxed);
        tracing::error!(seq, "message not acknowledged: a record of it could not be delivered; the broker sends it again after a reconnect");
    }

    pub fn record_failed(&self, route: &Route, topic: &str, device_id: &str, error: &dyn std::error::Error) {
        route.stats.failed.fetch_add(1, Relaxed);
        tracing::error!(route = &*route.name, topic, device_id, error = %error, "record could not be delivered to Kafka");
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
        dead_letters = now.dead_letters,
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
    // One line per downlink: the way back has its own numbers.
    for d in metrics.downlinks.all().iter().filter(|d| d.running.load(Relaxed)) {
        let dead: u64 = d.dead_lettered.iter().map(|c| c.load(Relaxed)).sum();
        tracing::info!(
            downlink = %d.name,
            consumed = d.consumed.load(Relaxed),
            published = d.published.load(Relaxed),
            dead_lettered = dead,
            in_flight = d.in_flight.load(Relaxed),
            lag = d.lag.load(Relaxed),
            paused = d.paused.load(Relaxed),
            mqtt_connected = metrics.downlinks.mqtt_connected.load(Relaxed),
            "downlink statistics"
        );
    }
}
