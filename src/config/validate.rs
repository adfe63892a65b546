//! The raw configuration into checked types: compiled regexes, parsed JSONPath, validated filters and
//! topic names. One function per section; each reports every problem it finds, with the key it concerns,
//! and a new section adds a function here.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

use super::broker::parse_broker;
use super::raw::{RawConfig, RawKafka, RawMqtt, RawRoute, Secret};
use super::security;
use super::{Config, KafkaSettings, MqttSettings, Origin, Problem, Protocol};
use crate::core::routing::filter;
use crate::core::routing::rate_limit::RateLimit;
use crate::core::routing::schema::RouteSchema;
use crate::core::routing::template::TopicTemplate;
use crate::core::routing::topic_name::{check_kafka_topic, kafka_topic_char};
use crate::core::routing::{DeviceIdRule, KeyRule, PayloadFormat, Route, RouteTable, ValueFormat};

/// The problems found so far, each located by the key it concerns.
pub(super) struct Problems<'a> {
    list: &'a mut Vec<Problem>,
    locate: &'a dyn Fn(&str) -> Origin,
    /// The secret files read on the way (`*_password_file`...): a reload watches them.
    pub(super) secret_files: Vec<std::path::PathBuf>,
}

impl Problems<'_> {
    pub(super) fn add(&mut self, key: &str, message: String, hint: Option<&str>) {
        self.list.push(Problem { path: key.into(), message, hint: hint.map(Into::into), origin: (self.locate)(key) });
    }
}

pub(super) fn validate(
    path: &Path,
    raw: RawConfig,
    locate: &dyn Fn(&str) -> Origin,
    problems: &mut Vec<Problem>,
) -> Option<Config> {
    let mut p = Problems { list: problems, locate, secret_files: Vec::new() };
    let mqtt = mqtt(&raw.mqtt, &mut p);
    let properties = kafka_properties(&raw.kafka, &raw.mqtt.client_id.0, &mut p);
    let config_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let routes = routes(&raw.routes, &raw.kafka.dead_letter_suffix, &config_dir, &mut p);
    // The small sections, in the file's order.
    if raw.shutdown.grace_period_secs > 86_400 {
        p.add(
            "shutdown.grace_period_secs",
            format!("{} is out of range", raw.shutdown.grace_period_secs),
            Some("use 0 to 86400"),
        );
    }
    let log = raw.log.clone();
    if !["text", "json"].contains(&log.format.as_str()) {
        p.add("log.format", format!("unknown format `{}`", log.format), Some("use text or json"));
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log.level) {
        p.add(
            "log.level",
            format!("invalid filter `{}`: {e}", log.level),
            Some("e.g. info, or info,mqtt_kafka_gateway=debug"),
        );
    }
    if raw.reload.debounce_ms > 60_000 || raw.reload.poll_interval_secs > 86_400 {
        p.add("reload", "debounce_ms must be at most 60000 and poll_interval_secs at most 86400".into(), None);
    }
    let http = match (raw.http.enabled, raw.http.listen.parse::<std::net::SocketAddr>()) {
        (false, _) => None,
        (true, Ok(addr)) => Some(addr),
        (true, Err(e)) => {
            p.add(
                "http.listen",
                format!("`{}` is not an address:port ({e})", raw.http.listen),
                Some("e.g. 0.0.0.0:9180, or 127.0.0.1:9180; http.enabled: false turns the server off"),
            );
            None
        }
    };
    let replicas = replicas(&raw, &mut p);
    let needs_registry =
        raw.routes.iter().position(|r| r.encoding.as_ref().is_some_and(|e| e.spec().kind.registry_type().is_some()));
    let schema_registry = super::registry::settings(&raw.schema_registry, needs_registry, &mut p);
    let spool = super::spool::settings(&raw.spool, &mut p);
    let downlinks = super::downlink::downlinks(
        &raw.downlinks,
        &raw.routes,
        &raw.mqtt.client_id.0,
        &raw.kafka.dead_letter_suffix,
        &mut p,
    );
    Some(Config {
        source: path.to_path_buf(),
        mqtt: mqtt?,
        kafka: KafkaSettings { bootstrap_servers: raw.kafka.bootstrap_servers.clone(), properties },
        routes: RouteTable::new(routes),
        shutdown_grace: Duration::from_secs(raw.shutdown.grace_period_secs),
        log,
        reload: raw.reload.clone(),
        http,
        replicas,
        schema_registry,
        spool,
        secret_files: p.secret_files,
        downlinks,
    })
}

