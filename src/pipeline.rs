//! The wiring: the whole path of a message, top to bottom.
//!
//! ```text
//! mqtt::run ──Inbound──▶ route (RouteTable in effect when it arrived) ──▶ envelope::build per route
//!     ──▶ kafka::enqueue ──DeliveryFuture──▶ settle (retry, dead-letter) ──▶ AckSequencer
//!     ──AckToken (arrival order)──▶ mqtt::run ──▶ PUBACK / PUBREC
//! ```
//!
//! Every queue is bounded: MQTT → pipeline by `mqtt.buffer_bytes` (the intake), messages between receipt
//! and ack by `mqtt.max_unacked_messages`, the producer by `kafka.queue_max_*`. When one fills, the stage
//! before it waits; at the MQTT edge the gateway stops reading the connection, so the broker holds the
//! rest (QoS 1/2 unacknowledged, QoS 0 in its queue) instead of the gateway dropping anything.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::DeliveryFuture;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::ack::{AckSequencer, AckToken};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::envelope::{self, Message, Outcome, Payload, HEADER_DLQ_REASON};
use crate::intake;
use crate::kafka::{self, GatewayProducer};
use crate::metrics::{self, Metrics};
use crate::mqtt::{self, Inbound};
use crate::reload;
use crate::route::RouteTable;

/// What a finished run reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Records still in the producer, plus messages not settled, when the grace period ran out.
    pub undelivered: u64,
    /// The run ended because of a fatal producer error.
    pub fatal: bool,
    pub snapshot: metrics::Snapshot,
}

/// Where one record came from, for logs and metrics when its delivery result arrives.
struct Pending {
    delivery: DeliveryFuture,
    route: Arc<str>,
    topic: String,
    device_id: String,
    dead_letter: bool,
    dead_letter_topic: String,
}

/// The records one MQTT message produced; acknowledged together once all are in Kafka.
struct InFlight {
    records: Vec<Pending>,
    /// `None` for QoS 0.
    ack: Option<AckToken>,
    qos: u8,
    /// The payload as published, for a dead letter decided only when Kafka answers.
    payload: bytes::Bytes,
    /// False if a record could not be handed to Kafka (see `route_message`): no ack then.
    complete: bool,
    /// A slot of the `mqtt.max_unacked_messages` window, given back when the message is settled.
    _slot: OwnedSemaphorePermit,
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
    let (inbound_tx, mut inbound_rx) = intake::intake(config.mqtt.buffer_bytes);
    // Both bounded by the window anyway (a message holds a slot from here until its ack is due).
    let (inflight_tx, inflight_rx) = mpsc::channel::<InFlight>(1024);
    let (acks_tx, acks_rx) = mpsc::channel::<AckToken>(1024);
    let window = Arc::new(Semaphore::new(config.mqtt.max_unacked_messages));
    let max_payload = config.mqtt.max_packet_size;
    let connection = Arc::new(AtomicU64::new(0));
    let stop = mqtt::Stop { receiving: shutdown.child_token(), disconnect: CancellationToken::new() };
    let links = mqtt::Links { out: inbound_tx, acks: acks_rx, connection: connection.clone() };
    let mqtt_task = tokio::spawn(mqtt::run(config.mqtt.clone(), routes.clone(), links, metrics.clone(), stop.clone()));
    let deliveries = tokio::spawn(deliveries(inflight_rx, acks_tx, connection, producer.clone(), metrics.clone(), fatal.clone()));
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

    // The message path. Ends when the MQTT side stops forwarding (shutdown) and the channel is drained,
    // or when the grace period is over.
    loop {
        let inbound = tokio::select! {
            m = inbound_rx.recv() => m,
            _ = give_up.cancelled() => None,
        };
        let Some(inbound) = inbound else { break };
        // Wait for a slot in the window: while Kafka is slow, the buffer before us fills.
        let slot = tokio::select! {
            s = window.clone().acquire_owned() => s.ok(),
            _ = give_up.cancelled() => None,
        };
        let Some(slot) = slot else { break };
        let routed = tokio::select! {
            r = route_message(&inbound.routes, &inbound, max_payload, &producer, &metrics) => Some(r),
            _ = give_up.cancelled() => None,
        };
        let Some((records, complete)) = routed else { break };
        let ack = (inbound.qos > 0).then_some(AckToken { connection: inbound.connection, pkid: inbound.pkid, qos: inbound.qos });
        let inflight = InFlight { records, ack, qos: inbound.qos, payload: inbound.payload, complete, _slot: slot };
        let sent = tokio::select! {
            r = inflight_tx.send(inflight) => r.is_ok(),
            _ = give_up.cancelled() => false,
        };
        if !sent {
            break;
        }
    }
    drop(inflight_tx);
    tracing::info!(grace_period_secs = config.shutdown_grace.as_secs(), "shutting down: delivering the messages already taken");

