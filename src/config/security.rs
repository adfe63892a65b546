//! The security keys: `mqtt.tls`, `mqtt.password_file`, and `kafka.security_protocol`, `kafka.sasl`,
//! `kafka.tls`. Their serde schema, their checks (files readable, PEM that parses, known mechanisms), and
//! the librdkafka properties the Kafka ones map onto. Secrets may come from files (`*_file`, the way
//! Kubernetes mounts Secrets; one trailing newline trimmed) and are only ever held as [`Secret`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::raw::{Secret, StringLike};
use super::validate::Problems;

// ---------------------------------------------------------------------------------------------------
// The schema.
// ---------------------------------------------------------------------------------------------------

/// `mqtt.tls`: read when `mqtt.broker` is `mqtts://` or `wss://`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMqttTls {
    /// PEM file of the CA certificate(s) to trust. Unset: the system's roots.
    pub ca_file: Option<String>,
    /// PEM client certificate (chain) for mutual TLS; needs `key_file`.
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file`: PKCS#8, PKCS#1 (RSA) or SEC1 (EC), unencrypted.
    pub key_file: Option<String>,
    /// The lowest TLS version accepted: `"1.2"` (the default) or `"1.3"`.
    pub min_version: Option<StringLike>,
}

/// `kafka.sasl`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawKafkaSasl {
    /// `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` or `OAUTHBEARER`.
    pub mechanism: Option<String>,
    /// Env: `KAFKA_SASL_USERNAME`.
    pub username: Option<StringLike>,
    /// Env: `KAFKA_SASL_PASSWORD`. Never logged.
    pub password: Option<Secret>,
    /// A file holding the password. Env: `KAFKA_SASL_PASSWORD_FILE`.
    pub password_file: Option<String>,
    /// OAUTHBEARER through librdkafka's OIDC client-credentials flow.
    pub oauthbearer: Option<RawOauthbearer>,
}

/// `kafka.sasl.oauthbearer`: librdkafka's `sasl.oauthbearer.method=oidc`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOauthbearer {
    pub token_endpoint_url: String,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub client_secret_file: Option<String>,
    pub scope: Option<String>,
}

/// `kafka.tls`: used by the `SSL` and `SASL_SSL` protocols.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawKafkaTls {
    /// PEM file of the CA certificate(s) to trust (`ssl.ca.location`). Unset: the system's roots.
    pub ca_file: Option<String>,
    /// PEM client certificate for mutual TLS (`ssl.certificate.location`).
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file` (`ssl.key.location`), encrypted or not.
    pub key_file: Option<String>,
    /// The key's passphrase (`ssl.key.password`). Env: `KAFKA_TLS_KEY_PASSWORD`.
    pub key_password: Option<Secret>,
    /// A file holding the passphrase.
    pub key_password_file: Option<String>,
}

// ---------------------------------------------------------------------------------------------------
// Checked values.
// ---------------------------------------------------------------------------------------------------

/// The lowest TLS version the MQTT connection accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

/// `mqtt.tls`, checked: the files exist and parse. They are read again at every connection attempt, so
/// a renewed certificate is taken without a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttTls {
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key, for mutual TLS.
    pub client: Option<(PathBuf, PathBuf)>,
    pub min_version: TlsVersion,
}

/// Librdkafka property names whose values are secrets: never shown.
pub fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password")
        || k.contains("secret")
        || k == "sasl.jaas.config"
        || k == "ssl.key.pem"
        || k == "ssl_key.pem"
        || k == "sasl.oauthbearer.config"
}

/// A secret given inline or through a file. `Ok(None)` when neither is set.
pub(super) fn secret(key: &str, inline: Option<&Secret>, file: Option<&str>, p: &mut Problems<'_>) -> Option<Secret> {
    match (inline, file) {
        (Some(_), Some(_)) => {
            p.add(&format!("{key}_file"), format!("both {key} and {key}_file are set"), Some("keep one of them"));
            None
        }
        (Some(s), None) => Some(s.clone()),
        (None, Some(path)) => {
            p.secret_files.push(PathBuf::from(path));
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let text = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
                    Some(Secret::new(text))
                }
                Err(e) => {
                    p.add(
                        &format!("{key}_file"),
                        format!("cannot read `{path}`: {e}"),
                        Some("mount the Secret there, readable by the gateway's user"),
                    );
                    None
                }
            }
        }
        (None, None) => None,
    }
}

