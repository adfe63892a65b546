//! A JSON tree that borrows from the text it was read from, for encoders that walk a value once.
//!
//! `serde_json::Value` copies every string and, with `preserve_order`, hashes every key into an
//! `IndexMap`; reading a record that way costs several times what encoding it does. [`Json`] is read by
//! the same parser (same grammar, same errors, same nesting limit) but keeps strings without escapes as
//! slices of the text and objects as plain vectors of entries, in the order written.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

/// A JSON value read without copying what it can borrow: strings without escapes point into the text, objects are
/// vectors of entries in document order (no hashing). Built for one pass of encoding, then dropped.
///
/// An object keeps every entry, a key given twice included; what a repeated key means is left to the reader
/// of the tree (`serde_json::Value` keeps the last value).
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// Parses `text` (serde_json's parser: same grammar, same errors, same nesting limit of 128, which lets
    /// 127 arrays and objects nest).
    pub fn parse(text: &'a [u8]) -> Result<Json<'a>, serde_json::Error> {
        // Checking the UTF-8 of the whole text at once costs a fraction of what serde_json spends checking
        // each string in turn; text that fails is read as bytes, for the error serde_json gives there.
        match std::str::from_utf8(text) {
            Ok(text) => serde_json::from_str(text),
            Err(_) => serde_json::from_slice(text),
        }
    }

    /// The value of the first entry with that key, for objects.
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    /// Any number as an `f64` (integers beyond 2^53 rounded).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Number(n) => n.as_f64(),
            _ => None,
        }
    }

    pub fn is_object(&self) -> bool {
        matches!(self, Json::Object(_))
    }
}

/// Borrows the strings of a `serde_json::Value`, as the tree of the same JSON would.
impl<'a> From<&'a Value> for Json<'a> {
    fn from(v: &'a Value) -> Self {
        match v {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Number(n) => Json::Number(n.clone()),
            Value::String(s) => Json::String(Cow::Borrowed(s)),
            Value::Array(items) => Json::Array(items.iter().map(Json::from).collect()),
            Value::Object(entries) => {
                Json::Object(entries.iter().map(|(k, v)| (Cow::Borrowed(k.as_str()), Json::from(v))).collect())
            }
        }
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

/// An object key, borrowed when the text allows.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Key(Cow::Borrowed(s)))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Key(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(Key(Cow::Owned(s)))
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        Deserialize::deserialize(deserializer)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        Ok(Json::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Self::Value, E> {
        Ok(Json::Number(i.into()))
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Self::Value, E> {
        Ok(Json::Number(u.into()))
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Self::Value, E> {
        // JSON text has no NaN or infinity (serde_json refuses numbers out of range), so this always holds.
        Number::from_f64(f).map(Json::Number).ok_or_else(|| E::custom("a number that is not finite"))
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Json::String(Cow::Borrowed(s)))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Json::String(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(Json::String(Cow::Owned(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some((Key(key), value)) = map.next_entry()? {
            entries.push((key, value));
        }
        Ok(Json::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Json<'_> {
        Json::parse(text.as_bytes()).unwrap()
    }

    fn borrowed(j: &Json<'_>) -> bool {
        matches!(j, Json::String(Cow::Borrowed(_)))
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let text = r#"{"plain":"abc","escaped":"a\"b\u00e9\n","k\u0065y":"x","":""}"#;
        let json = parse(text);
        let Json::Object(entries) = &json else { panic!("{json:?}") };
        assert_eq!(entries.len(), 4);
        let plain = json.get("plain").unwrap();
        assert!(borrowed(plain));
        // Borrowed from the text itself.
        let s = plain.as_str().unwrap();
        assert!(text.as_bytes().as_ptr_range().contains(&s.as_ptr()));
        let escaped = json.get("escaped").unwrap();
        assert!(!borrowed(escaped));
        assert_eq!(escaped.as_str(), Some("a\"bé\n"));
        assert!(matches!(entries[0].0, Cow::Borrowed("plain")));
        assert!(matches!(&entries[2].0, Cow::Owned(k) if k == "key"));
        assert_eq!(json.get("key").and_then(Json::as_str), Some("x"));
        assert_eq!(json.get(""), Some(&Json::String(Cow::Borrowed(""))));
        // Multi-byte UTF-8 needs no escape.
        assert!(borrowed(&parse(r#""héllo €""#)));
    }

    #[test]
    fn numbers_keep_their_kind() {
        let n = |text: &str| match parse(text) {
            Json::Number(n) => n,
            other => panic!("{other:?}"),
        };
        assert_eq!(n("18446744073709551615").as_u64(), Some(u64::MAX));
        assert_eq!(n("-9223372036854775808").as_i64(), Some(i64::MIN));
        assert!(n("5").is_u64());
        assert!(n("-5").is_i64() && !n("-5").is_u64());
        assert!(n("3.0").is_f64());
        assert_eq!(n("1.5e3").as_f64(), Some(1500.0));
        assert!(n("-0.0").is_f64());
        // Past u64 and i64 it is a float, as in serde_json.
        assert!(n("18446744073709551616").is_f64());
        assert!(n("-9223372036854775809").is_f64());
        assert!(Json::parse(b"1e400").is_err());
        assert_eq!(parse("2.5").as_f64(), Some(2.5));
        assert_eq!(parse("\"2.5\"").as_f64(), None);
    }

    #[test]
    fn same_tree_as_serde_json() {
        let text = r#"{"a":[1,-2,3.5,true,false,null,"s\t",{}],"b":{"c":{"d":[[]]}},"e":"é"}"#;
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(parse(text), Json::from(&value));
        assert!(parse(text).is_object());
        assert!(!parse("[]").is_object());
        assert_eq!(parse("[]").get("a"), None);
    }

    #[test]
    fn nesting_is_limited_as_in_serde_json() {
        let nested = |depth: usize| "[".repeat(depth) + &"]".repeat(depth);
        // serde_json's limit of 128 lets 127 arrays and objects nest.
        assert!(Json::parse(nested(127).as_bytes()).is_ok());
        let e = Json::parse(nested(128).as_bytes()).unwrap_err();
        assert_eq!(e.to_string(), serde_json::from_str::<Value>(&nested(128)).unwrap_err().to_string());
        assert!(e.to_string().contains("recursion limit exceeded"), "{e}");
    }

    #[test]
    fn repeated_keys_are_all_kept_in_order() {
        let json = parse(r#"{"a":1,"b":2,"a":3}"#);
        let Json::Object(entries) = &json else { panic!() };
        let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["a", "b", "a"]);
        assert_eq!(json.get("a"), Some(&Json::Number(1.into())));
    }

    #[test]
    fn errors_are_serde_json_errors() {
        for text in ["", "{", "[1,]", "{\"a\" 1}", "nul", "\"\\x\"", "1 2", "{\"a\":1,}", "\"\u{1}\"", "01", "[1] x"] {
            let ours = Json::parse(text.as_bytes()).unwrap_err();
            let theirs = serde_json::from_str::<Value>(text).unwrap_err();
            assert_eq!(ours.to_string(), theirs.to_string(), "{text:?}");
            assert_eq!(ours.classify(), theirs.classify());
        }
        // Text that is not UTF-8 inside a string.
        assert!(Json::parse(b"\"\xff\"").is_err());
        // Surrounding whitespace is fine.
        assert_eq!(parse(" \n[ ] \t"), Json::Array(vec![]));
    }
}
