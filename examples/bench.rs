//! Load generator and meter for `scripts/bench.sh` (see docs/BENCHMARKS.md). One mode per system
//! measured, each printing a human line and one `RESULT key=value ...` line for the script's table:
//!
//!     bench gateway  --pid PID --topic T ...   publish, read back from Kafka: the gateway
//!     bench mqtt-ceiling ...                   publish to a bare discarding `mosquitto_sub`: the MQTT ceiling
//!     bench kafka-ceiling --topic T ...        Kafka's own ProducerPerformance on the same broker
//!     bench librdkafka --topic T ...           the gateway's Kafka client alone: its producer, settings and
//!                                              records (envelope-sized, keyed, six headers), no MQTT
//!     bench publish ...                        the generator alone, to no subscriber
//!
//! The downlinks (Kafka → MQTT), for `scripts/bench-downlink.sh`, on MQTT topics `<topic-prefix>/dev-<d>/set`
//! (`--topic-prefix bench-dl`):
//!
//!     bench downlink-produce --topic T ...     the load, written once: records keyed `dev-<i % D>`, JSON
//!                                              values with the device's sequence number; waits for every ack
//!     bench downlink-gateway --pid PID ...     a bare `mosquitto_sub` counts what the gateway publishes
//!     bench downlink-mqtt-ceiling ...          the same subscriber, the same payloads from one bare publisher
//!     bench downlink-kafka-ceiling --topic T   Kafka's own ConsumerPerformance reading the topic, a new group
//!
//! Common options: --mqtt 127.0.0.1:1883 --kafka 127.0.0.1:9092 --qos 0|1 --messages N --devices D
//! --payload-bytes B --rate R (messages/s, 0 = as fast as one client can) --prefix bench.
//!
//! Payloads are JSON with a per-device sequence number and the send time in microseconds, so every mode
//! counts loss, per-device order violations and latency the same way. The gateway's topic uses
//! `message.timestamp.type=LogAppendTime`: its latency is publish to Kafka append.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

type Error = Box<dyn std::error::Error>;

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// CPU time (user + system) of a process so far, in milliseconds.
fn cpu_ms(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 1000 / clock_ticks_per_sec())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// The peak RSS of a process so far (VmHWM), in KiB; None once it is gone.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Opts(HashMap<String, String>);

impl Opts {
    fn get(&self, k: &str, d: &str) -> String {
        self.0.get(k).cloned().unwrap_or_else(|| d.to_string())
    }
    fn num(&self, k: &str, d: u64) -> Result<u64, Error> {
        Ok(self.get(k, &d.to_string()).parse()?)
    }
}

/// What every mode shares: the load and where it goes.
#[derive(Clone)]
struct Load {
    mqtt_host: String,
    mqtt_port: u16,
    kafka: String,
    qos: QoS,
    n: u64,
    devices: u64,
    payload_bytes: usize,
    rate: u64,
    prefix: String,
}

impl Load {
    fn from(o: &Opts) -> Result<Self, Error> {
        let mqtt = o.get("mqtt", "127.0.0.1:1883");
        let (host, port) = mqtt.rsplit_once(':').ok_or("--mqtt must be host:port")?;
        Ok(Self {
            mqtt_host: host.to_string(),
            mqtt_port: port.parse()?,
            kafka: o.get("kafka", "127.0.0.1:9092"),
            qos: if o.get("qos", "1") == "0" { QoS::AtMostOnce } else { QoS::AtLeastOnce },
            n: o.num("messages", 100_000)?,
            devices: o.num("devices", 1000)?,
            payload_bytes: o.num("payload-bytes", 150)? as usize,
            rate: o.num("rate", 0)?,
            prefix: o.get("prefix", "bench"),
        })
    }

    fn describe(&self) -> String {
        let pace = if self.rate > 0 { format!("paced at {}/s", self.rate) } else { "burst".into() };
        format!(
            "{} messages, {} devices, QoS {}, {} B payloads, {pace}",
            self.n, self.devices, self.qos as u8, self.payload_bytes
        )
    }
}