/// `replicas`: this replica's share of the devices, or `None` for a single replica.
fn replicas(raw: &RawConfig, p: &mut Problems<'_>) -> Option<crate::core::routing::replicas::Replicas> {
    let r = &raw.replicas;
    if r.count == 0 || r.count > 1024 {
        p.add(
            "replicas.count",
            format!("{} is out of range", r.count),
            Some("use 1 (one replica takes every device) to 1024"),
        );
        return None;
    }
    let Some(index) = crate::core::routing::replicas::Replicas::parse_index(&r.index.0) else {
        p.add(
            "replicas.index",
            format!("`{}` is not a replica number", r.index.0),
            Some("a number, or a pod name ending in -<n> (a StatefulSet's)"),
        );
        return None;
    };
    if index >= r.count {
        p.add(
            "replicas.index",
            format!("{index} is not below replicas.count ({})", r.count),
            Some("replicas are numbered from 0"),
        );
        return None;
    }
    if r.count > 1 && raw.mqtt.shared_group.is_some() {
        p.add(
            "replicas.count",
            "ordered replicas each need every message; a shared group splits them".into(),
            Some("use either replicas.count or mqtt.shared_group"),
        );
        return None;
    }
    (r.count > 1).then_some(crate::core::routing::replicas::Replicas { index, count: r.count })
}

