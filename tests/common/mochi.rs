//! [`Mochi`]: a second MQTT 5 broker, Mochi MQTT (`tests/tools/mqtt5-broker`), for what Mosquitto 2.0.11
//! cannot show: it refuses a publish its ACL denies with PUBACK/PUBREC 0x87 and keeps the connection
//! (Mosquitto closes it). A child process on a free loopback port, killed on drop.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::tools::{go_tool, INSTALL_HINT};
use super::{free_port, port_open, wait_until};

pub struct Mochi {
    child: Child,
    port: u16,
    output: Arc<Mutex<Vec<String>>>,
}

impl Mochi {
    /// A broker that refuses publishes to topics under `deny` and announces `receive_maximum`.
    pub fn start(deny: &[&str], receive_maximum: u16) -> Mochi {
        let bin = go_tool("mqtt5-broker");
        let port = free_port();
        let mut child = Command::new(&bin)
            .arg("-listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-deny")
            .arg(deny.join(","))
            .arg("-receive-maximum")
            .arg(receive_maximum.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL_HINT}", bin.display()));
        let output = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")) as Box<dyn Read + Send>,
        ] {
            let sink = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        let mut mochi = Mochi { child, port, output };
        let mut exited = None;
        let up = wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            if let Ok(Some(status)) = mochi.child.try_wait() {
                exited = Some(status);
                return true;
            }
            // Its own line first: something else answering on the port must not pass for it.
            mochi.output().contains("listening on ") && port_open(port)
        });
        if let Some(status) = exited {
            std::thread::sleep(Duration::from_millis(100));
            panic!("the MQTT 5 broker on 127.0.0.1:{port} exited ({status}):\n{}", mochi.output());
        }
        assert!(up, "the MQTT 5 broker did not listen on 127.0.0.1:{port} within 10 s:\n{}", mochi.output());
        mochi
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What it printed (its log), stdout and stderr interleaved.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }
}

impl Drop for Mochi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
