//! The engine: one task that takes messages from the intake, builds their records route by route, hands
//! them to librdkafka under a tag (their index in [`super::inflight`]), and settles them as Kafka
//! reports back: a delivered record counts towards its message, a failed one goes where the
//! [`super::policy`] says, and a message whose records are all settled gets its ack, in arrival
//! order.
//!
//! Per message, the path reads one way: [`Engine::take`] works out the message's facts once (id, receive
//! time, payload), then per matching route the device once ([`Route::device`]), the replica, the wait
//! behind the device's records that wait for their schema ([`super::awaiting`]), the rate limit, the
//! record ([`envelope::build`]), its encoding by a registry schema, and the send. Metrics observe from
//! the side.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message as _, OwnedHeaders, OwnedMessage};
use rdkafka::producer::Producer as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::awaiting::Awaiting;
use super::held::{Admission, Held};
use super::inflight::{Progress, RecordEntry, Slab};
use super::policy::{self, Attempt, Verdict};
use super::retries::{Parts, Retries};
use super::sequencer::Acks;
use crate::core::encoding::{EncodingRule, Failure};
use crate::core::envelope::{self, DeadLetterReason, Facts, Outcome, Record, HEADER_DLQ_REASON};
use crate::core::message::{AckToken, Message};
use crate::core::routing::replicas::Replicas;
use crate::core::routing::{Route, RouteTable};
use crate::kafka::{self, reports, GatewayProducer};
use crate::mqtt::intake::IntakeReceiver;
use crate::ops::health::{Loop, HEARTBEAT_EVERY};
use crate::ops::metrics::Metrics;
use crate::registry::{Lookup, Schemas};

mod spool;
mod swap;
pub(super) use spool::SpoolLink;
use spool::{SpoolState, SPILL_AFTER, SPOOL_TAG, UNREACHABLE_AFTER};

/// A message taken from MQTT and not settled yet.
struct Unsettled {
    message: Message,
    /// The route table in effect when it arrived.
    routes: Arc<RouteTable>,
    progress: Progress,
    /// Its place in the ack order; `None` for QoS 0 (nothing to acknowledge, so nothing to wait for).
    ack: Option<u64>,
    /// Its place among all messages taken: the order its records go to the spool in when librdkafka
    /// gives them back.
    order: u64,
}

/// The grace period is over: the engine stops where it is.
#[derive(Debug)]
pub(super) struct GaveUp;

/// Why handing a record to librdkafka stopped short.
enum SendError {
    GaveUp,
    /// It waited [`SPILL_AFTER`] for room: it goes to the spool instead.
    Spill,
    /// Refused at once; the headers come back for what follows.
    Refused(KafkaError, OwnedHeaders),
}

/// What one route made of a message.
enum Produced {
    /// A record is on its way (or held by the rate limit, or waiting for its schema): one more to wait for.
    Record,
    /// Nothing to wait for: another replica's device, or a QoS 0 record over the rate limit.
    Nothing,
    /// Taken from the records waiting for their schema, and still waiting: it stays where it was.
    StillWaiting,
}

/// Where a record comes from when the engine builds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Its message was just taken.
    Intake,
    /// Held by the rate limit, now due (its place in the message's progress is taken already).
    RateLimit,
    /// Waiting for its schema, at the front of its route's queue (its place is taken already).
    Registry,
}

/// What the registry's schema made of a record.
enum Encoded {
    Done,
    /// The schema is not resolved yet.
    Wait,
    /// It does not fit, or there is no usable schema: the `dlq_reason`.
    Refused(String),
}

/// A record refused when first handed over, dealt with once its message is in place.
struct Refused {
    tag: u32,
    error: KafkaError,
    parts: Parts,
}

