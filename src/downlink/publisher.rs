//! The downlinks' MQTT connection: one for every downlink, so that one partition's records reach the
//! broker in the order they were read. Its own client id (`<mqtt.client_id>-downlinks`) and a clean
//! session; the other settings are `mqtt`'s as the uplink's connection has them in effect (a reload's
//! new ones once the uplink has connected with them).
//!
//! A record is done when the broker has it: PUBACK (QoS 1), PUBCOMP (QoS 2), or written to the
//! connection (QoS 0). Until then it stays here, at most [`WINDOW`] of them. When the connection is
//! lost, rumqttc forgets what it had not finished (a clean session has nothing to resume), so every
//! record not done is published again, in the order it was first, on the next connection: at least
//! once, order kept. While the connection is down nothing new is taken, the workers wait, the
//! consumers' windows fill, and their partitions pause.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::dead_letter::DeadLetters;
use super::offsets::{Offsets, Ticket};
use crate::config::MqttSettings;
use crate::core::backoff::Backoff;
use crate::core::downlink::{Publish, Reason, Record, Unpublishable};
use crate::mqtt::client::{self, Event};
use crate::ops::metrics::downlinks::{DownlinkRegistry, DownlinkStats};
use crate::ops::metrics::Metrics;

/// Records handed to the connection and not yet done, at most.
pub const WINDOW: usize = 1000;

/// QoS 1/2 publishes unacknowledged by the broker, at most (its MQTT 5 Receive Maximum may say less).
/// rumqttc's default of 100 held QoS 1 to about 20,000 msg/s where 1,000 allowed 24,000-28,000 to a
/// bare publisher (docs/BENCHMARKS.md).
const INFLIGHT: u16 = WINDOW as u16;

/// A record read, and whom to tell when it is done.
#[derive(Clone)]
pub struct Settle {
    pub ticket: Ticket,
    pub offsets: Arc<Offsets>,
    pub stats: Arc<DownlinkStats>,
}

impl Settle {
    /// The record's partition is still this gateway's (see [`Offsets::holds`]).
    pub fn is_current(&self) -> bool {
        self.offsets.holds(&self.ticket)
    }

    /// The record is done; false if its partition was taken away since.
    pub fn done(&self) -> bool {
        let done = self.offsets.done(&self.ticket);
        self.stats.in_flight.store(self.offsets.in_flight() as i64, Relaxed);
        done
    }
}

/// One record to publish, and what to do if the broker refuses it.
pub struct Job {
    pub publish: Publish,
    pub settle: Settle,
    pub record: Record,
    pub downlink: Arc<str>,
    pub dead_letter_topic: String,
}

impl Job {
    fn done(&self) {
        if self.settle.done() {
            self.settle.stats.published.fetch_add(1, Relaxed);
        }
    }
}

/// The downlinks' settings: `mqtt`'s, with their own client id and a clean session.
pub fn settings(mqtt: &MqttSettings) -> MqttSettings {
    let mut s = mqtt.clone();
    s.client_id = format!("{}-downlinks", mqtt.client_id);
    s.clean_session = true;
    s.session_expiry = 0;
    s
}

struct Entry {
    job: Job,
    /// rumqttc wrote it on the current connection, with this packet id.
    sent: Option<u16>,
    done: bool,
}

/// The records handed to the connection, in the order they were.
#[derive(Default)]
struct InFlight {
    entries: VecDeque<Entry>,
    /// The sequence number of `entries[0]`.
    first: u64,
    /// Entries not done.
    open: usize,
    /// How many entries from the front rumqttc has written on this connection.
    written: usize,
    by_pkid: HashMap<u16, u64>,
}

impl InFlight {
    fn push(&mut self, job: Job) {
        self.entries.push_back(Entry { job, sent: None, done: false });
        self.open += 1;
    }

    fn complete(&mut self, seq: u64) {
        self.finish(seq, |job| job.done());
    }

    /// The entry `seq` is over: `then` is told, and the front moves past what is over.
    fn finish(&mut self, seq: u64, then: impl FnOnce(&Job)) {
        let Some(e) = self.entries.get_mut((seq - self.first) as usize) else { return };
        if e.done {
            return;
        }
        e.done = true;
        then(&e.job);
        self.open -= 1;
        while self.entries.front().is_some_and(|e| e.done) {
            self.entries.pop_front();
            self.first += 1;
            self.written = self.written.saturating_sub(1);
        }
    }

