//! The two protocol versions behind one face. rumqttc has a client for MQTT 3.1.1 and another for
//! MQTT 5, with their own packet, event and error types; the edge speaks to this module only, so the
//! connection loop, the acks, the subscriptions and the pipeline are one code path for both.
//!
//! What differs and cannot be hidden:
//! - rumqttc's 3.1.1 event loop lets us write to its connection directly (acks in batches with one
//!   flush, PINGREQs while reading is paused); its 5 event loop keeps the connection private, so acks go
//!   through its request channel (one flush each) and a paused edge reads a little to let rumqttc ping
//!   (see `super::pause`);
//! - MQTT 5 messages carry properties ([`Properties`]), SUBACKs carry reasons, and a broker may
//!   end a connection with a DISCONNECT that says why.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5 as r5;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::{Outgoing, QoS, Transport};

use super::v5 as props5;
use crate::config::{MqttSettings, Protocol};
use crate::core::message::{Message, Properties};

/// Makes requests of the event loop: acks, subscriptions, the goodbye.
pub(crate) enum Client {
    V4(rumqttc::AsyncClient),
    V5(r5::AsyncClient),
}

/// The connection, polled for [`Event`]s; it reconnects on the poll after an error.
pub(crate) enum EventLoop {
    V4(Box<rumqttc::EventLoop>),
    V5 {
        inner: Box<r5::EventLoop>,
        /// rumqttc's 5 event loop hides whether it has a connection: a CONNACK says yes, an error no.
        connected: bool,
        /// In-flight slots rumqttc keeps for good on this connection (see [`EventLoop::slots_kept`]),
        /// and how many the connection has: ours, or the broker's Receive Maximum if lower.
        kept: Slots,
    },
}

/// rumqttc (0.25, MQTT 5) gives back a QoS 2 publish's in-flight slot at PUBCOMP only: a publish the
/// broker refuses at PUBREC keeps its slot until the next connection, and once every slot is kept
/// rumqttc sends nothing more, ever, on that connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slots {
    pub(crate) kept: u16,
    pub(crate) of: u16,
    /// Our own limit (`new_publishing`'s `inflight`).
    ours: u16,
}

impl Slots {
    fn new(ours: Option<u16>) -> Self {
        let ours = ours.filter(|n| *n > 0).unwrap_or(u16::MAX);
        Slots { kept: 0, of: ours, ours }
    }

    /// Watches rumqttc's events: a CONNACK starts over (with the broker's Receive Maximum), a PUBREC
    /// refusal keeps a slot.
    fn saw(&mut self, event: &r5::Event) {
        match event {
            r5::Event::Incoming(p5::Packet::ConnAck(ack)) => {
                let receive_max = ack.properties.as_ref().and_then(|p| p.receive_max).unwrap_or(u16::MAX);
                *self = Slots { kept: 0, of: self.ours.min(receive_max), ours: self.ours };
            }
            r5::Event::Incoming(p5::Packet::PubRec(rec))
                if !matches!(rec.reason, p5::PubRecReason::Success | p5::PubRecReason::NoMatchingSubscribers) =>
            {
                self.kept = self.kept.saturating_add(1);
            }
            _ => {}
        }
    }

    /// A quarter of the slots are kept: time for a new connection, long before none is left.
    pub(crate) fn running_out(&self) -> bool {
        self.kept > 0 && u32::from(self.kept) * 4 >= u32::from(self.of)
    }
}

/// What the broker made of one filter of a SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Granted {
    Qos(u8),
    /// Refused; the reason as MQTT 5 names it (3.1.1 has only "failure").
    Refused(&'static str),
}

