//! The Kafka edge: the producer, its logs routed into `tracing`, its delivery reports collected in
//! batches (see [`reports`]), and how its errors are sorted (retry, dead-letter, fatal).
//!
//! Records are sent with a tag (a `usize` the pipeline chooses) and come back as [`reports::DeliveryReport`]s
//! with the same tag, served on the pipeline's thread when [`events::Events`] says so: no future or
//! channel per record, no thread of ours in between.

pub mod diagnose;
pub mod events;
pub mod reports;
pub mod stats;

/// How often librdkafka reports its statistics (the brokers' states readiness needs) unless
/// `statistics.interval.ms` is configured.
pub const DEFAULT_STATISTICS_INTERVAL_MS: u32 = 2000;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use tokio_util::sync::CancellationToken;

use crate::config::KafkaSettings;
use crate::ops::metrics::Metrics;
use reports::Reports;

/// Routes librdkafka's own log lines and errors into our log output, its delivery reports to
/// [`Reports`], and the broker states of its statistics to readiness.
pub struct GatewayContext {
    pub reports: Reports,
    /// Where the gateway's readiness learns how many brokers are up; `None` for a producer of `check`.
    pub metrics: Option<Arc<Metrics>>,
    /// `bootstrap.servers`, to name them in errors.
    pub bootstrap_servers: String,
    last_error: LastError,
    /// False while the producer is a candidate for new settings, being checked: its errors are warnings
    /// about the candidate and its statistics say nothing about the producer in use.
    live: std::sync::atomic::AtomicBool,
    /// A candidate's last error, explained.
    candidate_error: std::sync::Mutex<Option<String>>,
}

impl GatewayContext {
    /// The producer becomes the one in use (or stops being it): readiness follows its statistics.
    pub fn set_live(&self, live: bool) {
        self.live.store(live, Relaxed);
    }

    fn is_live(&self) -> bool {
        self.live.load(Relaxed)
    }

    /// A candidate's last error, explained where it can be: why it is refused.
    fn candidate_error(&self) -> Option<String> {
        self.candidate_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The last error event's text and when it came, to log an immediate repeat at DEBUG only.
#[derive(Default)]
struct LastError(std::sync::Mutex<Option<(String, std::time::Instant)>>);

impl LastError {
    fn repeats(&self, reason: &str) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        let repeat = matches!(&*last, Some((r, at)) if r == reason && now.duration_since(*at) < Duration::from_secs(1));
        *last = Some((reason.to_string(), now));
        repeat
    }
}

/// One of librdkafka's log lines, into ours. A failed connection (facility FAIL) also arrives as an
/// error event, which the context's `error` logs once, explained: the log line would say it a second time.
pub fn log(level: RDKafkaLogLevel, fac: &str, message: &str) {
    let level = if fac == "FAIL" { RDKafkaLogLevel::Debug } else { level };
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", facility = fac, "{message}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility = fac, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", facility = fac, "{message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility = fac, "{message}"),
    }
}

/// Properties that only a producer reads: a consumer made from the same settings leaves them out
/// (librdkafka would warn about each).
const PRODUCER_ONLY: &[&str] = &[
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "partitioner",
    "compression.type",
    "compression.codec",
    "compression.level",
    "linger.ms",
    "queue.buffering.max.ms",
    "batch.size",
    "batch.num.messages",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.backpressure.threshold",
    "retries",
    "message.send.max.retries",
    "transactional.id",
    "transaction.timeout.ms",
    "enable.gapless.guarantee",
    "request.timeout.ms",
    "sticky.partitioning.linger.ms",
    "queuing.strategy",
    "produce.offset.report",
];