    /// rumqttc wrote the next publish with `pkid`.
    fn written(&mut self, pkid: u16) {
        // Entries are written in order; the done ones at the front are gone already.
        let Some(i) =
            (self.written..self.entries.len()).find(|&i| !self.entries[i].done && self.entries[i].sent.is_none())
        else {
            return;
        };
        self.written = i + 1;
        let seq = self.first + i as u64;
        if pkid == 0 {
            self.complete(seq);
        } else {
            self.entries[i].sent = Some(pkid);
            self.by_pkid.insert(pkid, seq);
        }
    }

    fn acknowledged(&mut self, pkid: u16) {
        if let Some(seq) = self.by_pkid.remove(&pkid) {
            self.complete(seq);
        }
    }

    /// The broker refused the publish with `pkid`: `then` is given its job (to dead-letter it).
    fn refused(&mut self, pkid: u16, then: impl FnOnce(&Job)) {
        if let Some(seq) = self.by_pkid.remove(&pkid) {
            self.finish(seq, then);
        }
    }

    /// Records not written on this connection whose partitions were revoked are over, unpublished.
    fn drop_revoked(&mut self) {
        let stale: Vec<u64> = (self.written..self.entries.len())
            .filter(|&i| {
                !self.entries[i].done && self.entries[i].sent.is_none() && !self.entries[i].job.settle.is_current()
            })
            .map(|i| self.first + i as u64)
            .collect();
        for seq in stale {
            // `done` on a revoked ticket changes nothing and counts nothing.
            self.complete(seq);
        }
    }

    /// The connection is gone: nothing is written on the next one yet.
    fn forget_connection(&mut self) {
        for e in &mut self.entries {
            e.sent = None;
        }
        self.written = 0;
        self.by_pkid.clear();
    }
}

