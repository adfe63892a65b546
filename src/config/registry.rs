//! `schema_registry` and the routes' `encoding`, checked offline: the registry's address, credentials and
//! TLS files; per route the encoding type, the subject template, the version, the Protobuf message and a
//! `schema_file`, which must compile. Whether the registry answers, and has the subjects, is `check`'s
//! and the registry edge's business.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

use super::raw::{RawRoute, RawSchemaRegistry};
use super::security;
use super::validate::Problems;
use super::RegistrySettings;
use crate::core::encoding::TOPIC_PLACEHOLDER;
use crate::core::encoding::{Compiled, EncodingKind, EncodingRule, SchemaFile, SchemaText, SchemaVersion};
use crate::core::routing::schema::resolve;
use crate::core::routing::template::TopicTemplate;

/// `schema_registry`, checked; `None` when no URL is set. `needs`: the index of the first route whose
/// encoding needs a registry.
pub(super) fn settings(r: &RawSchemaRegistry, needs: Option<usize>, p: &mut Problems<'_>) -> Option<RegistrySettings> {
    let Some(url) = r.url.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
        if let Some(i) = needs {
            p.add(
                &format!("routes[{i}].encoding"),
                "needs a Schema Registry, and schema_registry.url is not set".into(),
                Some("set schema_registry.url (env SCHEMA_REGISTRY_URL), or use encoding: json"),
            );
        }
        return None;
    };
    // Credentials belong in username and password (a URL is printed in logs and errors); and the URL
    // itself is not repeated when it holds some.
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest).split('/').next().unwrap_or_default();
    if authority.contains('@') {
        p.add(
            "schema_registry.url",
            "must not hold credentials".into(),
            Some("use schema_registry.username and password (or password_file); the URL is logged"),
        );
        return None;
    }
    let https = match url.split_once("://") {
        Some(("http", rest)) if !rest.is_empty() => false,
        Some(("https", rest)) if !rest.is_empty() => true,
        _ => {
            p.add(
                "schema_registry.url",
                format!("`{url}` is not an http:// or https:// URL"),
                Some("e.g. http://registry:8081"),
            );
            return None;
        }
    };
    let tls = security::tls_files("schema_registry", &r.tls, https, p);
    let password = security::secret("schema_registry.password", r.password.as_ref(), r.password_file.as_deref(), p);
    let credentials = match (&r.username, password) {
        (Some(user), Some(password)) => Some((user.0.clone(), password)),
        (None, None) => None,
        (Some(_), None) => {
            p.add(
                "schema_registry.password",
                "a username without a password".into(),
                Some("set schema_registry.password or password_file (env SCHEMA_REGISTRY_PASSWORD)"),
            );
            None
        }
        (None, Some(_)) => {
            p.add("schema_registry.username", "a password without a username".into(), None);
            None
        }
    };
    if r.refresh_secs > 86_400 {
        p.add("schema_registry.refresh_secs", format!("{} is out of range", r.refresh_secs), Some("use 0 to 86400"));
    }
    if !(1..=300).contains(&r.timeout_secs) {
        p.add("schema_registry.timeout_secs", format!("{} is out of range", r.timeout_secs), Some("use 1 to 300"));
    }
    Some(RegistrySettings {
        url: url.trim_end_matches('/').to_string(),
        credentials,
        tls,
        refresh: Duration::from_secs(r.refresh_secs),
        timeout: Duration::from_secs(r.timeout_secs.clamp(1, 300)),
    })
}

