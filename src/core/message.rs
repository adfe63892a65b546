//! The message as it arrives from the broker: topic, payload, QoS, MQTT 5 properties, the time the
//! gateway received it, and what acknowledges it. One type from the MQTT edge to the record.

use std::time::SystemTime;

use bytes::Bytes;

/// An MQTT message as received.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// When the gateway read it: the spec's `timestamp` and the `received_at` header.
    pub received_at: SystemTime,
    /// MQTT 5 properties that travel to Kafka as headers (`None` on 3.1.1, and when there are none).
    pub properties: Option<Box<Properties>>,
    /// What acknowledges it to the broker; `None` at QoS 0 (nothing to acknowledge).
    pub ack: Option<AckToken>,
}

impl Message {
    /// A message with no properties and nothing to acknowledge, received at `received_at` (for `explain`
    /// and tests).
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>, qos: u8, received_at: SystemTime) -> Self {
        Self {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain: false,
            received_at,
            properties: None,
            ack: None,
        }
    }
}

/// What is needed to acknowledge one message (PUBACK at QoS 1, PUBREC at QoS 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckToken {
    /// The number of the connection the message arrived on: packet ids mean something only within one.
    pub connection: u64,
    pub pkid: u16,
    pub qos: u8,
}

/// The MQTT 5 properties of a message that the gateway carries to Kafka (see [`super::envelope`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// User properties, in order; a name may repeat.
    pub user: Vec<(String, String)>,
    pub content_type: Option<String>,
    /// Payload Format Indicator: 1 says the payload is UTF-8 text (checked), 0 says nothing.
    pub payload_format: Option<u8>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
}

impl Properties {
    pub fn is_empty(&self) -> bool {
        self.user.is_empty()
            && self.content_type.is_none()
            && self.payload_format.is_none()
            && self.response_topic.is_none()
            && self.correlation_data.is_none()
    }

    /// Bytes it holds, roughly, for the intake's budget.
    pub fn cost(&self) -> usize {
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        self.user.iter().map(|(k, v)| k.len() + v.len() + 48).sum::<usize>()
            + text(&self.content_type)
            + text(&self.response_topic)
            + self.correlation_data.as_ref().map_or(0, |c| c.len())
            + 128
    }
}
