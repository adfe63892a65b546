//! The Protobuf encoder's tests: schemas, message indexes, misfits, and the fast path against the dynamic one.

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
        ProtoSchema::parse("syntax = \"proto3\";\nmessage Node { Node child = 1; int32 n = 2; }\n", &[], None).unwrap();
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
        #![proptest_config(ProptestConfig::with_cases(256))]

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

mod fast {
    use super::*;
    use proptest::prelude::*;

    pub(super) const KINDS_PROTO: &str = r#"syntax = "proto3";
package kinds;

import "google/protobuf/any.proto";
import "google/protobuf/struct.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";

enum Color {
  COLOR_UNSPECIFIED = 0;
  RED = 1;
  GREEN = 2;
  NEGATIVE = -1;
}

message Inner {
  string name = 1;
  int32 n = 2;
  Inner child = 3;
  repeated int64 ids = 4;
}

message All {
  double f_double = 1;
  float f_float = 2;
  int32 f_int32 = 3;
  int64 f_int64 = 4;
  uint32 f_uint32 = 5;
  uint64 f_uint64 = 6;
  sint32 f_sint32 = 7;
  sint64 f_sint64 = 8;
  fixed32 f_fixed32 = 9;
  fixed64 f_fixed64 = 10;
  sfixed32 f_sfixed32 = 11;
  sfixed64 f_sfixed64 = 12;
  bool f_bool = 13;
  string f_string = 14;
  bytes f_bytes = 15;
  Color f_enum = 16;
  Inner f_inner = 17;

  repeated double r_double = 21;
  repeated float r_float = 22;
  repeated int32 r_int32 = 23;
  repeated int64 r_int64 = 24;
  repeated uint32 r_uint32 = 25;
  repeated uint64 r_uint64 = 26;
  repeated sint32 r_sint32 = 27;
  repeated sint64 r_sint64 = 28;
  repeated fixed32 r_fixed32 = 29;
  repeated fixed64 r_fixed64 = 30;
  repeated sfixed32 r_sfixed32 = 31;
  repeated sfixed64 r_sfixed64 = 32;
  repeated bool r_bool = 33;
  repeated string r_string = 34;
  repeated bytes r_bytes = 35;
  repeated Color r_enum = 36;
  repeated Inner r_inner = 37;
  repeated int32 u_int32 = 38 [packed = false];
  repeated Color u_enum = 39 [packed = false];
  repeated double u_double = 40 [packed = false];

  map<string, string> m_string = 41;
  map<int32, Inner> m_int32 = 42;
  map<int64, Color> m_int64 = 43;
  map<uint32, bytes> m_uint32 = 44;
  map<uint64, double> m_uint64 = 45;
  map<sint32, int64> m_sint32 = 46;
  map<sint64, bool> m_sint64 = 47;
  map<fixed32, float> m_fixed32 = 48;
  map<fixed64, uint64> m_fixed64 = 49;
  map<sfixed32, sint32> m_sfixed32 = 50;
  map<sfixed64, string> m_sfixed64 = 51;
  map<bool, int32> m_bool = 52;

  optional int32 o_int32 = 61;
  optional string o_string = 62;
  optional Color o_enum = 63;
  optional bool o_bool = 64;
  optional double o_double = 65;
  optional bytes o_bytes = 66;

  oneof choice {
string c_string = 71;
int64 c_int64 = 72;
Inner c_inner = 73;
  }

  string custom = 80 [json_name = "renamed"];
  int32 far_field = 536870911;

  google.protobuf.Timestamp w_time = 90;
  google.protobuf.Struct w_struct = 91;
  google.protobuf.Int32Value w_int = 92;
  google.protobuf.Any w_any = 93;
  repeated google.protobuf.StringValue w_strings = 94;
  map<string, google.protobuf.Value> w_values = 95;
  google.protobuf.NullValue w_null = 96;
  google.protobuf.Value w_value = 97;
}
"#;

