//! What a failed MQTT connection attempt means, in an operator's words: which step failed (TCP, TLS,
//! WebSocket, CONNECT) and what to check. rumqttc's errors nest the cause (a rustls certificate error
//! inside an I/O error inside a TLS error); this walks the chain for the cause that says most.

use std::error::Error as StdError;
use std::io;

use rumqttc::v5 as r5;
use rumqttc::ConnectReturnCode;

use super::client::ConnectionError;
use rustls::{AlertDescription, CertificateError};

use crate::config::MqttSettings;

pub use crate::ops::diagnosis::Diagnosis;

pub fn diagnose(e: &ConnectionError, s: &MqttSettings) -> Diagnosis {
    match e {
        ConnectionError::V4(e) => diagnose_v4(e, s),
        ConnectionError::V5(e) => diagnose_v5(e, s),
    }
}

/// A failed MQTT 3.1.1 attempt (also what `check` makes).
pub fn diagnose_v4(e: &rumqttc::ConnectionError, s: &MqttSettings) -> Diagnosis {
    use rumqttc::ConnectionError;
    let d = |what: &str, hint: &'static str| Diagnosis { what: what.to_string(), hint };
    if let ConnectionError::ConnectionRefused(code) = e {
        return match code {
            ConnectReturnCode::BadUserNamePassword => d(
                "connect: bad username or password",
                "check mqtt.username and mqtt.password / mqtt.password_file (env MQTT_USERNAME, MQTT_PASSWORD, MQTT_PASSWORD_FILE)",
            ),
            ConnectReturnCode::NotAuthorized => d(
                "connect: not authorised",
                "the broker refuses this client: check the credentials, the client certificate, and the broker's ACLs for mqtt.client_id",
            ),
            ConnectReturnCode::BadClientId => d("connect: client id rejected", "check mqtt.client_id against the broker's rules"),
            _ => Diagnosis { what: format!("connect: refused ({code:?})"), hint: "see the broker's log for why it refused the connection" },
        };
    }
    if let Some(found) = from_causes(e, s) {
        return found;
    }
    match e {
        ConnectionError::NetworkTimeout => d("timed out waiting for the broker", "no CONNACK within mqtt.connect_timeout_secs: is this an MQTT listener, and the right transport (mqtt://, mqtts://, ws://, wss://)?"),
        ConnectionError::NotConnAck(_) => d("connect: the broker did not answer with a CONNACK", "is this an MQTT listener?"),
        ConnectionError::Websocket(_) | ConnectionError::WsConnect(_) | ConnectionError::ResponseValidation(_) => {
            Diagnosis { what: format!("websocket: {e}"), hint: "check the URL's path (often /mqtt) and that the listener speaks MQTT over WebSockets" }
        }
        ConnectionError::InvalidUrl(_) => d("websocket: invalid URL", "check mqtt.broker"),
        ConnectionError::Tls(_) => Diagnosis { what: format!("tls: {e}"), hint: "check mqtt.tls" },
        _ => Diagnosis { what: e.to_string(), hint: "the broker's log may say more" },
    }
}

fn diagnose_v5(e: &r5::ConnectionError, s: &MqttSettings) -> Diagnosis {
    if let r5::ConnectionError::ConnectionRefused(code) = e {
        let (what, hint) = super::v5::refused(code);
        let what = if what == "connect: refused" { format!("connect: refused ({code:?})") } else { what.to_string() };
        return Diagnosis { what, hint };
    }
    if let Some((what, hint)) = super::v5::server_disconnect(e) {
        return Diagnosis { what, hint };
    }
    if let Some(found) = from_causes(e, s) {
        return found;
    }
    let d = |what: &str, hint: &'static str| Diagnosis { what: what.to_string(), hint };
    match e {
        r5::ConnectionError::Timeout(_) => d("timed out waiting for the broker", "no CONNACK within mqtt.connect_timeout_secs: is this an MQTT listener, and the right transport (mqtt://, mqtts://, ws://, wss://)?"),
        r5::ConnectionError::NotConnAck(_) => d("connect: the broker did not answer with a CONNACK", "is this an MQTT listener? does it speak MQTT 5 (else set mqtt.protocol: \"3.1.1\")?"),
        r5::ConnectionError::Websocket(_) | r5::ConnectionError::WsConnect(_) | r5::ConnectionError::ResponseValidation(_) => {
            Diagnosis { what: format!("websocket: {e}"), hint: "check the URL's path (often /mqtt) and that the listener speaks MQTT over WebSockets" }
        }
        r5::ConnectionError::InvalidUrl(_) => d("websocket: invalid URL", "check mqtt.broker"),
        r5::ConnectionError::Tls(_) => Diagnosis { what: format!("tls: {e}"), hint: "check mqtt.tls" },
        _ => Diagnosis { what: e.to_string(), hint: "the broker's log may say more" },
    }
}

