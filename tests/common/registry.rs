//! A Confluent-compatible Schema Registry per test, and a decoder for record values in Confluent's wire
//! format (magic byte 0, 4-byte big-endian schema id, [protobuf message indexes], payload).
//!
//! * [`SchemaRegistry`]: `tests/tools/schema-registry`, franz-go's in-memory registry (srfake) with HTTP
//!   basic auth answered as Confluent's registry does (401, `{"error_code":401,"message":"Unauthorized"}`),
//!   compatibility enforced when an Avro schema is registered (409 when refused; Protobuf and JSON Schema
//!   are registered unchecked), and protobuf schemas served in the `serialized` format too. It runs as a
//!   child process on a loopback port, killed on [`SchemaRegistry::stop`] or drop. Schemas live in its
//!   memory only: a registry stopped and started again on the same port ([`SchemaRegistry::start_on`])
//!   has forgotten them all, and its ids start at 1 again.
//! * [`decode`]: confluent-kafka's own Avro, Protobuf and JSON Schema deserializers
//!   (`tests/tools/sr_decode.py`), so what the gateway writes is read by code it shares nothing with.
//!
//! `scripts/install-test-tools.sh` (which `scripts/test.sh` runs) builds the registry into
//! `$MKG_CACHE_DIR/bin` and the Python venv into `$MKG_CACHE_DIR/py`; a missing or outdated one fails
//! the test with that command, never skips it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;

use super::tools::{cache_dir, go_tool, INSTALL_HINT};
use super::{free_port, repo_root, wait_until};

/// The registry binary (see [`go_tool`]).
fn registry_binary() -> PathBuf {
    go_tool("schema-registry")
}

/// The venv's Python, made from the current `tests/tools/requirements.txt` (the venv keeps a copy).
fn python() -> PathBuf {
    let venv = cache_dir().join("py");
    let py = venv.join("bin/python");
    assert!(py.exists(), "{} is missing: {INSTALL_HINT}", py.display());
    let wanted =
        std::fs::read(repo_root().join("tests/tools/requirements.txt")).expect("read tests/tools/requirements.txt");
    let installed = std::fs::read(venv.join("requirements.txt")).unwrap_or_default();
    assert!(
        wanted == installed,
        "{} was made from other requirements than tests/tools/requirements.txt: {INSTALL_HINT}",
        venv.display()
    );
    py
}

