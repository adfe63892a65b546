//! Record values in a Schema Registry's wire format (`routes[].encoding`): the value a route writes (the
//! spec's envelope, or the raw payload), read as JSON and written by a schema the registry holds.
//!
//! - [`avro`]: JSON into Avro binary, by the schema; [`protobuf`]: JSON into a Protobuf message, by the
//!   proto3 JSON mapping; JSON Schema: the JSON as it is, validated.
//! - The wire format is Confluent's: the magic byte 0, the schema id as 4 bytes big-endian, for Protobuf
//!   the message's index path, then the encoded value. The id also travels in the `schema_id` header.
//! - A value that does not fit is a [`Misfit`] naming the field path, what the schema expects and what
//!   was found: the message goes to the dead-letter topic with that reason, never out unencoded.
//!
//! Pure: the schemas come in as text (the registry edge fetches them) and are compiled here.

pub mod avro;
pub mod json;
pub mod misfit;
pub mod protobuf;

use std::fmt;
use std::path::PathBuf;

use serde_json::Value;

use crate::core::envelope::Record;
use crate::core::routing::template::{TopicTemplate, Values};
pub use misfit::Misfit;

/// The header that carries the schema id a record was encoded with.
pub const HEADER_SCHEMA_ID: &str = "schema_id";

/// `routes[].encoding.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncodingKind {
    /// The value as JSON text, as before there was a registry (the default).
    Json,
    Avro,
    Protobuf,
    /// JSON, validated by the registry's JSON Schema and framed with its id.
    JsonSchema,
}

impl EncodingKind {
    pub const ALL: [EncodingKind; 4] =
        [EncodingKind::Json, EncodingKind::Avro, EncodingKind::Protobuf, EncodingKind::JsonSchema];

    pub fn as_str(self) -> &'static str {
        match self {
            EncodingKind::Json => "json",
            EncodingKind::Avro => "avro",
            EncodingKind::Protobuf => "protobuf",
            EncodingKind::JsonSchema => "json_schema",
        }
    }

    /// The registry's `schemaType` for it (`None` for plain JSON, which needs no registry).
    pub fn registry_type(self) -> Option<&'static str> {
        match self {
            EncodingKind::Json => None,
            EncodingKind::Avro => Some("AVRO"),
            EncodingKind::Protobuf => Some("PROTOBUF"),
            EncodingKind::JsonSchema => Some("JSON"),
        }
    }

    /// The kind a registry's `schemaType` names (absent means Avro, as the registry's API says).
    pub fn from_registry_type(t: Option<&str>) -> Option<EncodingKind> {
        match t.unwrap_or("AVRO") {
            "AVRO" => Some(EncodingKind::Avro),
            "PROTOBUF" => Some(EncodingKind::Protobuf),
            "JSON" => Some(EncodingKind::JsonSchema),
            _ => None,
        }
    }
}

impl fmt::Display for EncodingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which version of a subject a route encodes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemaVersion {
    /// The newest, looked up again on reload and every `schema_registry.refresh_secs`.
    Latest,
    Number(u32),
}

impl fmt::Display for SchemaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaVersion::Latest => f.write_str("latest"),
            SchemaVersion::Number(n) => write!(f, "{n}"),
        }
    }
}

/// A schema file to register under the subject when the registry has none there (development setups).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaFile {
    pub path: PathBuf,
    pub text: String,
}

/// A route's `encoding`, checked.
#[derive(Debug, Clone)]
pub struct EncodingRule {
    pub kind: EncodingKind,
    /// The subject: `{topic}` is the record's Kafka topic, and the topic template's placeholders work
    /// too. Default `{topic}-value` (the registry's TopicNameStrategy).
    pub subject: TopicTemplate,
    pub version: SchemaVersion,
    /// Protobuf: the message to encode (default: the schema's first).
    pub message: Option<String>,
    pub schema_file: Option<SchemaFile>,
    /// The subject when it is the same for every record (see [`EncodingRule::static_subject`]), worked
    /// out once so that a record does not render it.
    pub fixed_subject: Option<String>,
}

