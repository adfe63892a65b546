//! `mqtt-kafka-gateway explain`: what the gateway would make of one message, without any broker. Uses
//! the same pure core as the running pipeline, so what it prints is what would be produced.

use std::fmt::Write as _;
use std::time::SystemTime;

use crate::config::Config;
use crate::core::encoding::{Compiled, EncodingRule};
use crate::core::envelope::{self, Facts, Outcome, Record};
use crate::core::message::Message;
use crate::core::routing::DeviceIdSource;

/// Finds the registry schema of a subject for a route's encoding (`explain` asks the registry when one
/// is configured), or says why there is none.
pub type Resolve<'a> = &'a mut dyn FnMut(&str, &EncodingRule) -> Result<Compiled, String>;

/// A readable account of how `topic` + `payload` would be routed by `config`; `resolve` finds the
/// schemas of routes with a registry encoding.
pub fn explain(
    config: &Config,
    topic: &str,
    payload: &[u8],
    qos: u8,
    received_at: SystemTime,
    resolve: Resolve<'_>,
) -> String {
    let mut out = String::new();
    let routes = config.routes.routes();
    let msg = Message::new(topic, payload.to_vec(), qos, received_at);
    let facts = Facts::new(&msg);
    let matching: Vec<_> = config.routes.matching(topic).collect();
    let _ = writeln!(
        out,
        "MQTT topic {topic} (QoS {qos}, {} bytes) matches {} of {} route{}{}",
        payload.len(),
        matching.len(),
        routes.len(),
        if routes.len() == 1 { "" } else { "s" },
        if matching.is_empty() { "; the message would be counted as unrouted and dropped" } else { "" }
    );
    if let Some(s) =
        config.routes.subscriptions().iter().find(|s| crate::core::routing::filter::matches(topic, &s.filter))
    {
        let _ = writeln!(out, "subscribed through {} (QoS {})", s.filter, s.qos);
    } else if !matching.is_empty() {
        let _ = writeln!(out, "note: only a fallback filter subscribes this topic");
    }
    for route in matching {
        let _ = writeln!(out);
        if let Some(l) = &route.rate_limit {
            let _ = writeln!(
                out,
                "route {}: rate limit {:.3} records/s, burst {} (over it records wait their turn; a QoS 0 one whose turn is more than {} ms away is dropped)",
                route.name,
                1.0 / l.interval.as_secs_f64(),
                (l.tolerance.as_secs_f64() / l.interval.as_secs_f64()).round() as u64 + 1,
                l.qos0_max_delay.as_millis()
            );
        }
        let device = route.device(topic);
        let mut outcome = envelope::build(route, &facts, &device);
        let mut encoded = None;
        if let (Some(rule), Outcome::Record(record)) = (&route.encoding, &mut outcome) {
            let group = |name: &str| device.group(name);
            let values = crate::core::routing::template::Values { topic, device_id: device.id, group: &group };
            let schema = rule
                .subject_for(&record.topic, &values)
                .and_then(|subject| resolve(&subject, rule).map_err(|why| format!("subject {subject}: {why}")));
            match schema {
                Ok(schema) => match schema.apply(record) {
                    Ok(()) => encoded = Some(schema.label()),
                    Err(e) => {
                        outcome = envelope::dead_letter(
                            route,
                            &facts,
                            device.id,
                            envelope::DeadLetterReason::NotEncodable,
                            e.reason,
                        )
                    }
                },
                Err(why) => {
                    let _ = writeln!(out, "route {}: {} encoding not shown: {why}", route.name, rule.kind);
                }
            }
        }
        match outcome {
            Outcome::Record(record) => {
                let _ = writeln!(out, "route {} (filter {}): record", route.name, route.filter);
                let device_id = device.id;
                let source = match device.source {
                    DeviceIdSource::Regex => "device_id.regex",
                    DeviceIdSource::Fallback => "device_id.fallback_regex",
                    DeviceIdSource::Default => "device_id.default",
                };
                let _ = writeln!(out, "  device id    {device_id} (from {source})");
                if let Some(label) = &encoded {
                    let _ = writeln!(out, "  encoding     {label}");
                }
                describe(&mut out, &record, encoded.is_some());
            }
            Outcome::DeadLetter { record, reason, .. } => {
                let _ = writeln!(out, "route {} (filter {}): DEAD LETTER: {reason}", route.name, route.filter);
                describe(&mut out, &record, false);
            }
        }
    }
    out
}