/// The settings' properties that a consumer reads too: the brokers, security, client id, the user's
/// own (but the producer's).
pub fn consumer_properties(settings: &KafkaSettings) -> impl Iterator<Item = (&str, &str)> {
    settings
        .properties
        .iter()
        .filter(|(k, _)| !PRODUCER_ONLY.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
}

impl ClientContext for GatewayContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log(level, fac, message)
    }

    /// librdkafka's statistics (every `statistics.interval.ms`): only the brokers' states are read.
    fn stats_raw(&self, statistics: &[u8]) {
        let Some(metrics) = &self.metrics else { return };
        if !self.is_live() {
            return;
        }
        match stats::brokers_up(statistics) {
            Ok(up) => {
                metrics.health.kafka_brokers_up.store(up, Relaxed);
                if up > 0 {
                    metrics.health.set_kafka_error(None);
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot read librdkafka's statistics"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka can raise one failure twice in a row; the second says nothing new.
        if self.last_error.repeats(reason) {
            tracing::debug!(target: "librdkafka", error = %error, reason, "Kafka client error (again)");
            return;
        }
        if !self.is_live() {
            let servers = self.bootstrap_servers.as_str();
            let explained = match diagnose::diagnose(&error, reason) {
                Some(d) => format!("{}: {reason}", d.what),
                None => reason.to_string(),
            };
            tracing::warn!(target: "librdkafka", brokers = servers, error = explained.as_str(), "checking the new Kafka settings");
            *self.candidate_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(explained);
            return;
        }
        // Broker-down and similar transport errors are retried by librdkafka; they matter to an operator
        // but are not, by themselves, lost messages.
        match diagnose::diagnose(&error, reason) {
            Some(d) => {
                let servers = self.bootstrap_servers.as_str();
                tracing::error!(target: "librdkafka", brokers = servers, what = d.what.as_str(), hint = d.hint, reason, "cannot connect to Kafka; librdkafka retries");
                if let Some(m) = &self.metrics {
                    m.health.set_kafka_error(Some(d.what));
                }
            }
            None => tracing::error!(target: "librdkafka", error = %error, reason, "Kafka client error"),
        }
    }
}

impl ProducerContext for GatewayContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: usize) {
        self.reports.push(result, tag);
    }
}

pub type GatewayProducer = BaseProducer<GatewayContext>;

/// Creates the producer. Fails on an invalid librdkafka property, naming it.
pub fn producer(settings: &KafkaSettings) -> Result<GatewayProducer, KafkaError> {
    producer_reporting(settings, None)
}

/// Creates the gateway's producer: as [`producer`], and its statistics tell `metrics` how many brokers
/// are up (every `statistics.interval.ms`, [`DEFAULT_STATISTICS_INTERVAL_MS`] unless configured; 0 turns
/// them off, and readiness then does not check Kafka).
pub fn producer_reporting(
    settings: &KafkaSettings,
    metrics: Option<Arc<Metrics>>,
) -> Result<GatewayProducer, KafkaError> {
    let mut cc = ClientConfig::new();
    for (k, v) in &settings.properties {
        cc.set(k, v);
    }
    // librdkafka's `debug` property (e.g. `broker,msg`) is only useful with its debug lines let through.
    let debug = settings.properties.get("debug").is_some_and(|d| !d.is_empty());
    cc.set_log_level(if debug { RDKafkaLogLevel::Debug } else { RDKafkaLogLevel::Info });
    if let Some(m) = &metrics {
        let interval = settings.properties.get("statistics.interval.ms").map(String::as_str);
        match interval {
            None => {
                cc.set("statistics.interval.ms", DEFAULT_STATISTICS_INTERVAL_MS.to_string());
            }
            Some("0") => {
                m.health.kafka_checked.store(false, Relaxed);
                tracing::warn!("kafka statistics.interval.ms is 0: readiness cannot see whether a Kafka broker is up and does not check it");
            }
            Some(_) => {}
        }
    }
    let bootstrap_servers =
        settings.properties.get("bootstrap.servers").cloned().unwrap_or_else(|| settings.bootstrap_servers.clone());
    cc.create_with_context(GatewayContext {
        reports: Reports::default(),
        metrics,
        bootstrap_servers,
        last_error: LastError::default(),
        live: std::sync::atomic::AtomicBool::new(true),
        candidate_error: std::sync::Mutex::default(),
    })
}

/// `producer` becomes the one in use, or stops being it (see [`GatewayContext::set_live`]).
pub fn set_live(producer: &GatewayProducer, live: bool) {
    producer.context().set_live(live);
}

/// A producer for new Kafka settings, not in use yet: see [`verify`] and [`GatewayContext::set_live`].
pub fn candidate(settings: &KafkaSettings, metrics: Arc<Metrics>) -> Result<GatewayProducer, String> {
    let producer = producer_reporting(settings, Some(metrics)).map_err(|e| creation_error(&e))?;
    producer.context().set_live(false);
    Ok(producer)
}

