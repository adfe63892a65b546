//! The engine and the disk spool (`spool.dir`).
//!
//! While Kafka takes records, the spool costs nothing: records go straight to librdkafka. When Kafka
//! stops taking them (a record waited [`SPILL_AFTER`] for room in librdkafka's queue; or no report came
//! for [`SPILL_AFTER`] with the window of unsettled messages full, or for [`UNREACHABLE_AFTER`] with
//! records in flight), records go to the spool instead, those still in librdkafka's queue first (taken
//! back from it), and from then on **every** new record does, until the spool has been read back to its
//! end and delivered: per-device order holds, since what is read back goes to Kafka in log order.
//!
//! A message whose record went to the spool settles once the spool has stored it (QoS 0), once it is
//! durable there (QoS 1/2 with `ack_after: spool`), or once the record read back is in Kafka (QoS 1/2
//! with `ack_after: kafka`, through the record's token). Records read back are produced under tags of
//! their own ([`SPOOL_TAG`]); Kafka's reports on them go through the same failure policy as any record,
//! with what the record carries of its message (route, device, QoS, payload). The spool forgets a record
//! only when it and every record before it are settled ([`Replay`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rdkafka::error::KafkaError;
use rdkafka::message::Header;
use tokio::sync::watch;

use super::super::inflight::Slab;
use super::super::policy::{self, Attempt, Verdict};
use super::super::retries::Parts;
use super::super::spooled::{Replay, Settling};
use super::{Engine, ROOM_POLL};
use crate::config::AckAfter;
use crate::core::envelope::{Record, HEADER_DLQ_REASON};
use crate::core::routing::{Route, RouteTable};
use crate::kafka;
use crate::spool::log::Position;
use crate::spool::record::{self, Spooled};
use crate::spool::worker::{Event, Handle};

/// How long the path may be stopped by Kafka (a record waiting for room in librdkafka's queue, or the
/// window of unsettled messages full with no report from Kafka) before records go to the spool instead.
/// Short: meanwhile the broker queues what it cannot deliver to us, and Mosquitto by default keeps
/// 1,000 messages per client.
pub(super) const SPILL_AFTER: Duration = Duration::from_millis(250);
/// How long records may be in flight with no report from Kafka, the window not full, before records go
/// to the spool: Kafka unreachable under a trickle of messages. Longer than any report takes from a
/// Kafka that is up, however loaded (those keep coming while it works).
pub(super) const UNREACHABLE_AFTER: Duration = Duration::from_secs(2);
/// Delivery tags of records read back from the spool have this bit set.
pub(super) const SPOOL_TAG: u32 = 1 << 31;
/// How long new messages wait for the reports of the records taken back from librdkafka's queue.
const PURGE_WAIT: Duration = Duration::from_secs(5);
/// Records read back and not settled, at most: what librdkafka holds of the backlog at a time.
const REPLAY_WINDOW: usize = 4096;

/// What the pipeline hands the engine when `spool.dir` is set.
pub(in crate::pipeline) struct SpoolLink {
    pub(in crate::pipeline) handle: Handle,
    /// The spool's settings in effect (`ack_after` is read for each message: a reload may change it).
    pub(in crate::pipeline) settings: watch::Receiver<Option<crate::config::SpoolSettings>>,
    /// The route table in effect, for the routes of records read back.
    pub(in crate::pipeline) routes: watch::Receiver<Arc<RouteTable>>,
    /// Records found in the spool at start: read back before anything new.
    pub(in crate::pipeline) recovered: u64,
}

/// A record read back and handed to librdkafka.
struct Replayed {
    pos: Position,
    spooled: Spooled,
    truncated: bool,
    attempt: u32,
}

