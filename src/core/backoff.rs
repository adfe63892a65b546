//! Exponential reconnect backoff with jitter. rumqttc reconnects on the next `poll()` with no delay
//! (rumqtt#703), which against a down broker is a busy loop and, for a fleet of gateways, a thundering herd.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), attempt: 0 }
    }

    /// Failed attempts since the last success.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The delay before the next attempt: `min * 2^attempt`, capped at `max`, scaled by a random factor in
    /// [0.5, 1.0] ("equal jitter": never below half the nominal delay, never two gateways in lockstep).
    pub fn next_delay(&mut self) -> Duration {
        let jitter = 0.5 + rand::random::<f64>() * 0.5;
        self.next_delay_with(jitter)
    }

    pub fn next_delay_with(&mut self, jitter: f64) -> Duration {
        let nominal = self.min.saturating_mul(1u32 << self.attempt.min(20)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        nominal.mul_f64(jitter.clamp(0.0, 1.0))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_maximum() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let delays: Vec<u64> = (0..10).map(|_| b.next_delay_with(1.0).as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]);
    }

    #[test]
    fn jitter_stays_between_half_and_full() {
        let mut b = Backoff::new(Duration::from_millis(1000), Duration::from_secs(30));
        for _ in 0..100 {
            let d = b.next_delay();
            b.reset();
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1000), "{d:?}");
        }
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        b.next_delay_with(1.0);
        b.next_delay_with(1.0);
        b.reset();
        assert_eq!(b.next_delay_with(1.0), Duration::from_millis(100));
        assert_eq!(b.attempt(), 1);
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        for _ in 0..1000 {
            assert!(b.next_delay_with(1.0) <= Duration::from_secs(5));
        }
    }
}
