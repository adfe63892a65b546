//! A small client of Confluent's Schema Registry REST API: a subject's version, a schema by id,
//! registering a schema. Basic auth and TLS as
//! configured; one request at a time is all the gateway needs (schemas are fetched on load, on refresh
//! and for a new subject, never per record).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

use crate::config::{MqttTls, RegistrySettings, TlsVersion};
use crate::core::encoding::{EncodingKind, SchemaVersion};
use crate::ops::metrics::Metrics;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Why a request did not give an answer the gateway can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// No answer: connection refused, DNS, TLS handshake, timeout.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// 401 or 403: the credentials were refused.
    #[error("refused the credentials (HTTP {0}): {1}")]
    Unauthorized(u16, String),
    /// 404: no such subject, version or id.
    #[error("{0}")]
    NotFound(String),
    /// Another 4xx: the request was refused (an incompatible or invalid schema, say).
    #[error("refused the request (HTTP {0}): {1}")]
    Refused(u16, String),
    /// 5xx, or an answer that is not what the API promises.
    #[error("failed (HTTP {0}): {1}")]
    Server(u16, String),
}

impl RegistryError {
    /// Worth asking again later: the registry may come back, or its credentials be fixed.
    pub fn is_transient(&self) -> bool {
        matches!(self, RegistryError::Unreachable(_) | RegistryError::Unauthorized(..) | RegistryError::Server(..))
    }
}

/// A schema as the registry returns it.
#[derive(Debug, Clone, Deserialize)]
pub struct Answer {
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub id: Option<u32>,
    #[serde(default)]
    pub version: Option<u32>,
    pub schema: String,
    #[serde(default, rename = "schemaType")]
    pub schema_type: Option<String>,
    #[serde(default)]
    pub references: Vec<Reference>,
}

