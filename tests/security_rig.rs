//! Proves the TLS / SASL test rigs ([`Pki`], [`MosquittoTls`], [`SecureKafka`]) with external
//! clients only: the Mosquitto CLI, `openssl`, a raw WebSocket client and rdkafka. The gateway's
//! own TLS and SASL tests build on these rigs, so each must be shown to accept the right client
//! and to refuse the wrong one.

mod common;

use common::pki::Pki;
use common::{
    try_mosquitto_pub, unique_topic, ws_mqtt_connect, wss_mqtt_connect, MosquittoTls, SecureKafka, ServerCert,
    Subscriber, TlsOptions,
};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Mosquitto logs a refused connection after the client has seen it fail: wait a moment for the line.
fn logs(broker: &MosquittoTls, line: &str) -> bool {
    common::wait_until(Duration::from_secs(5), Duration::from_millis(50), || broker.log().contains(line))
}

const STEP: Duration = Duration::from_secs(20);

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// `openssl verify -CAfile ca cert` (with `-purpose`), its output on failure.
fn openssl_verify(ca: &Path, cert: &Path, purpose: &str, extra: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(["verify", "-x509_strict", "-purpose", purpose, "-CAfile", path(ca)])
        .args(extra)
        .arg(cert)
        .output()
        .expect("run openssl verify");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(())
    } else {
        Err(text)
    }
}

