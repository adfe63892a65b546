//! mqtt-kafka-gateway: bridges MQTT topics to Kafka topics by the routes in `routes.yaml`.
//!
//! The message path lives in [`pipeline`]; the other modules are the pieces it calls.

pub mod config;
pub mod envelope;
pub mod filter;
pub mod route;
pub mod yaml_index;