    const PROTO2: &str = r#"syntax = "proto2";
package two;

message P2 {
  enum E {
E_ONE = 1;
E_TWO = 2;
  }
  optional int32 a = 1 [default = 5];
  optional string s = 2 [default = "x"];
  repeated int32 r = 3;
  repeated int32 rp = 4 [packed = true];
  required bool b = 5;
  optional E e = 6;
  optional group G = 7 {
optional int32 x = 1;
  }
  map<string, int32> m = 8;
}
"#;

    pub(super) fn kinds() -> ProtoSchema {
        ProtoSchema::parse(KINDS_PROTO, &[], Some("kinds.All")).unwrap()
    }

    fn proto2() -> ProtoSchema {
        ProtoSchema::parse(PROTO2, &[], Some("two.P2")).unwrap()
    }

    /// Whether the fast path takes `value`; when it does, its bytes must decode as the DynamicMessage path's.
    pub(super) fn check(schema: &ProtoSchema, value: &Value) -> Result<bool, String> {
        let mut fast = vec![0xEE];
        if !schema.encode_fast(&Json::from(value), &mut fast) {
            if fast != [0xEE] {
                return Err(format!("refused but wrote {}", hex(&fast)));
            }
            return Ok(false);
        }
        let mut slow = Vec::new();
        if let Err(misfit) = schema.encode_dynamic(value, &mut slow) {
            return Err(format!("fast path took what the DynamicMessage path refuses: {misfit}"));
        }
        let fast_message = DynamicMessage::decode(schema.descriptor.clone(), &fast[1..])
            .map_err(|err| format!("fast bytes {} do not decode: {err}", hex(&fast[1..])))?;
        if fast_message != decode(schema, &slow) {
            return Err(format!("fast {} != slow {}", hex(&fast[1..]), hex(&slow)));
        }
        Ok(true)
    }

    fn long(n: usize) -> String {
        "x".repeat(n)
    }

