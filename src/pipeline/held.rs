//! Records held back by their route's rate limit (see [`crate::core::routing::rate_limit`]): each gets its
//! due time when its message is taken, waits here (its message unsettled, so a QoS 1/2 message is
//! acknowledged only after it leaves), and is built and produced when due. Routes without a limit never
//! come here.
//!
//! Held records count against `mqtt.max_unacked_messages` through their messages, so a route held back
//! long enough fills the window and the engine stops taking messages: that is the backpressure, and the
//! only way one route's limit slows the others (they share the connection and its ack order).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use crate::core::routing::rate_limit::{RateLimit, Schedule};

/// A record waiting for its turn. Ordered by due time, then by arrival: a route's due times never go
/// backwards, so its records leave in arrival order.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Waiting {
    due: tokio::time::Instant,
    seq: u64,
    /// Its message (index in the engine's messages) and route (index in the message's route table).
    message: u32,
    route: u32,
}

/// What the limit says of a record.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admission {
    Now,
    /// Reserved a later slot: held here, counted as outstanding.
    Held,
    /// QoS 0, and its turn is further away than `qos0_max_delay_ms`: to be dropped, counted.
    Dropped,
}

/// The held records, and each limited route's schedule.
#[derive(Default)]
pub(super) struct Held {
    waiting: BinaryHeap<Reverse<Waiting>>,
    seq: u64,
    /// One schedule per route name, kept across reloads while the limit stays the same.
    schedules: HashMap<Arc<str>, Schedule>,
}

impl Held {
    /// Reserves the slot of the record that route `route` (named `name`, limited by `limit`) makes of
    /// message `message`, at QoS `qos`.
    pub(super) fn admit(
        &mut self,
        message: u32,
        route: u32,
        name: &Arc<str>,
        limit: RateLimit,
        qos: u8,
        now: Instant,
    ) -> Admission {
        let schedule = self.schedules.entry(name.clone()).or_insert_with(|| Schedule::new(limit, now));
        if schedule.limit != limit {
            *schedule = Schedule::new(limit, now);
        }
        let max_wait = (qos == 0).then_some(limit.qos0_max_delay);
        match schedule.reserve(now, max_wait) {
            None => Admission::Dropped,
            Some(wait) if wait.is_zero() => Admission::Now,
            Some(wait) => {
                self.seq += 1;
                let due = tokio::time::Instant::from_std(now + wait);
                self.waiting.push(Reverse(Waiting { due, seq: self.seq, message, route }));
                Admission::Held
            }
        }
    }

    /// When the next held record is due.
    pub(super) fn next_due(&self) -> Option<tokio::time::Instant> {
        self.waiting.peek().map(|h| h.0.due)
    }

    /// The next record due by `now`: its message and route.
    pub(super) fn pop_due(&mut self, now: tokio::time::Instant) -> Option<(u32, u32)> {
        if self.waiting.peek().is_some_and(|h| h.0.due <= now) {
            self.waiting.pop().map(|h| (h.0.message, h.0.route))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_limited_route_holds_records_in_arrival_order_and_drops_late_qos0() {
        let mut held = Held::default();
        let name: Arc<str> = Arc::from("r");
        let limit = RateLimit::new(10.0, 1, Duration::from_millis(150));
        let now = Instant::now();
        assert_eq!(held.admit(0, 0, &name, limit, 1, now), Admission::Now);
        assert_eq!(held.admit(1, 0, &name, limit, 1, now), Admission::Held);
        assert_eq!(held.admit(2, 0, &name, limit, 1, now), Admission::Held);
        assert_eq!(held.admit(3, 0, &name, limit, 0, now), Admission::Dropped, "a QoS 0 record 300 ms away");
        assert!(held.pop_due(tokio::time::Instant::now()).is_none());
        tokio::time::advance(Duration::from_millis(250)).await;
        let t = tokio::time::Instant::now();
        assert_eq!(held.pop_due(t), Some((1, 0)));
        assert_eq!(held.pop_due(t), Some((2, 0)));
        assert!(held.next_due().is_none());
    }
}