/// Whether `producer` reaches and authenticates to its cluster: the cluster's metadata answered within
/// `timeout`. Otherwise why not, in words safe to log (librdkafka's last error, else the request's).
/// Blocking: run it off the runtime.
pub fn verify(producer: &GatewayProducer, timeout: Duration) -> Result<usize, String> {
    let metadata = producer.client().fetch_metadata(None, timeout);
    // Serves the error events that say why a request failed.
    producer.poll(Duration::from_millis(100));
    match metadata {
        Ok(m) if !m.brokers().is_empty() => Ok(m.brokers().len()),
        result => {
            let fetch = match result {
                Ok(_) => "the cluster reported no brokers".to_string(),
                Err(e) => e.to_string(),
            };
            Err(match producer.context().candidate_error() {
                Some(reason) => format!("{reason} ({fetch})"),
                None => fetch,
            })
        }
    }
}

/// Why the producer could not be created, in words safe to log: librdkafka's own text for a bad
/// property repeats its value, which may be a secret under a misspelled name (`sasl.pasword`), so the
/// value is cut out of it.
pub fn creation_error(e: &KafkaError) -> String {
    match e {
        KafkaError::ClientConfig(_, description, key, value) => {
            let description = if value.is_empty() {
                description.clone()
            } else {
                description.replace(value.as_str(), "<value not shown>")
            };
            format!("invalid Kafka property `{key}`: {description}")
        }
        other => other.to_string(),
    }
}

/// Hands one record to librdkafka with `tag`. On failure the headers come back, for another try.
pub fn send(
    producer: &GatewayProducer,
    topic: &str,
    key: Option<&[u8]>,
    value: &[u8],
    headers: OwnedHeaders,
    tag: usize,
) -> Result<(), (KafkaError, OwnedHeaders)> {
    let mut record = BaseRecord::with_opaque_to(topic, tag).payload(value).headers(headers);
    if let Some(key) = key {
        record = record.key(key);
    }
    producer.send(record).map_err(|(e, r)| (e, r.headers.unwrap_or_default()))
}

pub fn owned_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> OwnedHeaders {
    let mut owned = OwnedHeaders::new_with_capacity(8);
    for (key, value) in headers {
        owned = owned.insert(Header { key, value: Some(value) });
    }
    owned
}

/// How much of a payload a dead letter keeps when Kafka refuses the whole one as too large.
pub const TRUNCATED_DEAD_LETTER_BYTES: usize = 64 * 1024;

/// A dead letter's payload cut to [`TRUNCATED_DEAD_LETTER_BYTES`], and its headers saying so
/// (`dlq_truncated_from` with the original size): the reason and the context still arrive.
pub fn truncated(payload: &[u8], headers: OwnedHeaders) -> (&[u8], OwnedHeaders) {
    let size = payload.len().to_string();
    let headers = headers.insert(Header { key: "dlq_truncated_from", value: Some(size.as_bytes()) });
    (&payload[..payload.len().min(TRUNCATED_DEAD_LETTER_BYTES)], headers)
}

/// What a Kafka error says about the record it concerns: the one sorting of errors that the pipeline's
/// failure policy decides from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// librdkafka's queue is full (`queue.buffering.max.*`): wait for room, then hand it over again.
    QueueFull,
    /// The producer is dead (see [`watch_fatal`]): nothing it refuses now says anything about the record.
    Fatal,
    /// Larger than the broker or the producer takes (`message.max.bytes`).
    TooLarge,
    /// Producing the same record again cannot fix it (unknown or invalid topic, not authorized, invalid
    /// record, policy violation).
    Permanent,
    /// Anything else (brokers down, leader changes, timeouts): worth producing again.
    Transient,
    /// Taken back from the producer by the gateway itself ([`purge`]): not a failure of the record.
    TakenBack,
}

