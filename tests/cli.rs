//! The `validate` and `explain` commands, and `run` refusing what it cannot use: no broker involved, the
//! binary as a user runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn gateway(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mqtt-kafka-gateway"))
        .args(args)
        .current_dir(dir)
        // The test machine's own variables must not leak into what is checked.
        .env_remove("MQTT_BROKER")
        .env_remove("KAFKA_TOPIC")
        .env_remove("MQTT_TOPIC_PATTERN")
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env_remove("GATEWAY_CONFIG")
        .output()
        .expect("run the gateway binary")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn write(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("routes.yaml");
    std::fs::write(&p, body).unwrap();
    p
}

const HEAD: &str = "routes:\n  - name: a\n    filter: 'cmnd/#'\n    topic: raw\n";

#[test]
fn validate_accepts_the_shipped_file_and_the_examples() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["config/routes.yaml", "examples/routes.yaml"] {
        let o = gateway(&["validate", file], root);
        assert!(o.status.success(), "{file}: {}", text(&o));
        assert!(text(&o).contains(": OK,"), "{}", text(&o));
    }
}

#[test]
fn validate_names_file_line_and_key_for_each_error_class() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, String, &[&str])] = &[
        (
            "YAML syntax",
            "routes:\n  - name: a\n    filter: [cmnd\n".into(),
            &["routes.yaml:", "YAML syntax error", "line 3"],
        ),
        ("unknown key", format!("{HEAD}    qos_level: 1\n"), &["routes.yaml:5:5: routes[0].qos_level: unknown field"]),
        ("unknown section", format!("{HEAD}kafak: {{}}\n"), &["routes.yaml:5:1: kafak: unknown key"]),
        (
            "wrong type",
            format!("mqtt:\n  keep_alive_secs: soon\n{HEAD}"),
            &["routes.yaml:2:3: mqtt.keep_alive_secs: invalid type"],
        ),
        (
            "missing key",
            "routes:\n  - name: a\n    filter: 'cmnd/#'\n".into(),
            &["routes.yaml:2:5: routes[0]: missing field `topic`"],
        ),
        (
            "bad regex",
            format!("{HEAD}    device_id:\n      regex: '(?P<device_id>x'\n"),
            &["routes.yaml:6:7: routes[0].device_id.regex: invalid regex"],
        ),
        (
            "regex without group",
            format!("{HEAD}    device_id:\n      regex: 'f2-.*'\n"),
            &["routes.yaml:6:7: routes[0].device_id.regex", "no named group `device_id`"],
        ),
        ("bad JSONPath", format!("{HEAD}    key: '$[?'\n"), &["routes.yaml:5:5: routes[0].key: invalid JSONPath"]),
        (
            "bad filter",
            "routes:\n  - name: a\n    filter: 'cmnd/#/x'\n    topic: raw\n".into(),
            &["routes.yaml:3:5: routes[0].filter: invalid MQTT filter"],
        ),
        (
            "bad template",
            "routes:\n  - name: a\n    filter: 'cmnd/#'\n    topic: 'iot.{kind'\n".into(),
            &["routes.yaml:4:5: routes[0].topic: unclosed"],
        ),
        (
            "unknown template group",
            "routes:\n  - name: a\n    filter: 'cmnd/#'\n    topic: 'iot.{kind}'\n".into(),
            &["routes.yaml:4:5: routes[0].topic: placeholder `{kind}`"],
        ),
        ("bad QoS", format!("{HEAD}    qos: 3\n"), &["routes.yaml:5:5: routes[0].qos: 3 is not an MQTT QoS"]),
        (
            "duplicate name",
            format!("{HEAD}  - name: a\n    filter: 'x/#'\n    topic: raw2\n"),
            &["routes.yaml:5:5: routes[1].name", "already the name"],
        ),
    ];
    for (class, body, expect) in cases {
        write(dir.path(), body);
        let o = gateway(&["validate", "routes.yaml"], dir.path());
        assert_eq!(o.status.code(), Some(2), "{class}: {}", text(&o));
        for e in *expect {
            assert!(text(&o).contains(e), "{class}: expected {e:?} in:\n{}", text(&o));
        }
    }
    let o = gateway(&["validate", "nowhere.yaml"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("nowhere.yaml") && text(&o).contains("cannot read"), "{}", text(&o));
}

