//! Protobuf schemas as a Confluent Schema Registry holds them: the `.proto` source of the subject plus the
//! sources of the files it imports. A schema is compiled once; each JSON value is then read through the proto3
//! JSON mapping into a dynamic message and written in the binary wire format, with misfits naming the JSON path.

use std::fmt::Write as _;
use std::sync::Arc;

use miette::Diagnostic;
use prost::Message as _;
use prost_reflect::{DeserializeOptions, DynamicMessage, FileDescriptor, Kind, MessageDescriptor};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};
use serde_json::Value;
use serde_path_to_error::{Segment, Track};

use super::json::Json;
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
    fast: Arc<FastPlan>,
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
        let fast = Arc::new(FastPlan::new(&descriptor));
        Ok(Self { descriptor, indexes, fast })
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
        if self.encode_fast(&Json::from(value), out) {
            return Ok(());
        }
        self.encode_dynamic(value, out)
    }

    /// Like [`encode`](Self::encode), from a parsed [`Json`] tree: the fast path first, then, for what it leaves,
    /// the DynamicMessage path, which decides and explains.
    pub fn encode_json(&self, value: &Json<'_>, out: &mut Vec<u8>) -> Result<(), Misfit> {
        if self.encode_fast(value, out) {
            return Ok(());
        }
        self.encode_dynamic(&json_to_value(value), out)
    }

    /// The fast path: writes `value` as the message's binary form straight from the tree, walking the descriptor.
    /// `false` (with `out` as it was) whenever the value needs more than the fast path knows (a well-known type such
    /// as google.protobuf.Timestamp/Struct/Any/wrappers anywhere in the message, a oneof given twice, a number
    /// given as a string for a float, anything unusual) or does not fit: the caller then takes the DynamicMessage
    /// path, which decides and explains. So the fast path may refuse freely, but what it accepts must decode exactly
    /// as what the DynamicMessage path writes for the same JSON.
    pub fn encode_fast(&self, value: &Json<'_>, out: &mut Vec<u8>) -> bool {
        let Json::Object(entries) = value else { return false };
        let start = out.len();
        if self.fast.message(0, entries, 0, out) {
            true
        } else {
            out.truncate(start);
            false
        }
    }

    /// The DynamicMessage path: reads `value` into a dynamic message, then writes that.
    fn encode_dynamic(&self, value: &Value, out: &mut Vec<u8>) -> Result<(), Misfit> {
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
        match Json::parse(json) {
            Ok(value) if self.encode_fast(&value, out) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
        self.encode_text_dynamic(json, out)
    }

    /// The DynamicMessage path straight from text.
    fn encode_text_dynamic(&self, json: &[u8], out: &mut Vec<u8>) -> bool {
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
        && path.len().is_multiple_of(2)
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

/// How deep messages may nest in a value the fast path writes; deeper values take the DynamicMessage path.
const FAST_DEPTH: usize = 100;

/// Messages with up to this many fields sort a value's entries into a table on the stack.
const FAST_INLINE_FIELDS: usize = 32;

/// What the fast path knows of the chosen message and every message reachable from it, worked out once per schema.
#[derive(Debug)]
struct FastPlan {
    /// The chosen message first.
    messages: Vec<FastMessage>,
    enums: Vec<FastEnum>,
}

#[derive(Debug, Default)]
struct FastMessage {
    /// Every JSON key that names a field (its JSON name, and its declared name when different), with the field's
    /// position in `fields`. Each key appears once, resolved as the JSON reader resolves it: JSON name first.
    keys: Vec<(Box<str>, u16)>,
    /// The fields in field-number order, the order the DynamicMessage path writes them in.
    fields: Vec<FastField>,
    /// The positions of the fields of each oneof that has more than one field.
    oneofs: Vec<Vec<u16>>,
}

#[derive(Debug)]
struct FastField {
    number: u32,
    shape: Shape,
    /// The field's value, or for a list its elements, or for a map its values.
    leaf: Leaf,
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    Single,
    List { packed: bool },
    Map { key: Leaf },
}

/// One value's type and whether a default value is still written.
#[derive(Debug, Clone, Copy)]
struct Leaf {
    elem: Elem,
    presence: bool,
    /// For an enum without presence: the number that is not written.
    enum_default: i32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Elem {
    Double,
    Float,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Bool,
    String,
    Bytes,
    /// Index into `FastPlan::enums`.
    Enum(u32),
    /// Index into `FastPlan::messages`.
    Message(u32),
    /// Anything the fast path leaves to the DynamicMessage path: well-known types, groups, odd defaults.
    Refuse,
}

#[derive(Debug)]
struct FastEnum {
    /// Value names with their numbers, sorted by name.
    names: Vec<(Box<str>, i32)>,
}

const WIRE_VARINT: u64 = 0;
const WIRE_FIXED64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_FIXED32: u64 = 5;

impl Elem {
    fn wire_type(self) -> u64 {
        match self {
            Elem::Double | Elem::Fixed64 | Elem::Sfixed64 => WIRE_FIXED64,
            Elem::Float | Elem::Fixed32 | Elem::Sfixed32 => WIRE_FIXED32,
            Elem::String | Elem::Bytes | Elem::Message(_) | Elem::Refuse => WIRE_LEN,
            _ => WIRE_VARINT,
        }
    }

    /// Numbers, booleans and enums: what proto3 packs.
    fn packable(self) -> bool {
        !matches!(self, Elem::String | Elem::Bytes | Elem::Message(_) | Elem::Refuse)
    }
}

#[derive(Default)]
struct PlanBuilder {
    messages: Vec<FastMessage>,
    message_names: std::collections::HashMap<String, u32>,
    enums: Vec<FastEnum>,
    enum_names: std::collections::HashMap<String, u32>,
}

impl FastPlan {
    fn new(root: &MessageDescriptor) -> Self {
        let mut builder = PlanBuilder::default();
        builder.message(root);
        FastPlan { messages: builder.messages, enums: builder.enums }
    }
}

impl PlanBuilder {
    fn message(&mut self, desc: &MessageDescriptor) -> u32 {
        if let Some(&index) = self.message_names.get(desc.full_name()) {
            return index;
        }
        let index = self.messages.len() as u32;
        self.messages.push(FastMessage::default());
        self.message_names.insert(desc.full_name().to_owned(), index);

        let mut fields: Vec<_> = desc.fields().collect();
        fields.sort_by_key(|field| field.number());
        let mut planned = Vec::with_capacity(fields.len());
        for field in &fields {
            planned.push(self.field(field));
        }

        let position = |number: u32| fields.iter().position(|field| field.number() == number).unwrap_or(0) as u16;
        let mut keys: Vec<(Box<str>, u16)> = Vec::new();
        // The JSON reader tries JSON names before declared names.
        for field in desc.fields() {
            keys.push((field.json_name().into(), position(field.number())));
        }
        for field in desc.fields() {
            if !keys.iter().any(|(key, _)| **key == *field.name()) {
                keys.push((field.name().into(), position(field.number())));
            }
        }
        // Each key is unique now; put a field's names next to each other, in declaration order.
        let declared = |slot: u16| {
            desc.fields().position(|field| field.number() == fields[usize::from(slot)].number()).unwrap_or(0)
        };
        keys.sort_by_key(|(_, slot)| declared(*slot));

        let oneofs = desc
            .oneofs()
            .filter(|oneof| oneof.fields().len() > 1)
            .map(|oneof| oneof.fields().map(|field| position(field.number())).collect())
            .collect();
        self.messages[index as usize] = FastMessage { keys, fields: planned, oneofs };
        index
    }

    fn field(&mut self, field: &prost_reflect::FieldDescriptor) -> FastField {
        let number = field.number();
        if field.is_map() {
            let entry = field.kind();
            let entry = entry.as_message().expect("a map field's kind is its entry message");
            let key = self.leaf(&entry.map_entry_key_field());
            let value = self.leaf(&entry.map_entry_value_field());
            return FastField { number, shape: Shape::Map { key }, leaf: value };
        }
        let leaf = self.leaf(field);
        if field.is_list() {
            let packed = field.is_packed();
            let leaf = Leaf { presence: true, ..leaf };
            let leaf = if packed && !leaf.elem.packable() { Leaf { elem: Elem::Refuse, ..leaf } } else { leaf };
            return FastField { number, shape: Shape::List { packed }, leaf };
        }
        FastField { number, shape: Shape::Single, leaf }
    }

    fn leaf(&mut self, field: &prost_reflect::FieldDescriptor) -> Leaf {
        let presence = field.supports_presence();
        let kind = field.kind();
        let elem = match &kind {
            Kind::Double => Elem::Double,
            Kind::Float => Elem::Float,
            Kind::Int32 => Elem::Int32,
            Kind::Int64 => Elem::Int64,
            Kind::Uint32 => Elem::Uint32,
            Kind::Uint64 => Elem::Uint64,
            Kind::Sint32 => Elem::Sint32,
            Kind::Sint64 => Elem::Sint64,
            Kind::Fixed32 => Elem::Fixed32,
            Kind::Fixed64 => Elem::Fixed64,
            Kind::Sfixed32 => Elem::Sfixed32,
            Kind::Sfixed64 => Elem::Sfixed64,
            Kind::Bool => Elem::Bool,
            Kind::String => Elem::String,
            Kind::Bytes => Elem::Bytes,
            Kind::Enum(enumeration) if enumeration.full_name() == "google.protobuf.NullValue" => Elem::Refuse,
            Kind::Enum(enumeration) => Elem::Enum(self.enumeration(enumeration)),
            Kind::Message(message) if is_well_known(message) || field.is_group() => Elem::Refuse,
            Kind::Message(message) => Elem::Message(self.message(message)),
        };
        let mut enum_default = 0;
        let mut elem = elem;
        // A field without presence is skipped at its default; the fast path knows only the usual defaults.
        if !presence && !field.is_list() && !field.is_map() {
            let default = field.default_value();
            match (elem, default) {
                (Elem::Enum(_), prost_reflect::Value::EnumNumber(number)) => enum_default = number,
                (Elem::Message(_), _) => {}
                (_, default) if default.is_default(&kind) && !matches!(kind, Kind::Enum(_)) => {}
                _ => elem = Elem::Refuse,
            }
        }
        Leaf { elem, presence, enum_default }
    }

    fn enumeration(&mut self, desc: &prost_reflect::EnumDescriptor) -> u32 {
        if let Some(&index) = self.enum_names.get(desc.full_name()) {
            return index;
        }
        let mut names: Vec<(Box<str>, i32)> =
            desc.values().map(|value| (value.name().into(), value.number())).collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        // The reader looks names up in a map: with a name given twice (not valid protobuf), the first is kept.
        names.dedup_by(|later, earlier| later.0 == earlier.0);
        let index = self.enums.len() as u32;
        self.enums.push(FastEnum { names });
        self.enum_names.insert(desc.full_name().to_owned(), index);
        index
    }
}

/// A scalar read from JSON as the proto3 JSON reader reads it for its kind.
#[derive(Debug, Clone, Copy)]
enum Num {
    I32(i32),
    I64(i64),
    U32(u32),
    U64(u64),
    F32(f32),
    F64(f64),
    Bool(bool),
}

impl Num {
    /// Equal to the kind's default as `==` sees it (so -0.0 counts as 0.0, as in the DynamicMessage path).
    fn is_default(self) -> bool {
        match self {
            Num::I32(v) => v == 0,
            Num::I64(v) => v == 0,
            Num::U32(v) => v == 0,
            Num::U64(v) => v == 0,
            Num::F32(v) => v == 0.0,
            Num::F64(v) => v == 0.0,
            Num::Bool(v) => !v,
        }
    }
}

/// A JSON number as serde hands it to a visitor: non-negative integers as u64, negative ones as i64, the rest f64.
enum JsonNumber {
    U(u64),
    I(i64),
    F(f64),
}

fn json_number(value: &Json<'_>) -> Option<JsonNumber> {
    let Json::Number(number) = value else { return None };
    if let Some(u) = number.as_u64() {
        Some(JsonNumber::U(u))
    } else if let Some(i) = number.as_i64() {
        Some(JsonNumber::I(i))
    } else {
        number.as_f64().map(JsonNumber::F)
    }
}

/// An integer kind from a JSON number or decimal string, by the rules of the JSON reader's integer visitors.
macro_rules! integer {
    ($value:expr, $ty:ty) => {
        match $value {
            Json::String(text) => text.parse::<$ty>().ok(),
            value => match json_number(value)? {
                JsonNumber::U(u) => <$ty>::try_from(u).ok(),
                JsonNumber::I(i) => <$ty>::try_from(i).ok(),
                JsonNumber::F(f) => {
                    if f.fract() != 0.0 || f < (<$ty>::MIN as f64) || f > (<$ty>::MAX as f64) {
                        None
                    } else {
                        Some(f as $ty)
                    }
                }
            },
        }
    };
}

fn read_num(elem: Elem, value: &Json<'_>) -> Option<Num> {
    Some(match elem {
        Elem::Int32 | Elem::Sint32 | Elem::Sfixed32 => Num::I32(integer!(value, i32)?),
        Elem::Int64 | Elem::Sint64 | Elem::Sfixed64 => Num::I64(integer!(value, i64)?),
        Elem::Uint32 | Elem::Fixed32 => Num::U32(integer!(value, u32)?),
        Elem::Uint64 | Elem::Fixed64 => Num::U64(integer!(value, u64)?),
        // Floats given as strings ("NaN", "1e3") are left to the DynamicMessage path.
        Elem::Double => Num::F64(match json_number(value)? {
            JsonNumber::U(u) => u as f64,
            JsonNumber::I(i) => i as f64,
            JsonNumber::F(f) => f,
        }),
        Elem::Float => Num::F32(match json_number(value)? {
            JsonNumber::U(u) => u as f32,
            JsonNumber::I(i) => i as f32,
            JsonNumber::F(f) if f < f64::from(f32::MIN) || f > f64::from(f32::MAX) => return None,
            JsonNumber::F(f) => f as f32,
        }),
        Elem::Bool => match value {
            Json::Bool(flag) => Num::Bool(*flag),
            _ => return None,
        },
        _ => return None,
    })
}

/// A map key (always a JSON string) as the reader parses it for the key's kind.
fn read_key(elem: Elem, key: &str) -> Option<Num> {
    Some(match elem {
        Elem::Int32 | Elem::Sint32 | Elem::Sfixed32 => Num::I32(key.parse().ok()?),
        Elem::Int64 | Elem::Sint64 | Elem::Sfixed64 => Num::I64(key.parse().ok()?),
        Elem::Uint32 | Elem::Fixed32 => Num::U32(key.parse().ok()?),
        Elem::Uint64 | Elem::Fixed64 => Num::U64(key.parse().ok()?),
        Elem::Bool => Num::Bool(key.parse().ok()?),
        _ => return None,
    })
}

/// Writes a number of kind `elem` without its tag.
fn put_num(elem: Elem, num: Num, out: &mut Vec<u8>) {
    match (elem, num) {
        (Elem::Sint32, Num::I32(v)) => put_varint(u64::from(((v << 1) ^ (v >> 31)) as u32), out),
        (Elem::Sint64, Num::I64(v)) => put_varint(((v << 1) ^ (v >> 63)) as u64, out),
        (Elem::Sfixed32, Num::I32(v)) => out.extend_from_slice(&v.to_le_bytes()),
        (Elem::Sfixed64, Num::I64(v)) => out.extend_from_slice(&v.to_le_bytes()),
        (Elem::Fixed32, Num::U32(v)) => out.extend_from_slice(&v.to_le_bytes()),
        (Elem::Fixed64, Num::U64(v)) => out.extend_from_slice(&v.to_le_bytes()),
        (_, Num::F32(v)) => out.extend_from_slice(&v.to_le_bytes()),
        (_, Num::F64(v)) => out.extend_from_slice(&v.to_le_bytes()),
        // int32 and enums: negative values sign-extended to ten bytes, as the wire format has it.
        (_, Num::I32(v)) => put_varint(i64::from(v) as u64, out),
        (_, Num::I64(v)) => put_varint(v as u64, out),
        (_, Num::U32(v)) => put_varint(u64::from(v), out),
        (_, Num::U64(v)) => put_varint(v, out),
        (_, Num::Bool(v)) => out.push(u8::from(v)),
    }
}

#[inline]
fn put_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[inline]
fn put_tag(number: u32, wire_type: u64, out: &mut Vec<u8>) {
    put_varint((u64::from(number) << 3) | wire_type, out);
}

/// Reserves one byte for a length prefix; returns where the content starts.
#[inline]
fn open_len(out: &mut Vec<u8>) -> usize {
    out.push(0);
    out.len()
}

/// Fills in the length of what was written since `open_len`, moving it along when the length needs more than a byte.
fn close_len(start: usize, out: &mut Vec<u8>) {
    let len = out.len() - start;
    if len < 0x80 {
        out[start - 1] = len as u8;
        return;
    }
    let mut prefix = [0u8; 10];
    let mut size = 0;
    let mut rest = len as u64;
    while rest >= 0x80 {
        prefix[size] = (rest as u8) | 0x80;
        rest >>= 7;
        size += 1;
    }
    prefix[size] = rest as u8;
    size += 1;
    let extra = size - 1;
    out.resize(out.len() + extra, 0);
    out.copy_within(start..start + len, start + extra);
    out[start - 1..start - 1 + size].copy_from_slice(&prefix[..size]);
}

/// Standard or URL-safe base64, padded or not, as the JSON reader takes bytes; appended to `out`.
fn put_base64(text: &str, out: &mut Vec<u8>) -> bool {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::{alphabet, DecodeError, Engine as _};
    const CONFIG: GeneralPurposeConfig = GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, CONFIG);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, CONFIG);
    let start = out.len();
    match STANDARD.decode_vec(text, out) {
        Ok(()) => true,
        Err(DecodeError::InvalidByte(_, b'-' | b'_')) => {
            out.truncate(start);
            URL_SAFE.decode_vec(text, out).is_ok()
        }
        Err(_) => false,
    }
}

impl FastPlan {
    /// Writes the fields of `entries` as message `index`. False: not something the fast path writes.
    fn message(
        &self,
        index: u32,
        entries: &[(std::borrow::Cow<'_, str>, Json<'_>)],
        depth: usize,
        out: &mut Vec<u8>,
    ) -> bool {
        if depth > FAST_DEPTH {
            return false;
        }
        let message = &self.messages[index as usize];
        let count = message.fields.len();
        let mut inline: [Option<&Json<'_>>; FAST_INLINE_FIELDS] = [None; FAST_INLINE_FIELDS];
        let mut spilled: Vec<Option<&Json<'_>>>;
        let given: &mut [Option<&Json<'_>>] = if count <= FAST_INLINE_FIELDS {
            &mut inline[..count]
        } else {
            spilled = vec![None; count];
            &mut spilled
        };
        for (key, value) in entries {
            let Some(&(_, slot)) = message.keys.iter().find(|(name, _)| **name == **key) else { return false };
            let slot = &mut given[usize::from(slot)];
            // A field given twice (under both its names, say): the reader's rules for that are its own.
            if slot.is_some() {
                return false;
            }
            *slot = Some(value);
        }
        for oneof in &message.oneofs {
            let set =
                oneof.iter().filter(|&&slot| matches!(given[usize::from(slot)], Some(v) if !matches!(v, Json::Null)));
            if set.count() > 1 {
                return false;
            }
        }
        for (field, value) in message.fields.iter().zip(given.iter()) {
            match value {
                None => {}
                // Null is "absent", except for google.protobuf.Value and NullValue, where it is a value.
                Some(Json::Null) if field.leaf.elem == Elem::Refuse => return false,
                Some(Json::Null) => {}
                Some(value) if !self.field(field, value, depth, out) => return false,
                Some(_) => {}
            }
        }
        true
    }

    fn field(&self, field: &FastField, value: &Json<'_>, depth: usize, out: &mut Vec<u8>) -> bool {
        match field.shape {
            Shape::Single => self.leaf(field.number, &field.leaf, value, depth, out),
            Shape::List { packed } => {
                let Json::Array(items) = value else { return false };
                if items.is_empty() {
                    return true;
                }
                if !packed {
                    return items.iter().all(|item| self.leaf(field.number, &field.leaf, item, depth, out));
                }
                put_tag(field.number, WIRE_LEN, out);
                let start = open_len(out);
                for item in items {
                    let num = match field.leaf.elem {
                        Elem::Enum(index) => self.enum_number(index, item),
                        elem => read_num(elem, item),
                    };
                    let Some(num) = num else { return false };
                    put_num(field.leaf.elem, num, out);
                }
                close_len(start, out);
                true
            }
            Shape::Map { key } => {
                let Json::Object(entries) = value else { return false };
                // A key given twice is written twice; readers of the wire format keep the last, as the JSON
                // reader does.
                for (name, item) in entries {
                    put_tag(field.number, WIRE_LEN, out);
                    let start = open_len(out);
                    if !self.map_key(&key, name, out) || !self.leaf(2, &field.leaf, item, depth, out) {
                        return false;
                    }
                    close_len(start, out);
                }
                true
            }
        }
    }

    fn map_key(&self, key: &Leaf, name: &str, out: &mut Vec<u8>) -> bool {
        if key.elem == Elem::String {
            if !key.presence && name.is_empty() {
                return true;
            }
            put_tag(1, WIRE_LEN, out);
            put_varint(name.len() as u64, out);
            out.extend_from_slice(name.as_bytes());
            return true;
        }
        let Some(num) = read_key(key.elem, name) else { return false };
        if key.presence || !num.is_default() {
            put_tag(1, key.elem.wire_type(), out);
            put_num(key.elem, num, out);
        }
        true
    }

    fn enum_number(&self, index: u32, value: &Json<'_>) -> Option<Num> {
        let number = match value {
            Json::String(name) => {
                let names = &self.enums[index as usize].names;
                let at = names.binary_search_by(|(known, _)| (**known).cmp(&**name)).ok()?;
                names[at].1
            }
            value => match json_number(value)? {
                JsonNumber::U(u) => i32::try_from(u).ok()?,
                JsonNumber::I(i) => i32::try_from(i).ok()?,
                JsonNumber::F(_) => return None,
            },
        };
        Some(Num::I32(number))
    }

    /// One value with its tag (field `number`), skipped at its default when it has no presence.
    fn leaf(&self, number: u32, leaf: &Leaf, value: &Json<'_>, depth: usize, out: &mut Vec<u8>) -> bool {
        match leaf.elem {
            Elem::Refuse => false,
            Elem::Message(index) => {
                let Json::Object(entries) = value else { return false };
                put_tag(number, WIRE_LEN, out);
                let start = open_len(out);
                if !self.message(index, entries, depth + 1, out) {
                    return false;
                }
                close_len(start, out);
                true
            }
            Elem::String => {
                let Json::String(text) = value else { return false };
                if leaf.presence || !text.is_empty() {
                    put_tag(number, WIRE_LEN, out);
                    put_varint(text.len() as u64, out);
                    out.extend_from_slice(text.as_bytes());
                }
                true
            }
            Elem::Bytes => {
                let Json::String(text) = value else { return false };
                let before = out.len();
                put_tag(number, WIRE_LEN, out);
                let start = open_len(out);
                if !put_base64(text, out) {
                    return false;
                }
                if !leaf.presence && out.len() == start {
                    out.truncate(before);
                } else {
                    close_len(start, out);
                }
                true
            }
            Elem::Enum(index) => {
                let Some(num @ Num::I32(n)) = self.enum_number(index, value) else { return false };
                if leaf.presence || n != leaf.enum_default {
                    put_tag(number, WIRE_VARINT, out);
                    put_num(leaf.elem, num, out);
                }
                true
            }
            elem => {
                let Some(num) = read_num(elem, value) else { return false };
                if leaf.presence || !num.is_default() {
                    put_tag(number, elem.wire_type(), out);
                    put_num(elem, num, out);
                }
                true
            }
        }
    }
}

/// The `serde_json::Value` of a tree, for the DynamicMessage path: a key given twice keeps its first place and its
/// last value, as when the text is read into a `Value`.
fn json_to_value(json: &Json<'_>) -> Value {
    match json {
        Json::Null => Value::Null,
        Json::Bool(flag) => Value::Bool(*flag),
        Json::Number(number) => Value::Number(number.clone()),
        Json::String(text) => Value::String(text.clone().into_owned()),
        Json::Array(items) => Value::Array(items.iter().map(json_to_value).collect()),
        Json::Object(entries) => {
            let mut map = serde_json::Map::with_capacity(entries.len());
            for (key, value) in entries {
                map.insert(key.clone().into_owned(), json_to_value(value));
            }
            Value::Object(map)
        }
    }
}

#[cfg(test)]
mod tests;
