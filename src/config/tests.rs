use super::*;
use std::collections::BTreeMap;
use std::path::Path;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn load(text: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    load_from_str(Path::new("routes.yaml"), text, &env(pairs))
}

#[test]
fn broker_addresses_table() {
    use Transport::*;
    let ok = |host: &str, port: u16, transport: Transport, path: &str| {
        Ok(BrokerAddr { host: host.into(), port, transport, path: path.into() })
    };
    let cases = [
        ("mosquitto:1883", ok("mosquitto", 1883, Tcp, "")),
        ("localhost", ok("localhost", 1883, Tcp, "")),
        ("mqtt://broker.example:1884", ok("broker.example", 1884, Tcp, "")),
        ("tcp://broker/", ok("broker", 1883, Tcp, "")),
        ("mqtts://broker.example", ok("broker.example", 8883, Tls, "")),
        ("SSL://broker.example:8884", ok("broker.example", 8884, Tls, "")),
        ("[::1]:1885", ok("::1", 1885, Tcp, "")),
        ("ws://broker:8080", ok("broker", 8080, Ws, "/mqtt")),
        ("wss://broker.example/ws/mqtt", ok("broker.example", 443, Wss, "/ws/mqtt")),
        ("ws://[::1]:9001/", ok("::1", 9001, Ws, "/mqtt")),
    ];
    for (input, want) in cases {
        assert_eq!(parse_broker(input), want, "{input}");
    }
    for bad in ["", "http://x", "host:notaport", "host:0", "[::1", ":1883", "mqtt://host/path", "ws://"] {
        assert!(parse_broker(bad).is_err(), "{bad:?} should be rejected");
    }
    assert_eq!(parse_broker("wss://broker.example/mqtt").unwrap().ws_url().unwrap(), "wss://broker.example:443/mqtt");
    assert_eq!(parse_broker("ws://[::1]:9001").unwrap().ws_url().unwrap(), "ws://[::1]:9001/mqtt");
    assert_eq!(parse_broker("[::1]:1883").unwrap().to_string(), "[::1]:1883");
    assert_eq!(parse_broker("mqtts://broker").unwrap().to_string(), "broker:8883");
    assert_eq!(parse_broker("wss://broker/ws").unwrap().to_string(), "wss://broker:443/ws");
    // A password in the URL is refused without being repeated.
    let e = parse_broker("mqtts://user:hunter2@broker:8883").unwrap_err();
    assert!(!e.contains("hunter2") && e.contains("mqtt.password"), "{e}");
}

#[test]
fn an_empty_file_gives_the_spec_route_and_defaults() {
    let c = load("", &[]).unwrap();
    let r = &c.routes.routes()[0];
    assert_eq!((r.filter.as_str(), r.topic.to_string().as_str(), r.qos), ("cmnd/#", "raw_iot_data", 0));
    assert_eq!(r.fallback_filters, vec!["cmnd/+/+/+/+"]);
    assert_eq!(r.dead_letter_topic, "raw_iot_data.dlq");
    assert_eq!(c.mqtt.keep_alive, Duration::from_secs(60));
    assert!(c.mqtt.clean_session);
    assert!(c.mqtt.max_packet_size >= 1024 * 1024);
    assert_eq!(c.kafka.properties["acks"], "all");
    assert_eq!(c.kafka.properties["enable.idempotence"], "true");
    assert_eq!(c.kafka.properties["reconnect.backoff.max.ms"], "1000");
    assert_eq!(c.kafka.properties["partitioner"], "murmur2_random");
}

#[test]
fn the_shipped_routes_yaml_is_the_spec_route() {
    let text = include_str!("../../config/routes.yaml");
    let c = load(text, &[]).unwrap();
    let routes = c.routes.routes();
    assert_eq!(routes.len(), 1);
    let r = &routes[0];
    assert_eq!((r.filter.as_str(), r.topic.to_string().as_str(), r.qos), ("cmnd/#", "raw_iot_data", 0));
    assert_eq!(r.fallback_filters, vec!["cmnd/+/+/+/+"]);
    assert_eq!(r.device_id.extract("cmnd/f2-e4fd45f654be/access-control-mode/J1/door-sensors").0, "f2-e4fd45f654be");
    assert_eq!(r.device_id.extract("cmnd/plc-7/state").0, "plc-7");
    assert_eq!(r.device_id.extract("cmnd").0, "unknown");
}