    fn accepted_cases() -> Vec<(&'static str, Value)> {
        vec![
            ("empty", json!({})),
            (
                "every scalar",
                json!({
                    "f_double": 1.5, "f_float": -2.25, "f_int32": -7, "f_int64": -9_000_000_000_i64,
                    "f_uint32": 4_000_000_000_u32, "f_uint64": u64::MAX, "f_sint32": -3, "f_sint64": i64::MIN,
                    "f_fixed32": 7, "f_fixed64": 8, "f_sfixed32": -9, "f_sfixed64": -10, "f_bool": true,
                    "f_string": "héllo", "f_bytes": "AAEC/w==", "f_enum": "GREEN", "f_inner": {"name": "in", "n": 2}
                }),
            ),
            ("json names", json!({"fDouble": 2.0, "fInt64": 5, "fEnum": "RED", "rInt32": [1], "oInt32": 0})),
            ("custom json name", json!({"renamed": "r"})),
            ("declared name despite custom json name", json!({"custom": "c"})),
            ("far field number", json!({"farField": 1})),
            (
                "integers from strings",
                json!({
                    "f_int32": "-12", "f_int64": "-9223372036854775808", "f_uint32": "4294967295",
                    "f_uint64": "18446744073709551615", "f_sint32": "+5", "f_sint64": "007",
                    "f_fixed32": "1", "f_fixed64": "2", "f_sfixed32": "-3", "f_sfixed64": "-4"
                }),
            ),
            (
                "integers from whole floats",
                json!({"f_int32": 3.0, "f_int64": -1e15, "f_uint64": 1e19, "f_uint32": -0.0}),
            ),
            ("int64 at the float edge", json!({"f_int64": 9.2e18, "f_sint64": -9.2e18, "f_uint64": 1.8e19})),
            ("doubles from integers", json!({"f_double": 3, "f_float": -4, "r_double": [u64::MAX, i64::MIN, 0.1]})),
            ("float rounding", json!({"f_float": 0.1, "r_float": [3.4e38, -3.4e38, 1e-46]})),
            ("enum by number", json!({"f_enum": 2, "r_enum": [0, 1, -1, 77], "u_enum": ["RED", 5, "NEGATIVE"]})),
            ("enum unknown number", json!({"f_enum": 12345})),
            (
                "defaults skipped",
                json!({
                    "f_double": 0.0, "f_float": -0.0, "f_int32": 0, "f_int64": "0", "f_uint32": 0, "f_uint64": 0,
                    "f_sint32": 0, "f_sint64": 0, "f_fixed32": 0, "f_fixed64": 0, "f_sfixed32": 0,
                    "f_sfixed64": 0, "f_bool": false, "f_string": "", "f_bytes": "", "f_enum": "COLOR_UNSPECIFIED",
                    "r_int32": [], "m_string": {}, "custom": ""
                }),
            ),
            (
                "optional fields at default are written",
                json!({"o_int32": 0, "o_string": "", "o_enum": 0, "o_bool": false, "o_double": -0.0, "o_bytes": ""}),
            ),
            (
                "optional fields set",
                json!({"o_int32": -1, "o_string": "s", "o_enum": "RED", "o_bool": true, "o_double": 2.5}),
            ),
            (
                "nulls are absent",
                json!({"f_int32": null, "f_inner": null, "r_int32": null, "m_string": null, "o_int32": null}),
            ),
            ("empty nested message is written", json!({"f_inner": {}})),
            (
                "packed repeated",
                json!({
                    "r_double": [1.0, -0.0], "r_float": [1.5], "r_int32": [1, -1, 0], "r_int64": ["5", -5],
                    "r_uint32": [0, 4294967295_u32], "r_uint64": [u64::MAX], "r_sint32": [-1, 1], "r_sint64": [i64::MIN],
                    "r_fixed32": [1, 2], "r_fixed64": [3], "r_sfixed32": [-1], "r_sfixed64": [-2], "r_bool": [true, false],
                    "r_enum": ["RED", "COLOR_UNSPECIFIED"]
                }),
            ),
            ("unpacked repeated", json!({"u_int32": [0, -1, 300], "u_double": [0.0, 1.0], "u_enum": [0]})),
            (
                "repeated strings, bytes, messages",
                json!({"r_string": ["", "a"], "r_bytes": ["", "AQ"], "r_inner": [{}, {"n": 1, "ids": [1, 2]}]}),
            ),
            ("long packed list", json!({"r_int64": (0..200).map(|i| i * 1_000_000_007_i64).collect::<Vec<_>>()})),
            ("string maps", json!({"m_string": {"a": "1", "": "", "é": "x"}})),
            (
                "int32 map of messages",
                json!({"m_int32": {"1": {"name": "one"}, "-2": {}, "0": {"n": 0}, "+3": {"n": 3}}}),
            ),
            (
                "int64 map of enums",
                json!({"m_int64": {"9223372036854775807": "RED", "0": 0, "-1": "COLOR_UNSPECIFIED"}}),
            ),
            ("uint32 map of bytes", json!({"m_uint32": {"4294967295": "/w", "0": ""}})),
            ("uint64 map of doubles", json!({"m_uint64": {"18446744073709551615": 0.0, "1": -1.5}})),
            ("sint maps", json!({"m_sint32": {"-5": "-5"}, "m_sint64": {"-9223372036854775808": true, "0": false}})),
            ("fixed maps", json!({"m_fixed32": {"7": 0.5}, "m_fixed64": {"8": "18446744073709551615"}})),
            ("sfixed maps", json!({"m_sfixed32": {"-1": -1}, "m_sfixed64": {"-2": "two"}})),
            ("bool map", json!({"m_bool": {"true": 1, "false": 0}})),
            ("oneof string", json!({"c_string": "s", "c_int64": null})),
            ("oneof at default is written", json!({"cInt64": 0})),
            ("oneof message", json!({"c_inner": {}})),
            ("bytes: standard, padded", json!({"f_bytes": "aGVsbG8="})),
            ("bytes: standard, unpadded", json!({"f_bytes": "aGVsbG8"})),
            ("bytes: url-safe", json!({"f_bytes": "-_-_", "r_bytes": ["_w==", "-w"]})),
            ("bytes: trailing bits", json!({"f_bytes": "AB"})),
            ("long string", json!({"f_string": long(200), "f_inner": {"name": long(20_000)}})),
            (
                "deep nesting with long contents",
                json!({"f_inner": {"child": {"child": {"name": long(130), "child": {"ids": [1, 2, 3]}}}}}),
            ),
            ("wkt keys given null are not there", json!({"f_int32": 1})),
        ]
    }

