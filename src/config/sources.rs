//! Where the configuration comes from, and in which order: built-in defaults, the YAML file, the
//! `GATEWAY_*` variables, then the spec's variables. The file is parsed once (yaml_serde) and handed to
//! figment by a small provider, so the text checked, indexed for line numbers and applied is one and the
//! same. Every problem is located: in the file (line, column) or in the environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::Serialized;
use figment::value::{Dict, Map, Value as FValue};
use figment::{Figment, Metadata, Profile, Provider};
use serde::Deserialize;

use super::raw::RawConfig;
use super::validate::validate;
use super::{Config, ConfigError, Origin, Problem, DEFAULT_CONFIG_PATH, ENV_PREFIX};
use crate::core::yaml_index::{Position, YamlIndex};

/// Where the configuration's environment comes from; tests pass a map instead of the process environment.
pub trait EnvSource {
    fn get(&self, name: &str) -> Option<String>;
    fn all(&self) -> Vec<(String, String)>;
}

/// The process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn all(&self) -> Vec<(String, String)> {
        std::env::vars().collect()
    }
}

impl EnvSource for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }
    fn all(&self) -> Vec<(String, String)> {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Loads and checks the file at `path` with the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with_env(path, &ProcessEnv)
}

/// Loads and checks the file at `path`, overridden by `env`.
pub fn load_with_env(path: &Path, env: &dyn EnvSource) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        problems: vec![Problem {
            path: String::new(),
            message: format!("cannot read the configuration file: {e}"),
            hint: Some(format!(
                "pass the file with --config PATH or GATEWAY_CONFIG (default ./{DEFAULT_CONFIG_PATH}); the repository's config/routes.yaml is a starting point"
            )),
            origin: Origin::File { path: path.to_path_buf(), position: None },
        }],
    })?;
    load_from_str(path, &text, env)
}

/// Checks configuration text as if it had been read from `path`.
pub fn load_from_str(path: &Path, text: &str, env: &dyn EnvSource) -> Result<Config, ConfigError> {
    let fail = |problems| ConfigError { file: path.to_path_buf(), problems };
    let file_problem = |key: &str, message: String, hint: Option<String>, position: Option<Position>| Problem {
        path: key.to_string(),
        message,
        hint,
        origin: Origin::File { path: path.to_path_buf(), position },
    };

    // Syntax first: yaml_serde gives line and column.
    let document: yaml_serde::Value = match yaml_serde::from_str(text) {
        Ok(yaml_serde::Value::Null) => yaml_serde::Value::Mapping(Default::default()),
        Ok(v) => v,
        Err(e) => {
            let position = e.location().map(|l| Position { line: l.line(), column: l.column() });
            return Err(fail(vec![file_problem(
                "",
                format!("YAML syntax error: {e}"),
                Some("check indentation and quoting; quote regexes and filters that contain ': ', '#' or '{'".into()),
                position,
            )]));
        }
    };
    if !document.is_mapping() {
        return Err(fail(vec![file_problem(
            "",
            "the file must be a mapping with keys such as `mqtt`, `kafka` and `routes`".into(),
            None,
            Some(Position { line: 1, column: 1 }),
        )]));
    }
    let index = YamlIndex::build(text);

    let figment = Figment::new()
        .merge(YamlDocument { path: path.to_path_buf(), document })
        .merge(prefixed_env(env))
        .merge(spec_env(env));
    let merged: Dict = match figment.extract::<Dict>() {
        Ok(d) => d,
        Err(e) => return Err(fail(vec![file_problem("", e.to_string(), None, None)])),
    };

    let locate = |key: &str| -> Origin {
        let from_env = figment
            .find_metadata(&figment_path(key))
            .is_some_and(|m| m.source.as_ref().is_none_or(|s| !matches!(s, figment::Source::File(_))));
        if from_env {
            Origin::Environment
        } else {
            Origin::File { path: path.to_path_buf(), position: index.locate(key) }
        }
    };
    let mut problems = Vec::new();
    let raw = deserialize_sections(&merged, &locate, &mut problems);
    let Some(mut raw) = raw else {
        return Err(fail(problems));
    };

    // The spec's two route variables: lists cannot be indexed from the environment (Figment#113).
    let mut env_route_overrides = false;
    if let Some(first) = raw.routes.first_mut() {
        if let Some(topic) = env.get("KAFKA_TOPIC").filter(|s| !s.is_empty()) {
            first.topic = topic;
            env_route_overrides = true;
        }
        if let Some(pattern) = env.get("MQTT_TOPIC_PATTERN").filter(|s| !s.is_empty()) {
            if pattern != first.filter {
                // The fallbacks were written for the old filter and would subscribe something unrelated.
                first.filter = pattern;
                first.fallback_filters.clear();
                env_route_overrides = true;
            }
        }
    }
    let config = validate(
        path,
        raw,
        &|key: &str| {
            if env_route_overrides && (key == "routes[0].topic" || key == "routes[0].filter") {
                Origin::Environment
            } else {
                locate(key)
            }
        },
        &mut problems,
    );
    match config {
        Some(c) if problems.is_empty() => Ok(c),
        _ => Err(fail(problems)),
    }
}