/// What the chain of causes says: the TLS files, a rustls error, an I/O error.
fn from_causes(e: &(dyn StdError + 'static), s: &MqttSettings) -> Option<Diagnosis> {
    let d = |what: &str, hint: &'static str| Diagnosis { what: what.to_string(), hint };
    if let Some(f) = causes(e).find_map(|c| c.downcast_ref::<super::tls::FilesError>()) {
        return Some(Diagnosis {
            what: format!("tls: {f}"),
            hint: "fix the file named: the TLS files are read again before every attempt, no restart needed",
        });
    }
    if let Some(tls) = rustls_cause(e) {
        return Some(tls_diagnosis(tls, s));
    }
    if let Some(io) = io_cause(e) {
        let transport_hint = if s.broker.transport.is_tls() {
            "the broker closed the connection during the TLS handshake: is it a TLS listener, and does it require a client certificate (mqtt.tls.cert_file/key_file)? The broker's log says why"
        } else {
            "the broker closed the connection: if it is a TLS listener use mqtts:// (or wss://) in mqtt.broker; the broker's log says why"
        };
        return Some(match io.kind() {
            io::ErrorKind::ConnectionRefused => d(
                "tcp: connection refused",
                "nothing listens there: check mqtt.broker (env MQTT_BROKER) and that the broker runs",
            ),
            io::ErrorKind::TimedOut => d(
                "tcp: timed out",
                "no answer within mqtt.connect_timeout_secs: check the address, firewalls and network policies",
            ),
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => {
                Diagnosis { what: format!("connection closed by the broker ({})", io.kind()), hint: transport_hint }
            }
            _ if io.to_string().contains("failed to lookup address") => {
                d("dns: the host name does not resolve", "check the host in mqtt.broker")
            }
            _ => Diagnosis {
                what: format!("i/o: {io}"),
                hint: "check mqtt.broker and the network; the broker's log may say more",
            },
        });
    }
    None
}

fn tls_diagnosis(e: &rustls::Error, s: &MqttSettings) -> Diagnosis {
    let ca_hint = if s.tls.as_ref().is_some_and(|t| t.ca_file.is_some()) {
        "the broker's certificate is not signed by a CA in mqtt.tls.ca_file: check that file"
    } else {
        "the broker's certificate is not signed by a CA the system trusts: set mqtt.tls.ca_file to the broker's CA"
    };
    let d = |what: &str, hint: &'static str| Diagnosis { what: what.to_string(), hint };
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => d("tls: the broker's certificate is not trusted", ca_hint),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                d("tls: the broker's certificate has expired", "renew the broker's certificate (and check this machine's clock)")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                d("tls: the broker's certificate is not valid yet", "check this machine's clock and the certificate's validity dates")
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => d(
                "tls: the broker's certificate does not name this host",
                "the host in mqtt.broker must be among the certificate's names (subjectAltName): connect by that name, or reissue the certificate",
            ),
            CertificateError::Revoked => d("tls: the broker's certificate is revoked", "the broker needs a new certificate"),
            other => Diagnosis { what: format!("tls: the broker's certificate is invalid ({other:?})"), hint: "check the broker's certificate chain" },
        },
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure if s.tls.as_ref().is_none_or(|t| t.client.is_none()) => d(
                "tls: the broker requires a client certificate",
                "set mqtt.tls.cert_file and mqtt.tls.key_file (mutual TLS)",
            ),
            AlertDescription::UnknownCA | AlertDescription::BadCertificate | AlertDescription::CertificateUnknown | AlertDescription::DecryptError => d(
                "tls: the broker rejected the client certificate",
                "the broker does not trust mqtt.tls.cert_file: it must be signed by a CA in the broker's cafile, and not expired",
            ),
            AlertDescription::CertificateExpired => d("tls: the broker says the client certificate has expired", "renew mqtt.tls.cert_file"),
            AlertDescription::ProtocolVersion => d("tls: no TLS version in common", "check mqtt.tls.min_version against the broker's tls_version"),
            other => Diagnosis { what: format!("tls: the broker ended the handshake ({other:?})"), hint: "the broker's log says why" },
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } | rustls::Error::InappropriateHandshakeMessage { .. } => {
            d("tls: the listener does not speak TLS", "use mqtt:// (or ws://) for a plain listener, or the broker's TLS port")
        }
        rustls::Error::PeerIncompatible(_) => Diagnosis { what: format!("tls: incompatible with the broker ({e})"), hint: "check mqtt.tls.min_version and the broker's TLS settings" },
        other => Diagnosis { what: format!("tls: {other}"), hint: "check mqtt.tls and the broker's TLS settings" },
    }
}

/// The rustls error somewhere in `e`'s chain. `io::Error` hides its payload from `source()` (it returns
/// the payload's own source), so each one is opened by hand.
fn rustls_cause<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    causes(e).find_map(|c| c.downcast_ref::<rustls::Error>())
}

fn io_cause<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a io::Error> {
    causes(e).find_map(|c| c.downcast_ref::<io::Error>())
}

/// `e`, its sources, and the payloads of the `io::Error`s among them.
fn causes<'a>(e: &'a (dyn StdError + 'static)) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    let mut next: Option<&'a (dyn StdError + 'static)> = Some(e);
    std::iter::from_fn(move || {
        let current = next?;
        next = hidden_cause(current).or_else(|| current.source());
        Some(current)
    })
    .take(16)
}

/// A cause `source()` does not give: an `io::Error`'s payload (it returns the payload's own source), and
/// the I/O error rumqttc's MQTT 5 codec wraps without naming it as the source (a TLS handshake's).
fn hidden_cause<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a (dyn StdError + 'static)> {
    if let Some(inner) = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
        return Some(inner as &(dyn StdError + 'static));
    }
    match e.downcast_ref::<r5::StateError>() {
        Some(r5::StateError::Deserialization(rumqttc::v5::mqttbytes::Error::Io(io))) => {
            Some(io as &(dyn StdError + 'static))
        }
        _ => None,
    }
}
