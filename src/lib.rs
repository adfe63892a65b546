//! mqtt-kafka-gateway: bridges MQTT topics to Kafka topics by the routes in `routes.yaml`.
//!
//! ```text
//!            core        the message, the routes, the record: pure, imports nothing else of the crate
//!             ▲
//!            ops         health, metrics, logs, the HTTP endpoints: observe, never steer
//!             ▲
//!           config       routes.yaml + environment → validated settings; live reload
//!          ▲      ▲
//!        mqtt    kafka   registry   the edges: one broker (or the Schema Registry) each
//!          ▲      ▲        ▲        spool (the disk, below core only)
//!          ▲   downlink            the way back, Kafka → MQTT: consumers, offsets, its own connection
//!          ▲      ▲
//!          pipeline      the wiring: the path of a message, top to bottom
//!
//!          commands      validate's siblings: check and explain
//! ```
//!
//! An arrow points at what a module may import; nothing imports upwards, and a test
//! (`tests/architecture.rs`) fails on any cycle between these modules.

pub mod commands;
pub mod config;
pub mod core;
pub mod downlink;
pub mod kafka;
pub mod mqtt;
pub mod ops;
pub mod pipeline;
pub mod registry;
pub mod spool;