/// The keys of the file that `env` overrides, each with its variable: an edit of one of them in the file
/// changes nothing while the variable is set.
fn overridden_keys(env: &dyn EnvSource) -> Vec<(Vec<String>, String)> {
    let mut keys = Vec::new();
    for (var, path) in SPEC_VARS {
        if env.get(var).is_some_and(|v| !v.is_empty()) {
            keys.push((path.iter().map(|p| p.to_string()).collect(), var.to_string()));
        }
    }
    for (var, path) in [("KAFKA_TOPIC", ["routes", "0", "topic"]), ("MQTT_TOPIC_PATTERN", ["routes", "0", "filter"])] {
        if env.get(var).is_some_and(|v| !v.is_empty()) {
            keys.push((path.iter().map(|p| p.to_string()).collect(), var.to_string()));
        }
    }
    for (name, _) in env.all() {
        if let Some(parts) = prefixed_key(&name) {
            keys.push((parts, name));
        }
    }
    keys
}

/// The keys `env` overrides whose value differs between the file texts `old` and `new`, said as
/// `key (VARIABLE)`: the edit has no effect, and a reload says so.
pub fn edited_overrides(old: &str, new: &str, env: &dyn EnvSource) -> Vec<String> {
    let parse = |text: &str| yaml_serde::from_str::<yaml_serde::Value>(text).unwrap_or(yaml_serde::Value::Null);
    let (old, new) = (parse(old), parse(new));
    overridden_keys(env)
        .into_iter()
        .filter(|(path, _)| lookup(&old, path) != lookup(&new, path))
        .map(|(path, var)| format!("{} ({var})", dotted(&path)))
        .collect()
}

/// `["routes", "0", "topic"]` → `routes[0].topic`.
fn dotted(path: &[String]) -> String {
    let mut key = String::new();
    for part in path {
        if part.parse::<usize>().is_ok() {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(part);
        }
    }
    key
}

fn lookup<'a>(document: &'a yaml_serde::Value, path: &[String]) -> Option<&'a yaml_serde::Value> {
    let mut at = document;
    for part in path {
        at = match (at, part.parse::<usize>()) {
            (yaml_serde::Value::Sequence(items), Ok(i)) => items.get(i)?,
            (yaml_serde::Value::Mapping(map), _) => map.get(part.as_str())?,
            _ => return None,
        };
    }
    Some(at)
}

/// The key path a `GATEWAY_*` variable sets, or `None` if it sets none.
fn prefixed_key(name: &str) -> Option<Vec<String>> {
    let rest = name.strip_prefix(ENV_PREFIX)?;
    // GATEWAY_CONFIG names the file itself (the --config flag), it is not a key in it.
    if is_service_link(rest) || rest == "CONFIG" {
        return None;
    }
    let mut parts: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
    if parts.iter().any(String::is_empty) {
        return None;
    }
    if parts.len() >= 3 && parts[0] == "kafka" && parts[1] == "properties" {
        let prop = parts[2..].join(".").replace('_', ".");
        parts.truncate(2);
        parts.push(prop);
    }
    Some(parts)
}

/// `routes[1].device_id` → `routes.1.device_id`, figment's spelling.
fn figment_path(key: &str) -> String {
    key.replace('[', ".").replace(']', "")
}

