//! Unit tests of the security keys: `mqtt.tls`, `kafka.sasl`, `kafka.tls` and secrets from files.

use super::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

fn load(text: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    load_from_str(Path::new("routes.yaml"), text, &env)
}

fn file(content: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(content.as_bytes()).unwrap();
    f
}

fn problems(e: ConfigError) -> String {
    e.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n")
}

#[test]
fn sasl_maps_onto_librdkafka_and_defaults_to_sasl_ssl() {
    let pass = file("s3cret-from-file\n");
    let yaml = format!(
        "kafka:\n  sasl:\n    mechanism: scram-sha-512\n    username: alice\n    password_file: {}\n",
        pass.path().display()
    );
    let c = load(&yaml, &[]).unwrap();
    let p = &c.kafka.properties;
    assert_eq!(p["security.protocol"], "SASL_SSL");
    assert_eq!(p["sasl.mechanism"], "SCRAM-SHA-512");
    assert_eq!(p["sasl.username"], "alice");
    // One trailing newline trimmed, the rest kept.
    assert_eq!(p["sasl.password"], "s3cret-from-file");
    // Never in Debug output.
    let debug = format!("{c:?}");
    assert!(!debug.contains("s3cret"), "{debug}");
}

#[test]
fn short_env_variables_set_the_sasl_credentials_and_properties_win() {
    let yaml = "kafka:\n  sasl:\n    mechanism: PLAIN\n  properties:\n    security.protocol: SASL_PLAINTEXT\n";
    let c = load(yaml, &[("KAFKA_SASL_USERNAME", "bob"), ("KAFKA_SASL_PASSWORD", "1234")]).unwrap();
    let p = &c.kafka.properties;
    assert_eq!((p["sasl.username"].as_str(), p["sasl.password"].as_str()), ("bob", "1234"));
    assert_eq!(p["security.protocol"], "SASL_PLAINTEXT", "kafka.properties is applied last");
}

#[test]
fn kafka_tls_files_map_onto_ssl_properties() {
    let (ca, cert, key) = (file("ca"), file("cert"), file("key"));
    let yaml = format!(
        "kafka:\n  tls:\n    ca_file: {}\n    cert_file: {}\n    key_file: {}\n    key_password: pw\n",
        ca.path().display(),
        cert.path().display(),
        key.path().display()
    );
    let c = load(&yaml, &[]).unwrap();
    let p = &c.kafka.properties;
    assert_eq!(p["security.protocol"], "SSL");
    assert_eq!(p["ssl.ca.location"], ca.path().display().to_string());
    assert_eq!(p["ssl.certificate.location"], cert.path().display().to_string());
    assert_eq!(p["ssl.key.location"], key.path().display().to_string());
    assert_eq!(p["ssl.key.password"], "pw");
}

#[test]
fn bad_security_settings_are_reported_without_their_secrets() {
    let pass = file("topsecret");
    let yaml = format!(
        "kafka:\n  security_protocol: SSL\n  sasl:\n    mechanism: KERBEROS5\n    username: u\n    password: topsecret\n    password_file: {}\n  tls:\n    cert_file: /nonexistent/cert.pem\n",
        pass.path().display()
    );
    let text = problems(load(&yaml, &[]).unwrap_err());
    assert!(text.contains("unknown SASL mechanism `KERBEROS5`"), "{text}");
    assert!(text.contains("kafka.sasl is set but the protocol is SSL"), "{text}");
    assert!(text.contains("kafka.tls.cert_file") && text.contains("cert_file and key_file go together"), "{text}");
    assert!(!text.contains("topsecret"), "{text}");
    let text = problems(load(&yaml.replace("KERBEROS5", "PLAIN"), &[]).unwrap_err());
    assert!(text.contains("both kafka.sasl.password and kafka.sasl.password_file are set"), "{text}");
    assert!(!text.contains("topsecret"), "{text}");
    let text = problems(load("mqtt:\n  username: u\n  password_file: /nonexistent/pw\n", &[]).unwrap_err());
    assert!(text.contains("mqtt.password_file") && text.contains("/nonexistent/pw"), "{text}");
}

#[test]
fn mqtt_password_file_and_env() {
    let pass = file("from-file\r\n");
    let c = load(&format!("mqtt:\n  username: u\n  password_file: {}\n", pass.path().display()), &[]).unwrap();
    assert_eq!(c.mqtt.credentials.as_ref().unwrap().1.expose(), "from-file");
    let c = load("mqtt:\n  username: u\n", &[("MQTT_PASSWORD_FILE", &pass.path().display().to_string())]).unwrap();
    assert_eq!(c.mqtt.credentials.as_ref().unwrap().1.expose(), "from-file");
}

#[test]
fn mqtt_tls_needs_a_tls_broker_and_readable_pem() {
    let text = problems(load("mqtt:\n  broker: mqtt://b:1883\n  tls:\n    ca_file: /x.pem\n", &[]).unwrap_err());
    assert!(text.contains("not a TLS address"), "{text}");
    let not_pem = file("hello");
    let text = problems(
        load(&format!("mqtt:\n  broker: mqtts://b\n  tls:\n    ca_file: {}\n", not_pem.path().display()), &[])
            .unwrap_err(),
    );
    assert!(text.contains("mqtt.tls.ca_file") && text.contains("no PEM certificate"), "{text}");
    let text = problems(load("mqtt:\n  broker: wss://b/mqtt\n  tls:\n    min_version: \"1.1\"\n", &[]).unwrap_err());
    assert!(text.contains("mqtt.tls.min_version"), "{text}");
    let encrypted = file("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n");
    let cert = file("-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n");
    let yaml = format!(
        "mqtt:\n  broker: mqtts://b\n  tls:\n    cert_file: {}\n    key_file: {}\n",
        cert.path().display(),
        encrypted.path().display()
    );
    let text = problems(load(&yaml, &[]).unwrap_err());
    assert!(text.contains("encrypted"), "{text}");
    // No mqtt.tls: the system's roots, TLS 1.2 and up.
    let c = load("mqtt:\n  broker: mqtts://b\n", &[]).unwrap();
    assert_eq!(c.mqtt.tls, Some(MqttTls { ca_file: None, client: None, min_version: TlsVersion::V1_2 }));
}

#[test]
fn the_oidc_client_secret_comes_from_the_prefixed_environment() {
    let yaml = "kafka:\n  sasl:\n    mechanism: OAUTHBEARER\n    oauthbearer:\n      token_endpoint_url: https://idp/token\n      client_id: gw\n";
    let c = load(yaml, &[("GATEWAY_KAFKA__SASL__OAUTHBEARER__CLIENT_SECRET", "0123")]).unwrap();
    let p = &c.kafka.properties;
    assert_eq!(p["sasl.oauthbearer.client.secret"], "0123");
    assert_eq!(p["sasl.oauthbearer.method"], "oidc");
    assert_eq!(p["sasl.oauthbearer.token.endpoint.url"], "https://idp/token");
    assert_eq!(p["security.protocol"], "SASL_SSL");
    assert!(!format!("{:?}", c.kafka).contains("0123"));
}
