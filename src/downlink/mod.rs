//! The downlink edge: Kafka → MQTT. It owns the downlinks' Kafka consumers (one per downlink, each on
//! its own thread), their offsets, the dead-letter writes, and the downlinks' own MQTT connection.
//!
//! ```text
//! consumer thread ──(record, ticket)──▶ worker: rate limit, core::downlink::render
//!     ├─ publishable ──Job──▶ publisher (one MQTT connection) ──PUBACK/PUBCOMP/written──▶ Offsets::done
//!     └─ not publishable ──▶ dead-letter topic ──Kafka has it──▶ Offsets::done
//! consumer thread: commits the first record not done per partition, every 200 ms and before a rebalance
//! ```
//!
//! A rebalance that takes a partition away forgets its records in flight: the worker and the publisher
//! drop those not yet written to the broker, so the partition's next owner, reading again from the last
//! commit, is the only one that publishes them (a device does not get two owners' interleaved copies).
//!
//! - `consumer.rs`: the Kafka consumer, its window (pause/resume), commits and rebalances;
//! - `offsets.rs`: which offsets may be committed: only past records that are done, in partition order;
//! - `publisher.rs`: the MQTT connection, packet ids to records, publishing again after a lost connection;
//! - `dead_letter.rs`: writing what cannot be published to the dead-letter topic.
//!
//! Reloads: a downlink added starts, one removed stops (after what it has in flight, within the grace
//! period), one whose template, QoS, retain, dead-letter topic or rate limit changed takes the change
//! at its next record; new topics, group or consumer properties restart its consumer, new Kafka settings
//! every consumer once the uplink's check has found them to reach and authenticate to the cluster (or
//! the files librdkafka reads were renewed). New MQTT settings move the connection once the uplink's
//! edge has connected with them (`mqtt::Links::applied`): settings the broker refused are not tried
//! here either.

pub mod consumer;
mod dead_letter;
pub mod offsets;
pub mod publisher;

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::reload::KafkaChange;
use crate::config::{KafkaSettings, MqttSettings, Protocol};
use crate::core::downlink::{render, Downlink, Record};
use crate::core::routing::rate_limit::Schedule;
use crate::ops::metrics::downlinks::DownlinkStats;
use crate::ops::metrics::Metrics;
use dead_letter::DeadLetters;
use offsets::{Offsets, Ticket};
use publisher::{Job, Settle};

/// Records read and not yet done, per downlink, at most: beyond it the consumer pauses its partitions.
pub const CONSUMER_WINDOW: usize = 2000;

/// What the downlinks follow.
pub struct Links {
    pub downlinks: watch::Receiver<Vec<Arc<Downlink>>>,
    /// The Kafka settings the uplink's check found to reach and authenticate to the cluster
    /// (`pipeline::swap`): settings it refused are not tried here either.
    pub kafka: watch::Receiver<KafkaChange>,
    /// The MQTT settings in effect on the uplink's connection.
    pub mqtt: watch::Receiver<MqttSettings>,
    pub grace: watch::Receiver<Duration>,
}

struct Running {
    downlink: watch::Sender<Arc<Downlink>>,
    stop: CancellationToken,
    thread: std::thread::JoinHandle<()>,
    stats: Arc<DownlinkStats>,
}

struct Shared {
    jobs: mpsc::Sender<Job>,
    dead_letters: watch::Receiver<Option<DeadLetters>>,
    mqtt: watch::Receiver<MqttSettings>,
    metrics: Arc<Metrics>,
}