/// Runs the connection until `stop` (after the consumers have drained).
pub async fn run(
    mut mqtt: watch::Receiver<MqttSettings>,
    mut jobs: mpsc::Receiver<Job>,
    dead_letters: watch::Receiver<Option<DeadLetters>>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let registry: &DownlinkRegistry = &metrics.downlinks;
    let mut s = settings(&mqtt.borrow_and_update());
    let (mut client, mut eventloop) = client::new_publishing(&s, WINDOW + 64, Some(INFLIGHT));
    let mut flight = InFlight::default();
    let mut connected = false;
    let mut backoff = Backoff::new(s.reconnect_min, s.reconnect_max);
    let mut settings_open = true;
    // rumqttc keeps the in-flight slot of every QoS 2 publish refused at PUBREC: once a quarter of the
    // slots are kept, nothing new is handed over, and when every record handed over is done, a new
    // connection gives the slots back (nothing is then published twice).
    let mut renewing = false;
    loop {
        if stop.is_cancelled() {
            break;
        }
        let slots = eventloop.slots_kept();
        if connected && !renewing && slots.is_some_and(|k| k.running_out()) {
            renewing = true;
        }
        // Every slot kept: nothing written waits for an ack either (each slot is a refusal), and what
        // was handed over but not written goes on the new connection.
        if renewing && (flight.open == 0 || slots.is_some_and(|k| k.kept >= k.of)) {
            let kept = slots.map_or(0, |k| k.kept);
            tracing::info!(
                slots_kept = kept,
                "downlinks: a new MQTT connection, to get back the in-flight slots the broker's QoS 2 refusals keep"
            );
            client.try_disconnect();
            (client, eventloop) = client::new_publishing(&s, WINDOW + 64, Some(INFLIGHT));
            connected = false;
            renewing = false;
            registry.mqtt_connected.store(false, Relaxed);
            flight.forget_connection();
            continue;
        }
        if eventloop.needs_connect() {
            match crate::mqtt::tls::transport(&s) {
                Ok(t) => eventloop.set_transport(t),
                Err(e) => {
                    registry.mqtt_connection_errors.fetch_add(1, Relaxed);
                    tracing::error!(error = %e, "downlinks: cannot read the MQTT TLS files");
                    sleep_or_stop(backoff.next_delay(), &stop).await;
                    continue;
                }
            }
        }
        enum Step {
            Event(Result<Event, client::ConnectionError>),
            Settings,
            Stop,
        }
        let step = {
            let poll = eventloop.poll();
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    biased;
                    event = &mut poll => break Step::Event(event),
                    _ = stop.cancelled() => break Step::Stop,
                    changed = mqtt.changed(), if settings_open => match changed {
                        Ok(()) => break Step::Settings,
                        Err(_) => settings_open = false,
                    },
                    job = jobs.recv(), if connected && flight.open < WINDOW && !renewing => match job {
                        // Its partition was revoked while it waited: its next owner publishes it.
                        Some(job) if !job.settle.is_current() => {}
                        Some(job) => {
                            if client.try_publish(&job.publish) {
                                flight.push(job);
                            } else {
                                // The channel holds more than the window: this does not happen; the record
                                // is put back by publishing it on the next connection.
                                tracing::error!("downlinks: the MQTT request channel is full");
                                flight.push(job);
                            }
                        }
                        None => break Step::Stop,
                    },
                }
            }
        };
        match step {
            Step::Stop => break,
            Step::Settings => {
                let new = settings(&mqtt.borrow_and_update());
                if new == s {
                    continue;
                }
                tracing::info!(broker = %new.broker, "downlinks: new MQTT settings; reconnecting");
                client.try_disconnect();
                s = new;
                (client, eventloop) = client::new_publishing(&s, WINDOW + 64, Some(INFLIGHT));
                backoff = Backoff::new(s.reconnect_min, s.reconnect_max);
                connected = false;
                renewing = false;
                registry.mqtt_connected.store(false, Relaxed);
                flight.forget_connection();
            }
            Step::Event(Ok(Event::ConnAck { .. })) => {
                connected = true;
                backoff.reset();
                registry.mqtt_connected.store(true, Relaxed);
                registry.mqtt_connects.fetch_add(1, Relaxed);
                // A clean session: rumqttc dropped what it had; everything not done goes again, in order,
                // but for the records of partitions revoked meanwhile (their next owner has them).
                flight.forget_connection();
                flight.drop_revoked();
                let again = flight.entries.iter().filter(|e| !e.done).count();
                for e in flight.entries.iter().filter(|e| !e.done) {
                    if !client.try_publish(&e.job.publish) {
                        tracing::error!("downlinks: the MQTT request channel is full");
                    }
                }
                tracing::info!(broker = %s.broker, client_id = %s.client_id, published_again = again, "downlinks: connected to MQTT");
            }
            Step::Event(Ok(Event::PublishSent(pkid))) => flight.written(pkid),
            Step::Event(Ok(Event::Published(pkid))) => flight.acknowledged(pkid),
            Step::Event(Ok(Event::Refused { pkid, reason })) => refused(&mut flight, pkid, &reason, &dead_letters),
            Step::Event(Ok(_)) => {}
            Step::Event(Err(e)) => {
                registry.mqtt_connection_errors.fetch_add(1, Relaxed);
                if connected {
                    tracing::warn!(error = %e, in_flight = flight.open, "downlinks: MQTT connection lost; what is not acknowledged is published again after the reconnect");
                } else {
                    let d = crate::mqtt::diagnose::diagnose(&e, &s);
                    tracing::warn!(error = %d.what, hint = d.hint, "downlinks: cannot connect to MQTT");
                }
                connected = false;
                renewing = false;
                registry.mqtt_connected.store(false, Relaxed);
                // Acknowledgements read before the failure still count (a broker may close the
                // connection right after refusing a publish).
                for event in eventloop.take_events() {
                    match event {
                        Event::Published(pkid) => flight.acknowledged(pkid),
                        Event::Refused { pkid, reason } => refused(&mut flight, pkid, &reason, &dead_letters),
                        _ => {}
                    }
                }
                flight.forget_connection();
                sleep_or_stop(backoff.next_delay(), &stop).await;
            }
        }
    }
    registry.mqtt_connected.store(false, Relaxed);
    if connected && client.try_disconnect() {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(event) = eventloop.poll().await {
                if matches!(event, Event::DisconnectSent) {
                    break;
                }
            }
        })
        .await;
    }
    if flight.open > 0 {
        tracing::warn!(
            in_flight = flight.open,
            "downlinks: stopped with messages the broker has not acknowledged; they are read again from Kafka"
        );
    }
}

