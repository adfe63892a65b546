//! The `check` preflight as a user runs it: the binary against a real Mosquitto and a real Kafka started
//! by the harness on free loopback ports, healthy and broken in one way at a time.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    broker_env, free_port, kafka, new_topic, start_gateway, unique_topic, wait_until, write_config, Config, Mosquitto,
    Route,
};

/// What one `check` run printed and how it ended.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    fn text(&self) -> String {
        format!(
            "exit {:?} after {:.1}s\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code,
            self.took.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }

    /// The item line whose side is `side` and whose text starts with `what`.
    fn line(&self, side: &str, what: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.len() > 12 && l[6..12].trim_end() == side && l[12..].starts_with(what))
            .unwrap_or_else(|| panic!("no `{side} {what}` line:\n{}", self.text()))
    }

    /// The status (OK, FAIL, SKIP) of that line.
    fn status(&self, side: &str, what: &str) -> &str {
        self.line(side, what)[..6].trim_end()
    }

    /// The item lines (not hints, not the summary).
    fn items(&self) -> Vec<&str> {
        self.stdout.lines().filter(|l| ["OK ", "FAIL ", "SKIP "].iter().any(|s| l.starts_with(s))).collect()
    }

    fn assert_status(&self, side: &str, what: &str, status: &str) {
        assert_eq!(self.status(side, what), status, "`{side} {what}`:\n{}", self.text());
    }
}

