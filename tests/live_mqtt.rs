//! MQTT settings changed while the gateway runs, under a 1,000 msg/s QoS 1 stream with a persistent
//! session: the MQTT password rotated (Mosquitto's password file), after a wrong new one was refused and
//! the old settings came back; the broker moved from its plain listener to its TLS one. Each change: 0
//! lost, 0 reordered; the switch time printed (`LIVE RESULT`, recorded in docs/RELIABILITY.md). Runs over
//! both MQTT protocols (scripts/test.sh).

mod common;

use std::time::{Duration, Instant};

use common::prom::value;
use common::stream::{stream_from, tail, tally, Tally};
use common::{
    kafka, publish_paced, replace_file, secret_file, unique_topic, wait_until, Config, Gateway, Mosquitto,
    MosquittoTls, Pki, Route, TlsOptions, WAIT,
};

const DEVICES: usize = 50;
/// Holds what the gateway does not read while it switches (and while its producer starts).
const DEEP_QUEUE: &str = "max_queued_messages 1000000\n";

fn config(broker: &str, mqtt: &str, topic: &str, client_id: &str) -> Config {
    Config::new()
        .broker(broker)
        .client_id(client_id)
        .clean_session(false)
        .reconnect_delays_ms(100, 1000)
        .stats_interval_secs(5)
        .bootstrap_servers(kafka().bootstrap())
        .mqtt(mqtt)
        .route(Route::new("stream", "fault/#", topic).qos(1))
}

fn paced(port: u16, n: usize) -> std::thread::JoinHandle<()> {
    let messages = stream_from(0..n, DEVICES, 0);
    std::thread::spawn(move || publish_paced(port, messages, 10, Duration::from_millis(10)))
}

fn switches(gw: &Gateway, result: &str) -> f64 {
    value(&gw.metrics(), "mqtt_kafka_gateway_mqtt_settings_switches_total", &[("result", result)])
}

/// Waits until the gateway logged `needle` `n` times; the time from `since`.
fn logged(gw: &Gateway, needle: &str, n: usize, since: Instant) -> Duration {
    let ok = wait_until(Duration::from_secs(30), Duration::from_millis(10), || gw.count_in_log(needle) >= n);
    assert!(ok, "never logged {needle:?}:\n{}", tail(gw));
    since.elapsed()
}

fn check(what: &str, n: usize, t: &Tally, switch: Duration, gw: &Gateway) {
    eprintln!(
        "LIVE RESULT {what} (MQTT {}): sent={n} lost={} duplicates={} order_violations={} switch_s={:.2}",
        std::env::var("TEST_MQTT_PROTOCOL").unwrap_or_else(|_| "3.1.1".into()),
        t.lost,
        t.duplicates,
        t.order_violations,
        switch.as_secs_f64()
    );
    assert_eq!(t.lost, 0, "{:?}\n{}", t.missing, tail(gw));
    assert_eq!(t.order_violations, 0, "{}", tail(gw));
}

#[test]
fn the_mqtt_password_rotated_after_a_wrong_one_was_refused_loses_nothing() {
    const N: usize = 14_000;
    let (user, old, new) = ("gateway", "old-mqtt-secret", "new-mqtt-secret");
    // Anonymous clients (the test's publisher) allowed; the gateway's user must give its password.
    let m = Mosquitto::start_with_password_and(user, old, &format!("allow_anonymous true\n{DEEP_QUEUE}"));
    let topic = unique_topic("live_mqtt_pw");
    kafka().create_topic(&topic, 3);
    let dir = tempfile::tempdir().unwrap();
    let password = secret_file(dir.path(), "mqtt-password", old);
    let creds = format!("  username: {user}\n  password_file: {}\n", password.display());
    let path = config(&format!("mqtt://{}", m.addr()), &creds, &topic, &unique_topic("gw")).write(dir.path());
    let gw = Gateway::start(&path, &[]);
    assert!(gw.wait_for_log("subscribed", WAIT), "{}", tail(&gw));
    let publisher = paced(m.port(), N);
    std::thread::sleep(Duration::from_secs(2));

    // A wrong new password: refused with the broker's answer; the old settings come back.
    replace_file(&password, "not-the-password\n");
    logged(&gw, "new MQTT settings refused", 1, Instant::now());
    let line = gw.logs().lines().find(|l| l.contains("new MQTT settings refused")).unwrap_or_default().to_string();
    assert!(line.contains("connect: "), "the cause is named: {line}");
    assert!(!line.contains("not-the-password"), "a secret in the log: {line}");
    assert_eq!(switches(&gw, "refused"), 1.0);
    let reconnected = wait_until(WAIT, Duration::from_millis(20), || {
        value(&gw.metrics(), "mqtt_kafka_gateway_mqtt_connected", &[]) == 1.0
    });
    assert!(reconnected, "not back on the old settings:\n{}", tail(&gw));

    // Rotated: in the broker first (the connection in use stays), then in the watched file.
    m.set_password(user, new);
    let since = Instant::now();
    replace_file(&password, &format!("{new}\n"));
    let switch = logged(&gw, "MQTT settings applied", 1, since);
    publisher.join().expect("publisher");
    let t = tally(kafka(), &topic, N, Duration::from_secs(60));
    check("mqtt_password_rotated_after_a_wrong_one", N, &t, switch, &gw);
    assert_eq!(switches(&gw, "switched"), 1.0);
    assert!(!gw.logs().contains(new), "the new password in the log");
}