pub(super) struct SpoolState {
    handle: Handle,
    settings: watch::Receiver<Option<crate::config::SpoolSettings>>,
    routes: watch::Receiver<Arc<RouteTable>>,
    /// Every new record goes to the spool.
    active: bool,
    /// Appends sent to the spool thread, and how many of them it has stored.
    sent: u64,
    stored: u64,
    settling: Settling,
    replay: Replay,
    /// Messages (slots) waiting for a spooled record to reach Kafka, by token.
    tokens: HashMap<u64, u32>,
    run: u64,
    next_token: u64,
    /// Records asked for and not come yet.
    wanted: usize,
    /// Read back, not handed to librdkafka yet (its queue was full).
    ready: VecDeque<(Position, Spooled)>,
    in_flight: Slab<Replayed>,
    /// The spool cannot take more now (`when_full: block`): the engine takes no messages.
    pub(super) full: bool,
    /// Records taken back from librdkafka's queue whose reports have not come yet, and until when they
    /// are waited for: no new message is taken meanwhile, so that they go to the spool first.
    purging: usize,
    purge_deadline: Option<std::time::Instant>,
    /// The spool thread has handed out every record stored, and nothing was appended since.
    caught_up: bool,
    /// Records given back by librdkafka, kept until all have come back and then spooled in the order
    /// their messages were taken: its reports need not come in that order.
    purged: Vec<(u64, u32, Parts)>,
    scratch: Vec<u8>,
    settled: Vec<u32>,
}

impl SpoolState {
    pub(super) fn new(link: SpoolLink) -> Self {
        let mut state = Self {
            handle: link.handle,
            settings: link.settings,
            routes: link.routes,
            active: link.recovered > 0,
            sent: 0,
            stored: 0,
            settling: Settling::default(),
            replay: Replay::default(),
            tokens: HashMap::new(),
            run: u64::from(rand::random::<u32>()) << 32,
            next_token: 0,
            wanted: 0,
            ready: VecDeque::new(),
            in_flight: Slab::default(),
            full: false,
            purging: 0,
            purge_deadline: None,
            caught_up: false,
            purged: Vec::new(),
            scratch: Vec::new(),
            settled: Vec::new(),
        };
        state.want_more();
        state
    }

    pub(super) fn active(&self) -> bool {
        self.active
    }

    pub(super) fn has_purged(&self) -> bool {
        !self.purged.is_empty()
    }

    /// No message may be taken now: the spool is full, or records taken back from librdkafka's queue
    /// have yet to reach it.
    pub(super) fn holds_intake(&mut self) -> bool {
        if let Some(deadline) = self.purge_deadline {
            if self.purging == 0 || std::time::Instant::now() >= deadline {
                self.purge_deadline = None;
                self.purging = 0;
            }
        }
        self.full || self.purge_deadline.is_some()
    }

    /// Records read back and waiting: for room in librdkafka's queue, or for the records sent before
    /// the spool took over.
    pub(super) fn blocked(&self) -> bool {
        !self.ready.is_empty()
    }

    pub(super) async fn event(&mut self) -> Option<Event> {
        self.handle.event().await
    }

    fn route(&self, name: &str) -> Option<Route> {
        self.routes.borrow().routes().iter().find(|r| &*r.name == name).cloned()
    }

    /// Records go straight to Kafka again once the spool is read to its end and Kafka has taken all of
    /// it: not before, or a Kafka still down would get new records ahead of the backlog's.
    fn maybe_leave(&mut self) {
        if self.active && self.caught_up && self.ready.is_empty() && self.replay.is_empty() && self.purging == 0 {
            self.active = false;
            tracing::info!("spool: read back and delivered to its end; records go straight to Kafka again");
        }
    }

    /// Keeps enough records asked for while there is a backlog.
    fn want_more(&mut self) {
        if !self.active {
            return;
        }
        let held = self.wanted + self.ready.len() + self.replay.len();
        if held < REPLAY_WINDOW / 2 {
            let n = REPLAY_WINDOW - held;
            self.wanted += n;
            self.handle.want(n);
        }
    }

    pub(super) fn close(self) {
        match self.handle.close() {
            Ok(0) => {}
            Ok(lost) => tracing::error!(records = lost, "spool: records that waited for room are lost at shutdown"),
            Err(e) => tracing::error!(error = %e, "spool: closing failed"),
        }
    }
}

