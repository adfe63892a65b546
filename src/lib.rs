//! mqtt-kafka-gateway: bridges MQTT topics to Kafka topics by the routes in `routes.yaml`.
//!
//! The message path lives in [`pipeline`] (the one wiring module); [`mqtt`] and [`kafka`] are the edges;
//! [`route`], [`filter`] and [`envelope`] are the pure core; [`config`] turns `routes.yaml` and the
//! environment into validated settings.

pub mod ack;
pub mod backoff;
pub mod check;
pub mod config;
pub mod envelope;
pub mod explain;
pub mod filter;
pub mod health;
pub mod http;
pub mod inflight;
pub mod intake;
pub mod kafka;
pub mod matcher;
pub mod metrics;
pub mod mqtt;
pub mod pipeline;
pub mod reload;
pub mod route;
pub mod schema;
pub mod share;
pub mod stamp;
pub mod telemetry;
pub mod template;
pub mod throttle;
pub mod topic_name;
pub mod yaml_index;
