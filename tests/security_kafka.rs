//! The gateway producing to a real Kafka broker over SASL_SSL (SCRAM-SHA-512, SCRAM-SHA-256, PLAIN) and
//! SSL with client certificates, all configured through the first-class `kafka.sasl`/`kafka.tls` keys,
//! secrets from files and the environment; TLS MQTT and SASL_SSL Kafka together; a trace-level run with
//! every secret set that logs none of them; and the Kafka failure classes (wrong password, untrusted
//! broker certificate, missing client certificate) named while the gateway keeps running, with a
//! restart on the fixed file delivering what was held meanwhile.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{
    http, mosquitto_pub, prom, publish_all, unique_topic, wait_until, write_config, Config, Gateway, Mosquitto,
    MosquittoTls, Route, SecureKafka, TokenEndpoint, WAIT,
};

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-kafka-gateway");

/// A config from `broker` with one route `sec/#` → `topic` at `qos`, the `kafka` block given whole (each
/// line indented two spaces).
fn config(broker: &str, kafka: &str, topic: &str, qos: u8) -> Config {
    Config::new()
        .broker(broker)
        .reconnect_delays_ms(200, 1000)
        .kafka(kafka)
        .extra("shutdown:\n  grace_period_secs: 2\n")
        .route(Route::new("secured", "sec/#", topic).qos(qos))
}

fn secret_file(dir: &Path, name: &str, value: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    path
}

