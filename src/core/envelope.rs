//! The Kafka record a message becomes: the spec's envelope, its key and headers, or a dead-letter record
//! that says why the message could not be delivered as such. Pure: the receive time is passed in.

use std::borrow::Cow;
use std::cell::OnceCell;

use serde_json::value::RawValue;
use serde_json::Value;

use base64::Engine as _;

use crate::core::message::{Message, Properties};
use crate::core::routing::template::Values;
use crate::core::routing::{DeviceId, PayloadFormat, Route, ValueFormat};

/// What is worked out once per message, however many routes it fans out to: its id, its receive time as
/// text, and its payload as JSON, validated on first use and parsed only if a key path or a schema needs
/// it (an unrouted message, or one for raw and text routes only, is never parsed).
pub struct Facts<'a> {
    pub message: &'a Message,
    raw: OnceCell<Result<&'a RawValue, String>>,
    parsed: OnceCell<Option<Value>>,
    id: OnceCell<String>,
    received_at: OnceCell<String>,
}

impl<'a> Facts<'a> {
    pub fn new(message: &'a Message) -> Self {
        Self {
            message,
            raw: OnceCell::new(),
            parsed: OnceCell::new(),
            id: OnceCell::new(),
            received_at: OnceCell::new(),
        }
    }

    /// The payload as validated JSON text, or why it is not JSON.
    fn raw(&self) -> &Result<&'a RawValue, String> {
        let bytes: &'a [u8] = &self.message.payload;
        self.raw.get_or_init(|| {
            serde_json::from_slice::<&RawValue>(bytes).map_err(|e| {
                if bytes.is_empty() {
                    "payload is empty, not JSON".to_string()
                } else {
                    format!("payload is not valid JSON: {e}")
                }
            })
        })
    }

    /// The message id (see [`message_id`]).
    pub fn id(&self) -> &str {
        self.id.get_or_init(|| message_id(&self.message.topic, &self.message.payload))
    }

    /// The receive time in epoch seconds with microseconds (see [`epoch_seconds`]).
    pub fn received_at(&self) -> &str {
        self.received_at.get_or_init(|| epoch_seconds(self.message.received_at))
    }

    /// The payload as a `serde_json::Value`, parsed on first use (only JSONPath keys and schemas need it).
    fn value(&self) -> Option<&Value> {
        self.parsed.get_or_init(|| self.raw().as_ref().ok().and_then(|r| serde_json::from_str(r.get()).ok())).as_ref()
    }
}

/// A record ready to be produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// Header names are ours (static) or an MQTT 5 user property's.
    pub headers: Vec<(Cow<'static, str>, Vec<u8>)>,
}

/// What a route makes of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Record(Record),
    /// The message cannot go to the route's topic; `record` goes to the dead-letter topic instead.
    DeadLetter {
        record: Record,
        reason: String,
        kind: DeadLetterReason,
    },
}

/// Why a message went to a dead-letter topic, in a small fixed set (a metric label); the `dlq_reason`
/// header has the details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// The payload is not JSON (a route with `payload: json`).
    InvalidJson,
    /// The payload is not UTF-8 text (a route with `payload: text`).
    NotUtf8,
    /// The key's JSONPath selects nothing and the route says to dead-letter then.
    KeyNotFound,
    /// The topic template renders a name Kafka does not allow.
    InvalidTopic,
    /// Larger than `mqtt.max_packet_size_bytes`.
    TooLarge,
    /// Kafka refused the record for good (too large for the broker, unknown topic, not authorized, ...).
    KafkaRefused,
    /// The payload does not conform to the route's JSON Schema.
    SchemaInvalid,
    /// The value does not fit the route's registry schema (or there is no usable schema for it).
    NotEncodable,
}

