//! Checks the integration-test harness itself: real Mosquitto and Kafka, the Schema Registry, and
//! confluent-kafka's decoder.

mod common;

use common::{
    decode, decode_at, decode_for_topic, kafka, mosquitto_pub, unique_topic, DecodeFormat, Mosquitto, SchemaRegistry,
    Subscriber,
};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::time::Duration;

#[test]
fn mosquitto_delivers_a_published_message() {
    let broker = Mosquitto::start();
    assert_eq!(broker.addr(), format!("127.0.0.1:{}", broker.port()));

    let sub = Subscriber::spawn(broker.port(), &["smoke/#"], &["-C", "1"]);
    assert_eq!(sub.wait_suback(Duration::from_secs(10)), Some(vec![0]), "{:?}", sub.lines());

    mosquitto_pub(broker.port(), "smoke/one", b"hello \x00 binary", 1);
    let mut sub = sub;
    let got = sub.wait_messages(1, Duration::from_secs(10));
    assert_eq!(got.len(), 1, "lines: {:?}\nbroker log:\n{}", sub.lines(), broker.log());
    assert_eq!(got[0].0, "smoke/one");
    assert!(got[0].1.starts_with("hello "), "{:?}", got[0]);
    assert!(sub.wait_exit(Duration::from_secs(5)).is_some_and(|s| s.success()));
}

#[test]
fn mosquitto_rejects_the_denied_subscription_only() {
    let broker = Mosquitto::start_rejecting_subscription("cmnd/#", "cmnd/+/+/+/+");

    // One SUBSCRIBE with three filters: the denied one fails (0x80 = 128).
    let sub = Subscriber::spawn(broker.port(), &["cmnd/#", "cmnd/+/+/+/+", "other/#"], &[]);
    let codes = sub.wait_suback(Duration::from_secs(10));
    assert_eq!(codes, Some(vec![128, 0, 0]), "lines: {:?}\nbroker log:\n{}", sub.lines(), broker.log());

    // Anonymous publishers may still publish, and the allowed filter receives.
    mosquitto_pub(broker.port(), "cmnd/a/b/c/d", b"on", 1);
    let got = sub.wait_messages(1, Duration::from_secs(10));
    assert_eq!(got, vec![("cmnd/a/b/c/d".to_string(), "on".to_string())]);

    // Alone, the denied filter is refused and mosquitto_sub gives up.
    let mut denied = Subscriber::spawn(broker.port(), &["cmnd/#"], &[]);
    assert_eq!(denied.wait_suback(Duration::from_secs(10)), Some(vec![128]), "{:?}", denied.lines());
    assert!(denied.wait_exit(Duration::from_secs(10)).is_some(), "{:?}", denied.lines());
}