    #[test]
    fn fast_path_matches_the_dynamic_path() {
        let schema = kinds();
        let mut wrong = Vec::new();
        for (what, value) in accepted_cases() {
            match check(&schema, &value) {
                Ok(true) => {}
                Ok(false) => wrong.push(format!("{what}: refused")),
                Err(err) => wrong.push(format!("{what}: {err}")),
            }
            // Without maps of several entries the order is fixed, so the bytes are the same too.
            if !what.contains("map") {
                let mut fast = Vec::new();
                let mut slow = Vec::new();
                if schema.encode_fast(&Json::from(&value), &mut fast)
                    && schema.encode_dynamic(&value, &mut slow).is_ok()
                    && fast != slow
                {
                    wrong.push(format!("{what}: bytes {} vs {}", hex(&fast), hex(&slow)));
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn fast_path_matches_on_the_reading_schema() {
        let schema = reading();
        for (what, value) in reading_cases() {
            let took = check(&schema, &value).unwrap_or_else(|err| panic!("{what}: {err}"));
            // Only the cases that need a Timestamp are left to the DynamicMessage path.
            let needs_wkt = value.get("taken_at").or(value.get("takenAt")).is_some();
            assert_eq!(took, !needs_wkt, "{what}");
        }
    }

    #[test]
    fn fast_path_refuses_what_it_does_not_know() {
        let schema = kinds();
        let cases: &[(&str, Value)] = &[
            ("timestamp", json!({"w_time": "2024-05-01T12:30:00Z"})),
            ("timestamp null", json!({"w_time": null})),
            ("struct", json!({"w_struct": {"a": 1}})),
            ("wrapper", json!({"w_int": 5})),
            ("any", json!({"w_any": {"@type": "type.googleapis.com/kinds.Inner", "name": "x"}})),
            ("repeated wrapper", json!({"w_strings": ["a"]})),
            ("map of Value", json!({"w_values": {"a": null}})),
            ("null value enum", json!({"w_null": null})),
            ("null Value", json!({"w_value": null})),
            ("a field given as both its names", json!({"far_field": 1, "farField": null})),
            ("int64 past the float edge", json!({"f_int64": 9.3e18})),
            ("unknown key", json!({"f_int32": 1, "colour": "red"})),
            ("unknown key nested", json!({"f_inner": {"nam": "x"}})),
            ("unknown enum name", json!({"f_enum": "PURPLE"})),
            ("enum name in a list", json!({"r_enum": ["RED", "PURPLE"]})),
            ("enum number as string", json!({"f_enum": "1"})),
            ("enum as float", json!({"f_enum": 1.0})),
            ("enum out of range", json!({"f_enum": 2147483648_i64})),
            ("string for int", json!({"f_int32": "x"})),
            ("fraction for int", json!({"f_int64": 1.5})),
            ("int32 overflow", json!({"f_int32": 2147483648_i64})),
            ("int32 overflow from string", json!({"f_int32": "2147483648"})),
            ("negative uint", json!({"f_uint32": -1})),
            ("negative uint64 string", json!({"f_uint64": "-1"})),
            ("float out of range", json!({"f_float": 1e39})),
            ("double from string", json!({"f_double": "1.5"})),
            ("NaN string", json!({"f_double": "NaN"})),
            ("Infinity string", json!({"f_float": "Infinity"})),
            ("number for string", json!({"f_string": 5})),
            ("string for bool", json!({"f_bool": "true"})),
            ("bad base64", json!({"f_bytes": "!!"})),
            ("mixed base64 alphabets", json!({"f_bytes": "+-"})),
            ("object for a list", json!({"r_int32": {"a": 1}})),
            ("null in a list", json!({"r_int32": [1, null]})),
            ("null in a message list", json!({"r_inner": [null]})),
            ("array for a message", json!({"f_inner": [1]})),
            ("array for a map", json!({"m_string": ["a"]})),
            ("null map value", json!({"m_string": {"a": null}})),
            ("bad int map key", json!({"m_int32": {"x": {}}})),
            ("bad bool map key", json!({"m_bool": {"1": 1}})),
            ("oneof twice", json!({"c_string": "s", "c_int64": 1})),
            ("oneof twice with a default", json!({"c_string": "", "c_inner": {}})),
            ("a field under both names", json!({"f_int32": 1, "fInt32": 1})),
            ("not an object", json!([1])),
            ("null message", Value::Null),
        ];
        let mut wrong = Vec::new();
        for (what, value) in cases {
            match check(&schema, value) {
                Ok(false) => {}
                Ok(true) => wrong.push(format!("{what}: taken")),
                Err(err) => wrong.push(format!("{what}: {err}")),
            }
            // `encode` still answers as the DynamicMessage path does.
            let mut ours = Vec::new();
            let mut theirs = Vec::new();
            let ours = schema.encode(value, &mut ours).map(|()| ours);
            let theirs = schema.encode_dynamic(value, &mut theirs).map(|()| theirs);
            if ours != theirs {
                wrong.push(format!("{what}: encode {ours:?} vs {theirs:?}"));
            }
            let mut out = Vec::new();
            let json_result = schema.encode_json(&Json::from(value), &mut out).map(|()| out);
            if json_result != theirs {
                wrong.push(format!("{what}: encode_json {json_result:?} vs {theirs:?}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn from_text() {
        let schema = kinds();
        let cases: &[(&str, bool)] = &[
            (r#"{"f_string": "a\"b\u00e9", "m_string": {"k\u0065y": "v"}}"#, true),
            // A map key given twice: the last value wins on both paths.
            (r#"{"m_string": {"a": "1", "b": "2", "a": "3"}}"#, true),
            (r#"{"m_int32": {"1": {"n": 1}, "01": {"n": 2}}}"#, true),
            // A field given twice is left to the DynamicMessage path.
            (r#"{"f_int32": 1, "f_int32": 2}"#, false),
            (r#"{"c_string": "a", "c_string": "b"}"#, false),
            (r#"{"f_int32": 1} x"#, false),
        ];
        for (text, fast) in cases {
            let json = Json::parse(text.as_bytes());
            let took = json.as_ref().is_ok_and(|json| schema.encode_fast(json, &mut Vec::new()));
            assert_eq!(took, *fast, "{text}");
            let mut via_text = Vec::new();
            let text_ok = schema.encode_text(text.as_bytes(), &mut via_text);
            let mut dynamic = Vec::new();
            let dynamic_ok = schema.encode_text_dynamic(text.as_bytes(), &mut dynamic);
            assert_eq!(text_ok, dynamic_ok, "{text}");
            if text_ok {
                assert_eq!(decode(&schema, &via_text), decode(&schema, &dynamic), "{text}");
                let mut via_json = Vec::new();
                schema.encode_json(&json.unwrap(), &mut via_json).unwrap();
                assert_eq!(decode(&schema, &via_json), decode(&schema, &dynamic), "{text}");
            }
        }
    }

    #[test]
    fn proto2_presence_and_groups() {
        let schema = proto2();
        let cases: &[(Value, bool)] = &[
            (json!({"a": 0, "s": "", "b": false}), true),
            (json!({"a": 5, "s": "x", "e": "E_ONE", "b": true}), true),
            (json!({"r": [1, 2], "rp": [3, 4], "m": {"": 0}}), true),
            (json!({"e": 7}), true),
            (json!({"G": {"x": 1}}), false),
            (json!({"g": {"x": 1}}), false),
        ];
        for (value, fast) in cases {
            assert_eq!(check(&schema, value), Ok(*fast), "{value}");
        }
        let mut out = Vec::new();
        assert!(schema.encode_fast(&Json::from(&json!({"a": 0, "r": [1, 2]})), &mut out));
        // Presence: a at its default is written; r unpacked, as proto2 has it.
        assert_eq!(out, [0x08, 0x00, 0x18, 0x01, 0x18, 0x02]);
    }

    #[test]
    fn deep_values_are_left_to_the_dynamic_path() {
        let deep =
            ProtoSchema::parse("syntax = \"proto3\";\nmessage Node { Node child = 1; int32 n = 2; }\n", &[], None)
                .unwrap();
        let nest = |depth: usize| {
            let mut value = json!({"n": 1});
            for _ in 0..depth {
                value = json!({ "child": value });
            }
            value
        };
        assert_eq!(check(&deep, &nest(50)), Ok(true));
        assert_eq!(check(&deep, &nest(127)), Ok(false));
        deep.encode(&nest(127), &mut Vec::new()).unwrap();
    }

    #[test]
    fn lengths_of_every_size() {
        let schema = kinds();
        for n in [0, 1, 126, 127, 128, 129, 16_382, 16_383, 16_384, 70_000] {
            let value = json!({"f_inner": {"name": long(n), "child": {"name": long(n)}}, "f_string": long(n)});
            assert_eq!(check(&schema, &value), Ok(true), "{n}");
            let mut fast = Vec::new();
            let mut slow = Vec::new();
            assert!(schema.encode_fast(&Json::from(&value), &mut fast));
            schema.encode_dynamic(&value, &mut slow).unwrap();
            assert_eq!(fast, slow, "{n}");
        }
    }

    pub(super) const KEYS: &[&str] = &[
        "f_double",
        "f_float",
        "f_int32",
        "f_int64",
        "f_uint32",
        "f_uint64",
        "f_sint32",
        "f_sint64",
        "f_fixed32",
        "f_fixed64",
        "f_sfixed32",
        "f_sfixed64",
        "f_bool",
        "f_string",
        "f_bytes",
        "f_enum",
        "f_inner",
        "r_double",
        "r_float",
        "r_int32",
        "r_int64",
        "r_uint32",
        "r_uint64",
        "r_sint32",
        "r_sint64",
        "r_fixed32",
        "r_fixed64",
        "r_sfixed32",
        "r_sfixed64",
        "r_bool",
        "r_string",
        "r_bytes",
        "r_enum",
        "r_inner",
        "u_int32",
        "u_enum",
        "u_double",
        "m_string",
        "m_int32",
        "m_int64",
        "m_uint32",
        "m_uint64",
        "m_sint32",
        "m_sint64",
        "m_fixed32",
        "m_fixed64",
        "m_sfixed32",
        "m_sfixed64",
        "m_bool",
        "o_int32",
        "o_string",
        "o_enum",
        "o_bool",
        "o_double",
        "o_bytes",
        "c_string",
        "c_int64",
        "c_inner",
        "renamed",
        "custom",
        "far_field",
        "w_time",
        "w_value",
        "w_null",
        "wStruct",
        "fInt32",
        "oString",
        "cInt64",
        "name",
        "n",
        "child",
        "ids",
    ];

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => proptest::sample::select(KEYS).prop_map(str::to_owned),
            1 => "[a-z_]{0,6}",
            1 => "-?[0-9]{1,3}",
            1 => Just("true".to_owned()),
        ]
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-3_i64..300).prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            prop_oneof![Just(0.0), Just(-0.0), Just(1.0), Just(0.5), Just(3e38), Just(4e38), Just(1e19)]
                .prop_map(Value::from),
            "-?[0-9]{1,20}".prop_map(Value::from),
            "[A-Za-z0-9+/_-]{0,8}={0,2}".prop_map(Value::from),
            prop_oneof![Just("RED"), Just("GREEN"), Just("COLOR_UNSPECIFIED"), Just("PURPLE"), Just("NaN")]
                .prop_map(Value::from),
            "\\PC{0,6}".prop_map(Value::from),
        ]
    }

    pub(super) fn value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
                prop::collection::vec((key(), inner), 0..8)
                    .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
            ]
        })
    }

    /// An object of the schema's own keys, so that most of what is generated reaches the fields.
    pub(super) fn object() -> impl Strategy<Value = Value> {
        prop::collection::vec((key(), value()), 0..10).prop_map(|pairs| Value::Object(pairs.into_iter().collect()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn whatever_the_fast_path_takes_decodes_as_the_dynamic_path(value in object()) {
            let schema = kinds();
            if let Err(err) = check(&schema, &value) {
                prop_assert!(false, "{}: {}", value, err);
            }
        }

        #[test]
        fn reading_values_too(value in object()) {
            if let Err(err) = check(&reading(), &value) {
                prop_assert!(false, "{}: {}", value, err);
            }
        }
    }

    /// How often generated values take the fast path, to see that the property test reaches it.
    #[test]
    fn generated_values_reach_the_fast_path() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let schema = kinds();
        let mut runner = TestRunner::deterministic();
        let strategy = object();
        let mut taken = 0;
        for _ in 0..2000 {
            let value = strategy.new_tree(&mut runner).unwrap().current();
            if check(&schema, &value).unwrap() {
                taken += 1;
            }
        }
        assert!(taken > 200, "only {taken} of 2000 taken");
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

/// For instruction counts: `BENCH_MODE=fast|dynamic BENCH_N=1000 valgrind --tool=callgrind <test binary>
/// --ignored --exact protobuf::tests::bench_envelope`; the difference between two N, divided, is one encode.
#[test]
#[ignore = "a workload for callgrind"]
fn bench_envelope() {
    const PROTO: &str = "syntax = \"proto3\";\npackage bench;\nmessage Envelope { string original_topic = 1; \
                         string device_id = 2; Payload payload = 3; double timestamp = 4; }\nmessage Payload { \
                         int64 seq = 1; int64 sent_us = 2; string fill = 3; }\n";
    let schema = ProtoSchema::parse(PROTO, &[], Some("bench.Envelope")).unwrap();
    let text = format!(
        r#"{{"original_topic":"bench/dev-7/data","device_id":"dev-7","payload":{{"seq":17,"sent_us":1733300000000000,"fill":"{}"}},"timestamp":1733300000.123456}}"#,
        "x".repeat(90)
    );
    let runs: usize = std::env::var("BENCH_N").ok().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let mode = std::env::var("BENCH_MODE").unwrap_or_else(|_| "fast".to_owned());
    let mut out = Vec::with_capacity(256);
    let mut total = 0;
    for _ in 0..runs {
        out.clear();
        let text = std::hint::black_box(text.as_bytes());
        match mode.as_str() {
            "fast" => assert!(schema.encode_fast(&Json::parse(text).unwrap(), &mut out)),
            "json" => schema.encode_json(&Json::parse(text).unwrap(), &mut out).unwrap(),
            _ => assert!(schema.encode_text_dynamic(text, &mut out)),
        }
        total += out.len();
    }
    let mut slow = Vec::new();
    assert!(schema.encode_text_dynamic(text.as_bytes(), &mut slow));
    assert_eq!(out, slow, "same bytes on both paths");
    println!("{mode}: {runs} encodes, {} bytes each", total / runs.max(1));
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
