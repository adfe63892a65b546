//! The one failure policy: what becomes of a record Kafka did not take. A record can fail at three
//! points (refused when first handed to librdkafka, reported failed after it was queued, refused when
//! produced again) and all three ask [`decide`], so the same error always has the same consequence.
//!
//! | the error ([`ErrorKind`])  | a record                | its dead letter                      |
//! |----------------------------|-------------------------|--------------------------------------|
//! | queue full                 | wait for room           | wait for room                        |
//! | transient                  | produce again, backoff  | produce again, backoff               |
//! | … QoS 0, already retried   | rejected (counted)      | rejected (counted)                   |
//! | too large                  | dead-letter the message | cut to its head, once; then rejected |
//! | permanent                  | dead-letter the message | rejected (counted)                   |
//! | fatal (producer dead)      | never acknowledged      | never acknowledged                   |
//! | taken back (by us)         | produce again, at once  | produce again, at once               |
//!
//! QoS 1/2 records are produced again for as long as it takes: the message is not acknowledged before,
//! so the broker keeps it, and the stall shows in the logs and metrics. A QoS 0 record gets one more try:
//! nothing upstream would resend it, and holding it longer holds every message behind it.

use std::time::Duration;

use crate::core::backoff::Backoff;
use crate::kafka::ErrorKind;

/// Where a record stands when it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Attempt {
    /// It is the dead letter of its message, not its record.
    pub(super) dead_letter: bool,
    /// It is a dead letter already cut to size.
    pub(super) truncated: bool,
    /// Times it was produced again after a failure.
    pub(super) retries: u32,
}

/// What to do with a record that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// librdkafka's queue is full: hand it over again shortly, as it is (not a retry).
    WaitForRoom,
    /// Produce it again after `after`.
    Retry { after: Duration },
    /// Kafka will never take the record: send the message as published to the route's dead-letter
    /// topic, with the reason.
    DeadLetter,
    /// The dead letter is too large itself: send its head instead (see `kafka::truncated`).
    CutDeadLetter,
    /// Nothing more to try: counted and logged, and settled, so the messages behind it are not held up.
    Reject,
    /// The producer is dead: the message is never acknowledged (a restarted gateway gets it again).
    Fatal,
    /// The gateway took it back from a producer it is replacing: produce it again at once, in the order
    /// it was taken back, ahead of anything new (not a retry: it did not fail).
    ProduceAgain,
}

/// How long a record waits before its retry number `retries + 1`: 0.5 s doubling up to 30 s, jittered.
pub(super) fn retry_delay(retries: u32) -> Duration {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut delay = backoff.next_delay();
    for _ in 0..retries.min(16) {
        delay = backoff.next_delay();
    }
    delay
}

/// The policy (see the module doc).
pub(super) fn decide(kind: ErrorKind, record: Attempt, qos: u8) -> Verdict {
    match kind {
        ErrorKind::QueueFull => Verdict::WaitForRoom,
        ErrorKind::TakenBack => Verdict::ProduceAgain,
        ErrorKind::Fatal => Verdict::Fatal,
        ErrorKind::TooLarge | ErrorKind::Permanent if !record.dead_letter => Verdict::DeadLetter,
        ErrorKind::TooLarge if !record.truncated => Verdict::CutDeadLetter,
        ErrorKind::TooLarge | ErrorKind::Permanent => Verdict::Reject,
        ErrorKind::Transient if qos == 0 && record.retries > 0 => Verdict::Reject,
        ErrorKind::Transient => Verdict::Retry { after: retry_delay(record.retries) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_from_half_a_second_to_thirty() {
        let (first, late) = (retry_delay(0), retry_delay(10));
        assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(500), "{first:?}");
        assert!(late >= Duration::from_secs(15) && late <= Duration::from_secs(30), "{late:?}");
    }

    /// The policy itself, case by case; `engine.rs` drives the same table through its three entry points.
    #[test]
    fn the_policy_table() {
        use ErrorKind::*;
        let record = Attempt::default();
        let dead_letter = Attempt { dead_letter: true, ..record };
        let cut = Attempt { truncated: true, ..dead_letter };
        let retried = Attempt { retries: 1, ..record };
        let retry = |v: Verdict| matches!(v, Verdict::Retry { .. });
        for qos in [0, 1] {
            assert_eq!(decide(QueueFull, record, qos), Verdict::WaitForRoom);
            assert_eq!(decide(TakenBack, record, qos), Verdict::ProduceAgain);
            assert_eq!(decide(TakenBack, retried, qos), Verdict::ProduceAgain, "not a retry");
            assert_eq!(decide(TakenBack, dead_letter, qos), Verdict::ProduceAgain);
            assert_eq!(decide(Fatal, record, qos), Verdict::Fatal);
            assert_eq!(decide(Fatal, dead_letter, qos), Verdict::Fatal);
            assert_eq!(decide(TooLarge, record, qos), Verdict::DeadLetter);
            assert_eq!(decide(Permanent, record, qos), Verdict::DeadLetter);
            assert_eq!(decide(TooLarge, dead_letter, qos), Verdict::CutDeadLetter);
            assert_eq!(decide(TooLarge, cut, qos), Verdict::Reject);
            assert_eq!(decide(Permanent, dead_letter, qos), Verdict::Reject);
            assert!(retry(decide(Transient, record, qos)));
            assert!(retry(decide(Transient, dead_letter, qos)));
        }
        assert_eq!(decide(Transient, retried, 0), Verdict::Reject, "QoS 0 gets one more try");
        assert!(retry(decide(Transient, retried, 1)), "QoS 1 is tried until it is in");
        assert!(retry(decide(Transient, Attempt { retries: 50, ..record }, 2)));
    }
}