/// Sorts `e` (see [`ErrorKind`]).
pub fn classify(e: &KafkaError) -> ErrorKind {
    use RDKafkaErrorCode::*;
    if matches!(e, KafkaError::MessageProduction(QueueFull)) {
        return ErrorKind::QueueFull;
    }
    match e.rdkafka_error_code() {
        Some(Fatal) => ErrorKind::Fatal,
        Some(PurgeQueue | PurgeInflight) => ErrorKind::TakenBack,
        Some(MessageSizeTooLarge | InvalidMessageSize) => ErrorKind::TooLarge,
        Some(
            InvalidMessage
            | InvalidRecord
            | InvalidTopic
            | UnknownTopic
            | TopicAuthorizationFailed
            | ClusterAuthorizationFailed
            | PolicyViolation,
        ) => ErrorKind::Permanent,
        _ => ErrorKind::Transient,
    }
}

/// Takes back the records waiting in librdkafka's queues (not those sent to a broker and unanswered):
/// each comes back as a failed delivery report ([`is_purged`]), in queue order.
pub fn purge_queued(producer: &GatewayProducer) {
    producer.purge(rdkafka::producer::PurgeConfig::default().queue());
}

/// Takes back every record the producer holds, those sent to a broker and unanswered too (which the
/// broker may still have written: a duplicate, never a loss). Each comes back as a failed delivery
/// report ([`is_purged`]).
pub fn purge(producer: &GatewayProducer) {
    producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
}

/// The report of a record taken back by [`purge_queued`] or [`purge`].
pub fn is_purged(e: &KafkaError) -> bool {
    classify(e) == ErrorKind::TakenBack
}

/// Raises `fatal` once the producer reports a fatal error: the idempotent producer can no longer keep
/// its guarantees (order, no duplicates) and must be replaced. librdkafka reports the error through the
/// error callback with its underlying code, so the producer's fatal state is checked instead.
/// `in_use` gives the producer in use (new Kafka settings replace it).
pub async fn watch_fatal(
    in_use: &(dyn Fn() -> Arc<GatewayProducer> + Sync),
    fatal: CancellationToken,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.cancelled() => return,
        }
        if let Some((code, reason)) = in_use().client().fatal_error() {
            tracing::error!(code = ?code, reason, "fatal Kafka producer error: stopping, so that a restart brings a fresh producer; unacknowledged QoS 1/2 messages come again from the broker");
            fatal.cancel();
            return;
        }
    }
}

/// Waits until every queued record is acknowledged or `timeout` passes. Blocking: run it off the runtime.
pub fn flush(producer: &GatewayProducer, timeout: Duration) -> Result<(), KafkaError> {
    producer.flush(timeout)
}

/// Records still queued in librdkafka (not yet acknowledged).
pub fn in_flight(producer: &GatewayProducer) -> i32 {
    producer.in_flight_count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// librdkafka's own fault injection: a fatal error raised on a producer must be noticed.
    #[test]
    fn a_bad_property_is_named_without_its_value() {
        let settings = KafkaSettings {
            bootstrap_servers: "127.0.0.1:9".into(),
            properties: BTreeMap::from([("sasl.pasword".to_string(), "hunter2-secret".to_string())]),
        };
        let Err(e) = producer(&settings) else { panic!("an unknown property must be refused") };
        let text = creation_error(&e);
        assert!(text.contains("sasl.pasword"), "{text}");
        assert!(!text.contains("hunter2-secret"), "{text}");
    }

    #[tokio::test]
    async fn a_fatal_producer_error_is_noticed() {
        let settings = KafkaSettings {
            bootstrap_servers: "127.0.0.1:9".into(),
            properties: BTreeMap::from([
                ("bootstrap.servers".to_string(), "127.0.0.1:9".to_string()),
                ("enable.idempotence".to_string(), "true".to_string()),
            ]),
        };
        let fatal = CancellationToken::new();
        let producer = Arc::new(producer(&settings).expect("producer"));
        let reason = std::ffi::CString::new("injected by a test").unwrap();
        // SAFETY: the pointer is the live producer's own handle and the reason a valid C string.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                producer.client().native_ptr(),
                rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            )
        };
        assert_eq!(err, rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);
        tokio::time::timeout(
            Duration::from_secs(10),
            watch_fatal(&|| producer.clone(), fatal.clone(), CancellationToken::new()),
        )
        .await
        .expect("the fatal error is noticed");
        assert!(fatal.is_cancelled());
    }
}
