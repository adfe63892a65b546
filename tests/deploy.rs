//! The deploy files (`deploy/`, and the health check of `docker-compose.yml` and the `Dockerfile`) cannot
//! be applied here: no cluster. They are kept honest by reading them against the gateway's own constants,
//! its own configuration check and promtool. No broker is needed. (The image and compose file are also
//! built and run by `scripts/image.sh test`.)
//!
//! promtool comes from `scripts/install-test-tools.sh` (run by `scripts/test.sh`); without it the
//! tests that need it fail with the command that installs it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use mqtt_kafka_gateway::config::DEFAULT_HTTP_PORT as DEFAULT_PORT;
use mqtt_kafka_gateway::ops::http::{HEALTHZ_PATH, METRICS_PATH, READYZ_PATH};
use yaml_serde::Value;

/// Every metric the gateway exposes, by its exposed sample name (histograms by their base name, which
/// `_bucket`, `_sum` and `_count` extend).
pub const EXPOSED_METRICS: &[&str] = &[
    // counters
    "mqtt_kafka_gateway_messages_received_total",
    "mqtt_kafka_gateway_messages_unrouted_total",
    "mqtt_kafka_gateway_messages_dropped_total",
    "mqtt_kafka_gateway_records_delivered_total",
    "mqtt_kafka_gateway_records_failed_total",
    "mqtt_kafka_gateway_records_retried_total",
    "mqtt_kafka_gateway_dead_letters_total",
    "mqtt_kafka_gateway_device_id_total",
    "mqtt_kafka_gateway_mqtt_reconnects_total",
    "mqtt_kafka_gateway_mqtt_connection_errors_total",
    "mqtt_kafka_gateway_subscriptions_rejected_total",
    "mqtt_kafka_gateway_config_reloads_total",
    "mqtt_kafka_gateway_config_file_valid",
    "mqtt_kafka_gateway_intake_pauses_total",
    "mqtt_kafka_gateway_intake_paused_seconds_total",
    "mqtt_kafka_gateway_messages_not_acked_total",
    "mqtt_kafka_gateway_oversize_messages_total",
    "mqtt_kafka_gateway_spool_records_written_total",
    "mqtt_kafka_gateway_spool_records_replayed_total",
    "mqtt_kafka_gateway_spool_records_dropped_total",
    "mqtt_kafka_gateway_spool_records_unreadable_total",
    "mqtt_kafka_gateway_spool_errors_total",
    "mqtt_kafka_gateway_spool_damaged_bytes_total",
    "mqtt_kafka_gateway_downlink_records_consumed_total",
    "mqtt_kafka_gateway_downlink_messages_published_total",
    "mqtt_kafka_gateway_downlink_records_dead_lettered_total",
    "mqtt_kafka_gateway_downlink_dead_letter_errors_total",
    "mqtt_kafka_gateway_downlink_offset_commits_total",
    "mqtt_kafka_gateway_downlink_offset_commit_errors_total",
    "mqtt_kafka_gateway_downlink_pauses_total",
    "mqtt_kafka_gateway_downlink_mqtt_connection_errors_total",
    // gauges
    "mqtt_kafka_gateway_mqtt_connected",
    "mqtt_kafka_gateway_ready",
    "mqtt_kafka_gateway_kafka_brokers_up",
    "mqtt_kafka_gateway_producer_queue_messages",
    "mqtt_kafka_gateway_unacked_messages",
    "mqtt_kafka_gateway_intake_bytes",
    "mqtt_kafka_gateway_config_generation",
    "mqtt_kafka_gateway_config_last_reload_success_timestamp_seconds",
    "mqtt_kafka_gateway_spool_bytes",
    "mqtt_kafka_gateway_spool_max_bytes",
    "mqtt_kafka_gateway_spool_records",
    "mqtt_kafka_gateway_spool_active",
    "mqtt_kafka_gateway_spool_full",
    "mqtt_kafka_gateway_spool_oldest_record_age_seconds",
    "mqtt_kafka_gateway_downlink_lag_records",
    "mqtt_kafka_gateway_downlink_in_flight_records",
    "mqtt_kafka_gateway_downlink_paused",
    "mqtt_kafka_gateway_downlink_running",
    "mqtt_kafka_gateway_downlink_mqtt_connected",
    // info
    "mqtt_kafka_gateway_build_info",
    // histogram
    "mqtt_kafka_gateway_delivery_latency_seconds",
];

/// The histograms among [`EXPOSED_METRICS`].
pub const HISTOGRAMS: &[&str] = &["mqtt_kafka_gateway_delivery_latency_seconds"];

pub const DASHBOARD: &str = "deploy/grafana/mqtt-kafka-gateway.json";
pub const ALERTS: &str = "deploy/prometheus/alerts.yaml";
const ALERTS_TEST: &str = "deploy/prometheus/alerts_test.yaml";
const KUBERNETES: &str = "deploy/kubernetes";
/// The StatefulSet variant: the base above without its Deployment, plus a StatefulSet whose spool is on
/// a PersistentVolumeClaim. A directory beside the base, not in it: kustomize refuses a base that
/// contains the overlay (a cycle).
const STATEFULSET: &str = "deploy/kubernetes-statefulset";

/// Every `mqtt_kafka_gateway_*` name the dashboard and the alert rules use, as written (a histogram's
/// `_bucket`/`_sum`/`_count` suffix included; [`metric_family`] strips it).
pub fn metric_names_used() -> BTreeSet<String> {
    let mut names = metric_names_in(&read(DASHBOARD));
    names.extend(metric_names_in(&read(ALERTS)));
    names
}

