//! Payload contracts and rate limits, end to end against a real Mosquitto and Kafka: a route's JSON
//! Schema dead-letters what violates it (naming pointer and keyword), follows live edits of the schema
//! file and refuses a broken one; `validate` and `explain` see schemas; a rate-limited QoS 1 route
//! delivers everything at its rate without slowing another route; a rate-limited QoS 0 route counts its
//! drops.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{kafka, mosquitto_pub, new_topic, prom, publish_all, wait_until, Config, Gateway, Mosquitto, Route, WAIT};

/// Nested objects, arrays, a format and an enum.
const SCHEMA_V1: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["temp", "mode", "at"],
  "properties": {
    "temp": {"type": "number", "minimum": -40, "maximum": 125},
    "mode": {"enum": ["auto", "manual"]},
    "at": {"type": "string", "format": "date-time"},
    "location": {
      "type": "object",
      "required": ["lat", "lon"],
      "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}}
    },
    "sensors": {
      "type": "array",
      "items": {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}}
    }
  }
}"#;

fn start(config: &Path) -> Gateway {
    common::start_gateway(config, &[])
}

/// A config with one route on `telemetry/#` to `topic`, its schema at `schemas/telemetry.json`.
fn schema_setup(dir: &Path, mosquitto: &Mosquitto, topic: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("schemas")).unwrap();
    std::fs::write(dir.join("schemas/telemetry.json"), SCHEMA_V1).unwrap();
    let route = Route::new("telemetry", "telemetry/#", topic)
        .dead_letter_topic(&format!("{topic}.dlq"))
        .qos(1)
        .extra("    schema: schemas/telemetry.json\n")
        .device_id_regex("^telemetry/(?P<device_id>[^/]+)");
    brokers(mosquitto).route(route).write(dir)
}

/// The test's own Mosquitto, the shared Kafka, and no statistics line.
fn brokers(mosquitto: &Mosquitto) -> Config {
    Config::new().broker(mosquitto.addr()).bootstrap_servers(kafka().bootstrap()).stats_interval_secs(0)
}