/// Runs the downlinks until `shutdown`, then lets each finish what it has in flight (within the grace
/// period) and commit, and closes the MQTT connection last.
pub async fn run(mut links: Links, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    // No downlink, no connection: wait for the first one (a reload may add it).
    loop {
        if !links.downlinks.borrow_and_update().is_empty() {
            break;
        }
        tokio::select! {
            changed = links.downlinks.changed() => if changed.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
    let mut change = links.kafka.borrow_and_update().clone();
    let mut kafka = change.settings.clone();
    let (dead_letters_tx, dead_letters) = watch::channel(dead_letter_producer(&kafka));
    let (jobs_tx, jobs) = mpsc::channel(256);
    let publisher_stop = CancellationToken::new();
    let publisher = tokio::spawn(publisher::run(
        links.mqtt.clone(),
        jobs,
        dead_letters.clone(),
        metrics.clone(),
        publisher_stop.clone(),
    ));
    let shared = Shared { jobs: jobs_tx, dead_letters, mqtt: links.mqtt.clone(), metrics: metrics.clone() };
    let mut running: HashMap<Arc<str>, Running> = HashMap::new();
    let mut downlinks_open = true;
    let mut kafka_open = true;
    loop {
        let wanted = links.downlinks.borrow_and_update().clone();
        let grace = *links.grace.borrow();
        apply(&wanted, &mut running, &kafka, &shared, grace).await;
        tokio::select! {
            changed = links.downlinks.changed(), if downlinks_open => downlinks_open = changed.is_ok(),
            changed = links.kafka.changed(), if kafka_open => {
                kafka_open = changed.is_ok();
                let new = links.kafka.borrow_and_update().clone();
                // New settings, or the files librdkafka reads renewed in place (it reads them once).
                if kafka_open && !new.same(&change) {
                    kafka = new.settings.clone();
                    change = new;
                    tracing::info!("downlinks: new Kafka settings; the consumers start again with them");
                    dead_letters_tx.send_replace(dead_letter_producer(&kafka));
                    let names: Vec<Arc<str>> = running.keys().cloned().collect();
                    let grace = *links.grace.borrow();
                    stop_all(&mut running, &names, grace).await;
                }
            }
            _ = shutdown.cancelled() => break,
        }
    }
    let names: Vec<Arc<str>> = running.keys().cloned().collect();
    let grace = *links.grace.borrow();
    stop_all(&mut running, &names, grace).await;
    publisher_stop.cancel();
    let _ = publisher.await;
}

fn dead_letter_producer(kafka: &KafkaSettings) -> Option<DeadLetters> {
    Some(DeadLetters::new(kafka))
}

/// Starts, changes and stops downlinks so that `wanted` runs.
async fn apply(
    wanted: &[Arc<Downlink>],
    running: &mut HashMap<Arc<str>, Running>,
    kafka: &KafkaSettings,
    shared: &Shared,
    grace: Duration,
) {
    let gone: Vec<Arc<str>> = running.keys().filter(|n| !wanted.iter().any(|d| &d.name == *n)).cloned().collect();
    let restart: Vec<Arc<str>> = wanted
        .iter()
        .filter(|d| running.get(&d.name).is_some_and(|r| r.downlink.borrow().consumer_differs(d)))
        .map(|d| d.name.clone())
        .collect();
    for name in &gone {
        tracing::info!(downlink = %name, "downlink removed");
    }
    stop_all(running, &gone, grace).await;
    stop_all(running, &restart, grace).await;
    for d in wanted {
        match running.get(&d.name) {
            Some(r) => {
                if **r.downlink.borrow() != **d {
                    tracing::info!(downlink = %d.name, mqtt_topic = %d.mqtt_topic, "downlink changed");
                    r.downlink.send_replace(d.clone());
                }
            }
            None => match start(d, kafka, shared, grace) {
                Ok(r) => {
                    running.insert(d.name.clone(), r);
                }
                Err(e) => tracing::error!(downlink = %d.name, error = %e, "cannot start the downlink"),
            },
        }
    }
}

/// Stops the named downlinks together: each finishes what it has in flight, within the grace period.
async fn stop_all(running: &mut HashMap<Arc<str>, Running>, names: &[Arc<str>], grace: Duration) {
    let mut threads = Vec::new();
    for name in names {
        if let Some(r) = running.remove(name) {
            r.stop.cancel();
            r.stats.running.store(false, Relaxed);
            threads.push(r.thread);
        }
    }
    if threads.is_empty() {
        return;
    }
    let joined = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    });
    if tokio::time::timeout(grace + Duration::from_secs(5), joined).await.is_err() {
        tracing::error!("downlinks: a consumer did not stop in time");
    }
}

