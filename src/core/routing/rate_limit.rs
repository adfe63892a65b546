//! Per-route rate limits (`routes[].rate_limit`): a scheduler that gives each record of a limited route
//! its due time when the message arrives.
//!
//! The rule is GCRA (the generic cell rate algorithm, a leaky bucket): `messages_per_sec` sets the
//! interval between records, `burst` how many may go at once after a quiet spell. Unlike a limiter that
//! only answers "now, or not until t", every record *reserves* its slot on arrival, so a route's records
//! leave in arrival order (per-device order holds) and the engine needs one timer for all of them rather
//! than one waiter per route. A record that must wait is held by the engine, not sent: its message is
//! acknowledged after it leaves (QoS 1/2: nothing is lost; the wait shows in the ack window). A QoS 0
//! record whose wait would exceed `qos0_max_delay_ms` is dropped at once and counted instead of
//! reserving a slot, so a flood costs at most that delay.
//!
//! Why not the `governor` crate: its limiter checks without reserving, which would leave the engine to
//! queue and re-check every route's waiting records itself; the reservation is the part that keeps
//! order, and it is a dozen lines of arithmetic.

use std::time::{Duration, Instant};

/// A route's limit, as configured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// One record per this much time, on average (1 / messages_per_sec).
    pub interval: Duration,
    /// How far ahead of the schedule a record may go: (burst - 1) intervals.
    pub tolerance: Duration,
    /// The longest a QoS 0 record may wait before it is dropped instead.
    pub qos0_max_delay: Duration,
}

impl RateLimit {
    pub fn new(messages_per_sec: f64, burst: u32, qos0_max_delay: Duration) -> Self {
        let interval = Duration::from_secs_f64(1.0 / messages_per_sec);
        Self { interval, tolerance: interval * burst.saturating_sub(1), qos0_max_delay }
    }
}

/// One route's schedule: the theoretical arrival time of its next record.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub limit: RateLimit,
    origin: Instant,
    /// Since `origin`; zero when the route has been quiet long enough to allow a full burst.
    tat: Duration,
}

impl Schedule {
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        Self { limit, origin: now, tat: Duration::ZERO }
    }

    /// Reserves the next record's slot at `now`: how long it must wait (zero: send it now). With
    /// `max_wait`, a record that would wait longer reserves nothing and gets `None`.
    pub fn reserve(&mut self, now: Instant, max_wait: Option<Duration>) -> Option<Duration> {
        let t = now.saturating_duration_since(self.origin);
        let earliest = self.tat.saturating_sub(self.limit.tolerance);
        let due = t.max(earliest);
        let wait = due - t;
        if max_wait.is_some_and(|m| wait > m) {
            return None;
        }
        self.tat = self.tat.max(due) + self.limit.interval;
        Some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waits(s: &mut Schedule, at: Instant, n: usize) -> Vec<u128> {
        (0..n).map(|_| s.reserve(at, None).unwrap().as_millis()).collect()
    }

    #[test]
    fn a_burst_goes_at_once_and_the_rest_at_the_rate_in_arrival_order() {
        let t0 = Instant::now();
        let mut s = Schedule::new(RateLimit::new(10.0, 3, Duration::from_secs(1)), t0);
        // 3 at once, then one every 100 ms.
        assert_eq!(waits(&mut s, t0, 6), [0, 0, 0, 100, 200, 300]);
        // Later arrivals queue behind the earlier ones: due times never go backwards.
        assert_eq!(s.reserve(t0 + Duration::from_millis(50), None).unwrap().as_millis(), 350);
    }

    #[test]
    fn a_quiet_spell_gives_the_burst_back() {
        let t0 = Instant::now();
        let mut s = Schedule::new(RateLimit::new(10.0, 2, Duration::from_secs(1)), t0);
        assert_eq!(waits(&mut s, t0, 3), [0, 0, 100]);
        let later = t0 + Duration::from_secs(5);
        assert_eq!(waits(&mut s, later, 3), [0, 0, 100]);
    }

    #[test]
    fn a_qos0_record_that_would_wait_too_long_reserves_nothing() {
        let t0 = Instant::now();
        let limit = RateLimit::new(10.0, 1, Duration::from_millis(250));
        let mut s = Schedule::new(limit, t0);
        let max = Some(limit.qos0_max_delay);
        let got: Vec<Option<u128>> = (0..6).map(|_| s.reserve(t0, max).map(|d| d.as_millis())).collect();
        assert_eq!(got, [Some(0), Some(100), Some(200), None, None, None]);
        // The dropped ones took no slot: the next one after 300 ms goes at once.
        assert_eq!(s.reserve(t0 + Duration::from_millis(300), max), Some(Duration::ZERO));
    }

    #[test]
    fn fractional_rates_work() {
        let t0 = Instant::now();
        let mut s = Schedule::new(RateLimit::new(0.5, 1, Duration::ZERO), t0);
        assert_eq!(waits(&mut s, t0, 2), [0, 2000]);
    }
}
