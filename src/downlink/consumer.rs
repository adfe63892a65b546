//! A downlink's Kafka consumer, on a thread of its own (librdkafka's calls block): it reads records
//! while fewer than the window are in flight; when the window stays full it pauses its partitions
//! (memory stays bounded and the group keeps the consumer, which goes on polling); it commits what [`Offsets`] says is done,
//! every 200 ms and before a rebalance takes partitions away; at the end it waits for what is in flight
//! (at most the drain time), commits, and leaves the group.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::offsets::{Offsets, Ticket};
use crate::config::KafkaSettings;
use crate::core::downlink::{Downlink, Record};
use crate::kafka;
use crate::ops::metrics::downlinks::DownlinkStats;

/// How often done records are committed.
const COMMIT_EVERY: Duration = Duration::from_millis(200);

/// How long a full window waits for room before the partitions are paused.
const HOLD: Duration = Duration::from_secs(1);

/// How long a rebalance waits for the records in flight to be published before it commits and lets the
/// partitions go (well within the group's rebalance timeout, `max.poll.interval.ms`).
const REVOKE_WAIT: Duration = Duration::from_secs(5);

struct Context {
    name: Arc<str>,
    offsets: Arc<Offsets>,
    stats: Arc<DownlinkStats>,
    /// The partitions were (re)assigned: the pause state starts over.
    assigned: std::sync::atomic::AtomicBool,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        kafka::log(level, fac, message)
    }

    /// The lag: librdkafka's `consumer_lag` (end of the partition minus the committed offset), summed
    /// over the partitions held.
    fn stats_raw(&self, statistics: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(statistics) else { return };
        let Some(topics) = v.get("topics").and_then(|t| t.as_object()) else { return };
        let mut lag = 0i64;
        for t in topics.values() {
            let Some(partitions) = t.get("partitions").and_then(|p| p.as_object()) else { continue };
            for (id, p) in partitions {
                if id == "-1" {
                    continue;
                }
                lag += p.get("consumer_lag").and_then(|l| l.as_i64()).filter(|l| *l > 0).unwrap_or(0);
            }
        }
        self.stats.lag.store(lag, Relaxed);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", downlink = %self.name, error = %error, reason, "Kafka consumer error; librdkafka retries");
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                // What is in flight gets a moment to be published (nothing new is read meanwhile), then
                // what is done is committed while the partitions are still ours; the rest is read again
                // by whoever gets them (a duplicate, never a gap).
                let deadline = Instant::now() + REVOKE_WAIT;
                while self.offsets.in_flight() > 0 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                commit(consumer, &self.offsets, &self.stats, CommitMode::Sync);
                let revoked: Vec<(Arc<str>, i32)> =
                    tpl.elements().iter().map(|e| (Arc::from(e.topic()), e.partition())).collect();
                let left = self.offsets.revoke(&revoked);
                self.stats.in_flight.store(self.offsets.in_flight() as i64, Relaxed);
                if left > 0 {
                    tracing::warn!(downlink = %self.name, partitions = revoked.len(), records_left = left, "downlink partitions revoked before all their records were published; their next owner publishes them again from the last commit, and they are not published here");
                } else {
                    tracing::info!(downlink = %self.name, partitions = revoked.len(), "downlink partitions revoked");
                }
            }
            Rebalance::Assign(tpl) => {
                self.assigned.store(true, Relaxed);
                let list: Vec<String> =
                    tpl.elements().iter().map(|e| format!("{}[{}]", e.topic(), e.partition())).collect();
                tracing::info!(downlink = %self.name, partitions = %list.join(","), "downlink partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!(downlink = %self.name, error = %e, "downlink rebalance failed"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            self.stats.commit_errors.fetch_add(1, Relaxed);
            let back: Vec<(Arc<str>, i32, i64)> = offsets
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((Arc::from(e.topic()), e.partition(), o)),
                    _ => None,
                })
                .collect();
            self.offsets.failed(&back);
            tracing::warn!(downlink = %self.name, error = %e, "offset commit failed; the next one covers it");
        }
    }
}

