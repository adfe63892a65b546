//! Downlinks (Kafka → MQTT) against real Kafka and a real Mosquitto, judged by `mosquitto_sub`: every
//! record reaches its device's topic, each device's in order; a SIGKILL and a 10 s broker outage lose
//! nothing; every kind of record that cannot be published is dead-lettered and the downlink goes on; a
//! loop is refused; a reload adds a downlink and changes its template; MQTT 5 properties come from
//! headers. Runs over both MQTT protocols (scripts/test.sh).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use common::prom::value;
use common::{
    kafka, replace_file, unique_topic, wait_until, Config, Gateway, Mochi, Mosquitto, Route, Subscriber, WAIT,
};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const DEVICES: usize = 100;
/// Holds what a slow subscriber has not taken yet (Mosquitto's default drops past 1,000).
const DEEP_QUEUE: &str = "max_queued_messages 0\nmax_inflight_messages 100\n";

fn protocol() -> String {
    std::env::var("TEST_MQTT_PROTOCOL").unwrap_or_else(|_| "3.1.1".into())
}

/// A record to write: key, headers, value.
type Rec = (Option<String>, Vec<(&'static str, Vec<u8>)>, Vec<u8>);

/// Writes `records` to `topic` and waits until Kafka has them all.
fn produce(topic: &str, records: &[Rec]) {
    let producer: BaseProducer = kafka().client_config().set("linger.ms", "5").create().expect("producer");
    for (key, headers, value) in records {
        let mut h = OwnedHeaders::new();
        for (name, v) in headers {
            h = h.insert(Header { key: name, value: Some(v.as_slice()) });
        }
        let mut r = BaseRecord::to(topic).payload(value.as_slice()).headers(h);
        if let Some(k) = key {
            r = r.key(k.as_str());
        }
        let mut r = Some(r);
        while let Some(rec) = r.take() {
            if let Err((e, back)) = producer.send(rec) {
                assert!(format!("{e}").contains("Queue full"), "produce: {e}");
                producer.poll(Duration::from_millis(50));
                r = Some(back);
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
}

/// `n` commands, `{"device": "dev-<d>", "seq": i}`, keyed by device.
fn commands(range: std::ops::Range<usize>) -> Vec<Rec> {
    range
        .map(|i| {
            let device = format!("dev-{}", i % DEVICES);
            let value = format!(r#"{{"device":"{device}","seq":{i}}}"#);
            (Some(device), Vec::new(), value.into_bytes())
        })
        .collect()
}

/// What the subscriber saw of the commands: the sequence numbers lost, the duplicates, and where a
/// device's messages went backwards (first occurrences only: a duplicate repeats an earlier one).
#[derive(Debug, Default)]
struct Seen {
    lost: usize,
    duplicates: usize,
    order_violations: usize,
    wrong_topic: usize,
}

fn seen(messages: &[(String, String)], n: usize) -> Seen {
    let mut s = Seen::default();
    let mut got: HashSet<i64> = HashSet::new();
    let mut last: HashMap<String, i64> = HashMap::new();
    for (topic, payload) in messages {
        let v: serde_json::Value = serde_json::from_str(payload).unwrap_or_else(|e| panic!("{payload}: {e}"));
        let (device, seq) = (v["device"].as_str().unwrap().to_string(), v["seq"].as_i64().unwrap());
        if *topic != format!("cmnd/{device}/set") {
            s.wrong_topic += 1;
        }
        if !got.insert(seq) {
            s.duplicates += 1;
            continue;
        }
        if let Some(prev) = last.insert(device.clone(), seq) {
            if prev > seq {
                s.order_violations += 1;
                if s.order_violations <= 5 {
                    eprintln!("order violation: {device} {prev} then {seq}");
                }
            }
        }
    }
    s.lost = (0..n as i64).filter(|i| !got.contains(i)).count();
    s
}

fn distinct(sub: &Subscriber) -> usize {
    sub.messages().iter().map(|(_, p)| p.clone()).collect::<HashSet<_>>().len()
}

fn downlink(name: &str, topic: &str, lines: &str) -> String {
    format!("  - name: {name}\n    kafka_topic: {topic}\n    mqtt_topic: 'cmnd/{{key}}/set'\n    properties: {{session.timeout.ms: 6000}}\n{lines}")
}

fn config(mosquitto: &Mosquitto, downlinks: &str) -> Config {
    config_as(mosquitto, &unique_topic("dl-gw"), downlinks)
}

/// The gateway's client id names the default consumer group: a reload that keeps the group keeps it.
fn config_as(mosquitto: &Mosquitto, client_id: &str, downlinks: &str) -> Config {
    let mut c = Config::new()
        .broker(mosquitto.addr())
        .client_id(client_id)
        .reconnect_delays_ms(100, 1000)
        .bootstrap_servers(kafka().bootstrap())
        .route(Route::new("telemetry", "tele/#", "telemetry"));
    if !downlinks.is_empty() {
        c = c.extra(&format!("downlinks:\n{downlinks}"));
    }
    c
}

fn tail(gw: &Gateway) -> String {
    let logs = gw.logs();
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn metric(gw: &Gateway, name: &str, downlink: &str) -> f64 {
    value(&gw.metrics(), &format!("mqtt_kafka_gateway_{name}"), &[("downlink", downlink)])
}

/// 10,000 records keyed by 100 devices, over four partitions, reach `mosquitto_sub` at QoS 1: all, each
/// device's in order, each on its device's topic; offsets are committed and the lag comes down to 0.
#[test]
fn ten_thousand_commands_reach_their_devices_in_order() {
    let n = 10_000;
    let mosquitto = Mosquitto::start_with(DEEP_QUEUE);
    let topic = unique_topic("commands");
    kafka().create_topic(&topic, 4);
    let sub = Subscriber::spawn(mosquitto.port(), &["cmnd/+/set"], &["-q", "1"]);
    assert!(sub.wait_suback(WAIT).is_some());
    produce(&topic, &commands(0..n));
    let dir = tempfile::tempdir().unwrap();
    let path = config(&mosquitto, &downlink("commands", &topic, "    qos: 1\n")).write(dir.path());
    let started = Instant::now();
    let gw = Gateway::start(&path, &[]);
    let ok = wait_until(Duration::from_secs(120), Duration::from_millis(100), || sub.messages().len() >= n);
    let took = started.elapsed();
    let s = seen(&sub.messages(), n);
    eprintln!(
        "DOWNLINK RESULT in-order (MQTT {}): sent={n} lost={} duplicates={} order_violations={} s={:.1}",
        protocol(),
        s.lost,
        s.duplicates,
        s.order_violations,
        took.as_secs_f64()
    );
    assert!(ok, "{s:?}\n{}", tail(&gw));
    assert_eq!((s.lost, s.order_violations, s.wrong_topic), (0, 0, 0), "{s:?}");
    assert_eq!(s.duplicates, 0, "no fault, no duplicate");
    // Counted, committed, caught up.
    assert!(wait_until(WAIT, Duration::from_millis(200), || metric(
        &gw,
        "downlink_messages_published_total",
        "commands"
    ) >= n as f64));
    assert_eq!(metric(&gw, "downlink_records_consumed_total", "commands"), n as f64);
    assert!(
        wait_until(WAIT, Duration::from_millis(500), || metric(&gw, "downlink_lag_records", "commands") == 0.0),
        "lag: {}",
        metric(&gw, "downlink_lag_records", "commands")
    );
    assert!(metric(&gw, "downlink_offset_commits_total", "commands") >= 4.0);
}

/// SIGKILL while 10,000 records stream out, then a restart: nothing lost (what was published but not
/// committed comes again, counted), each device's order kept.
#[test]
fn a_sigkill_mid_stream_loses_nothing() {
    let n = 10_000;
    let mosquitto = Mosquitto::start_with(DEEP_QUEUE);
    let topic = unique_topic("commands-kill");
    kafka().create_topic(&topic, 4);
    let sub = Subscriber::spawn(mosquitto.port(), &["cmnd/+/set"], &["-q", "1"]);
    assert!(sub.wait_suback(WAIT).is_some());
    produce(&topic, &commands(0..n));
    let dir = tempfile::tempdir().unwrap();
    // A slow downlink, so that the kill lands mid-stream.
    let path =
        config(&mosquitto, &downlink("commands", &topic, "    rate_limit: {messages_per_sec: 2000, burst: 100}\n"))
            .write(dir.path());
    let mut gw = Gateway::start(&path, &[]);
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(20), || sub.messages().len() >= 3000),
        "{}",
        tail(&gw)
    );
    gw.kill();
    let at_kill = distinct(&sub);
    let gw = Gateway::start(&path, &[]);
    let ok = wait_until(Duration::from_secs(120), Duration::from_millis(100), || distinct(&sub) >= n);
    let s = seen(&sub.messages(), n);
    eprintln!(
        "DOWNLINK RESULT sigkill (MQTT {}): sent={n} at_kill={at_kill} lost={} duplicates={} order_violations={}",
        protocol(),
        s.lost,
        s.duplicates,
        s.order_violations
    );
    assert!(ok, "{s:?}\n{}", tail(&gw));
    assert!(at_kill < n, "the kill came after the end");
    assert_eq!((s.lost, s.order_violations, s.wrong_topic), (0, 0, 0), "{s:?}");
}

/// SIGTERM mid-stream: the downlink stops reading, publishes what it has in flight, commits, and leaves
/// its group; the next start goes on from there: nothing lost and nothing published twice.
#[test]
fn a_sigterm_mid_stream_publishes_nothing_twice() {
    let n = 6_000;
    let mosquitto = Mosquitto::start_with(DEEP_QUEUE);
    let topic = unique_topic("commands-term");
    kafka().create_topic(&topic, 4);
    let sub = Subscriber::spawn(mosquitto.port(), &["cmnd/+/set"], &["-q", "1"]);
    assert!(sub.wait_suback(WAIT).is_some());
    produce(&topic, &commands(0..n));
    let dir = tempfile::tempdir().unwrap();
    let path =
        config(&mosquitto, &downlink("commands", &topic, "    rate_limit: {messages_per_sec: 2000, burst: 100}\n"))
            .write(dir.path());
    let mut gw = Gateway::start(&path, &[]);
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(20), || sub.messages().len() >= 2000),
        "{}",
        tail(&gw)
    );
    gw.sigterm();
    let status = gw.wait_exit(WAIT);
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", tail(&gw));
    let at_stop = distinct(&sub);
    let gw = Gateway::start(&path, &[]);
    let ok = wait_until(Duration::from_secs(120), Duration::from_millis(100), || distinct(&sub) >= n);
    let s = seen(&sub.messages(), n);
    eprintln!(
        "DOWNLINK RESULT sigterm (MQTT {}): sent={n} at_stop={at_stop} lost={} duplicates={} order_violations={}",
        protocol(),
        s.lost,
        s.duplicates,
        s.order_violations
    );
    assert!(ok, "{s:?}\n{}", tail(&gw));
    assert!(at_stop < n, "the stop came after the end");
    assert_eq!((s.lost, s.duplicates, s.order_violations, s.wrong_topic), (0, 0, 0, 0), "{s:?}");
}

/// Mosquitto down for 10 s while records stream out: the partitions pause, then everything arrives.
/// The subscriber has a persistent session and the broker saves it (a graceful stop), so what the
/// broker acknowledged before it stopped is delivered after; what it did not, the gateway publishes again.
#[test]
fn mosquitto_down_for_ten_seconds_loses_nothing() {
    let n = 10_000;
    let store = tempfile::tempdir().unwrap();
    let conf = format!("{DEEP_QUEUE}persistence true\npersistence_location {}/\n", store.path().display());
    let mut mosquitto = Mosquitto::start_with(&conf);
    let topic = unique_topic("commands-outage");
    kafka().create_topic(&topic, 4);
    let sub_id = unique_topic("dl-sub");
    let sub = Subscriber::spawn(mosquitto.port(), &["cmnd/+/set"], &["-q", "1", "-c", "-i", &sub_id]);
    assert!(sub.wait_suback(WAIT).is_some());
    let dir = tempfile::tempdir().unwrap();
    let path =
        config(&mosquitto, &downlink("commands", &topic, "    rate_limit: {messages_per_sec: 1000, burst: 100}\n"))
            .write(dir.path());
    let gw = Gateway::start(&path, &[]);
    produce(&topic, &commands(0..n));
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(20), || sub.messages().len() >= 2000),
        "{}",
        tail(&gw)
    );
    super_stop(&mut mosquitto);
    std::thread::sleep(Duration::from_secs(10));
    let paused = metric(&gw, "downlink_paused", "commands");
    let in_flight = metric(&gw, "downlink_in_flight_records", "commands");
    mosquitto.start_again();
    let ok = wait_until(Duration::from_secs(120), Duration::from_millis(100), || distinct(&sub) >= n);
    let s = seen(&sub.messages(), n);
    eprintln!("DOWNLINK RESULT outage (MQTT {}): sent={n} lost={} duplicates={} order_violations={} paused_during={paused} in_flight_during={in_flight}", protocol(), s.lost, s.duplicates, s.order_violations);
    assert!(ok, "{s:?}\n{}", tail(&gw));
    assert_eq!((s.lost, s.wrong_topic), (0, 0), "{s:?}");
    assert_eq!(s.order_violations, 0, "{s:?}");
    // Memory stayed bounded: the consumer paused at its window instead of reading on.
    assert_eq!(paused, 1.0, "paused while MQTT was down");
    assert!(in_flight <= 2100.0, "{in_flight} records in flight");
    assert!(metric(&gw, "downlink_pauses_total", "commands") >= 1.0);
    assert!(wait_until(WAIT, Duration::from_millis(200), || metric(&gw, "downlink_paused", "commands") == 0.0));
}

/// A rebalance while the downlink is paused (MQTT down, its window full): the partitions the first
/// gateway is given back are read again (librdkafka keeps a partition's pause through a rebalance), and
/// what it had read of the partitions it lost is published only by their new owner. Nothing was
/// published before the rebalance, so nothing may arrive twice.
#[test]
fn a_rebalance_while_paused_skips_nothing_and_publishes_nothing_twice() {
    let n = 4_000;
    let store = tempfile::tempdir().unwrap();
    let conf = format!("{DEEP_QUEUE}persistence true\npersistence_location {}/\n", store.path().display());
    let mut mosquitto = Mosquitto::start_with(&conf);
    let topic = unique_topic("commands-paused-rebalance");
    kafka().create_topic(&topic, 4);
    let sub_id = unique_topic("dl-sub");
    let sub = Subscriber::spawn(mosquitto.port(), &["cmnd/+/set"], &["-q", "1", "-c", "-i", &sub_id]);
    assert!(sub.wait_suback(WAIT).is_some());
    produce(&topic, &commands(0..n));
    super_stop(&mut mosquitto);
    let group = unique_topic("dl-group");
    let dl = downlink("commands", &topic, &format!("    group_id: {group}\n"));
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let gw1 = Gateway::start(&config(&mosquitto, &dl).write(one.path()), &[]);
    // More records than the window: it fills, and the partitions pause.
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(100), || metric(&gw1, "downlink_paused", "commands")
            == 1.0),
        "{}",
        tail(&gw1)
    );
    let gw2 = Gateway::start(&config(&mosquitto, &dl).write(two.path()), &[]);
    assert!(gw2.wait_for_log("downlink partitions assigned", Duration::from_secs(60)), "{}", tail(&gw2));
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(100), || gw1
            .logs()
            .matches("downlink partitions assigned")
            .count()
            >= 2),
        "{}",
        tail(&gw1)
    );
    mosquitto.start_again();
    let ok = wait_until(Duration::from_secs(120), Duration::from_millis(100), || distinct(&sub) >= n);
    let s = seen(&sub.messages(), n);
    eprintln!(
        "DOWNLINK RESULT paused rebalance (MQTT {}): sent={n} lost={} duplicates={} order_violations={}",
        protocol(),
        s.lost,
        s.duplicates,
        s.order_violations
    );
    assert!(ok, "{s:?}\n{}\n{}", tail(&gw1), tail(&gw2));
    assert_eq!((s.lost, s.duplicates, s.order_violations, s.wrong_topic), (0, 0, 0, 0), "{s:?}");
    // Both published: the first gateway read the partitions it was given back.
    for gw in [&gw1, &gw2] {
        assert!(
            wait_until(WAIT, Duration::from_millis(200), || metric(
                gw,
                "downlink_messages_published_total",
                "commands"
            ) > 0.0),
            "{}",
            tail(gw)
        );
    }
}

