//! Schema Registry encodings end to end, against a real Mosquitto, a real Kafka and a real
//! Confluent-compatible registry (franz-go's `srfake`, see `tests/common/registry.rs`), every record
//! decoded by confluent-kafka's own deserializers (Python), not by ours: the spec's envelope in Avro with
//! the payload as a map; a typed raw payload in Avro (logical types) and in Protobuf; JSON Schema; every
//! misfit dead-lettered naming its field; a new version registered while messages flow; the registry
//! down at start and going away mid-run; basic auth and a wrong password; `check` and `explain`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::registry::{decode, DecodeFormat, SchemaRegistry};
use common::{
    holds_for, kafka, new_topic, prom, publish_all, wait_until, Config, Gateway, Mosquitto, Record, Route, WAIT,
};

const SPEC_TOPIC: &str = "cmnd/f2-e4fd45f654be/access-control-mode/J1/door-sensors";
const SPEC_PAYLOAD: &str =
    r#"{"timestamp": "2023-05-26 18:34:04.928538", "door-sensor-1": false, "door-sensor-2": true}"#;

/// The spec's envelope in Avro: the payload's keys (`door-sensor-1`) are not Avro names, so the payload
/// is a map whose values may be any JSON scalar.
const ENVELOPE_AVRO: &str = r#"{
  "type": "record", "name": "Envelope", "namespace": "iot",
  "fields": [
    {"name": "original_topic", "type": "string"},
    {"name": "device_id", "type": "string"},
    {"name": "payload", "type": {"type": "map", "values": ["null", "boolean", "long", "double", "string"]}},
    {"name": "timestamp", "type": "double"}
  ]
}"#;

const READING_AVRO: &str = r#"{
  "type": "record", "name": "Reading", "namespace": "iot",
  "fields": [
    {"name": "device", "type": "string"},
    {"name": "temp", "type": "double"},
    {"name": "count", "type": "int"},
    {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "mode", "type": {"type": "enum", "name": "Mode", "symbols": ["AUTO", "MANUAL"]}},
    {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 6, "scale": 2}},
    {"name": "tags", "type": {"type": "array", "items": "string"}},
    {"name": "note", "type": ["null", "string"], "default": null},
    {"name": "site", "type": {"type": "record", "name": "Site", "fields": [{"name": "lat", "type": "double"}]}}
  ]
}"#;

const READING_PROTO: &str = r#"syntax = "proto3";
package iot;

message Other {
  string unused = 1;
}

message Reading {
  string device = 1;
  double temp = 2;
  int64 count = 3;
  Mode mode = 4;
  repeated string tags = 5;
  map<string, double> extra = 6;
  enum Mode {
    AUTO = 0;
    MANUAL = 1;
  }
}
"#;

const READING_JSON_SCHEMA: &str = r#"{
  "$schema": "http://json-schema.org/draft-07/schema#",
  "type": "object",
  "required": ["device", "temp"],
  "properties": {"device": {"type": "string"}, "temp": {"type": "number", "maximum": 125}},
  "additionalProperties": false
}"#;

fn brokers(mosquitto: &Mosquitto, registry_url: &str) -> Config {
    Config::new()
        .broker(mosquitto.addr())
        .bootstrap_servers(kafka().bootstrap())
        .stats_interval_secs(0)
        .extra(&format!("schema_registry:\n  url: {registry_url}\n  refresh_secs: 1\n"))
}

/// A route on `filter` to `topic` (and `<topic>.dlq`, created), QoS 1, device id the second level.
fn route(name: &str, filter: &str, topic: &str, extra: &str) -> Route {
    Route::new(name, filter, topic)
        .qos(1)
        .dead_letter_topic(&format!("{topic}.dlq"))
        .device_id_regex("^[^/]+/(?P<device_id>[^/]+)")
        .extra(extra)
}

fn topics(prefix: &str) -> (String, String) {
    let topic = new_topic(prefix, 1);
    let dlq = format!("{topic}.dlq");
    kafka().create_topic(&dlq, 1);
    (topic, dlq)
}

fn values(records: &[Record]) -> Vec<Vec<u8>> {
    records.iter().map(|r| r.value.clone()).collect()
}

fn decoded_ok(registry: &SchemaRegistry, format: DecodeFormat, records: &[Record]) -> Vec<common::registry::Decoded> {
    decode(registry, format, &values(records))
        .into_iter()
        .map(|d| d.unwrap_or_else(|e| panic!("confluent-kafka could not decode a record: {e}")))
        .collect()
}

fn start(config: &Path) -> Gateway {
    common::start_gateway(config, &[])
}

