//! A throw-away Mosquitto broker per test, and the Mosquitto CLI clients.

use super::{find_executable, free_port_list, port_open, tail_file, wait_until};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "run scripts/install-mosquitto.sh (or scripts/test.sh, which installs Mosquitto and Kafka)";

fn mosquitto_binary(name: &str) -> PathBuf {
    find_executable(name).unwrap_or_else(|| panic!("`{name}` not found on PATH or in /usr/sbin; {INSTALL_HINT}"))
}

/// Path of Mosquitto's dynamic-security plugin.
pub fn dynsec_plugin() -> PathBuf {
    let arch = std::env::consts::ARCH;
    let candidates = [
        format!("/usr/lib/{arch}-linux-gnu/mosquitto_dynamic_security.so"),
        "/usr/lib/mosquitto_dynamic_security.so".to_string(),
        "/usr/lib/mosquitto/mosquitto_dynamic_security.so".to_string(),
        "/usr/local/lib/mosquitto_dynamic_security.so".to_string(),
    ];
    if let Some(p) = candidates.iter().map(PathBuf::from).find(|p| p.is_file()) {
        return p;
    }
    let listed = Command::new("dpkg").args(["-L", "mosquitto"]).output().ok();
    listed
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.ends_with("/mosquitto_dynamic_security.so"))
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| panic!("mosquitto_dynamic_security.so not found; {INSTALL_HINT}"))
}

/// The user running the tests: told to mosquitto with `user`, since mosquitto
/// started as root would otherwise drop to the `mosquitto` user and could no
/// longer read files in the (0700) temp dir.
fn current_user() -> String {
    Command::new("id")
        .arg("-un")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "root".to_string())
}

/// A Mosquitto broker on 127.0.0.1:<free port>, killed on drop.
pub struct Mosquitto {
    child: Child,
    port: u16,
    /// Further listeners' ports (see [`Mosquitto::start_listening`]).
    extra_ports: Vec<u16>,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Anonymous clients allowed, no persistence.
    pub fn start() -> Mosquitto {
        Mosquitto::start_with("")
    }

    /// Like [`Mosquitto::start`] with extra lines appended to mosquitto.conf.
    pub fn start_with(extra_conf: &str) -> Mosquitto {
        let dir = tempfile::Builder::new().prefix("mkg-mosquitto-").tempdir().expect("temp dir for mosquitto");
        Mosquitto::start_in(dir, extra_conf)
    }

    /// A broker whose anonymous clients get SUBACK 0x80 (failure) for a
    /// SUBSCRIBE to exactly the filter `denied` (e.g. `cmnd/#`), while
    /// `allowed` (e.g. `cmnd/+/+/+/+`) and every other filter is granted, and
    /// publishing stays allowed. Uses the dynamic-security plugin; its ACLs on
    /// subscriptions match the filter as a topic, so `denied` also refuses
    /// narrower filters it covers unless they match `allowed`.
    pub fn start_rejecting_subscription(denied: &str, allowed: &str) -> Mosquitto {
        let dir = tempfile::Builder::new().prefix("mkg-mosquitto-").tempdir().expect("temp dir for mosquitto");
        let json_path = dir.path().join("dynsec.json");
        let dynsec = serde_json::json!({
            "defaultACLAccess": {
                "publishClientSend": true,
                "publishClientReceive": true,
                "subscribe": true,
                "unsubscribe": true
            },
            "clients": [],
            "groups": [
                { "groupname": "anonymous", "roles": [ { "rolename": "restricted", "priority": 0 } ] }
            ],
            "roles": [ {
                "rolename": "restricted",
                "acls": [
                    // Checked from the highest priority down; the first match decides.
                    { "acltype": "subscribePattern", "topic": allowed, "priority": 20, "allow": true },
                    { "acltype": "subscribePattern", "topic": denied, "priority": 10, "allow": false },
                    { "acltype": "subscribePattern", "topic": "#", "priority": 0, "allow": true },
                    { "acltype": "publishClientSend", "topic": "#", "priority": 0, "allow": true },
                    { "acltype": "publishClientReceive", "topic": "#", "priority": 0, "allow": true }
                ]
            } ],
            "anonymousGroup": "anonymous"
        });
        std::fs::write(&json_path, serde_json::to_vec_pretty(&dynsec).unwrap()).expect("write dynsec.json");
        let extra = format!("plugin {}\nplugin_opt_config_file {}\n", dynsec_plugin().display(), json_path.display());
        Mosquitto::start_in(dir, &extra)
    }

