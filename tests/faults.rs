//! Fault injection against the real brokers: Kafka killed, the gateway killed, Mosquitto restarted, Kafka
//! down for longer than the buffers hold, and poison inputs. Each test has a Kafka of its own (it kills
//! it) and the tests run one at a time. Every test prints its lost / duplicate counts; docs/RELIABILITY.md
//! records them.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::stream::{report, stream, tail, tally};
use common::{json, mosquitto_pub, publish_paced, unique_topic, Config, Gateway, Kafka, Mosquitto, Route, WAIT};

/// One fault test at a time: each runs two JVM-heavy brokers and a stream on a 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Mosquitto as the reliability docs advise: persistence, a deep queue, a wide in-flight window.
fn mosquitto() -> Mosquitto {
    let dir = tempfile::tempdir().unwrap().keep();
    Mosquitto::start_with(&format!(
        "persistence true\npersistence_location {}/\nmax_queued_messages 1000000\nmax_inflight_messages 1000\n",
        dir.display()
    ))
}

/// A persistent-session gateway config for `fault/#` → `topic` at route QoS `qos`.
fn config(topic: &str, qos: u8) -> Config {
    Config::new()
        .client_id(unique_topic("gw"))
        .clean_session(false)
        .reconnect_delays_ms(100, 1000)
        .stats_interval_secs(5)
        .route(Route::new("stream", "fault/#", topic).qos(qos))
}

/// What each fault test starts with: its own Kafka (it may kill it), a Mosquitto, a topic and a config.
struct Rig {
    kafka: Kafka,
    mosquitto: Mosquitto,
    topic: String,
    cfg: PathBuf,
    _dir: tempfile::TempDir,
}

/// `configure` adds the test's own settings to [`config`]'s.
fn rig(prefix: &str, partitions: i32, configure: impl FnOnce(Config) -> Config) -> Rig {
    rig_with(prefix, partitions, 1, mosquitto(), configure)
}

fn rig_with(
    prefix: &str,
    partitions: i32,
    qos: u8,
    mosquitto: Mosquitto,
    configure: impl FnOnce(Config) -> Config,
) -> Rig {
    let kafka = Kafka::start_dedicated();
    let topic = unique_topic(prefix);
    kafka.create_topic(&topic, partitions);
    let dir = tempfile::tempdir().unwrap();
    let cfg = configure(config(&topic, qos)).write(dir.path());
    Rig { kafka, mosquitto, topic, cfg, _dir: dir }
}

fn start(config: &Path, mosquitto: &Mosquitto, kafka: &Kafka) -> Gateway {
    let gw =
        Gateway::start(config, &[("MQTT_BROKER", &mosquitto.addr()), ("KAFKA_BOOTSTRAP_SERVERS", &kafka.bootstrap())]);
    assert!(gw.wait_for_log("subscribed", WAIT), "{}", gw.logs());
    gw
}

#[test]
fn kafka_killed_for_15_seconds_loses_nothing_and_keeps_order() {
    let _serial = serial();
    const N: usize = 20_000;
    // A short keep-alive: if waiting for Kafka ever stalled the MQTT event loop, the broker would drop
    // the connection within 7.5 s of the outage.
    let Rig { kafka, mosquitto, topic, cfg, _dir } = rig("fault_kafka", 6, |c| c.mqtt("  keep_alive_secs: 5\n"));
    let gw = start(&cfg, &mosquitto, &kafka);

    let port = mosquitto.port();
    // About 2,000 messages a second: the stream runs through the outage.
    let publisher = std::thread::spawn(move || publish_paced(port, stream(N, 50), 20, Duration::from_millis(10)));
    assert!(kafka.consume(&topic, 500, WAIT).len() >= 500, "the stream did not start:\n{}", gw.logs());
    kafka.kill();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_secs(15));
    kafka.restart();
    eprintln!("kafka was down for {:.1}s", killed.elapsed().as_secs_f64());
    publisher.join().expect("publisher");

    let t = tally(&kafka, &topic, N, Duration::from_secs(180));
    report("kafka_killed_15s", N, &t);
    assert_eq!(t.lost, 0, "lost messages; gateway log tail:\n{}", tail(&gw));
    assert_eq!(t.order_violations, 0, "per-device order broken");
    assert!(gw.logs().contains("statistics"), "the gateway stayed up");
    assert!(
        !gw.logs().contains("lost the connection to the MQTT broker"),
        "keep-alives were served throughout:\n{}",
        tail(&gw)
    );
}

