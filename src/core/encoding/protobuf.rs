//! Protobuf schemas as a Confluent Schema Registry holds them: the `.proto` source of the subject plus the
//! sources of the files it imports. A schema is compiled once; each JSON value is then read through the proto3
//! JSON mapping into a dynamic message and written in the binary wire format, with misfits naming the JSON path.

use std::fmt::Write as _;

use miette::Diagnostic;
use prost::Message as _;
use prost_reflect::{DeserializeOptions, DynamicMessage, FileDescriptor, Kind, MessageDescriptor};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};
use serde_json::Value;
use serde_path_to_error::{Segment, Track};

use super::misfit::Misfit;

/// The proto3 JSON mapping with unknown keys refused: a key the schema does not know is almost always a typo or a
/// producer on a newer schema, and dropping it silently would lose data.
const READ_OPTIONS: DeserializeOptions = DeserializeOptions::new().deny_unknown_fields(true);

/// How many field names an "unknown field" misfit lists before it stops.
const KNOWN_FIELDS_SHOWN: usize = 24;

/// How many characters of a found string a misfit repeats; a payload can be large and the reason is meant to be read.
const FOUND_CHARS_SHOWN: usize = 60;

/// A compiled Protobuf schema and the message of it that values are encoded as.
#[derive(Debug, Clone)]
pub struct ProtoSchema {
    descriptor: MessageDescriptor,
    indexes: Vec<i32>,
}

impl ProtoSchema {
    /// `text`: the main .proto file; `references`: (import name as written in `import "..."`, file text) for each
    /// referenced schema; `message`: the message to encode, by full name (`iot.Reading`) or simple name
    /// (`Reading`); None: the file's first message. Err: why, in one line (a syntax error with its line:column, an
    /// unknown import, no such message, listing the messages there are).
    pub fn parse(text: &str, references: &[(&str, &str)], message: Option<&str>) -> Result<Self, String> {
        // The registry gives the subject's own schema no file name; pick one no reference uses.
        let mut main_name = String::from("schema.proto");
        while references.iter().any(|(name, _)| *name == main_name) {
            main_name.insert(0, '_');
        }

        let mut sources: Vec<(String, String)> = Vec::with_capacity(references.len() + 1);
        sources.push((main_name.clone(), text.to_owned()));
        for (name, source) in references {
            // The first copy of a name wins, the way the first include path would.
            if !sources.iter().any(|(known, _)| known == name) {
                sources.push(((*name).to_owned(), (*source).to_owned()));
            }
        }

        // The given files come first so a reference may stand in for a well-known type; the bundled well-known
        // types serve every `google/protobuf/*.proto` import the registry left out, as Confluent's clients do.
        let mut resolver = ChainFileResolver::new();
        resolver.add(SourceResolver { files: sources.clone() });
        resolver.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler.open_file(&main_name).map_err(|err| compile_error(&err, &main_name, &sources))?;

        let pool = compiler.descriptor_pool();
        let file =
            pool.get_file_by_name(&main_name).ok_or_else(|| "the schema did not compile to a file".to_owned())?;
        let descriptor = choose_message(&file, message)?;
        let indexes = message_indexes(&descriptor)?;
        Ok(Self { descriptor, indexes })
    }

    /// The chosen message's full name.
    pub fn message_name(&self) -> &str {
        self.descriptor.full_name()
    }

    /// Confluent's message-index path of the chosen message in its file: `[0]` the first top-level message, `[1, 0]`
    /// the first message nested in the second, ...
    pub fn indexes(&self) -> &[i32] {
        &self.indexes
    }

    /// Appends Confluent's encoding of the index path (zigzag varint count, then each index as a zigzag varint; the
    /// path `[0]` alone is written as the single byte 0). The magic byte and schema id are the caller's.
    pub fn write_indexes(&self, out: &mut Vec<u8>) {
        write_message_indexes(&self.indexes, out);
    }

    /// Appends the message's binary encoding of `value`, read by the proto3 JSON mapping (field names as declared
    /// or their lowerCamelCase JSON names, enums by name or number, 64-bit integers from numbers or strings, bytes
    /// as base64, well-known types such as Timestamp from RFC 3339), to `out`. A key that is not a field is a
    /// misfit. On a misfit `out` is left as it was.
    pub fn encode(&self, value: &Value, out: &mut Vec<u8>) -> Result<(), Misfit> {
        // Reading without path tracking is the common case and the cheaper one: tracking keeps a copy of every
        // map key it passes. A value that does not fit is read again with tracking to find where.
        let message = match DynamicMessage::deserialize_with_options(self.descriptor.clone(), value, &READ_OPTIONS) {
            Ok(message) => message,
            Err(_) => return Err(self.misfit(value)),
        };
        // `encode` would first measure the whole message to check that the buffer has room, a full extra pass; a
        // Vec grows as it is written, so that pass is skipped. Nested messages are still measured for their length
        // prefixes.
        message.encode_raw(out);
        Ok(())
    }

    /// Like [`encode`](Self::encode), straight from JSON text, without building a `serde_json::Value` first
    /// (the common case: that tree costs more than the message). False if the text is not JSON or does not
    /// fit; `out` is then left as it was, and [`encode`](Self::encode) on the parsed value says why.
    pub fn encode_text(&self, json: &[u8], out: &mut Vec<u8>) -> bool {
        let mut de = serde_json::Deserializer::from_slice(json);
        match DynamicMessage::deserialize_with_options(self.descriptor.clone(), &mut de, &READ_OPTIONS) {
            Ok(message) if de.end().is_ok() => {
                message.encode_raw(out);
                true
            }
            _ => false,
        }
    }

