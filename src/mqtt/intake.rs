//! The intake: the queue between the MQTT connection and the pipeline, bounded by bytes.
//!
//! A message read off the connection is never refused for lack of room: it is already out of the
//! broker's hands, and dropping it here is how a bridge loses a burst the broker could have held. The
//! MQTT edge instead asks [`IntakeSender::is_full`] after each message and, while it is full, stops
//! reading the connection (the socket fills, TCP pushes back, the broker queues within the limits its
//! operator set). So the bound is soft by at most the few packets rumqttc had already read in one batch.
//!
//! The cost of a message is its payload and topic plus a fixed overhead for what travels with it, so a
//! stream of tiny messages is bounded too.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use crate::core::message::Message;
use crate::core::routing::RouteTable;

/// Bytes counted for one message besides its payload and topic: the message's own struct, the queue
/// slot and the buffers rumqttc parsed it from, roughly.
pub const MESSAGE_OVERHEAD_BYTES: usize = 128;

struct Budget {
    used: AtomicUsize,
    /// `mqtt.buffer_bytes` (a reload may change it).
    limit: AtomicUsize,
    /// Reading resumes below this (three quarters of the limit), so that a full intake is not woken
    /// for every few messages the pipeline takes.
    resume_below: AtomicUsize,
    room: Notify,
}

/// The MQTT edge's end.
#[derive(Clone)]
pub struct IntakeSender {
    tx: mpsc::UnboundedSender<Entry>,
    budget: Arc<Budget>,
}

/// The pipeline's end.
pub struct IntakeReceiver {
    rx: mpsc::UnboundedReceiver<Entry>,
    budget: Arc<Budget>,
}

/// An intake holding at most about `limit_bytes` (see the module doc).
pub fn intake(limit_bytes: usize) -> (IntakeSender, IntakeReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let limit = limit_bytes.max(1);
    let budget = Arc::new(Budget {
        used: AtomicUsize::new(0),
        limit: AtomicUsize::new(limit),
        resume_below: AtomicUsize::new(limit - limit / 4),
        room: Notify::new(),
    });
    (IntakeSender { tx, budget: budget.clone() }, IntakeReceiver { rx, budget })
}

/// A message and the route table in effect when it arrived: a message is routed by one complete route
/// set, even if a reload swaps the table while it waits here.
type Entry = (Message, Arc<RouteTable>);

fn cost(m: &Message) -> usize {
    m.payload.len() + m.topic.len() + MESSAGE_OVERHEAD_BYTES + m.properties.as_deref().map_or(0, |p| p.cost())
}

impl IntakeSender {
    /// Queues `m`, to be routed by `routes`, whatever the fill level. Gives it back if the pipeline is
    /// gone.
    pub fn send(&self, m: Message, routes: Arc<RouteTable>) -> Result<(), Message> {
        let c = cost(&m);
        self.budget.used.fetch_add(c, Ordering::Relaxed);
        self.tx.send((m, routes)).map_err(|e| {
            self.budget.used.fetch_sub(c, Ordering::Relaxed);
            e.0 .0
        })
    }

    /// The intake holds its limit or more: stop reading the connection until [`room`](Self::room).
    pub fn is_full(&self) -> bool {
        self.budget.used.load(Ordering::Relaxed) >= self.budget.limit.load(Ordering::Relaxed)
    }

    /// A new limit (`mqtt.buffer_bytes` from a reload), from now on; a larger one wakes a paused edge.
    pub fn set_limit(&self, limit_bytes: usize) {
        let limit = limit_bytes.max(1);
        self.budget.limit.store(limit, Ordering::Relaxed);
        self.budget.resume_below.store(limit - limit / 4, Ordering::Relaxed);
        if self.budget.used.load(Ordering::Relaxed) < limit - limit / 4 {
            self.budget.room.notify_waiters();
        }
    }

    /// Bytes held now.
    pub fn used_bytes(&self) -> usize {
        self.budget.used.load(Ordering::Relaxed)
    }

