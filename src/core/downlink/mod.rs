//! Downlinks, the way back: what a Kafka record becomes on MQTT. Pure: the rule a downlink follows
//! ([`Downlink`]), the MQTT topic template and its checks ([`template`]), what one record becomes (topic,
//! QoS, retain, payload, MQTT 5 properties) or why it cannot be published ([`render`]), the dead-letter
//! record's headers, and whether a downlink can publish where an uplink route subscribes ([`loops`]).
//!
//! Header mapping, the uplink's read backwards: `mqtt_content_type`, `mqtt_payload_format`,
//! `mqtt_response_topic` and `mqtt_correlation_data` become those MQTT 5 properties; `mqtt_user_<name>`
//! becomes the user property `<name>` (the uplink's escape for names that clash with its own headers);
//! every other header whose value is UTF-8 becomes a user property of its own name. MQTT 3.1.1 has no
//! properties: there the headers stay in Kafka.

pub mod loops;
pub mod template;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use bytes::Bytes;

use crate::core::envelope::{
    HEADER_CONTENT_TYPE, HEADER_CORRELATION_DATA, HEADER_DLQ_REASON, HEADER_PAYLOAD_FORMAT, HEADER_RESPONSE_TOPIC,
    USER_PROPERTY_CLASH_PREFIX,
};
use crate::core::message::Properties;
use crate::core::routing::rate_limit::RateLimit;
use template::{Part, Source, Template, MAX_TOPIC_BYTES};

/// A setting fixed in the configuration or read from a header of each record (`{header.qos}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting<T> {
    Fixed(T),
    Header(String),
}

/// One downlink, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Downlink {
    pub name: Arc<str>,
    pub kafka_topics: Vec<String>,
    pub group_id: String,
    pub mqtt_topic: Template,
    pub qos: Setting<u8>,
    pub retain: Setting<bool>,
    pub dead_letter_topic: String,
    pub rate_limit: Option<RateLimit>,
    /// librdkafka consumer properties of this downlink, applied last.
    pub properties: Vec<(String, String)>,
}

impl Downlink {
    /// What must restart the downlink's consumer when it changes (the rest applies to the next record).
    pub fn consumer_differs(&self, other: &Downlink) -> bool {
        self.kafka_topics != other.kafka_topics
            || self.group_id != other.group_id
            || self.properties != other.properties
    }
}

/// A Kafka record as the downlink sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Bytes>,
    /// In order; a name may repeat; `None` is a header without a value.
    pub headers: Vec<(String, Option<Bytes>)>,
    pub payload: Bytes,
}

impl Record {
    /// The first header of that name, if it has a value.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.as_deref())
    }
}

/// What a record becomes on MQTT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub payload: Bytes,
    /// MQTT 5 only; empty under 3.1.1.
    pub properties: Properties,
}

impl Publish {
    /// The size of the PUBLISH packet on the wire, near enough to compare with a packet size limit
    /// (properties counted at their encoded size, the length fields at their largest).
    pub fn packet_size(&self) -> usize {
        let p = &self.properties;
        let props = p.content_type.as_ref().map_or(0, |c| 3 + c.len())
            + p.payload_format.map_or(0, |_| 2)
            + p.response_topic.as_ref().map_or(0, |t| 3 + t.len())
            + p.correlation_data.as_ref().map_or(0, |c| 3 + c.len())
            + p.user.iter().map(|(n, v)| 5 + n.len() + v.len()).sum::<usize>();
        // Fixed header (1 + up to 4), topic length (2), packet id (2), properties length (up to 4).
        13 + self.topic.len() + props + self.payload.len()
    }
}

/// Why a record cannot be published, as a small fixed set (a metric label) with the details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpublishable {
    pub kind: Reason,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A placeholder of the topic, or the QoS/retain header, resolves to nothing.
    Missing,
    /// The rendered topic is not one MQTT can publish to (a wildcard, `/` or NUL in a value, too long...).
    InvalidTopic,
    /// The QoS or retain header holds something else than 0/1/2 or true/false.
    InvalidSetting,
    /// Larger than the MQTT packet size limit.
    TooLarge,
    /// The broker refused the publish (MQTT 5: a PUBACK or PUBREC reason code of 0x80 or more, e.g.
    /// not authorized by its ACL).
    Refused,
}

