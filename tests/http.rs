//! The HTTP edge against real Mosquitto and Kafka: `/metrics` parsed by a real OpenMetrics parser and
//! counting what flowed, `/readyz` following both brokers down and up, `/healthz` unmoved by them, and
//! readiness gone the moment shutdown begins.

mod common;

use std::time::{Duration, Instant};

use common::http::{get, Answer};
use common::prom::{self, value, Sample};
use common::{
    broker_env, kafka, mosquitto_pub, new_topic, publish_all, start_gateway, wait_until, Config, Gateway, Kafka,
    Mosquitto, Route, WAIT,
};

fn route_config(topic: &str) -> Config {
    Config::new().route(Route::new("spec", "cmnd/#", topic).qos(1))
}

fn scrape(addr: &str) -> Vec<Sample> {
    let a = get(addr, "/metrics").expect("/metrics answers");
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.content_type.starts_with("application/openmetrics-text"), "{}", a.content_type);
    prom::parse(&a.body)
}

fn status(addr: &str, path: &str) -> Option<u16> {
    get(addr, path).map(|a| a.status)
}

/// Waits until `path` answers `want`; returns how long it took (panics with the last answer otherwise).
fn wait_status(addr: &str, path: &str, want: u16, within: Duration, gw: &Gateway) -> Duration {
    let started = Instant::now();
    let mut last: Option<Answer> = None;
    let ok = wait_until(within, Duration::from_millis(100), || {
        last = get(addr, path);
        last.as_ref().map(|a| a.status) == Some(want)
    });
    assert!(ok, "{path} did not answer {want} within {within:?}; last: {last:?}\ngateway log:\n{}", gw.logs());
    started.elapsed()
}

