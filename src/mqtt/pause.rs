//! Not reading while the intake is full. The socket fills, TCP pushes back, and the broker holds what
//! follows, within the queue limits its operator set, instead of the gateway reading it only to drop it.
//! The connection stays up: rumqttc pings only from inside `poll`, which would also read, so the
//! PINGREQs are written here, at half the keep-alive so that a late one still lands within the broker's
//! 1.5 x keep-alive. Acks are still taken (they go out when reading resumes): the stage that sends them
//! must never block on us, or the pipeline that makes room in the intake would stop.

use std::ops::ControlFlow;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use rumqttc::Packet;

use super::edge::Edge;
use crate::health::Loop;

impl Edge {
    /// Waits, without reading the connection, until the intake has room (or shutdown).
    pub(super) async fn pause_while_full(&mut self) -> ControlFlow<()> {
        let full = self.out.as_ref().is_some_and(|o| o.is_full());
        if !full || !self.metrics.mqtt_connected.load(Relaxed) {
            return ControlFlow::Continue(());
        }
        let Some(out) = self.out.take() else { return ControlFlow::Continue(()) };
        let started = tokio::time::Instant::now();
        self.metrics.intake_stalled(out.used_bytes());
        let every = (self.settings.keep_alive / 2).max(Duration::from_millis(500));
        let mut ping = tokio::time::interval_at(started + every, every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (flow, keep) = loop {
            tokio::select! {
                biased;
                _ = self.stop.disconnect.cancelled() => break (ControlFlow::Break(()), true),
                // Shutting down: nothing more is taken, so nothing to wait for.
                _ = self.stop.receiving.cancelled() => break (ControlFlow::Continue(()), false),
                _ = out.room() => break (ControlFlow::Continue(()), true),
                _ = self.heartbeat.tick() => self.metrics.health.beat(Loop::Mqtt),
                ack = self.acks.rx.recv(), if self.acks.open => match ack {
                    Some(a) => self.acks.out.send(&self.client, a, self.connection, &self.metrics),
                    None => self.acks.open = false,
                },
                _ = ping.tick() => {
                    if !self.ping().await {
                        // Let rumqttc's poll find the broken connection and reconnect.
                        break (ControlFlow::Continue(()), true);
                    }
                }
            }
        };
        if keep {
            self.out = Some(out);
        }
        // Our PINGREQs' answers, and rumqttc's own, wait behind the messages the broker queued while we
        // did not read: a pending PINGRESP is no sign of a dead connection here.
        self.eventloop.state.await_pingresp = false;
        self.metrics.intake_resumed(started.elapsed());
        flow
    }

    /// Writes a PINGREQ straight to the connection. False if it could not be written.
    async fn ping(&mut self) -> bool {
        let Some(network) = self.eventloop.network.as_mut() else { return false };
        let sent = async {
            network.write(Packet::PingReq).await?;
            network.flush().await
        };
        match tokio::time::timeout(self.settings.connect_timeout, sent).await {
            Ok(Ok(())) => {
                tracing::debug!("PINGREQ sent while reading is paused");
                true
            }
            _ => false,
        }
    }
}