    /// A reader of [`used_bytes`](Self::used_bytes) for the metrics, to keep after the sender is gone.
    pub fn gauge(&self) -> impl Fn() -> i64 + Send + Sync + 'static {
        let budget = self.budget.clone();
        move || budget.used.load(Ordering::Relaxed) as i64
    }

    /// Waits until the intake has drained to three quarters of its limit.
    pub async fn room(&self) {
        loop {
            // Registered before the check, so a wake-up between the check and the wait is not missed.
            let notified = self.budget.room.notified();
            if self.budget.used.load(Ordering::Relaxed) < self.budget.resume_below.load(Ordering::Relaxed) {
                return;
            }
            notified.await;
        }
    }
}

impl IntakeReceiver {
    /// The next message, or `None` once the sender is gone and everything was taken.
    pub async fn recv(&mut self) -> Option<(Message, Arc<RouteTable>)> {
        let m = self.rx.recv().await?;
        Some(self.taken(m))
    }

    /// The next message if one is waiting.
    pub fn try_recv(&mut self) -> Option<(Message, Arc<RouteTable>)> {
        self.rx.try_recv().ok().map(|m| self.taken(m))
    }

    fn taken(&self, m: Entry) -> Entry {
        let c = cost(&m.0);
        let before = self.budget.used.fetch_sub(c, Ordering::Relaxed);
        let resume_below = self.budget.resume_below.load(Ordering::Relaxed);
        if before >= resume_below && before - c < resume_below {
            self.budget.room.notify_waiters();
        }
        m
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_new_limit_applies_from_now_on() {
        let (tx, mut rx) = intake(1000);
        let m = || Message::new("t/1", vec![0u8; 300], 0, std::time::SystemTime::now());
        let table = Arc::new(RouteTable::new(vec![]));
        for _ in 0..3 {
            tx.send(m(), table.clone()).unwrap();
        }
        assert!(tx.is_full(), "3 x (300 + overhead) bytes over 1,000");
        tx.set_limit(10_000);
        assert!(!tx.is_full());
        tx.set_limit(100);
        assert!(tx.is_full());
        while rx.try_recv().is_some() {}
        assert!(!tx.is_full());
    }
    use super::*;
    use std::time::{Duration, SystemTime};

    fn msg(payload_len: usize) -> Message {
        Message::new("t", vec![b'x'; payload_len], 0, SystemTime::UNIX_EPOCH)
    }

    fn table() -> Arc<RouteTable> {
        Arc::new(RouteTable::new(vec![]))
    }

    #[tokio::test]
    async fn a_message_is_taken_even_past_the_limit_and_room_comes_back_as_it_drains() {
        let each = 1000 + 1 + MESSAGE_OVERHEAD_BYTES;
        let (tx, mut rx) = intake(2 * each);
        tx.send(msg(1000), table()).unwrap();
        assert!(!tx.is_full());
        tx.send(msg(1000), table()).unwrap();
        assert!(tx.is_full(), "at the limit");
        tx.send(msg(1000), table()).unwrap();
        assert_eq!(tx.used_bytes(), 3 * each, "never refused: the message is already off the wire");
        assert!(tokio::time::timeout(Duration::from_millis(50), tx.room()).await.is_err(), "no room while full");
        rx.recv().await.unwrap();
        assert!(tx.is_full(), "still at the limit after one of three");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), tx.room()).await.is_err(),
            "no room until it drains to three quarters"
        );
        let waiter = tokio::spawn(async move {
            tx.room().await;
            tx
        });
        tokio::task::yield_now().await;
        rx.recv().await.unwrap();
        let tx =
            tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken when room came back").unwrap();
        assert!(!tx.is_full());
        assert_eq!(tx.used_bytes(), each);
    }

    #[tokio::test]
    async fn messages_keep_their_order_and_the_receiver_ends_after_the_sender() {
        let (tx, mut rx) = intake(10);
        for n in 0..5 {
            tx.send(msg(n), table()).unwrap();
        }
        drop(tx);
        let mut lens = Vec::new();
        while let Some(m) = rx.recv().await {
            lens.push(m.0.payload.len());
        }
        assert_eq!(lens, [0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn a_send_without_a_receiver_gives_the_message_back_and_counts_nothing() {
        let (tx, rx) = intake(10);
        drop(rx);
        assert!(tx.send(msg(3), table()).is_err());
        assert_eq!(tx.used_bytes(), 0);
    }
}
