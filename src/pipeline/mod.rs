//! The wiring: the whole path of a message, top to bottom.
//!
//! ```text
//! mqtt::run ──Message──▶ intake ──▶ Engine::take: facts once, then per matching route (the table in
//!     effect when it arrived): device, replica, rate limit, envelope::build ──▶ kafka::send (tagged)
//! librdkafka ──delivery reports, in batches──▶ Engine: delivered, or the failure policy (retry,
//!     dead-letter, cut, reject) ──▶ Acks (arrival order) ──AckToken──▶ mqtt::run ──▶ PUBACK / PUBREC
//! ```
//!
//! - `engine.rs`: the engine task: taking messages, producing their records, settling what Kafka reports;
//! - `policy.rs`: the one failure policy, for every point where a record can fail;
//! - `retries.rs`: records to produce again, each when due;
//! - `held.rs`: records held back by their route's rate limit until their turn;
//! - `awaiting.rs`: records waiting for their route's registry schema;
//! - `inflight.rs`: messages and records in flight, indexed by delivery tag;
//! - `sequencer.rs`: acks in arrival order, after Kafka, on the current connection only;
//! - `swap.rs`: new Kafka settings from a reload: a new producer, checked, then swapped in by the engine;
//! - `follow.rs`: opening the spool; the registry's and the spool's settings from a reload.
//!
//! One task, the engine, takes messages, produces their records and settles them as Kafka reports: no
//! task, future or channel per record, and no lock but the one the reports arrive under.
//!
//! Every queue is bounded: MQTT → pipeline by `mqtt.buffer_bytes` (the intake), messages between receipt
//! and settlement by `mqtt.max_unacked_messages`, the producer by `kafka.queue_max_*`. When one fills, the
//! stage before it waits; at the MQTT edge the gateway stops reading the connection, so the broker holds
//! the rest (QoS 1/2 unacknowledged, QoS 0 in its queue) instead of the gateway dropping anything.
//!
//! This is the one module that imports both edges; neither edge imports it.

mod awaiting;
mod engine;
mod follow;
mod held;
mod inflight;
mod policy;
mod retries;
mod sequencer;
mod spooled;
mod swap;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::reload;
use crate::config::Config;
use crate::core::message::AckToken;
use crate::downlink;
use crate::kafka;
use crate::mqtt;
use crate::mqtt::intake;
use crate::ops::health::{Loop, HEARTBEAT_EVERY};
use crate::ops::http;
use crate::ops::metrics::{self, LiveGauges, Metrics};
use crate::registry;
use engine::Engine;

/// What a finished run reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    /// Records still in the producer, plus messages not settled, when the grace period ran out.
    pub undelivered: u64,
    /// The run ended because of a fatal producer error.
    pub fatal: bool,
    /// Records kept in the disk spool at exit, read back at the next start.
    pub spooled: u64,
    pub snapshot: metrics::Snapshot,
}

