//! Read coalescing: at a high QoS 0 rate, let messages gather in the socket before reading again.
//!
//! Every time the connection has been read dry, the gateway's thread waits in `epoll_wait`, and the
//! next packet the broker writes wakes it again. On a VM such a wake-up costs tens of microseconds of
//! CPU, several times the work of a message. A broker that is not busy writes each message as it comes:
//! at 5,000 msg/s the thread woke once per message and the gateway cost about 80 µs of CPU per message.
//! So once a window of traffic (8 waits long) shows messages coming fast enough that a wait of
//! `mqtt.read_coalesce_us` gathers at least `GATHER_AT_LEAST` of them, every time the connection is
//! read dry the runtime sleeps that long before it waits on the socket again, and then reads all that
//! came at once. The sleep is a blocking one, taken when every task is idle (the runtime's park hook,
//! [`before_park`]): a timer in the event loop would be woken by the socket all the same.
//!
//! The price is latency, bounded by the wait and paid only while the rate is high: a message that comes
//! alone after a quiet spell is read at once. It never applies while QoS 1/2 messages come: their acks
//! are written by this thread, and a broker's in-flight window would turn a wait into lost throughput.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// The sleep the edge asked for, in nanoseconds, served by [`before_park`] (0: none). One per process:
/// the gateway runs one edge, on one runtime thread.
static NAP_NANOS: AtomicU64 = AtomicU64::new(0);

/// For the runtime's `on_thread_park`: sleeps for the wait the edge asked for, if any. The runtime calls
/// it when every task is idle, so the messages already read have been produced first. Without this hook
/// registered, coalescing asks and nobody sleeps: it is simply off.
pub fn before_park() {
    let nanos = NAP_NANOS.swap(0, Relaxed);
    if nanos > 0 {
        std::thread::sleep(Duration::from_nanos(nanos));
    }
}

/// A wait is worth it only if, at the rate just seen, it gathers at least this many messages.
pub(super) const GATHER_AT_LEAST: u64 = 4;

/// The rate is measured over windows this many waits long (8 ms at the default 1000 µs): long enough
/// to span many wake-ups, short enough that a falling rate stops the waiting soon.
const WINDOW_WAITS: u32 = 8;

/// The rate of the traffic over the last window, and the decision to wait.
#[derive(Debug)]
pub(super) struct Coalesce {
    wait: Duration,
    /// The current window: when it began, the messages received since, and whether one was QoS 1/2.
    window: Option<Instant>,
    messages: u64,
    acked: bool,
    /// What the last complete window decided.
    waiting: bool,
    /// A sleep was asked for and may not have been served yet.
    asked: bool,
}

impl Coalesce {
    pub(super) fn new(wait: Duration) -> Self {
        Self { wait, window: None, messages: 0, acked: false, waiting: false, asked: false }
    }

    /// `mqtt.read_coalesce_us` from a reload.
    pub(super) fn set_wait(&mut self, wait: Duration) {
        self.wait = wait;
        self.reset();
    }

    pub(super) fn message(&mut self, qos: u8) {
        self.messages += 1;
        self.acked |= qos > 0;
    }

