//! TLS for the MQTT connection (`mqtts://`, `wss://`): a rustls client configuration built from
//! `mqtt.tls`, the system's roots when no CA file is given, and the transport rumqttc is handed.
//!
//! The files are read at start (by the configuration's checks, so `validate` catches a bad one) and again
//! before every connection attempt: a certificate renewed in place (cert-manager, a Secret update) is
//! used from the next connection on, and a CA fixed after a failed handshake is picked up by the next
//! retry, without a restart. A connection already up keeps the certificates it was made with.
//!
//! Server names are always verified (the host in `mqtt.broker` must be in the broker certificate's
//! names); there is no opt-out: a test rig makes its own CA instead.

use crate::config::tls::client_config;
use crate::config::{MqttSettings, MqttTls, TlsVersion, Transport};
use rumqttc::{TlsConfiguration, Transport as MqttTransport};

/// The TLS files cannot be used: the connection attempt is not made (and is retried after the backoff).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FilesError(pub String);

/// The transport to hand rumqttc, with TLS files read now.
pub fn transport(s: &MqttSettings) -> Result<MqttTransport, String> {
    let tls = || -> Result<TlsConfiguration, String> {
        let config = match &s.tls {
            Some(t) => client_config(t)?,
            None => client_config(&MqttTls { ca_file: None, client: None, min_version: TlsVersion::V1_2 })?,
        };
        Ok(TlsConfiguration::Rustls(config))
    };
    Ok(match s.broker.transport {
        Transport::Tcp => MqttTransport::Tcp,
        Transport::Tls => MqttTransport::Tls(tls()?),
        Transport::Ws => MqttTransport::Ws,
        Transport::Wss => MqttTransport::Wss(tls()?),
    })
}