#[test]
fn kafka_round_trips_records() {
    let k = kafka();
    let topic = unique_topic("smoke");
    k.create_topic(&topic, 3);

    let producer: BaseProducer = k.client_config().set("linger.ms", "0").create().expect("producer");
    for i in 0..3 {
        let key = format!("key-{i}");
        let value = format!("value-{i}");
        let headers = OwnedHeaders::new().insert(Header { key: "n", value: Some(&i.to_string()) });
        producer
            .send(BaseRecord::to(&topic).key(&key).payload(&value).headers(headers))
            .map_err(|(e, _)| e)
            .expect("enqueue record");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");

    let records = k.consume(&topic, 3, Duration::from_secs(30));
    assert_eq!(records.len(), 3, "{records:?}");
    let mut pairs: Vec<(String, String, String)> = records
        .iter()
        .map(|r| (r.key_str().unwrap().to_string(), r.value_str().to_string(), r.header_str("n").unwrap().to_string()))
        .collect();
    pairs.sort();
    assert_eq!(pairs, (0..3).map(|i| (format!("key-{i}"), format!("value-{i}"), i.to_string())).collect::<Vec<_>>());
    assert!(records.iter().all(|r| (0..3).contains(&r.partition) && r.offset >= 0));

    // Nothing more arrives, and a topic nobody wrote to stays empty.
    assert_eq!(k.consume_for(&topic, Duration::from_secs(1)).len(), 3);
    let empty = unique_topic("smoke-empty");
    k.create_topic(&empty, 1);
    assert!(k.consume_for(&empty, Duration::from_millis(500)).is_empty());
}

/// Confluent's framing: magic byte 0, the schema id big-endian, then `rest` (indexes and payload).
fn framed(id: u32, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![0];
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(rest);
    v
}

/// An Avro `long`: zigzag, then a base-128 varint.
fn avro_long(n: i64) -> Vec<u8> {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    let mut out = Vec::new();
    while z >= 0x80 {
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
    out
}

const READING_V1: &str =
    r#"{"type":"record","name":"Reading","namespace":"smoke","fields":[{"name":"a","type":"long"}]}"#;

#[test]
fn schema_registry_registers_and_refuses_an_incompatible_avro_schema() {
    let reg = SchemaRegistry::start();
    assert_eq!(reg.url(), format!("http://127.0.0.1:{}", reg.port()));

    let id = reg.register("smoke-value", "AVRO", READING_V1);
    assert!(id > 0);
    let (status, by_id) = reg.get(&format!("/schemas/ids/{id}"));
    assert_eq!(status, 200, "{by_id}");
    let stored: serde_json::Value = serde_json::from_str(by_id["schema"].as_str().unwrap()).unwrap();
    assert_eq!(stored, serde_json::from_str::<serde_json::Value>(READING_V1).unwrap());
    let latest = reg.latest("smoke-value").expect("a version");
    assert_eq!((latest["version"].as_u64(), latest["id"].as_u64()), (Some(1), Some(id as u64)), "{latest}");
    assert!(reg.latest("nobody-value").is_none());
    // The same schema again: its id, no new version.
    assert_eq!(reg.register("smoke-value", "AVRO", READING_V1), id);

    // BACKWARD: a field with a default can be added, one without cannot (the new schema could not read
    // the records written before).
    reg.set_compatibility(Some("smoke-value"), "BACKWARD");
    let v2 = r#"{"type":"record","name":"Reading","namespace":"smoke","fields":[
        {"name":"a","type":"long"},{"name":"unit","type":"string","default":"C"}]}"#;
    let id2 = reg.register("smoke-value", "AVRO", v2);
    assert_ne!(id2, id);
    assert_eq!(reg.latest("smoke-value").unwrap()["version"], 2);
    let v3 = r#"{"type":"record","name":"Reading","namespace":"smoke","fields":[
        {"name":"a","type":"long"},{"name":"unit","type":"string","default":"C"},{"name":"site","type":"string"}]}"#;
    let refused = reg.try_register("smoke-value", "AVRO", v3).expect_err("an incompatible schema is refused");
    assert!(refused.starts_with("409:") && refused.contains("incompatible"), "{refused}");
    assert_eq!(reg.latest("smoke-value").unwrap()["version"], 2);

    // NONE accepts it; a schema that is not Avro at all is refused whatever the level.
    reg.set_compatibility(Some("smoke-value"), "NONE");
    assert!(reg.register("smoke-value", "AVRO", v3) > id2);
    let invalid = reg.try_register("smoke-value", "AVRO", r#"{"type":"nothing"}"#).expect_err("invalid");
    assert!(invalid.starts_with("422:"), "{invalid}");
}

#[test]
fn avro_values_decode_through_confluent_kafka() {
    let reg = SchemaRegistry::start();
    let id = reg.register("readings-value", "AVRO", READING_V1);

    let values: Vec<Vec<u8>> = [0i64, 1, -1, 150, i64::MAX].iter().map(|&a| framed(id, &avro_long(a))).collect();
    let decoded = decode(&reg, DecodeFormat::Avro, &values);
    let got: Vec<(u32, serde_json::Value)> =
        decoded.into_iter().map(|d| d.map(|d| (d.schema_id, d.value)).expect("decoded")).collect();
    assert_eq!(
        got,
        [0i64, 1, -1, 150, i64::MAX].iter().map(|&a| (id, serde_json::json!({ "a": a }))).collect::<Vec<_>>()
    );

    // An unknown id, a wrong magic byte, a truncated value: errors, one per value, in order.
    let bad = vec![framed(id + 100, &[2]), vec![1, 0, 0, 0, 1, 2], framed(id, &[])];
    let errors: Vec<String> =
        decode(&reg, DecodeFormat::Avro, &bad).into_iter().map(|r| r.expect_err("error")).collect();
    assert!(errors[0].contains("404"), "{errors:?}");
    assert_eq!(errors.len(), 3);

    // As a consumer of a topic: the id must be registered under "<topic>-value".
    assert!(decode_for_topic(&reg, DecodeFormat::Avro, "readings", &values[..1])[0].is_ok());
    let elsewhere = decode_for_topic(&reg, DecodeFormat::Avro, "other", &values[..1]).remove(0);
    assert!(elsewhere.as_ref().is_err_and(|e| e.contains("404")), "{elsewhere:?}");
}

