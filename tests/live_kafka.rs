//! Kafka settings changed while the gateway runs, under a 1,000 msg/s QoS 1 stream with a persistent
//! session, against one real Kafka with PLAINTEXT, SASL_SSL and SSL listeners: the bootstrap moved to
//! another listener (and security protocol) of the same cluster; the SCRAM password rotated in Kafka,
//! then in the watched `password_file`; a wrong new password refused while the producer in use goes on;
//! the client certificate renewed in place. Each change: 0 lost, 0 reordered; the switch time printed
//! (`LIVE RESULT`, recorded in docs/RELIABILITY.md), not asserted.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::prom::value;
use common::stream::{stream_from, tail, tally, Tally};
use common::{
    publish_paced, replace_file, script, secret_file, unique_topic, wait_until, Config, Gateway, Mosquitto, Route,
    SecureKafka, WAIT,
};

/// Devices the stream comes from (one key each).
const DEVICES: usize = 50;

/// A config with the `kafka` block given whole (lines indented two spaces) and one QoS 1 route.
fn config(kafka: &str, topic: &str, client_id: &str) -> Config {
    Config::new()
        .client_id(client_id)
        .clean_session(false)
        .reconnect_delays_ms(100, 1000)
        .stats_interval_secs(5)
        .kafka(kafka)
        .route(Route::new("stream", "fault/#", topic).qos(1))
}

fn sasl_block(k: &SecureKafka, password_file: &Path) -> String {
    format!(
        "  bootstrap_servers: {}\n  sasl:\n    mechanism: SCRAM-SHA-512\n    username: {}\n    password_file: {}\n  tls:\n    ca_file: {}\n",
        k.sasl_ssl_bootstrap(),
        k.scram_user().0,
        password_file.display(),
        k.ca_pem().display()
    )
}

/// Mosquitto with a queue deep enough for what the gateway has not read yet (the default 1,000 queued
/// messages drop QoS 1 messages too, the moment the producer first waits for its idempotence id).
fn deep_mosquitto() -> Mosquitto {
    Mosquitto::start_with("max_queued_messages 1000000\n")
}

/// `n` QoS 1 messages at 1,000 msg/s on a thread of its own.
fn paced(port: u16, n: usize) -> std::thread::JoinHandle<()> {
    let messages = stream_from(0..n, DEVICES, 0);
    std::thread::spawn(move || publish_paced(port, messages, 10, Duration::from_millis(10)))
}

fn swaps(gw: &Gateway, result: &str) -> f64 {
    value(&gw.metrics(), "mqtt_kafka_gateway_kafka_producer_swaps_total", &[("result", result)])
}

/// Waits until the gateway logged the switch; the time from `since`.
fn switched(gw: &Gateway, n: usize, since: Instant) -> Duration {
    let ok = wait_until(Duration::from_secs(30), Duration::from_millis(10), || {
        gw.count_in_log("Kafka producer switched") >= n
    });
    assert!(ok, "no switch:\n{}", tail(gw));
    since.elapsed()
}

fn report(what: &str, n: usize, t: &Tally, switch: Option<Duration>) {
    let switch = switch.map_or("-".to_string(), |d| format!("{:.2}", d.as_secs_f64()));
    eprintln!(
        "LIVE RESULT {what}: sent={n} lost={} duplicates={} order_violations={} switch_s={switch}",
        t.lost, t.duplicates, t.order_violations
    );
}

fn assert_whole(t: &Tally, gw: &Gateway) {
    assert_eq!(t.lost, 0, "{:?}\n{}", t.missing, tail(gw));
    assert_eq!(t.order_violations, 0, "{}", tail(gw));
}