/// Runs `mqtt-kafka-gateway check --config <config> <args>` with only `env` for the broker settings,
/// killed if it has not finished within two minutes.
fn check(config: &Path, args: &[&str], env: &[(&str, String)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mqtt-kafka-gateway"));
    cmd.arg("check").arg("--config").arg(config).args(args);
    // The machine's own variables must not leak into what is checked.
    for (k, _) in std::env::vars() {
        if k.starts_with("GATEWAY_")
            || [
                "MQTT_BROKER",
                "KAFKA_BOOTSTRAP_SERVERS",
                "KAFKA_TOPIC",
                "MQTT_TOPIC_PATTERN",
                "MQTT_USERNAME",
                "MQTT_PASSWORD",
            ]
            .contains(&k.as_str())
        {
            cmd.env_remove(k);
        }
    }
    // The suite's protocol (scripts/test.sh runs it over MQTT 5 too), unless the test set one.
    if let Ok(protocol) = std::env::var("TEST_MQTT_PROTOCOL") {
        if !env.iter().any(|(k, _)| *k == "GATEWAY_MQTT__PROTOCOL") {
            cmd.env("GATEWAY_MQTT__PROTOCOL", protocol);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("run the gateway binary");
    let mut pipes = (child.stdout.take().expect("stdout"), child.stderr.take().expect("stderr"));
    let out = std::thread::spawn(move || {
        let (mut o, mut e) = (String::new(), String::new());
        let _ = pipes.0.read_to_string(&mut o);
        let _ = pipes.1.read_to_string(&mut e);
        (o, e)
    });
    let mut code = None;
    let finished = wait_until(Duration::from_secs(120), Duration::from_millis(20), || match child.try_wait() {
        Ok(Some(s)) => {
            code = s.code();
            true
        }
        _ => false,
    });
    if !finished {
        let _ = child.kill();
        let _ = child.wait();
    }
    let (stdout, stderr) = out.join().expect("output reader");
    let run = Run { code, stdout, stderr, took: started.elapsed() };
    assert!(finished, "check did not finish within 120s:\n{}", run.text());
    run
}

/// One route on `filter` to `topic`, without fallback filters.
fn route(name: &str, filter: &str, topic: &str) -> Route {
    Route::new(name, filter, topic).fallback_filters(&[])
}

fn config(dir: &Path, routes: &[Route]) -> std::path::PathBuf {
    Config::new().reload_watch(false).routes(routes.iter().cloned()).write(dir)
}

#[test]
fn check_passes_against_healthy_brokers_and_the_test_record_arrives() {
    let mosquitto = Mosquitto::start();
    let topic = new_topic("check-ok", 3);
    let template_prefix = unique_topic("check-tpl");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &[route("a", "cmnd/#", &topic), route("t", "tele/+/+", &format!("{template_prefix}.{{2}}"))],
    );
    let env = broker_env(&mosquitto);

    let run = check(&cfg, &["--timeout", "10"], &env);
    assert_eq!(run.code, Some(0), "{}", run.text());
    assert_eq!(run.line("mqtt", "reachable"), format!("OK    mqtt  reachable: {}", mosquitto.addr()));
    run.assert_status("mqtt", "authenticated", "OK");
    assert!(run.line("mqtt", "route \"a\" filter \"cmnd/#\"").ends_with("granted QoS 0"), "{}", run.text());
    run.assert_status("mqtt", "route \"t\" filter \"tele/+/+\"", "OK");
    run.assert_status("kafka", "reachable", "OK");
    run.assert_status("kafka", "authenticated", "OK");
    assert!(
        run.line("kafka", &format!("topic \"{topic}\" (route \"a\")")).ends_with("exists, 3 partitions"),
        "{}",
        run.text()
    );
    // Nobody created the dead-letter topic: the test broker auto-creates topics, and the check says so.
    let dlq = run.line("kafka", &format!("topic \"{topic}.dlq\" (dead letters of route \"a\")"));
    assert!(dlq.starts_with("OK") && dlq.contains("missing, will be auto-created"), "{}", run.text());
    // Asking did not create it.
    assert_eq!(
        kafka().wait_partitions(&format!("{topic}.dlq"), Duration::from_secs(1)),
        0,
        "the check created the dead-letter topic"
    );
    // The template is skipped, not failed; its dead-letter topic is checked.
    let tpl = run.line("kafka", &format!("topic \"{template_prefix}.{{2}}\" (route \"t\")"));
    assert!(tpl.starts_with("SKIP") && tpl.contains("template"), "{}", run.text());
    run.assert_status("kafka", &format!("topic \"{template_prefix}.dlq\" (dead letters of route \"t\")"), "OK");
    let items = run.items();
    assert_eq!(items.len(), 10, "{}", run.text());
    assert!(items.iter().all(|l| l.starts_with("OK ") || l == &tpl), "{}", run.text());
    assert!(run.stdout.ends_with("check passed: 9 OK, 1 skipped\n"), "{}", run.text());

    let run = check(&cfg, &["--timeout", "10", "--produce-test"], &env);
    assert_eq!(run.code, Some(0), "{}", run.text());
    let line = run.line("kafka", &format!("topic \"{topic}\" (route \"a\") test record"));
    let (partition, offset) = line
        .split_once("written to partition ")
        .and_then(|(_, rest)| rest.split_once(" at offset "))
        .map(|(p, o)| (p.parse::<i32>().expect("partition"), o.parse::<i64>().expect("offset")))
        .unwrap_or_else(|| panic!("no partition and offset in {line:?}:\n{}", run.text()));
    let records = kafka().consume(&topic, 1, Duration::from_secs(30));
    assert_eq!(records.len(), 1, "the test record did not arrive in {topic}");
    let r = &records[0];
    assert_eq!((r.partition, r.offset), (partition, offset), "{}", run.text());
    let marker = r.header_str("gateway_check").expect("the check header");
    assert!(marker.starts_with("mqtt-kafka-gateway-check-"), "{marker}");
    assert!(r.value_str().contains("--produce-test"), "{}", r.value_str());
    // The dead-letter topics got theirs too (and now exist).
    run.assert_status("kafka", &format!("topic \"{topic}.dlq\" (dead letters of route \"a\") test record"), "OK");
    assert_eq!(kafka().consume(&format!("{topic}.dlq"), 1, Duration::from_secs(30)).len(), 1);
}

#[test]
fn check_does_not_disturb_a_running_gateway_with_the_same_settings() {
    let mosquitto = Mosquitto::start();
    let topic = new_topic("check-live", 1);
    let dir = tempfile::tempdir().unwrap();
    // A persistent session under a fixed client id: the one a second client with the same id would take over.
    let cfg = Config::new()
        .client_id("live-gw")
        .clean_session(false)
        .reload_watch(false)
        .route(route("a", "cmnd/#", &topic))
        .write(dir.path());
    let env = broker_env(&mosquitto);
    let gateway = start_gateway(&cfg, &env);
    assert_eq!(gateway.count_in_log("connected to the MQTT broker"), 1, "{}", gateway.logs());

    let run = check(&cfg, &[], &env);
    assert_eq!(run.code, Some(0), "{}", run.text());
    let pid_id = "client id \"live-gw-check-";
    assert!(run.line("mqtt", "authenticated").contains(pid_id), "{}", run.text());
    // The broker saw the check come and go cleanly, and the gateway never lost its connection.
    assert!(
        wait_until(Duration::from_secs(5), Duration::from_millis(50), || mosquitto
            .log()
            .contains("Client live-gw-check-")
            && mosquitto.log().contains("disconnected.")),
        "{}",
        mosquitto.log()
    );
    // A lost connection would show within moments of the check's: the gateway must stay connected.
    assert!(
        common::holds_for(Duration::from_millis(500), Duration::from_millis(50), || gateway
            .count_in_log("connected to the MQTT broker")
            == 1
            && gateway.count_in_log("lost the connection") == 0),
        "{}",
        gateway.logs()
    );
}

#[test]
fn nothing_listening_on_the_mqtt_port_fails_mqtt_reachable_only() {
    let topic = new_topic("check-noport", 1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &[route("a", "cmnd/#", &topic)]);
    let port = free_port();
    let env = vec![("MQTT_BROKER", format!("127.0.0.1:{port}")), ("KAFKA_BOOTSTRAP_SERVERS", kafka().bootstrap())];

    let run = check(&cfg, &["--timeout", "5"], &env);
    assert_eq!(run.code, Some(1), "{}", run.text());
    let line = run.line("mqtt", "reachable");
    assert!(
        line.starts_with("FAIL") && line.contains(&format!("127.0.0.1:{port}: connection refused")),
        "{}",
        run.text()
    );
    assert!(run.stdout.contains("hint: check mqtt.broker (env MQTT_BROKER)"), "{}", run.text());
    // What depends on the connection is not checked, and not called failed.
    run.assert_status("mqtt", "authenticated", "SKIP");
    run.assert_status("mqtt", "route \"a\" filter \"cmnd/#\"", "SKIP");
    // Kafka is checked all the same.
    run.assert_status("kafka", "reachable", "OK");
    run.assert_status("kafka", &format!("topic \"{topic}\""), "OK");
    assert_eq!(run.stdout.matches("FAIL ").count(), 1, "{}", run.text());
}

#[test]
fn a_wrong_mqtt_password_fails_authenticated_and_is_never_printed() {
    let (user, right, wrong) = ("gw-user", "Right-pass-8c1e", "Wr0ng-pass-5f7d");
    let mosquitto = Mosquitto::start_with_password(user, right);
    let topic = new_topic("check-auth", 1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &[route("a", "cmnd/#", &topic)]);
    let env_with = |password: &str| {
        let mut env = broker_env(&mosquitto);
        env.push(("MQTT_USERNAME", user.to_string()));
        env.push(("MQTT_PASSWORD", password.to_string()));
        env
    };

    // The right password passes: the failure below is the password's, not the harness's.
    let run = check(&cfg, &[], &env_with(right));
    assert_eq!(run.code, Some(0), "{}", run.text());
    assert!(run.line("mqtt", "authenticated").contains("as user \"gw-user\""), "{}", run.text());

    let run = check(&cfg, &[], &env_with(wrong));
    assert_eq!(run.code, Some(1), "{}", run.text());
    run.assert_status("mqtt", "reachable", "OK");
    let line = run.line("mqtt", "authenticated");
    // Mosquitto answers a wrong password with "not authorized" (5); other brokers say "bad user name or password" (4).
    assert!(line.starts_with("FAIL") && (line.contains("CONNACK 5") || line.contains("CONNACK 4")), "{}", run.text());
    assert!(
        run.stdout.contains("MQTT_PASSWORD") && run.stdout.contains("mqtt.username"),
        "the hint names the settings:\n{}",
        run.text()
    );
    run.assert_status("mqtt", "route \"a\" filter \"cmnd/#\"", "SKIP");
    run.assert_status("kafka", "reachable", "OK");
    run.assert_status("kafka", &format!("topic \"{topic}\""), "OK");
    assert_eq!(run.stdout.matches("FAIL ").count(), 1, "{}", run.text());
    for secret in [wrong, right] {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "a password was printed:\n{}",
            run.text()
        );
    }
}

#[test]
fn a_filter_the_broker_refuses_fails_naming_route_and_filter() {
    let mosquitto = Mosquitto::start_rejecting_subscription("cmnd/#", "cmnd/+/+/+/+");
    let topic = new_topic("check-acl", 1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &[
            route("a", "cmnd/#", &topic),
            route("t", "tele/#", &topic),
            Route::new("c", "alarm/+/x", &topic).fallback_filters(&["alarm/+/y"]),
        ],
    );
    let run = check(&cfg, &[], &broker_env(&mosquitto));
    assert_eq!(run.code, Some(1), "{}", run.text());
    run.assert_status("mqtt", "reachable", "OK");
    run.assert_status("mqtt", "authenticated", "OK");
    let line = run.line("mqtt", "route \"a\" filter \"cmnd/#\"");
    let refusal = match std::env::var("TEST_MQTT_PROTOCOL").as_deref() {
        Ok("5") => "SUBACK: not authorized",
        _ => "SUBACK 0x80",
    };
    assert_eq!(
        line,
        format!("FAIL  mqtt  route \"a\" filter \"cmnd/#\": refused by the broker ({refusal})"),
        "{}",
        run.text()
    );
    assert!(
        run.stdout.contains("hint: the broker's ACL must let anonymous clients subscribe to \"cmnd/#\""),
        "{}",
        run.text()
    );
    run.assert_status("mqtt", "route \"t\" filter \"tele/#\"", "OK");
    run.assert_status("mqtt", "route \"c\" filter \"alarm/+/x\"", "OK");
    run.assert_status("kafka", "reachable", "OK");
    run.assert_status("kafka", &format!("topic \"{topic}\""), "OK");
    assert_eq!(run.stdout.matches("FAIL ").count(), 1, "{}", run.text());
}

#[test]
fn a_refused_filter_says_what_its_fallback_filters_would_get() {
    let mosquitto = Mosquitto::start_rejecting_subscription("cmnd/#", "cmnd/+/+/+/+");
    let topic = new_topic("check-fallback", 1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &[Route::new("a", "cmnd/#", &topic).fallback_filters(&["cmnd/+/+/+/+"])]);
    let run = check(&cfg, &[], &broker_env(&mosquitto));
    assert_eq!(run.code, Some(1), "{}", run.text());
    run.assert_status("mqtt", "route \"a\" filter \"cmnd/#\"", "FAIL");
    assert!(
        run.stdout.contains("the gateway would subscribe the fallback filters instead: \"cmnd/+/+/+/+\" granted QoS 0"),
        "{}",
        run.text()
    );
}

#[test]
fn an_unreachable_kafka_fails_kafka_reachable_within_the_timeout() {
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let topic = unique_topic("check-nokafka");
    let cfg = config(dir.path(), &[route("a", "cmnd/#", &topic)]);
    let port = free_port();
    let env = vec![("MQTT_BROKER", mosquitto.addr()), ("KAFKA_BOOTSTRAP_SERVERS", format!("127.0.0.1:{port}"))];

    let run = check(&cfg, &["--timeout", "3"], &env);
    assert_eq!(run.code, Some(1), "{}", run.text());
    let line = run.line("kafka", "reachable");
    assert!(
        line.starts_with("FAIL") && line.contains(&format!("127.0.0.1:{port}")) && line.contains("Connection refused"),
        "{}",
        run.text()
    );
    assert!(run.stdout.contains("hint: check kafka.bootstrap_servers (env KAFKA_BOOTSTRAP_SERVERS)"), "{}", run.text());
    run.assert_status("kafka", "authenticated", "SKIP");
    run.assert_status("kafka", &format!("topic \"{topic}\""), "SKIP");
    run.assert_status("kafka", &format!("topic \"{topic}.dlq\""), "SKIP");
    // MQTT is checked all the same.
    run.assert_status("mqtt", "reachable", "OK");
    run.assert_status("mqtt", "authenticated", "OK");
    run.assert_status("mqtt", "route \"a\" filter \"cmnd/#\"", "OK");
    assert_eq!(run.stdout.matches("FAIL ").count(), 1, "{}", run.text());
    // Bounded by the timeout: one metadata request of 3 s, plus the start-up.
    assert!(run.took < Duration::from_secs(20), "took {:?}", run.took);
}

#[test]
fn an_invalid_config_exits_2_and_says_why_like_validate() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "routes:\n  - name: a\n    filter: 'cmnd/#/x'\n    topic: raw\n");
    let run = check(&cfg, &[], &[]);
    assert_eq!(run.code, Some(2), "{}", run.text());
    assert!(run.stderr.contains("routes.yaml:3:5: routes[0].filter: invalid MQTT filter"), "{}", run.text());
    assert!(run.stdout.is_empty(), "{}", run.text());
}