/// The record's topic, key, headers and value; an `encoded` value in hex only (binary, even where it
/// happens to be valid UTF-8).
fn describe(out: &mut String, r: &Record, encoded: bool) {
    let _ = writeln!(out, "  kafka topic  {}", r.topic);
    let key = match &r.key {
        Some(k) => printable(k),
        None => "(none: the partitioner spreads records)".into(),
    };
    let _ = writeln!(out, "  key          {key}");
    let headers: Vec<String> = r.headers.iter().map(|(k, v)| format!("{k}={}", printable(v))).collect();
    let _ = writeln!(out, "  headers      {}", headers.join(", "));
    if encoded {
        let hex: String = r.value.iter().map(|b| format!("{b:02x}")).collect();
        let _ = writeln!(out, "  value hex    {hex}");
    } else {
        let _ = writeln!(out, "  value        {}", printable(&r.value));
    }
}

fn printable(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => {
            use base64::Engine as _;
            format!(
                "({} bytes, not UTF-8; base64 {})",
                bytes.len(),
                base64::engine::general_purpose::STANDARD.encode(bytes)
            )
        }
    }
}

/// One line describing a downlink, for `validate`.
pub fn downlink_line(d: &crate::core::downlink::Downlink) -> String {
    use crate::core::downlink::Setting;
    let qos = match &d.qos {
        Setting::Fixed(q) => q.to_string(),
        Setting::Header(h) => format!("{{header.{h}}}"),
    };
    let retain = match &d.retain {
        Setting::Fixed(r) => r.to_string(),
        Setting::Header(h) => format!("{{header.{h}}}"),
    };
    let limit =
        d.rate_limit.map(|l| format!(", at most {:.3} messages/s", 1.0 / l.interval.as_secs_f64())).unwrap_or_default();
    format!(
        "{}: {} -> {} (QoS {qos}, retain {retain}, group {}, dead letters to {}{limit})",
        d.name,
        d.kafka_topics.join(", "),
        d.mqtt_topic,
        d.group_id,
        d.dead_letter_topic
    )
}

/// A readable account of what the downlinks reading `record.topic` would publish for `record`, or why
/// it would be dead-lettered.
pub fn explain_record(config: &Config, record: &crate::core::downlink::Record) -> String {
    let mut out = String::new();
    let readers: Vec<_> = config.downlinks.iter().filter(|d| d.kafka_topics.contains(&record.topic)).collect();
    let _ = writeln!(
        out,
        "Kafka record on {} (partition {}, key {}, {} header{}, {} bytes) is read by {} of {} downlink{}",
        record.topic,
        record.partition,
        match &record.key {
            Some(k) => format!("{:?}", String::from_utf8_lossy(k)),
            None => "none".into(),
        },
        record.headers.len(),
        if record.headers.len() == 1 { "" } else { "s" },
        record.payload.len(),
        readers.len(),
        config.downlinks.len(),
        if config.downlinks.len() == 1 { "" } else { "s" },
    );
    let v5 = config.mqtt.protocol == crate::config::Protocol::V5;
    for d in readers {
        let _ = writeln!(out);
        match crate::core::downlink::render(d, record, config.mqtt.max_packet_size, v5) {
            Ok(p) => {
                let _ = writeln!(out, "downlink {}: publish to MQTT topic {}", d.name, p.topic);
                let _ = writeln!(
                    out,
                    "  QoS {}, retain {}, {} bytes (the record's value, unchanged)",
                    p.qos,
                    p.retain,
                    p.payload.len()
                );
                let props = &p.properties;
                if let Some(c) = &props.content_type {
                    let _ = writeln!(out, "  content type: {c}");
                }
                if let Some(f) = props.payload_format {
                    let _ = writeln!(out, "  payload format indicator: {f}");
                }
                if let Some(r) = &props.response_topic {
                    let _ = writeln!(out, "  response topic: {r}");
                }
                if let Some(c) = &props.correlation_data {
                    let _ = writeln!(out, "  correlation data: {} bytes", c.len());
                }
                for (n, v) in &props.user {
                    let _ = writeln!(out, "  user property {n}: {v}");
                }
                if !v5 && !record.headers.is_empty() {
                    let _ =
                        writeln!(out, "  (MQTT 3.1.1: the headers are not carried; MQTT 5 maps them to properties)");
                }
                if let Some(s) =
                    config.routes.routes().iter().find(|r| crate::core::routing::filter::matches(&p.topic, &r.filter))
                {
                    let _ = writeln!(
                        out,
                        "  note: route {} subscribes this topic (allow_loop): the gateway takes it back to {}",
                        s.name, s.topic
                    );
                }
            }
            Err(why) => {
                let _ =
                    writeln!(out, "downlink {}: cannot be published: {}: {}", d.name, why.kind.as_str(), why.detail);
                let _ = writeln!(
                    out,
                    "  dead-lettered to {} with the record's key, value and headers, plus dlq_reason",
                    d.dead_letter_topic
                );
            }
        }
    }
    out
}