/// Percent-encodes a subject for a URL path (`/` included, which a subject may contain).
fn encode_path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The body of a `Transfer-Encoding: chunked` answer, joined.
fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let end = raw.windows(2).position(|w| w == b"\r\n").ok_or("truncated chunk size")?;
        let size_line = std::str::from_utf8(&raw[..end]).map_err(|e| e.to_string())?;
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("bad chunk size {size_line:?}: {e}"))?;
        raw = &raw[end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if raw.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        body.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// A plain or TLS connection to the registry.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// The registry process; killed on [`SchemaRegistry::stop`] and on drop.
pub struct SchemaRegistry {
    child: Option<Child>,
    port: u16,
    auth: Option<(String, String)>,
    /// Its stdout: "listening on ...", then one "request METHOD URI STATUS" per request.
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// For an HTTPS registry: how the harness's own requests connect (the test CA, and the client
    /// certificate when the registry asks for one).
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl SchemaRegistry {
    /// A registry serving HTTPS with `pki`'s server certificate (for 127.0.0.1 and localhost); with
    /// `mutual`, it also requires a client certificate from `pki`'s CA. Its URL names `localhost`.
    pub fn start_tls(pki: &super::Pki, mutual: bool) -> Self {
        use mqtt_kafka_gateway::config::{MqttTls, TlsVersion};
        let client = mutual.then(|| (pki.client_rsa_cert(), pki.client_rsa_key_pkcs8()));
        let config = mqtt_kafka_gateway::config::tls::client_config(&MqttTls {
            ca_file: Some(pki.ca_pem()),
            client,
            min_version: TlsVersion::V1_2,
        })
        .expect("the harness's TLS client configuration");
        let mut args = vec![
            "-cert".to_string(),
            pki.server_cert().display().to_string(),
            "-key".to_string(),
            pki.server_key().display().to_string(),
        ];
        if mutual {
            args.extend(["-client-ca".to_string(), pki.ca_pem().display().to_string()]);
        }
        Self::launch(free_port(), None, &args, Some(config))
    }

    /// A registry without auth on a free loopback port.
    pub fn start() -> Self {
        Self::start_on(free_port(), None)
    }

    /// A registry that refuses (401) every request without HTTP basic auth as `user`:`password`.
    pub fn start_with_auth(user: &str, password: &str) -> Self {
        Self::start_on(free_port(), Some((user, password)))
    }

    /// A registry on `port`, for a registry down when the gateway starts and up later, or one restarted
    /// on the port it had (empty again: see the module doc). Waits until it answers.
    pub fn start_on(port: u16, auth: Option<(&str, &str)>) -> Self {
        Self::launch(port, auth, &[], None)
    }

    fn launch(port: u16, auth: Option<(&str, &str)>, args: &[String], tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        let bin = registry_binary();
        let mut cmd = Command::new(&bin);
        cmd.arg("-listen").arg(format!("127.0.0.1:{port}")).args(args);
        if let Some((user, password)) = auth {
            cmd.args(["-user", user, "-password", password]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL_HINT}", bin.display()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        for (pipe, sink) in [
            (Box::new(child.stdout.take().expect("registry stdout")) as Box<dyn Read + Send>, &stdout),
            (Box::new(child.stderr.take().expect("registry stderr")) as Box<dyn Read + Send>, &stderr),
        ] {
            let sink = Arc::clone(sink);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        let mut registry = SchemaRegistry {
            child: None,
            port,
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
            stdout,
            stderr,
            tls,
        };
        let mut exited = None;
        let up = wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                return true;
            }
            // Its own line first: something else answering on the port must not pass for it.
            let bound = registry.stdout.lock().unwrap().iter().any(|l| l.starts_with("listening on "));
            bound && registry.request("GET", "/config", None).is_ok()
        });
        if let Some(status) = exited {
            // Give the reader threads a moment to collect what it said before it died.
            std::thread::sleep(Duration::from_millis(100));
            panic!("the schema registry on 127.0.0.1:{port} exited ({status}):\n{}", registry.output());
        }
        registry.child = Some(child);
        assert!(up, "the schema registry did not answer on 127.0.0.1:{port} within 10 s:\n{}", registry.output());
        registry
    }

    pub fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("https://localhost:{}", self.port),
            None => format!("http://127.0.0.1:{}", self.port),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The credentials it requires, if any.
    pub fn auth(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// Kills the process (its schemas go with it); nothing answers on the port afterwards.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The requests answered so far, oldest first, as "METHOD URI STATUS"
    /// (e.g. "GET /schemas/ids/1?subject=t-value 200"), the harness's own included.
    pub fn requests(&self) -> Vec<String> {
        let lines = self.stdout.lock().unwrap();
        lines.iter().filter_map(|l| l.strip_prefix("request ")).map(str::to_string).collect()
    }

    /// What the process printed, for failure messages.
    pub fn output(&self) -> String {
        let out = self.stdout.lock().unwrap();
        let err = self.stderr.lock().unwrap();
        let mut text = String::new();
        for line in out.iter().rev().take(40).rev().chain(err.iter()) {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    /// One request with the registry's credentials (if any), over a fresh `Connection: close` HTTP/1.1
    /// connection: the status and body, or why nothing answered.
    pub fn request(&self, method: &str, path: &str, body: Option<&serde_json::Value>) -> Result<(u16, String), String> {
        self.request_as(self.auth(), method, path, body)
    }

    /// Like [`SchemaRegistry::request`] with other credentials, or none.
    pub fn request_as(
        &self,
        auth: Option<(&str, &str)>,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, String), String> {
        let addr = format!("127.0.0.1:{}", self.port);
        let tcp = TcpStream::connect(&addr).map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        let mut s: Box<dyn ReadWrite> = match &self.tls {
            None => Box::new(tcp),
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("a server name");
                let conn = rustls::ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
                Box::new(rustls::StreamOwned::new(conn, tcp))
            }
        };
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Accept: application/vnd.schemaregistry.v1+json, application/json\r\n"
        );
        if let Some((user, password)) = auth {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            head.push_str(&format!("Authorization: Basic {token}\r\n"));
        }
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        if body.is_some() {
            head.push_str(&format!(
                "Content-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\n",
                payload.len()
            ));
        }
        head.push_str("\r\n");
        // One write: the server may answer (a 401) as soon as it has the head.
        head.push_str(&payload);
        s.write_all(head.as_bytes()).map_err(|e| format!("send to {addr}: {e}"))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(|e| format!("read the answer from {addr}: {e}"))?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| format!("no complete HTTP answer from {addr}: {:?}", String::from_utf8_lossy(&raw)))?;
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status in {head:?}"))?;
        let chunked = head.lines().any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("transfer-encoding") && v.trim().eq_ignore_ascii_case("chunked")
            })
        });
        let rest = &raw[split + 4..];
        let body = if chunked { dechunk(rest)? } else { rest.to_vec() };
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// GETs `path` and parses the answer as JSON; panics if nothing answers or the answer is not JSON.
    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, body) = self.request("GET", path, None).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let json =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {status}, not JSON ({e}): {body}"));
        (status, json)
    }

    /// The latest version registered under `subject` (`subject`, `version`, `id`, `schema`,
    /// `schemaType` for other than Avro, `references`), or `None` when the subject has none.
    pub fn latest(&self, subject: &str) -> Option<serde_json::Value> {
        let (status, json) = self.get(&format!("/subjects/{}/versions/latest", encode_path_segment(subject)));
        match status {
            200 => Some(json),
            404 => None,
            _ => panic!("latest version of {subject}: {status} {json}"),
        }
    }

    /// Registers `schema` under `subject` (`schema_type` "AVRO" | "PROTOBUF" | "JSON") and returns its
    /// id; the id it already has when the subject holds it. Panics with the registry's answer on failure.
    pub fn register(&self, subject: &str, schema_type: &str, schema: &str) -> u32 {
        self.register_with_refs(subject, schema_type, schema, &[])
    }

    /// Like [`SchemaRegistry::register`], with references `(name, subject, version)`: for Avro the
    /// name is the referenced type's full name, for Protobuf the path it is imported by, for JSON Schema
    /// the URL its `$ref` uses.
    pub fn register_with_refs(
        &self,
        subject: &str,
        schema_type: &str,
        schema: &str,
        refs: &[(&str, &str, u32)],
    ) -> u32 {
        self.try_register_with_refs(subject, schema_type, schema, refs)
            .unwrap_or_else(|e| panic!("registering a {schema_type} schema under {subject} failed: {e}\n{schema}"))
    }

    /// Like [`SchemaRegistry::register`], returning the refusal ("409: {...}" when incompatible, "422: ..."
    /// when invalid) instead of panicking.
    pub fn try_register(&self, subject: &str, schema_type: &str, schema: &str) -> Result<u32, String> {
        self.try_register_with_refs(subject, schema_type, schema, &[])
    }

    pub fn try_register_with_refs(
        &self,
        subject: &str,
        schema_type: &str,
        schema: &str,
        refs: &[(&str, &str, u32)],
    ) -> Result<u32, String> {
        let references: Vec<serde_json::Value> = refs
            .iter()
            .map(|(name, subject, version)| serde_json::json!({"name": name, "subject": subject, "version": version}))
            .collect();
        let mut body = serde_json::json!({"schema": schema, "schemaType": schema_type});
        if !references.is_empty() {
            body["references"] = serde_json::Value::Array(references);
        }
        let path = format!("/subjects/{}/versions", encode_path_segment(subject));
        let (status, answer) = self.request("POST", &path, Some(&body))?;
        if status != 200 {
            return Err(format!("{status}: {}", answer.trim()));
        }
        let json: serde_json::Value =
            serde_json::from_str(&answer).map_err(|e| format!("200 without JSON ({e}): {answer}"))?;
        json["id"].as_u64().and_then(|id| u32::try_from(id).ok()).ok_or_else(|| format!("200 without an id: {answer}"))
    }

    /// Sets the compatibility level ("BACKWARD", "FORWARD", "FULL", their "_TRANSITIVE" forms, "NONE") of
    /// `subject`, or the global default with `None`. The default is BACKWARD.
    pub fn set_compatibility(&self, subject: Option<&str>, level: &str) {
        let path = match subject {
            Some(s) => format!("/config/{}", encode_path_segment(s)),
            None => "/config".to_string(),
        };
        let body = serde_json::json!({ "compatibility": level });
        match self.request("PUT", &path, Some(&body)) {
            Ok((200, _)) => {}
            Ok((status, answer)) => panic!("PUT {path} {body}: {status} {answer}"),
            Err(e) => panic!("PUT {path}: {e}"),
        }
    }
}

