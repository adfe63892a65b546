//! The ack sequencer: MQTT acknowledgements in arrival order, only after Kafka has every record.
//!
//! Kafka confirms records per partition, so the messages of two devices complete in any order. MQTT
//! 3.1.1 (MQTT-4.6.0-2) wants PUBACKs in the order the PUBLISHes arrived, and rumqttc does not order them
//! (rumqtt#846). Messages enter here in arrival order; a completed message is acknowledged only once every
//! message before it is acknowledged too. Packet ids are reused on a new connection, so an ack that
//! belongs to an earlier connection is dropped instead of acknowledging a stranger.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::core::message::AckToken;

#[derive(Debug)]
struct Entry {
    /// `None` for QoS 0: nothing to acknowledge, but its place in the order still counts.
    token: Option<AckToken>,
    done: bool,
}

/// Messages received and not yet acknowledged, in arrival order.
#[derive(Debug, Default)]
pub struct AckSequencer {
    entries: VecDeque<Entry>,
    /// Sequence number of `entries[0]`.
    base: u64,
    stale_dropped: u64,
}

impl AckSequencer {
    /// Registers the next message in arrival order and returns its sequence number.
    pub fn push(&mut self, token: Option<AckToken>) -> u64 {
        self.entries.push_back(Entry { token, done: false });
        self.base + self.entries.len() as u64 - 1
    }

    /// Marks message `seq` as fully delivered (or dead-lettered).
    pub fn complete(&mut self, seq: u64) {
        if let Some(i) = seq.checked_sub(self.base) {
            if let Some(e) = self.entries.get_mut(i as usize) {
                e.done = true;
            }
        }
    }

    /// Marks message `seq` as done but not to be acknowledged (a record could not be delivered and the
    /// gateway gave up on it): the messages after it are not held up, and the broker delivers this one
    /// again after the next reconnect.
    pub fn abandon(&mut self, seq: u64) {
        if let Some(i) = seq.checked_sub(self.base) {
            if let Some(e) = self.entries.get_mut(i as usize) {
                e.done = true;
                e.token = None;
            }
        }
    }

    /// The acks now due, in arrival order: those of the completed messages at the head of the queue
    /// that arrived on `current_connection`. Acks of earlier connections are dropped (the broker
    /// redelivers those messages anyway).
    pub fn drain(&mut self, current_connection: u64) -> Vec<AckToken> {
        let mut due = Vec::new();
        while self.entries.front().is_some_and(|e| e.done) {
            let Some(e) = self.entries.pop_front() else { break };
            self.base += 1;
            match e.token {
                Some(t) if t.connection == current_connection => due.push(t),
                Some(_) => self.stale_dropped += 1,
                None => {}
            }
        }
        due
    }

    #[cfg(test)]
    /// Messages received and not yet acknowledged (or, for QoS 0, not yet delivered).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    #[cfg(test)]
    /// Acks dropped because their connection was gone.
    pub fn stale_dropped(&self) -> u64 {
        self.stale_dropped
    }
}

/// The pipeline's end of acknowledging: the sequencer, the channel to the MQTT edge, and what decides
/// whether an ack may go out at all.
pub(super) struct Acks {
    sequencer: AckSequencer,
    tx: mpsc::UnboundedSender<AckToken>,
    /// The number of the MQTT edge's current connection (acks of older ones are dropped).
    connection: Arc<AtomicU64>,
    /// Raised on a fatal producer error: nothing more is acknowledged.
    fatal: CancellationToken,
}

impl Acks {
    pub(super) fn new(
        tx: mpsc::UnboundedSender<AckToken>,
        connection: Arc<AtomicU64>,
        fatal: CancellationToken,
    ) -> Self {
        Self { sequencer: AckSequencer::default(), tx, connection, fatal }
    }

    /// Nothing more is acknowledged from now on: the gateway stops because of a fault it cannot mend.
    pub(super) fn stop(&self) {
        self.fatal.cancel();
    }