#[test]
fn gateway_config_names_the_file_when_config_does_not() {
    // What the container image does: GATEWAY_CONFIG=/etc/mqtt-kafka-gateway/routes.yaml, and
    // `validate`, `probe`, `run` find the mounted file from any working directory.
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let file = write(dir.path(), &format!("{HEAD}  - name: b\n    filter: 'x/#'\n    topic: raw2\n"));
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mqtt-kafka-gateway"))
            .args(args)
            .current_dir(elsewhere.path())
            .env("GATEWAY_CONFIG", &file)
            .env_remove("MQTT_BROKER")
            .env_remove("KAFKA_TOPIC")
            .env_remove("MQTT_TOPIC_PATTERN")
            .env_remove("KAFKA_BOOTSTRAP_SERVERS")
            .output()
            .unwrap()
    };
    let o = run(&["validate"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("OK, 2 routes"), "the named file, not ./routes.yaml: {}", text(&o));
    // --config wins.
    let o = run(&["--config", "nowhere.yaml", "validate"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("nowhere.yaml"), "{}", text(&o));
}

#[test]
fn validate_reports_every_problem_at_once() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "routes:\n  - name: a\n    filter: 'cmnd/#/x'\n    topic: 'bad topic'\n    key: '$[?'\n");
    let o = gateway(&["validate"], dir.path());
    let t = text(&o);
    assert!(t.contains("3 problems found"), "{t}");
    for key in ["routes[0].filter", "routes[0].topic", "routes[0].key"] {
        assert!(t.contains(key), "{key} in {t}");
    }
}

#[test]
fn explain_shows_the_exact_record() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let topic = "cmnd/f2-e4fd45f654be/access-control-mode/J1/door-sensors";
    let payload = r#"{"timestamp": "2023-05-26 18:34:04.928538", "door-sensor-1": false}"#;
    let o = gateway(&["--config", "config/routes.yaml", "explain", "--topic", topic, "--payload", payload], root);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("matches 1 of 1 route"), "{t}");
    assert!(t.contains("kafka topic  raw_iot_data"), "{t}");
    assert!(t.contains("key          f2-e4fd45f654be"), "{t}");
    assert!(t.contains(&format!("mqtt_topic={topic}")), "{t}");
    assert!(
        t.contains(&format!(
            r#""original_topic":"{topic}","device_id":"f2-e4fd45f654be","payload":{payload},"timestamp":"#
        )),
        "{t}"
    );
}

#[test]
fn explain_says_why_a_message_is_dead_lettered_or_unrouted() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = gateway(
        &["--config", "config/routes.yaml", "explain", "--topic", "cmnd/plc-7/x", "--payload", "not json"],
        root,
    );
    let t = text(&o);
    assert!(t.contains("DEAD LETTER: payload is not valid JSON"), "{t}");
    assert!(t.contains("kafka topic  raw_iot_data.dlq"), "{t}");
    assert!(t.contains("key          plc-7"), "{t}");

    let o = gateway(&["--config", "config/routes.yaml", "explain", "--topic", "tele/x", "--payload", "{}"], root);
    assert!(text(&o).contains("matches 0 of 1 route; the message would be counted as unrouted"), "{}", text(&o));

    let o = gateway(
        &[
            "explain",
            "--config",
            "examples/routes.yaml",
            "--topic",
            "cmnd/f2-e4fd45f654be/access-control-mode/J1/door-sensors",
            "--payload",
            "{}",
        ],
        root,
    );
    let t = text(&o);
    assert!(t.contains("kafka topic  iot.door-sensors"), "the example's templated route: {t}");
}

#[test]
fn explain_refuses_an_invalid_config_naming_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "routes:\n  - name: a\n    filter: 'cmnd/#'\n    topic: raw\n    key: '$[?'\n");
    let o = gateway(&["explain", "--topic", "cmnd/x", "--payload", "{}"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("routes.yaml:5:5: routes[0].key: invalid JSONPath"), "{}", text(&o));
}

