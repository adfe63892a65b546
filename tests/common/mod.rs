//! Shared harness for the integration tests in `tests/*.rs` (`mod common;`).
//!
//! * [`Mosquitto`]: a throw-away Mosquitto broker per test, on a free port.
//! * [`kafka()`]: one single-node KRaft Kafka broker per test binary, shared by
//!   all its tests; create a fresh topic per test with [`unique_topic`].
//! * [`Gateway`]: the gateway binary as a child process, with its log captured.
//! * [`Config`], [`Route`]: a gateway configuration file built in code.
//! * [`mosquitto_pub`], [`Subscriber`]: the Mosquitto command-line clients.
//! * [`Pki`]: a CA, server and client certificates made with `openssl` at test time.
//! * [`MosquittoTls`]: one Mosquitto with plain, TLS, mTLS, ws and wss listeners.
//! * [`SecureKafka`]: a dedicated Kafka with SASL_SSL and SSL (mTLS) listeners too.
//! * [`Mochi`]: a second MQTT 5 broker (Mochi MQTT), for the refusals Mosquitto cannot show.
//! * [`SchemaRegistry`]: an in-memory Confluent-compatible Schema Registry per test, and [`decode`], which
//!   reads record values in Confluent's wire format with confluent-kafka's own deserializers.
//!
//! Mosquitto and Kafka are real servers installed by `scripts/install-mosquitto.sh`
//! and `scripts/install-kafka.sh` (`scripts/test.sh` runs both); a missing one
//! fails the test with the command to run, never skips it.
#![allow(dead_code)]
// Re-exports that a given test binary does not use are fine.
#![allow(unused_imports)]

mod config;
mod gateway;
pub mod http;
mod kafka;
mod kafka_secure;
mod mochi;
mod mosquitto;
mod mosquitto_tls;
mod oidc;
pub mod pki;
pub mod prom;
pub mod registry;
pub mod stream;
pub mod tools;

pub use config::{Config, Route};
pub use gateway::Gateway;
pub use kafka::{kafka, unique_topic, Kafka, Record};
pub use kafka_secure::{SecureKafka, PLAIN_USER, SCRAM_USER};
pub use mochi::Mochi;
pub use mosquitto::{mosquitto_pub, mosquitto_pub_with, try_mosquitto_pub, Mosquitto, Subscriber};
pub use mosquitto_tls::{ws_mqtt_connect, wss_mqtt_connect, MosquittoTls, ServerCert, TlsOptions, WsHandshake};
pub use oidc::TokenEndpoint;
pub use pki::Pki;
pub use registry::{decode, decode_at, decode_for_topic, DecodeFormat, Decoded, SchemaRegistry};

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A path under `scripts/`.
pub fn script(name: &str) -> PathBuf {
    repo_root().join("scripts").join(name)
}

/// A loopback port that was free a moment ago (bind to port 0, read it, drop).
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct loopback ports, all held open at once while they are picked.
pub fn free_ports<const N: usize>() -> [u16; N] {
    free_port_list(N).try_into().expect("N ports")
}

/// `n` distinct loopback ports, all held open at once while they are picked.
pub fn free_port_list(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")).collect();
    listeners.iter().map(|l| l.local_addr().expect("local_addr").port()).collect()
}

/// True when 127.0.0.1:`port` accepts a TCP connection.
pub fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Polls `cond` every `every` until it is true (returns true) or `timeout`
/// elapses (returns false).
pub fn wait_until(timeout: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// Checks `cond` every `every` for `period`: true if it held all along, false as soon as it does not.
/// For the few assertions that something does not happen (no further copy, no second reload), which
/// only a quiet period can show; to wait for something that does happen, use [`wait_until`].
pub fn holds_for(period: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + period;
    loop {
        if !cond() {
            return false;
        }
        if Instant::now() >= deadline {
            return true;
        }
        std::thread::sleep(every);
    }
}

/// The last `n` lines of a text file, or a note that it could not be read.
pub fn tail_file(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Finds an executable by name on PATH, then in the sbin/bin directories
/// (mosquitto lives in /usr/sbin, which is not on every PATH).
pub fn find_executable(name: &str) -> Option<PathBuf> {
    let path_dirs = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    let extra = ["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin", "/sbin", "/bin"];
    path_dirs.into_iter().chain(extra.iter().map(PathBuf::from)).map(|d| d.join(name)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Sends `signal` (e.g. "TERM", "KILL") to `pid` with kill(1).
pub fn send_signal(pid: u32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A fresh Kafka topic with `partitions` partitions.
pub fn new_topic(prefix: &str, partitions: i32) -> String {
    let topic = unique_topic(prefix);
    kafka().create_topic(&topic, partitions);
    topic
}

/// Publishes every message at QoS 1 over one MQTT connection, in order, and returns once the broker has
/// acknowledged them all (disconnecting earlier can lose the tail still in rumqttc's write buffer).
pub fn publish_all(port: u16, messages: Vec<(String, Vec<u8>)>) {
    publish_paced(port, messages, usize::MAX, Duration::ZERO);
}

/// Like [`publish_all`], pausing for `pause` after every `every` messages (a steady stream).
pub fn publish_paced(port: u16, messages: Vec<(String, Vec<u8>)>, every: usize, pause: Duration) {
    let id = format!(
        "test-publisher-{}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    );
    let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    opts.set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut connection) = rumqttc::Client::new(opts, 128);
    let total = messages.len();
    let pump = std::thread::spawn(move || {
        let mut acked = 0;
        for event in connection.iter() {
            match event {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                    acked += 1;
                    if acked == total {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(format!("after {acked} of {total} acks: {e}")),
            }
        }
        Ok(())
    });
    for (i, (topic, payload)) in messages.into_iter().enumerate() {
        client.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload).expect("queue publish");
        if (i + 1) % every == 0 {
            std::thread::sleep(pause);
        }
    }
    pump.join().expect("publisher thread").expect("publisher connection");
}

/// How long a test waits for something that should happen in well under a second.
pub const WAIT: Duration = Duration::from_secs(30);

/// Writes `body` as `routes.yaml` in `dir`.
pub fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("routes.yaml");
    std::fs::write(&path, body).expect("write config");
    path
}

/// Replaces `path` whole, as an editor or a Kubernetes mount does: a new file renamed over the old one.
pub fn replace_file(path: &Path, body: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body).expect("write the new file");
    std::fs::rename(&tmp, path).expect("rename it over the old one");
}

/// `value` and a newline in `dir/name`, as a mounted Secret holds it; its path.
pub fn secret_file(dir: &Path, name: &str, value: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).expect("write the secret file");
    path
}

/// Env that points the gateway at this test's brokers.
pub fn broker_env(mosquitto: &Mosquitto) -> Vec<(&'static str, String)> {
    vec![("MQTT_BROKER", mosquitto.addr()), ("KAFKA_BOOTSTRAP_SERVERS", kafka().bootstrap())]
}

/// Starts the gateway and waits until it has subscribed.
pub fn start_gateway(config: &Path, env: &[(&'static str, String)]) -> Gateway {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gw = Gateway::start(config, &env);
    assert!(gw.wait_for_log("subscribed", WAIT), "the gateway never subscribed:\n{}", gw.logs());
    gw
}

pub fn json(record: &Record) -> serde_json::Value {
    serde_json::from_str(record.value_str())
        .unwrap_or_else(|e| panic!("record is not JSON ({e}): {}", record.value_str()))
}