fn mqtt(m: &RawMqtt, p: &mut Problems<'_>) -> Option<MqttSettings> {
    let broker = parse_broker(&m.broker).map_err(|e| {
        p.add(
            "mqtt.broker",
            e,
            Some(
                "use host:port, or a URL: mqtt://host:1883, mqtts://host:8883, ws://host:80/mqtt, wss://host:443/mqtt",
            ),
        )
    });
    if m.client_id.0.is_empty() || m.client_id.0.len() > 65_535 {
        p.add("mqtt.client_id", "must be a non-empty string".into(), None);
    }
    if m.keep_alive_secs < 5 || m.keep_alive_secs > 65_535 {
        p.add(
            "mqtt.keep_alive_secs",
            format!("{} is out of range", m.keep_alive_secs),
            Some("use 5 to 65535 seconds (spec: 60)"),
        );
    }
    if m.max_packet_size_bytes < 1024 || m.max_packet_size_bytes > 268_435_455 {
        p.add(
            "mqtt.max_packet_size_bytes",
            format!("{} is out of range", m.max_packet_size_bytes),
            Some("use 1024 to 268435455 (MQTT's limit); default 1048576"),
        );
    }
    if m.reconnect_min_delay_ms == 0 || m.reconnect_min_delay_ms > m.reconnect_max_delay_ms {
        p.add("mqtt.reconnect_min_delay_ms", "must be positive and not above reconnect_max_delay_ms".into(), None);
    }
    if m.buffer_bytes < 1024 || m.buffer_bytes > 1 << 40 {
        p.add(
            "mqtt.buffer_bytes",
            format!("{} is out of range", m.buffer_bytes),
            Some("use 1024 bytes to 1 TiB; default 33554432 (32 MiB)"),
        );
    }
    if m.read_coalesce_us > 100_000 {
        p.add(
            "mqtt.read_coalesce_us",
            format!("{} is out of range", m.read_coalesce_us),
            Some("use 0 (off) to 100000 µs; default 1000"),
        );
    }
    if m.max_unacked_messages == 0 || m.max_unacked_messages > 10_000_000 {
        p.add(
            "mqtt.max_unacked_messages",
            format!("{} is out of range", m.max_unacked_messages),
            Some("use 1 to 10000000"),
        );
    }
    if m.connect_timeout_secs > 3600 || m.reconnect_max_delay_ms > 3_600_000 {
        p.add(
            "mqtt.reconnect_max_delay_ms",
            "connect timeout and reconnect delays must stay within an hour".into(),
            None,
        );
    }
    if let Some(g) = &m.shared_group {
        if g.is_empty() || g.contains(['/', '+', '#']) {
            p.add(
                "mqtt.shared_group",
                format!("`{g}` is not a share name"),
                Some("a non-empty name without '/', '+' or '#'"),
            );
        }
    }
    let protocol = match m.protocol.0.trim().to_ascii_lowercase().trim_start_matches('v') {
        "5" | "5.0" => Some(Protocol::V5),
        "3.1.1" | "4" => Some(Protocol::V311),
        other => {
            p.add("mqtt.protocol", format!("`{other}` is not an MQTT version"), Some("use 5 or \"3.1.1\""));
            None
        }
    };
    if m.session_expiry_secs.is_some() && protocol == Some(Protocol::V311) {
        p.add(
            "mqtt.session_expiry_secs",
            "needs MQTT 5".into(),
            Some("set mqtt.protocol: 5, or use clean_session: false for a 3.1.1 session that does not expire"),
        );
    }
    if m.session_expiry_secs.is_some_and(|s| s > 0) && m.clean_session {
        p.add(
            "mqtt.session_expiry_secs",
            "a session that outlives the connection needs clean_session: false".into(),
            Some("set mqtt.clean_session: false (the broker then keeps the session for this long after a disconnect)"),
        );
    }
    let session_expiry = m.session_expiry_secs.unwrap_or(if m.clean_session { 0 } else { u32::MAX });
    let password = security::secret("mqtt.password", m.password.as_ref(), m.password_file.as_deref(), p);
    if password.is_some() && m.username.is_none() {
        p.add("mqtt.password", "a password needs a username".into(), Some("set mqtt.username or MQTT_USERNAME"));
    }
    let broker = broker.ok();
    let tls = security::mqtt_tls(&m.tls, broker.as_ref().is_some_and(|b| b.transport.is_tls()), p);
    // The TLS files are read at every connection attempt; their contents are part of the settings, so
    // that a certificate renewed in place reaches the connection in use through a reload too.
    let tls_contents = tls.as_ref().map_or(0, |t| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let files = t.ca_file.iter().chain(t.client.iter().flat_map(|(cert, key)| [cert, key]));
        for file in files {
            std::fs::read(file).ok().hash(&mut h);
        }
        h.finish()
    });
    Some(MqttSettings {
        broker: broker?,
        tls,
        client_id: m.client_id.0.clone(),
        credentials: m.username.as_ref().map(|u| (u.0.clone(), password.unwrap_or_else(|| Secret::new("")))),
        keep_alive: Duration::from_secs(m.keep_alive_secs),
        clean_session: m.clean_session,
        max_packet_size: m.max_packet_size_bytes,
        connect_timeout: Duration::from_secs(m.connect_timeout_secs.max(1)),
        reconnect_min: Duration::from_millis(m.reconnect_min_delay_ms),
        reconnect_max: Duration::from_millis(m.reconnect_max_delay_ms),
        buffer_bytes: m.buffer_bytes,
        max_unacked_messages: m.max_unacked_messages,
        read_coalesce: Duration::from_micros(m.read_coalesce_us),
        shared_group: m.shared_group.clone(),
        protocol: protocol?,
        session_expiry,
        tls_contents,
    })
}