/// Runs the gateway until `shutdown` is cancelled, then drains: messages already taken are delivered
/// (bounded by `shutdown.grace_period_secs`), the producer is flushed, MQTT disconnects.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<RunSummary> {
    let metrics = Arc::new(Metrics::default());
    // First, so that probes and scrapes answer while the brokers are still being reached.
    let server = match config.http {
        Some(addr) => Some(http::start(addr, metrics.clone()).context("cannot start the HTTP server")?),
        None => None,
    };
    // It moves when a reload changes `http.listen`; it stops when the run is over.
    let (http_tx, listen) = watch::channel(config.http);
    let _http = AbortOnDrop(tokio::spawn(http::follow(server, listen, metrics.clone())));
    {
        // Readiness turns 503 the moment shutdown begins, before anything is drained.
        let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            metrics.health.shutting_down.store(true, Relaxed);
        });
    }
    let producer = kafka::producer_reporting(&config.kafka, Some(metrics.clone()))
        .map_err(|e| anyhow::anyhow!("cannot create the Kafka producer: {}", kafka::creation_error(&e)))?;
    let producer = Arc::new(producer);
    let in_use = swap::InUse::new(producer.clone());
    // A fatal producer error stops the gateway: nothing more is acknowledged, and a restart (by the
    // orchestrator) brings a fresh producer; unacknowledged QoS 1/2 messages come again from the broker.
    let fatal = CancellationToken::new();
    {
        let (in_use, fatal, shutdown) = (in_use.clone(), fatal.clone(), shutdown.clone());
        tokio::spawn(async move {
            kafka::watch_fatal(&|| in_use.get(), fatal.clone(), shutdown.clone()).await;
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
    if let Some(s) = config.replicas {
        tracing::info!(
            replica = s.index,
            replicas = s.count,
            "ordered replicas: writing the devices of this replica's share, acknowledging the others"
        );
    }
    run_inner(config, in_use, metrics, shutdown, fatal, http_tx).await
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The spool's directory cannot be used (missing parent, not a directory, read-only, permissions,
/// locked by another gateway): a configuration problem, named with the path.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SpoolUnusable(String);

async fn run_inner(
    config: Config,
    in_use: swap::InUse,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    fatal: CancellationToken,
    http_tx: watch::Sender<Option<std::net::SocketAddr>>,
) -> anyhow::Result<RunSummary> {
    // The route table in effect: the reloader publishes new ones, the MQTT side reads them.
    let mut table = config.routes.clone();
    metrics.routes.bind(&mut table);
    metrics.routes_loaded(1);
    let (routes_tx, routes) = watch::channel(Arc::new(table));
    // Before anything connects: a spool that cannot be used stops the start, with no message taken.
    // The spool's settings as reloads change them (a new `dir` needs a restart).
    let (spool_tx, spool_settings) = watch::channel(config.spool.clone());
    let spool = match &config.spool {
        Some(settings) => Some(follow::open_spool(settings, spool_settings, routes.clone(), &metrics)?),
        None => None,
    };
    let started = Instant::now();
    let (intake_tx, intake_rx) = intake::intake(config.mqtt.buffer_bytes);
    {
        let queue = in_use.clone();
        metrics.set_live_gauges(LiveGauges {
            producer_queue: Box::new(move || i64::from(kafka::in_flight(&queue.get()))),
            intake_bytes: Box::new(intake_tx.gauge()),
        });
    }
    // The runtime's own heartbeat: if anything blocks this thread, it stops, and /healthz says so.
    let heartbeat = {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            loop {
                metrics.health.beat(Loop::Runtime);
                tokio::time::sleep(HEARTBEAT_EVERY).await;
            }
        })
    };
    // The Schema Registry edge, before anything is taken from MQTT: a client that cannot be made stops
    // the start here. Its task outlives the shutdown signal: records that wait for a schema while the
    // engine drains still need it; it stops when the engine is done.
    let registry_stop = CancellationToken::new();
    let schemas = match &config.schema_registry {
        Some(settings) => {
            let client = registry::client::Client::new(settings, Some(metrics.clone()))
                .map_err(|e| anyhow::anyhow!("cannot make the Schema Registry client: {e}"))?;
            let schemas = registry::Schemas::new(client, settings.refresh, metrics.clone());
            schemas.want_table(&routes.borrow());
            tokio::spawn(registry::run(schemas.clone(), routes.clone(), registry_stop.clone()));
            tracing::info!(url = %schemas.url(), "schema registry");
            Some(schemas)
        }
        None => None,
    };
    // Unbounded, yet bounded by the window: an ack is due only for a message that holds a place in it.
    let (acks_tx, acks_rx) = mpsc::unbounded_channel::<AckToken>();
    let connection = Arc::new(AtomicU64::new(0));
    let stop = mqtt::Stop { receiving: shutdown.child_token(), disconnect: CancellationToken::new() };
    let (mqtt_tx, mqtt_settings) = watch::channel(config.mqtt.clone());
    // The downlinks follow the MQTT settings the uplink edge has connected with, not those a reload
    // asks for: a broker, password or certificate it was refused with is not tried by them either.
    let (applied_tx, mqtt_settings_for_downlinks) = watch::channel(config.mqtt.clone());
    let links = mqtt::Links {
        out: intake_tx,
        acks: acks_rx,
        connection: connection.clone(),
        settings: mqtt_settings,
        applied: applied_tx,
    };
    let mqtt_task = tokio::spawn(mqtt::run(config.mqtt.clone(), routes.clone(), links, metrics.clone(), stop.clone()));
    let (stats_tx, stats_every) = watch::channel(Duration::from_secs(config.log.stats_interval_secs));
    let stats = tokio::spawn(stats(metrics.clone(), stats_every, shutdown.clone()));
    let (kafka_tx, kafka_changes) = watch::channel(reload::KafkaChange::of(&config));
    // The downlinks follow the Kafka changes the uplink's check passed (`swap`), as they follow the MQTT
    // settings its edge connected with.
    let (kafka_checked_tx, kafka_checked) = watch::channel(reload::KafkaChange::of(&config));
    let (grace_tx, grace_rx) = watch::channel(config.shutdown_grace);
    let (window_tx, windows) = watch::channel(config.mqtt.max_unacked_messages);
    let (registry_tx, registry_settings) = watch::channel(config.schema_registry.clone());
    let (downlinks_tx, downlinks) = watch::channel(config.downlinks.clone());
    // The way back (Kafka → MQTT): its own consumers and MQTT connection, beside the uplink.
    let downlinks_task = {
        let links = downlink::Links {
            downlinks,
            kafka: kafka_checked,
            mqtt: mqtt_settings_for_downlinks,
            grace: grace_rx.clone(),
        };
        tokio::spawn(downlink::run(links, metrics.clone(), shutdown.clone()))
    };
    if let Some(schemas) = &schemas {
        tokio::spawn(follow::registry(schemas.clone(), registry_settings, metrics.clone()));
    }
    let targets = reload::Targets {
        routes: routes_tx,
        kafka: kafka_tx,
        mqtt: mqtt_tx,
        http: http_tx,
        stats_every: stats_tx,
        grace: grace_tx,
        registry: registry_tx,
        downlinks: downlinks_tx,
        spool: spool_tx,
        window: window_tx,
    };
    let reloader = tokio::spawn(reload::run(config.clone(), targets, metrics.clone(), shutdown.clone()));
    let (swaps_tx, swaps) = mpsc::channel(1);
    let swapper = tokio::spawn(swap::run(kafka_changes, metrics.clone(), swaps_tx, kafka_checked_tx, shutdown.clone()));
    // The grace period runs from the signal, whatever the pipeline is waiting for (a full window, a
    // full producer queue, Kafka).
    let give_up = CancellationToken::new();
    {
        // What follows giving up (a last flush, the acks, DISCONNECT) needs a moment too: keep a quarter
        // of the grace period, at most 3 s, for it, so the whole shutdown fits in the grace period (and in
        // an orchestrator's termination grace period of the same length).
        // The grace period as in effect when the shutdown begins (a reload may change it).
        let (shutdown, give_up, grace) = (shutdown.clone(), give_up.clone(), grace_rx.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            let grace = *grace.borrow();
            let reserve = (grace / 4).min(Duration::from_secs(3));
            tokio::time::sleep(grace - reserve).await;
            give_up.cancel();
        });
    }

    let producer = in_use.get();
    let events = kafka::events::Events::new(producer.clone()).context("cannot watch the Kafka producer's events")?;
    let links = engine::Links {
        producer,
        events,
        metrics: metrics.clone(),
        acks: acks_tx,
        connection,
        fatal: fatal.clone(),
        schemas,
        spool,
        swaps,
        in_use: in_use.clone(),
    };
    let mut engine = Engine::new(links, config.mqtt.max_packet_size, config.mqtt.max_unacked_messages, config.replicas);
    engine.follow_window(windows);
    let shutting_down = shutdown.clone();
    engine.run(intake_rx, &give_up).await;
    let grace = *grace_rx.borrow();
    if !give_up.is_cancelled() {
        engine.settle_replayed(&give_up, grace.min(Duration::from_secs(5))).await;
    }
    // Records read back from the spool and in the producer stay in the spool until Kafka has taken
    // them: not lost if the flush below does not get them there.
    let kept = engine.replayed_in_flight() as u64;
    engine.close_spool();
    tracing::info!(grace_period_secs = grace.as_secs(), "shutting down: delivering the messages already taken");
    if give_up.is_cancelled() && shutting_down.is_cancelled() {
        tracing::error!("grace period over before every message was settled");
    }
    let unsettled = engine.unsettled() as u64;
    drop(engine);
    registry_stop.cancel();

    let left = if give_up.is_cancelled() { Duration::from_millis(100) } else { grace.min(Duration::from_secs(5)) };
    swapper.abort();
    let producer = in_use.get();
    let flush_producer = producer.clone();
    let flushed = tokio::task::spawn_blocking(move || kafka::flush(&flush_producer, left)).await;
    let undelivered = (kafka::in_flight(&producer).max(0) as u64).saturating_sub(kept) + unsettled;
    match flushed {
        Ok(Ok(())) => tracing::info!("Kafka producer flushed"),
        Ok(Err(e)) if undelivered == 0 => {
            tracing::info!(error = %e, "Kafka producer not flushed; what it held is kept in the spool")
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, undelivered, "Kafka producer not flushed within the grace period; records are lost")
        }
        Err(e) => tracing::error!(error = %e, "flush task failed"),
    }
    stop.disconnect.cancel();
    let _ = mqtt_task.await;
    let _ = downlinks_task.await;
    stats.abort();
    reloader.abort();
    heartbeat.abort();
    let snapshot = metrics.snapshot();
    // The last line covers the whole run.
    metrics::log_stats(snapshot, metrics::Snapshot::default(), started.elapsed(), &metrics);
    let spooled = metrics.spool_size().map_or(0, |s| (s.held)().1);
    Ok(RunSummary { undelivered, snapshot, fatal: fatal.is_cancelled(), spooled })
}

/// Logs the statistics line every `every` (the spec's "metrics available via logs").
async fn stats(metrics: Arc<Metrics>, mut every: watch::Receiver<Duration>, shutdown: CancellationToken) {
    let mut before = metrics.snapshot();
    let mut at = Instant::now();
    // False once the reloader is gone: the interval stays as it is.
    let mut open = true;
    loop {
        // 0: no statistics line, until a reload sets an interval.
        let period = *every.borrow_and_update();
        tokio::select! {
            _ = tokio::time::sleep(period), if !period.is_zero() => {}
            changed = every.changed(), if open => {
                open = changed.is_ok();
                continue;
            }
            _ = shutdown.cancelled() => return,
        }
        let now = metrics.snapshot();
        metrics::log_stats(now, before, at.elapsed(), &metrics);
        before = now;
        at = Instant::now();
    }
}
