//! The Kafka side of `check`: are the bootstrap servers reachable and do they accept the configured
//! security (a metadata request with the gateway's own librdkafka properties), does every route's topic
//! and dead-letter topic exist or will it be auto-created (topic metadata, and the broker's
//! `auto.create.topics.enable` read with DescribeConfigs); `--produce-test` then writes a real record
//! to each ([`super::produce`]). Topic templates are named per message and are skipped.
//!
//! librdkafka's calls here block for at most the check's timeout each. They run on the check's own
//! single-threaded runtime, after the MQTT side is done, so they hold up nothing else.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::metadata::Metadata;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};

use super::report::{Item, Side};
use super::Options;
use crate::config::KafkaSettings;
use crate::core::routing::RouteTable;

pub(super) const SIDE: Side = Side::Kafka;

/// The header that marks a `--produce-test` record; its value is the check's client id.
pub const CHECK_HEADER: &str = "gateway_check";

/// An error librdkafka reported through its error callback.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClientErr {
    code: Option<RDKafkaErrorCode>,
    reason: String,
}

/// A test record's delivery report: its tag, and the partition and offset it got or the error.
type Delivery = (usize, Result<(i32, i64), KafkaError>);

/// Collects what librdkafka reports while the check waits: errors (the precise reason a metadata
/// request timed out) and delivery reports of test records.
#[derive(Default)]
pub(super) struct Probe {
    errors: Mutex<Vec<ClientErr>>,
    pub(super) deliveries: Mutex<Vec<Delivery>>,
}

impl ClientContext for Probe {
    // The report says what matters; librdkafka's own log lines would only interleave with it.
    fn log(&self, _level: RDKafkaLogLevel, _fac: &str, _message: &str) {}

    fn error(&self, error: KafkaError, reason: &str) {
        let reason = if reason.is_empty() { error.to_string() } else { reason.to_string() };
        self.errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(ClientErr { code: error.rdkafka_error_code(), reason });
    }
}

impl ProducerContext for Probe {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: usize) {
        let outcome = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.clone()),
        };
        self.deliveries.lock().unwrap_or_else(PoisonError::into_inner).push((tag, outcome));
    }
}

