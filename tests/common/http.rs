//! A minimal HTTP/1.0 GET for the tests: enough to read the gateway's `/metrics`, `/healthz` and
//! `/readyz` without another client library. The server side is axum; this only reads its answers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// An answer: status code and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// GETs `path` from `addr` (`host:port`); `None` if nothing answers.
pub fn get(addr: &str, path: &str) -> Option<Answer> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let content_type = head
        .lines()
        .find_map(|l| {
            l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-type")).map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    Some(Answer { status, content_type, body: body.to_string() })
}
