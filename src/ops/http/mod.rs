//! The HTTP edge: Prometheus metrics, liveness and readiness, on `http.listen`.
//!
//! The server runs on a thread and runtime of its own, so a scrape never competes with the message
//! path, and it stays up while Kafka or MQTT are down.

/// Prometheus metrics (OpenMetrics text).
pub const METRICS_PATH: &str = "/metrics";
/// Liveness: 200 while the gateway's own loops are responsive, whatever the brokers do.
pub const HEALTHZ_PATH: &str = "/healthz";
/// Readiness: 200 only when MQTT is connected and subscribed and Kafka has a broker up.
pub const READYZ_PATH: &str = "/readyz";

mod server;

pub use server::{follow, start, Server};