fn cert_text(cert: &Path) -> String {
    let out =
        Command::new("openssl").args(["x509", "-noout", "-text", "-in", path(cert)]).output().expect("openssl x509");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn pki_certificates_chain_to_the_right_ca_only() {
    let pki = Pki::generate();
    let ca = cert_text(&pki.ca_pem());
    assert!(ca.contains("Version: 3 (0x2)") && ca.contains("CA:TRUE"), "{ca}");
    assert!(ca.contains("Certificate Sign, CRL Sign"), "{ca}");

    openssl_verify(&pki.ca_pem(), &pki.server_cert(), "sslserver", &["-verify_ip", "127.0.0.1"]).unwrap();
    openssl_verify(&pki.ca_pem(), &pki.server_cert(), "sslserver", &["-verify_hostname", "localhost"]).unwrap();
    let server = cert_text(&pki.server_cert());
    assert!(server.contains("IP Address:127.0.0.1, DNS:localhost") && server.contains("CA:FALSE"), "{server}");
    for cert in [pki.client_rsa_cert(), pki.client_ec_cert()] {
        openssl_verify(&pki.ca_pem(), &cert, "sslclient", &[]).unwrap();
        assert!(openssl_verify(&pki.ca_pem(), &cert, "sslserver", &[]).is_err(), "a client cert must not serve");
    }
    assert!(cert_text(&pki.client_rsa_cert()).contains("rsaEncryption"));
    assert!(cert_text(&pki.client_ec_cert()).contains("prime256v1"));

    let wrong_ca = openssl_verify(&pki.wrong_ca_pem(), &pki.server_cert(), "sslserver", &[]).unwrap_err();
    assert!(wrong_ca.contains("unable to get local issuer certificate"), "{wrong_ca}");
    let expired = openssl_verify(&pki.ca_pem(), &pki.expired_server_cert(), "sslserver", &[]).unwrap_err();
    assert!(expired.contains("certificate has expired"), "{expired}");
    let wrong_host =
        openssl_verify(&pki.ca_pem(), &pki.wrong_host_server_cert(), "sslserver", &["-verify_ip", "127.0.0.1"])
            .unwrap_err();
    assert!(wrong_host.contains("IP address mismatch"), "{wrong_host}");
    openssl_verify(&pki.ca_pem(), &pki.wrong_host_server_cert(), "sslserver", &["-verify_hostname", "wrong.example"])
        .unwrap();

    // The encrypted key opens with its passphrase only.
    let decrypt = |pass: &str| {
        Command::new("openssl")
            .args(["pkey", "-noout", "-in", path(&pki.client_key_encrypted()), "-passin", &format!("pass:{pass}")])
            .output()
            .expect("openssl pkey")
            .status
            .success()
    };
    assert!(decrypt(pki.client_key_passphrase()));
    assert!(!decrypt("not-the-passphrase"));
}

/// `mosquitto_pub` that must fail; returns its output, with `-d` so that it names the OpenSSL
/// error (without `-d` it only says "A TLS error occurred").
fn pub_refused(port: u16, extra: &[&str]) -> String {
    let args: Vec<&str> = extra.iter().copied().chain(["-d"]).collect();
    match try_mosquitto_pub(port, "refused", b"x", 1, &args) {
        Ok(()) => panic!("mosquitto_pub -p {port} {extra:?} was accepted"),
        Err(e) => e,
    }
}

/// A TLS handshake with 127.0.0.1:`port` by `openssl s_client` with `version` (`-tls1_2`...),
/// verifying the server against `ca`; its output on failure. Killed after 20 s.
fn tls_handshake(port: u16, ca: &Path, version: &str) -> Result<(), String> {
    let mut child = Command::new("openssl")
        .args(["s_client", "-brief", "-verify_return_error", "-verify_ip", "127.0.0.1", version, "-CAfile", path(ca)])
        .args(["-connect", &format!("127.0.0.1:{port}")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    let exited = common::wait_until(STEP, Duration::from_millis(20), || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("openssl s_client output");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if exited && out.status.success() {
        Ok(())
    } else {
        Err(format!("{}: {text}", out.status))
    }
}

/// A subscriber on the plain listener that has its SUBACK, to see what TLS clients publish.
fn plain_subscriber(broker: &MosquittoTls, filter: &str) -> Subscriber {
    let sub = Subscriber::spawn(broker.port(), &[filter], &[]);
    assert_eq!(sub.wait_suback(STEP), Some(vec![0]), "{:?}\n{}", sub.lines(), broker.log());
    sub
}

#[test]
fn mosquitto_tls_listener_trusts_the_test_ca_only() {
    let pki = Pki::generate();
    let broker = MosquittoTls::start(&pki);
    let ca = path(&pki.ca_pem()).to_string();

    // Subscribe and publish over TLS.
    let mut sub = Subscriber::spawn(broker.tls_port(), &["tls/#"], &["--cafile", &ca, "-C", "1"]);
    assert_eq!(sub.wait_suback(STEP), Some(vec![0]), "{:?}\n{}", sub.lines(), broker.log());
    try_mosquitto_pub(broker.tls_port(), "tls/one", b"over tls", 1, &["--cafile", &ca]).unwrap();
    assert_eq!(sub.wait_messages(1, STEP), vec![("tls/one".to_string(), "over tls".to_string())]);
    assert!(sub.wait_exit(STEP).is_some_and(|s| s.success()));

    let wrong = path(&pki.wrong_ca_pem()).to_string();
    let err = pub_refused(broker.tls_port(), &["--cafile", &wrong]);
    assert!(err.contains("certificate verify failed"), "{err}");
    assert!(logs(&broker, "alert unknown ca"), "{}", broker.log());
    // Plain MQTT to a TLS port is no MQTT at all.
    assert!(try_mosquitto_pub(broker.tls_port(), "tls/three", b"x", 1, &[]).is_err());
    // The plain listener is still plain.
    try_mosquitto_pub(broker.port(), "plain/one", b"x", 1, &[]).unwrap();
}

#[test]
fn mosquitto_mtls_listener_wants_a_client_certificate_from_the_test_ca() {
    let pki = Pki::generate();
    let broker = MosquittoTls::start_with(&pki, TlsOptions { use_identity_as_username: true, ..Default::default() });
    let sub = plain_subscriber(&broker, "mtls/#");
    let ca = path(&pki.ca_pem()).to_string();
    let with = |cert: &Path, key: &Path, topic: &str| {
        try_mosquitto_pub(
            broker.mtls_port(),
            topic,
            topic.as_bytes(),
            1,
            &["--cafile", &ca, "--cert", path(cert), "--key", path(key)],
        )
    };
    with(&pki.client_rsa_cert(), &pki.client_rsa_key_pkcs8(), "mtls/rsa-pkcs8").unwrap();
    with(&pki.client_rsa_cert(), &pki.client_rsa_key_pkcs1(), "mtls/rsa-pkcs1").unwrap();
    with(&pki.client_ec_cert(), &pki.client_ec_key_pkcs8(), "mtls/ec-pkcs8").unwrap();
    with(&pki.client_ec_cert(), &pki.client_ec_key_sec1(), "mtls/ec-sec1").unwrap();
    let got = sub.wait_messages(4, STEP);
    assert_eq!(got.len(), 4, "{got:?}\n{}", broker.log());
    // The certificate's CN became the user name.
    let log = broker.log();
    assert!(log.contains("u'client-rsa'") && log.contains("u'client-ec'"), "{log}");

    let none = pub_refused(broker.mtls_port(), &["--cafile", &ca]);
    assert!(logs(&broker, "peer did not return a certificate"), "{none}\n{}", broker.log());
    // A client certificate from another PKI's CA is refused too.
    let other = Pki::generate();
    let err = pub_refused(
        broker.mtls_port(),
        &["--cafile", &ca, "--cert", path(&other.client_ec_cert()), "--key", path(&other.client_ec_key_pkcs8())],
    );
    assert!(logs(&broker, "certificate verify failed"), "{err}\n{}", broker.log());
    assert_eq!(sub.wait_messages(5, Duration::from_millis(500)).len(), 4);
}

#[test]
fn mosquitto_bad_server_certificates_and_tls_version_are_selectable() {
    let pki = Pki::generate();
    let ca = path(&pki.ca_pem()).to_string();
    // What the client's TLS alert tells the broker.
    for (which, expect) in [(ServerCert::Expired, "alert certificate expired"), (ServerCert::WrongHost, "alert")] {
        let broker = MosquittoTls::start_with(&pki, TlsOptions { server_cert: which, ..Default::default() });
        let err = pub_refused(broker.tls_port(), &["--cafile", &ca]);
        assert!(err.contains("certificate verify failed"), "{which:?}: {err}");
        assert!(logs(&broker, expect), "{which:?}: {}", broker.log());
        if which == ServerCert::WrongHost {
            // Without the host name check the same listener works: only the name is wrong.
            try_mosquitto_pub(broker.tls_port(), "bad/cert", b"x", 1, &["--cafile", &ca, "--insecure"]).unwrap();
        }
    }

    // Mosquitto's `tls_version` is a minimum (as is mosquitto_pub's `--tls-version`, hence
    // `openssl s_client` pinned to one version): a TLS 1.3 listener refuses a TLS 1.2 client.
    let tls13 = MosquittoTls::start_with(&pki, TlsOptions { tls_version: Some("tlsv1.3"), ..Default::default() });
    tls_handshake(tls13.tls_port(), &pki.ca_pem(), "-tls1_3").unwrap();
    let err = tls_handshake(tls13.tls_port(), &pki.ca_pem(), "-tls1_2").unwrap_err();
    assert!(err.contains("protocol version"), "{err}");
    let default = MosquittoTls::start(&pki);
    for v in ["-tls1_2", "-tls1_3"] {
        tls_handshake(default.tls_port(), &pki.ca_pem(), v).unwrap();
    }
}

/// An MQTT CONNECT by rumqttc over rustls/webpki (what the gateway's client uses) to
/// 127.0.0.1:`port`, trusting `ca`, with an optional client (cert, key); Ok once the CONNACK came.
fn rustls_connect(port: u16, ca: &Path, client: Option<(&Path, &Path)>) -> Result<(), String> {
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    let mut opts = rumqttc::MqttOptions::new(unique_topic("rustls-probe"), "127.0.0.1", port);
    opts.set_transport(rumqttc::Transport::tls(read(ca), client.map(|(c, k)| (read(c), read(k))), None));
    let (_client, mut connection) = rumqttc::Client::new(opts, 10);
    let deadline = Instant::now() + STEP;
    loop {
        match connection.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("{e:?}")),
            Err(e) => return Err(format!("no CONNACK within {STEP:?}: {e:?}")),
        }
    }
}

#[test]
fn rustls_accepts_the_rig_certificates_and_refuses_the_bad_ones() {
    let pki = Pki::generate();
    let broker = MosquittoTls::start(&pki);
    rustls_connect(broker.tls_port(), &pki.ca_pem(), None).unwrap();
    for (cert, key) in [
        (pki.client_rsa_cert(), pki.client_rsa_key_pkcs8()),
        (pki.client_rsa_cert(), pki.client_rsa_key_pkcs1()),
        (pki.client_ec_cert(), pki.client_ec_key_pkcs8()),
        (pki.client_ec_cert(), pki.client_ec_key_sec1()),
    ] {
        rustls_connect(broker.mtls_port(), &pki.ca_pem(), Some((&cert, &key)))
            .unwrap_or_else(|e| panic!("{} + {}: {e}\n{}", cert.display(), key.display(), broker.log()));
    }
    let err = rustls_connect(broker.tls_port(), &pki.wrong_ca_pem(), None).unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");

    let expired = MosquittoTls::start_with(&pki, TlsOptions { server_cert: ServerCert::Expired, ..Default::default() });
    let err = rustls_connect(expired.tls_port(), &pki.ca_pem(), None).unwrap_err();
    assert!(err.contains("Expired"), "{err}");
    let wrong_host =
        MosquittoTls::start_with(&pki, TlsOptions { server_cert: ServerCert::WrongHost, ..Default::default() });
    let err = rustls_connect(wrong_host.tls_port(), &pki.ca_pem(), None).unwrap_err();
    assert!(err.contains("NotValidForName"), "{err}");
}

#[test]
fn mosquitto_websocket_listeners_accept_mqtt() {
    let pki = Pki::generate();
    let broker = MosquittoTls::start(&pki);

    let ws = ws_mqtt_connect(broker.ws_port(), STEP).unwrap_or_else(|e| panic!("ws: {e}\n{}", broker.log()));
    assert!(ws.http_response.to_ascii_lowercase().contains("sec-websocket-protocol: mqtt"), "{ws:?}");
    assert_eq!(ws.connack_code, 0, "{ws:?}");

    let wss = wss_mqtt_connect(broker.wss_port(), &pki.ca_pem(), STEP)
        .unwrap_or_else(|e| panic!("wss: {e}\n{}", broker.log()));
    assert!(wss.http_response.to_ascii_lowercase().contains("sec-websocket-protocol: mqtt"), "{wss:?}");
    assert_eq!(wss.connack_code, 0, "{wss:?}");

    let wrong = wss_mqtt_connect(broker.wss_port(), &pki.wrong_ca_pem(), STEP).unwrap_err();
    assert!(wrong.contains("verify"), "{wrong}");
    // ws:// to the wss port is refused: the TLS listener does not speak HTTP in clear.
    assert!(ws_mqtt_connect(broker.wss_port(), Duration::from_secs(5)).is_err());
}

/// Records delivery reports and client errors of a test producer.
#[derive(Default)]
struct Recorder {
    deliveries: Mutex<Vec<Result<(), String>>>,
    errors: Mutex<Vec<String>>,
}

impl ClientContext for Recorder {
    fn error(&self, error: KafkaError, reason: &str) {
        let mut errors = self.errors.lock().unwrap();
        // librdkafka repeats itself on every reconnect.
        let line = format!("{error}: {reason}");
        let key = line.split(" (after ").next().unwrap_or_default().to_string();
        if !errors.iter().any(|e| e.starts_with(&key)) {
            errors.push(line);
        }
    }
}

impl ProducerContext for Recorder {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        self.deliveries.lock().unwrap().push(result.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string()));
    }
}

