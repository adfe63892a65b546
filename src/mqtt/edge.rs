//! The connection loop's state, and one handler per kind of event: a publish, a CONNACK, a SUBACK, an
//! ack rumqttc wrote, a broken connection. `super::run` calls them in turn.

use std::future::Future;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::acks::Acks;
use super::client::{self, Client, ConnectionError, Event, EventLoop};
use super::coalesce::Coalesce;
use super::subscriptions::Subscriptions;
use super::{Links, Stop};
use crate::config::MqttSettings;
use crate::core::backoff::Backoff;
use crate::core::message::{AckToken, Message};
use crate::core::routing::RouteTable;
use crate::mqtt::intake::IntakeSender;
use crate::ops::health::Loop;
use crate::ops::metrics::{DropReason, Metrics};

/// The largest packet the gateway will raise its limit to in order to take an over-size message in and
/// dead-letter it (MQTT's own limit is 256 MiB).
const OVERSIZE_CEILING: usize = 64 * 1024 * 1024;

pub(super) struct Edge {
    pub(super) settings: MqttSettings,
    pub(super) broker: String,
    pub(super) client: Client,
    pub(super) eventloop: EventLoop,
    routes: RouteWatch,
    /// A CONNACK came and no failure since: the edge's own state (the metric of the same name only
    /// reports it).
    pub(super) connected: bool,
    /// Where messages go; `None` once shutdown began.
    pub(super) out: Option<IntakeSender>,
    pub(super) acks: Acks,
    /// The number of the current connection; a new one after every CONNACK and every failure.
    pub(super) connection: u64,
    shared_connection: Arc<AtomicU64>,
    pub(super) backoff: Backoff,
    pub(super) subs: Subscriptions,
    pub(super) metrics: Arc<Metrics>,
    pub(super) stop: Stop,
    /// Beats for `/healthz` while the loop waits (see [`crate::ops::health`]).
    pub(super) heartbeat: tokio::time::Interval,
    /// The keep-alive in effect: ours, or the broker's Server Keep Alive (MQTT 5).
    pub(super) keep_alive: Duration,
    /// When rumqttc last wrote a PINGREQ (a paused MQTT 5 edge lets it ping; see `super::pause`).
    pub(super) last_ping: tokio::time::Instant,
    /// Read coalescing at high QoS 0 rates (see `super::coalesce`).
    pub(super) coalesce: Coalesce,
    /// New settings from a reload (see `super::switch`).
    pub(super) new_settings: SettingsWatch,
}

