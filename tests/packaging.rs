//! The Dockerfile, `.dockerignore` and docker-compose.yml, read: what a build or a compose run would
//! trip over, found in seconds. The image itself is built, run and checked by `scripts/image.sh test`
//! (a container engine and several minutes), and compose brought up by it.

use std::path::PathBuf;

fn repo(file: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What `.dockerignore` lets into the build context: it excludes everything, then lets paths back in.
fn in_context(path: &str) -> bool {
    let ignore = repo(".dockerignore");
    let rules: Vec<&str> = ignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    assert_eq!(rules.first(), Some(&"*"), ".dockerignore starts by excluding everything");
    rules.iter().filter_map(|r| r.strip_prefix('!')).any(|allowed| {
        let allowed = allowed.trim_end_matches('/');
        path == allowed || path.starts_with(&format!("{allowed}/"))
    })
}

#[test]
fn the_dockerfile_builds_a_static_deps_binary_into_a_non_root_image_that_checks_itself() {
    let text = repo("Dockerfile");
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "a build stage and a runtime stage: {froms:?}");
    assert!(froms[0].ends_with(" AS build"), "{froms:?}");
    assert!(text.contains("cmake"), "librdkafka is built from source and needs cmake");
    assert!(text.contains("cargo build --release --locked --features static-deps --bin mqtt-kafka-gateway"));
    let user = text.lines().rev().find_map(|l| l.strip_prefix("USER ")).expect("a USER line");
    let uid: u32 = user.split(':').next().unwrap().trim().parse().expect("a numeric uid");
    assert_ne!(uid, 0);
    assert!(text.contains("HEALTHCHECK "), "the image checks itself");
    assert!(text.contains(r#"ENTRYPOINT ["/usr/local/bin/mqtt-kafka-gateway"]"#));
    assert!(text.contains("GATEWAY_CONFIG=/etc/mqtt-kafka-gateway/routes.yaml"));
    // Every file the build copies exists and is in the build context.
    for line in text.lines().filter(|l| l.starts_with("COPY ") && !l.contains("--from")) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            let src = src.trim_end_matches('/');
            assert!(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(src).exists(), "COPY source {src} missing");
            assert!(in_context(src), "COPY source {src} is excluded by .dockerignore");
        }
    }
    assert!(!in_context("target") && !in_context(".git") && !in_context("tests"));
}

#[test]
fn the_static_deps_feature_exists_for_the_image_build() {
    let manifest = repo("Cargo.toml");
    let line = manifest.lines().find(|l| l.starts_with("static-deps = ")).expect("[features] static-deps");
    assert!(line.contains("rdkafka/ssl-vendored") && line.contains("rdkafka/libz-static"), "{line}");
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
    assert_eq!(gw["image"].as_str(), Some("mqtt-kafka-gateway:latest"), "the name scripts/image.sh build tags");
    assert_eq!(gw["read_only"].as_bool(), Some(true));
    let env = &gw["environment"];
    assert_eq!(env["MQTT_BROKER"].as_str(), Some("mosquitto:1883"));
    assert_eq!(env["KAFKA_BOOTSTRAP_SERVERS"].as_str(), Some("kafka:29092"));
    assert_eq!(env["KAFKA_TOPIC"].as_str(), Some("raw_iot_data"));
    assert_eq!(env["MQTT_TOPIC_PATTERN"].as_str(), Some("cmnd/#"));
    // The configuration directory, so that a rename-save reaches the watcher.
    let volumes: Vec<&str> =
        gw["volumes"].as_sequence().expect("volumes").iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(volumes, ["./config:/etc/mqtt-kafka-gateway:ro"]);
    assert!(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/routes.yaml").is_file());
    let kafka = &services["kafka"]["environment"];
    assert_eq!(kafka["KAFKA_PROCESS_ROLES"].as_str(), Some("broker,controller"), "KRaft, no ZooKeeper");
    assert!(kafka["KAFKA_ADVERTISED_LISTENERS"].as_str().unwrap().contains("kafka:29092"));
    let mosquitto_conf = repo("docker/mosquitto.conf");
    assert!(mosquitto_conf.contains("listener 1883") && mosquitto_conf.contains("allow_anonymous true"));
    // The Kafka of compose is the version the tests run against (and the one a stand-in is made of).
    let image = services["kafka"]["image"].as_str().unwrap();
    let lib = repo("scripts/lib.sh");
    let version = lib.split("MKG_KAFKA_VERSION:-").nth(1).and_then(|r| r.split('}').next()).expect("the version");
    assert_eq!(image, format!("apache/kafka:{version}"));
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
    let c = mqtt_kafka_gateway::config::load_from_str(
        std::path::Path::new("routes.yaml"),
        &repo("config/routes.yaml"),
        &env,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((c.mqtt.broker.host.as_str(), c.mqtt.broker.port), ("mosquitto", 1883));
    assert_eq!(c.routes.routes()[0].fallback_filters, vec!["cmnd/+/+/+/+"]);
}
