//! `mqtt-kafka-gateway probe [URL]`: asks an HTTP endpoint, by default the gateway's own `/readyz`, and
//! exits 0 on a 2xx answer, 1 on anything else (another status, no answer within the timeout). For
//! container health checks (compose `healthcheck`, Dockerfile `HEALTHCHECK`) in an image that has no
//! shell and no curl; Kubernetes keeps its own HTTP probes.

use std::time::Duration;

use crate::config::{Config, DEFAULT_HTTP_PORT};

/// The URL probed when none is given: `/readyz` on the port `config` listens on (127.0.0.1 when it
/// listens on every address), or the default port when there is no usable configuration.
pub fn default_url(config: Option<&Config>) -> String {
    let addr = config.and_then(|c| c.http);
    let (host, port) = match addr {
        Some(a) if a.ip().is_unspecified() && a.is_ipv6() => ("[::1]".to_string(), a.port()),
        Some(a) if a.ip().is_unspecified() => ("127.0.0.1".to_string(), a.port()),
        Some(a) if a.is_ipv6() => (format!("[{}]", a.ip()), a.port()),
        Some(a) => (a.ip().to_string(), a.port()),
        None => ("127.0.0.1".to_string(), DEFAULT_HTTP_PORT),
    };
    format!("http://{host}:{port}/readyz")
}

/// Asks `url` once, within `timeout`: the status on an answer, or why there is none.
pub async fn probe(url: &str, timeout: Duration) -> Result<u16, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if parsed.scheme() != "http" {
        return Err(format!("`{url}`: the probe speaks plain http (the gateway's own endpoints)"));
    }
    // Plain http only: reqwest is given an empty TLS configuration (aws-lc-rs), never used.
    let tls =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .build()
        .map_err(|e| format!("cannot make the HTTP client: {}", e.without_url()))?;
    match client.get(parsed).send().await {
        Ok(response) => Ok(response.status().as_u16()),
        Err(e) if e.is_timeout() => Err(format!("no answer within {} ms", timeout.as_millis())),
        Err(e) if e.is_connect() => Err("cannot connect (nothing listens there?)".to_string()),
        Err(e) => Err(format!("the request failed: {}", e.without_url())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_url_is_the_configured_port_on_loopback() {
        let load = |listen: &str| {
            let text = format!("http:\n  listen: '{listen}'\n");
            crate::config::load_from_str(std::path::Path::new("r.yaml"), &text, &crate::config::ProcessEnv).unwrap()
        };
        assert_eq!(default_url(None), "http://127.0.0.1:9180/readyz");
        assert_eq!(default_url(Some(&load("0.0.0.0:9200"))), "http://127.0.0.1:9200/readyz");
        assert_eq!(default_url(Some(&load("[::]:9200"))), "http://[::1]:9200/readyz");
        assert_eq!(default_url(Some(&load("10.1.2.3:9300"))), "http://10.1.2.3:9300/readyz");
    }

    #[tokio::test]
    async fn no_answer_and_bad_urls_are_named() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let e = probe(&format!("http://{free}/readyz"), Duration::from_secs(2)).await.unwrap_err();
        assert!(e.contains("cannot connect"), "{e}");
        assert!(probe("not a url", Duration::from_secs(1)).await.unwrap_err().contains("not a URL"));
        assert!(probe("https://127.0.0.1:1/", Duration::from_secs(1)).await.unwrap_err().contains("plain http"));
    }
}
