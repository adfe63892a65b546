//! One Mosquitto broker with every transport the gateway may use towards it:
//!
//! | accessor                         | listener                                                  |
//! |----------------------------------|-----------------------------------------------------------|
//! | [`port`](Mosquitto::port)        | plain MQTT (as [`Mosquitto::start`])                      |
//! | [`MosquittoTls::tls_port`]       | MQTT over TLS, no client certificate                      |
//! | [`MosquittoTls::mtls_port`]      | MQTT over TLS, client certificate from the test CA required |
//! | [`MosquittoTls::ws_port`]        | MQTT over WebSocket (`ws://127.0.0.1:<port>/`)            |
//! | [`MosquittoTls::wss_port`]       | MQTT over WebSocket over TLS                              |
//!
//! All on 127.0.0.1; the TLS listeners present the server certificate picked in
//! [`TlsOptions::server_cert`] from a [`Pki`], whose files are copied into the broker's temp dir
//! (so the broker outlives the `Pki`). Mosquitto 2.0's command-line clients speak no WebSocket:
//! [`ws_mqtt_connect`] is a minimal WebSocket + MQTT CONNECT client for those listeners.
//!
//! Mosquitto 2.0.11 quirks: a websockets listener is bound by libwebsockets, which ignores the
//! listener's address (binding every interface) unless `socket_domain ipv4` is set, and the broker
//! refuses to start with websockets listeners alone (a plain one is always present here).

use super::pki::Pki;
use super::{find_executable, Mosquitto};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Which server certificate the TLS listeners present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerCert {
    /// Valid for 127.0.0.1 and localhost.
    #[default]
    Good,
    /// Right names, right CA, expired in 2020.
    Expired,
    /// Right CA, but only for `DNS:wrong.example`.
    WrongHost,
}

#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    pub server_cert: ServerCert,
    /// `tls_version` of the TLS listeners, e.g. `Some("tlsv1.2")`; `None` is Mosquitto's default
    /// (TLS 1.2 and 1.3).
    pub tls_version: Option<&'static str>,
    /// `use_identity_as_username true` on the mTLS listener (the client certificate's CN becomes
    /// the MQTT user name).
    pub use_identity_as_username: bool,
    /// Global lines for mosquitto.conf (`max_queued_messages ...`).
    pub extra_conf: &'static str,
}

/// A [`Mosquitto`] (plain listener, log, restart... through `Deref`) with TLS, mTLS, ws and wss
/// listeners; killed on drop.
pub struct MosquittoTls {
    broker: Mosquitto,
    ca: PathBuf,
}

impl MosquittoTls {
    /// Every listener, with the good server certificate.
    pub fn start(pki: &Pki) -> MosquittoTls {
        MosquittoTls::start_with(pki, TlsOptions::default())
    }

    pub fn start_with(pki: &Pki, opts: TlsOptions) -> MosquittoTls {
        let dir = tempfile::Builder::new().prefix("mkg-mosquitto-tls-").tempdir().expect("temp dir for mosquitto");
        let (cert, key) = match opts.server_cert {
            ServerCert::Good => (pki.server_cert(), pki.server_key()),
            ServerCert::Expired => (pki.expired_server_cert(), pki.expired_server_key()),
            ServerCert::WrongHost => (pki.wrong_host_server_cert(), pki.wrong_host_server_key()),
        };
        let copy = |from: &Path, name: &str| {
            let to = dir.path().join(name);
            std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
            to
        };
        let (ca, cert, key) = (copy(&pki.ca_pem(), "ca.pem"), copy(&cert, "server.pem"), copy(&key, "server.key"));
        let tls = format!(
            "certfile {}\nkeyfile {}\n{}",
            cert.display(),
            key.display(),
            opts.tls_version.map(|v| format!("tls_version {v}\n")).unwrap_or_default()
        );
        let (ca_line, identity) = (format!("cafile {}\n", ca.display()), opts.use_identity_as_username);
        let extra = opts.extra_conf;
        let broker = Mosquitto::start_listening(dir, 4, move |p| {
            format!(
                "{extra}\nlistener {} 127.0.0.1\n{tls}\n\
                 listener {} 127.0.0.1\n{tls}{ca_line}require_certificate true\nuse_identity_as_username {identity}\n\n\
                 listener {} 127.0.0.1\nsocket_domain ipv4\nprotocol websockets\n\n\
                 listener {} 127.0.0.1\nsocket_domain ipv4\nprotocol websockets\n{tls}\n",
                p[0], p[1], p[2], p[3]
            )
        });
        MosquittoTls { broker, ca }
    }

    /// MQTT over TLS (no client certificate asked).
    pub fn tls_port(&self) -> u16 {
        self.broker.extra_ports()[0]
    }

    /// MQTT over TLS with a client certificate signed by the test CA required.
    pub fn mtls_port(&self) -> u16 {
        self.broker.extra_ports()[1]
    }

    /// MQTT over WebSocket, no TLS.
    pub fn ws_port(&self) -> u16 {
        self.broker.extra_ports()[2]
    }

    /// MQTT over WebSocket over TLS.
    pub fn wss_port(&self) -> u16 {
        self.broker.extra_ports()[3]
    }

    /// The broker's copy of the CA that signed its certificates (and that it trusts for clients).
    pub fn ca_pem(&self) -> &Path {
        &self.ca
    }