/// Commits what is done and not yet committed.
fn commit(consumer: &BaseConsumer<Context>, offsets: &Offsets, stats: &DownlinkStats, mode: CommitMode) {
    let due = offsets.to_commit();
    if due.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, next) in &due {
        if tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)).is_err() {
            offsets.failed(&due);
            return;
        }
    }
    match consumer.commit(&tpl, mode) {
        Ok(()) => {
            stats.commits.fetch_add(due.len() as u64, Relaxed);
        }
        Err(e) => {
            offsets.failed(&due);
            stats.commit_errors.fetch_add(1, Relaxed);
            tracing::warn!(downlink = %stats.name, error = %e, "offset commit failed; the next one covers it");
        }
    }
}

/// What a consumer thread needs.
pub struct Setup {
    pub downlink: Arc<Downlink>,
    pub kafka: KafkaSettings,
    pub offsets: Arc<Offsets>,
    pub stats: Arc<DownlinkStats>,
    pub out: mpsc::UnboundedSender<(Record, Ticket)>,
    /// Records in flight at most.
    pub window: usize,
    /// Stop reading; then wait for what is in flight up to `drain`.
    pub stop: CancellationToken,
    pub drain: Duration,
}

/// The consumer, made with the settings' connection and security properties and the downlink's own.
fn consumer(setup: &Setup) -> Result<BaseConsumer<Context>, String> {
    let mut cc = ClientConfig::new();
    for (k, v) in kafka::consumer_properties(&setup.kafka) {
        cc.set(k, v);
    }
    let d = &setup.downlink;
    cc.set("group.id", &d.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A new group starts at the beginning: a command written before the gateway first ran is
        // delivered, not skipped (`properties: {auto.offset.reset: latest}` says otherwise).
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000");
    for (k, v) in &d.properties {
        cc.set(k, v);
    }
    let context = Context {
        name: d.name.clone(),
        offsets: setup.offsets.clone(),
        stats: setup.stats.clone(),
        assigned: false.into(),
    };
    let consumer: BaseConsumer<Context> = cc.create_with_context(context).map_err(|e| kafka::creation_error(&e))?;
    let topics: Vec<&str> = d.kafka_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(|e| format!("cannot subscribe to {}: {e}", topics.join(", ")))?;
    Ok(consumer)
}

/// Starts the consumer thread. Fails if the consumer cannot be made (an invalid property, named).
pub fn spawn(setup: Setup) -> Result<std::thread::JoinHandle<()>, String> {
    let consumer = consumer(&setup)?;
    std::thread::Builder::new()
        .name(format!("downlink-{}", setup.downlink.name))
        .spawn(move || run(consumer, setup))
        .map_err(|e| format!("cannot start the consumer thread: {e}"))
}

fn set_paused(consumer: &BaseConsumer<Context>, stats: &DownlinkStats, pause: bool) -> bool {
    let Ok(assignment) = consumer.assignment() else { return false };
    let done = if pause { consumer.pause(&assignment) } else { consumer.resume(&assignment) };
    match done {
        Ok(()) => {
            stats.paused.store(pause, Relaxed);
            if pause {
                stats.pauses.fetch_add(1, Relaxed);
                tracing::debug!(downlink = %stats.name, "downlink paused: MQTT is behind");
            }
            true
        }
        Err(e) => {
            tracing::warn!(downlink = %stats.name, error = %e, "cannot pause or resume the downlink's partitions");
            false
        }
    }
}

fn record(m: &rdkafka::message::BorrowedMessage<'_>, topic: &mut Arc<str>) -> Record {
    if &**topic != m.topic() {
        *topic = Arc::from(m.topic());
    }
    let headers = m
        .headers()
        .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.map(Bytes::copy_from_slice))).collect())
        .unwrap_or_default();
    Record {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(Bytes::copy_from_slice),
        headers,
        payload: m.payload().map(Bytes::copy_from_slice).unwrap_or_default(),
    }
}