pub(super) fn mqtt_tls(t: &RawMqttTls, tls: bool, p: &mut Problems<'_>) -> Option<MqttTls> {
    tls_files("mqtt", t, tls, p)
}

/// `<section>.tls` (`mqtt` or `schema_registry`), checked when the section's address is a TLS one.
pub(super) fn tls_files(section: &str, t: &RawMqttTls, tls: bool, p: &mut Problems<'_>) -> Option<MqttTls> {
    let (address, example) = match section {
        "mqtt" => ("mqtt.broker", "mqtts://host:8883 (or wss://host/mqtt)"),
        _ => ("schema_registry.url", "https://registry:8081"),
    };
    let given = t.ca_file.is_some() || t.cert_file.is_some() || t.key_file.is_some() || t.min_version.is_some();
    if !tls {
        if given {
            p.add(
                &format!("{section}.tls"),
                format!("TLS settings are given but {address} is not a TLS address"),
                Some(&format!("use {example} in {address}, or remove {section}.tls")),
            );
        }
        return None;
    }
    let min_version = match t.min_version.as_ref().map(|v| v.0.trim().trim_start_matches(['v', 'V'])) {
        None | Some("1.2") => TlsVersion::V1_2,
        Some("1.3") => TlsVersion::V1_3,
        Some(other) => {
            p.add(
                &format!("{section}.tls.min_version"),
                format!("`{other}` is not a TLS version the gateway speaks"),
                Some("use \"1.2\" or \"1.3\" (older versions are not supported)"),
            );
            TlsVersion::V1_2
        }
    };
    let ca_file = t.ca_file.as_deref().map(PathBuf::from);
    if let Some(ca) = &ca_file {
        if let Err(e) = super::pem::read_ca(ca) {
            p.add(&format!("{section}.tls.ca_file"), e, Some("a PEM file with one or more CA certificates"));
        }
    }
    let client = match (&t.cert_file, &t.key_file) {
        (Some(cert), Some(key)) => {
            let (cert, key) = (PathBuf::from(cert), PathBuf::from(key));
            match super::pem::read_client_identity(&cert, &key) {
                Err(e) => p.add(
                    &format!("{section}.tls.cert_file"),
                    e,
                    Some("a PEM certificate and its unencrypted PEM key (PKCS#8, PKCS#1 or SEC1)"),
                ),
                // A key of another certificate: found now rather than at the first handshake.
                Ok((certs, key_der)) => {
                    if let Err(e) = super::pem::check_pair(certs, key_der) {
                        p.add(
                            &format!("{section}.tls.key_file"),
                            format!("`{}` is not the key of `{}`: {e}", key.display(), cert.display()),
                            Some("give the key the certificate was issued for"),
                        );
                    }
                }
            }
            Some((cert, key))
        }
        (None, None) => None,
        _ => {
            p.add(
                &format!("{section}.tls"),
                "cert_file and key_file go together".into(),
                Some("set both for mutual TLS, or neither"),
            );
            None
        }
    };
    Some(MqttTls { ca_file, client, min_version })
}

