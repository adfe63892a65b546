//! What MQTT 5 adds, end to end against a real Mosquitto and Kafka: message properties arrive as Kafka
//! headers, a broken UTF-8 promise is dead-lettered, Receive Maximum lets the broker send past its own
//! in-flight default, a persistent session lasts exactly as long as `mqtt.session_expiry_secs`, and a
//! refused subscription's reason is named. (Every other end-to-end suite also runs over MQTT 5:
//! `TEST_MQTT_PROTOCOL=5`, see scripts/test.sh.)

mod common;

use std::time::Duration;

use common::{
    holds_for, kafka, mosquitto_pub_with, new_topic, prom, start_gateway as start, wait_until, Config, Gateway,
    Mosquitto, Route, WAIT,
};

const SPEC_TOPIC: &str = "cmnd/f2-e4fd45f654be/access-control-mode/J1/door-sensors";

fn v5() -> Vec<(&'static str, String)> {
    vec![("GATEWAY_MQTT__PROTOCOL", "5".to_string())]
}

/// One QoS `qos` route on `cmnd/#` to `topic`, dead letters to `dlq`.
fn config(broker: &str, bootstrap: &str, topic: &str, dlq: &str, qos: u8) -> Config {
    Config::new()
        .broker(broker)
        .reconnect_delays_ms(100, 1000)
        .bootstrap_servers(bootstrap)
        .route(Route::new("spec", "cmnd/#", topic).dead_letter_topic(dlq).qos(qos))
}

fn received(gw: &Gateway) -> f64 {
    prom::value(&gw.metrics(), "mqtt_kafka_gateway_messages_received_total", &[])
}