/// The parsed YAML document as a figment provider. We parse the text ourselves (instead of
/// `figment::providers::Yaml::file`) so that the text indexed for line numbers, the text checked and the
/// text applied are one and the same, even if the file changes underneath, and because figment's YAML
/// support is built on the archived serde_yaml.
struct YamlDocument {
    path: PathBuf,
    document: yaml_serde::Value,
}

impl Provider for YamlDocument {
    fn metadata(&self) -> Metadata {
        Metadata::from("configuration file", figment::Source::File(self.path.clone()))
    }
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Serialized::defaults(&self.document).data()
    }
}

/// `value` under the key path `path` (`["kafka", "sasl", "password"]`), as a dict to merge.
fn nested<K: AsRef<str>>(path: &[K], value: FValue) -> Dict {
    match path.iter().rev().fold(value, |acc, key| FValue::from(Dict::from([(key.as_ref().to_string(), acc)]))) {
        FValue::Dict(_, d) => d,
        _ => Dict::new(),
    }
}

/// Keys whose value is text whatever it looks like: parsed TOML-style, a password `0123` would become the
/// number 123, and a librdkafka property `1.10` the number 1.1.
fn keeps_text(parts: &[String]) -> bool {
    const TEXT: [&str; 14] = [
        "url",
        "password",
        "client_secret",
        "key_password",
        "username",
        "client_id",
        "broker",
        "bootstrap_servers",
        "mechanism",
        "security_protocol",
        "scope",
        "token_endpoint_url",
        "shared_group",
        "protocol",
    ];
    let last = parts.last().map(String::as_str).unwrap_or_default();
    (parts.len() >= 3 && parts[0] == "kafka" && parts[1] == "properties")
        || TEXT.contains(&last)
        || last.ends_with("_file")
}

/// Kubernetes gives every pod `<SERVICE>_PORT`, `<SERVICE>_PORT_<n>_TCP...`, `<SERVICE>_SERVICE_HOST` and
/// `<SERVICE>_SERVICE_PORT...` for each Service of its namespace: a Service named `gateway` would otherwise
/// stop the start with an unknown key. No configuration key is named like them.
fn is_service_link(rest: &str) -> bool {
    rest == "PORT" || rest.starts_with("PORT_") || rest.starts_with("SERVICE_HOST") || rest.starts_with("SERVICE_PORT")
}

/// `GATEWAY_A__B=v` → `a.b = v`; under `kafka.properties`, `_` becomes `.`.
fn prefixed_env(env: &dyn EnvSource) -> Serialized<Dict> {
    let mut dict = Dict::new();
    for (name, value) in env.all() {
        let Some(parts) = prefixed_key(&name) else { continue };
        let parsed: FValue = if keeps_text(&parts) {
            FValue::from(value.clone())
        } else {
            value.parse().unwrap_or_else(|_| FValue::from(value.clone()))
        };
        dict = merge_dicts(dict, nested(&parts, parsed));
    }
    Serialized::defaults(dict)
}

