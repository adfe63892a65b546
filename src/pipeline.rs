//! The wiring: the whole path of a message, top to bottom.
//!
//! ```text
//! mqtt::run ──Inbound──▶ intake ──▶ Engine::take: route (RouteTable in effect when it arrived)
//!     ──▶ envelope::build per route ──▶ kafka::send (tagged) ─ ─ ▶ librdkafka
//! librdkafka ──delivery reports, in batches──▶ Engine::report: settle (retry, dead-letter)
//!     ──▶ AckSequencer ──AckToken (arrival order)──▶ mqtt::run ──▶ PUBACK / PUBREC
//! ```
//!
//! One task, the [`Engine`], takes messages, produces their records and settles them as Kafka reports:
//! no task, future or channel per record, and no lock but the one the reports arrive under.
//!
//! Every queue is bounded: MQTT → pipeline by `mqtt.buffer_bytes` (the intake), messages between receipt
//! and settlement by `mqtt.max_unacked_messages`, the producer by `kafka.queue_max_*`. When one fills, the
//! stage before it waits; at the MQTT edge the gateway stops reading the connection, so the broker holds
//! the rest (QoS 1/2 unacknowledged, QoS 0 in its queue) instead of the gateway dropping anything.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::Producer as _;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::ack::{AckSequencer, AckToken};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::envelope::{self, Message, Outcome, Payload, HEADER_DLQ_REASON};
use crate::inflight::{Progress, RecordEntry, Slab};
use crate::intake::{self, IntakeReceiver};
use crate::kafka::reports::{self, Failure};
use crate::kafka::{self, GatewayProducer};
use crate::metrics::{self, Metrics};
use crate::mqtt::{self, Inbound};
use crate::reload;
use crate::route::Route;

/// What a finished run reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Records still in the producer, plus messages not settled, when the grace period ran out.
    pub undelivered: u64,
    /// The run ended because of a fatal producer error.
    pub fatal: bool,
    pub snapshot: metrics::Snapshot,
}

/// Runs the gateway until `shutdown` is cancelled, then drains: messages already taken are delivered
/// (bounded by `shutdown.grace_period_secs`), the producer is flushed, MQTT disconnects.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<Report> {
    let metrics = Arc::new(Metrics::default());
    let producer = Arc::new(kafka::producer(&config.kafka).context("cannot create the Kafka producer")?);
    // A fatal producer error stops the gateway: nothing more is acknowledged, and a restart (by the
    // orchestrator) brings a fresh producer; unacknowledged QoS 1/2 messages come again from the broker.
    let fatal = CancellationToken::new();
    {
        let (producer, fatal, shutdown) = (producer.clone(), fatal.clone(), shutdown.clone());
        tokio::spawn(async move {
            kafka::watch_fatal(&producer, fatal.clone(), shutdown.clone()).await;
            if fatal.is_cancelled() {
                shutdown.cancel();
            }
        });
    }
    tracing::info!(
        bootstrap_servers = %config.kafka.bootstrap_servers,
        routes = config.routes.routes().len(),
        config = %config.source.display(),
        "starting"
    );
    for r in config.routes.routes() {
        tracing::info!(route = %r.name, filter = %r.filter, qos = r.qos, topic = %r.topic, key = %r.key, dead_letter_topic = %r.dead_letter_topic, "route");
    }
    run_inner(config, producer, metrics, shutdown, fatal).await
}