#[test]
fn spec_environment_variables_override_the_file() {
    let c = load(
        "mqtt: {broker: 'file:1883'}\nkafka: {bootstrap_servers: 'file:9092'}\n",
        &[("KAFKA_TOPIC", "from_env"), ("MQTT_TOPIC_PATTERN", "sensors/#")],
    )
    .unwrap();
    let r = &c.routes.routes()[0];
    assert_eq!(r.topic.to_string(), "from_env");
    assert_eq!(r.filter, "sensors/#");
    assert!(r.fallback_filters.is_empty(), "fallbacks of cmnd/# make no sense for sensors/#");
    assert_eq!(r.dead_letter_topic, "from_env.dlq");
    assert_eq!(c.mqtt.broker.host, "file");

    let same = load(
        "",
        &[
            ("MQTT_TOPIC_PATTERN", "cmnd/#"),
            ("MQTT_BROKER", "mqtt://env-broker:1999"),
            ("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092"),
        ],
    )
    .unwrap();
    assert_eq!(same.routes.routes()[0].fallback_filters, vec!["cmnd/+/+/+/+"], "same filter: fallbacks kept");
    assert_eq!((same.mqtt.broker.host.as_str(), same.mqtt.broker.port), ("env-broker", 1999));
    assert_eq!(same.kafka.properties["bootstrap.servers"], "k1:9092,k2:9092");
}

#[test]
fn prefixed_variables_override_nested_keys() {
    let c = load(
        "mqtt: {client_id: a}\n",
        &[
            ("GATEWAY_MQTT__CLIENT_ID", "edge-7"),
            ("GATEWAY_MQTT__KEEP_ALIVE_SECS", "30"),
            ("GATEWAY_KAFKA__PROPERTIES__COMPRESSION_TYPE", "zstd"),
            ("GATEWAY_MQTT__USERNAME", "1234"),
            ("GATEWAY_MQTT__PASSWORD", "5678"),
        ],
    )
    .unwrap();
    assert_eq!(c.mqtt.client_id, "edge-7");
    assert_eq!(c.mqtt.keep_alive, Duration::from_secs(30));
    assert_eq!(c.kafka.properties["compression.type"], "zstd");
    let (user, pass) = c.mqtt.credentials.clone().unwrap();
    assert_eq!((user.as_str(), pass.expose()), ("1234", "5678"));
    assert_eq!(format!("{:?}", c.mqtt), format!("{:?}", c.mqtt).replace("5678", "***"), "password never printed");
}

#[test]
fn kafka_properties_pass_through_and_win() {
    let c = load("kafka:\n  properties:\n    linger.ms: 50\n    security.protocol: SASL_SSL\n", &[]).unwrap();
    assert_eq!(c.kafka.properties["linger.ms"], "50");
    assert_eq!(c.kafka.properties["security.protocol"], "SASL_SSL");
}

fn problems(text: &str) -> Vec<String> {
    load(text, &[]).expect_err("config should be rejected").problems.iter().map(|p| p.to_string()).collect()
}

#[test]
fn yaml_syntax_errors_name_the_line() {
    let p = problems("mqtt:\n  broker: [unclosed\nkafka: {}\n");
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("routes.yaml:"), "{p:?}");
    assert!(p[0].contains("YAML syntax error"), "{p:?}");
}

#[test]
fn unknown_keys_name_path_and_line() {
    let p = problems("mqtt:\n  brokr: x\nroutes:\n  - name: a\n    filter: a/#\n    topic: t\n    qos_level: 1\n");
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[0].starts_with("routes.yaml:2:3: mqtt.brokr: unknown field"), "{p:?}");
    assert!(p[1].starts_with("routes.yaml:7:5: routes[0].qos_level: unknown field"), "{p:?}");
}