#[test]
fn the_gateway_killed_mid_stream_and_restarted_loses_nothing() {
    let _serial = serial();
    const N: usize = 10_000;
    let Rig { kafka, mosquitto, topic, cfg, _dir } = rig("fault_gw", 6, |c| c);
    let mut gw = start(&cfg, &mosquitto, &kafka);

    let port = mosquitto.port();
    let publisher = std::thread::spawn(move || publish_paced(port, stream(N, 20), 20, Duration::from_millis(10)));
    assert!(kafka.consume(&topic, 1000, WAIT).len() >= 1000, "{}", gw.logs());
    gw.kill();
    std::thread::sleep(Duration::from_secs(2));
    let gw = start(&cfg, &mosquitto, &kafka);
    publisher.join().expect("publisher");

    let t = tally(&kafka, &topic, N, Duration::from_secs(120));
    report("gateway_sigkill", N, &t);
    assert_eq!(t.lost, 0, "lost messages; gateway log tail:\n{}", tail(&gw));
    assert!(gw.logs().contains("session_present=true"), "the broker kept the session:\n{}", gw.logs());
}

#[test]
fn mosquitto_restarted_mid_stream_loses_nothing() {
    let _serial = serial();
    const N: usize = 10_000;
    let Rig { kafka, mut mosquitto, topic, cfg, _dir } = rig("fault_mqtt", 6, |c| c);
    let gw = start(&cfg, &mosquitto, &kafka);

    // First half in one burst: the broker still holds part of it for the gateway when it restarts.
    let messages = stream(N, 20);
    common::publish_all(mosquitto.port(), messages[..N / 2].to_vec());
    mosquitto.restart_gracefully();
    assert!(
        common::wait_until(WAIT, Duration::from_millis(50), || gw.count_in_log("subscribed") >= 2),
        "no resubscription after the restart:\n{}",
        gw.logs()
    );
    common::publish_all(mosquitto.port(), messages[N / 2..].to_vec());

    let t = tally(&kafka, &topic, N, Duration::from_secs(120));
    report("mosquitto_restart", N, &t);
    assert_eq!(t.lost, 0, "lost messages; gateway log tail:\n{}", tail(&gw));
    assert!(gw.logs().contains("lost the connection to the MQTT broker"), "{}", gw.logs());
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn kafka_down_longer_than_the_buffers_hold_keeps_memory_bounded_and_recovers() {
    let _serial = serial();
    const N: usize = 20_000;
    const PAYLOAD: usize = 1024;
    // Buffers far smaller than the stream: 20 MB of messages against a 4 MiB producer queue.
    let Rig { kafka, mosquitto, topic, cfg, _dir } = rig("fault_mem", 3, |c| {
        c.mqtt("  buffer_bytes: 262144\n  max_unacked_messages: 2000\n  keep_alive_secs: 5\n")
            .kafka("  queue_max_messages: 2000\n  queue_max_kbytes: 4096\n")
    });
    let gw = start(&cfg, &mosquitto, &kafka);
    assert_eq!(kafka.consume(&topic, 0, Duration::from_millis(100)).len(), 0);
    let baseline = rss_kib(gw.pid());

    kafka.kill();
    let filler = "x".repeat(PAYLOAD);
    let messages: Vec<(String, Vec<u8>)> = (0..N)
        .map(|i| (format!("fault/dev-{}/seq", i % 10), format!(r#"{{"seq":{i},"fill":"{filler}"}}"#).into_bytes()))
        .collect();
    let port = mosquitto.port();
    let publisher = std::thread::spawn(move || common::publish_all(port, messages));
    let mut peak = baseline;
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(20) {
        peak = peak.max(rss_kib(gw.pid()));
        std::thread::sleep(Duration::from_millis(200));
    }
    publisher.join().expect("publisher");
    assert!(rss_kib(gw.pid()) > 0, "the gateway stayed up during the outage:\n{}", tail(&gw));
    kafka.restart();

    let t = tally(&kafka, &topic, N, Duration::from_secs(240));
    // The bound: the producer queue (4 MiB) plus the window of 2,000 unacked ~1 KiB messages held as
    // payloads (~2 MiB, twice for the envelope) plus 32 MiB of fixed overhead (librdkafka threads and
    // buffers, the runtime), above the RSS measured before the outage.
    let bound = baseline + 4096 + 2 * 2000 * (PAYLOAD as u64 + 200) / 1024 + 32 * 1024;
    eprintln!("FAULT RESULT kafka_down_memory: sent={N} lost={} duplicates={} rss_baseline_kib={baseline} rss_peak_kib={peak} bound_kib={bound}", t.lost, t.duplicates);
    assert!(peak <= bound, "RSS peaked at {peak} KiB, above {bound} KiB");
    assert!(
        !gw.logs().contains("lost the connection to the MQTT broker"),
        "keep-alives were served throughout:\n{}",
        tail(&gw)
    );
    assert_eq!(t.lost, 0, "it recovers by itself when Kafka returns:\n{}", tail(&gw));
}

#[test]
fn poison_inputs_are_contained_and_the_stream_around_them_is_unaffected() {
    let _serial = serial();
    // Kafka's producer limit (librdkafka message.max.bytes) below the MQTT limit, so one payload
    // passes MQTT and is refused by Kafka.
    let Rig { kafka, mosquitto, topic, cfg, _dir } =
        rig("fault_poison", 1, |c| c.kafka("  properties:\n    message.max.bytes: 200000\n"));
    kafka.create_topic(&format!("{topic}.dlq"), 1);
    let gw = start(&cfg, &mosquitto, &kafka);

    let big_json = format!(r#"{{"blob":"{}"}}"#, "y".repeat(300_000));
    let deep_topic = format!("fault/{}", (0..100).map(|i| format!("l{i}")).collect::<Vec<_>>().join("/"));
    let poison: Vec<(String, Vec<u8>, &str)> = vec![
        ("fault/p/invalid-json".into(), b"{not json".to_vec(), "dlq"),
        ("fault/p/empty".into(), Vec::new(), "dlq"),
        ("fault/p/binary".into(), vec![0xff, 0x00, 0xfe, 0x80, 0x7f], "dlq"),
        ("fault/p/too-big-for-kafka".into(), big_json.into_bytes(), "dlq"),
        ("fault/ünïcødé/温度".into(), br#"{"ok":"unicode"}"#.to_vec(), "main"),
        (deep_topic.clone(), br#"{"ok":"deep"}"#.to_vec(), "main"),
    ];
    let mut messages = Vec::new();
    for (i, (t, p, _)) in poison.iter().enumerate() {
        messages.push((format!("fault/dev-{i}/seq"), format!(r#"{{"seq":{i}}}"#).into_bytes()));
        messages.push((t.clone(), p.clone()));
    }
    messages.push(("fault/dev-end/seq".into(), br#"{"seq":99}"#.to_vec()));
    common::publish_all(mosquitto.port(), messages);

    let dlq_expected = poison.iter().filter(|p| p.2 == "dlq").count();
    let dead = kafka.consume(&format!("{topic}.dlq"), dlq_expected, WAIT);
    assert_eq!(dead.len(), dlq_expected, "{}", tail(&gw));
    let reasons: Vec<&str> = dead.iter().map(|r| r.header_str("dlq_reason").unwrap_or("")).collect();
    assert!(reasons.iter().any(|r| r.contains("not valid JSON")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("empty")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("Kafka refused") && r.to_lowercase().contains("too large")),
        "{reasons:?}"
    );
    let main = kafka.consume(&topic, 7 + 2, WAIT);
    let payloads: Vec<String> = main.iter().map(|r| json(r)["payload"].to_string()).collect();
    for i in 0..poison.len() {
        assert!(
            payloads.contains(&format!(r#"{{"seq":{i}}}"#)),
            "message {i} around the poison is in Kafka: {payloads:?}"
        );
    }
    assert!(main.iter().any(|r| json(r)["original_topic"] == "fault/ünïcødé/温度"));
    assert!(main.iter().any(|r| json(r)["original_topic"] == deep_topic.as_str()));

    // Above the MQTT packet limit (1 MiB by default). rumqttc drops the connection on it; the QoS 1
    // message comes back on the next connection (persistent session), which the gateway opens with a
    // raised limit, and is dead-lettered: truncated, since Kafka takes no record that large here.
    mosquitto_pub(mosquitto.port(), "fault/p/huge", &vec![b'z'; 2 * 1024 * 1024], 1);
    mosquitto_pub(mosquitto.port(), "fault/dev-after/seq", br#"{"seq":100}"#, 1);
    // Wait for these records themselves, not for a count: if the acks of the messages before had not
    // reached the broker when the connection closed (a fresh Kafka can take a moment to give the producer
    // its id), the broker redelivers them, and their copies come first.
    let mut after = Vec::new();
    let seen = common::wait_until(WAIT, Duration::from_millis(200), || {
        after = kafka.consume_for(&topic, Duration::from_millis(500));
        after.iter().any(|r| json(r)["payload"]["seq"] == 100)
    });
    assert!(seen, "{}", tail(&gw));
    let mut dead = Vec::new();
    common::wait_until(WAIT, Duration::from_millis(200), || {
        dead = kafka.consume_for(&format!("{topic}.dlq"), Duration::from_millis(500));
        dead.iter().any(|r| r.header_str("mqtt_topic") == Some("fault/p/huge"))
    });
    let huge = dead
        .iter()
        .find(|r| r.header_str("mqtt_topic") == Some("fault/p/huge"))
        .unwrap_or_else(|| panic!("the over-size message is dead-lettered:\n{}", tail(&gw)));
    assert!(
        huge.header_str("dlq_reason").unwrap().contains("larger than mqtt.max_packet_size_bytes"),
        "{:?}",
        huge.header_str("dlq_reason")
    );
    assert_eq!(huge.header_str("dlq_truncated_from"), Some("2097152"));
    assert_eq!(huge.value.len(), 64 * 1024);
    assert!(
        gw.logs().contains("mqtt.max_packet_size_bytes"),
        "the oversize message is named in the log:\n{}",
        tail(&gw)
    );
    assert!(!gw.logs().contains("panicked"), "{}", tail(&gw));
    eprintln!(
        "FAULT RESULT poison: {} dead letters (the over-size MQTT message among them), {} records",
        dead.len(),
        after.len()
    );
}

#[test]
fn sigterm_during_a_kafka_outage_exits_after_the_grace_period_and_loses_nothing() {
    let _serial = serial();
    const N: usize = 500;
    let Rig { kafka, mosquitto, topic, cfg, _dir } =
        rig("fault_term", 3, |c| c.extra("shutdown:\n  grace_period_secs: 3\n"));
    let mut gw = start(&cfg, &mosquitto, &kafka);
    kafka.kill();
    common::publish_all(mosquitto.port(), stream(N, 5));
    assert!(
        common::wait_until(WAIT, Duration::from_millis(50), || gw.count_in_log("message received") > 0
            || gw.logs().contains("statistics")),
        "{}",
        tail(&gw)
    );
    std::thread::sleep(Duration::from_secs(1));
    let asked = Instant::now();
    gw.sigterm();
    let status = gw
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no exit within 30 s of SIGTERM:\n{}", tail(&gw)));
    let took = asked.elapsed();
    assert_eq!(status.code(), Some(1), "undelivered messages make the exit code 1:\n{}", tail(&gw));
    assert!(gw.logs().contains("grace period over"), "{}", tail(&gw));

    // Nothing was acknowledged: with Kafka back, a new gateway gets every message from the broker.
    kafka.restart();
    let gw = start(&cfg, &mosquitto, &kafka);
    let t = tally(&kafka, &topic, N, Duration::from_secs(120));
    eprintln!(
        "FAULT RESULT sigterm_during_outage: sent={N} lost={} duplicates={} exit_after={:.1}s (grace 3 s)",
        t.lost,
        t.duplicates,
        took.as_secs_f64()
    );
    assert_eq!(t.lost, 0, "{}", tail(&gw));
}

/// A pipeline made slow on purpose: a 16 KiB intake (about 80 of these messages), a window of 200
/// messages (these are `mqtt` settings) and a 50 ms linger (a `kafka` one), so that a burst fills the
/// intake and reading must pause.
const SLOW_PIPELINE: &str = "  keep_alive_secs: 5\n  buffer_bytes: 16384\n  max_unacked_messages: 200\n";
const SLOW_PRODUCER: &str = "  linger_ms: 50\n";

/// The counter `name` of the gateway's last statistics line.
fn stat(gw: &Gateway, name: &str) -> Option<u64> {
    let logs = gw.logs();
    let line = logs.lines().rev().find(|l| l.contains("statistics"))?;
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// QoS 0 at full speed into a pipeline slower than the publisher, on a broker sized for the burst: the
/// gateway pauses reading instead of dropping, so every message published reaches Kafka, in order.
#[test]
fn a_qos0_burst_the_broker_can_hold_is_delivered_whole() {
    let _serial = serial();
    const N: usize = 20_000;
    let Rig { kafka, mosquitto, topic, cfg, _dir } =
        rig_with("fault_burst0", 6, 0, mosquitto(), |c| c.mqtt(SLOW_PIPELINE).kafka(SLOW_PRODUCER));
    let mut gw = start(&cfg, &mosquitto, &kafka);
    // Published at QoS 1, so the broker has every one of them; delivered to the QoS 0 subscription at 0.
    common::publish_all(mosquitto.port(), stream(N, 100));
    let t = tally(&kafka, &topic, N, Duration::from_secs(120));
    gw.sigterm();
    assert!(gw.wait_exit(WAIT).is_some(), "{}", tail(&gw));
    let pauses = stat(&gw, "intake_pauses").unwrap_or(0);
    eprintln!(
        "FAULT RESULT qos0_burst: sent={N} lost={} duplicates={} order_violations={} intake_pauses={pauses}",
        t.lost, t.duplicates, t.order_violations
    );
    assert!(pauses > 0, "the burst outran the pipeline, so reading had to pause:\n{}", tail(&gw));
    assert_eq!(stat(&gw, "messages_dropped"), Some(0), "{}", tail(&gw));
    assert_eq!(t.lost, 0, "{}", tail(&gw));
    assert_eq!(t.duplicates, 0);
    assert_eq!(t.order_violations, 0);
}

/// A stall of four keep-alive periods (Kafka down, the intake full, nothing read from MQTT): the gateway
/// keeps pinging, the broker keeps the connection and the messages, and all arrive once Kafka is back.
#[test]
fn a_qos0_stall_longer_than_the_keep_alive_keeps_the_connection_and_loses_nothing() {
    let _serial = serial();
    const N: usize = 5_000;
    let Rig { kafka, mosquitto, topic, cfg, _dir } =
        rig_with("fault_stall0", 3, 0, mosquitto(), |c| c.mqtt(SLOW_PIPELINE));
    let gw = start(&cfg, &mosquitto, &kafka);
    kafka.kill();
    common::publish_all(mosquitto.port(), stream(N, 50));
    assert!(
        common::wait_until(WAIT, Duration::from_millis(100), || gw.logs().contains("intake full")),
        "reading never paused:\n{}",
        tail(&gw)
    );
    // 20 s: four times the 5 s keep-alive, more than twice the broker's 1.5 x keep-alive limit.
    std::thread::sleep(Duration::from_secs(20));
    kafka.restart();
    let t = tally(&kafka, &topic, N, Duration::from_secs(180));
    eprintln!(
        "FAULT RESULT qos0_stall: sent={N} lost={} duplicates={} order_violations={} stall=20s keep_alive=5s",
        t.lost, t.duplicates, t.order_violations
    );
    assert!(
        !gw.logs().contains("lost the connection to the MQTT broker"),
        "keep-alives were served through the stall:\n{}",
        tail(&gw)
    );
    assert!(!mosquitto.log().contains("exceeded timeout"), "the broker saw the keep-alive:\n{}", mosquitto.log());
    assert_eq!(t.lost, 0, "{}", tail(&gw));
    assert_eq!(t.order_violations, 0);
}

/// The same stall on a broker with Mosquitto's default queue (1,000 messages per client): the broker
/// drops what it cannot queue (that is its operator's setting), and the gateway loses nothing of what it
/// took. Prints how much the broker kept, for docs/RELIABILITY.md.
#[test]
fn a_qos0_stall_on_a_default_broker_loses_only_what_the_broker_drops() {
    let _serial = serial();
    const N: usize = 20_000;
    let Rig { kafka, mosquitto, topic, cfg, _dir } =
        rig_with("fault_stall0d", 3, 0, Mosquitto::start(), |c| c.mqtt(SLOW_PIPELINE));
    let mut gw = start(&cfg, &mosquitto, &kafka);
    kafka.kill();
    // 1 KiB each, 20 MiB in all: more than the socket buffers between broker and gateway hold, so the
    // broker's own queue limit decides.
    let filler = "x".repeat(1024);
    let messages = (0..N)
        .map(|i| (format!("fault/dev-{}/seq", i % 50), format!(r#"{{"seq":{i},"fill":"{filler}"}}"#).into_bytes()))
        .collect();
    common::publish_all(mosquitto.port(), messages);
    assert!(
        common::wait_until(WAIT, Duration::from_millis(100), || gw.logs().contains("intake full")),
        "reading never paused:\n{}",
        tail(&gw)
    );
    std::thread::sleep(Duration::from_secs(5));
    kafka.restart();
    // Whatever the broker still held arrives; then the gateway stops and says what it received.
    let t = tally(&kafka, &topic, N, Duration::from_secs(30));
    gw.sigterm();
    assert!(gw.wait_exit(WAIT).is_some(), "{}", tail(&gw));
    let received = stat(&gw, "messages_received").expect("final statistics line");
    let delivered = N - t.lost;
    eprintln!("FAULT RESULT qos0_stall_default_broker: sent={N} received_by_gateway={received} in_kafka={delivered} broker_dropped={}", N as u64 - received);
    assert!(mosquitto.log().contains("Outgoing messages are being dropped"), "the broker dropped, and said so");
    assert_eq!(delivered as u64, received, "every message the gateway took reached Kafka:\n{}", tail(&gw));
    assert_eq!(stat(&gw, "messages_dropped"), Some(0));
    assert_eq!(t.duplicates, 0);
}