/// The cluster's SCRAM-SHA-512 password of `user`, changed with Kafka's own tool.
fn set_scram_password(k: &SecureKafka, user: &str, password: &str) {
    let out = Command::new(script("kafka-tool.sh"))
        .args(["kafka.admin.ConfigCommand", "--bootstrap-server", &k.bootstrap(), "--alter", "--add-config"])
        .arg(format!("SCRAM-SHA-512=[iterations=4096,password={password}]"))
        .args(["--entity-type", "users", "--entity-name", user])
        .output()
        .expect("run kafka-tool.sh");
    assert!(out.status.success(), "kafka-configs failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn kafka_moved_to_its_sasl_ssl_listener_under_a_qos1_stream_loses_nothing() {
    const N: usize = 8000;
    let k = SecureKafka::start();
    let m = deep_mosquitto();
    let topic = unique_topic("live_move");
    k.create_topic(&topic, 3);
    let dir = tempfile::tempdir().unwrap();
    let password = secret_file(dir.path(), "scram-password", k.scram_user().1);
    let plain = format!("  bootstrap_servers: {}\n", k.bootstrap());
    let id = unique_topic("gw");
    let path = config(&plain, &topic, &id).write(dir.path());
    let gw = Gateway::start(&path, &[("MQTT_BROKER", &m.addr())]);
    assert!(gw.wait_for_log("subscribed", WAIT), "{}", tail(&gw));
    let publisher = paced(m.port(), N);
    std::thread::sleep(Duration::from_secs(3));

    let since = Instant::now();
    replace_file(&path, &config(&sasl_block(&k, &password), &topic, &id).yaml());
    let switch = switched(&gw, 1, since);
    publisher.join().expect("publisher");
    let t = tally(&k, &topic, N, Duration::from_secs(60));
    report("bootstrap_to_sasl_ssl_listener", N, &t, Some(switch));
    assert_whole(&t, &gw);
    assert_eq!(swaps(&gw, "swapped"), 1.0);
    let logs = gw.logs();
    assert!(logs.contains(&format!("bootstrap_servers={}", k.sasl_ssl_bootstrap())), "{}", tail(&gw));
    assert!(!logs.contains("only apply after a restart"), "{}", tail(&gw));
}

#[test]
fn the_scram_password_rotated_and_a_wrong_one_refused_under_a_qos1_stream_lose_nothing() {
    const N: usize = 14_000;
    let k = SecureKafka::start();
    let m = deep_mosquitto();
    let topic = unique_topic("live_scram");
    k.create_topic(&topic, 3);
    let dir = tempfile::tempdir().unwrap();
    let (user, old) = k.scram_user();
    let password = secret_file(dir.path(), "scram-password", old);
    let path = config(&sasl_block(&k, &password), &topic, &unique_topic("gw")).write(dir.path());
    let gw = Gateway::start(&path, &[("MQTT_BROKER", &m.addr())]);
    assert!(gw.wait_for_log("subscribed", WAIT), "{}", tail(&gw));
    let publisher = paced(m.port(), N);
    std::thread::sleep(Duration::from_secs(2));

    // A wrong password in the watched file: refused, with the cause; the producer in use goes on.
    replace_file(&password, "not-the-password\n");
    let refused = wait_until(Duration::from_secs(30), Duration::from_millis(20), || {
        gw.logs().contains("new Kafka settings refused")
    });
    assert!(refused, "not refused:\n{}", tail(&gw));
    let line = gw.logs().lines().find(|l| l.contains("new Kafka settings refused")).unwrap_or_default().to_string();
    assert!(line.contains("sasl: authentication failed"), "{line}");
    assert!(!line.contains("not-the-password"), "a secret in the log: {line}");
    assert_eq!(swaps(&gw, "refused"), 1.0);
    assert_eq!(swaps(&gw, "swapped"), 0.0);

    // Rotated: first in Kafka (the connections in use stay authenticated), then in the file.
    let new = "alice-rotated-secret";
    set_scram_password(&k, user, new);
    let since = Instant::now();
    replace_file(&password, &format!("{new}\n"));
    let switch = switched(&gw, 1, since);
    publisher.join().expect("publisher");
    let t = tally(&k, &topic, N, Duration::from_secs(60));
    report("scram_password_rotated_after_a_wrong_one", N, &t, Some(switch));
    assert_whole(&t, &gw);
    assert_eq!(swaps(&gw, "swapped"), 1.0);
    assert!(!gw.logs().contains(new), "the new password in the log");
}

#[test]
fn the_client_certificate_renewed_in_place_switches_producers_and_loses_nothing() {
    const N: usize = 8000;
    let k = SecureKafka::start();
    let m = deep_mosquitto();
    let topic = unique_topic("live_cert");
    k.create_topic(&topic, 3);
    let dir = tempfile::tempdir().unwrap();
    let pki = k.pki();
    // The files the configuration names, whose contents are renewed in place.
    let (cert, key) = (dir.path().join("client.crt"), dir.path().join("client.key"));
    std::fs::copy(pki.client_ec_cert(), &cert).unwrap();
    std::fs::copy(pki.client_ec_key_pkcs8(), &key).unwrap();
    let block = format!(
        "  bootstrap_servers: {}\n  tls:\n    ca_file: {}\n    cert_file: {}\n    key_file: {}\n",
        k.ssl_bootstrap(),
        k.ca_pem().display(),
        cert.display(),
        key.display()
    );
    let path = config(&block, &topic, &unique_topic("gw")).write(dir.path());
    let gw = Gateway::start(&path, &[("MQTT_BROKER", &m.addr())]);
    assert!(gw.wait_for_log("subscribed", WAIT), "{}", tail(&gw));
    let publisher = paced(m.port(), N);
    std::thread::sleep(Duration::from_secs(3));

    // Renewed: another certificate of the same CA, with its key (the key first, as a Secret swaps both).
    let since = Instant::now();
    replace_file(&key, &std::fs::read_to_string(pki.client_rsa_key_pkcs1()).unwrap());
    replace_file(&cert, &std::fs::read_to_string(pki.client_rsa_cert()).unwrap());
    let switch = switched(&gw, 1, since);
    publisher.join().expect("publisher");
    let t = tally(&k, &topic, N, Duration::from_secs(60));
    report("client_certificate_renewed", N, &t, Some(switch));
    assert_whole(&t, &gw);
}