/// The interval of the MQTT loop's heartbeat; its first tick is one period away.
fn heartbeat() -> tokio::time::Interval {
    let every = crate::ops::health::HEARTBEAT_EVERY;
    let mut i = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

impl Edge {
    pub(super) fn new(
        settings: MqttSettings,
        routes: watch::Receiver<Arc<RouteTable>>,
        links: Links,
        metrics: Arc<Metrics>,
        stop: Stop,
    ) -> Self {
        let Links { out, acks, connection: shared_connection, settings: settings_rx, applied } = links;
        let broker = settings.broker.to_string();
        let keep_alive = settings.keep_alive;
        let settings_read_coalesce = settings.read_coalesce;
        // Room for a burst of acks in rumqttc's request channel; an ack that does not fit waits in line.
        let (client, eventloop) = client::new(&settings, 4096);
        let routes = RouteWatch::new(routes);
        if !settings.clean_session && routes.table.routes().iter().any(|r| r.qos == 2) {
            tracing::warn!("QoS 2 routes are subscribed at QoS 1 with a persistent session (clean_session: false): rumqttc cannot resume QoS 2 exchanges; delivery to Kafka is at-least-once either way");
        }
        tracing::info!(
            broker = %broker,
            client_id = %settings.client_id,
            protocol = settings.protocol.as_str(),
            clean_session = settings.clean_session,
            "connecting to the MQTT broker"
        );
        Self {
            backoff: Backoff::new(settings.reconnect_min, settings.reconnect_max),
            subs: Subscriptions::new(!settings.clean_session, settings.shared_group.clone()),
            settings,
            broker,
            client,
            eventloop,
            routes,
            connected: false,
            out: Some(out),
            acks: Acks::new(acks),
            connection: 0,
            shared_connection,
            metrics,
            stop,
            heartbeat: heartbeat(),
            last_ping: tokio::time::Instant::now(),
            keep_alive,
            coalesce: Coalesce::new(settings_read_coalesce),
            new_settings: SettingsWatch::new(settings_rx, applied),
        }
    }

    /// Between two events: what is cheap to check without waiting (atomic reads, where a select! over
    /// the same would register and drop a waiter on each, for every message), and the acks now due,
    /// written in one batch.
    pub(super) async fn between_events(&mut self) -> ControlFlow<()> {
        if self.stop.disconnect.is_cancelled() {
            return ControlFlow::Break(());
        }
        if self.out.is_some() && self.stop.receiving.is_cancelled() {
            // Dropping the sender lets the pipeline drain what it has and finish.
            self.out = None;
        }
        self.write_due_acks().await;
        // Checked here too, not only while the connection is quiet: in a steady stream the next event is
        // always ready and the wait where the channel is watched is never reached.
        if self.new_settings.open && self.new_settings.rx.has_changed().unwrap_or(false) {
            let local = Local { settings: &mut self.settings, coalesce: &mut self.coalesce, out: self.out.as_ref() };
            self.new_settings.take(true, local);
        }
        if let Some(new) = self.new_settings.switch_to.take() {
            self.switch(new).await;
        }
        if self.routes.open && self.routes.rx.has_changed().unwrap_or(false) {
            self.routes.take_new();
            self.subs.follow(&self.client, &self.routes.table, self.connected, &self.metrics.health);
        }
        ControlFlow::Continue(())
    }

    /// The next event from rumqttc, serving acks, route changes and shutdown while the connection is
    /// quiet. `None` once told to disconnect.
    pub(super) async fn next_event(&mut self) -> Option<Result<Event, ConnectionError>> {
        // One poll future per event, kept alive while the other branches run: dropping rumqttc's poll
        // midway can abandon a connection attempt or a half-written ack (rumqtt#930). It goes first: in
        // a burst the event is ready and nothing else is polled (`between_events` serves the rest).
        // Without a network the poll connects: with the TLS files as they are now.
        if self.eventloop.needs_connect() {
            if let Err(e) = self.refresh_transport() {
                return Some(Err(ConnectionError::io(
                    self.settings.protocol,
                    std::io::Error::other(super::tls::FilesError(e)),
                )));
            }
        }
        let mut poll = std::pin::pin!(self.eventloop.poll());
        // Nothing ready without waiting: the connection is read dry. At a high QoS 0 rate the runtime
        // then sleeps a moment before it waits on the socket, so that messages gather.
        match std::future::poll_fn(|cx| std::task::Poll::Ready(poll.as_mut().poll(cx))).await {
            std::task::Poll::Ready(event) => {
                self.coalesce.event_came();
                return Some(event);
            }
            std::task::Poll::Pending if self.out.is_some() && self.connected => self.coalesce.connection_dry(),
            std::task::Poll::Pending => {}
        }
        loop {
            tokio::select! {
                biased;
                event = &mut poll => {
                    self.coalesce.event_came();
                    return Some(event);
                }
                _ = self.stop.disconnect.cancelled() => return None,
                _ = self.heartbeat.tick() => self.metrics.health.beat(Loop::Mqtt),
                _ = self.stop.receiving.cancelled(), if self.out.is_some() => self.out = None,
                ack = self.acks.rx.recv(), if self.acks.open => {
                    self.acks.take(ack, &self.client, self.connection, &self.metrics);
                }
                _ = self.acks.retry.tick(), if !self.acks.out.unsent.is_empty() => {
                    self.acks.out.retry_unsent(&self.client, self.connection, &self.metrics);
                }
                changed = self.new_settings.rx.changed(), if self.new_settings.open => {
                    let local =
                        Local { settings: &mut self.settings, coalesce: &mut self.coalesce, out: self.out.as_ref() };
                    if self.new_settings.take(changed.is_ok(), local) {
                        // Switched between events, with this poll dropped: the connection is closed
                        // there anyway.
                        return Some(Ok(Event::Other));
                    }
                }
                changed = self.routes.rx.changed(), if self.routes.open => match changed {
                    Ok(()) => {
                        self.routes.take_new();
                        self.subs.follow(&self.client, &self.routes.table, self.connected, &self.metrics.health);
                    }
                    Err(_) => self.routes.open = false,
                },
            }
        }
    }

    /// One event, to its handler.
    pub(super) async fn handle(&mut self, event: Result<Event, ConnectionError>) -> ControlFlow<()> {
        match event {
            Ok(Event::Publish { message, pkid }) => self.on_publish(message, pkid),
            Ok(Event::ConnAck { session_present, notes, keep_alive }) => {
                self.on_connack(session_present, &notes, keep_alive)
            }
            Ok(Event::SubAck { pkid, granted }) => {
                self.subs.on_suback(&self.client, &self.routes.table, pkid, &granted, &self.metrics);
                self.subs.publish(&self.metrics.health);
            }
            Ok(Event::SubscribeSent(pkid)) => self.subs.on_subscribe_sent(pkid),
            // rumqttc wrote an ack we had queued in its channel.
            Ok(Event::AckWritten) => self.acks.out.written_by_rumqttc(),
            Ok(Event::PingSent) => self.last_ping = tokio::time::Instant::now(),
            Ok(
                Event::Other
                | Event::DisconnectSent
                | Event::PublishSent(_)
                | Event::Published(_)
                | Event::Refused { .. },
            ) => {}
            Err(e) => return self.on_connection_error(e).await,
        }
        ControlFlow::Continue(())
    }

    /// Reads the TLS files again for the next connection attempt (see `super::tls`).
    pub(super) fn refresh_transport(&mut self) -> Result<(), String> {
        let transport = super::tls::transport(&self.settings)?;
        self.eventloop.set_transport(transport);
        Ok(())
    }

    fn on_publish(&mut self, mut message: Message, pkid: u16) {
        self.eventloop.alive();
        if message.qos > 0 {
            message.ack = Some(AckToken { connection: self.connection, pkid, qos: message.qos });
        }
        self.forward(message);
    }

    /// Hands a received message to the pipeline with the route table in effect now.
    pub(super) fn forward(&mut self, m: Message) {
        let Some(tx) = self.out.as_ref() else {
            // Shutting down: not taken, not acknowledged (QoS 1/2 come again next session).
            self.metrics.message_dropped(DropReason::Shutdown, &m.topic);
            return;
        };
        self.metrics.message_received(&m.topic, m.qos, m.payload.len());
        self.coalesce.message(m.qos);
        if let Err(m) = tx.send(m, self.routes.table.clone()) {
            // The pipeline is gone (it only stops at shutdown).
            self.metrics.message_dropped(DropReason::Shutdown, &m.topic);
            self.out = None;
        }
    }

    fn on_connack(&mut self, session_present: bool, notes: &[String], keep_alive: Option<Duration>) {
        self.keep_alive = keep_alive.unwrap_or(self.settings.keep_alive);
        self.last_ping = tokio::time::Instant::now();
        for note in notes {
            tracing::info!(broker = %self.broker, "{note}");
        }
        self.backoff.reset();
        self.coalesce.reset();
        self.metrics.health.set_mqtt_error(None);
        self.new_connection_number();
        self.connected = true;
        self.metrics.mqtt_connected(&self.broker, session_present);
        // rumqttc never resubscribes (rumqtt#250). Without a session the broker forgot our
        // subscriptions; with one, subscribing again is harmless and picks up route changes.
        self.subs.reset();
        self.routes.take_new();
        self.subs.apply(&self.client, &self.routes.table);
        self.subs.publish(&self.metrics.health);
    }

    /// Whatever was acknowledged from here on belongs to a connection that is gone: a new number makes
    /// the ack path drop those acks (rumqttc would send them on the next connection, where the packet
    /// ids may name other messages).
    pub(super) fn new_connection_number(&mut self) {
        self.connection += 1;
        self.shared_connection.store(self.connection, Relaxed);
    }

    /// The connection failed: keep what can be kept, then wait out the backoff (taking acks meanwhile,
    /// so the stage that sends them never blocks on us) before rumqttc's next poll reconnects.
    async fn on_connection_error(&mut self, e: ConnectionError) -> ControlFlow<()> {
        // rumqttc reads packets in batches and may still hold messages of the failed connection: the
        // QoS 0 ones are taken, the others come again with a persistent session.
        for p in self.eventloop.after_failure() {
            self.forward(p);
        }
        self.new_connection_number();
        self.coalesce.reset();
        // rumqttc drops the acks still in its channel on a broken connection.
        self.acks.out.connection_lost();
        // SUBSCRIBEs not yet sent are void on a new connection; CONNACK applies the plan again.
        self.subs.connection_lost();
        self.subs.publish(&self.metrics.health);
        if let Some(size) = e.oversize() {
            self.oversize(size);
        }
        let delay = self.backoff.next_delay();
        let diagnosis = super::diagnose::diagnose(&e, &self.settings);
        self.metrics.health.set_mqtt_error(Some(diagnosis.what.clone()));
        let was_connected = std::mem::replace(&mut self.connected, false);
        self.metrics.mqtt_connection_error(&self.broker, &e, &diagnosis, self.backoff.attempt(), delay, was_connected);
        let pause = tokio::time::sleep(delay);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => return ControlFlow::Continue(()),
                _ = self.stop.disconnect.cancelled() => return ControlFlow::Break(()),
                // New settings (another broker, say) apply now, not after the backoff.
                changed = self.new_settings.rx.changed(), if self.new_settings.open => {
                    let local =
                        Local { settings: &mut self.settings, coalesce: &mut self.coalesce, out: self.out.as_ref() };
                    if self.new_settings.take(changed.is_ok(), local) {
                        return ControlFlow::Continue(());
                    }
                }
                _ = self.heartbeat.tick() => self.metrics.health.beat(Loop::Mqtt),
                ack = self.acks.rx.recv(), if self.acks.open => {
                    self.acks.take(ack, &self.client, self.connection, &self.metrics);
                }
            }
        }
    }

    /// A message larger than `mqtt.max_packet_size_bytes` arrived. rumqttc cannot skip it: the
    /// connection is closed, and a QoS 1/2 message of a persistent session comes back after every
    /// reconnect. So the limit for the next connection is raised to let it in; the pipeline then
    /// dead-letters it for being over the configured size. A QoS 0 message is gone with the connection:
    /// it is counted and logged.
    fn oversize(&mut self, size: usize) {
        let configured = self.settings.max_packet_size;
        self.metrics.oversize_messages.fetch_add(1, Relaxed);
        if size <= OVERSIZE_CEILING && size > self.eventloop.max_incoming() {
            self.eventloop.set_max_incoming(size + 1024, configured);
            tracing::error!(
                size,
                limit = configured,
                "a message larger than mqtt.max_packet_size_bytes closed the connection; taking it in on the next connection to dead-letter it (a QoS 0 one is lost). Raise mqtt.max_packet_size_bytes if such messages are expected"
            );
        } else {
            tracing::error!(size, limit = configured, "a message larger than mqtt.max_packet_size_bytes (and the gateway's ceiling) closed the connection; it is rejected");
        }
    }

    /// The last acks, then DISCONNECT (rumqttc sends requests in order), then what the broker still
    /// sends, until it closes the connection: closing it ourselves with unread data in the socket sends
    /// a TCP RST, and a broker that has not read our last acks by then loses them (it sends those
    /// messages again: duplicates). A QoS 0 message read meanwhile is taken; a QoS 1/2 one comes again.
    pub(super) async fn disconnect_cleanly(&mut self) {
        self.acks.last_ones(&self.client, self.connection, &self.metrics);
        if !self.client.try_disconnect() {
            return;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, self.eventloop.poll()).await {
            if let Event::Publish { message, .. } = event {
                if message.qos == 0 {
                    self.forward(message);
                }
            }
        }
    }

    /// Says goodbye properly (see [`disconnect_cleanly`](Self::disconnect_cleanly)), so that the broker
    /// does not publish a will or keep us as a zombie session.
    pub(super) async fn finish(mut self) {
        if self.connected {
            self.disconnect_cleanly().await;
        }
        self.connected = false;
        self.metrics.mqtt_disconnected();
        tracing::info!(broker = %self.broker, "disconnected from the MQTT broker");
    }
}