/// Publishes the load over one MQTT connection, in order, waiting for the broker's acks at QoS 1.
/// Returns (first send time in µs since the epoch, seconds spent publishing, the generator's CPU ms).
fn publish(load: &Load) -> Result<(u64, f64, u64), Error> {
    let mut mo = MqttOptions::new(
        format!("bench-publisher-{}-{}", std::process::id(), now_us()),
        &load.mqtt_host,
        load.mqtt_port,
    );
    mo.set_max_packet_size(1 << 20, 1 << 20);
    mo.set_inflight(1000);
    mo.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = Client::new(mo, 10_000);
    let expected_acks = if load.qos == QoS::AtMostOnce { 0 } else { load.n };
    let pump = std::thread::spawn(move || {
        let mut acks = 0;
        for ev in connection.iter() {
            match ev {
                Ok(Event::Incoming(Packet::PubAck(_))) => acks += 1,
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return Ok(()),
                Err(e) => return Err(e.to_string()),
                _ => {}
            }
            if expected_acks > 0 && acks >= expected_acks {
                return Ok(());
            }
        }
        Ok(())
    });
    // The JSON around the filler is about 60 bytes.
    let filler = "x".repeat(load.payload_bytes.saturating_sub(60));
    let mut seq_by_device = vec![0u64; load.devices as usize];
    let cpu_before = cpu_ms(std::process::id()).unwrap_or(0);
    let first = now_us();
    let started = Instant::now();
    for i in 0..load.n {
        if load.rate > 0 {
            let due = started + Duration::from_secs_f64(i as f64 / load.rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let d = (i % load.devices) as usize;
        let payload = format!(r#"{{"seq":{},"sent_us":{},"fill":"{filler}"}}"#, seq_by_device[d], now_us());
        seq_by_device[d] += 1;
        client.publish(format!("{}/dev-{d}/data", load.prefix), load.qos, false, payload)?;
    }
    if expected_acks > 0 {
        pump.join().map_err(|_| "publisher thread")??;
    } else {
        // QoS 0: nothing to wait for but the socket; a DISCONNECT goes out after everything queued.
        client.disconnect()?;
        pump.join().map_err(|_| "publisher thread")??;
    }
    let spent = started.elapsed().as_secs_f64();
    Ok((first, spent, cpu_ms(std::process::id()).unwrap_or(0).saturating_sub(cpu_before)))
}

/// Loss, order and latency of what arrived, from (device, seq, latency µs) in arrival order.
struct Tally {
    received: u64,
    order_violations: u64,
    latencies_us: Vec<u64>,
}

impl Tally {
    fn new(n: u64) -> Self {
        Self { received: 0, order_violations: 0, latencies_us: Vec::with_capacity(n as usize) }
    }

    fn add(&mut self, last: &mut HashMap<String, i64>, device: &str, seq: i64, latency_us: u64) {
        self.received += 1;
        self.latencies_us.push(latency_us);
        let prev = last.entry(device.to_string()).or_insert(-1);
        if seq < *prev {
            self.order_violations += 1;
        }
        *prev = seq;
    }

    fn result(
        mut self,
        system: &str,
        load: &Load,
        span_s: f64,
        cpu_ms: Option<u64>,
        rss_kib: Option<u64>,
        publish_s: f64,
    ) -> String {
        self.latencies_us.sort_unstable();
        let ms = |p: f64| percentile(&self.latencies_us, p) as f64 / 1000.0;
        let cpu_us = cpu_ms
            .map(|c| format!("{:.2}", c as f64 * 1000.0 / self.received.max(1) as f64))
            .unwrap_or_else(|| "-".into());
        let rate = self.received as f64 / span_s.max(0.001);
        println!(
            "{system}: {} of {} ({} lost), {} order violations, {rate:.0} msg/s, latency p50 {:.1} ms p99 {:.1} ms, {cpu_us} us CPU/msg{}; published in {publish_s:.2} s ({:.0}/s)",
            self.received,
            load.n,
            load.n.saturating_sub(self.received),
            self.order_violations,
            ms(0.5),
            ms(0.99),
            rss_kib.map(|r| format!(", peak RSS {r} KiB")).unwrap_or_default(),
            load.n as f64 / publish_s.max(0.001),
        );
        format!(
            "RESULT system={system} sent={} delivered={} lost={} order_violations={} msg_per_s={rate:.0} p50_ms={:.1} p99_ms={:.1} cpu_us_per_msg={cpu_us} peak_rss_kib={} publish_per_s={:.0}",
            load.n,
            self.received,
            load.n.saturating_sub(self.received),
            self.order_violations,
            ms(0.5),
            ms(0.99),
            rss_kib.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
            load.n as f64 / publish_s.max(0.001),
        )
    }
}

fn json_u64(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

/// A varint (LEB128) at `*at`, advancing it.
fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Device id, seq and sent_us of a record the gateway wrote, by `--value`: `json` (the envelope as JSON),
/// `avro` (the envelope in Avro, its payload the record {seq, sent_us, fill}: examples/bench-envelope.avsc)
/// or `protobuf` (the envelope message of examples/bench-envelope.proto), both after Confluent's 5-byte
/// framing. A decoder of exactly that shape: the bench measures the gateway, not a decoder.
fn bench_fields(kind: &str, value: &[u8]) -> Option<(String, i64, u64)> {
    match kind {
        "avro" => {
            let mut at = 5;
            let zigzag = |v: u64| ((v >> 1) as i64) ^ -((v & 1) as i64);
            let string = |at: &mut usize| -> Option<String> {
                let len = zigzag(varint(value, at)?) as usize;
                let s = String::from_utf8_lossy(value.get(*at..*at + len)?).into_owned();
                *at += len;
                Some(s)
            };
            let _topic = string(&mut at)?;
            let device = string(&mut at)?;
            let seq = zigzag(varint(value, &mut at)?);
            let sent = zigzag(varint(value, &mut at)?) as u64;
            Some((device, seq, sent))
        }
        "protobuf" => {
            // magic, id, the message index [0] (one byte), then fields: 2 device_id, 3 payload {1 seq, 2 sent_us}.
            let mut at = 6;
            let (mut device, mut seq, mut sent) = (String::new(), 0i64, 0u64);
            while at < value.len() {
                let key = varint(value, &mut at)?;
                match (key >> 3, key & 7) {
                    (_, 0) => {
                        varint(value, &mut at)?;
                    }
                    (_, 1) => at += 8,
                    (field, 2) => {
                        let len = varint(value, &mut at)? as usize;
                        let body = value.get(at..at + len)?;
                        if field == 2 {
                            device = String::from_utf8_lossy(body).into_owned();
                        } else if field == 3 {
                            let mut i = 0;
                            while i < body.len() {
                                let k = varint(body, &mut i)?;
                                match (k >> 3, k & 7) {
                                    (1, 0) => seq = varint(body, &mut i)? as i64,
                                    (2, 0) => sent = varint(body, &mut i)?,
                                    (_, 0) => {
                                        varint(body, &mut i)?;
                                    }
                                    (_, 2) => {
                                        let l = varint(body, &mut i)? as usize;
                                        i += l;
                                    }
                                    _ => return None,
                                }
                            }
                        }
                        at += len;
                    }
                    _ => return None,
                }
            }
            Some((device, seq, sent))
        }
        _ => {
            let v: serde_json::Value = serde_json::from_slice(value).ok()?;
            let p = &v["payload"];
            Some((
                v["device_id"].as_str().unwrap_or("?").to_string(),
                json_u64(p, "seq") as i64,
                json_u64(p, "sent_us"),
            ))
        }
    }
}

/// The gateway: publish, read every record back from its Kafka topic.
fn gateway(o: &Opts, load: &Load) -> Result<String, Error> {
    let topic = o.get("topic", "bench");
    let value_kind = o.get("value", "json");
    let pid: u32 = o.num("pid", 0)? as u32;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &load.kafka).create()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(admin.create_topics(
        &[NewTopic::new(&topic, 6, TopicReplication::Fixed(1)).set("message.timestamp.type", "LogAppendTime")],
        &AdminOptions::new(),
    ))?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &load.kafka)
        .set("group.id", format!("bench-{}-{}", std::process::id(), now_us()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[&topic])?;
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) && pid != 0 {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let cpu_before = cpu_ms(pid);
    let (first, publish_s, _) = publish(load)?;
    let mut tally = Tally::new(load.n);
    let mut last = HashMap::new();
    let mut last_append_us = first;
    let mut idle = Instant::now();
    // Bounded: stops once everything is in, or after 20 s without a record.
    while tally.received < load.n && idle.elapsed() < Duration::from_secs(20) {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else { continue };
        idle = Instant::now();
        let Some(value) = m.payload() else { continue };
        let (device, seq, sent_us) =
            bench_fields(&value_kind, value).ok_or_else(|| format!("a record that is not {value_kind}"))?;
        let appended_us = m.timestamp().to_millis().unwrap_or(0).max(0) as u64 * 1000;
        last_append_us = last_append_us.max(appended_us);
        tally.add(&mut last, &device, seq, appended_us.saturating_sub(sent_us));
    }
    // CPU read once the last record is in Kafka: the gateway's whole work for this load.
    let cpu = cpu_before.and_then(|b| cpu_ms(pid).map(|a| a.saturating_sub(b)));
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let span_s = last_append_us.saturating_sub(first) as f64 / 1e6;
    Ok(tally.result("gateway", load, span_s, cpu, (pid != 0).then(|| peak.load(Ordering::Relaxed)), publish_s))
}

/// The MQTT ceiling: a bare `mosquitto_sub` on the same broker, its output read here and discarded.
fn mqtt_ceiling(load: &Load) -> Result<String, Error> {
    let mut sub = Command::new("mosquitto_sub")
        .args(["-h", &load.mqtt_host, "-p", &load.mqtt_port.to_string(), "-q", &(load.qos as u8).to_string()])
        .args(["-t", &format!("{}/#", load.prefix), "-F", "%t %p", "-i", &format!("bench-ceiling-{}", now_us())])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run mosquitto_sub ({e}); install it with scripts/install-mosquitto.sh"))?;
    let pid = sub.id();
    let stdout = sub.stdout.take().ok_or("mosquitto_sub stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<(String, u64)>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((line, now_us())).is_err() {
                return;
            }
        }
    });
    // Let it subscribe before the load starts.
    std::thread::sleep(Duration::from_millis(500));
    let cpu_before = cpu_ms(pid);
    let publisher = {
        let load = load.clone();
        std::thread::spawn(move || publish(&load).map_err(|e| e.to_string()))
    };
    let mut tally = Tally::new(load.n);
    let mut last = HashMap::new();
    let mut last_us = 0;
    let started = now_us();
    while tally.received < load.n {
        let Ok((line, at)) = rx.recv_timeout(Duration::from_secs(5)) else { break };
        last_us = at;
        let Some((topic, payload)) = line.split_once(' ') else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(payload) else { continue };
        tally.add(&mut last, topic, json_u64(&v, "seq") as i64, at.saturating_sub(json_u64(&v, "sent_us")));
    }
    let cpu = cpu_before.and_then(|b| cpu_ms(pid).map(|a| a.saturating_sub(b)));
    let _ = sub.kill();
    let _ = sub.wait();
    let _ = reader.join();
    let (first, publish_s, _) = publisher.join().map_err(|_| "publisher thread")??;
    let span_s = last_us.saturating_sub(first.min(started)) as f64 / 1e6;
    Ok(tally.result("mqtt-ceiling", load, span_s, cpu, None, publish_s))
}