/// What happened on the connection, in the terms the edge needs.
pub(crate) enum Event {
    /// A message, received now, with its packet id (0 at QoS 0).
    Publish {
        message: Message,
        pkid: u16,
    },
    /// `keep_alive`: the broker's Server Keep Alive (MQTT 5), which replaces ours.
    ConnAck {
        session_present: bool,
        notes: Vec<String>,
        keep_alive: Option<Duration>,
    },
    SubAck {
        pkid: u16,
        granted: Vec<Granted>,
    },
    /// A SUBSCRIBE went out with this packet id.
    SubscribeSent(u16),
    /// rumqttc wrote an ack queued in its request channel.
    AckWritten,
    /// rumqttc wrote a PINGREQ.
    PingSent,
    /// rumqttc wrote the DISCONNECT.
    DisconnectSent,
    /// rumqttc wrote one of our publishes, with this packet id (0 at QoS 0).
    PublishSent(u16),
    /// The broker has a QoS 1 publish of ours (PUBACK) or a QoS 2 one (PUBCOMP).
    Published(u16),
    /// MQTT 5: the broker refused a publish of ours (a PUBACK or PUBREC reason code of 0x80 or more).
    Refused {
        pkid: u16,
        reason: String,
    },
    Other,
}

/// A failed connection, of either version.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error(transparent)]
    V4(rumqttc::ConnectionError),
    #[error(transparent)]
    V5(r5::ConnectionError),
}

impl ConnectionError {
    /// An error of the connection attempt made before rumqttc is asked to connect (the TLS files).
    pub(crate) fn io(protocol: Protocol, e: std::io::Error) -> Self {
        match protocol {
            Protocol::V311 => ConnectionError::V4(rumqttc::ConnectionError::Io(e)),
            Protocol::V5 => ConnectionError::V5(r5::ConnectionError::Io(e)),
        }
    }

    /// The size of an incoming message over the limit, when that closed the connection.
    pub(crate) fn oversize(&self) -> Option<usize> {
        match self {
            ConnectionError::V4(rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
                rumqttc::Error::PayloadSizeLimitExceeded(size),
            ))) => Some(*size),
            ConnectionError::V5(r5::ConnectionError::MqttState(r5::StateError::Deserialization(
                rumqttc::v5::mqttbytes::Error::PayloadSizeLimitExceeded { pkt_size, .. },
            ))) => Some(*pkt_size),
            _ => None,
        }
    }
}