#[test]
fn a_retained_message_over_the_packet_limit_does_not_fail_its_filter() {
    let mosquitto = Mosquitto::start();
    let topic = new_topic("check-retained", 1);
    let dir = tempfile::tempdir().unwrap();
    // 2 MiB retained, over the default mqtt.max_packet_size_bytes (1 MiB): it arrives with the subscription.
    common::mosquitto_pub_with(mosquitto.port(), "big/1", &vec![b'x'; 2 << 20], 0, &["-r"]);
    let cfg = config(dir.path(), &[route("a", "big/#", &topic), route("b", "small/#", &topic)]);
    let run = check(&cfg, &[], &broker_env(&mosquitto));
    assert_eq!(run.code, Some(0), "{}", run.text());
    run.assert_status("mqtt", "route \"a\" filter \"big/#\"", "OK");
    run.assert_status("mqtt", "route \"b\" filter \"small/#\"", "OK");
}

#[test]
fn a_port_that_never_answers_connect_fails_mqtt_reachable_within_the_timeout() {
    // Accepts TCP connections (the kernel's backlog) and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr");
    let topic = new_topic("check-silent", 1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &[route("a", "cmnd/#", &topic)]);
    let env = vec![("MQTT_BROKER", addr.to_string()), ("KAFKA_BOOTSTRAP_SERVERS", kafka().bootstrap())];

    let run = check(&cfg, &["--timeout", "2"], &env);
    assert_eq!(run.code, Some(1), "{}", run.text());
    let line = run.line("mqtt", "reachable");
    assert!(line.starts_with("FAIL") && line.contains("no CONNACK within 2s"), "{}", run.text());
    run.assert_status("mqtt", "authenticated", "SKIP");
    run.assert_status("kafka", "reachable", "OK");
    assert!(run.took < Duration::from_secs(20), "took {:?}", run.took);
    drop(silent);
}

