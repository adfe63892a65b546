//! The failure policy's table, driven through the three points where a record can fail: its first
//! send (refused by librdkafka), its delivery report, and its retry (refused again). Every error
//! kind, at QoS 0 and 1, must come out the same whichever way it arrived.

use std::collections::BTreeMap;
use std::time::SystemTime;

use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{OwnedMessage, Timestamp};

use super::*;
use crate::config::KafkaSettings;
use crate::core::routing::tests::route;
use crate::kafka::TRUNCATED_DEAD_LETTER_BYTES;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    FirstSend,
    Report,
    Retry,
}

/// Where the record stands when it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Record,
    DeadLetter,
    /// A record produced again once already.
    RetriedRecord,
    /// A dead letter already cut to size.
    CutDeadLetter,
}

/// What became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// Handed over again shortly as it was, not counted as a retry (queued in librdkafka under its
    /// tag, or due within the wait for room).
    HandedOverAgain { topic: String },
    /// To be produced again later, `retries` so far.
    Retry { topic: String, retries: u32 },
    /// To be produced now as `topic`, cut to size or not.
    Now { topic: String, cut: bool },
    /// Settled: acknowledged or not (`None` at QoS 0, where there is nothing to acknowledge).
    Settled { acked: Option<bool> },
}

fn error(kind: kafka::ErrorKind) -> KafkaError {
    use kafka::ErrorKind::*;
    let code = match kind {
        QueueFull => RDKafkaErrorCode::QueueFull,
        Fatal => RDKafkaErrorCode::Fatal,
        TooLarge => RDKafkaErrorCode::MessageSizeTooLarge,
        Permanent => RDKafkaErrorCode::TopicAuthorizationFailed,
        Transient => RDKafkaErrorCode::MessageTimedOut,
        TakenBack => RDKafkaErrorCode::PurgeQueue,
    };
    let e = KafkaError::MessageProduction(code);
    assert_eq!(kafka::classify(&e), kind, "{e}");
    e
}

/// What the policy table says, written out (not computed by `policy::decide`).
fn expected(kind: kafka::ErrorKind, state: State, qos: u8) -> Seen {
    use kafka::ErrorKind::*;
    let (t, dlq) = ("t".to_string(), "t.dlq".to_string());
    let acked = |yes: bool| Seen::Settled { acked: (qos > 0).then_some(yes) };
    match (kind, state) {
        (QueueFull, State::Record | State::RetriedRecord) => Seen::HandedOverAgain { topic: t },
        (QueueFull, _) => Seen::HandedOverAgain { topic: dlq },
        (Fatal, _) => acked(false),
        (TooLarge | Permanent, State::Record | State::RetriedRecord) => Seen::Now { topic: dlq, cut: false },
        (TooLarge, State::DeadLetter) => Seen::Now { topic: dlq, cut: true },
        (TooLarge | Permanent, _) => acked(true),
        (Transient, State::Record) => Seen::Retry { topic: t, retries: 1 },
        (Transient, State::DeadLetter) => Seen::Retry { topic: dlq, retries: 1 },
        (Transient, State::RetriedRecord) if qos == 0 => acked(true),
        (Transient, State::RetriedRecord) => Seen::Retry { topic: t, retries: 2 },
        (Transient, State::CutDeadLetter) => Seen::Retry { topic: dlq, retries: 1 },
        (TakenBack, State::Record | State::RetriedRecord) => Seen::HandedOverAgain { topic: t },
        (TakenBack, _) => Seen::HandedOverAgain { topic: dlq },
    }
}

struct Rig {
    engine: Engine,
    acks: mpsc::UnboundedReceiver<AckToken>,
    routes: Arc<RouteTable>,
}

fn rig() -> Rig {
    // A producer to nowhere: nothing it queues is ever delivered, and no report comes back by itself.
    let settings = KafkaSettings {
        bootstrap_servers: "127.0.0.1:9".into(),
        properties: BTreeMap::from([
            ("bootstrap.servers".to_string(), "127.0.0.1:9".to_string()),
            ("message.timeout.ms".to_string(), "600000".to_string()),
            ("log_level".to_string(), "0".to_string()),
        ]),
    };
    let producer = Arc::new(kafka::producer(&settings).expect("producer"));
    let events = kafka::events::Events::new(producer.clone()).expect("events");
    let (tx, acks) = mpsc::unbounded_channel();
    let links = Links {
        producer: producer.clone(),
        events,
        metrics: Arc::new(Metrics::default()),
        acks: tx,
        connection: Arc::new(AtomicU64::new(1)),
        fatal: CancellationToken::new(),
        schemas: None,
        spool: None,
        swaps: mpsc::channel(1).1,
        in_use: crate::pipeline::swap::InUse::new(producer.clone()),
    };
    let routes = Arc::new(RouteTable::new(vec![route("r", "t/#", "t")]));
    Rig { engine: Engine::new(links, 1 << 20, 100, None), acks, routes }
}

/// A payload the state calls for: the dead letter of an invalid JSON payload, big enough to be cut.
fn payload(state: State) -> Vec<u8> {
    match state {
        State::Record | State::RetriedRecord => br#"{"n":1}"#.to_vec(),
        State::DeadLetter | State::CutDeadLetter => vec![b'x'; TRUNCATED_DEAD_LETTER_BYTES + 1000],
    }
}

fn message(qos: u8, state: State) -> Message {
    let mut m = Message::new("t/dev-1", payload(state), qos, SystemTime::now());
    m.ack = (qos > 0).then_some(AckToken { connection: 1, pkid: 7, qos });
    m
}

