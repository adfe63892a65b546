//! Not reading while the intake is full. The socket fills, TCP pushes back, and the broker holds what
//! follows, within the queue limits its operator set, instead of the gateway reading it only to drop it.
//! The connection stays up: rumqttc pings only from inside `poll`, which would also read, so on MQTT
//! 3.1.1 the PINGREQs are written here, at half the keep-alive so that a late one still lands within the
//! broker's 1.5 x keep-alive. rumqttc's MQTT 5 client keeps its connection to itself: there the edge
//! polls when rumqttc's ping is due and takes what that poll reads (a few batches of at most 10
//! packets, past the intake's bound) until rumqttc has pinged. Acks are still taken (they go out when
//! reading resumes): the stage that sends them must never block on us, or the pipeline that makes room
//! in the intake would stop.

use std::ops::ControlFlow;
use std::time::Duration;

use super::client::Event;
use super::edge::Edge;
use crate::ops::health::Loop;

impl Edge {
    /// Waits, without reading the connection, until the intake has room (or shutdown).
    pub(super) async fn pause_while_full(&mut self) -> ControlFlow<()> {
        let full = self.out.as_ref().is_some_and(|o| o.is_full());
        if !full || !self.connected {
            return ControlFlow::Continue(());
        }
        let Some(out) = self.out.take() else { return ControlFlow::Continue(()) };
        let started = tokio::time::Instant::now();
        self.metrics.intake_stalled(out.used_bytes());
        let direct = self.eventloop.writes_directly();
        let every = (self.keep_alive / if direct { 2 } else { 4 }).max(Duration::from_millis(500));
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
                ack = self.acks.rx.recv(), if self.acks.open => {
                    self.acks.take(ack, &self.client, self.connection, &self.metrics);
                }
                _ = ping.tick() => match self.eventloop.ping(self.settings.connect_timeout).await {
                    Some(true) => tracing::debug!("PINGREQ sent while reading is paused"),
                    // Let rumqttc's poll find the broken connection and reconnect.
                    Some(false) => break (ControlFlow::Continue(()), true),
                    None if self.last_ping.elapsed() >= self.keep_alive => {
                        self.out = Some(out.clone());
                        let flow = self.let_rumqttc_ping().await;
                        let pipeline_gone = self.out.take().is_none();
                        if flow.is_break() || pipeline_gone || !self.connected {
                            break (flow, !pipeline_gone);
                        }
                    }
                    None => {}
                },
            }
        };
        if keep {
            self.out = Some(out);
        }
        // Our PINGREQs' answers, and rumqttc's own, wait behind the messages the broker queued while we
        // did not read: a pending PINGRESP is no sign of a dead connection here.
        self.eventloop.alive();
        self.metrics.intake_resumed(started.elapsed());
        flow
    }

    /// MQTT 5: polls until rumqttc has written its due PINGREQ, handling what the polls read (taken
    /// past the intake's bound). Bounded in events and time; a broken connection is handled as ever.
    async fn let_rumqttc_ping(&mut self) -> ControlFlow<()> {
        const EVENTS_AT_MOST: usize = 64;
        // Our earlier PINGREQs' answers wait behind the backlog: without this rumqttc would take the
        // missing PINGRESP for a dead connection instead of pinging.
        self.eventloop.alive();
        let deadline = tokio::time::Instant::now() + self.keep_alive;
        for _ in 0..EVENTS_AT_MOST {
            let Ok(event) = tokio::time::timeout_at(deadline, self.eventloop.poll()).await else { break };
            let pinged = matches!(event, Ok(Event::PingSent));
            if self.handle(event).await.is_break() {
                return ControlFlow::Break(());
            }
            if pinged {
                tracing::debug!("rumqttc pinged while reading is paused");
                break;
            }
        }
        ControlFlow::Continue(())
    }
}