/// New MQTT settings from the reloader, those to switch to between two events, and those in effect.
pub(super) struct SettingsWatch {
    rx: watch::Receiver<MqttSettings>,
    /// False once the reloader is gone.
    open: bool,
    pub(super) switch_to: Option<MqttSettings>,
    /// The settings in effect, for whoever follows them: the downlinks' connection moves only once
    /// this edge has connected with new settings, never to a broker it was refused by.
    applied: watch::Sender<MqttSettings>,
}

impl SettingsWatch {
    fn new(mut rx: watch::Receiver<MqttSettings>, applied: watch::Sender<MqttSettings>) -> Self {
        rx.mark_unchanged();
        Self { rx, open: true, switch_to: None, applied }
    }

    /// `settings` are in effect now.
    pub(super) fn in_effect(&self, settings: &MqttSettings) {
        self.applied.send_if_modified(|a| {
            let changed = a != settings;
            if changed {
                *a = settings.clone();
            }
            changed
        });
    }

    /// New settings came (`open`), or the reloader is gone: true if the connection is to be switched to
    /// them. What the edge applies without a new connection (`buffer_bytes`, `read_coalesce_us`) it
    /// applies here.
    fn take(&mut self, open: bool, local: Local<'_>) -> bool {
        if !open {
            self.open = false;
            return false;
        }
        let new = self.rx.borrow_and_update().clone();
        if new == *local.settings {
            tracing::info!("the MQTT settings in effect are unchanged");
            return false;
        }
        // MQTT 3.1.1 has no Receive Maximum: max_unacked_messages is then the engine's alone.
        let connection = |s: &MqttSettings| MqttSettings {
            buffer_bytes: 0,
            read_coalesce: Duration::ZERO,
            max_unacked_messages: if s.protocol == crate::config::Protocol::V5 { s.max_unacked_messages } else { 0 },
            ..s.clone()
        };
        if connection(&new) == connection(local.settings) {
            local.apply(new.clone());
            self.in_effect(&new);
            return false;
        }
        self.switch_to = Some(new);
        true
    }
}

