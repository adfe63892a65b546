//! Configuration: `routes.yaml` merged with environment variables, then checked into types that cannot
//! hold an invalid value.
//!
//! Precedence, lowest first: built-in defaults (the `Default` impls below), the YAML file, `GATEWAY_*`
//! variables, then the spec's variables (`MQTT_BROKER`, `KAFKA_BOOTSTRAP_SERVERS`, `MQTT_USERNAME`,
//! `MQTT_PASSWORD`, `KAFKA_TOPIC`, `MQTT_TOPIC_PATTERN`).
//!
//! The prefix rule: `GATEWAY_<SECTION>__<KEY>` sets `<section>.<key>`, lower-cased, `__` separating levels
//! (`GATEWAY_MQTT__CLIENT_ID=edge-1`, `GATEWAY_SHUTDOWN__GRACE_PERIOD_SECS=10`). Under
//! `kafka.properties` a `_` becomes a `.`, because librdkafka property names use dots
//! (`GATEWAY_KAFKA__PROPERTIES__COMPRESSION_TYPE=zstd` sets `compression.type`). Lists (the routes) cannot
//! be indexed from the environment; `KAFKA_TOPIC` and `MQTT_TOPIC_PATTERN` set the first route's topic and
//! filter, as in the spec.
//!
//! Loading happens in two stages: raw structs straight from serde, then [`Config`] with compiled regexes,
//! parsed JSONPath and checked filters. Every problem found is reported, each with the file, line, key
//! path and a hint.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::providers::Serialized;
use figment::value::{Dict, Map, Value as FValue};
use figment::{Figment, Metadata, Profile, Provider};
use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize};

use crate::filter;
use crate::route::{DeviceIdRule, KeyMissing, KeyRule, PayloadFormat, Route, RouteTable, ValueFormat};
use crate::template::TopicTemplate;
use crate::topic_name::{check_kafka_topic, kafka_topic_char};
use crate::yaml_index::{Position, YamlIndex};

pub const DEFAULT_CONFIG_PATH: &str = "routes.yaml";
/// Prefix of the environment variables that override any scalar key.
pub const ENV_PREFIX: &str = "GATEWAY_";

// ---------------------------------------------------------------------------------------------------
// Raw configuration: what a user writes. Field docs are the reference for `routes.yaml`.
// ---------------------------------------------------------------------------------------------------

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
}

impl Default for RawMqtt {
    fn default() -> Self {
        Self {
            broker: "localhost:1883".into(),
            client_id: StringLike("mqtt-kafka-gateway".into()),
            username: None,
            password: None,
            keep_alive_secs: 60,
            clean_session: true,
            max_packet_size_bytes: 1024 * 1024,
            connect_timeout_secs: 10,
            reconnect_min_delay_ms: 500,
            reconnect_max_delay_ms: 30_000,
            buffer_bytes: 32 * 1024 * 1024,
            max_unacked_messages: 10_000,
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

// ---------------------------------------------------------------------------------------------------
// Validated configuration.
// ---------------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub source: PathBuf,
    pub mqtt: MqttSettings,
    pub kafka: KafkaSettings,
    pub routes: RouteTable,
    pub shutdown_grace: Duration,
    pub log: RawLog,
    pub reload: RawReload,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub client_id: String,
    pub credentials: Option<(String, Secret)>,
    pub keep_alive: Duration,
    pub clean_session: bool,
    pub max_packet_size: usize,
    pub connect_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub buffer_bytes: usize,
    pub max_unacked_messages: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    pub bootstrap_servers: String,
    /// librdkafka properties, the gateway's own choices first, then the user's `properties`.
    pub properties: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------------------------------
// Problems.
// ---------------------------------------------------------------------------------------------------

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path such as `routes[1].device_id.regex`; empty for the whole file.
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
    /// Where the value came from: the file (with a position when known) or an environment variable.
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File { path: PathBuf, position: Option<Position> },
    Environment,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::File { path, position: Some(p) } => write!(f, "{}:{}:{}: ", path.display(), p.line, p.column)?,
            Origin::File { path, position: None } => write!(f, "{}: ", path.display())?,
            Origin::Environment => f.write_str("environment: ")?,
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n    hint: {h}")?;
        }
        Ok(())
    }
}

/// Everything wrong with a configuration, all at once.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(f, "{}: {} problem{} found", self.file.display(), n, if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------
// Loading.
// ---------------------------------------------------------------------------------------------------

/// Where the configuration's environment comes from; tests pass a map instead of the process environment.
pub trait EnvSource {
    fn get(&self, name: &str) -> Option<String>;
    fn all(&self) -> Vec<(String, String)>;
}

/// The process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn all(&self) -> Vec<(String, String)> {
        std::env::vars().collect()
    }
}