impl Probe {
    fn errors(&self) -> Vec<ClientErr> {
        self.errors.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// One Kafka topic the routes write to, and which routes use it how.
#[derive(Debug, Clone)]
enum Entry {
    /// A topic template: named per message.
    Template {
        route: String,
        source: String,
    },
    Topic {
        name: String,
        uses: Vec<Use>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Use {
    Records(String),
    DeadLetters(String),
}

impl Entry {
    fn label(&self) -> String {
        match self {
            Entry::Template { route, source } => format!("topic \"{source}\" (route \"{route}\")"),
            Entry::Topic { name, uses } => {
                let records: Vec<String> = uses
                    .iter()
                    .filter_map(|u| if let Use::Records(r) = u { Some(format!("\"{r}\"")) } else { None })
                    .collect();
                let dead: Vec<String> = uses
                    .iter()
                    .filter_map(|u| if let Use::DeadLetters(r) = u { Some(format!("\"{r}\"")) } else { None })
                    .collect();
                let plural = |v: &[String]| if v.len() == 1 { "route" } else { "routes" };
                let mut parts = Vec::new();
                if !records.is_empty() {
                    parts.push(format!("{} {}", plural(&records), records.join(", ")));
                }
                if !dead.is_empty() {
                    parts.push(format!("dead letters of {} {}", plural(&dead), dead.join(", ")));
                }
                format!("topic \"{name}\" ({})", parts.join("; "))
            }
        }
    }
}

/// The topics to check, in route order: each route's topic, then its dead-letter topic; a topic used
/// by several routes is checked once.
fn entries(routes: &RouteTable) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    let add = |name: &str, usage: Use, out: &mut Vec<Entry>| {
        for e in out.iter_mut() {
            if let Entry::Topic { name: n, uses } = e {
                if n == name {
                    uses.push(usage);
                    return;
                }
            }
        }
        out.push(Entry::Topic { name: name.to_string(), uses: vec![usage] });
    };
    for r in routes.routes() {
        if r.topic.is_static() {
            add(&r.topic.to_string(), Use::Records(r.name.to_string()), &mut out);
        } else {
            out.push(Entry::Template { route: r.name.to_string(), source: r.topic.to_string() });
        }
        add(&r.dead_letter_topic, Use::DeadLetters(r.name.to_string()), &mut out);
    }
    out
}

/// What a topic's metadata said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TopicState {
    Exists { partitions: usize, leaderless: usize },
    Missing,
    Unauthorized,
    Error(String),
}

/// Whether a missing topic will be created when the gateway first writes to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum AutoCreate {
    /// The broker's `auto.create.topics.enable` is true; its `num.partitions` when known.
    Enabled(Option<String>),
    /// The broker's `auto.create.topics.enable` is false.
    Disabled,
    /// `kafka.properties` sets `allow.auto.create.topics=false`: the gateway's producer does not ask.
    ClientDisabled,
    /// The broker's setting could not be read.
    Unknown(String),
}

/// The librdkafka properties of the check's clients: the gateway's own, under a client id of the
/// check's, with connection set-up bounded by the timeout.
pub(super) fn base_config(properties: &BTreeMap<String, String>, timeout: Duration) -> ClientConfig {
    let mut cc = ClientConfig::new();
    for (k, v) in properties {
        cc.set(k, v);
    }
    let id = properties.get("client.id").map(String::as_str).unwrap_or("mqtt-kafka-gateway");
    cc.set("client.id", format!("{id}-check"));
    cc.set("socket.connection.setup.timeout.ms", timeout.as_millis().max(1000).to_string());
    cc.set_log_level(RDKafkaLogLevel::Warning);
    cc
}

/// The client for metadata and configs: never creates topics by asking about them, and has no
/// idempotent or transactional producer state to set up.
pub(super) fn probe_config(properties: &BTreeMap<String, String>, timeout: Duration) -> ClientConfig {
    let mut cc = base_config(properties, timeout);
    cc.remove("enable.idempotence");
    cc.remove("transactional.id");
    cc.set("allow.auto.create.topics", "false");
    cc
}

fn bootstrap(settings: &KafkaSettings) -> String {
    settings.properties.get("bootstrap.servers").cloned().unwrap_or_else(|| settings.bootstrap_servers.clone())
}

/// Every item of the Kafka side, in order: reachable, authenticated, one per topic (and one per test
/// record with `--produce-test`).
pub(super) async fn check(settings: &KafkaSettings, routes: &RouteTable, options: &Options) -> Vec<Item> {
    let timeout = options.timeout;
    let entries = entries(routes);
    let servers = bootstrap(settings);
    let mut items = Vec::new();
    let skip_all = |items: &mut Vec<Item>, why: &str| {
        items.extend(entries.iter().map(|e| Item::skip(SIDE, e.label(), format!("not checked: {why}"))));
    };

    let probe: BaseProducer<Probe> = match probe_config(&settings.properties, timeout)
        .create_with_context(Probe::default())
    {
        Ok(p) => p,
        Err(e) => {
            items.push(Item::fail(
                SIDE,
                "reachable",
                format!("cannot create the Kafka client: {}", crate::kafka::creation_error(&e)),
                "a kafka.properties entry is unknown to librdkafka or has an invalid value (librdkafka's CONFIGURATION.md lists them)",
            ));
            items.push(Item::skip(SIDE, "authenticated", "not checked: no Kafka client"));
            skip_all(&mut items, "no Kafka client");
            return items;
        }
    };

    let metadata = probe.client().fetch_metadata(None, timeout);
    // Serve the error events that say why a request failed (poll serves events until its time is up).
    probe.poll(Duration::from_millis(100));
    let metadata = match metadata {
        Ok(m) if !m.brokers().is_empty() => m,
        result => {
            let fetch_error = match result {
                Ok(_) => "the cluster reported no brokers".to_string(),
                Err(e) => e.to_string(),
            };
            let (reachable, authenticated) =
                connect_failure(&probe.context().errors(), &fetch_error, &servers, timeout);
            let why = if reachable.status == super::Status::Ok {
                "Kafka refused the client"
            } else {
                "Kafka is not reachable"
            };
            items.push(reachable);
            items.push(authenticated);
            skip_all(&mut items, why);
            return items;
        }
    };
    items.push(Item::ok(SIDE, "reachable", format!("{servers} ({})", brokers(&metadata))));
    items.push(Item::ok(SIDE, "authenticated", security(&settings.properties)));

    let broker_id = metadata.brokers().first().map(|b| b.id()).unwrap_or(0);
    let mut auto_create: Option<AutoCreate> = None;
    let mut writable: Vec<(String, String)> = Vec::new();
    for entry in &entries {
        let label = entry.label();
        let Entry::Topic { name, .. } = entry else {
            items.push(Item::skip(
                SIDE,
                label,
                "a template, named per message: cannot be checked by name (its dead-letter topic is)",
            ));
            continue;
        };
        let state = topic_state(&probe, name, timeout);
        if state == TopicState::Missing && auto_create.is_none() {
            auto_create = Some(read_auto_create(settings, broker_id, timeout).await);
        }
        let item = topic_item(&label, name, &state, auto_create.as_ref(), &servers, &settings.properties);
        if item.status == super::Status::Ok {
            writable.push((name.clone(), label));
        }
        items.push(item);
    }
    drop(probe);

    if options.produce_test {
        items.extend(super::produce::produce_test(settings, &writable, timeout));
    }
    items
}

fn brokers(metadata: &Metadata) -> String {
    let list: Vec<String> =
        metadata.brokers().iter().map(|b| format!("{}:{} id {}", b.host(), b.port(), b.id())).collect();
    let n = list.len();
    format!("{n} broker{}: {}", if n == 1 { "" } else { "s" }, list.join(", "))
}

/// How the client authenticated, in words (never a secret).
fn security(properties: &BTreeMap<String, String>) -> String {
    let protocol =
        properties.get("security.protocol").map(|p| p.to_ascii_lowercase()).unwrap_or_else(|| "plaintext".into());
    match protocol.as_str() {
        "sasl_plaintext" | "sasl_ssl" => {
            let mechanism = properties
                .get("sasl.mechanisms")
                .or_else(|| properties.get("sasl.mechanism"))
                .map(String::as_str)
                .unwrap_or("GSSAPI");
            match properties.get("sasl.username") {
                Some(user) => format!("SASL {mechanism} as \"{user}\" (security.protocol {protocol})"),
                None => format!("SASL {mechanism} (security.protocol {protocol})"),
            }
        }
        "ssl" => "TLS, no SASL (security.protocol ssl)".into(),
        other => format!("no authentication required (security.protocol {other})"),
    }
}

const SERVERS_HINT: &str = "check kafka.bootstrap_servers (env KAFKA_BOOTSTRAP_SERVERS), that Kafka runs and listens there, and that kafka.security_protocol matches the listener";

/// Why the first metadata request failed, from what librdkafka reported meanwhile: the reachable and
/// authenticated items.
fn connect_failure(errors: &[ClientErr], fetch_error: &str, servers: &str, timeout: Duration) -> (Item, Item) {
    let has = |codes: &[RDKafkaErrorCode]| errors.iter().find(|e| e.code.is_some_and(|c| codes.contains(&c)));
    let mentions = |needle: &str| errors.iter().find(|e| e.reason.contains(needle));
    if let Some(e) = has(&[RDKafkaErrorCode::Authentication, RDKafkaErrorCode::SaslAuthenticationFailed])
        .or_else(|| mentions("SASL authentication"))
    {
        return (
            Item::ok(SIDE, "reachable", format!("{servers} (connected; authentication failed)")),
            Item::fail(
                SIDE,
                "authenticated",
                format!("SASL authentication failed: {}", e.reason),
                "check kafka.sasl.mechanism, kafka.sasl.username and kafka.sasl.password / password_file (env KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD) against the broker's users, and that the listener speaks SASL (kafka.security_protocol)",
            ),
        );
    }
    let not_checked = |why: &str| Item::skip(SIDE, "authenticated", format!("not checked: {why}"));
    if let Some(e) =
        has(&[RDKafkaErrorCode::SSL]).or_else(|| mentions("SSL handshake")).or_else(|| mentions("SSL routines"))
    {
        return (
            Item::fail(
                SIDE,
                "reachable",
                format!("{servers}: TLS handshake failed: {}", e.reason),
                "check kafka.security_protocol and kafka.tls: the broker's certificate must chain to kafka.tls.ca_file (or the system's CAs) and name the host in kafka.bootstrap_servers; a listener that requires a client certificate needs kafka.tls.cert_file and key_file",
            ),
            not_checked("no TLS connection"),
        );
    }
    if let Some(e) = has(&[RDKafkaErrorCode::Resolve]) {
        return (
            Item::fail(SIDE, "reachable", format!("{servers}: cannot resolve: {}", e.reason), SERVERS_HINT),
            not_checked("Kafka is not reachable"),
        );
    }
    // The transport error names the broker and the cause; "all brokers are down" only repeats it.
    let transport = errors.iter().find(|e| e.code != Some(RDKafkaErrorCode::AllBrokersDown)).or_else(|| errors.first());
    let detail = match transport {
        Some(e) => format!("{servers}: {}", e.reason),
        None => format!("{servers}: no metadata within {}s: {fetch_error}", timeout.as_secs_f64()),
    };
    (Item::fail(SIDE, "reachable", detail, SERVERS_HINT), not_checked("Kafka is not reachable"))
}

pub(super) fn topic_state(probe: &BaseProducer<Probe>, name: &str, timeout: Duration) -> TopicState {
    match probe.client().fetch_metadata(Some(name), timeout) {
        Ok(md) => match md.topics().iter().find(|t| t.name() == name) {
            None => TopicState::Missing,
            Some(t) => match t.error().map(RDKafkaErrorCode::from) {
                None => TopicState::Exists {
                    partitions: t.partitions().len(),
                    leaderless: t.partitions().iter().filter(|p| p.leader() < 0 || p.error().is_some()).count(),
                },
                Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => TopicState::Missing,
                Some(RDKafkaErrorCode::TopicAuthorizationFailed) => TopicState::Unauthorized,
                Some(code) => TopicState::Error(format!("{code} ({code:?})")),
            },
        },
        Err(e) => TopicState::Error(format!("metadata request failed: {e}")),
    }
}

/// The broker's `auto.create.topics.enable` (and `num.partitions`), read with DescribeConfigs; or the
/// gateway's own `allow.auto.create.topics=false`, which makes the broker's setting moot.
pub(super) async fn read_auto_create(settings: &KafkaSettings, broker_id: i32, timeout: Duration) -> AutoCreate {
    if settings.properties.get("allow.auto.create.topics").is_some_and(|v| v.eq_ignore_ascii_case("false")) {
        return AutoCreate::ClientDisabled;
    }
    let admin: AdminClient<DefaultClientContext> = match probe_config(&settings.properties, timeout).create() {
        Ok(a) => a,
        Err(e) => return AutoCreate::Unknown(format!("cannot create an admin client: {e}")),
    };
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    let resource = ResourceSpecifier::Broker(broker_id);
    let described =
        tokio::time::timeout(timeout + Duration::from_secs(1), admin.describe_configs([&resource], &opts)).await;
    let config = match described {
        Err(_) => return AutoCreate::Unknown(format!("no DescribeConfigs answer within {}s", timeout.as_secs_f64())),
        Ok(Err(e)) => return AutoCreate::Unknown(format!("DescribeConfigs failed: {e}")),
        Ok(Ok(results)) => match results.into_iter().next() {
            Some(Ok(config)) => config,
            Some(Err(code)) => return AutoCreate::Unknown(format!("DescribeConfigs failed: {code}")),
            None => return AutoCreate::Unknown("DescribeConfigs returned nothing".into()),
        },
    };
    let value = |name: &str| config.get(name).and_then(|e| e.value.clone());
    match value("auto.create.topics.enable").as_deref() {
        Some(v) if v.eq_ignore_ascii_case("true") => AutoCreate::Enabled(value("num.partitions")),
        Some(v) if v.eq_ignore_ascii_case("false") => AutoCreate::Disabled,
        Some(other) => AutoCreate::Unknown(format!("auto.create.topics.enable is `{other}`")),
        None => AutoCreate::Unknown("the broker did not report auto.create.topics.enable".into()),
    }
}

/// One topic's item from its metadata and, for a missing one, whether it will be auto-created.
pub(super) fn topic_item(
    label: &str,
    name: &str,
    state: &TopicState,
    auto: Option<&AutoCreate>,
    servers: &str,
    properties: &BTreeMap<String, String>,
) -> Item {
    let create =
        format!("create it, e.g. kafka-topics.sh --bootstrap-server {servers} --create --topic {name} --partitions 3");
    match state {
        TopicState::Exists { partitions, leaderless: 0 } => {
            Item::ok(SIDE, label, format!("exists, {partitions} partition{}", if *partitions == 1 { "" } else { "s" }))
        }
        TopicState::Exists { partitions, leaderless } => Item::fail(
            SIDE,
            label,
            format!("exists, but {leaderless} of its {partitions} partitions have no leader"),
            "records for those partitions wait until a broker leads them: check the brokers hosting them",
        ),
        TopicState::Missing => match auto {
            Some(AutoCreate::Enabled(partitions)) => Item::ok(
                SIDE,
                label,
                format!(
                    "missing, will be auto-created on first use (the broker's auto.create.topics.enable=true{})",
                    partitions.as_ref().map(|p| format!(", num.partitions={p}")).unwrap_or_default()
                ),
            ),
            Some(AutoCreate::Disabled) => Item::fail(SIDE, label, "missing, and the broker does not auto-create topics (auto.create.topics.enable=false)", create),
            Some(AutoCreate::ClientDisabled) => Item::fail(
                SIDE,
                label,
                "missing, and kafka.properties sets allow.auto.create.topics=false, so the gateway will not have it created",
                format!("{create}; or remove allow.auto.create.topics from kafka.properties if the broker auto-creates topics"),
            ),
            Some(AutoCreate::Unknown(why)) => Item::fail(
                SIDE,
                label,
                format!("missing, and whether the broker auto-creates topics is unknown ({why})"),
                format!("{create}; or allow this principal DescribeConfigs on the cluster so the check can tell"),
            ),
            None => Item::fail(SIDE, label, "missing", create),
        },
        TopicState::Unauthorized => Item::fail(
            SIDE,
            label,
            "not authorized (TOPIC_AUTHORIZATION_FAILED)",
            format!("the Kafka ACLs must allow {} Describe and Write on topic \"{name}\"", principal(properties)),
        ),
        TopicState::Error(e) => Item::fail(SIDE, label, e.clone(), "the broker's log may say more"),
    }
}

pub(super) fn principal(properties: &BTreeMap<String, String>) -> String {
    match properties.get("sasl.username") {
        Some(user) => format!("user \"{user}\""),
        None => "this client's principal".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_from_str;
    use std::path::Path;

    fn routes(yaml: &str) -> RouteTable {
        let no_env: BTreeMap<String, String> = BTreeMap::new();
        load_from_str(Path::new("routes.yaml"), yaml, &no_env).expect("valid config").routes
    }

    #[test]
    fn topics_are_checked_once_each_and_templates_are_named_as_such() {
        let table = routes(
            "routes:\n  - {name: a, filter: 'a/#', topic: raw}\n  - {name: b, filter: 'b/#', topic: raw}\n  \
             - name: t\n    filter: 'cmnd/#'\n    topic: 'iot.{1}'\n",
        );
        let labels: Vec<String> = entries(&table).iter().map(Entry::label).collect();
        assert_eq!(
            labels,
            [
                "topic \"raw\" (routes \"a\", \"b\")",
                "topic \"raw.dlq\" (dead letters of routes \"a\", \"b\")",
                "topic \"iot.{1}\" (route \"t\")",
                "topic \"iot.dlq\" (dead letters of route \"t\")",
            ]
        );
        assert!(matches!(entries(&table)[2], Entry::Template { .. }));
    }

    #[test]
    fn a_missing_topic_is_ok_only_when_it_will_be_auto_created() {
        let props = BTreeMap::new();
        let item = |auto: Option<AutoCreate>| {
            topic_item("topic \"t\"", "t", &TopicState::Missing, auto.as_ref(), "k:9092", &props)
        };
        let enabled = item(Some(AutoCreate::Enabled(Some("3".into()))));
        assert_eq!(enabled.status, crate::commands::check::Status::Ok, "{enabled}");
        assert!(enabled.detail.contains("will be auto-created"), "{enabled}");
        let disabled = item(Some(AutoCreate::Disabled));
        assert_eq!(disabled.status, crate::commands::check::Status::Fail);
        assert!(disabled.detail.contains("does not auto-create"), "{disabled}");
        assert!(disabled.hint.as_deref().unwrap_or_default().contains("--create --topic t"), "{disabled}");
        for other in [Some(AutoCreate::ClientDisabled), Some(AutoCreate::Unknown("denied".into())), None] {
            assert_eq!(item(other).status, crate::commands::check::Status::Fail);
        }
    }

    #[test]
    fn topic_metadata_states_read_as_they_should() {
        let props = BTreeMap::from([("sasl.username".to_string(), "gw".to_string())]);
        let item = |state: TopicState| topic_item("topic \"t\"", "t", &state, None, "k:9092", &props);
        assert_eq!(item(TopicState::Exists { partitions: 3, leaderless: 0 }).detail, "exists, 3 partitions");
        assert_eq!(
            item(TopicState::Exists { partitions: 3, leaderless: 1 }).status,
            crate::commands::check::Status::Fail
        );
        let denied = item(TopicState::Unauthorized);
        assert_eq!(denied.status, crate::commands::check::Status::Fail);
        assert!(denied.hint.as_deref().unwrap_or_default().contains("user \"gw\" Describe and Write"), "{denied}");
    }

    #[test]
    fn connection_failures_name_their_cause() {
        let t = Duration::from_secs(5);
        let err = |code, reason: &str| ClientErr { code: Some(code), reason: reason.into() };
        let (reach, auth) = connect_failure(
            &[err(
                RDKafkaErrorCode::Authentication,
                "SASL authentication error: Authentication failed: Invalid username or password",
            )],
            "timed out",
            "k:9092",
            t,
        );
        assert_eq!(
            (reach.status, auth.status),
            (crate::commands::check::Status::Ok, crate::commands::check::Status::Fail)
        );
        assert!(auth.hint.as_deref().unwrap_or_default().contains("sasl.password"), "{auth}");

        let (reach, auth) = connect_failure(
            &[err(RDKafkaErrorCode::SSL, "SSL handshake failed: certificate verify failed")],
            "timed out",
            "k:9092",
            t,
        );
        assert_eq!(
            (reach.status, auth.status),
            (crate::commands::check::Status::Fail, crate::commands::check::Status::Skip)
        );
        assert!(reach.detail.contains("TLS handshake failed"), "{reach}");

        let (reach, _) = connect_failure(
            &[
                err(RDKafkaErrorCode::AllBrokersDown, "1/1 brokers are down"),
                err(RDKafkaErrorCode::BrokerTransportFailure, "Connect to ipv4#127.0.0.1:1 failed: Connection refused"),
            ],
            "timed out",
            "127.0.0.1:1",
            t,
        );
        assert!(reach.detail.contains("Connection refused"), "{reach}");

        let (reach, _) = connect_failure(&[], "Meta data fetch error: OperationTimedOut", "k:9092", t);
        assert!(reach.detail.contains("no metadata within 5s"), "{reach}");
    }

    #[test]
    fn a_bad_property_is_named_without_its_value() {
        let props = BTreeMap::from([("sasl.pasword".to_string(), "Typo-Secret-42".to_string())]);
        let Err(e) = probe_config(&props, Duration::from_secs(1))
            .create_with_context::<_, BaseProducer<Probe>>(Probe::default())
        else {
            panic!("librdkafka accepted an unknown property");
        };
        let text = crate::kafka::creation_error(&e);
        assert!(text.contains("sasl.pasword"), "{text}");
        assert!(!text.contains("Typo-Secret-42"), "{text}");
    }

    #[test]
    fn security_is_described_without_secrets() {
        let props = BTreeMap::from([
            ("security.protocol".to_string(), "SASL_SSL".to_string()),
            ("sasl.mechanisms".to_string(), "SCRAM-SHA-512".to_string()),
            ("sasl.username".to_string(), "gw".to_string()),
            ("sasl.password".to_string(), "s3cret-pass".to_string()),
        ]);
        let text = security(&props);
        assert_eq!(text, "SASL SCRAM-SHA-512 as \"gw\" (security.protocol sasl_ssl)");
        assert_eq!(security(&BTreeMap::new()), "no authentication required (security.protocol plaintext)");
    }
}
