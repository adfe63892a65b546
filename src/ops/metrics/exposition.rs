//! `/metrics`: the gateway's counters in the OpenMetrics text format, written by the official
//! `prometheus-client` encoder from the same atomics the message path and the statistics line use. Names
//! follow Prometheus' conventions: prefix `mqtt_kafka_gateway_`, counters end in `_total`, units are in
//! the name. Labels are bounded: route names, configured topics and fixed sets of reasons, never a
//! device id or an MQTT topic.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::{DropReason, Metrics};
use crate::core::envelope::DeadLetterReason;

/// The content type of what [`encode`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

const P: &str = "mqtt_kafka_gateway_";

/// A registry that reads `metrics` at every scrape.
pub fn registry(metrics: Arc<Metrics>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(GatewayCollector { metrics }));
    r.register_collector(Box::new(ProcessCollector));
    r
}

/// The scrape body.
pub fn encode(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

#[derive(Debug)]
struct GatewayCollector {
    metrics: Arc<Metrics>,
}

/// OpenMetrics label values escape `\`, `"` and newlines; route names are the user's.
pub(super) fn escape(v: &str) -> Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(v);
    }
    let mut s = String::with_capacity(v.len() + 8);
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    Cow::Owned(s)
}

fn name(n: &str) -> String {
    format!("{P}{n}")
}

fn counter(e: &mut DescriptorEncoder, n: &str, help: &str, unit: Option<&Unit>, v: u64) -> fmt::Result {
    let name = name(n);
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(&name, help, unit, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, n: &str, help: &str, unit: Option<&Unit>, v: i64) -> fmt::Result {
    let name = name(n);
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(&name, help, unit, g.metric_type())?)
}

