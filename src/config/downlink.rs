//! `downlinks`: Kafka → MQTT routes, checked, and refused when one would publish where an uplink route
//! subscribes (the gateway would take its own messages back to Kafka) unless one of the two says so.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::raw::{RawRoute, StringLike};
use super::validate::Problems;
use crate::core::downlink::loops::can_reach;
use crate::core::downlink::template::Template;
use crate::core::downlink::{Downlink, Setting};
use crate::core::routing::topic_name::check_kafka_topic;

/// One downlink as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawDownlink {
    /// A unique name, used in logs, metrics and the default consumer group.
    pub name: String,
    /// The Kafka topic to read (or `kafka_topics`, a list).
    #[serde(default)]
    pub kafka_topic: Option<String>,
    #[serde(default)]
    pub kafka_topics: Option<Vec<String>>,
    /// The consumer group (default `<mqtt.client_id>-downlink-<name>`). Offsets are committed there, each
    /// only after its record was published.
    #[serde(default)]
    pub group_id: Option<String>,
    /// The MQTT topic: `cmnd/{key}/set`. Placeholders: {key}, {topic}, {partition}, {header.NAME},
    /// {json./pointer}; each fills part of one topic level.
    pub mqtt_topic: String,
    /// 0, 1 (default) or 2, or `{header.NAME}` to read it from each record.
    #[serde(default)]
    pub qos: Option<StringLike>,
    /// true or false (default), or `{header.NAME}`.
    #[serde(default)]
    pub retain: Option<StringLike>,
    /// Where records that cannot be published go (default: the first Kafka topic +
    /// `kafka.dead_letter_suffix`).
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// At most this many MQTT messages per second for this downlink.
    #[serde(default)]
    pub rate_limit: Option<RawDownlinkRateLimit>,
    /// This downlink may publish where an uplink route subscribes: the gateway then takes what it
    /// publishes back to Kafka through that route (an audit trail, for instance).
    #[serde(default)]
    pub allow_loop: bool,
    /// librdkafka consumer properties for this downlink, applied last (`session.timeout.ms`,
    /// `auto.offset.reset`...).
    #[serde(default)]
    pub properties: BTreeMap<String, StringLike>,
}

/// `downlinks[].rate_limit`: as a route's, but nothing is ever dropped (a record waits its turn, and
/// the partitions pause behind it).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawDownlinkRateLimit {
    pub messages_per_sec: f64,
    #[serde(default)]
    pub burst: Option<u32>,
}

/// The downlinks, checked against each other and against the routes (loops).
pub(super) fn downlinks(
    raw: &[RawDownlink],
    routes: &[RawRoute],
    client_id: &str,
    dead_letter_suffix: &str,
    p: &mut Problems<'_>,
) -> Vec<Arc<Downlink>> {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, d) in raw.iter().enumerate() {
        let at = format!("downlinks[{i}]");
        if d.name.trim().is_empty() || !d.name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            p.add(
                &format!("{at}.name"),
                format!("`{}` is not a usable name", d.name),
                Some("use letters, digits, '.', '_' and '-'"),
            );
        } else if let Some(j) = names.get(d.name.as_str()) {
            p.add(
                &format!("{at}.name"),
                format!("`{}` is already the name of downlinks[{j}]", d.name),
                Some("downlink names must be unique"),
            );
        } else {
            names.insert(&d.name, i);
        }
        if let Some(downlink) = downlink(&at, d, client_id, dead_letter_suffix, p) {
            loops(&at, d, &downlink, routes, p);
            out.push(Arc::new(downlink));
        }
    }
    out
}