/// The message path, one task: see the module doc.
pub(super) struct Engine {
    producer: Arc<GatewayProducer>,
    /// Says when librdkafka has delivery reports, and serves them.
    events: kafka::events::Events,
    metrics: Arc<Metrics>,
    /// This replica's share of the devices (`replicas.count` > 1).
    replicas: Option<Replicas>,
    max_payload: usize,
    /// `mqtt.max_unacked_messages`: messages taken and not settled, at most.
    window: usize,
    messages: Slab<Unsettled>,
    /// Records Kafka has not reported on; a record's index here is its delivery tag.
    records: Slab<RecordEntry>,
    acks: Acks,
    retries: Retries,
    held: Held,
    /// The registry's schemas, when a route encodes with one, and the records waiting for theirs.
    schemas: Option<Arc<Schemas>>,
    schemas_changed: Option<tokio::sync::watch::Receiver<u64>>,
    awaiting: Awaiting,
    /// The disk spool, when `spool.dir` is set.
    spool: Option<SpoolState>,
    /// With a spool: when Kafka last reported on a record, or nothing was in flight.
    last_progress: Instant,
    /// Kafka has reported on a record since the start.
    kafka_reported: bool,
    /// Messages taken so far.
    taken: u64,
    /// Scratch buffers, kept to allocate nothing per message.
    matched: Vec<u32>,
    reports: Vec<reports::DeliveryReport>,
    refused: Vec<Refused>,
    /// Checked producers for new Kafka settings, and the swap under way.
    swaps: mpsc::Receiver<super::swap::Swap>,
    swaps_open: bool,
    swapping: Option<swap::Swapping>,
    /// The producer in use, as those outside the engine see it.
    in_use: super::swap::InUse,
    /// `mqtt.max_unacked_messages` as reloads change it (the window).
    windows: Option<tokio::sync::watch::Receiver<usize>>,
    /// Tests: the next record handed over is refused with this error, as librdkafka would refuse it.
    #[cfg(test)]
    refuse_next: Option<KafkaError>,
}

/// Messages taken from the intake in one go before the engine looks at reports and timers again.
const BATCH: usize = 256;

/// How long a record waits for room in librdkafka's queue before it is handed over again.
const ROOM_POLL: Duration = Duration::from_millis(10);

/// What the engine is connected to.
pub(super) struct Links {
    pub(super) producer: Arc<GatewayProducer>,
    pub(super) events: kafka::events::Events,
    pub(super) metrics: Arc<Metrics>,
    pub(super) acks: mpsc::UnboundedSender<AckToken>,
    /// The MQTT edge's current connection number.
    pub(super) connection: Arc<AtomicU64>,
    pub(super) fatal: CancellationToken,
    pub(super) schemas: Option<Arc<Schemas>>,
    pub(super) spool: Option<SpoolLink>,
    /// Checked producers for new Kafka settings.
    pub(super) swaps: mpsc::Receiver<super::swap::Swap>,
    pub(super) in_use: super::swap::InUse,
}

impl Engine {
    /// An engine over `links` that takes payloads up to `max_payload` bytes (`mqtt.max_packet_size_bytes`)
    /// and at most `window` messages unsettled (`mqtt.max_unacked_messages`).
    pub(super) fn new(links: Links, max_payload: usize, window: usize, replicas: Option<Replicas>) -> Self {
        let Links { producer, events, metrics, acks, connection, fatal, schemas, spool, swaps, in_use } = links;
        let schemas_changed = schemas.as_ref().map(|s| s.changed());
        Self {
            producer,
            events,
            metrics,
            replicas,
            max_payload,
            window,
            messages: Slab::default(),
            records: Slab::default(),
            acks: Acks::new(acks, connection, fatal),
            retries: Retries::default(),
            held: Held::default(),
            schemas,
            schemas_changed,
            awaiting: Awaiting::default(),
            spool: spool.map(SpoolState::new),
            last_progress: Instant::now(),
            kafka_reported: false,
            taken: 0,
            matched: Vec::new(),
            reports: Vec::new(),
            refused: Vec::new(),
            swaps,
            swaps_open: true,
            swapping: None,
            in_use,
            windows: None,
            #[cfg(test)]
            refuse_next: None,
        }
    }

    /// Messages taken and not settled.
    pub(super) fn unsettled(&self) -> usize {
        self.messages.len()
    }