#[test]
fn metrics_count_what_flows_and_parse_as_openmetrics() {
    let mosquitto = Mosquitto::start();
    let topic = new_topic("http_metrics", 1);
    let dir = tempfile::tempdir().unwrap();
    // A downlink too, so that its series are in the scrape (they exist per downlink).
    let commands = new_topic("http_commands", 1);
    let downlink = format!("downlinks:\n  - {{name: commands, kafka_topic: {commands}, mqtt_topic: 'down/{{key}}'}}\n");
    let gw = start_gateway(&route_config(&topic).extra(&downlink).write(dir.path()), &broker_env(&mosquitto));
    let addr = gw.http_addr();
    wait_status(&addr, "/readyz", 200, WAIT, &gw);
    assert!(
        wait_until(WAIT, Duration::from_millis(100), || value(
            &scrape(&addr),
            "mqtt_kafka_gateway_downlink_mqtt_connected",
            &[]
        ) == 1.0),
        "the downlinks' connection never came up:\n{}",
        gw.logs()
    );

    let before = scrape(&addr);
    for name in [
        "mqtt_kafka_gateway_build_info",
        "mqtt_kafka_gateway_mqtt_connected",
        "mqtt_kafka_gateway_kafka_brokers_up",
        "mqtt_kafka_gateway_config_generation",
        "mqtt_kafka_gateway_ready",
        "process_resident_memory_bytes",
    ] {
        assert!(before.iter().any(|s| s.name == name), "{name} missing from the scrape");
    }
    assert_eq!(value(&before, "mqtt_kafka_gateway_ready", &[]), 1.0);
    assert_eq!(value(&before, "mqtt_kafka_gateway_mqtt_connected", &[]), 1.0);
    assert!(value(&before, "mqtt_kafka_gateway_kafka_brokers_up", &[]) >= 1.0);
    let received = |s: &[Sample]| value(s, "mqtt_kafka_gateway_messages_received_total", &[("qos", "1")]);
    let delivered =
        |s: &[Sample]| value(s, "mqtt_kafka_gateway_records_delivered_total", &[("route", "spec"), ("topic", &topic)]);
    let latency_count =
        |s: &[Sample]| value(s, "mqtt_kafka_gateway_delivery_latency_seconds_count", &[("route", "spec")]);

    const N: usize = 40;
    let messages =
        (0..N).map(|i| (format!("cmnd/dev-{}/state", i % 4), format!(r#"{{"n":{i}}}"#).into_bytes())).collect();
    publish_all(mosquitto.port(), messages);
    let records = kafka().consume(&topic, N, WAIT);
    assert_eq!(records.len(), N);
    // Counted when Kafka's acknowledgement is settled: give the scrape a moment to see the last ones.
    let mut after = scrape(&addr);
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        after = scrape(&addr);
        delivered(&after) - delivered(&before) >= N as f64
    });
    // publish_all publishes at QoS 1, and the route subscribes at QoS 1.
    assert_eq!(received(&after) - received(&before), N as f64);
    assert_eq!(delivered(&after) - delivered(&before), N as f64);
    assert_eq!(latency_count(&after) - latency_count(&before), N as f64);
    let inf = value(&after, "mqtt_kafka_gateway_delivery_latency_seconds_bucket", &[("route", "spec"), ("le", "+Inf")]);
    assert_eq!(inf, latency_count(&after), "+Inf bucket holds every observation");
    assert_eq!(
        value(&after, "mqtt_kafka_gateway_device_id_total", &[("route", "spec"), ("source", "fallback")]),
        N as f64
    );
    // No label carries an MQTT topic or a device id.
    assert!(after.iter().all(|s| s.labels.values().all(|v| !v.contains("dev-"))), "unbounded label value");

    // A payload that is not JSON: a dead letter with its reason.
    let dead = |s: &[Sample]| {
        value(s, "mqtt_kafka_gateway_dead_letters_total", &[("route", "spec"), ("reason", "invalid_json")])
    };
    mosquitto_pub(mosquitto.port(), "cmnd/dev-9/state", b"not json", 1);
    assert_eq!(kafka().consume(&format!("{topic}.dlq"), 1, WAIT).len(), 1);
    let ok = wait_until(Duration::from_secs(10), Duration::from_millis(100), || dead(&scrape(&addr)) == 1.0);
    assert!(ok, "dead_letters_total{{reason=invalid_json}} is {}", dead(&scrape(&addr)));
    assert_eq!(delivered(&scrape(&addr)) - delivered(&before), N as f64, "a dead letter is not a delivered record");

    // Every metric the shipped dashboard and alert rules query is in this live scrape.
    let live = scrape(&addr);
    let exposed = |used: &str| {
        live.iter().any(|s| {
            s.name == used
                || s.name.strip_prefix(used).is_some_and(|rest| ["_bucket", "_sum", "_count"].contains(&rest))
        })
    };
    let re = regex::Regex::new(r"\bmqtt_kafka_gateway_[a-z_]+").unwrap();
    let mut used = std::collections::BTreeSet::new();
    for file in ["deploy/grafana/mqtt-kafka-gateway.json", "deploy/prometheus/alerts.yaml"] {
        let text = std::fs::read_to_string(common::repo_root().join(file)).unwrap();
        used.extend(re.find_iter(&text).map(|m| m.as_str().to_string()));
    }
    assert!(used.len() >= 10, "the dashboard and alerts use {} metrics?", used.len());
    let missing: Vec<&String> = used.iter().filter(|u| !exposed(u)).collect();
    assert!(missing.is_empty(), "queried by the dashboard or alerts but not in a live scrape: {missing:?}");
}

#[test]
fn readyz_follows_both_brokers_and_healthz_does_not() {
    let mut mosquitto = Mosquitto::start();
    let kafka = Kafka::start_dedicated();
    let topic = "http_ready";
    kafka.create_topic(topic, 1);
    let dir = tempfile::tempdir().unwrap();
    let env = vec![("MQTT_BROKER", mosquitto.addr()), ("KAFKA_BOOTSTRAP_SERVERS", kafka.bootstrap())];
    let gw = start_gateway(&route_config(topic).write(dir.path()), &env);
    let addr = gw.http_addr();
    wait_status(&addr, "/readyz", 200, WAIT, &gw);
    assert_eq!(status(&addr, "/healthz"), Some(200));

    // Kafka down: not ready within 10 s, and the body says why; still alive.
    kafka.kill();
    let took = wait_status(&addr, "/readyz", 503, Duration::from_secs(10), &gw);
    let body = get(&addr, "/readyz").unwrap().body;
    assert!(body.contains("kafka: no broker up"), "{body}");
    assert_eq!(status(&addr, "/healthz"), Some(200), "a Kafka outage is not a reason to restart the gateway");
    eprintln!("not ready {took:?} after Kafka went down");
    kafka.restart();
    wait_status(&addr, "/readyz", 200, Duration::from_secs(30), &gw);

    // Mosquitto down: the same.
    mosquitto.stop();
    let took = wait_status(&addr, "/readyz", 503, Duration::from_secs(10), &gw);
    let body = get(&addr, "/readyz").unwrap().body;
    assert!(body.contains("mqtt: not connected"), "{body}");
    assert_eq!(status(&addr, "/healthz"), Some(200), "an MQTT outage is not a reason to restart the gateway");
    eprintln!("not ready {took:?} after Mosquitto went down");
    mosquitto.start_again();
    wait_status(&addr, "/readyz", 200, Duration::from_secs(30), &gw);
    assert_eq!(status(&addr, "/healthz"), Some(200));
    let s = scrape(&addr);
    assert!(value(&s, "mqtt_kafka_gateway_mqtt_reconnects_total", &[]) >= 1.0);
    assert_eq!(value(&s, "mqtt_kafka_gateway_ready", &[]), 1.0);
}

#[test]
fn readyz_turns_503_at_once_when_shutdown_begins() {
    let mosquitto = Mosquitto::start();
    let kafka = Kafka::start_dedicated();
    let topic = "http_shutdown";
    kafka.create_topic(topic, 1);
    let dir = tempfile::tempdir().unwrap();
    let config = route_config(topic).extra("shutdown:\n  grace_period_secs: 20\n");
    let env = vec![("MQTT_BROKER", mosquitto.addr()), ("KAFKA_BOOTSTRAP_SERVERS", kafka.bootstrap())];
    let mut gw = start_gateway(&config.write(dir.path()), &env);
    let addr = gw.http_addr();
    wait_status(&addr, "/readyz", 200, WAIT, &gw);
    // Kafka gone with a message held: the shutdown has something to wait for.
    kafka.kill();
    mosquitto_pub(mosquitto.port(), "cmnd/dev-1/state", br#"{"held":true}"#, 1);
    let taken = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        value(&scrape(&addr), "mqtt_kafka_gateway_unacked_messages", &[]) == 1.0
    });
    assert!(taken, "the message was never taken:\n{}", gw.logs());
    gw.sigterm();
    assert!(gw.wait_for_log("shutdown requested", Duration::from_secs(5)), "{}", gw.logs());
    let a = get(&addr, "/readyz").expect("the server still answers while draining");
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(a.body.contains("\"shutting_down\":true"), "{}", a.body);
    assert!(gw.is_running(), "still draining: the answer came during shutdown, not after it");
    assert_eq!(status(&addr, "/healthz"), Some(200));
    kafka.restart();
    assert!(gw.wait_exit(Duration::from_secs(40)).is_some());
}

