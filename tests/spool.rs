//! The disk spool (`spool:`) against the real brokers: a Kafka outage longer than any memory buffer
//! under a steady QoS 0 stream from a Mosquitto with its default queue; the gateway SIGKILLed while
//! spooling and restarted (`fsync: always` and `interval`); QoS 1 with `ack_after: spool` through an
//! outage and a restart; a full spool with `when_full: block` and `drop_oldest`; and a spool damaged on
//! disk (a torn tail, a corrupt segment). Each test has a Kafka of its own (it kills it) and the tests
//! run one at a time. Every test prints its counts; docs/RELIABILITY.md records them.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::prom::value;
use common::stream::{stream_from, tail, tally, tally_of};
use common::{
    http, publish_all, publish_paced, unique_topic, wait_until, Config, Gateway, Kafka, Mosquitto, Route, WAIT,
};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// 1 KiB of filler per message: 1,000 msg/s is about 1 MiB/s.
const FILL: usize = 1024;
/// Devices the stream comes from (one key each).
const DEVICES: usize = 50;

struct Rig {
    kafka: Kafka,
    mosquitto: Mosquitto,
    topic: String,
    cfg: PathBuf,
    spool_dir: PathBuf,
    _dir: tempfile::TempDir,
}

/// A dedicated Kafka, `mosquitto`, and a gateway config routing `fault/#` at `qos` with the spool
/// settings `spool` (YAML lines under `spool:`; `dir` is added).
fn rig(prefix: &str, qos: u8, mosquitto: Mosquitto, spool: &str) -> Rig {
    let kafka = Kafka::start_dedicated();
    let topic = unique_topic(prefix);
    kafka.create_topic(&topic, 3);
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let cfg = Config::new()
        .client_id(unique_topic("gw"))
        .clean_session(false)
        .reconnect_delays_ms(100, 1000)
        .stats_interval_secs(5)
        .mqtt("  keep_alive_secs: 5\n")
        .route(Route::new("stream", "fault/#", &topic).qos(qos))
        .extra(&format!("spool:\n  dir: {}\n{spool}", spool_dir.display()))
        .write(dir.path());
    Rig { kafka, mosquitto, topic, cfg, spool_dir, _dir: dir }
}

/// Mosquitto with a queue deep enough to hold what a blocked gateway does not read.
fn deep_mosquitto() -> Mosquitto {
    Mosquitto::start_with("max_queued_messages 1000000\nmax_inflight_messages 1000\n")
}

fn start(rig: &Rig) -> Gateway {
    let gw = Gateway::start(
        &rig.cfg,
        &[("MQTT_BROKER", &rig.mosquitto.addr()), ("KAFKA_BOOTSTRAP_SERVERS", &rig.kafka.bootstrap())],
    );
    assert!(gw.wait_for_log("subscribed", WAIT), "{}", gw.logs());
    gw
}

/// One metric of the gateway, summed over its labels.
fn metric(gw: &Gateway, name: &str) -> f64 {
    value(&gw.metrics(), name, &[])
}

fn wait_metric(gw: &Gateway, name: &str, timeout: Duration, ok: impl Fn(f64) -> bool) -> f64 {
    let mut last = 0.0;
    let reached = wait_until(timeout, Duration::from_millis(200), || {
        last = metric(gw, name);
        ok(last)
    });
    assert!(reached, "{name} stayed at {last}:\n{}", tail(gw));
    last
}

/// Waits until the spool is read back and delivered to its end.
fn drained(gw: &Gateway) {
    let ok = wait_until(Duration::from_secs(120), Duration::from_millis(250), || {
        let m = gw.metrics();
        value(&m, "mqtt_kafka_gateway_spool_records", &[]) == 0.0
            && value(&m, "mqtt_kafka_gateway_spool_active", &[]) == 0.0
    });
    assert!(ok, "the spool was not delivered to its end:\n{}", tail(gw));
}

/// Publishes `seqs` at 1,000 msg/s (QoS 1 to the broker) on a thread of its own.
fn paced(port: u16, seqs: std::ops::Range<usize>) -> std::thread::JoinHandle<()> {
    let messages = stream_from(seqs, DEVICES, FILL);
    std::thread::spawn(move || publish_paced(port, messages, 10, Duration::from_millis(10)))
}