/// Every `mqtt_kafka_gateway_[a-z_]+` in `text`.
pub fn metric_names_in(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\bmqtt_kafka_gateway_[a-z_]+").unwrap();
    re.find_iter(text).map(|m| m.as_str().to_string()).collect()
}

/// The exposed name a used name belongs to: a histogram's series lose their suffix.
pub fn metric_family(name: &str) -> &str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if HISTOGRAMS.contains(&base) {
                return base;
            }
        }
    }
    name
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(file: &str) -> String {
    let path = root().join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a YAML file (`---` separated), empty ones left out.
fn documents(file: &str) -> Vec<Value> {
    use serde::Deserialize;
    let text = read(file);
    yaml_serde::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{file}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml_files(dir: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    files.sort();
    files
}

/// The Kubernetes objects of `deploy/kubernetes`, by kind (one object per kind here).
fn objects() -> BTreeMap<String, Value> {
    let mut by_kind = BTreeMap::new();
    for file in yaml_files(KUBERNETES) {
        if file == "kustomization.yaml" {
            continue;
        }
        for doc in documents(&format!("{KUBERNETES}/{file}")) {
            let kind = doc["kind"].as_str().unwrap_or_else(|| panic!("{file}: a document without kind")).to_string();
            assert!(by_kind.insert(kind.clone(), doc).is_none(), "{file}: a second {kind}");
        }
    }
    by_kind
}

fn object(kind: &str) -> Value {
    objects().remove(kind).unwrap_or_else(|| panic!("no {kind} in {KUBERNETES}"))
}

/// An object of the StatefulSet variant's own files.
fn variant_object(kind: &str) -> Value {
    yaml_files(STATEFULSET)
        .into_iter()
        .filter(|f| f != "kustomization.yaml")
        .flat_map(|f| documents(&format!("{STATEFULSET}/{f}")))
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in {STATEFULSET}"))
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str().unwrap_or_else(|| panic!("{what}: expected a string, got {v:?}"))
}

fn the_container(deployment: &Value) -> &Value {
    let containers = deployment["spec"]["template"]["spec"]["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1, "one container: {containers:?}");
    &containers[0]
}

/// The named container port `port` refers to (a name, or a number).
fn container_port(container: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = str_of(port, "port");
    let ports = container["ports"].as_sequence().expect("container ports");
    let p = ports
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container port named {name}"));
    p["containerPort"].as_u64().expect("containerPort")
}

/// The literal environment of the container (`value:` entries; `valueFrom:` ones are left out).
fn literal_env(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .filter_map(|e| Some((str_of(&e["name"], "env name").to_string(), e["value"].as_str()?.to_string())))
        .collect()
}

/// The `--config` argument of the container.
fn config_arg(container: &Value) -> PathBuf {
    let args: Vec<&str> = container["args"].as_sequence().expect("args").iter().map(|a| str_of(a, "arg")).collect();
    let i = args.iter().position(|a| *a == "--config").unwrap_or_else(|| panic!("no --config in {args:?}"));
    PathBuf::from(args.get(i + 1).expect("a path after --config"))
}

fn routes_text(configmap: &Value, key: &str) -> String {
    str_of(&configmap["data"][key], &format!("ConfigMap data.{key}")).to_string()
}

fn load(text: &str, env: &BTreeMap<String, String>) -> mqtt_kafka_gateway::config::Config {
    mqtt_kafka_gateway::config::load_from_str(Path::new("routes.yaml"), text, env).unwrap_or_else(|e| panic!("{e}"))
}

/// Kubernetes quantities such as `256Mi`, `1G`, `128974848`, in bytes.
fn bytes(quantity: &str) -> u64 {
    let units =
        [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("k", 1000), ("M", 1_000_000), ("G", 1_000_000_000)];
    for (suffix, factor) in units {
        if let Some(n) = quantity.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap_or_else(|e| panic!("{quantity}: {e}")) * factor;
        }
    }
    quantity.parse().unwrap_or_else(|e| panic!("{quantity}: {e}"))
}

/// The promtool binary, or a failure that says how to install it.
fn promtool() -> Command {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("promtool").is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "promtool is not installed: run scripts/install-test-tools.sh \
         (or apt-get install -y --no-install-recommends prometheus)"
    );
    let mut c = Command::new("promtool");
    c.current_dir(root());
    c
}

fn run(mut c: Command) -> String {
    let o = c.output().expect("run promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{c:?} failed:\n{text}");
    text
}

// ---------------------------------------------------------------------------------------------------
// Kubernetes.
// ---------------------------------------------------------------------------------------------------

#[test]
fn every_manifest_parses_and_kustomization_lists_exactly_the_files_present() {
    for dir in [KUBERNETES, STATEFULSET, "deploy/prometheus"] {
        for file in yaml_files(dir) {
            let docs = documents(&format!("{dir}/{file}"));
            assert!(!docs.is_empty(), "{dir}/{file}: no document");
        }
    }
    let files: BTreeSet<String> = yaml_files(KUBERNETES).into_iter().filter(|f| f != "kustomization.yaml").collect();
    for file in &files {
        for doc in documents(&format!("{KUBERNETES}/{file}")) {
            for key in ["apiVersion", "kind"] {
                assert!(doc[key].as_str().is_some_and(|s| !s.is_empty()), "{file}: no {key}");
            }
            assert!(doc["metadata"]["name"].as_str().is_some_and(|s| !s.is_empty()), "{file}: no metadata.name");
        }
    }
    let kustomization = &documents(&format!("{KUBERNETES}/kustomization.yaml"))[0];
    assert_eq!(kustomization["kind"].as_str(), Some("Kustomization"));
    let listed: Vec<String> = kustomization["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(|r| str_of(r, "resource").to_string())
        .collect();
    let listed_set: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(listed.len(), listed_set.len(), "a resource listed twice: {listed:?}");
    assert_eq!(listed_set, files, "kustomization.yaml resources vs the files in {KUBERNETES}");
    let kinds: BTreeSet<String> = objects().into_keys().collect();
    for kind in ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"] {
        assert!(kinds.contains(kind), "no {kind}: {kinds:?}");
    }

    // The StatefulSet variant: the base, its own files (every one), and one patch that deletes the
    // base's Deployment, so that one gateway runs, not two.
    let variant = &documents(&format!("{STATEFULSET}/kustomization.yaml"))[0];
    assert_eq!(variant["kind"].as_str(), Some("Kustomization"));
    let listed: Vec<String> = variant["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(|r| str_of(r, "resource").to_string())
        .collect();
    let base: Vec<&String> = listed.iter().filter(|r| !r.ends_with(".yaml")).collect();
    assert_eq!(base.len(), 1, "{STATEFULSET}: one base: {listed:?}");
    assert_eq!(
        root().join(STATEFULSET).join(base[0]).canonicalize().unwrap(),
        root().join(KUBERNETES).canonicalize().unwrap(),
        "{STATEFULSET}: the base is {KUBERNETES}"
    );
    let own: BTreeSet<String> = yaml_files(STATEFULSET).into_iter().filter(|f| f != "kustomization.yaml").collect();
    let listed_files: BTreeSet<String> = listed.iter().filter(|r| r.ends_with(".yaml")).cloned().collect();
    assert_eq!(listed_files, own, "{STATEFULSET}/kustomization.yaml resources vs the files beside it");
    let deployment_name = str_of(&object("Deployment")["metadata"]["name"], "Deployment name").to_string();
    let patches = variant["patches"].as_sequence().expect("patches");
    assert_eq!(patches.len(), 1, "{STATEFULSET}: one patch, deleting the Deployment");
    assert_eq!(patches[0]["target"]["kind"].as_str(), Some("Deployment"));
    assert_eq!(patches[0]["target"]["name"].as_str(), Some(deployment_name.as_str()));
    let patch: Value = yaml_serde::from_str(str_of(&patches[0]["patch"], "patch")).expect("the patch is YAML");
    assert_eq!(patch["$patch"].as_str(), Some("delete"));
    assert_eq!(patch["kind"].as_str(), Some("Deployment"));
    assert_eq!(patch["metadata"]["name"].as_str(), Some(deployment_name.as_str()));
    assert_eq!(variant_object("StatefulSet")["kind"].as_str(), Some("StatefulSet"));
}

#[test]
fn the_statefulset_variant_runs_the_deployments_pod_with_the_spool_on_a_claim() {
    let deployment = object("Deployment");
    let sts = variant_object("StatefulSet");
    let spec = &sts["spec"];
    // One gateway: one MQTT client id, one writer of the spool's directory (the gateway locks it).
    assert_eq!(spec["replicas"].as_u64(), Some(1), "replicas");
    assert!(
        spec["podManagementPolicy"].is_null() || spec["podManagementPolicy"].as_str() == Some("OrderedReady"),
        "the replacement starts only once the old pod is gone"
    );
    assert_eq!(spec["serviceName"], object("Service")["metadata"]["name"], "serviceName: the base's Service");
    assert_eq!(sts["metadata"], deployment["metadata"], "the same name and labels as the Deployment it replaces");
    assert_eq!(spec["selector"], deployment["spec"]["selector"], "what the Service and the budget select");

    // The pod is the Deployment's, but for the spool's volume: a claim here, an emptyDir there (and the
    // ephemeral storage that emptyDir asks the scheduler for).
    let spool_volume = str_of(&spool_mount(&deployment)["name"], "the spool's mount").to_string();
    let mut want = deployment["spec"]["template"].clone();
    want["spec"]["volumes"].as_sequence_mut().unwrap().retain(|v| v["name"].as_str() != Some(&spool_volume));
    let container = &mut want["spec"]["containers"][0];
    container["resources"]["requests"].as_mapping_mut().unwrap().remove("ephemeral-storage");
    assert_eq!(spec["template"], want, "the StatefulSet's pod drifted from the Deployment's");

    let claims = spec["volumeClaimTemplates"].as_sequence().expect("volumeClaimTemplates");
    assert_eq!(claims.len(), 1, "{claims:?}");
    assert_eq!(claims[0]["metadata"]["name"].as_str(), Some(spool_volume.as_str()), "the claim is the spool's volume");
    let modes = claims[0]["spec"]["accessModes"].as_sequence().expect("accessModes");
    assert!(modes.iter().any(|m| m.as_str() == Some("ReadWriteOnce")), "{modes:?}");
}

/// The mount of the pod's container that holds the ConfigMap's `spool.dir` (the deepest `mountPath` at
/// or above it); the root filesystem is read-only, so there must be one.
fn spool_mount(workload: &Value) -> Value {
    let container = the_container(workload);
    let key = config_arg(container).file_name().unwrap().to_str().unwrap().to_string();
    let config = load(&routes_text(&object("ConfigMap"), &key), &literal_env(container));
    let dir = config.spool.expect("the ConfigMap's routes.yaml sets spool.dir").dir;
    assert!(dir.is_absolute(), "spool.dir {} is relative", dir.display());
    container["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .filter(|m| dir.starts_with(str_of(&m["mountPath"], "mountPath")))
        .max_by_key(|m| m["mountPath"].as_str().unwrap().len())
        .unwrap_or_else(|| panic!("spool.dir {} is on no volume: the root filesystem is read-only", dir.display()))
        .clone()
}

/// The most the spool's directory holds with `max_bytes`: `max_bytes`, the acknowledged head of its
/// oldest segment (a segment is a sixteenth of `max_bytes`, 1 to 64 MiB: `open_spool` in
/// src/pipeline/mod.rs) and one record larger than a segment (src/spool/log.rs, "Disk bound").
fn spool_disk_bound(max_bytes: u64) -> u64 {
    use mqtt_kafka_gateway::spool::log::{HEADER_BYTES, MAX_RECORD_BYTES};
    max_bytes + (max_bytes / 16).clamp(1 << 20, 64 << 20) + MAX_RECORD_BYTES + HEADER_BYTES
}

#[test]
fn the_spool_is_on_a_writable_volume_with_room_for_max_bytes() {
    let deployment = object("Deployment");
    let container = the_container(&deployment);
    let key = config_arg(container).file_name().unwrap().to_str().unwrap().to_string();
    let config = load(&routes_text(&object("ConfigMap"), &key), &literal_env(container));
    let spool = config.spool.as_ref().expect("the ConfigMap's routes.yaml sets spool.dir");
    let bound = spool_disk_bound(spool.max_bytes);
    let uid = deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"].as_u64();

    for workload in [&deployment, &variant_object("StatefulSet")] {
        let kind = str_of(&workload["kind"], "kind");
        let pod = &workload["spec"]["template"]["spec"];
        let mount = spool_mount(workload);
        assert!(mount["readOnly"].as_bool() != Some(true), "{kind}: the spool's mount is read-only");
        assert!(mount["subPath"].is_null(), "{kind}: the spool's mount has a subPath");
        // The volume's files belong to the gateway's group: writable for uid 65532 on any volume type.
        assert_eq!(pod["securityContext"]["fsGroup"].as_u64(), uid, "{kind}: fsGroup");
        let name = str_of(&mount["name"], "the spool's mount");
        let volume = pod["volumes"].as_sequence().expect("volumes").iter().find(|v| v["name"].as_str() == Some(name));
        match kind {
            "Deployment" => {
                // Over its sizeLimit an emptyDir gets the pod evicted, spool and all: the spool must stop
                // first.
                let empty_dir = &volume.unwrap_or_else(|| panic!("no volume {name}"))["emptyDir"];
                assert!(empty_dir.is_mapping(), "{kind}: the spool's volume is an emptyDir");
                assert_ne!(empty_dir["medium"].as_str(), Some("Memory"), "in memory it counts against the limit");
                let size = bytes(str_of(&empty_dir["sizeLimit"], "the spool's emptyDir sizeLimit"));
                assert!(
                    bound <= size,
                    "spool.max_bytes {} can fill {bound} bytes, over the emptyDir's sizeLimit {size}",
                    spool.max_bytes
                );
                let requested = &the_container(workload)["resources"]["requests"]["ephemeral-storage"];
                assert!(bytes(str_of(requested, "ephemeral-storage request")) >= size, "ephemeral-storage request");
            }
            "StatefulSet" => {
                assert!(volume.is_none(), "{kind}: {name} is a pod volume, not the claim");
                let claim = workload["spec"]["volumeClaimTemplates"]
                    .as_sequence()
                    .expect("volumeClaimTemplates")
                    .iter()
                    .find(|c| c["metadata"]["name"].as_str() == Some(name))
                    .unwrap_or_else(|| panic!("no claim template {name}"));
                let size = bytes(str_of(&claim["spec"]["resources"]["requests"]["storage"], "storage request"));
                // A filesystem keeps some of its volume (ext4: its journal, and 5% for root).
                assert!(
                    bound <= size / 10 * 9,
                    "spool.max_bytes {} can fill {bound} bytes, over 90% of the claim's {size}",
                    spool.max_bytes
                );
            }
            other => panic!("{other}"),
        }
    }
}

#[test]
fn probes_port_and_scrape_annotations_are_the_gateways_own() {
    let deployment = object("Deployment");
    let container = the_container(&deployment);
    let port = container["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .find(|p| p["containerPort"].as_u64() == Some(u64::from(DEFAULT_PORT)))
        .unwrap_or_else(|| panic!("no container port {DEFAULT_PORT}"));
    let port_name = str_of(&port["name"], "the port's name");

    for (probe, path) in [("livenessProbe", HEALTHZ_PATH), ("readinessProbe", READYZ_PATH)] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(get["port"].as_str(), Some(port_name), "{probe} uses the named port");
        assert_eq!(container_port(container, &get["port"]), u64::from(DEFAULT_PORT), "{probe}");
    }
    assert_ne!(HEALTHZ_PATH, READYZ_PATH, "liveness must not follow the brokers");

    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(annotations["prometheus.io/port"].as_str(), Some(DEFAULT_PORT.to_string().as_str()));
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some(METRICS_PATH));

    // The Service reaches that port on these pods.
    let service = object("Service");
    let pod_labels = deployment["spec"]["template"]["metadata"]["labels"].as_mapping().expect("pod labels");
    for (selector, what) in [
        (&service["spec"]["selector"], "Service"),
        (&deployment["spec"]["selector"]["matchLabels"], "Deployment"),
        (&object("PodDisruptionBudget")["spec"]["selector"]["matchLabels"], "PodDisruptionBudget"),
    ] {
        let selector = selector.as_mapping().unwrap_or_else(|| panic!("{what} selector"));
        assert!(!selector.is_empty(), "{what}: empty selector");
        for (k, v) in selector {
            assert_eq!(pod_labels.get(k), Some(v), "{what} selects {k:?}={v:?}, the pods do not carry it");
        }
    }
    let sports = service["spec"]["ports"].as_sequence().expect("service ports");
    assert!(
        sports.iter().any(|p| p["port"].as_u64() == Some(u64::from(DEFAULT_PORT))
            && container_port(container, &p["targetPort"]) == u64::from(DEFAULT_PORT)),
        "the Service exposes {DEFAULT_PORT}: {sports:?}"
    );
}

#[test]
fn routes_configmap_is_mounted_as_a_directory_holding_the_config_file() {
    let deployment = object("Deployment");
    let configmap = object("ConfigMap");
    let cm_name = str_of(&configmap["metadata"]["name"], "ConfigMap name");
    let pod = &deployment["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["configMap"]["name"].as_str() == Some(cm_name))
        .unwrap_or_else(|| panic!("no volume of ConfigMap {cm_name}"));
    assert!(volume["configMap"]["items"].is_null(), "items would leave keys out of the directory");
    let volume_name = str_of(&volume["name"], "volume name");
    let container = the_container(&deployment);
    let mounts: Vec<&Value> = container["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .filter(|m| m["name"].as_str() == Some(volume_name))
        .collect();
    assert_eq!(mounts.len(), 1, "one mount of {volume_name}");
    let mount = mounts[0];
    // A subPath file is never updated by the kubelet: live reload would never see an edit.
    assert!(mount["subPath"].is_null() && mount["subPathExpr"].is_null(), "mounted with a subPath: {mount:?}");
    assert_eq!(mount["readOnly"].as_bool(), Some(true));
    let mount_path = Path::new(str_of(&mount["mountPath"], "mountPath"));

    let config = config_arg(container);
    assert_eq!(
        config.parent(),
        Some(mount_path),
        "--config {} is not directly in the mount {}",
        config.display(),
        mount_path.display()
    );
    let key = config.file_name().unwrap().to_str().unwrap();
    assert!(configmap["data"][key].is_string(), "--config names {key}, which is not a key of the ConfigMap");
}

#[test]
fn configmap_routes_pass_the_gateways_validation_with_the_deployments_environment() {
    let deployment = object("Deployment");
    let container = the_container(&deployment);
    let key = config_arg(container).file_name().unwrap().to_str().unwrap().to_string();
    let text = routes_text(&object("ConfigMap"), &key);
    let env = literal_env(container);
    for var in ["MQTT_BROKER", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TOPIC", "MQTT_TOPIC_PATTERN", "LOG_FORMAT"] {
        assert!(env.contains_key(var), "the Deployment sets {var}");
    }
    let secret_env: BTreeSet<&str> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|e| e["valueFrom"]["secretKeyRef"].is_mapping())
        .map(|e| str_of(&e["name"], "env name"))
        .collect();
    assert_eq!(secret_env, BTreeSet::from(["MQTT_USERNAME", "MQTT_PASSWORD"]), "credentials come from a Secret");
    assert_eq!(env.get("LOG_FORMAT").map(String::as_str), Some("json"));

    // The binary's own `validate`, with exactly the Deployment's environment.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(&key), &text).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_mqtt-kafka-gateway"))
        .args(["validate", &key])
        .current_dir(dir.path())
        .env_clear()
        .envs(&env)
        .output()
        .expect("run the gateway binary");
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success() && out.contains(": OK,"), "validate {key} from the ConfigMap:\n{out}");

    let with_env = load(&text, &env);
    assert_eq!(with_env.mqtt.broker.host, env["MQTT_BROKER"].split(':').next().unwrap());
    assert_eq!(with_env.kafka.bootstrap_servers, env["KAFKA_BOOTSTRAP_SERVERS"]);

    // KAFKA_TOPIC and MQTT_TOPIC_PATTERN override the first route: they must say what the file says,
    // or a live edit of that route would be silently overridden.
    let file_only = load(&text, &BTreeMap::new());
    let first = &file_only.routes.routes()[0];
    assert_eq!(first.topic.to_string(), env["KAFKA_TOPIC"], "KAFKA_TOPIC vs the ConfigMap's first route");
    assert_eq!(first.filter, env["MQTT_TOPIC_PATTERN"], "MQTT_TOPIC_PATTERN vs the ConfigMap's first route");
    assert!(!first.fallback_filters.is_empty(), "the spec's fallback filter survives the environment");
    assert_eq!(with_env.routes.routes()[0].fallback_filters, first.fallback_filters);
}

#[test]
fn one_pod_at_a_time_with_the_spec_resources_and_a_grace_period_beyond_the_gateways() {
    let deployment = object("Deployment");
    let spec = &deployment["spec"];
    // Same client id, plain subscriptions: a second pod steals the session or duplicates every record.
    assert_eq!(spec["replicas"].as_u64(), Some(1), "replicas");
    assert_eq!(spec["strategy"]["type"].as_str(), Some("Recreate"), "no rolling overlap of two clients with one id");

    let container = the_container(&deployment);
    let resources = &container["resources"];
    // The spec's figures.
    for (path, want) in [
        (["requests", "cpu"], "100m"),
        (["requests", "memory"], "128Mi"),
        (["limits", "cpu"], "200m"),
        (["limits", "memory"], "256Mi"),
    ] {
        assert_eq!(resources[path[0]][path[1]].as_str(), Some(want), "resources.{}.{}", path[0], path[1]);
    }

    let key = config_arg(container).file_name().unwrap().to_str().unwrap().to_string();
    let config = load(&routes_text(&object("ConfigMap"), &key), &literal_env(container));
    let pod = &spec["template"]["spec"];
    let termination = pod["terminationGracePeriodSeconds"].as_u64().expect("terminationGracePeriodSeconds");
    assert!(
        termination > config.shutdown_grace.as_secs(),
        "terminationGracePeriodSeconds {termination} must exceed shutdown.grace_period_secs {}",
        config.shutdown_grace.as_secs()
    );

    // What the gateway may buffer during a Kafka outage fits the memory limit with room for the rest.
    let limit = bytes(str_of(&resources["limits"]["memory"], "memory limit"));
    let queue_kbytes: u64 = config.kafka.properties["queue.buffering.max.kbytes"].parse().unwrap();
    let buffered = config.mqtt.buffer_bytes as u64 + queue_kbytes * 1024;
    assert!(
        buffered <= limit / 2,
        "buffer_bytes + queue_max_kbytes = {buffered} bytes, over half the {limit}-byte limit"
    );

    let pdb = object("PodDisruptionBudget");
    assert!(pdb["spec"]["minAvailable"].as_u64() != Some(1), "minAvailable 1 with one replica blocks every node drain");
}

#[test]
fn runs_as_the_images_non_root_user_on_a_read_only_root() {
    let deployment = object("Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = the_container(&deployment);
    let dockerfile = read("Dockerfile");
    let user = dockerfile.lines().rev().find_map(|l| l.strip_prefix("USER ")).expect("a USER line in the Dockerfile");
    let (uid, gid) = user.trim().split_once(':').expect("USER uid:gid");
    assert_eq!(uid, gid);
    let uid: u64 = uid.parse().expect("a numeric uid, which runAsNonRoot can verify");
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(pod["securityContext"]["runAsUser"].as_u64(), Some(uid));
    assert_eq!(pod["securityContext"]["runAsGroup"].as_u64(), Some(uid));
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["capabilities"]["drop"][0].as_str(), Some("ALL"));
    // Service links inject <SERVICE>_PORT variables for every Service of the namespace: nothing the
    // gateway needs (it ignores those that look like its own prefix, see the test below).
    assert_eq!(pod["enableServiceLinks"].as_bool(), Some(false));

    let image = str_of(&container["image"], "image");
    let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
    assert_eq!(tag, env!("CARGO_PKG_VERSION"), "the image tag follows the crate's version: {image}");
}

#[test]
fn the_service_links_of_a_service_named_gateway_do_not_stop_the_gateway() {
    // What the kubelet injects for a Service named `gateway` when service links are on (a user's own
    // manifest): the ConfigMap's routes still load, and mean the same.
    let links = [
        ("GATEWAY_PORT", "tcp://10.0.0.7:80"),
        ("GATEWAY_PORT_80_TCP", "tcp://10.0.0.7:80"),
        ("GATEWAY_PORT_80_TCP_PROTO", "tcp"),
        ("GATEWAY_SERVICE_HOST", "10.0.0.7"),
        ("GATEWAY_SERVICE_PORT", "80"),
    ];
    let env: BTreeMap<String, String> = links.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let text = routes_text(&object("ConfigMap"), "routes.yaml");
    let with_links = mqtt_kafka_gateway::config::load_from_str(Path::new("routes.yaml"), &text, &env)
        .expect("service links are not configuration");
    let without = mqtt_kafka_gateway::config::load_from_str(Path::new("routes.yaml"), &text, &BTreeMap::new()).unwrap();
    assert_eq!(format!("{:?}", with_links.mqtt), format!("{:?}", without.mqtt));
}

// ---------------------------------------------------------------------------------------------------
// Prometheus and Grafana.
// ---------------------------------------------------------------------------------------------------

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let out = run({
        let mut c = promtool();
        c.args(["check", "rules", ALERTS]);
        c
    });
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run({
        let mut c = promtool();
        c.args(["test", "rules", ALERTS_TEST]);
        c
    });
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_has_for_severity_summary_and_description() {
    let doc = &documents(ALERTS)[0];
    let mut names = BTreeSet::new();
    let mut alerts = 0;
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let Some(name) = rule["alert"].as_str() else { continue };
            alerts += 1;
            assert!(names.insert(name.to_string()), "{name} twice");
            assert!(rule["for"].is_string() || is_instant(name), "{name}: no `for:`");
            let severity = rule["labels"]["severity"].as_str().unwrap_or_else(|| panic!("{name}: no severity"));
            assert!(["critical", "warning", "info"].contains(&severity), "{name}: severity {severity}");
            for a in ["summary", "description"] {
                assert!(rule["annotations"][a].as_str().is_some_and(|s| s.len() > 10), "{name}: no {a}");
            }
        }
    }
    for want in [
        "MqttKafkaGatewayNoDeliveries",
        "MqttKafkaGatewayDeadLetters",
        "MqttKafkaGatewayNotReady",
        "MqttKafkaGatewayMessagesDropped",
        "MqttKafkaGatewayRecordsFailed",
        "MqttKafkaGatewayMqttDisconnected",
        "MqttKafkaGatewayNoKafkaBroker",
        "MqttKafkaGatewayConfigReloadFailed",
        "MqttKafkaGatewaySpoolGrowing",
        "MqttKafkaGatewaySpoolNearlyFull",
        "MqttKafkaGatewaySpoolFull",
        "MqttKafkaGatewaySpoolRecordsDropped",
        "MqttKafkaGatewaySpoolRecordsUnreadable",
        "MqttKafkaGatewaySpoolDiskErrors",
        "MqttKafkaGatewayDownlinkLagGrowing",
        "MqttKafkaGatewayDownlinkMqttDisconnected",
    ] {
        assert!(names.contains(want), "no alert {want}: {names:?}");
    }
    assert!(alerts >= 14);
    // And each one is exercised by the unit tests.
    let tests = read(ALERTS_TEST);
    for name in &names {
        assert!(tests.contains(&format!("alertname: {name}\n")), "{name} has no case in {ALERTS_TEST}");
    }
}

