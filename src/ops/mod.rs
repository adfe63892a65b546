//! Operations: what the gateway tells the people who run it. Liveness and readiness ([`health`]), the
//! counters and the log-and-count event functions ([`metrics`]), the log output ([`telemetry`]), the
//! HTTP endpoints that serve them ([`http`]) and a failed connection in an operator's words
//! ([`diagnosis`]). These observe: the gateway's control state lives with its owners (the edges, the
//! pipeline), never here. Imports only the core.

pub mod diagnosis;
pub mod health;
pub mod http;
pub mod metrics;
pub mod telemetry;