#[test]
fn protobuf_values_decode_through_confluent_kafka() {
    let reg = SchemaRegistry::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let proto = dir.path().join("reading.proto");
    let text = "syntax = \"proto3\";\npackage smoke;\n\
                message Reading { int32 value = 1; }\n\
                message Status { string state = 1; }\n";
    std::fs::write(&proto, text).expect("write reading.proto");
    let id = reg.register("pb-value", "PROTOBUF", text);

    // Message indexes [0] are the single byte 0; field 1 as varint 150 is 08 96 01.
    let reading = framed(id, &[0x00, 0x08, 0x96, 0x01]);
    let decoded =
        decode(&reg, DecodeFormat::Protobuf { proto: &proto, message: "Reading" }, std::slice::from_ref(&reading));
    let d = decoded[0].as_ref().expect("decoded");
    assert_eq!((d.schema_id, &d.value), (id, &serde_json::json!({ "value": 150 })));
    assert_eq!(d.message_indexes, Some(vec![0]));

    // Indexes [1] (length 1, index 1, both zigzag: 02 02) name the second message, Status.
    let status = framed(id, &[0x02, 0x02, 0x0a, 0x02, b'o', b'k']);
    let as_status = DecodeFormat::Protobuf { proto: &proto, message: "smoke.Status" };
    let decoded = decode(&reg, as_status, &[status.clone(), reading]);
    let d = decoded[0].as_ref().expect("decoded");
    assert_eq!((&d.value, &d.message_indexes), (&serde_json::json!({ "state": "ok" }), &Some(vec![1])));
    assert!(decoded[1].as_ref().is_err_and(|e| e.contains("message indexes [0]")), "{:?}", decoded[1]);

    // confluent-kafka read the writer's schema in the serialized format (a FileDescriptorProto).
    assert!(
        reg.requests().iter().any(|r| r.contains("format=serialized") && r.ends_with(" 200")),
        "{:?}",
        reg.requests()
    );
}