/// A counter with one label, one sample per value.
fn counter_by(e: &mut DescriptorEncoder, n: &str, help: &str, label: &str, samples: &[(&str, u64)]) -> fmt::Result {
    let name = name(n);
    let mut m = e.encode_descriptor(&name, help, None, MetricType::Counter)?;
    for (value, v) in samples {
        let labels = [(label, *value)];
        ConstCounter::new(*v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for GatewayCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), fmt::Error> {
        let m = &*self.metrics;
        let e = &mut e;
        let ld = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed);

        let build = name("build");
        e.encode_descriptor(&build, "The gateway's version.", None, MetricType::Info)?
            .encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;

        // MQTT side.
        let received: Vec<(&str, u64)> = ["0", "1", "2"].into_iter().zip(m.messages_received.iter().map(ld)).collect();
        counter_by(e, "messages_received", "MQTT messages received, by QoS.", "qos", &received)?;
        counter(
            e,
            "messages_unrouted",
            "MQTT messages no route matched (dropped: nothing wants them).",
            None,
            ld(&m.messages_unrouted),
        )?;
        let dropped: Vec<(&str, u64)> =
            DropReason::ALL.iter().map(|r| (r.as_str(), ld(&m.dropped[*r as usize]))).collect();
        counter_by(
            e,
            "messages_dropped",
            "Messages taken off MQTT and dropped, by reason (a last resort).",
            "reason",
            &dropped,
        )?;
        counter(
            e,
            "messages_not_acked",
            "QoS 1/2 messages given up on without an ack (the broker sends them again).",
            None,
            ld(&m.messages_not_acked),
        )?;
        counter(
            e,
            "records_not_ours",
            "Records left to another replica: their device is in its share (replicas.count).",
            None,
            ld(&m.records_for_other_replicas),
        )?;
        counter(
            e,
            "oversize_messages",
            "MQTT messages larger than mqtt.max_packet_size_bytes.",
            None,
            ld(&m.oversize_messages),
        )?;
        gauge(
            e,
            "mqtt_connected",
            "1 while connected to the MQTT broker.",
            None,
            i64::from(m.mqtt_connected.load(Relaxed)),
        )?;
        counter(e, "mqtt_reconnects", "Connections to the MQTT broker after the first.", None, ld(&m.mqtt_reconnects))?;
        counter(e, "mqtt_connection_errors", "Failed or lost MQTT connections.", None, ld(&m.mqtt_connection_errors))?;
        counter(
            e,
            "subscriptions_rejected",
            "Subscriptions the MQTT broker refused.",
            None,
            ld(&m.subscriptions_rejected),
        )?;
        counter(
            e,
            "acks_sent",
            "PUBACKs/PUBRECs sent after Kafka took every record of a message.",
            None,
            ld(&m.acks_sent),
        )?;
        counter(
            e,
            "intake_pauses",
            "Times reading from MQTT paused because the intake was full.",
            None,
            ld(&m.intake_stalls),
        )?;
        let paused = ConstCounter::new(ld(&m.intake_stalled_us) as f64 / 1e6);
        paused.encode(e.encode_descriptor(
            &name("intake_paused"),
            "Time reading from MQTT was paused.",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?)?;

        // Kafka side, per route.
        let routes = m.routes.all();
        let labels: Vec<(Cow<'_, str>, Cow<'_, str>)> =
            routes.iter().map(|r| (escape(&r.route), escape(&r.topic))).collect();
        {
            let n = name("records_delivered");
            let mut f = e.encode_descriptor(
                &n,
                "Records Kafka acknowledged, by route and configured topic.",
                None,
                MetricType::Counter,
            )?;
            for (r, (route, topic)) in routes.iter().zip(&labels) {
                let l = [("route", route.as_ref()), ("topic", topic.as_ref())];
                ConstCounter::new(ld(&r.delivered)).encode(f.encode_family(&l)?)?;
            }
        }
        // Series labelled by route alone sum the route's counters over every topic it has had (a
        // reload may change a route's topic and keep its name): one series per label set.
        let mut by_name: Vec<(Cow<'_, str>, Vec<&super::RouteStats>)> = Vec::new();
        for (r, (route, _)) in routes.iter().zip(&labels) {
            match by_name.iter_mut().find(|(n, _)| n == route) {
                Some((_, group)) => group.push(r),
                None => by_name.push((route.clone(), vec![r])),
            }
        }
        let per_route =
            |e: &mut DescriptorEncoder, n: &str, help: &str, get: &dyn Fn(&super::RouteStats) -> u64| -> fmt::Result {
                let n = name(n);
                let mut f = e.encode_descriptor(&n, help, None, MetricType::Counter)?;
                for (route, group) in &by_name {
                    let l = [("route", route.as_ref())];
                    ConstCounter::new(group.iter().map(|r| get(r)).sum::<u64>()).encode(f.encode_family(&l)?)?;
                }
                Ok(())
            };
        per_route(
            e,
            "records_failed",
            "Records given up on (Kafka refused even the dead letter, or a QoS 0 record failed twice).",
            &|r| ld(&r.failed),
        )?;
        per_route(e, "records_retried", "Records produced again after a failed delivery.", &|r| ld(&r.retried))?;
        per_route(e, "dead_letters_delivered", "Dead letters Kafka acknowledged.", &|r| ld(&r.dead_letters_delivered))?;
        per_route(e, "records_delayed", "Records held back by the route's rate limit until their turn.", &|r| {
            ld(&r.delayed)
        })?;
        {
            let n = name("records_dropped");
            let mut f = e.encode_descriptor(&n, "QoS 0 records dropped, by route and reason (rate_limited: their turn under the route's rate limit was further away than qos0_max_delay_ms).", None, MetricType::Counter)?;
            for (route, group) in &by_name {
                let l = [("route", route.as_ref()), ("reason", "rate_limited")];
                ConstCounter::new(group.iter().map(|r| ld(&r.rate_limited)).sum::<u64>())
                    .encode(f.encode_family(&l)?)?;
            }
        }
        {
            let n = name("dead_letters");
            let mut f = e.encode_descriptor(
                &n,
                "Messages sent to the dead-letter topic, by route and reason.",
                None,
                MetricType::Counter,
            )?;
            for (route, group) in &by_name {
                for reason in DeadLetterReason::ALL {
                    let l = [("route", route.as_ref()), ("reason", reason.as_str())];
                    let v = group.iter().map(|r| ld(&r.dead_letters[reason as usize])).sum::<u64>();
                    ConstCounter::new(v).encode(f.encode_family(&l)?)?;
                }
            }
        }
        {
            let n = name("device_id");
            let mut f = e.encode_descriptor(
                &n,
                "Device ids taken, by route and source (the regex, the fallback regex, or the default).",
                None,
                MetricType::Counter,
            )?;
            for (route, group) in &by_name {
                for (i, source) in ["regex", "fallback", "default"].into_iter().enumerate() {
                    let l = [("route", route.as_ref()), ("source", source)];
                    let v = group.iter().map(|r| ld(&r.device_id[i])).sum::<u64>();
                    ConstCounter::new(v).encode(f.encode_family(&l)?)?;
                }
            }
        }
        {
            let n = name("delivery_latency");
            let mut f = e.encode_descriptor(
                &n,
                "From MQTT receipt to Kafka's acknowledgement, per record, by route.",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for (route, group) in &by_name {
                let (mut sum, mut count, mut buckets) = (0.0, 0, Vec::new());
                for r in group {
                    let (s, c, b) = r.latency.read();
                    sum += s;
                    count += c;
                    if buckets.is_empty() {
                        buckets = b;
                    } else {
                        buckets.iter_mut().zip(b).for_each(|(acc, (_, n))| acc.1 += n);
                    }
                }
                let l = [("route", route.as_ref())];
                f.encode_family(&l)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
        counter(
            e,
            "records_enqueued",
            "Records handed to the Kafka producer (with retries and dead letters).",
            None,
            ld(&m.records_enqueued),
        )?;
        let up = m.health.kafka_brokers_up.load(Relaxed).max(0);
        gauge(e, "kafka_brokers_up", "Kafka brokers with their connection up (librdkafka statistics).", None, up)?;
        if let Some(live) = m.live_gauges() {
            gauge(
                e,
                "producer_queue_messages",
                "Records in the Kafka producer's queue, not yet acknowledged.",
                None,
                (live.producer_queue)(),
            )?;
            gauge(
                e,
                "intake",
                "Bytes of messages read from MQTT and not yet taken by the pipeline.",
                Some(&Unit::Bytes),
                (live.intake_bytes)(),
            )?;
        }
        gauge(e, "unacked_messages", "Messages taken from MQTT and not settled yet.", None, ld(&m.unacked) as i64)?;
        spool(e, m)?;
        m.downlinks.encode(e, &name)?;

        // Schema Registry.
        let kinds = crate::core::encoding::EncodingKind::ALL;
        let encoded: Vec<(&str, u64)> =
            kinds.iter().skip(1).map(|k| (k.as_str(), ld(&m.records_encoded[*k as usize]))).collect();
        counter_by(
            e,
            "records_encoded",
            "Records encoded with a Schema Registry schema, by encoding.",
            "encoding",
            &encoded,
        )?;
        {
            let n = name("encoding_failures");
            let help = "Records that could not be encoded (dead-lettered), by encoding and reason: not_json, misfit (the value does not fit the schema), no_schema.";
            let mut f = e.encode_descriptor(&n, help, None, MetricType::Counter)?;
            for k in kinds.iter().skip(1) {
                for r in crate::core::encoding::Failure::ALL {
                    let l = [("encoding", k.as_str()), ("reason", r.as_str())];
                    ConstCounter::new(ld(&m.encoding_failures[*k as usize][r as usize]))
                        .encode(f.encode_family(&l)?)?;
                }
            }
        }
        let results = [
            ("ok", ld(&m.registry_requests).saturating_sub(ld(&m.registry_errors))),
            ("error", ld(&m.registry_errors)),
        ];
        counter_by(e, "schema_registry_requests", "Requests to the Schema Registry, by result.", "result", &results)?;
        let seconds = name("schema_registry_request");
        let c = ConstCounter::new(ld(&m.registry_request_us) as f64 / 1e6);
        c.encode(e.encode_descriptor(
            &seconds,
            "Time spent in Schema Registry requests, in total (divide by the requests for the mean).",
            Some(&Unit::Seconds),
            c.metric_type(),
        )?)?;
        gauge(
            e,
            "records_awaiting_schema",
            "Records waiting for their route's registry schema (the registry not answered yet).",
            None,
            ld(&m.awaiting_schema) as i64,
        )?;
        {
            let n = name("route_schema_id");
            let mut f = e.encode_descriptor(
                &n,
                "The registry schema id of the route's last encoded record.",
                None,
                MetricType::Gauge,
            )?;
            for stats in m.routes.all() {
                let id = stats.schema_id.load(Relaxed);
                if id > 0 {
                    let l = [("route", stats.route.as_ref())];
                    ConstGauge::new(id as i64).encode(f.encode_family(&l)?)?;
                }
            }
        }

        // Readiness and configuration.
        let ready = m.health.readiness(m.mqtt_connected.load(Relaxed)).ready;
        gauge(e, "ready", "1 when /readyz answers 200.", None, i64::from(ready))?;
        let results = [("success", ld(&m.reloads)), ("failure", ld(&m.reload_failures))];
        counter_by(e, "config_reloads", "Reloads of the routes file, by result.", "result", &results)?;
        let swaps = [("swapped", ld(&m.kafka_swaps)), ("refused", ld(&m.kafka_swaps_refused))];
        counter_by(
            e,
            "kafka_producer_swaps",
            "New Kafka settings from a reload: producers swapped in, and settings refused (the producer in use stayed).",
            "result",
            &swaps,
        )?;
        let switches = [("switched", ld(&m.mqtt_switches)), ("refused", ld(&m.mqtt_switches_refused))];
        counter_by(
            e,
            "mqtt_settings_switches",
            "New MQTT settings from a reload: connections switched to them, and settings refused (the old ones came back).",
            "result",
            &switches,
        )?;
        gauge(e, "config_file_valid", "1 while the routes file on disk is the one in effect or was applied; 0 while it is invalid, unreadable or gone.", None, i64::from(m.config_file_valid.load(Relaxed)))?;
        gauge(
            e,
            "config_generation",
            "The route set in effect: 1 at start, one more per reload that changed a route.",
            None,
            ld(&m.config_generation) as i64,
        )?;
        gauge(
            e,
            "config_last_reload_success_timestamp",
            "When the route set in effect was loaded (Unix time).",
            Some(&Unit::Seconds),
            ld(&m.config_loaded_at) as i64,
        )?;
        Ok(())
    }
}

/// The standard process metrics Prometheus users expect, from `/proc/self` (Linux).
#[derive(Debug)]
struct ProcessCollector;

/// Linux reports CPU times in USER_HZ ticks, 100 a second on every architecture it runs on.
const TICKS_PER_SEC: f64 = 100.0;

impl Collector for ProcessCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return Ok(()) };
        // Fields after the command name (which may hold spaces), from field 3 (state) on.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { return Ok(()) };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            let c = ConstCounter::new((utime + stime) / TICKS_PER_SEC);
            c.encode(e.encode_descriptor(
                "process_cpu",
                "User and system CPU time spent.",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?)?;
        }
        let rss_kib = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        });
        if let Some(kib) = rss_kib {
            let g = ConstGauge::new(kib * 1024);
            g.encode(e.encode_descriptor(
                "process_resident_memory",
                "Resident memory size.",
                Some(&Unit::Bytes),
                MetricType::Gauge,
            )?)?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let g = ConstGauge::new(fds.count() as i64);
            g.encode(e.encode_descriptor("process_open_fds", "Open file descriptors.", None, MetricType::Gauge)?)?;
        }
        Ok(())
    }
}

