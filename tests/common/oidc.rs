//! A local OAuth 2.0 token endpoint for librdkafka's OIDC client-credentials flow: a small Python
//! (standard library only) HTTP server on a free loopback port that answers a POST with HTTP Basic
//! credentials `client_id:client_secret` with an unsigned JWT (`alg: none`, `sub`, `iat`, `exp`), which
//! Kafka's default OAUTHBEARER validator accepts, and anything else with 401. It counts the tokens it
//! issued and the requests it refused.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{free_port, port_open, wait_until};

const SERVER: &str = r#"
import base64, json, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer

port, client_id, secret = int(sys.argv[1]), sys.argv[2], sys.argv[3]
expected = "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()

def b64(obj):
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Authorization") != expected:
            print("refused", flush=True)
            self.send_response(401)
            self.end_headers()
            self.wfile.write(b'{"error":"invalid_client"}')
            return
        now = int(time.time())
        token = b64({"alg": "none"}) + "." + b64({"sub": client_id, "iat": now, "exp": now + 3600}) + "."
        body = json.dumps({"access_token": token, "token_type": "bearer", "expires_in": 3600}).encode()
        print("issued", flush=True)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

/// The running endpoint; killed on drop.
pub struct TokenEndpoint {
    child: Child,
    port: u16,
    events: Arc<Mutex<Vec<String>>>,
}

impl TokenEndpoint {
    pub fn start(client_id: &str, client_secret: &str) -> TokenEndpoint {
        let port = free_port();
        let mut child = Command::new("python3")
            .args(["-c", SERVER, &port.to_string(), client_id, client_secret])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run python3 for the token endpoint: {e}; install it with `apt-get install python3`")
            });
        let events = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("token endpoint stdout");
        let sink = Arc::clone(&events);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let up = wait_until(Duration::from_secs(10), Duration::from_millis(50), || port_open(port));
        assert!(up, "the token endpoint did not listen on 127.0.0.1:{port}");
        TokenEndpoint { child, port, events }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> usize {
        self.events.lock().unwrap().iter().filter(|e| *e == "issued").count()
    }

    /// Requests refused (wrong client credentials) so far.
    pub fn refused(&self) -> usize {
        self.events.lock().unwrap().iter().filter(|e| *e == "refused").count()
    }
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
