//! Settling what Kafka reports: a delivered record counts towards its message, a failed one is
//! dead-lettered if Kafka will never take it and produced again otherwise (on a timer heap, in the order
//! the failures came), and a message whose records are all settled gets its ack, in arrival order.

use std::cmp::Reverse;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::Producer as _;
use tokio_util::sync::CancellationToken;

use super::engine::Engine;
use crate::backoff::Backoff;
use crate::envelope::{DeadLetterReason, HEADER_DLQ_REASON};
use crate::health::Loop;
use crate::kafka;
use crate::kafka::reports::{self, Failure};

/// A record to produce again (after a failed delivery) or to produce as a dead letter, when due.
pub(super) struct Retry {
    pub(super) due: tokio::time::Instant,
    /// Insertion order, so that records due at the same time go out in the order they failed.
    seq: u64,
    record: u32,
    topic: String,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: OwnedHeaders,
}

impl PartialEq for Retry {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Retry {}
impl PartialOrd for Retry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Retry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

impl Engine {
    /// Settles what the delivery reports so far say.
    pub(super) fn take_reports(&mut self) {
        let mut reports = std::mem::take(&mut self.reports);
        self.producer.context().reports.take(&mut reports);
        // One clock read per batch, for the latency of every record in it.
        let now = if reports.is_empty() { UNIX_EPOCH } else { SystemTime::now() };
        for report in reports.drain(..) {
            self.report(report, now);
        }
        self.reports = reports;
        self.send_due_acks();
    }

    /// One record's fate. A record that failed is dead-lettered if Kafka will never take it, and
    /// produced again otherwise. For QoS 1/2 this goes on until it succeeds (or the gateway stops): the
    /// message is not acknowledged before, so nothing is lost, and the stall shows in the logs. For QoS 0
    /// a second failure is counted and logged, and the record given up.
    fn report(&mut self, report: reports::Report, now: SystemTime) {
        let tag = report.tag as u32;
        let Some(&entry) = self.records.get(tag) else { return };
        let Some(message) = self.messages.get(entry.message) else {
            self.records.remove(tag);
            return;
        };
        let Failure { error, record } = match report.result {
            Ok((partition, offset)) => {
                let route = message.inbound.routes.route(entry.route);
                let latency = now.duration_since(message.inbound.received_at).unwrap_or_default();
                self.metrics.record_delivered(entry.dead_letter, route, partition, offset, latency);
                self.records.remove(tag);
                self.settle_record_of(entry.message, true);
                return;
            }
            Err(failure) => failure,
        };
        // The rare path: the table is held apart from `self` while the record is dealt with.
        let table = message.inbound.routes.clone();
        let route = table.route(entry.route);
        let qos = message.inbound.qos;
        let (device_id, _) = route.device_id.extract(&message.inbound.topic);
        let device_id = device_id.to_string();
        let payload = message.inbound.payload.clone();
        let topic = record.topic().to_string();
        let mut record = record;
        let headers = record.detach_headers().unwrap_or_default();
        if kafka::is_fatal(&error) {
            self.metrics.record_failed(route, &topic, &device_id, &error);
            self.records.remove(tag);
            self.settle_record_of(entry.message, false);
        } else if kafka::is_permanent(&error) && !entry.dead_letter {
            let reason = format!("Kafka refused the record: {error}");
            self.metrics.dead_lettered(
                route,
                DeadLetterReason::KafkaRefused,
                &topic,
                &device_id,
                &route.dead_letter_topic,
                &reason,
            );
            let headers = headers.insert(Header { key: HEADER_DLQ_REASON, value: Some(reason.as_bytes()) });
            if let Some(e) = self.records.get_mut(tag) {
                e.dead_letter = true;
            }
            self.schedule(
                tag,
                Duration::ZERO,
                route.dead_letter_topic.clone(),
                Some(device_id.into_bytes()),
                payload.to_vec(),
                headers,
            );
        } else if kafka::is_permanent(&error) && kafka::is_too_large(&error) && !entry.truncated {
            // The dead letter itself was too large: keep its head.
            let (cut, headers) = kafka::truncated(&payload, headers);
            let cut = cut.to_vec();
            if let Some(e) = self.records.get_mut(tag) {
                e.truncated = true;
            }
            self.schedule(tag, Duration::ZERO, topic, Some(device_id.into_bytes()), cut, headers);
        } else if kafka::is_permanent(&error) || (qos == 0 && entry.attempt > 0) {
            // A dead letter Kafka will not take either, or a QoS 0 record failing twice: rejected,
            // counted and logged; settled, so the messages after it are not held up.
            self.metrics.record_failed(route, &topic, &device_id, &error);
            self.records.remove(tag);
            self.settle_record_of(entry.message, true);
        } else {
            self.metrics.record_retry(route, &topic, &device_id, &error);
            let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
            let mut delay = backoff.next_delay();
            for _ in 0..entry.attempt.min(16) {
                delay = backoff.next_delay();
            }
            if let Some(e) = self.records.get_mut(tag) {
                e.attempt += 1;
            }
            let key = record.key().map(<[u8]>::to_vec);
            let value = record.payload().unwrap_or_default().to_vec();
            self.schedule(tag, delay, topic, key, value, headers);
        }
    }