#[test]
fn the_spec_envelope_in_avro_is_read_by_confluents_deserializer() {
    let registry = SchemaRegistry::start();
    let mosquitto = Mosquitto::start();
    let (topic, dlq) = topics("sr-envelope");
    let id = registry.register(&format!("{topic}-value"), "AVRO", ENVELOPE_AVRO);
    let dir = tempfile::tempdir().unwrap();
    let cfg = brokers(&mosquitto, &registry.url())
        .route(Route::new("doors", "cmnd/#", &topic).qos(1).dead_letter_topic(&dlq).extra("    encoding: avro\n"))
        .write(dir.path());
    let gw = start(&cfg);
    let nested = r#"{"door-sensor-1": {"not": "a scalar"}}"#;
    publish_all(mosquitto.port(), vec![(SPEC_TOPIC.into(), SPEC_PAYLOAD.into()), (SPEC_TOPIC.into(), nested.into())]);
    let records = kafka().consume(&topic, 1, WAIT);
    assert_eq!(records.len(), 1, "{}", gw.logs());
    assert_eq!(records[0].header_str("schema_id"), Some(id.to_string().as_str()));
    assert_eq!(records[0].key_str(), Some("f2-e4fd45f654be"));
    let d = decoded_ok(&registry, DecodeFormat::Avro, &records);
    assert_eq!(d[0].schema_id, id);
    let v = &d[0].value;
    assert_eq!(v["original_topic"], SPEC_TOPIC);
    assert_eq!(v["device_id"], "f2-e4fd45f654be");
    assert_eq!(v["payload"]["timestamp"], "2023-05-26 18:34:04.928538");
    assert_eq!(v["payload"]["door-sensor-1"], false);
    assert_eq!(v["payload"]["door-sensor-2"], true);
    assert!(v["timestamp"].as_f64().is_some_and(|t| t > 1.6e9), "{v}");

    let dead = kafka().consume(&dlq, 1, WAIT);
    assert_eq!(dead.len(), 1, "{}", gw.logs());
    assert_eq!(dead[0].value_str(), nested, "the payload as published");
    let reason = dead[0].header_str("dlq_reason").unwrap_or_default();
    assert!(reason.contains("/payload/door-sensor-1") && reason.contains(&format!("avro schema {id}")), "{reason}");
    let samples = gw.metrics();
    assert_eq!(prom::value(&samples, "mqtt_kafka_gateway_records_encoded_total", &[("encoding", "avro")]), 1.0);
    let failures = |reason| {
        prom::value(&samples, "mqtt_kafka_gateway_encoding_failures_total", &[("encoding", "avro"), ("reason", reason)])
    };
    assert_eq!((failures("misfit"), failures("not_json"), failures("no_schema")), (1.0, 0.0, 0.0));
    assert_eq!(prom::value(&samples, "mqtt_kafka_gateway_route_schema_id", &[("route", "doors")]), f64::from(id));
}

