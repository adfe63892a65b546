//! The MQTT broker address: `host:port`, `host`, `[v6]:port`, or a URL.

/// `host:port`, `host`, `[v6]:port`, or `mqtt://`, `tcp://`, `mqtts://`, `ssl://` URLs.
pub fn parse_broker(s: &str) -> Result<(String, u16, bool), String> {
    let s = s.trim();
    let (rest, tls) = match s.split_once("://") {
        Some(("mqtt" | "tcp", rest)) => (rest, false),
        Some(("mqtts" | "ssl" | "tls", rest)) => (rest, true),
        Some((scheme, _)) => return Err(format!("unsupported scheme `{scheme}://` in `{s}`")),
        None => (s, false),
    };
    let rest = rest.trim_end_matches('/');
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| format!("unclosed '[' in `{s}`"))?;
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => return Err(format!("unexpected `{after}` after the address in `{s}`")),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() || host.contains('/') {
        return Err(format!("no host in `{s}`"));
    }
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| format!("`{p}` is not a port number"))?,
        None => default_port,
    };
    Ok((host.to_string(), port, tls))
}
