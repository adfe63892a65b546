//! Payload contracts: a route's JSON Schema (`routes[].schema`), read and compiled once per load of the
//! configuration, and a message's violations in words for its dead letter.
//!
//! - The file is JSON (or YAML, by its extension), its path relative to the configuration file's
//!   directory. The draft comes from its `$schema` (2020-12, 2019-09, 7, 6 or 4); 2020-12 when it has
//!   none. `format` is asserted (a `date-time` that is not one is a violation), as a gateway that stops
//!   bad data should; relative `$ref`s resolve against the schema file; nothing is fetched over the
//!   network.
//! - A file that cannot be read, parsed or compiled is a configuration problem naming the file, the line
//!   and what to fix: at start the gateway does not start, on reload the routes in effect stay.
//! - A violation names the JSON pointer of the offending value and the keyword it fails; every
//!   violation is listed, the whole reason cut at [`REASON_MAX_CHARS`].

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::core::yaml_index::YamlIndex;

/// The longest `dlq_reason` a schema violation gives (then `… and N more`).
pub const REASON_MAX_CHARS: usize = 1024;
/// The longest account of one violation (an `enum` lists its values).
const ONE_MAX_CHARS: usize = 240;

/// A route's compiled schema.
pub struct RouteSchema {
    /// The path as configured, for reasons and logs.
    pub configured: String,
    /// The file read, for reload to watch.
    pub file: PathBuf,
    /// Of the file's bytes: a schema edit changes the route's fingerprint, so a reload applies it.
    pub hash: u64,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for RouteSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteSchema").field("file", &self.file).field("hash", &self.hash).finish()
    }
}

/// Why a schema file cannot be used: the message (with the file and, where known, the line) and a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    pub message: String,
    pub hint: &'static str,
}

/// The file `configured` names, relative to `config_dir` unless absolute.
pub fn resolve(config_dir: &Path, configured: &str) -> PathBuf {
    let p = Path::new(configured);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config_dir.join(p)
    }
}

impl RouteSchema {
    /// Reads and compiles the schema `configured` names.
    pub fn load(config_dir: &Path, configured: &str) -> Result<Self, SchemaError> {
        let file = resolve(config_dir, configured);
        let text = std::fs::read_to_string(&file).map_err(|e| SchemaError {
            message: format!("cannot read `{}`: {e}", file.display()),
            hint: "the path is relative to the configuration file's directory",
        })?;
        let value = parse(&file, &text)?;
        let base = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .with_base_uri(file_uri(&base))
            .with_retriever(LocalFiles)
            .build(&value)
            .map_err(|e| {
                let pointer = e.instance_path().as_str().to_string();
                let line = YamlIndex::build(&text)
                    .locate(&dotted(&pointer))
                    .map(|p| format!(":{}", p.line))
                    .unwrap_or_default();
                let at = if pointer.is_empty() { String::new() } else { format!(" at {pointer}") };
                SchemaError {
                    message: format!(
                        "`{}`{line}: not a valid JSON Schema{at}: {}",
                        file.display(),
                        cut(&e.to_string(), ONE_MAX_CHARS)
                    ),
                    hint: "fix the keyword at that line (drafts 2020-12 and 7 are understood, by the file's $schema)",
                }
            })?;
        Ok(Self { configured: configured.to_string(), file, hash: hash(text.as_bytes()), validator })
    }

    /// `None` if `value` conforms; else every violation, as `dlq_reason` text.
    pub fn violations(&self, value: &Value) -> Option<String> {
        let prefix = format!("schema {}: ", self.configured);
        violations_of(&self.validator, value, REASON_MAX_CHARS - prefix.len()).map(|list| format!("{prefix}{list}"))
    }
}

