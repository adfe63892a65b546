//! The engine: one task that takes messages from the intake, builds their records route by route and
//! hands them to librdkafka under a tag (see [`crate::inflight`]). What Kafka reports back is settled in
//! [`super::settle`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::settle::Retry;
use super::throttled::{Admission, Held};
use crate::ack::{AckSequencer, AckToken};
use crate::config::MqttSettings;
use crate::envelope::{self, DeadLetterReason, Message, Outcome, Payload, HEADER_DLQ_REASON};
use crate::health::{Loop, HEARTBEAT_EVERY};
use crate::inflight::{Progress, RecordEntry, Slab};
use crate::intake::IntakeReceiver;
use crate::kafka::reports;
use crate::kafka::{self, GatewayProducer};
use crate::metrics::Metrics;
use crate::mqtt::Inbound;
use crate::route::Route;
use crate::share::Share;
use crate::throttle::Schedule;

/// A message taken from MQTT and not settled yet.
pub(super) struct InFlight {
    pub(super) inbound: Inbound,
    pub(super) progress: Progress,
    /// Its place in the ack order; `None` for QoS 0 (nothing to acknowledge, so nothing to wait for).
    pub(super) ack: Option<u64>,
}

/// The message `inbound` carries, as the envelope sees it.
pub(super) fn message_of(inbound: &Inbound) -> Message<'_> {
    Message {
        topic: &inbound.topic,
        payload: &inbound.payload,
        qos: inbound.qos,
        retain: inbound.retain,
        received_at: inbound.received_at,
        properties: inbound.properties.as_deref(),
    }
}

/// Why producing a record stopped short.
pub(super) enum SendFailed {
    /// The grace period is over.
    GaveUp,
    Refused(KafkaError),
}

/// The message path, one task: see the module doc.
pub(super) struct Engine {
    /// This replica's share of the devices (`replicas.count` > 1).
    share: Option<Share>,
    pub(super) producer: Arc<GatewayProducer>,
    /// Says when librdkafka has delivery reports, and serves them.
    pub(super) events: kafka::events::Events,
    pub(super) metrics: Arc<Metrics>,
    pub(super) max_payload: usize,
    /// `mqtt.max_unacked_messages`: messages taken and not settled, at most.
    pub(super) window: usize,
    pub(super) messages: Slab<InFlight>,
    /// Records Kafka has not reported on; a record's index here is its delivery tag.
    pub(super) records: Slab<RecordEntry>,
    pub(super) sequencer: AckSequencer,
    pub(super) acks: mpsc::UnboundedSender<AckToken>,
    /// The number of the current MQTT connection (acks of older ones are dropped).
    pub(super) connection: Arc<AtomicU64>,
    pub(super) fatal: CancellationToken,
    pub(super) retries: BinaryHeap<Reverse<Retry>>,
    pub(super) retry_seq: u64,
    /// Records held back by their route's rate limit, and each limited route's schedule.
    pub(super) held: BinaryHeap<Reverse<Held>>,
    pub(super) held_seq: u64,
    pub(super) schedules: HashMap<Arc<str>, Schedule>,
    /// Scratch buffers, kept to allocate nothing per message.
    pub(super) matched: Vec<u32>,
    pub(super) reports: Vec<reports::Report>,
}

/// Messages taken from the intake in one go before the engine looks at reports and timers again.
const BATCH: usize = 256;

impl Engine {
    pub(super) fn new(
        producer: Arc<GatewayProducer>,
        events: kafka::events::Events,
        metrics: Arc<Metrics>,
        mqtt: &MqttSettings,
        acks: mpsc::UnboundedSender<AckToken>,
        connection: Arc<AtomicU64>,
        fatal: CancellationToken,
        share: Option<Share>,
    ) -> Self {
        Self {
            share,
            producer,
            events,
            metrics,
            max_payload: mqtt.max_packet_size,
            window: mqtt.max_unacked_messages,
            messages: Slab::default(),
            records: Slab::default(),
            sequencer: AckSequencer::default(),
            acks,
            connection,
            fatal,
            retries: BinaryHeap::new(),
            retry_seq: 0,
            held: BinaryHeap::new(),
            held_seq: 0,
            schedules: HashMap::new(),
            matched: Vec::new(),
            reports: Vec::new(),
        }
    }

    /// Messages taken and not settled.
    pub(super) fn unsettled(&self) -> usize {
        self.messages.len()
    }

