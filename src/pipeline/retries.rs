//! Records to produce again (after a failure) or to produce as a dead letter, each when due, in a timer
//! heap. Records due at the same time go out in the order they failed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use rdkafka::message::OwnedHeaders;
use tokio::time::Instant;

/// A record as it will be produced: owned, because it outlives the moment it was built.
pub(super) struct Parts {
    pub(super) topic: String,
    pub(super) key: Option<Vec<u8>>,
    pub(super) value: Vec<u8>,
    pub(super) headers: OwnedHeaders,
}

/// A record waiting for its retry.
pub(super) struct Retry {
    due: Instant,
    /// Insertion order, so that records due at the same time go out in the order they failed.
    seq: u64,
    /// Its delivery tag (kept across retries).
    pub(super) tag: u32,
    pub(super) parts: Parts,
}

impl PartialEq for Retry {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Retry {}
impl PartialOrd for Retry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Retry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

#[derive(Default)]
pub(super) struct Retries {
    heap: BinaryHeap<Reverse<Retry>>,
    seq: u64,
}

impl Retries {
    /// Record `tag` is to be produced as `parts` after `after`.
    pub(super) fn schedule(&mut self, tag: u32, after: Duration, parts: Parts) {
        self.seq += 1;
        self.heap.push(Reverse(Retry { due: Instant::now() + after, seq: self.seq, tag, parts }));
    }

    /// When the next retry is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|r| r.0.due)
    }

    /// The next retry due by `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Retry> {
        if self.heap.peek().is_some_and(|r| r.0.due <= now) {
            self.heap.pop().map(|r| r.0)
        } else {
            None
        }
    }

    /// The retry of `tag`, if one is waiting (for tests).
    #[cfg(test)]
    pub(super) fn find(&self, tag: u32) -> Option<(&Parts, Instant)> {
        self.heap.iter().find(|r| r.0.tag == tag).map(|r| (&r.0.parts, r.0.due))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(topic: &str) -> Parts {
        Parts { topic: topic.into(), key: None, value: Vec::new(), headers: OwnedHeaders::new() }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_come_out_when_due_in_the_order_they_failed() {
        let mut r = Retries::default();
        r.schedule(1, Duration::from_secs(2), parts("late"));
        r.schedule(2, Duration::ZERO, parts("first"));
        r.schedule(3, Duration::ZERO, parts("second"));
        let now = Instant::now();
        assert_eq!(r.pop_due(now).map(|r| r.tag), Some(2));
        assert_eq!(r.pop_due(now).map(|r| r.tag), Some(3));
        assert!(r.pop_due(now).is_none(), "the third is not due yet");
        assert_eq!(r.next_due(), Some(now + Duration::from_secs(2)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(r.pop_due(Instant::now()).map(|r| r.parts.topic), Some("late".to_string()));
    }
}