#[test]
fn the_replaced_buffer_messages_key_points_to_buffer_bytes() {
    let p = problems("mqtt:\n  buffer_messages: 1000\n");
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("routes.yaml:2:3: mqtt.buffer_messages: unknown field"), "{p:?}");
    assert!(p[0].contains("replaced by mqtt.buffer_bytes"), "{p:?}");
}

#[test]
fn wrong_types_and_missing_keys_are_reported() {
    let p = problems("mqtt:\n  keep_alive_secs: soon\nroutes:\n  - name: a\n    filter: a/#\n");
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[0].contains("mqtt.keep_alive_secs") && p[0].contains("routes.yaml:2:"), "{p:?}");
    assert!(
        p[1].contains("routes[0]") && p[1].contains("missing field `topic`") && p[1].contains("routes.yaml:4:"),
        "{p:?}"
    );
}

#[test]
fn every_semantic_problem_is_reported_at_once() {
    let text = "\
routes:
  - name: a
    filter: cmnd/#/bad
    topic: ok
    device_id:
      regex: '(unclosed'
  - name: a
    filter: x/+
    topic: 'bad topic'
    qos: 3
    key: '$[?'
    device_id:
      regex: 'no-group'
";
    let p = problems(text);
    let expect = [
        ("routes.yaml:3:5: routes[0].filter", "invalid MQTT filter"),
        ("routes.yaml:6:7: routes[0].device_id.regex", "invalid regex"),
        ("routes.yaml:7:5: routes[1].name", "already the name"),
        ("routes.yaml:10:5: routes[1].qos", "not an MQTT QoS"),
        ("routes.yaml:9:5: routes[1].topic", "contains ' '"),
        ("routes.yaml:13:7: routes[1].device_id.regex", "no named group"),
        ("routes.yaml:11:5: routes[1].key", "invalid JSONPath"),
    ];
    for (prefix, text) in expect {
        assert!(p.iter().any(|l| l.starts_with(prefix) && l.contains(text)), "missing {prefix} / {text} in {p:#?}");
    }
    assert_eq!(p.len(), expect.len(), "{p:#?}");
}

#[test]
fn an_environment_value_is_blamed_on_the_environment() {
    let err = load("", &[("GATEWAY_MQTT__KEEP_ALIVE_SECS", "soon")]).unwrap_err();
    assert_eq!(err.problems.len(), 1);
    assert_eq!(err.problems[0].origin, Origin::Environment, "{}", err);
}

#[test]
fn a_missing_file_is_an_error_that_says_how_to_fix_it() {
    let err = super::load(Path::new("does/not/exist.yaml")).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("does/not/exist.yaml") && text.contains("--config"), "{text}");
}

#[test]
fn the_http_server_listens_where_told_or_not_at_all() {
    assert_eq!(load("", &[]).unwrap().http, Some("0.0.0.0:9180".parse().unwrap()));
    let c = load("", &[("GATEWAY_HTTP__LISTEN", "127.0.0.1:0")]).unwrap();
    assert_eq!(c.http, Some("127.0.0.1:0".parse().unwrap()));
    assert_eq!(load("http:\n  enabled: false\n", &[]).unwrap().http, None);
    let p = problems("http:\n  listen: localhost\n");
    assert!(p.iter().any(|p| p.contains("http.listen") && p.contains("not an address:port")), "{p:?}");
}

#[test]
fn a_shared_group_is_a_plain_name_and_stays_text_from_the_environment() {
    let c = load("", &[("GATEWAY_MQTT__SHARED_GROUP", "007")]).unwrap();
    assert_eq!(c.mqtt.shared_group.as_deref(), Some("007"));
    let e = load("mqtt:\n  shared_group: a/b\n", &[]).unwrap_err();
    assert!(e.to_string().contains("mqtt.shared_group"), "{e}");
}