impl Answer {
    pub fn kind(&self) -> Option<EncodingKind> {
        EncodingKind::from_registry_type(self.schema_type.as_deref())
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct Reference {
    pub name: String,
    pub subject: String,
    pub version: u32,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct IdBody {
    id: u32,
}

/// The registry at `settings.url`.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    credentials: Option<(String, String)>,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base.as_str()).finish()
    }
}

impl Client {
    /// A client for `settings`; the TLS files are read now. Err: why it cannot be made (a bad URL or
    /// TLS file), in words.
    pub fn new(settings: &RegistrySettings, metrics: Option<Arc<Metrics>>) -> Result<Client, String> {
        let mut base = Url::parse(&settings.url).map_err(|e| format!("schema_registry.url `{}`: {e}", settings.url))?;
        if !base.username().is_empty() || base.password().is_some() {
            return Err(
                "schema_registry.url must not hold credentials; use schema_registry.username and password".into()
            );
        }
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        // One TLS stack: the same rustls configuration (aws-lc-rs) as the MQTT connection's. A plain
        // http:// registry gets one too, unused, so that nothing falls back to a process-wide default.
        let tls = match (&settings.tls, base.scheme()) {
            (Some(t), _) => crate::config::tls::client_config(t)?,
            (None, "https") => crate::config::tls::client_config(&MqttTls {
                ca_file: None,
                client: None,
                min_version: TlsVersion::V1_2,
            })?,
            (None, _) => Arc::new(
                rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                    .with_safe_default_protocol_versions()
                    .map_err(|e| format!("TLS: {e}"))?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
        };
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls).clone())
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(std::time::Duration::from_secs(5)))
            .user_agent(concat!("mqtt-kafka-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot make the Schema Registry client: {}", e.without_url()))?;
        let credentials = settings.credentials.as_ref().map(|(u, p)| (u.clone(), p.expose().to_string()));
        Ok(Client { http, base, credentials, metrics })
    }

    /// The registry's address, for messages.
    pub fn url(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `version` of `subject`.
    pub async fn version(&self, subject: &str, version: SchemaVersion) -> Result<Answer, RegistryError> {
        let v = version.to_string();
        let answer: Answer = self.call(Method::GET, &["subjects", subject, "versions", &v], None).await?;
        Ok(answer)
    }

    /// The schema with `id`.
    pub async fn by_id(&self, id: u32) -> Result<Answer, RegistryError> {
        let mut answer: Answer = self.call(Method::GET, &["schemas", "ids", &id.to_string()], None).await?;
        answer.id = Some(id);
        Ok(answer)
    }

    /// Registers `schema` under `subject` (or finds it there); its id.
    pub async fn register(&self, subject: &str, kind: EncodingKind, schema: &str) -> Result<u32, RegistryError> {
        let mut body = serde_json::json!({ "schema": schema });
        if let Some(t) = kind.registry_type().filter(|t| *t != "AVRO") {
            body["schemaType"] = serde_json::json!(t);
        }
        let id: IdBody = self.call(Method::POST, &["subjects", subject, "versions"], Some(body)).await?;
        Ok(id.id)
    }

    /// The subjects the registry has (`check` uses it to see that the credentials work).
    pub async fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        self.call(Method::GET, &["subjects"], None).await
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        method: Method,
        path: &[&str],
        body: Option<serde_json::Value>,
    ) -> Result<T, RegistryError> {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            // Encodes each segment: a subject may hold `/`, `?` or spaces.
            segments.pop_if_empty().extend(path);
        }
        let mut request = self.http.request(method, url).header(reqwest::header::ACCEPT, CONTENT_TYPE);
        if let Some((user, password)) = &self.credentials {
            request = request.basic_auth(user, Some(password));
        }
        if let Some(body) = body {
            request = request.header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE).body(body.to_string());
        }
        let started = Instant::now();
        let result = self.answer(request).await;
        if let Some(m) = &self.metrics {
            m.registry_requests.fetch_add(1, Relaxed);
            m.registry_request_us.fetch_add(started.elapsed().as_micros() as u64, Relaxed);
            if result.is_err() {
                m.registry_errors.fetch_add(1, Relaxed);
            }
        }
        result
    }

    async fn answer<T: for<'de> Deserialize<'de>>(&self, request: reqwest::RequestBuilder) -> Result<T, RegistryError> {
        let response = request.send().await.map_err(|e| RegistryError::Unreachable(describe(&e)))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| RegistryError::Unreachable(describe(&e)))?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|e| {
                RegistryError::Server(status.as_u16(), format!("an answer that is not the registry's API: {e}"))
            });
        }
        let body = serde_json::from_str::<ErrorBody>(&text).ok();
        let code = body.as_ref().and_then(|b| b.error_code);
        let message = body
            .and_then(|b| b.message)
            .unwrap_or_else(|| text.chars().take(200).collect::<String>().trim().to_string());
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RegistryError::Unauthorized(status.as_u16(), message),
            // The registry's own "not found" (40401 subject, 40402 version, 40403 schema); a 404 without it
            // is something else answering (a proxy, a wrong path), not an absent subject.
            StatusCode::NOT_FOUND if code.is_some_and(|c| (40400..40500).contains(&c)) => RegistryError::NotFound(message),
            StatusCode::NOT_FOUND => RegistryError::Server(
                404,
                format!("not found, without a registry error code: is schema_registry.url the registry's address? ({message})"),
            ),
            // Throttled or timed out: worth asking again.
            StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => RegistryError::Server(status.as_u16(), message),
            s if s.is_client_error() => RegistryError::Refused(s.as_u16(), message),
            s => RegistryError::Server(s.as_u16(), message),
        })
    }
}

/// A reqwest error in words, with its causes (the connection refused, the certificate not trusted).
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut out = if e.is_timeout() { "timed out".to_string() } else { String::new() };
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&s_text);
        }
        source = s.source();
    }
    if out.is_empty() {
        out = if e.is_connect() { "cannot connect".to_string() } else { "the request failed".to_string() };
    }
    out
}