/// The librdkafka properties for `kafka.security_protocol`, `kafka.sasl` and `kafka.tls`.
pub(super) fn kafka_properties(
    protocol: Option<&str>,
    sasl: &RawKafkaSasl,
    tls: &RawKafkaTls,
    p: &mut Problems<'_>,
) -> BTreeMap<String, String> {
    let mut props = BTreeMap::new();
    let sasl_given = sasl.mechanism.is_some()
        || sasl.username.is_some()
        || sasl.password.is_some()
        || sasl.password_file.is_some()
        || sasl.oauthbearer.is_some();
    let tls_given = tls.ca_file.is_some() || tls.cert_file.is_some() || tls.key_file.is_some();
    // SASL without a protocol named means SASL_SSL: managed Kafka services speak it, and inferring
    // SASL_PLAINTEXT would send the password in the clear.
    let protocol = match protocol.map(|s| s.trim().to_ascii_uppercase()) {
        Some(p) => Some(p),
        None if sasl_given => Some("SASL_SSL".to_string()),
        None if tls_given => Some("SSL".to_string()),
        None => None,
    };
    if let Some(protocol) = protocol {
        if !["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"].contains(&protocol.as_str()) {
            p.add(
                "kafka.security_protocol",
                format!("unknown protocol `{protocol}`"),
                Some("use PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
            );
        } else if sasl_given && !protocol.starts_with("SASL_") {
            p.add(
                "kafka.security_protocol",
                format!("kafka.sasl is set but the protocol is {protocol}"),
                Some("use SASL_SSL (or SASL_PLAINTEXT on a trusted network)"),
            );
        }
        props.insert("security.protocol".into(), protocol);
    }
    if sasl_given {
        sasl_properties(sasl, &mut props, p);
    }
    let file = |key: &str,
                path: &Option<String>,
                props: &mut BTreeMap<String, String>,
                p: &mut Problems<'_>,
                property: &str| {
        if let Some(path) = path {
            if let Err(e) = std::fs::metadata(path) {
                p.add(key, format!("cannot read `{path}`: {e}"), None);
            }
            props.insert(property.into(), path.clone());
        }
    };
    file("kafka.tls.ca_file", &tls.ca_file, &mut props, p, "ssl.ca.location");
    file("kafka.tls.cert_file", &tls.cert_file, &mut props, p, "ssl.certificate.location");
    file("kafka.tls.key_file", &tls.key_file, &mut props, p, "ssl.key.location");
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        p.add("kafka.tls", "cert_file and key_file go together".into(), Some("set both for mutual TLS, or neither"));
    }
    if let Some(pass) = secret("kafka.tls.key_password", tls.key_password.as_ref(), tls.key_password_file.as_deref(), p)
    {
        props.insert("ssl.key.password".into(), pass.expose().to_string());
    }
    props
}

fn sasl_properties(sasl: &RawKafkaSasl, props: &mut BTreeMap<String, String>, p: &mut Problems<'_>) {
    let mechanism = sasl.mechanism.as_deref().map(|m| m.trim().to_ascii_uppercase()).unwrap_or_else(|| {
        p.add("kafka.sasl.mechanism", "missing".into(), Some("use PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER"));
        String::new()
    });
    match mechanism.as_str() {
        "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512" => {
            match &sasl.username {
                Some(u) if !u.0.is_empty() => {
                    props.insert("sasl.username".into(), u.0.clone());
                }
                _ => p.add(
                    "kafka.sasl.username",
                    format!("{mechanism} needs a username"),
                    Some("set kafka.sasl.username (env KAFKA_SASL_USERNAME)"),
                ),
            }
            match secret("kafka.sasl.password", sasl.password.as_ref(), sasl.password_file.as_deref(), p) {
                Some(pass) => {
                    props.insert("sasl.password".into(), pass.expose().to_string());
                }
                None if sasl.password_file.is_none() => {
                    p.add(
                        "kafka.sasl.password",
                        format!("{mechanism} needs a password"),
                        Some("set kafka.sasl.password_file (or env KAFKA_SASL_PASSWORD)"),
                    );
                }
                None => {}
            }
        }
        "OAUTHBEARER" => match &sasl.oauthbearer {
            Some(o) => {
                props.insert("sasl.oauthbearer.method".into(), "oidc".into());
                props.insert("sasl.oauthbearer.token.endpoint.url".into(), o.token_endpoint_url.clone());
                props.insert("sasl.oauthbearer.client.id".into(), o.client_id.clone());
                if let Some(scope) = &o.scope {
                    props.insert("sasl.oauthbearer.scope".into(), scope.clone());
                }
                if let Some(s) = secret(
                    "kafka.sasl.oauthbearer.client_secret",
                    o.client_secret.as_ref(),
                    o.client_secret_file.as_deref(),
                    p,
                ) {
                    props.insert("sasl.oauthbearer.client.secret".into(), s.expose().to_string());
                }
                if o.token_endpoint_url.is_empty() || o.client_id.is_empty() {
                    p.add("kafka.sasl.oauthbearer", "token_endpoint_url and client_id are required".into(), None);
                }
            }
            None => p.add(
                "kafka.sasl.oauthbearer",
                "OAUTHBEARER needs token_endpoint_url, client_id and client_secret".into(),
                None,
            ),
        },
        "" => {}
        other => p.add(
            "kafka.sasl.mechanism",
            format!("unknown SASL mechanism `{other}`"),
            Some("use PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER (GSSAPI through kafka.properties)"),
        ),
    }
    if !mechanism.is_empty() {
        props.insert("sasl.mechanism".into(), mechanism);
    }
}
