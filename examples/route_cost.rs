//! What a route's `schema` and `rate_limit` cost per message, measured on the pure core without brokers
//! (docs/BENCHMARKS.md): `cargo run --release --example route_cost`. Builds the record of the bench
//! load's payload (examples/bench-schema.json) for a route without and with the schema, and times a rate
//! limit's per-record work (the schedule lookup by route name, a clock read and the reservation). Best
//! of 5 rounds of 200,000 each, in nanoseconds per message.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mqtt_kafka_gateway::config::{self, Config};
use mqtt_kafka_gateway::envelope::{self, Message, Payload};
use mqtt_kafka_gateway::throttle::{RateLimit, Schedule};

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
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let schema = root.join("examples/bench-schema.json");
    let plain = load(root, "");
    let checked = load(root, &format!(", schema: '{}'", schema.display()));
    let payload = format!(r#"{{"seq":12345,"sent_us":1764583200123456,"fill":"{}"}}"#, "x".repeat(90));
    let topic = "bench/dev-42/data";
    let msg = Message {
        topic,
        payload: payload.as_bytes(),
        qos: 0,
        retain: false,
        received_at: SystemTime::now(),
        properties: None,
    };
    let bytes = payload.as_bytes();
    let build = |c: &Config| {
        let route = &c.routes.routes()[0];
        best(|| {
            black_box(envelope::build(route, &msg, &Payload::new(black_box(bytes))));
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
