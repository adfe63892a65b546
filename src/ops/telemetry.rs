//! Log output: `tracing` with `RUST_LOG` (or `log.level`) as the filter and `LOG_FORMAT=json` (or
//! `log.format: json`) for one JSON object per line. rumqttc logs through the `log` crate and librdkafka
//! through the Kafka edge's client context (`kafka::GatewayContext`); both end up here.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

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

/// The subscriber under the output layer: the registry and the filter.
type Filtered = tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>;
/// The output layer: text or JSON lines on stderr.
type Output = Box<dyn tracing_subscriber::Layer<Filtered> + Send + Sync>;

/// The filter and the output in effect, for [`set_level`] and [`set_format`]; unset until [`init`].
static LEVEL: std::sync::OnceLock<reload::Handle<EnvFilter, Registry>> = std::sync::OnceLock::new();
static FORMAT: std::sync::OnceLock<reload::Handle<Output, Filtered>> = std::sync::OnceLock::new();

fn output(json: bool) -> Output {
    if json {
        Box::new(fmt::layer().json().flatten_event(true).with_writer(std::io::stderr))
    } else {
        // Colours only for a person at a terminal; log collectors get plain text.
        let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Box::new(fmt::layer().with_writer(std::io::stderr).with_ansi(ansi))
    }
}

/// Installs the global subscriber. `level` and `format` come from the config; the environment wins.
pub fn init(level: &str, format: &str) {
    let from_env = std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty());
    let filter = from_env
        .and_then(|s| EnvFilter::try_new(with_quiet_frames(&s)).ok())
        .unwrap_or_else(|| EnvFilter::try_new(with_quiet_frames(level)).unwrap_or_else(|_| EnvFilter::new("info")));
    let json = std::env::var("LOG_FORMAT").map(|f| f.eq_ignore_ascii_case("json")).unwrap_or(format == "json");
    let (filter, level_handle) = reload::Layer::new(filter);
    let (out, format_handle) = reload::Layer::new(output(json));
    // try_init: a second call (tests) keeps the first subscriber instead of panicking.
    if tracing_subscriber::registry().with(filter).with(out).try_init().is_ok() {
        let _ = LEVEL.set(level_handle);
        let _ = FORMAT.set(format_handle);
    }
}

/// Applies a new `log.level` (a reload). `RUST_LOG` wins when set; an invalid filter is refused with why.
pub fn set_level(level: &str) -> Result<(), String> {
    if std::env::var("RUST_LOG").is_ok_and(|s| !s.is_empty()) {
        return Err("RUST_LOG is set and overrides log.level".into());
    }
    let filter = EnvFilter::try_new(with_quiet_frames(level)).map_err(|e| format!("log.level `{level}`: {e}"))?;
    let Some(handle) = LEVEL.get() else { return Err("no log output installed".into()) };
    handle.reload(filter).map_err(|e| e.to_string())
}

/// Applies a new `log.format` (a reload): `text` or `json`. `LOG_FORMAT` wins when set.
pub fn set_format(format: &str) -> Result<(), String> {
    if std::env::var_os("LOG_FORMAT").is_some() {
        return Err("LOG_FORMAT is set and overrides log.format".into());
    }
    let Some(handle) = FORMAT.get() else { return Err("no log output installed".into()) };
    handle.reload(output(format == "json")).map_err(|e| e.to_string())
}