impl DeadLetterReason {
    pub const ALL: [DeadLetterReason; 8] = [
        DeadLetterReason::InvalidJson,
        DeadLetterReason::NotUtf8,
        DeadLetterReason::KeyNotFound,
        DeadLetterReason::InvalidTopic,
        DeadLetterReason::TooLarge,
        DeadLetterReason::KafkaRefused,
        DeadLetterReason::SchemaInvalid,
        DeadLetterReason::NotEncodable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::InvalidJson => "invalid_json",
            DeadLetterReason::NotUtf8 => "not_utf8",
            DeadLetterReason::KeyNotFound => "key_not_found",
            DeadLetterReason::InvalidTopic => "invalid_topic",
            DeadLetterReason::TooLarge => "too_large",
            DeadLetterReason::KafkaRefused => "kafka_refused",
            DeadLetterReason::SchemaInvalid => "schema_invalid",
            DeadLetterReason::NotEncodable => "not_encodable",
        }
    }
}

pub const HEADER_MQTT_TOPIC: &str = "mqtt_topic";
pub const HEADER_MQTT_QOS: &str = "mqtt_qos";
pub const HEADER_DEVICE_ID: &str = "device_id";
pub const HEADER_ROUTE: &str = "route";
pub const HEADER_DLQ_REASON: &str = "dlq_reason";
pub const HEADER_RECEIVED_AT: &str = "received_at";
pub const HEADER_MESSAGE_ID: &str = "message_id";
pub const HEADER_CONTENT_TYPE: &str = "mqtt_content_type";
pub const HEADER_PAYLOAD_FORMAT: &str = "mqtt_payload_format";
pub const HEADER_RESPONSE_TOPIC: &str = "mqtt_response_topic";
pub const HEADER_CORRELATION_DATA: &str = "mqtt_correlation_data";
/// Put before a user property's name when it is one of the gateway's own header names (see
/// [`user_property_header`]).
pub const USER_PROPERTY_CLASH_PREFIX: &str = "mqtt_user_";

/// The Kafka header name of an MQTT 5 user property: its own name, unless that is a header the gateway
/// writes itself (`device_id`, `route`, `message_id`, `received_at`, `schema_id`, `dlq_reason`, `dlq_truncated_from`,
/// or any name starting `mqtt_`): then `mqtt_user_<name>`, so that the gateway's header is never
/// shadowed and the property is never lost.
pub fn user_property_header(name: &str) -> Cow<'static, str> {
    const OURS: [&str; 7] = [
        crate::core::encoding::HEADER_SCHEMA_ID,
        HEADER_DEVICE_ID,
        HEADER_ROUTE,
        HEADER_MESSAGE_ID,
        HEADER_RECEIVED_AT,
        HEADER_DLQ_REASON,
        "dlq_truncated_from",
    ];
    if name.starts_with("mqtt_") || OURS.contains(&name) {
        Cow::Owned(format!("{USER_PROPERTY_CLASH_PREFIX}{name}"))
    } else {
        Cow::Owned(name.to_string())
    }
}

pub use crate::core::stamp::{epoch_seconds, message_id};