fn start(d: &Arc<Downlink>, kafka: &KafkaSettings, shared: &Shared, grace: Duration) -> Result<Running, String> {
    let stats = shared.metrics.downlinks.get(&d.name);
    let offsets = Arc::new(Offsets::default());
    let (records_tx, records) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let thread = consumer::spawn(consumer::Setup {
        downlink: d.clone(),
        kafka: kafka.clone(),
        offsets: offsets.clone(),
        stats: stats.clone(),
        out: records_tx,
        window: CONSUMER_WINDOW,
        stop: stop.clone(),
        // As the uplink: a quarter of the grace period, at most 3 s, is kept for what follows.
        drain: grace.saturating_sub((grace / 4).min(Duration::from_secs(3))),
    })?;
    let (downlink_tx, downlink) = watch::channel(d.clone());
    let worker = Worker {
        downlink,
        jobs: shared.jobs.clone(),
        dead_letters: shared.dead_letters.clone(),
        mqtt: shared.mqtt.clone(),
        offsets,
        stats: stats.clone(),
    };
    tokio::spawn(worker.run(records));
    stats.running.store(true, Relaxed);
    tracing::info!(
        downlink = %d.name,
        kafka_topics = %d.kafka_topics.join(","),
        group_id = %d.group_id,
        mqtt_topic = %d.mqtt_topic,
        dead_letter_topic = %d.dead_letter_topic,
        "downlink"
    );
    Ok(Running { downlink: downlink_tx, stop, thread, stats })
}

/// Takes one downlink's records in order: waits for the rate limit, renders, hands each to the
/// publisher or the dead-letter topic.
struct Worker {
    downlink: watch::Receiver<Arc<Downlink>>,
    jobs: mpsc::Sender<Job>,
    dead_letters: watch::Receiver<Option<DeadLetters>>,
    mqtt: watch::Receiver<MqttSettings>,
    offsets: Arc<Offsets>,
    stats: Arc<DownlinkStats>,
}

impl Worker {
    fn settle(&self, ticket: Ticket) -> Settle {
        Settle { ticket, offsets: self.offsets.clone(), stats: self.stats.clone() }
    }

    async fn run(mut self, mut records: mpsc::UnboundedReceiver<(Record, Ticket)>) {
        let mut schedule: Option<Schedule> = None;
        let mut said: Option<Instant> = None;
        let mut unsaid = 0u64;
        while let Some((record, ticket)) = records.recv().await {
            // A record of a partition revoked while it waited here is its next owner's to publish.
            if !self.offsets.holds(&ticket) {
                continue;
            }
            let d = self.downlink.borrow_and_update().clone();
            if let Some(limit) = d.rate_limit {
                let s = schedule.get_or_insert_with(|| Schedule::new(limit, Instant::now()));
                if s.limit != limit {
                    *s = Schedule::new(limit, Instant::now());
                }
                if let Some(wait) = s.reserve(Instant::now(), None).filter(|w| !w.is_zero()) {
                    tokio::time::sleep(wait).await;
                    if !self.offsets.holds(&ticket) {
                        continue;
                    }
                }
            } else {
                schedule = None;
            }
            let (max_packet, v5) = {
                let m = self.mqtt.borrow();
                (m.max_packet_size, m.protocol == Protocol::V5)
            };
            match render(&d, &record, max_packet, v5) {
                Ok(publish) => {
                    let job = Job {
                        publish,
                        settle: self.settle(ticket),
                        record,
                        downlink: d.name.clone(),
                        dead_letter_topic: d.dead_letter_topic.clone(),
                    };
                    if self.jobs.send(job).await.is_err() {
                        return;
                    }
                }
                Err(why) => {
                    if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(
                            downlink = %d.name,
                            reason = why.kind.as_str(),
                            detail = %why.detail,
                            kafka_topic = %record.topic,
                            partition = record.partition,
                            offset = record.offset,
                            dead_letter_topic = %d.dead_letter_topic,
                            suppressed = unsaid,
                            "downlink record cannot be published; dead-lettered"
                        );
                        said = Some(Instant::now());
                        unsaid = 0;
                    } else {
                        unsaid += 1;
                    }
                    let producer = loop {
                        if let Some(p) = self.dead_letters.borrow_and_update().clone() {
                            break p;
                        }
                        if self.dead_letters.changed().await.is_err() {
                            return;
                        }
                    };
                    producer.send(d.dead_letter_topic.clone(), d.name.clone(), record, why, self.settle(ticket));
                }
            }
        }
    }
}