impl EnvSource for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }
    fn all(&self) -> Vec<(String, String)> {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Loads and checks the file at `path` with the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with_env(path, &ProcessEnv)
}

/// Loads and checks the file at `path`, overridden by `env`.
pub fn load_with_env(path: &Path, env: &dyn EnvSource) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        problems: vec![Problem {
            path: String::new(),
            message: format!("cannot read the configuration file: {e}"),
            hint: Some(format!(
                "pass the file with --config PATH (default ./{DEFAULT_CONFIG_PATH}); the repository's routes.yaml is a starting point"
            )),
            origin: Origin::File { path: path.to_path_buf(), position: None },
        }],
    })?;
    load_from_str(path, &text, env)
}

/// Checks configuration text as if it had been read from `path`.
pub fn load_from_str(path: &Path, text: &str, env: &dyn EnvSource) -> Result<Config, ConfigError> {
    let fail = |problems| ConfigError { file: path.to_path_buf(), problems };
    let file_problem = |key: &str, message: String, hint: Option<String>, position: Option<Position>| Problem {
        path: key.to_string(),
        message,
        hint,
        origin: Origin::File { path: path.to_path_buf(), position },
    };

    // Syntax first: yaml_serde gives line and column.
    let document: yaml_serde::Value = match yaml_serde::from_str(text) {
        Ok(yaml_serde::Value::Null) => yaml_serde::Value::Mapping(Default::default()),
        Ok(v) => v,
        Err(e) => {
            let position = e.location().map(|l| Position { line: l.line(), column: l.column() });
            return Err(fail(vec![file_problem(
                "",
                format!("YAML syntax error: {e}"),
                Some("check indentation and quoting; quote regexes and filters that contain ': ', '#' or '{'".into()),
                position,
            )]));
        }
    };
    if !document.is_mapping() {
        return Err(fail(vec![file_problem(
            "",
            "the file must be a mapping with keys such as `mqtt`, `kafka` and `routes`".into(),
            None,
            Some(Position { line: 1, column: 1 }),
        )]));
    }
    let index = YamlIndex::build(text);

    let figment = Figment::new()
        .merge(YamlDocument { path: path.to_path_buf(), document })
        .merge(prefixed_env(env))
        .merge(spec_env(env));
    let merged: Dict = match figment.extract::<Dict>() {
        Ok(d) => d,
        Err(e) => return Err(fail(vec![file_problem("", e.to_string(), None, None)])),
    };

    let locate = |key: &str| -> Origin {
        let from_env = figment
            .find_metadata(&figment_path(key))
            .is_some_and(|m| m.source.as_ref().is_none_or(|s| !matches!(s, figment::Source::File(_))));
        if from_env {
            Origin::Environment
        } else {
            Origin::File { path: path.to_path_buf(), position: index.locate(key) }
        }
    };
    let mut problems = Vec::new();
    let raw = deserialize_sections(&merged, &locate, &mut problems);
    let Some(mut raw) = raw else {
        return Err(fail(problems));
    };

    // The spec's two route variables: lists cannot be indexed from the environment (Figment#113).
    let mut env_route_overrides = false;
    if let Some(first) = raw.routes.first_mut() {
        if let Some(topic) = env.get("KAFKA_TOPIC").filter(|s| !s.is_empty()) {
            first.topic = topic;
            env_route_overrides = true;
        }
        if let Some(pattern) = env.get("MQTT_TOPIC_PATTERN").filter(|s| !s.is_empty()) {
            if pattern != first.filter {
                // The fallbacks were written for the old filter and would subscribe something unrelated.
                first.filter = pattern;
                first.fallback_filters.clear();
                env_route_overrides = true;
            }
        }
    }
    let config = validate(path, raw, &|key: &str| {
        if env_route_overrides && (key == "routes[0].topic" || key == "routes[0].filter") {
            Origin::Environment
        } else {
            locate(key)
        }
    }, &mut problems);
    match config {
        Some(c) if problems.is_empty() => Ok(c),
        _ => Err(fail(problems)),
    }
}

/// `routes[1].device_id` → `routes.1.device_id`, figment's spelling.
fn figment_path(key: &str) -> String {
    key.replace('[', ".").replace(']', "")
}

/// The parsed YAML document as a figment provider. We parse the text ourselves (instead of
/// `figment::providers::Yaml::file`) so that the text indexed for line numbers, the text checked and the
/// text applied are one and the same, even if the file changes underneath, and because figment's YAML
/// support is built on the archived serde_yaml.
struct YamlDocument {
    path: PathBuf,
    document: yaml_serde::Value,
}

impl Provider for YamlDocument {
    fn metadata(&self) -> Metadata {
        Metadata::from("configuration file", figment::Source::File(self.path.clone()))
    }
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Serialized::defaults(&self.document).data()
    }
}