fn outage_secs() -> u64 {
    std::env::var("TEST_SPOOL_OUTAGE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60)
}

/// Kafka down for 60 s under a 1,000 msg/s QoS 0 stream of 1 KiB messages from a Mosquitto with its
/// default queue settings (which drop beyond 1,000 queued messages): with the spool every message
/// reaches Kafka once it is back, in order per device. `/readyz` stays ready while spooling.
#[test]
fn kafka_down_a_minute_under_a_qos0_stream_loses_nothing_and_keeps_order() {
    let _serial = serial();
    let down = Duration::from_secs(outage_secs());
    // From before the outage to after it.
    let n = 1000 * (down.as_secs() as usize + 8);
    let rig = rig("spool_outage", 0, Mosquitto::start(), "  max_bytes: 512MiB\n");
    let mut gw = start(&rig);
    let publisher = paced(rig.mosquitto.port(), 0..n);
    assert!(rig.kafka.consume(&rig.topic, 500, WAIT).len() >= 500, "the stream did not start:\n{}", tail(&gw));
    rig.kafka.kill();
    let outage = Instant::now();
    assert!(gw.wait_for_log("spooling to disk", WAIT), "{}", tail(&gw));
    // Ready while spooling: messages are still taken and kept.
    let ready = http::get(&gw.http_addr(), "/readyz").expect("GET /readyz");
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert!(ready.body.contains(r#""spooling":true"#), "{}", ready.body);
    std::thread::sleep(down.saturating_sub(outage.elapsed()));
    let spooled_bytes = metric(&gw, "mqtt_kafka_gateway_spool_bytes");
    let oldest = metric(&gw, "mqtt_kafka_gateway_spool_oldest_record_age_seconds");
    rig.kafka.restart();
    publisher.join().expect("publisher");
    let t = tally(&rig.kafka, &rig.topic, n, Duration::from_secs(180));
    let written = metric(&gw, "mqtt_kafka_gateway_spool_records_written_total");
    wait_metric(&gw, "mqtt_kafka_gateway_spool_active", WAIT, |v| v == 0.0);
    gw.sigterm();
    assert!(gw.wait_exit(WAIT).is_some(), "{}", tail(&gw));
    eprintln!(
        "SPOOL RESULT kafka_down_{}s_qos0: sent={n} lost={} duplicates={} order_violations={} spooled={written} \
         spool_bytes_at_end_of_outage={spooled_bytes} oldest_age_s={oldest:.1}",
        down.as_secs(),
        t.lost,
        t.duplicates,
        t.order_violations
    );
    assert!(!rig.mosquitto.log().contains("Outgoing messages are being dropped"), "the broker dropped messages");
    assert_eq!(t.lost, 0, "{}", tail(&gw));
    assert_eq!(t.order_violations, 0);
    assert!(written >= 1000.0 * (down.as_secs_f64() - 5.0), "the outage's records went to the spool: {written}");
    assert!(spooled_bytes > 0.0 && oldest > 1.0, "bytes {spooled_bytes}, oldest {oldest}");
    assert!(gw.logs().contains("delivered to its end"), "{}", tail(&gw));
}

/// The gateway SIGKILLed while spooling under a QoS 0 stream, then restarted with Kafka still down, new
/// messages following; then Kafka back. Of the records the spool had taken before the kill (its
/// metric, read a moment before), `fsync: always` loses none; `fsync: interval` at most what the
/// interval allows at this rate. The spool is read back ahead of the new messages: per-device order
/// holds across the restart.
/// `may_lose`: records the spool may lose to a SIGKILL, and the most that may wait for an fsync (what a
/// power cut would lose), both at 1,000 msg/s.
fn killed_while_spooling(fsync: &str, may_lose: usize) {
    let _serial = serial();
    let rig = rig(&format!("spool_kill_{fsync}"), 0, deep_mosquitto(), &format!("  fsync: {fsync}\n"));
    let mut gw = start(&rig);
    rig.kafka.kill();
    // 12 s of stream: the kill lands in the middle of it.
    const FIRST: usize = 12_000;
    let publisher = paced(rig.mosquitto.port(), 0..FIRST);
    assert!(gw.wait_for_log("spooling to disk", WAIT), "{}", tail(&gw));
    // What a power cut would cost, sampled over 2 s of steady spooling: records written, not yet
    // fsynced. (The peak since start also holds the burst of the spill: what was in memory and in the
    // producer's queue when the spool took over, stored at once.)
    std::thread::sleep(Duration::from_secs(1));
    let mut steady_max = 0;
    let sampling = Instant::now();
    while sampling.elapsed() < Duration::from_secs(2) {
        steady_max = steady_max.max(metric(&gw, "mqtt_kafka_gateway_spool_not_durable_records") as usize);
        std::thread::sleep(Duration::from_millis(20));
    }
    let peak = metric(&gw, "mqtt_kafka_gateway_spool_not_durable_records_max") as usize;
    let taken = wait_metric(&gw, "mqtt_kafka_gateway_spool_records_written_total", WAIT, |v| v >= 4000.0) as usize;
    // A moment for the spool's thread to take what was counted; then a crash.
    std::thread::sleep(Duration::from_millis(300));
    gw.kill();
    publisher.join().expect("publisher");

    // Restarted with Kafka still down: it reads the spool back first, and spools the new messages
    // behind it.
    let mut gw = start(&rig);
    assert!(gw.wait_for_log("reading back what it holds", WAIT), "{}", tail(&gw));
    const MORE: usize = 2000;
    publish_all(rig.mosquitto.port(), stream_from(FIRST..FIRST + MORE, DEVICES, FILL));
    rig.kafka.restart();
    // The messages published while no gateway ran are the broker's (QoS 0 is not queued for an
    // absent client); those the spool took, and those after the restart, must all arrive.
    let expected: BTreeSet<i64> = (0..taken as i64).chain(FIRST as i64..(FIRST + MORE) as i64).collect();
    let t = tally_of(&rig.kafka, &rig.topic, expected, Duration::from_secs(180));
    gw.sigterm();
    assert!(gw.wait_exit(WAIT).is_some(), "{}", tail(&gw));
    let lost_spooled = t.missing.iter().filter(|&&s| s < taken as i64).count();
    eprintln!(
        "SPOOL RESULT sigkill_fsync_{fsync}: spooled_before_kill={taken} of them lost={lost_spooled} (allowed {may_lose}) \
         not_fsynced_steady_max={steady_max} not_fsynced_peak_with_the_spill={peak} after_restart={MORE} of them lost={} duplicates={} order_violations={}",
        t.lost - lost_spooled,
        t.duplicates,
        t.order_violations
    );
    assert!(lost_spooled <= may_lose, "{lost_spooled} of the spooled records lost:\n{}", tail(&gw));
    // The power cut's bound: never more than one interval's records waited for their fsync (with
    // `always`, none is counted stored before it). The paced publisher catches up after a stall of the
    // machine, so an interval may see up to half as many again as the nominal rate.
    assert!(steady_max <= may_lose * 3 / 2, "{steady_max} records waited for one fsync");
    if fsync == "interval" {
        assert!(
            steady_max > 0 && peak >= steady_max,
            "records stored between fsyncs are counted: {steady_max}, {peak}"
        );
    }
    assert_eq!(t.lost, lost_spooled, "messages after the restart lost: {:?}", t.missing);
    assert_eq!(t.order_violations, 0);
}

#[test]
fn sigkilled_while_spooling_with_fsync_always_loses_nothing_it_took() {
    killed_while_spooling("always", 0);
}

/// 500 ms at 1,000 msg/s.
#[test]
fn sigkilled_while_spooling_with_fsync_interval_loses_at_most_the_interval() {
    killed_while_spooling("interval", 500);
}

/// SIGTERM while the spool is read back to a Kafka that is up: the records Kafka took before the
/// gateway stopped, those it took during the shutdown included, are forgotten by the spool, so the next
/// start sends none of them again.
#[test]
fn sigterm_while_the_spool_is_read_back_sends_nothing_twice() {
    let _serial = serial();
    // Small messages, many: the read-back lasts seconds, so the SIGTERM lands in the middle of it.
    const N: usize = 150_000;
    let rig = rig("spool_term_replay", 0, deep_mosquitto(), "");
    let mut gw = start(&rig);
    rig.kafka.kill();
    publish_all(rig.mosquitto.port(), stream_from(0..N, DEVICES, 0));
    wait_metric(&gw, "mqtt_kafka_gateway_spool_records_written_total", Duration::from_secs(120), |v| v >= N as f64);
    gw.sigterm();
    assert_eq!(gw.wait_exit(WAIT).and_then(|s| s.code()), Some(0), "{}", tail(&gw));
    assert!(gw.logs().contains("kept in the spool"), "{}", tail(&gw));

    rig.kafka.restart();
    let mut gw = start(&rig);
    let mut replayed = 0.0;
    let mid = wait_until(Duration::from_secs(120), Duration::from_millis(10), || {
        replayed = metric(&gw, "mqtt_kafka_gateway_spool_records_replayed_total");
        replayed >= 5000.0
    });
    assert!(mid, "nothing read back:\n{}", tail(&gw));
    gw.sigterm();
    assert_eq!(gw.wait_exit(WAIT).and_then(|s| s.code()), Some(0), "{}", tail(&gw));
    let first = gw.logs();

    let mut gw = start(&rig);
    // Read back to its end first: a record sent twice would be among what comes after the restart.
    drained(&gw);
    let t = tally(&rig.kafka, &rig.topic, N, Duration::from_secs(180));
    gw.sigterm();
    assert!(gw.wait_exit(WAIT).is_some(), "{}", tail(&gw));
    eprintln!(
        "SPOOL RESULT sigterm_during_read_back: spooled={N} replayed_before_sigterm={replayed} lost={} duplicates={} \
         order_violations={}",
        t.lost, t.duplicates, t.order_violations
    );
    assert!(replayed < N as f64, "the SIGTERM came after the read-back: nothing was tested");
    assert!(first.contains("kept in the spool"), "the first read-back was stopped midway:\n{first}");
    assert_eq!(t.lost, 0, "{}", tail(&gw));
    assert_eq!(t.duplicates, 0, "records Kafka took were read back again");
    assert_eq!(t.order_violations, 0);
}

/// The spool's settings changed by a reload, Kafka down, QoS 1: from 4 MiB and `ack_after: kafka` to
/// 64 MiB and `ack_after: spool`. The messages that come next are acknowledged once spooled, Kafka still
/// down, past the broker's window of unacknowledged messages, and the spool holds more than the old
/// limit. (A message keeps the `ack_after` it was spooled under.) Nothing lost when Kafka is back.
#[test]
fn spool_settings_changed_by_a_reload_apply_from_the_next_message() {
    let _serial = serial();
    const N: usize = 3000;
    let rig = rig("spool_live", 1, deep_mosquitto(), "  max_bytes: 4MiB\n  when_full: block\n");
    let gw = start(&rig);
    rig.kafka.kill();
    let text = std::fs::read_to_string(&rig.cfg).unwrap();
    let edited = text
        .replace("max_bytes: 4MiB\n  when_full: block\n", "max_bytes: 64MiB\n  when_full: block\n  ack_after: spool\n");
    assert_ne!(edited, text);
    common::replace_file(&rig.cfg, &edited);
    assert!(gw.wait_for_log("spool settings applied", WAIT), "{}", tail(&gw));
    assert!(!gw.logs().contains("only apply after a restart"), "{}", tail(&gw));
    assert_eq!(metric(&gw, "mqtt_kafka_gateway_spool_max_bytes"), (64u64 << 20) as f64);

    // 8 KiB messages: 3,000 of them are about 25 MB, far over the old 4 MiB.
    let port = rig.mosquitto.port();
    let publisher = std::thread::spawn(move || publish_all(port, stream_from(0..N, DEVICES, 8 * FILL)));
    // Acknowledged with Kafka down, more than the broker lets the gateway hold unacknowledged (1,000).
    let acked = wait_metric(&gw, "mqtt_kafka_gateway_acks_sent_total", Duration::from_secs(60), |v| v >= 1500.0);
    let bytes = wait_metric(&gw, "mqtt_kafka_gateway_spool_bytes", WAIT, |v| v > (4u64 << 20) as f64);
    assert_eq!(metric(&gw, "mqtt_kafka_gateway_spool_full"), 0.0);

    publisher.join().expect("publisher");
    rig.kafka.restart();
    let t = tally(&rig.kafka, &rig.topic, N, Duration::from_secs(180));
    eprintln!(
        "SPOOL RESULT settings_reloaded: sent={N} acked_while_kafka_down={acked} spool_bytes={bytes} lost={} \
         duplicates={} order_violations={}",
        t.lost, t.duplicates, t.order_violations
    );
    assert_eq!(t.lost, 0, "{}", tail(&gw));
    assert_eq!(t.order_violations, 0);
}

/// QoS 1 with `ack_after: spool`: messages are acknowledged once durably spooled, so the broker's
/// queue for the gateway stays small through a Kafka outage; the gateway SIGKILLed mid-stream and
/// restarted loses nothing (the broker sends again what was not acknowledged).
#[test]
fn qos1_acknowledged_after_the_spool_loses_nothing_through_an_outage_and_a_crash() {
    let _serial = serial();
    const N: usize = 6000;
    let rig = rig("spool_ack", 1, deep_mosquitto(), "  ack_after: spool\n");
    let mut gw = start(&rig);
    rig.kafka.kill();
    let publisher = paced(rig.mosquitto.port(), 0..N);
    assert!(gw.wait_for_log("spooling to disk", WAIT), "{}", tail(&gw));
    let acked = wait_metric(&gw, "mqtt_kafka_gateway_acks_sent_total", WAIT, |v| v >= 2000.0);
    let unacked = metric(&gw, "mqtt_kafka_gateway_unacked_messages");
    gw.kill();
    std::thread::sleep(Duration::from_secs(2));
    let mut gw = start(&rig);
    publisher.join().expect("publisher");
    rig.kafka.restart();
    let t = tally(&rig.kafka, &rig.topic, N, Duration::from_secs(180));
    gw.sigterm();
    assert!(gw.wait_exit(WAIT).is_some(), "{}", tail(&gw));
    eprintln!(
        "SPOOL RESULT qos1_ack_after_spool_outage_and_sigkill: sent={N} acked_while_kafka_down={acked} \
         unacked_then={unacked} lost={} duplicates={} order_violations={}",
        t.lost, t.duplicates, t.order_violations
    );
    assert_eq!(t.lost, 0, "{:?}\n{}", t.missing, tail(&gw));
    assert_eq!(t.order_violations, 0);
}

/// A trickle (20 msg/s, the window far from full) when Kafka goes away: the spool takes over once no
/// report has come for a while, and with `ack_after: spool` the messages are acknowledged meanwhile.
#[test]
fn a_trickle_spools_when_kafka_is_unreachable_and_is_acknowledged_meanwhile() {
    let _serial = serial();
    const N: usize = 300;
    let rig = rig("spool_trickle", 1, deep_mosquitto(), "  ack_after: spool\n");
    let mut gw = start(&rig);
    rig.kafka.kill();
    let messages = stream_from(0..N, DEVICES, 0);
    let port = rig.mosquitto.port();
    let publisher = std::thread::spawn(move || publish_paced(port, messages, 1, Duration::from_millis(50)));
    assert!(gw.wait_for_log("spooling to disk", WAIT), "{}", tail(&gw));
    // Acknowledged while Kafka is still down: the broker keeps nothing for the gateway.
    let acked = wait_metric(&gw, "mqtt_kafka_gateway_acks_sent_total", WAIT, |v| v >= 100.0);
    publisher.join().expect("publisher");
    rig.kafka.restart();
    let t = tally(&rig.kafka, &rig.topic, N, Duration::from_secs(120));
    gw.sigterm();
    assert!(gw.wait_exit(WAIT).is_some(), "{}", tail(&gw));
    eprintln!(
        "SPOOL RESULT trickle_qos1_ack_after_spool: sent={N} acked_while_kafka_down={acked} lost={} duplicates={} \
         order_violations={}",
        t.lost, t.duplicates, t.order_violations
    );
    assert_eq!(t.lost, 0, "{}", tail(&gw));
    assert_eq!(t.order_violations, 0);
}

/// A spool of 4 MiB against 8 MiB of messages while Kafka is down, `when_full: block`: the gateway
/// stops reading (the broker holds the rest), says it is not ready, drops nothing; all arrive later.
#[test]
fn a_full_spool_that_blocks_pushes_back_and_drops_nothing() {
    let _serial = serial();
    const N: usize = 8000;
    let rig = rig("spool_block", 0, deep_mosquitto(), "  max_bytes: 4MiB\n  when_full: block\n");
    let mut gw = start(&rig);
    rig.kafka.kill();
    let port = rig.mosquitto.port();
    let publisher = std::thread::spawn(move || publish_all(port, stream_from(0..N, DEVICES, FILL)));
    wait_metric(&gw, "mqtt_kafka_gateway_spool_full", Duration::from_secs(60), |v| v == 1.0);
    let ready = http::get(&gw.http_addr(), "/readyz").expect("GET /readyz");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("spool: full"), "{}", ready.body);
    let bytes = metric(&gw, "mqtt_kafka_gateway_spool_bytes");
    assert!(bytes <= (4 << 20) as f64, "the spool kept within max_bytes: {bytes}");
    publisher.join().expect("publisher");
    rig.kafka.restart();
    let t = tally(&rig.kafka, &rig.topic, N, Duration::from_secs(180));
    let dropped = metric(&gw, "mqtt_kafka_gateway_spool_records_dropped_total");
    gw.sigterm();
    assert!(gw.wait_exit(WAIT).is_some(), "{}", tail(&gw));
    eprintln!(
        "SPOOL RESULT full_block: sent={N} lost={} duplicates={} order_violations={} dropped={dropped}",
        t.lost, t.duplicates, t.order_violations
    );
    assert_eq!(dropped, 0.0);
    assert_eq!(t.lost, 0, "{}", tail(&gw));
    assert_eq!(t.order_violations, 0);
}

/// The same with `when_full: drop_oldest`: the gateway keeps reading, drops the oldest spooled records
/// to make room and counts them; what is lost is at most what it counted, and the newest survive.
#[test]
fn a_full_spool_that_drops_the_oldest_counts_what_it_dropped() {
    let _serial = serial();
    const N: usize = 8000;
    let rig = rig("spool_drop", 0, deep_mosquitto(), "  max_bytes: 4MiB\n  when_full: drop_oldest\n");
    let mut gw = start(&rig);
    rig.kafka.kill();
    publish_all(rig.mosquitto.port(), stream_from(0..N, DEVICES, FILL));
    let dropped = wait_metric(&gw, "mqtt_kafka_gateway_spool_records_dropped_total", WAIT, |v| v > 0.0);
    // Everything published is taken (nothing waits at the broker), then counted again once settled.
    wait_metric(&gw, "mqtt_kafka_gateway_unacked_messages", WAIT, |v| v == 0.0);
    let dropped = metric(&gw, "mqtt_kafka_gateway_spool_records_dropped_total").max(dropped);
    assert_eq!(metric(&gw, "mqtt_kafka_gateway_spool_full"), 0.0, "drop_oldest never holds the intake");
    rig.kafka.restart();
    // Some are lost: wait for the spool to be delivered to its end rather than for all of them.
    drained(&gw);
    let t = tally(&rig.kafka, &rig.topic, N, Duration::from_secs(5));
    gw.sigterm();
    assert!(gw.wait_exit(WAIT).is_some(), "{}", tail(&gw));
    eprintln!(
        "SPOOL RESULT full_drop_oldest: sent={N} dropped_counted={dropped} lost={} duplicates={} order_violations={}",
        t.lost, t.duplicates, t.order_violations
    );
    assert!(t.lost > 0, "a 4 MiB spool cannot hold 8 MiB:\n{}", tail(&gw));
    assert!(t.lost as f64 <= dropped, "lost {} but counted {dropped} dropped", t.lost);
    // The newest 1,500 all arrived: what was dropped was the oldest. A record of this stream takes about
    // 1.3 KiB in the spool (its envelope; the payload is a slice of it), so 4 MiB holds ~3,000.
    let newest = (N - 1500) as i64;
    assert!(t.missing.iter().all(|&s| s < newest), "newest lost: {:?}", t.missing.range(newest..).collect::<Vec<_>>());
    assert_eq!(t.order_violations, 0);
}

/// Segment files of the spool, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("spool dir")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs
}

/// A spool damaged while the gateway was stopped (garbage after the last record of the last segment, a
/// torn tail; bytes overwritten in the middle of an earlier segment): the gateway starts, counts and
/// logs the damage, and delivers everything else, in order.
#[test]
fn a_torn_tail_and_a_corrupt_segment_are_skipped_counted_and_the_rest_delivered() {
    let _serial = serial();
    const N: usize = 4000;
    let rig = rig("spool_damage", 0, deep_mosquitto(), "  max_bytes: 16MiB\n");
    let mut gw = start(&rig);
    rig.kafka.kill();
    publish_all(rig.mosquitto.port(), stream_from(0..N, DEVICES, FILL));
    wait_metric(&gw, "mqtt_kafka_gateway_spool_records", WAIT, |v| v >= N as f64);
    // Stopped with Kafka still down: what the spool holds is kept, not lost, and the exit says so.
    gw.sigterm();
    let status = gw.wait_exit(WAIT).unwrap_or_else(|| panic!("no exit:\n{}", tail(&gw)));
    assert_eq!(status.code(), Some(0), "{}", tail(&gw));
    assert!(gw.logs().contains("kept in the spool"), "{}", tail(&gw));

    let segs = segments(&rig.spool_dir);
    assert!(segs.len() >= 3, "4 MiB of records in 1 MiB segments: {segs:?}");
    // The second segment: 64 bytes overwritten in its middle.
    let mut second = std::fs::read(&segs[1]).unwrap();
    let middle = second.len() / 2;
    second[middle..middle + 64].fill(0xa5);
    std::fs::write(&segs[1], &second).unwrap();
    // The last: half a frame header and some bytes after its last record.
    let last = segs.last().unwrap();
    let mut tail_bytes = std::fs::read(last).unwrap();
    tail_bytes.extend_from_slice(&[0x40, 0x00, 0x00, 0x00, 0x12, 0x34, 0x56, 0x78, 0x9a]);
    std::fs::write(last, &tail_bytes).unwrap();
    let per_segment = N / segs.len();

    rig.kafka.restart();
    let mut gw = start(&rig);
    assert!(gw.wait_for_log("damage found at start", WAIT), "{}", tail(&gw));
    drained(&gw);
    let t = tally(&rig.kafka, &rig.topic, N, Duration::from_secs(5));
    let damaged = metric(&gw, "mqtt_kafka_gateway_spool_damaged_bytes_total");
    gw.sigterm();
    assert!(gw.wait_exit(WAIT).is_some(), "{}", tail(&gw));
    eprintln!(
        "SPOOL RESULT damaged_spool: records={N} segments={} lost={} damaged_bytes={damaged} duplicates={} \
         order_violations={}",
        segs.len(),
        t.lost,
        t.duplicates,
        t.order_violations
    );
    assert!(damaged >= 9.0, "the torn tail and the skipped region are counted: {damaged}");
    // What is lost is the rest of the damaged segment from the bad frame: at most a segment's records.
    assert!(t.lost > 0 && t.lost <= per_segment + per_segment / 2, "lost {}:\n{}", t.lost, tail(&gw));
    let first_lost = *t.missing.first().unwrap();
    let last_lost = *t.missing.last().unwrap();
    assert_eq!((last_lost - first_lost + 1) as usize, t.lost, "one run of records is lost: {:?}", t.missing);
    assert_eq!(t.order_violations, 0);
}