async fn run_inner(
    config: Config,
    producer: Arc<GatewayProducer>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    fatal: CancellationToken,
) -> anyhow::Result<Report> {
    // The route table in effect: the reloader publishes new ones, the MQTT side reads them.
    let (routes_tx, routes) = watch::channel(Arc::new(config.routes.clone()));
    let started = Instant::now();
    let (intake_tx, intake_rx) = intake::intake(config.mqtt.buffer_bytes);
    // Unbounded, yet bounded by the window: an ack is due only for a message that holds a place in it.
    let (acks_tx, acks_rx) = mpsc::unbounded_channel::<AckToken>();
    let connection = Arc::new(AtomicU64::new(0));
    let stop = mqtt::Stop { receiving: shutdown.child_token(), disconnect: CancellationToken::new() };
    let links = mqtt::Links { out: intake_tx, acks: acks_rx, connection: connection.clone() };
    let mqtt_task = tokio::spawn(mqtt::run(config.mqtt.clone(), routes.clone(), links, metrics.clone(), stop.clone()));
    let stats = tokio::spawn(stats(metrics.clone(), Duration::from_secs(config.log.stats_interval_secs), shutdown.clone()));
    let reloader = tokio::spawn(reload::run(config.clone(), routes_tx, metrics.clone(), shutdown.clone()));
    // The grace period runs from the signal, whatever the pipeline is waiting for (a full window, a
    // full producer queue, Kafka).
    let give_up = CancellationToken::new();
    {
        // What follows giving up (a last flush, the acks, DISCONNECT) needs a moment too: keep a quarter
        // of the grace period, at most 3 s, for it, so the whole shutdown fits in the grace period (and in
        // an orchestrator's termination grace period of the same length).
        let grace = config.shutdown_grace;
        let reserve = (grace / 4).min(Duration::from_secs(3));
        let (shutdown, give_up) = (shutdown.clone(), give_up.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tokio::time::sleep(grace - reserve).await;
            give_up.cancel();
        });
    }

    let events = kafka::events::Events::new(producer.clone()).context("cannot watch the Kafka producer's events")?;
    let mut engine = Engine {
        producer: producer.clone(),
        events,
        metrics: metrics.clone(),
        max_payload: config.mqtt.max_packet_size,
        window: config.mqtt.max_unacked_messages,
        messages: Slab::default(),
        records: Slab::default(),
        sequencer: AckSequencer::default(),
        acks: acks_tx,
        connection,
        fatal: fatal.clone(),
        retries: BinaryHeap::new(),
        retry_seq: 0,
        matched: Vec::new(),
        reports: Vec::new(),
    };
    let shutting_down = shutdown.clone();
    engine.run(intake_rx, &give_up).await;
    tracing::info!(grace_period_secs = config.shutdown_grace.as_secs(), "shutting down: delivering the messages already taken");
    if give_up.is_cancelled() && shutting_down.is_cancelled() {
        tracing::error!("grace period over before every message was settled");
    }
    let unsettled = engine.messages.len() as u64;
    drop(engine);

    let left = if give_up.is_cancelled() { Duration::from_millis(100) } else { config.shutdown_grace.min(Duration::from_secs(5)) };
    let flush_producer = producer.clone();
    let flushed = tokio::task::spawn_blocking(move || kafka::flush(&flush_producer, left)).await;
    let undelivered = kafka::in_flight(&producer).max(0) as u64 + unsettled;
    match flushed {
        Ok(Ok(())) => tracing::info!("Kafka producer flushed"),
        Ok(Err(e)) => tracing::error!(error = %e, undelivered, "Kafka producer not flushed within the grace period; records are lost"),
        Err(e) => tracing::error!(error = %e, "flush task failed"),
    }
    stop.disconnect.cancel();
    let _ = mqtt_task.await;
    stats.abort();
    reloader.abort();
    let snapshot = metrics.snapshot();
    // The last line covers the whole run.
    metrics::log_stats(snapshot, metrics::Snapshot::default(), started.elapsed(), &metrics);
    Ok(Report { undelivered, snapshot, fatal: fatal.is_cancelled() })
}

/// A message taken from MQTT and not settled yet.
struct InFlight {
    inbound: Inbound,
    progress: Progress,
    /// Its place in the ack order; `None` for QoS 0 (nothing to acknowledge, so nothing to wait for).
    ack: Option<u64>,
}