/// A broker, a route topic and its dead-letter topic, and a gateway on [`schema_setup`]'s config.
fn schema_gateway(prefix: &str) -> (Mosquitto, String, String, tempfile::TempDir, Gateway) {
    let mosquitto = Mosquitto::start();
    let topic = new_topic(prefix, 1);
    let dlq = format!("{topic}.dlq");
    kafka().create_topic(&dlq, 1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = schema_setup(dir.path(), &mosquitto, &topic);
    let gw = start(&cfg);
    (mosquitto, topic, dlq, dir, gw)
}

fn replace(path: &Path, body: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_schema_passes_what_conforms_and_dead_letters_each_violation_by_pointer_and_keyword() {
    let (mosquitto, topic, dlq, _dir, gw) = schema_gateway("contract");

    let good = r#"{"temp": 21.5, "mode": "auto", "at": "2026-12-01T10:00:00Z", "location": {"lat": 52.1, "lon": 4.3}, "sensors": [{"id": 1}, {"id": 2}]}"#;
    let bad = r#"{"temp": 300, "mode": "turbo", "at": "yesterday", "location": {"lat": "north"}, "sensors": [{"id": 1}, {"name": "x"}]}"#;
    publish_all(
        mosquitto.port(),
        vec![("telemetry/dev-1/state".into(), good.into()), ("telemetry/dev-1/state".into(), bad.into())],
    );
    let records = kafka().consume(&topic, 1, WAIT);
    assert_eq!(records.len(), 1, "{}", gw.logs());
    assert!(records[0].value_str().contains(r#""mode": "auto""#), "the conforming one: {}", records[0].value_str());
    let dead = kafka().consume(&dlq, 1, WAIT);
    assert_eq!(dead.len(), 1, "{}", gw.logs());
    assert_eq!(dead[0].value_str(), bad, "the payload as published");
    let reason = dead[0].header_str("dlq_reason").unwrap_or_default();
    for needle in [
        "schema schemas/telemetry.json: ",
        "/temp: ",
        "(maximum)",
        "/mode: ",
        "(enum)",
        "/at: ",
        "(format)",
        "/location/lat: ",
        "(type)",
        "/location: ",
        "\"lon\" is a required property (required)",
        "/sensors/1: ",
    ] {
        assert!(reason.contains(needle), "{needle:?} in the reason: {reason}");
    }
    let samples = gw.metrics();
    assert_eq!(
        prom::value(
            &samples,
            "mqtt_kafka_gateway_dead_letters_total",
            &[("route", "telemetry"), ("reason", "schema_invalid")]
        ),
        1.0
    );
    assert!(kafka().consume_for(&topic, Duration::from_secs(1)).len() == 1, "nothing else in the route's topic");
}

#[test]
fn a_schema_edit_applies_live_and_a_broken_one_is_refused_while_the_old_stays() {
    let (mosquitto, topic, dlq, dir, gw) = schema_gateway("contract_live");
    assert!(gw.logs().contains("schemas"), "the schema directory is watched:\n{}", gw.logs());
    let schema = dir.path().join("schemas/telemetry.json");
    let eco = r#"{"temp": 20, "mode": "eco", "at": "2026-12-01T10:00:00Z"}"#;

    // v1 refuses mode "eco".
    mosquitto_pub(mosquitto.port(), "telemetry/dev-2/state", eco.as_bytes(), 1);
    assert_eq!(kafka().consume(&dlq, 1, WAIT).len(), 1, "{}", gw.logs());

    // The schema file alone changes: "eco" becomes a mode.
    replace(&schema, &SCHEMA_V1.replace(r#"["auto", "manual"]"#, r#"["auto", "manual", "eco"]"#));
    assert!(
        wait_until(WAIT, Duration::from_millis(50), || gw.count_in_log("routes reloaded") >= 1),
        "no reload for the schema edit:\n{}",
        gw.logs()
    );
    let reloaded = gw.logs().lines().find(|l| l.contains("routes reloaded")).unwrap_or_default().to_string();
    assert!(reloaded.contains("telemetry"), "the route is named as changed: {reloaded}");
    mosquitto_pub(mosquitto.port(), "telemetry/dev-2/state", eco.as_bytes(), 1);
    let records = kafka().consume(&topic, 1, WAIT);
    assert_eq!(records.len(), 1, "{}", gw.logs());

    // A broken schema: refused, with the file, the line and a hint; the edited schema stays.
    replace(
        &schema,
        "{\n  \"type\": \"object\",\n  \"properties\": {\n    \"temp\": {\"type\": \"number\"} \"mode\": {}\n  }\n}\n",
    );
    assert!(
        wait_until(WAIT, Duration::from_millis(50), || gw.logs().contains("the new configuration is invalid")),
        "{}",
        gw.logs()
    );
    let logs = gw.logs();
    let refusal = &logs[logs.find("the new configuration is invalid").unwrap()..];
    assert!(
        refusal.contains("routes[0].schema") && refusal.contains("schemas/telemetry.json`:4:"),
        "file and line: {refusal}"
    );
    assert!(refusal.contains("not valid JSON") && refusal.contains("hint"), "what and a hint: {refusal}");
    mosquitto_pub(mosquitto.port(), "telemetry/dev-2/state", eco.as_bytes(), 1);
    mosquitto_pub(
        mosquitto.port(),
        "telemetry/dev-2/state",
        br#"{"temp": "x", "mode": "eco", "at": "2026-12-01T10:00:00Z"}"#,
        1,
    );
    assert_eq!(kafka().consume(&topic, 2, WAIT).len(), 2, "eco still passes:\n{}", gw.logs());
    assert_eq!(kafka().consume(&dlq, 2, WAIT).len(), 2, "a string temp still fails:\n{}", gw.logs());
}

fn cli(args: &[&str]) -> (i32, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_mqtt-kafka-gateway")).args(args).output().expect("run the gateway binary");
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn validate_checks_schema_files_and_explain_shows_the_violations() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("schemas")).unwrap();
    std::fs::write(dir.path().join("schemas/telemetry.json"), SCHEMA_V1).unwrap();
    let cfg = Config::new()
        .route(
            Route::new("telemetry", "telemetry/#", "t")
                .extra("    schema: schemas/telemetry.json\n    rate_limit:\n      messages_per_sec: 50\n"),
        )
        .write(dir.path());
    let path = cfg.to_str().unwrap();
    let (code, out) = cli(&["validate", "--config", path]);
    assert_eq!(code, 0, "{out}");

    let (code, out) = cli(&[
        "explain",
        "--config",
        path,
        "--topic",
        "telemetry/dev-3/state",
        "--payload",
        r#"{"temp": -50, "mode": "auto"}"#,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("DEAD LETTER: schema schemas/telemetry.json: "), "{out}");
    assert!(
        out.contains("/temp: ")
            && out.contains("(minimum)")
            && out.contains("\"at\" is a required property (required)"),
        "{out}"
    );
    assert!(out.contains("rate limit 50.000 records/s, burst 50"), "{out}");

    // A schema that is not one: `type` must be a type name.
    std::fs::write(
        dir.path().join("schemas/telemetry.json"),
        "{\n  \"type\": \"object\",\n  \"properties\": {\n    \"temp\": {\"type\": \"nmuber\"}\n  }\n}\n",
    )
    .unwrap();
    let (code, out) = cli(&["validate", "--config", path]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("routes[0].schema")
            && out.contains("telemetry.json`:4")
            && out.contains("not a valid JSON Schema"),
        "{out}"
    );
    std::fs::remove_file(dir.path().join("schemas/telemetry.json")).unwrap();
    let (code, out) = cli(&["validate", "--config", path]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("cannot read") && out.contains("relative to the configuration file"), "{out}");
}

#[test]
fn a_rate_limited_qos1_route_delivers_everything_at_its_rate_without_slowing_another_route() {
    let mosquitto = Mosquitto::start();
    let (slow, fast) = (new_topic("limited", 1), new_topic("unlimited", 1));
    let dir = tempfile::tempdir().unwrap();
    let cfg = brokers(&mosquitto)
        .route(
            Route::new("limited", "slow/#", &slow)
                .qos(1)
                .extra("    rate_limit:\n      messages_per_sec: 4\n      burst: 1\n")
                .device_id_regex("^slow/(?P<device_id>[^/]+)"),
        )
        .route(Route::new("unlimited", "fast/#", &fast).qos(1).device_id_regex("^fast/(?P<device_id>[^/]+)"))
        .write(dir.path());
    let gw = start(&cfg);
    let started = Instant::now();
    let mut messages: Vec<(String, Vec<u8>)> =
        (0..20).map(|i| (format!("slow/dev-{}/x", i % 2), format!(r#"{{"n":{i}}}"#).into_bytes())).collect();
    messages.extend((0..20).map(|i| (format!("fast/dev-{}/x", i % 2), format!(r#"{{"n":{i}}}"#).into_bytes())));
    publish_all(mosquitto.port(), messages);

    // The other route is not held behind the limited one's queue.
    let unlimited = kafka().consume(&fast, 20, WAIT);
    assert_eq!(unlimited.len(), 20, "{}", gw.logs());
    let limited_then =
        prom::value(&gw.metrics(), "mqtt_kafka_gateway_records_delivered_total", &[("route", "limited")]);
    assert!(limited_then < 20.0, "the unlimited route finished first (limited had {limited_then} of 20)");

    let limited = kafka().consume(&slow, 20, WAIT);
    let elapsed = started.elapsed();
    assert_eq!(limited.len(), 20, "every QoS 1 message of the limited route arrives:\n{}", gw.logs());
    // 19 intervals of 250 ms after the first: at least 4.75 s. A generous bound, never a tight upper one.
    assert!(elapsed >= Duration::from_millis(4500), "20 records at 4/s took only {elapsed:?}");
    for device in ["dev-0", "dev-1"] {
        let seq: Vec<u64> = limited
            .iter()
            .filter(|r| r.key_str() == Some(device))
            .map(|r| {
                serde_json::from_str::<serde_json::Value>(r.value_str()).unwrap()["payload"]["n"].as_u64().unwrap()
            })
            .collect();
        assert!(seq.windows(2).all(|w| w[0] < w[1]), "{device} in order: {seq:?}");
    }
    let samples = gw.metrics();
    assert_eq!(prom::value(&samples, "mqtt_kafka_gateway_records_delayed_total", &[("route", "limited")]), 19.0);
    assert_eq!(prom::value(&samples, "mqtt_kafka_gateway_records_delayed_total", &[("route", "unlimited")]), 0.0);
    assert_eq!(
        prom::value(&samples, "mqtt_kafka_gateway_records_dropped_total", &[("route", "limited")]),
        0.0,
        "QoS 1: nothing dropped"
    );
}

#[test]
fn a_rate_limited_qos0_route_counts_what_it_drops() {
    let mosquitto = Mosquitto::start();
    let topic = new_topic("limited_qos0", 1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = brokers(&mosquitto)
        .route(
            Route::new("flood", "flood/#", &topic)
                .qos(0)
                .extra("    rate_limit:\n      messages_per_sec: 5\n      burst: 2\n      qos0_max_delay_ms: 400\n"),
        )
        .write(dir.path());
    let gw = start(&cfg);
    let messages: Vec<(String, Vec<u8>)> =
        (0..60).map(|i| ("flood/dev-9/x".to_string(), format!(r#"{{"n":{i}}}"#).into_bytes())).collect();
    publish_all(mosquitto.port(), messages);
    let counted = |gw: &Gateway| {
        let s = gw.metrics();
        let delivered = prom::value(&s, "mqtt_kafka_gateway_records_delivered_total", &[("route", "flood")]);
        let dropped = prom::value(
            &s,
            "mqtt_kafka_gateway_records_dropped_total",
            &[("route", "flood"), ("reason", "rate_limited")],
        );
        (delivered, dropped)
    };
    assert!(
        wait_until(WAIT, Duration::from_millis(100), || {
            let (d, x) = counted(&gw);
            d + x >= 60.0
        }),
        "every message delivered or counted as dropped: {:?}\n{}",
        counted(&gw),
        gw.logs()
    );
    let (delivered, dropped) = counted(&gw);
    // A burst of 2, then one per 200 ms within the 400 ms bound: a handful pass, the rest are dropped.
    assert!((2.0..=10.0).contains(&delivered), "delivered {delivered}");
    assert_eq!(delivered + dropped, 60.0);
    assert_eq!(kafka().consume_for(&topic, Duration::from_secs(2)).len(), delivered as usize);
    assert!(gw.logs().contains("over the route's rate limit"), "a WARN says so:\n{}", gw.logs());
}