/// Alerts on a counter's increase fire at once: one lost message is already worth a look.
fn is_instant(name: &str) -> bool {
    [
        "MqttKafkaGatewayMessagesDropped",
        "MqttKafkaGatewayOversizeMessages",
        "MqttKafkaGatewayRecordsFailed",
        "MqttKafkaGatewayConfigReloadFailed",
        "MqttKafkaGatewaySpoolRecordsDropped",
        "MqttKafkaGatewaySpoolRecordsUnreadable",
        "MqttKafkaGatewaySpoolDamagedAtStart",
        "MqttKafkaGatewayDownlinkDeadLetters",
    ]
    .contains(&name)
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// Every panel, rows' nested panels included.
fn panels(d: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p.clone());
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner.iter().cloned());
        }
    }
    out
}

#[test]
fn dashboard_is_valid_json_with_a_datasource_variable_and_no_fixed_datasource() {
    let d = dashboard();
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty() && u.len() <= 40), "uid");
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let ds = vars.iter().find(|v| v["type"] == "datasource").expect("a datasource variable");
    assert_eq!(ds["query"], "prometheus");
    let reference = format!("${{{}}}", ds["name"].as_str().unwrap());
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert_eq!(v["datasource"]["uid"], reference.as_str(), "variable {}: datasource", v["name"]);
    }
    let mut ids = BTreeSet::new();
    let mut targets = 0;
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or("?").to_string();
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "panel id {} twice", p["id"]);
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], reference.as_str(), "{title}: datasource");
        for t in p["targets"].as_array().unwrap_or_else(|| panic!("{title}: no targets")) {
            targets += 1;
            assert_eq!(t["datasource"]["uid"], reference.as_str(), "{title}: target datasource");
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()), "{title}: target without expr");
        }
    }
    assert!(targets >= 15, "{targets} queries");
}

