//! New Kafka settings, applied without a restart: a new producer, built and checked before it is used.
//!
//! A reload sends each change of `kafka.*` or of the files librdkafka reads ([`KafkaChange`]). This task
//! builds a candidate producer from it and asks the cluster for its metadata: reached and authenticated.
//! Only then does it hand the producer to the engine, which swaps it in once the producer in use has
//! delivered what it holds (`engine/swap.rs`): per-device order holds across the swap. A candidate that
//! cannot connect or authenticate within [`CHECK_TIMEOUT`] is refused: the producer in use stays, and
//! the refusal is logged with its cause and counted; readiness does not change. The downlinks' consumers
//! follow the changes that pass, never one refused here.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::reload::KafkaChange;
use crate::kafka::{self, events::Events, GatewayProducer};
use crate::ops::metrics::Metrics;

/// How long a candidate producer has to reach and authenticate to its cluster.
pub(super) const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The producer in use, for those outside the engine that need it (the queue gauge, the fatal-error
/// watch, the last flush): the engine replaces it when it swaps.
#[derive(Clone)]
pub(super) struct InUse(Arc<Mutex<Arc<GatewayProducer>>>);

impl InUse {
    pub(super) fn new(producer: Arc<GatewayProducer>) -> Self {
        InUse(Arc::new(Mutex::new(producer)))
    }

    pub(super) fn get(&self) -> Arc<GatewayProducer> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn set(&self, producer: Arc<GatewayProducer>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = producer;
    }
}

/// A checked producer for the engine to swap in.
pub(super) struct Swap {
    pub(super) producer: Arc<GatewayProducer>,
    pub(super) events: Events,
    /// When the change reached this task: the switch time is measured from it.
    pub(super) asked_at: Instant,
}

/// Checks each Kafka change and hands the producers that pass to the engine, until `stop`. A change that
/// passes is also told to `passed` (the downlinks' consumers follow it).
pub(super) async fn run(
    mut changes: watch::Receiver<KafkaChange>,
    metrics: Arc<Metrics>,
    engine: mpsc::Sender<Swap>,
    passed: watch::Sender<KafkaChange>,
    stop: CancellationToken,
) {
    let mut applied = changes.borrow_and_update().clone();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
        let change = changes.borrow_and_update().clone();
        if change.same(&applied) {
            tracing::info!("the Kafka settings in effect are unchanged");
            continue;
        }
        let asked_at = Instant::now();
        let servers = change.settings.bootstrap_servers.clone();
        tracing::info!(bootstrap_servers = %servers, "Kafka settings changed: checking a producer with the new ones");
        let producer = match kafka::candidate(&change.settings, metrics.clone()) {
            Ok(p) => Arc::new(p),
            Err(why) => {
                refused(&metrics, &servers, &why);
                continue;
            }
        };
        let checked = producer.clone();
        let verdict = tokio::task::spawn_blocking(move || kafka::verify(&checked, CHECK_TIMEOUT)).await;
        let brokers = match verdict {
            Ok(Ok(brokers)) => brokers,
            Ok(Err(why)) => {
                refused(&metrics, &servers, &why);
                retire(producer);
                continue;
            }
            Err(e) => {
                refused(&metrics, &servers, &format!("the check failed: {e}"));
                retire(producer);
                continue;
            }
        };
        let events = match Events::new(producer.clone()) {
            Ok(events) => events,
            Err(e) => {
                refused(&metrics, &servers, &format!("cannot watch the new producer's events: {e}"));
                retire(producer);
                continue;
            }
        };
        tracing::info!(
            bootstrap_servers = %servers,
            brokers,
            checked_ms = asked_at.elapsed().as_millis() as u64,
            "the new Kafka settings reach and authenticate to the cluster: switching producers once the one in use has delivered what it holds"
        );
        if engine.send(Swap { producer, events, asked_at }).await.is_err() {
            return;
        }
        passed.send_replace(change.clone());
        applied = change;
    }
}

fn refused(metrics: &Metrics, servers: &str, why: &str) {
    metrics.kafka_swaps_refused.fetch_add(1, Relaxed);
    tracing::error!(
        bootstrap_servers = servers,
        reason = why,
        "new Kafka settings refused: the producer in use stays (send SIGHUP to try them again)"
    );
}

/// Drops a producer no longer used, off the runtime: librdkafka's destroy waits for its threads.
pub(super) fn retire(producer: Arc<GatewayProducer>) {
    kafka::set_live(&producer, false);
    tokio::task::spawn_blocking(move || drop(producer));
}