fn run(consumer: BaseConsumer<Context>, setup: Setup) {
    let Setup { downlink, offsets, stats, out, window, stop, drain, .. } = setup;
    let mut paused = false;
    let mut last_commit = Instant::now();
    let mut topic: Arc<str> = Arc::from("");
    let mut last_error: Option<(String, Instant)> = None;
    let (mut again, mut said_again) = (0u64, None::<Instant>);
    while !stop.is_cancelled() {
        if consumer.context().assigned.swap(false, Relaxed) {
            // librdkafka keeps a partition's pause through a rebalance: one paused when it was revoked
            // would never be read again once assigned back. So every assignment starts resumed (if the
            // resume fails, the loop below tries again).
            paused = !set_paused(&consumer, &stats, false);
        }
        // The window is full: MQTT is behind. Wait for room without reading (librdkafka keeps what it
        // fetched ahead); only if it stays full for HOLD, pause the partitions (the consumer goes on
        // polling, so the group keeps it), and resume once half the window is free. Pausing throws
        // librdkafka's read-ahead away, so it is kept for the long waits.
        let in_flight = offsets.in_flight();
        if in_flight >= window && !paused {
            let held = Instant::now();
            // Commits go on meanwhile: what is published while the window is full is committed on time.
            while !offsets.wait_for_room(window / 2, COMMIT_EVERY) {
                commit(&consumer, &offsets, &stats, CommitMode::Async);
                last_commit = Instant::now();
                if held.elapsed() >= HOLD || stop.is_cancelled() {
                    paused = set_paused(&consumer, &stats, true);
                    break;
                }
            }
        } else if paused && in_flight <= window / 2 && set_paused(&consumer, &stats, false) {
            paused = false;
        }
        let wait = if paused { Duration::from_millis(20) } else { Duration::from_millis(100) };
        match consumer.poll(wait) {
            None => {}
            Some(Ok(m)) => {
                let record = record(&m, &mut topic);
                match offsets.take(&topic, record.partition, record.offset) {
                    Some(ticket) => {
                        stats.consumed.fetch_add(1, Relaxed);
                        stats.in_flight.store(offsets.in_flight() as i64, Relaxed);
                        if out.send((record, ticket)).is_err() {
                            break;
                        }
                    }
                    // librdkafka can hand out a partition's records again after a pause (seen under
                    // load): the first copies stand. Said once a second at most, with the count.
                    None => {
                        again += 1;
                        if said_again.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                            tracing::warn!(downlink = %downlink.name, topic = %record.topic, partition = record.partition, offset = record.offset, records = again, "downlink: records read again before their first copies were settled; the first copies stand");
                            said_again = Some(Instant::now());
                            again = 0;
                        }
                    }
                }
            }
            Some(Err(e)) => {
                let text = e.to_string();
                let repeat =
                    matches!(&last_error, Some((t, at)) if *t == text && at.elapsed() < Duration::from_secs(30));
                if !repeat {
                    tracing::warn!(downlink = %downlink.name, error = %text, "Kafka consumer error");
                    last_error = Some((text, Instant::now()));
                }
            }
        }
        if last_commit.elapsed() >= COMMIT_EVERY {
            commit(&consumer, &offsets, &stats, CommitMode::Async);
            last_commit = Instant::now();
        }
    }
    // Nothing more is read; what is in flight may still be published within the drain time.
    set_paused(&consumer, &stats, true);
    let deadline = Instant::now() + drain;
    while offsets.in_flight() > 0 && Instant::now() < deadline {
        // Polling serves the commit callbacks and keeps the group's session; a record that still comes
        // is not taken (it is after the commit point, read again next time).
        let _ = consumer.poll(Duration::from_millis(50));
        commit(&consumer, &offsets, &stats, CommitMode::Async);
    }
    commit(&consumer, &offsets, &stats, CommitMode::Sync);
    let left = offsets.in_flight();
    if left > 0 {
        tracing::warn!(downlink = %downlink.name, in_flight = left, "downlink stopped with records not yet published; they are read again from the last commit");
    }
    offsets.revoke_all();
    stats.in_flight.store(0, Relaxed);
    // Not known any more: a removed downlink must not look like one that stopped catching up.
    stats.lag.store(-1, Relaxed);
    stats.paused.store(false, Relaxed);
    // Dropping the consumer closes it: it leaves the group.
    drop(consumer);
    tracing::info!(downlink = %downlink.name, "downlink consumer closed");
}