#[test]
fn records_flow_over_sasl_ssl_and_ssl_with_client_certificates() {
    let k = SecureKafka::start();
    let m = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let pki = k.pki();
    let (scram_user, scram_password) = k.scram_user();
    let (plain_user, plain_password) = k.plain_user();
    let ca = k.ca_pem();
    let scram_file = secret_file(dir.path(), "scram-password", scram_password);
    let key_password_file = secret_file(dir.path(), "key-password", pki.client_key_passphrase());
    let sasl = |mechanism: &str, user: &str, password_line: String| {
        format!(
            "  bootstrap_servers: {}\n  sasl:\n    mechanism: {mechanism}\n    username: {user}\n{password_line}  tls:\n    ca_file: {}\n",
            k.sasl_ssl_bootstrap(),
            ca.display()
        )
    };
    let ssl = |cert: PathBuf, key: PathBuf, key_password: &str| {
        format!(
            "  bootstrap_servers: {}\n  tls:\n    ca_file: {}\n    cert_file: {}\n    key_file: {}\n{key_password}",
            k.ssl_bootstrap(),
            ca.display(),
            cert.display(),
            key.display()
        )
    };
    // What is tried, its `kafka` block and its environment.
    type Case<'a> = (&'a str, String, Vec<(&'a str, String)>);
    let cases: Vec<Case> = vec![
        (
            "SASL_SSL SCRAM-SHA-512, password_file",
            sasl("SCRAM-SHA-512", scram_user, format!("    password_file: {}\n", scram_file.display())),
            vec![],
        ),
        (
            "SASL_SSL SCRAM-SHA-256, KAFKA_SASL_PASSWORD",
            sasl("SCRAM-SHA-256", scram_user, String::new()),
            vec![("KAFKA_SASL_PASSWORD", scram_password.to_string())],
        ),
        (
            "SASL_SSL PLAIN, password inline",
            sasl("PLAIN", plain_user, format!("    password: {plain_password}\n")),
            vec![],
        ),
        ("SSL, EC client certificate", ssl(pki.client_ec_cert(), pki.client_ec_key_pkcs8(), ""), vec![]),
        (
            "SSL, encrypted RSA key and key_password_file",
            ssl(
                pki.client_rsa_cert(),
                pki.client_key_encrypted(),
                &format!("    key_password_file: {}\n", key_password_file.display()),
            ),
            vec![],
        ),
    ];
    for (what, kafka_block, env) in cases {
        let topic = unique_topic("sec-kafka");
        k.create_topic(&topic, 1);
        let path = config(&format!("mqtt://{}", m.addr()), &kafka_block, &topic, 1).write(dir.path());
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let gw = Gateway::start(&path, &env);
        assert!(gw.wait_for_log("subscribed", WAIT), "{what}: never subscribed:\n{}", gw.logs());
        let payload = format!(r#"{{"case":"{what}"}}"#);
        mosquitto_pub(m.port(), "sec/device-1/state", payload.as_bytes(), 1);
        let records = k.consume(&topic, 1, WAIT);
        assert_eq!(records.len(), 1, "{what}: no record; gateway log:\n{}", gw.logs());
        assert!(records[0].value_str().contains(&payload), "{what}");
    }
}

/// Runs the gateway binary with `args` and `env` to the end; its stdout and stderr.
fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(BIN).args(args).envs(env.iter().copied()).output().expect("run the gateway binary");
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn tls_mqtt_with_sasl_ssl_kafka_and_no_secret_in_a_trace_log() {
    let k = SecureKafka::start();
    let pki = k.pki();
    let m = MosquittoTls::start(pki);
    let dir = tempfile::tempdir().unwrap();
    let (scram_user, scram_password) = k.scram_user();
    let mqtt_password = format!("mqtt-secret-{:08x}", rand::random::<u32>());
    let mqtt_password_file = secret_file(dir.path(), "mqtt-password", &mqtt_password);
    let scram_file = secret_file(dir.path(), "scram-password", scram_password);
    let passphrase = pki.client_key_passphrase();
    let kafka_block = format!(
        "  bootstrap_servers: {}\n  sasl:\n    mechanism: SCRAM-SHA-512\n    username: {scram_user}\n    password_file: {}\n\
         \x20 tls:\n    ca_file: {}\n    cert_file: {}\n    key_file: {}\n\
         \x20 properties:\n    debug: all\n",
        k.sasl_ssl_bootstrap(),
        scram_file.display(),
        k.ca_pem().display(),
        pki.client_rsa_cert().display(),
        pki.client_key_encrypted().display(),
    );
    // Mosquitto here allows anonymous clients, so it takes any credentials: they are still sent.
    let transports = [
        (
            "mutual TLS",
            format!("mqtts://127.0.0.1:{}", m.mtls_port()),
            format!(
                "    cert_file: {}\n    key_file: {}\n",
                pki.client_ec_cert().display(),
                pki.client_ec_key_pkcs8().display()
            ),
        ),
        ("wss", format!("wss://127.0.0.1:{}/mqtt", m.wss_port()), String::new()),
    ];
    let secrets = [mqtt_password.as_str(), scram_password, passphrase];
    for (what, broker, client) in transports {
        let topic = unique_topic("sec-all");
        k.create_topic(&topic, 1);
        let mqtt = format!(
            "  username: gateway\n  password_file: {}\n  tls:\n    ca_file: {}\n{client}",
            mqtt_password_file.display(),
            pki.ca_pem().display()
        );
        let path = config(&broker, &kafka_block, &topic, 1).mqtt(&mqtt).write(dir.path());
        // The key's passphrase from the environment; everything at TRACE, librdkafka's debug included.
        let env = [("KAFKA_TLS_KEY_PASSWORD", passphrase), ("RUST_LOG", "trace")];
        let mut gw = Gateway::start(&path, &env);
        assert!(gw.wait_for_log("subscribed", WAIT), "{what}: never subscribed:\n{}", gw.logs());
        mosquitto_pub(m.port(), "sec/device-1/state", br#"{"all":"together"}"#, 1);
        let records = k.consume(&topic, 1, WAIT);
        assert_eq!(records.len(), 1, "{what}: no record; gateway log:\n{}", gw.logs());
        gw.sigterm();
        assert!(gw.wait_exit(WAIT).is_some(), "{what}: the gateway did not stop");
        let mut logs = gw.logs();
        assert!(logs.lines().count() > 200, "{what}: expected a trace-level log, got:\n{logs}");
        assert!(logs.contains("librdkafka"), "{what}: librdkafka's debug lines are in the log");
        let path_str = path.to_str().unwrap();
        let explain = vec!["--config", path_str, "explain", "--topic", "sec/device-1/state", "--payload", "{}"];
        for args in [vec!["validate", path_str], explain, vec!["--config", path_str, "check", "--timeout", "15"]] {
            let (code, out) = run(&args, &env);
            // Each succeeds: check reached both brokers through TLS, SASL_SSL and the client certificates.
            assert_eq!(code, Some(0), "{what}: {args:?}:\n{out}");
            logs.push_str(&out);
        }
        for secret in secrets {
            let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
            assert!(!logs.contains(secret), "{what}: `{secret}` appears in the log");
            assert!(!logs.to_ascii_lowercase().contains(&hex), "{what}: `{secret}` appears hex-encoded in the log");
        }
    }
}

/// The gateway logs `what` once per failed attempt as one ERROR line with `hint_part`, `/readyz` says
/// it, and the gateway is still running.
fn assert_kafka_fails_with(gw: &mut Gateway, servers: &str, what: &str, hint_part: &str) {
    assert!(gw.wait_for_log(what, WAIT), "expected `{what}`:\n{}", gw.logs());
    let logs = gw.logs();
    let line = logs.lines().find(|l| l.contains(what)).unwrap_or_default().to_string();
    assert!(
        line.contains("ERROR") && line.contains(servers) && line.contains(hint_part),
        "one line with the brokers, what and the hint: {line}"
    );
    let addr = gw.http_addr();
    let named = wait_until(WAIT, Duration::from_millis(200), || {
        http::get(&addr, "/readyz").is_some_and(|a| a.status == 503 && a.body.contains(what))
    });
    assert!(named, "/readyz names `{what}`: {:?}", http::get(&addr, "/readyz").map(|a| a.body));
    assert!(gw.is_running(), "the gateway keeps running:\n{}", gw.logs());
}

#[test]
fn kafka_failures_are_named_and_a_restart_with_the_fixed_secret_delivers_what_was_held() {
    let k = SecureKafka::start();
    let m = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let pki = k.pki();
    let (scram_user, scram_password) = k.scram_user();
    let topic = unique_topic("sec-kafka-fail");
    k.create_topic(&topic, 1);
    let broker = format!("mqtt://{}", m.addr());
    let password_file = secret_file(dir.path(), "scram-password", "not-the-password");
    let sasl_block = format!(
        "  bootstrap_servers: {}\n  sasl:\n    mechanism: SCRAM-SHA-512\n    username: {scram_user}\n    password_file: {}\n  tls:\n    ca_file: {}\n",
        k.sasl_ssl_bootstrap(),
        password_file.display(),
        k.ca_pem().display()
    );
    // A persistent session: QoS 1 messages the gateway could not deliver stay with the broker.
    let path =
        config(&broker, &sasl_block, &topic, 1).client_id("gateway-sec-fail").clean_session(false).write(dir.path());
    let mut gw = Gateway::start(&path, &[]);
    assert_kafka_fails_with(&mut gw, &k.sasl_ssl_bootstrap(), "sasl: authentication failed", "kafka.sasl.username");
    assert!(gw.wait_for_log("subscribed", WAIT), "MQTT is up meanwhile:\n{}", gw.logs());
    let held: Vec<(String, Vec<u8>)> =
        (0..5).map(|i| ("sec/device-1/state".to_string(), format!(r#"{{"i":{i}}}"#).into_bytes())).collect();
    publish_all(m.port(), held);
    // The gateway has taken the five while Kafka refuses it (and holds them: see the restart below).
    let taken = || prom::value(&gw.metrics(), "mqtt_kafka_gateway_messages_received_total", &[]);
    assert!(
        wait_until(WAIT, Duration::from_millis(100), || taken() >= 5.0),
        "the gateway did not take the five messages (received {}):\n{}",
        taken(),
        gw.logs()
    );
    assert!(gw.is_running() && !gw.logs().contains("not-the-password"), "{}", gw.logs());
    gw.sigterm();
    assert!(gw.wait_exit(WAIT).is_some(), "the gateway stops on SIGTERM");

    // The operator fixes the Secret; Kafka credentials need a restart.
    std::fs::write(&password_file, format!("{scram_password}\n")).unwrap();
    let gw = Gateway::start(&path, &[]);
    let records = k.consume(&topic, 5, WAIT);
    assert_eq!(records.len(), 5, "the five messages held by the broker arrive after the fix:\n{}", gw.logs());
    drop(gw);

    // The broker's certificate signed by a CA the gateway does not trust.
    let untrusted = sasl_block.replace(&k.ca_pem().display().to_string(), &pki.wrong_ca_pem().display().to_string());
    let path = config(&broker, &untrusted, &topic, 0).write(dir.path());
    let mut gw = Gateway::start(&path, &[]);
    assert_kafka_fails_with(
        &mut gw,
        &k.sasl_ssl_bootstrap(),
        "tls: the broker's certificate is not trusted",
        "kafka.tls.ca_file",
    );
    drop(gw);

    // The SSL listener wants a client certificate; none is given.
    let no_cert =
        format!("  bootstrap_servers: {}\n  tls:\n    ca_file: {}\n", k.ssl_bootstrap(), k.ca_pem().display());
    let path = config(&broker, &no_cert, &topic, 0).write(dir.path());
    let mut gw = Gateway::start(&path, &[]);
    assert_kafka_fails_with(
        &mut gw,
        &k.ssl_bootstrap(),
        "tls: the broker rejected the client certificate",
        "kafka.tls.cert_file",
    );
}

#[test]
fn an_unknown_sasl_mechanism_is_a_configuration_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "kafka:\n  sasl:\n    mechanism: SCRAM-SHA-1\n    username: u\n    password: hunter2\n",
    );
    let (code, out) = run(&["validate", path.to_str().unwrap()], &[]);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("unknown SASL mechanism `SCRAM-SHA-1`") && out.contains("SCRAM-SHA-512"), "{out}");
    assert!(!out.contains("hunter2"), "{out}");
    // Through kafka.properties, a mechanism this librdkafka has no provider for (GSSAPI needs Cyrus SASL)
    // is refused when the producer is created: the start fails, naming it, with no secret shown.
    let path = write_config(
        dir.path(),
        "kafka:\n  properties:\n    sasl.mechanism: GSSAPI\n    security.protocol: SASL_SSL\n    sasl.username: u\n    sasl.password: hunter2\n",
    );
    let mut gw = Gateway::start(&path, &[]);
    let status = gw.wait_exit(WAIT).expect("the gateway exits: this is not something a retry fixes");
    assert!(!status.success());
    let logs = gw.logs();
    assert!(logs.contains("GSSAPI") && !logs.contains("hunter2"), "{logs}");
}

#[test]
fn oauthbearer_through_librdkafkas_oidc_client_and_a_local_token_endpoint() {
    let k = SecureKafka::start();
    let m = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = format!("oidc-secret-{:08x}", rand::random::<u32>());
    let endpoint = TokenEndpoint::start("gateway-client", &secret);
    let right = secret_file(dir.path(), "client-secret", &secret);
    let oauth = |file: &Path| {
        format!(
            "  bootstrap_servers: {}\n  sasl:\n    mechanism: OAUTHBEARER\n    oauthbearer:\n      token_endpoint_url: {}\n      client_id: gateway-client\n      client_secret_file: {}\n      scope: kafka\n  tls:\n    ca_file: {}\n",
            k.sasl_ssl_bootstrap(),
            endpoint.url(),
            file.display(),
            k.ca_pem().display()
        )
    };
    let topic = unique_topic("sec-oauth");
    k.create_topic(&topic, 1);
    let broker = format!("mqtt://{}", m.addr());
    let path = config(&broker, &oauth(&right), &topic, 1).write(dir.path());
    let mut gw = Gateway::start(&path, &[]);
    assert!(gw.wait_for_log("subscribed", WAIT), "never subscribed:\n{}", gw.logs());
    mosquitto_pub(m.port(), "sec/device-1/state", br#"{"oauth":true}"#, 1);
    let records = k.consume(&topic, 1, WAIT);
    assert_eq!(records.len(), 1, "no record over OAUTHBEARER:\n{}", gw.logs());
    assert!(endpoint.issued() >= 1, "the token came from the endpoint");
    gw.kill();
    assert!(!gw.logs().contains(&secret), "the client secret is never logged");

    // A wrong client secret: the endpoint refuses, the gateway says so and keeps running.
    let wrong = secret_file(dir.path(), "wrong-secret", "not-the-secret");
    let path = config(&broker, &oauth(&wrong), &topic, 1).write(dir.path());
    let mut gw = Gateway::start(&path, &[]);
    assert_kafka_fails_with(
        &mut gw,
        &k.sasl_ssl_bootstrap(),
        "sasl: cannot get an OAUTHBEARER token",
        "kafka.sasl.oauthbearer",
    );
    assert!(endpoint.refused() >= 1);
    assert!(!gw.logs().contains("not-the-secret"), "{}", gw.logs());
}
