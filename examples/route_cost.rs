//! What a route's `schema` and `rate_limit` cost per message, measured on the pure core without brokers
//! (docs/BENCHMARKS.md): `cargo run --release --example route_cost`. Builds the record of the bench
//! load's payload (examples/bench-schema.json) for a route without and with the schema, and times a rate
//! limit's per-record work (the schedule lookup by route name, a clock read and the reservation). Best
//! of 5 rounds of 200,000 each, in nanoseconds per message.
//!
//! `route_cost --per-record N [--template] [--replicas]` instead does the engine's per-record work N
//! times and nothing else, for `valgrind --tool=callgrind` to count (docs/BENCHMARKS.md): the message's
//! facts, the device, the replica check and the record, for the spec's route (`--template`: a topic
//! template naming a regex group; `--replicas`: three ordered replicas).

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mqtt_kafka_gateway::config::{self, Config};
use mqtt_kafka_gateway::core::envelope::{self, Facts};
use mqtt_kafka_gateway::core::message::Message;
use mqtt_kafka_gateway::core::routing::rate_limit::{RateLimit, Schedule};

const ROUNDS: usize = 5;
const N: usize = 200_000;

fn load(dir: &Path, route_extra: &str) -> Config {
    let text = format!("routes:\n  - {{ name: bench, filter: 'bench/#', topic: t{route_extra} }}\n");
    let path = dir.join("routes.yaml");
    config::load_from_str(&path, &text, &NoEnv).unwrap_or_else(|e| panic!("{e}"))
}

struct NoEnv;
impl config::EnvSource for NoEnv {
    fn get(&self, _: &str) -> Option<String> {
        None
    }
    fn all(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

fn best(mut f: impl FnMut()) -> f64 {
    (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..N {
                f();
            }
            t.elapsed().as_nanos() as f64 / N as f64
        })
        .fold(f64::MAX, f64::min)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--per-record") {
        let n = args.get(i + 1).and_then(|n| n.parse().ok()).unwrap_or(100_000);
        let encoding = args.iter().position(|a| a == "--encoding").and_then(|i| args.get(i + 1)).cloned();
        return per_record(
            n,
            args.iter().any(|a| a == "--template"),
            args.iter().any(|a| a == "--replicas"),
            encoding.as_deref(),
        );
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let schema = root.join("examples/bench-schema.json");
    let plain = load(root, "");
    let checked = load(root, &format!(", schema: '{}'", schema.display()));
    let payload = format!(r#"{{"seq":12345,"sent_us":1764583200123456,"fill":"{}"}}"#, "x".repeat(90));
    let topic = "bench/dev-42/data";
    let msg = Message::new(topic, payload.clone().into_bytes(), 0, SystemTime::now());
    let build = |c: &Config| {
        let route = &c.routes.routes()[0];
        best(|| {
            let facts = Facts::new(black_box(&msg));
            black_box(envelope::build(route, &facts, &route.device(&msg.topic)));
        })
    };
    let without = build(&plain);
    let with = build(&checked);
    let mut schedules: HashMap<Arc<str>, Schedule> = HashMap::new();
    let name: Arc<str> = Arc::from("bench");
    let limit = RateLimit::new(1e9, 1_000_000, Duration::from_secs(1));
    schedules.insert(name.clone(), Schedule::new(limit, Instant::now()));
    let limited = best(|| {
        let s = schedules.get_mut(black_box(&name)).map(|s| s.reserve(Instant::now(), None));
        black_box(s);
    });
    println!("payload {} bytes", payload.len());
    println!("record without schema   {without:8.0} ns/message");
    println!("record with schema      {with:8.0} ns/message  (+{:.0} ns)", with - without);
    println!("rate limit reservation  {limited:8.0} ns/message");
}

/// The schema `--encoding avro|protobuf` encodes the bench's envelope with (examples/bench-envelope.*),
/// compiled as the registry edge would compile it.
fn bench_schema(encoding: &str) -> mqtt_kafka_gateway::core::encoding::Compiled {
    use mqtt_kafka_gateway::core::encoding::{Compiled, EncodingKind, SchemaText};
    let (kind, file) = match encoding {
        "avro" => (EncodingKind::Avro, "bench-envelope.avsc"),
        "protobuf" => (EncodingKind::Protobuf, "bench-envelope.proto"),
        other => panic!("--encoding avro or protobuf, not {other}"),
    };
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(file)).unwrap();
    let schema = SchemaText { id: 1, subject: "bench-value".into(), version: 1, kind, text, references: Vec::new() };
    Compiled::compile(&schema, None).unwrap_or_else(|e| panic!("{e}"))
}

/// The engine's work per record, `n` times: facts, device, replica, record (see the module doc); with
/// `encoding`, the record encoded too, and the payload the bench's (`{"seq", "sent_us", "fill"}`).
fn per_record(n: usize, template: bool, replicas: bool, encoding: Option<&str>) {
    let schema = encoding.filter(|e| *e != "json").map(bench_schema);
    let dir = std::env::temp_dir();
    let topic_line = if template {
        "topic: 'iot.{kind}', device_id: { regex: '^cmnd/(?P<device_id>[^/]+)/[^/]+/[^/]+/(?P<kind>[^/]+)' }"
    } else {
        "topic: raw_iot_data"
    };
    // The replica that owns the message's device, so that its record is built.
    let owner = mqtt_kafka_gateway::core::routing::replicas::Replicas::owner(3, "f2-e4fd45f654be");
    let replicas_line = if replicas { format!("replicas: {{ count: 3, index: {owner} }}\n") } else { String::new() };
    let text = format!("{replicas_line}routes:\n  - {{ name: spec, filter: 'cmnd/#', {topic_line} }}\n");
    let config = config::load_from_str(&dir.join("routes.yaml"), &text, &NoEnv).unwrap_or_else(|e| panic!("{e}"));
    let route = &config.routes.routes()[0];
    let bench_payload = format!(r#"{{"seq":17,"sent_us":1733300000000000,"fill":"{}"}}"#, "x".repeat(90));
    let payload = match encoding {
        Some(_) => bench_payload.as_str(),
        None => r#"{"timestamp": "2023-05-26 18:34:04.928538", "door-sensor-1": false, "door-sensor-2": true}"#,
    };
    let msg = Message::new(
        "cmnd/f2-e4fd45f654be/access-control-mode/J1/door-sensors",
        payload.as_bytes().to_vec(),
        0,
        SystemTime::now(),
    );
    let mut kept = 0usize;
    for _ in 0..n {
        let facts = Facts::new(black_box(&msg));
        let device = route.device(&msg.topic);
        if config.replicas.is_some_and(|r| !r.owns(device.id)) {
            continue;
        }
        kept += 1;
        let outcome = envelope::build(route, &facts, &device);
        match (&schema, outcome) {
            (Some(schema), envelope::Outcome::Record(mut record)) => {
                schema.apply(&mut record).unwrap_or_else(|e| panic!("{e}"));
                black_box(record);
            }
            (_, other) => {
                black_box(other);
            }
        }
    }
    println!("{kept} of {n} records built");
}