    /// The window follows `mqtt.max_unacked_messages` as reloads change it: a smaller one takes no new
    /// message until the messages in flight are fewer.
    pub(super) fn follow_window(&mut self, windows: tokio::sync::watch::Receiver<usize>) {
        self.windows = Some(windows);
    }

    /// Takes messages until the intake closes (shutdown) and everything taken is settled, or `give_up`.
    pub(super) async fn run(&mut self, mut intake: IntakeReceiver, give_up: &CancellationToken) {
        let mut open = true;
        let mut more_events = self.events.serve();
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT_EVERY, HEARTBEAT_EVERY);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(windows) = self.windows.as_mut().filter(|w| w.has_changed().unwrap_or(false)) {
                self.window = (*windows.borrow_and_update()).max(1);
                tracing::info!(max_unacked_messages = self.window, "mqtt.max_unacked_messages applied");
            }
            self.metrics.unacked.store(self.messages.len() as u64, Relaxed);
            self.metrics.awaiting_schema.store(self.awaiting.len() as u64, Relaxed);
            if self.spool.is_some() {
                self.metrics.health.spooling.store(self.spooling(), Relaxed);
            }
            if !open && self.messages.is_empty() {
                return;
            }
            if more_events {
                more_events = self.events.serve();
                self.take_reports();
            }
            if !more_events && self.swapping() && self.advance_swap() {
                // The new producer's events, from the start.
                more_events = true;
                continue;
            }
            let swapping = self.swapping();
            let held = self.spool.as_mut().is_some_and(SpoolState::holds_intake);
            if !held && self.spool.as_ref().is_some_and(SpoolState::has_purged) {
                self.spool_purged_in_order();
            }
            let room = open && self.messages.len() < self.window && !held && !swapping;
            let replay_blocked = !swapping && self.spool.as_ref().is_some_and(SpoolState::blocked);
            // With a spool, not spooling yet: no report from Kafka for SPILL_AFTER with the window full, or
            // for UNREACHABLE_AFTER with records in flight (a trickle of messages never fills it).
            let watch = self.spool.as_ref().is_some_and(|s| !s.active());
            if self.spool.is_some() && self.records.is_empty() {
                self.last_progress = Instant::now();
            }
            // Before Kafka's first report the producer may still be getting its idempotence id (slow
            // after a Kafka restart): a full window then is not yet a sign of an outage.
            let full = self.messages.len() >= self.window && self.kafka_reported;
            let spill_after = if full { SPILL_AFTER } else { UNREACHABLE_AFTER };
            let stuck_at = tokio::time::Instant::from_std(self.last_progress + spill_after);
            // While producers are switched, nothing is handed to the one in use.
            let next_retry = self.retries.next_due().filter(|_| !swapping);
            let next_held = self.held.next_due().filter(|_| !swapping);
            let done = tokio::select! {
                biased;
                _ = give_up.cancelled() => return,
                _ = heartbeat.tick() => {
                    self.metrics.health.beat(Loop::Engine);
                    Ok(())
                }
                _ = self.events.ready(), if !more_events => {
                    more_events = self.events.serve();
                    self.take_reports();
                    Ok(())
                }
                _ = tokio::time::sleep_until(next_retry.unwrap_or_else(tokio::time::Instant::now)), if next_retry.is_some() => {
                    self.send_due_retries(give_up).await
                }
                _ = tokio::time::sleep_until(next_held.unwrap_or_else(tokio::time::Instant::now)), if next_held.is_some() => {
                    self.release_due(give_up).await
                }
                _ = schema_news(&mut self.schemas_changed), if !self.awaiting.is_empty() && !swapping => {
                    self.release_awaiting(give_up).await
                }
                event = spool_news(&mut self.spool) => match event {
                    Some(event) => {
                        self.spool_event(event);
                        Ok(())
                    }
                    None => {
                        self.spool_gone();
                        return;
                    }
                },
                _ = tokio::time::sleep(ROOM_POLL), if replay_blocked => {
                    self.hand_over_replayed();
                    Ok(())
                }
                next = self.swaps.recv(), if self.swaps_open && !swapping => {
                    match next {
                        Some(next) => self.begin_swap(next),
                        None => self.swaps_open = false,
                    }
                    Ok(())
                }
                _ = tokio::time::sleep(swap::SWAP_POLL), if swapping => Ok(()),
                _ = tokio::time::sleep_until(stuck_at), if watch && !self.records.is_empty() => {
                    if self.last_progress.elapsed() >= spill_after {
                        self.start_spooling(spill_after);
                    }
                    Ok(())
                }
                m = intake.recv(), if room => match m {
                    None => {
                        open = false;
                        Ok(())
                    }
                    Some((message, routes)) => self.take_batch(message, routes, &mut intake, give_up).await,
                },
                // Events left over from the last round: served at the top of the loop, after the above
                // had their turn.
                _ = std::future::ready(()), if more_events => Ok(()),
            };
            if done.is_err() {
                return;
            }
        }
    }

    /// Takes `message` and those waiting behind it: one wake-up for a burst, not one per message.
    async fn take_batch(
        &mut self,
        message: Message,
        routes: Arc<RouteTable>,
        intake: &mut IntakeReceiver,
        give_up: &CancellationToken,
    ) -> Result<(), GaveUp> {
        self.take(message, routes, give_up).await?;
        for _ in 1..BATCH {
            if self.messages.len() >= self.window {
                break;
            }
            let Some((message, routes)) = intake.try_recv() else { break };
            self.take(message, routes, give_up).await?;
        }
        Ok(())
    }

    /// Builds and produces the records of one message, for every matching route (fan-out, file order).
    async fn take(
        &mut self,
        message: Message,
        routes: Arc<RouteTable>,
        give_up: &CancellationToken,
    ) -> Result<(), GaveUp> {
        let slot = self.messages.vacant_key();
        let ack = message.ack.is_some().then(|| self.acks.arrived(message.ack));
        let mut progress = Progress::producing();
        let mut matched = std::mem::take(&mut self.matched);
        routes.matching_indices(&message.topic, &mut matched);
        if matched.is_empty() {
            self.metrics.message_unrouted(&message.topic);
        }
        let facts = Facts::new(&message);
        let mut result = Ok(());
        for &index in &matched {
            match self.produce_route(slot, index, routes.route(index), &facts, give_up, Source::Intake).await {
                Ok(Produced::Record | Produced::StillWaiting) => progress.add(),
                Ok(Produced::Nothing) => {}
                Err(gave_up) => {
                    result = Err(gave_up);
                    break;
                }
            }
        }
        drop(facts);
        self.matched = matched;
        // Reports are taken only by `run`, never while a message is being produced: the slot is free
        // until here, and no report can name it before.
        self.taken += 1;
        let order = self.taken;
        let inserted = self.messages.insert(Unsettled { message, routes, progress, ack, order });
        debug_assert_eq!(inserted, slot);
        let refused = self.handle_refused();
        self.settle_record_of(slot, true);
        result?;
        if refused {
            // What the policy made of them (a dead letter, say) goes out now, before the next message
            // of the batch is taken, as it would have from a delivery report.
            self.send_due_retries(give_up).await?;
        }
        Ok(())
    }

    /// Produces what `route` (index `index` of the message's table) makes of the message in message slot
    /// `slot`: its record, or its dead letter.
    async fn produce_route(
        &mut self,
        slot: u32,
        index: u32,
        route: &Route,
        facts: &Facts<'_>,
        give_up: &CancellationToken,
        source: Source,
    ) -> Result<Produced, GaveUp> {
        let msg = facts.message;
        let device = route.device(&msg.topic);
        // Another replica's device: that replica writes it (and dead-letters it, if it must).
        if self.replicas.is_some_and(|r| !r.owns(device.id)) {
            self.metrics.records_for_other_replicas.fetch_add(1, Relaxed);
            return Ok(Produced::Nothing);
        }
        // Behind the records of this route and device that wait for their schema, so that order holds.
        if source != Source::Registry && self.awaiting.has(&route.name, device.id) {
            self.awaiting.push(&route.name, device.id, slot, index);
            return Ok(Produced::Record);
        }
        // A record takes its turn when it first comes to be produced, and again at each try to leave the
        // wait for its schema (rare: a try follows a change in the registry edge). A turn taken and not
        // used only makes later records of the route wait a little longer, never sooner.
        if let (Some(limit), Source::Intake | Source::Registry) = (route.rate_limit, source) {
            match self.held.admit(slot, index, &route.name, limit, msg.qos, Instant::now()) {
                Admission::Now => {}
                Admission::Held => {
                    route.stats.delayed.fetch_add(1, Relaxed);
                    return Ok(Produced::Record);
                }
                Admission::Dropped => {
                    self.metrics.rate_limited(route, &msg.topic);
                    return Ok(Produced::Nothing);
                }
            }
        }
        let mut outcome = if msg.payload.len() > self.max_payload {
            // Let in past the limit only to be dead-lettered (see `mqtt::edge`'s oversize).
            let reason = format!(
                "payload of {} bytes is larger than mqtt.max_packet_size_bytes ({})",
                msg.payload.len(),
                self.max_payload
            );
            envelope::dead_letter(route, facts, device.id, DeadLetterReason::TooLarge, reason)
        } else {
            envelope::build(route, facts, &device)
        };
        if let (Some(rule), Outcome::Record(record)) = (&route.encoding, &mut outcome) {
            match self.encode(route, rule, record, &device, &msg.topic) {
                Encoded::Done => {}
                Encoded::Wait if source == Source::Registry => return Ok(Produced::StillWaiting),
                Encoded::Wait => {
                    self.awaiting.push(&route.name, device.id, slot, index);
                    return Ok(Produced::Record);
                }
                Encoded::Refused(reason) => {
                    outcome = envelope::dead_letter(route, facts, device.id, DeadLetterReason::NotEncodable, reason)
                }
            }
        }
        let (record, dead_letter) = match outcome {
            Outcome::Record(record) => {
                self.metrics.device_id(route, device.source);
                (record, false)
            }
            Outcome::DeadLetter { record, reason, kind } => {
                self.metrics.dead_lettered(route, kind, &msg.topic, device.id, &record.topic, &reason);
                (record, true)
            }
        };
        // Once records go to the spool, all do until it is read back to its end: order holds.
        if self.spooling() {
            self.spool_record(slot, route, record, dead_letter, device.id, msg);
            return Ok(Produced::Record);
        }
        let entry = RecordEntry { message: slot, route: index, dead_letter, truncated: false, attempt: 0 };
        let tag = self.records.insert(entry);
        let headers = kafka::owned_headers(record.headers.iter().map(|(k, v)| (k.as_ref(), v.as_slice())));
        let spill = self.spool.is_some();
        match self.send(tag, &record.topic, record.key.as_deref(), &record.value, headers, spill, give_up).await {
            Ok(()) => {}
            Err(SendError::GaveUp) => {
                self.records.remove(tag);
                return Err(GaveUp);
            }
            Err(SendError::Spill) => {
                self.records.remove(tag);
                tracing::warn!(
                    waited_ms = SPILL_AFTER.as_millis() as u64,
                    "Kafka does not take records: spooling to disk"
                );
                self.spool_record(slot, route, record, dead_letter, device.id, msg);
                return Ok(Produced::Record);
            }
            Err(SendError::Refused(error, headers)) => {
                let parts = Parts { topic: record.topic, key: record.key, value: record.value, headers };
                self.refused.push(Refused { tag, error, parts });
            }
        }
        Ok(Produced::Record)
    }

    /// Hands a record to librdkafka under `tag`. While its queue is full, waits: the intake fills
    /// meanwhile, and the MQTT edge stops reading; that is the backpressure. The one wait-for-room loop,
    /// for first sends and retries alike.
    #[allow(clippy::too_many_arguments)] // the record's parts, and whether it may go to the spool
    async fn send(
        &mut self,
        tag: u32,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        mut headers: OwnedHeaders,
        spill: bool,
        give_up: &CancellationToken,
    ) -> Result<(), SendError> {
        // Read the clock only once the queue is full, not for every record.
        let mut started = None;
        let mut next_warning = Duration::ZERO;
        loop {
            match self.hand_over(tag, topic, key, value, headers) {
                Ok(()) => {
                    self.metrics.records_enqueued.fetch_add(1, Relaxed);
                    return Ok(());
                }
                Err((e, back)) if kafka::classify(&e) == kafka::ErrorKind::QueueFull => {
                    headers = back;
                    let waited = started.get_or_insert_with(Instant::now).elapsed();
                    if spill && waited >= SPILL_AFTER {
                        return Err(SendError::Spill);
                    }
                    // Waiting for room is the engine at work: it stays live for /healthz.
                    self.metrics.health.beat(Loop::Engine);
                    if waited >= next_warning {
                        next_warning = waited + Duration::from_secs(10);
                        self.metrics.producer_queue_full(topic, waited);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(ROOM_POLL) => {}
                        _ = give_up.cancelled() => return Err(SendError::GaveUp),
                    }
                }
                Err((e, back)) => return Err(SendError::Refused(e, back)),
            }
        }
    }

    /// One try at handing a record to librdkafka.
    fn hand_over(
        &mut self,
        tag: u32,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        headers: OwnedHeaders,
    ) -> Result<(), (KafkaError, OwnedHeaders)> {
        #[cfg(test)]
        if let Some(e) = self.refuse_next.take() {
            return Err((e, headers));
        }
        kafka::send(&self.producer, topic, key, value, headers, tag as usize)
    }

    /// Records refused when first handed over, now that their message is in place. True if there were any.
    fn handle_refused(&mut self) -> bool {
        let refused = std::mem::take(&mut self.refused);
        let any = !refused.is_empty();
        for Refused { tag, error, parts } in refused {
            self.failed(tag, error, parts);
        }
        any
    }

    /// Settles what the delivery reports so far say.
    fn take_reports(&mut self) {
        let mut reports = std::mem::take(&mut self.reports);
        self.producer.context().reports.take(&mut reports);
        // One clock read per batch, for the latency of every record in it.
        let now = if reports.is_empty() { UNIX_EPOCH } else { SystemTime::now() };
        if self.spool.is_some() && !reports.is_empty() {
            self.last_progress = Instant::now();
            self.kafka_reported = true;
        }
        for report in reports.drain(..) {
            self.report(report, now);
        }
        self.reports = reports;
        self.acks.send_due();
    }

    /// One record's fate, as Kafka reports it.
    fn report(&mut self, report: reports::DeliveryReport, now: SystemTime) {
        let tag = report.tag as u32;
        if tag & SPOOL_TAG != 0 {
            let result = report.result.map_err(|failure| (failure.error, parts_of(failure.record)));
            return self.replayed_report(tag, result, now);
        }
        let Some(&entry) = self.records.get(tag) else { return };
        match report.result {
            Ok((partition, offset)) => {
                self.records.remove(tag);
                let Some(m) = self.messages.get(entry.message) else { return };
                let route = m.routes.route(entry.route);
                let latency = now.duration_since(m.message.received_at).unwrap_or_default();
                self.metrics.record_delivered(entry.dead_letter, route, partition, offset, latency);
                self.settle_record_of(entry.message, true);
            }
            Err(reports::Failure { error, record }) => {
                self.failed(tag, error, parts_of(record));
            }
        }
    }

    /// Produces the records whose retry is due, under their old tags.
    async fn send_due_retries(&mut self, give_up: &CancellationToken) -> Result<(), GaveUp> {
        let now = tokio::time::Instant::now();
        while let Some(retry) = self.retries.pop_due(now) {
            if self.records.get(retry.tag).is_none() && !self.replayed_pending(retry.tag) {
                continue;
            }
            let Parts { topic, key, value, headers } = retry.parts;
            match self.send(retry.tag, &topic, key.as_deref(), &value, headers, false, give_up).await {
                Ok(()) => {}
                Err(SendError::GaveUp | SendError::Spill) => return Err(GaveUp),
                Err(SendError::Refused(error, headers)) => {
                    self.failed(retry.tag, error, Parts { topic, key, value, headers })
                }
            }
        }
        self.acks.send_due();
        Ok(())
    }

    /// Builds and produces the held records now due.
    async fn release_due(&mut self, give_up: &CancellationToken) -> Result<(), GaveUp> {
        let now = tokio::time::Instant::now();
        while let Some((slot, index)) = self.held.pop_due(now) {
            let Some(m) = self.messages.get(slot) else { continue };
            let (message, routes) = (m.message.clone(), m.routes.clone());
            let facts = Facts::new(&message);
            // Its place in the message's progress was taken when it was held.
            match self.produce_route(slot, index, routes.route(index), &facts, give_up, Source::RateLimit).await? {
                Produced::Record | Produced::StillWaiting => {}
                Produced::Nothing => self.settle_record_of(slot, true),
            }
            if self.handle_refused() {
                self.send_due_retries(give_up).await?;
            }
        }
        self.acks.send_due();
        Ok(())
    }

    /// Builds and produces the records waiting for their schema, each queue (route and device) from the
    /// front, until one still has to wait.
    async fn release_awaiting(&mut self, give_up: &CancellationToken) -> Result<(), GaveUp> {
        for (name, device) in self.awaiting.queues() {
            while let Some((slot, index)) = self.awaiting.front(&name, &device) {
                let Some(m) = self.messages.get(slot) else {
                    self.awaiting.pop_front(&name, &device);
                    continue;
                };
                let (message, routes) = (m.message.clone(), m.routes.clone());
                let facts = Facts::new(&message);
                match self.produce_route(slot, index, routes.route(index), &facts, give_up, Source::Registry).await? {
                    Produced::StillWaiting => break,
                    Produced::Record => self.awaiting.pop_front(&name, &device),
                    Produced::Nothing => {
                        self.awaiting.pop_front(&name, &device);
                        self.settle_record_of(slot, true);
                    }
                }
                if self.handle_refused() {
                    self.send_due_retries(give_up).await?;
                }
            }
        }
        self.acks.send_due();
        Ok(())
    }

    /// Encodes `record` with the schema `rule` names for it, in place.
    fn encode(
        &self,
        route: &Route,
        rule: &EncodingRule,
        record: &mut Record,
        device: &crate::core::routing::DeviceId<'_>,
        mqtt_topic: &str,
    ) -> Encoded {
        let kind = rule.kind as usize;
        let refuse = |failure: Failure, reason: String| {
            self.metrics.encoding_failures[kind][failure as usize].fetch_add(1, Relaxed);
            Encoded::Refused(reason)
        };
        let Some(schemas) = &self.schemas else {
            return refuse(Failure::NoSchema, "the route has an encoding, and no schema_registry is configured".into());
        };
        let group = |name: &str| device.group(name);
        let values = crate::core::routing::template::Values { topic: mqtt_topic, device_id: device.id, group: &group };
        let subject = match rule.subject_for(&record.topic, &values) {
            Ok(s) => s,
            Err(why) => return refuse(Failure::NoSchema, why),
        };
        match schemas.lookup(&subject, rule) {
            Lookup::Ready(schema) => match schema.apply(record) {
                Ok(()) => {
                    self.metrics.records_encoded[kind].fetch_add(1, Relaxed);
                    route.stats.schema_id.store(u64::from(schema.id), Relaxed);
                    Encoded::Done
                }
                Err(e) => refuse(e.failure, e.reason),
            },
            Lookup::Pending => Encoded::Wait,
            Lookup::Failed(why) => {
                refuse(Failure::NoSchema, format!("no usable {} schema for subject {subject}: {why}", rule.kind))
            }
        }
    }

    /// A record Kafka did not take, whichever way it said so: refused when first handed over, reported
    /// failed, or refused when produced again. The one failure policy decides ([`policy::decide`]).
    fn failed(&mut self, tag: u32, error: KafkaError, parts: Parts) {
        if tag & SPOOL_TAG != 0 {
            return self.replayed_failed(tag, error, parts);
        }
        if kafka::is_purged(&error) && self.spool.is_some() {
            return self.spool_purged(tag, parts);
        }
        let Some(&entry) = self.records.get(tag) else { return };
        let Some(m) = self.messages.get(entry.message) else {
            self.records.remove(tag);
            return;
        };
        // The rare path: what it needs of the message is copied out, so that `self` is free.
        let routes = m.routes.clone();
        let route = routes.route(entry.route);
        let qos = m.message.qos;
        let device_id = route.device_id.extract(&m.message.topic).0.to_string();
        let attempt = Attempt { dead_letter: entry.dead_letter, truncated: entry.truncated, retries: entry.attempt };
        match policy::decide(kafka::classify(&error), attempt, qos) {
            Verdict::WaitForRoom => self.retries.schedule(tag, ROOM_POLL, parts),
            Verdict::ProduceAgain => self.retries.schedule(tag, Duration::ZERO, parts),
            Verdict::Retry { after } => {
                self.metrics.record_retry(route, &parts.topic, &device_id, &error);
                self.update(tag, |e| e.attempt += 1);
                self.retries.schedule(tag, after, parts);
            }
            Verdict::DeadLetter => {
                let reason = format!("Kafka refused the record: {error}");
                let topic = &route.dead_letter_topic;
                let kind = DeadLetterReason::KafkaRefused;
                self.metrics.dead_lettered(route, kind, &m.message.topic, &device_id, topic, &reason);
                let headers = parts.headers.insert(Header { key: HEADER_DLQ_REASON, value: Some(reason.as_bytes()) });
                let payload = m.message.payload.to_vec();
                self.update(tag, |e| e.dead_letter = true);
                let dead_letter =
                    Parts { topic: topic.clone(), key: Some(device_id.into_bytes()), value: payload, headers };
                self.retries.schedule(tag, Duration::ZERO, dead_letter);
            }
            Verdict::CutDeadLetter => {
                let (cut, headers) = kafka::truncated(&parts.value, parts.headers);
                let cut = Parts { topic: parts.topic, key: parts.key, value: cut.to_vec(), headers };
                self.update(tag, |e| e.truncated = true);
                self.retries.schedule(tag, Duration::ZERO, cut);
            }
            verdict @ (Verdict::Reject | Verdict::Fatal) => {
                self.metrics.record_failed(route, &parts.topic, &device_id, &error);
                self.records.remove(tag);
                self.settle_record_of(entry.message, verdict == Verdict::Reject);
            }
        }
    }

    fn update(&mut self, tag: u32, f: impl FnOnce(&mut RecordEntry)) {
        if let Some(e) = self.records.get_mut(tag) {
            f(e);
        }
    }

    /// One record of message `slot` (or its production hold) is settled; `ok` is false if it makes the
    /// message unacknowledgeable.
    fn settle_record_of(&mut self, slot: u32, ok: bool) {
        let Some(m) = self.messages.get_mut(slot) else { return };
        if !m.progress.settle_one(ok) {
            return;
        }
        let Some(done) = self.messages.remove(slot) else { return };
        if let Some(seq) = done.ack {
            if !done.progress.ackable {
                self.metrics.message_not_acked(seq);
            }
            self.acks.settled(seq, done.progress.ackable);
        }
    }
}

/// What a failed record was, to produce again or to dead-letter.
fn parts_of(mut record: OwnedMessage) -> Parts {
    let headers = record.detach_headers().unwrap_or_default();
    Parts {
        topic: record.topic().to_string(),
        key: record.key().map(<[u8]>::to_vec),
        value: record.payload().unwrap_or_default().to_vec(),
        headers,
    }
}

/// The spool thread's next event (never, without a spool).
async fn spool_news(spool: &mut Option<SpoolState>) -> Option<crate::spool::worker::Event> {
    match spool {
        Some(s) => s.event().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the registry edge reports a change (never, without a registry).
async fn schema_news(changed: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    match changed {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