/// Unix milliseconds of `t` (0 before 1970).
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Spooled records keep the headers as they were built.
fn headers_of(record: &Record) -> rdkafka::message::OwnedHeaders {
    kafka::owned_headers(record.headers.iter().map(|(k, v)| (k.as_ref(), v.as_slice())))
}

impl Engine {
    /// Whether new records go to the spool now.
    pub(super) fn spooling(&self) -> bool {
        self.spool.as_ref().is_some_and(SpoolState::active)
    }

    /// Sends `record` of message `slot` to the spool, and says when its message may settle.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn spool_record(
        &mut self,
        slot: u32,
        route: &Route,
        record: Record,
        dead_letter: bool,
        device_id: &str,
        message: &crate::core::message::Message,
    ) {
        let Some(s) = self.spool.as_mut() else { return };
        s.active = true;
        let ack_after = s.settings.borrow().as_ref().map_or(AckAfter::Kafka, |settings| settings.ack_after);
        let durable = match (message.qos, ack_after) {
            (0, _) => Some(false),
            (_, AckAfter::Spool) => Some(true),
            (_, AckAfter::Kafka) => None,
        };
        let token = match durable {
            Some(_) => 0,
            None => {
                s.next_token += 1;
                let token = s.run | (s.next_token & 0xffff_ffff);
                s.tokens.insert(token, slot);
                token
            }
        };
        let payload = (record.value.as_slice() != &message.payload[..]).then(|| message.payload.to_vec());
        let spooled = Spooled {
            record,
            route: route.name.to_string(),
            device_id: device_id.to_string(),
            mqtt_topic: message.topic.to_string(),
            qos: message.qos,
            received_at: message.received_at,
            dead_letter,
            payload,
            token,
        };
        s.scratch.clear();
        record::encode(&spooled, &mut s.scratch);
        s.handle.append(std::mem::take(&mut s.scratch));
        s.sent += 1;
        s.caught_up = false;
        if let Some(durable) = durable {
            s.settling.wait(s.sent, slot, durable);
        }
        s.want_more();
    }

    /// What the spool thread says.
    pub(super) fn spool_event(&mut self, event: Event) {
        let Some(s) = self.spool.as_mut() else { return };
        match event {
            Event::Stored { stored, durable } => {
                // Counted once in the log (with `fsync: always`, once fsynced).
                self.metrics.spooled.fetch_add(stored.saturating_sub(s.stored), Relaxed);
                s.stored = s.stored.max(stored);
                let mut settled = std::mem::take(&mut s.settled);
                s.settling.reached(stored, durable, &mut settled);
                for slot in settled.drain(..) {
                    self.settle_record_of(slot, true);
                }
                if let Some(s) = self.spool.as_mut() {
                    s.settled = settled;
                }
                self.acks.send_due();
            }
            Event::Records(batch) => {
                s.wanted = s.wanted.saturating_sub(batch.len());
                for (pos, bytes) in batch {
                    match record::decode(&bytes) {
                        Ok(spooled) => {
                            s.replay.read(pos, unix_ms(spooled.received_at));
                            s.ready.push_back((pos, spooled));
                        }
                        Err(e) => {
                            s.replay.read(pos, 0);
                            self.metrics.spool_unreadable.fetch_add(1, Relaxed);
                            tracing::error!(position = %pos, error = %e, "spool: a record cannot be read back; skipped");
                            if let Some(upto) = s.replay.settled(pos) {
                                s.handle.ack(upto);
                            }
                        }
                    }
                }
                self.hand_over_replayed();
            }
            Event::CaughtUp { stored } => {
                s.caught_up = stored == s.sent;
                s.maybe_leave();
            }
            Event::Full => {
                s.full = true;
                self.metrics.health.spool_full.store(true, Relaxed);
                tracing::warn!("spool: full; taking no more messages until Kafka takes records again");
            }
            Event::Room => {
                s.full = false;
                self.metrics.health.spool_full.store(false, Relaxed);
            }
            Event::Dropped { records, bytes } => {
                self.metrics.spool_dropped.fetch_add(records, Relaxed);
                tracing::warn!(records, bytes, "spool: full; dropped the oldest records (when_full: drop_oldest)");
            }
            Event::Failed(e) => {
                self.metrics.spool_errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "spool: disk error; retrying");
            }
            Event::Corrupt(e) => {
                self.metrics.spool_unreadable.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "spool: damaged; the rest of the segment is skipped");
            }
        }
        if let Some(s) = self.spool.as_mut() {
            s.want_more();
            self.metrics.spool_oldest_ms.store(s.replay.oldest_ms(), Relaxed);
        }
    }

    /// The spool's thread is gone (it panicked): what it held is on disk, what it had not written is
    /// not. The gateway stops, acknowledging nothing more, so that a restart reads the spool back and
    /// the broker sends the unacknowledged QoS 1/2 messages again.
    pub(super) fn spool_gone(&mut self) {
        self.metrics.spool_errors.fetch_add(1, Relaxed);
        tracing::error!("spool: its thread stopped; stopping the gateway so that a restart reads the spool back");
        self.acks.stop();
    }

    /// Hands the records read back to librdkafka, in order, until its queue is full.
    pub(super) fn hand_over_replayed(&mut self) {
        // Records sent before the spool took over go first, retries included: the spool's are younger.
        // While producers are switched, nothing is handed over.
        if !self.records.is_empty() || self.swapping() {
            return;
        }
        loop {
            let Some(s) = self.spool.as_mut() else { return };
            let Some((pos, spooled)) = s.ready.pop_front() else { return };
            let headers = headers_of(&spooled.record);
            let index = s.in_flight.insert(Replayed { pos, spooled, truncated: false, attempt: 0 });
            let tag = index | SPOOL_TAG;
            let r = &s.in_flight.get(index).expect("just inserted").spooled.record;
            match kafka::send(&self.producer, &r.topic, r.key.as_deref(), &r.value, headers, tag as usize) {
                Ok(()) => {
                    self.metrics.records_enqueued.fetch_add(1, Relaxed);
                    self.metrics.replayed.fetch_add(1, Relaxed);
                }
                Err((e, _)) if kafka::classify(&e) == kafka::ErrorKind::QueueFull => {
                    let back = s.in_flight.remove(index).expect("just inserted");
                    s.ready.push_front((back.pos, back.spooled));
                    return;
                }
                Err((e, headers)) => {
                    let r = &s.in_flight.get(index).expect("just inserted").spooled.record;
                    let parts = Parts { topic: r.topic.clone(), key: r.key.clone(), value: r.value.clone(), headers };
                    self.replayed_failed(tag, e, parts);
                }
            }
        }
    }

    /// Kafka's report on a record read back.
    pub(super) fn replayed_report(
        &mut self,
        tag: u32,
        result: Result<(i32, i64), (KafkaError, Parts)>,
        now: SystemTime,
    ) {
        match result {
            Ok((partition, offset)) => {
                let Some(s) = self.spool.as_mut() else { return };
                let Some(done) = s.in_flight.remove(tag & !SPOOL_TAG) else { return };
                if let Some(route) = s.route(&done.spooled.route) {
                    let latency = now.duration_since(done.spooled.received_at).unwrap_or_default();
                    self.metrics.record_delivered(done.spooled.dead_letter, &route, partition, offset, latency);
                }
                self.replayed_settled(done, true);
            }
            Err((error, parts)) => self.replayed_failed(tag, error, parts),
        }
    }

    /// A record read back is settled: the spool may forget it (and those before it that are), and a
    /// message waiting for it settles.
    fn replayed_settled(&mut self, done: Replayed, ok: bool) {
        let Some(s) = self.spool.as_mut() else { return };
        if let Some(upto) = s.replay.settled(done.pos) {
            s.handle.ack(upto);
            self.metrics.spool_oldest_ms.store(s.replay.oldest_ms(), Relaxed);
        }
        if done.spooled.token != 0 {
            if let Some(slot) = s.tokens.remove(&done.spooled.token) {
                self.settle_record_of(slot, ok);
                self.acks.send_due();
            }
        }
        if let Some(s) = self.spool.as_mut() {
            s.maybe_leave();
            s.want_more();
        }
    }

    /// A record read back that Kafka did not take: the one failure policy decides, as for any record.
    pub(super) fn replayed_failed(&mut self, tag: u32, error: KafkaError, parts: Parts) {
        let Some(s) = self.spool.as_mut() else { return };
        let index = tag & !SPOOL_TAG;
        let Some(entry) = s.in_flight.get(index) else { return };
        if kafka::is_purged(&error) {
            // Taken back from librdkafka's queue: handed over again later, in log order.
            let back = s.in_flight.remove(index).expect("looked up above");
            let at = s.ready.partition_point(|(pos, _)| *pos < back.pos);
            s.ready.insert(at, (back.pos, back.spooled));
            return;
        }
        let route = s.route(&entry.spooled.route);
        let sp = &entry.spooled;
        let attempt = Attempt { dead_letter: sp.dead_letter, truncated: entry.truncated, retries: entry.attempt };
        let (qos, device_id, mqtt_topic) = (sp.qos, sp.device_id.clone(), sp.mqtt_topic.clone());
        let verdict = policy::decide(kafka::classify(&error), attempt, qos);
        match (verdict, &route) {
            (Verdict::WaitForRoom, _) => self.retries.schedule(tag, ROOM_POLL, parts),
            // Not reached: taken back, it went back to the records read back, above.
            (Verdict::ProduceAgain, _) => self.retries.schedule(tag, Duration::ZERO, parts),
            (Verdict::Retry { after }, _) => {
                if let Some(route) = &route {
                    self.metrics.record_retry(route, &parts.topic, &device_id, &error);
                }
                if let Some(e) = s.in_flight.get_mut(index) {
                    e.attempt += 1;
                }
                self.retries.schedule(tag, after, parts);
            }
            (Verdict::DeadLetter, Some(route)) => {
                let reason = format!("Kafka refused the record: {error}");
                let topic = &route.dead_letter_topic;
                let kind = crate::core::envelope::DeadLetterReason::KafkaRefused;
                self.metrics.dead_lettered(route, kind, &mqtt_topic, &device_id, topic, &reason);
                let headers = parts.headers.insert(Header { key: HEADER_DLQ_REASON, value: Some(reason.as_bytes()) });
                let e = s.in_flight.get_mut(index).expect("looked up above");
                e.spooled.dead_letter = true;
                let payload = e.spooled.payload().to_vec();
                let dead_letter =
                    Parts { topic: topic.clone(), key: Some(device_id.into_bytes()), value: payload, headers };
                self.retries.schedule(tag, Duration::ZERO, dead_letter);
            }
            (Verdict::CutDeadLetter, _) => {
                let (cut, headers) = kafka::truncated(&parts.value, parts.headers);
                let cut = Parts { topic: parts.topic, key: parts.key, value: cut.to_vec(), headers };
                if let Some(e) = s.in_flight.get_mut(index) {
                    e.truncated = true;
                }
                self.retries.schedule(tag, Duration::ZERO, cut);
            }
            // Reject, Fatal, or a dead letter whose route is gone (its topic is not known any more).
            (verdict, route) => {
                match route {
                    Some(route) => self.metrics.record_failed(route, &parts.topic, &device_id, &error),
                    None => {
                        tracing::error!(topic = %parts.topic, device_id, error = %error, "record read back from the spool could not be delivered to Kafka")
                    }
                }
                let done = s.in_flight.remove(index).expect("looked up above");
                self.replayed_settled(done, verdict == Verdict::Reject);
            }
        }
    }

    /// Kafka has taken nothing for [`SPILL_AFTER`]: new records go to the spool from now on, and so do
    /// those waiting in librdkafka's queue, first (they are older). Their purge reports are taken here,
    /// before any new message, so that the spool holds them ahead of everything after.
    pub(super) fn start_spooling(&mut self, waited: Duration) {
        let Some(s) = self.spool.as_mut() else { return };
        s.active = true;
        // Those not sent to a broker come back, as reports: wait for them (a moment) before any new
        // message, so that they go to the spool ahead of what follows.
        s.purging = self.records.len();
        s.purge_deadline = Some(std::time::Instant::now() + PURGE_WAIT);
        tracing::warn!(
            after_ms = waited.as_millis() as u64,
            in_flight = self.records.len(),
            "Kafka does not take records: spooling to disk"
        );
        kafka::purge_queued(&self.producer);
        s.want_more();
    }

    /// A record taken back from librdkafka's queue: kept until the others have come back too.
    pub(super) fn spool_purged(&mut self, tag: u32, parts: Parts) {
        let order = self.records.get(tag).and_then(|e| self.messages.get(e.message)).map_or(u64::MAX, |m| m.order);
        let Some(s) = self.spool.as_mut() else { return };
        s.purging = s.purging.saturating_sub(1);
        s.active = true;
        s.purged.push((order, tag, parts));
    }

    /// The records librdkafka gave back, to the spool in the order their messages were taken.
    pub(super) fn spool_purged_in_order(&mut self) {
        let Some(s) = self.spool.as_mut() else { return };
        let mut purged = std::mem::take(&mut s.purged);
        // Stable: the records of one message keep their route order.
        purged.sort_by_key(|&(order, _, _)| order);
        for (_, tag, parts) in purged {
            self.spool_one_purged(tag, parts);
        }
    }

    fn spool_one_purged(&mut self, tag: u32, parts: Parts) {
        let Some(entry) = self.records.remove(tag) else { return };
        let Some(m) = self.messages.get(entry.message) else { return };
        let (routes, message) = (m.routes.clone(), m.message.clone());
        let route = routes.route(entry.route);
        let device_id = route.device_id.extract(&message.topic).0.to_string();
        let headers = {
            use rdkafka::message::Headers as _;
            parts
                .headers
                .iter()
                .map(|h| (std::borrow::Cow::Owned(h.key.to_string()), h.value.unwrap_or_default().to_vec()))
                .collect()
        };
        let record = Record { topic: parts.topic, key: parts.key, value: parts.value, headers };
        self.spool_record(entry.message, route, record, entry.dead_letter, &device_id, &message);
    }

    /// Whether a retry under `tag` still has a record to send.
    pub(super) fn replayed_pending(&self, tag: u32) -> bool {
        self.spool.as_ref().is_some_and(|s| s.in_flight.get(tag & !SPOOL_TAG).is_some())
    }

    /// Records read back from the spool and handed to the producer, not yet reported on.
    pub(in crate::pipeline) fn replayed_in_flight(&self) -> usize {
        self.spool.as_ref().map_or(0, |s| s.in_flight.len())
    }

    /// At shutdown, once every message is settled: waits up to `within` for Kafka's reports on the
    /// records read back and handed to it, so that the spool forgets those Kafka took instead of
    /// reading them back again at the next start (duplicates). Stops early once no report has come for
    /// [`UNREACHABLE_AFTER`] (Kafka away: what is left stays in the spool), or at `give_up`.
    pub(in crate::pipeline) async fn settle_replayed(
        &mut self,
        give_up: &tokio_util::sync::CancellationToken,
        within: Duration,
    ) {
        let deadline = tokio::time::Instant::now() + within;
        let mut quiet_at = tokio::time::Instant::now() + UNREACHABLE_AFTER;
        let mut more = true;
        while self.replayed_in_flight() > 0 {
            if !more {
                tokio::select! {
                    biased;
                    _ = give_up.cancelled() => return,
                    _ = tokio::time::sleep_until(deadline.min(quiet_at)) => return,
                    _ = self.events.ready() => {}
                }
            }
            let before = self.replayed_in_flight();
            more = self.events.serve();
            self.take_reports();
            if self.replayed_in_flight() < before {
                quiet_at = tokio::time::Instant::now() + UNREACHABLE_AFTER;
            }
        }
    }

    /// Stops the spool thread once the engine is done: what it holds is fsynced, for the next start.
    pub(in crate::pipeline) fn close_spool(&mut self) {
        if let Some(s) = self.spool.take() {
            s.close();
        }
    }
}