/// Downlinks: each topic read must exist; the group's committed offsets are read (none before the
/// first run, some after, and nothing joins the group); the dead-letter topic as for routes.
#[test]
fn check_reports_each_downlinks_topics_and_group() {
    let mosquitto = Mosquitto::start();
    let topic = new_topic("check-dl", 2);
    let missing = unique_topic("check-dl-missing");
    let group = unique_topic("check-dl-group");
    let dir = tempfile::tempdir().unwrap();
    let downlinks = format!(
        "downlinks:\n  - {{name: commands, kafka_topic: {topic}, group_id: {group}, mqtt_topic: 'cmnd/{{key}}/set'}}\n  - {{name: nowhere, kafka_topic: {missing}, mqtt_topic: 'x/{{key}}'}}\n"
    );
    let cfg = Config::new()
        .reload_watch(false)
        .route(route("a", "tele/#", &new_topic("check-up", 1)))
        .extra(&downlinks)
        .write(dir.path());
    let env = broker_env(&mosquitto);
    let run = check(&cfg, &["--timeout", "10"], &env);
    assert_eq!(run.code, Some(1), "{}", run.text());
    assert!(
        run.line("kafka", &format!("topic \"{topic}\" (read by downlink \"commands\")"))
            .ends_with("exists, 2 partitions"),
        "{}",
        run.text()
    );
    let g = run.line("kafka", &format!("group \"{group}\" (downlink \"commands\")"));
    assert!(
        g.starts_with("OK") && g.contains("no committed offsets yet: the first start reads from the beginning"),
        "{}",
        run.text()
    );
    run.assert_status("kafka", &format!("topic \"{topic}.dlq\" (dead letters of downlink \"commands\")"), "OK");
    let m = run.line("kafka", &format!("topic \"{missing}\" (read by downlink \"nowhere\")"));
    assert!(m.starts_with("FAIL") && m.contains("reads nothing until it exists"), "{}", run.text());
    run.assert_status("kafka", "group \"mqtt-kafka-gateway-downlink-nowhere\" (downlink \"nowhere\")", "SKIP");

    // After the gateway committed offsets there, the check says so.
    let producer: rdkafka::producer::BaseProducer = kafka().client_config().create().unwrap();
    use rdkafka::producer::Producer as _;
    producer.send(rdkafka::producer::BaseRecord::to(&topic).key("dev-1").payload("{}")).map_err(|(e, _)| e).unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();
    let only = Config::new()
        .reload_watch(false)
        .route(route("a", "tele/#", &new_topic("check-up", 1)))
        .extra(&format!("downlinks:\n  - {{name: commands, kafka_topic: {topic}, group_id: {group}, mqtt_topic: 'cmnd/{{key}}/set'}}\n"))
        .write(dir.path());
    let mut gw = start_gateway(&only, &env);
    let committed = wait_until(Duration::from_secs(60), Duration::from_millis(500), || {
        check(&only, &["--timeout", "10"], &env)
            .line("kafka", &format!("group \"{group}\" (downlink \"commands\")"))
            .contains("offsets committed on 1 of 2 partitions")
    });
    gw.sigterm();
    assert!(committed, "{}", gw.logs());
}