/// Every query of the dashboard is PromQL that Prometheus parses: promtool checks them as recording
/// rules, with Grafana's variables given values.
#[test]
fn dashboard_queries_are_valid_promql() {
    let d = dashboard();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut n = 0;
    for p in panels(&d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap().replace("$__rate_interval", "5m").replace("$instance", ".*");
            assert!(!expr.contains('$'), "an unknown variable in {expr}");
            rules.push_str(&format!(
                "      - record: dashboard:query_{n}\n        expr: {}\n",
                serde_json::to_string(&expr).unwrap()
            ));
            n += 1;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yaml");
    std::fs::write(&file, rules).unwrap();
    let out = run({
        let mut c = promtool();
        c.arg("check").arg("rules").arg(&file);
        c
    });
    assert!(out.contains(&format!("SUCCESS: {n} rules found")), "{out}");
}

#[test]
fn dashboard_shows_what_an_operator_needs() {
    let used: BTreeSet<String> =
        metric_names_in(&read(DASHBOARD)).iter().map(|n| metric_family(n).to_string()).collect();
    for want in [
        "mqtt_kafka_gateway_messages_received_total",
        "mqtt_kafka_gateway_records_delivered_total",
        "mqtt_kafka_gateway_delivery_latency_seconds",
        "mqtt_kafka_gateway_dead_letters_total",
        "mqtt_kafka_gateway_messages_dropped_total",
        "mqtt_kafka_gateway_records_failed_total",
        "mqtt_kafka_gateway_records_retried_total",
        "mqtt_kafka_gateway_mqtt_connected",
        "mqtt_kafka_gateway_kafka_brokers_up",
        "mqtt_kafka_gateway_ready",
        "mqtt_kafka_gateway_producer_queue_messages",
        "mqtt_kafka_gateway_unacked_messages",
        "mqtt_kafka_gateway_intake_pauses_total",
        "mqtt_kafka_gateway_config_reloads_total",
        "mqtt_kafka_gateway_config_generation",
    ] {
        assert!(used.contains(want), "the dashboard does not show {want}");
    }
    let text = read(DASHBOARD);
    for q in ["histogram_quantile(0.5,", "histogram_quantile(0.99,"] {
        assert!(text.contains(q), "latency {q}");
    }

    // A "Disk spool" row, and under it (up to the next row) the spool's size against its limit, records,
    // oldest record's age, what goes in, out and is lost, whether it is active or full, and its errors.
    let d = dashboard();
    let all = d["panels"].as_array().expect("panels");
    let row = all.iter().position(|p| p["type"] == "row" && p["title"] == "Disk spool").expect("a \"Disk spool\" row");
    let under: Vec<&serde_json::Value> = all[row + 1..].iter().take_while(|p| p["type"] != "row").collect();
    assert!(under.len() >= 4, "{} panels under the Disk spool row", under.len());
    let y = all[row]["gridPos"]["y"].as_u64().unwrap();
    for p in &under {
        assert!(p["gridPos"]["y"].as_u64().unwrap() > y, "{}: above its row", p["title"]);
    }
    let exprs: String = under
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .map(|t| t["expr"].as_str().unwrap().to_string() + "\n")
        .collect();
    let spool = metric_names_in(&exprs);
    for want in [
        "mqtt_kafka_gateway_spool_bytes",
        "mqtt_kafka_gateway_spool_max_bytes",
        "mqtt_kafka_gateway_spool_records",
        "mqtt_kafka_gateway_spool_oldest_record_age_seconds",
        "mqtt_kafka_gateway_spool_records_written_total",
        "mqtt_kafka_gateway_spool_records_replayed_total",
        "mqtt_kafka_gateway_spool_records_dropped_total",
        "mqtt_kafka_gateway_spool_records_unreadable_total",
        "mqtt_kafka_gateway_spool_active",
        "mqtt_kafka_gateway_spool_full",
        "mqtt_kafka_gateway_spool_errors_total",
    ] {
        assert!(spool.contains(want), "the Disk spool row does not show {want}");
    }
    // The size and its limit in one panel, in bytes.
    assert!(
        under.iter().any(|p| {
            let e = p["targets"].to_string();
            e.contains("mqtt_kafka_gateway_spool_bytes")
                && e.contains("mqtt_kafka_gateway_spool_max_bytes")
                && p["fieldConfig"]["defaults"]["unit"] == "bytes"
        }),
        "no panel shows spool_bytes against spool_max_bytes"
    );
}

#[test]
fn dashboard_and_alerts_use_only_metrics_the_gateway_exposes() {
    let used = metric_names_used();
    assert!(used.len() >= 15, "{used:?}");
    let unknown: Vec<&String> = used.iter().filter(|n| !EXPOSED_METRICS.contains(&metric_family(n))).collect();
    assert!(unknown.is_empty(), "not exposed by the gateway: {unknown:?}");
}

/// [`EXPOSED_METRICS`] is what the gateway's own exposition writes: a scrape of its metrics, set up as a
/// running gateway sets them up (the ConfigMap's routes bound, since per-route series exist only for
/// routes; the producer's and intake's gauges; a spool), has every name.
#[test]
fn exposed_metrics_are_in_a_scrape_of_the_gateways_exposition() {
    use mqtt_kafka_gateway::ops::metrics::{exposition, LiveGauges, Metrics, SpoolSize};
    let metrics = std::sync::Arc::new(Metrics::default());
    let mut routes = load(&routes_text(&object("ConfigMap"), "routes.yaml"), &BTreeMap::new()).routes;
    metrics.routes.bind(&mut routes);
    metrics.set_live_gauges(LiveGauges { producer_queue: Box::new(|| 0), intake_bytes: Box::new(|| 0) });
    metrics.set_spool_size(SpoolSize {
        held: Box::new(|| (0, 0)),
        not_durable: Box::new(|| (0, 0)),
        max_bytes: Box::new(|| 1 << 30),
    });
    // Per-downlink series exist once a downlink runs.
    metrics.downlinks.get(&std::sync::Arc::from("commands"));
    let body = exposition::encode(&exposition::registry(metrics)).unwrap();
    let samples: BTreeSet<&str> =
        body.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split([' ', '{']).next()).collect();
    let missing: Vec<&&str> = EXPOSED_METRICS
        .iter()
        .filter(|n| {
            let family = if HISTOGRAMS.contains(n) { format!("{n}_count") } else { n.to_string() };
            !samples.contains(family.as_str())
        })
        .collect();
    assert!(missing.is_empty(), "in EXPOSED_METRICS, not in a scrape: {missing:?}\n{body}");
}