/// `GATEWAY_A__B=v` → `a.b = v`; under `kafka.properties`, `_` becomes `.`.
fn prefixed_env(env: &dyn EnvSource) -> Serialized<Dict> {
    let mut dict = Dict::new();
    for (name, value) in env.all() {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
        let mut parts: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        if parts.iter().any(String::is_empty) {
            continue;
        }
        if parts.len() >= 3 && parts[0] == "kafka" && parts[1] == "properties" {
            let prop = parts[2..].join(".").replace('_', ".");
            parts.truncate(2);
            parts.push(prop);
        }
        let parsed: FValue = value.parse().unwrap_or_else(|_| FValue::from(value.clone()));
        let nested = parts.iter().rev().fold(parsed, |acc, key| {
            let mut d = Dict::new();
            d.insert(key.clone(), acc);
            FValue::from(d)
        });
        if let FValue::Dict(_, d) = nested {
            dict = merge_dicts(dict, d);
        }
    }
    Serialized::defaults(dict)
}

fn merge_dicts(mut base: Dict, other: Dict) -> Dict {
    for (k, v) in other {
        match (base.remove(&k), v) {
            (Some(FValue::Dict(_, a)), FValue::Dict(_, b)) => {
                base.insert(k, FValue::from(merge_dicts(a, b)));
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
    base
}

/// The spec's variables, taken as plain strings (a password of digits stays a string).
fn spec_env(env: &dyn EnvSource) -> Serialized<Dict> {
    const VARS: [(&str, &str, &str); 4] = [
        ("MQTT_BROKER", "mqtt", "broker"),
        ("KAFKA_BOOTSTRAP_SERVERS", "kafka", "bootstrap_servers"),
        ("MQTT_USERNAME", "mqtt", "username"),
        ("MQTT_PASSWORD", "mqtt", "password"),
    ];
    let mut dict = Dict::new();
    for (var, section, key) in VARS {
        if let Some(value) = env.get(var).filter(|v| !v.is_empty()) {
            let mut inner = Dict::new();
            inner.insert(key.to_string(), FValue::from(value));
            let mut outer = Dict::new();
            outer.insert(section.to_string(), FValue::from(inner));
            dict = merge_dicts(dict, outer);
        }
    }
    Serialized::defaults(dict)
}

fn deserialize_sections(
    merged: &Dict,
    locate: &dyn Fn(&str) -> Origin,
    problems: &mut Vec<Problem>,
) -> Option<RawConfig> {
    const SECTIONS: [&str; 6] = ["mqtt", "kafka", "routes", "shutdown", "log", "reload"];
    for key in merged.keys() {
        if !SECTIONS.contains(&key.as_str()) {
            problems.push(Problem {
                path: key.clone(),
                message: format!("unknown key `{key}`"),
                hint: Some(format!("top-level keys are: {}", SECTIONS.join(", "))),
                origin: locate(key),
            });
        }
    }
    let mut raw = RawConfig::default();
    let before = problems.len();
    macro_rules! section {
        ($name:literal, $field:ident) => {
            if let Some(v) = merged.get($name) {
                if let Some(parsed) = from_value(v, $name, locate, problems) {
                    raw.$field = parsed;
                }
            }
        };
    }
    section!("mqtt", mqtt);
    section!("kafka", kafka);
    section!("shutdown", shutdown);
    section!("log", log);
    section!("reload", reload);
    if let Some(routes) = merged.get("routes") {
        match routes {
            FValue::Array(_, items) => {
                raw.routes = items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, item)| from_value(item, &format!("routes[{i}]"), locate, problems))
                    .collect();
            }
            _ => problems.push(Problem {
                path: "routes".into(),
                message: "must be a list of routes".into(),
                hint: Some("start each route with `- name: ...`".into()),
                origin: locate("routes"),
            }),
        }
    }
    (problems.len() == before).then_some(raw)
}

fn from_value<T: for<'de> Deserialize<'de>>(
    value: &FValue,
    at: &str,
    locate: &dyn Fn(&str) -> Origin,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let path = if inner == "." || inner.is_empty() {
                at.to_string()
            } else if inner.starts_with('[') {
                format!("{at}{inner}")
            } else {
                format!("{at}.{inner}")
            };
            let message = e.into_inner().to_string();
            let hint = if message.contains("found `buffer_messages`") {
                Some("mqtt.buffer_messages was replaced by mqtt.buffer_bytes (default 33554432): the buffer is bounded by bytes, and a full buffer now pauses reading instead of dropping QoS 0 messages".to_string())
            } else if message.contains("unknown field") {
                Some("remove the key or fix its spelling; the README lists every key".to_string())
            } else if message.contains("missing field") {
                Some("add the key; see the README's configuration reference".to_string())
            } else {
                None
            };
            problems.push(Problem { path: path.clone(), message, hint, origin: locate(&path) });
            None
        }
    }
}