fn merge_dicts(mut base: Dict, other: Dict) -> Dict {
    for (k, v) in other {
        match (base.remove(&k), v) {
            (Some(FValue::Dict(_, a)), FValue::Dict(_, b)) => {
                base.insert(k, FValue::from(merge_dicts(a, b)));
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
    base
}

/// The spec's variables and the short ones for credentials, and the keys they set.
const SPEC_VARS: [(&str, &[&str]); 13] = [
    ("MQTT_BROKER", &["mqtt", "broker"]),
    ("KAFKA_BOOTSTRAP_SERVERS", &["kafka", "bootstrap_servers"]),
    ("MQTT_USERNAME", &["mqtt", "username"]),
    ("MQTT_PASSWORD", &["mqtt", "password"]),
    ("MQTT_PASSWORD_FILE", &["mqtt", "password_file"]),
    ("KAFKA_SASL_USERNAME", &["kafka", "sasl", "username"]),
    ("KAFKA_SASL_PASSWORD", &["kafka", "sasl", "password"]),
    ("KAFKA_SASL_PASSWORD_FILE", &["kafka", "sasl", "password_file"]),
    ("KAFKA_TLS_KEY_PASSWORD", &["kafka", "tls", "key_password"]),
    ("SCHEMA_REGISTRY_URL", &["schema_registry", "url"]),
    ("SCHEMA_REGISTRY_USERNAME", &["schema_registry", "username"]),
    ("SCHEMA_REGISTRY_PASSWORD", &["schema_registry", "password"]),
    ("SCHEMA_REGISTRY_PASSWORD_FILE", &["schema_registry", "password_file"]),
];

/// The spec's variables and the short ones for credentials, taken as plain strings (a password of
/// digits stays a string).
fn spec_env(env: &dyn EnvSource) -> Serialized<Dict> {
    let mut dict = Dict::new();
    for (var, path) in SPEC_VARS {
        if let Some(value) = env.get(var).filter(|v| !v.is_empty()) {
            dict = merge_dicts(dict, nested(path, FValue::from(value)));
        }
    }
    Serialized::defaults(dict)
}

fn deserialize_sections(
    merged: &Dict,
    locate: &dyn Fn(&str) -> Origin,
    problems: &mut Vec<Problem>,
) -> Option<RawConfig> {
    const SECTIONS: [&str; 11] = [
        "mqtt",
        "kafka",
        "routes",
        "shutdown",
        "log",
        "reload",
        "http",
        "replicas",
        "schema_registry",
        "spool",
        "downlinks",
    ];
    for key in merged.keys() {
        if !SECTIONS.contains(&key.as_str()) {
            problems.push(Problem {
                path: key.clone(),
                message: format!("unknown key `{key}`"),
                hint: Some(format!("top-level keys are: {}", SECTIONS.join(", "))),
                origin: locate(key),
            });
        }
    }
    let mut raw = RawConfig::default();
    let before = problems.len();
    macro_rules! section {
        ($name:literal, $field:ident) => {
            if let Some(v) = merged.get($name) {
                if let Some(parsed) = from_value(v, $name, locate, problems) {
                    raw.$field = parsed;
                }
            }
        };
    }
    section!("mqtt", mqtt);
    section!("kafka", kafka);
    section!("shutdown", shutdown);
    section!("log", log);
    section!("reload", reload);
    section!("http", http);
    section!("replicas", replicas);
    section!("schema_registry", schema_registry);
    section!("spool", spool);
    if let Some(routes) = list(merged, "routes", "routes", locate, problems) {
        raw.routes = routes;
    }
    if let Some(downlinks) = list(merged, "downlinks", "downlinks", locate, problems) {
        raw.downlinks = downlinks;
    }
    (problems.len() == before).then_some(raw)
}

/// A list section, item by item, so that each problem names its item.
fn list<T: for<'de> Deserialize<'de>>(
    merged: &Dict,
    key: &str,
    what: &str,
    locate: &dyn Fn(&str) -> Origin,
    problems: &mut Vec<Problem>,
) -> Option<Vec<T>> {
    match merged.get(key)? {
        FValue::Array(_, items) => Some(
            items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| from_value(item, &format!("{key}[{i}]"), locate, problems))
                .collect(),
        ),
        _ => {
            problems.push(Problem {
                path: key.into(),
                message: format!("must be a list of {what}"),
                hint: Some("start each item with `- name: ...`".into()),
                origin: locate(key),
            });
            None
        }
    }
}

fn from_value<T: for<'de> Deserialize<'de>>(
    value: &FValue,
    at: &str,
    locate: &dyn Fn(&str) -> Origin,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let path = if inner == "." || inner.is_empty() {
                at.to_string()
            } else if inner.starts_with('[') {
                format!("{at}{inner}")
            } else {
                format!("{at}.{inner}")
            };
            let message = e.into_inner().to_string();
            let hint = if message.contains("found `buffer_messages`") {
                Some("mqtt.buffer_messages was replaced by mqtt.buffer_bytes (default 33554432): the buffer is bounded by bytes, and a full buffer now pauses reading instead of dropping QoS 0 messages".to_string())
            } else if message.contains("unknown field") {
                Some("remove the key or fix its spelling; the README lists every key".to_string())
            } else if message.contains("missing field") {
                Some("add the key; see the README's configuration reference".to_string())
            } else {
                None
            };
            problems.push(Problem { path: path.clone(), message, hint, origin: locate(&path) });
            None
        }
    }
}
