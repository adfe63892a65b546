//! PEM files read for TLS: CA certificates, a client certificate and its key. The configuration's checks
//! read them at load (so `validate` catches a bad one) and the MQTT edge again before every connection
//! attempt (so a renewed certificate is used without a restart).

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The CA certificates of a PEM file.
pub fn read_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = read_certs(path)?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// A client certificate chain and its key.
pub fn read_client_identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let certs = read_certs(cert)?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no PEM certificate", cert.display()));
    }
    let text = std::fs::read(key).map_err(|e| format!("cannot read `{}`: {e}", key.display()))?;
    if text.windows(9).any(|w| w == b"ENCRYPTED") {
        return Err(format!(
            "the key in `{}` is encrypted; the MQTT client needs it unencrypted (PKCS#8, PKCS#1 or SEC1)",
            key.display()
        ));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&text).map_err(|e| format!("no PEM private key in `{}` ({e})", key.display()))?;
    Ok((certs, key))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    iter.collect::<Result<Vec<_>, _>>().map_err(|e| format!("`{}` is not valid PEM: {e}", path.display()))
}

/// Whether `key` is the private key of the first certificate of `certs`.
pub fn check_pair(certs: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<(), String> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing_key = provider.key_provider.load_private_key(key).map_err(|e| e.to_string())?;
    rustls::sign::CertifiedKey::new(certs, signing_key).keys_match().map_err(|e| e.to_string())
}