    /// Reads `value` again, this time tracking the path, and says where and why it does not fit.
    fn misfit(&self, value: &Value) -> Misfit {
        let mut track = Track::new();
        let result = DynamicMessage::deserialize_with_options(
            self.descriptor.clone(),
            serde_path_to_error::Deserializer::new(value, &mut track),
            &READ_OPTIONS,
        );
        let error = match result {
            Err(error) => error.to_string(),
            // Both reads follow the same rules, so this is not expected; still, the value was refused once.
            Ok(_) => {
                return Misfit::new(format!("a value of message {}", self.message_name()), "a value that does not fit")
            }
        };
        let mut segments: Vec<String> = Vec::new();
        for segment in track.path().iter() {
            match segment {
                Segment::Seq { index } => segments.push(index.to_string()),
                Segment::Map { key } => segments.push(key.clone()),
                Segment::Enum { variant } => segments.push(variant.clone()),
                // A key that is not a string cannot come from JSON; stop where the path is still known.
                Segment::Unknown => break,
            }
        }
        explain(&self.descriptor, value, segments, &error)
    }
}

/// Confluent's wire form of a message-index path: the count, then each index, all as zigzag varints, except that
/// the common path `[0]` is written as the single byte 0.
fn write_message_indexes(indexes: &[i32], out: &mut Vec<u8>) {
    if indexes == [0] {
        out.push(0);
        return;
    }
    write_zigzag(indexes.len() as i64, out);
    for &index in indexes {
        write_zigzag(i64::from(index), out);
    }
}

fn write_zigzag(value: i64, out: &mut Vec<u8>) {
    let mut bits = ((value << 1) ^ (value >> 63)) as u64;
    while bits >= 0x80 {
        out.push((bits as u8) | 0x80);
        bits >>= 7;
    }
    out.push(bits as u8);
}

/// Serves the schema and its references from memory, by the names the imports use.
struct SourceResolver {
    files: Vec<(String, String)>,
}

impl FileResolver for SourceResolver {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match self.files.iter().find(|(known, _)| known == name) {
            Some((name, source)) => File::from_source(name, source),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// One line on why the schema did not compile: which file, where in it, and the compiler's reason.
fn compile_error(err: &protox::Error, main_name: &str, sources: &[(String, String)]) -> String {
    let file = err.file();
    let mut line = match file {
        Some(name) if name == main_name => String::from("schema"),
        Some(name) => format!("reference \"{name}\""),
        None => String::from("schema"),
    };
    let source = file.and_then(|name| sources.iter().find(|(known, _)| known == name)).map(|(_, text)| text.as_str());
    // The primary label marks the culprit; without one, the last label is the later of two clashing definitions.
    let offset = err.labels().and_then(|labels| {
        let labels: Vec<_> = labels.collect();
        labels.iter().find(|label| label.primary()).or(labels.last()).map(|label| label.offset())
    });
    if let (Some(source), Some(offset)) = (source, offset) {
        let (row, column) = line_column(source, offset);
        let _ = write!(line, " at {row}:{column}");
    }
    let message = err.to_string();
    let _ = write!(line, ": {}", message.split_whitespace().collect::<Vec<_>>().join(" "));
    line
}

/// The 1-based line and column (in characters) of a byte offset into `source`.
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let row = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    (row, before[line_start..].chars().count() + 1)
}

/// Every message the file defines, top-level and nested, in declaration order; map entries are the compiler's, not
/// the author's, and are left out.
fn file_messages(file: &FileDescriptor) -> Vec<MessageDescriptor> {
    fn walk(message: MessageDescriptor, into: &mut Vec<MessageDescriptor>) {
        if message.is_map_entry() {
            return;
        }
        let children: Vec<_> = message.child_messages().collect();
        into.push(message);
        for child in children {
            walk(child, into);
        }
    }
    let mut messages = Vec::new();
    for message in file.messages() {
        walk(message, &mut messages);
    }
    messages
}

fn choose_message(file: &FileDescriptor, wanted: Option<&str>) -> Result<MessageDescriptor, String> {
    let messages = file_messages(file);
    let Some(wanted) = wanted else {
        return file.messages().next().ok_or_else(|| "the schema defines no message".to_owned());
    };
    let listing = || {
        if messages.is_empty() {
            String::from("the schema defines none")
        } else {
            let names: Vec<_> = messages.iter().map(|message| message.full_name()).collect();
            format!("the schema defines {}", names.join(", "))
        }
    };

    let name = wanted.strip_prefix('.').unwrap_or(wanted);
    if let Some(found) = messages.iter().find(|message| message.full_name() == name) {
        return Ok(found.clone());
    }
    // A name relative to the file's package, such as `Reading.Sample` in package `iot`.
    let package = file.package_name();
    if !package.is_empty() {
        let qualified = format!("{package}.{name}");
        if let Some(found) = messages.iter().find(|message| message.full_name() == qualified) {
            return Ok(found.clone());
        }
    }
    let simple: Vec<_> = messages.iter().filter(|message| message.name() == name).collect();
    match simple.as_slice() {
        [only] => return Ok((*only).clone()),
        [] => {}
        several => {
            let names: Vec<_> = several.iter().map(|message| message.full_name()).collect();
            return Err(format!("message name \"{wanted}\" is ambiguous ({}); give the full name", names.join(", ")));
        }
    }
    if let Some(elsewhere) = file.parent_pool().get_message_by_name(name) {
        // Confluent's message index addresses only the subject's own file, so a referenced file's message cannot
        // be the one a record is written as under this subject.
        return Err(format!(
            "message \"{wanted}\" is defined in the referenced file \"{}\", not in the schema; {}",
            elsewhere.parent_file().name(),
            listing()
        ));
    }
    Err(format!("no message \"{wanted}\" in the schema; {}", listing()))
}

/// The message's index path in its file. The descriptor path alternates "messages of the file" or "messages nested
/// in this one" with the index within them, which is exactly the path Confluent's clients compute.
fn message_indexes(message: &MessageDescriptor) -> Result<Vec<i32>, String> {
    const FILE_MESSAGES: i32 = 4;
    const NESTED_MESSAGES: i32 = 3;
    let path = message.path();
    let well_formed = path.len() >= 2
        && path.len() % 2 == 0
        && path
            .chunks(2)
            .enumerate()
            .all(|(depth, pair)| pair[0] == if depth == 0 { FILE_MESSAGES } else { NESTED_MESSAGES } && pair[1] >= 0);
    if !well_formed {
        return Err(format!("cannot place message {} in its file (descriptor path {path:?})", message.full_name()));
    }
    Ok(path.chunks(2).map(|pair| pair[1]).collect())
}

/// What the schema has at some point of the value.
enum Place {
    Message(MessageDescriptor),
    /// A repeated field: its elements' kind.
    List(Kind),
    /// A map field: its keys' and values' kinds.
    Map(Kind, Kind),
    Single(Kind),
}

impl Place {
    fn of(kind: Kind) -> Self {
        match kind {
            Kind::Message(message) if !is_well_known(&message) => Place::Message(message),
            other => Place::Single(other),
        }
    }