/// A graceful stop: the broker saves its sessions (the subscriber's queue) as a service restart would.
fn super_stop(m: &mut Mosquitto) {
    assert!(common::send_signal(m.pid(), "TERM"));
    assert!(wait_until(Duration::from_secs(10), Duration::from_millis(20), || !common::port_open(m.port())));
    m.stop();
}

/// Every kind of record that cannot be published goes to the dead-letter topic with the reason and its
/// own headers; the records around them are published.
#[test]
fn records_that_cannot_be_published_are_dead_lettered_and_the_downlink_goes_on() {
    let mosquitto = Mosquitto::start_with(DEEP_QUEUE);
    let topic = unique_topic("commands-bad");
    let dlq = format!("{topic}.dlq");
    kafka().create_topic(&topic, 1);
    kafka().create_topic(&dlq, 1);
    let sub = Subscriber::spawn(mosquitto.port(), &["cmnd/#"], &["-q", "1"]);
    assert!(sub.wait_suback(WAIT).is_some());
    let q1 = || vec![("qos", b"1".to_vec()), ("trace", b"t-1".to_vec())];
    let good = |i: usize| (Some(format!("dev-{i}")), q1(), format!(r#"{{"device":"dev-{i}","seq":{i}}}"#).into_bytes());
    let bad: Vec<(&str, Rec)> = vec![
        ("missing_value: {key}: the record has no key", (None, q1(), b"{}".to_vec())),
        ("missing_value: {key} is empty", (Some(String::new()), q1(), b"{}".to_vec())),
        ("invalid_topic: {key} is `a/b`", (Some("a/b".into()), q1(), b"{}".to_vec())),
        ("invalid_topic: {key} is `+`", (Some("+".into()), q1(), b"{}".to_vec())),
        ("invalid_topic: {key} is `x#`", (Some("x#".into()), q1(), b"{}".to_vec())),
        (
            "invalid_setting: qos header `qos` is `7`",
            (Some("dev-q".into()), vec![("qos", b"7".to_vec()), ("trace", b"t-1".to_vec())], b"{}".to_vec()),
        ),
        ("missing_value: qos {header.qos}", (Some("dev-q".into()), vec![("trace", b"t-1".to_vec())], b"{}".to_vec())),
        ("too_large: the MQTT packet would be", (Some("dev-big".into()), q1(), vec![b'x'; 8000])),
    ];
    let mut records = vec![good(0)];
    for (_, r) in &bad {
        records.push(r.clone());
    }
    records.push(good(1));
    produce(&topic, &records);
    let dir = tempfile::tempdir().unwrap();
    let path = config(&mosquitto, &downlink("commands", &topic, "    qos: '{header.qos}'\n"))
        .mqtt("  max_packet_size_bytes: 4096\n")
        .write(dir.path());
    let gw = Gateway::start(&path, &[]);
    let dead = kafka().consume(&dlq, bad.len(), Duration::from_secs(60));
    assert_eq!(dead.len(), bad.len(), "{}", tail(&gw));
    for ((why, _), r) in bad.iter().zip(&dead) {
        let reason = r.header_str("dlq_reason").unwrap_or_default();
        assert!(reason.starts_with(why), "want {why:?}, got {reason:?}");
        assert_eq!(r.header_str("trace"), Some("t-1"), "original headers kept");
        assert_eq!(r.header_str("downlink"), Some("commands"));
        assert_eq!(r.header_str("kafka_topic"), Some(topic.as_str()));
    }
    let got = sub.wait_messages(2, WAIT);
    let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(topics, ["cmnd/dev-0/set", "cmnd/dev-1/set"], "{}", tail(&gw));
    assert!(wait_until(WAIT, Duration::from_millis(200), || {
        let m = gw.metrics();
        let by = |r: &str| {
            value(
                &m,
                "mqtt_kafka_gateway_downlink_records_dead_lettered_total",
                &[("downlink", "commands"), ("reason", r)],
            )
        };
        by("missing_value") == 3.0
            && by("invalid_topic") == 3.0
            && by("invalid_setting") == 1.0
            && by("too_large") == 1.0
    }));
    // Everything is committed: nothing comes again after a restart.
    assert!(wait_until(WAIT, Duration::from_millis(500), || metric(&gw, "downlink_lag_records", "commands") == 0.0));
}

/// The spec's route subscribes `cmnd/#`; a downlink to `cmnd/{key}/set` would feed it: refused, with
/// both names, by `validate` and at start.
#[test]
fn a_loop_is_refused_with_both_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_config(
        dir.path(),
        "downlinks:\n  - {name: commands, kafka_topic: device-commands, mqtt_topic: 'cmnd/{key}/set'}\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-kafka-gateway"))
        .args(["validate", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("downlink `commands`") && err.contains("route `iot-commands`"), "{err}");
    assert!(err.contains("allow_loop"), "{err}");
    let mut gw = Gateway::start(&path, &[]);
    assert_eq!(gw.wait_exit(WAIT).and_then(|s| s.code()), Some(2), "{}", gw.logs());
}

/// A downlink added by a reload starts; a changed template applies to the next records; a removed one
/// stops.
#[test]
fn a_reload_adds_a_downlink_and_changes_its_template() {
    let mosquitto = Mosquitto::start_with(DEEP_QUEUE);
    let topic = unique_topic("commands-reload");
    kafka().create_topic(&topic, 2);
    let sub = Subscriber::spawn(mosquitto.port(), &["cmnd/#"], &["-q", "1"]);
    assert!(sub.wait_suback(WAIT).is_some());
    let dir = tempfile::tempdir().unwrap();
    let id = unique_topic("dl-gw");
    let path = config_as(&mosquitto, &id, "").write(dir.path());
    let gw = Gateway::start(&path, &[]);
    assert!(gw.wait_for_log("subscribed", WAIT));
    produce(&topic, &commands(0..100));
    replace_file(&path, &config_as(&mosquitto, &id, &downlink("commands", &topic, "")).yaml());
    assert!(gw.wait_for_log("downlinks reloaded", WAIT), "{}", tail(&gw));
    let got = sub.wait_messages(100, Duration::from_secs(60));
    let s = seen(&got, 100);
    assert_eq!((s.lost, s.order_violations, s.wrong_topic), (0, 0, 0), "{s:?}\n{}", tail(&gw));
    // The template changes: the next records go to the new topic, through the same consumer.
    let changed = downlink("commands", &topic, "").replace("cmnd/{key}/set", "cmnd/{key}/config");
    replace_file(&path, &config_as(&mosquitto, &id, &changed).yaml());
    assert!(
        wait_until(WAIT, Duration::from_millis(50), || gw.count_in_log("downlinks reloaded") >= 2),
        "{}",
        tail(&gw)
    );
    assert!(gw.wait_for_log("downlink changed", WAIT));
    produce(&topic, &commands(100..200));
    let got = sub.wait_messages(200, Duration::from_secs(60));
    let later: BTreeMap<String, usize> = got[100..].iter().fold(BTreeMap::new(), |mut m, (t, _)| {
        *m.entry(t.rsplit('/').next().unwrap().to_string()).or_default() += 1;
        m
    });
    assert_eq!(later, BTreeMap::from([("config".to_string(), 100)]), "{}", tail(&gw));
    assert_eq!(gw.count_in_log("downlink consumer closed"), 0, "a template change keeps the consumer");
    // Removed: it stops, and what comes after stays in Kafka.
    replace_file(&path, &config_as(&mosquitto, &id, "").yaml());
    assert!(gw.wait_for_log("downlink consumer closed", WAIT), "{}", tail(&gw));
    assert!(gw.logs().contains("downlink removed"));
    assert_eq!(metric(&gw, "downlink_running", "commands"), 0.0);
    produce(&topic, &commands(200..210));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(sub.messages().len(), 200, "a removed downlink publishes nothing");
}

/// Under MQTT 5, headers become the message's properties, read by `mosquitto_sub -V 5`.
#[test]
fn headers_become_mqtt5_properties() {
    let mosquitto = Mosquitto::start_with(DEEP_QUEUE);
    let topic = unique_topic("commands-v5");
    kafka().create_topic(&topic, 1);
    let sub =
        Subscriber::spawn(mosquitto.port(), &["cmnd/#"], &["-q", "1", "-V", "5", "-F", "MSG\t%t\t%p|%C|%R|%q|%P"]);
    assert!(sub.wait_suback(WAIT).is_some());
    let headers = vec![
        ("mqtt_content_type", b"application/json".to_vec()),
        ("mqtt_response_topic", b"reply/dev-1".to_vec()),
        ("mqtt_correlation_data", vec![0xca, 0xfe]),
        ("trace", b"t-9".to_vec()),
        ("mqtt_user_device_id", b"dev-1".to_vec()),
    ];
    produce(&topic, &[(Some("dev-1".into()), headers, br#"{"on":true}"#.to_vec())]);
    let dir = tempfile::tempdir().unwrap();
    let path = config(&mosquitto, &downlink("commands", &topic, "")).write(dir.path());
    let gw = Gateway::start(&path, &[("GATEWAY_MQTT__PROTOCOL", "5")]);
    let got = sub.wait_messages(1, Duration::from_secs(60));
    assert_eq!(got.len(), 1, "{}", tail(&gw));
    let (t, rest) = &got[0];
    assert_eq!(t, "cmnd/dev-1/set");
    let parts: Vec<&str> = rest.split('|').collect();
    assert_eq!(parts[0], r#"{"on":true}"#);
    assert_eq!(parts[1], "application/json");
    assert_eq!(parts[2], "reply/dev-1");
    assert!(parts[4].contains("trace:t-9") && parts[4].contains("device_id:dev-1"), "user properties: {}", parts[4]);
}

/// MQTT 5: a publish the broker refuses (its ACL denies the topic: PUBACK reason 0x87) is dead-lettered
/// with the broker's reason, and the downlink goes on. (Mosquitto 2.0.11 also drops the connection
/// right after such a PUBACK when the topic before had subscribers: the refusal still counts, and what
/// followed is published again on the next connection.)
#[test]
fn a_publish_the_broker_refuses_is_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "topic read #\ntopic readwrite cmnd/#\n").unwrap();
    let mosquitto = Mosquitto::start_with(&format!("{DEEP_QUEUE}acl_file {}\n", acl.display()));
    let topic = unique_topic("commands-acl");
    let dlq = format!("{topic}.dlq");
    kafka().create_topic(&topic, 1);
    kafka().create_topic(&dlq, 1);
    let sub = Subscriber::spawn(mosquitto.port(), &["#"], &["-q", "1"]);
    assert!(sub.wait_suback(WAIT).is_some());
    let rec = |area: &str, key: &str| -> Rec {
        (
            Some(key.to_string()),
            vec![("area", area.as_bytes().to_vec())],
            format!(r#"{{"to":"{area}/{key}"}}"#).into_bytes(),
        )
    };
    produce(&topic, &[rec("cmnd", "dev-1"), rec("secret", "dev-2"), rec("cmnd", "dev-3")]);
    let downlinks = format!(
        "  - name: commands\n    kafka_topic: {topic}\n    mqtt_topic: '{{header.area}}/{{key}}'\n    qos: 1\n    allow_loop: true\n    properties: {{session.timeout.ms: 6000}}\n"
    );
    let path = config(&mosquitto, &downlinks).write(dir.path());
    let gw = Gateway::start(&path, &[("GATEWAY_MQTT__PROTOCOL", "5")]);
    let dead = kafka().consume(&dlq, 1, Duration::from_secs(60));
    assert_eq!(dead.len(), 1, "{}", tail(&gw));
    let reason = dead[0].header_str("dlq_reason").unwrap_or_default();
    assert!(
        reason.starts_with("refused_by_broker: the broker refused the publish to secret/dev-2: NotAuthorized"),
        "{reason}"
    );
    let got = sub.wait_messages(2, WAIT);
    let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(topics, ["cmnd/dev-1", "cmnd/dev-3"], "{}\n{}", tail(&gw), mosquitto.log());
    assert!(wait_until(WAIT, Duration::from_millis(200), || {
        value(
            &gw.metrics(),
            "mqtt_kafka_gateway_downlink_records_dead_lettered_total",
            &[("downlink", "commands"), ("reason", "refused_by_broker")],
        ) == 1.0
    }));
    assert!(wait_until(WAIT, Duration::from_millis(500), || metric(&gw, "downlink_lag_records", "commands") == 0.0));
}

/// More QoS 2 publishes refused at PUBREC than the connection has in-flight slots, on a broker that
/// keeps the connection after a refusal (Mochi MQTT; Mosquitto 2.0.11 closes it): rumqttc keeps a slot
/// for each refusal, so the downlinks' connection is made again before they run out. Every refused
/// record is dead-lettered once, and the command behind them is published. Both with our own limit of
/// in-flight messages and with a broker's Receive Maximum far below it.
#[test]
fn more_refused_qos2_publishes_than_in_flight_slots_do_not_stall_the_downlinks() {
    let refused = 1_100;
    for receive_maximum in [1024, 10] {
        let broker = Mochi::start(&["secret/"], receive_maximum);
        let topic = unique_topic("commands-refused-qos2");
        let dlq = format!("{topic}.dlq");
        kafka().create_topic(&topic, 1);
        kafka().create_topic(&dlq, 1);
        let sub = Subscriber::spawn(broker.port(), &["#"], &["-q", "2", "-V", "5"]);
        assert!(sub.wait_suback(WAIT).is_some(), "{}", broker.output());
        let rec = |area: &str, i: usize| -> Rec {
            (
                Some(format!("dev-{i}")),
                vec![("area", area.as_bytes().to_vec())],
                format!(r#"{{"seq":{i}}}"#).into_bytes(),
            )
        };
        let mut records: Vec<Rec> = (0..refused).map(|i| rec("secret", i)).collect();
        records.push(rec("cmnd", refused));
        produce(&topic, &records);
        let downlinks = format!(
            "  - name: commands\n    kafka_topic: {topic}\n    mqtt_topic: '{{header.area}}/{{key}}'\n    qos: 2\n    allow_loop: true\n    properties: {{session.timeout.ms: 6000}}\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = Config::new()
            .broker(broker.addr())
            .client_id(unique_topic("dl-gw"))
            .reconnect_delays_ms(100, 1000)
            .bootstrap_servers(kafka().bootstrap())
            .route(Route::new("telemetry", "tele/#", "telemetry"))
            .extra(&format!("downlinks:\n{downlinks}"))
            .write(dir.path());
        let gw = Gateway::start(&path, &[("GATEWAY_MQTT__PROTOCOL", "5")]);
        let got = sub.wait_messages(1, Duration::from_secs(90));
        let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(topics, [format!("cmnd/dev-{refused}")], "receive maximum {receive_maximum}:\n{}", tail(&gw));
        let dead = kafka().consume(&dlq, refused, Duration::from_secs(60));
        assert_eq!(dead.len(), refused, "receive maximum {receive_maximum}:\n{}", tail(&gw));
        let dead_lettered = || {
            value(
                &gw.metrics(),
                "mqtt_kafka_gateway_downlink_records_dead_lettered_total",
                &[("downlink", "commands"), ("reason", "refused_by_broker")],
            )
        };
        assert!(
            wait_until(WAIT, Duration::from_millis(200), || dead_lettered() == refused as f64),
            "receive maximum {receive_maximum}: each refusal dead-lettered once, not {}",
            dead_lettered()
        );
        let renewals = gw.logs().matches("to get back the in-flight slots").count();
        eprintln!("DOWNLINK RESULT refused QoS 2 (receive maximum {receive_maximum}): refused={refused} dead_lettered={} new_connections={renewals}", dead.len());
        assert!(renewals >= 1, "{}", tail(&gw));
    }
}

/// New MQTT settings from a reload reconnect the downlinks' connection: the broker moves, and the
/// records that follow reach the new one, in order.
#[test]
fn a_reload_moves_the_downlinks_to_another_broker() {
    let a = Mosquitto::start_with(DEEP_QUEUE);
    let b = Mosquitto::start_with(DEEP_QUEUE);
    let topic = unique_topic("commands-move");
    kafka().create_topic(&topic, 2);
    let on_a = Subscriber::spawn(a.port(), &["cmnd/+/set"], &["-q", "1"]);
    let on_b = Subscriber::spawn(b.port(), &["cmnd/+/set"], &["-q", "1"]);
    assert!(on_a.wait_suback(WAIT).is_some() && on_b.wait_suback(WAIT).is_some());
    let dir = tempfile::tempdir().unwrap();
    let id = unique_topic("dl-gw");
    let dl = downlink("commands", &topic, "");
    let path = config_as(&a, &id, &dl).write(dir.path());
    let gw = Gateway::start(&path, &[]);
    produce(&topic, &commands(0..100));
    let s = seen(&on_a.wait_messages(100, Duration::from_secs(60)), 100);
    assert_eq!((s.lost, s.order_violations), (0, 0), "{s:?}\n{}", tail(&gw));
    replace_file(&path, &config_as(&b, &id, &dl).yaml());
    assert!(gw.wait_for_log("downlinks: new MQTT settings", WAIT), "{}", tail(&gw));
    produce(&topic, &commands(100..200));
    let got = on_b.wait_messages(100, Duration::from_secs(60));
    let seqs: Vec<i64> = got
        .iter()
        .map(|(_, p)| serde_json::from_str::<serde_json::Value>(p).unwrap()["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 100, "{}", tail(&gw));
    assert!(seqs.iter().all(|s| (100..200).contains(s)), "{seqs:?}");
    assert_eq!(on_a.messages().len(), 100, "nothing more on the old broker");
}

/// Reloads the uplink refuses leave the downlinks where they are: they follow the MQTT settings the
/// uplink's edge connected with and the Kafka settings its check passed, never those a reload merely
/// asks for. Kafka settings that pass restart the consumers, which go on from their commits.
#[test]
fn the_downlinks_follow_only_the_settings_the_uplink_accepted() {
    let a = Mosquitto::start_with(DEEP_QUEUE);
    let topic = unique_topic("commands-accepted");
    kafka().create_topic(&topic, 2);
    let on_a = Subscriber::spawn(a.port(), &["cmnd/+/set"], &["-q", "1"]);
    assert!(on_a.wait_suback(WAIT).is_some());
    let dir = tempfile::tempdir().unwrap();
    let id = unique_topic("dl-gw");
    let dl = downlink("commands", &topic, "");
    let path = config_as(&a, &id, &dl).write(dir.path());
    let gw = Gateway::start(&path, &[]);
    let mut sent = 0;
    let mut more = |n: usize, what: &str| {
        produce(&topic, &commands(sent..sent + n));
        sent += n;
        let s = seen(&on_a.wait_messages(sent, Duration::from_secs(60)), sent);
        assert_eq!((s.lost, s.duplicates, s.order_violations), (0, 0, 0), "{what}: {s:?}\n{}", tail(&gw));
    };
    more(100, "at start");
    // An MQTT broker nobody listens at: the uplink's switch is refused.
    let nowhere = format!("127.0.0.1:{}", common::free_port());
    let yaml = config_as(&a, &id, &dl).yaml().replace(&a.addr(), &nowhere);
    replace_file(&path, &yaml);
    assert!(gw.wait_for_log("new MQTT settings refused", Duration::from_secs(60)), "{}", tail(&gw));
    more(100, "after a refused MQTT broker");
    assert!(!gw.logs().contains("downlinks: new MQTT settings"), "the downlinks tried it:\n{}", tail(&gw));
    // A Kafka cluster nobody listens at: the uplink's check refuses it.
    let no_kafka = format!("127.0.0.1:{}", common::free_port());
    replace_file(&path, &yaml.replace(&kafka().bootstrap(), &no_kafka));
    assert!(gw.wait_for_log("new Kafka settings refused", Duration::from_secs(60)), "{}", tail(&gw));
    more(100, "after a refused Kafka cluster");
    assert!(!gw.logs().contains("downlinks: new Kafka settings"), "the downlinks tried it:\n{}", tail(&gw));
    // Kafka settings that pass: the consumers start again with them, from their commits.
    replace_file(&path, &config_as(&a, &id, &dl).kafka("  linger_ms: 7\n").yaml());
    assert!(gw.wait_for_log("downlinks: new Kafka settings", Duration::from_secs(60)), "{}", tail(&gw));
    more(100, "after new Kafka settings");
}

/// A second gateway joins the group mid-stream (scaling out): the partitions are shared out again, and
/// nothing unpublished is skipped; each device's first copies stay in order.
#[test]
fn a_rebalance_mid_stream_skips_nothing() {
    let n = 10_000;
    let mosquitto = Mosquitto::start_with(DEEP_QUEUE);
    let topic = unique_topic("commands-rebalance");
    kafka().create_topic(&topic, 4);
    let sub = Subscriber::spawn(mosquitto.port(), &["cmnd/+/set"], &["-q", "1"]);
    assert!(sub.wait_suback(WAIT).is_some());
    produce(&topic, &commands(0..n));
    let group = unique_topic("dl-group");
    // Slow enough (20 s) that the second gateway's join, which waits for the first to let its
    // partitions go, lands well before the end even on a busy machine.
    let dl = downlink(
        "commands",
        &topic,
        &format!("    group_id: {group}\n    rate_limit: {{messages_per_sec: 500, burst: 100}}\n"),
    );
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let gw1 = Gateway::start(&config(&mosquitto, &dl).write(one.path()), &[]);
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(20), || sub.messages().len() >= 2000),
        "{}",
        tail(&gw1)
    );
    let gw2 = Gateway::start(&config(&mosquitto, &dl).write(two.path()), &[]);
    let ok = wait_until(Duration::from_secs(120), Duration::from_millis(100), || distinct(&sub) >= n);
    let s = seen(&sub.messages(), n);
    eprintln!(
        "DOWNLINK RESULT rebalance (MQTT {}): sent={n} lost={} duplicates={} order_violations={}",
        protocol(),
        s.lost,
        s.duplicates,
        s.order_violations
    );
    assert!(ok, "{s:?}\n{}\n{}", tail(&gw1), tail(&gw2));
    assert_eq!((s.lost, s.order_violations, s.wrong_topic), (0, 0, 0), "{s:?}");
    // Both took part.
    assert!(metric(&gw1, "downlink_messages_published_total", "commands") > 0.0);
    assert!(
        wait_until(WAIT, Duration::from_millis(200), || metric(&gw2, "downlink_messages_published_total", "commands")
            > 0.0),
        "{}",
        tail(&gw2)
    );
}
