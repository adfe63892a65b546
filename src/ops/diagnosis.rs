//! A failed connection attempt in an operator's words. The MQTT edge and the Kafka edge each explain
//! their own failures (`mqtt::diagnose`, `kafka::diagnose`); readiness and the logs report them.

/// A failed attempt, explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    /// Short and stable, for readiness and logs: `tls: certificate expired`.
    pub what: String,
    /// What to check.
    pub hint: &'static str,
}