    fn schedule(
        &mut self,
        record: u32,
        after: Duration,
        topic: String,
        key: Option<Vec<u8>>,
        value: Vec<u8>,
        headers: OwnedHeaders,
    ) {
        self.retry_seq += 1;
        let due = tokio::time::Instant::now() + after;
        self.retries.push(Reverse(Retry { due, seq: self.retry_seq, record, topic, key, value, headers }));
    }

    /// Produces the records whose retry is due, under their old tags.
    pub(super) async fn send_due_retries(&mut self, give_up: &CancellationToken) -> Result<(), ()> {
        let now = tokio::time::Instant::now();
        while self.retries.peek().is_some_and(|r| r.0.due <= now) {
            let Some(Reverse(retry)) = self.retries.pop() else { break };
            let Some(&entry) = self.records.get(retry.record) else { continue };
            let sent = loop {
                match kafka::send(
                    &self.producer,
                    &retry.topic,
                    retry.key.as_deref(),
                    &retry.value,
                    retry.headers.clone(),
                    retry.record as usize,
                ) {
                    Err((e, _)) if kafka::is_queue_full(&e) => {
                        // Waiting for room is the engine at work: it stays live for /healthz.
                        self.metrics.health.beat(Loop::Engine);
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                            _ = give_up.cancelled() => return Err(()),
                        }
                    }
                    other => break other.map_err(|(e, _)| e),
                }
            };
            let Err(e) = sent else {
                self.metrics.records_enqueued.fetch_add(1, Relaxed);
                continue;
            };
            // Refused at once: dead-letter it now if it was a record and the refusal is about the record
            // (the topic is gone, say); otherwise it is over for this record.
            let Some(message) = self.messages.get(entry.message) else { continue };
            let table = message.inbound.routes.clone();
            let route = table.route(entry.route);
            let qos = message.inbound.qos;
            let (device_id, _) = route.device_id.extract(&message.inbound.topic);
            let device_id = device_id.to_string();
            if !entry.dead_letter && kafka::is_permanent(&e) {
                let reason = format!("Kafka refused the record: {e}");
                self.metrics.dead_lettered(
                    route,
                    DeadLetterReason::KafkaRefused,
                    &retry.topic,
                    &device_id,
                    &route.dead_letter_topic,
                    &reason,
                );
                let headers = retry.headers.insert(Header { key: HEADER_DLQ_REASON, value: Some(reason.as_bytes()) });
                if let Some(r) = self.records.get_mut(retry.record) {
                    r.dead_letter = true;
                }
                let payload = message.inbound.payload.to_vec();
                self.schedule(
                    retry.record,
                    Duration::ZERO,
                    route.dead_letter_topic.clone(),
                    Some(device_id.into_bytes()),
                    payload,
                    headers,
                );
            } else {
                self.metrics.record_failed(route, &retry.topic, &device_id, &e);
                self.records.remove(retry.record);
                self.settle_record_of(entry.message, kafka::is_permanent(&e) || qos == 0);
            }
        }
        self.send_due_acks();
        Ok(())
    }

    /// One record of message `slot` (or its production hold) is settled.
    pub(super) fn settle_record_of(&mut self, slot: u32, ok: bool) {
        let Some(message) = self.messages.get_mut(slot) else { return };
        if !message.progress.settle_one(ok) {
            return;
        }
        let Some(done) = self.messages.remove(slot) else { return };
        if let Some(seq) = done.ack {
            if done.progress.ackable {
                self.sequencer.complete(seq);
            } else {
                self.metrics.message_not_acked(seq);
                self.sequencer.abandon(seq);
            }
        }
    }

    /// Hands the acks now due to the MQTT side, in arrival order. After a fatal producer error nothing
    /// more is acknowledged: whatever is in Kafka or not, the broker delivers it again to the restarted
    /// gateway.
    pub(super) fn send_due_acks(&mut self) {
        let due = self.sequencer.drain(self.connection.load(Relaxed));
        if self.fatal.is_cancelled() {
            return;
        }
        for ack in due {
            let _ = self.acks.send(ack);
        }
    }
}