/// A spool directory the gateway cannot use stops `run` before anything connects, as a configuration
/// error (exit 2) naming the path and the cause: under a regular file, and locked by another gateway.
#[test]
fn run_refuses_a_spool_directory_it_cannot_use_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    // No broker answers on port 1: nothing here may depend on one.
    let config = |spool: &Path| {
        format!(
            "mqtt:\n  broker: 127.0.0.1:1\nkafka:\n  bootstrap_servers: 127.0.0.1:1\nhttp:\n  listen: 127.0.0.1:0\n\
             spool:\n  dir: {}\n{HEAD}",
            spool.display()
        )
    };
    let under_a_file = file.join("spool");
    write(dir.path(), &config(&under_a_file));
    let o = gateway(&["run"], dir.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains(&under_a_file.display().to_string()), "{}", text(&o));
    assert!(text(&o).contains("is not a directory"), "{}", text(&o));
    assert!(!text(&o).contains("connecting to the MQTT broker"), "checked before connecting: {}", text(&o));

    // Locked: a first gateway holds the directory, a second one is refused.
    let spool = dir.path().join("spool");
    write(dir.path(), &config(&spool));
    let mut first = Command::new(env!("CARGO_BIN_EXE_mqtt-kafka-gateway"))
        .args(["run"])
        .current_dir(dir.path())
        .env_remove("MQTT_BROKER")
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env_remove("GATEWAY_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let locked = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        spool.join("lock").exists()
    });
    let o = gateway(&["run"], dir.path());
    let _ = first.kill();
    let _ = first.wait();
    assert!(locked, "the first gateway opened the spool");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("another process is already using this spool directory"), "{}", text(&o));
    assert!(text(&o).contains(&spool.display().to_string()), "{}", text(&o));
}

/// `validate` lists the downlinks; `explain --kafka-topic` shows what a record becomes on MQTT (topic,
/// QoS, retain, MQTT 5 properties) or why it is dead-lettered.
#[test]
fn validate_and_explain_show_downlinks() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "mqtt: {protocol: 5}\nroutes:\n  - {name: up, filter: 'tele/#', topic: telemetry}\ndownlinks:\n  - name: commands\n    kafka_topic: device-commands\n    mqtt_topic: 'cmnd/{key}/set'\n    qos: '{header.qos}'\n    retain: true\n",
    );
    let o = gateway(&["validate", "routes.yaml"], dir.path());
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("and 1 downlink (Kafka -> MQTT)"), "{t}");
    assert!(t.contains("commands: device-commands -> cmnd/{key}/set (QoS {header.qos}, retain true, group mqtt-kafka-gateway-downlink-commands, dead letters to device-commands.dlq)"), "{t}");
    let explain = |extra: &[&str]| {
        let mut args = vec!["explain", "--kafka-topic", "device-commands", "--payload", r#"{"mode":"locked"}"#];
        args.extend_from_slice(extra);
        let o = gateway(&args, dir.path());
        assert!(o.status.success(), "{}", text(&o));
        text(&o)
    };
    let t = explain(&[
        "--key",
        "f2-e4fd45f654be",
        "--header",
        "qos=2",
        "--header",
        "mqtt_content_type=application/json",
        "--header",
        "trace=abc",
    ]);
    assert!(t.contains("is read by 1 of 1 downlink"), "{t}");
    assert!(t.contains("downlink commands: publish to MQTT topic cmnd/f2-e4fd45f654be/set"), "{t}");
    assert!(t.contains("QoS 2, retain true, 17 bytes"), "{t}");
    assert!(t.contains("content type: application/json") && t.contains("user property trace: abc"), "{t}");
    let t = explain(&["--key", "f2-1/other", "--header", "qos=1"]);
    assert!(t.contains("cannot be published: invalid_topic: {key} is `f2-1/other`"), "{t}");
    assert!(t.contains("dead-lettered to device-commands.dlq"), "{t}");
    let t = explain(&["--key", "f2-1"]);
    assert!(t.contains("cannot be published: missing_value: qos {header.qos}"), "{t}");
    let t = gateway(&["explain", "--kafka-topic", "elsewhere"], dir.path());
    assert!(text(&t).contains("is read by 0 of 1 downlink"), "{}", text(&t));
}