    /// The connection is dry now: asks the runtime to sleep before it waits for the socket, when the
    /// traffic says it is worth it.
    pub(super) fn connection_dry(&mut self) {
        if let Some(wait) = self.dry(Instant::now()) {
            NAP_NANOS.store(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX), Relaxed);
            self.asked = true;
        }
    }

    /// Something came before the runtime slept: the sleep asked for is no longer due.
    pub(super) fn event_came(&mut self) {
        if std::mem::take(&mut self.asked) {
            NAP_NANOS.store(0, Relaxed);
        }
    }

    /// Forget the traffic seen (a new connection): no waiting until a window says so again.
    pub(super) fn reset(&mut self) {
        self.event_came();
        self.window = None;
        self.messages = 0;
        self.acked = false;
        self.waiting = false;
    }

    /// The connection is dry at `now`: how long to sleep before reading it again, if at all. A window
    /// that has run its length is closed here: waiting goes on while the window's messages were all
    /// QoS 0 and came fast enough that a wait gathers [`GATHER_AT_LEAST`]. A QoS 1/2 message stops it at
    /// once. The sleep comes after what was read is handled, so a message that arrives alone after a
    /// quiet spell never waits.
    pub(super) fn dry(&mut self, now: Instant) -> Option<Duration> {
        if self.wait.is_zero() {
            return None;
        }
        let start = *self.window.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= self.wait * WINDOW_WAITS {
            let gathered = u128::from(self.messages) * self.wait.as_nanos() / elapsed.as_nanos();
            self.waiting = !self.acked && gathered >= u128::from(GATHER_AT_LEAST);
            self.window = Some(now);
            self.messages = 0;
            self.acked = false;
        }
        (self.waiting && !self.acked).then_some(self.wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// `n` messages of `qos`, evenly over `span` from `*at`, each followed by a dry read; the waits asked.
    fn traffic(c: &mut Coalesce, at: &mut Instant, n: u32, qos: u8, span: Duration) -> Vec<Option<Duration>> {
        let step = span / n.max(1);
        (0..n)
            .map(|_| {
                *at += step;
                c.message(qos);
                c.dry(*at)
            })
            .collect()
    }

    #[test]
    fn a_fast_qos0_stream_waits_once_a_window_has_measured_it_and_a_slow_one_never_does() {
        let mut at = Instant::now();
        let mut c = Coalesce::new(MS);
        // 5,000 msg/s, one message per wake-up: the first window (8 ms) measures, then every dry read waits.
        let waits = traffic(&mut c, &mut at, 80, 0, 16 * MS);
        assert!(waits[..39].iter().all(Option::is_none), "no waiting before a window has closed: {waits:?}");
        assert!(waits[40..].iter().all(|w| *w == Some(MS)), "{waits:?}");
        // 1,000 msg/s gathers one message a wait: the next window turns waiting off.
        let waits = traffic(&mut c, &mut at, 20, 0, 20 * MS);
        assert_eq!(waits.last(), Some(&None));
        assert!(traffic(&mut c, &mut at, 20, 0, 20 * MS).iter().all(Option::is_none));
    }

    #[test]
    fn at_a_rate_just_below_the_threshold_it_never_waits() {
        let mut at = Instant::now();
        let mut c = Coalesce::new(MS);
        // 3,500 msg/s gathers 3.5 per wait.
        assert!(traffic(&mut c, &mut at, 70, 0, 20 * MS).iter().all(Option::is_none));
        // A longer wait makes the same rate worth it: 2 ms gathers 7.
        let mut c = Coalesce::new(2 * MS);
        assert_eq!(traffic(&mut c, &mut at, 140, 0, 40 * MS).last(), Some(&Some(2 * MS)));
    }

    #[test]
    fn a_qos1_message_stops_the_waiting_at_once() {
        let mut at = Instant::now();
        let mut c = Coalesce::new(MS);
        assert_eq!(traffic(&mut c, &mut at, 200, 0, 20 * MS).last(), Some(&Some(MS)));
        c.message(1);
        assert_eq!(c.dry(at), None);
        // A window with a QoS 1 message in it does not turn waiting on, however fast.
        assert!(traffic(&mut c, &mut at, 200, 0, 9 * MS).iter().all(Option::is_none));
        // An all-QoS 0 window does again.
        assert_eq!(traffic(&mut c, &mut at, 200, 0, 20 * MS).last(), Some(&Some(MS)));
    }

    #[test]
    fn zero_turns_it_off_and_reset_forgets_the_traffic() {
        let mut at = Instant::now();
        let mut off = Coalesce::new(Duration::ZERO);
        assert!(traffic(&mut off, &mut at, 1000, 0, 10 * MS).iter().all(Option::is_none));
        let mut c = Coalesce::new(MS);
        assert_eq!(traffic(&mut c, &mut at, 200, 0, 20 * MS).last(), Some(&Some(MS)));
        c.reset();
        assert_eq!(c.dry(at), None, "a new connection starts without waiting");
    }
}
