//! librdkafka's connection errors in an operator's words: authentication and TLS failures get what
//! failed and what to check. librdkafka keeps retrying them itself (with its reconnect backoff); the
//! gateway keeps running and readiness names the cause.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::ops::diagnosis::Diagnosis;

/// What an error event from librdkafka means, when it is one an operator must fix (credentials,
/// certificates, protocol); `None` for the rest (a broker down, a timeout), which explain themselves.
pub fn diagnose(error: &KafkaError, reason: &str) -> Option<Diagnosis> {
    let r = reason.to_ascii_lowercase();
    let d = |what: &str, hint: &'static str| Some(Diagnosis { what: what.to_string(), hint });
    let code = error.rdkafka_error_code();
    if r.contains("unsupported sasl mechanism") || r.contains("no supported sasl mechanism") {
        return d(
            "sasl: the broker does not offer this mechanism",
            "set kafka.sasl.mechanism to one the broker's listener enables (librdkafka's message lists them)",
        );
    }
    if r.contains("oidc") || r.contains("token endpoint") || r.contains("oauthbearer") {
        return d(
            "sasl: cannot get an OAUTHBEARER token",
            "check kafka.sasl.oauthbearer (token_endpoint_url, client_id, client_secret / client_secret_file, scope) against the identity provider",
        );
    }
    if code == Some(RDKafkaErrorCode::Authentication)
        || r.contains("sasl authentication error")
        || r.contains("authentication failed")
    {
        return d(
            "sasl: authentication failed",
            "check kafka.sasl.username and kafka.sasl.password / password_file (env KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD) and kafka.sasl.mechanism against the broker's users",
        );
    }
    if r.contains("certificate verify failed") {
        if r.contains("hostname mismatch") || r.contains("ip address mismatch") {
            return d(
                "tls: the broker's certificate does not name this host",
                "the host in kafka.bootstrap_servers (and the advertised listeners) must be among the certificate's names",
            );
        }
        if r.contains("expired") {
            return d(
                "tls: the broker's certificate has expired",
                "renew the broker's certificate (and check this machine's clock)",
            );
        }
        return d(
            "tls: the broker's certificate is not trusted",
            "set kafka.tls.ca_file to the CA that signed the broker's certificate (unset, the system's roots are used)",
        );
    }
    if r.contains("ssl handshake failed")
        || r.contains("ssl routines")
        || r.contains("ssl alert")
        || code == Some(RDKafkaErrorCode::SSL)
    {
        if r.contains("wrong version number")
            || r.contains("packet length too long")
            || r.contains("record layer failure")
        {
            return d(
                "tls: the listener does not speak TLS",
                "check kafka.security_protocol against the listener (PLAINTEXT or SASL_PLAINTEXT there)",
            );
        }
        if r.contains("certificate required")
            || r.contains("handshake failure")
            || r.contains("bad certificate")
            || r.contains("unknown ca")
        {
            return d(
                "tls: the broker rejected the client certificate",
                "the listener requires a client certificate signed by a CA it trusts: check kafka.tls.cert_file and kafka.tls.key_file",
            );
        }
        return d(
            "tls: handshake failed",
            "check kafka.security_protocol and kafka.tls against the listener; librdkafka's message says more",
        );
    }
    if r.contains("incorrect security.protocol")
        || r.contains("connecting to a ssl listener")
        || r.contains("connecting to a plaintext listener")
    {
        return d(
            "the protocol does not match the listener",
            "check kafka.security_protocol (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL) against the broker's listener",
        );
    }
    if r.contains("ssl.key") || r.contains("private key") || r.contains("ssl_ctx") {
        return d(
            "tls: the client certificate or key cannot be used",
            "check kafka.tls.cert_file, key_file and key_password",
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn what(code: RDKafkaErrorCode, reason: &str) -> Option<String> {
        diagnose(&KafkaError::Global(code), reason).map(|d| d.what)
    }

    #[test]
    fn librdkafka_messages_are_sorted() {
        use RDKafkaErrorCode::*;
        let auth = "sasl_ssl://127.0.0.1:9094/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 (after 3ms in state AUTH_REQ)";
        assert_eq!(what(Authentication, auth).as_deref(), Some("sasl: authentication failed"));
        let untrusted = "ssl://127.0.0.1:9095/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured (after 4ms in state SSL_HANDSHAKE)";
        assert_eq!(what(SSL, untrusted).as_deref(), Some("tls: the broker's certificate is not trusted"));
        let expired = "ssl://h:1/bootstrap: SSL handshake failed: certificate verify failed: certificate has expired";
        assert_eq!(what(SSL, expired).as_deref(), Some("tls: the broker's certificate has expired"));
        let mechanism = "sasl_ssl://h:1/bootstrap: Unsupported SASL mechanism: broker's supported mechanisms: PLAIN";
        assert_eq!(what(Authentication, mechanism).as_deref(), Some("sasl: the broker does not offer this mechanism"));
        let no_client_cert = "ssl://127.0.0.1:38687/bootstrap: Receive failed: error:0A000412:SSL routines::sslv3 alert bad certificate: SSL alert number 42 (after 0ms in state APIVERSION_QUERY)";
        assert_eq!(
            what(BrokerTransportFailure, no_client_cert).as_deref(),
            Some("tls: the broker rejected the client certificate")
        );
        assert_eq!(what(AllBrokersDown, "1/1 brokers are down"), None);
        assert_eq!(
            what(
                BrokerTransportFailure,
                "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused"
            ),
            None
        );
    }
}
