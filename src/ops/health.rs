//! What `/healthz` and `/readyz` answer from. Liveness: heartbeats of the gateway's own loops, which say
//! nothing about the brokers (an outage must not get a gateway that is holding messages restarted).
//! Readiness: the state of both connections, written by their owners as it changes and read by the HTTP
//! server's thread.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A loop whose heartbeat is older than this is not responsive.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the loops beat when idle.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// The loops that beat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loop {
    /// The async runtime itself: a task that does nothing but beat.
    Runtime,
    /// The engine (intake → Kafka → acks).
    Engine,
    /// The MQTT edge.
    Mqtt,
}

impl Loop {
    const ALL: [Loop; 3] = [Loop::Runtime, Loop::Engine, Loop::Mqtt];

    fn as_str(self) -> &'static str {
        match self {
            Loop::Runtime => "runtime",
            Loop::Engine => "engine",
            Loop::Mqtt => "mqtt",
        }
    }
}

#[derive(Debug)]
pub struct Health {
    /// Milliseconds since [`epoch`] of each loop's last beat.
    beats: [AtomicU64; 3],
    /// Kafka brokers whose connection is up, from librdkafka's statistics; -1 until the first ones.
    pub kafka_brokers_up: AtomicI64,
    /// librdkafka statistics are on (`statistics.interval.ms` > 0); without them Kafka is not checked.
    pub kafka_checked: AtomicBool,
    pub shutting_down: AtomicBool,
    /// A disk spool is configured (`spool.dir`): a Kafka outage does not stop the bridging.
    pub spool_enabled: AtomicBool,
    /// New records go through the disk spool.
    pub spooling: AtomicBool,
    /// The disk spool is full and holds the intake (`when_full: block`).
    pub spool_full: AtomicBool,
    subscriptions: Mutex<Subscriptions>,
    /// Why the last MQTT connection attempt failed (cleared on CONNACK), and the last Kafka client
    /// error (cleared when a broker is up again): readiness names them.
    last_errors: Mutex<LastErrors>,
    /// Why schemas the routes need are not resolved (the registry unreachable, credentials refused):
    /// set and cleared by the registry edge.
    registry_problem: Mutex<Option<String>>,
}

#[derive(Debug, Default, Clone)]
struct LastErrors {
    mqtt: Option<String>,
    kafka: Option<String>,
}

/// The MQTT subscriptions of the current connection, as readiness sees them.
#[derive(Debug, Default, Clone)]
struct Subscriptions {
    /// Filters requested and not acknowledged yet.
    pending: usize,
    /// Filters the broker refused with no fallback left: their routes receive nothing.
    refused: Vec<String>,
}

impl Default for Health {
    fn default() -> Self {
        let now = since_epoch();
        Self {
            beats: [AtomicU64::new(now), AtomicU64::new(now), AtomicU64::new(now)],
            kafka_brokers_up: AtomicI64::new(-1),
            kafka_checked: AtomicBool::new(true),
            shutting_down: AtomicBool::new(false),
            spool_enabled: AtomicBool::new(false),
            spooling: AtomicBool::new(false),
            spool_full: AtomicBool::new(false),
            subscriptions: Mutex::default(),
            last_errors: Mutex::default(),
            registry_problem: Mutex::default(),
        }
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn since_epoch() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// What `/readyz` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    /// What is not ready, in words (empty when ready).
    pub not_ready: Vec<String>,
    pub mqtt_connected: bool,
    pub subscriptions_pending: usize,
    pub subscriptions_refused: Vec<String>,
    /// `None` when not checked (statistics off) or not known yet.
    pub kafka_brokers_up: Option<i64>,
    pub shutting_down: bool,
    /// `None` without a disk spool.
    pub spool: Option<SpoolState>,
}

/// The disk spool, as readiness sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolState {
    pub spooling: bool,
    pub full: bool,
}

