//! The rustls client configuration made from a `tls` section (`mqtt.tls`, `schema_registry.tls`): our CA
//! or the system's roots, a client certificate for mutual TLS, the version floor; aws-lc-rs as the
//! crypto provider, the one TLS stack of the gateway's own clients. Built from the files as they are at
//! that moment: the MQTT edge builds it before every connection attempt (a certificate renewed in place
//! is used from the next one on); the registry client once, at start.

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};

use super::pem::{read_ca, read_client_identity};
use super::{MqttTls, TlsVersion};

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
                return Err("no system CA certificates found; set tls.ca_file (or install ca-certificates)".into());
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