#[test]
fn ordered_replicas_take_their_index_from_a_number_or_a_pod_name() {
    let c = load("replicas:\n  count: 3\n", &[("GATEWAY_REPLICAS__INDEX", "mqtt-kafka-gateway-2")]).unwrap();
    assert_eq!(c.replicas, Some(crate::core::routing::replicas::Replicas { index: 2, count: 3 }));
    assert_eq!(load("", &[]).unwrap().replicas, None, "one replica by default");
    for (yaml, needle) in [
        ("replicas:\n  count: 3\n  index: 3\n", "not below replicas.count"),
        ("replicas:\n  count: 2\n  index: gateway\n", "not a replica number"),
        ("replicas:\n  count: 0\n", "replicas.count"),
        ("mqtt:\n  shared_group: g\nreplicas:\n  count: 2\n", "either replicas.count or mqtt.shared_group"),
    ] {
        let e = load(yaml, &[]).unwrap_err().to_string();
        assert!(e.contains(needle), "{yaml}: {e}");
    }
}

#[test]
fn kubernetes_service_links_of_a_service_named_gateway_are_not_config_keys() {
    let links = [
        ("GATEWAY_PORT", "tcp://10.0.0.7:80"),
        ("GATEWAY_PORT_80_TCP", "tcp://10.0.0.7:80"),
        ("GATEWAY_PORT_80_TCP_ADDR", "10.0.0.7"),
        ("GATEWAY_SERVICE_HOST", "10.0.0.7"),
        ("GATEWAY_SERVICE_PORT", "80"),
    ];
    assert!(load("", &links).is_ok());
    // GATEWAY_CONFIG is the path of the file (the --config flag), not a key.
    assert!(load("", &[("GATEWAY_CONFIG", "/etc/mqtt-kafka-gateway/routes.yaml")]).is_ok());
    // A misspelt key (one underscore) is still reported.
    assert!(load("", &[("GATEWAY_MQTT_CLIENT_ID", "x")]).is_err());
}

#[test]
fn the_protocol_is_a_number_or_a_string_from_file_and_environment() {
    use crate::config::Protocol;
    assert_eq!(load("", &[]).unwrap().mqtt.protocol, Protocol::V311, "3.1.1 by default");
    assert_eq!(load("mqtt:\n  protocol: 5\n", &[]).unwrap().mqtt.protocol, Protocol::V5);
    assert_eq!(load("mqtt:\n  protocol: \"5\"\n", &[]).unwrap().mqtt.protocol, Protocol::V5);
    assert_eq!(load("mqtt:\n  protocol: 3.1.1\n", &[]).unwrap().mqtt.protocol, Protocol::V311);
    for v in ["5", "5.0", "v5"] {
        assert_eq!(load("", &[("GATEWAY_MQTT__PROTOCOL", v)]).unwrap().mqtt.protocol, Protocol::V5, "{v}");
    }
    assert_eq!(
        load("mqtt:\n  protocol: 5\n", &[("GATEWAY_MQTT__PROTOCOL", "3.1.1")]).unwrap().mqtt.protocol,
        Protocol::V311
    );
    let e = load("mqtt:\n  protocol: 3.1\n", &[]).unwrap_err().to_string();
    assert!(e.contains("mqtt.protocol") && e.contains("not an MQTT version") && e.contains("routes.yaml:2:"), "{e}");
}

#[test]
fn session_expiry_follows_clean_session_and_needs_mqtt_5() {
    let c = load("mqtt:\n  protocol: 5\n  clean_session: false\n", &[]).unwrap();
    assert_eq!(c.mqtt.session_expiry, u32::MAX, "a persistent session does not expire, as on 3.1.1");
    assert_eq!(load("mqtt:\n  protocol: 5\n", &[]).unwrap().mqtt.session_expiry, 0);
    let c = load("mqtt:\n  protocol: 5\n  clean_session: false\n  session_expiry_secs: 3600\n", &[]).unwrap();
    assert_eq!(c.mqtt.session_expiry, 3600);
    for (yaml, needle) in [
        ("mqtt:\n  clean_session: false\n  session_expiry_secs: 60\n", "needs MQTT 5"),
        ("mqtt:\n  protocol: 5\n  session_expiry_secs: 60\n", "needs clean_session: false"),
    ] {
        let e = load(yaml, &[]).unwrap_err().to_string();
        assert!(e.contains("mqtt.session_expiry_secs") && e.contains(needle), "{yaml}: {e}");
    }
}