fn validate(
    path: &Path,
    raw: RawConfig,
    locate: &dyn Fn(&str) -> Origin,
    problems: &mut Vec<Problem>,
) -> Option<Config> {
    let mut problem = |key: &str, message: String, hint: Option<&str>| {
        problems.push(Problem { path: key.into(), message, hint: hint.map(Into::into), origin: locate(key) });
    };

    // MQTT.
    let m = &raw.mqtt;
    let broker = parse_broker(&m.broker).map_err(|e| problem("mqtt.broker", e, Some("use host:port, or mqtt://host:port / mqtts://host:port")));
    if m.client_id.0.is_empty() || m.client_id.0.len() > 65_535 {
        problem("mqtt.client_id", "must be a non-empty string".into(), None);
    }
    if m.keep_alive_secs < 5 || m.keep_alive_secs > 65_535 {
        problem("mqtt.keep_alive_secs", format!("{} is out of range", m.keep_alive_secs), Some("use 5 to 65535 seconds (spec: 60)"));
    }
    if m.max_packet_size_bytes < 1024 || m.max_packet_size_bytes > 268_435_455 {
        problem("mqtt.max_packet_size_bytes", format!("{} is out of range", m.max_packet_size_bytes), Some("use 1024 to 268435455 (MQTT's limit); default 1048576"));
    }
    if m.reconnect_min_delay_ms == 0 || m.reconnect_min_delay_ms > m.reconnect_max_delay_ms {
        problem("mqtt.reconnect_min_delay_ms", "must be positive and not above reconnect_max_delay_ms".into(), None);
    }
    if m.buffer_bytes < 1024 || m.buffer_bytes > 1 << 40 {
        problem("mqtt.buffer_bytes", format!("{} is out of range", m.buffer_bytes), Some("use 1024 bytes to 1 TiB; default 33554432 (32 MiB)"));
    }
    if m.max_unacked_messages == 0 || m.max_unacked_messages > 10_000_000 {
        problem("mqtt.max_unacked_messages", format!("{} is out of range", m.max_unacked_messages), Some("use 1 to 10000000"));
    }
    if m.connect_timeout_secs > 3600 || m.reconnect_max_delay_ms > 3_600_000 {
        problem("mqtt.reconnect_max_delay_ms", "connect timeout and reconnect delays must stay within an hour".into(), None);
    }
    if raw.shutdown.grace_period_secs > 86_400 {
        problem("shutdown.grace_period_secs", format!("{} is out of range", raw.shutdown.grace_period_secs), Some("use 0 to 86400"));
    }
    if raw.reload.debounce_ms > 60_000 || raw.reload.poll_interval_secs > 86_400 {
        problem("reload", "debounce_ms must be at most 60000 and poll_interval_secs at most 86400".into(), None);
    }
    if m.password.is_some() && m.username.is_none() {
        problem("mqtt.password", "a password needs a username".into(), Some("set mqtt.username or MQTT_USERNAME"));
    }

    // Kafka.
    let k = &raw.kafka;
    if k.bootstrap_servers.trim().is_empty() {
        problem("kafka.bootstrap_servers", "must not be empty".into(), Some("e.g. localhost:9092"));
    }
    if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&k.compression.as_str()) {
        problem("kafka.compression", format!("unknown codec `{}`", k.compression), Some("use none, gzip, snappy, lz4 or zstd"));
    }
    if !k.dead_letter_suffix.chars().all(kafka_topic_char) {
        problem("kafka.dead_letter_suffix", "may only contain letters, digits, '.', '_' and '-'".into(), None);
    }
    let mut properties: BTreeMap<String, String> = BTreeMap::from([
        ("bootstrap.servers".into(), k.bootstrap_servers.clone()),
        ("enable.idempotence".into(), "true".into()),
        ("acks".into(), "all".into()),
        ("partitioner".into(), "murmur2_random".into()),
        ("compression.type".into(), k.compression.clone()),
        ("linger.ms".into(), k.linger_ms.to_string()),
        ("batch.size".into(), k.batch_size_bytes.to_string()),
        ("message.timeout.ms".into(), k.delivery_timeout_ms.to_string()),
        ("queue.buffering.max.messages".into(), k.queue_max_messages.to_string()),
        ("queue.buffering.max.kbytes".into(), k.queue_max_kbytes.to_string()),
        ("client.id".into(), raw.mqtt.client_id.0.clone()),
    ]);
    for (key, value) in &k.properties {
        properties.insert(key.clone(), value.0.clone());
    }

    // Routes.
    if raw.routes.is_empty() {
        problem("routes", "no routes: the gateway would do nothing".into(), Some("add at least one route; the shipped routes.yaml has the spec's"));
    }
    let mut routes = Vec::new();
    // Routes that share a pattern share its compiled program: a thousand routes with the default device
    // regexes would otherwise hold a thousand copies (about 80 KiB each).
    let mut regexes: HashMap<String, Regex> = HashMap::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        if r.name.trim().is_empty() {
            problem(&format!("{at}.name"), "must not be empty".into(), None);
        }
        if let Some(j) = raw.routes[..i].iter().position(|o| o.name == r.name) {
            problem(&format!("{at}.name"), format!("`{}` is already the name of routes[{j}]", r.name), Some("route names must be unique"));
        }
        if let Err(e) = filter::validate(&r.filter) {
            problem(&format!("{at}.filter"), format!("invalid MQTT filter `{}`: {e}", r.filter), None);
        }
        for (j, f) in r.fallback_filters.iter().enumerate() {
            if let Err(e) = filter::validate(f) {
                problem(&format!("{at}.fallback_filters[{j}]"), format!("invalid MQTT filter `{f}`: {e}"), None);
            }
        }
        if r.qos > 2 {
            problem(&format!("{at}.qos"), format!("{} is not an MQTT QoS", r.qos), Some("use 0, 1 or 2"));
        }
        let topic = TopicTemplate::parse(&r.topic).map_err(|e| {
            problem(&format!("{at}.topic"), e, Some("a Kafka topic name, or a template such as 'iot.{kind}' with {N} for MQTT topic level N, {device_id}, or a named group of device_id.regex"))
        });
        // A dead-letter topic must not depend on the message: a templated topic's default is its literal
        // prefix plus the suffix (`iot.{kind}` → `iot.dlq`).
        let dead_letter_topic = match (&r.dead_letter_topic, &topic) {
            (Some(t), _) => t.clone(),
            (None, Ok(t)) if t.is_static() => format!("{}{}", r.topic, k.dead_letter_suffix),
            (None, Ok(t)) => format!("{}{}", t.prefix().trim_end_matches(['.', '_', '-']), k.dead_letter_suffix),
            (None, Err(())) => String::new(),
        };
        if topic.is_ok() {
            if let Err(e) = check_kafka_topic(&dead_letter_topic) {
                problem(
                    &format!("{at}.dead_letter_topic"),
                    format!("`{dead_letter_topic}` {e}"),
                    Some("set dead_letter_topic to a fixed, valid Kafka topic name"),
                );
            }
        }
        let regex = compile_device_regex(&r.device_id.regex, &mut regexes)
            .map_err(|e| problem(&format!("{at}.device_id.regex"), e, Some("e.g. '^cmnd/(?P<device_id>[^/]+)'")));
        let fallback_regex = match &r.device_id.fallback_regex {
            Some(s) => compile_device_regex(s, &mut regexes)
                .map(Some)
                .map_err(|e| problem(&format!("{at}.device_id.fallback_regex"), e, Some("e.g. '^[^/]+/(?P<device_id>[^/]+)'"))),
            None => Ok(None),
        };
        let key = match r.key.as_str() {
            "device_id" => Ok(KeyRule::DeviceId),
            "none" => Ok(KeyRule::None),
            p if p.starts_with('$') => jsonpath_rust::parser::parse_json_path(p)
                .map(|q| KeyRule::JsonPath { source: p.to_string(), query: Box::new(q), missing: r.key_missing })
                .map_err(|e| problem(&format!("{at}.key"), format!("invalid JSONPath `{p}`: {e}"), Some("e.g. '$.serial' or '$.meta.device'"))),
            other => Err(problem(&format!("{at}.key"), format!("`{other}` is not a key rule"), Some("use device_id, none, or a JSONPath starting with '$'"))),
        };
        if let (Ok(t), Ok(regex)) = (&topic, &regex) {
            for g in t.groups() {
                let known = |re: &Regex| re.capture_names().any(|n| n == Some(g));
                if !known(regex) && !matches!(&fallback_regex, Ok(Some(f)) if known(f)) {
                    problem(
                        &format!("{at}.topic"),
                        format!("placeholder `{{{g}}}` is not a named group of device_id.regex"),
                        Some("add (?P<name>...) to device_id.regex, or use {N} for an MQTT topic level"),
                    );
                }
            }
        }
        if r.format == ValueFormat::Raw && r.payload != PayloadFormat::Json {
            problem(&format!("{at}.payload"), "only applies to `format: envelope`".into(), Some("remove `payload`, or use format: envelope"));
        }
        // The resolved dead-letter topic too: it also depends on kafka.dead_letter_suffix.
        let fingerprint = format!("{}|{dead_letter_topic}", serde_json::to_string(r).unwrap_or_default());
        if let (Ok(topic), Ok(regex), Ok(fallback_regex), Ok(key)) = (topic, regex, fallback_regex, key) {
            routes.push(Route {
                name: Arc::from(r.name.as_str()),
                filter: r.filter.clone(),
                fallback_filters: r.fallback_filters.clone(),
                qos: r.qos,
                topic,
                dead_letter_topic,
                device_id: DeviceIdRule { regex, fallback_regex, default: r.device_id.default.clone() },
                key,
                format: r.format,
                payload: r.payload,
                // The resolved dead-letter topic too: it also depends on kafka.dead_letter_suffix.
                fingerprint,
            });
        }
    }

    let log = raw.log.clone();
    if !["text", "json"].contains(&log.format.as_str()) {
        problem("log.format", format!("unknown format `{}`", log.format), Some("use text or json"));
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log.level) {
        problem("log.level", format!("invalid filter `{}`: {e}", log.level), Some("e.g. info, or info,mqtt_kafka_gateway=debug"));
    }

    let (host, port, tls) = broker.ok()?;
    Some(Config {
        source: path.to_path_buf(),
        mqtt: MqttSettings {
            host,
            port,
            tls,
            client_id: m.client_id.0.clone(),
            credentials: m.username.as_ref().map(|u| (u.0.clone(), m.password.clone().unwrap_or_else(|| Secret::new("")))),
            keep_alive: Duration::from_secs(m.keep_alive_secs),
            clean_session: m.clean_session,
            max_packet_size: m.max_packet_size_bytes,
            connect_timeout: Duration::from_secs(m.connect_timeout_secs.max(1)),
            reconnect_min: Duration::from_millis(m.reconnect_min_delay_ms),
            reconnect_max: Duration::from_millis(m.reconnect_max_delay_ms),
            buffer_bytes: m.buffer_bytes,
            max_unacked_messages: m.max_unacked_messages,
        },
        kafka: KafkaSettings { bootstrap_servers: k.bootstrap_servers.clone(), properties },
        routes: RouteTable::new(routes),
        shutdown_grace: Duration::from_secs(raw.shutdown.grace_period_secs),
        log,
        reload: raw.reload.clone(),
    })
}

