//! The Dockerfile and docker-compose.yml cannot be built here (no container engine), so they are kept
//! honest by reading them: the structure a user relies on, and the config they ship, are checked.

use std::path::PathBuf;

fn repo(file: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn dockerfile_is_multi_stage_and_runs_as_non_root() {
    let text = repo("Dockerfile");
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(froms[0].contains(" AS build"), "{froms:?}");
    let user = text.lines().rev().find(|l| l.starts_with("USER ")).expect("a USER line");
    assert!(!user.contains("root") && !user.trim_end().ends_with(" 0"), "{user}");
    assert!(text.contains("cmake"), "librdkafka is built from source and needs cmake");
    assert!(text.contains("COPY routes.yaml /etc/mqtt-kafka-gateway/routes.yaml"));
    assert!(text.contains(r#"CMD ["--config", "/etc/mqtt-kafka-gateway/routes.yaml"]"#));
    assert!(text.contains("--bin mqtt-kafka-gateway"));
    // Every file the build copies exists.
    for line in text.lines().filter(|l| l.starts_with("COPY ") && !l.contains("--from")) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(src).exists(), "COPY source {src} missing");
        }
    }
}

#[test]
fn compose_wires_mosquitto_kafka_and_the_gateway_with_the_spec_variables() {
    let doc: yaml_serde::Value = yaml_serde::from_str(&repo("docker-compose.yml")).expect("valid YAML");
    let services = doc.get("services").expect("services");
    for name in ["mosquitto", "kafka", "mqtt-kafka-gateway"] {
        assert!(services.get(name).is_some(), "service {name}");
    }
    let gw = &services["mqtt-kafka-gateway"];
    assert_eq!(gw["restart"].as_str(), Some("unless-stopped"));
    assert_eq!(gw["build"].as_str(), Some("."));
    let env = &gw["environment"];
    assert_eq!(env["MQTT_BROKER"].as_str(), Some("mosquitto:1883"));
    assert_eq!(env["KAFKA_BOOTSTRAP_SERVERS"].as_str(), Some("kafka:29092"));
    assert_eq!(env["KAFKA_TOPIC"].as_str(), Some("raw_iot_data"));
    assert_eq!(env["MQTT_TOPIC_PATTERN"].as_str(), Some("cmnd/#"));
    let kafka = &services["kafka"]["environment"];
    assert_eq!(kafka["KAFKA_PROCESS_ROLES"].as_str(), Some("broker,controller"), "KRaft, no ZooKeeper");
    assert!(kafka["KAFKA_ADVERTISED_LISTENERS"].as_str().unwrap().contains("kafka:29092"));
    let mosquitto_conf = repo("docker/mosquitto.conf");
    assert!(mosquitto_conf.contains("listener 1883") && mosquitto_conf.contains("allow_anonymous true"));
}

#[test]
fn the_compose_configuration_is_valid_for_the_gateway() {
    // What the container runs: the shipped file plus compose's environment.
    let env: std::collections::BTreeMap<String, String> = [
        ("MQTT_BROKER", "mosquitto:1883"),
        ("KAFKA_BOOTSTRAP_SERVERS", "kafka:29092"),
        ("KAFKA_TOPIC", "raw_iot_data"),
        ("MQTT_TOPIC_PATTERN", "cmnd/#"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let c = mqtt_kafka_gateway::config::load_from_str(std::path::Path::new("routes.yaml"), &repo("routes.yaml"), &env)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((c.mqtt.broker.host.as_str(), c.mqtt.broker.port), ("mosquitto", 1883));
    assert_eq!(c.routes.routes()[0].fallback_filters, vec!["cmnd/+/+/+/+"]);
}