    /// A broker that accepts only `user` with `password` (a `password_file` made with
    /// `mosquitto_passwd`); anonymous clients and wrong passwords get CONNACK "not authorised".
    pub fn start_with_password(user: &str, password: &str) -> Mosquitto {
        Mosquitto::start_with_password_and(user, password, "")
    }

    /// Like [`Mosquitto::start_with_password`], with extra lines appended to mosquitto.conf.
    pub fn start_with_password_and(user: &str, password: &str, extra_conf: &str) -> Mosquitto {
        let dir = tempfile::Builder::new().prefix("mkg-mosquitto-").tempdir().expect("temp dir for mosquitto");
        let password_file = dir.path().join("passwords");
        set_password_in(&password_file, user, password, true);
        // The last `allow_anonymous` wins over the one start_in writes.
        let extra = format!("allow_anonymous false\npassword_file {}\n{extra_conf}", password_file.display());
        Mosquitto::start_in(dir, &extra)
    }

    /// Changes `user`'s password in the password file of [`Mosquitto::start_with_password`] and has the
    /// broker read it again (SIGHUP): connections made before keep going, new ones need the new one.
    pub fn set_password(&self, user: &str, password: &str) {
        set_password_in(&self.dir.path().join("passwords"), user, password, false);
        assert!(super::send_signal(self.child.id(), "HUP"), "SIGHUP to mosquitto");
        // Mosquitto reloads between two rounds of its loop.
        std::thread::sleep(Duration::from_millis(500));
    }

    fn start_in(dir: tempfile::TempDir, extra_conf: &str) -> Mosquitto {
        Mosquitto::start_listening(dir, 0, |_| extra_conf.to_string())
    }