impl Config {
    /// The keys that differ between `self` and `new` and only take effect after a restart (everything
    /// but the routes).
    pub fn restart_needed(&self, new: &Config) -> Vec<String> {
        let mut keys = Vec::new();
        let (a, b) = (&self.mqtt, &new.mqtt);
        let mut check = |key: &str, differs: bool| {
            if differs {
                keys.push(key.to_string());
            }
        };
        check("mqtt.broker", (&a.host, a.port, a.tls) != (&b.host, b.port, b.tls));
        check("mqtt.client_id", a.client_id != b.client_id);
        check("mqtt.username/password", a.credentials != b.credentials);
        check("mqtt.keep_alive_secs", a.keep_alive != b.keep_alive);
        check("mqtt.clean_session", a.clean_session != b.clean_session);
        check("mqtt.max_packet_size_bytes", a.max_packet_size != b.max_packet_size);
        check("mqtt.connect_timeout_secs", a.connect_timeout != b.connect_timeout);
        check("mqtt.reconnect_*_delay_ms", (a.reconnect_min, a.reconnect_max) != (b.reconnect_min, b.reconnect_max));
        check("mqtt.buffer_bytes", a.buffer_bytes != b.buffer_bytes);
        check("mqtt.max_unacked_messages", a.max_unacked_messages != b.max_unacked_messages);
        check("shutdown.grace_period_secs", self.shutdown_grace != new.shutdown_grace);
        check("log", self.log != new.log);
        check("reload", self.reload != new.reload);
        let (pa, pb) = (&self.kafka.properties, &new.kafka.properties);
        for key in pa.keys().chain(pb.keys().filter(|k| !pa.contains_key(*k))) {
            if pa.get(key) != pb.get(key) {
                // A secret property's value is not shown, only its name.
                keys.push(format!("kafka ({key})"));
            }
        }
        keys
    }
}

