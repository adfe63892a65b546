//! The MQTT edge: one rumqttc connection, polled at all times. It reconnects with backoff, subscribes
//! the route table's plan (again after every reconnect that found no session), falls back to a route's
//! fallback filters when the broker refuses one in its SUBACK, and forwards publishes to the pipeline
//! through the intake. When the intake is full it stops reading the connection (the broker holds the
//! rest) while still answering keep-alives.
//!
//! - `edge.rs`: the connection loop's state and its handlers, one per kind of event;
//! - `subscriptions.rs`: which filters are subscribed, and the fallbacks for refused ones;
//! - `client.rs`: rumqttc's 3.1.1 and 5 clients behind one face, so the rest is one code path;
//! - `v5.rs`: what MQTT 5 adds (CONNECT options, message properties, reason codes);
//! - `acks.rs`: PUBACK/PUBREC in arrival order, batched between events;
//! - `coalesce.rs`: at high QoS 0 rates, a short sleep before reading again, so messages gather;
//! - `pause.rs`: not reading while the intake is full, with keep-alives written by hand;
//! - `tls.rs`: the rustls configuration from `mqtt.tls`, read again before every connection attempt;
//! - `diagnose.rs`: a failed connection attempt in an operator's words, with a hint;
//! - `switch.rs`: new settings from a reload: the connection closed cleanly, a new one made, or the old
//!   settings back if it fails.

mod acks;
pub(crate) mod client;
pub mod coalesce;
pub mod diagnose;
mod edge;
pub mod intake;
mod pause;
mod subscriptions;
mod switch;
pub mod tls;
pub mod v5;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use rumqttc::MqttOptions;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::MqttSettings;
use crate::core::message::AckToken;
use crate::core::routing::RouteTable;
use crate::ops::metrics::Metrics;
use edge::Edge;
use intake::IntakeSender;

/// Tokens the wiring uses to end the MQTT side in two steps.
#[derive(Clone)]
pub struct Stop {
    /// Stop forwarding messages: what arrives after this is not taken.
    pub receiving: CancellationToken,
    /// Disconnect and return.
    pub disconnect: CancellationToken,
}

/// The channels between the MQTT edge and the rest of the gateway.
pub struct Links {
    /// Messages out to the pipeline, bounded by bytes (see crate::mqtt::intake).
    pub out: IntakeSender,
    /// Acks in, from the ack sequencer, in arrival order.
    pub acks: mpsc::UnboundedReceiver<AckToken>,
    /// The number of the current connection, for the sequencer to drop acks of older ones early.
    pub connection: Arc<AtomicU64>,
    /// New settings from a reload (the connection keys; see `switch.rs`).
    pub settings: watch::Receiver<MqttSettings>,
    /// The settings in effect: those of a reload once the edge has connected with them (or applied
    /// them without a connection), never those it was refused with.
    pub applied: watch::Sender<MqttSettings>,
}

/// rumqttc's 3.1.1 options for `s`, but for the transport: [`tls::transport`] sets it, with the TLS files as
/// they are at the time of the connection attempt.
pub fn options(s: &MqttSettings) -> MqttOptions {
    // For WebSockets rumqttc takes the whole URL as the address (and ignores the port).
    let addr = s.broker.ws_url().unwrap_or_else(|| s.broker.host.clone());
    let mut o = MqttOptions::new(&s.client_id, addr, s.broker.port);
    o.set_keep_alive(s.keep_alive);
    o.set_clean_session(s.clean_session);
    // rumqttc's 10 KiB default drops the connection on any larger message.
    o.set_max_packet_size(s.max_packet_size, s.max_packet_size);
    if let Some((user, pass)) = &s.credentials {
        o.set_credentials(user, pass.expose());
    }
    o
}

/// Runs the MQTT side until `stop.disconnect`: a short dispatcher over the handlers in `edge.rs`.
pub async fn run(
    settings: MqttSettings,
    routes: watch::Receiver<Arc<RouteTable>>,
    links: Links,
    metrics: Arc<Metrics>,
    stop: Stop,
) {
    let mut edge = Edge::new(settings, routes, links, metrics, stop);
    loop {
        // The intake is full: stop reading, so the broker holds what follows, until it has room.
        if edge.pause_while_full().await.is_break() {
            break;
        }
        if edge.between_events().await.is_break() {
            break;
        }
        let Some(event) = edge.next_event().await else { break };
        if edge.handle(event).await.is_break() {
            break;
        }
    }
    edge.finish().await;
}