/// The disk spool (`spool.dir`): zeros without one, so that rules and dashboards need no special case.
fn spool(e: &mut DescriptorEncoder, m: &Metrics) -> fmt::Result {
    use std::sync::atomic::AtomicU64;
    let ld = |a: &AtomicU64| a.load(Relaxed);
    let (bytes, records, max_bytes, (not_durable, not_durable_max)) = match m.spool_size() {
        Some(size) => {
            let (bytes, records) = (size.held)();
            (bytes, records, (size.max_bytes)(), (size.not_durable)())
        }
        None => (0, 0, 0, (0, 0)),
    };
    let counters: [(&str, &str, &AtomicU64); 5] = [
        ("spool_records_written", "Records written to the disk spool (Kafka did not take them in time).", &m.spooled),
        (
            "spool_records_replayed",
            "Records read back from the disk spool and handed to the Kafka producer.",
            &m.replayed,
        ),
        (
            "spool_records_dropped",
            "Records dropped from the full disk spool to make room (when_full: drop_oldest); lost, but for those already read back into memory.",
            &m.spool_dropped,
        ),
        (
            "spool_records_unreadable",
            "Damaged records or regions found while reading the disk spool back: skipped, lost.",
            &m.spool_unreadable,
        ),
        ("spool_errors", "Disk errors writing, syncing or deleting spool files (each retried).", &m.spool_errors),
    ];
    for (n, help, c) in counters {
        counter(e, n, help, None, ld(c))?;
    }
    counter(
        e,
        "spool_damaged",
        "Bytes of the disk spool found damaged at start (a torn tail, corrupt segments) and skipped.",
        Some(&Unit::Bytes),
        ld(&m.spool_damaged_bytes),
    )?;
    let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    gauge(e, "spool", "Bytes in the disk spool not yet in Kafka.", Some(&Unit::Bytes), i(bytes))?;
    gauge(e, "spool_max", "The disk spool's limit (spool.max_bytes; 0: no spool).", Some(&Unit::Bytes), i(max_bytes))?;
    gauge(e, "spool_records", "Records in the disk spool not yet in Kafka.", None, i(records))?;
    gauge(
        e,
        "spool_not_durable_records",
        "Records in the disk spool not yet in Kafka and not yet fsynced: what a power cut now would lose of the spool (fsync: never, all of them).",
        None,
        i(not_durable),
    )?;
    gauge(
        e,
        "spool_not_durable_records_max",
        "The most spool_not_durable_records has been since the gateway started: the worst a power cut would have cost so far.",
        None,
        i(not_durable_max),
    )?;
    gauge(
        e,
        "spool_active",
        "1 while new records go through the disk spool.",
        None,
        i64::from(m.health.spooling.load(Relaxed)),
    )?;
    gauge(
        e,
        "spool_full",
        "1 while the disk spool is full and holds the intake (when_full: block).",
        None,
        i64::from(m.health.spool_full.load(Relaxed)),
    )?;
    let oldest = ld(&m.spool_oldest_ms);
    let age = if oldest == 0 {
        0.0
    } else {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        (now.as_millis() as f64 - oldest as f64).max(0.0) / 1000.0
    };
    let n = name("spool_oldest_record_age");
    let g = ConstGauge::new(age);
    g.encode(e.encode_descriptor(
        &n,
        "Since the oldest record in the disk spool that is read back and not yet in Kafka was received from MQTT.",
        Some(&Unit::Seconds),
        g.metric_type(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::routing::{DeviceIdSource, RouteTable};
    use std::time::Duration;

    #[test]
    fn a_scrape_has_every_family_and_escapes_route_names() {
        let metrics = Arc::new(Metrics::default());
        let mut table = RouteTable::new(vec![crate::core::routing::tests::route("we\"ird\\name", "cmnd/#", "raw")]);
        metrics.routes.bind(&mut table);
        let route = &table.routes()[0];
        route.stats.delivered.fetch_add(3, Relaxed);
        route.stats.device_id(DeviceIdSource::Regex);
        route.stats.latency.observe(Duration::from_millis(3));
        route.stats.dead_letter(DeadLetterReason::InvalidJson);
        metrics.messages_received[1].fetch_add(5, Relaxed);
        let body = encode(&registry(metrics)).unwrap();
        for line in [
            r#"mqtt_kafka_gateway_records_delivered_total{route="we\"ird\\name",topic="raw"} 3"#,
            r#"mqtt_kafka_gateway_messages_received_total{qos="1"} 5"#,
            r#"mqtt_kafka_gateway_dead_letters_total{route="we\"ird\\name",reason="invalid_json"} 1"#,
            r#"mqtt_kafka_gateway_device_id_total{route="we\"ird\\name",source="regex"} 1"#,
            r#"mqtt_kafka_gateway_delivery_latency_seconds_count{route="we\"ird\\name"} 1"#,
            r#"mqtt_kafka_gateway_delivery_latency_seconds_bucket{le="0.005",route="we\"ird\\name"} 1"#,
            r#"mqtt_kafka_gateway_build_info{version=""#,
            "# TYPE mqtt_kafka_gateway_intake_paused_seconds counter",
            "mqtt_kafka_gateway_ready 0",
            "process_cpu_seconds_total ",
            "# EOF",
        ] {
            assert!(body.contains(line), "missing {line}\n{body}");
        }
    }

    #[test]
    fn the_spool_families_are_there_without_a_spool_and_no_unit_is_said_twice() {
        let metrics = Arc::new(Metrics::default());
        let body = encode(&registry(metrics.clone())).unwrap();
        for line in [
            "mqtt_kafka_gateway_spool_records_written_total 0",
            "mqtt_kafka_gateway_spool_records_dropped_total 0",
            "mqtt_kafka_gateway_spool_damaged_bytes_total 0",
            "mqtt_kafka_gateway_spool_bytes 0",
            "mqtt_kafka_gateway_spool_max_bytes 0",
            "mqtt_kafka_gateway_spool_records 0",
            "mqtt_kafka_gateway_spool_not_durable_records 0",
            "mqtt_kafka_gateway_spool_not_durable_records_max 0",
            "mqtt_kafka_gateway_spool_active 0",
            "mqtt_kafka_gateway_spool_full 0",
            "mqtt_kafka_gateway_spool_oldest_record_age_seconds 0",
            "mqtt_kafka_gateway_schema_registry_request_seconds_total 0",
        ] {
            assert!(body.contains(line), "missing {line}\n{body}");
        }
        for unit in ["seconds", "bytes"] {
            assert!(!body.contains(&format!("_{unit}_{unit}")), "a name says {unit} twice:\n{body}");
        }
        metrics.set_spool_size(super::super::SpoolSize {
            held: Box::new(|| (4096, 3)),
            not_durable: Box::new(|| (2, 3)),
            max_bytes: Box::new(|| 1 << 30),
        });
        metrics.spool_oldest_ms.store(1, Relaxed);
        let body = encode(&registry(metrics)).unwrap();
        for line in [
            "mqtt_kafka_gateway_spool_bytes 4096",
            "mqtt_kafka_gateway_spool_records 3",
            "mqtt_kafka_gateway_spool_max_bytes 1073741824",
            "mqtt_kafka_gateway_spool_not_durable_records 2",
            "mqtt_kafka_gateway_spool_not_durable_records_max 3",
        ] {
            assert!(body.contains(line), "missing {line}\n{body}");
        }
        assert!(!body.contains("mqtt_kafka_gateway_spool_oldest_record_age_seconds 0\n"), "{body}");
    }
}