pub(crate) fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn qos5(n: u8) -> rumqttc::v5::mqttbytes::QoS {
    match n {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

/// The client and event loop for `s`, with manual acks and a request channel of `capacity`. The
/// transport is set before each connection attempt ([`EventLoop::set_transport`]).
pub(crate) fn new(s: &MqttSettings, capacity: usize) -> (Client, EventLoop) {
    new_publishing(s, capacity, None)
}

/// As [`new`], with at most `inflight` of our QoS 1/2 publishes unacknowledged (rumqttc's default is
/// 100; under MQTT 5 the broker's Receive Maximum lowers it further).
pub(crate) fn new_publishing(s: &MqttSettings, capacity: usize, inflight: Option<u16>) -> (Client, EventLoop) {
    match s.protocol {
        Protocol::V311 => {
            let mut o = super::options(s);
            if let Some(n) = inflight.filter(|n| *n > 0) {
                o.set_inflight(n);
            }
            // Acks are ours to send, after Kafka has the records (see crate::pipeline::sequencer).
            o.set_manual_acks(true);
            let (client, mut eventloop) = rumqttc::AsyncClient::new(o, capacity);
            let mut net = eventloop.network_options();
            net.set_connection_timeout(s.connect_timeout.as_secs());
            eventloop.set_network_options(net);
            (Client::V4(client), EventLoop::V4(Box::new(eventloop)))
        }
        Protocol::V5 => {
            let mut o = props5::options(s);
            if let Some(n) = inflight.filter(|n| *n > 0) {
                o.set_outgoing_inflight_upper_limit(n);
            }
            o.set_manual_acks(true);
            o.set_connection_timeout(s.connect_timeout.as_secs());
            let (client, eventloop) = r5::AsyncClient::new(o, capacity);
            (
                Client::V5(client),
                EventLoop::V5 { inner: Box::new(eventloop), connected: false, kept: Slots::new(inflight) },
            )
        }
    }
}

impl Client {
    /// Queues a PUBACK (QoS 1) or PUBREC (QoS 2) without waiting. False if the channel is full.
    pub(crate) fn try_ack(&self, pkid: u16, qos_level: u8) -> bool {
        match self {
            Client::V4(c) => {
                let mut p = rumqttc::Publish::new("", qos(qos_level), Vec::<u8>::new());
                p.pkid = pkid;
                c.try_ack(&p).is_ok()
            }
            Client::V5(c) => {
                let mut p = p5::Publish::new("", qos5(qos_level), Vec::<u8>::new(), None);
                p.pkid = pkid;
                c.try_ack(&p).is_ok()
            }
        }
    }

    /// Queues one SUBSCRIBE for `filters` (as they go on the wire).
    pub(crate) fn try_subscribe(&self, filters: &[(String, u8)]) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_subscribe_many(filters.iter().map(|(f, q)| rumqttc::SubscribeFilter::new(f.clone(), qos(*q))))
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_subscribe_many(filters.iter().map(|(f, q)| p5::Filter::new(f.clone(), qos5(*q))))
                .map_err(|e| e.to_string()),
        }
    }

    pub(crate) fn try_unsubscribe(&self, filter: String) -> Result<(), String> {
        match self {
            Client::V4(c) => c.try_unsubscribe(filter).map_err(|e| e.to_string()),
            Client::V5(c) => c.try_unsubscribe(filter).map_err(|e| e.to_string()),
        }
    }

    /// Queues a publish without waiting; false if the request channel is full. MQTT 5 properties are
    /// sent under 5 only.
    pub(crate) fn try_publish(&self, p: &crate::core::downlink::Publish) -> bool {
        match self {
            Client::V4(c) => c.try_publish(p.topic.clone(), qos(p.qos), p.retain, p.payload.to_vec()).is_ok(),
            Client::V5(c) => {
                let props = props5::publish_properties(&p.properties);
                c.try_publish_with_properties(p.topic.clone(), qos5(p.qos), p.retain, p.payload.clone(), props).is_ok()
            }
        }
    }

    pub(crate) fn try_disconnect(&self) -> bool {
        match self {
            Client::V4(c) => c.try_disconnect().is_ok(),
            Client::V5(c) => c.try_disconnect().is_ok(),
        }
    }
}

impl EventLoop {
    /// The next event. Cancel-safe as rumqttc's `poll` is: keep the future alive (rumqtt#930).
    pub(crate) async fn poll(&mut self) -> Result<Event, ConnectionError> {
        match self {
            EventLoop::V4(e) => match e.poll().await {
                Ok(event) => Ok(event4(event)),
                Err(err) => Err(ConnectionError::V4(err)),
            },
            EventLoop::V5 { inner, connected, kept } => match inner.poll().await {
                Ok(event) => {
                    kept.saw(&event);
                    let event = event5(event);
                    if matches!(event, Event::ConnAck { .. }) {
                        *connected = true;
                    }
                    Ok(event)
                }
                Err(err) => {
                    *connected = false;
                    Err(ConnectionError::V5(err))
                }
            },
        }
    }

    /// The in-flight slots rumqttc keeps for good on this connection (MQTT 5 only; see [`Slots`]).
    pub(crate) fn slots_kept(&self) -> Option<Slots> {
        match self {
            EventLoop::V4(_) => None,
            EventLoop::V5 { kept, .. } => Some(*kept),
        }
    }

    /// No connection: the next poll makes one.
    pub(crate) fn needs_connect(&self) -> bool {
        match self {
            EventLoop::V4(e) => e.network.is_none(),
            EventLoop::V5 { connected, .. } => !*connected,
        }
    }

    pub(crate) fn set_transport(&mut self, t: Transport) {
        match self {
            EventLoop::V4(e) => {
                e.mqtt_options.set_transport(t);
            }
            EventLoop::V5 { inner, .. } => {
                inner.options.set_transport(t);
            }
        }
    }