/// `None` if `value` conforms to `validator`; else every violation (pointer, message, keyword), in at
/// most `budget` characters. Shared by the routes' own schemas and the registry's JSON Schemas.
pub fn violations_of(validator: &jsonschema::Validator, value: &Value, budget: usize) -> Option<String> {
    let mut errors = validator.iter_errors(value).peekable();
    errors.peek()?;
    let mut reason = String::new();
    let mut listed = 0;
    let mut left = 0;
    for e in errors {
        let pointer = e.instance_path().as_str();
        let one = format!(
            "{}: {} ({})",
            if pointer.is_empty() { "/" } else { pointer },
            cut(&e.to_string(), ONE_MAX_CHARS),
            e.kind().keyword()
        );
        if left == 0 && reason.len() + one.len() + 2 <= budget {
            if listed > 0 {
                reason.push_str("; ");
            }
            reason.push_str(&one);
            listed += 1;
        } else {
            left += 1;
        }
    }
    if left > 0 {
        reason.push_str(&format!("; … and {left} more"));
    }
    Some(reason)
}

fn parse(file: &Path, text: &str) -> Result<Value, SchemaError> {
    let yaml = matches!(file.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
    if yaml {
        yaml_serde::from_str(text).map_err(|e| SchemaError {
            message: format!(
                "`{}`{}: not valid YAML: {e}",
                file.display(),
                e.location().map(|l| format!(":{}:{}", l.line(), l.column())).unwrap_or_default()
            ),
            hint: "a schema file is JSON (or YAML, by a .yaml/.yml extension)",
        })
    } else {
        serde_json::from_str(text).map_err(|e| SchemaError {
            message: format!("`{}`:{}:{}: not valid JSON: {e}", file.display(), e.line(), e.column()),
            hint: "a schema file is JSON (or YAML, by a .yaml/.yml extension)",
        })
    }
}

/// A JSON pointer as a key path of [`YamlIndex`]: `/properties/temp/type` → `properties.temp.type`,
/// array indices as `[n]`.
fn dotted(pointer: &str) -> String {
    let mut out = String::new();
    for part in pointer.split('/').skip(1) {
        let part = part.replace("~1", "/").replace("~0", "~");
        if part.parse::<usize>().is_ok() && !out.is_empty() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&part);
        }
    }
    out
}

/// Resolves `$ref`s to other schema files: local files only (never the network), JSON or YAML by
/// extension, paths percent-decoded (a space in a directory name).
struct LocalFiles;

