//! The wiring: the whole path of a message, top to bottom.
//!
//! ```text
//! mqtt::run ──Inbound──▶ route (RouteTable in effect) ──▶ envelope::build per matching route
//!     ──▶ kafka::enqueue ──DeliveryFuture──▶ deliveries (in arrival order) ──▶ counted / logged
//! ```
//!
//! Every queue is bounded: MQTT → pipeline by `mqtt.buffer_messages`, the producer by
//! `kafka.queue_max_*`, pipeline → deliveries by the same buffer size. When one fills, the stage before it
//! waits, back to the MQTT socket.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::producer::DeliveryFuture;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::envelope::{self, Message, Outcome, Payload, Record, HEADER_DLQ_REASON};
use crate::kafka::{self, GatewayProducer};
use crate::metrics::{self, Metrics};
use crate::mqtt::{self, Inbound};
use crate::reload;
use crate::route::RouteTable;

/// What a finished run reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Records that had not been acknowledged by Kafka when the grace period ran out.
    pub undelivered: u64,
    pub snapshot: metrics::Snapshot,
}

/// A running gateway's handles, for the binary and for tests.
pub struct Handles {
    pub metrics: Arc<Metrics>,
}

/// Where one record came from, for logs and metrics when its delivery result arrives.
struct Pending {
    delivery: DeliveryFuture,
    route: Arc<str>,
    topic: String,
    device_id: String,
    dead_letter: bool,
}

/// The records one MQTT message produced; completed together, in the order the messages arrived.
struct InFlight {
    records: Vec<Pending>,
}

/// Runs the gateway until `shutdown` is cancelled, then drains: messages already taken are delivered
/// (bounded by `shutdown.grace_period_secs`), the producer is flushed, MQTT disconnects.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<Report> {
    let (handles, task) = start(config, shutdown)?;
    drop(handles);
    task.await.context("gateway task failed")?
}