/// Builds what `route` makes of a message, for the device `device` (found by the route's own rule, see
/// [`Route::device`]).
pub fn build(route: &Route, facts: &Facts<'_>, device: &DeviceId<'_>) -> Outcome {
    let msg = facts.message;
    let device_id = device.id;
    let timestamp = facts.received_at();
    let headers = context_headers(route, facts, device_id);
    let dead_letter = |kind, reason: String, headers| dead_letter_outcome(route, msg, device_id, headers, kind, reason);

    let group = |name: &str| device.group(name);
    let topic = match route.topic.render(&Values { topic: &msg.topic, device_id, group: &group }) {
        Ok(t) => t,
        Err(reason) => return dead_letter(DeadLetterReason::InvalidTopic, reason, headers),
    };
    let key = match route.key.select(device_id, if route.key.needs_payload() { facts.value() } else { None }) {
        Ok(k) => k,
        Err(reason) => return dead_letter(DeadLetterReason::KeyNotFound, reason, headers),
    };
    if let Some(reason) = msg.properties.as_deref().and_then(|p| utf8_promise_broken(p, &msg.payload)) {
        return dead_letter(DeadLetterReason::NotUtf8, reason, headers);
    }
    if let Some(schema) = &route.schema {
        // A schema applies to JSON payloads only (checked at load).
        match (facts.raw(), facts.value()) {
            (Err(reason), _) => return dead_letter(DeadLetterReason::InvalidJson, reason.clone(), headers),
            (Ok(_), Some(v)) => {
                if let Some(reason) = schema.violations(v) {
                    return dead_letter(DeadLetterReason::SchemaInvalid, reason, headers);
                }
            }
            (Ok(_), None) => {
                return dead_letter(DeadLetterReason::InvalidJson, "payload is not valid JSON".into(), headers)
            }
        }
    }
    let value = match (route.format, route.payload) {
        (ValueFormat::Raw, _) => msg.payload.to_vec(),
        (ValueFormat::Envelope, PayloadFormat::Json) => match facts.raw() {
            Ok(raw) => envelope(&msg.topic, device_id, raw.get().as_bytes(), timestamp),
            Err(reason) => return dead_letter(DeadLetterReason::InvalidJson, reason.clone(), headers),
        },
        (ValueFormat::Envelope, PayloadFormat::Text) => match std::str::from_utf8(&msg.payload) {
            Ok(text) => envelope(&msg.topic, device_id, &json_string(text), timestamp),
            Err(e) => {
                return dead_letter(DeadLetterReason::NotUtf8, format!("payload is not UTF-8 text: {e}"), headers)
            }
        },
        (ValueFormat::Envelope, PayloadFormat::Base64) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(&msg.payload);
            envelope(&msg.topic, device_id, &json_string(&encoded), timestamp)
        }
    };
    Outcome::Record(Record { topic, key, value, headers })
}

/// The dead letter `route` makes of the message for `reason`, decided outside the route's own rules.
pub fn dead_letter(
    route: &Route,
    facts: &Facts<'_>,
    device_id: &str,
    kind: DeadLetterReason,
    reason: String,
) -> Outcome {
    let headers = context_headers(route, facts, device_id);
    dead_letter_outcome(route, facts.message, device_id, headers, kind, reason)
}

/// The MQTT 5 Payload Format Indicator says UTF-8 and the payload is not: why, for the dead letter.
fn utf8_promise_broken(p: &Properties, payload: &[u8]) -> Option<String> {
    if p.payload_format != Some(1) {
        return None;
    }
    std::str::from_utf8(payload)
        .err()
        .map(|e| format!("the payload format indicator says UTF-8, but the payload is not: {e}"))
}

/// The headers every record carries: where the message came from and when; then, on MQTT 5, the
/// message's properties.
fn context_headers(route: &Route, facts: &Facts<'_>, device_id: &str) -> Vec<(Cow<'static, str>, Vec<u8>)> {
    let msg = facts.message;
    let mut h = vec![
        (Cow::Borrowed(HEADER_MQTT_TOPIC), msg.topic.as_bytes().to_vec()),
        (Cow::Borrowed(HEADER_MQTT_QOS), vec![b'0' + msg.qos.min(2)]),
        (Cow::Borrowed(HEADER_DEVICE_ID), device_id.as_bytes().to_vec()),
        (Cow::Borrowed(HEADER_ROUTE), route.name.as_bytes().to_vec()),
        (Cow::Borrowed(HEADER_MESSAGE_ID), facts.id().as_bytes().to_vec()),
        (Cow::Borrowed(HEADER_RECEIVED_AT), facts.received_at().as_bytes().to_vec()),
    ];
    if let Some(p) = msg.properties.as_deref() {
        property_headers(p, &mut h);
    }
    h
}