impl Readiness {
    /// The small JSON body of `/readyz`.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "ready": self.ready,
            "not_ready": self.not_ready,
            "mqtt": {
                "connected": self.mqtt_connected,
                "subscriptions_pending": self.subscriptions_pending,
                "subscriptions_refused": self.subscriptions_refused,
            },
            "kafka": { "brokers_up": self.kafka_brokers_up },
            "spool": self.spool.map(|s| serde_json::json!({ "spooling": s.spooling, "full": s.full })),
            "shutting_down": self.shutting_down,
        })
        .to_string()
    }
}

/// What `/healthz` says: the loops that stopped beating, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Liveness {
    pub stalled: Vec<(&'static str, Duration)>,
}

impl Liveness {
    pub fn alive(&self) -> bool {
        self.stalled.is_empty()
    }

    pub fn to_json(&self) -> String {
        let stalled: serde_json::Map<String, serde_json::Value> =
            self.stalled.iter().map(|(name, age)| (name.to_string(), serde_json::json!(age.as_secs_f64()))).collect();
        serde_json::json!({ "alive": self.alive(), "stalled_loops_seconds_since_beat": stalled }).to_string()
    }
}

impl Health {
    pub fn beat(&self, l: Loop) {
        self.beats[l as usize].store(since_epoch(), Relaxed);
    }

    pub fn liveness(&self) -> Liveness {
        self.liveness_at(since_epoch())
    }

    fn liveness_at(&self, now: u64) -> Liveness {
        let stalled = Loop::ALL
            .iter()
            .filter_map(|&l| {
                let age = Duration::from_millis(now.saturating_sub(self.beats[l as usize].load(Relaxed)));
                (age > LIVENESS_TIMEOUT).then_some((l.as_str(), age))
            })
            .collect();
        Liveness { stalled }
    }

    /// The MQTT edge's subscriptions changed.
    pub fn set_subscriptions(&self, pending: usize, refused: Vec<String>) {
        *self.subscriptions.lock().unwrap_or_else(|e| e.into_inner()) = Subscriptions { pending, refused };
    }

    /// Why MQTT is not connected (`None` once it is).
    pub fn set_mqtt_error(&self, what: Option<String>) {
        self.last_errors.lock().unwrap_or_else(|e| e.into_inner()).mqtt = what;
    }

    /// The last Kafka client error worth naming (authentication, TLS); `None` clears it.
    pub fn set_kafka_error(&self, what: Option<String>) {
        self.last_errors.lock().unwrap_or_else(|e| e.into_inner()).kafka = what;
    }

