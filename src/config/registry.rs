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
        (true, Some(subject)) => Ok(Some(Arc::new(EncodingRule {
            kind: spec.kind,
            subject,
            version,
            message: spec.message.clone(),
            schema_file,
        }))),
        _ => Err(()),
    }
}
