//! librdkafka's statistics JSON, of which the gateway reads one thing: how many brokers have their
//! connection up. Everything else in the document (per topic, per partition: large with many routes) is
//! skipped without being built.

use std::collections::HashMap;

use serde::Deserialize;

#[derive(Deserialize)]
struct Stats {
    #[serde(default)]
    brokers: HashMap<String, Broker>,
}

#[derive(Deserialize)]
struct Broker {
    #[serde(default)]
    state: String,
    /// -1 for a bootstrap address not yet known by id; the internal pseudo-broker has its own source.
    #[serde(default)]
    source: String,
}

/// Brokers whose state is `UP`, not counting librdkafka's internal pseudo-broker.
pub fn brokers_up(json: &[u8]) -> Result<i64, serde_json::Error> {
    let stats: Stats = serde_json::from_slice(json)?;
    Ok(stats.brokers.values().filter(|b| b.source != "internal" && b.state == "UP").count() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_brokers_that_are_up_and_skips_the_rest() {
        let json = br#"{"name":"rdkafka#producer-1","msg_cnt":3,
            "brokers":{
              "127.0.0.1:9092/1":{"name":"127.0.0.1:9092/1","nodeid":1,"source":"learned","state":"UP","rtt":{"avg":1}},
              "127.0.0.1:9092/bootstrap":{"nodeid":-1,"source":"configured","state":"INIT"},
              "127.0.0.1:9093/2":{"nodeid":2,"source":"learned","state":"TRY_CONNECT"},
              ":0/internal":{"nodeid":-1,"source":"internal","state":"UP"}},
            "topics":{"raw_iot_data":{"partitions":{"0":{"msgq_cnt":0}}}}}"#;
        assert_eq!(brokers_up(json).unwrap(), 1);
        assert_eq!(brokers_up(br#"{"brokers":{}}"#).unwrap(), 0);
        assert!(brokers_up(b"not json").is_err());
    }
}
