//! What MQTT 5 adds at the edge: the CONNECT options (session expiry, Receive Maximum, Maximum Packet
//! Size), the properties of a received message, the broker's CONNACK properties worth a log line, and
//! reason codes in words.
//!
//! - **Receive Maximum** is `mqtt.max_unacked_messages` (at most 65,535): the broker sends no more QoS
//!   1/2 messages than that before our acks, whatever its own per-client in-flight setting.
//! - **Maximum Packet Size** is the larger of `mqtt.max_packet_size_bytes` and 64 MiB. An MQTT 5
//!   broker must not send a client a larger packet (it drops the message), so the gateway takes in
//!   messages up to the ceiling and the pipeline dead-letters those above `max_packet_size_bytes`; the
//!   connection never closes for one.
//! - **Topic aliases** are not accepted (Topic Alias Maximum 0): every message carries its topic.

use rumqttc::v5 as r5;
use rumqttc::v5::mqttbytes::v5 as p5;

use super::client::Granted;
use crate::config::MqttSettings;
use crate::core::message::Properties;

/// The largest packet the gateway accepts, to dead-letter what is above `mqtt.max_packet_size_bytes`.
pub(super) const PACKET_CEILING: usize = 64 * 1024 * 1024;

/// rumqttc's MQTT 5 options for `s`; the transport is set before each connection attempt.
pub(super) fn options(s: &MqttSettings) -> r5::MqttOptions {
    let addr = s.broker.ws_url().unwrap_or_else(|| s.broker.host.clone());
    let mut o = r5::MqttOptions::new(&s.client_id, addr, s.broker.port);
    o.set_keep_alive(s.keep_alive);
    o.set_clean_start(s.clean_session);
    o.set_session_expiry_interval(Some(s.session_expiry));
    o.set_receive_maximum(Some(receive_maximum(s.max_unacked_messages)));
    o.set_max_packet_size(Some(u32::try_from(s.max_packet_size.max(PACKET_CEILING)).unwrap_or(u32::MAX)));
    if let Some((user, pass)) = &s.credentials {
        o.set_credentials(user, pass.expose());
    }
    o
}

/// Receive Maximum from the window: 1 to 65,535.
pub fn receive_maximum(max_unacked_messages: usize) -> u16 {
    u16::try_from(max_unacked_messages).unwrap_or(u16::MAX).max(1)
}

/// The properties of a received message that travel to Kafka; `None` when it has none of them.
pub(super) fn properties(p: p5::PublishProperties) -> Option<Box<Properties>> {
    let props = Properties {
        user: p.user_properties,
        content_type: p.content_type,
        payload_format: p.payload_format_indicator,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
    };
    (!props.is_empty()).then(|| Box::new(props))
}

/// The MQTT 5 properties of an outgoing publish; `None` when there are none.
pub(super) fn publish_properties(p: &Properties) -> p5::PublishProperties {
    p5::PublishProperties {
        payload_format_indicator: p.payload_format,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user.clone(),
        ..Default::default()
    }
}

/// A refused publish's reason in words: the reason code's name, and the broker's reason string if any.
pub(super) fn refusal(code: String, reason_string: Option<String>) -> String {
    match reason_string {
        Some(r) if !r.is_empty() => format!("{code}: {r}"),
        _ => code,
    }
}

/// What a CONNACK says that an operator should see: limits that constrain the gateway.
pub(super) fn connack_notes(p: Option<&p5::ConnAckProperties>) -> Vec<String> {
    let Some(p) = p else { return Vec::new() };
    let mut notes = Vec::new();
    if let Some(s) = p.session_expiry_interval {
        notes.push(format!("the broker keeps the session {} after a disconnect", expiry_words(s)));
    }
    if let Some(q) = p.max_qos {
        notes.push(format!("the broker's maximum QoS is {q}"));
    }
    if p.shared_subscription_available == Some(0) {
        notes.push("the broker does not support shared subscriptions".into());
    }
    if p.wildcard_subscription_available == Some(0) {
        notes.push("the broker does not support wildcard subscriptions".into());
    }
    if let Some(k) = p.server_keep_alive {
        notes.push(format!("the broker set the keep-alive to {k} s"));
    }
    if let Some(r) = &p.reason_string {
        notes.push(format!("the broker says: {r}"));
    }
    notes
}

fn expiry_words(secs: u32) -> String {
    match secs {
        0 => "not at all".into(),
        u32::MAX => "for ever".into(),
        s => format!("for {s} s"),
    }
}

pub(super) fn granted(code: &p5::SubscribeReasonCode) -> Granted {
    use p5::SubscribeReasonCode as C;
    match code {
        C::Success(q) => Granted::Qos(*q as u8),
        C::Failure | C::Unspecified => Granted::Refused("unspecified error"),
        C::ImplementationSpecific => Granted::Refused("implementation specific error"),
        C::NotAuthorized => Granted::Refused("not authorized"),
        C::TopicFilterInvalid => Granted::Refused("topic filter invalid"),
        C::PkidInUse => Granted::Refused("packet identifier in use"),
        C::QuotaExceeded => Granted::Refused("quota exceeded"),
        C::SharedSubscriptionsNotSupported => Granted::Refused("shared subscriptions not supported"),
        C::SubscriptionIdNotSupported => Granted::Refused("subscription identifiers not supported"),
        C::WildcardSubscriptionsNotSupported => Granted::Refused("wildcard subscriptions not supported"),
    }
}