#[test]
fn metric_name_helpers_find_and_reduce_names() {
    let found = metric_names_in("rate(mqtt_kafka_gateway_x_total[5m]) mqtt_kafka_gateway_delivery_latency_seconds_bucket{le=\"1\"} mqtt-kafka-gateway");
    assert_eq!(
        found,
        BTreeSet::from([
            "mqtt_kafka_gateway_x_total".to_string(),
            "mqtt_kafka_gateway_delivery_latency_seconds_bucket".to_string()
        ])
    );
    assert_eq!(
        metric_family("mqtt_kafka_gateway_delivery_latency_seconds_bucket"),
        "mqtt_kafka_gateway_delivery_latency_seconds"
    );
    assert_eq!(
        metric_family("mqtt_kafka_gateway_delivery_latency_seconds_count"),
        "mqtt_kafka_gateway_delivery_latency_seconds"
    );
    assert_eq!(
        metric_family("mqtt_kafka_gateway_ready_count"),
        "mqtt_kafka_gateway_ready_count",
        "only histograms lose a suffix"
    );
    assert!(!EXPOSED_METRICS.contains(&metric_family("mqtt_kafka_gateway_x_total")));
}

// ---------------------------------------------------------------------------------------------------
// docker-compose.yml and the Dockerfile.
// ---------------------------------------------------------------------------------------------------

