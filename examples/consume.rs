//! Prints the records of a Kafka topic, from the beginning, as they arrive: a quick way to see what the
//! gateway writes without Kafka's own tools.
//!
//!     scripts/consume.sh raw_iot_data                 # localhost:9092 (the build scripts/run.sh made)
//!     scripts/consume.sh raw_iot_data kafka:29092
//!
//! Stops after 10 idle seconds, or with Ctrl-C.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let topic = args.next().unwrap_or_else(|| "raw_iot_data".into());
    let bootstrap = args.next().unwrap_or_else(|| "localhost:9092".into());
    let group = format!("consume-example-{}", std::process::id());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[&topic])?;
    eprintln!("reading {topic} on {bootstrap} (stops after 10 idle seconds)");
    let mut idle_since = Instant::now();
    while idle_since.elapsed() < Duration::from_secs(10) {
        let Some(result) = consumer.poll(Duration::from_millis(500)) else { continue };
        let m = result?;
        idle_since = Instant::now();
        let key = m.key().map(String::from_utf8_lossy).unwrap_or_default();
        let value = m.payload().map(String::from_utf8_lossy).unwrap_or_default();
        let headers: Vec<String> = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| format!("{}={}", h.key, String::from_utf8_lossy(h.value.unwrap_or_default())))
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "partition={} offset={} key={key} headers=[{}]\n  {value}",
            m.partition(),
            m.offset(),
            headers.join(", ")
        );
    }
    Ok(())
}