    /// Takes messages until the intake closes (shutdown) and everything taken is settled, or `give_up`.
    pub(super) async fn run(&mut self, mut intake: IntakeReceiver, give_up: &CancellationToken) {
        let mut open = true;
        let mut more_events = self.events.serve();
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT_EVERY, HEARTBEAT_EVERY);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.metrics.unacked.store(self.messages.len() as u64, Relaxed);
            if !open && self.messages.is_empty() {
                return;
            }
            if more_events {
                more_events = self.events.serve();
                self.take_reports();
            }
            let room = open && self.messages.len() < self.window;
            let next_retry = self.retries.peek().map(|r| r.0.due);
            let next_held = self.next_held();
            tokio::select! {
                biased;
                _ = give_up.cancelled() => return,
                _ = heartbeat.tick() => self.metrics.health.beat(Loop::Engine),
                _ = self.events.ready(), if !more_events => {
                    more_events = self.events.serve();
                    self.take_reports();
                }
                _ = tokio::time::sleep_until(next_retry.unwrap_or_else(tokio::time::Instant::now)), if next_retry.is_some() => {
                    if self.send_due_retries(give_up).await.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(next_held.unwrap_or_else(tokio::time::Instant::now)), if next_held.is_some() => {
                    if self.release_due(give_up).await.is_err() {
                        return;
                    }
                }
                m = intake.recv(), if room => match m {
                    None => open = false,
                    Some(m) => {
                        if self.take(m, give_up).await.is_err() {
                            return;
                        }
                        // More while they are there: one wake-up for a burst, not one per message.
                        for _ in 1..BATCH {
                            if self.messages.len() >= self.window {
                                break;
                            }
                            let Some(m) = intake.try_recv() else { break };
                            if self.take(m, give_up).await.is_err() {
                                return;
                            }
                        }
                    }
                },
                // Events left over from the last round: served at the top of the loop, after the above
                // had their turn.
                _ = std::future::ready(()), if more_events => {}
            }
        }
    }

    /// Builds and produces the records of one message, for every matching route (fan-out, file order).
    async fn take(&mut self, inbound: Inbound, give_up: &CancellationToken) -> Result<(), ()> {
        let slot = self.messages.vacant_key();
        let ack = (inbound.qos > 0).then(|| {
            self.sequencer.push(Some(AckToken { connection: inbound.connection, pkid: inbound.pkid, qos: inbound.qos }))
        });
        let mut progress = Progress::producing();
        let table = &inbound.routes;
        let mut matched = std::mem::take(&mut self.matched);
        table.matching_indices(&inbound.topic, &mut matched);
        if matched.is_empty() {
            self.metrics.message_unrouted(&inbound.topic);
        }
        let msg = message_of(&inbound);
        let payload = Payload::new(&inbound.payload);
        let mut result = Ok(());
        for &index in &matched {
            match self.produce_route(slot, index, table.route(index), &msg, &payload, give_up, false).await {
                Ok(true) => progress.add(),
                Ok(false) => {}
                Err(SendFailed::GaveUp) => {
                    result = Err(());
                    break;
                }
                Err(SendFailed::Refused(_)) => progress.ackable = false,
            }
        }
        self.matched = matched;
        // Reports are taken only by `run`, never while a message is being produced: the slot is free
        // until here, and no report can name it before.
        let inserted = self.messages.insert(InFlight { inbound, progress, ack });
        debug_assert_eq!(inserted, slot);
        self.settle_record_of(slot, true);
        result
    }

    /// Produces what `route` makes of the message: its record, or its dead letter. `Ok(false)` when
    /// nothing is left to wait for (Kafka refused even the dead letter: counted and logged).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn produce_route(
        &mut self,
        slot: u32,
        index: u32,
        route: &Route,
        msg: &Message<'_>,
        payload: &Payload<'_>,
        give_up: &CancellationToken,
        // Held by the rate limit and now due: its slot is reserved already.
        released: bool,
    ) -> Result<bool, SendFailed> {
        // Another replica's device: that replica writes it (and dead-letters it, if it must).
        if let Some(share) = &self.share {
            if !share.owns(&route.device_id.extract(msg.topic).0) {
                self.metrics.records_not_ours.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(false);
            }
        }
        if let (Some(limit), false) = (route.rate_limit, released) {
            match self.admit(slot, index, route, limit, msg.qos, msg.topic) {
                Admission::Now => {}
                Admission::Held => return Ok(true),
                Admission::Dropped => return Ok(false),
            }
        }
        let outcome = if msg.payload.len() > self.max_payload {
            // Let in past the limit only to be dead-lettered (see mqtt::oversize).
            let reason = format!(
                "payload of {} bytes is larger than mqtt.max_packet_size_bytes ({})",
                msg.payload.len(),
                self.max_payload
            );
            envelope::dead_letter(route, msg, DeadLetterReason::TooLarge, reason)
        } else {
            envelope::build(route, msg, payload)
        };
        let (record, device_id, dead_letter) = match outcome {
            Outcome::Record { record, device_id, device_id_source } => {
                self.metrics.device_id(route, device_id_source);
                (record, device_id, false)
            }
            Outcome::DeadLetter { record, device_id, reason, kind } => {
                self.metrics.dead_lettered(route, kind, msg.topic, &device_id, &record.topic, &reason);
                (record, device_id, true)
            }
        };
        let entry = RecordEntry { message: slot, route: index, dead_letter, truncated: false, attempt: 0 };
        let headers = kafka::owned_headers(record.headers.iter().map(|(k, v)| (k.as_ref(), v.as_slice())));
        let sent = if dead_letter {
            // Keyed by device id, like every dead letter; cut to size if Kafka refuses the whole payload.
            self.send_dead_letter(entry, &record.topic, device_id.as_bytes(), &record.value, headers, give_up).await
        } else {
            self.send(entry, &record.topic, record.key.as_deref(), &record.value, headers, give_up).await
        };
        let refused = match sent {
            Ok(()) => return Ok(true),
            Err(SendFailed::GaveUp) => return Err(SendFailed::GaveUp),
            Err(SendFailed::Refused(e)) => e,
        };
        // Refused before it was queued because of the record itself (too large for `message.max.bytes`,
        // invalid topic, ...): dead-letter the message as published, with the reason.
        if !dead_letter && kafka::is_permanent(&refused) {
            let reason = format!("Kafka refused the record: {refused}");
            self.metrics.dead_lettered(
                route,
                DeadLetterReason::KafkaRefused,
                msg.topic,
                &device_id,
                &route.dead_letter_topic,
                &reason,
            );
            let headers = kafka::owned_headers(
                record
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_ref(), v.as_slice()))
                    .chain([(HEADER_DLQ_REASON, reason.as_bytes())]),
            );
            let entry = RecordEntry { dead_letter: true, ..entry };
            return match self
                .send_dead_letter(entry, &route.dead_letter_topic, device_id.as_bytes(), msg.payload, headers, give_up)
                .await
            {
                Ok(()) => Ok(true),
                Err(SendFailed::GaveUp) => Err(SendFailed::GaveUp),
                Err(SendFailed::Refused(e)) => self.refused(route, &route.dead_letter_topic, &device_id, e),
            };
        }
        self.refused(route, &record.topic, &device_id, refused)
    }

    /// A record refused before it was queued: counted and logged. A permanent refusal of a dead letter
    /// settles it (there is nothing more to try); any other refusal (a fatal producer) leaves the message
    /// unacknowledged.
    fn refused(&self, route: &Route, topic: &str, device_id: &str, e: KafkaError) -> Result<bool, SendFailed> {
        self.metrics.record_failed(route, topic, device_id, &e);
        if kafka::is_permanent(&e) {
            Ok(false)
        } else {
            Err(SendFailed::Refused(e))
        }
    }

    /// Sends a dead letter carrying `payload`; if Kafka refuses it as too large (the payload itself is
    /// what was too large), the head of it (see `kafka::truncated`).
    async fn send_dead_letter(
        &mut self,
        entry: RecordEntry,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: OwnedHeaders,
        give_up: &CancellationToken,
    ) -> Result<(), SendFailed> {
        match self.send(entry, topic, Some(key), payload, headers.clone(), give_up).await {
            Err(SendFailed::Refused(e)) if kafka::is_too_large(&e) => {
                let (cut, headers) = kafka::truncated(payload, headers);
                self.send(RecordEntry { truncated: true, ..entry }, topic, Some(key), cut, headers, give_up).await
            }
            other => other,
        }
    }

    /// Hands a record to librdkafka under a fresh tag. While its queue is full, waits (the intake fills
    /// meanwhile, and the MQTT edge stops reading: that is the backpressure).
    async fn send(
        &mut self,
        entry: RecordEntry,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        mut headers: OwnedHeaders,
        give_up: &CancellationToken,
    ) -> Result<(), SendFailed> {
        let tag = self.records.insert(entry);
        // Read the clock only once the queue is full, not for every record.
        let mut started = None;
        let mut next_warning = Duration::ZERO;
        loop {
            match kafka::send(&self.producer, topic, key, value, headers, tag as usize) {
                Ok(()) => {
                    self.metrics.records_enqueued.fetch_add(1, Relaxed);
                    return Ok(());
                }
                Err((e, back)) if kafka::is_queue_full(&e) => {
                    headers = back;
                    let waited = started.get_or_insert_with(Instant::now).elapsed();
                    // Waiting for room is the engine at work: it stays live for /healthz.
                    self.metrics.health.beat(Loop::Engine);
                    if waited >= next_warning {
                        next_warning = waited + Duration::from_secs(10);
                        tracing::warn!(
                            topic,
                            waited_ms = waited.as_millis() as u64,
                            "Kafka producer queue is full; waiting for room (backpressure)"
                        );
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                        _ = give_up.cancelled() => {
                            self.records.remove(tag);
                            return Err(SendFailed::GaveUp);
                        }
                    }
                }
                Err((e, _)) => {
                    self.records.remove(tag);
                    return Err(SendFailed::Refused(e));
                }
            }
        }
    }
}
