//! `mqtt-kafka-gateway schema avro --route NAME [--payload FILE]`: a starting Avro schema for what a
//! route writes, to register and refine. The spec's envelope with the payload as a map of JSON scalars
//! (any keys), or, given a sample payload whose keys are Avro names, a record typed from it; a raw
//! route's value is the payload itself, so it needs the sample.

use serde_json::{json, Map, Value};

use crate::core::routing::{PayloadFormat, Route, ValueFormat};

/// The schema, pretty-printed JSON; Err: why there is none.
pub fn avro(route: &Route, sample: Option<&[u8]>) -> Result<String, String> {
    let sample: Option<Value> = match sample {
        None => None,
        Some(bytes) => Some(serde_json::from_slice(bytes).map_err(|e| format!("the sample payload is not JSON: {e}"))?),
    };
    let mut names = Names::default();
    let schema = match route.format {
        ValueFormat::Raw => {
            let Some(sample) = &sample else {
                return Err(format!(
                    "route {} writes the payload itself (format: raw): give a sample with --payload FILE",
                    route.name
                ));
            };
            let t = infer(sample, "Payload", &mut names);
            if t.get("type") == Some(&json!("record")) {
                t
            } else {
                return Err(
                    "the sample payload is not an object with Avro field names; wrap it in a record by hand".into()
                );
            }
        }
        ValueFormat::Envelope => {
            let payload = match (route.payload, &sample) {
                (PayloadFormat::Json, Some(sample)) => infer(sample, "Payload", &mut names),
                (PayloadFormat::Json, None) => scalar_map(),
                (PayloadFormat::Text | PayloadFormat::Base64, _) => json!("string"),
            };
            json!({
                "type": "record",
                "name": "Envelope",
                "namespace": "mqtt_kafka_gateway",
                "doc": format!("What route {} writes: the MQTT topic, the device id, the payload and the receive time (epoch seconds).", route.name),
                "fields": [
                    {"name": "original_topic", "type": "string"},
                    {"name": "device_id", "type": "string"},
                    {"name": "payload", "type": payload},
                    {"name": "timestamp", "type": "double"}
                ]
            })
        }
    };
    Ok(serde_json::to_string_pretty(&schema).unwrap_or_default())
}

/// A map whose values may be any JSON scalar: carries an object with any keys.
fn scalar_map() -> Value {
    json!({"type": "map", "values": ["null", "boolean", "long", "double", "string"]})
}

/// Record names given so far (Avro names must be unique in a schema).
#[derive(Default)]
struct Names(Vec<String>);

impl Names {
    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut n = 2;
        while self.0.contains(&name) {
            name = format!("{base}{n}");
            n += 1;
        }
        self.0.push(name.clone());
        name
    }
}

fn is_avro_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `timestamp` → `Timestamp`, for a nested record's name.
fn type_name(field: &str) -> String {
    let mut out = String::new();
    let mut upper = true;
    for c in field.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_') {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, 'R');
    }
    out
}

fn infer(v: &Value, name: &str, names: &mut Names) -> Value {
    match v {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("boolean"),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!("long"),
        Value::Number(_) => json!("double"),
        Value::String(_) => json!("string"),
        Value::Array(items) => {
            let item = items.first().map_or_else(|| json!("string"), |first| infer(first, name, names));
            json!({"type": "array", "items": item})
        }
        Value::Object(fields) if !fields.is_empty() && fields.keys().all(|k| is_avro_name(k)) => {
            let record = names.fresh(&type_name(name));
            let fields: Vec<Value> = fields
                .iter()
                .map(|(k, v)| {
                    let mut f = Map::new();
                    f.insert("name".into(), json!(k));
                    f.insert("type".into(), infer(v, k, names));
                    Value::Object(f)
                })
                .collect();
            json!({"type": "record", "name": record, "fields": fields})
        }
        Value::Object(_) => scalar_map(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::encoding::avro::AvroSchema;
    use crate::core::routing::tests::route;

    fn encodes(schema: &str, value: &Value) {
        let s = AvroSchema::parse(schema, &[]).unwrap_or_else(|e| panic!("{e}\n{schema}"));
        let value = crate::core::encoding::json::Json::from(value);
        s.encode(&value, &mut Vec::new()).unwrap_or_else(|e| panic!("{e}\n{schema}"));
    }

    #[test]
    fn the_envelope_schema_takes_the_spec_record_and_a_sample_types_the_payload() {
        let r = route("spec", "cmnd/#", "raw_iot_data");
        let spec_record = json!({"original_topic": "cmnd/x", "device_id": "x", "payload": {"timestamp": "t", "door-sensor-1": false}, "timestamp": 1.5});
        encodes(&avro(&r, None).unwrap(), &spec_record);
        let sample = br#"{"temp": 21.5, "count": 3, "site": {"lat": 1.0}, "tags": ["a"], "labels": {"door-1": "x"}}"#;
        let schema = avro(&r, Some(sample)).unwrap();
        assert!(schema.contains("\"Site\"") && schema.contains("\"long\""), "{schema}");
        let value = json!({"original_topic": "t", "device_id": "d", "payload": serde_json::from_slice::<Value>(sample).unwrap(), "timestamp": 1.0});
        encodes(&schema, &value);
    }

    #[test]
    fn a_raw_route_needs_a_sample_with_avro_names() {
        let mut r = route("raw", "tele/#", "t");
        r.format = ValueFormat::Raw;
        assert!(avro(&r, None).unwrap_err().contains("--payload"));
        assert!(avro(&r, Some(b"[1]")).unwrap_err().contains("not an object"));
        assert!(avro(&r, Some(b"not json")).unwrap_err().contains("not JSON"));
        let schema = avro(&r, Some(br#"{"a": 1, "b": {"a": 2}}"#)).unwrap();
        encodes(&schema, &json!({"a": 1, "b": {"a": 2}}));
    }
}
