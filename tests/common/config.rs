//! A gateway configuration (`routes.yaml`) built in code: the settings the tests vary are typed, anything
//! rarer goes in as raw YAML lines. Only what was set is written, so an unset setting keeps the gateway's
//! default (or what the environment gives it, e.g. `MQTT_BROKER`).
//!
//! ```ignore
//! let path = Config::new()
//!     .broker(mosquitto.addr())
//!     .clean_session(false)
//!     .mqtt("  keep_alive_secs: 5\n")
//!     .route(Route::new("a", "cmnd/#", &topic).qos(1))
//!     .write(dir.path());
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One entry of `routes:`.
#[derive(Debug, Clone)]
pub struct Route {
    name: String,
    filter: String,
    topic: String,
    qos: Option<u8>,
    fallback_filters: Option<Vec<String>>,
    dead_letter_topic: Option<String>,
    device_id_regex: Option<String>,
    extra: String,
}

impl Route {
    /// A route `name` from the MQTT filter `filter` to the Kafka topic (or topic template) `topic`.
    pub fn new(name: &str, filter: &str, topic: &str) -> Route {
        Route {
            name: name.into(),
            filter: filter.into(),
            topic: topic.into(),
            qos: None,
            fallback_filters: None,
            dead_letter_topic: None,
            device_id_regex: None,
            extra: String::new(),
        }
    }

    pub fn qos(mut self, qos: u8) -> Route {
        self.qos = Some(qos);
        self
    }

    /// `fallback_filters`; an empty slice writes `fallback_filters: []`.
    pub fn fallback_filters(mut self, filters: &[&str]) -> Route {
        self.fallback_filters = Some(filters.iter().map(|f| f.to_string()).collect());
        self
    }

    pub fn dead_letter_topic(mut self, topic: &str) -> Route {
        self.dead_letter_topic = Some(topic.into());
        self
    }

    /// `device_id: {regex: ...}`.
    pub fn device_id_regex(mut self, regex: &str) -> Route {
        self.device_id_regex = Some(regex.into());
        self
    }

    /// Raw YAML lines for other keys of the route, indented four spaces (`"    schema: s.json\n"`).
    pub fn extra(mut self, lines: &str) -> Route {
        push_lines(&mut self.extra, lines);
        self
    }

    fn yaml(&self, out: &mut String) {
        let _ = writeln!(out, "  - name: {}", quote(&self.name));
        let _ = writeln!(out, "    filter: {}", quote(&self.filter));
        if let Some(filters) = &self.fallback_filters {
            let list: Vec<String> = filters.iter().map(|f| quote(f)).collect();
            let _ = writeln!(out, "    fallback_filters: [{}]", list.join(", "));
        }
        let _ = writeln!(out, "    topic: {}", quote(&self.topic));
        if let Some(dlq) = &self.dead_letter_topic {
            let _ = writeln!(out, "    dead_letter_topic: {}", quote(dlq));
        }
        if let Some(qos) = self.qos {
            let _ = writeln!(out, "    qos: {qos}");
        }
        if let Some(regex) = &self.device_id_regex {
            let _ = writeln!(out, "    device_id:\n      regex: {}", quote(regex));
        }
        out.push_str(&self.extra);
    }
}

/// A whole configuration file.
#[derive(Debug, Clone, Default)]
pub struct Config {
    broker: Option<String>,
    client_id: Option<String>,
    clean_session: Option<bool>,
    shared_group: Option<String>,
    reconnect_delays_ms: Option<(u64, u64)>,
    mqtt_extra: String,
    bootstrap_servers: Option<String>,
    kafka_extra: String,
    stats_interval_secs: Option<u64>,
    reload_watch: Option<bool>,
    extra: String,
    routes: Vec<Route>,
}

impl Config {
    pub fn new() -> Config {
        Config::default()
    }

    /// `mqtt.broker`.
    pub fn broker(mut self, broker: impl Into<String>) -> Config {
        self.broker = Some(broker.into());
        self
    }

    /// `mqtt.client_id`.
    pub fn client_id(mut self, id: impl Into<String>) -> Config {
        self.client_id = Some(id.into());
        self
    }

    /// `mqtt.clean_session`.
    pub fn clean_session(mut self, clean: bool) -> Config {
        self.clean_session = Some(clean);
        self
    }

    /// `mqtt.shared_group`.
    pub fn shared_group(mut self, group: &str) -> Config {
        self.shared_group = Some(group.into());
        self
    }