    tokio::select! {
        _ = deliveries => {}
        _ = give_up.cancelled() => tracing::error!("grace period over before every message was settled"),
    }
    // Messages taken and not settled: their slots are still out.
    let unsettled = (config.mqtt.max_unacked_messages - window.available_permits()) as u64;
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

/// Builds and enqueues the records of one message for every matching route (fan-out, file order).
/// The flag is false when a record could not be handed to Kafka for a reason that is not the record's
/// fault (a fatal producer error): such a message must not be acknowledged.
async fn route_message(
    table: &RouteTable,
    inbound: &Inbound,
    max_payload: usize,
    producer: &GatewayProducer,
    metrics: &Metrics,
) -> (Vec<Pending>, bool) {
    let msg = Message {
        topic: &inbound.topic,
        payload: &inbound.payload,
        qos: inbound.qos,
        retain: inbound.retain,
        received_at: inbound.received_at,
    };
    let payload = Payload::new(&inbound.payload);
    let mut records = Vec::new();
    let mut complete = true;
    let mut matched = false;
    for route in table.matching(&inbound.topic) {
        matched = true;
        let route_name = route.name.clone();
        let outcome = if inbound.payload.len() > max_payload {
            // Let in past the limit only to be dead-lettered (see mqtt::oversize).
            envelope::dead_letter(route, &msg, format!("payload of {} bytes is larger than mqtt.max_packet_size_bytes ({max_payload})", inbound.payload.len()))
        } else {
            envelope::build(route, &msg, &payload)
        };
        let (record, device_id, reason) = match outcome {
            Outcome::Record { record, device_id, device_id_source } => {
                metrics.device_id(device_id_source);
                (record, device_id, None)
            }
            Outcome::DeadLetter { record, device_id, reason } => {
                metrics.dead_lettered(&route.name, &inbound.topic, &device_id, &record.topic, &reason);
                (record, device_id, Some(reason))
            }
        };
        let mut dead_letter = reason.is_some();
        let mut topic = record.topic.clone();
        let mut attempt = if dead_letter {
            // A dead letter carries the payload as published; one too large for Kafka is truncated.
            kafka::enqueue_dead_letter(producer, &topic, device_id.as_bytes(), &record.value, kafka::owned_headers(&record.headers), false).await
        } else {
            kafka::enqueue(producer, &record).await
        };
        // Refused before it was queued because of the record itself (too large for
        // `message.max.bytes`, invalid topic, ...): dead-letter the message as published, with the reason.
        if let Err(e) = &attempt {
            if !dead_letter && kafka::is_permanent(e) {
                let reason = format!("Kafka refused the record: {e}");
                metrics.dead_lettered(&route.name, &inbound.topic, &device_id, &route.dead_letter_topic, &reason);
                let mut headers = record.headers.clone();
                headers.push((HEADER_DLQ_REASON, reason.into_bytes()));
                dead_letter = true;
                topic = route.dead_letter_topic.clone();
                attempt = kafka::enqueue_dead_letter(producer, &topic, device_id.as_bytes(), &inbound.payload, kafka::owned_headers(&headers), false).await;
            }
        }
        match attempt {
            Ok(delivery) => {
                metrics.records_enqueued.fetch_add(1, Relaxed);
                let dead_letter_topic = route.dead_letter_topic.clone();
                records.push(Pending { delivery, route: route_name, topic, device_id, dead_letter, dead_letter_topic });
            }
            // A dead letter Kafka refuses as well: rejected, counted and logged.
            Err(e) if kafka::is_permanent(&e) => metrics.record_failed(&route.name, &topic, &device_id, &e),
            Err(e) => {
                metrics.record_failed(&route.name, &topic, &device_id, &e);
                complete = false;
            }
        }
    }
    if !matched {
        metrics.message_unrouted(&inbound.topic);
    }
    (records, complete)
}

/// Settles messages as Kafka answers (in any order) and hands their acks to the MQTT side in the order
/// the messages arrived.
async fn deliveries(
    mut rx: mpsc::Receiver<InFlight>,
    acks: mpsc::Sender<AckToken>,
    connection: Arc<AtomicU64>,
    producer: Arc<GatewayProducer>,
    metrics: Arc<Metrics>,
    fatal: CancellationToken,
) {
    let mut sequencer = AckSequencer::default();
    let mut settling = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            m = rx.recv(), if open => match m {
                Some(inflight) => {
                    // Only messages that need an ack take a place in the ack order: a QoS 0 message stuck
                    // behind nothing must not pile up behind a stuck QoS 1 one either.
                    let seq = inflight.ack.map(|a| sequencer.push(Some(a)));
                    settling.push(settle(seq, inflight, producer.clone(), metrics.clone()));
                }
                None => open = false,
            },
            Some((seq, ackable)) = settling.next(), if !settling.is_empty() => {
                let Some(seq) = seq else { continue };
                if ackable {
                    sequencer.complete(seq);
                } else {
                    metrics.message_not_acked(seq);
                    sequencer.abandon(seq);
                }
                // After a fatal producer error nothing more is acknowledged: whatever is in Kafka or not,
                // the broker delivers it again to the restarted gateway.
                let due = sequencer.drain(connection.load(Relaxed));
                if fatal.is_cancelled() {
                    continue;
                }
                for ack in due {
                    if acks.send(ack).await.is_err() {
                        return;
                    }
                }
            }
            else => break,
        }
    }
}