#[test]
fn json_schema_values_decode_through_confluent_kafka() {
    let reg = SchemaRegistry::start();
    let schema = r#"{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]}"#;
    let id = reg.register("js-value", "JSON", schema);

    let ok = framed(id, br#"{"a": 5}"#);
    let invalid = framed(id, br#"{"b": 5}"#);
    let decoded = decode(&reg, DecodeFormat::Json { schema: None }, &[ok, invalid]);
    let d = decoded[0].as_ref().expect("decoded");
    assert_eq!((d.schema_id, &d.value), (id, &serde_json::json!({ "a": 5 })));
    // Validated against the registry's schema.
    assert!(decoded[1].as_ref().is_err_and(|e| e.contains("'a' is a required property")), "{:?}", decoded[1]);
}

#[test]
fn schema_registry_with_basic_auth_refuses_clients_without_the_password() {
    let reg = SchemaRegistry::start_with_auth("sr-user", "sr-secret");
    let unauthorized = serde_json::json!({ "error_code": 401, "message": "Unauthorized" });
    for auth in [None, Some(("sr-user", "wrong"))] {
        let (status, body) = reg.request_as(auth, "GET", "/subjects", None).expect("an answer");
        assert_eq!(status, 401, "{auth:?}: {body}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap(), unauthorized);
        let schema = serde_json::json!({ "schema": READING_V1 });
        let (status, _) = reg.request_as(auth, "POST", "/subjects/x-value/versions", Some(&schema)).unwrap();
        assert_eq!(status, 401, "{auth:?}");
    }
    assert!(reg.latest("x-value").is_none(), "nothing was registered");

    let id = reg.register("auth-value", "AVRO", READING_V1);
    let value = vec![framed(id, &avro_long(7))];
    for auth in [None, Some(("sr-user", "wrong"))] {
        let refused = decode_at(&reg.url(), auth, DecodeFormat::Avro, None, &value).remove(0);
        assert!(
            refused.as_ref().is_err_and(|e| e.contains("401") && e.contains("Unauthorized")),
            "{auth:?}: {refused:?}"
        );
    }
    let decoded = decode(&reg, DecodeFormat::Avro, &value).remove(0).expect("decoded with the password");
    assert_eq!(decoded.value, serde_json::json!({ "a": 7 }));
}

#[test]
fn schema_registry_restarts_on_its_port_empty() {
    let mut reg = SchemaRegistry::start();
    let port = reg.port();
    assert_eq!(reg.register("restart-value", "AVRO", READING_V1), 1);
    reg.stop();
    assert!(reg.request("GET", "/subjects", None).is_err(), "nothing answers once stopped");

    // Down at first, then up on the port it had: it answers again, with nothing registered.
    let again = SchemaRegistry::start_on(port, None);
    assert_eq!(again.url(), reg.url());
    assert!(again.latest("restart-value").is_none());
    assert_eq!(again.get("/subjects"), (200, serde_json::json!([])));
    assert_eq!(again.register("restart-value", "AVRO", READING_V1), 1);
}

#[test]
fn schema_references_resolve_for_registration_and_decoding() {
    let reg = SchemaRegistry::start();

    // Avro: the referenced type is named by its full name.
    let unit = r#"{"type":"enum","name":"Unit","namespace":"smoke","symbols":["C","F"]}"#;
    let unit_id = reg.register("smoke-unit", "AVRO", unit);
    let reading = r#"{"type":"record","name":"Reading","namespace":"smoke",
        "fields":[{"name":"a","type":"long"},{"name":"unit","type":"smoke.Unit"}]}"#;
    let id = reg.register_with_refs("refs-value", "AVRO", reading, &[("smoke.Unit", "smoke-unit", 1)]);
    assert_ne!(id, unit_id);
    assert_eq!(reg.latest("refs-value").unwrap()["references"][0]["subject"], "smoke-unit");
    // Long 21 (zigzag 42), then enum index 1 (zigzag 2): "F".
    let decoded = decode(&reg, DecodeFormat::Avro, &[framed(id, &[42, 2])]).remove(0).expect("decoded");
    assert_eq!(decoded.value, serde_json::json!({ "a": 21, "unit": "F" }));
    // A reference to a version that does not exist is refused.
    let missing = reg.try_register_with_refs("refs-value", "AVRO", reading, &[("smoke.Unit", "smoke-unit", 9)]);
    assert!(missing.as_ref().is_err_and(|e| e.starts_with("422:")), "{missing:?}");

    // Protobuf: the reference is named by the path it is imported by.
    let dir = tempfile::tempdir().expect("temp dir");
    let common = "syntax = \"proto3\";\npackage smoke;\nmessage Unit { string name = 1; }\n";
    let reading = "syntax = \"proto3\";\npackage smoke;\nimport \"common.proto\";\n\
                   message Reading { int32 value = 1; Unit unit = 2; }\n";
    std::fs::write(dir.path().join("common.proto"), common).unwrap();
    std::fs::write(dir.path().join("reading.proto"), reading).unwrap();
    reg.register("smoke-common", "PROTOBUF", common);
    let id = reg.register_with_refs("refs-pb-value", "PROTOBUF", reading, &[("common.proto", "smoke-common", 1)]);
    // value 7 (08 07), unit (12 03) { name "C" (0a 01 43) }.
    let value = framed(id, &[0x00, 0x08, 0x07, 0x12, 0x03, 0x0a, 0x01, b'C']);
    let proto = dir.path().join("reading.proto");
    let decoded = decode(&reg, DecodeFormat::Protobuf { proto: &proto, message: "Reading" }, &[value]).remove(0);
    assert_eq!(decoded.expect("decoded").value, serde_json::json!({ "value": 7, "unit": { "name": "C" } }));
}