    /// Data arrived, which proves the connection alive. rumqttc counts only a PINGRESP as proof, and a
    /// PINGRESP queued behind a backlog the broker held for us (after a pause, in a burst) can take
    /// longer than the keep-alive to read: rumqttc would drop a healthy connection.
    pub(crate) fn alive(&mut self) {
        match self {
            EventLoop::V4(e) => e.state.await_pingresp = false,
            EventLoop::V5 { inner, .. } => inner.state.await_pingresp = false,
        }
    }

    /// After a failure: the QoS 0 messages rumqttc had read but not handed out. It would hand them out
    /// after the reconnect, where a QoS 1/2 message's packet id names another message; those are
    /// dropped (never acknowledged, they come again with a persistent session). QoS 0 ones have no
    /// packet id to go stale: they are returned, to be taken. Requests to (un)subscribe still pending
    /// are dropped too: CONNACK applies the subscription plan again.
    pub(crate) fn after_failure(&mut self) -> Vec<Message> {
        match self {
            EventLoop::V4(e) => {
                let held: Vec<rumqttc::Event> = e.state.events.drain(..).collect();
                e.pending.retain(|r| !matches!(r, rumqttc::Request::Subscribe(_) | rumqttc::Request::Unsubscribe(_)));
                held.into_iter()
                    .filter_map(|ev| match event4(ev) {
                        Event::Publish { message, .. } if message.qos == 0 => Some(message),
                        _ => None,
                    })
                    .collect()
            }
            EventLoop::V5 { inner, .. } => {
                let held: VecDeque<r5::Event> = std::mem::take(&mut inner.state.events);
                inner.pending.retain(|r| !matches!(r, r5::Request::Subscribe(_) | r5::Request::Unsubscribe(_)));
                held.into_iter()
                    .filter_map(|ev| match event5(ev) {
                        Event::Publish { message, .. } if message.qos == 0 => Some(message),
                        _ => None,
                    })
                    .collect()
            }
        }
    }

    /// After a failure: the events rumqttc had read and not handed out. Acknowledgements among them
    /// are facts about the connection that is gone (the broker has those messages); the rest are stale.
    pub(crate) fn take_events(&mut self) -> Vec<Event> {
        match self {
            EventLoop::V4(e) => e.state.events.drain(..).map(event4).collect(),
            EventLoop::V5 { inner, .. } => std::mem::take(&mut inner.state.events).into_iter().map(event5).collect(),
        }
    }

    /// The largest incoming packet the next connection accepts.
    pub(crate) fn max_incoming(&self) -> usize {
        match self {
            EventLoop::V4(e) => e.mqtt_options.max_packet_size(),
            EventLoop::V5 { inner, .. } => inner.options.max_packet_size().map_or(usize::MAX, |m| m as usize),
        }
    }

    /// Raises the incoming limit of the next connection (to take an over-size message in).
    pub(crate) fn set_max_incoming(&mut self, incoming: usize, outgoing: usize) {
        match self {
            EventLoop::V4(e) => {
                e.mqtt_options.set_max_packet_size(incoming, outgoing);
            }
            EventLoop::V5 { inner, .. } => {
                inner.options.set_max_packet_size(Some(u32::try_from(incoming).unwrap_or(u32::MAX)));
            }
        }
    }

    /// Whether acks and pings can be written straight to the connection (3.1.1, connected).
    pub(crate) fn writes_directly(&self) -> bool {
        matches!(self, EventLoop::V4(e) if e.network.is_some())
    }

    /// Writes a PUBACK/PUBREC into the connection's buffer (3.1.1 only; see [`Self::writes_directly`]).
    /// False when it could not be written: no connection to write to, or a broken one (the next poll
    /// reports it).
    pub(super) async fn write_ack(&mut self, pkid: u16, qos_level: u8) -> bool {
        let EventLoop::V4(e) = self else { return false };
        let Some(network) = e.network.as_mut() else { return false };
        let packet = if qos_level >= 2 {
            rumqttc::Packet::PubRec(rumqttc::PubRec::new(pkid))
        } else {
            rumqttc::Packet::PubAck(rumqttc::PubAck::new(pkid))
        };
        network.write(packet).await.is_ok()
    }