#[test]
fn compose_publishes_the_http_port_and_checks_readiness_with_the_images_own_probe() {
    let compose: Value = yaml_serde::from_str(&read("docker-compose.yml")).expect("valid YAML");
    let gw = &compose["services"]["mqtt-kafka-gateway"];
    let ports: Vec<&str> = gw["ports"].as_sequence().expect("ports").iter().map(|p| str_of(p, "port")).collect();
    assert!(ports.iter().any(|p| p.ends_with(&format!(":{DEFAULT_PORT}"))), "{ports:?}");

    let hc = &gw["healthcheck"];
    let test: Vec<&str> =
        hc["test"].as_sequence().expect("healthcheck.test as a list").iter().map(|a| str_of(a, "test")).collect();
    assert_eq!(test[0], "CMD", "exec form, no shell needed: {test:?}");
    assert_eq!(test[1..], ["/usr/local/bin/mqtt-kafka-gateway", "probe"], "the binary asks its own /readyz");
    for key in ["interval", "timeout", "retries", "start_period"] {
        assert!(!hc[key].is_null(), "healthcheck.{key}");
    }
    // The image's last stage has the binary there, checks itself the same way, and exposes the port.
    let dockerfile = read("Dockerfile");
    let runtime = dockerfile.rsplit("\nFROM ").next().unwrap();
    assert!(runtime.contains(" /usr/local/bin/mqtt-kafka-gateway\n"), "the binary is copied to {}", test[1]);
    assert!(runtime.contains(r#"CMD ["/usr/local/bin/mqtt-kafka-gateway", "probe"]"#), "HEALTHCHECK uses probe");
    assert!(runtime.contains(&format!("EXPOSE {DEFAULT_PORT}")), "EXPOSE {DEFAULT_PORT}");
}