/// The placeholder of a subject that stands for the record's rendered Kafka topic.
pub const TOPIC_PLACEHOLDER: &str = "topic";

impl EncodingRule {
    /// The subject of a record written to `topic`.
    pub fn subject_for(&self, topic: &str, values: &Values<'_>) -> Result<std::borrow::Cow<'_, str>, String> {
        if let Some(s) = &self.fixed_subject {
            return Ok(std::borrow::Cow::Borrowed(s));
        }
        let group = |name: &str| if name == TOPIC_PLACEHOLDER { Some(topic) } else { (values.group)(name) };
        let v = Values { topic: values.topic, device_id: values.device_id, group: &group };
        self.subject.render(&v).map(std::borrow::Cow::Owned).map_err(|e| e.replace("topic template", "subject"))
    }

    /// The subject when it is the same for every record: the route's topic is fixed and the subject has
    /// no placeholder but `{topic}`. Such subjects are resolved when the configuration loads; the others
    /// when a record first needs them.
    pub fn static_subject(&self, route_topic: &TopicTemplate) -> Option<String> {
        let only_topic = self.subject.groups().all(|g| g == TOPIC_PLACEHOLDER);
        let fixed = self.subject.source().chars().filter(|&c| c == '{').count() == self.subject.groups().count();
        if !(route_topic.is_static() && only_topic && fixed) {
            return None;
        }
        let none = |_: &str| None;
        let values = Values { topic: "", device_id: "", group: &none };
        let topic = route_topic.render(&values).ok()?;
        self.subject_for(&topic, &values).ok().map(std::borrow::Cow::into_owned)
    }
}

/// Why a record could not be encoded (a metric label; the `dlq_reason` has the details).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The value is not JSON (a raw route's payload), so there is nothing to convert.
    NotJson,
    /// The value does not fit the schema.
    Misfit,
    /// No usable schema: the subject or version is not in the registry, or does not compile.
    NoSchema,
}

impl Failure {
    pub const ALL: [Failure; 3] = [Failure::NotJson, Failure::Misfit, Failure::NoSchema];

    pub fn as_str(self) -> &'static str {
        match self {
            Failure::NotJson => "not_json",
            Failure::Misfit => "misfit",
            Failure::NoSchema => "no_schema",
        }
    }
}

/// A record that could not be encoded: why (for counting) and the `dlq_reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeError {
    pub failure: Failure,
    pub reason: String,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// A schema as the registry answered it, compiled: ready to encode.
pub struct Compiled {
    pub id: u32,
    /// The id as the `schema_id` header's text, written once rather than per record.
    id_text: Vec<u8>,
    pub subject: String,
    pub version: u32,
    pub kind: EncodingKind,
    schema: Schema,
}

enum Schema {
    Avro(avro::AvroSchema),
    Protobuf(protobuf::ProtoSchema),
    Json(jsonschema::Validator),
}

impl fmt::Debug for Compiled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compiled")
            .field("id", &self.id)
            .field("subject", &self.subject)
            .field("version", &self.version)
            .field("kind", &self.kind)
            .finish()
    }
}

/// A schema the registry holds, as text, with the texts of those it references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaText {
    pub id: u32,
    pub subject: String,
    pub version: u32,
    pub kind: EncodingKind,
    pub text: String,
    /// `(name, text)`: for Protobuf the import name, for Avro the referenced named type's schema;
    /// dependencies first.
    pub references: Vec<(String, String)>,
}

