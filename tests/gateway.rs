//! End to end: the gateway binary between a real Mosquitto and a real Apache Kafka, both started by the
//! harness on free loopback ports.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{broker_env, json, kafka, new_topic, publish_all, start_gateway as start, write_config, Record, WAIT};
use common::{mosquitto_pub, Gateway, Mosquitto};
use serde_json::Value;

const SPEC_TOPIC: &str = "cmnd/f2-e4fd45f654be/access-control-mode/J1/door-sensors";
const SPEC_PAYLOAD: &str =
    r#"{"timestamp": "2023-05-26 18:34:04.928538", "door-sensor-1": false, "door-sensor-2": true}"#;

/// The repository's config/routes.yaml: the spec's route.
fn shipped_routes() -> PathBuf {
    common::repo_root().join("config/routes.yaml")
}

/// The spec's environment: both brokers, and `topic` as the default route's Kafka topic.
fn spec_env(mosquitto: &Mosquitto, topic: &str) -> Vec<(&'static str, String)> {
    let mut env = broker_env(mosquitto);
    env.push(("KAFKA_TOPIC", topic.to_string()));
    env
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn the_spec_example_becomes_exactly_one_spec_record() {
    let mosquitto = Mosquitto::start();
    let topic = new_topic("raw_iot_data", 3);
    // The shipped routes.yaml, with the spec's environment variables.
    let shipped = shipped_routes();
    let mut env = spec_env(&mosquitto, &topic);
    env.push(("MQTT_BROKER", format!("mqtt://{}", mosquitto.addr())));
    let gw = start(&shipped, &env);

    let before = now_secs();
    mosquitto_pub(mosquitto.port(), SPEC_TOPIC, SPEC_PAYLOAD.as_bytes(), 0);
    let records = kafka().consume(&topic, 1, WAIT);
    assert_eq!(records.len(), 1, "gateway log:\n{}", gw.logs());
    let extra = kafka().consume_for(&topic, Duration::from_secs(3));
    assert_eq!(extra.len(), 1, "exactly one record, got {}", extra.len());

    let r = &records[0];
    assert_eq!(r.key_str(), Some("f2-e4fd45f654be"));
    let v = json(r);
    let fields: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(fields, ["original_topic", "device_id", "payload", "timestamp"]);
    assert_eq!(v["original_topic"], SPEC_TOPIC);
    assert_eq!(v["device_id"], "f2-e4fd45f654be");
    assert_eq!(v["payload"], serde_json::from_str::<Value>(SPEC_PAYLOAD).unwrap());
    assert!(r.value_str().contains(&format!("\"payload\":{SPEC_PAYLOAD}")), "payload spliced as sent");
    let ts = v["timestamp"].as_f64().expect("numeric timestamp");
    assert!(ts >= before - 5.0 && ts <= now_secs() + 5.0, "timestamp {ts} is not now");
    let ts_text = r.value_str().rsplit("\"timestamp\":").next().unwrap().trim_end_matches('}');
    assert_eq!(ts_text.split('.').nth(1).map(str::len), Some(6), "microseconds: {ts_text}");
    assert_eq!(r.header_str("mqtt_topic"), Some(SPEC_TOPIC));
    assert_eq!(r.header_str("mqtt_qos"), Some("0"));
}

#[test]
fn a_topic_without_a_mac_gets_the_fallback_device_id() {
    let mosquitto = Mosquitto::start();
    let topic = new_topic("fallback_id", 1);
    let shipped = shipped_routes();
    let env = spec_env(&mosquitto, &topic);
    let _gw = start(&shipped, &env);

    mosquitto_pub(mosquitto.port(), "cmnd/plc-7/state", br#"{"on":true}"#, 0);
    mosquitto_pub(mosquitto.port(), "cmnd", br#"{"on":false}"#, 0);
    let records = kafka().consume(&topic, 2, WAIT);
    assert_eq!(records.len(), 2);
    assert_eq!(json(&records[0])["device_id"], "plc-7");
    assert_eq!(records[0].key_str(), Some("plc-7"));
    assert_eq!(json(&records[1])["device_id"], "unknown");
}

#[test]
fn mqtt_topic_pattern_and_kafka_topic_change_the_default_route() {
    let mosquitto = Mosquitto::start();
    let topic = new_topic("env_route", 1);
    let shipped = shipped_routes();
    let mut env = spec_env(&mosquitto, &topic);
    env.push(("MQTT_TOPIC_PATTERN", "sensors/+/temp".into()));
    let gw = start(&shipped, &env);
    assert!(gw.logs().contains("sensors/+/temp"), "{}", gw.logs());

    mosquitto_pub(mosquitto.port(), "cmnd/f2-e4fd45f654be/x", b"{}", 0);
    mosquitto_pub(mosquitto.port(), "sensors/s1/temp", b"21.5", 0);
    assert_eq!(kafka().consume(&topic, 1, WAIT).len(), 1, "{}", gw.logs());
    let records = kafka().consume_for(&topic, Duration::from_secs(2));
    assert_eq!(records.len(), 1, "only the sensors/ message: {records:?}");
    let v = json(&records[0]);
    assert_eq!(v["original_topic"], "sensors/s1/temp");
    assert_eq!(v["payload"], 21.5);
    assert_eq!(v["device_id"], "s1", "fallback regex: the second level");
}

#[test]
fn a_non_json_payload_goes_to_the_dead_letter_topic_with_its_reason() {
    let mosquitto = Mosquitto::start();
    let topic = new_topic("dlq_main", 1);
    kafka().create_topic(&format!("{topic}.dlq"), 1);
    let shipped = shipped_routes();
    let env = spec_env(&mosquitto, &topic);
    let gw = start(&shipped, &env);

    let t = "cmnd/f2-aabbccddeeff/raw";
    mosquitto_pub(mosquitto.port(), t, b"not json {", 0);
    mosquitto_pub(mosquitto.port(), t, br#"{"ok":1}"#, 0);
    let dead = kafka().consume(&format!("{topic}.dlq"), 1, WAIT);
    assert_eq!(dead.len(), 1, "{}", gw.logs());
    assert_eq!(dead[0].value, b"not json {");
    assert_eq!(dead[0].header_str("mqtt_topic"), Some(t));
    let reason = dead[0].header_str("dlq_reason").expect("dlq_reason header");
    assert!(reason.contains("not valid JSON"), "{reason}");
    assert_eq!(dead[0].key_str(), Some("f2-aabbccddeeff"));
    // The message after it is unaffected.
    let good = kafka().consume(&topic, 1, WAIT);
    assert_eq!(good.len(), 1);
    assert_eq!(json(&good[0])["payload"]["ok"], 1);
    assert!(gw.logs().contains("dead-letter"), "the dead letter is logged");
}

#[test]
fn overlapping_routes_give_one_record_each() {
    let mosquitto = Mosquitto::start();
    let (all, five) = (new_topic("overlap_all", 1), new_topic("overlap_five", 1));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "routes:\n  - {{name: all, filter: 'cmnd/#', topic: {all}}}\n  - {{name: five, filter: 'cmnd/+/+/+/+', topic: {five}}}\n  - {{name: partial, filter: 'cmnd/+/x/#', topic: {all}}}\n"
        ),
    );
    let gw = start(&config, &broker_env(&mosquitto));

    mosquitto_pub(mosquitto.port(), "cmnd/a/b/c/d", b"1", 0);
    mosquitto_pub(mosquitto.port(), "cmnd/a/x/c/d", b"2", 0);
    assert_eq!(kafka().consume(&all, 3, WAIT).len(), 3, "{}", gw.logs());
    assert_eq!(kafka().consume(&five, 2, WAIT).len(), 2, "{}", gw.logs());
    // Then make sure no duplicate follows.
    let a = kafka().consume_for(&all, Duration::from_secs(2));
    let f = kafka().consume_for(&five, Duration::from_secs(1));
    let payloads = |rs: &[Record]| rs.iter().map(|r| json(r)["payload"].to_string()).collect::<Vec<_>>();
    // Route `all` gets both; route `partial` gets message 2 (same topic as `all`); `five` gets both.
    assert_eq!(payloads(&a), ["1", "2", "2"], "{}", gw.logs());
    assert_eq!(payloads(&f), ["1", "2"]);
}

#[test]
fn a_thousand_messages_from_ten_devices_keep_per_device_order() {
    let mosquitto = Mosquitto::start();
    let topic = new_topic("order", 3);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!("routes:\n  - name: devices\n    filter: 'tele/#'\n    qos: 1\n    topic: {topic}\n"),
    );
    let _gw = start(&config, &broker_env(&mosquitto));

    let messages: Vec<(String, Vec<u8>)> = (0..1000)
        .map(|i| {
            let device = format!("f2-00000000000{}", i % 10);
            (format!("tele/{device}/seq"), format!(r#"{{"seq":{i}}}"#).into_bytes())
        })
        .collect();
    publish_all(mosquitto.port(), messages);
    let records = kafka().consume(&topic, 1000, Duration::from_secs(60));
    assert_eq!(
        records.len(),
        1000,
        "mosquitto log tail:\n{}",
        common::tail_file(&mosquitto.temp_dir().join("mosquitto.log"), 20)
    );

    let mut by_device: HashMap<String, Vec<(i32, i64)>> = HashMap::new();
    for r in &records {
        let v = json(r);
        assert_eq!(r.key_str(), v["device_id"].as_str());
        by_device
            .entry(v["device_id"].as_str().unwrap().to_string())
            .or_default()
            .push((r.partition, v["payload"]["seq"].as_i64().unwrap()));
    }
    assert_eq!(by_device.len(), 10);
    for (device, mut seen) in by_device {
        let partitions: std::collections::HashSet<i32> = seen.iter().map(|(p, _)| *p).collect();
        assert_eq!(partitions.len(), 1, "device {device} spread over partitions {partitions:?}");
        // Records of one partition come back in offset order, so the sequence must be ascending.
        let seqs: Vec<i64> = seen.drain(..).map(|(_, s)| s).collect();
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(seqs, sorted, "device {device} out of order");
        assert_eq!(seqs.len(), 100);
    }
}

#[test]
fn a_512_kib_payload_passes() {
    let mosquitto = Mosquitto::start();
    let topic = new_topic("big", 1);
    let shipped = shipped_routes();
    let env = spec_env(&mosquitto, &topic);
    let gw = start(&shipped, &env);

    let blob = "x".repeat(512 * 1024);
    let payload = format!(r#"{{"blob":"{blob}"}}"#);
    publish_all(mosquitto.port(), vec![("cmnd/f2-0123456789ab/big".into(), payload.clone().into_bytes())]);
    let records = kafka().consume(&topic, 1, WAIT);
    assert_eq!(records.len(), 1, "{}", gw.logs());
    assert_eq!(json(&records[0])["payload"]["blob"].as_str().map(str::len), Some(512 * 1024));
    assert!(!gw.logs().contains("ERROR"), "{}", gw.logs());
}

#[test]
fn the_fallback_filter_is_subscribed_when_the_broker_refuses_the_primary() {
    let mosquitto = Mosquitto::start_rejecting_subscription("cmnd/#", "cmnd/+/+/+/+");
    let topic = new_topic("fallback_sub", 1);
    let shipped = shipped_routes();
    let env = spec_env(&mosquitto, &topic);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gw = Gateway::start(&shipped, &env);
    assert!(gw.wait_for_log("refused the subscription", WAIT), "{}", gw.logs());
    assert!(gw.wait_for_log("filter=cmnd/+/+/+/+", WAIT), "fallback subscribed:\n{}", gw.logs());
    let logs = gw.logs();
    let refused = logs.lines().find(|l| l.contains("refused the subscription")).unwrap();
    assert!(refused.contains("WARN"), "a fallback is a WARN: {refused}");

    mosquitto_pub(mosquitto.port(), SPEC_TOPIC, SPEC_PAYLOAD.as_bytes(), 0);
    let records = kafka().consume(&topic, 1, WAIT);
    assert_eq!(records.len(), 1, "{}", gw.logs());
    assert_eq!(records[0].key_str(), Some("f2-e4fd45f654be"));
}

#[test]
fn the_gateway_resubscribes_after_the_broker_restarts() {
    let mut mosquitto = Mosquitto::start();
    let topic = new_topic("reconnect", 1);
    let shipped = shipped_routes();
    let mut env = spec_env(&mosquitto, &topic);
    env.push(("GATEWAY_MQTT__RECONNECT_MIN_DELAY_MS", "100".into()));
    env.push(("GATEWAY_MQTT__RECONNECT_MAX_DELAY_MS", "1000".into()));
    let gw = start(&shipped, &env);

    mosquitto.restart();
    assert!(
        common::wait_until(WAIT, Duration::from_millis(100), || gw.count_in_log("subscribed") >= 2),
        "no resubscription after the restart:\n{}",
        gw.logs()
    );
    assert!(gw.logs().contains("lost the connection to the MQTT broker"), "{}", gw.logs());
    mosquitto_pub(mosquitto.port(), SPEC_TOPIC, SPEC_PAYLOAD.as_bytes(), 0);
    let records = kafka().consume(&topic, 1, WAIT);
    assert_eq!(records.len(), 1, "{}", gw.logs());
}

#[test]
fn sigterm_exits_zero_with_every_accepted_message_in_kafka() {
    let mosquitto = Mosquitto::start();
    let topic = new_topic("sigterm", 3);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!("routes:\n  - name: devices\n    filter: 'tele/#'\n    qos: 1\n    topic: {topic}\nlog:\n  stats_interval_secs: 0\n"),
    );
    let mut gw = start(&config, &broker_env(&mosquitto));

    // A stream still flowing when SIGTERM arrives.
    let port = mosquitto.port();
    let publisher = std::thread::spawn(move || {
        let messages =
            (0..3000).map(|i| (format!("tele/dev-{}/seq", i % 5), format!(r#"{{"seq":{i}}}"#).into_bytes())).collect();
        publish_all(port, messages);
    });
    let started = kafka().consume(&topic, 200, WAIT);
    assert!(started.len() >= 200, "stream did not start:\n{}", gw.logs());
    gw.sigterm();
    let status = gw.wait_exit(Duration::from_secs(60)).expect("gateway did not exit after SIGTERM");
    publisher.join().expect("publisher");
    assert!(status.success(), "exit status {status:?}:\n{}", gw.logs());

    // The final statistics line says how many messages the gateway took; every one must be in Kafka.
    let logs = gw.logs();
    let stats = logs.lines().rev().find(|l| l.contains("statistics")).expect("final statistics line");
    let field = |name: &str| -> u64 {
        stats
            .split(&format!("{name}="))
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {stats}"))
    };
    let received = field("messages_received");
    assert_eq!(field("records_failed"), 0);
    assert_eq!(field("records_delivered"), received);
    let records = kafka().consume(&topic, received as usize, WAIT);
    assert_eq!(records.len() as u64, received, "every accepted message is in Kafka");
    let more = kafka().consume_for(&topic, Duration::from_secs(2));
    assert_eq!(more.len() as u64, received, "and nothing else");
    eprintln!("sigterm test: {received} messages accepted before shutdown, all in Kafka");
}

#[test]
fn a_bad_config_exits_non_zero_naming_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "routes:\n  - name: a\n    filter: 'cmnd/#/x'\n    topic: t\n    device_id:\n      regex: '(?P<id>x'\n",
    );
    let mut gw = Gateway::start(&config, &[]);
    let status = gw.wait_exit(WAIT).expect("exits");
    assert_eq!(status.code(), Some(2));
    let logs = gw.logs();
    assert!(logs.contains("routes.yaml:3:5: routes[0].filter: invalid MQTT filter"), "{logs}");
    assert!(logs.contains("routes.yaml:6:7: routes[0].device_id.regex: invalid regex"), "{logs}");

    let mut gw = Gateway::start(&dir.path().join("missing.yaml"), &[]);
    assert_eq!(gw.wait_exit(WAIT).and_then(|s| s.code()), Some(2));
    assert!(gw.logs().contains("missing.yaml") && gw.logs().contains("--config"), "{}", gw.logs());
}

#[test]
fn mqtt_username_and_password_come_from_the_environment() {
    let probe = Mosquitto::start();
    let passwords = probe.temp_dir().join("passwords");
    let status = std::process::Command::new(
        common::find_executable("mosquitto_passwd").expect("mosquitto_passwd; run scripts/install-mosquitto.sh"),
    )
    .args(["-b", "-c"])
    .arg(&passwords)
    .args(["gateway", "s3cret-1234"])
    .status()
    .expect("mosquitto_passwd");
    assert!(status.success());
    let mosquitto = Mosquitto::start_with(&format!("allow_anonymous false\npassword_file {}\n", passwords.display()));
    let topic = new_topic("auth", 1);
    let shipped = common::repo_root().join("config/routes.yaml");

    // Without credentials the broker refuses, and the gateway says so and keeps retrying.
    let mut env = broker_env(&mosquitto);
    env.push(("KAFKA_TOPIC", topic.clone()));
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let refused = Gateway::start(&shipped, &envs);
    assert!(refused.wait_for_log("cannot connect to the MQTT broker", WAIT), "{}", refused.logs());
    drop(refused);

    env.push(("MQTT_USERNAME", "gateway".into()));
    env.push(("MQTT_PASSWORD", "s3cret-1234".into()));
    let gw = start(&shipped, &env);
    assert!(!gw.logs().contains("s3cret"), "the password is never logged");
    common::mosquitto_pub_with(
        mosquitto.port(),
        SPEC_TOPIC,
        SPEC_PAYLOAD.as_bytes(),
        0,
        &["-u", "gateway", "-P", "s3cret-1234"],
    );
    assert_eq!(kafka().consume(&topic, 1, WAIT).len(), 1, "{}", gw.logs());
}

#[test]
fn log_format_json_and_rust_log_shape_the_logs() {
    let mosquitto = Mosquitto::start();
    let topic = new_topic("logs", 1);
    let shipped = shipped_routes();
    let mut env = spec_env(&mosquitto, &topic);
    env.push(("LOG_FORMAT", "json".into()));
    env.push(("RUST_LOG", "debug,rumqttc=info".into()));
    // librdkafka's own debug output, to see it routed into the same log.
    env.push(("GATEWAY_KAFKA__PROPERTIES__DEBUG", "broker".into()));
    let gw = start(&shipped, &env);
    mosquitto_pub(mosquitto.port(), SPEC_TOPIC, SPEC_PAYLOAD.as_bytes(), 0);
    assert_eq!(kafka().consume(&topic, 1, WAIT).len(), 1);
    assert!(gw.wait_for_log("message received", WAIT), "DEBUG logs every message:\n{}", gw.logs());

    let lines: Vec<Value> = gw
        .logs()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect();
    let received = lines.iter().find(|l| l["message"] == "message received").expect("a message received event");
    assert_eq!(received["level"], "DEBUG");
    assert_eq!(received["topic"], SPEC_TOPIC);
    let subscribed = lines.iter().find(|l| l["message"] == "subscribed").expect("subscribed event");
    assert_eq!(subscribed["level"], "INFO");
    assert_eq!(subscribed["filter"], "cmnd/#");
    assert!(
        lines.iter().any(|l| l["target"] == "librdkafka" && l["level"] == "DEBUG"),
        "librdkafka's logs are routed into ours"
    );
}

#[test]
fn qos_2_messages_arrive_exactly_once_each() {
    let mosquitto = Mosquitto::start();
    let topic = new_topic("qos2", 1);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!("routes:\n  - name: q2\n    filter: 'q2/#'\n    qos: 2\n    topic: {topic}\n"),
    );
    let gw = start(&config, &broker_env(&mosquitto));
    // One mosquitto_pub, one line per message, QoS 2 end to end (PUBREC from the gateway after Kafka).
    let lines: String = (0..200).map(|i| format!("{{\"seq\":{i}}}\n")).collect();
    let mut child = std::process::Command::new(common::find_executable("mosquitto_pub").expect("mosquitto_pub"))
        .args(["-h", "127.0.0.1", "-p", &mosquitto.port().to_string(), "-t", "q2/dev/seq", "-q", "2", "-l"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(kafka().consume(&topic, 200, WAIT).len(), 200, "{}", gw.logs());
    let all = kafka().consume_for(&topic, Duration::from_secs(2));
    let seqs: Vec<i64> = all.iter().map(|r| json(r)["payload"]["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (0..200).collect::<Vec<_>>(), "each once, in order");
    assert_eq!(all[0].header_str("mqtt_qos"), Some("2"));
}