/// The Kafka ceiling: Kafka's own producer (`ProducerPerformance`, from the broker's jars) sending records
/// the size of the gateway's envelopes with the gateway's producer settings. The JVM is warmed up first
/// (`--warmup-records`: a burst's size, or 2 s of a paced load) and the figures are its steady state. Its
/// CPU is over the whole run, net of the JVM's start (a one-record run, subtracted), so it still holds
/// the warm-up's compilation: an upper bound.
fn kafka_ceiling(o: &Opts, load: &Load) -> Result<String, Error> {
    let libs = o.get("kafka-libs", "");
    let record_size = o.num("record-size", load.payload_bytes as u64 + 130)?;
    let linger = o.get("linger-ms", "1");
    let run = |n: u64, warmup: u64, topic: &str| -> Result<(String, u64), Error> {
        let mut child = Command::new("java")
            .args(["-Xmx512m", "-cp", &format!("{libs}/*"), "org.apache.kafka.tools.ProducerPerformance"])
            .args([
                "--topic",
                topic,
                "--num-records",
                &(n + warmup).to_string(),
                "--record-size",
                &record_size.to_string(),
            ])
            .args(if warmup > 0 { vec!["--warmup-records".to_string(), warmup.to_string()] } else { vec![] })
            .args(["--throughput", &if load.rate > 0 { load.rate.to_string() } else { "-1".into() }])
            .arg("--command-property")
            .args([
                format!("bootstrap.servers={}", load.kafka),
                "acks=all".into(),
                "enable.idempotence=true".into(),
                format!("linger.ms={linger}"),
                "compression.type=lz4".into(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run java ({e}); scripts/install-kafka.sh installs it"))?;
        let pid = child.id();
        let stdout = child.stdout.take().ok_or("stdout")?;
        let cpu = Arc::new(AtomicU64::new(0));
        let sampler = {
            let cpu = cpu.clone();
            std::thread::spawn(move || {
                while let Some(c) = cpu_ms(pid) {
                    cpu.store(c, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        // With a warm-up the last summary is the steady state's.
        let summary = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.contains("records sent"))
            .last()
            .unwrap_or_default();
        child.wait()?;
        let _ = sampler.join();
        Ok((summary, cpu.load(Ordering::Relaxed)))
    };
    let topic = o.get("topic", "bench_kafka");
    let (_, jvm_ms) = run(1, 0, &format!("{topic}_jvm"))?;
    let warmup = if load.rate > 0 { load.n.min(load.rate * 2) } else { load.n };
    let (summary, total_ms) = run(load.n, warmup, &topic)?;
    // "N [steady state] records sent, R records/sec (M MB/sec), A ms avg latency, X ms max latency,
    // P50 ms 50th, P95 ms 95th, P99 ms 99th, ..."
    let nums: Vec<f64> = summary.split([' ', ',', '(']).filter_map(|w| w.parse().ok()).collect();
    let (sent, rate, p50, p99) = match nums.as_slice() {
        [sent, rate, _mb, _avg, _max, p50, _p95, p99, ..] => (*sent as u64, *rate, *p50, *p99),
        _ => return Err(format!("cannot read ProducerPerformance's summary: {summary:?}").into()),
    };
    let cpu_us = total_ms.saturating_sub(jvm_ms) as f64 * 1000.0 / (sent + warmup).max(1) as f64;
    println!("kafka-ceiling: {sent} records of {record_size} B after {warmup} to warm up, {rate:.0} records/s, latency p50 {p50:.1} ms p99 {p99:.1} ms (send to ack), {cpu_us:.2} us CPU/record (whole run, net of JVM start)");
    Ok(format!(
        "RESULT system=kafka-ceiling sent={sent} delivered={sent} lost=0 order_violations=- msg_per_s={rate:.0} p50_ms={p50:.1} p99_ms={p99:.1} cpu_us_per_msg={cpu_us:.2} peak_rss_kib=- publish_per_s=-"
    ))
}

/// Delivery reports of the librdkafka floor: send-to-ack latencies, and failures.
struct Acks {
    latencies_us: std::sync::Mutex<Vec<u64>>,
    failed: AtomicU64,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    /// The send time, in µs since the epoch.
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_us: Self::DeliveryOpaque) {
        match result {
            Ok(_) => self.latencies_us.lock().map(|mut l| l.push(now_us().saturating_sub(*sent_us))).unwrap_or(()),
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The floor of the gateway's Kafka side: librdkafka alone, as the gateway configures it (idempotent,
/// `acks=all`, lz4, `linger.ms` 1, murmur2 partitioner), producing records the size of the gateway's
/// envelopes, keyed by device, with the six headers the gateway writes, paced like the MQTT load, and a
/// thread serving delivery reports as they come. This process does nothing else, so its CPU is what the
/// Kafka half of any gateway built on librdkafka costs at this rate on this machine (the pacing thread's
/// wake-ups included, as a gateway's MQTT reads would be).
fn librdkafka(o: &Opts, load: &Load) -> Result<String, Error> {
    let topic = o.get("topic", "bench_librdkafka");
    let record_size = o.num("record-size", load.payload_bytes as u64 + 130)? as usize;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &load.kafka).create()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(admin.create_topics(&[NewTopic::new(&topic, 6, TopicReplication::Fixed(1))], &AdminOptions::new()))?;
    let acks =
        Acks { latencies_us: std::sync::Mutex::new(Vec::with_capacity(load.n as usize)), failed: AtomicU64::new(0) };
    let producer: Arc<BaseProducer<Acks>> = Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", &load.kafka)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("compression.type", "lz4")
            .set("linger.ms", o.get("linger-ms", "1"))
            .set("batch.size", "1000000")
            .set("message.timeout.ms", "0")
            .set("queue.buffering.max.messages", "100000")
            .set("queue.buffering.max.kbytes", "65536")
            .create_with_context(acks)?,
    );
    let done = Arc::new(AtomicBool::new(false));
    let reports = {
        let (producer, done) = (producer.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                producer.poll(Duration::from_millis(100));
            }
        })
    };
    let value = "x".repeat(record_size);
    let pid = std::process::id();
    // Warm up: connections, metadata and the producer id, outside the measurement.
    for i in 0..100u64 {
        let key = format!("dev-{i}");
        let _ = producer
            .send(BaseRecord::with_opaque_to(&topic, Box::new(now_us())).key(key.as_bytes()).payload(value.as_bytes()));
    }
    producer.flush(Duration::from_secs(30))?;
    producer.context().latencies_us.lock().map(|mut l| l.clear()).unwrap_or(());
    let cpu_before = cpu_ms(pid);
    let started = Instant::now();
    let due = |i: u64| started + Duration::from_secs_f64(i as f64 / load.rate.max(1) as f64);
    // Paced: the records due within the next millisecond go out together, as a gateway's MQTT read
    // takes what came since the last one: a wake-up per millisecond at most, not per record.
    let mut horizon = started;
    for i in 0..load.n {
        if load.rate > 0 && due(i) >= horizon {
            if let Some(wait) = due(i).checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            horizon = Instant::now().max(due(i)) + Duration::from_millis(1);
        }
        let device = format!("dev-{}", i % load.devices);
        let mqtt_topic = format!("{}/{device}/data", load.prefix);
        let id = format!("{:032x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15);
        let at = format!("{}.{:06}", now_us() / 1_000_000, now_us() % 1_000_000);
        let headers = OwnedHeaders::new_with_capacity(6)
            .insert(Header { key: "mqtt_topic", value: Some(mqtt_topic.as_bytes()) })
            .insert(Header { key: "mqtt_qos", value: Some(b"0".as_slice()) })
            .insert(Header { key: "device_id", value: Some(device.as_bytes()) })
            .insert(Header { key: "route", value: Some(b"bench".as_slice()) })
            .insert(Header { key: "message_id", value: Some(id.as_bytes()) })
            .insert(Header { key: "received_at", value: Some(at.as_bytes()) });
        let mut record = BaseRecord::with_opaque_to(&topic, Box::new(now_us()))
            .key(device.as_bytes())
            .payload(value.as_bytes())
            .headers(headers);
        // A full queue waits, as the gateway does.
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    let publish_s = started.elapsed().as_secs_f64();
    let flushed = producer.flush(Duration::from_secs(30));
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_before.and_then(|b| cpu_ms(pid).map(|a| a.saturating_sub(b)));
    done.store(true, Ordering::Relaxed);
    let _ = reports.join();
    let mut l = producer.context().latencies_us.lock().map(|l| l.clone()).unwrap_or_default();
    l.sort_unstable();
    let delivered = l.len() as u64;
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if flushed.is_err() || failed > 0 {
        return Err(format!("librdkafka: {delivered} of {} delivered, {failed} failed", load.n).into());
    }
    let rate = delivered as f64 / elapsed.max(0.001);
    let ms = |p| percentile(&l, p) as f64 / 1000.0;
    let cpu_us =
        cpu.map(|c| format!("{:.2}", c as f64 * 1000.0 / delivered.max(1) as f64)).unwrap_or_else(|| "-".into());
    println!("librdkafka: {delivered} records of {record_size} B, {rate:.0} records/s, latency p50 {:.1} ms p99 {:.1} ms (send to ack), {cpu_us} us CPU/record; produced in {publish_s:.2} s", ms(0.5), ms(0.99));
    Ok(format!(
        "RESULT system=librdkafka sent={} delivered={delivered} lost={} order_violations=- msg_per_s={rate:.0} p50_ms={:.1} p99_ms={:.1} cpu_us_per_msg={cpu_us} peak_rss_kib=- publish_per_s={:.0}",
        load.n,
        load.n - delivered,
        ms(0.5),
        ms(0.99),
        load.n as f64 / publish_s.max(0.001)
    ))
}

/// The generator alone, to no subscriber: how fast the load can be offered at all.
fn generator(load: &Load) -> Result<String, Error> {
    let (_, publish_s, cpu) = publish(load)?;
    let rate = load.n as f64 / publish_s.max(0.001);
    println!(
        "generator: {} messages in {publish_s:.2} s, {rate:.0}/s, {:.2} us CPU/msg",
        load.n,
        cpu as f64 * 1000.0 / load.n.max(1) as f64
    );
    Ok(format!("RESULT system=generator sent={} delivered=- lost=- order_violations=- msg_per_s={rate:.0} p50_ms=- p99_ms=- cpu_us_per_msg={:.2} peak_rss_kib=- publish_per_s={rate:.0}", load.n, cpu as f64 * 1000.0 / load.n.max(1) as f64))
}

// ---------------------------------------------------------------------------------------------------
// Downlinks (Kafka → MQTT), for `scripts/bench-downlink.sh`: the records are written to a topic once,
// then read by Kafka's own consumer, published by a bare MQTT publisher, and carried by the gateway,
// the last two counted by the same subscriber.

/// A downlink record's value, also the MQTT payload the subscriber reads: the device, its sequence
/// number and a filler up to about `bytes`.
fn downlink_payload(device: u64, seq: u64, bytes: usize) -> String {
    let head = format!(r#"{{"device":"dev-{device}","seq":{seq},"fill":""#);
    let filler = "x".repeat(bytes.saturating_sub(head.len() + 2));
    format!("{head}{filler}\"}}")
}

/// Writes the downlink load to a fresh topic: record i keyed `dev-<i % devices>`, its value
/// [`downlink_payload`] with the device's own sequence number, and waits until Kafka has every one.
fn downlink_produce(o: &Opts, load: &Load) -> Result<String, Error> {
    let topic = o.get("topic", "bench_downlink");
    let partitions = o.num("partitions", 4)? as i32;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &load.kafka).create()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    for r in rt.block_on(
        admin.create_topics(&[NewTopic::new(&topic, partitions, TopicReplication::Fixed(1))], &AdminOptions::new()),
    )? {
        r.map_err(|(t, e)| format!("cannot create the topic {t}: {e}"))?;
    }
    let acks =
        Acks { latencies_us: std::sync::Mutex::new(Vec::with_capacity(load.n as usize)), failed: AtomicU64::new(0) };
    // Idempotent: a retry cannot reorder a device's records.
    let producer: BaseProducer<Acks> = ClientConfig::new()
        .set("bootstrap.servers", &load.kafka)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create_with_context(acks)?;
    let mut seq_by_device = vec![0u64; load.devices as usize];
    let started = Instant::now();
    for i in 0..load.n {
        let d = i % load.devices;
        let value = downlink_payload(d, seq_by_device[d as usize], load.payload_bytes);
        seq_by_device[d as usize] += 1;
        let key = format!("dev-{d}");
        let mut record = BaseRecord::with_opaque_to(&topic, Box::new(now_us())).key(key.as_bytes()).payload(&value);
        // A full queue: serve delivery reports and try again.
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60))?;
    let spent = started.elapsed().as_secs_f64();
    let delivered = producer.context().latencies_us.lock().map(|l| l.len() as u64).unwrap_or(0);
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if delivered != load.n || failed > 0 {
        return Err(format!("downlink-produce: {delivered} of {} records acknowledged, {failed} failed", load.n).into());
    }
    let rate = load.n as f64 / spent.max(0.001);
    println!(
        "downlink-produce: {delivered} records on {topic} ({partitions} partitions), keyed by device, {} B values, acknowledged in {spent:.2} s ({rate:.0}/s)",
        downlink_payload(0, 0, load.payload_bytes).len()
    );
    Ok(format!(
        "RESULT system=produce qos=- sent={} delivered={delivered} lost=0 duplicates=- order_violations=- msg_per_s={rate:.0} cpu_us_per_msg=- peak_rss_kib=-",
        load.n
    ))
}

/// A silence this long between two messages of a run counts as a stall (µs).
const STALL_US: u64 = 100_000;

/// A bare `mosquitto_sub` on `<prefix>/+/set`, its output (`topic payload` lines) read by a thread of
/// this process, each line reduced to (the record's index in the load, arrival time in µs).
struct DownlinkSubscriber {
    sub: std::process::Child,
    rx: std::sync::mpsc::Receiver<(Option<u64>, u64)>,
    reader: std::thread::JoinHandle<()>,
}

/// The record's index in the load, from its topic (`.../dev-<d>/set`) and payload (`"seq":<s>`): s * D + d.
fn downlink_index(line: &str, devices: u64) -> Option<u64> {
    let (topic, payload) = line.split_once(' ')?;
    let device: u64 = topic.split('/').rev().nth(1)?.strip_prefix("dev-")?.parse().ok()?;
    let at = payload.find(r#""seq":"#)? + 6;
    let digits = payload[at..].find(|c: char| !c.is_ascii_digit()).map_or(&payload[at..], |end| &payload[at..at + end]);
    let seq: u64 = digits.parse().ok()?;
    (device < devices).then_some(seq * devices + device)
}

impl DownlinkSubscriber {
    /// Subscribes, and returns once the subscription is in place: a probe published to
    /// `<prefix>/probe/set` (QoS 1, every 200 ms, 10 s at most) came back through it.
    fn start(load: &Load) -> Result<Self, Error> {
        let host_port = ["-h".to_string(), load.mqtt_host.clone(), "-p".into(), load.mqtt_port.to_string()];
        let mut sub = Command::new("mosquitto_sub")
            .args(&host_port)
            .args(["-q", &(load.qos as u8).to_string(), "-t", &format!("{}/+/set", load.prefix), "-F", "%t %p"])
            .args(["-i", &format!("bench-dl-sub-{}-{}", std::process::id(), now_us())])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run mosquitto_sub ({e}); install it with scripts/install-mosquitto.sh"))?;
        let stdout = sub.stdout.take().ok_or("mosquitto_sub stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let devices = load.devices;
        let probe_topic = format!("{}/probe/set", load.prefix);
        let (subscribed_tx, subscribed) = std::sync::mpsc::channel::<()>();
        let reader = {
            let probe = format!("{probe_topic} ");
            std::thread::spawn(move || {
                let mut r = BufReader::with_capacity(1 << 16, stdout);
                let mut line = String::new();
                loop {
                    line.clear();
                    match r.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if line.starts_with(&probe) {
                        let _ = subscribed_tx.send(());
                        continue;
                    }
                    if tx.send((downlink_index(line.trim_end(), devices), now_us())).is_err() {
                        return;
                    }
                }
            })
        };
        for _ in 0..50 {
            Command::new("mosquitto_pub")
                .args(&host_port)
                .args(["-q", "1", "-t", &probe_topic, "-m", "probe"])
                .stderr(Stdio::null())
                .status()?;
            if subscribed.recv_timeout(Duration::from_millis(200)).is_ok() {
                return Ok(Self { sub, rx, reader });
            }
        }
        let _ = sub.kill();
        let _ = sub.wait();
        Err(format!("the subscriber did not get its probe on {probe_topic} within 10 s").into())
    }

    /// Counts the load: from the first message received to the one that completes the N distinct
    /// records, with the CPU of `pid` over that interval. Gives up after `first_within` without a first
    /// message, or 20 s without a next one.
    fn count(self, load: &Load, pid: u32, first_within: Duration) -> Counted {
        let mut seen = vec![false; load.n as usize];
        let mut next_seq: HashMap<u64, u64> = HashMap::new();
        let (mut distinct, mut duplicates, mut order_violations, mut strays) = (0u64, 0u64, 0u64, 0u64);
        let (mut first_us, mut last_us) = (0u64, 0u64);
        let (mut stalls, mut stalled_us) = (0u64, 0u64);
        let mut cpu_first = None;
        let mut cpu = None;
        let mut peak_rss = None;
        let deadline = Instant::now() + first_within;
        while distinct < load.n {
            let wait = if first_us == 0 {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::from_secs(20)
            };
            let Ok((index, at)) = self.rx.recv_timeout(wait) else { break };
            if first_us == 0 {
                cpu_first = cpu_ms(pid);
                first_us = at;
            } else if at.saturating_sub(last_us) >= STALL_US {
                stalls += 1;
                stalled_us += at - last_us;
            }
            last_us = at;
            let Some(i) = index.filter(|i| *i < load.n) else {
                strays += 1;
                continue;
            };
            let (device, seq) = (i % load.devices, i / load.devices);
            let next = next_seq.entry(device).or_insert(0);
            if seq < *next {
                // Seen before: published again (at least once); not seen: a device's order broken.
                if seen[i as usize] {
                    duplicates += 1;
                } else {
                    order_violations += 1;
                }
            }
            *next = (*next).max(seq + 1);
            if !seen[i as usize] {
                seen[i as usize] = true;
                distinct += 1;
                if distinct == load.n {
                    cpu = cpu_first.and_then(|b| cpu_ms(pid).map(|a| a.saturating_sub(b)));
                    peak_rss = peak_rss_kib(pid);
                }
            }
        }
        let cpu = cpu.or_else(|| cpu_first.and_then(|b| cpu_ms(pid).map(|a| a.saturating_sub(b))));
        let peak_rss = peak_rss.or_else(|| peak_rss_kib(pid));
        let Self { mut sub, rx, reader } = self;
        let _ = sub.kill();
        let _ = sub.wait();
        drop(rx);
        let _ = reader.join();
        let span_s = last_us.saturating_sub(first_us) as f64 / 1e6;
        Counted {
            n: load.n,
            distinct,
            duplicates,
            order_violations,
            strays,
            span_s,
            stalls,
            stalled_s: stalled_us as f64 / 1e6,
            cpu_ms: cpu,
            peak_rss_kib: peak_rss,
        }
    }
}

/// What the subscriber counted, and the measured process's CPU over it.
struct Counted {
    n: u64,
    distinct: u64,
    duplicates: u64,
    order_violations: u64,
    /// Messages that are not of the load (another index, another shape).
    strays: u64,
    /// From the first message received to the last.
    span_s: f64,
    /// Silences of [`STALL_US`] or more between two messages, and their sum.
    stalls: u64,
    stalled_s: f64,
    cpu_ms: Option<u64>,
    peak_rss_kib: Option<u64>,
}

impl Counted {
    fn result(&self, system: &str, load: &Load, pid: u32) -> String {
        let Counted { n, distinct, duplicates, order_violations, strays, span_s, stalls, stalled_s, .. } = *self;
        let rate = if distinct > 1 { (distinct - 1) as f64 / span_s.max(0.000_001) } else { 0.0 };
        let cpu_us = self
            .cpu_ms
            .map(|c| format!("{:.2}", c as f64 * 1000.0 / distinct.max(1) as f64))
            .unwrap_or_else(|| "-".into());
        let rss = self.peak_rss_kib.map(|r| r.to_string()).unwrap_or_else(|| "-".into());
        let lost = n - distinct;
        println!(
            "{system}: {distinct} of {n} records received ({lost} lost, {duplicates} duplicates, {order_violations} order violations{}) in {span_s:.2} s from the first to the last, {rate:.0} msg/s, {cpu_us} us CPU/record (pid {pid}), peak RSS {rss} KiB; {stalls} silences of {} ms or more, {stalled_s:.2} s in all{}",
            if strays > 0 { format!(", {strays} not of the load") } else { String::new() },
            STALL_US / 1000,
            if stalls > 0 && span_s > stalled_s {
                format!(" ({:.0} msg/s outside them)", distinct as f64 / (span_s - stalled_s))
            } else {
                String::new()
            },
        );
        format!(
            "RESULT system={system} qos={} sent={n} delivered={distinct} lost={lost} duplicates={duplicates} order_violations={order_violations} msg_per_s={rate:.0} cpu_us_per_msg={cpu_us} peak_rss_kib={rss} stalls={stalls} stalled_s={stalled_s:.2}",
            load.qos as u8
        )
    }
}

/// The gateway's downlink: the subscriber counts what it publishes. With `--resume 1` the gateway was
/// started stopped (SIGSTOP) and is continued once the subscription is in place, so that none of its
/// messages can come before it.
fn downlink_gateway(o: &Opts, load: &Load) -> Result<String, Error> {
    let pid = o.num("pid", 0)? as u32;
    if pid == 0 {
        return Err("downlink-gateway needs --pid".into());
    }
    let sub = DownlinkSubscriber::start(load)?;
    if o.get("resume", "0") == "1" {
        Command::new("kill").args(["-CONT", &pid.to_string()]).status()?;
    }
    // Its start: connections, the group join, the first fetch.
    Ok(sub.count(load, pid, Duration::from_secs(60)).result("gateway", load, pid))
}

/// The MQTT ceiling: the same payloads from one bare publisher (a process of its own, one connection,
/// as fast as it can at the QoS, with `--inflight` QoS 1 messages unacknowledged at most: the broker's
/// max_inflight_messages), counted by the same subscriber.
fn downlink_mqtt_ceiling(o: &Opts, load: &Load) -> Result<String, Error> {
    let sub = DownlinkSubscriber::start(load)?;
    let mut publisher = Command::new(std::env::current_exe()?)
        .arg("downlink-publish")
        .args(["--mqtt", &format!("{}:{}", load.mqtt_host, load.mqtt_port), "--qos", &(load.qos as u8).to_string()])
        .args(["--messages", &load.n.to_string(), "--devices", &load.devices.to_string()])
        .args(["--payload-bytes", &load.payload_bytes.to_string(), "--topic-prefix", &load.prefix])
        .args(["--inflight", &o.get("inflight", "1000")])
        .stdout(Stdio::piped())
        .spawn()?;
    let pid = publisher.id();
    let mut counted = sub.count(load, pid, Duration::from_secs(30));
    let mut out = String::new();
    if let Some(mut s) = publisher.stdout.take() {
        use std::io::Read;
        let _ = s.read_to_string(&mut out);
    }
    let status = publisher.wait()?;
    if !status.success() {
        return Err(format!("the publisher failed: {status}").into());
    }
    // Its CPU and peak RSS are its own, over its whole run: it may be done before the subscriber is.
    let mut own = HashMap::new();
    for line in out.lines() {
        match line.strip_prefix("RESULT ") {
            Some(r) => own.extend(r.split_whitespace().filter_map(|kv| kv.split_once('='))),
            None if !line.starts_with("downlink-publish: ") => println!("{line}"),
            None => {}
        }
    }
    counted.cpu_ms = own.get("cpu_ms").and_then(|v| v.parse().ok());
    counted.peak_rss_kib = own.get("peak_rss_kib").and_then(|v| v.parse().ok());
    Ok(counted.result("mqtt-ceiling", load, pid))
}

/// The bare publisher of the MQTT ceiling (run by `downlink-mqtt-ceiling`): the load's payloads in
/// order over one connection, waiting for every PUBACK at QoS 1.
fn downlink_publish(o: &Opts, load: &Load) -> Result<String, Error> {
    let inflight = o.num("inflight", 1000)? as u16;
    let mut mo =
        MqttOptions::new(format!("bench-dl-pub-{}-{}", std::process::id(), now_us()), &load.mqtt_host, load.mqtt_port);
    mo.set_max_packet_size(1 << 20, 1 << 20);
    mo.set_inflight(inflight);
    mo.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = Client::new(mo, 10_000);
    let expected_acks = if load.qos == QoS::AtMostOnce { 0 } else { load.n };
    let pump = std::thread::spawn(move || {
        let mut acks = 0;
        for ev in connection.iter() {
            match ev {
                Ok(Event::Incoming(Packet::PubAck(_))) => acks += 1,
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return Ok(()),
                Err(e) => return Err(e.to_string()),
                _ => {}
            }
            if expected_acks > 0 && acks >= expected_acks {
                return Ok(());
            }
        }
        Ok(())
    });
    let mut seq_by_device = vec![0u64; load.devices as usize];
    let pid = std::process::id();
    let started = Instant::now();
    for i in 0..load.n {
        let d = i % load.devices;
        let payload = downlink_payload(d, seq_by_device[d as usize], load.payload_bytes);
        seq_by_device[d as usize] += 1;
        client.publish(format!("{}/dev-{d}/set", load.prefix), load.qos, false, payload)?;
    }
    if expected_acks == 0 {
        client.disconnect()?;
    }
    pump.join().map_err(|_| "publisher thread")??;
    let spent = started.elapsed().as_secs_f64();
    println!(
        "publisher: {} messages at QoS {} in {spent:.2} s ({:.0}/s)",
        load.n,
        load.qos as u8,
        load.n as f64 / spent
    );
    Ok(format!(
        "RESULT system=publisher qos={} sent={} msg_per_s={:.0} cpu_ms={} peak_rss_kib={}",
        load.qos as u8,
        load.n,
        load.n as f64 / spent,
        cpu_ms(pid).map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
        peak_rss_kib(pid).map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
    ))
}

/// The Kafka ceiling: Kafka's own consumer (`ConsumerPerformance`, from the broker's jars) reading the
/// same topic in a new group. Its rate is the fetch rate (`fetch.nMsg.sec`: the group join left out,
/// as the subscriber's count leaves out the gateway's); its JVM starts cold (no warm-up option), so
/// the rate is a lower bound. CPU: the whole run net of a one-record run (the JVM's start, the join).
fn downlink_kafka_ceiling(o: &Opts, load: &Load) -> Result<String, Error> {
    let libs = o.get("kafka-libs", "");
    let topic = o.get("topic", "bench_downlink");
    let run = |n: u64| -> Result<(HashMap<String, String>, u64), Error> {
        let mut child = Command::new("java")
            .args(["-Xmx512m", "-cp", &format!("{libs}/*"), "org.apache.kafka.tools.ConsumerPerformance"])
            .args(["--bootstrap-server", &load.kafka, "--topic", &topic, "--num-records", &n.to_string()])
            .args(["--group", &format!("bench-dl-kafka-{}-{}", std::process::id(), now_us()), "--timeout", "30000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run java ({e}); scripts/install-kafka.sh installs it"))?;
        let pid = child.id();
        let stdout = child.stdout.take().ok_or("stdout")?;
        let cpu = Arc::new(AtomicU64::new(0));
        let sampler = {
            let cpu = cpu.clone();
            std::thread::spawn(move || {
                while let Some(c) = cpu_ms(pid) {
                    cpu.store(c, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        // "start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec,
        // rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec", then the values.
        let lines: Vec<String> = BufReader::new(stdout).lines().map_while(Result::ok).collect();
        child.wait()?;
        let _ = sampler.join();
        let header = lines.iter().position(|l| l.contains("fetch.nMsg.sec"));
        let fields = header
            .and_then(|h| lines.get(h + 1).map(|v| (&lines[h], v)))
            .map(|(h, v)| h.split(", ").map(str::trim).zip(v.split(", ").map(|x| x.trim().to_string())))
            .map(|kv| kv.map(|(k, v)| (k.to_string(), v)).collect::<HashMap<_, _>>())
            .ok_or_else(|| format!("cannot read ConsumerPerformance's output: {lines:?}"))?;
        Ok((fields, cpu.load(Ordering::Relaxed)))
    };
    let (_, jvm_ms) = run(1)?;
    let (f, total_ms) = run(load.n)?;
    let get = |k: &str| f.get(k).and_then(|v| v.parse::<f64>().ok()).ok_or_else(|| format!("no {k} in {f:?}"));
    let (read, rate, overall, rebalance_ms, fetch_ms) = (
        get("data.consumed.in.nMsg")?,
        get("fetch.nMsg.sec")?,
        get("nMsg.sec")?,
        get("rebalance.time.ms")?,
        get("fetch.time.ms")?,
    );
    let read = read as u64;
    let cpu_us = total_ms.saturating_sub(jvm_ms) as f64 * 1000.0 / read.max(1) as f64;
    println!(
        "kafka-ceiling: {read} records read in {fetch_ms:.0} ms after a group join of {rebalance_ms:.0} ms, {rate:.0} records/s ({overall:.0}/s with the join), {cpu_us:.2} us CPU/record (whole run, net of a one-record run)"
    );
    Ok(format!(
        "RESULT system=kafka-ceiling qos={} sent={} delivered={read} lost={} duplicates=- order_violations=- msg_per_s={rate:.0} cpu_us_per_msg={cpu_us:.2} peak_rss_kib=-",
        load.qos as u8,
        load.n,
        load.n.saturating_sub(read)
    ))
}

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let mode =
        args.next().ok_or("usage: bench gateway|mqtt-ceiling|kafka-ceiling|librdkafka|publish|downlink-produce|downlink-gateway|downlink-mqtt-ceiling|downlink-kafka-ceiling [--option value ...]")?;
    let mut opts = HashMap::new();
    while let Some(k) = args.next() {
        let v = args.next().ok_or_else(|| format!("{k} needs a value"))?;
        opts.insert(k.trim_start_matches("--").to_string(), v);
    }
    let o = Opts(opts);
    let mut load = Load::from(&o)?;
    if mode.starts_with("downlink-") {
        load.prefix = o.get("topic-prefix", "bench-dl");
        let qos = if mode == "downlink-produce" { String::new() } else { format!(", QoS {}", load.qos as u8) };
        println!("{mode}: {} records, {} devices{qos}, {} B values", load.n, load.devices, load.payload_bytes);
    } else {
        println!("{mode}: {}", load.describe());
    }
    let result = match mode.as_str() {
        "gateway" => gateway(&o, &load)?,
        "mqtt-ceiling" => mqtt_ceiling(&load)?,
        "kafka-ceiling" => kafka_ceiling(&o, &load)?,
        "librdkafka" => librdkafka(&o, &load)?,
        "publish" => generator(&load)?,
        "downlink-produce" => downlink_produce(&o, &load)?,
        "downlink-gateway" => downlink_gateway(&o, &load)?,
        "downlink-mqtt-ceiling" => downlink_mqtt_ceiling(&o, &load)?,
        "downlink-kafka-ceiling" => downlink_kafka_ceiling(&o, &load)?,
        "downlink-publish" => downlink_publish(&o, &load)?,
        other => return Err(format!("unknown mode {other}").into()),
    };
    println!("{result}");
    Ok(())
}
