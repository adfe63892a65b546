//! The downlinks' side of `check`: for each downlink, does every topic it reads exist (a consumer
//! waits for a missing one, reading nothing), can its consumer group's committed offsets be read (the
//! group's ACLs; nothing joins the group, so a running gateway is not disturbed), and does its
//! dead-letter topic exist or will it be auto-created.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::kafka::{principal, probe_config, read_auto_create, topic_item, topic_state, Probe, TopicState, SIDE};
use super::report::Item;
use super::Options;
use crate::config::Config;
use crate::core::downlink::Downlink;

/// One item per topic read, one for the group, one for the dead-letter topic, per downlink.
pub(super) async fn check(config: &Config, options: &Options) -> Vec<Item> {
    let timeout = options.timeout;
    let settings = &config.kafka;
    let servers = settings.properties.get("bootstrap.servers").cloned().unwrap_or(settings.bootstrap_servers.clone());
    let mut items = Vec::new();
    let probe: BaseProducer<Probe> =
        match probe_config(&settings.properties, timeout).create_with_context(Probe::default()) {
            Ok(p) => p,
            Err(e) => {
                for d in &config.downlinks {
                    items.push(Item::skip(
                        SIDE,
                        format!("downlink \"{}\"", d.name),
                        format!("not checked: {}", crate::kafka::creation_error(&e)),
                    ));
                }
                return items;
            }
        };
    let mut auto = None;
    for d in &config.downlinks {
        let mut partitions = TopicPartitionList::new();
        for topic in &d.kafka_topics {
            let label = format!("topic \"{topic}\" (read by downlink \"{}\")", d.name);
            let state = topic_state(&probe, topic, timeout);
            items.push(match &state {
                TopicState::Exists { partitions: n, .. } => {
                    for p in 0..*n as i32 {
                        partitions.add_partition(topic, p);
                    }
                    topic_item(&label, topic, &state, None, &servers, &settings.properties)
                }
                TopicState::Missing => Item::fail(
                    SIDE,
                    label,
                    "missing: the downlink reads nothing until it exists",
                    format!("create it, e.g. kafka-topics.sh --bootstrap-server {servers} --create --topic {topic} --partitions 3"),
                ),
                TopicState::Unauthorized => Item::fail(
                    SIDE,
                    label,
                    "not authorized (TOPIC_AUTHORIZATION_FAILED)",
                    format!("the Kafka ACLs must allow {} Describe and Read on topic \"{topic}\"", principal(&settings.properties)),
                ),
                TopicState::Error(_) => topic_item(&label, topic, &state, None, &servers, &settings.properties),
            });
        }
        items.push(group_item(config, d, &partitions, timeout));
        let label = format!("topic \"{}\" (dead letters of downlink \"{}\")", d.dead_letter_topic, d.name);
        let state = topic_state(&probe, &d.dead_letter_topic, timeout);
        if state == TopicState::Missing && auto.is_none() {
            let broker =
                probe.client().fetch_metadata(None, timeout).ok().and_then(|m| m.brokers().first().map(|b| b.id()));
            auto = Some(read_auto_create(settings, broker.unwrap_or(0), timeout).await);
        }
        items.push(topic_item(&label, &d.dead_letter_topic, &state, auto.as_ref(), &servers, &settings.properties));
    }
    items
}

/// The group's committed offsets for the topics' partitions, read without joining the group.
fn group_item(config: &Config, d: &Downlink, partitions: &TopicPartitionList, timeout: Duration) -> Item {
    let label = format!("group \"{}\" (downlink \"{}\")", d.group_id, d.name);
    if partitions.count() == 0 {
        return Item::skip(SIDE, label, "not checked: none of its topics exists");
    }
    let mut cc = rdkafka::ClientConfig::new();
    for (k, v) in crate::kafka::consumer_properties(&config.kafka) {
        cc.set(k, v);
    }
    cc.set("group.id", &d.group_id).set("enable.auto.commit", "false");
    cc.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    for (k, v) in &d.properties {
        cc.set(k, v);
    }
    let consumer: BaseConsumer = match cc.create() {
        Ok(c) => c,
        Err(e) => {
            return Item::fail(
                SIDE,
                label,
                crate::kafka::creation_error(&e),
                "downlinks[].properties has a property librdkafka does not know or an invalid value",
            )
        }
    };
    // A group's coordinator may still be found or loading (a new group, a fresh cluster): asked again
    // until the timeout.
    let deadline = std::time::Instant::now() + timeout;
    let answer = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now()).max(Duration::from_millis(500));
        let answer = consumer.committed_offsets(partitions.clone(), left);
        let transient = matches!(
            &answer,
            Err(KafkaError::MetadataFetch(c) | KafkaError::OffsetFetch(c)) if matches!(
                c,
                RDKafkaErrorCode::NotCoordinator | RDKafkaErrorCode::CoordinatorLoadInProgress | RDKafkaErrorCode::CoordinatorNotAvailable
            )
        );
        if !transient || std::time::Instant::now() >= deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    match answer {
        Ok(tpl) => {
            let committed = tpl.elements().iter().filter(|e| matches!(e.offset(), Offset::Offset(_))).count();
            let detail = if committed == 0 {
                format!("no committed offsets yet: the first start reads from {}", start(d))
            } else {
                format!("offsets committed on {committed} of {} partitions", tpl.count())
            };
            Item::ok(SIDE, label, detail)
        }
        Err(
            KafkaError::MetadataFetch(RDKafkaErrorCode::GroupAuthorizationFailed)
            | KafkaError::OffsetFetch(RDKafkaErrorCode::GroupAuthorizationFailed),
        ) => Item::fail(
            SIDE,
            label,
            "not authorized (GROUP_AUTHORIZATION_FAILED)",
            format!(
                "the Kafka ACLs must allow {} Read on group \"{}\"",
                principal(&config.kafka.properties),
                d.group_id
            ),
        ),
        Err(e) => {
            Item::fail(SIDE, label, format!("cannot read the committed offsets: {e}"), "the broker's log may say more")
        }
    }
}

/// Where a group without commits starts reading.
fn start(d: &Downlink) -> &'static str {
    match d.properties.iter().find(|(k, _)| k == "auto.offset.reset").map(|(_, v)| v.as_str()) {
        Some("latest" | "end" | "largest") => "the end of each partition (auto.offset.reset: latest)",
        _ => "the beginning of each partition",
    }
}
