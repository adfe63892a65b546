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
//!
//! - `raw.rs`: the serde schema of the file, with its defaults;
//! - `sources.rs`: the YAML provider and the environment layering, with located errors;
//! - `validate.rs`: raw into checked types, one function per section;
//! - `broker.rs`: the broker address;
//! - `registry.rs`: `schema_registry` and the routes' `encoding`;
//! - `security.rs`: `mqtt.tls`, `kafka.sasl`, `kafka.tls` and secrets read from files;
//! - `pem.rs`: the PEM files TLS reads (CA, client certificate and key);
//! - `tls.rs`: the rustls client configuration a `tls` section makes;
//! - `downlink.rs`: `downlinks`, and the loops they would make with the routes;
//! - `reload.rs`: the live reload of the routes: directory watch, debounce, validate, swap.
//!
//! Imports the core (the validated routes are its types) and `ops` (a reload is counted); no edge.

mod broker;
mod downlink;
pub mod pem;
mod raw;
mod registry;
pub mod reload;
mod security;
#[cfg(test)]
mod security_tests;
mod sources;
mod spool;
#[cfg(test)]
mod tests;
pub mod tls;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use broker::{parse_broker, BrokerAddr, Transport};
pub use downlink::{RawDownlink, RawDownlinkRateLimit};
pub use raw::*;
pub use security::{is_secret_property, MqttTls, RawKafkaSasl, RawKafkaTls, RawMqttTls, RawOauthbearer, TlsVersion};
pub use sources::{edited_overrides, load, load_from_str, load_with_env, EnvSource, ProcessEnv};
pub use spool::{parse_size, AckAfter, ByteSize, FsyncMode, RawSpool, SpoolFsync, SpoolSettings, WhenFull};

use crate::core::routing::RouteTable;
use crate::core::yaml_index::Position;

pub const DEFAULT_CONFIG_PATH: &str = "routes.yaml";
/// Where the HTTP server listens unless `http.listen` says otherwise.
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:9180";
/// The port of [`DEFAULT_HTTP_LISTEN`].
pub const DEFAULT_HTTP_PORT: u16 = 9180;
/// Prefix of the environment variables that override any scalar key.
pub const ENV_PREFIX: &str = "GATEWAY_";

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
    /// Where the HTTP server listens (`/metrics`, `/healthz`, `/readyz`); `None` when turned off.
    pub http: Option<std::net::SocketAddr>,
    /// This replica's share of the devices when `replicas.count` > 1.
    pub replicas: Option<crate::core::routing::replicas::Replicas>,
    /// `schema_registry`, when its `url` is set.
    pub schema_registry: Option<RegistrySettings>,
    /// `spool`, when its `dir` is set.
    pub spool: Option<SpoolSettings>,
    /// The files secrets were read from (`mqtt.password_file`, `kafka.sasl.password_file`...): a reload
    /// watches them, so a rotated Secret applies like an edit.
    pub secret_files: Vec<PathBuf>,
    /// Kafka → MQTT routes.
    pub downlinks: Vec<std::sync::Arc<crate::core::downlink::Downlink>>,
}

/// `schema_registry`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySettings {
    /// Without a trailing `/`.
    pub url: String,
    /// Basic auth: username and password.
    pub credentials: Option<(String, Secret)>,
    /// For an `https://` URL.
    pub tls: Option<MqttTls>,
    /// How often `version: latest` is looked up again (zero: only on reload).
    pub refresh: Duration,
    /// One request at most.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttSettings {
    pub broker: BrokerAddr,
    /// The TLS settings, when the transport is `mqtts://` or `wss://`.
    pub tls: Option<MqttTls>,
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
    /// See `mqtt.read_coalesce_us`.
    pub read_coalesce: Duration,
    /// `mqtt.shared_group`: subscribe as `$share/<group>/<filter>`.
    pub shared_group: Option<String>,
    pub protocol: Protocol,
    /// MQTT 5: the session expiry interval sent in CONNECT (seconds; `u32::MAX` is "never").
    pub session_expiry: u32,
    /// A hash of the TLS files' contents when the settings were read: a certificate renewed in place
    /// makes them differ, and the connection is switched to it.
    pub tls_contents: u64,
}

/// The MQTT protocol version spoken to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V311,
    V5,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5",
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    pub bootstrap_servers: String,
    /// librdkafka properties, the gateway's own choices first, then the user's `properties`.
    pub properties: BTreeMap<String, String>,
}

/// Secret properties (passwords, client secrets, keys) print as `***`.
impl fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret_property(k) { "***" } else { v.as_str() }))
            .collect();
        f.debug_struct("KafkaSettings")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("properties", &shown)
            .finish()
    }
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

impl Config {
    /// The keys that differ between `self` and `new` and only take effect after a restart.
    pub fn restart_needed(&self, new: &Config) -> Vec<String> {
        // Everything else applies live: the routes, `kafka.*` (a new producer, checked, swapped in),
        // `mqtt.*` (a new connection, or in place), `http.listen`, `log.*`, `reload.*`, the grace period,
        // the registry's settings and the spool's but for its directory.
        let spool_dir = |c: &Config| c.spool.as_ref().map(|s| s.dir.clone());
        [
            // Devices move between replicas, which must change together to keep per-device order.
            ("replicas", self.replicas != new.replicas),
            // The engine is built with or without a registry.
            ("schema_registry", self.schema_registry.is_some() != new.schema_registry.is_some()),
            // What the spool holds lives there.
            ("spool.dir", spool_dir(self) != spool_dir(new)),
        ]
        .into_iter()
        .filter(|&(_, differs)| differs)
        .map(|(key, _)| key.to_string())
        .collect()
    }
}