impl Reason {
    pub const ALL: [Reason; 5] =
        [Reason::Missing, Reason::InvalidTopic, Reason::InvalidSetting, Reason::TooLarge, Reason::Refused];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing_value",
            Reason::InvalidTopic => "invalid_topic",
            Reason::InvalidSetting => "invalid_setting",
            Reason::TooLarge => "too_large",
            Reason::Refused => "refused_by_broker",
        }
    }
}

fn refuse(kind: Reason, detail: String) -> Unpublishable {
    Unpublishable { kind, detail }
}

/// A placeholder's value for `record`, checked to stay within one topic level.
fn value(
    source: &Source,
    record: &Record,
    json: &mut Option<Option<serde_json::Value>>,
) -> Result<String, Unpublishable> {
    let text = |bytes: &[u8], what: &Source| -> Result<String, Unpublishable> {
        String::from_utf8(bytes.to_vec()).map_err(|_| refuse(Reason::InvalidTopic, format!("{what} is not UTF-8 text")))
    };
    let v = match source {
        Source::Key => match &record.key {
            Some(k) => text(k, source)?,
            None => return Err(refuse(Reason::Missing, "{key}: the record has no key".into())),
        },
        Source::Topic => record.topic.clone(),
        Source::Partition => record.partition.to_string(),
        Source::Header(name) => match record.header(name) {
            Some(v) => text(v, source)?,
            None => return Err(refuse(Reason::Missing, format!("{source}: the record has no header `{name}`"))),
        },
        Source::Json(pointer) => {
            let parsed = json.get_or_insert_with(|| serde_json::from_slice(&record.payload).ok());
            let Some(doc) = parsed.as_ref() else {
                return Err(refuse(Reason::Missing, format!("{source}: the record's value is not JSON")));
            };
            match doc.pointer(pointer) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => v.to_string(),
                Some(serde_json::Value::Null) | None => {
                    return Err(refuse(Reason::Missing, format!("{source}: nothing at `{pointer}` in the value")))
                }
                Some(_) => {
                    return Err(refuse(
                        Reason::InvalidTopic,
                        format!("{source}: `{pointer}` is an object or array, not a topic level"),
                    ))
                }
            }
        }
    };
    if v.is_empty() {
        return Err(refuse(Reason::Missing, format!("{source} is empty")));
    }
    if let Some(c) = v.chars().find(|c| matches!(c, '/' | '+' | '#' | '\0')) {
        return Err(refuse(
            Reason::InvalidTopic,
            format!("{source} is `{}`, which holds {c:?}: a placeholder fills one topic level", shorten(&v)),
        ));
    }
    Ok(v)
}

fn shorten(s: &str) -> String {
    if s.len() <= 64 {
        return s.replace('\0', "\\0");
    }
    let mut end = 64;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", s[..end].replace('\0', "\\0"))
}

/// The MQTT topic for `record`.
pub fn topic(t: &Template, record: &Record) -> Result<String, Unpublishable> {
    let mut json = None;
    let mut out = String::with_capacity(t.source().len() + 24);
    for p in t.parts() {
        match p {
            Part::Literal(l) => out.push_str(l),
            Part::Placeholder(s) => out.push_str(&value(s, record, &mut json)?),
        }
    }
    if out.starts_with('$') {
        return Err(refuse(Reason::InvalidTopic, format!("`{}` starts with '$', a broker topic", shorten(&out))));
    }
    if out.len() > MAX_TOPIC_BYTES {
        return Err(refuse(
            Reason::InvalidTopic,
            format!("the topic is {} bytes; MQTT allows {MAX_TOPIC_BYTES}", out.len()),
        ));
    }
    Ok(out)
}

fn setting_text(record: &Record, name: &str, what: &str) -> Result<String, Unpublishable> {
    match record.header(name) {
        Some(v) => Ok(String::from_utf8_lossy(v).trim().to_string()),
        None => Err(refuse(Reason::Missing, format!("{what} {{header.{name}}}: the record has no header `{name}`"))),
    }
}

/// The QoS for `record`.
pub fn qos(s: &Setting<u8>, record: &Record) -> Result<u8, Unpublishable> {
    match s {
        Setting::Fixed(q) => Ok(*q),
        Setting::Header(name) => match setting_text(record, name, "qos")?.as_str() {
            "0" => Ok(0),
            "1" => Ok(1),
            "2" => Ok(2),
            other => Err(refuse(
                Reason::InvalidSetting,
                format!("qos header `{name}` is `{}`, not 0, 1 or 2", shorten(other)),
            )),
        },
    }
}