    /// Flushes what [`Self::write_ack`] wrote, within `limit`. True if it went out.
    pub(super) async fn flush(&mut self, limit: Duration) -> bool {
        let EventLoop::V4(e) = self else { return false };
        let Some(network) = e.network.as_mut() else { return false };
        matches!(tokio::time::timeout(limit, network.flush()).await, Ok(Ok(())))
    }

    /// Writes a PINGREQ straight to the connection, within `limit`. `None` where that cannot be done
    /// (MQTT 5: rumqttc pings from its poll only).
    pub(super) async fn ping(&mut self, limit: Duration) -> Option<bool> {
        let EventLoop::V4(e) = self else { return None };
        let Some(network) = e.network.as_mut() else { return Some(false) };
        let sent = async {
            network.write(rumqttc::Packet::PingReq).await?;
            network.flush().await
        };
        Some(matches!(tokio::time::timeout(limit, sent).await, Ok(Ok(()))))
    }
}

/// A message received now; its ack token is the edge's to add (it knows the connection).
fn received(topic: String, payload: Bytes, qos: u8, retain: bool, properties: Option<Box<Properties>>) -> Message {
    Message { topic, payload, qos, retain, received_at: std::time::SystemTime::now(), properties, ack: None }
}

fn event4(event: rumqttc::Event) -> Event {
    use rumqttc::{Event as E, Packet};
    match event {
        E::Incoming(Packet::Publish(p)) => {
            let message = received(p.topic, p.payload, p.qos as u8, p.retain, None);
            Event::Publish { message, pkid: p.pkid }
        }
        E::Incoming(Packet::ConnAck(ack)) => {
            Event::ConnAck { session_present: ack.session_present, notes: Vec::new(), keep_alive: None }
        }
        E::Incoming(Packet::PubAck(ack)) => Event::Published(ack.pkid),
        E::Incoming(Packet::PubComp(comp)) => Event::Published(comp.pkid),
        E::Incoming(Packet::SubAck(ack)) => Event::SubAck {
            pkid: ack.pkid,
            granted: ack
                .return_codes
                .iter()
                .map(|c| match c {
                    rumqttc::SubscribeReasonCode::Success(q) => Granted::Qos(*q as u8),
                    rumqttc::SubscribeReasonCode::Failure => Granted::Refused("failure"),
                })
                .collect(),
        },
        E::Outgoing(o) => outgoing(o),
        _ => Event::Other,
    }
}

fn event5(event: r5::Event) -> Event {
    use p5::Packet;
    match event {
        r5::Event::Incoming(Packet::Publish(p)) => {
            // rumqttc hands the topic out as bytes; MQTT requires UTF-8, and a broker sends nothing else.
            let topic = match String::from_utf8(p.topic.to_vec()) {
                Ok(t) => t,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            };
            let properties = p.properties.and_then(props5::properties);
            let message = received(topic, p.payload, p.qos as u8, p.retain, properties);
            Event::Publish { message, pkid: p.pkid }
        }
        r5::Event::Incoming(Packet::ConnAck(ack)) => Event::ConnAck {
            session_present: ack.session_present,
            notes: props5::connack_notes(ack.properties.as_ref()),
            // 0 turns keep-alives off; then ours stays, which costs a ping now and then.
            keep_alive: ack
                .properties
                .as_ref()
                .and_then(|p| p.server_keep_alive)
                .filter(|&k| k > 0)
                .map(|k| Duration::from_secs(k.into())),
        },
        r5::Event::Incoming(Packet::PubAck(ack)) => match ack.reason {
            p5::PubAckReason::Success | p5::PubAckReason::NoMatchingSubscribers => Event::Published(ack.pkid),
            reason => Event::Refused {
                pkid: ack.pkid,
                reason: props5::refusal(format!("{reason:?}"), ack.properties.and_then(|p| p.reason_string)),
            },
        },
        r5::Event::Incoming(Packet::PubRec(rec)) => match rec.reason {
            p5::PubRecReason::Success | p5::PubRecReason::NoMatchingSubscribers => Event::Other,
            reason => Event::Refused {
                pkid: rec.pkid,
                reason: props5::refusal(format!("{reason:?}"), rec.properties.and_then(|p| p.reason_string)),
            },
        },
        r5::Event::Incoming(Packet::PubComp(comp)) => Event::Published(comp.pkid),
        r5::Event::Incoming(Packet::SubAck(ack)) => {
            Event::SubAck { pkid: ack.pkid, granted: ack.return_codes.iter().map(props5::granted).collect() }
        }
        r5::Event::Outgoing(o) => outgoing(o),
        _ => Event::Other,
    }
}