/// A CONNACK's refusal in words, with what to check.
pub(crate) fn refused(code: &p5::ConnectReturnCode) -> (&'static str, &'static str) {
    use p5::ConnectReturnCode as C;
    match code {
        C::BadUserNamePassword => (
            "connect: bad username or password",
            "check mqtt.username and mqtt.password / mqtt.password_file (env MQTT_USERNAME, MQTT_PASSWORD, MQTT_PASSWORD_FILE)",
        ),
        C::NotAuthorized => ("connect: not authorised", "the broker refuses this client: check the credentials, the client certificate, and the broker's ACLs for mqtt.client_id"),
        C::ClientIdentifierNotValid | C::BadClientId => ("connect: client id rejected", "check mqtt.client_id against the broker's rules"),
        C::UnsupportedProtocolVersion | C::RefusedProtocolVersion => ("connect: the broker does not speak MQTT 5", "set mqtt.protocol: \"3.1.1\""),
        C::Banned => ("connect: this client is banned", "the broker's operator has banned this client id or address"),
        C::ServerUnavailable | C::ServiceUnavailable => ("connect: the broker is unavailable", "the broker is not serving clients now; the gateway keeps retrying"),
        C::ServerBusy => ("connect: the broker is busy", "the gateway keeps retrying"),
        C::QuotaExceeded => ("connect: the broker's quota is exceeded", "see the broker's limits for this client"),
        C::ConnectionRateExceeded => ("connect: connection rate exceeded", "the broker limits how often a client connects; the backoff will space the attempts"),
        C::UseAnotherServer | C::ServerMoved => ("connect: the broker redirects to another server", "point mqtt.broker at the broker it names (see its log)"),
        C::BadAuthenticationMethod => ("connect: authentication method not supported", "the broker expects another authentication: check its configuration"),
        C::PacketTooLarge => ("connect: CONNECT too large for the broker", "check the broker's max_packet_size"),
        _ => ("connect: refused", "see the broker's log for why it refused the connection"),
    }
}

/// A DISCONNECT from the broker in words.
pub(super) fn disconnected(code: &p5::DisconnectReasonCode, reason: Option<&str>) -> (String, &'static str) {
    use p5::DisconnectReasonCode as C;
    let (what, hint) = match code {
        C::SessionTakenOver => (
            "the broker ended the connection: another client connected with this client id",
            "give every gateway replica its own mqtt.client_id",
        ),
        C::KeepAliveTimeout => (
            "the broker ended the connection: keep-alive timeout",
            "check the network between the gateway and the broker",
        ),
        C::ServerShuttingDown => ("the broker is shutting down", "the gateway reconnects when it is back"),
        C::NotAuthorized => {
            ("the broker ended the connection: not authorised", "check the broker's ACLs for this client")
        }
        C::ReceiveMaximumExceeded => (
            "the broker ended the connection: receive maximum exceeded",
            "a broker bug or misconfiguration; see its log",
        ),
        C::PacketTooLarge => {
            ("the broker ended the connection: packet too large", "check the broker's max_packet_size")
        }
        C::TopicAliasInvalid => ("the broker ended the connection: topic alias invalid", "see the broker's log"),
        C::MessageRateTooHigh | C::QuotaExceeded => {
            ("the broker ended the connection: rate or quota exceeded", "see the broker's limits for this client")
        }
        C::AdministrativeAction => ("the broker's operator ended the connection", "see the broker's log"),
        C::UseAnotherServer | C::ServerMoved => {
            ("the broker redirects to another server", "point mqtt.broker at the broker it names (see its log)")
        }
        other => {
            return (
                format!(
                    "the broker ended the connection ({other:?}){}",
                    reason.map(|r| format!(": {r}")).unwrap_or_default()
                ),
                "see the broker's log",
            )
        }
    };
    (format!("{what}{}", reason.map(|r| format!(" ({r})")).unwrap_or_default()), hint)
}

/// The error a connection failed with, when it is a DISCONNECT from the broker.
pub(super) fn server_disconnect(e: &r5::ConnectionError) -> Option<(String, &'static str)> {
    match e {
        r5::ConnectionError::MqttState(r5::StateError::ServerDisconnect { reason_code, reason_string }) => {
            Some(disconnected(reason_code, reason_string.as_deref()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_maximum_is_the_window_within_mqtt_limits() {
        assert_eq!(receive_maximum(10_000), 10_000);
        assert_eq!(receive_maximum(1_000_000), 65_535);
        assert_eq!(receive_maximum(0), 1);
    }

    #[test]
    fn properties_without_anything_to_carry_are_none() {
        assert!(properties(p5::PublishProperties::default()).is_none());
        let p =
            properties(p5::PublishProperties { content_type: Some("application/json".into()), ..Default::default() })
                .unwrap();
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
    }

    #[test]
    fn a_refused_subscription_names_its_reason() {
        assert_eq!(granted(&p5::SubscribeReasonCode::NotAuthorized), Granted::Refused("not authorized"));
        assert_eq!(
            granted(&p5::SubscribeReasonCode::Success(rumqttc::v5::mqttbytes::QoS::AtLeastOnce)),
            Granted::Qos(1)
        );
    }

    #[test]
    fn a_session_taken_over_says_to_use_distinct_client_ids() {
        let (what, hint) = disconnected(&p5::DisconnectReasonCode::SessionTakenOver, None);
        assert!(what.contains("another client"), "{what}");
        assert!(hint.contains("client_id"));
    }
}