    /// Starts mosquitto in `dir` with its plain listener plus `n_extra` more free ports, which
    /// `extra_conf` turns into the lines appended to mosquitto.conf (e.g. more `listener`s); waits
    /// until every port listens. The ports are [`extra_ports`](Self::extra_ports).
    pub(super) fn start_listening(
        dir: tempfile::TempDir,
        n_extra: usize,
        extra_conf: impl Fn(&[u16]) -> String,
    ) -> Mosquitto {
        let bin = mosquitto_binary("mosquitto");
        let log_path = dir.path().join("mosquitto.log");
        let conf_path = dir.path().join("mosquitto.conf");
        // A port picked free may be grabbed by someone else before mosquitto
        // binds it: try a few.
        let mut last_err = String::new();
        for _attempt in 0..3 {
            let ports = free_port_list(1 + n_extra);
            let (port, extra_ports) = (ports[0], ports[1..].to_vec());
            let extra_conf = extra_conf(&extra_ports);
            let conf = format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nuser {}\n\
                 log_dest stderr\nlog_type all\nconnection_messages true\n{extra_conf}\n",
                current_user()
            );
            std::fs::write(&conf_path, conf).expect("write mosquitto.conf");
            let _ = std::fs::remove_file(&log_path);
            let mut child = spawn_broker(&bin, &conf_path, &log_path);
            let mut exited = None;
            let up = wait_until(Duration::from_secs(15), Duration::from_millis(20), || {
                if let Ok(Some(status)) = child.try_wait() {
                    exited = Some(status);
                    return true;
                }
                ports.iter().all(|p| port_open(*p))
            });
            if up && exited.is_none() {
                return Mosquitto { child, port, extra_ports, dir };
            }
            let _ = child.kill();
            let _ = child.wait();
            last_err = format!(
                "mosquitto on ports {ports:?} {}; log:\n{}",
                match exited {
                    Some(s) => format!("exited with {s}"),
                    None => "did not listen within 15s".to_string(),
                },
                tail_file(&log_path, 40)
            );
            // libwebsockets words a taken port differently.
            if !last_err.contains("Address already in use")
                && !last_err.contains("Unable to create websockets listener")
            {
                break;
            }
        }
        panic!("{last_err}");
    }

    /// Stops the broker (SIGKILL: no goodbye to clients) and starts it again on the same port with the
    /// same configuration, waiting until it listens.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.start_again();
    }

    /// Stops the broker with SIGTERM (it saves its persistence database, as a service restart does) and
    /// starts it again on the same port with the same configuration.
    pub fn restart_gracefully(&mut self) {
        super::send_signal(self.child.id(), "TERM");
        let _ = self.child.wait();
        self.start_again();
    }

    /// Stops the broker (SIGKILL) and leaves it stopped; [`start_again`](Self::start_again) brings it back.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a stopped broker again on the same port with the same configuration.
    pub fn start_again(&mut self) {
        let bin = mosquitto_binary("mosquitto");
        let conf_path = self.dir.path().join("mosquitto.conf");
        let log_path = self.dir.path().join("mosquitto.log");
        let port = self.port;
        let ports: Vec<u16> = std::iter::once(port).chain(self.extra_ports.iter().copied()).collect();
        // The kernel may keep the port for a moment after the kill: retry the bind for a while.
        let started = wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            let mut child = spawn_broker(&bin, &conf_path, &log_path);
            let up = wait_until(Duration::from_secs(3), Duration::from_millis(20), || {
                matches!(child.try_wait(), Ok(Some(_))) || ports.iter().all(|p| port_open(*p))
            });
            if up && matches!(child.try_wait(), Ok(None)) {
                self.child = child;
                true
            } else {
                let _ = child.kill();
                let _ = child.wait();
                false
            }
        });
        assert!(started, "mosquitto did not come back on port {port}; log:\n{}", tail_file(&log_path, 40));
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The ports of the listeners added by [`start_listening`](Self::start_listening), in order.
    pub fn extra_ports(&self) -> &[u16] {
        &self.extra_ports
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// "127.0.0.1:<port>"
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's temp dir (mosquitto.conf, mosquitto.log, ...).
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read(self.dir.path().join("mosquitto.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Runs `mosquitto -c conf`, appending its output to `log`.
fn spawn_broker(bin: &Path, conf: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().append(true).create(true).open(log).expect("open mosquitto.log");
    Command::new(bin)
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL_HINT}", bin.display()))
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes `payload` to `topic` on 127.0.0.1:`port` with the `mosquitto_pub`
/// CLI (payload through stdin, so any bytes work) and asserts it succeeded.
pub fn mosquitto_pub(port: u16, topic: &str, payload: &[u8], qos: u8) {
    mosquitto_pub_with(port, topic, payload, qos, &[]);
}

/// [`mosquitto_pub`] with extra CLI arguments, e.g. `&["-r"]` (retain),
/// `&["-V", "5", "-D", "publish", "user-property", "k", "v"]`, `&["-i", "id"]`.
pub fn mosquitto_pub_with(port: u16, topic: &str, payload: &[u8], qos: u8, extra: &[&str]) {
    if let Err(e) = try_mosquitto_pub(port, topic, payload, qos, extra) {
        panic!("{e}");
    }
}

/// Like [`mosquitto_pub_with`], but returns its failure (exit status and output) instead of
/// panicking, e.g. for a TLS handshake that must fail. Killed after 20 s.
pub fn try_mosquitto_pub(port: u16, topic: &str, payload: &[u8], qos: u8, extra: &[&str]) -> Result<(), String> {
    let bin = mosquitto_binary("mosquitto_pub");
    let mut cmd = Command::new(&bin);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic, "-q", &qos.to_string()]).args(extra);
    if payload.is_empty() {
        cmd.arg("-n"); // `-s` with empty stdin would not send a zero-length message
    } else {
        cmd.arg("-s");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL_HINT}", bin.display()));
    {
        let mut stdin = child.stdin.take().expect("mosquitto_pub stdin");
        if !payload.is_empty() {
            stdin.write_all(payload).expect("write payload to mosquitto_pub");
        }
    }
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let read_all = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let (stdout, stderr) = (read_all(Box::new(stdout)), read_all(Box::new(stderr)));
    let mut status = None;
    wait_until(Duration::from_secs(20), Duration::from_millis(10), || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let output = format!("{}{}", stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(format!("mosquitto_pub -p {port} -t {topic} failed ({s}): {output}")),
        None => Err(format!("mosquitto_pub -p {port} -t {topic} did not exit within 20s: {output}")),
    }
}

/// A `mosquitto_sub -d` child whose output is collected line by line.
/// Messages are printed as `MSG\t<topic>\t<payload>` (text payloads only).
pub struct Subscriber {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Subscriber {
    /// Subscribes to `filters` on 127.0.0.1:`port` with `extra` CLI args
    /// (e.g. `&["-C", "1"]` to exit after one message, `&["-q", "1"]`).
    pub fn spawn(port: u16, filters: &[&str], extra: &[&str]) -> Subscriber {
        let bin = mosquitto_binary("mosquitto_sub");
        // mosquitto_sub does not flush its debug lines: line-buffer its stdout.
        let mut cmd = match find_executable("stdbuf") {
            Some(stdbuf) => {
                let mut c = Command::new(stdbuf);
                c.arg("-oL").arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-d", "-F", "MSG\\t%t\\t%p"]);
        for f in filters {
            cmd.args(["-t", f]);
        }
        let mut child = cmd
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL_HINT}", bin.display()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(pipe);
                let mut buf = Vec::new();
                while reader.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
                    let line = String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_string();
                    lines.lock().unwrap().push(line);
                    buf.clear();
                }
            });
        }
        Subscriber { child, lines }
    }

    /// Every line printed so far (debug lines and `MSG` lines).
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The granted QoS / failure codes of the SUBACK (one per filter, 128 =
    /// refused), once it arrived within `timeout`.
    pub fn wait_suback(&self, timeout: Duration) -> Option<Vec<u8>> {
        let mut codes = None;
        wait_until(timeout, Duration::from_millis(10), || {
            codes = self.lines.lock().unwrap().iter().find_map(|l| {
                let rest = l.strip_prefix("Subscribed (mid: ")?;
                let (_, list) = rest.split_once("): ")?;
                Some(list.split(',').filter_map(|c| c.trim().parse::<u8>().ok()).collect())
            });
            codes.is_some()
        });
        codes
    }

    /// (topic, payload) of the messages received so far.
    pub fn messages(&self) -> Vec<(String, String)> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| {
                let rest = l.strip_prefix("MSG\t")?;
                let (topic, payload) = rest.split_once('\t')?;
                Some((topic.to_string(), payload.to_string()))
            })
            .collect()
    }

    /// Waits until at least `n` messages arrived; returns them (maybe fewer).
    pub fn wait_messages(&self, n: usize, timeout: Duration) -> Vec<(String, String)> {
        wait_until(timeout, Duration::from_millis(10), || self.messages().len() >= n);
        self.messages()
    }

    /// Waits for the process to exit by itself (e.g. after `-C n`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mosquitto_passwd -b` (`-c` to create the file).
fn set_password_in(file: &Path, user: &str, password: &str, create: bool) {
    let bin = mosquitto_binary("mosquitto_passwd");
    let mut cmd = Command::new(&bin);
    if create {
        cmd.arg("-c");
    }
    let out = cmd
        .arg("-b")
        .arg(file)
        .args([user, password])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL_HINT}", bin.display()));
    assert!(out.status.success(), "mosquitto_passwd failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
}