fn downlink(at: &str, d: &RawDownlink, client_id: &str, suffix: &str, p: &mut Problems<'_>) -> Option<Downlink> {
    let mut ok = true;
    let topics = match (&d.kafka_topic, &d.kafka_topics) {
        (Some(t), None) => vec![t.clone()],
        (None, Some(ts)) if !ts.is_empty() => ts.clone(),
        (Some(_), Some(_)) => {
            p.add(&format!("{at}.kafka_topics"), "set kafka_topic or kafka_topics, not both".into(), None);
            return None;
        }
        _ => {
            p.add(
                &format!("{at}.kafka_topic"),
                "missing: the Kafka topic to read".into(),
                Some("kafka_topic: device-commands, or kafka_topics: [a, b]"),
            );
            return None;
        }
    };
    let key = if d.kafka_topic.is_some() { "kafka_topic" } else { "kafka_topics" };
    for t in &topics {
        if let Err(e) = check_kafka_topic(t) {
            p.add(&format!("{at}.{key}"), format!("`{t}` {e}"), None);
            ok = false;
        }
    }
    let mqtt_topic = match Template::parse(&d.mqtt_topic) {
        Ok(t) => Some(t),
        Err(e) => {
            p.add(&format!("{at}.mqtt_topic"), e, Some("e.g. cmnd/{key}/set"));
            None
        }
    };
    let qos = match d.qos.as_ref().map(|q| q.0.trim()) {
        None => Some(Setting::Fixed(1)),
        Some(q) => setting(q, &["0", "1", "2"]).map(|s| match s {
            Setting::Fixed(n) => Setting::Fixed(n.parse().unwrap_or(1)),
            Setting::Header(h) => Setting::Header(h),
        }),
    };
    if qos.is_none() {
        p.add(&format!("{at}.qos"), "must be 0, 1, 2 or {header.NAME}".into(), None);
    }
    let retain = match d.retain.as_ref().map(|r| r.0.trim()) {
        None => Some(Setting::Fixed(false)),
        Some(r) => setting(r, &["true", "false"]).map(|s| match s {
            Setting::Fixed(v) => Setting::Fixed(v == "true"),
            Setting::Header(h) => Setting::Header(h),
        }),
    };
    if retain.is_none() {
        p.add(&format!("{at}.retain"), "must be true, false or {header.NAME}".into(), None);
    }
    let dead_letter_topic = d.dead_letter_topic.clone().unwrap_or_else(|| format!("{}{suffix}", topics[0]));
    if let Err(e) = check_kafka_topic(&dead_letter_topic) {
        p.add(&format!("{at}.dead_letter_topic"), format!("`{dead_letter_topic}` {e}"), None);
        ok = false;
    }
    if topics.contains(&dead_letter_topic) {
        p.add(
            &format!("{at}.dead_letter_topic"),
            format!("`{dead_letter_topic}` is also a topic the downlink reads: a refused record would come back"),
            None,
        );
        ok = false;
    }
    // Nothing is dropped on a downlink: a record waits its turn however long.
    let rate_limit = match &d.rate_limit {
        None => None,
        Some(l) => {
            match super::validate::checked_rate_limit(&format!("{at}.rate_limit"), l.messages_per_sec, l.burst, 0, p) {
                Ok(limit) => Some(limit),
                Err(()) => {
                    ok = false;
                    None
                }
            }
        }
    };
    let group_id = d.group_id.clone().unwrap_or_else(|| format!("{client_id}-downlink-{}", d.name));
    if group_id.trim().is_empty() {
        p.add(&format!("{at}.group_id"), "must not be empty".into(), None);
        ok = false;
    }
    for key in d.properties.keys() {
        if ["enable.auto.commit", "enable.auto.offset.store", "group.id", "bootstrap.servers"].contains(&key.as_str()) {
            p.add(
                &format!("{at}.properties.{key}"),
                format!("`{key}` is the gateway's to set"),
                Some("offsets are committed after each publish; group_id and kafka.bootstrap_servers set the others"),
            );
            ok = false;
        }
    }
    let properties = d.properties.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect();
    if !ok {
        return None;
    }
    Some(Downlink {
        name: d.name.as_str().into(),
        kafka_topics: topics,
        group_id,
        mqtt_topic: mqtt_topic?,
        qos: qos?,
        retain: retain?,
        dead_letter_topic,
        rate_limit,
        properties,
    })
}

/// A fixed value among `allowed`, or `{header.NAME}`.
fn setting(text: &str, allowed: &[&str]) -> Option<Setting<String>> {
    if let Some(name) = text.strip_prefix("{header.").and_then(|r| r.strip_suffix('}')) {
        return (!name.is_empty() && !name.contains(['{', '}'])).then(|| Setting::Header(name.to_string()));
    }
    let lower = text.to_ascii_lowercase();
    allowed.contains(&lower.as_str()).then_some(Setting::Fixed(lower))
}

/// A downlink that can publish where a route subscribes: refused unless one of them allows it, and
/// always when the route writes to a topic the downlink reads (each message would go round for ever).
fn loops(at: &str, raw: &RawDownlink, d: &Downlink, routes: &[RawRoute], p: &mut Problems<'_>) {
    for r in routes {
        let Some(filter) = std::iter::once(&r.filter).chain(&r.fallback_filters).find(|f| can_reach(&d.mqtt_topic, f))
        else {
            continue;
        };
        if d.kafka_topics.contains(&r.topic) {
            p.add(
                &format!("{at}.mqtt_topic"),
                format!(
                    "downlink `{}` publishes `{}`, which route `{}` subscribes (`{filter}`) and writes back to `{}`, \
                     a topic the downlink reads: every message would go round for ever",
                    d.name, d.mqtt_topic, r.name, r.topic
                ),
                Some("give the downlink an MQTT topic the route does not subscribe, or the route another Kafka topic"),
            );
        } else if !(raw.allow_loop || r.allow_loop) {
            p.add(
                &format!("{at}.mqtt_topic"),
                format!(
                    "downlink `{}` publishes `{}`, which route `{}` subscribes (`{filter}`): the gateway would take \
                     what it publishes back to Kafka (`{}`)",
                    d.name, d.mqtt_topic, r.name, r.topic
                ),
                Some("narrow the route's filter or change the downlink's topic; set allow_loop: true on the downlink (or the route) if that is intended"),
            );
        }
    }
}
