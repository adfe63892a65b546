//! The gateway binary as a child process, with its output captured.

use super::{send_signal, wait_until};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running `mqtt-kafka-gateway --config <path>`, killed on drop. Its stdout
/// and stderr are collected (see [`Gateway::logs`]) and echoed to the test's
/// stderr prefixed with `[gateway]`, so a failing test shows the log.
pub struct Gateway {
    child: Child,
    logs: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Gateway {
    /// Starts the gateway with `--config config_path` and extra environment
    /// variables (`RUST_LOG` defaults to `info`).
    pub fn start(config_path: &Path, envs: &[(&str, &str)]) -> Gateway {
        Gateway::start_with_args(&["--config".as_ref(), config_path.as_os_str()], envs)
    }

    /// Starts the gateway binary with exactly `args`.
    pub fn start_with_args<S: AsRef<std::ffi::OsStr>>(args: &[S], envs: &[(&str, &str)]) -> Gateway {
        let bin = env!("CARGO_BIN_EXE_mqtt-kafka-gateway");
        let mut cmd = Command::new(bin);
        cmd.args(args);
        if !envs.iter().any(|(k, _)| *k == "RUST_LOG") {
            cmd.env("RUST_LOG", "info");
        }
        // Gateways of parallel tests must not fight over the default port: a free one, read back from
        // the log by `http_addr`. An empty GATEWAY_HTTP__LISTEN leaves `http.listen` to the file.
        if !envs.iter().any(|(k, _)| *k == "GATEWAY_HTTP__LISTEN") {
            cmd.env("GATEWAY_HTTP__LISTEN", "127.0.0.1:0");
        }
        let envs: Vec<(&str, &str)> =
            envs.iter().copied().filter(|(k, v)| !(*k == "GATEWAY_HTTP__LISTEN" && v.is_empty())).collect();
        // `TEST_MQTT_PROTOCOL=5` runs every gateway of the suite over MQTT 5 (see scripts/test.sh),
        // unless the test chose a protocol itself.
        if let Ok(protocol) = std::env::var("TEST_MQTT_PROTOCOL") {
            if !envs.iter().any(|(k, _)| *k == "GATEWAY_MQTT__PROTOCOL") {
                cmd.env("GATEWAY_MQTT__PROTOCOL", protocol);
            }
        }
        cmd.envs(envs.iter().copied()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
        let logs = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let pipes: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("gateway stdout")),
            Box::new(child.stderr.take().expect("gateway stderr")),
        ];
        for pipe in pipes {
            let logs = Arc::clone(&logs);
            readers.push(std::thread::spawn(move || {
                let mut reader = BufReader::new(pipe);
                let mut buf = Vec::new();
                while reader.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\r', '\n']);
                    eprintln!("[gateway] {line}");
                    let mut all = logs.lock().unwrap();
                    all.push_str(line);
                    all.push('\n');
                    buf.clear();
                }
            }));
        }
        Gateway { child, logs, readers, status: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the gateway's HTTP server listens, from its start-up log line.
    pub fn http_addr(&self) -> String {
        assert!(
            self.wait_for_log("HTTP server", Duration::from_secs(30)),
            "no HTTP server line in the log:\n{}",
            self.logs()
        );
        let logs = self.logs();
        let line = logs.lines().find(|l| l.contains("HTTP server")).unwrap_or_default();
        let addr = line.split_whitespace().find_map(|w| w.strip_prefix("listen=")).unwrap_or_default();
        assert!(!addr.is_empty(), "no listen= in {line}");
        addr.trim_matches('"').to_string()
    }

    /// A scrape of `/metrics`, parsed (see [`super::prom`]).
    pub fn metrics(&self) -> Vec<super::prom::Sample> {
        let body = super::http::get(&self.http_addr(), "/metrics").expect("GET /metrics").body;
        super::prom::parse(&body)
    }

    /// Everything the gateway printed so far (stdout and stderr, by lines).
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until the output contains `needle`; false after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, Duration::from_millis(20), || self.logs.lock().unwrap().contains(needle))
    }

    /// How many times `needle` occurs in the output so far.
    pub fn count_in_log(&self, needle: &str) -> usize {
        self.logs.lock().unwrap().matches(needle).count()
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn sigterm(&mut self) {
        if self.status.is_none() {
            send_signal(self.child.id(), "TERM");
        }
    }

    /// Sends SIGINT (Ctrl-C).
    pub fn sigint(&mut self) {
        if self.status.is_none() {
            send_signal(self.child.id(), "INT");
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.status = Some(s);
            }
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit; then also waits (1 s at
    /// most) for its remaining output to be collected.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                self.join_readers(Duration::from_secs(1));
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn join_readers(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.readers.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for h in std::mem::take(&mut self.readers) {
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
        self.status
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}