fn outgoing(o: Outgoing) -> Event {
    match o {
        Outgoing::Subscribe(pkid) => Event::SubscribeSent(pkid),
        Outgoing::PubAck(_) | Outgoing::PubRec(_) => Event::AckWritten,
        Outgoing::PingReq => Event::PingSent,
        Outgoing::Disconnect => Event::DisconnectSent,
        Outgoing::Publish(pkid) => Event::PublishSent(pkid),
        _ => Event::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connack(receive_max: Option<u16>) -> r5::Event {
        let properties = p5::ConnAckProperties {
            session_expiry_interval: None,
            receive_max,
            max_qos: None,
            retain_available: None,
            max_packet_size: None,
            assigned_client_identifier: None,
            topic_alias_max: None,
            reason_string: None,
            user_properties: Vec::new(),
            wildcard_subscription_available: None,
            subscription_identifiers_available: None,
            shared_subscription_available: None,
            server_keep_alive: None,
            response_information: None,
            server_reference: None,
            authentication_method: None,
            authentication_data: None,
        };
        r5::Event::Incoming(p5::Packet::ConnAck(p5::ConnAck {
            session_present: false,
            code: p5::ConnectReturnCode::Success,
            properties: Some(properties),
        }))
    }

    fn pubrec(reason: p5::PubRecReason) -> r5::Event {
        r5::Event::Incoming(p5::Packet::PubRec(p5::PubRec { pkid: 1, reason, properties: None }))
    }

    /// PUBREC refusals keep slots, successes do not; a quarter of the connection's slots (ours or the
    /// broker's Receive Maximum, the lower) calls for a new connection; a CONNACK starts over.
    #[test]
    fn slots_kept_by_pubrec_refusals_are_counted_per_connection() {
        let mut s = Slots::new(Some(1000));
        s.saw(&connack(None));
        assert_eq!((s.kept, s.of), (0, 1000));
        for _ in 0..249 {
            s.saw(&pubrec(p5::PubRecReason::NotAuthorized));
        }
        s.saw(&pubrec(p5::PubRecReason::Success));
        s.saw(&pubrec(p5::PubRecReason::NoMatchingSubscribers));
        assert!(!s.running_out(), "{s:?}");
        s.saw(&pubrec(p5::PubRecReason::QuotaExceeded));
        assert!(s.running_out(), "{s:?}");
        // A broker with a Receive Maximum of 10: 3 refusals are a quarter.
        s.saw(&connack(Some(10)));
        assert_eq!((s.kept, s.of), (0, 10));
        assert!(!s.running_out());
        for _ in 0..2 {
            s.saw(&pubrec(p5::PubRecReason::NotAuthorized));
        }
        assert!(!s.running_out());
        s.saw(&pubrec(p5::PubRecReason::NotAuthorized));
        assert!(s.running_out());
        // Without a limit of ours, the broker's.
        let mut s = Slots::new(None);
        s.saw(&connack(Some(65535)));
        assert_eq!(s.of, 65535);
    }
}