fn compile_device_regex(s: &str, compiled: &mut HashMap<String, Regex>) -> Result<Regex, String> {
    if let Some(regex) = compiled.get(s) {
        return Ok(regex.clone());
    }
    let regex = Regex::new(s).map_err(|e| format!("invalid regex: {}", one_line(&e.to_string())))?;
    if !regex.capture_names().any(|n| n == Some("device_id")) {
        return Err(format!("regex `{s}` has no named group `device_id`"));
    }
    compiled.insert(s.to_string(), regex.clone());
    Ok(regex)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `host:port`, `host`, `[v6]:port`, or `mqtt://`, `tcp://`, `mqtts://`, `ssl://` URLs.
pub fn parse_broker(s: &str) -> Result<(String, u16, bool), String> {
    let s = s.trim();
    let (rest, tls) = match s.split_once("://") {
        Some(("mqtt" | "tcp", rest)) => (rest, false),
        Some(("mqtts" | "ssl" | "tls", rest)) => (rest, true),
        Some((scheme, _)) => return Err(format!("unsupported scheme `{scheme}://` in `{s}`")),
        None => (s, false),
    };
    let rest = rest.trim_end_matches('/');
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| format!("unclosed '[' in `{s}`"))?;
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => return Err(format!("unexpected `{after}` after the address in `{s}`")),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() || host.contains('/') {
        return Err(format!("no host in `{s}`"));
    }
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| format!("`{p}` is not a port number"))?,
        None => default_port,
    };
    Ok((host.to_string(), port, tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn load(text: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        load_from_str(Path::new("routes.yaml"), text, &env(pairs))
    }

    #[test]
    fn broker_addresses_table() {
        let cases = [
            ("mosquitto:1883", Ok(("mosquitto".to_string(), 1883, false))),
            ("localhost", Ok(("localhost".to_string(), 1883, false))),
            ("mqtt://broker.example:1884", Ok(("broker.example".to_string(), 1884, false))),
            ("tcp://broker", Ok(("broker".to_string(), 1883, false))),
            ("mqtts://broker.example", Ok(("broker.example".to_string(), 8883, true))),
            ("[::1]:1885", Ok(("::1".to_string(), 1885, false))),
        ];
        for (input, want) in cases {
            assert_eq!(parse_broker(input), want, "{input}");
        }
        for bad in ["", "http://x", "host:notaport", "host:0", "[::1", ":1883"] {
            assert!(parse_broker(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn an_empty_file_gives_the_spec_route_and_defaults() {
        let c = load("", &[]).unwrap();
        let r = &c.routes.routes()[0];
        assert_eq!((r.filter.as_str(), r.topic.to_string().as_str(), r.qos), ("cmnd/#", "raw_iot_data", 0));
        assert_eq!(r.fallback_filters, vec!["cmnd/+/+/+/+"]);
        assert_eq!(r.dead_letter_topic, "raw_iot_data.dlq");
        assert_eq!(c.mqtt.keep_alive, Duration::from_secs(60));
        assert!(c.mqtt.clean_session);
        assert!(c.mqtt.max_packet_size >= 1024 * 1024);
        assert_eq!(c.kafka.properties["acks"], "all");
        assert_eq!(c.kafka.properties["enable.idempotence"], "true");
        assert_eq!(c.kafka.properties["partitioner"], "murmur2_random");
    }

    #[test]
    fn the_shipped_routes_yaml_is_the_spec_route() {
        let text = include_str!("../routes.yaml");
        let c = load(text, &[]).unwrap();
        let routes = c.routes.routes();
        assert_eq!(routes.len(), 1);
        let r = &routes[0];
        assert_eq!((r.filter.as_str(), r.topic.to_string().as_str(), r.qos), ("cmnd/#", "raw_iot_data", 0));
        assert_eq!(r.fallback_filters, vec!["cmnd/+/+/+/+"]);
        assert_eq!(r.device_id.extract("cmnd/f2-e4fd45f654be/access-control-mode/J1/door-sensors").0, "f2-e4fd45f654be");
        assert_eq!(r.device_id.extract("cmnd/plc-7/state").0, "plc-7");
        assert_eq!(r.device_id.extract("cmnd").0, "unknown");
    }

    #[test]
    fn spec_environment_variables_override_the_file() {
        let c = load(
            "mqtt: {broker: 'file:1883'}\nkafka: {bootstrap_servers: 'file:9092'}\n",
            &[
                ("KAFKA_TOPIC", "from_env"),
                ("MQTT_TOPIC_PATTERN", "sensors/#"),
            ],
        )
        .unwrap();
        let r = &c.routes.routes()[0];
        assert_eq!(r.topic.to_string(), "from_env");
        assert_eq!(r.filter, "sensors/#");
        assert!(r.fallback_filters.is_empty(), "fallbacks of cmnd/# make no sense for sensors/#");
        assert_eq!(r.dead_letter_topic, "from_env.dlq");
        assert_eq!(c.mqtt.host, "file");

        let same = load("", &[("MQTT_TOPIC_PATTERN", "cmnd/#"), ("MQTT_BROKER", "mqtt://env-broker:1999"), ("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")]).unwrap();
        assert_eq!(same.routes.routes()[0].fallback_filters, vec!["cmnd/+/+/+/+"], "same filter: fallbacks kept");
        assert_eq!((same.mqtt.host.as_str(), same.mqtt.port), ("env-broker", 1999));
        assert_eq!(same.kafka.properties["bootstrap.servers"], "k1:9092,k2:9092");
    }

    #[test]
    fn prefixed_variables_override_nested_keys() {
        let c = load(
            "mqtt: {client_id: a}\n",
            &[
                ("GATEWAY_MQTT__CLIENT_ID", "edge-7"),
                ("GATEWAY_MQTT__KEEP_ALIVE_SECS", "30"),
                ("GATEWAY_KAFKA__PROPERTIES__COMPRESSION_TYPE", "zstd"),
                ("GATEWAY_MQTT__USERNAME", "1234"),
                ("GATEWAY_MQTT__PASSWORD", "5678"),
            ],
        )
        .unwrap();
        assert_eq!(c.mqtt.client_id, "edge-7");
        assert_eq!(c.mqtt.keep_alive, Duration::from_secs(30));
        assert_eq!(c.kafka.properties["compression.type"], "zstd");
        let (user, pass) = c.mqtt.credentials.clone().unwrap();
        assert_eq!((user.as_str(), pass.expose()), ("1234", "5678"));
        assert_eq!(format!("{:?}", c.mqtt), format!("{:?}", c.mqtt).replace("5678", "***"), "password never printed");
    }

    #[test]
    fn kafka_properties_pass_through_and_win() {
        let c = load("kafka:\n  properties:\n    linger.ms: 50\n    security.protocol: SASL_SSL\n", &[]).unwrap();
        assert_eq!(c.kafka.properties["linger.ms"], "50");
        assert_eq!(c.kafka.properties["security.protocol"], "SASL_SSL");
    }

    fn problems(text: &str) -> Vec<String> {
        load(text, &[]).err().expect("config should be rejected").problems.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn yaml_syntax_errors_name_the_line() {
        let p = problems("mqtt:\n  broker: [unclosed\nkafka: {}\n");
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("routes.yaml:"), "{p:?}");
        assert!(p[0].contains("YAML syntax error"), "{p:?}");
    }

    #[test]
    fn unknown_keys_name_path_and_line() {
        let p = problems("mqtt:\n  brokr: x\nroutes:\n  - name: a\n    filter: a/#\n    topic: t\n    qos_level: 1\n");
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("routes.yaml:2:3: mqtt.brokr: unknown field"), "{p:?}");
        assert!(p[1].starts_with("routes.yaml:7:5: routes[0].qos_level: unknown field"), "{p:?}");
    }

    #[test]
    fn the_replaced_buffer_messages_key_points_to_buffer_bytes() {
        let p = problems("mqtt:\n  buffer_messages: 1000\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("routes.yaml:2:3: mqtt.buffer_messages: unknown field"), "{p:?}");
        assert!(p[0].contains("replaced by mqtt.buffer_bytes"), "{p:?}");
    }

    #[test]
    fn wrong_types_and_missing_keys_are_reported() {
        let p = problems("mqtt:\n  keep_alive_secs: soon\nroutes:\n  - name: a\n    filter: a/#\n");
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("mqtt.keep_alive_secs") && p[0].contains("routes.yaml:2:"), "{p:?}");
        assert!(p[1].contains("routes[0]") && p[1].contains("missing field `topic`") && p[1].contains("routes.yaml:4:"), "{p:?}");
    }

    #[test]
    fn every_semantic_problem_is_reported_at_once() {
        let text = "\
routes:
  - name: a
    filter: cmnd/#/bad
    topic: ok
    device_id:
      regex: '(unclosed'
  - name: a
    filter: x/+
    topic: 'bad topic'
    qos: 3
    key: '$[?'
    device_id:
      regex: 'no-group'
";
        let p = problems(text);
        let expect = [
            ("routes.yaml:3:5: routes[0].filter", "invalid MQTT filter"),
            ("routes.yaml:6:7: routes[0].device_id.regex", "invalid regex"),
            ("routes.yaml:7:5: routes[1].name", "already the name"),
            ("routes.yaml:10:5: routes[1].qos", "not an MQTT QoS"),
            ("routes.yaml:9:5: routes[1].topic", "contains ' '"),
            ("routes.yaml:13:7: routes[1].device_id.regex", "no named group"),
            ("routes.yaml:11:5: routes[1].key", "invalid JSONPath"),
        ];
        for (prefix, text) in expect {
            assert!(p.iter().any(|l| l.starts_with(prefix) && l.contains(text)), "missing {prefix} / {text} in {p:#?}");
        }
        assert_eq!(p.len(), expect.len(), "{p:#?}");
    }

    #[test]
    fn an_environment_value_is_blamed_on_the_environment() {
        let err = load("", &[("GATEWAY_MQTT__KEEP_ALIVE_SECS", "soon")]).unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert_eq!(err.problems[0].origin, Origin::Environment, "{}", err);
    }

    #[test]
    fn a_missing_file_is_an_error_that_says_how_to_fix_it() {
        let err = super::load(Path::new("does/not/exist.yaml")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("does/not/exist.yaml") && text.contains("--config"), "{text}");
    }
}