/// librdkafka's properties: the gateway's own choices first, then the user's `kafka.properties`.
fn kafka_properties(k: &RawKafka, client_id: &str, p: &mut Problems<'_>) -> BTreeMap<String, String> {
    if k.bootstrap_servers.trim().is_empty() {
        p.add("kafka.bootstrap_servers", "must not be empty".into(), Some("e.g. localhost:9092"));
    }
    if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&k.compression.as_str()) {
        p.add(
            "kafka.compression",
            format!("unknown codec `{}`", k.compression),
            Some("use none, gzip, snappy, lz4 or zstd"),
        );
    }
    if !k.dead_letter_suffix.chars().all(kafka_topic_char) {
        p.add("kafka.dead_letter_suffix", "may only contain letters, digits, '.', '_' and '-'".into(), None);
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
        ("client.id".into(), client_id.to_string()),
        // librdkafka's default backs off up to 10 s between attempts to reach a broker that is down, so
        // a Kafka back from an outage waited up to that long for us (0.3-8 s measured); 1 s costs one
        // attempt a second per broker while it is down.
        ("reconnect.backoff.max.ms".into(), "1000".into()),
    ]);
    properties.extend(security::kafka_properties(k.security_protocol.as_deref(), &k.sasl, &k.tls, p));
    // kafka.properties stays the last word, over the first-class keys too.
    for (key, value) in &k.properties {
        properties.insert(key.clone(), value.0.clone());
    }
    properties
}

fn routes(raw: &[RawRoute], dead_letter_suffix: &str, config_dir: &Path, p: &mut Problems<'_>) -> Vec<Route> {
    if raw.is_empty() {
        p.add(
            "routes",
            "no routes: the gateway would do nothing".into(),
            Some("add at least one route; the shipped routes.yaml has the spec's"),
        );
    }
    // Routes that share a pattern share its compiled program: a thousand routes with the default device
    // regexes would otherwise hold a thousand copies (about 80 KiB each).
    let mut regexes: HashMap<String, Regex> = HashMap::new();
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut routes = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let at = format!("routes[{i}]");
        if r.name.trim().is_empty() {
            p.add(&format!("{at}.name"), "must not be empty".into(), None);
        }
        if let Some(j) = names.get(r.name.as_str()) {
            p.add(
                &format!("{at}.name"),
                format!("`{}` is already the name of routes[{j}]", r.name),
                Some("route names must be unique"),
            );
        } else {
            names.insert(&r.name, i);
        }
        if let Some(route) = route(&at, r, dead_letter_suffix, config_dir, &mut regexes, p) {
            routes.push(route);
        }
    }
    routes
}

