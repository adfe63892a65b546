//! New MQTT settings from a reload, applied without a restart: the connection is closed cleanly and a
//! new one made with the new settings; if that one fails, the old settings come back.
//!
//! 1. Reading stops. The messages already taken settle (Kafka takes their records) and their acks are
//!    written, for up to [`DRAIN`] (less with a short keep-alive): the broker does not send them again.
//! 2. The last acks, then DISCONNECT, on the old connection. A QoS 1/2 message the broker sent meanwhile
//!    is not taken: with a persistent session it comes again on the new connection; a QoS 0 one is.
//! 3. A connection with the new settings, within `mqtt.connect_timeout_secs`. On CONNACK the new
//!    settings are in effect (subscriptions as after any reconnect). On a failure (wrong password, an
//!    untrusted certificate, no broker there) the refusal is logged with its cause and counted, and the
//!    edge connects with the settings it had, as after any broken connection.
//! 4. The settings in effect are told to whoever follows them (`Links::applied`): the downlinks' own
//!    connection moves with this one, and stays where it is when the switch was refused.
//!
//! With a persistent session and the same client id, the broker resumes the session: nothing published
//! while the gateway switched is lost at QoS 1/2. A new client id is a new session: what the broker
//! queued for the old one after reading stopped stays in that session (until it expires).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::client::{self, Event};
use super::edge::{Edge, Local};
use super::subscriptions::Subscriptions;
use crate::config::MqttSettings;
use crate::core::backoff::Backoff;

/// How long the messages already taken have to settle before the old connection is closed.
const DRAIN: Duration = Duration::from_secs(5);

impl Edge {
    /// Switches the connection to `new` (see the module doc).
    pub(super) async fn switch(&mut self, new: MqttSettings) {
        let asked_at = tokio::time::Instant::now();
        tracing::info!(
            broker = %new.broker,
            client_id = %new.client_id,
            "MQTT settings changed: closing the connection cleanly and connecting with the new ones"
        );
        if self.connected {
            self.drain_for_switch().await;
            self.close_for_switch().await;
        }
        // What needs no connection applies whatever comes of the new one.
        let local =
            MqttSettings { buffer_bytes: new.buffer_bytes, read_coalesce: new.read_coalesce, ..self.settings.clone() };
        Local { settings: &mut self.settings, coalesce: &mut self.coalesce, out: self.out.as_ref() }.apply(local);
        let old = std::mem::replace(&mut self.settings, new);
        self.rebuild();
        match self.connect_now().await {
            Ok(event) => {
                self.metrics.mqtt_switches.fetch_add(1, Relaxed);
                tracing::info!(
                    broker = %self.settings.broker,
                    switch_ms = asked_at.elapsed().as_millis() as u64,
                    "MQTT settings applied: connected with the new ones"
                );
                let _ = self.handle(Ok(event)).await;
            }
            Err(why) => {
                self.metrics.mqtt_switches_refused.fetch_add(1, Relaxed);
                tracing::error!(
                    broker = %self.settings.broker,
                    reason = why.as_str(),
                    "new MQTT settings refused: back to the settings in effect (send SIGHUP to try them again)"
                );
                self.settings = old;
                self.rebuild();
            }
        }
        self.new_settings.in_effect(&self.settings);
    }

    /// Stops reading and waits (writing acks as they come) until every message taken is settled: none
    /// waits in the intake and the engine holds none, seen twice 10 ms apart (the engine's count follows
    /// a message it has just taken a moment later).
    async fn drain_for_switch(&mut self) {
        let limit = DRAIN.min(self.keep_alive / 2);
        let deadline = tokio::time::Instant::now() + limit;
        let mut settled_since: Option<tokio::time::Instant> = None;
        while tokio::time::Instant::now() < deadline {
            let in_intake = self.out.as_ref().map_or(0, |tx| tx.used_bytes());
            if in_intake == 0 && self.metrics.unacked.load(Relaxed) == 0 {
                let since = *settled_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= Duration::from_millis(10) {
                    break;
                }
            } else {
                settled_since = None;
            }
            tokio::select! {
                ack = self.acks.rx.recv(), if self.acks.open => {
                    self.acks.take(ack, &self.client, self.connection, &self.metrics);
                }
                _ = tokio::time::sleep(Duration::from_millis(2)) => {}
            }
            self.write_due_acks().await;
        }
    }

    /// The last acks, then DISCONNECT; the connection's number retired, so that a late ack is not sent
    /// on the next one.
    async fn close_for_switch(&mut self) {
        self.disconnect_cleanly().await;
        for message in self.eventloop.after_failure() {
            self.forward(message);
        }
        self.connected = false;
        self.new_connection_number();
        self.acks.out.connection_lost();
        self.subs.connection_lost();
        self.subs.publish(&self.metrics.health);
        self.metrics.mqtt_disconnected();
    }

    /// A client and event loop for the settings in effect.
    fn rebuild(&mut self) {
        let (client, eventloop) = client::new(&self.settings, 4096);
        self.client = client;
        self.eventloop = eventloop;
        self.broker = self.settings.broker.to_string();
        self.keep_alive = self.settings.keep_alive;
        self.backoff = Backoff::new(self.settings.reconnect_min, self.settings.reconnect_max);
        self.subs = Subscriptions::new(!self.settings.clean_session, self.settings.shared_group.clone());
    }

    /// Connects with the settings in effect: the CONNACK, or why not (in an operator's words).
    async fn connect_now(&mut self) -> Result<Event, String> {
        self.refresh_transport()?;
        let limit = self.settings.connect_timeout + Duration::from_secs(1);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.eventloop.poll()).await {
                Ok(Ok(event @ Event::ConnAck { .. })) => return Ok(event),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    let d = super::diagnose::diagnose(&e, &self.settings);
                    return Err(format!("{}: {e}", d.what));
                }
                Err(_) => return Err(format!("no CONNACK within {} s", limit.as_secs())),
            }
        }
    }
}