impl Drop for SchemaRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A record value decoded by confluent-kafka.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The id in the record's framing.
    pub schema_id: u32,
    /// The value as JSON: datetimes as RFC 3339, decimals as strings, bytes as base64; protobuf through
    /// protobuf's JSON mapping with the .proto field names (64-bit integers as strings, proto3 fields at
    /// their default value left out).
    pub value: serde_json::Value,
    /// Protobuf only: the message indexes in the framing (`[0]` for the first message of the file).
    pub message_indexes: Option<Vec<i64>>,
}

/// How to decode: the writer's schema always comes from the registry, by the id in each record.
#[derive(Debug, Clone, Copy)]
pub enum DecodeFormat<'a> {
    Avro,
    /// `message` (e.g. "Reading", or "pkg.Reading", or "Outer.Inner") of the .proto file `proto`, from
    /// which protoc generates the class; the indexes in each record must name that message. Files it
    /// imports are looked up next to it.
    Protobuf {
        proto: &'a Path,
        message: &'a str,
    },
    /// Validated against the registry's schema, or against `schema` (a reader schema) when given.
    Json {
        schema: Option<&'a Path>,
    },
}

/// Decodes record values with confluent-kafka's deserializers and the registry's credentials, looking
/// each schema up by its id alone. One answer per value, in order: the decoded value, or the
/// deserializer's error (e.g. "SchemaRegistryError: Unauthorized (HTTP status code 401, ...)").
pub fn decode(registry: &SchemaRegistry, format: DecodeFormat, values: &[Vec<u8>]) -> Vec<Result<Decoded, String>> {
    decode_at(&registry.url(), registry.auth(), format, None, values)
}