/// One route, checked; `None` if it has a problem (reported).
fn route(
    at: &str,
    r: &RawRoute,
    dead_letter_suffix: &str,
    config_dir: &Path,
    regexes: &mut HashMap<String, Regex>,
    p: &mut Problems<'_>,
) -> Option<Route> {
    if let Err(e) = filter::validate(&r.filter) {
        p.add(&format!("{at}.filter"), format!("invalid MQTT filter `{}`: {e}", r.filter), None);
    }
    for (j, f) in r.fallback_filters.iter().enumerate() {
        if let Err(e) = filter::validate(f) {
            p.add(&format!("{at}.fallback_filters[{j}]"), format!("invalid MQTT filter `{f}`: {e}"), None);
        }
    }
    if r.qos > 2 {
        p.add(&format!("{at}.qos"), format!("{} is not an MQTT QoS", r.qos), Some("use 0, 1 or 2"));
    }
    let topic = TopicTemplate::parse(&r.topic).map_err(|e| {
        p.add(&format!("{at}.topic"), e, Some("a Kafka topic name, or a template such as 'iot.{kind}' with {N} for MQTT topic level N, {device_id}, or a named group of device_id.regex"))
    });
    let dead_letter_topic = dead_letter_topic(at, r, topic.as_ref().ok(), dead_letter_suffix, p);
    let regex = compile_device_regex(&r.device_id.regex, regexes)
        .map_err(|e| p.add(&format!("{at}.device_id.regex"), e, Some("e.g. '^cmnd/(?P<device_id>[^/]+)'")));
    let fallback_regex = match &r.device_id.fallback_regex {
        Some(s) => compile_device_regex(s, regexes).map(Some).map_err(|e| {
            p.add(&format!("{at}.device_id.fallback_regex"), e, Some("e.g. '^[^/]+/(?P<device_id>[^/]+)'"))
        }),
        None => Ok(None),
    };
    let key = key_rule(at, r, p);
    if let (Ok(t), Ok(regex)) = (&topic, &regex) {
        for g in t.groups() {
            let known = |re: &Regex| re.capture_names().any(|n| n == Some(g));
            if !known(regex) && !matches!(&fallback_regex, Ok(Some(f)) if known(f)) {
                p.add(
                    &format!("{at}.topic"),
                    format!("placeholder `{{{g}}}` is not a named group of device_id.regex"),
                    Some("add (?P<name>...) to device_id.regex, or use {N} for an MQTT topic level"),
                );
            }
        }
    }
    if r.format == ValueFormat::Raw && r.payload != PayloadFormat::Json {
        p.add(
            &format!("{at}.payload"),
            "only applies to `format: envelope`".into(),
            Some("remove `payload`, or use format: envelope"),
        );
    }
    let schema = route_schema(at, r, config_dir, p);
    let rate_limit = rate_limit(at, r, p);
    let encoding = super::registry::route_encoding(
        at,
        r,
        topic.as_ref().ok(),
        regex.as_ref().ok(),
        fallback_regex.as_ref().ok(),
        config_dir,
        p,
    );
    // The resolved dead-letter topic too: it also depends on kafka.dead_letter_suffix; and the schema
    // file's contents, so that editing the schema alone changes the route.
    let fingerprint = format!(
        "{}|{}|{:x}|{:x}",
        serde_json::to_string(r).unwrap_or_default(),
        dead_letter_topic.as_deref().unwrap_or(""),
        schema.as_ref().ok().and_then(Option::as_ref).map_or(0, |s| s.hash),
        encoding
            .as_ref()
            .ok()
            .and_then(Option::as_ref)
            .and_then(|e| e.schema_file.as_ref())
            .map_or(0, |f| xxhash_rust::xxh3::xxh3_64(f.text.as_bytes()))
    );
    let (Ok(topic), Ok(regex), Ok(fallback_regex), Ok(key), Some(dead_letter_topic), Ok(schema), Ok(rate_limit)) =
        (topic, regex, fallback_regex, key, dead_letter_topic, schema, rate_limit)
    else {
        return None;
    };
    let Ok(encoding) = encoding else { return None };
    Some(Route {
        name: Arc::from(r.name.as_str()),
        filter: r.filter.clone(),
        fallback_filters: r.fallback_filters.clone(),
        qos: r.qos,
        topic,
        dead_letter_topic,
        device_id: DeviceIdRule::new(regex, fallback_regex, r.device_id.default.clone()),
        key,
        format: r.format,
        payload: r.payload,
        schema,
        encoding,
        rate_limit,
        fingerprint,
        stats: Default::default(),
    })
}

/// The route's schema, read and compiled from its file.
fn route_schema(
    at: &str,
    r: &RawRoute,
    config_dir: &Path,
    p: &mut Problems<'_>,
) -> Result<Option<Arc<RouteSchema>>, ()> {
    let Some(configured) = &r.schema else { return Ok(None) };
    if r.payload != PayloadFormat::Json {
        p.add(
            &format!("{at}.schema"),
            "a schema applies to JSON payloads".into(),
            Some("remove `schema`, or use payload: json"),
        );
        return Err(());
    }
    RouteSchema::load(config_dir, configured)
        .map(|s| Some(Arc::new(s)))
        .map_err(|e| p.add(&format!("{at}.schema"), e.message, Some(e.hint)))
}