/// What the edge applies of new settings without a new connection.
pub(super) struct Local<'a> {
    pub(super) settings: &'a mut MqttSettings,
    pub(super) coalesce: &'a mut Coalesce,
    pub(super) out: Option<&'a IntakeSender>,
}

impl Local<'_> {
    /// `mqtt.buffer_bytes` and `mqtt.read_coalesce_us` from `new`, which becomes the settings in effect.
    pub(super) fn apply(self, new: MqttSettings) {
        if new.buffer_bytes != self.settings.buffer_bytes {
            if let Some(out) = self.out {
                out.set_limit(new.buffer_bytes);
            }
            tracing::info!(buffer_bytes = new.buffer_bytes, "mqtt.buffer_bytes applied");
        }
        if new.read_coalesce != self.settings.read_coalesce {
            self.coalesce.set_wait(new.read_coalesce);
            tracing::info!(read_coalesce_us = new.read_coalesce.as_micros() as u64, "mqtt.read_coalesce_us applied");
        }
        *self.settings = new;
    }
}

/// The acks channel from the pipeline, for `Acks::new`.
pub(super) type AckReceiver = mpsc::UnboundedReceiver<AckToken>;

/// The route table in effect, kept here so that a message costs no lock to find it, and the channel new
/// ones come on.
struct RouteWatch {
    rx: watch::Receiver<Arc<RouteTable>>,
    /// False once the reloader is gone.
    open: bool,
    table: Arc<RouteTable>,
}

impl RouteWatch {
    fn new(mut rx: watch::Receiver<Arc<RouteTable>>) -> Self {
        let table = rx.borrow_and_update().clone();
        Self { rx, open: true, table }
    }

    /// Takes the newest table.
    fn take_new(&mut self) {
        self.table = self.rx.borrow_and_update().clone();
    }
}
