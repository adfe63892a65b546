//! The engine's bookkeeping for the disk spool (`spool.dir`), apart from its I/O (the spool edge's
//! thread): which messages wait for their records to be stored, and how far Kafka has taken the records
//! read back.
//!
//! - [`Settling`]: a message whose record went to the spool is settled once the spool has stored it
//!   (QoS 0), or once it is durable there (QoS 1/2 with `ack_after: spool`). Appends are counted in the
//!   order they were sent, as the spool thread counts them.
//! - [`Replay`]: records read back from the spool are produced in log order, and Kafka reports on them
//!   in any order (several partitions); the spool learns what it may forget only up to the first record
//!   not delivered yet, so a crash replays from there (at least once, never a gap).

use std::collections::VecDeque;

use crate::spool::log::Position;

/// Messages waiting for their spooled record to be stored, or durable.
#[derive(Default)]
pub(super) struct Settling {
    /// (append number, message slot), in append order.
    stored: VecDeque<(u64, u32)>,
    durable: VecDeque<(u64, u32)>,
}

impl Settling {
    /// The record of message `slot` is append number `seq`; it settles once stored, or once durable.
    pub(super) fn wait(&mut self, seq: u64, slot: u32, durable: bool) {
        let queue = if durable { &mut self.durable } else { &mut self.stored };
        debug_assert!(queue.back().is_none_or(|&(last, _)| last < seq));
        queue.push_back((seq, slot));
    }

    /// The spool has stored the first `stored` appends, `durable` of them durably: the messages that
    /// settle now, in append order within each kind.
    pub(super) fn reached(&mut self, stored: u64, durable: u64, settled: &mut Vec<u32>) {
        for (queue, upto) in [(&mut self.stored, stored), (&mut self.durable, durable)] {
            while let Some(&(seq, slot)) = queue.front() {
                if seq > upto {
                    break;
                }
                queue.pop_front();
                settled.push(slot);
            }
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.stored.len() + self.durable.len()
    }
}

/// Records read back from the spool and not yet settled, in log order.
#[derive(Default)]
pub(super) struct Replay {
    /// Position, settled, when its message was received (Unix milliseconds; 0: not known).
    read: VecDeque<(Position, bool, u64)>,
}

impl Replay {
    /// A record read from the spool at `pos` (positions come in increasing order).
    pub(super) fn read(&mut self, pos: Position, received_ms: u64) {
        debug_assert!(self.read.back().is_none_or(|&(last, _, _)| last < pos));
        self.read.push_back((pos, false, received_ms));
    }

    /// When the oldest record read and not settled was received (Unix milliseconds; 0: none).
    pub(super) fn oldest_ms(&self) -> u64 {
        self.read.front().map_or(0, |&(_, _, ms)| ms)
    }

    /// The record at `pos` is settled (delivered, dead-lettered, or given up on). Returns how far the
    /// spool may forget: the last record of the settled run at the front, if it grew.
    pub(super) fn settled(&mut self, pos: Position) -> Option<Position> {
        if let Ok(i) = self.read.binary_search_by(|&(p, _, _)| p.cmp(&pos)) {
            self.read[i].1 = true;
        }
        let mut upto = None;
        while let Some(&(p, true, _)) = self.read.front() {
            upto = Some(p);
            self.read.pop_front();
        }
        upto
    }

    /// Read and not settled.
    pub(super) fn len(&self) -> usize {
        self.read.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.read.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_settle_when_their_record_is_stored_or_durable() {
        let mut s = Settling::default();
        s.wait(1, 10, false);
        s.wait(2, 20, true);
        s.wait(3, 30, false);
        let mut settled = Vec::new();
        s.reached(1, 0, &mut settled);
        assert_eq!(settled, [10]);
        settled.clear();
        s.reached(3, 1, &mut settled);
        assert_eq!(settled, [30], "stored is enough for 30; 20 waits to be durable");
        settled.clear();
        s.reached(3, 3, &mut settled);
        assert_eq!(settled, [20]);
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn the_spool_forgets_only_up_to_the_first_record_kafka_has_not_taken() {
        let mut r = Replay::default();
        for p in [0, 30, 60, 90] {
            r.read(Position(p), 0);
        }
        assert_eq!(r.settled(Position(30)), None, "0 is not delivered yet");
        assert_eq!(r.settled(Position(90)), None);
        assert_eq!(r.settled(Position(0)), Some(Position(30)), "0 and 30: a run of two");
        assert_eq!(r.len(), 2);
        assert_eq!(r.settled(Position(60)), Some(Position(90)));
        assert!(r.is_empty());
        // A position it never read changes nothing.
        assert_eq!(r.settled(Position(7)), None);
    }
}