/// Whether `record` is published retained.
pub fn retain(s: &Setting<bool>, record: &Record) -> Result<bool, Unpublishable> {
    match s {
        Setting::Fixed(r) => Ok(*r),
        Setting::Header(name) => match setting_text(record, name, "retain")?.to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            other => Err(refuse(
                Reason::InvalidSetting,
                format!("retain header `{name}` is `{}`, not true or false", shorten(other)),
            )),
        },
    }
}

/// The MQTT 5 properties a record's headers give (see the module's doc).
pub fn properties(record: &Record) -> Properties {
    let mut p = Properties::default();
    for (name, value) in &record.headers {
        let Some(value) = value else { continue };
        match name.as_str() {
            HEADER_CORRELATION_DATA => p.correlation_data = Some(value.clone()),
            HEADER_PAYLOAD_FORMAT => match value.as_ref() {
                b"utf-8" | b"1" => p.payload_format = Some(1),
                b"bytes" | b"0" => p.payload_format = Some(0),
                _ => {}
            },
            _ => {
                let Ok(text) = std::str::from_utf8(value) else { continue };
                match name.as_str() {
                    HEADER_CONTENT_TYPE => p.content_type = Some(text.to_string()),
                    HEADER_RESPONSE_TOPIC => p.response_topic = Some(text.to_string()),
                    n => {
                        let user = n.strip_prefix(USER_PROPERTY_CLASH_PREFIX).filter(|u| !u.is_empty()).unwrap_or(n);
                        p.user.push((user.to_string(), text.to_string()));
                    }
                }
            }
        }
    }
    // A UTF-8 payload format on a payload that is not UTF-8 would make the broker drop the message.
    if p.payload_format == Some(1) && std::str::from_utf8(&record.payload).is_err() {
        p.payload_format = None;
    }
    p
}

/// What `record` becomes under `downlink`, or why it cannot be published. `max_packet_size` is the
/// largest packet the connection may send; `with_properties` is false under MQTT 3.1.1.
pub fn render(
    downlink: &Downlink,
    record: &Record,
    max_packet_size: usize,
    with_properties: bool,
) -> Result<Publish, Unpublishable> {
    let topic = topic(&downlink.mqtt_topic, record)?;
    let qos = qos(&downlink.qos, record)?;
    let retain = retain(&downlink.retain, record)?;
    let properties = if with_properties { properties(record) } else { Properties::default() };
    let publish = Publish { topic, qos, retain, payload: record.payload.clone(), properties };
    let size = publish.packet_size();
    if size > max_packet_size {
        return Err(refuse(
            Reason::TooLarge,
            format!("the MQTT packet would be {size} bytes; mqtt.max_packet_size_bytes is {max_packet_size}"),
        ));
    }
    Ok(publish)
}

/// Header names the downlink's dead-letter records carry besides the original headers.
pub const HEADER_DOWNLINK: &str = "downlink";
pub const HEADER_SOURCE_TOPIC: &str = "kafka_topic";
pub const HEADER_SOURCE_PARTITION: &str = "kafka_partition";
pub const HEADER_SOURCE_OFFSET: &str = "kafka_offset";

/// The headers of `record`'s dead-letter record: the original ones in order, then the reason, the
/// downlink and where the record came from.
pub fn dead_letter_headers(downlink: &str, record: &Record, why: &Unpublishable) -> Vec<(String, Option<Vec<u8>>)> {
    let mut h: Vec<(String, Option<Vec<u8>>)> =
        record.headers.iter().map(|(n, v)| (n.clone(), v.as_ref().map(|v| v.to_vec()))).collect();
    h.push((HEADER_DLQ_REASON.into(), Some(format!("{}: {}", why.kind.as_str(), why.detail).into_bytes())));
    h.push((HEADER_DOWNLINK.into(), Some(downlink.as_bytes().to_vec())));
    h.push((HEADER_SOURCE_TOPIC.into(), Some(record.topic.as_bytes().to_vec())));
    h.push((HEADER_SOURCE_PARTITION.into(), Some(record.partition.to_string().into_bytes())));
    h.push((HEADER_SOURCE_OFFSET.into(), Some(record.offset.to_string().into_bytes())));
    h
}
