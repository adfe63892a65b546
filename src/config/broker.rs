//! The MQTT broker address: `host:port`, `host`, `[v6]:port`, or a URL whose scheme picks the transport.

/// How the gateway reaches the MQTT broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `mqtt://`, `tcp://` or no scheme.
    Tcp,
    /// `mqtts://`, `ssl://` or `tls://`.
    Tls,
    /// `ws://`: MQTT over a WebSocket.
    Ws,
    /// `wss://`: MQTT over a WebSocket over TLS.
    Wss,
}

impl Transport {
    /// The transport encrypts (and so reads `mqtt.tls`).
    pub fn is_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }

    fn default_port(self) -> u16 {
        match self {
            Transport::Tcp => 1883,
            Transport::Tls => 8883,
            Transport::Ws => 80,
            Transport::Wss => 443,
        }
    }
}

/// A parsed `mqtt.broker`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
    pub transport: Transport,
    /// The HTTP path of a WebSocket endpoint (`/mqtt` when the URL gives none); empty otherwise.
    pub path: String,
}

impl BrokerAddr {
    /// `host:port`, with an IPv6 host in brackets.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The WebSocket URL to open, for `ws://`/`wss://`.
    pub fn ws_url(&self) -> Option<String> {
        let scheme = match self.transport {
            Transport::Ws => "ws",
            Transport::Wss => "wss",
            _ => return None,
        };
        Some(format!("{scheme}://{}{}", self.authority(), self.path))
    }
}

/// How logs and reports name the broker: the WebSocket URL, or `host:port`.
impl std::fmt::Display for BrokerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.ws_url().unwrap_or_else(|| self.authority()))
    }
}

/// `host:port`, `host`, `[v6]:port`, or `mqtt://`, `tcp://`, `mqtts://`, `ssl://`, `tls://`, `ws://` and
/// `wss://` URLs (the WebSocket ones with an optional path, `/mqtt` by default).
pub fn parse_broker(s: &str) -> Result<BrokerAddr, String> {
    let s = s.trim();
    let (rest, transport) = match s.split_once("://") {
        Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => (rest, Transport::Tcp),
            "mqtts" | "ssl" | "tls" => (rest, Transport::Tls),
            "ws" => (rest, Transport::Ws),
            "wss" => (rest, Transport::Wss),
            _ => return Err(format!("unsupported scheme `{scheme}://` in `{s}`")),
        },
        None => (s, Transport::Tcp),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let path = match transport {
        Transport::Ws | Transport::Wss if path.is_empty() || path == "/" => "/mqtt".to_string(),
        Transport::Ws | Transport::Wss => path.to_string(),
        _ if path.trim_end_matches('/').is_empty() => String::new(),
        _ => return Err(format!("a path (`{path}`) is only meaningful for ws:// and wss:// in `{s}`")),
    };
    if authority.contains('@') {
        return Err(format!("credentials in the URL are not read; use mqtt.username and mqtt.password (or password_file) instead of `{}`", redact_userinfo(s)));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| format!("unclosed '[' in `{s}`"))?;
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => return Err(format!("unexpected `{after}` after the address in `{s}`")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("no host in `{s}`"));
    }
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| format!("`{p}` is not a port number"))?,
        None => transport.default_port(),
    };
    Ok(BrokerAddr { host: host.to_string(), port, transport, path })
}

/// `scheme://user:pass@host` → `scheme://***@host`, so an error never repeats a password.
fn redact_userinfo(s: &str) -> String {
    match (s.split_once("://"), s.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***{}", &s[at..]),
        _ => "***".to_string(),
    }
}
