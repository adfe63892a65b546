//! Records held back by their route's rate limit (see [`crate::throttle`]): each gets its due time when
//! its message is taken, waits here (its message unsettled, so a QoS 1/2 message is acknowledged only
//! after it leaves), and is built and produced when due. Routes without a limit never come here.
//!
//! Held records count against `mqtt.max_unacked_messages` through their messages, so a route held back
//! long enough fills the window and the engine stops taking messages: that is the backpressure, and the
//! only way one route's limit slows the others (they share the connection and its ack order).

use std::cmp::Reverse;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::engine::{message_of, Engine, SendFailed};
use crate::envelope::Payload;
use crate::route::Route;
use crate::throttle::{RateLimit, Schedule};

/// A record waiting for its turn. Ordered by due time, then by arrival: a route's due times never go
/// backwards, so its records leave in arrival order.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Held {
    pub(super) due: tokio::time::Instant,
    seq: u64,
    slot: u32,
    route: u32,
}

/// What the limit says of a record.
pub(super) enum Admission {
    Now,
    /// Reserved a later slot: held here, counted as outstanding.
    Held,
    /// QoS 0, and its turn is further away than `qos0_max_delay_ms`: dropped, counted.
    Dropped,
}

impl Engine {
    /// Reserves the slot of a record of `route` (message `slot`, route `index` of its table).
    pub(super) fn admit(
        &mut self,
        slot: u32,
        index: u32,
        route: &Route,
        limit: RateLimit,
        qos: u8,
        topic: &str,
    ) -> Admission {
        let now = Instant::now();
        // One schedule per route name, kept across reloads while the limit stays the same.
        let schedule = self.schedules.entry(route.name.clone()).or_insert_with(|| Schedule::new(limit, now));
        if schedule.limit != limit {
            *schedule = Schedule::new(limit, now);
        }
        let max_wait = (qos == 0).then_some(limit.qos0_max_delay);
        match schedule.reserve(now, max_wait) {
            None => {
                self.metrics.rate_limited(route, topic);
                Admission::Dropped
            }
            Some(wait) if wait.is_zero() => Admission::Now,
            Some(wait) => {
                self.held_seq += 1;
                let due = tokio::time::Instant::from_std(now + wait);
                self.held.push(Reverse(Held { due, seq: self.held_seq, slot, route: index }));
                route.stats.delayed.fetch_add(1, Relaxed);
                Admission::Held
            }
        }
    }

    /// When the next held record is due.
    pub(super) fn next_held(&self) -> Option<tokio::time::Instant> {
        self.held.peek().map(|h| h.0.due)
    }

    /// Builds and produces the held records now due.
    pub(super) async fn release_due(&mut self, give_up: &CancellationToken) -> Result<(), ()> {
        let now = tokio::time::Instant::now();
        while self.held.peek().is_some_and(|h| h.0.due <= now) {
            let Some(Reverse(h)) = self.held.pop() else { break };
            let Some(message) = self.messages.get(h.slot) else { continue };
            let inbound = message.inbound.clone();
            let msg = message_of(&inbound);
            let payload = Payload::new(&inbound.payload);
            // Its place in the message's progress was taken when it was held.
            match self
                .produce_route(h.slot, h.route, inbound.routes.route(h.route), &msg, &payload, give_up, true)
                .await
            {
                Ok(true) => {}
                Ok(false) => self.settle_record_of(h.slot, true),
                Err(SendFailed::GaveUp) => return Err(()),
                Err(SendFailed::Refused(_)) => self.settle_record_of(h.slot, false),
            }
        }
        self.send_due_acks();
        Ok(())
    }
}