    /// A message taken, in arrival order; its place in the ack order.
    pub(super) fn arrived(&mut self, token: Option<AckToken>) -> u64 {
        self.sequencer.push(token)
    }

    /// Message `seq` is settled: to be acknowledged in its turn if `ackable`, passed over otherwise (the
    /// broker delivers it again after the next reconnect).
    pub(super) fn settled(&mut self, seq: u64, ackable: bool) {
        if ackable {
            self.sequencer.complete(seq);
        } else {
            self.sequencer.abandon(seq);
        }
    }

    /// Hands the acks now due to the MQTT side, in arrival order. After a fatal producer error nothing
    /// more is acknowledged: whatever is in Kafka or not, the broker delivers it again to the restarted
    /// gateway.
    pub(super) fn send_due(&mut self) {
        let due = self.sequencer.drain(self.connection.load(Relaxed));
        if self.fatal.is_cancelled() {
            return;
        }
        for ack in due {
            let _ = self.tx.send(ack);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(connection: u64, pkid: u16) -> Option<AckToken> {
        Some(AckToken { connection, pkid, qos: 1 })
    }

    fn pkids(acks: &[AckToken]) -> Vec<u16> {
        acks.iter().map(|a| a.pkid).collect()
    }

    #[test]
    fn out_of_order_kafka_results_still_ack_in_arrival_order() {
        let mut s = AckSequencer::default();
        let seqs: Vec<u64> = (1..=5).map(|p| s.push(t(1, p))).collect();
        // Kafka confirms 3, 5, 2 first: nothing may go out before 1 is confirmed.
        for i in [2, 4, 1] {
            s.complete(seqs[i]);
            assert!(s.drain(1).is_empty());
        }
        s.complete(seqs[0]);
        assert_eq!(pkids(&s.drain(1)), [1, 2, 3]);
        assert_eq!(s.len(), 2);
        s.complete(seqs[4]);
        assert!(s.drain(1).is_empty(), "4 is still open");
        s.complete(seqs[3]);
        assert_eq!(pkids(&s.drain(1)), [4, 5]);
        assert!(s.is_empty());
    }

    #[test]
    fn acks_of_an_earlier_connection_are_dropped() {
        let mut s = AckSequencer::default();
        let a = s.push(t(1, 7));
        let b = s.push(t(2, 7));
        s.complete(a);
        s.complete(b);
        let due = s.drain(2);
        assert_eq!(
            due,
            vec![AckToken { connection: 2, pkid: 7, qos: 1 }],
            "packet id 7 of connection 1 is not ours to ack any more"
        );
        assert_eq!(s.stale_dropped(), 1);
    }

    #[test]
    fn qos0_messages_keep_their_place_but_need_no_ack() {
        let mut s = AckSequencer::default();
        let a = s.push(None);
        let b = s.push(t(1, 1));
        s.complete(b);
        assert!(s.drain(1).is_empty(), "the QoS 0 message before it is not delivered yet");
        s.complete(a);
        assert_eq!(pkids(&s.drain(1)), [1]);
    }

    #[test]
    fn an_abandoned_message_is_never_acked_and_holds_nothing_up() {
        let mut s = AckSequencer::default();
        let a = s.push(t(1, 1));
        let b = s.push(t(1, 2));
        s.complete(b);
        s.abandon(a);
        assert_eq!(pkids(&s.drain(1)), [2]);
        assert!(s.is_empty());
    }

    #[test]
    fn completing_unknown_or_old_sequence_numbers_is_harmless() {
        let mut s = AckSequencer::default();
        let a = s.push(t(1, 1));
        s.complete(a);
        assert_eq!(s.drain(1).len(), 1);
        s.complete(a);
        s.complete(999);
        assert!(s.drain(1).is_empty());
        let b = s.push(t(1, 2));
        assert_eq!(b, 1, "sequence numbers keep counting");
        s.complete(b);
        assert_eq!(pkids(&s.drain(1)), [2]);
    }
}