    /// Schemas the routes need cannot be resolved, and why; `None` once they are.
    pub fn set_registry_problem(&self, why: Option<String>) {
        *self.registry_problem.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    pub fn readiness(&self, mqtt_connected: bool) -> Readiness {
        let subs = self.subscriptions.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let errors = self.last_errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let shutting_down = self.shutting_down.load(Relaxed);
        let checked = self.kafka_checked.load(Relaxed);
        let up = self.kafka_brokers_up.load(Relaxed);
        let mut not_ready = Vec::new();
        if shutting_down {
            not_ready.push("shutting down".to_string());
        }
        if !mqtt_connected {
            not_ready.push(match &errors.mqtt {
                Some(why) => format!("mqtt: not connected ({why})"),
                None => "mqtt: not connected".to_string(),
            });
        } else if subs.pending > 0 {
            not_ready.push(format!("mqtt: {} subscription(s) not acknowledged yet", subs.pending));
        }
        if mqtt_connected && !subs.refused.is_empty() {
            not_ready.push(format!("mqtt: the broker refused {} (no fallback filter left)", subs.refused.join(", ")));
        }
        let spool = self
            .spool_enabled
            .load(Relaxed)
            .then(|| SpoolState { spooling: self.spooling.load(Relaxed), full: self.spool_full.load(Relaxed) });
        if checked && up < 0 {
            not_ready.push("kafka: broker state not known yet".to_string());
        } else if checked && up == 0 && spool.is_none() {
            // With a spool, messages are still taken and kept while Kafka is away: ready, until it is full.
            not_ready.push(match &errors.kafka {
                Some(why) => format!("kafka: no broker up ({why})"),
                None => "kafka: no broker up".to_string(),
            });
        }
        if spool.is_some_and(|s| s.full) {
            not_ready.push("spool: full; no message is taken until Kafka takes records again".to_string());
        }
        if let Some(why) = self.registry_problem.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            not_ready.push(format!("schema registry: {why}"));
        }
        Readiness {
            ready: not_ready.is_empty(),
            not_ready,
            mqtt_connected,
            subscriptions_pending: subs.pending,
            subscriptions_refused: subs.refused,
            kafka_brokers_up: (checked && up >= 0).then_some(up),
            shutting_down,
            spool,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready_health() -> Health {
        let h = Health::default();
        h.kafka_brokers_up.store(1, Relaxed);
        h
    }

    #[test]
    fn ready_only_when_mqtt_is_subscribed_and_kafka_has_a_broker() {
        let h = ready_health();
        assert!(h.readiness(true).ready, "{:?}", h.readiness(true));
        assert!(!h.readiness(false).ready);
        h.set_subscriptions(2, vec![]);
        assert_eq!(h.readiness(true).not_ready, vec!["mqtt: 2 subscription(s) not acknowledged yet"]);
        h.set_subscriptions(0, vec!["cmnd/#".into()]);
        assert!(h.readiness(true).not_ready[0].contains("refused cmnd/#"));
        h.set_subscriptions(0, vec![]);
        h.kafka_brokers_up.store(0, Relaxed);
        assert_eq!(h.readiness(true).not_ready, vec!["kafka: no broker up"]);
        h.kafka_brokers_up.store(-1, Relaxed);
        assert!(!h.readiness(true).ready);
        h.kafka_checked.store(false, Relaxed);
        assert!(h.readiness(true).ready, "Kafka is not checked without statistics");
    }

    #[test]
    fn with_a_spool_kafka_away_is_ready_until_the_spool_is_full() {
        let h = ready_health();
        h.spool_enabled.store(true, Relaxed);
        h.kafka_brokers_up.store(0, Relaxed);
        h.spooling.store(true, Relaxed);
        let r = h.readiness(true);
        assert!(r.ready, "{r:?}");
        assert_eq!(r.spool, Some(SpoolState { spooling: true, full: false }));
        assert!(r.to_json().contains(r#""spool":{"spooling":true,"full":false}"#), "{}", r.to_json());
        h.spool_full.store(true, Relaxed);
        assert_eq!(
            h.readiness(true).not_ready,
            vec!["spool: full; no message is taken until Kafka takes records again"]
        );
        h.kafka_brokers_up.store(-1, Relaxed);
        assert!(h.readiness(true).not_ready.contains(&"kafka: broker state not known yet".to_string()));
        assert!(ready_health().readiness(true).to_json().contains(r#""spool":null"#));
    }

    #[test]
    fn shutting_down_is_not_ready_at_once() {
        let h = ready_health();
        h.shutting_down.store(true, Relaxed);
        let r = h.readiness(true);
        assert!(!r.ready);
        let body: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(body["shutting_down"], true);
        assert_eq!(body["not_ready"][0], "shutting down");
    }

    #[test]
    fn a_loop_that_stops_beating_is_not_alive() {
        let h = Health::default();
        assert!(h.liveness().alive());
        let later = since_epoch() + LIVENESS_TIMEOUT.as_millis() as u64 + 1000;
        h.beats[Loop::Runtime as usize].store(later, Relaxed);
        h.beats[Loop::Mqtt as usize].store(later - 1000, Relaxed);
        let l = h.liveness_at(later);
        assert_eq!(l.stalled.iter().map(|s| s.0).collect::<Vec<_>>(), vec!["engine"]);
        assert!(!l.alive());
        assert!(l.to_json().contains("\"engine\""), "{}", l.to_json());
        h.beats[Loop::Engine as usize].store(later, Relaxed);
        assert!(h.liveness_at(later).alive());
    }
}
