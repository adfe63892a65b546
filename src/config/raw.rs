//! The configuration as a user writes it: serde structs with their defaults. Field docs are the
//! reference for `routes.yaml`; `routes.yaml` in the repository shows every key with its default.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use super::security::{RawKafkaSasl, RawKafkaTls, RawMqttTls};
use crate::core::encoding::EncodingKind;
use crate::core::routing::{KeyMissing, PayloadFormat, ValueFormat};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub mqtt: RawMqtt,
    pub kafka: RawKafka,
    /// The routes, in the order they are applied. Defaults to the spec's single route.
    pub routes: Vec<RawRoute>,
    pub shutdown: RawShutdown,
    pub log: RawLog,
    pub reload: RawReload,
    pub http: RawHttp,
    pub replicas: RawReplicas,
    pub schema_registry: RawSchemaRegistry,
    pub spool: super::spool::RawSpool,
    /// Kafka → MQTT routes (see `crate::core::downlink`). None by default.
    pub downlinks: Vec<super::downlink::RawDownlink>,
}

/// `schema_registry`: a Confluent-compatible Schema Registry (its REST API), for the routes whose
/// `encoding` is avro, protobuf or json_schema.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSchemaRegistry {
    /// `http://host:8081` or `https://...`. Env: `SCHEMA_REGISTRY_URL`.
    pub url: Option<String>,
    /// Basic auth. Env: `SCHEMA_REGISTRY_USERNAME`.
    pub username: Option<StringLike>,
    /// Env: `SCHEMA_REGISTRY_PASSWORD`. Never logged.
    pub password: Option<Secret>,
    /// A file holding the password. Env: `SCHEMA_REGISTRY_PASSWORD_FILE`.
    pub password_file: Option<String>,
    /// For `https://` registries: CA, client certificate and key, version floor (as `mqtt.tls`).
    pub tls: RawMqttTls,
    /// How often `version: latest` is looked up again, in seconds (0: only on reload).
    pub refresh_secs: u64,
    /// How long one request to the registry may take, in seconds.
    pub timeout_secs: u64,
}

impl Default for RawSchemaRegistry {
    fn default() -> Self {
        Self {
            url: None,
            username: None,
            password: None,
            password_file: None,
            tls: RawMqttTls::default(),
            refresh_secs: 60,
            timeout_secs: 10,
        }
    }
}

/// `routes[].encoding`: a shorthand (`avro`) or the whole form.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum RawEncoding {
    Kind(EncodingKind),
    Full(RawEncodingSpec),
}

/// `routes[].encoding` in full.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawEncodingSpec {
    /// `json` (default), `avro`, `protobuf` or `json_schema`.
    #[serde(rename = "type")]
    pub kind: EncodingKind,
    /// The registry subject (default `{topic}-value`, the TopicNameStrategy); the topic template's
    /// placeholders and `{topic}` (the record's Kafka topic) are allowed.
    #[serde(default)]
    pub subject: Option<String>,
    /// `latest` (default) or a version number.
    #[serde(default)]
    pub version: Option<StringLike>,
    /// Protobuf: the message to encode, by full or simple name (default: the schema's first).
    #[serde(default)]
    pub message: Option<String>,
    /// A schema file registered under the subject when the registry has none there (development
    /// setups); path relative to this file's directory.
    #[serde(default)]
    pub schema_file: Option<String>,
}

impl RawEncoding {
    pub fn spec(&self) -> RawEncodingSpec {
        match self {
            RawEncoding::Kind(kind) => {
                RawEncodingSpec { kind: *kind, subject: None, version: None, message: None, schema_file: None }
            }
            RawEncoding::Full(spec) => spec.clone(),
        }
    }
}