/// The broker refused the publish with `pkid`: its record goes to the dead-letter topic.
fn refused(flight: &mut InFlight, pkid: u16, reason: &str, dead_letters: &watch::Receiver<Option<DeadLetters>>) {
    flight.refused(pkid, |job| {
        tracing::warn!(downlink = %job.downlink, topic = %job.publish.topic, reason, dead_letter_topic = %job.dead_letter_topic, "downlink message refused by the broker; dead-lettered");
        let detail = format!("the broker refused the publish to {}: {reason}", job.publish.topic);
        let why = Unpublishable { kind: Reason::Refused, detail };
        match dead_letters.borrow().clone() {
            Some(d) => d.send(job.dead_letter_topic.clone(), job.downlink.clone(), job.record.clone(), why, job.settle.clone()),
            None => tracing::error!(downlink = %job.downlink, "no dead-letter producer: the refused record is read again after a restart"),
        }
    });
}

async fn sleep_or_stop(delay: Duration, stop: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = stop.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::message::Properties;

    fn job(offsets: &Arc<Offsets>, stats: &Arc<DownlinkStats>, offset: i64, qos: u8) -> Job {
        let topic: Arc<str> = "t".into();
        Job {
            publish: Publish {
                topic: "c/x".into(),
                qos,
                retain: false,
                payload: Default::default(),
                properties: Properties::default(),
            },
            settle: Settle {
                ticket: offsets.take(&topic, 0, offset).expect("a new offset"),
                offsets: offsets.clone(),
                stats: stats.clone(),
            },
            record: Record {
                topic: "t".into(),
                partition: 0,
                offset,
                key: None,
                headers: Vec::new(),
                payload: Default::default(),
            },
            downlink: "d".into(),
            dead_letter_topic: "t.dlq".into(),
        }
    }

    /// Packet ids map to records in the order rumqttc wrote them; QoS 0 is done when written; a lost
    /// connection makes every record not done go again.
    #[test]
    fn acknowledgements_complete_the_records_they_name() {
        let offsets = Arc::new(Offsets::default());
        let stats = Arc::new(DownlinkStats::default());
        let mut f = InFlight::default();
        for (o, q) in [(0, 1), (1, 0), (2, 1), (3, 1)] {
            f.push(job(&offsets, &stats, o, q));
        }
        f.written(1);
        f.written(0);
        f.written(2);
        assert_eq!(f.open, 3);
        f.acknowledged(2);
        assert_eq!(offsets.to_commit(), [], "offset 0 is not done");
        f.acknowledged(1);
        assert_eq!(offsets.to_commit(), [(Arc::from("t"), 0, 3)]);
        assert_eq!(f.entries.len(), 1);
        // Lost before 3 was written: it goes again, and the ids of the next connection name it.
        f.forget_connection();
        f.written(1);
        f.acknowledged(1);
        assert_eq!(offsets.to_commit(), [(Arc::from("t"), 0, 4)]);
        assert_eq!((f.open, f.entries.len()), (0, 0));
        assert_eq!(stats.published.load(Relaxed), 4);
        // An unknown id is ignored.
        f.acknowledged(9);
        // A refused publish is over, without being published: the caller dead-letters it.
        f.push(job(&offsets, &stats, 4, 1));
        f.written(2);
        let mut told = 0;
        f.refused(2, |j| {
            told += 1;
            assert_eq!(j.record.offset, 4);
        });
        assert_eq!((told, f.open, f.entries.len()), (1, 0, 0));
        assert_eq!(stats.published.load(Relaxed), 4, "not counted as published");
    }

    /// After a reconnect, the records of a partition revoked meanwhile are not published again; the
    /// others are, in order.
    #[test]
    fn records_of_a_revoked_partition_are_not_published_again() {
        let offsets = Arc::new(Offsets::default());
        let stats = Arc::new(DownlinkStats::default());
        let mut f = InFlight::default();
        for o in 0..3 {
            f.push(job(&offsets, &stats, o, 1));
        }
        let mut other = job(&offsets, &stats, 3, 1);
        other.settle.ticket = offsets.take(&Arc::from("u"), 0, 7).expect("a new offset");
        f.push(other);
        f.written(1);
        f.written(2);
        f.forget_connection();
        offsets.revoke(&[(Arc::from("t"), 0)]);
        f.drop_revoked();
        assert_eq!((f.open, f.entries.len()), (1, 1), "only the other partition's record is left");
        assert_eq!(f.entries[0].job.settle.ticket.topic.as_ref(), "u");
        f.written(1);
        f.acknowledged(1);
        assert_eq!(offsets.to_commit(), [(Arc::from("u"), 0, 8)]);
        assert_eq!(stats.published.load(Relaxed), 1, "the revoked records are not counted as published");
    }
}