impl Compiled {
    /// Compiles `schema`; `message` picks the Protobuf message. Err: why it cannot be used, in one line.
    pub fn compile(schema: &SchemaText, message: Option<&str>) -> Result<Compiled, String> {
        let compiled = match schema.kind {
            EncodingKind::Avro => {
                let refs: Vec<&str> = schema.references.iter().map(|(_, t)| t.as_str()).collect();
                Schema::Avro(avro::AvroSchema::parse(&schema.text, &refs)?)
            }
            EncodingKind::Protobuf => {
                let refs: Vec<(&str, &str)> = schema.references.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
                Schema::Protobuf(protobuf::ProtoSchema::parse(&schema.text, &refs, message)?)
            }
            EncodingKind::JsonSchema => {
                let value: Value =
                    serde_json::from_str(&schema.text).map_err(|e| format!("not a JSON Schema (not JSON: {e})"))?;
                let validator = jsonschema::options()
                    .should_validate_formats(true)
                    .build(&value)
                    .map_err(|e| format!("not a valid JSON Schema: {e}"))?;
                Schema::Json(validator)
            }
            EncodingKind::Json => return Err("plain JSON needs no schema".into()),
        };
        Ok(Compiled {
            id: schema.id,
            id_text: schema.id.to_string().into_bytes(),
            subject: schema.subject.clone(),
            version: schema.version,
            kind: schema.kind,
            schema: compiled,
        })
    }

    /// What the schema is, for logs and `explain`: `avro schema 7 (readings-value v2)`.
    pub fn label(&self) -> String {
        format!("{} schema {} ({} v{})", self.kind, self.id, self.subject, self.version)
    }

    /// The Protobuf message encoded, if this is a Protobuf schema.
    pub fn message_name(&self) -> Option<&str> {
        match &self.schema {
            Schema::Protobuf(p) => Some(p.message_name()),
            _ => None,
        }
    }