/// Like [`decode`], as a consumer of `topic` decodes: the subject is `<topic>-value`, and the registry
/// answers only for an id registered under it.
pub fn decode_for_topic(
    registry: &SchemaRegistry,
    format: DecodeFormat,
    topic: &str,
    values: &[Vec<u8>],
) -> Vec<Result<Decoded, String>> {
    decode_at(&registry.url(), registry.auth(), format, Some(topic), values)
}

/// Like [`decode`] against any registry URL with any credentials (or none).
pub fn decode_at(
    url: &str,
    auth: Option<(&str, &str)>,
    format: DecodeFormat,
    topic: Option<&str>,
    values: &[Vec<u8>],
) -> Vec<Result<Decoded, String>> {
    let mut cmd = Command::new(python());
    cmd.arg(repo_root().join("tests/tools/sr_decode.py")).args(["--registry", url]);
    if let Some((user, password)) = auth {
        cmd.args(["--user", user, "--password", password]);
    }
    match format {
        DecodeFormat::Avro => {
            cmd.args(["--format", "avro"]);
        }
        DecodeFormat::Protobuf { proto, message } => {
            cmd.args(["--format", "protobuf", "--proto"]).arg(proto).args(["--message", message]);
        }
        DecodeFormat::Json { schema } => {
            cmd.args(["--format", "json"]);
            if let Some(schema) = schema {
                cmd.arg("--schema").arg(schema);
            }
        }
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run tests/tools/sr_decode.py: {e}; {INSTALL_HINT}"));
    let input: String = values
        .iter()
        .map(|v| {
            let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
            let mut line = serde_json::json!({ "value_hex": hex });
            if let Some(topic) = topic {
                line["topic"] = topic.into();
            }
            line.to_string() + "\n"
        })
        .collect();
    let mut stdin = child.stdin.take().expect("decoder stdin");
    // Written from another thread: with many values the decoder's answers could fill the pipe first.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("decoder output");
    let _ = writer.join();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tests/tools/sr_decode.py failed ({}):\n{stderr}", out.status);
    let answers: Vec<Result<Decoded, String>> = stdout
        .lines()
        .map(|line| {
            let json: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("decoder answer is not JSON ({e}): {line}"));
            if let Some(error) = json.get("error") {
                return Err(error.as_str().unwrap_or_default().to_string());
            }
            let schema_id = json["schema_id"]
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .unwrap_or_else(|| panic!("decoder answer without a schema id: {line}"));
            let message_indexes = json
                .get("message_indexes")
                .and_then(|m| m.as_array())
                .map(|a| a.iter().filter_map(|i| i.as_i64()).collect());
            Ok(Decoded { schema_id, value: json["value"].clone(), message_indexes })
        })
        .collect();
    assert_eq!(answers.len(), values.len(), "one answer per value expected; decoder said:\n{stdout}\n{stderr}");
    answers
}
