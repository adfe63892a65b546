//! `check --produce-test`: one real record to each topic the check found writable, with the gateway's
//! own producer properties, and an item per topic with the partition and offset Kafka gave it or why
//! not. Only run when asked: it writes to production topics (marked with [`CHECK_HEADER`]).

use std::sync::PoisonError;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::kafka::{base_config, principal, Probe, CHECK_HEADER, SIDE};
use super::report::Item;
use crate::config::KafkaSettings;

/// One small record to each topic in `topics` with the gateway's own producer properties (bounded by
/// the timeout), marked with the [`CHECK_HEADER`] header; an item per topic with the partition and
/// offset it got, or the error.
pub(super) fn produce_test(settings: &KafkaSettings, topics: &[(String, String)], timeout: Duration) -> Vec<Item> {
    if topics.is_empty() {
        return Vec::new();
    }
    let what = |label: &str| format!("{label} test record");
    let mut cc = base_config(&settings.properties, timeout);
    // A record that cannot be delivered is reported within the timeout instead of retried for ever.
    cc.set("message.timeout.ms", timeout.as_millis().max(1000).to_string());
    let producer: BaseProducer<Probe> = match cc.create_with_context(Probe::default()) {
        Ok(p) => p,
        Err(e) => {
            return topics
                .iter()
                .map(|(_, label)| {
                    Item::fail(
                        SIDE,
                        what(label),
                        format!("cannot create the producer: {}", crate::kafka::creation_error(&e)),
                        "a kafka.properties entry is invalid for a producer",
                    )
                })
                .collect()
        }
    };
    let id = format!(
        "{}-check-{}",
        settings.properties.get("client.id").map(String::as_str).unwrap_or("mqtt-kafka-gateway"),
        std::process::id()
    );
    let at = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default();
    let value =
        serde_json::json!({ "check": "mqtt-kafka-gateway check --produce-test", "client_id": id, "timestamp": at })
            .to_string();
    let mut outcomes: Vec<Option<Result<(i32, i64), String>>> = vec![None; topics.len()];
    for (tag, (name, _)) in topics.iter().enumerate() {
        let headers = OwnedHeaders::new().insert(Header { key: CHECK_HEADER, value: Some(id.as_bytes()) });
        let record: BaseRecord<'_, (), str, usize> =
            BaseRecord::with_opaque_to(name, tag).payload(value.as_str()).headers(headers);
        if let Err((e, _)) = producer.send(record) {
            outcomes[tag] = Some(Err(format!("not queued: {e}")));
        }
    }
    let deadline = Instant::now() + timeout + Duration::from_secs(1);
    while outcomes.iter().any(Option::is_none) && Instant::now() < deadline {
        producer.poll(Duration::from_millis(100));
        for (tag, result) in producer.context().deliveries.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            if let Some(slot) = outcomes.get_mut(tag) {
                *slot = Some(result.map_err(|e| delivery_error(&e)));
            }
        }
    }
    let items = topics
        .iter()
        .zip(outcomes)
        .map(|((name, label), outcome)| match outcome {
            Some(Ok((partition, offset))) => Item::ok(SIDE, what(label), format!("written to partition {partition} at offset {offset}")),
            Some(Err(e)) => Item::fail(SIDE, what(label), e, format!("the Kafka ACLs must allow {} Write on topic \"{name}\" (and IdempotentWrite on the cluster for older brokers)", principal(&settings.properties))),
            None => Item::fail(SIDE, what(label), format!("no delivery report within {}s", timeout.as_secs_f64()), "the brokers accepted the connection but did not acknowledge the record; check their health and the topic's min.insync.replicas"),
        })
        .collect();
    // Dropping the producer purges what is left, waiting for it briefly.
    drop(producer);
    items
}

fn delivery_error(e: &KafkaError) -> String {
    match e.rdkafka_error_code() {
        Some(code) => format!("refused: {code} ({code:?})"),
        None => format!("refused: {e}"),
    }
}
