//! PUBACK (QoS 1) and PUBREC (QoS 2) out, in the order the messages arrived, only for messages of the
//! current connection (packet ids are reused on a new one: never acknowledge a stranger).
//!
//! Two ways out, one order: through rumqttc's request channel (its `poll` writes and flushes each on its
//! own: one system call per ack), or written straight to the connection between events, a batch with one
//! flush ([`Edge::write_due_acks`]; MQTT 3.1.1 only, see `super::client`). A batch is written only when
//! no ack queued earlier is still waiting in the channel, which is counted through the acks rumqttc
//! reports written.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::mpsc::error::TryRecvError;
use tokio::time::{Interval, MissedTickBehavior};

use super::client::Client;
use super::edge::{AckReceiver, Edge};
use crate::core::message::AckToken;
use crate::ops::metrics::Metrics;

/// The acks coming in from the pipeline and those on their way out.
pub(super) struct Acks {
    pub(super) rx: AckReceiver,
    /// False once the pipeline has dropped its end.
    pub(super) open: bool,
    pub(super) out: AckOut,
    /// How often acks that did not fit in rumqttc's channel are tried again.
    pub(super) retry: Interval,
}

impl Acks {
    pub(super) fn new(rx: AckReceiver) -> Self {
        let mut retry = tokio::time::interval(Duration::from_millis(5));
        retry.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self { rx, open: true, out: AckOut::default(), retry }
    }

    /// An ack from the pipeline (`None`: the pipeline has dropped its end), on its way out. Every wait of
    /// the edge's takes acks through here, so the pipeline never blocks on the edge.
    pub(super) fn take(&mut self, ack: Option<AckToken>, client: &Client, connection: u64, metrics: &Metrics) {
        match ack {
            Some(a) => self.out.send(client, a, connection, metrics),
            None => self.open = false,
        }
    }

    /// At shutdown: everything due, through rumqttc's channel, ahead of the DISCONNECT.
    pub(super) fn last_ones(&mut self, client: &Client, connection: u64, metrics: &Metrics) {
        while let Ok(a) = self.rx.try_recv() {
            self.out.unsent.push_back(a);
        }
        self.out.retry_unsent(client, connection, metrics);
        if !self.out.unsent.is_empty() {
            tracing::warn!(
                acks = self.out.unsent.len(),
                "acks that did not fit before disconnecting; the broker delivers those messages again"
            );
        }
    }
}

#[derive(Default)]
pub(super) struct AckOut {
    /// Did not fit in rumqttc's channel; tried again before anything newer.
    pub(super) unsent: VecDeque<AckToken>,
    /// Queued in rumqttc's channel and not yet written (it reports each one it writes).
    in_channel: usize,
}

impl AckOut {
    /// Queues an ack in rumqttc's channel, behind any waiting for room. An ack for a message of an
    /// earlier connection is dropped: its packet id may now name another message.
    pub(super) fn send(&mut self, client: &Client, a: AckToken, connection: u64, metrics: &Metrics) {
        if a.connection != connection {
            metrics.stale_acks_dropped.fetch_add(1, Relaxed);
            return;
        }
        if !self.unsent.is_empty() {
            // Older acks are waiting for room: this one goes behind them (arrival order).
            self.unsent.push_back(a);
            return;
        }
        if !client.try_ack(a.pkid, a.qos) {
            self.unsent.push_back(a);
        } else {
            self.in_channel += 1;
            metrics.acks_sent.fetch_add(1, Relaxed);
        }
    }

    pub(super) fn retry_unsent(&mut self, client: &Client, connection: u64, metrics: &Metrics) {
        let retry: Vec<AckToken> = self.unsent.drain(..).collect();
        for a in retry {
            self.send(client, a, connection, metrics);
        }
    }

    pub(super) fn written_by_rumqttc(&mut self) {
        self.in_channel = self.in_channel.saturating_sub(1);
    }

    /// rumqttc drops the acks still in its channel when a connection breaks.
    pub(super) fn connection_lost(&mut self) {
        self.in_channel = 0;
    }

    /// Nothing queued earlier is still on its way: an ack written now is in order.
    fn clear(&self) -> bool {
        self.in_channel == 0 && self.unsent.is_empty()
    }
}

impl Edge {
    /// Between events: takes the acks that are due and writes them to the connection with one flush.
    pub(super) async fn write_due_acks(&mut self) {
        let mut written = 0;
        while self.acks.open {
            let a = match self.acks.rx.try_recv() {
                Ok(a) => a,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.acks.open = false;
                    break;
                }
            };
            if a.connection != self.connection {
                self.metrics.stale_acks_dropped.fetch_add(1, Relaxed);
                continue;
            }
            if !(self.eventloop.writes_directly() && self.acks.out.clear()) {
                // Behind the acks already queued, in order (and always so on MQTT 5).
                self.acks.out.send(&self.client, a, self.connection, &self.metrics);
                continue;
            }
            // A broken connection is reported by the next poll; the messages not acknowledged come again.
            if !self.eventloop.write_ack(a.pkid, a.qos).await {
                break;
            }
            written += 1;
        }
        if written > 0 && self.eventloop.flush(self.settings.connect_timeout).await {
            self.metrics.acks_sent.fetch_add(written, Relaxed);
        }
    }
}