/// `routes[i].encoding`, checked; `Ok(None)` for plain JSON.
pub(super) fn route_encoding(
    at: &str,
    r: &RawRoute,
    topic: Option<&TopicTemplate>,
    regex: Option<&Regex>,
    fallback_regex: Option<&Option<Regex>>,
    config_dir: &Path,
    p: &mut Problems<'_>,
) -> Result<Option<Arc<EncodingRule>>, ()> {
    let Some(raw) = &r.encoding else { return Ok(None) };
    let spec = raw.spec();
    let key = format!("{at}.encoding");
    if spec.kind == EncodingKind::Json {
        if spec.subject.is_some() || spec.version.is_some() || spec.message.is_some() || spec.schema_file.is_some() {
            p.add(
                &key,
                "subject, version, message and schema_file apply to registry encodings".into(),
                Some("use type: avro, protobuf or json_schema, or remove them"),
            );
            return Err(());
        }
        return Ok(None);
    }
    let mut ok = true;
    let subject_source = spec.subject.clone().unwrap_or_else(|| format!("{{{TOPIC_PLACEHOLDER}}}-value"));
    let subject = match TopicTemplate::parse(&subject_source) {
        Ok(t) => {
            for g in t.groups().filter(|g| *g != TOPIC_PLACEHOLDER) {
                let known = |re: &Regex| re.capture_names().any(|n| n == Some(g));
                if !regex.is_some_and(known) && !matches!(fallback_regex, Some(Some(f)) if known(f)) {
                    p.add(
                        &format!("{key}.subject"),
                        format!("placeholder `{{{g}}}` is neither {{topic}} nor a named group of device_id.regex"),
                        Some("use {topic} (the record's Kafka topic), {N}, {device_id} or a named group"),
                    );
                    ok = false;
                }
            }
            Some(t)
        }
        Err(e) => {
            p.add(
                &format!("{key}.subject"),
                e.replace("topic template", "subject"),
                Some("e.g. '{topic}-value' or 'readings-value'"),
            );
            None
        }
    };
    let version = match spec.version.as_ref().map(|v| v.0.trim()) {
        None | Some("latest") => SchemaVersion::Latest,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if n >= 1 => SchemaVersion::Number(n),
            _ => {
                p.add(
                    &format!("{key}.version"),
                    format!("`{v}` is not a version"),
                    Some("use latest, or a number from 1"),
                );
                ok = false;
                SchemaVersion::Latest
            }
        },
    };
    if spec.message.is_some() && spec.kind != EncodingKind::Protobuf {
        p.add(&format!("{key}.message"), "only applies to protobuf".into(), Some("remove `message`"));
        ok = false;
    }
    let schema_file = match &spec.schema_file {
        None => None,
        Some(configured) => {
            let path = resolve(config_dir, configured);
            match std::fs::read_to_string(&path) {
                Err(e) => {
                    p.add(
                        &format!("{key}.schema_file"),
                        format!("cannot read `{}`: {e}", path.display()),
                        Some("the path is relative to the configuration file's directory"),
                    );
                    ok = false;
                    None
                }
                Ok(text) => {
                    let probe = SchemaText {
                        id: 0,
                        subject: subject_source.clone(),
                        version: 0,
                        kind: spec.kind,
                        text: text.clone(),
                        references: Vec::new(),
                    };
                    if let Err(e) = Compiled::compile(&probe, spec.message.as_deref()) {
                        p.add(
                            &format!("{key}.schema_file"),
                            format!("`{}` cannot be used: {e}", path.display()),
                            Some("fix the schema, or leave schema_file out and register it yourself"),
                        );
                        ok = false;
                    }
                    Some(SchemaFile { path, text })
                }
            }
        }
    };
    match (ok, subject) {
        (true, Some(subject)) => {
            let mut rule = EncodingRule {
                kind: spec.kind,
                subject,
                version,
                message: spec.message.clone(),
                schema_file,
                fixed_subject: None,
            };
            rule.fixed_subject = topic.and_then(|t| rule.static_subject(t));
            Ok(Some(Arc::new(rule)))
        }
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use crate::config::{load_from_str, Config, ConfigError};
    use crate::core::encoding::{EncodingKind, SchemaVersion};

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: BTreeMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        load_from_str(Path::new("routes.yaml"), text, &env)
    }

    fn problems(text: &str) -> String {
        load(text, &[]).unwrap_err().to_string()
    }

    const REGISTRY: &str = "schema_registry:\n  url: http://registry:8081/\n";

    #[test]
    fn the_shorthand_and_the_full_form_give_the_same_defaults() {
        let c = load(&format!("{REGISTRY}routes:\n  - name: a\n    filter: a/#\n    topic: ta\n    encoding: avro\n  - name: b\n    filter: b/#\n    topic: 'tb.{{1}}'\n    encoding:\n      type: protobuf\n      subject: '{{1}}-value'\n      version: 3\n      message: iot.Reading\n"), &[]).unwrap();
        let r = c.schema_registry.as_ref().unwrap();
        assert_eq!((r.url.as_str(), r.refresh.as_secs(), r.timeout.as_secs()), ("http://registry:8081", 60, 10));
        let routes = c.routes.routes();
        let a = routes[0].encoding.as_ref().unwrap();
        assert_eq!(
            (a.kind, a.version, a.subject.source()),
            (EncodingKind::Avro, SchemaVersion::Latest, "{topic}-value")
        );
        assert_eq!(a.static_subject(&routes[0].topic).as_deref(), Some("ta-value"));
        let b = routes[1].encoding.as_ref().unwrap();
        assert_eq!(
            (b.kind, b.version, b.message.as_deref()),
            (EncodingKind::Protobuf, SchemaVersion::Number(3), Some("iot.Reading"))
        );
        assert_eq!(b.static_subject(&routes[1].topic), None, "a template: resolved when a record needs it");
        let none = |_: &str| None;
        let v = crate::core::routing::template::Values { topic: "b/dev-1/x", device_id: "d", group: &none };
        assert_eq!(b.subject_for("tb.dev-1", &v).unwrap(), "dev-1-value");
        let json = load("routes:\n  - name: a\n    filter: a/#\n    topic: ta\n    encoding: json\n", &[]).unwrap();
        assert!(json.routes.routes()[0].encoding.is_none() && json.schema_registry.is_none());
    }

    #[test]
    fn the_environment_sets_the_registry_and_its_password_stays_hidden() {
        let c = load(
            "routes:\n  - name: a\n    filter: a/#\n    topic: ta\n    encoding: json_schema\n",
            &[
                ("SCHEMA_REGISTRY_URL", "https://sr.example"),
                ("SCHEMA_REGISTRY_USERNAME", "gw"),
                ("SCHEMA_REGISTRY_PASSWORD", "0123"),
            ],
        )
        .unwrap();
        let r = c.schema_registry.unwrap();
        assert_eq!(r.url, "https://sr.example");
        let (user, password) = r.credentials.as_ref().unwrap();
        assert_eq!((user.as_str(), password.expose()), ("gw", "0123"), "digits stay text");
        assert!(!format!("{r:?}").contains("0123"));
        let c = load(&format!("{REGISTRY}routes: []\n"), &[("GATEWAY_SCHEMA_REGISTRY__URL", "http://other:1")]);
        assert!(c.unwrap_err().to_string().contains("no routes"));
    }

    #[test]
    fn every_mistake_is_named_with_its_key() {
        let route = |encoding: &str| {
            format!("{REGISTRY}routes:\n  - name: a\n    filter: a/#\n    topic: ta\n    encoding: {encoding}\n")
        };
        let cases: &[(String, &[&str])] = &[
            (route("thrift"), &["routes[0].encoding", "thrift"]),
            (route("{type: avro, colour: red}"), &["routes[0].encoding", "colour"]),
            (route("{type: avro, version: newest}"), &["routes[0].encoding.version", "newest"]),
            (route("{type: avro, version: 0}"), &["routes[0].encoding.version"]),
            (route("{type: avro, message: X}"), &["routes[0].encoding.message", "only applies to protobuf"]),
            (route("{type: avro, subject: '{kind}-value'}"), &["routes[0].encoding.subject", "{kind}"]),
            (route("{type: json, subject: s}"), &["routes[0].encoding", "registry encodings"]),
            (route("{type: avro, schema_file: missing.avsc}"), &["routes[0].encoding.schema_file", "missing.avsc"]),
            (
                "routes:\n  - name: a\n    filter: a/#\n    topic: ta\n    encoding: avro\n".to_string(),
                &["routes[0].encoding", "schema_registry.url is not set"],
            ),
            ("schema_registry:\n  url: registry:8081\n".to_string(), &["schema_registry.url", "http://"]),
            (
                "schema_registry:\n  url: http://r\n  username: u\n".to_string(),
                &["schema_registry.password", "without a password"],
            ),
            (
                "schema_registry:\n  url: http://r\n  tls: {ca_file: ca.pem}\n".to_string(),
                &["schema_registry.tls", "not a TLS address"],
            ),
            ("schema_registry:\n  url: http://r\n  refresh: 5\n".to_string(), &["schema_registry", "refresh"]),
        ];
        for (text, needles) in cases {
            let p = problems(text);
            for n in *needles {
                assert!(p.contains(n), "{n:?} in:\n{p}\nfor:\n{text}");
            }
        }
    }

    #[test]
    fn a_schema_file_is_compiled_offline() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("bad.avsc"),
            r#"{"type": "record", "name": "R", "fields": [{"name": "a", "type": "nope"}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("good.avsc"),
            r#"{"type": "record", "name": "R", "fields": [{"name": "a", "type": "long"}]}"#,
        )
        .unwrap();
        let text = |file: &str| {
            format!("{REGISTRY}routes:\n  - name: a\n    filter: a/#\n    topic: ta\n    encoding: {{type: avro, schema_file: {file}}}\n")
        };
        let path = dir.path().join("routes.yaml");
        let env = BTreeMap::new();
        let e = load_from_str(&path, &text("bad.avsc"), &env).unwrap_err().to_string();
        assert!(
            e.contains("routes[0].encoding.schema_file") && e.contains("bad.avsc") && e.contains("cannot be used"),
            "{e}"
        );
        let c = load_from_str(&path, &text("good.avsc"), &env).unwrap();
        let rule = c.routes.routes()[0].encoding.clone().unwrap();
        assert!(rule.schema_file.as_ref().unwrap().text.contains("\"long\""));
    }
}
