//! The subcommands besides running the gateway: `check` (connect to both brokers with the real settings,
//! check every route) and `explain` (what one message would become) `schema` (a starting Avro schema for a route) and `probe` (a container's health check). `validate` is the configuration's
//! own report (see [`crate::config`]). All of them exit by the same convention ([`exit`]).

pub mod check;
pub mod exit;
pub mod explain;
pub mod probe;
pub mod schema;