    /// `mqtt.reconnect_min_delay_ms` and `mqtt.reconnect_max_delay_ms`.
    pub fn reconnect_delays_ms(mut self, min: u64, max: u64) -> Config {
        self.reconnect_delays_ms = Some((min, max));
        self
    }

    /// Raw YAML lines for other keys of `mqtt:`, indented two spaces (`"  keep_alive_secs: 5\n"`).
    pub fn mqtt(mut self, lines: &str) -> Config {
        push_lines(&mut self.mqtt_extra, lines);
        self
    }

    /// `kafka.bootstrap_servers`.
    pub fn bootstrap_servers(mut self, servers: impl Into<String>) -> Config {
        self.bootstrap_servers = Some(servers.into());
        self
    }

    /// Raw YAML lines for other keys of `kafka:`, indented two spaces (`"  linger_ms: 50\n"`).
    pub fn kafka(mut self, lines: &str) -> Config {
        push_lines(&mut self.kafka_extra, lines);
        self
    }

    /// `log.stats_interval_secs` (0: no statistics line).
    pub fn stats_interval_secs(mut self, secs: u64) -> Config {
        self.stats_interval_secs = Some(secs);
        self
    }

    /// `reload.watch`.
    pub fn reload_watch(mut self, watch: bool) -> Config {
        self.reload_watch = Some(watch);
        self
    }

    /// Raw top-level YAML for the other sections (`"shutdown:\n  grace_period_secs: 3\n"`). Not for a
    /// section this builder writes itself: use [`Config::mqtt`] and [`Config::kafka`] for those.
    pub fn extra(mut self, yaml: &str) -> Config {
        push_lines(&mut self.extra, yaml);
        self
    }

    pub fn route(mut self, route: Route) -> Config {
        self.routes.push(route);
        self
    }

    pub fn routes(mut self, routes: impl IntoIterator<Item = Route>) -> Config {
        self.routes.extend(routes);
        self
    }

    /// The file's text.
    pub fn yaml(&self) -> String {
        let mut mqtt = String::new();
        if let Some(broker) = &self.broker {
            let _ = writeln!(mqtt, "  broker: {}", quote(broker));
        }
        if let Some(id) = &self.client_id {
            let _ = writeln!(mqtt, "  client_id: {}", quote(id));
        }
        if let Some(clean) = self.clean_session {
            let _ = writeln!(mqtt, "  clean_session: {clean}");
        }
        if let Some(group) = &self.shared_group {
            let _ = writeln!(mqtt, "  shared_group: {}", quote(group));
        }
        if let Some((min, max)) = self.reconnect_delays_ms {
            let _ = writeln!(mqtt, "  reconnect_min_delay_ms: {min}\n  reconnect_max_delay_ms: {max}");
        }
        mqtt.push_str(&self.mqtt_extra);

        let mut kafka = String::new();
        if let Some(servers) = &self.bootstrap_servers {
            let _ = writeln!(kafka, "  bootstrap_servers: {}", quote(servers));
        }
        kafka.push_str(&self.kafka_extra);

        let log = self.stats_interval_secs.map(|s| format!("  stats_interval_secs: {s}\n")).unwrap_or_default();
        let reload = self.reload_watch.map(|w| format!("  watch: {w}\n")).unwrap_or_default();

        let mut out = String::new();
        for (section, body) in [("mqtt", mqtt), ("kafka", kafka), ("log", log), ("reload", reload)] {
            if body.is_empty() {
                continue;
            }
            assert!(
                !self.extra.lines().any(|l| l.trim_end() == format!("{section}:")),
                "a second `{section}:` section in the raw extra YAML would replace this one:\n{}",
                self.extra
            );
            let _ = write!(out, "{section}:\n{body}");
        }
        out.push_str(&self.extra);
        if !self.routes.is_empty() {
            out.push_str("routes:\n");
            for route in &self.routes {
                route.yaml(&mut out);
            }
        }
        out
    }

    /// Writes the file as `routes.yaml` in `dir` and returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        super::write_config(dir, &self.yaml())
    }
}

/// A YAML single-quoted scalar: the string as it is, whatever characters (`#`, `{`, `: `) it holds.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn push_lines(to: &mut String, lines: &str) {
    to.push_str(lines);
    if !lines.is_empty() && !lines.ends_with('\n') {
        to.push('\n');
    }
}