#[test]
fn properties_arrive_as_headers_and_a_broken_utf8_promise_is_dead_lettered() {
    let mosquitto = Mosquitto::start();
    let (topic, dlq) = (new_topic("mqtt5_props", 1), new_topic("mqtt5_props_dlq", 1));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&mosquitto.addr(), &kafka().bootstrap(), &topic, &dlq, 1).write(dir.path());
    let gw = start(&cfg, &v5());
    assert!(gw.logs().contains("protocol=\"5\""), "{}", gw.logs());

    let props: &[&str] = &[
        "-V",
        "5",
        "-D",
        "publish",
        "user-property",
        "site",
        "north",
        "-D",
        "publish",
        "user-property",
        "site",
        "south",
        "-D",
        "publish",
        "user-property",
        "device_id",
        "spoofed",
        "-D",
        "publish",
        "content-type",
        "application/json",
        "-D",
        "publish",
        "payload-format-indicator",
        "1",
        "-D",
        "publish",
        "response-topic",
        "replies/f2",
        "-D",
        "publish",
        "correlation-data",
        "req-42",
    ];
    mosquitto_pub_with(mosquitto.port(), SPEC_TOPIC, br#"{"door":"open"}"#, 1, props);
    let records = kafka().consume(&topic, 1, WAIT);
    assert_eq!(records.len(), 1, "{}", gw.logs());
    let r = &records[0];
    let all = |name: &str| {
        r.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(all("site"), ["north", "south"], "user properties in order, repeats kept");
    assert_eq!(all("device_id"), ["f2-e4fd45f654be"], "the gateway's device_id is never shadowed");
    assert_eq!(all("mqtt_user_device_id"), ["spoofed"], "a clashing user property is renamed, not lost");
    assert_eq!(r.header_str("mqtt_content_type"), Some("application/json"));
    assert_eq!(r.header_str("mqtt_payload_format"), Some("utf-8"));
    assert_eq!(r.header_str("mqtt_response_topic"), Some("replies/f2"));
    assert_eq!(r.header_str("mqtt_correlation_data"), Some("req-42"));
    assert_eq!(r.header_str("mqtt_qos"), Some("1"));

    // The publisher says UTF-8; the payload is not.
    mosquitto_pub_with(
        mosquitto.port(),
        SPEC_TOPIC,
        &[0xff, 0xfe, 0x00],
        1,
        &["-V", "5", "-D", "publish", "payload-format-indicator", "1"],
    );
    let dead = kafka().consume(&dlq, 1, WAIT);
    assert_eq!(dead.len(), 1, "{}", gw.logs());
    let reason = dead[0].header_str("dlq_reason").unwrap_or_default();
    assert!(reason.contains("payload format indicator says UTF-8"), "{reason}");
    assert_eq!(dead[0].value, [0xff, 0xfe, 0x00], "the payload as published");

    // A 3.1.1 publisher's message has none of these headers.
    mosquitto_pub_with(mosquitto.port(), SPEC_TOPIC, br#"{"door":"shut"}"#, 1, &["-V", "311"]);
    let more = kafka().consume(&topic, 2, WAIT);
    assert_eq!(more.len(), 2, "{}", gw.logs());
    assert!(more[1].header("mqtt_content_type").is_none() && more[1].header("site").is_none());
}

/// Mosquitto's default `max_inflight_messages` (20) caps an MQTT 3.1.1 subscriber's unacknowledged QoS
/// 1 messages; over MQTT 5 the gateway's Receive Maximum (`mqtt.max_unacked_messages`, 50 here) sets
/// the cap. Kafka is unreachable here, so nothing is acknowledged and the received count is the cap: 50
/// of 200 proves the gateway sent it (without one, Mosquitto holds an MQTT 5 client to its 20 as well).
#[test]
fn receive_maximum_replaces_the_brokers_in_flight_limit() {
    let mosquitto = Mosquitto::start();
    let unreachable = format!("127.0.0.1:{}", common::free_port());
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&mosquitto.addr(), &unreachable, "never", "never_dlq", 1)
        .mqtt("  max_unacked_messages: 50\n")
        .write(dir.path());
    let v311 = start(&cfg, &[("GATEWAY_MQTT__PROTOCOL", "3.1.1".into()), ("GATEWAY_MQTT__CLIENT_ID", "rm-311".into())]);
    let v5 = start(&cfg, &[("GATEWAY_MQTT__PROTOCOL", "5".into()), ("GATEWAY_MQTT__CLIENT_ID", "rm-5".into())]);
    let messages: Vec<(String, Vec<u8>)> =
        (0..200).map(|i| (format!("cmnd/dev-{}/x", i % 10), format!(r#"{{"n":{i}}}"#).into_bytes())).collect();
    common::publish_all(mosquitto.port(), messages);
    assert!(
        wait_until(WAIT, Duration::from_millis(200), || received(&v5) >= 50.0 && received(&v311) >= 1.0),
        "MQTT 5 received {} and MQTT 3.1.1 {} of 200 unacknowledged:\n{}",
        received(&v5),
        received(&v311),
        v5.logs()
    );
    // Both stay at their caps however long they wait: the point of the test is that nothing more arrives,
    // which only a quiet period can show.
    let at_caps = || received(&v5) == 50.0 && received(&v311) <= 20.0;
    assert!(
        holds_for(Duration::from_secs(2), Duration::from_millis(200), at_caps),
        "past a cap: MQTT 5 received {}, MQTT 3.1.1 {}",
        received(&v5),
        received(&v311)
    );
    assert_eq!(received(&v5), 50.0, "MQTT 5: the gateway's Receive Maximum, not the broker's 20");
    let capped = received(&v311);
    assert!((1.0..=20.0).contains(&capped), "MQTT 3.1.1 received {capped}, expected Mosquitto's in-flight cap of 20");
}

/// With `clean_session: false` the broker keeps the session `session_expiry_secs` after the gateway
/// leaves: QoS 1 messages published meanwhile arrive when it comes back in time, and not after.
#[test]
fn a_persistent_session_lasts_as_long_as_its_expiry() {
    let mosquitto = Mosquitto::start();
    let topic = new_topic("mqtt5_expiry", 1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&mosquitto.addr(), &kafka().bootstrap(), &topic, "mqtt5_expiry_dlq", 1)
        .clean_session(false)
        .client_id("expiry-test")
        .mqtt("  session_expiry_secs: 4\n")
        .write(dir.path());
    let publish = |from: usize| {
        for i in from..from + 5 {
            mosquitto_pub_with(
                mosquitto.port(),
                &format!("cmnd/dev-1/n{i}"),
                format!(r#"{{"n":{i}}}"#).as_bytes(),
                1,
                &[],
            );
        }
    };
    let mut gw = start(&cfg, &v5());
    gw.sigterm();
    assert!(gw.wait_exit(WAIT).is_some_and(|s| s.success()), "{}", gw.logs());

    // Back within the expiry: the session and the 5 messages queued in it are there.
    publish(0);
    let gw = start(&cfg, &v5());
    assert!(gw.logs().contains("session_present=true"), "{}", gw.logs());
    let records = kafka().consume(&topic, 5, WAIT);
    assert_eq!(records.len(), 5, "{}", gw.logs());
    let mut gw = gw;
    gw.sigterm();
    assert!(gw.wait_exit(WAIT).is_some_and(|s| s.success()), "{}", gw.logs());

    // Back after the expiry: the broker dropped the session and its queue.
    let expired = || mosquitto.log().matches("Expiring client expiry-test due to timeout").count();
    let expired_before = expired();
    publish(5);
    assert!(
        wait_until(WAIT, Duration::from_millis(100), || expired() > expired_before),
        "the broker never expired the session:\n{}",
        mosquitto.log()
    );
    let gw = start(&cfg, &v5());
    assert!(gw.logs().contains("session_present=false"), "{}", gw.logs());
    let extra = kafka().consume_for(&topic, Duration::from_secs(3));
    assert_eq!(extra.len(), 5, "only the first five: the expired session's messages are gone\n{}", gw.logs());
}

#[test]
fn a_refused_subscription_names_the_reason_and_the_fallback_serves() {
    let mosquitto = Mosquitto::start_rejecting_subscription("cmnd/#", "cmnd/+/+/+/+");
    let topic = new_topic("mqtt5_suback", 1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::new()
        .broker(mosquitto.addr())
        .bootstrap_servers(kafka().bootstrap())
        .route(Route::new("spec", "cmnd/#", &topic).fallback_filters(&["cmnd/+/+/+/+"]))
        .write(dir.path());
    let env: Vec<(&str, &str)> = vec![("GATEWAY_MQTT__PROTOCOL", "5")];
    let gw = Gateway::start(&cfg, &env);
    assert!(gw.wait_for_log("filter=cmnd/+/+/+/+", WAIT), "fallback subscribed:\n{}", gw.logs());
    let logs = gw.logs();
    let refused = logs.lines().find(|l| l.contains("refused the subscription")).expect("a refusal line");
    assert!(refused.contains("not authorized"), "the SUBACK reason is named: {refused}");
    mosquitto_pub_with(mosquitto.port(), SPEC_TOPIC, br#"{"a":1}"#, 0, &[]);
    assert_eq!(kafka().consume(&topic, 1, WAIT).len(), 1, "{}", gw.logs());
}