impl jsonschema::Retrieve for LocalFiles {
    fn retrieve(&self, uri: &jsonschema::Uri<String>) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let Some(encoded) = uri.as_str().strip_prefix("file://") else {
            return Err(format!("only local schema files are read, not {uri}").into());
        };
        let encoded = encoded.split(['#', '?']).next().unwrap_or_default();
        let path = PathBuf::from(percent_decode(encoded));
        let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        parse(&path, &text).map_err(|e| e.message.into())
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `file://` and the path, percent-encoded where a URI needs it (a space in a directory name).
fn file_uri(path: &Path) -> String {
    let mut uri = String::from("file://");
    for b in path.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema_in(dir: &Path, name: &str, text: &str) -> Result<RouteSchema, SchemaError> {
        std::fs::write(dir.join(name), text).unwrap();
        RouteSchema::load(dir, name)
    }

    const TELEMETRY: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["temp", "mode"],
  "properties": {
    "temp": {"type": "number", "minimum": -40},
    "mode": {"enum": ["auto", "manual"]},
    "at": {"type": "string", "format": "date-time"},
    "sensors": {"type": "array", "items": {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}}}
  }
}"#;

    #[test]
    fn valid_payloads_pass_and_every_violation_is_named_by_pointer_and_keyword() {
        let dir = tempfile::tempdir().unwrap();
        let s = schema_in(dir.path(), "telemetry.json", TELEMETRY).unwrap();
        assert_eq!(
            s.violations(&json!({"temp": 21.5, "mode": "auto", "at": "2026-12-01T10:00:00Z", "sensors": [{"id": 1}]})),
            None
        );
        let reason = s
            .violations(
                &json!({"temp": "hot", "mode": "turbo", "at": "yesterday", "sensors": [{"id": 1}, {"name": "x"}]}),
            )
            .unwrap();
        for needle in [
            "schema telemetry.json: ",
            "/temp: ",
            "(type)",
            "/mode: ",
            "(enum)",
            "/at: ",
            "(format)",
            "/sensors/1: ",
            "(required)",
        ] {
            assert!(reason.contains(needle), "{needle} in {reason}");
        }
        let root = s.violations(&json!([1])).unwrap();
        assert!(root.contains("/: ") && root.contains("(type)"), "{root}");
    }

    #[test]
    fn draft_7_is_understood_from_its_schema_keyword() {
        let dir = tempfile::tempdir().unwrap();
        // Draft 7's `dependencies` (split in 2020-12) and tuple `items`.
        let s = schema_in(
            dir.path(),
            "d7.json",
            r#"{"$schema": "http://json-schema.org/draft-07/schema#", "dependencies": {"a": ["b"]}, "properties": {"pair": {"items": [{"type": "string"}, {"type": "number"}]}}}"#,
        )
        .unwrap();
        assert_eq!(s.violations(&json!({"a": 1, "b": 2, "pair": ["x", 1]})), None);
        let reason = s.violations(&json!({"a": 1, "pair": [1, "x"]})).unwrap();
        // Tuple `items` is draft 7 only (2020-12 would refuse the schema); `dependencies` reports the
        // missing property as `required`.
        assert!(reason.contains("/pair/0: ") && reason.contains("\"b\" is a required property"), "{reason}");
    }

    #[test]
    fn a_long_list_of_violations_is_cut_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let s = schema_in(dir.path(), "ints.json", r#"{"type": "array", "items": {"type": "integer"}}"#).unwrap();
        let many: Vec<Value> = (0..500).map(|i| json!(format!("not a number {i}"))).collect();
        let reason = s.violations(&Value::Array(many)).unwrap();
        assert!(reason.len() <= REASON_MAX_CHARS + 40, "{}", reason.len());
        assert!(reason.contains("more"), "{reason}");
    }

    #[test]
    fn broken_files_are_named_with_their_line_and_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let e = schema_in(dir.path(), "bad.json", "{\n  \"type\": \"object\",\n  \"properties\": {\n}").unwrap_err();
        assert!(e.message.contains("bad.json`:4:") && e.message.contains("not valid JSON"), "{e:?}");
        let e = schema_in(
            dir.path(),
            "wrong.json",
            "{\n  \"type\": \"object\",\n  \"properties\": {\n    \"temp\": {\"type\": \"strin\"}\n  }\n}",
        )
        .unwrap_err();
        assert!(e.message.contains("wrong.json`:4") && e.message.contains("not a valid JSON Schema"), "{e:?}");
        let e = RouteSchema::load(dir.path(), "missing.json").unwrap_err();
        assert!(e.message.contains("cannot read") && e.hint.contains("relative"), "{e:?}");
    }

    #[test]
    fn a_schema_in_a_directory_with_a_space_resolves_its_relative_refs() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("my schemas");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("common.json"), r#"{"$defs": {"id": {"type": "integer"}}}"#).unwrap();
        let s = schema_in(&sub, "main.json", r#"{"properties": {"id": {"$ref": "common.json#/$defs/id"}}}"#).unwrap();
        assert_eq!(s.violations(&json!({"id": 7})), None);
        assert!(s.violations(&json!({"id": "seven"})).unwrap().contains("/id: "));
        assert_eq!(file_uri(Path::new("/a b/ü.json")), "file:///a%20b/%C3%BC.json");
        assert_eq!(percent_decode("/a%20b/%C3%BC.json"), "/a b/ü.json");
        // Nothing from the network.
        let e = schema_in(&sub, "remote.json", r#"{"$ref": "https://example.com/x.json"}"#).unwrap_err();
        assert!(e.message.contains("only local schema files"), "{e:?}");
    }

    #[test]
    fn pointers_become_index_paths() {
        assert_eq!(dotted("/properties/temp/type"), "properties.temp.type");
        assert_eq!(dotted("/items/0/type"), "items[0].type");
        assert_eq!(dotted(""), "");
        assert_eq!(dotted("/a~1b"), "a/b");
    }
}