#[test]
fn read_coalescing_defaults_to_1_ms_is_set_by_file_or_env_and_bounded() {
    assert_eq!(load("", &[]).unwrap().mqtt.read_coalesce, Duration::from_millis(1));
    assert_eq!(load("mqtt:\n  read_coalesce_us: 250\n", &[]).unwrap().mqtt.read_coalesce, Duration::from_micros(250));
    let off = load("mqtt:\n  read_coalesce_us: 250\n", &[("GATEWAY_MQTT__READ_COALESCE_US", "0")]).unwrap();
    assert_eq!(off.mqtt.read_coalesce, Duration::ZERO);
    let p = problems("mqtt:\n  read_coalesce_us: 100001\n");
    assert!(p.iter().any(|p| p.contains("mqtt.read_coalesce_us") && p.contains("out of range")), "{p:?}");
}

#[test]
fn the_spool_is_off_until_a_directory_is_set_and_then_takes_its_settings() {
    use crate::config::{AckAfter, SpoolFsync, WhenFull};
    assert_eq!(load("", &[]).unwrap().spool, None, "no dir: memory only");
    let c = load("spool:\n  dir: /var/lib/gw/spool\n", &[]).unwrap();
    let s = c.spool.expect("on");
    assert_eq!(s.dir, std::path::PathBuf::from("/var/lib/gw/spool"));
    assert_eq!(s.max_bytes, 1 << 30);
    assert_eq!(s.fsync, SpoolFsync::Interval(std::time::Duration::from_millis(500)));
    assert_eq!((s.when_full, s.ack_after), (WhenFull::Block, AckAfter::Kafka));

    let yaml =
        "spool:\n  dir: /s\n  max_bytes: 512MiB\n  fsync: always\n  when_full: drop_oldest\n  ack_after: spool\n";
    let s = load(yaml, &[]).unwrap().spool.unwrap();
    assert_eq!((s.max_bytes, s.fsync), (512 << 20, SpoolFsync::Always));
    assert_eq!((s.when_full, s.ack_after), (WhenFull::DropOldest, AckAfter::Spool));

    // From the environment, as a Kubernetes Deployment would set it.
    let env = [("GATEWAY_SPOOL__DIR", "/data/spool"), ("GATEWAY_SPOOL__MAX_BYTES", "2GiB")];
    let s = load("", &env).unwrap().spool.unwrap();
    assert_eq!((s.dir.to_str(), s.max_bytes), (Some("/data/spool"), 2 << 30));
    let env = [("GATEWAY_SPOOL__DIR", "/data/spool"), ("GATEWAY_SPOOL__MAX_BYTES", "1073741824")];
    assert_eq!(load("", &env).unwrap().spool.unwrap().max_bytes, 1 << 30);
}

#[test]
fn bad_spool_settings_are_named() {
    for (yaml, needle) in [
        ("spool:\n  dir: /s\n  max_bytes: 1.5GiB\n", "spool.max_bytes"),
        ("spool:\n  dir: /s\n  max_bytes: 1MiB\n", "too small"),
        ("spool:\n  dir: /s\n  max_bytes: 1 GB of disk\n", "unknown unit"),
        ("spool:\n  dir: /s\n  fsync: sometimes\n", "spool.fsync"),
        ("spool:\n  dir: /s\n  fsync_interval_ms: 0\n", "spool.fsync_interval_ms"),
        ("spool:\n  dir: /s\n  when_full: panic\n", "spool.when_full"),
        ("spool:\n  dir: /s\n  ack_after: mqtt\n", "spool.ack_after"),
        ("spool:\n  dir: /s\n  size: 1GiB\n", "size"),
    ] {
        let e = load(yaml, &[]).unwrap_err().to_string();
        assert!(e.contains(needle), "{yaml}: {e}");
    }
}