    /// What the schema wants here, in the words the JSON reader uses for it.
    fn wants(&self) -> String {
        match self {
            Place::Message(message) => format!("an object (message {})", message.full_name()),
            Place::List(kind) => format!("an array of {}", kind_words(kind)),
            Place::Map(key, value) => {
                format!("an object with {} keys and {} values", kind_words(key), kind_words(value))
            }
            Place::Single(kind) => kind_words(kind),
        }
    }
}

/// Messages the JSON mapping reads in a form of their own rather than as an object of their fields.
fn is_well_known(message: &MessageDescriptor) -> bool {
    matches!(
        message.full_name(),
        "google.protobuf.Any"
            | "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.Struct"
            | "google.protobuf.ListValue"
            | "google.protobuf.Value"
            | "google.protobuf.Empty"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
            | "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
    )
}

fn kind_words(kind: &Kind) -> String {
    let words = match kind {
        Kind::Double => "a 64-bit floating point value",
        Kind::Float => "a 32-bit floating point value",
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => "a 32-bit signed integer",
        Kind::Uint32 | Kind::Fixed32 => "a 32-bit unsigned integer or decimal string",
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => "a 64-bit signed integer or decimal string",
        Kind::Uint64 | Kind::Fixed64 => "a 64-bit unsigned integer or decimal string",
        Kind::Bool => "a boolean",
        Kind::String => "a string",
        Kind::Bytes => "a base64-encoded string",
        Kind::Enum(enumeration) => {
            let names: Vec<_> = enumeration.values().map(|value| value.name().to_owned()).collect();
            return format!("a value of enum {} ({}) or its number", enumeration.full_name(), names.join(", "));
        }
        Kind::Message(message) => match message.full_name() {
            "google.protobuf.Timestamp" => "an RFC 3339 timestamp string",
            "google.protobuf.Duration" => "a duration string such as \"1.5s\"",
            "google.protobuf.FieldMask" => "a field mask string",
            "google.protobuf.Struct" => "an object",
            "google.protobuf.ListValue" => "an array",
            "google.protobuf.Empty" => "an empty object",
            "google.protobuf.Any" => "an object with an \"@type\"",
            "google.protobuf.Value" => "any JSON value",
            "google.protobuf.BoolValue" => "a boolean",
            "google.protobuf.StringValue" => "a string",
            "google.protobuf.BytesValue" => "a base64-encoded string",
            "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => "a number",
            "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => "an integer",
            "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => "an integer or decimal string",
            name => return format!("an object (message {name})"),
        },
    };
    words.to_owned()
}

/// Follows `segments` from the root message to what the schema holds there, if the path is one the schema knows.
fn place_at(root: &MessageDescriptor, segments: &[String]) -> Option<Place> {
    let mut place = Place::Message(root.clone());
    for segment in segments {
        place = match place {
            Place::Message(message) => {
                let field = message.get_field_by_json_name(segment).or_else(|| message.get_field_by_name(segment))?;
                if field.is_map() {
                    let entry = field.kind();
                    let entry = entry.as_message()?;
                    Place::Map(entry.map_entry_key_field().kind(), entry.map_entry_value_field().kind())
                } else if field.is_list() {
                    Place::List(field.kind())
                } else {
                    Place::of(field.kind())
                }
            }
            Place::List(kind) | Place::Map(_, kind) => Place::of(kind),
            Place::Single(_) => return None,
        };
    }
    Some(place)
}

/// Turns a deserialization error at `segments` into a misfit, in JSON words rather than serde's.
fn explain(root: &MessageDescriptor, value: &Value, mut segments: Vec<String>, error: &str) -> Misfit {
    // Unknown keys are refused by the message that holds them, so the tracked path is the message; the misfit
    // points at the key itself.
    if let Some(key) = quoted(error, "unrecognized field name '") {
        let known = match place_at(root, &segments) {
            Some(Place::Message(message)) => {
                let names: Vec<_> = message.fields().map(|field| field.name().to_owned()).collect();
                let mut text = format!("a field of message {}", message.full_name());
                if names.is_empty() {
                    text.push_str(" (it has none)");
                } else if names.len() > KNOWN_FIELDS_SHOWN {
                    let _ = write!(text, " (known: {}, …)", names[..KNOWN_FIELDS_SHOWN].join(", "));
                } else {
                    let _ = write!(text, " (known: {})", names.join(", "));
                }
                text
            }
            _ => String::from("a field the message defines"),
        };
        segments.push(key.to_owned());
        return at(Misfit::new(known, "unknown field"), &segments);
    }

    let place = place_at(root, &segments);
    let found_here = || found_at(value, &segments);
    if let Some(oneof) = quoted(error, "multiple fields provided for oneof '") {
        if let Some(Place::Message(message)) = &place {
            if let Some(oneof) = message.oneofs().find(|candidate| candidate.name() == oneof) {
                let names: Vec<_> = oneof.fields().map(|field| field.name().to_owned()).collect();
                let object = match found_object(value, &segments) {
                    Some(object) => object,
                    None => return at(Misfit::new(error.to_owned(), "several of its fields"), &segments),
                };
                let given: Vec<_> = object
                    .iter()
                    .filter(|(key, item)| {
                        !item.is_null() && oneof.fields().any(|field| field.name() == *key || field.json_name() == *key)
                    })
                    .map(|(key, _)| key.as_str())
                    .collect();
                let expected = format!("at most one field of oneof {} ({})", oneof.name(), names.join(", "));
                return at(Misfit::new(expected, format!("{} given", given.join(" and "))), &segments);
            }
        }
    }
    for prefix in ["invalid type: ", "invalid value: ", "invalid length "] {
        if let Some(rest) = error.strip_prefix(prefix) {
            if let Some((found, expected)) = rest.rsplit_once(", expected ") {
                let found = found_here().unwrap_or_else(|| json_words(found).to_owned());
                return at(Misfit::new(json_words(expected), found), &segments);
            }
        }
    }
    if let Some(name) = quoted(error, "unrecognized enum value '") {
        let expected = match &place {
            Some(place @ Place::Single(Kind::Enum(_))) => place.wants(),
            _ => String::from("a value of the field's enum"),
        };
        return at(Misfit::new(expected, found_here().unwrap_or_else(|| format!("string \"{name}\""))), &segments);
    }

    // The reader's own complaints ("invalid float literal", "out of range integral type conversion attempted")
    // say why but not what was wanted; the schema says that.
    let expected = match &place {
        Some(place @ (Place::Single(_) | Place::List(_) | Place::Map(..))) => format!("{} ({error})", place.wants()),
        _ => error.to_owned(),
    };
    let found = found_here().unwrap_or_else(|| String::from("a value that does not fit"));
    at(Misfit::new(expected, found), &segments)
}

/// The text between `prefix` and the final quote of an error such as `unrecognized field name 'x'`.
fn quoted<'e>(error: &'e str, prefix: &str) -> Option<&'e str> {
    error.strip_prefix(prefix)?.strip_suffix('\'')
}

