//! Counters kept per downlink (Kafka → MQTT), kept by name across reloads, and their `/metrics` series.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::core::downlink::Reason;

/// One downlink's counters.
#[derive(Debug, Default)]
pub struct DownlinkStats {
    pub name: Arc<str>,
    /// Records read from Kafka.
    pub consumed: AtomicU64,
    /// Records the broker has (QoS 1/2: acknowledged; QoS 0: written).
    pub published: AtomicU64,
    /// Records sent to the dead-letter topic, by [`Reason`].
    pub dead_lettered: [AtomicU64; Reason::ALL.len()],
    /// Dead-letter writes Kafka refused (each is tried again).
    pub dead_letter_errors: AtomicU64,
    /// Records read and not yet published or dead-lettered.
    pub in_flight: AtomicI64,
    /// Records behind the end of the partitions, summed (librdkafka's statistics; -1 until known).
    pub lag: AtomicI64,
    /// The consumer's partitions are paused: the MQTT side is slow or down.
    pub paused: AtomicBool,
    /// Times the partitions were paused.
    pub pauses: AtomicU64,
    /// Offsets committed (one per partition and commit).
    pub commits: AtomicU64,
    pub commit_errors: AtomicU64,
    /// The downlink runs (0 once a reload removed it).
    pub running: AtomicBool,
}

impl DownlinkStats {
    pub fn dead_lettered(&self, reason: Reason) {
        self.dead_lettered[Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0)].fetch_add(1, Relaxed);
    }
}

/// Every downlink's counters since start, and the downlinks' MQTT connection.
#[derive(Debug, Default)]
pub struct DownlinkRegistry {
    all: Mutex<Vec<Arc<DownlinkStats>>>,
    /// The downlinks' own MQTT connection is up.
    pub mqtt_connected: AtomicBool,
    pub mqtt_connects: AtomicU64,
    pub mqtt_connection_errors: AtomicU64,
}

impl DownlinkRegistry {
    /// The counters of the downlink called `name`: the ones it had if it ran before.
    pub fn get(&self, name: &Arc<str>) -> Arc<DownlinkStats> {
        let mut all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = all.iter().find(|s| &s.name == name) {
            return s.clone();
        }
        let s = Arc::new(DownlinkStats { name: name.clone(), lag: AtomicI64::new(-1), ..DownlinkStats::default() });
        all.push(s.clone());
        s
    }

    pub fn all(&self) -> Vec<Arc<DownlinkStats>> {
        self.all.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The series, labelled by downlink name.
    pub(super) fn encode(&self, e: &mut DescriptorEncoder, name: &dyn Fn(&str) -> String) -> fmt::Result {
        let all = self.all();
        let labels: Vec<String> = all.iter().map(|s| super::exposition::escape(&s.name).into_owned()).collect();
        let counter =
            |e: &mut DescriptorEncoder, n: &str, help: &str, get: &dyn Fn(&DownlinkStats) -> u64| -> fmt::Result {
                let n = name(n);
                let mut f = e.encode_descriptor(&n, help, None, MetricType::Counter)?;
                for (s, l) in all.iter().zip(&labels) {
                    ConstCounter::new(get(s)).encode(f.encode_family(&[("downlink", l.as_str())])?)?;
                }
                Ok(())
            };
        let gauge =
            |e: &mut DescriptorEncoder, n: &str, help: &str, get: &dyn Fn(&DownlinkStats) -> i64| -> fmt::Result {
                let n = name(n);
                let mut f = e.encode_descriptor(&n, help, None, MetricType::Gauge)?;
                for (s, l) in all.iter().zip(&labels) {
                    ConstGauge::new(get(s)).encode(f.encode_family(&[("downlink", l.as_str())])?)?;
                }
                Ok(())
            };
        counter(e, "downlink_records_consumed", "Records read from Kafka by a downlink.", &|s| {
            s.consumed.load(Relaxed)
        })?;
        counter(
            e,
            "downlink_messages_published",
            "Records a downlink published to MQTT (QoS 1/2: acknowledged by the broker).",
            &|s| s.published.load(Relaxed),
        )?;
        {
            let n = name("downlink_records_dead_lettered");
            let mut f = e.encode_descriptor(
                &n,
                "Records a downlink could not publish and wrote to its dead-letter topic, by reason.",
                None,
                MetricType::Counter,
            )?;
            for (s, l) in all.iter().zip(&labels) {
                for (i, r) in Reason::ALL.iter().enumerate() {
                    let v = s.dead_lettered[i].load(Relaxed);
                    ConstCounter::new(v)
                        .encode(f.encode_family(&[("downlink", l.as_str()), ("reason", r.as_str())])?)?;
                }
            }
        }
        counter(
            e,
            "downlink_dead_letter_errors",
            "Dead-letter writes Kafka refused (tried again; the offset waits).",
            &|s| s.dead_letter_errors.load(Relaxed),
        )?;
        counter(e, "downlink_offset_commits", "Offsets a downlink committed, one per partition and commit.", &|s| {
            s.commits.load(Relaxed)
        })?;
        counter(e, "downlink_offset_commit_errors", "Offset commits that failed (the next one covers them).", &|s| {
            s.commit_errors.load(Relaxed)
        })?;
        counter(e, "downlink_pauses", "Times a downlink paused its partitions because MQTT was slow or down.", &|s| {
            s.pauses.load(Relaxed)
        })?;
        gauge(
            e,
            "downlink_lag_records",
            "Records in a downlink's partitions not yet committed (-1 until known).",
            &|s| s.lag.load(Relaxed),
        )?;
        gauge(
            e,
            "downlink_in_flight_records",
            "Records a downlink read and has not yet published or dead-lettered.",
            &|s| s.in_flight.load(Relaxed),
        )?;
        gauge(e, "downlink_paused", "1 while a downlink's partitions are paused.", &|s| {
            i64::from(s.paused.load(Relaxed))
        })?;
        gauge(e, "downlink_running", "1 while a downlink runs (0 once a reload removed it).", &|s| {
            i64::from(s.running.load(Relaxed))
        })?;
        if !all.is_empty() {
            let g = ConstGauge::new(i64::from(self.mqtt_connected.load(Relaxed)));
            g.encode(e.encode_descriptor(
                &name("downlink_mqtt_connected"),
                "1 while the downlinks' MQTT connection is up.",
                None,
                MetricType::Gauge,
            )?)?;
            let c = ConstCounter::new(self.mqtt_connection_errors.load(Relaxed));
            c.encode(e.encode_descriptor(
                &name("downlink_mqtt_connection_errors"),
                "Failed connection attempts and lost connections of the downlinks' MQTT connection.",
                None,
                MetricType::Counter,
            )?)?;
        }
        Ok(())
    }
}
