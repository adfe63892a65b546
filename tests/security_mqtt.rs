//! The gateway over secured MQTT, against a real Mosquitto with TLS, mutual-TLS and WebSocket listeners
//! (certificates made by the test's own CA): records flow over each transport, and each failure class
//! (untrusted, expired or misnamed server certificate, missing client certificate, wrong password) gives
//! one ERROR line that names the broker, what failed and a hint, and a `/readyz` that says why, while
//! the gateway keeps retrying. A CA file fixed in place is picked up by the next attempt, without a
//! restart.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    http, kafka, mosquitto_pub, new_topic, wait_until, Config, Gateway, Mosquitto, MosquittoTls, Pki, Route,
    ServerCert, TlsOptions, WAIT,
};

/// A config with one route `sec/#` → `topic`, `mqtt_extra` under `mqtt:` (indented two spaces), and
/// quick reconnects.
fn config(dir: &Path, broker: &str, mqtt_extra: &str, topic: &str) -> PathBuf {
    Config::new()
        .broker(broker)
        .reconnect_delays_ms(200, 1000)
        .mqtt(mqtt_extra)
        .bootstrap_servers(kafka().bootstrap())
        .route(Route::new("secured", "sec/#", topic))
        .write(dir)
}

fn tls_block(ca: &Path, client: Option<(PathBuf, PathBuf)>, min_version: Option<&str>) -> String {
    let mut s = format!("  tls:\n    ca_file: {}\n", ca.display());
    if let Some((cert, key)) = client {
        s.push_str(&format!("    cert_file: {}\n    key_file: {}\n", cert.display(), key.display()));
    }
    if let Some(v) = min_version {
        s.push_str(&format!("    min_version: \"{v}\"\n"));
    }
    s
}

/// Starts the gateway, waits for its subscription, publishes one message on the broker's plain
/// listener and expects exactly that record in Kafka.
fn assert_delivers(what: &str, mosquitto: &Mosquitto, config: &Path, topic: &str) {
    let gw = Gateway::start(config, &[]);
    assert!(gw.wait_for_log("subscribed", WAIT), "{what}: the gateway never subscribed:\n{}", gw.logs());
    let payload = format!(r#"{{"case":"{what}"}}"#);
    mosquitto_pub(mosquitto.port(), "sec/device-1/state", payload.as_bytes(), 1);
    let records = kafka().consume(topic, 1, WAIT);
    assert_eq!(records.len(), 1, "{what}: no record in Kafka; gateway log:\n{}", gw.logs());
    assert!(records[0].value_str().contains(&payload), "{what}: {}", records[0].value_str());
}

#[test]
fn records_flow_over_tls_mutual_tls_and_websockets() {
    let pki = Pki::generate();
    let m = MosquittoTls::start(&pki);
    let dir = tempfile::tempdir().unwrap();
    let ca = pki.ca_pem();
    let cases: Vec<(&str, String, String)> = vec![
        ("mqtts with a custom CA", format!("mqtts://127.0.0.1:{}", m.tls_port()), tls_block(&ca, None, None)),
        ("mqtts with TLS 1.3 only", format!("mqtts://127.0.0.1:{}", m.tls_port()), tls_block(&ca, None, Some("1.3"))),
        (
            "mutual TLS, RSA key in PKCS#1",
            format!("mqtts://127.0.0.1:{}", m.mtls_port()),
            tls_block(&ca, Some((pki.client_rsa_cert(), pki.client_rsa_key_pkcs1())), None),
        ),
        (
            "mutual TLS, RSA key in PKCS#8",
            format!("ssl://127.0.0.1:{}", m.mtls_port()),
            tls_block(&ca, Some((pki.client_rsa_cert(), pki.client_rsa_key_pkcs8())), None),
        ),
        (
            "mutual TLS, EC key in SEC1",
            format!("mqtts://127.0.0.1:{}", m.mtls_port()),
            tls_block(&ca, Some((pki.client_ec_cert(), pki.client_ec_key_sec1())), None),
        ),
        ("ws://", format!("ws://127.0.0.1:{}/mqtt", m.ws_port()), String::new()),
        ("wss:// with a custom CA", format!("wss://127.0.0.1:{}", m.wss_port()), tls_block(&ca, None, None)),
    ];
    for (what, broker, tls) in cases {
        let topic = new_topic("sec-mqtt", 1);
        let path = config(dir.path(), &broker, &tls, &topic);
        assert_delivers(what, &m, &path, &topic);
    }
}

/// Starts the gateway on `config`, which cannot connect, and checks the one ERROR line per attempt
/// (broker, what, hint), `/readyz` naming it, and that the gateway is still running a while later.
fn assert_fails_with(config: &Path, broker: &str, what: &str, hint_part: &str) -> Gateway {
    let mut gw = Gateway::start(config, &[]);
    assert!(gw.wait_for_log(what, WAIT), "expected `{what}` in the log:\n{}", gw.logs());
    let logs = gw.logs();
    let line = logs.lines().find(|l| l.contains(what)).unwrap_or_default().to_string();
    assert!(
        line.contains("ERROR") && line.contains(broker) && line.contains(hint_part),
        "one line with the broker, what and the hint: {line}"
    );
    let addr = gw.http_addr();
    let ready = http::get(&addr, "/readyz").expect("/readyz answers");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains(what), "/readyz names the cause: {}", ready.body);
    // It keeps retrying (with backoff), it does not exit.
    assert!(wait_until(WAIT, Duration::from_millis(100), || gw.count_in_log(what) >= 3), "retries:\n{}", gw.logs());
    assert!(gw.is_running(), "the gateway must keep running:\n{}", gw.logs());
    gw
}