/// A message in flight with one record of it in `state` outstanding: its slot and the record's tag.
fn in_flight(rig: &mut Rig, qos: u8, state: State) -> (u32, u32, Parts) {
    let message = message(qos, state);
    let ack = message.ack.is_some().then(|| rig.engine.acks.arrived(message.ack));
    let value = message.payload.to_vec();
    let progress = Progress { outstanding: 1, ackable: true };
    let slot = rig.engine.messages.insert(Unsettled { message, routes: rig.routes.clone(), progress, ack, order: 0 });
    let dead_letter = matches!(state, State::DeadLetter | State::CutDeadLetter);
    let entry = RecordEntry {
        message: slot,
        route: 0,
        dead_letter,
        truncated: state == State::CutDeadLetter,
        attempt: u32::from(state == State::RetriedRecord),
    };
    let tag = rig.engine.records.insert(entry);
    let topic = if dead_letter { "t.dlq" } else { "t" }.to_string();
    (slot, tag, Parts { topic, key: Some(b"dev-1".to_vec()), value, headers: OwnedHeaders::new() })
}

async fn drive(entry: Entry, kind: kafka::ErrorKind, state: State, qos: u8) -> Seen {
    let mut rig = rig();
    let give_up = CancellationToken::new();
    // Records handed to librdkafka, counted by the engine: librdkafka's own queue length also counts
    // the error events of its failing connection, which come when they like.
    let queued_before = rig.engine.metrics.records_enqueued.load(Relaxed);
    let (slot, tag) = match entry {
        Entry::FirstSend => {
            let slot = rig.engine.messages.vacant_key();
            let tag = rig.engine.records.vacant_key();
            // A record's first send: built from the message; a dead letter when the payload is not JSON.
            rig.engine.refuse_next = Some(error(kind));
            let routes = rig.routes.clone();
            rig.engine.take(message(qos, state), routes, &give_up).await.expect("not given up");
            (slot, tag)
        }
        Entry::Report => {
            let (slot, tag, parts) = in_flight(&mut rig, qos, state);
            let record = OwnedMessage::new(
                Some(parts.value),
                parts.key,
                parts.topic,
                Timestamp::NotAvailable,
                0,
                -1,
                Some(parts.headers),
            );
            let failure = reports::Failure { error: error(kind), record };
            let report = reports::DeliveryReport { tag: tag as usize, result: Err(failure) };
            rig.engine.report(report, SystemTime::now());
            (slot, tag)
        }
        Entry::Retry => {
            let (slot, tag, parts) = in_flight(&mut rig, qos, state);
            rig.engine.retries.schedule(tag, Duration::ZERO, parts);
            rig.engine.refuse_next = Some(error(kind));
            rig.engine.send_due_retries(&give_up).await.expect("not given up");
            (slot, tag)
        }
    };
    rig.engine.acks.send_due();
    let Some(&record) = rig.engine.records.get(tag) else {
        assert!(rig.engine.messages.get(slot).is_none(), "{entry:?}: the record is settled, so is its message");
        let acked = rig.acks.try_recv().is_ok();
        return Seen::Settled { acked: (qos > 0).then_some(acked) };
    };
    if rig.engine.metrics.records_enqueued.load(Relaxed) > queued_before {
        // Queued in librdkafka under its tag: as it was, or as what the policy made of it.
        let was_dead_letter = matches!(state, State::DeadLetter | State::CutDeadLetter);
        if record.dead_letter && !was_dead_letter {
            return Seen::Now { topic: "t.dlq".into(), cut: false };
        }
        if record.truncated && state != State::CutDeadLetter {
            return Seen::Now { topic: "t.dlq".into(), cut: true };
        }
        let topic = if record.dead_letter { "t.dlq" } else { "t" }.to_string();
        return Seen::HandedOverAgain { topic };
    }
    let (parts, due) =
        rig.engine.retries.find(tag).unwrap_or_else(|| panic!("{entry:?}: neither settled nor to be sent"));
    let topic = parts.topic.clone();
    let now = tokio::time::Instant::now();
    if due > now + ROOM_POLL {
        return Seen::Retry { topic, retries: record.attempt };
    }
    // Due now or within the wait for room: as it was (handed over again), or as what the policy made of
    // it (a dead letter, a cut one).
    let was_dead_letter = matches!(state, State::DeadLetter | State::CutDeadLetter);
    let became = (record.dead_letter && !was_dead_letter) || (record.truncated && state != State::CutDeadLetter);
    if !became {
        return Seen::HandedOverAgain { topic };
    }
    Seen::Now { topic, cut: parts.value.len() == TRUNCATED_DEAD_LETTER_BYTES }
}

// Paused time: whether a record is due now, within the wait for room, or later is read off the clock
// after the fact, and a loaded machine must not move it between the two.
#[tokio::test(start_paused = true)]
async fn every_error_kind_comes_out_the_same_through_all_three_entry_points() {
    use kafka::ErrorKind::*;
    let mut checked = 0;
    for qos in [0u8, 1] {
        for kind in [QueueFull, Transient, TooLarge, Permanent, Fatal, TakenBack] {
            for state in [State::Record, State::DeadLetter, State::RetriedRecord, State::CutDeadLetter] {
                let want = expected(kind, state, qos);
                // A first send is never a retry, and never of a cut dead letter.
                let first_send_can = matches!(state, State::Record | State::DeadLetter);
                for entry in [Entry::FirstSend, Entry::Report, Entry::Retry] {
                    if entry == Entry::FirstSend && !first_send_can {
                        continue;
                    }
                    let seen = drive(entry, kind, state, qos).await;
                    assert_eq!(seen, want, "{kind:?} of a {state:?} at QoS {qos} through its {entry:?}");
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 2 * 6 * (2 * 3 + 2 * 2));
}
