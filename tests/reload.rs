//! Hot reload against real Mosquitto and Kafka: every way a file gets replaced in practice, bad edits,
//! and a switch between route sets under load.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    broker_env, free_ports, holds_for, http, json, kafka, mosquitto_pub, new_topic, start_gateway, write_config,
    Gateway, Mosquitto, WAIT,
};

/// The issue's bound for an edit to take effect.
const APPLY_WITHIN: Duration = Duration::from_secs(3);

/// A routes file with `(name, filter, topic)` routes and the statistics line off.
fn routes_yaml(routes: &[(&str, &str, &str)]) -> String {
    let mut y = String::from("log:\n  stats_interval_secs: 0\nroutes:\n");
    for (name, filter, topic) in routes {
        y.push_str(&format!("  - name: {name}\n    filter: '{filter}'\n    topic: {topic}\n"));
    }
    y
}

/// Saves like vim, `sed -i` and most editors: write a temporary file beside it, rename it over.
fn save_by_rename(path: &Path, body: &str) {
    let tmp = path.with_file_name(".routes.yaml.swp");
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn reloads(gw: &Gateway) -> usize {
    gw.count_in_log("routes reloaded")
}

/// Waits until the gateway logged `n` reloads, and says how long it took from `since`.
fn wait_reloads(gw: &Gateway, n: usize, since: Instant) -> Duration {
    assert!(
        common::wait_until(WAIT, Duration::from_millis(20), || reloads(gw) >= n),
        "reload {n} never happened:\n{}",
        gw.logs()
    );
    since.elapsed()
}

/// Asserts a message on `mqtt_topic` reaches `kafka_topic` (whose previous record count was `before`).
fn assert_flows(mosquitto: &Mosquitto, mqtt_topic: &str, kafka_topic: &str, before: usize, gw: &Gateway) {
    mosquitto_pub(mosquitto.port(), mqtt_topic, br#"{"probe":true}"#, 0);
    let got = kafka().consume(kafka_topic, before + 1, WAIT);
    assert_eq!(got.len(), before + 1, "{mqtt_topic} did not reach {kafka_topic}:\n{}", gw.logs());
}

struct Setup {
    mosquitto: Mosquitto,
    _dir: tempfile::TempDir,
    path: PathBuf,
    ta: String,
    tb: String,
}

/// A gateway with one route `a/#` → ta; `tb` is ready for a route `b/#` added later.
fn setup() -> (Setup, Gateway) {
    let mosquitto = Mosquitto::start();
    let (ta, tb) = (new_topic("reload_a", 1), new_topic("reload_b", 1));
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &routes_yaml(&[("a", "a/#", &ta)]));
    let gw = start_gateway(&path, &broker_env(&mosquitto));
    assert_flows(&mosquitto, "a/1", &ta, 0, &gw);
    (Setup { mosquitto, _dir: dir, path, ta, tb }, gw)
}

fn with_b(s: &Setup) -> String {
    routes_yaml(&[("a", "a/#", &s.ta), ("b", "b/#", &s.tb)])
}

/// Makes `edit` (which adds route `b`) and checks it applies within the bound and `b` then flows.
fn assert_edit_applies(s: &Setup, gw: &Gateway, edit: impl FnOnce()) {
    let t0 = Instant::now();
    edit();
    let took = wait_reloads(gw, 1, t0);
    eprintln!("reload applied {took:?} after the edit");
    assert!(took <= APPLY_WITHIN, "took {took:?}");
    assert_flows(&s.mosquitto, "b/1", &s.tb, 0, gw);
}

#[test]
fn a_route_added_by_a_rename_save_applies_and_removing_it_unsubscribes() {
    let (s, gw) = setup();
    let t0 = Instant::now();
    save_by_rename(&s.path, &with_b(&s));
    let took = wait_reloads(&gw, 1, t0);
    eprintln!("reload applied {took:?} after the edit");
    assert!(took <= APPLY_WITHIN, "took {took:?}");
    assert!(gw.logs().contains("added=[\"b\"]"), "{}", gw.logs());
    assert_flows(&s.mosquitto, "b/1", &s.tb, 0, &gw);

    save_by_rename(&s.path, &routes_yaml(&[("a", "a/#", &s.ta)]));
    wait_reloads(&gw, 2, Instant::now());
    assert!(gw.wait_for_log("unsubscribed", WAIT), "{}", gw.logs());
    assert!(gw.logs().contains("removed=[\"b\"]"));
    mosquitto_pub(s.mosquitto.port(), "b/2", b"{}", 0);
    // `a` still flows, and only then is it safe to say `b/2` is not coming.
    assert_flows(&s.mosquitto, "a/2", &s.ta, 1, &gw);
    assert_eq!(
        kafka().consume_for(&s.tb, Duration::from_secs(2)).len(),
        1,
        "b/2 must not arrive after its route is removed"
    );
    assert!(!gw.logs().contains("matches no route"), "unsubscribed before the broker sent more: {}", gw.logs());
}

#[test]
fn a_configmap_style_symlink_swap_applies() {
    let mosquitto = Mosquitto::start();
    let (ta, tb) = (new_topic("cm_a", 1), new_topic("cm_b", 1));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // What the kubelet builds: routes.yaml -> ..data/routes.yaml, ..data -> ..<timestamp>.
    std::fs::create_dir(d.join("..2026_11_23_1")).unwrap();
    std::fs::write(d.join("..2026_11_23_1/routes.yaml"), routes_yaml(&[("a", "a/#", &ta)])).unwrap();
    std::os::unix::fs::symlink("..2026_11_23_1", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/routes.yaml", d.join("routes.yaml")).unwrap();
    let gw = start_gateway(&d.join("routes.yaml"), &broker_env(&mosquitto));

    // An update: a new timestamped dir, a new ..data_tmp link renamed over ..data, the old dir removed.
    let t0 = Instant::now();
    std::fs::create_dir(d.join("..2026_11_23_2")).unwrap();
    std::fs::write(d.join("..2026_11_23_2/routes.yaml"), routes_yaml(&[("a", "a/#", &ta), ("b", "b/#", &tb)])).unwrap();
    std::os::unix::fs::symlink("..2026_11_23_2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    std::fs::remove_dir_all(d.join("..2026_11_23_1")).unwrap();
    let took = wait_reloads(&gw, 1, t0);
    eprintln!("reload applied {took:?} after the edit");
    assert!(took <= APPLY_WITHIN, "took {took:?}");
    assert_flows(&mosquitto, "b/1", &tb, 0, &gw);
}

#[test]
fn an_in_place_overwrite_applies() {
    let (s, gw) = setup();
    assert_edit_applies(&s, &gw, || std::fs::write(&s.path, with_b(&s)).unwrap());
}

#[test]
fn delete_then_recreate_applies() {
    let (s, gw) = setup();
    std::fs::remove_file(&s.path).unwrap();
    assert!(gw.wait_for_log("the configuration file is gone", WAIT), "{}", gw.logs());
    assert_flows(&s.mosquitto, "a/2", &s.ta, 1, &gw);
    assert_edit_applies(&s, &gw, || std::fs::write(&s.path, with_b(&s)).unwrap());
}

#[test]
fn a_burst_of_writes_is_applied_once_and_whole() {
    let (s, gw) = setup();
    // Written in pieces; the first piece alone is a valid file with a different route set (`b` only),
    // which must never be applied.
    let whole = routes_yaml(&[("b", "b/#", &s.tb), ("a", "a/#", &s.ta)]);
    let cut = whole.find("  - name: a").unwrap();
    let mut f = std::fs::File::create(&s.path).unwrap();
    use std::io::Write;
    for piece in [&whole[..cut / 2], &whole[cut / 2..cut], &whole[cut..]] {
        f.write_all(piece.as_bytes()).unwrap();
        f.flush().unwrap();
        // Pacing, not waiting for an outcome: gaps between the pieces, as a slow writer leaves them.
        std::thread::sleep(Duration::from_millis(40));
    }
    drop(f);
    wait_reloads(&gw, 1, Instant::now());
    // Exactly one: the point of the test is that no second (wrong) reload follows, which only a quiet
    // period can show.
    assert!(holds_for(Duration::from_secs(1), Duration::from_millis(20), || reloads(&gw) == 1), "{}", gw.logs());
    let line = gw.logs().lines().find(|l| l.contains("routes reloaded")).unwrap().to_string();
    assert!(line.contains("added=[\"b\"]") && line.contains("removed=[]"), "{line}");
    assert_flows(&s.mosquitto, "a/2", &s.ta, 1, &gw);
}

#[test]
fn each_kind_of_bad_edit_keeps_the_old_routes_and_is_reported() {
    let (s, gw) = setup();
    let good = with_b(&s);
    let ta = s.ta.clone();
    let bad: Vec<(&str, String, &str)> = vec![
        ("YAML syntax", format!("routes:\n  - name: a\n    filter: [a/#\n    topic: {ta}\n"), "routes.yaml:"),
        ("unknown key", format!("routes:\n  - name: a\n    filter: a/#\n    topic: {ta}\n    qos_level: 1\n"), "routes.yaml:5:5: routes[0].qos_level"),
        ("bad regex", format!("routes:\n  - name: a\n    filter: a/#\n    topic: {ta}\n    device_id:\n      regex: '(?P<device_id>'\n"), "routes.yaml:6:7: routes[0].device_id.regex"),
        ("bad JSONPath", format!("routes:\n  - name: a\n    filter: a/#\n    topic: {ta}\n    key: '$[?'\n"), "routes.yaml:5:5: routes[0].key"),
        ("bad filter", format!("routes:\n  - name: a\n    filter: a/#/x\n    topic: {ta}\n"), "routes.yaml:3:5: routes[0].filter"),
        ("bad template", "routes:\n  - name: a\n    filter: a/#\n    topic: 'iot.{kind'\n".to_string(), "routes.yaml:4:5: routes[0].topic"),
    ];
    for (n, (kind, body, location)) in bad.iter().enumerate() {
        save_by_rename(&s.path, body);
        let failures = n + 1;
        assert!(
            common::wait_until(WAIT, Duration::from_millis(20), || gw.count_in_log("the new configuration is invalid")
                >= failures),
            "{kind}: not reported:\n{}",
            gw.logs()
        );
        let logs = gw.logs();
        let report = &logs[logs.rfind("the new configuration is invalid").unwrap()..];
        assert!(report.contains(location), "{kind}: the report must name {location}:\n{report}");
        assert!(logs.contains(&format!("reload_failures={failures}")), "{kind}: failures are counted:\n{logs}");
        assert_eq!(reloads(&gw), 0, "{kind}: nothing applied");
        // In `ta` so far: the setup's probe and one per bad edit before this one.
        let flowed = 1 + n;
        assert_flows(&s.mosquitto, "a/x", &s.ta, flowed, &gw);
    }
    save_by_rename(&s.path, &good);
    wait_reloads(&gw, 1, Instant::now());
    assert_flows(&s.mosquitto, "b/1", &s.tb, 0, &gw);
}

#[test]
fn settings_that_need_a_restart_are_named_and_routes_and_kafka_settings_still_apply() {
    let (s, gw) = setup();
    let body = format!(
        "mqtt:\n  keep_alive_secs: 30\nkafka:\n  linger_ms: 50\nreplicas:\n  count: 2\n  index: 0\n{}",
        with_b(&s)
    );
    save_by_rename(&s.path, &body);
    wait_reloads(&gw, 1, Instant::now());
    let logs = gw.logs();
    let warning = logs.lines().find(|l| l.contains("only apply after a restart")).expect("a restart warning");
    assert!(warning.contains("replicas"), "{warning}");
    // The MQTT connection's keys and Kafka's settings apply live: a reconnect, a new producer.
    assert!(!warning.contains("keep_alive") && !warning.contains("linger"), "{warning}");
    assert!(gw.wait_for_log("MQTT settings applied", WAIT), "{}", gw.logs());
    assert!(gw.wait_for_log("Kafka producer switched", WAIT), "{}", gw.logs());
    assert_flows(&s.mosquitto, "b/1", &s.tb, 0, &gw);
    // Said once: another edit while replicas still differ applies without saying it again.
    let only_a = routes_yaml(&[("a", "a/#", &s.ta)]);
    save_by_rename(
        &s.path,
        &format!("mqtt:\n  keep_alive_secs: 30\nkafka:\n  linger_ms: 50\nreplicas:\n  count: 2\n  index: 0\n{only_a}"),
    );
    wait_reloads(&gw, 2, Instant::now());
    assert_eq!(gw.count_in_log("only apply after a restart"), 1, "{}", gw.logs());
}

#[test]
fn sighup_reloads_when_watching_is_off() {
    let mosquitto = Mosquitto::start();
    let (ta, tb) = (new_topic("hup_a", 1), new_topic("hup_b", 1));
    let dir = tempfile::tempdir().unwrap();
    let head = "reload:\n  watch: false\n  poll_interval_secs: 0\n";
    let path = write_config(dir.path(), &format!("{head}{}", routes_yaml(&[("a", "a/#", &ta)])));
    let gw = start_gateway(&path, &broker_env(&mosquitto));
    std::fs::write(&path, format!("{head}{}", routes_yaml(&[("a", "a/#", &ta), ("b", "b/#", &tb)]))).unwrap();
    // The point is that nothing happens without the signal, which only a quiet period can show.
    let quiet = holds_for(Duration::from_secs(1), Duration::from_millis(20), || reloads(&gw) == 0);
    assert!(quiet, "no watcher, no poll: nothing yet");
    assert!(common::send_signal(gw.pid(), "HUP"));
    wait_reloads(&gw, 1, Instant::now());
    assert!(gw.logs().contains("trigger=Signal"), "{}", gw.logs());
    assert_flows(&mosquitto, "b/1", &tb, 0, &gw);
}

#[test]
fn switching_route_sets_under_load_loses_nothing_and_never_mixes_sets() {
    const MESSAGES: usize = 10_000;
    const SWITCHES: usize = 20;
    // The gateway falls behind a paced publisher only briefly; a larger broker queue than Mosquitto's
    // default 1000 keeps the broker from dropping during those moments (the README says the same).
    let mosquitto = Mosquitto::start_with("max_queued_messages 100000\n");
    let topics: Vec<String> = ["a1", "a2", "b1", "b2"].iter().map(|t| new_topic(&format!("load_{t}"), 3)).collect();
    let set = |first: usize| -> String {
        let mut y = String::from("log:\n  stats_interval_secs: 0\nreload:\n  debounce_ms: 100\nroutes:\n");
        for (i, name) in ["one", "two"].iter().enumerate() {
            y.push_str(&format!(
                "  - name: {name}\n    filter: 'load/#'\n    qos: 1\n    topic: {}\n",
                topics[first + i]
            ));
        }
        y
    };
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &set(0));
    let gw = start_gateway(&path, &broker_env(&mosquitto));

    let port = mosquitto.port();
    let publisher = std::thread::spawn(move || {
        // One steady stream of about 1,000 messages a second over one connection, so the switches land
        // while messages are in flight.
        let messages = (0..MESSAGES)
            .map(|i| (format!("load/dev-{}/seq", i % 10), format!(r#"{{"seq":{i}}}"#).into_bytes()))
            .collect();
        common::publish_paced(port, messages, 10, Duration::from_millis(10));
    });
    for i in 0..SWITCHES {
        // Pacing, not waiting for an outcome: the switches spread over the stream.
        std::thread::sleep(Duration::from_millis(450));
        save_by_rename(&path, &set(if i % 2 == 0 { 2 } else { 0 }));
    }
    publisher.join().expect("publisher");
    assert!(
        common::wait_until(WAIT, Duration::from_millis(50), || reloads(&gw) >= SWITCHES),
        "{} reloads:\n{}",
        reloads(&gw),
        gw.logs()
    );

    // Every message is routed twice (two routes), by one set: 2 × MESSAGES records in all.
    let mut seen: Vec<HashMap<i64, usize>> = vec![HashMap::new(); 4];
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        for (i, t) in topics.iter().enumerate() {
            seen[i] = HashMap::new();
            for r in kafka().consume_for(t, Duration::from_millis(1500)) {
                *seen[i].entry(json(&r)["payload"]["seq"].as_i64().unwrap()).or_default() += 1;
            }
        }
        let total: usize = seen.iter().map(|m| m.values().sum::<usize>()).sum();
        if total >= 2 * MESSAGES || Instant::now() > deadline {
            break;
        }
    }
    let (mut in_a, mut in_b, mut lost, mut mixed, mut duplicated) = (0, 0, 0, 0, 0);
    for seq in 0..MESSAGES as i64 {
        let counts: Vec<usize> = seen.iter().map(|m| m.get(&seq).copied().unwrap_or(0)).collect();
        match counts.as_slice() {
            [1, 1, 0, 0] => in_a += 1,
            [0, 0, 1, 1] => in_b += 1,
            [0, 0, 0, 0] => lost += 1,
            c if c.iter().any(|n| *n > 1) => duplicated += 1,
            _ => mixed += 1,
        }
    }
    eprintln!(
        "reload under load: {MESSAGES} messages, {} reloads: {in_a} routed by set A, {in_b} by set B, {lost} lost, {mixed} routed by a mixed set, {duplicated} duplicated",
        reloads(&gw)
    );
    assert_eq!(
        (lost, mixed, duplicated),
        (0, 0, 0),
        "{}",
        gw.logs().lines().filter(|l| !l.contains("DEBUG")).take(200).collect::<Vec<_>>().join("\n")
    );
    assert!(in_a > 0 && in_b > 0, "both sets carried traffic");
}

#[test]
fn http_listen_moves_live_and_a_port_in_use_is_refused() {
    let mosquitto = Mosquitto::start();
    let ta = new_topic("http_a", 1);
    let dir = tempfile::tempdir().unwrap();
    let [a, b] = free_ports::<2>();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let c = taken.local_addr().unwrap().port();
    let body = |port: u16| format!("http:\n  listen: 127.0.0.1:{port}\n{}", routes_yaml(&[("a", "a/#", &ta)]));
    let path = write_config(dir.path(), &body(a));
    let mut env = broker_env(&mosquitto);
    // `http.listen` from the file, not the harness's free port.
    env.push(("GATEWAY_HTTP__LISTEN", String::new()));
    let gw = start_gateway(&path, &env);
    let healthy = |port: u16| http::get(&format!("127.0.0.1:{port}"), "/healthz").is_some_and(|r| r.status == 200);
    assert!(common::wait_until(WAIT, Duration::from_millis(50), || healthy(a)), "{}", gw.logs());

    save_by_rename(&path, &body(b));
    assert!(common::wait_until(WAIT, Duration::from_millis(20), || healthy(b)), "not moved:\n{}", gw.logs());
    assert!(common::wait_until(WAIT, Duration::from_millis(20), || !healthy(a)), "the old port still answers");
    assert!(!gw.logs().contains("only apply after a restart"), "{}", gw.logs());

    // A port someone else holds: refused with the cause; the server stays where it is.
    save_by_rename(&path, &body(c));
    assert!(gw.wait_for_log("new http.listen refused", WAIT), "{}", gw.logs());
    let line = gw.logs().lines().find(|l| l.contains("new http.listen refused")).unwrap_or_default().to_string();
    assert!(line.contains(&format!("127.0.0.1:{c}")), "{line}");
    assert!(healthy(b), "the server left its port:\n{}", gw.logs());
    drop(taken);
}

#[test]
fn an_edit_the_environment_overrides_is_named_with_its_variable_and_changes_nothing() {
    let mosquitto = Mosquitto::start();
    let (ta, tb) = (new_topic("env_a", 1), new_topic("env_b", 1));
    let dir = tempfile::tempdir().unwrap();
    let body = |linger: u32, topic: &str| {
        format!("kafka:\n  properties:\n    linger.ms: {linger}\n{}", routes_yaml(&[("a", "a/#", topic)]))
    };
    let path = write_config(dir.path(), &body(5, &tb));
    let mut env = broker_env(&mosquitto);
    env.push(("KAFKA_TOPIC", ta.clone()));
    env.push(("GATEWAY_KAFKA__PROPERTIES__LINGER_MS", "5".into()));
    let gw = start_gateway(&path, &env);
    save_by_rename(&path, &body(50, &format!("{tb}-edited")));
    assert!(gw.wait_for_log("environment variables override them", WAIT), "{}", gw.logs());
    let logs = gw.logs();
    let warning = logs.lines().find(|l| l.contains("environment variables override them")).unwrap_or_default();
    assert!(warning.contains("routes[0].topic (KAFKA_TOPIC)"), "{warning}");
    assert!(warning.contains("kafka.properties.linger.ms (GATEWAY_KAFKA__PROPERTIES__LINGER_MS)"), "{warning}");
    // The variables' values stay in effect: no new producer, the route still writes to KAFKA_TOPIC's topic.
    assert!(!logs.contains("Kafka settings changed"), "{logs}");
    assert_flows(&mosquitto, "a/1", &ta, 0, &gw);
}

#[test]
fn log_level_statistics_and_the_grace_period_apply_live() {
    let mosquitto = Mosquitto::start();
    let k = common::Kafka::start_dedicated();
    let topic = "live_own_settings";
    k.create_topic(topic, 1);
    let dir = tempfile::tempdir().unwrap();
    let body = |level: &str, stats: u64, grace: u64| {
        format!(
            "log:\n  level: {level}\n  stats_interval_secs: {stats}\nshutdown:\n  grace_period_secs: {grace}\n\
             routes:\n  - name: a\n    filter: a/#\n    topic: {topic}\n    qos: 1\n"
        )
    };
    let path = write_config(dir.path(), &body("info", 0, 30));
    let env = vec![
        ("MQTT_BROKER", mosquitto.addr()),
        ("KAFKA_BOOTSTRAP_SERVERS", k.bootstrap()),
        ("RUST_LOG", String::new()),
    ];
    let mut gw = start_gateway(&path, &env);
    assert!(gw.wait_for_log("subscribed", WAIT), "{}", gw.logs());

    // A statistics line every second, from the reload on.
    save_by_rename(&path, &body("info", 1, 1));
    assert!(
        common::wait_until(WAIT, Duration::from_millis(50), || gw.count_in_log("statistics") >= 2),
        "{}",
        gw.logs()
    );
    assert!(!gw.logs().contains("only apply after a restart"), "{}", gw.logs());

    // JSON lines from the reload on.
    let body_json = |level: &str| body(level, 1, 1).replace("log:\n", "log:\n  format: json\n");
    save_by_rename(&path, &body_json("info"));
    assert!(
        common::wait_until(WAIT, Duration::from_millis(50), || gw
            .logs()
            .lines()
            .any(|l| l.starts_with('{') && l.contains("statistics"))),
        "no JSON statistics line:\n{}",
        gw.logs()
    );

    // WARN only: the INFO statistics lines stop.
    save_by_rename(&path, &body_json("warn"));
    std::thread::sleep(Duration::from_millis(1500));
    let lines = gw.count_in_log("statistics");
    let quiet =
        holds_for(Duration::from_millis(2500), Duration::from_millis(100), || gw.count_in_log("statistics") == lines);
    assert!(quiet, "INFO lines still come after log.level: warn:\n{}", gw.logs());

    // The grace period of 1 s, not the 30 s the gateway started with: a message Kafka cannot take holds
    // the shutdown that long only.
    k.kill();
    mosquitto_pub(mosquitto.port(), "a/1", br#"{"held":true}"#, 1);
    let taken = common::wait_until(WAIT, Duration::from_millis(50), || {
        common::prom::value(&gw.metrics(), "mqtt_kafka_gateway_unacked_messages", &[]) == 1.0
    });
    assert!(taken, "{}", gw.logs());
    let stopping = Instant::now();
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(15)).is_some(), "still draining after 15 s:\n{}", gw.logs());
    let took = stopping.elapsed();
    eprintln!("stopped {:.1} s after SIGTERM with a grace period reloaded from 30 s to 1 s", took.as_secs_f64());
    assert!(took < Duration::from_secs(10), "the 30 s grace period applied: {took:?}");
}

#[test]
fn buffer_bytes_and_read_coalesce_apply_without_a_new_connection() {
    let (s, gw) = setup();
    let body = format!("mqtt:\n  buffer_bytes: 1048576\n  read_coalesce_us: 0\n{}", with_b(&s));
    save_by_rename(&s.path, &body);
    assert!(gw.wait_for_log("mqtt.buffer_bytes applied", WAIT), "{}", gw.logs());
    assert!(gw.wait_for_log("mqtt.read_coalesce_us applied", WAIT), "{}", gw.logs());
    let logs = gw.logs();
    assert!(!logs.contains("MQTT settings changed") && !logs.contains("only apply after a restart"), "{logs}");
    assert_eq!(gw.count_in_log("connected to the MQTT broker"), 1, "no new connection:\n{logs}");
    assert_flows(&s.mosquitto, "b/1", &s.tb, 0, &gw);
}

#[test]
fn max_unacked_messages_applies_live() {
    let (s, gw) = setup();
    let body = format!("mqtt:\n  max_unacked_messages: 500\n{}", with_b(&s));
    save_by_rename(&s.path, &body);
    assert!(gw.wait_for_log("mqtt.max_unacked_messages applied", WAIT), "{}", gw.logs());
    assert!(!gw.logs().contains("only apply after a restart"), "{}", gw.logs());
    // MQTT 5 announces it as Receive Maximum: a new connection carries it.
    if std::env::var("TEST_MQTT_PROTOCOL").as_deref() == Ok("5") {
        assert!(gw.wait_for_log("MQTT settings applied", WAIT), "{}", gw.logs());
    }
    assert_flows(&s.mosquitto, "b/1", &s.tb, 0, &gw);
}