/// Produces `values` to `topic` with `cfg` and waits (at most `timeout`) for every delivery
/// report; Err with the failures and the client's errors otherwise.
fn produce(mut cfg: ClientConfig, topic: &str, values: &[String], timeout: Duration) -> Result<(), String> {
    let producer: BaseProducer<Recorder> = cfg
        .set("message.timeout.ms", timeout.as_millis().to_string())
        .set("linger.ms", "0")
        .create_with_context(Recorder::default())
        .map_err(|e| format!("create producer: {e}"))?;
    for v in values {
        producer.send(BaseRecord::to(topic).key(v).payload(v)).map_err(|(e, _)| format!("enqueue: {e}"))?;
    }
    let deadline = Instant::now() + timeout + Duration::from_secs(5);
    while producer.context().deliveries.lock().unwrap().len() < values.len() && Instant::now() < deadline {
        producer.poll(Duration::from_millis(100));
    }
    let deliveries = producer.context().deliveries.lock().unwrap().clone();
    let errors = producer.context().errors.lock().unwrap().clone();
    if deliveries.len() == values.len() && deliveries.iter().all(Result::is_ok) {
        Ok(())
    } else {
        Err(format!("deliveries {deliveries:?}; client errors {errors:?}"))
    }
}

#[test]
fn kafka_sasl_ssl_and_ssl_listeners_take_the_right_credentials() {
    let k = SecureKafka::start();
    eprintln!("[security_rig] secured Kafka: plaintext broker ready after {:.1}s", k.ready_after().as_secs_f64());
    let topic = unique_topic("security-rig");
    k.create_topic(&topic, 1);
    let (scram_user, scram_password) = k.scram_user();
    let (plain_user, plain_password) = k.plain_user();
    let pki = k.pki();

    let attempts: Vec<(&str, ClientConfig)> = vec![
        ("SCRAM-SHA-512", k.sasl_client_config("SCRAM-SHA-512", scram_user, scram_password)),
        ("SCRAM-SHA-256", k.sasl_client_config("SCRAM-SHA-256", scram_user, scram_password)),
        ("PLAIN", k.sasl_client_config("PLAIN", plain_user, plain_password)),
        ("SSL RSA PKCS#8", k.ssl_client_config(pki.client_rsa_cert(), pki.client_rsa_key_pkcs8(), None)),
        ("SSL EC PKCS#8", k.ssl_client_config(pki.client_ec_cert(), pki.client_ec_key_pkcs8(), None)),
        (
            "SSL RSA encrypted key",
            k.ssl_client_config(pki.client_rsa_cert(), pki.client_key_encrypted(), Some(pki.client_key_passphrase())),
        ),
    ];
    let mut expected = Vec::new();
    for (name, cfg) in attempts {
        let value = format!("via {name}");
        let started = Instant::now();
        produce(cfg, &topic, std::slice::from_ref(&value), STEP)
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", k.log_tail()));
        eprintln!("[security_rig] {name}: delivered in {:.1}s", started.elapsed().as_secs_f64());
        expected.push(value);
    }
    let got: Vec<String> = k.consume(&topic, expected.len(), STEP).iter().map(|r| r.value_str().to_string()).collect();
    assert_eq!(got, expected);

    // Refusals: each must fail within its bound, and nothing of it may reach the topic.
    let short = Duration::from_secs(6);
    let refused: Vec<(&str, ClientConfig, &str)> = vec![
        ("wrong SCRAM password", k.sasl_client_config("SCRAM-SHA-512", scram_user, "wrong"), "Authentication failed"),
        ("wrong PLAIN password", k.sasl_client_config("PLAIN", plain_user, "wrong"), "Authentication failed"),
        ("SCRAM user over PLAIN", k.sasl_client_config("PLAIN", scram_user, scram_password), "Authentication failed"),
        (
            "SSL without client cert",
            {
                let mut c = ClientConfig::new();
                c.set("bootstrap.servers", k.ssl_bootstrap())
                    .set("security.protocol", "SSL")
                    .set("ssl.ca.location", path(&k.ca_pem()));
                c
            },
            "alert bad certificate",
        ),
        (
            "SASL_SSL trusting the wrong CA",
            {
                let mut c = k.sasl_client_config("SCRAM-SHA-512", scram_user, scram_password);
                c.set("ssl.ca.location", path(&pki.wrong_ca_pem()));
                c
            },
            "certificate verify failed",
        ),
    ];
    // In parallel: each waits out its whole message timeout.
    std::thread::scope(|scope| {
        for (name, cfg, needle) in refused {
            let topic = &topic;
            scope.spawn(move || {
                let started = Instant::now();
                let err = produce(cfg, topic, &[format!("refused {name}")], short).expect_err(name);
                eprintln!("[security_rig] {name}: refused after {:.1}s: {err}", started.elapsed().as_secs_f64());
                assert!(err.contains(needle), "{name}: {err}");
                assert!(started.elapsed() < short + Duration::from_secs(10), "{name} took {:?}", started.elapsed());
            });
        }
    });
    assert_eq!(k.consume_for(&topic, Duration::from_secs(1)).len(), expected.len());
}