/// Starts the gateway and returns its handles and the task that completes with its report.
pub fn start(
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<(Handles, tokio::task::JoinHandle<anyhow::Result<Report>>)> {
    let metrics = Arc::new(Metrics::default());
    let producer = Arc::new(kafka::producer(&config.kafka).context("cannot create the Kafka producer")?);
    tracing::info!(
        bootstrap_servers = %config.kafka.bootstrap_servers,
        routes = config.routes.routes().len(),
        config = %config.source.display(),
        "starting"
    );
    for r in config.routes.routes() {
        tracing::info!(route = %r.name, filter = %r.filter, qos = r.qos, topic = %r.topic, key = %r.key, dead_letter_topic = %r.dead_letter_topic, "route");
    }
    let handles = Handles { metrics: metrics.clone() };
    let task = tokio::spawn(run_inner(config, producer, metrics, shutdown));
    Ok((handles, task))
}

async fn run_inner(
    config: Config,
    producer: Arc<GatewayProducer>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<Report> {
    // The route table in effect: the reloader publishes new ones, the MQTT side reads them.
    let (routes_tx, routes) = watch::channel(Arc::new(config.routes.clone()));
    let started = Instant::now();
    let buffer = config.mqtt.buffer_messages;
    let (inbound_tx, mut inbound_rx) = mpsc::channel::<Inbound>(buffer);
    let (inflight_tx, inflight_rx) = mpsc::channel::<InFlight>(buffer);
    let stop = mqtt::Stop { receiving: shutdown.child_token(), disconnect: CancellationToken::new() };
    let mqtt_task = tokio::spawn(mqtt::run(config.mqtt.clone(), routes.clone(), inbound_tx, metrics.clone(), stop.clone()));
    let deliveries = tokio::spawn(deliveries(inflight_rx, metrics.clone()));
    let stats = tokio::spawn(stats(metrics.clone(), Duration::from_secs(config.log.stats_interval_secs), shutdown.clone()));
    let reloader = tokio::spawn(reload::run(config.clone(), routes_tx, metrics.clone(), shutdown.clone()));

    // The message path. Ends when the MQTT side stops forwarding (shutdown) and the channel is drained.
    while let Some(inbound) = inbound_rx.recv().await {
        let inflight = route_message(&inbound.routes, &inbound, &producer, &metrics).await;
        if inflight_tx.send(inflight).await.is_err() {
            break;
        }
    }
    drop(inflight_tx);
    tracing::info!(grace_period_secs = config.shutdown_grace.as_secs(), "shutting down: delivering the messages already taken");

    let deadline = Instant::now() + config.shutdown_grace;
    if tokio::time::timeout(config.shutdown_grace, deliveries).await.is_err() {
        tracing::error!("grace period over before every delivery result arrived");
    }
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
    let flush_producer = producer.clone();
    let flushed = tokio::task::spawn_blocking(move || kafka::flush(&flush_producer, left)).await;
    let undelivered = kafka::in_flight(&producer).max(0) as u64;
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
    Ok(Report { undelivered, snapshot })
}

/// Builds and enqueues the records of one message for every matching route (fan-out, file order).
async fn route_message(table: &RouteTable, inbound: &Inbound, producer: &GatewayProducer, metrics: &Metrics) -> InFlight {
    let msg = Message {
        topic: &inbound.topic,
        payload: &inbound.payload,
        qos: inbound.qos,
        retain: inbound.retain,
        received_at: inbound.received_at,
    };
    let payload = Payload::new(&inbound.payload);
    let mut records = Vec::new();
    let mut matched = false;
    for route in table.matching(&inbound.topic) {
        matched = true;
        let route_name: Arc<str> = Arc::from(route.name.as_str());
        let (record, device_id, dead_letter) = match envelope::build(route, &msg, &payload) {
            Outcome::Record { record, device_id, device_id_source } => {
                metrics.device_id(device_id_source);
                (record, device_id, false)
            }
            Outcome::DeadLetter { record, device_id, reason } => {
                metrics.dead_lettered(&route.name, &inbound.topic, &device_id, &record.topic, &reason);
                (record, device_id, true)
            }
        };
        match kafka::enqueue(producer, &record).await {
            Ok(delivery) => {
                metrics.records_enqueued.fetch_add(1, Relaxed);
                records.push(Pending { delivery, route: route_name, topic: record.topic, device_id, dead_letter });
            }
            // Refused before it was queued (too large for `message.max.bytes`, unknown topic, ...):
            // dead-letter the message as published, with the reason.
            Err(e) if !dead_letter => {
                let reason = format!("Kafka refused the record: {e}");
                metrics.dead_lettered(&route.name, &inbound.topic, &device_id, &route.dead_letter_topic, &reason);
                let mut headers = record.headers;
                headers.push((HEADER_DLQ_REASON, reason.into_bytes()));
                let dlq = Record {
                    topic: route.dead_letter_topic.clone(),
                    key: Some(device_id.as_bytes().to_vec()),
                    value: inbound.payload.to_vec(),
                    headers,
                };
                match kafka::enqueue(producer, &dlq).await {
                    Ok(delivery) => records.push(Pending { delivery, route: route_name, topic: dlq.topic, device_id, dead_letter: true }),
                    Err(e) => metrics.record_failed(&route.name, &dlq.topic, &device_id, &e),
                }
            }
            Err(e) => metrics.record_failed(&route.name, &record.topic, &device_id, &e),
        }
    }
    if !matched {
        metrics.message_unrouted(&inbound.topic);
    }
    InFlight { records }
}

/// Awaits delivery results in the order the messages arrived and counts them.
async fn deliveries(mut rx: mpsc::Receiver<InFlight>, metrics: Arc<Metrics>) {
    while let Some(inflight) = rx.recv().await {
        for p in inflight.records {
            match p.delivery.await {
                Ok(Ok(d)) => metrics.record_delivered(p.dead_letter, &p.route, &p.topic, d.partition, d.offset),
                Ok(Err((e, _))) => metrics.record_failed(&p.route, &p.topic, &p.device_id, &e),
                Err(_canceled) => metrics.record_failed(&p.route, &p.topic, &p.device_id, &Canceled),
            }
        }
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