/// A string names the type; a map is the whole form, read with its own unknown-key checks (an untagged
/// enum would only say that nothing matched).
impl<'de> Deserialize<'de> for RawEncoding {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawEncoding;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("json, avro, protobuf, json_schema, or a map with `type`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawEncoding, E> {
                EncodingKind::deserialize(serde::de::value::StrDeserializer::<E>::new(v)).map(RawEncoding::Kind)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawEncoding, A::Error> {
                RawEncodingSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(RawEncoding::Full)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Ordered scale-out (see `crate::core::routing::replicas`): `count` replicas each keep the devices whose hash falls in
/// their share.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawReplicas {
    /// How many replicas split the devices; 1 (the default) means this one takes every device.
    pub count: u32,
    /// This replica's number, from 0 to count - 1; a name ending in `-<n>` (a StatefulSet pod name) is
    /// read as n. Env: `GATEWAY_REPLICAS__INDEX`.
    pub index: StringLike,
}

impl Default for RawReplicas {
    fn default() -> Self {
        Self { count: 1, index: StringLike("0".into()) }
    }
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            mqtt: RawMqtt::default(),
            kafka: RawKafka::default(),
            routes: vec![RawRoute::spec()],
            shutdown: RawShutdown::default(),
            log: RawLog::default(),
            reload: RawReload::default(),
            http: RawHttp::default(),
            replicas: RawReplicas::default(),
            schema_registry: RawSchemaRegistry::default(),
            spool: super::spool::RawSpool::default(),
            downlinks: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMqtt {
    /// `host:port`, `host`, or a URL `mqtt://host:port` / `mqtts://host:port` (TLS). Env: `MQTT_BROKER`.
    pub broker: String,
    /// MQTT client id. Two clients with one id disconnect each other: give every replica its own.
    pub client_id: StringLike,
    /// Env: `MQTT_USERNAME`.
    pub username: Option<StringLike>,
    /// Env: `MQTT_PASSWORD`. Never logged.
    pub password: Option<Secret>,
    /// A file holding the password (one trailing newline trimmed). Env: `MQTT_PASSWORD_FILE`.
    pub password_file: Option<String>,
    /// TLS for `mqtts://` and `wss://` brokers: CA, client certificate, version floor.
    pub tls: RawMqttTls,
    /// Keep-alive interval (spec: 60 s).
    pub keep_alive_secs: u64,
    /// Start without a session on the broker (spec: true). `false` makes the broker keep subscriptions
    /// and queue QoS 1/2 messages while the gateway is away.
    pub clean_session: bool,
    /// Largest MQTT packet accepted or sent. A larger incoming packet closes the connection, so keep this
    /// at least the broker's `max_packet_size`.
    pub max_packet_size_bytes: usize,
    /// Seconds to wait for the broker's CONNACK.
    pub connect_timeout_secs: u64,
    /// First delay before reconnecting; doubles per failed attempt, with jitter.
    pub reconnect_min_delay_ms: u64,
    /// Upper bound of the reconnect delay.
    pub reconnect_max_delay_ms: u64,
    /// Bytes of messages read from MQTT and not yet taken by the pipeline, at most (payload, topic and
    /// 128 bytes of overhead each). When full, the gateway stops reading the connection until there is
    /// room: the broker holds the rest (within its own queue limits) instead of the gateway dropping it.
    pub buffer_bytes: usize,
    /// Messages received and not yet acknowledged (QoS 1/2) or delivered (QoS 0), at most: the window
    /// between MQTT and Kafka. Keep it at or above the broker's in-flight limit for the gateway.
    pub max_unacked_messages: usize,
    /// Share the subscriptions among every gateway with this group name (`$share/<group>/<filter>`): the
    /// broker gives each message to one of them. Per-device order across replicas is then not kept.
    pub shared_group: Option<String>,
    /// The protocol version: `5` (or "5", "5.0") or "3.1.1". Env: `GATEWAY_MQTT__PROTOCOL`.
    pub protocol: StringLike,
    /// MQTT 5 only: how long the broker keeps the session after the connection ends. Unset: as long as
    /// it will when `clean_session` is false (a 3.1.1 persistent session), 0 when it is true.
    pub session_expiry_secs: Option<u32>,
    /// At a high QoS 0 rate, wait up to this many microseconds for messages to gather before reading the
    /// connection again: fewer wake-ups per message, at most this much added latency. Only while a wait
    /// gathers at least 4 messages at the rate just seen (4,000 msg/s at 1000 µs); never for QoS 1/2.
    /// 0 turns it off.
    pub read_coalesce_us: u64,
}

impl Default for RawMqtt {
    fn default() -> Self {
        Self {
            broker: "localhost:1883".into(),
            client_id: StringLike("mqtt-kafka-gateway".into()),
            username: None,
            password: None,
            password_file: None,
            tls: RawMqttTls::default(),
            keep_alive_secs: 60,
            clean_session: true,
            max_packet_size_bytes: 1024 * 1024,
            connect_timeout_secs: 10,
            reconnect_min_delay_ms: 500,
            reconnect_max_delay_ms: 30_000,
            buffer_bytes: 32 * 1024 * 1024,
            max_unacked_messages: 10_000,
            shared_group: None,
            protocol: StringLike("3.1.1".into()),
            session_expiry_secs: None,
            read_coalesce_us: 1000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawKafka {
    /// Comma-separated `host:port` list. Env: `KAFKA_BOOTSTRAP_SERVERS`.
    pub bootstrap_servers: String,
    /// `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    pub compression: String,
    /// How long the producer waits to fill a batch (librdkafka `linger.ms`). 1 ms keeps the median
    /// latency at low rates near 1 ms; under load batches fill anyway (five requests in flight).
    pub linger_ms: u64,
    /// Largest batch per partition (librdkafka `batch.size`).
    pub batch_size_bytes: u64,
    /// How long a record may take to be acknowledged, retries included, before librdkafka gives up on it
    /// (`message.timeout.ms`). 0, the default, means never: a record waits for Kafka to come back. A record
    /// given up on is produced again (QoS 1/2) rather than lost.
    pub delivery_timeout_ms: u64,
    /// Records waiting in the producer, at most (librdkafka `queue.buffering.max.messages`).
    pub queue_max_messages: u64,
    /// Bytes waiting in the producer, at most, in KiB (librdkafka `queue.buffering.max.kbytes`).
    pub queue_max_kbytes: u64,
    /// Appended to a route's topic to name its dead-letter topic when the route sets none.
    pub dead_letter_suffix: String,
    /// `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL` (librdkafka `security.protocol`). Unset: SASL_SSL
    /// when `sasl` is set, SSL when `tls` is, PLAINTEXT otherwise.
    pub security_protocol: Option<String>,
    /// SASL authentication: mechanism, username, password (or password_file).
    pub sasl: RawKafkaSasl,
    /// TLS for the SSL and SASL_SSL protocols: CA, client certificate and key.
    pub tls: RawKafkaTls,
    /// Any librdkafka producer property, passed through as given and applied last
    /// (e.g. `security.protocol: SASL_SSL`). See librdkafka's CONFIGURATION.md.
    pub properties: BTreeMap<String, StringLike>,
}

impl Default for RawKafka {
    fn default() -> Self {
        Self {
            bootstrap_servers: "localhost:9092".into(),
            compression: "lz4".into(),
            linger_ms: 1,
            batch_size_bytes: 1_000_000,
            delivery_timeout_ms: 0,
            queue_max_messages: 100_000,
            queue_max_kbytes: 64 * 1024,
            dead_letter_suffix: ".dlq".into(),
            security_protocol: None,
            sasl: RawKafkaSasl::default(),
            tls: RawKafkaTls::default(),
            properties: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// A unique name, used in logs, metrics and the `route` header.
    pub name: String,
    /// The MQTT topic filter (`+` one level, `#` the rest). Env for the first route: `MQTT_TOPIC_PATTERN`.
    pub filter: String,
    /// Filters subscribed instead when the broker refuses `filter` (SUBACK failure, e.g. an ACL).
    #[serde(default)]
    pub fallback_filters: Vec<String>,
    /// MQTT QoS of the subscription: 0, 1 or 2.
    #[serde(default)]
    pub qos: u8,
    /// The Kafka topic. Env for the first route: `KAFKA_TOPIC`.
    pub topic: String,
    /// Where messages that cannot be delivered go (default: `<topic>` + `kafka.dead_letter_suffix`).
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// How the device id is read from the MQTT topic.
    #[serde(default)]
    pub device_id: RawDeviceId,
    /// The Kafka key: `device_id` (default), `none`, or a JSONPath into the payload such as `$.serial`.
    #[serde(default = "default_key")]
    pub key: String,
    /// When a JSONPath key selects nothing: `device_id` (default), `none` (no key) or `dead_letter`.
    #[serde(default = "default_key_missing")]
    pub key_missing: KeyMissing,
    /// The record value: `envelope` (the spec's record, default) or `raw` (the payload bytes unchanged,
    /// with topic, device id and receive time in headers).
    #[serde(default = "default_format")]
    pub format: ValueFormat,
    /// For `envelope`: `json` (validated and embedded, default), `text` (embedded as a JSON string) or
    /// `base64`.
    #[serde(default = "default_payload")]
    pub payload: PayloadFormat,
    /// A JSON Schema file the payload must conform to (path relative to this file's directory); a
    /// message that does not is dead-lettered with every violation in `dlq_reason`.
    #[serde(default)]
    pub schema: Option<String>,
    /// At most this many records per second to Kafka for this route.
    #[serde(default)]
    pub rate_limit: Option<RawRateLimit>,
    /// How the value is written: `json` (default), or by a Schema Registry schema: `avro`, `protobuf`,
    /// `json_schema` (shorthand), or `{type, subject, version, message, schema_file}`.
    #[serde(default)]
    pub encoding: Option<RawEncoding>,
    /// A downlink may publish where this route subscribes (see `downlinks[].allow_loop`).
    #[serde(default)]
    pub allow_loop: bool,
}

/// `routes[].rate_limit`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// The sustained rate (fractions allowed: 0.5 is one record every 2 s).
    pub messages_per_sec: f64,
    /// Records that may go at once after a quiet spell (default: one second's worth, at least 1).
    #[serde(default)]
    pub burst: Option<u32>,
    /// A QoS 0 record that would wait longer than this for its turn is dropped (and counted) instead.
    #[serde(default = "default_qos0_max_delay_ms")]
    pub qos0_max_delay_ms: u64,
}

fn default_qos0_max_delay_ms() -> u64 {
    1000
}

fn default_key_missing() -> KeyMissing {
    KeyMissing::DeviceId
}

fn default_format() -> ValueFormat {
    ValueFormat::Envelope
}

fn default_payload() -> PayloadFormat {
    PayloadFormat::Json
}

fn default_key() -> String {
    "device_id".into()
}

impl RawRoute {
    /// The spec's route: `cmnd/#` (fallback `cmnd/+/+/+/+`) to `raw_iot_data`, QoS 0, keyed by device id.
    pub fn spec() -> Self {
        Self {
            name: "iot-commands".into(),
            filter: "cmnd/#".into(),
            fallback_filters: vec!["cmnd/+/+/+/+".into()],
            qos: 0,
            topic: "raw_iot_data".into(),
            dead_letter_topic: None,
            device_id: RawDeviceId::default(),
            key: default_key(),
            key_missing: default_key_missing(),
            format: default_format(),
            payload: default_payload(),
            schema: None,
            rate_limit: None,
            encoding: None,
            allow_loop: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDeviceId {
    /// A regex over the MQTT topic with a named group `device_id`. Default: an F2 MAC (`f2-` and 12 hex
    /// digits) standing as a whole topic level.
    pub regex: String,
    /// Tried when `regex` does not match. Default: the second topic level (the one after `cmnd/`).
    pub fallback_regex: Option<String>,
    /// Used when neither matches.
    pub default: String,
}

impl Default for RawDeviceId {
    fn default() -> Self {
        Self {
            regex: r"(?:^|/)(?P<device_id>f2-[0-9a-fA-F]{12})(?:/|$)".into(),
            fallback_regex: Some(r"^[^/]+/(?P<device_id>[^/]+)".into()),
            default: "unknown".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawShutdown {
    /// On SIGTERM/SIGINT, how long to wait for accepted messages to reach Kafka before exiting anyway.
    pub grace_period_secs: u64,
}

impl Default for RawShutdown {
    fn default() -> Self {
        Self { grace_period_secs: 30 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// A `tracing` filter such as `info` or `info,mqtt_kafka_gateway=debug`. `RUST_LOG` wins when set.
    pub level: String,
    /// `text` or `json`. `LOG_FORMAT` wins when set.
    pub format: String,
    /// Seconds between the periodic statistics line (0: never).
    pub stats_interval_secs: u64,
}

impl Default for RawLog {
    fn default() -> Self {
        Self { level: "info".into(), format: "text".into(), stats_interval_secs: 60 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawReload {
    /// Watch the file's directory and apply edits without a restart (routes only; see the README).
    pub watch: bool,
    /// Quiet time after the last file event before the file is read: a burst of writes is read once, whole.
    pub debounce_ms: u64,
    /// Re-read the file this often even without events, as a safety net (0: never). SIGHUP re-reads at once.
    pub poll_interval_secs: u64,
}

impl Default for RawReload {
    fn default() -> Self {
        Self { watch: true, debounce_ms: 250, poll_interval_secs: 30 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttp {
    /// Serve `/metrics` (Prometheus), `/healthz` (liveness) and `/readyz` (readiness).
    pub enabled: bool,
    /// `address:port` to listen on. Env: `GATEWAY_HTTP__LISTEN`. Port 0 picks a free one (logged).
    pub listen: String,
}

impl Default for RawHttp {
    fn default() -> Self {
        Self { enabled: true, listen: super::DEFAULT_HTTP_LISTEN.into() }
    }
}

/// A string that also accepts a YAML/env number or boolean (`password: 1234`, `linger.ms: 5`): env values
/// are parsed TOML-style, so a numeric password would otherwise be a type error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct StringLike(pub String);

impl<'de> Deserialize<'de> for StringLike {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Any {
            S(String),
            I(i64),
            U(u64),
            F(f64),
            B(bool),
        }
        Ok(StringLike(match Any::deserialize(d)? {
            Any::S(s) => s,
            Any::I(i) => i.to_string(),
            Any::U(u) => u.to_string(),
            Any::F(f) => f.to_string(),
            Any::B(b) => b.to_string(),
        }))
    }
}

/// A secret: printed as `***` by `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(StringLike);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(StringLike(s.into()))
    }
    pub fn expose(&self) -> &str {
        &self.0 .0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}