fn rate_limit(at: &str, r: &RawRoute, p: &mut Problems<'_>) -> Result<Option<RateLimit>, ()> {
    let Some(l) = &r.rate_limit else { return Ok(None) };
    checked_rate_limit(&format!("{at}.rate_limit"), l.messages_per_sec, l.burst, l.qos0_max_delay_ms, p).map(Some)
}

/// A rate limit (a route's or a downlink's), checked: every value out of range is reported.
pub(super) fn checked_rate_limit(
    at: &str,
    messages_per_sec: f64,
    burst: Option<u32>,
    qos0_max_delay_ms: u64,
    p: &mut Problems<'_>,
) -> Result<RateLimit, ()> {
    let mut ok = true;
    if !(messages_per_sec.is_finite() && (0.001..=10_000_000.0).contains(&messages_per_sec)) {
        p.add(
            &format!("{at}.messages_per_sec"),
            format!("{messages_per_sec} is out of range"),
            Some("use 0.001 to 10000000"),
        );
        ok = false;
    }
    let burst = burst.unwrap_or_else(|| (messages_per_sec.ceil() as u32).max(1));
    if burst == 0 || burst > 10_000_000 {
        p.add(&format!("{at}.burst"), format!("{burst} is out of range"), Some("use 1 to 10000000"));
        ok = false;
    }
    if qos0_max_delay_ms > 60_000 {
        p.add(
            &format!("{at}.qos0_max_delay_ms"),
            format!("{qos0_max_delay_ms} is out of range"),
            Some("use 0 to 60000"),
        );
        ok = false;
    }
    if !ok {
        return Err(());
    }
    Ok(RateLimit::new(messages_per_sec, burst, Duration::from_millis(qos0_max_delay_ms)))
}

/// The route's dead-letter topic. It must not depend on the message: a templated topic's default is its
/// literal prefix plus the suffix (`iot.{kind}` → `iot.dlq`). `None` if the topic itself is invalid (that
/// problem is reported already) or the dead-letter topic is (reported here).
fn dead_letter_topic(
    at: &str,
    r: &RawRoute,
    topic: Option<&TopicTemplate>,
    suffix: &str,
    p: &mut Problems<'_>,
) -> Option<String> {
    let topic = topic?;
    let name = match &r.dead_letter_topic {
        Some(t) => t.clone(),
        None if topic.is_static() => format!("{}{suffix}", r.topic),
        None => format!("{}{suffix}", topic.prefix().trim_end_matches(['.', '_', '-'])),
    };
    match check_kafka_topic(&name) {
        Ok(()) => Some(name),
        Err(e) => {
            p.add(
                &format!("{at}.dead_letter_topic"),
                format!("`{name}` {e}"),
                Some("set dead_letter_topic to a fixed, valid Kafka topic name"),
            );
            None
        }
    }
}

fn key_rule(at: &str, r: &RawRoute, p: &mut Problems<'_>) -> Result<KeyRule, ()> {
    match r.key.as_str() {
        "device_id" => Ok(KeyRule::DeviceId),
        "none" => Ok(KeyRule::None),
        path if path.starts_with('$') => jsonpath_rust::parser::parse_json_path(path)
            .map(|q| KeyRule::JsonPath { source: path.to_string(), query: Box::new(q), missing: r.key_missing })
            .map_err(|e| {
                p.add(
                    &format!("{at}.key"),
                    format!("invalid JSONPath `{path}`: {e}"),
                    Some("e.g. '$.serial' or '$.meta.device'"),
                )
            }),
        other => {
            p.add(
                &format!("{at}.key"),
                format!("`{other}` is not a key rule"),
                Some("use device_id, none, or a JSONPath starting with '$'"),
            );
            Err(())
        }
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
