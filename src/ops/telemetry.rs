//! Log output: `tracing` with `RUST_LOG` (or `log.level`) as the filter and `LOG_FORMAT=json` (or
//! `log.format: json`) for one JSON object per line. rumqttc logs through the `log` crate and librdkafka
//! through the Kafka edge's client context (`kafka::GatewayContext`); both end up here.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The WebSocket crates log every frame at TRACE, the MQTT CONNECT with its password among them: they
/// are held at DEBUG unless a filter names them itself.
const QUIET_AT_TRACE: [&str; 3] = ["tungstenite", "async_tungstenite", "ws_stream_tungstenite"];

/// `filter` with the crates of `QUIET_AT_TRACE` held at DEBUG, unless it names them.
pub fn with_quiet_frames(filter: &str) -> String {
    let mut f = filter.to_string();
    for target in QUIET_AT_TRACE {
        if !filter.contains(target) {
            f.push_str(&format!(",{target}=debug"));
        }
    }
    f
}

/// Installs the global subscriber. `level` and `format` come from the config; the environment wins.
pub fn init(level: &str, format: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .and_then(|s| EnvFilter::try_new(with_quiet_frames(&s)).ok())
        .unwrap_or_else(|| EnvFilter::try_new(with_quiet_frames(level)).unwrap_or_else(|_| EnvFilter::new("info")));
    let json = std::env::var("LOG_FORMAT").map(|f| f.eq_ignore_ascii_case("json")).unwrap_or(format == "json");
    // Colours only for a person at a terminal; log collectors get plain text.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    // try_init: a second call (tests) keeps the first subscriber instead of panicking.
    let _ = if json { builder.json().flatten_event(true).try_init() } else { builder.try_init() };
}