/// An MQTT 5 message's properties as Kafka headers: content type, payload format (`utf-8` or `bytes`),
/// response topic, correlation data (bytes as sent), then the user properties in order (a name may
/// repeat; see [`user_property_header`] for names that clash with ours).
fn property_headers(p: &Properties, h: &mut Vec<(Cow<'static, str>, Vec<u8>)>) {
    if let Some(c) = &p.content_type {
        h.push((Cow::Borrowed(HEADER_CONTENT_TYPE), c.as_bytes().to_vec()));
    }
    if let Some(f) = p.payload_format {
        h.push((Cow::Borrowed(HEADER_PAYLOAD_FORMAT), if f == 1 { b"utf-8".to_vec() } else { b"bytes".to_vec() }));
    }
    if let Some(t) = &p.response_topic {
        h.push((Cow::Borrowed(HEADER_RESPONSE_TOPIC), t.as_bytes().to_vec()));
    }
    if let Some(c) = &p.correlation_data {
        h.push((Cow::Borrowed(HEADER_CORRELATION_DATA), c.to_vec()));
    }
    for (name, value) in &p.user {
        h.push((user_property_header(name), value.as_bytes().to_vec()));
    }
}

/// The message as published, to the route's dead-letter topic, keyed by device id, with the reason.
fn dead_letter_outcome(
    route: &Route,
    msg: &Message,
    device_id: &str,
    mut headers: Vec<(Cow<'static, str>, Vec<u8>)>,
    kind: DeadLetterReason,
    reason: String,
) -> Outcome {
    headers.push((Cow::Borrowed(HEADER_DLQ_REASON), reason.as_bytes().to_vec()));
    Outcome::DeadLetter {
        record: Record {
            topic: route.dead_letter_topic.clone(),
            key: Some(device_id.as_bytes().to_vec()),
            value: msg.payload.to_vec(),
            headers,
        },
        reason,
        kind,
    }
}

/// `{"original_topic":…,"device_id":…,"payload":…,"timestamp":…}`. `payload_json` is spliced in as is:
/// for JSON payloads, the exact text that was published (key order and number formatting kept, no
/// re-serialization).
pub fn envelope(topic: &str, device_id: &str, payload_json: &[u8], timestamp: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_json.len() + topic.len() + device_id.len() + 80);
    out.extend_from_slice(b"{\"original_topic\":");
    write_json_string(&mut out, topic);
    out.extend_from_slice(b",\"device_id\":");
    write_json_string(&mut out, device_id);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(payload_json);
    out.extend_from_slice(b",\"timestamp\":");
    out.extend_from_slice(timestamp.as_bytes());
    out.push(b'}');
    out
}

fn json_string(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 2);
    write_json_string(&mut out, s);
    out
}

