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