#[test]
fn a_taken_port_fails_the_start_with_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let path = route_config("http_taken").write(dir.path());
    let mut env: Vec<(&str, String)> = broker_env(&mosquitto);
    env.push(("GATEWAY_HTTP__LISTEN", addr.clone()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut gw = Gateway::start(&path, &env);
    let status = gw.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(!status.success());
    assert!(gw.logs().contains(&format!("cannot listen on {addr} (http.listen)")), "{}", gw.logs());
}

#[test]
fn reload_metrics_follow_the_routes_file() {
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let path = route_config("http_reload_a").write(dir.path());
    let gw = start_gateway(&path, &broker_env(&mosquitto));
    let addr = gw.http_addr();
    let s = scrape(&addr);
    assert_eq!(value(&s, "mqtt_kafka_gateway_config_generation", &[]), 1.0);
    assert_eq!(value(&s, "mqtt_kafka_gateway_config_file_valid", &[]), 1.0);
    let loaded_at = value(&s, "mqtt_kafka_gateway_config_last_reload_success_timestamp_seconds", &[]);
    assert!(loaded_at > 1.6e9, "{loaded_at}");

    std::fs::write(&path, "routes:\n  - name: broken\n    filter: 'cmnd/#'\n    topic: 'bad topic'\n").unwrap();
    let failed = wait_until(WAIT, Duration::from_millis(100), || {
        let s = scrape(&addr);
        value(&s, "mqtt_kafka_gateway_config_reloads_total", &[("result", "failure")]) == 1.0
            && value(&s, "mqtt_kafka_gateway_config_file_valid", &[]) == 0.0
    });
    assert!(failed, "an invalid edit is not counted:\n{}", gw.logs());
    assert_eq!(value(&scrape(&addr), "mqtt_kafka_gateway_config_generation", &[]), 1.0, "the old routes stay");

    std::fs::write(&path, route_config("http_reload_b").yaml()).unwrap();
    let applied = wait_until(WAIT, Duration::from_millis(100), || {
        let s = scrape(&addr);
        value(&s, "mqtt_kafka_gateway_config_generation", &[]) == 2.0
            && value(&s, "mqtt_kafka_gateway_config_file_valid", &[]) == 1.0
    });
    assert!(applied, "the fixed file was not applied:\n{}", gw.logs());
    let s = scrape(&addr);
    assert_eq!(value(&s, "mqtt_kafka_gateway_config_reloads_total", &[("result", "success")]), 1.0);
    // The route kept its name but changed its topic: a new series, the old one stays.
    assert!(s.iter().any(|x| x.name == "mqtt_kafka_gateway_records_delivered_total"
        && x.labels.get("topic").map(String::as_str) == Some("http_reload_b")));
    assert!(s.iter().any(|x| x.name == "mqtt_kafka_gateway_records_delivered_total"
        && x.labels.get("topic").map(String::as_str) == Some("http_reload_a")));
}

/// `probe` (the container's health check): 0 once /readyz is 200, 1 with the status while it is not,
/// 1 naming the reason when nothing answers; by default it asks the port of `http.listen`.
#[test]
fn probe_exits_0_only_on_a_2xx_answer_and_defaults_to_its_own_readyz() {
    let mosquitto = Mosquitto::start();
    let topic = new_topic("probe", 1);
    let port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = route_config(&topic)
        .broker(mosquitto.addr())
        .bootstrap_servers(kafka().bootstrap())
        .extra(&format!("http:\n  listen: '0.0.0.0:{port}'\n"))
        .write(dir.path());
    let probe = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-kafka-gateway"))
            .arg("--config")
            .arg(&cfg)
            .arg("probe")
            .args(args)
            .output()
            .unwrap();
        (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    let (code, text) = probe(&[]);
    assert_eq!(code, Some(1), "nothing listens yet: {text}");
    assert!(text.contains(&format!("http://127.0.0.1:{port}/readyz")) && text.contains("cannot connect"), "{text}");
    let gw = start_gateway(&cfg, &[("GATEWAY_HTTP__LISTEN", format!("0.0.0.0:{port}"))]);
    let addr = format!("127.0.0.1:{port}");
    wait_status(&addr, "/readyz", 200, WAIT, &gw);
    let (code, text) = probe(&[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(&format!("http://127.0.0.1:{port}/readyz: 200")), "{text}");
    let (code, text) = probe(&[&format!("http://{addr}/healthz"), "--timeout-ms", "500"]);
    assert_eq!((code, text.contains(": 200")), (Some(0), true), "{text}");
    let (code, text) = probe(&[&format!("http://{addr}/no-such-path")]);
    assert_eq!(code, Some(1), "a 404 is not healthy: {text}");
    assert!(text.contains(": 404"), "{text}");
}