fn write_json_string(out: &mut Vec<u8>, s: &str) {
    // Serializing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::routing::tests::route;

    /// What `route` makes of `message`, all in one: its facts, its device, its record.
    fn build_one(route: &Route, message: &Message) -> Outcome {
        build(route, &Facts::new(message), &route.device(&message.topic))
    }
    use proptest::prelude::*;
    use std::time::{Duration, UNIX_EPOCH};

    const SPEC_TOPIC: &str = "cmnd/f2-e4fd45f654be/access-control-mode/J1/door-sensors";
    const SPEC_PAYLOAD: &str =
        r#"{"timestamp": "2023-05-26 18:34:04.928538", "door-sensor-1": false, "door-sensor-2": true}"#;

    fn msg(topic: &str, payload: &[u8]) -> Message {
        Message::new(topic, payload.to_vec(), 0, UNIX_EPOCH + Duration::from_micros(1_684_678_444_928_538))
    }

    #[test]
    fn mqtt5_properties_become_headers_and_never_shadow_ours() {
        let r = route("spec", "cmnd/#", "raw_iot_data");
        let props = Properties {
            user: vec![
                ("site".into(), "north".into()),
                ("site".into(), "south".into()),
                ("device_id".into(), "spoof".into()),
                ("mqtt_topic".into(), "x".into()),
            ],
            content_type: Some("application/json".into()),
            payload_format: Some(1),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(bytes::Bytes::from_static(&[0, 159, 1])),
        };
        let m = Message { properties: Some(Box::new(props.clone())), ..msg(SPEC_TOPIC, SPEC_PAYLOAD.as_bytes()) };
        let Outcome::Record(record) = build_one(&r, &m) else { panic!("expected a record") };
        let all = |k: &str| record.headers.iter().filter(|(n, _)| n == k).map(|(_, v)| v.clone()).collect::<Vec<_>>();
        assert_eq!(all("site"), [b"north".to_vec(), b"south".to_vec()], "repeated names kept, in order");
        assert_eq!(all("device_id"), [b"f2-e4fd45f654be".to_vec()], "ours is the only device_id");
        assert_eq!(all("mqtt_user_device_id"), [b"spoof".to_vec()]);
        assert_eq!(all("mqtt_topic"), [SPEC_TOPIC.as_bytes().to_vec()]);
        assert_eq!(all("mqtt_user_mqtt_topic"), [b"x".to_vec()]);
        assert_eq!(all(HEADER_CONTENT_TYPE), [b"application/json".to_vec()]);
        assert_eq!(all(HEADER_PAYLOAD_FORMAT), [b"utf-8".to_vec()]);
        assert_eq!(all(HEADER_RESPONSE_TOPIC), [b"reply/here".to_vec()]);
        assert_eq!(all(HEADER_CORRELATION_DATA), [vec![0, 159, 1]], "bytes as sent");
    }

    #[test]
    fn a_payload_that_breaks_its_utf8_promise_is_dead_lettered() {
        let r = route("spec", "cmnd/#", "raw_iot_data");
        let props = Properties { payload_format: Some(1), ..Properties::default() };
        let m = Message { properties: Some(Box::new(props.clone())), ..msg(SPEC_TOPIC, &[0xff, 0xfe]) };
        let Outcome::DeadLetter { kind, reason, record, .. } = build_one(&r, &m) else {
            panic!("expected a dead letter")
        };
        assert_eq!(kind, DeadLetterReason::NotUtf8);
        assert!(reason.contains("payload format indicator"), "{reason}");
        assert!(record.headers.iter().any(|(n, v)| n == HEADER_PAYLOAD_FORMAT && v == b"utf-8"));
        let bytes = Properties { payload_format: Some(0), ..Properties::default() };
        let m = Message { properties: Some(Box::new(bytes.clone())), ..msg(SPEC_TOPIC, br#"{"a":1}"#) };
        assert!(matches!(build_one(&r, &m), Outcome::Record(_)));
    }

    #[test]
    fn the_spec_example_becomes_the_spec_record() {
        let r = route("spec", "cmnd/#", "raw_iot_data");
        let m = msg(SPEC_TOPIC, SPEC_PAYLOAD.as_bytes());
        let Outcome::Record(record) = build_one(&r, &m) else { panic!("expected a record") };
        assert_eq!(r.device(&m.topic).id, "f2-e4fd45f654be");
        assert_eq!(record.topic, "raw_iot_data");
        assert_eq!(record.key.as_deref(), Some(&b"f2-e4fd45f654be"[..]));
        let expected = format!(
            r#"{{"original_topic":"{SPEC_TOPIC}","device_id":"f2-e4fd45f654be","payload":{SPEC_PAYLOAD},"timestamp":1684678444.928538}}"#
        );
        assert_eq!(String::from_utf8(record.value.clone()).unwrap(), expected);
        let v: Value = serde_json::from_slice(&record.value).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["original_topic", "device_id", "payload", "timestamp"]);
        let payload_keys: Vec<&str> = v["payload"].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(payload_keys, ["timestamp", "door-sensor-1", "door-sensor-2"], "key order kept");
        assert!(record.headers.contains(&(HEADER_MQTT_TOPIC.into(), SPEC_TOPIC.as_bytes().to_vec())));
        assert!(record.headers.contains(&(HEADER_MQTT_QOS.into(), b"0".to_vec())));
    }

    #[test]
    fn envelope_table() {
        let r = route("spec", "cmnd/#", "raw_iot_data");
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("cmnd/dev-1/x", "42", Some("42")),
            ("cmnd/dev-1/x", "\"text\"", Some("\"text\"")),
            ("cmnd/dev-1/x", "  [1, 2]  ", Some("[1, 2]")),
            ("cmnd/dev-1/x", "null", Some("null")),
            ("cmnd/dev-1/x", "123456789012345678901234567890", Some("123456789012345678901234567890")),
            ("cmnd/dev-1/x", "{\"a\":", None),
            ("cmnd/dev-1/x", "", None),
            ("cmnd/dev-1/x", "not json", None),
            ("cmnd/\"quoted\"\\/x", "{}", Some("{}")),
        ];
        for (topic, payload, want) in cases {
            let m = msg(topic, payload.as_bytes());
            match (build_one(&r, &m), want) {
                (Outcome::Record(record), Some(want)) => {
                    let v: Value = serde_json::from_slice(&record.value).unwrap();
                    assert_eq!(v["original_topic"], *topic);
                    let text = String::from_utf8(record.value).unwrap();
                    assert!(text.contains(&format!("\"payload\":{want},")), "{text}");
                }
                (Outcome::DeadLetter { record, reason, .. }, None) => {
                    assert_eq!(record.topic, "raw_iot_data.dlq");
                    assert_eq!(record.value, payload.as_bytes(), "the dead letter keeps the payload as sent");
                    assert!(record.headers.iter().any(|(k, v)| *k == HEADER_DLQ_REASON && v == reason.as_bytes()));
                    assert!(reason.contains("JSON"), "{reason}");
                }
                (other, want) => panic!("payload {payload:?}: got {other:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn binary_payload_is_dead_lettered_unchanged() {
        let r = route("spec", "cmnd/#", "raw_iot_data");
        let bytes = [0xff, 0x00, 0xfe, b'{'];
        let m = msg("cmnd/dev/x", &bytes);
        assert!(matches!(build_one(&r, &m), Outcome::DeadLetter { record, .. } if record.value == bytes));
    }

    #[test]
    fn value_formats_table() {
        use crate::core::routing::{PayloadFormat as P, ValueFormat as F};
        type Case<'a> = (F, P, &'a [u8], Result<&'a str, &'a str>);
        let cases: &[Case] = &[
            (F::Envelope, P::Text, b"21.5 C", Ok(r#""payload":"21.5 C","#)),
            (F::Envelope, P::Text, b"say \"hi\"", Ok(r#""payload":"say \"hi\"","#)),
            (F::Envelope, P::Text, &[0xff, 0xfe], Err("not UTF-8")),
            (F::Envelope, P::Base64, &[0xff, 0x00, 0x01], Ok(r#""payload":"/wAB","#)),
            (F::Envelope, P::Json, b"[1]", Ok(r#""payload":[1],"#)),
        ];
        for (format, payload_format, payload, want) in cases {
            let mut r = route("r", "cmnd/#", "t");
            r.format = *format;
            r.payload = *payload_format;
            let m = msg("cmnd/dev/x", payload);
            match (build_one(&r, &m), want) {
                (Outcome::Record(record), Ok(want)) => {
                    let text = String::from_utf8(record.value).unwrap();
                    assert!(text.contains(want), "{text} should contain {want}");
                    serde_json::from_str::<Value>(&text).expect("the envelope is JSON");
                }
                (Outcome::DeadLetter { reason, .. }, Err(want)) => assert!(reason.contains(want), "{reason}"),
                (other, want) => panic!("{payload:?}: got {other:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn raw_format_keeps_the_payload_and_moves_the_context_to_headers() {
        let mut r = route("r", "cmnd/#", "t");
        r.format = crate::core::routing::ValueFormat::Raw;
        let bytes = [0xde, 0xad, 0xbe, 0xef];
        let m = msg("cmnd/f2-e4fd45f654be/bin", &bytes);
        let Outcome::Record(record) = build_one(&r, &m) else { panic!("raw takes any bytes") };
        assert_eq!(record.value, bytes);
        let header = |k: &str| {
            record.headers.iter().find(|(n, _)| *n == k).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(header(HEADER_MQTT_TOPIC).as_deref(), Some("cmnd/f2-e4fd45f654be/bin"));
        assert_eq!(header(HEADER_DEVICE_ID).as_deref(), Some("f2-e4fd45f654be"));
        assert_eq!(header(HEADER_RECEIVED_AT).as_deref(), Some("1684678444.928538"));
    }

    #[test]
    fn templated_topics_and_their_failures() {
        let mut r = route("r", "cmnd/#", "t");
        r.topic = crate::core::routing::template::TopicTemplate::parse("iot.{kind}").unwrap();
        r.device_id = crate::core::routing::DeviceIdRule::new(
            regex::Regex::new(r"^cmnd/(?P<device_id>[^/]+)/[^/]+/[^/]+/(?P<kind>[^/]+)").unwrap(),
            None,
            "unknown".into(),
        );
        r.dead_letter_topic = "iot.dlq".into();
        let m = msg(SPEC_TOPIC, SPEC_PAYLOAD.as_bytes());
        let Outcome::Record(record) = build_one(&r, &m) else { panic!("renders") };
        assert_eq!(record.topic, "iot.door-sensors");
        let m = msg("cmnd/dev/a/b/bad kind", b"{}");
        let Outcome::DeadLetter { record, reason, .. } = build_one(&r, &m) else { panic!("invalid name") };
        assert_eq!(record.topic, "iot.dlq");
        assert!(reason.contains("iot.bad kind"), "{reason}");
    }

    #[test]
    fn a_missing_key_can_dead_letter() {
        let mut r = route("r", "cmnd/#", "t");
        r.key = crate::core::routing::KeyRule::JsonPath {
            source: "$.serial".into(),
            query: Box::new(jsonpath_rust::parser::parse_json_path("$.serial").unwrap()),
            missing: crate::core::routing::KeyMissing::DeadLetter,
        };
        let m = msg("cmnd/dev/x", br#"{"other":1}"#);
        assert!(matches!(build_one(&r, &m), Outcome::DeadLetter { reason, .. } if reason.contains("$.serial")));
        let m = msg("cmnd/dev/x", br#"{"serial":"SN-9"}"#);
        assert!(matches!(build_one(&r, &m), Outcome::Record(record) if record.key.as_deref() == Some(&b"SN-9"[..])));
    }

    #[test]
    fn the_message_id_depends_on_topic_and_payload_only() {
        let a = message_id("cmnd/a", b"{}");
        assert_eq!(a.len(), 32);
        assert_eq!(a, message_id("cmnd/a", b"{}"), "a redelivered message gets the same id");
        assert_ne!(a, message_id("cmnd/b", b"{}"));
        assert_ne!(a, message_id("cmnd/a", b"{ }"));
        assert_ne!(message_id("ab", b"c"), message_id("a", b"bc"), "topic and payload are separated");
        let r = route("spec", "cmnd/#", "raw_iot_data");
        let m = msg("cmnd/a", b"{}");
        let Outcome::Record(record) = build_one(&r, &m) else { panic!() };
        assert!(record.headers.contains(&(HEADER_MESSAGE_ID.into(), a.into_bytes())));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            ".*".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::vec((".*", inner), 0..8).prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_json_payload_comes_out_of_the_envelope_unchanged(value in arb_json(), pretty in any::<bool>()) {
            let text = if pretty { serde_json::to_string_pretty(&value).unwrap() } else { value.to_string() };
            let r = route("spec", "cmnd/#", "raw_iot_data");
            let m = msg("cmnd/f2-e4fd45f654be/x", text.as_bytes());
            let Outcome::Record(record) = build_one(&r, &m) else {
                panic!("valid JSON must not be dead-lettered")
            };
            #[derive(serde::Deserialize)]
            struct Env<'a> { #[serde(borrow)] payload: &'a RawValue }
            let env: Env = serde_json::from_slice(&record.value).unwrap();
            // Byte-for-byte: the payload is spliced, never re-serialized (which could reorder keys or
            // round floats).
            prop_assert_eq!(env.payload.get(), text.as_str());
        }
    }
}