/// Waits until every record of a message is in Kafka (or its dead-letter topic) and says whether the
/// message may be acknowledged. A record that failed is dead-lettered if Kafka will never take it, and
/// produced again otherwise. For QoS 1/2 this goes on until it succeeds (or the gateway stops): the
/// message is not acknowledged before, so nothing is lost, and the stall shows in the logs. For QoS 0 a
/// second failure is counted and logged, and the record given up.
async fn settle(seq: Option<u64>, inflight: InFlight, producer: Arc<GatewayProducer>, metrics: Arc<Metrics>) -> (Option<u64>, bool) {
    let mut ackable = inflight.complete;
    for p in inflight.records {
        ackable &= settle_record(p, inflight.qos, &inflight.payload, &producer, &metrics).await;
    }
    (seq, ackable)
}

async fn settle_record(p: Pending, qos: u8, payload: &[u8], producer: &GatewayProducer, metrics: &Metrics) -> bool {
    let Pending { mut delivery, route, mut topic, device_id, mut dead_letter, dead_letter_topic } = p;
    let mut truncated = false;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let (error, failed) = match delivery.await {
            Ok(Ok(d)) => {
                metrics.record_delivered(dead_letter, &route, &topic, d.partition, d.offset);
                return true;
            }
            Ok(Err(failure)) => failure,
            Err(_canceled) => {
                metrics.record_failed(&route, &topic, &device_id, &Canceled);
                return false;
            }
        };
        let headers = failed.headers().cloned().unwrap_or_else(OwnedHeaders::new);
        let permanent = kafka::is_permanent(&error);
        let next = if kafka::is_fatal(&error) {
            metrics.record_failed(&route, &topic, &device_id, &error);
            return false;
        } else if permanent && !dead_letter {
            let reason = format!("Kafka refused the record: {error}");
            metrics.dead_lettered(&route, failed.topic(), &device_id, &dead_letter_topic, &reason);
            dead_letter = true;
            topic = dead_letter_topic.clone();
            let headers = headers.insert(Header { key: HEADER_DLQ_REASON, value: Some(reason.as_bytes()) });
            kafka::enqueue_dead_letter(producer, &topic, device_id.as_bytes(), payload, headers, false).await
        } else if permanent && kafka::is_too_large(&error) && !truncated {
            // The dead letter itself was too large: keep its head (see kafka::enqueue_dead_letter).
            truncated = true;
            kafka::enqueue_dead_letter(producer, &topic, device_id.as_bytes(), payload, headers, true).await
        } else if permanent || (qos == 0 && backoff.attempt() > 0) {
            // A dead letter Kafka will not take either, or a QoS 0 record failing twice: rejected,
            // counted and logged; settled, so the messages after it are not held up.
            metrics.record_failed(&route, &topic, &device_id, &error);
            return true;
        } else {
            metrics.record_retry(&route, &topic, &device_id, &error);
            tokio::time::sleep(backoff.next_delay()).await;
            match kafka::enqueue_parts(producer, &topic, failed.key(), failed.payload().unwrap_or_default(), headers.clone()).await {
                // Refused at once because of the record (the topic is gone, say): dead-letter it now.
                Err(e) if !dead_letter && kafka::is_permanent(&e) => {
                    let reason = format!("Kafka refused the record: {e}");
                    metrics.dead_lettered(&route, &topic, &device_id, &dead_letter_topic, &reason);
                    dead_letter = true;
                    topic = dead_letter_topic.clone();
                    let headers = headers.insert(Header { key: HEADER_DLQ_REASON, value: Some(reason.as_bytes()) });
                    kafka::enqueue_dead_letter(producer, &topic, device_id.as_bytes(), payload, headers, false).await
                }
                other => other,
            }
        };
        delivery = match next {
            Ok(d) => d,
            Err(e) => {
                // Refused before it was even queued: nothing more to try for this record.
                metrics.record_failed(&route, &topic, &device_id, &e);
                return kafka::is_permanent(&e) || qos == 0;
            }
        };
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the producer was dropped before the delivery result arrived")]
struct Canceled;

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
