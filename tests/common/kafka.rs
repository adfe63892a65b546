//! One single-node KRaft Kafka broker per test binary (see [`kafka()`]).
//!
//! The broker is `scripts/kafka-server.sh` (a JVM) started through a small
//! `sh` watchdog: statics are never dropped, so the watchdog polls the test
//! process and, once it is gone, stops the broker (TERM, then KILL) and
//! removes its data dir. Set `MKG_KEEP_KAFKA_DATA=1` to keep the data dir.

use super::{free_ports, script, tail_file};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "run scripts/install-kafka.sh (or scripts/test.sh, which installs Mosquitto and Kafka)";
pub(super) const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// A record read back from Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    /// Empty for a null (tombstone) value.
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub partition: i32,
    pub offset: i64,
}

impl Record {
    pub fn key_str(&self) -> Option<&str> {
        self.key.as_deref().map(|k| std::str::from_utf8(k).expect("key is not UTF-8"))
    }

    pub fn value_str(&self) -> &str {
        std::str::from_utf8(&self.value).expect("value is not UTF-8")
    }

    /// The value of the first header named `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).map(|v| std::str::from_utf8(v).expect("header is not UTF-8"))
    }
}

/// The shared broker of this test binary.
pub struct Kafka {
    port: u16,
    controller_port: u16,
    data_dir: PathBuf,
    watchdog: Mutex<Child>,
    ready_after: Duration,
    /// A broker of one test's own (see [`Kafka::start_dedicated`]): killed and removed on drop.
    dedicated: bool,
    /// Environment of kafka-server.sh (e.g. KAFKA_EXTRA_PROPERTIES), kept for a restart.
    env: Vec<(String, String)>,
}

static KAFKA: OnceLock<Result<Kafka, String>> = OnceLock::new();

