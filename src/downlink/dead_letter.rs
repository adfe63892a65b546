//! The downlinks' dead-letter writes: a record that cannot be published goes to its downlink's
//! dead-letter topic with the original key, value and headers, plus the reason and where it came from.
//! Its offset is done only once Kafka has the dead-letter record; a write Kafka refuses is tried again
//! (counted and logged), so the partition's commit waits rather than anything being lost.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use super::publisher::Settle;
use crate::config::KafkaSettings;

fn config(settings: &KafkaSettings) -> ClientConfig {
    let mut cc = ClientConfig::new();
    for (k, v) in &settings.properties {
        cc.set(k, v);
    }
    cc
}
use crate::core::downlink::{dead_letter_headers, Record, Unpublishable};
use crate::kafka;

/// A producer for dead-letter records, with the gateway's Kafka settings, made at the first dead letter:
/// librdkafka's client (and the polling thread rdkafka's `FutureProducer` keeps) costs a little CPU even
/// idle, and most downlinks never dead-letter anything.
#[derive(Clone)]
pub struct DeadLetters {
    settings: Arc<KafkaSettings>,
    producer: Arc<std::sync::OnceLock<Result<FutureProducer, String>>>,
}

impl DeadLetters {
    /// For `settings` (the gateway's own, which made its producer already).
    pub fn new(settings: &KafkaSettings) -> Self {
        Self { settings: Arc::new(settings.clone()), producer: Arc::default() }
    }

    fn producer(&self) -> Result<FutureProducer, String> {
        self.producer.get_or_init(|| config(&self.settings).create().map_err(|e| kafka::creation_error(&e))).clone()
    }

    /// Writes `record`'s dead-letter record to `topic` in the background; `ticket` is done once Kafka has it.
    pub fn send(&self, topic: String, downlink: Arc<str>, record: Record, why: Unpublishable, settle: Settle) {
        let producer = self.producer();
        tokio::spawn(async move {
            let producer = match producer {
                Ok(p) => p,
                Err(e) => {
                    settle.stats.dead_letter_errors.fetch_add(1, Relaxed);
                    tracing::error!(downlink = %downlink, error = %e, "cannot make the dead-letter producer; the record is read again after a restart");
                    return;
                }
            };
            let mut headers = OwnedHeaders::new();
            for (name, value) in dead_letter_headers(&downlink, &record, &why) {
                headers = headers.insert(Header { key: &name, value: value.as_deref() });
            }
            let mut delay = Duration::from_millis(500);
            loop {
                let mut r = FutureRecord::to(&topic).payload(&record.payload[..]).headers(headers.clone());
                if let Some(k) = &record.key {
                    r = r.key(&k[..]);
                }
                match producer.send(r, Timeout::Never).await {
                    Ok(_) => break,
                    Err((e, _)) => {
                        settle.stats.dead_letter_errors.fetch_add(1, Relaxed);
                        tracing::error!(downlink = %downlink, topic = %topic, error = %e, "cannot write a dead-letter record; trying again (the partition's commit waits)");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                }
            }
            settle.stats.dead_lettered(why.kind);
            settle.done();
        });
    }
}