/// A record to produce again (after a failed delivery) or to produce as a dead letter, when due.
struct Retry {
    due: tokio::time::Instant,
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

/// Why producing a record stopped short.
enum SendFailed {
    /// The grace period is over.
    GaveUp,
    Refused(KafkaError),
}

/// The message path, one task: see the module doc.
struct Engine {
    producer: Arc<GatewayProducer>,
    /// Says when librdkafka has delivery reports, and serves them.
    events: kafka::events::Events,
    metrics: Arc<Metrics>,
    max_payload: usize,
    /// `mqtt.max_unacked_messages`: messages taken and not settled, at most.
    window: usize,
    messages: Slab<InFlight>,
    /// Records Kafka has not reported on; a record's index here is its delivery tag.
    records: Slab<RecordEntry>,
    sequencer: AckSequencer,
    acks: mpsc::UnboundedSender<AckToken>,
    /// The number of the current MQTT connection (acks of older ones are dropped).
    connection: Arc<AtomicU64>,
    fatal: CancellationToken,
    retries: BinaryHeap<Reverse<Retry>>,
    retry_seq: u64,
    /// Scratch buffers, kept to allocate nothing per message.
    matched: Vec<u32>,
    reports: Vec<reports::Report>,
}

/// Messages taken from the intake in one go before the engine looks at reports and timers again.
const BATCH: usize = 256;

impl Engine {
    /// Takes messages until the intake closes (shutdown) and everything taken is settled, or `give_up`.
    async fn run(&mut self, mut intake: IntakeReceiver, give_up: &CancellationToken) {
        let mut open = true;
        let mut more_events = self.events.serve();
        loop {
            if !open && self.messages.is_empty() {
                return;
            }
            if more_events {
                more_events = self.events.serve();
                self.take_reports();
            }
            let room = open && self.messages.len() < self.window;
            let next_retry = self.retries.peek().map(|r| r.0.due);
            tokio::select! {
                biased;
                _ = give_up.cancelled() => return,
                _ = self.events.ready(), if !more_events => {
                    more_events = self.events.serve();
                    self.take_reports();
                }
                _ = tokio::time::sleep_until(next_retry.unwrap_or_else(tokio::time::Instant::now)), if next_retry.is_some() => {
                    if self.send_due_retries(give_up).await.is_err() {
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
        let table = inbound.routes.clone();
        let mut matched = std::mem::take(&mut self.matched);
        table.matching_indices(&inbound.topic, &mut matched);
        if matched.is_empty() {
            self.metrics.message_unrouted(&inbound.topic);
        }
        let msg = Message { topic: &inbound.topic, payload: &inbound.payload, qos: inbound.qos, retain: inbound.retain, received_at: inbound.received_at };
        let payload = Payload::new(&inbound.payload);
        let mut result = Ok(());
        for &index in &matched {
            match self.produce_route(slot, index, table.route(index), &msg, &payload, give_up).await {
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
    async fn produce_route(
        &mut self,
        slot: u32,
        index: u32,
        route: &Route,
        msg: &Message<'_>,
        payload: &Payload<'_>,
        give_up: &CancellationToken,
    ) -> Result<bool, SendFailed> {
        let outcome = if msg.payload.len() > self.max_payload {
            // Let in past the limit only to be dead-lettered (see mqtt::oversize).
            let reason = format!("payload of {} bytes is larger than mqtt.max_packet_size_bytes ({})", msg.payload.len(), self.max_payload);
            envelope::dead_letter(route, msg, reason)
        } else {
            envelope::build(route, msg, payload)
        };
        let (record, device_id, dead_letter) = match outcome {
            Outcome::Record { record, device_id, device_id_source } => {
                self.metrics.device_id(device_id_source);
                (record, device_id, false)
            }
            Outcome::DeadLetter { record, device_id, reason } => {
                self.metrics.dead_lettered(&route.name, msg.topic, &device_id, &record.topic, &reason);
                (record, device_id, true)
            }
        };
        let entry = RecordEntry { message: slot, route: index, dead_letter, truncated: false, attempt: 0 };
        let headers = kafka::owned_headers(record.headers.iter().map(|(k, v)| (*k, v.as_slice())));
        let sent = self.send(entry, &record.topic, record.key.as_deref(), &record.value, headers, give_up).await;
        let refused = match sent {
            Ok(()) => return Ok(true),
            Err(SendFailed::GaveUp) => return Err(SendFailed::GaveUp),
            Err(SendFailed::Refused(e)) => e,
        };
        // Refused before it was queued because of the record itself (too large for `message.max.bytes`,
        // invalid topic, ...): dead-letter the message as published, with the reason.
        if !dead_letter && kafka::is_permanent(&refused) {
            let reason = format!("Kafka refused the record: {refused}");
            self.metrics.dead_lettered(&route.name, msg.topic, &device_id, &route.dead_letter_topic, &reason);
            let headers = kafka::owned_headers(
                record.headers.iter().map(|(k, v)| (*k, v.as_slice())).chain([(HEADER_DLQ_REASON, reason.as_bytes())]),
            );
            let entry = RecordEntry { dead_letter: true, ..entry };
            return match self.send_dead_letter(entry, &route.dead_letter_topic, device_id.as_bytes(), msg.payload, headers, give_up).await {
                Ok(()) => Ok(true),
                Err(SendFailed::GaveUp) => Err(SendFailed::GaveUp),
                Err(SendFailed::Refused(e)) => self.refused(route, &route.dead_letter_topic, &device_id, e),
            };
        }
        if dead_letter && kafka::is_too_large(&refused) {
            let (cut, headers) = kafka::truncated(&record.value, kafka::owned_headers(record.headers.iter().map(|(k, v)| (*k, v.as_slice()))));
            let entry = RecordEntry { truncated: true, ..entry };
            return match self.send(entry, &record.topic, record.key.as_deref(), cut, headers, give_up).await {
                Ok(()) => Ok(true),
                Err(SendFailed::GaveUp) => Err(SendFailed::GaveUp),
                Err(SendFailed::Refused(e)) => self.refused(route, &record.topic, &device_id, e),
            };
        }
        self.refused(route, &record.topic, &device_id, refused)
    }

    /// A record refused before it was queued: counted and logged. A permanent refusal of a dead letter
    /// settles it (there is nothing more to try); any other refusal (a fatal producer) leaves the message
    /// unacknowledged.
    fn refused(&self, route: &Route, topic: &str, device_id: &str, e: KafkaError) -> Result<bool, SendFailed> {
        self.metrics.record_failed(&route.name, topic, device_id, &e);
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
                    if waited >= next_warning {
                        next_warning = waited + Duration::from_secs(10);
                        tracing::warn!(topic, waited_ms = waited.as_millis() as u64, "Kafka producer queue is full; waiting for room (backpressure)");
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

    /// Settles what the delivery reports so far say.
    fn take_reports(&mut self) {
        let mut reports = std::mem::take(&mut self.reports);
        self.producer.context().reports.take(&mut reports);
        for report in reports.drain(..) {
            self.report(report);
        }
        self.reports = reports;
        self.send_due_acks();
    }

    /// One record's fate. A record that failed is dead-lettered if Kafka will never take it, and
    /// produced again otherwise. For QoS 1/2 this goes on until it succeeds (or the gateway stops): the
    /// message is not acknowledged before, so nothing is lost, and the stall shows in the logs. For QoS 0
    /// a second failure is counted and logged, and the record given up.
    fn report(&mut self, report: reports::Report) {
        let tag = report.tag as u32;
        let Some(&entry) = self.records.get(tag) else { return };
        let Some(message) = self.messages.get(entry.message) else {
            self.records.remove(tag);
            return;
        };
        let table = message.inbound.routes.clone();
        let route = table.route(entry.route);
        let Failure { error, record } = match report.result {
            Ok((partition, offset)) => {
                self.metrics.record_delivered(entry.dead_letter, &route.name, partition, offset);
                self.records.remove(tag);
                self.settle_record_of(entry.message, true);
                return;
            }
            Err(failure) => failure,
        };
        let qos = message.inbound.qos;
        let (device_id, _) = route.device_id.extract(&message.inbound.topic);
        let device_id = device_id.to_string();
        let payload = message.inbound.payload.clone();
        let topic = record.topic().to_string();
        let mut record = record;
        let headers = record.detach_headers().unwrap_or_default();
        if kafka::is_fatal(&error) {
            self.metrics.record_failed(&route.name, &topic, &device_id, &error);
            self.records.remove(tag);
            self.settle_record_of(entry.message, false);
        } else if kafka::is_permanent(&error) && !entry.dead_letter {
            let reason = format!("Kafka refused the record: {error}");
            self.metrics.dead_lettered(&route.name, &topic, &device_id, &route.dead_letter_topic, &reason);
            let headers = headers.insert(Header { key: HEADER_DLQ_REASON, value: Some(reason.as_bytes()) });
            if let Some(e) = self.records.get_mut(tag) {
                e.dead_letter = true;
            }
            self.schedule(tag, Duration::ZERO, route.dead_letter_topic.clone(), Some(device_id.into_bytes()), payload.to_vec(), headers);
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
            self.metrics.record_failed(&route.name, &topic, &device_id, &error);
            self.records.remove(tag);
            self.settle_record_of(entry.message, true);
        } else {
            self.metrics.record_retry(&route.name, &topic, &device_id, &error);
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

    fn schedule(&mut self, record: u32, after: Duration, topic: String, key: Option<Vec<u8>>, value: Vec<u8>, headers: OwnedHeaders) {
        self.retry_seq += 1;
        let due = tokio::time::Instant::now() + after;
        self.retries.push(Reverse(Retry { due, seq: self.retry_seq, record, topic, key, value, headers }));
    }

    /// Produces the records whose retry is due, under their old tags.
    async fn send_due_retries(&mut self, give_up: &CancellationToken) -> Result<(), ()> {
        let now = tokio::time::Instant::now();
        while self.retries.peek().is_some_and(|r| r.0.due <= now) {
            let Some(Reverse(retry)) = self.retries.pop() else { break };
            let Some(&entry) = self.records.get(retry.record) else { continue };
            let sent = loop {
                match kafka::send(&self.producer, &retry.topic, retry.key.as_deref(), &retry.value, retry.headers.clone(), retry.record as usize) {
                    Err((e, _)) if kafka::is_queue_full(&e) => tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                        _ = give_up.cancelled() => return Err(()),
                    },
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
                self.metrics.dead_lettered(&route.name, &retry.topic, &device_id, &route.dead_letter_topic, &reason);
                let headers = retry.headers.insert(Header { key: HEADER_DLQ_REASON, value: Some(reason.as_bytes()) });
                if let Some(r) = self.records.get_mut(retry.record) {
                r.dead_letter = true;
            }
                let payload = message.inbound.payload.to_vec();
                self.schedule(retry.record, Duration::ZERO, route.dead_letter_topic.clone(), Some(device_id.into_bytes()), payload, headers);
            } else {
                self.metrics.record_failed(&route.name, &retry.topic, &device_id, &e);
                self.records.remove(retry.record);
                self.settle_record_of(entry.message, kafka::is_permanent(&e) || qos == 0);
            }
        }
        self.send_due_acks();
        Ok(())
    }

    /// One record of message `slot` (or its production hold) is settled.
    fn settle_record_of(&mut self, slot: u32, ok: bool) {
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
    fn send_due_acks(&mut self) {
        let due = self.sequencer.drain(self.connection.load(Relaxed));
        if self.fatal.is_cancelled() {
            return;
        }
        for ack in due {
            let _ = self.acks.send(ack);
        }
    }
}

async fn stats(metrics: Arc<Metrics>, every: Duration, shutdown: CancellationToken) {
    if every.is_zero() {
        return;
    }
    let mut before = metrics.snapshot();
    let mut at = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        let now = metrics.snapshot();
        metrics::log_stats(now, before, at.elapsed(), &metrics);
        before = now;
        at = Instant::now();
    }
}
