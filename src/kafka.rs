//! The Kafka edge: the rdkafka producer, its logs routed into `tracing`, and enqueueing with
//! backpressure when librdkafka's queue is full.

use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use tokio_util::sync::CancellationToken;

use crate::config::KafkaSettings;
use crate::envelope::Record;

/// Routes librdkafka's own log lines and errors into our log output.
pub struct LogContext;

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
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

    fn error(&self, error: KafkaError, reason: &str) {
        // Broker-down and similar transport errors are retried by librdkafka; they matter to an operator
        // but are not, by themselves, lost messages.
        tracing::error!(target: "librdkafka", error = %error, reason, "Kafka client error");
    }
}

pub type GatewayProducer = FutureProducer<LogContext>;

/// Creates the producer. Fails on an invalid librdkafka property, naming it.
pub fn producer(settings: &KafkaSettings) -> Result<GatewayProducer, KafkaError> {
    let mut cc = ClientConfig::new();
    for (k, v) in &settings.properties {
        cc.set(k, v);
    }
    // librdkafka's `debug` property (e.g. `broker,msg`) is only useful with its debug lines let through.
    let debug = settings.properties.get("debug").is_some_and(|d| !d.is_empty());
    cc.set_log_level(if debug { RDKafkaLogLevel::Debug } else { RDKafkaLogLevel::Info });
    cc.create_with_context(LogContext)
}

/// Enqueues `record`. When librdkafka's queue is full, waits for room (the caller stops reading from
/// MQTT meanwhile: that is the backpressure). Any other error is returned at once.
pub async fn enqueue(producer: &GatewayProducer, record: &Record) -> Result<DeliveryFuture, KafkaError> {
    enqueue_parts(producer, &record.topic, record.key.as_deref(), &record.value, owned_headers(&record.headers)).await
}

pub fn owned_headers(headers: &[(&'static str, Vec<u8>)]) -> OwnedHeaders {
    let mut owned = OwnedHeaders::new_with_capacity(headers.len());
    for (k, v) in headers {
        owned = owned.insert(Header { key: k, value: Some(v.as_slice()) });
    }
    owned
}

/// How much of a payload a dead letter keeps when Kafka refuses the whole one as too large.
pub const TRUNCATED_DEAD_LETTER_BYTES: usize = 64 * 1024;

/// Enqueues a dead letter carrying `payload`. If Kafka refuses it as too large (the payload itself is
/// what was too large), the dead letter keeps the first [`TRUNCATED_DEAD_LETTER_BYTES`] and says so in a
/// `dlq_truncated_from` header with the original size: the reason and the context still arrive.
pub async fn enqueue_dead_letter(
    producer: &GatewayProducer,
    topic: &str,
    key: &[u8],
    payload: &[u8],
    headers: OwnedHeaders,
    truncate: bool,
) -> Result<DeliveryFuture, KafkaError> {
    if !truncate {
        match enqueue_parts(producer, topic, Some(key), payload, headers.clone()).await {
            Err(e) if is_too_large(&e) => {}
            other => return other,
        }
    }
    let size = payload.len().to_string();
    let headers = headers.insert(Header { key: "dlq_truncated_from", value: Some(size.as_bytes()) });
    let cut = &payload[..payload.len().min(TRUNCATED_DEAD_LETTER_BYTES)];
    enqueue_parts(producer, topic, Some(key), cut, headers).await
}

/// The producer is dead (see [`watch_fatal`]): nothing it refuses now says anything about the record.
pub fn is_fatal(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal)
}

pub fn is_too_large(e: &KafkaError) -> bool {
    matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize))
}

/// [`enqueue`] from parts, for records rebuilt from a failed delivery.
pub async fn enqueue_parts(
    producer: &GatewayProducer,
    topic: &str,
    key: Option<&[u8]>,
    value: &[u8],
    headers: OwnedHeaders,
) -> Result<DeliveryFuture, KafkaError> {
    let started = std::time::Instant::now();
    let mut next_warning = Duration::ZERO;
    loop {
        let mut fr = FutureRecord::to(topic).payload(value).headers(headers.clone());
        if let Some(key) = key {
            fr = fr.key(key);
        }
        match producer.send_result(fr) {
            Ok(f) => return Ok(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                let waited = started.elapsed();
                if waited >= next_warning {
                    next_warning = waited + Duration::from_secs(10);
                    tracing::warn!(topic, waited_ms = waited.as_millis() as u64, "Kafka producer queue is full; waiting for room (backpressure)");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Errors that producing the same record again cannot fix: the record goes to the dead-letter topic.
/// Everything else (brokers down, leader changes, timeouts) is worth retrying.
pub fn is_permanent(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        e.rdkafka_error_code(),
        Some(
            MessageSizeTooLarge
                | InvalidMessageSize
                | InvalidMessage
                | InvalidRecord
                | InvalidTopic
                | UnknownTopic
                | TopicAuthorizationFailed
                | ClusterAuthorizationFailed
                | PolicyViolation
        )
    )
}

/// Raises `fatal` once the producer reports a fatal error: the idempotent producer can no longer keep
/// its guarantees (order, no duplicates) and must be replaced. librdkafka reports the error through the
/// error callback with its underlying code, so the producer's fatal state is checked instead.
pub async fn watch_fatal(producer: &GatewayProducer, fatal: CancellationToken, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.cancelled() => return,
        }
        if let Some((code, reason)) = producer.client().fatal_error() {
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
        let producer = producer(&settings).expect("producer");
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
        tokio::time::timeout(Duration::from_secs(10), watch_fatal(&producer, fatal.clone(), CancellationToken::new()))
            .await
            .expect("the fatal error is noticed");
        assert!(fatal.is_cancelled());
    }
}