    pub fn broker(&self) -> &Mosquitto {
        &self.broker
    }
}

impl std::ops::Deref for MosquittoTls {
    type Target = Mosquitto;
    fn deref(&self) -> &Mosquitto {
        &self.broker
    }
}

impl std::ops::DerefMut for MosquittoTls {
    fn deref_mut(&mut self) -> &mut Mosquitto {
        &mut self.broker
    }
}

/// What a WebSocket MQTT handshake got: the HTTP response head and the CONNACK return code.
#[derive(Debug)]
pub struct WsHandshake {
    /// Status line and headers of the upgrade response.
    pub http_response: String,
    /// The CONNACK's return code (0 = accepted).
    pub connack_code: u8,
}

/// Over ws:// on 127.0.0.1:`port`: upgrades with `Sec-WebSocket-Protocol: mqtt`, sends an MQTT
/// 3.1.1 CONNECT in a binary frame and reads the CONNACK. Bounded by `timeout`.
pub fn ws_mqtt_connect(port: u16, timeout: Duration) -> Result<WsHandshake, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    ws_mqtt_handshake(&mut stream, port)
}

/// [`ws_mqtt_connect`] over wss://, the TLS done by `openssl s_client` verifying the server
/// against `ca` and the IP 127.0.0.1 (a failed verification fails the handshake).
pub fn wss_mqtt_connect(port: u16, ca: &Path, timeout: Duration) -> Result<WsHandshake, String> {
    let bin = find_executable("openssl")
        .unwrap_or_else(|| panic!("`openssl` not found on PATH; install it with `apt-get install openssl`"));
    let mut child = Command::new(bin)
        .args(["s_client", "-quiet", "-verify_return_error", "-verify_ip", "127.0.0.1", "-CAfile"])
        .arg(ca)
        .args(["-connect", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run openssl s_client: {e}"))?;
    let mut pipe = ChildPipe::new(&mut child, timeout);
    let result = ws_mqtt_handshake(&mut pipe, port);
    let _ = child.kill();
    let _ = child.wait();
    result.map_err(|e| format!("{e}; openssl s_client stderr:\n{}", pipe.stderr()))
}

fn ws_mqtt_handshake(stream: &mut (impl Read + Write), port: u16) -> Result<WsHandshake, String> {
    let request = format!(
        "GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(|e| format!("send upgrade: {e}"))?;
    stream.flush().map_err(|e| format!("send upgrade: {e}"))?;
    // Byte by byte up to the blank line, so nothing of the first frame is consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        match stream.read(&mut b) {
            Ok(1) => head.push(b[0]),
            Ok(_) => return Err(format!("connection closed after {:?}", String::from_utf8_lossy(&head))),
            Err(e) => {
                return Err(format!("reading the upgrade response: {e}; got {:?}", String::from_utf8_lossy(&head)))
            }
        }
        if head.len() > 16 * 1024 {
            return Err("upgrade response too long".into());
        }
    }
    let http_response = String::from_utf8_lossy(&head).into_owned();
    if !http_response.starts_with("HTTP/1.1 101") {
        return Err(format!("no upgrade: {http_response}"));
    }
    // MQTT 3.1.1 CONNECT: protocol "MQTT" level 4, clean session, keep-alive 30 s, client id.
    let client_id = b"mkg-ws-probe";
    let mut connect = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 30];
    connect.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    connect.extend_from_slice(client_id);
    let mut mqtt = vec![0x10, connect.len() as u8];
    mqtt.extend_from_slice(&connect);
    // One final binary frame, masked as every client frame must be.
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x82, 0x80 | mqtt.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(mqtt.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream.write_all(&frame).map_err(|e| format!("send CONNECT: {e}"))?;
    stream.flush().map_err(|e| format!("send CONNECT: {e}"))?;
    let mut reply = [0u8; 6];
    stream.read_exact(&mut reply).map_err(|e| format!("reading the CONNACK frame: {e}"))?;
    // Unmasked binary frame of 4 bytes: CONNACK, remaining length 2, flags, return code.
    if reply[..4] != [0x82, 0x04, 0x20, 0x02] {
        return Err(format!("not a CONNACK frame: {reply:02x?}"));
    }
    Ok(WsHandshake { http_response, connack_code: reply[5] })
}

/// A child's stdin/stdout as one stream, reads bounded by a deadline.
struct ChildPipe {
    stdin: std::process::ChildStdin,
    rx: mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    deadline: Instant,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl ChildPipe {
    fn new(child: &mut Child, timeout: Duration) -> ChildPipe {
        let (tx, rx) = mpsc::channel();
        let mut stdout = child.stdout.take().expect("child stdout");
        std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut b) {
                if tx.send(b[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut err_pipe = child.stderr.take().expect("child stderr");
        let sink = std::sync::Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n @ 1..) = err_pipe.read(&mut b) {
                sink.lock().unwrap().extend_from_slice(&b[..n]);
            }
        });
        ChildPipe {
            stdin: child.stdin.take().expect("child stdin"),
            rx,
            buf: Vec::new(),
            deadline: Instant::now() + timeout,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }
}

impl Read for ChildPipe {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.buf.is_empty() {
            let left = self.deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(chunk) => self.buf = chunk,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf.drain(..n);
        Ok(n)
    }
}

impl Write for ChildPipe {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.stdin.write(data)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.stdin.flush()
    }
}