fn at(mut misfit: Misfit, segments: &[String]) -> Misfit {
    for segment in segments.iter().rev() {
        misfit = misfit.under(segment);
    }
    misfit
}

/// Serde speaks of maps and sequences; the payload is JSON, whose words are objects and arrays.
fn json_words(text: &str) -> &str {
    match text {
        "a map" | "map" => "an object",
        "a list" | "sequence" => "an array",
        "an empty map" => "an empty object",
        other => other,
    }
}

/// The value at `segments`, in the style serde uses for what it found (`string "x"`, `integer `5``).
fn found_at(value: &Value, segments: &[String]) -> Option<String> {
    value_at(value, segments).map(describe)
}

fn found_object<'v>(value: &'v Value, segments: &[String]) -> Option<&'v serde_json::Map<String, Value>> {
    value_at(value, segments)?.as_object()
}

fn value_at<'v>(value: &'v Value, segments: &[String]) -> Option<&'v Value> {
    let mut here = value;
    for segment in segments {
        here = match here {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(here)
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => String::from("null"),
        Value::Bool(flag) => format!("boolean `{flag}`"),
        Value::Number(number) if number.is_f64() => format!("floating point `{number}`"),
        Value::Number(number) => format!("integer `{number}`"),
        Value::String(text) => {
            let mut shown: String = text.chars().take(FOUND_CHARS_SHOWN).collect();
            if shown.len() < text.len() {
                shown.push('…');
            }
            format!("string {shown:?}")
        }
        Value::Array(items) if items.len() == 1 => String::from("an array of 1 item"),
        Value::Array(items) => format!("an array of {} items", items.len()),
        Value::Object(_) => String::from("an object"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LOCATION_PROTO: &str = r#"syntax = "proto3";
package common;

message Location {
  double lat = 1;
  double lon = 2;
}
"#;

    const READING_PROTO: &str = r#"syntax = "proto3";
package iot;

import "google/protobuf/timestamp.proto";
import "common/location.proto";

enum Status {
  STATUS_UNKNOWN = 0;
  STATUS_OK = 1;
  STATUS_FAULT = 2;
}

message Reading {
  string device_id = 1;
  double value = 2;
  int64 counter = 3;
  bool active = 4;
  Status status = 5;
  repeated string tags = 6;
  common.Location location = 7;
  map<string, double> metrics = 8;
  google.protobuf.Timestamp taken_at = 9;
  repeated Sample samples = 10;
  bytes raw = 11;
  uint32 small = 12;
  oneof source {
    string gateway = 13;
    string direct_link = 14;
  }

  message Sample {
    int64 at = 1;
    double value = 2;
  }
}

message Batch {
  repeated Reading readings = 1;

  message Meta {
    string source = 1;
  }
}

message Deep {
  message A {}
  message B {}
  map<string, string> labels = 1;
  message D {
    message X {}
    message Y {
      Status status = 1;
    }
  }
  message Sample {}
}
"#;

    fn reading() -> ProtoSchema {
        ProtoSchema::parse(READING_PROTO, &[("common/location.proto", LOCATION_PROTO)], Some("iot.Reading")).unwrap()
    }

    fn parse_err(text: &str, references: &[(&str, &str)], message: Option<&str>) -> String {
        match ProtoSchema::parse(text, references, message) {
            Ok(schema) => panic!("expected an error, got message {}", schema.message_name()),
            Err(err) => err,
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    fn decode(schema: &ProtoSchema, bytes: &[u8]) -> DynamicMessage {
        DynamicMessage::decode(schema.descriptor.clone(), bytes).unwrap()
    }

    /// The message the JSON reads as, through the wire format so that unset and empty fields compare equal.
    fn read_back(schema: &ProtoSchema, value: &Value) -> DynamicMessage {
        let message = DynamicMessage::deserialize(schema.descriptor.clone(), value).unwrap();
        decode(schema, &message.encode_to_vec())
    }

    #[test]
    fn parse_errors_say_where_and_why() {
        let location = [("common/location.proto", LOCATION_PROTO)];
        // What is tried, the schema, its references, the message asked for, and what the error must contain.
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], Option<&'a str>, &'a [&'a str]);
        let cases: &[Case] = &[
            (
                "syntax error with its line and column",
                "syntax = \"proto3\";\nmessage A {\n  string a = 1\n}\n",
                &[],
                None,
                &["schema at 4:1", "expected"],
            ),
            (
                "unknown import",
                "syntax = \"proto3\";\nimport \"nope.proto\";\nmessage A {}\n",
                &[],
                None,
                &["schema at 2:1", "import 'nope.proto' not found"],
            ),
            (
                "syntax error in a reference",
                "syntax = \"proto3\";\nimport \"r.proto\";\nmessage A {}\n",
                &[("r.proto", "syntax = \"proto3\";\nmessage R { int32 x = }\n")],
                None,
                &["reference \"r.proto\" at 2:23"],
            ),
            (
                "unknown type",
                "syntax = \"proto3\";\nmessage A {\n  Missing m = 1;\n}\n",
                &[],
                None,
                &["schema at 3:3", "Missing"],
            ),
            (
                "unknown message lists the known ones",
                READING_PROTO,
                &location,
                Some("Nope"),
                &[
                    "no message \"Nope\" in the schema",
                    "iot.Reading, iot.Reading.Sample, iot.Batch, iot.Batch.Meta, iot.Deep,",
                ],
            ),
            (
                "ambiguous simple name",
                READING_PROTO,
                &location,
                Some("Sample"),
                &["ambiguous (iot.Reading.Sample, iot.Deep.Sample)"],
            ),
            (
                "message of a referenced file",
                READING_PROTO,
                &location,
                Some("common.Location"),
                &["referenced file \"common/location.proto\""],
            ),
            (
                "no message at all",
                "syntax = \"proto3\";\nenum E { E_ZERO = 0; }\n",
                &[],
                None,
                &["the schema defines no message"],
            ),
        ];
        for (what, text, references, message, needles) in cases {
            let err = parse_err(text, references, *message);
            assert!(!err.contains('\n'), "{what}: not one line: {err}");
            for needle in *needles {
                assert!(err.contains(needle), "{what}: {err:?} lacks {needle:?}");
            }
        }
    }

    #[test]
    fn index_paths_follow_declaration_order() {
        let location = [("common/location.proto", LOCATION_PROTO)];
        let cases: &[(Option<&str>, &str, &[i32])] = &[
            (None, "iot.Reading", &[0]),
            (Some("Reading"), "iot.Reading", &[0]),
            (Some(".iot.Reading"), "iot.Reading", &[0]),
            (Some("iot.Batch"), "iot.Batch", &[1]),
            (Some("Batch"), "iot.Batch", &[1]),
            // The map entry the compiler makes for `metrics` is nested in Reading before Sample.
            (Some("iot.Reading.Sample"), "iot.Reading.Sample", &[0, 1]),
            (Some("Batch.Meta"), "iot.Batch.Meta", &[1, 0]),
            (Some("Meta"), "iot.Batch.Meta", &[1, 0]),
            (Some("iot.Deep.D"), "iot.Deep.D", &[2, 3]),
            (Some("iot.Deep.D.Y"), "iot.Deep.D.Y", &[2, 3, 1]),
        ];
        for (wanted, name, indexes) in cases {
            let schema = ProtoSchema::parse(READING_PROTO, &location, *wanted).unwrap();
            assert_eq!(schema.message_name(), *name, "{wanted:?}");
            assert_eq!(schema.indexes(), *indexes, "{wanted:?}");
        }
    }

    #[test]
    fn index_paths_are_written_as_confluent_does() {
        let cases: &[(&[i32], &[u8])] = &[
            (&[0], &[0x00]),
            (&[1], &[0x02, 0x02]),
            (&[1, 0], &[0x04, 0x02, 0x00]),
            (&[2, 3, 1], &[0x06, 0x04, 0x06, 0x02]),
            (&[0, 0], &[0x04, 0x00, 0x00]),
            (&[64], &[0x02, 0x80, 0x01]),
        ];
        for (indexes, bytes) in cases {
            let mut out = vec![0xff];
            write_message_indexes(indexes, &mut out);
            assert_eq!(&out[1..], *bytes, "{indexes:?}");
        }
        let mut out = Vec::new();
        ProtoSchema::parse(READING_PROTO, &[("common/location.proto", LOCATION_PROTO)], Some("Meta"))
            .unwrap()
            .write_indexes(&mut out);
        assert_eq!(out, [0x04, 0x02, 0x00]);
    }

    /// JSON inputs for Reading that must encode, with the proto text form of what they must become.
    fn reading_cases() -> Vec<(&'static str, Value)> {
        vec![
            ("string", json!({"device_id": "door-sensor-1"})),
            ("json name", json!({"deviceId": "door-sensor-1", "takenAt": "2024-05-01T12:30:00Z"})),
            ("double", json!({"value": 21.5})),
            ("double from integer", json!({"value": 21})),
            ("int64 from number", json!({"counter": 9007199254740993_i64})),
            ("int64 from string", json!({"counter": "-9223372036854775808"})),
            ("bool", json!({"active": true})),
            ("enum by name", json!({"status": "STATUS_FAULT"})),
            ("enum by number", json!({"status": 1})),
            ("repeated", json!({"tags": ["a", "b", "c"]})),
            ("nested message from a reference", json!({"location": {"lat": 52.37, "lon": 4.89}})),
            ("map", json!({"metrics": {"rssi": -71.0, "battery": 0.93}})),
            ("timestamp", json!({"taken_at": "2024-05-01T12:30:00.250+02:00"})),
            ("nested repeated", json!({"samples": [{"at": 1, "value": 1.5}, {"at": "2", "value": 2.5}]})),
            ("bytes", json!({"raw": "AAEC/w=="})),
            ("null leaves a field unset", json!({"device_id": null, "value": 3.0})),
            ("empty", json!({})),
            ("oneof", json!({"directLink": "radio", "gateway": null})),
            (
                "everything",
                json!({
                    "device_id": "door-sensor-1", "value": 21.5, "counter": "42", "active": true,
                    "status": "STATUS_OK", "tags": ["front", "door"], "location": {"lat": 52.37, "lon": 4.89},
                    "metrics": {"rssi": -71.0}, "taken_at": "2024-05-01T12:30:00Z",
                    "samples": [{"at": 1, "value": 1.5}], "raw": "aGk=", "small": 4294967295_u32
                }),
            ),
        ]
    }

    #[test]
    fn encodes_readings() {
        let schema = reading();
        for (what, value) in reading_cases() {
            let mut out = vec![0xAA];
            schema.encode(&value, &mut out).unwrap_or_else(|misfit| panic!("{what}: {misfit}"));
            assert_eq!(out[0], 0xAA, "{what}: appends");
            // What the encoder wrote must decode to the message the same JSON reads as.
            assert_eq!(decode(&schema, &out[1..]), read_back(&schema, &value), "{what}");
        }
    }

    #[test]
    fn encoded_fields_have_the_values_given() {
        let schema = reading();
        let value = reading_cases().into_iter().find(|(what, _)| *what == "everything").unwrap().1;
        let mut out = Vec::new();
        schema.encode(&value, &mut out).unwrap();
        let message = decode(&schema, &out);
        let field = |name: &str| message.get_field_by_name(name).unwrap().into_owned();
        use prost_reflect::Value as V;
        assert_eq!(field("device_id"), V::String("door-sensor-1".into()));
        assert_eq!(field("value"), V::F64(21.5));
        assert_eq!(field("counter"), V::I64(42));
        assert_eq!(field("active"), V::Bool(true));
        assert_eq!(field("status"), V::EnumNumber(1));
        assert_eq!(field("small"), V::U32(u32::MAX));
        assert_eq!(field("raw"), V::Bytes(b"hi".to_vec().into()));
        let taken = field("taken_at");
        let taken = taken.as_message().unwrap();
        assert_eq!(taken.get_field_by_name("seconds").unwrap().as_i64(), Some(1_714_566_600));
        let metrics = field("metrics");
        let metrics = metrics.as_map().unwrap();
        assert_eq!(metrics.get(&prost_reflect::MapKey::String("rssi".into())), Some(&V::F64(-71.0)));

        // A single string field has a fixed form: tag 1 length-delimited, then the bytes.
        let mut out = Vec::new();
        schema.encode(&json!({"device_id": "ab"}), &mut out).unwrap();
        assert_eq!(out, [0x0a, 0x02, b'a', b'b']);
    }

    #[test]
    fn misfits_name_the_path() {
        let schema = reading();
        let cases: &[(&str, Value, &str, &str, &str)] = &[
            ("wrong type", json!({"device_id": 5}), "/device_id", "a string", "integer `5`"),
            ("wrong type under a json name", json!({"deviceId": [1]}), "/deviceId", "a string", "an array of 1 item"),
            ("object for a double", json!({"value": {}}), "/value", "a 64-bit floating point value", "an object"),
            (
                "unknown field",
                json!({"device_id": "x", "colour": "red"}),
                "/colour",
                "a field of message iot.Reading (known: device_id, value, counter, active, status, tags, location, \
                 metrics, taken_at, samples, raw, small, gateway, direct_link)",
                "unknown field",
            ),
            (
                "unknown field in a nested message",
                json!({"location": {"lat": 1.0, "alt": 3.0}}),
                "/location/alt",
                "a field of message common.Location (known: lat, lon)",
                "unknown field",
            ),
            (
                "bad enum name",
                json!({"status": "BROKEN"}),
                "/status",
                "a value of enum iot.Status (STATUS_UNKNOWN, STATUS_OK, STATUS_FAULT) or its number",
                "string \"BROKEN\"",
            ),
            (
                "nested path",
                json!({"samples": [{"value": 1.0}, {"value": 2.0}, {"value": "high"}]}),
                "/samples/2/value",
                "a 64-bit floating point value (invalid float literal)",
                "string \"high\"",
            ),
            (
                "int64 from a bad string",
                json!({"counter": "12a"}),
                "/counter",
                "a 64-bit signed integer or decimal string (invalid digit found in string)",
                "string \"12a\"",
            ),
            (
                "fraction for an int64",
                json!({"counter": 1.5}),
                "/counter",
                "a 64-bit signed integer or decimal string (expected integer value)",
                "floating point `1.5`",
            ),
            (
                "uint32 overflow",
                json!({"small": 4294967296_u64}),
                "/small",
                "a 32-bit unsigned integer or decimal string (out of range integral type conversion attempted)",
                "integer `4294967296`",
            ),
            (
                "map value",
                json!({"metrics": {"a/b": "x"}}),
                "/metrics/a~1b",
                "a 64-bit floating point value (invalid float literal)",
                "string \"x\"",
            ),
            (
                "bad timestamp",
                json!({"taken_at": "yesterday"}),
                "/taken_at",
                "an RFC 3339 timestamp string (",
                "string \"yesterday\"",
            ),
            ("bad base64", json!({"raw": "!!"}), "/raw", "a base64-encoded string (invalid base64", "string \"!!\""),
            ("not an object", json!([1, 2]), "", "an object", "an array of 2 items"),
            (
                "two fields of a oneof",
                json!({"gateway": "g", "value": 1.0, "directLink": "d"}),
                "",
                "at most one field of oneof source (gateway, direct_link)",
                "gateway and directLink given",
            ),
            ("null message", Value::Null, "", "an object", "null"),
        ];
        let mut wrong = Vec::new();
        for (what, value, path, expected, found) in cases {
            let mut out = vec![7];
            let misfit = schema.encode(value, &mut out).expect_err(what);
            assert_eq!(out, [7], "{what}: output untouched");
            if misfit.path != *path || !misfit.expected.starts_with(expected) || misfit.found != *found {
                wrong.push(format!("{what}: {misfit}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn schema_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync + Clone + 'static>() {}
        shareable::<ProtoSchema>();
    }

    #[test]
    fn misfit_reads_as_one_line() {
        let misfit = reading().encode(&json!({"samples": [{}, {}, {"value": "high"}]}), &mut Vec::new()).unwrap_err();
        assert_eq!(
            misfit.to_string(),
            "/samples/2/value: expected a 64-bit floating point value (invalid float literal), found string \"high\""
        );
    }

    #[test]
    fn odd_values_do_not_panic() {
        let schema = reading();
        let deep =
            ProtoSchema::parse("syntax = \"proto3\";\nmessage Node { Node child = 1; int32 n = 2; }\n", &[], None)
                .unwrap();
        let odd = [
            json!(u64::MAX),
            json!(i64::MIN),
            json!(f64::MAX),
            json!(-0.0),
            json!("NaN"),
            json!("Infinity"),
            json!("-Infinity"),
            json!(""),
            json!("\u{0}\u{10FFFF}"),
            json!("9999999999999999999999999"),
            json!("10000-01-01T00:00:00Z"),
            json!("0000-01-01T00:00:00Z"),
            json!("1970-01-01T00:00:00.0000000001Z"),
            json!(true),
            json!(null),
            json!([]),
            json!([[]]),
            json!({}),
            json!({"": null}),
            json!({"~/": 1}),
        ];
        let fields = ["device_id", "value", "counter", "active", "status", "tags", "location", "metrics"];
        let more = ["taken_at", "samples", "raw", "small", "deviceId", "takenAt"];
        let mut out = Vec::new();
        for value in &odd {
            let _ = schema.encode(value, &mut out);
            for field in fields.iter().chain(more.iter()) {
                let _ = schema.encode(&json!({ *field: value }), &mut out);
                let _ = schema.encode(&json!({ *field: [value, value] }), &mut out);
                let _ = schema.encode(&json!({ *field: { "k": value, "1": [value] } }), &mut out);
                let _ = schema.encode(&json!({"samples": [{ "at": value }], "location": { "lat": value }}), &mut out);
            }
        }

        // As deep as serde_json parses by default (128 levels).
        let mut value = json!({"n": 1});
        for _ in 0..127 {
            value = json!({ "child": value });
        }
        let mut out = Vec::new();
        deep.encode(&value, &mut out).unwrap();
        let mut wrong = json!({"n": "x"});
        for _ in 0..127 {
            wrong = json!({ "child": wrong });
        }
        let misfit = deep.encode(&wrong, &mut Vec::new()).unwrap_err();
        assert_eq!(misfit.path.matches("/child").count(), 127);
        assert!(misfit.path.ends_with("/n"));
    }

    #[test]
    fn odd_schemas_and_names_do_not_panic() {
        let texts = [
            "",
            "syntax = \"proto2\";",
            "syntax = \"proto4\";",
            "message",
            "message A { message A { message A {} } }",
            "message A { oneof o { int32 x = 1; } map<int32, A> m = 2; }",
            "syntax = \"proto3\"; message A { int32 a = 1; int32 b = 1; }",
            "syntax = \"proto3\"; message A {} message A {}",
            "import \"schema.proto\"; message A {}",
            "import \"google/protobuf/any.proto\"; message A { google.protobuf.Any a = 1; }",
            "\u{feff}message A {}",
            "message A { int32 a = 536870912; }",
            "message 𝔄 {}",
            "/* never closed",
        ];
        let names = [None, Some(""), Some("."), Some("A"), Some("A.A"), Some("..A"), Some("google.protobuf.Any")];
        for text in texts {
            for name in names {
                if let Err(err) = ProtoSchema::parse(text, &[("schema.proto", text)], name) {
                    assert!(!err.is_empty());
                }
            }
        }
    }

    mod generated {
        use super::*;
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = Value> {
            let key = prop_oneof![
                Just("device_id".to_owned()),
                Just("value".to_owned()),
                Just("counter".to_owned()),
                Just("status".to_owned()),
                Just("tags".to_owned()),
                Just("location".to_owned()),
                Just("lat".to_owned()),
                Just("metrics".to_owned()),
                Just("takenAt".to_owned()),
                Just("samples".to_owned()),
                Just("at".to_owned()),
                Just("raw".to_owned()),
                Just("small".to_owned()),
                Just("gateway".to_owned()),
                Just("directLink".to_owned()),
                "\\PC{0,6}",
            ];
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                "\\PC{0,12}".prop_map(Value::from),
                Just(Value::from("STATUS_OK")),
                Just(Value::from("2024-05-01T12:30:00Z")),
            ];
            leaf.prop_recursive(4, 48, 6, move |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                    prop::collection::vec((key.clone(), inner), 0..6)
                        .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn any_json_encodes_or_misfits(value in json_value()) {
                let schema = reading();
                let mut out = vec![1, 2, 3];
                match schema.encode(&value, &mut out) {
                    Ok(()) => {
                        prop_assert_eq!(decode(&schema, &out[3..]), read_back(&schema, &value));
                    }
                    Err(misfit) => {
                        prop_assert_eq!(&out, &[1, 2, 3]);
                        prop_assert!(misfit.path.is_empty() || misfit.path.starts_with('/'));
                        prop_assert!(!misfit.expected.is_empty() && !misfit.found.is_empty());
                    }
                }
            }

            #[test]
            fn any_text_parses_or_says_why(text in "\\PC{0,80}", name in proptest::option::of("\\PC{0,8}")) {
                if let Err(err) = ProtoSchema::parse(&text, &[], name.as_deref()) {
                    prop_assert!(!err.is_empty());
                }
            }

            #[test]
            fn damaged_schema_parses_or_says_why(cut in 0..READING_PROTO.len(), junk in "[{};=\"a-z0-9 \n]{0,4}") {
                let mut text = READING_PROTO.as_bytes()[..cut].to_vec();
                text.extend_from_slice(junk.as_bytes());
                text.extend_from_slice(&READING_PROTO.as_bytes()[cut..]);
                let text = String::from_utf8_lossy(&text);
                if let Err(err) = ProtoSchema::parse(&text, &[("common/location.proto", LOCATION_PROTO)], None) {
                    prop_assert!(!err.is_empty() && !err.contains('\n'));
                }
            }
        }
    }

    /// Writes the test schema, encoded readings and index paths to a directory for an independent decoder to check
    /// (`PROTO_CROSS_CHECK_DIR`, by default `proto-cross-check` in the system's temporary directory).
    #[test]
    #[ignore = "writes files for an external cross-check"]
    fn cross_check_dump() {
        let dir = std::env::var_os("PROTO_CROSS_CHECK_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("proto-cross-check"));
        std::fs::create_dir_all(dir.join("common")).unwrap();
        std::fs::write(dir.join("reading.proto"), READING_PROTO).unwrap();
        std::fs::write(dir.join("common/location.proto"), LOCATION_PROTO).unwrap();

        let schema = reading();
        let mut encoded = Vec::new();
        for (what, value) in reading_cases() {
            let mut out = Vec::new();
            schema.encode(&value, &mut out).unwrap();
            encoded.push(json!({"case": what, "json": value, "hex": hex(&out)}));
        }
        let references = [("common/location.proto", LOCATION_PROTO)];
        let file = ProtoSchema::parse(READING_PROTO, &references, None).unwrap().descriptor.parent_file();
        let mut messages = Vec::new();
        for message in file.messages().flat_map(|top| {
            let mut all = vec![top.clone()];
            let mut next = 0;
            while next < all.len() {
                let children: Vec<_> = all[next].child_messages().collect();
                all.extend(children);
                next += 1;
            }
            all
        }) {
            // Map entries are included: they take up index positions, so both sides must agree on them too.
            let indexes = message_indexes(&message).unwrap();
            let mut bytes = Vec::new();
            write_message_indexes(&indexes, &mut bytes);
            messages.push(json!({"name": message.full_name(), "indexes": indexes, "hex": hex(&bytes)}));
        }
        let mut paths = Vec::new();
        for indexes in [&[0][..], &[1], &[1, 0], &[2, 3, 1]] {
            let mut bytes = Vec::new();
            write_message_indexes(indexes, &mut bytes);
            paths.push(json!({"indexes": indexes, "hex": hex(&bytes)}));
        }
        // Messages away from the top of the file, each as index path plus payload, the part of a Confluent frame
        // after the schema id.
        let mut framed = Vec::new();
        for (name, value) in [
            ("iot.Reading", json!({"device_id": "door-sensor-1", "status": "STATUS_FAULT"})),
            ("iot.Reading.Sample", json!({"at": "7", "value": 0.5})),
            ("iot.Batch", json!({"readings": [{"device_id": "a"}, {"value": 1.0}]})),
            ("iot.Batch.Meta", json!({"source": "gateway"})),
            ("iot.Deep.D.Y", json!({"status": "STATUS_OK"})),
        ] {
            let schema = ProtoSchema::parse(READING_PROTO, &references, Some(name)).unwrap();
            let mut out = Vec::new();
            schema.write_indexes(&mut out);
            schema.encode(&value, &mut out).unwrap();
            framed.push(json!({"name": name, "json": value, "indexes": schema.indexes(), "hex": hex(&out)}));
        }
        let dump = json!({"encoded": encoded, "messages": messages, "paths": paths, "framed": framed});
        std::fs::write(dir.join("rust.json"), serde_json::to_string_pretty(&dump).unwrap()).unwrap();
    }

    /// `cargo test --release -- --ignored encode_speed --nocapture`
    #[test]
    #[ignore = "a timing, meaningful only in release builds"]
    fn encode_speed() {
        let schema = reading();
        let value = json!({
            "device_id": "door-sensor-1", "value": 21.5, "counter": 1234567, "active": true, "status": "STATUS_OK"
        });
        let runs = 1_000_000;
        let mut out = Vec::with_capacity(64);
        let started = std::time::Instant::now();
        for _ in 0..runs {
            out.clear();
            schema.encode(std::hint::black_box(&value), &mut out).unwrap();
        }
        let elapsed = started.elapsed();
        println!("{} bytes, {:.0} ns per encode", out.len(), elapsed.as_nanos() as f64 / f64::from(runs));

        let started = std::time::Instant::now();
        for _ in 0..runs {
            let mut track = Track::new();
            let message = DynamicMessage::deserialize_with_options(
                schema.descriptor.clone(),
                serde_path_to_error::Deserializer::new(std::hint::black_box(&value), &mut track),
                &READ_OPTIONS,
            )
            .unwrap();
            out.clear();
            message.encode_raw(&mut out);
        }
        let elapsed = started.elapsed();
        println!("with path tracking on every read: {:.0} ns per encode", elapsed.as_nanos() as f64 / f64::from(runs));
    }
}