#[test]
fn a_typed_raw_payload_in_avro_with_logical_types_and_every_misfit_named() {
    let registry = SchemaRegistry::start();
    let mosquitto = Mosquitto::start();
    let (topic, dlq) = topics("sr-reading");
    let id = registry.register(&format!("{topic}-value"), "AVRO", READING_AVRO);
    let dir = tempfile::tempdir().unwrap();
    let cfg = brokers(&mosquitto, &registry.url())
        .route(route("readings", "tele/#", &topic, "    format: raw\n    encoding: {type: avro}\n"))
        .write(dir.path());
    let gw = start(&cfg);
    let good = serde_json::json!({
        "device": "dev-1", "temp": 21.5, "count": 7, "at": "2026-12-04T10:00:00.123Z", "mode": "MANUAL",
        "id": "123e4567-e89b-12d3-a456-426614174000", "price": "1234.50", "tags": ["a", "b"],
        "site": {"lat": 52.1}
    });
    let with = |key: &str, value: serde_json::Value| {
        let mut v = good.clone();
        v[key] = value;
        v.to_string()
    };
    let without = |key: &str| {
        let mut v = good.clone();
        v.as_object_mut().unwrap().remove(key);
        v.to_string()
    };
    // (payload, what the reason must name)
    let misfits: Vec<(String, &[&str])> = vec![
        (with("temp", serde_json::json!("hot")), &["/temp", "double", "string"]),
        (with("count", serde_json::json!(3_000_000_000u64)), &["/count", "int"]),
        (with("count", serde_json::json!(1.5)), &["/count"]),
        (with("mode", serde_json::json!("TURBO")), &["/mode", "AUTO"]),
        (with("id", serde_json::json!("not-a-uuid")), &["/id", "uuid"]),
        (with("price", serde_json::json!("1.234")), &["/price", "decimal"]),
        (with("at", serde_json::json!("yesterday")), &["/at"]),
        (with("tags", serde_json::json!(["a", 2])), &["/tags/1", "string"]),
        (with("site", serde_json::json!({"lat": "north"})), &["/site/lat", "double"]),
        (with("unknown", serde_json::json!(1)), &["/unknown"]),
        (without("temp"), &["/temp", "absent"]),
        ("not json".to_string(), &["not JSON"]),
    ];
    let mut messages = vec![("tele/dev-1/reading".to_string(), good.to_string().into_bytes())];
    messages.extend(misfits.iter().map(|(p, _)| ("tele/dev-1/reading".to_string(), p.clone().into_bytes())));
    publish_all(mosquitto.port(), messages);

    let records = kafka().consume(&topic, 1, WAIT);
    assert_eq!(records.len(), 1, "{}", gw.logs());
    let d = decoded_ok(&registry, DecodeFormat::Avro, &records);
    let v = &d[0].value;
    assert_eq!(d[0].schema_id, id);
    assert_eq!(v["device"], "dev-1");
    assert_eq!(v["count"], 7);
    assert_eq!(v["mode"], "MANUAL");
    assert_eq!(v["id"], "123e4567-e89b-12d3-a456-426614174000");
    assert_eq!(v["price"], "1234.50");
    assert_eq!(v["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(v["note"], serde_json::Value::Null, "the default");
    assert_eq!(v["site"]["lat"], 52.1);
    let at = v["at"].as_str().unwrap_or_default();
    assert!(at.starts_with("2026-12-04T10:00:00.123"), "timestamp-millis from RFC 3339: {at}");

    let dead = kafka().consume(&dlq, misfits.len(), WAIT);
    assert_eq!(dead.len(), misfits.len(), "{}", gw.logs());
    for (record, (payload, needles)) in dead.iter().zip(&misfits) {
        assert_eq!(record.value_str(), payload, "the payload as published, in order");
        let reason = record.header_str("dlq_reason").unwrap_or_default();
        for needle in *needles {
            assert!(reason.contains(needle), "{needle:?} in the reason for {payload}: {reason}");
        }
    }
}

#[test]
fn a_typed_raw_payload_in_protobuf_and_json_schema() {
    let registry = SchemaRegistry::start();
    let mosquitto = Mosquitto::start();
    let (proto_topic, proto_dlq) = topics("sr-proto");
    let (json_topic, json_dlq) = topics("sr-json");
    let proto_id = registry.register(&format!("{proto_topic}-value"), "PROTOBUF", READING_PROTO);
    let json_id = registry.register("readings-json", "JSON", READING_JSON_SCHEMA);
    let dir = tempfile::tempdir().unwrap();
    let proto_file = dir.path().join("reading.proto");
    std::fs::write(&proto_file, READING_PROTO).unwrap();
    let cfg = brokers(&mosquitto, &registry.url())
        .route(route(
            "proto",
            "tele/#",
            &proto_topic,
            "    format: raw\n    encoding:\n      type: protobuf\n      message: iot.Reading\n",
        ))
        .route(route(
            "json",
            "json/#",
            &json_topic,
            "    format: raw\n    encoding: {type: json_schema, subject: readings-json, version: 1}\n",
        ))
        .write(dir.path());
    let gw = start(&cfg);
    let good = r#"{"device": "dev-1", "temp": 21.5, "count": "9007199254740993", "mode": "MANUAL", "tags": ["a"], "extra": {"rh": 40.5}}"#;
    publish_all(
        mosquitto.port(),
        vec![
            ("tele/dev-1/r".into(), good.into()),
            ("tele/dev-1/r".into(), r#"{"device": "dev-1", "temp": "hot"}"#.into()),
            ("tele/dev-1/r".into(), r#"{"device": "dev-1", "colour": "red"}"#.into()),
            ("json/dev-1/r".into(), r#"{"device": "dev-1", "temp": 20}"#.into()),
            ("json/dev-1/r".into(), r#"{"device": "dev-1", "temp": 200}"#.into()),
        ],
    );
    let records = kafka().consume(&proto_topic, 1, WAIT);
    assert_eq!(records.len(), 1, "{}", gw.logs());
    assert_eq!(records[0].header_str("schema_id"), Some(proto_id.to_string().as_str()));
    let d = decoded_ok(&registry, DecodeFormat::Protobuf { proto: &proto_file, message: "Reading" }, &records);
    assert_eq!(d[0].schema_id, proto_id);
    assert_eq!(d[0].message_indexes.as_deref(), Some(&[1][..]), "the second message of the file");
    let v = &d[0].value;
    assert_eq!(v["device"], "dev-1");
    assert_eq!(v["temp"], 21.5);
    assert_eq!(v["count"], "9007199254740993", "a 64-bit integer, exact");
    assert_eq!(v["mode"], "MANUAL");
    assert_eq!(v["extra"]["rh"], 40.5);
    let dead = kafka().consume(&proto_dlq, 2, WAIT);
    assert_eq!(dead.len(), 2, "{}", gw.logs());
    let reasons: Vec<&str> = dead.iter().map(|r| r.header_str("dlq_reason").unwrap_or_default()).collect();
    assert!(reasons[0].contains("/temp") && reasons[0].contains("protobuf schema"), "{}", reasons[0]);
    assert!(reasons[1].contains("colour"), "{}", reasons[1]);

    let records = kafka().consume(&json_topic, 1, WAIT);
    assert_eq!(records.len(), 1, "{}", gw.logs());
    let d = decoded_ok(&registry, DecodeFormat::Json { schema: None }, &records);
    assert_eq!((d[0].schema_id, &d[0].value), (json_id, &serde_json::json!({"device": "dev-1", "temp": 20})));
    let dead = kafka().consume(&json_dlq, 1, WAIT);
    assert_eq!(dead.len(), 1, "{}", gw.logs());
    let reason = dead[0].header_str("dlq_reason").unwrap_or_default();
    assert!(reason.contains("/temp") && reason.contains("(maximum)"), "{reason}");
}

/// Registers a second version while QoS 1 messages flow: the records switch ids from one message on,
/// in order, and none is lost.
#[test]
fn a_new_version_registered_while_messages_flow_applies_live_and_loses_nothing() {
    let registry = SchemaRegistry::start();
    let mosquitto = Mosquitto::start();
    let (topic, _dlq) = topics("sr-evolve");
    let subject = format!("{topic}-value");
    let v1 = r#"{"type": "record", "name": "R", "fields": [{"name": "n", "type": "long"}]}"#;
    let v2 = r#"{"type": "record", "name": "R", "fields": [{"name": "n", "type": "long"}, {"name": "unit", "type": "string", "default": "none"}]}"#;
    let id1 = registry.register(&subject, "AVRO", v1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = brokers(&mosquitto, &registry.url())
        .route(route("evolving", "tele/#", &topic, "    format: raw\n    encoding: avro\n"))
        .write(dir.path());
    let gw = start(&cfg);
    let total = 400;
    let port = mosquitto.port();
    let publisher = std::thread::spawn(move || {
        let messages: Vec<(String, Vec<u8>)> =
            (0..total).map(|n| ("tele/dev-1/n".to_string(), format!(r#"{{"n": {n}}}"#).into_bytes())).collect();
        common::publish_paced(port, messages, 20, Duration::from_millis(200));
    });
    let delivered =
        || prom::value(&gw.metrics(), "mqtt_kafka_gateway_records_delivered_total", &[("route", "evolving")]);
    assert!(wait_until(WAIT, Duration::from_millis(50), || delivered() > 0.0), "{}", gw.logs());
    let id2 = registry.register(&subject, "AVRO", v2);
    assert_ne!(id1, id2);
    publisher.join().unwrap();
    let records = kafka().consume(&topic, total, WAIT);
    assert_eq!(records.len(), total, "{}", gw.logs());
    let d = decoded_ok(&registry, DecodeFormat::Avro, &records);
    let ns: Vec<i64> = d.iter().map(|d| d.value["n"].as_i64().unwrap()).collect();
    assert_eq!(ns, (0..total as i64).collect::<Vec<_>>(), "every message, in order");
    let ids: Vec<u32> = d.iter().map(|d| d.schema_id).collect();
    let switch = ids.iter().position(|&i| i == id2).expect("records carry the new id once it is registered");
    assert!(switch > 0, "the first records carry the first id");
    assert!(ids[..switch].iter().all(|&i| i == id1) && ids[switch..].iter().all(|&i| i == id2), "{ids:?}");
    assert_eq!(d.last().unwrap().value["unit"], "none", "written by the new version, with its default");
    assert!(gw.logs().contains("a new version applies"), "{}", gw.logs());
}

/// Down at start: not ready, naming the registry; QoS 1 messages held (nothing written unencoded) and
/// delivered once it answers. Going away later changes nothing: the cached schema keeps working.
#[test]
fn a_registry_down_at_start_holds_messages_and_one_gone_later_changes_nothing() {
    let mosquitto = Mosquitto::start();
    let (topic, dlq) = topics("sr-down");
    // The registry's port, held until it starts (closing every connection: the registry is away), so
    // that no other registry of the tests running alongside takes it meanwhile.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    holder.set_nonblocking(true).unwrap();
    let holding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let held = {
        let holding = holding.clone();
        std::thread::spawn(move || {
            while holding.load(std::sync::atomic::Ordering::Relaxed) {
                while let Ok((conn, _)) = holder.accept() {
                    drop(conn);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let url = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let schema = r#"{"type": "record", "name": "R", "fields": [{"name": "n", "type": "long"}]}"#;
    let cfg = brokers(&mosquitto, &url)
        .route(route("held", "tele/#", &topic, "    format: raw\n    encoding: avro\n"))
        .write(dir.path());
    let gw = start(&cfg);
    let ready =
        || common::http::get(&gw.http_addr(), "/readyz").map(|a| (a.status, a.body)).unwrap_or((0, String::new()));
    assert!(wait_until(WAIT, Duration::from_millis(100), || ready().1.contains("schema registry")), "{:?}", ready());
    assert_eq!(ready().0, 503);
    let messages = |from: i64, to: i64| -> Vec<(String, Vec<u8>)> {
        (from..to).map(|n| ("tele/dev-1/n".to_string(), format!(r#"{{"n": {n}}}"#).into_bytes())).collect()
    };
    publish_all(mosquitto.port(), messages(0, 20));
    let metric = |name: &str| prom::value(&gw.metrics(), name, &[]);
    assert!(
        wait_until(WAIT, Duration::from_millis(100), || metric("mqtt_kafka_gateway_records_awaiting_schema") == 20.0),
        "the records wait for their schema: {}",
        gw.logs()
    );
    assert!(
        holds_for(Duration::from_secs(2), Duration::from_millis(200), || {
            metric("mqtt_kafka_gateway_records_enqueued_total") == 0.0
                && metric("mqtt_kafka_gateway_records_awaiting_schema") == 20.0
        }),
        "nothing is written (nor dead-lettered) before the schema is known"
    );
    assert_eq!(metric("mqtt_kafka_gateway_unacked_messages"), 20.0, "QoS 1: none acknowledged yet");

    holding.store(false, std::sync::atomic::Ordering::Relaxed);
    held.join().unwrap();
    let mut registry = SchemaRegistry::start_on(port, None);
    let id = registry.register(&format!("{topic}-value"), "AVRO", schema);
    let records = kafka().consume(&topic, 20, WAIT);
    assert_eq!(records.len(), 20, "{}", gw.logs());
    assert!(kafka().consume_for(&dlq, Duration::from_secs(1)).is_empty(), "nothing dead-lettered");
    let d = decoded_ok(&registry, DecodeFormat::Avro, &records);
    assert_eq!(d.iter().map(|d| d.value["n"].as_i64().unwrap()).collect::<Vec<_>>(), (0..20).collect::<Vec<_>>());
    assert!(wait_until(WAIT, Duration::from_millis(100), || ready().0 == 200), "{:?}", ready());

    let errors =
        || prom::value(&gw.metrics(), "mqtt_kafka_gateway_schema_registry_requests_total", &[("result", "error")]);
    let errors_before = errors();
    registry.stop();
    publish_all(mosquitto.port(), messages(20, 30));
    let records = kafka().consume(&topic, 30, WAIT);
    assert_eq!(records.len(), 30, "{}", gw.logs());
    assert!(records.iter().all(|r| r.header_str("schema_id") == Some(id.to_string().as_str())));
    // refresh_secs is 1: the failed look-ups show, the gateway stays ready.
    assert!(wait_until(WAIT, Duration::from_millis(200), || errors() > errors_before), "{}", gw.logs());
    assert!(gw.wait_for_log("the cached schema stays in use", WAIT), "{}", gw.logs());
    assert_eq!(ready().0, 200, "{:?}", ready());
}

#[test]
fn basic_auth_works_and_a_wrong_password_is_named_never_shown() {
    let password = "sr-s3cret-pw";
    let registry = SchemaRegistry::start_with_auth("gateway", password);
    let mosquitto = Mosquitto::start();
    let (topic, _dlq) = topics("sr-auth");
    let schema = r#"{"type": "record", "name": "R", "fields": [{"name": "n", "type": "long"}]}"#;
    let id = registry.register(&format!("{topic}-value"), "AVRO", schema);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sr-password"), format!("{password}\n")).unwrap();
    let config = |password_file: &str| {
        Config::new()
            .broker(mosquitto.addr())
            .bootstrap_servers(kafka().bootstrap())
            .stats_interval_secs(0)
            .extra(&format!(
                "schema_registry:\n  url: {}\n  username: gateway\n  password_file: {password_file}\n",
                registry.url()
            ))
            .route(route("auth", "tele/#", &topic, "    format: raw\n    encoding: avro\n"))
    };
    let good = config(&dir.path().join("sr-password").display().to_string()).write(dir.path());
    let gw = start(&good);
    publish_all(mosquitto.port(), vec![("tele/dev-1/n".into(), br#"{"n": 1}"#.to_vec())]);
    let records = kafka().consume(&topic, 1, WAIT);
    assert_eq!(records.len(), 1, "{}", gw.logs());
    assert_eq!(decoded_ok(&registry, DecodeFormat::Avro, &records)[0].schema_id, id);
    drop(gw);

    std::fs::write(dir.path().join("wrong"), "not-the-password").unwrap();
    let wrong_dir = tempfile::tempdir().unwrap();
    let wrong = config(&dir.path().join("wrong").display().to_string()).write(wrong_dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_mqtt-kafka-gateway"))
        .args(["--config", &wrong.display().to_string(), "check"])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  registry authenticated") && text.contains("refused the credentials (HTTP 401)"),
        "{text}"
    );
    assert!(!text.contains("not-the-password"), "{text}");
    let gw = start(&wrong);
    let ready =
        || common::http::get(&gw.http_addr(), "/readyz").map(|a| (a.status, a.body)).unwrap_or((0, String::new()));
    assert!(
        wait_until(WAIT, Duration::from_millis(100), || ready().1.contains("refused the credentials")),
        "{:?}",
        ready()
    );
    assert!(!gw.logs().contains("not-the-password") && !gw.logs().contains(password));
}

#[test]
fn check_and_explain_use_the_registry_and_validate_needs_none() {
    let registry = SchemaRegistry::start();
    let mosquitto = Mosquitto::start();
    let (topic, _dlq) = topics("sr-cli");
    let id = registry.register(&format!("{topic}-value"), "AVRO", ENVELOPE_AVRO);
    let dir = tempfile::tempdir().unwrap();
    let cfg = brokers(&mosquitto, &registry.url())
        .route(Route::new("doors", "cmnd/#", &topic).extra("    encoding: avro\n"))
        .route(Route::new("missing", "other/#", "nowhere").extra("    encoding: protobuf\n"))
        .write(dir.path());
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_mqtt-kafka-gateway"))
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .output()
            .unwrap();
        (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    let (code, text) = run(&["validate"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("avro by subject {topic}-value version latest"), "{text}");
    let (code, text) = run(&["check"]);
    assert_eq!(code, Some(1), "the missing subject fails: {text}");
    assert!(
        text.contains(&format!("OK    registry route \"doors\" avro subject: {topic}-value version 1 is schema {id}")),
        "{text}"
    );
    assert!(
        text.contains("FAIL  registry route \"missing\" protobuf subject") && text.contains("nowhere-value"),
        "{text}"
    );
    let (code, text) = run(&["explain", "--topic", SPEC_TOPIC, "--payload", SPEC_PAYLOAD]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(&format!("encoding     avro schema {id}")), "{text}");
    assert!(text.contains(&format!("schema_id={id}")), "{text}");
    let hex_line = text.lines().find(|l| l.contains("value hex")).unwrap_or_default().to_string();
    assert!(hex_line.contains(&format!("00{id:08x}")), "magic byte and id: {hex_line}");

    // Offline: no registry needed to validate, but an unknown encoding or a missing URL is named.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "routes:\n  - name: r\n    filter: a/#\n    topic: t\n    encoding: thrift\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mqtt-kafka-gateway")).args(["validate"]).arg(&bad).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("routes[0].encoding") && text.contains("thrift"), "{text}");
    std::fs::write(&bad, "routes:\n  - name: r\n    filter: a/#\n    topic: t\n    encoding: avro\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mqtt-kafka-gateway")).args(["validate"]).arg(&bad).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("schema_registry.url is not set"), "{text}");
}

/// A templated subject is resolved when its first record needs it; a `schema_file` is registered when
/// the registry has none under that subject; a reload switches the route's encoding live.
#[test]
fn templated_subjects_register_their_schema_file_on_first_use_and_a_reload_switches_encoding() {
    let registry = SchemaRegistry::start();
    let mosquitto = Mosquitto::start();
    let prefix = new_topic("sr-tmpl", 1);
    let (door, window) = (format!("{prefix}.door"), format!("{prefix}.window"));
    for t in [&door, &window, &format!("{prefix}.dlq")] {
        kafka().create_topic(t, 1);
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("reading.avsc"),
        r#"{"type": "record", "name": "Reading", "fields": [{"name": "open", "type": "boolean"}]}"#,
    )
    .unwrap();
    let config = |encoding: &str| {
        brokers(&mosquitto, &registry.url())
            .route(
                Route::new("sensors", "tele/#", &format!("{prefix}.{{kind}}"))
                    .qos(1)
                    .dead_letter_topic(&format!("{prefix}.dlq"))
                    .device_id_regex("^tele/(?P<device_id>[^/]+)/(?P<kind>[^/]+)")
                    .extra(&format!("    format: raw\n    encoding: {encoding}\n")),
            )
            .write(dir.path())
    };
    let cfg = config("{type: avro, schema_file: reading.avsc}");
    let gw = start(&cfg);
    publish_all(
        mosquitto.port(),
        vec![
            ("tele/dev-1/door".into(), br#"{"open": true}"#.to_vec()),
            ("tele/dev-1/window".into(), br#"{"open": false}"#.to_vec()),
        ],
    );
    for (topic, open) in [(&door, true), (&window, false)] {
        let records = kafka().consume(topic, 1, WAIT);
        assert_eq!(records.len(), 1, "{topic}: {}", gw.logs());
        let d = decoded_ok(&registry, DecodeFormat::Avro, &records);
        assert_eq!(d[0].value["open"], open);
        let latest = registry.latest(&format!("{topic}-value")).expect("registered from schema_file");
        assert_eq!(u64::from(d[0].schema_id), latest["id"].as_u64().unwrap());
    }
    assert_eq!(gw.count_in_log("registered the route's schema_file"), 2, "{}", gw.logs());

    // A live edit back to JSON: the next records are JSON text, without a restart.
    config("json");
    assert!(gw.wait_for_log("routes reloaded", WAIT), "{}", gw.logs());
    publish_all(mosquitto.port(), vec![("tele/dev-1/door".into(), br#"{"open": false}"#.to_vec())]);
    let records = kafka().consume(&door, 2, WAIT);
    assert_eq!(records.len(), 2, "{}", gw.logs());
    assert_eq!(records[1].value_str(), r#"{"open": false}"#);
    assert_eq!(records[1].header("schema_id"), None);
}

/// A new version the route cannot use (here: another schema type under the subject) is refused, named
/// with its subject and version, and the route keeps encoding with the schema it had.
#[test]
fn a_new_version_that_cannot_be_used_is_refused_and_the_route_keeps_its_schema() {
    let registry = SchemaRegistry::start();
    let mosquitto = Mosquitto::start();
    let (topic, _dlq) = topics("sr-refuse");
    let subject = format!("{topic}-value");
    let id = registry.register(
        &subject,
        "AVRO",
        r#"{"type": "record", "name": "R", "fields": [{"name": "n", "type": "long"}]}"#,
    );
    registry.set_compatibility(Some(&subject), "NONE");
    let dir = tempfile::tempdir().unwrap();
    let cfg = brokers(&mosquitto, &registry.url())
        .route(route("kept", "tele/#", &topic, "    format: raw\n    encoding: avro\n"))
        .write(dir.path());
    let gw = start(&cfg);
    publish_all(mosquitto.port(), vec![("tele/dev-1/n".into(), br#"{"n": 1}"#.to_vec())]);
    assert_eq!(kafka().consume(&topic, 1, WAIT).len(), 1, "{}", gw.logs());
    registry.register(&subject, "PROTOBUF", "syntax = \"proto3\";\nmessage N { int64 n = 1; }\n");
    assert!(gw.wait_for_log("new schema refused; the route keeps the schema it had", WAIT), "{}", gw.logs());
    let line = gw.logs().lines().find(|l| l.contains("new schema refused")).unwrap_or_default().to_string();
    assert!(line.contains(&subject) && line.contains("PROTOBUF"), "{line}");
    publish_all(mosquitto.port(), vec![("tele/dev-1/n".into(), br#"{"n": 2}"#.to_vec())]);
    let records = kafka().consume(&topic, 2, WAIT);
    assert_eq!(records.len(), 2, "{}", gw.logs());
    let d = decoded_ok(&registry, DecodeFormat::Avro, &records);
    assert_eq!((d[1].schema_id, d[1].value["n"].as_i64()), (id, Some(2)));
}

/// `schema avro --route` prints a schema a real registry takes, and that the gateway then encodes with.
#[test]
fn the_starting_schema_registers_and_encodes_the_spec_record() {
    let registry = SchemaRegistry::start();
    let mosquitto = Mosquitto::start();
    let (topic, _dlq) = topics("sr-starter");
    let dir = tempfile::tempdir().unwrap();
    let cfg = brokers(&mosquitto, &registry.url())
        .route(Route::new("doors", "cmnd/#", &topic).qos(1).extra("    encoding: avro\n"))
        .write(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_mqtt-kafka-gateway"))
        .arg("--config")
        .arg(&cfg)
        .args(["schema", "avro", "--route", "doors"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let schema = String::from_utf8(out.stdout).unwrap();
    let id = registry.register(&format!("{topic}-value"), "AVRO", &schema);
    let gw = start(&cfg);
    publish_all(mosquitto.port(), vec![(SPEC_TOPIC.into(), SPEC_PAYLOAD.into())]);
    let records = kafka().consume(&topic, 1, WAIT);
    assert_eq!(records.len(), 1, "{}", gw.logs());
    let d = decoded_ok(&registry, DecodeFormat::Avro, &records);
    assert_eq!(d[0].schema_id, id);
    assert_eq!(d[0].value["payload"]["door-sensor-2"], true);
}

/// An `https://` registry that trusts only the test CA and asks for a client certificate: the gateway
/// connects with `schema_registry.tls`; `check` names a CA it does not trust and a missing certificate.
#[test]
fn an_https_registry_with_our_ca_and_a_client_certificate() {
    let pki = common::Pki::generate();
    let registry = SchemaRegistry::start_tls(&pki, true);
    let mosquitto = Mosquitto::start();
    let (topic, _dlq) = topics("sr-tls");
    let schema = r#"{"type": "record", "name": "R", "fields": [{"name": "n", "type": "long"}]}"#;
    let id = registry.register(&format!("{topic}-value"), "AVRO", schema);
    let dir = tempfile::tempdir().unwrap();
    let config = |tls: String| {
        Config::new()
            .broker(mosquitto.addr())
            .bootstrap_servers(kafka().bootstrap())
            .stats_interval_secs(0)
            .extra(&format!("schema_registry:\n  url: {}\n  tls: {tls}\n", registry.url()))
            .route(route("tls", "tele/#", &topic, "    format: raw\n    encoding: avro\n"))
            .write(dir.path())
    };
    let check = |cfg: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_mqtt-kafka-gateway"))
            .arg("--config")
            .arg(cfg)
            .arg("check")
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (ca, cert, key) = (pki.ca_pem(), pki.client_rsa_cert(), pki.client_rsa_key_pkcs8());
    let wrong_ca = config(format!(
        "{{ca_file: '{}', cert_file: '{}', key_file: '{}'}}",
        pki.wrong_ca_pem().display(),
        cert.display(),
        key.display()
    ));
    let (code, text) = check(&wrong_ca);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("FAIL  registry reachable") && text.to_lowercase().contains("certificate"), "{text}");
    let no_client_cert = config(format!("{{ca_file: '{}'}}", ca.display()));
    let (code, text) = check(&no_client_cert);
    assert_eq!(code, Some(1), "the registry wants a client certificate: {text}");
    let good = config(format!(
        "{{ca_file: '{}', cert_file: '{}', key_file: '{}'}}",
        ca.display(),
        cert.display(),
        key.display()
    ));
    let (code, text) = check(&good);
    assert!(
        text.contains(&format!("OK    registry route \"tls\" avro subject: {topic}-value version 1 is schema {id}")),
        "{code:?} {text}"
    );
    let gw = start(&good);
    publish_all(mosquitto.port(), vec![("tele/dev-1/n".into(), br#"{"n": 1}"#.to_vec())]);
    let records = kafka().consume(&topic, 1, WAIT);
    assert_eq!(records.len(), 1, "{}", gw.logs());
    assert_eq!(records[0].header_str("schema_id"), Some(id.to_string().as_str()));
    assert_eq!(records[0].value, [&[0u8][..], &id.to_be_bytes(), &[2]].concat(), "magic, id, then n = 1");
}

/// A schema that references others (an Avro named type, a Protobuf import) is resolved with them.
#[test]
fn schemas_with_references_resolve_and_decode() {
    let registry = SchemaRegistry::start();
    let mosquitto = Mosquitto::start();
    let (avro_topic, _) = topics("sr-ref-avro");
    let (proto_topic, _) = topics("sr-ref-proto");
    let site =
        r#"{"type": "record", "name": "Site", "namespace": "iot", "fields": [{"name": "lat", "type": "double"}]}"#;
    registry.register("iot-site", "AVRO", site);
    let reading = r#"{"type": "record", "name": "Reading", "namespace": "iot", "fields": [{"name": "n", "type": "long"}, {"name": "site", "type": "iot.Site"}]}"#;
    let avro_id =
        registry.register_with_refs(&format!("{avro_topic}-value"), "AVRO", reading, &[("iot.Site", "iot-site", 1)]);
    let location = "syntax = \"proto3\";\npackage common;\nmessage Location { double lat = 1; }\n";
    registry.register("common-location", "PROTOBUF", location);
    let sample = "syntax = \"proto3\";\npackage iot;\nimport \"common/location.proto\";\nmessage Sample { int64 n = 1; common.Location at = 2; }\n";
    let proto_id = registry.register_with_refs(
        &format!("{proto_topic}-value"),
        "PROTOBUF",
        sample,
        &[("common/location.proto", "common-location", 1)],
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("common")).unwrap();
    std::fs::write(dir.path().join("common/location.proto"), location).unwrap();
    std::fs::write(dir.path().join("sample.proto"), sample).unwrap();
    let cfg = brokers(&mosquitto, &registry.url())
        .route(route("avro", "a/#", &avro_topic, "    format: raw\n    encoding: avro\n"))
        .route(route("proto", "p/#", &proto_topic, "    format: raw\n    encoding: protobuf\n"))
        .write(dir.path());
    let gw = start(&cfg);
    let payload = br#"{"n": 5, "site": {"lat": 52.5}}"#.to_vec();
    publish_all(
        mosquitto.port(),
        vec![("a/dev-1/x".into(), payload), ("p/dev-1/x".into(), br#"{"n": 6, "at": {"lat": 4.5}}"#.to_vec())],
    );
    let records = kafka().consume(&avro_topic, 1, WAIT);
    assert_eq!(records.len(), 1, "{}", gw.logs());
    let d = decoded_ok(&registry, DecodeFormat::Avro, &records);
    assert_eq!((d[0].schema_id, d[0].value["site"]["lat"].as_f64()), (avro_id, Some(52.5)));
    let records = kafka().consume(&proto_topic, 1, WAIT);
    assert_eq!(records.len(), 1, "{}", gw.logs());
    let proto = dir.path().join("sample.proto");
    let d = decoded_ok(&registry, DecodeFormat::Protobuf { proto: &proto, message: "Sample" }, &records);
    assert_eq!(
        (d[0].schema_id, d[0].value["n"].as_str(), d[0].value["at"]["lat"].as_f64()),
        (proto_id, Some("6"), Some(4.5))
    );
}

/// `schema_registry.url` changed by a reload: every schema in use is looked up again at the new
/// registry, and records carry its ids from then on (decoded there by Confluent's deserializer).
#[test]
fn a_registry_moved_by_a_reload_is_used_from_the_next_record() {
    let (a, b) = (SchemaRegistry::start(), SchemaRegistry::start());
    let mosquitto = Mosquitto::start();
    let (topic, _dlq) = topics("sr-move");
    let subject = format!("{topic}-value");
    let schema = r#"{"type": "record", "name": "R", "fields": [{"name": "n", "type": "long"}]}"#;
    let id_a = a.register(&subject, "AVRO", schema);
    // Another subject first, so that the same schema gets another id at the second registry.
    b.register("unrelated-value", "AVRO", r#"{"type": "record", "name": "U", "fields": []}"#);
    let id_b = b.register(&subject, "AVRO", schema);
    assert_ne!(id_a, id_b, "the registries must give different ids for the test to tell them apart");
    let dir = tempfile::tempdir().unwrap();
    let routes = route("moving", "tele/#", &topic, "    format: raw\n    encoding: avro\n");
    let cfg = brokers(&mosquitto, &a.url()).route(routes.clone()).write(dir.path());
    let gw = start(&cfg);
    common::mosquitto_pub(mosquitto.port(), "tele/dev-1/n", br#"{"n": 1}"#, 1);
    let first = kafka().consume(&topic, 1, WAIT);
    assert_eq!(decoded_ok(&a, DecodeFormat::Avro, &first)[0].schema_id, id_a, "{}", gw.logs());

    let moved = brokers(&mosquitto, &b.url()).route(routes).yaml();
    common::replace_file(&cfg, &moved);
    assert!(gw.wait_for_log("schema_registry settings applied", WAIT), "{}", gw.logs());
    assert!(gw.wait_for_log("a new version applies", WAIT), "{}", gw.logs());
    common::mosquitto_pub(mosquitto.port(), "tele/dev-1/n", br#"{"n": 2}"#, 1);
    let both = kafka().consume(&topic, 2, WAIT);
    assert_eq!(both.len(), 2, "{}", gw.logs());
    let second = decoded_ok(&b, DecodeFormat::Avro, &both[1..]);
    assert_eq!((second[0].schema_id, second[0].value["n"].as_i64()), (id_b, Some(2)), "{}", gw.logs());
    assert!(!gw.logs().contains("only apply after a restart"), "{}", gw.logs());
    assert!(b.requests().iter().any(|r| r.contains(&subject)), "the new registry was asked");
}
