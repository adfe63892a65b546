//! Checks the integration-test harness itself against real Mosquitto and Kafka.

mod common;

use common::{kafka, mosquitto_pub, unique_topic, Mosquitto, Subscriber};
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
