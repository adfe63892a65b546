//! Reads a `/metrics` scrape with a real OpenMetrics parser: the `prometheus_client` Python package's,
//! from the virtualenv `scripts/install-test-tools.sh` makes. A scrape it cannot parse fails the test.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// One sample: its name (with `_total`, `_bucket`, ... as exposed), labels and value.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

fn python() -> PathBuf {
    let cache = std::env::var_os("MKG_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/mqtt-kafka-gateway"));
    let py = cache.join("py/bin/python");
    assert!(py.exists(), "{} is missing: run scripts/install-test-tools.sh (scripts/test.sh does)", py.display());
    py
}

const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;

/// Parses an OpenMetrics text scrape; panics with the parser's error if it is not valid.
pub fn parse(body: &str) -> Vec<Sample> {
    let mut child = Command::new(python())
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the OpenMetrics parser");
    child.stdin.take().expect("stdin").write_all(body.as_bytes()).expect("write the scrape");
    let out = child.wait_with_output().expect("parser output");
    assert!(out.status.success(), "not valid OpenMetrics: {}\n---\n{body}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("parser JSON")
}

/// The value of the sample `name` whose labels include `labels`; 0 when there is none.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .sum()
}
