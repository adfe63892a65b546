//! MQTT topic templates for downlinks: `cmnd/{key}/set`.
//!
//! Placeholders: `{key}` (the record's key), `{topic}` (its Kafka topic), `{partition}`,
//! `{header.NAME}` (a header's value) and `{json./pointer}` (a value in the record's JSON value, by JSON
//! Pointer, RFC 6901). `{{` and `}}` are literal braces.
//!
//! A placeholder fills part of one topic level and nothing more: a value that is empty, missing, not
//! UTF-8, or holds `/`, `+`, `#` or NUL makes the record unpublishable (it would address another topic,
//! or none), and the downlink dead-letters it. The literal parts are checked once, when the
//! configuration is read: no wildcard, no NUL, not a `$` topic.

use std::fmt;

use crate::core::routing::template::{tokens, Token};

/// Where a placeholder's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Key,
    Topic,
    Partition,
    Header(String),
    /// A JSON Pointer into the value (`""` is the whole value).
    Json(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Key => f.write_str("{key}"),
            Source::Topic => f.write_str("{topic}"),
            Source::Partition => f.write_str("{partition}"),
            Source::Header(h) => write!(f, "{{header.{h}}}"),
            Source::Json(p) => write!(f, "{{json.{p}}}"),
        }
    }
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    Placeholder(Source),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// Parses one placeholder's name (between the braces).
pub fn source(name: &str) -> Result<Source, String> {
    match name {
        "key" => Ok(Source::Key),
        "topic" => Ok(Source::Topic),
        "partition" => Ok(Source::Partition),
        n if n.starts_with("header.") && n.len() > "header.".len() => Ok(Source::Header(n["header.".len()..].into())),
        n if n.starts_with("json.") => {
            let pointer = &n["json.".len()..];
            if !(pointer.is_empty() || pointer.starts_with('/')) {
                return Err(format!("`{{{n}}}`: a JSON Pointer starts with '/', e.g. {{json./device/id}}"));
            }
            Ok(Source::Json(pointer.into()))
        }
        n => Err(format!(
            "`{{{n}}}` is not a placeholder: use {{key}}, {{topic}}, {{partition}}, {{header.NAME}} or {{json./pointer}}"
        )),
    }
}

/// Splits `source` into literals and placeholders (`{{`/`}}` are literal braces).
pub fn parts(source: &str) -> Result<Vec<Part>, String> {
    tokens(source)?
        .into_iter()
        .map(|t| match t {
            Token::Literal(l) => Ok(Part::Literal(l)),
            Token::Placeholder(name) => self::source(&name).map(Part::Placeholder),
        })
        .collect()
}

impl Template {
    /// Parses an MQTT topic template. Errors say what is wrong in words a user can act on.
    pub fn parse(source: &str) -> Result<Self, String> {
        if source.is_empty() {
            return Err("is empty: an MQTT topic has at least one character".into());
        }
        let parts = parts(source)?;
        for p in &parts {
            if let Part::Literal(l) = p {
                if l.contains(['+', '#']) {
                    return Err(format!("`{source}` contains a wildcard ('+' or '#'), which a published topic cannot"));
                }
                if l.contains('\0') {
                    return Err(format!("`{source}` contains NUL"));
                }
            }
        }
        if let Some(Part::Literal(l)) = parts.first() {
            if l.starts_with('$') {
                return Err(format!("`{source}` starts with '$': such topics are the broker's own"));
            }
        }
        if source.len() > MAX_TOPIC_BYTES {
            return Err(format!("is {} bytes long; MQTT allows {MAX_TOPIC_BYTES}", source.len()));
        }
        Ok(Self { source: source.to_string(), parts })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The placeholders the template uses.
    pub fn sources(&self) -> impl Iterator<Item = &Source> {
        self.parts.iter().filter_map(|p| match p {
            Part::Placeholder(s) => Some(s),
            Part::Literal(_) => None,
        })
    }

    /// The topic's levels, each a list of parts (a placeholder never spans a `/`).
    pub fn levels(&self) -> Vec<Vec<Part>> {
        let mut levels = Vec::new();
        let mut current = Vec::new();
        for p in &self.parts {
            match p {
                Part::Placeholder(_) => current.push(p.clone()),
                Part::Literal(l) => {
                    let mut pieces = l.split('/');
                    if let Some(first) = pieces.next().filter(|f| !f.is_empty()) {
                        current.push(Part::Literal(first.into()));
                    }
                    for piece in pieces {
                        levels.push(std::mem::take(&mut current));
                        if !piece.is_empty() {
                            current.push(Part::Literal(piece.into()));
                        }
                    }
                }
            }
        }
        levels.push(current);
        levels
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// The longest topic name MQTT can carry (a two-byte length).
pub const MAX_TOPIC_BYTES: usize = 65_535;