#[test]
fn the_broker_moved_from_its_plain_to_its_tls_listener_loses_nothing() {
    const N: usize = 8000;
    let pki = Pki::generate();
    let mt = MosquittoTls::start_with(&pki, TlsOptions { extra_conf: DEEP_QUEUE, ..TlsOptions::default() });
    let topic = unique_topic("live_mqtt_tls");
    kafka().create_topic(&topic, 3);
    let dir = tempfile::tempdir().unwrap();
    let id = unique_topic("gw");
    let plain = format!("mqtt://127.0.0.1:{}", mt.broker().port());
    let path = config(&plain, "", &topic, &id).write(dir.path());
    let gw = Gateway::start(&path, &[]);
    assert!(gw.wait_for_log("subscribed", WAIT), "{}", tail(&gw));
    let publisher = paced(mt.broker().port(), N);
    std::thread::sleep(Duration::from_secs(3));

    let since = Instant::now();
    let tls = format!("mqtts://127.0.0.1:{}", mt.tls_port());
    let ca = format!("  tls:\n    ca_file: {}\n", mt.ca_pem().display());
    replace_file(&path, &config(&tls, &ca, &topic, &id).yaml());
    let switch = logged(&gw, "MQTT settings applied", 1, since);
    publisher.join().expect("publisher");
    let t = tally(kafka(), &topic, N, Duration::from_secs(60));
    check("broker_moved_to_the_tls_listener", N, &t, switch, &gw);
    let logs = gw.logs();
    let applied = logs.lines().find(|l| l.contains("MQTT settings applied")).unwrap_or_default();
    assert!(applied.contains(&format!("127.0.0.1:{}", mt.tls_port())), "{applied}");
    assert!(!logs.contains("only apply after a restart"), "{}", tail(&gw));
}

/// With the watch and the periodic re-read off, an edit waits for SIGHUP, which applies everything the
/// file changed: here the MQTT listener (plain to TLS) and a Kafka property.
#[test]
fn sighup_applies_mqtt_and_kafka_changes_when_watching_is_off() {
    let pki = Pki::generate();
    let mt = MosquittoTls::start(&pki);
    let topic = unique_topic("live_hup");
    kafka().create_topic(&topic, 1);
    let dir = tempfile::tempdir().unwrap();
    let id = unique_topic("gw");
    let off = "reload:\n  watch: false\n  poll_interval_secs: 0\n";
    let plain = config(&format!("mqtt://127.0.0.1:{}", mt.broker().port()), "", &topic, &id).extra(off);
    let path = plain.write(dir.path());
    let gw = Gateway::start(&path, &[]);
    assert!(gw.wait_for_log("subscribed", WAIT), "{}", tail(&gw));

    let ca = format!("  tls:\n    ca_file: {}\n", mt.ca_pem().display());
    let tls =
        config(&format!("mqtts://127.0.0.1:{}", mt.tls_port()), &ca, &topic, &id).kafka("  linger_ms: 20\n").extra(off);
    replace_file(&path, &tls.yaml());
    let quiet = common::holds_for(Duration::from_secs(1), Duration::from_millis(20), || {
        gw.count_in_log("MQTT settings changed") == 0 && gw.count_in_log("Kafka settings changed") == 0
    });
    assert!(quiet, "applied without the signal:\n{}", tail(&gw));
    assert!(common::send_signal(gw.pid(), "HUP"));
    logged(&gw, "MQTT settings applied", 1, Instant::now());
    logged(&gw, "Kafka producer switched", 1, Instant::now());
    common::mosquitto_pub(mt.broker().port(), "fault/dev-1/seq", br#"{"seq":0}"#, 1);
    assert_eq!(kafka().consume(&topic, 1, WAIT).len(), 1, "nothing flows after the switch:\n{}", tail(&gw));
}

/// The client certificate and key files renewed in place (mutual TLS): the connection is switched to
/// them, losing nothing of a QoS 1 stream.
#[test]
fn a_client_certificate_renewed_in_place_switches_the_connection() {
    const N: usize = 6000;
    let pki = Pki::generate();
    let mt = MosquittoTls::start_with(&pki, TlsOptions { extra_conf: DEEP_QUEUE, ..TlsOptions::default() });
    let topic = unique_topic("live_mqtt_cert");
    kafka().create_topic(&topic, 3);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("client.crt"), dir.path().join("client.key"));
    std::fs::copy(pki.client_rsa_cert(), &cert).unwrap();
    std::fs::copy(pki.client_rsa_key_pkcs8(), &key).unwrap();
    let tls = format!(
        "  tls:\n    ca_file: {}\n    cert_file: {}\n    key_file: {}\n",
        mt.ca_pem().display(),
        cert.display(),
        key.display()
    );
    let broker = format!("mqtts://127.0.0.1:{}", mt.mtls_port());
    let path = config(&broker, &tls, &topic, &unique_topic("gw")).write(dir.path());
    let gw = Gateway::start(&path, &[]);
    assert!(gw.wait_for_log("subscribed", WAIT), "{}", tail(&gw));
    let publisher = paced(mt.broker().port(), N);
    // Records in Kafka first: a producer still waiting for its idempotence id holds the stream, and a
    // gateway holding it takes the new settings only once it moves again.
    let flowing = wait_until(WAIT, Duration::from_millis(50), || {
        value(&gw.metrics(), "mqtt_kafka_gateway_records_delivered_total", &[]) >= 500.0
    });
    assert!(flowing, "{}", tail(&gw));

    // Renewed: another certificate of the same CA, with its key (the key first, as a Secret swaps both).
    let since = Instant::now();
    replace_file(&key, &std::fs::read_to_string(pki.client_ec_key_pkcs8()).unwrap());
    replace_file(&cert, &std::fs::read_to_string(pki.client_ec_cert()).unwrap());
    let switch = logged(&gw, "MQTT settings applied", 1, since);
    publisher.join().expect("publisher");
    let t = tally(kafka(), &topic, N, Duration::from_secs(60));
    check("client_certificate_renewed", N, &t, switch, &gw);
}