#[test]
fn an_edit_of_a_key_the_environment_overrides_is_named_with_its_variable() {
    let before = "kafka:\n  bootstrap_servers: a:9092\n  properties:\n    linger.ms: 5\nroutes:\n  - name: r\n    filter: cmnd/#\n    topic: t1\n";
    let after = "kafka:\n  bootstrap_servers: b:9092\n  properties:\n    linger.ms: 9\nroutes:\n  - name: r\n    filter: cmnd/#\n    topic: t2\n";
    let env = env(&[
        ("KAFKA_BOOTSTRAP_SERVERS", "c:9092"),
        ("KAFKA_TOPIC", "raw"),
        ("GATEWAY_KAFKA__PROPERTIES__LINGER_MS", "1"),
        ("MQTT_TOPIC_PATTERN", "cmnd/#"),
    ]);
    let mut named = super::edited_overrides(before, after, &env);
    named.sort();
    assert_eq!(
        named,
        [
            "kafka.bootstrap_servers (KAFKA_BOOTSTRAP_SERVERS)",
            "kafka.properties.linger.ms (GATEWAY_KAFKA__PROPERTIES__LINGER_MS)",
            "routes[0].topic (KAFKA_TOPIC)",
        ]
    );
    // Unchanged keys, and changed keys no variable overrides, are not named.
    assert!(super::edited_overrides(before, before, &env).is_empty());
    assert!(super::edited_overrides(before, after, &self::env(&[])).is_empty());
}

#[test]
fn downlinks_are_read_with_their_defaults() {
    let c = load(
        "mqtt: {client_id: edge-1}\nroutes:\n  - {name: up, filter: 'tele/#', topic: telemetry}\ndownlinks:\n  - name: commands\n    kafka_topic: device-commands\n    mqtt_topic: 'cmnd/{key}/set'\n  - name: config\n    kafka_topics: [a, b]\n    group_id: g\n    mqtt_topic: 'config/{header.site}/{key}'\n    qos: '{header.qos}'\n    retain: true\n    dead_letter_topic: config.dlq\n    rate_limit: {messages_per_sec: 500}\n    properties: {session.timeout.ms: 6000}\n",
        &[],
    )
    .unwrap();
    let [a, b] = c.downlinks.as_slice() else { panic!("{:?}", c.downlinks) };
    assert_eq!(
        (&*a.name, a.kafka_topics.as_slice(), a.group_id.as_str()),
        ("commands", &["device-commands".to_string()][..], "edge-1-downlink-commands")
    );
    assert_eq!(
        (&a.qos, &a.retain, a.dead_letter_topic.as_str()),
        (&Setting::Fixed(1), &Setting::Fixed(false), "device-commands.dlq")
    );
    assert_eq!(b.kafka_topics, ["a", "b"]);
    assert_eq!((&b.qos, &b.retain, b.group_id.as_str()), (&Setting::Header("qos".into()), &Setting::Fixed(true), "g"));
    assert_eq!(b.properties, [("session.timeout.ms".to_string(), "6000".to_string())]);
    assert!(b.rate_limit.is_some());
    assert!(load("", &[]).unwrap().downlinks.is_empty());
}

use crate::core::downlink::Setting;