#[test]
fn an_untrusted_certificate_is_named_and_fixing_the_ca_file_recovers_without_a_restart() {
    let pki = Pki::generate();
    let m = MosquittoTls::start(&pki);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::copy(pki.wrong_ca_pem(), &ca).unwrap();
    let topic = new_topic("sec-fix", 1);
    let broker = format!("127.0.0.1:{}", m.tls_port());
    let path = config(dir.path(), &format!("mqtts://{broker}"), &tls_block(&ca, None, None), &topic);
    let gw = assert_fails_with(&path, &broker, "tls: the broker's certificate is not trusted", "mqtt.tls.ca_file");

    // The operator fixes the mounted file: the next attempt reads it.
    std::fs::copy(pki.ca_pem(), &ca).unwrap();
    assert!(gw.wait_for_log("subscribed", WAIT), "no recovery after the CA file was fixed:\n{}", gw.logs());
    mosquitto_pub(m.port(), "sec/device-1/state", br#"{"fixed":true}"#, 1);
    assert_eq!(kafka().consume(&topic, 1, WAIT).len(), 1, "{}", gw.logs());
    let ready = wait_until(WAIT, Duration::from_millis(200), || {
        http::get(&gw.http_addr(), "/readyz").is_some_and(|a| a.status == 200)
    });
    assert!(ready, "/readyz back to 200 once connected");
}

#[test]
fn expired_and_misnamed_server_certificates_are_named() {
    let pki = Pki::generate();
    let dir = tempfile::tempdir().unwrap();
    let topic = new_topic("sec-bad-cert", 1);
    for (cert, what, hint) in [
        (ServerCert::Expired, "tls: the broker's certificate has expired", "renew"),
        (ServerCert::WrongHost, "tls: the broker's certificate does not name this host", "subjectAltName"),
    ] {
        let m = MosquittoTls::start_with(&pki, TlsOptions { server_cert: cert, ..TlsOptions::default() });
        let broker = format!("127.0.0.1:{}", m.tls_port());
        let path = config(dir.path(), &format!("mqtts://{broker}"), &tls_block(&pki.ca_pem(), None, None), &topic);
        let mut gw = assert_fails_with(&path, &broker, what, hint);
        gw.kill();
    }
}

#[test]
fn a_missing_client_certificate_and_a_wrong_password_are_named() {
    let pki = Pki::generate();
    let m = MosquittoTls::start(&pki);
    let dir = tempfile::tempdir().unwrap();
    let topic = new_topic("sec-auth", 1);
    let broker = format!("127.0.0.1:{}", m.mtls_port());
    let path = config(dir.path(), &format!("mqtts://{broker}"), &tls_block(&pki.ca_pem(), None, None), &topic);
    let mut gw =
        assert_fails_with(&path, &broker, "tls: the broker requires a client certificate", "mqtt.tls.cert_file");
    gw.kill();

    // A password from a file, and a wrong one: Mosquitto answers "not authorised" (CONNACK 5).
    let plain = Mosquitto::start_with_password("gateway", "right-password");
    let password = dir.path().join("mqtt-password");
    std::fs::write(&password, "wrong-password\n").unwrap();
    let extra = format!("  username: gateway\n  password_file: {}\n", password.display());
    let path = config(dir.path(), &format!("mqtt://{}", plain.addr()), &extra, &topic);
    let mut gw = assert_fails_with(&path, &plain.addr(), "connect: not authorised", "credentials");
    assert!(!gw.logs().contains("wrong-password"), "the password must never be logged:\n{}", gw.logs());
    gw.kill();
}

#[test]
fn validate_finds_a_client_key_that_is_not_the_certificates() {
    let pki = Pki::generate();
    let dir = tempfile::tempdir().unwrap();
    let with_key = |key: PathBuf| {
        let tls = tls_block(&pki.ca_pem(), Some((pki.client_rsa_cert(), key)), None);
        Config::new().broker("mqtts://127.0.0.1:8883").mqtt(&tls).write(dir.path())
    };
    let path = with_key(pki.client_ec_key_pkcs8());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-kafka-gateway"))
        .args(["validate", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("mqtt.tls.key_file") && text.contains("is not the key of"), "{text}");
    // The right pair passes.
    let path = with_key(pki.client_rsa_key_pkcs8());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-kafka-gateway"))
        .args(["validate", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
