//! Sequenced streams for the fault and spool tests, and the tally of what reached Kafka: what is
//! missing, what came twice, and where a device's records went backwards.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use super::{json, Gateway, Kafka};

/// `n` sequenced messages from `devices` devices: `fault/dev-<d>/seq` with `{"seq": i}`.
pub fn stream(n: usize, devices: usize) -> Vec<(String, Vec<u8>)> {
    stream_from(0..n, devices, 0)
}

/// The messages numbered `seqs` from `devices` devices, each padded with `fill` bytes (`"fill":"xx…"`).
pub fn stream_from(seqs: std::ops::Range<usize>, devices: usize, fill: usize) -> Vec<(String, Vec<u8>)> {
    let filler = "x".repeat(fill);
    seqs.map(|i| {
        let payload =
            if fill == 0 { format!(r#"{{"seq":{i}}}"#) } else { format!(r#"{{"seq":{i},"fill":"{filler}"}}"#) };
        (format!("fault/dev-{}/seq", i % devices), payload.into_bytes())
    })
    .collect()
}

#[derive(Debug, Default)]
pub struct Tally {
    pub lost: usize,
    pub duplicates: usize,
    pub order_violations: usize,
    /// The sequence numbers missing.
    pub missing: BTreeSet<i64>,
}

/// Reads `topic` until every one of `n` sequence numbers is there (or `timeout`), then counts what is
/// missing, what came twice and where a device's first occurrences went backwards.
pub fn tally(kafka: &Kafka, topic: &str, n: usize, timeout: Duration) -> Tally {
    tally_of(kafka, topic, (0..n as i64).collect(), timeout)
}

/// Like [`tally`], for the sequence numbers `expected` (others that arrive count for order only).
pub fn tally_of(kafka: &Kafka, topic: &str, expected: BTreeSet<i64>, timeout: Duration) -> Tally {
    let deadline = Instant::now() + timeout;
    let mut records;
    loop {
        records = kafka.consume_for(topic, Duration::from_secs(2));
        let distinct: HashSet<i64> = records.iter().map(|r| json(r)["payload"]["seq"].as_i64().unwrap()).collect();
        if expected.iter().all(|s| distinct.contains(s)) || Instant::now() > deadline {
            break;
        }
    }
    let mut t = Tally::default();
    let mut seen: HashSet<i64> = HashSet::new();
    let mut last_by_device: HashMap<String, i64> = HashMap::new();
    // Records come back per partition in offset order; one device is one key, so one partition.
    for r in &records {
        let v = json(r);
        let seq = v["payload"]["seq"].as_i64().unwrap();
        if !seen.insert(seq) {
            t.duplicates += 1;
            continue;
        }
        let last = last_by_device.entry(v["device_id"].as_str().unwrap().to_string()).or_insert(-1);
        if seq < *last {
            t.order_violations += 1;
            if t.order_violations <= 5 {
                eprintln!("order violation: device {} seq {seq} after {}", v["device_id"], *last);
            }
        }
        *last = seq;
    }
    t.missing = expected.into_iter().filter(|s| !seen.contains(s)).collect();
    t.lost = t.missing.len();
    t
}

pub fn report(name: &str, n: usize, t: &Tally) {
    eprintln!(
        "FAULT RESULT {name}: sent={n} lost={} duplicates={} order_violations={}",
        t.lost, t.duplicates, t.order_violations
    );
}

/// The gateway's last 60 log lines, DEBUG left out: for assertion messages.
pub fn tail(gw: &Gateway) -> String {
    let logs = gw.logs();
    let lines: Vec<&str> = logs.lines().filter(|l| !l.contains("DEBUG")).collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}
