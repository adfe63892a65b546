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

use std::sync::Arc;

use rumqttc::{TlsConfiguration, Transport as MqttTransport};
use rustls::{ClientConfig, RootCertStore};

use crate::config::pem::{read_ca, read_client_identity};
use crate::config::{MqttSettings, MqttTls, TlsVersion, Transport};

/// The TLS files cannot be used: the connection attempt is not made (and is retried after the backoff).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FilesError(pub String);

/// The rustls configuration for `tls`, from the files as they are now.
pub fn client_config(tls: &MqttTls) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            for cert in read_ca(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("a certificate in `{}` is not a usable CA: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "a system CA certificate could not be loaded");
            }
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err("no system CA certificates found; set mqtt.tls.ca_file (or install ca-certificates)".into());
            }
        }
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(roots);
    let config = match &tls.client {
        Some((cert, key)) => {
            let (certs, key_der) = read_client_identity(cert, key)?;
            builder.with_client_auth_cert(certs, key_der).map_err(|e| {
                format!(
                    "the client certificate `{}` and key `{}` do not go together: {e}",
                    cert.display(),
                    key.display()
                )
            })?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

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