    /// `json`, the value a route writes, in the wire format; or why it does not fit, for `dlq_reason`.
    pub fn encode(&self, json: &[u8]) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(json.len() + 8);
        out.push(0);
        out.extend_from_slice(&self.id.to_be_bytes());
        let not_json = |e: serde_json::Error| EncodeError {
            failure: Failure::NotJson,
            reason: format!("{}: the value is not JSON ({e}), so it cannot be encoded", self.label()),
        };
        let fit = match &self.schema {
            Schema::Avro(s) => {
                // The borrowed tree: a serde_json::Value would cost several times the encoding.
                let value = json::Json::parse(json).map_err(not_json)?;
                s.encode(&value, &mut out).map_err(|m| m.to_string())
            }
            Schema::Protobuf(s) => {
                s.write_indexes(&mut out);
                // The borrowed tree and the descriptor walked directly; prost-reflect's dynamic message
                // only for what that path does not take (well-known types), and to say why a value
                // does not fit.
                let value = json::Json::parse(json).map_err(not_json)?;
                s.encode_json(&value, &mut out).map_err(|m| m.to_string())
            }
            Schema::Json(v) => {
                let value: Value = serde_json::from_slice(json).map_err(not_json)?;
                let budget = crate::core::routing::schema::REASON_MAX_CHARS - self.label().len() - 2;
                match crate::core::routing::schema::violations_of(v, &value, budget) {
                    None => {
                        out.extend_from_slice(json);
                        Ok(())
                    }
                    Some(violations) => Err(violations),
                }
            }
        };
        fit.map(|()| out)
            .map_err(|why| EncodeError { failure: Failure::Misfit, reason: format!("{}: {why}", self.label()) })
    }

    /// Encodes `record`'s value in place and adds the `schema_id` header; Err: the `dlq_reason`.
    pub fn apply(&self, record: &mut Record) -> Result<(), EncodeError> {
        record.value = self.encode(&record.value)?;
        record.headers.push((std::borrow::Cow::Borrowed(HEADER_SCHEMA_ID), self.id_text.clone()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(kind: EncodingKind, text: &str, message: Option<&str>) -> Compiled {
        let schema = SchemaText {
            id: 258,
            subject: "s-value".into(),
            version: 3,
            kind,
            text: text.into(),
            references: Vec::new(),
        };
        Compiled::compile(&schema, message).unwrap()
    }

    #[test]
    fn the_wire_format_is_magic_byte_id_then_the_value() {
        let avro = compiled(
            EncodingKind::Avro,
            r#"{"type": "record", "name": "R", "fields": [{"name": "n", "type": "long"}]}"#,
            None,
        );
        assert_eq!(avro.encode(br#"{"n": 1}"#).unwrap(), [0, 0, 0, 1, 2, 2], "magic, id 258 big-endian, zigzag 1");
        assert_eq!(avro.label(), "avro schema 258 (s-value v3)");
        let proto = "syntax = \"proto3\";\nmessage A { int64 x = 1; }\nmessage B { int64 n = 1; }\n";
        let b = compiled(EncodingKind::Protobuf, proto, Some("B"));
        assert_eq!(b.encode(br#"{"n": 1}"#).unwrap(), [0, 0, 0, 1, 2, 2, 2, 8, 1], "indexes [1], then field 1 = 1");
        let a = compiled(EncodingKind::Protobuf, proto, None);
        assert_eq!(a.encode(br#"{"x": 1}"#).unwrap(), [0, 0, 0, 1, 2, 0, 8, 1], "the first message: index byte 0");
        let json =
            compiled(EncodingKind::JsonSchema, r#"{"type": "object", "properties": {"n": {"type": "integer"}}}"#, None);
        assert_eq!(json.encode(br#"{"n":1}"#).unwrap(), b"\x00\x00\x00\x01\x02{\"n\":1}", "the JSON as written");
    }

    #[test]
    fn a_misfit_names_the_schema_and_the_field() {
        let avro = compiled(
            EncodingKind::Avro,
            r#"{"type": "record", "name": "R", "fields": [{"name": "n", "type": "long"}]}"#,
            None,
        );
        let e = avro.encode(br#"{"n": "one"}"#).unwrap_err().reason;
        assert!(e.starts_with("avro schema 258 (s-value v3): /n: expected") && e.contains("string"), "{e}");
        let e = avro.encode(b"not json").unwrap_err();
        assert!(e.failure == Failure::NotJson && e.reason.contains("not JSON"), "{e}");
        let json = compiled(EncodingKind::JsonSchema, r#"{"properties": {"n": {"type": "integer"}}}"#, None);
        let e = json.encode(br#"{"n": "one"}"#).unwrap_err().reason;
        assert!(e.contains("json_schema schema 258") && e.contains("/n: ") && e.contains("(type)"), "{e}");
        let mut record = Record { topic: "t".into(), key: None, value: br#"{"n": 5}"#.to_vec(), headers: Vec::new() };
        avro.apply(&mut record).unwrap();
        assert_eq!(record.headers, [(std::borrow::Cow::Borrowed(HEADER_SCHEMA_ID), b"258".to_vec())]);
    }

    #[test]
    fn a_schema_of_another_kind_or_broken_is_refused_in_one_line() {
        let text = |kind, t: &str| SchemaText {
            id: 1,
            subject: "s".into(),
            version: 1,
            kind,
            text: t.into(),
            references: Vec::new(),
        };
        for (kind, t) in [
            (EncodingKind::Avro, "syntax = \"proto3\";"),
            (EncodingKind::Avro, r#"{"type": "record", "name": "R", "fields": [{"name": "n", "type": "nope"}]}"#),
            (EncodingKind::Protobuf, r#"{"type": "string"}"#),
            (EncodingKind::JsonSchema, r#"{"type": "strin"}"#),
            (EncodingKind::JsonSchema, "not json"),
        ] {
            let e = Compiled::compile(&text(kind, t), None).unwrap_err();
            assert!(!e.is_empty() && !e.contains('\n'), "{kind}: {e}");
        }
        assert!(Compiled::compile(&text(EncodingKind::Protobuf, "syntax = \"proto3\";\nmessage A {}\n"), Some("Nope"))
            .is_err());
    }
}