#[test]
fn bad_downlinks_are_refused_with_the_place_and_a_hint() {
    let cases = [
        ("- {name: d, mqtt_topic: 'c/{key}'}", "downlinks[0].kafka_topic: missing"),
        ("- {name: d, kafka_topic: t, kafka_topics: [u], mqtt_topic: 'c/{key}'}", "not both"),
        ("- {name: d, kafka_topic: 'bad topic', mqtt_topic: 'c/{key}'}", "downlinks[0].kafka_topic: `bad topic`"),
        ("- {name: d, kafka_topic: t, mqtt_topic: 'c/+/set'}", "wildcard"),
        ("- {name: d, kafka_topic: t, mqtt_topic: 'c/{nope}'}", "not a placeholder"),
        ("- {name: d, kafka_topic: t, mqtt_topic: 'c/{key}', qos: 3}", "downlinks[0].qos"),
        ("- {name: d, kafka_topic: t, mqtt_topic: 'c/{key}', retain: maybe}", "downlinks[0].retain"),
        (
            "- {name: d, kafka_topic: t, mqtt_topic: 'c/{key}', dead_letter_topic: t}",
            "a refused record would come back",
        ),
        ("- {name: d, kafka_topic: t, mqtt_topic: 'c/{key}', rate_limit: {messages_per_sec: 0}}", "out of range"),
        (
            "- {name: d, kafka_topic: t, mqtt_topic: 'c/{key}', properties: {enable.auto.commit: true}}",
            "the gateway's to set",
        ),
        ("- {name: d, kafka_topic: t, mqtt_topic: 'c/{key}', bogus: 1}", "bogus"),
        (
            "- {name: d, kafka_topic: t, mqtt_topic: 'c/{key}'}\n- {name: d, kafka_topic: u, mqtt_topic: 'e/{key}'}",
            "already the name of downlinks[0]",
        ),
    ];
    for (downlinks, want) in cases {
        let text = format!(
            "routes:\n  - {{name: up, filter: 'tele/#', topic: telemetry}}\ndownlinks:\n{}\n",
            downlinks.lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
        );
        let all = problems(&text).join("\n");
        assert!(all.contains(want), "{downlinks}: want {want:?} in\n{all}");
    }
}

/// The spec's route subscribes `cmnd/#`: commands to `cmnd/<device>/set` would come back through it.
#[test]
fn a_downlink_that_loops_into_a_route_is_refused_unless_allowed() {
    let downlink = "downlinks:\n  - {name: commands, kafka_topic: device-commands, mqtt_topic: 'cmnd/{key}/set'}\n";
    let all = problems(downlink).join("\n");
    assert!(all.contains("downlinks[0].mqtt_topic: downlink `commands` publishes `cmnd/{key}/set`, which route `iot-commands` subscribes (`cmnd/#`)"), "{all}");
    assert!(all.contains("allow_loop: true"), "{all}");
    // Either side may say it is intended.
    let allowed = "downlinks:\n  - {name: commands, kafka_topic: device-commands, mqtt_topic: 'cmnd/{key}/set', allow_loop: true}\n";
    assert_eq!(load(allowed, &[]).unwrap().downlinks.len(), 1);
    let route_allows =
        "routes:\n  - {name: up, filter: 'cmnd/#', topic: raw_iot_data, allow_loop: true}\n".to_string() + downlink;
    assert_eq!(load(&route_allows, &[]).unwrap().downlinks.len(), 1);
    // A fallback filter counts too; a topic the route does not subscribe does not loop.
    let narrow = "routes:\n  - {name: up, filter: 'tele/#', fallback_filters: ['cmnd/+/set'], topic: t}\n".to_string()
        + downlink;
    assert!(problems(&narrow).join("\n").contains("subscribes (`cmnd/+/set`)"));
    let apart = "routes:\n  - {name: up, filter: 'cmnd/+/+/+/+', topic: t}\n".to_string() + downlink;
    assert_eq!(load(&apart, &[]).unwrap().downlinks.len(), 1);
    // Into the topic it reads: refused even when allowed.
    let round = "routes:\n  - {name: up, filter: 'cmnd/#', topic: device-commands, allow_loop: true}\ndownlinks:\n  - {name: commands, kafka_topic: device-commands, mqtt_topic: 'cmnd/{key}/set', allow_loop: true}\n";
    assert!(problems(round).join("\n").contains("go round for ever"));
}
