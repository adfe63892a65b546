//! Load generator and meter for a running gateway: publishes sequenced, timestamped messages to MQTT and
//! reads them back from Kafka, then reports throughput, end-to-end latency and the gateway's memory.
//! `scripts/bench.sh` sets everything up; see docs/BENCHMARKS.md.
//!
//!     cargo run --release --example bench -- --mqtt 127.0.0.1:1883 --kafka 127.0.0.1:9092 \
//!         --topic bench --messages 50000 --devices 100 --qos 1 --payload-bytes 200 --gateway-pid PID
//!
//! The Kafka topic is created with `message.timestamp.type=LogAppendTime`, so a record's timestamp is
//! when the broker appended it: latency is publish (before the MQTT send) to append in Kafka.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut opts: HashMap<String, String> = HashMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(k) = args.next() {
        let v = args.next().ok_or_else(|| format!("{k} needs a value"))?;
        opts.insert(k.trim_start_matches("--").to_string(), v);
    }
    let get = |k: &str, d: &str| opts.get(k).cloned().unwrap_or_else(|| d.to_string());
    let mqtt = get("mqtt", "127.0.0.1:1883");
    let kafka = get("kafka", "127.0.0.1:9092");
    let topic = get("topic", "bench");
    let n: u64 = get("messages", "50000").parse()?;
    let devices: u64 = get("devices", "100").parse()?;
    let qos = match get("qos", "1").as_str() {
        "0" => QoS::AtMostOnce,
        "2" => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    };
    let payload_bytes: usize = get("payload-bytes", "200").parse()?;
    let rate: u64 = get("rate", "0").parse()?; // messages per second, 0 = as fast as possible
    let gateway_pid: u32 = get("gateway-pid", "0").parse()?;
    let filter = get("mqtt-prefix", "bench");

    // The topic, with broker append time as the record timestamp.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &kafka).create()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(admin.create_topics(
        &[NewTopic::new(&topic, 6, TopicReplication::Fixed(1)).set("message.timestamp.type", "LogAppendTime")],
        &AdminOptions::new(),
    ))?;

    // Consumer first, so nothing is missed.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka)
        .set("group.id", format!("bench-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[&topic])?;
    let done = Arc::new(AtomicBool::new(false));
    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peak) = (done.clone(), peak_rss.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) && gateway_pid != 0 {
                peak.fetch_max(rss_kib(gateway_pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    // Publisher: one connection, in order, waiting for the broker's acks at QoS > 0.
    let (host, port) = mqtt.rsplit_once(':').ok_or("--mqtt must be host:port")?;
    let mut mo = MqttOptions::new(format!("bench-publisher-{}", std::process::id()), host, port.parse()?);
    mo.set_max_packet_size(1 << 20, 1 << 20);
    mo.set_inflight(1000);
    let (client, mut connection) = Client::new(mo, 10_000);
    let expected_acks = if qos == QoS::AtMostOnce { 0 } else { n };
    let pump = std::thread::spawn(move || {
        let mut acks = 0;
        for ev in connection.iter() {
            match ev {
                Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => acks += 1,
                Err(e) => return Err(e.to_string()),
                _ => {}
            }
            if acks >= expected_acks && expected_acks > 0 {
                return Ok(());
            }
        }
        Ok(())
    });
    let filler = "x".repeat(payload_bytes.saturating_sub(60));
    let first_sent_us = now_us();
    let started = Instant::now();
    for i in 0..n {
        if rate > 0 {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let payload = format!(r#"{{"seq":{i},"sent_us":{},"fill":"{filler}"}}"#, now_us());
        client.publish(format!("{filter}/dev-{}/data", i % devices), qos, false, payload)?;
    }
    let published = started.elapsed();
    if expected_acks > 0 {
        pump.join().map_err(|_| "publisher thread")??;
    }

    // Read everything back.
    let mut latencies_us: Vec<u64> = Vec::with_capacity(n as usize);
    let mut last_append_us = 0u64;
    let mut idle = Instant::now();
    while (latencies_us.len() as u64) < n && idle.elapsed() < Duration::from_secs(30) {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else { continue };
        idle = Instant::now();
        let Some(value) = m.payload() else { continue };
        let v: serde_json::Value = serde_json::from_slice(value)?;
        let sent = v["payload"]["sent_us"].as_u64().unwrap_or(0);
        let appended_us = m.timestamp().to_millis().unwrap_or(0) as u64 * 1000;
        last_append_us = last_append_us.max(appended_us);
        latencies_us.push(appended_us.saturating_sub(sent));
    }
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let received = latencies_us.len();
    let span_s = (last_append_us.saturating_sub(first_sent_us)) as f64 / 1e6;
    latencies_us.sort_unstable();
    println!("messages          {n} published in {:.2} s ({} devices, QoS {}, {} byte payloads{})", published.as_secs_f64(), devices, qos as u8, payload_bytes, if rate > 0 { format!(", paced at {rate}/s") } else { String::new() });
    println!("received in Kafka {received}{}", if received as u64 == n { "" } else { "  (MISSING RECORDS)" });
    println!("throughput        {:.0} messages/s (first publish to last append)", received as f64 / span_s.max(0.001));
    println!(
        "latency (ms)      p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}  (publish to Kafka append; 1 ms resolution)",
        percentile(&latencies_us, 0.50) as f64 / 1000.0,
        percentile(&latencies_us, 0.95) as f64 / 1000.0,
        percentile(&latencies_us, 0.99) as f64 / 1000.0,
        latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    if gateway_pid != 0 {
        println!("gateway RSS       peak {} KiB, now {} KiB", peak_rss.load(Ordering::Relaxed), rss_kib(gateway_pid));
    }
    Ok(())
}