/// The Kafka broker shared by all tests of this binary, started on first use.
/// If it cannot start, every test that asks for it fails with the same
/// message (without another start-up attempt).
pub fn kafka() -> &'static Kafka {
    let started = KAFKA.get_or_init(|| {
        std::panic::catch_unwind(Kafka::start).map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "Kafka start-up panicked".to_string())
        })
    });
    match started {
        Ok(k) => k,
        Err(msg) => panic!("{msg}"),
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        if self.dedicated {
            if let Ok(pid) = std::fs::read_to_string(self.data_dir.join("broker.pid")) {
                let _ = Command::new("kill").args(["-9", pid.trim()]).status();
            }
            if let Ok(mut w) = self.watchdog.lock() {
                let _ = w.wait();
            }
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// `prefix` plus a random suffix: a fresh, Kafka-legal topic name.
pub fn unique_topic(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let r: u64 = rand::random();
    let clean: String = prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .collect();
    format!("{clean}-{:x}-{n}-{:08x}", std::process::id(), r as u32)
}

impl Kafka {
    fn start() -> Kafka {
        Kafka::launch(false)
    }

    /// A broker for one test alone, which it may [`kill`](Kafka::kill) and [`restart`](Kafka::restart)
    /// (same ports, same data). Stopped and removed when dropped.
    pub fn start_dedicated() -> Kafka {
        Kafka::launch(true)
    }

    fn launch(dedicated: bool) -> Kafka {
        Kafka::launch_with(dedicated, free_ports::<2>(), Vec::new())
    }

    /// A dedicated broker on the given PLAINTEXT and controller `ports`, with `env` for
    /// kafka-server.sh (KAFKA_EXTRA_PROPERTIES, KAFKA_FORMAT_ARGS, KAFKA_JVM_OPTS).
    pub(super) fn start_dedicated_with(ports: [u16; 2], env: Vec<(String, String)>) -> Kafka {
        Kafka::launch_with(true, ports, env)
    }

    fn launch_with(dedicated: bool, [port, controller_port]: [u16; 2], env: Vec<(String, String)>) -> Kafka {
        let server = script("kafka-server.sh");
        let check = Command::new(&server)
            .arg("--check")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL_HINT}", server.display()));
        if !check.status.success() {
            panic!("Kafka is not installed: {}", String::from_utf8_lossy(&check.stderr).trim());
        }

        let data_dir = tempfile::Builder::new().prefix("mkg-kafka-").tempdir().expect("temp dir for kafka").keep(); // removed by the watchdog
        let started = Instant::now();
        let watchdog = Kafka::spawn_watchdog(&data_dir, port, controller_port, dedicated, &env);
        let mut kafka = Kafka {
            port,
            controller_port,
            data_dir,
            watchdog: Mutex::new(watchdog),
            ready_after: Duration::ZERO,
            dedicated,
            env,
        };
        kafka.wait_ready(started);
        kafka.ready_after = started.elapsed();
        eprintln!(
            "[kafka] broker on {} ready after {:.1}s (data {})",
            kafka.bootstrap(),
            kafka.ready_after.as_secs_f64(),
            kafka.data_dir.display()
        );
        kafka
    }

    fn spawn_watchdog(
        data_dir: &Path,
        port: u16,
        controller_port: u16,
        dedicated: bool,
        env: &[(String, String)],
    ) -> Child {
        let server = script("kafka-server.sh");
        // A dedicated broker's data outlives a kill (for the restart); its Drop removes it.
        let keep = if dedicated || std::env::var_os("MKG_KEEP_KAFKA_DATA").is_some() { "1" } else { "" };
        // $0 = kafka-server.sh, $1 = data dir, $2/$3 = ports, $4 = test pid, $5 = keep data.
        let watchdog_sh = r#"
            "$0" "$1" "$2" "$3" >>"$1/kafka.out" 2>&1 </dev/null &
            k=$!
            echo "$k" > "$1/broker.pid"
            while kill -0 "$4" 2>/dev/null && kill -0 "$k" 2>/dev/null; do sleep 0.2; done
            kill "$k" 2>/dev/null
            i=0
            while kill -0 "$k" 2>/dev/null && [ "$i" -lt 20 ]; do sleep 0.5; i=$((i+1)); done
            kill -9 "$k" 2>/dev/null
            wait "$k" 2>/dev/null
            [ -n "$5" ] || rm -rf "$1"
        "#;
        Command::new("sh")
            .arg("-c")
            .arg(watchdog_sh)
            .arg(&server)
            .arg(data_dir)
            .arg(port.to_string())
            .arg(controller_port.to_string())
            .arg(std::process::id().to_string())
            .arg(keep)
            .envs(env.iter().map(|(k, v)| (k, v)))
            // Never hold the test's stdout/stderr: whoever reads them would
            // wait for the watchdog to exit.
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the kafka watchdog (sh)")
    }

    /// SIGKILLs the broker (a crash: no clean shutdown) and waits until it is gone.
    pub fn kill(&self) {
        assert!(self.dedicated, "only a dedicated broker may be killed");
        let pid = std::fs::read_to_string(self.data_dir.join("broker.pid")).expect("broker.pid");
        let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        let mut w = self.watchdog.lock().unwrap();
        let _ = w.wait();
    }

    /// Starts the broker again on the same ports with the same data and waits until it is ready.
    pub fn restart(&self) {
        assert!(self.dedicated, "only a dedicated broker may be restarted");
        let started = Instant::now();
        *self.watchdog.lock().unwrap() =
            Kafka::spawn_watchdog(&self.data_dir, self.port, self.controller_port, true, &self.env);
        self.wait_ready(started);
    }

    fn wait_ready(&self, started: Instant) {
        let consumer: BaseConsumer = self
            .client_config()
            .set("socket.connection.setup.timeout.ms", "1000")
            .set("reconnect.backoff.ms", "50")
            .set("reconnect.backoff.max.ms", "200")
            .create()
            .expect("create rdkafka consumer for readiness");
        let mut last_err = String::from("no attempt");
        while started.elapsed() < READY_TIMEOUT {
            if let Ok(Some(status)) = self.watchdog.lock().unwrap().try_wait() {
                panic!("Kafka exited during start-up ({status}):\n{}", self.log_tail());
            }
            match consumer.fetch_metadata(None, Duration::from_secs(2)) {
                Ok(md) if !md.brokers().is_empty() => return,
                Ok(_) => last_err = "metadata without brokers".to_string(),
                Err(e) => last_err = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "Kafka on {} was not ready within {}s (last error: {last_err}):\n{}",
            self.bootstrap(),
            READY_TIMEOUT.as_secs(),
            self.log_tail()
        );
    }

    /// The tails of the start-up output, the format log and the broker's log.
    pub fn log_tail(&self) -> String {
        format!(
            "--- kafka.out ---\n{}\n--- logs/format.log ---\n{}\n--- logs/server.log ---\n{}",
            tail_file(&self.data_dir.join("kafka.out"), 20),
            tail_file(&self.data_dir.join("logs/format.log"), 20),
            tail_file(&self.data_dir.join("logs/server.log"), 40)
        )
    }

    /// "127.0.0.1:<port>"
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn controller_port(&self) -> u16 {
        self.controller_port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The broker's own log (logs/server.log), for debugging.
    pub fn server_log_path(&self) -> PathBuf {
        self.data_dir.join("logs/server.log")
    }

    /// How long the broker took to answer metadata requests.
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// A `ClientConfig` with `bootstrap.servers` set to this broker.
    pub fn client_config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", self.bootstrap());
        cfg
    }

    /// Creates `name` with `partitions` partitions (replication 1) and waits
    /// until every partition has a leader. An existing topic is fine.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        let cfg = self.client_config();
        let topic = name.to_string();
        // Own thread and runtime: callers may be inside a tokio runtime.
        let result = std::thread::spawn(move || {
            let admin: AdminClient<DefaultClientContext> = cfg.create().expect("create rdkafka admin client");
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            let new_topic = NewTopic::new(&topic, partitions, TopicReplication::Fixed(1));
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
            rt.block_on(admin.create_topics([&new_topic], &opts))
        })
        .join()
        .expect("create_topic thread panicked");
        match result {
            Ok(results) => {
                for r in results {
                    match r {
                        Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((t, code)) => panic!("creating topic {t} failed: {code:?}"),
                    }
                }
            }
            Err(e) => panic!("creating topic {name} failed: {e}"),
        }
        let n = self.wait_partitions(name, Duration::from_secs(30));
        assert!(n >= partitions as usize, "topic {name} has {n} partitions with a leader, expected {partitions}");
    }

    /// Waits until `topic` exists and all its partitions have a leader;
    /// returns the number of partitions (0 if it never showed up).
    pub fn wait_partitions(&self, topic: &str, timeout: Duration) -> usize {
        let consumer: BaseConsumer = self.client_config().create().expect("create consumer");
        self.partitions_of(&consumer, topic, timeout).len()
    }

    fn partitions_of(&self, consumer: &BaseConsumer, topic: &str, timeout: Duration) -> Vec<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Ok(md) = consumer.fetch_metadata(Some(topic), left.min(Duration::from_secs(2))) {
                if let Some(t) = md.topics().iter().find(|t| t.name() == topic) {
                    let parts = t.partitions();
                    if t.error().is_none()
                        && !parts.is_empty()
                        && parts.iter().all(|p| p.error().is_none() && p.leader() >= 0)
                    {
                        return parts.iter().map(|p| p.id()).collect();
                    }
                }
            }
            if Instant::now() >= deadline {
                return Vec::new();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Reads `topic` from the beginning of every partition until `expected`
    /// records arrived or `timeout` elapsed; returns what it got, ordered by
    /// (partition, offset). Waits for the topic to appear within `timeout`.
    pub fn consume(&self, topic: &str, expected: usize, timeout: Duration) -> Vec<Record> {
        self.read(topic, Some(expected), timeout)
    }

    /// Reads `topic` from the beginning for the whole `duration` (to assert
    /// that no extra records arrive). A topic that never appears gives none.
    pub fn consume_for(&self, topic: &str, duration: Duration) -> Vec<Record> {
        self.read(topic, None, duration)
    }

    fn read(&self, topic: &str, expected: Option<usize>, timeout: Duration) -> Vec<Record> {
        let deadline = Instant::now() + timeout;
        // Partitions are assigned explicitly and nothing is committed; librdkafka
        // still wants a group.id for assign().
        static READERS: AtomicU64 = AtomicU64::new(0);
        let group = format!("mkg-test-reader-{}-{}", std::process::id(), READERS.fetch_add(1, Ordering::Relaxed));
        let consumer: BaseConsumer = self
            .client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "50")
            .create()
            .expect("create rdkafka consumer");
        let mut out = Vec::new();
        let partitions = self.partitions_of(&consumer, topic, timeout);
        if partitions.is_empty() {
            return out;
        }
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning).expect("add partition to assignment");
        }
        consumer.assign(&tpl).expect("assign partitions");
        while expected.is_none_or(|n| out.len() < n) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match consumer.poll(left.min(Duration::from_millis(100))) {
                Some(Ok(m)) => out.push(Record {
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    headers: m
                        .headers()
                        .map(|hs| {
                            hs.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect()
                        })
                        .unwrap_or_default(),
                    partition: m.partition(),
                    offset: m.offset(),
                }),
                Some(Err(e)) => eprintln!("[kafka] consume {topic}: {e}"),
                None => {}
            }
        }
        out.sort_by_key(|r| (r.partition, r.offset));
        out
    }
}
