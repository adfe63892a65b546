//! Kafka topic templates: `iot.{kind}` or `site-{1}.telemetry`.
//!
//! A placeholder is `{N}`, the MQTT topic level N counted from 0 (`cmnd/dev-1/state`: `{0}` is `cmnd`,
//! `{1}` is `dev-1`); `{device_id}`, the message's device id; or `{name}`, a named group of the route's
//! device-id regex (`'^cmnd/(?P<device_id>[^/]+)/[^/]+/[^/]+/(?P<kind>[^/]+)'` gives `{kind}`). `{{` and
//! `}}` stand for literal braces (which Kafka does not allow anyway). A rendered name that is not a valid
//! Kafka topic sends the message to the dead-letter topic with the reason.

use std::fmt;

use crate::core::routing::topic_name::check_kafka_topic;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Level(usize),
    DeviceId,
    Group(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    source: String,
    parts: Vec<Part>,
}

/// The values a template can draw on for one message.
pub struct Values<'a> {
    pub topic: &'a str,
    pub device_id: &'a str,
    /// Named groups of the device-id regex that matched, if any.
    pub group: &'a dyn Fn(&str) -> Option<&'a str>,
}

/// A piece of a template's text: literal text (`{{` and `}}` already made single braces) or the name
/// between a `{` and its `}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    Literal(String),
    Placeholder(String),
}

/// Splits a template (a Kafka topic's or a downlink's MQTT topic) into literals and placeholder names.
/// Errors say what is wrong in words a user can act on.
pub fn tokens(source: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut literal = String::new();
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                literal.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => return Err(format!("unclosed '{{' in `{source}`")),
                    }
                }
                if name.is_empty() {
                    return Err(format!("empty placeholder '{{}}' in `{source}`"));
                }
                if !literal.is_empty() {
                    out.push(Token::Literal(std::mem::take(&mut literal)));
                }
                out.push(Token::Placeholder(name));
            }
            '}' => return Err(format!("unmatched '}}' in `{source}`")),
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        out.push(Token::Literal(literal));
    }
    Ok(out)
}

impl TopicTemplate {
    /// Parses `source`. Errors say what is wrong in words a user can act on.
    pub fn parse(source: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        for token in tokens(source)? {
            parts.push(match token {
                Token::Literal(l) => Part::Literal(l),
                Token::Placeholder(name) => match name.as_str() {
                    "device_id" => Part::DeviceId,
                    n if n.chars().all(|c| c.is_ascii_digit()) => {
                        Part::Level(n.parse().map_err(|_| format!("level `{n}` is too large"))?)
                    }
                    n if n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => Part::Group(n.to_string()),
                    n => {
                        return Err(format!(
                            "`{{{n}}}` is not a placeholder: use {{N}}, {{device_id}} or {{group_name}}"
                        ))
                    }
                },
            });
        }
        for p in &parts {
            if let Part::Literal(l) = p {
                if let Some(bad) = l.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
                    return Err(format!(
                        "`{source}` contains {bad:?}; Kafka topic names use letters, digits, '.', '_' and '-'"
                    ));
                }
            }
        }
        let t = Self { source: source.to_string(), parts };
        if t.is_static() {
            check_kafka_topic(source).map_err(|e| format!("`{source}` {e}"))?;
        }
        Ok(t)
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn is_static(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// The named groups the template uses.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Group(g) => Some(g.as_str()),
            _ => None,
        })
    }

    /// The literal text before the first placeholder.
    pub fn prefix(&self) -> &str {
        match self.parts.first() {
            Some(Part::Literal(l)) => l,
            _ => "",
        }
    }

    /// The topic name for one message, or why there is none.
    pub fn render(&self, v: &Values<'_>) -> Result<String, String> {
        if let [Part::Literal(l)] = self.parts.as_slice() {
            return Ok(l.clone());
        }
        let mut out = String::with_capacity(self.source.len() + 16);
        for p in &self.parts {
            match p {
                Part::Literal(l) => out.push_str(l),
                Part::DeviceId => out.push_str(v.device_id),
                Part::Level(n) => match v.topic.split('/').nth(*n) {
                    Some("") => return Err(format!("topic template `{}`: MQTT topic level {n} is empty", self.source)),
                    Some(level) => out.push_str(level),
                    None => return Err(format!("topic template `{}`: the MQTT topic has no level {n}", self.source)),
                },
                Part::Group(g) => match (v.group)(g) {
                    Some(value) if !value.is_empty() => out.push_str(value),
                    _ => return Err(format!("topic template `{}`: the regex group `{g}` did not match", self.source)),
                },
            }
        }
        check_kafka_topic(&out).map_err(|e| format!("topic template `{}` gave `{out}`, which {e}", self.source))?;
        Ok(out)
    }
}

impl fmt::Display for TopicTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &str, topic: &str) -> Result<String, String> {
        let t = TopicTemplate::parse(template)?;
        let group = |name: &str| if name == "kind" { Some("door-sensors") } else { None };
        t.render(&Values { topic, device_id: "f2-e4fd45f654be", group: &group })
    }

    #[test]
    fn template_rendering_table() {
        let topic = "cmnd/f2-e4fd45f654be/access-control-mode/J1/door-sensors";
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("raw_iot_data", Ok("raw_iot_data")),
            ("iot.{kind}", Ok("iot.door-sensors")),
            ("site-{3}.{device_id}", Ok("site-J1.f2-e4fd45f654be")),
            ("{0}", Ok("cmnd")),
            ("x.{9}", Err("has no level 9")),
            ("x.{missing}", Err("group `missing` did not match")),
        ];
        for (template, want) in cases {
            match (render(template, topic), want) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{template}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{template}: {got}"),
                (got, want) => panic!("{template}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_rendered_name_that_kafka_rejects_is_an_error() {
        let err = render("iot.{1}", "cmnd/with space/x").unwrap_err();
        assert!(err.contains("gave `iot.with space`"), "{err}");
        let err = render("iot.{1}", "cmnd//x").unwrap_err();
        assert!(err.contains("level 1 is empty"), "{err}");
    }

    #[test]
    fn invalid_templates_are_rejected_when_parsed() {
        for (bad, why) in [
            ("iot.{kind", "unclosed"),
            ("iot.}", "unmatched"),
            ("iot.{}", "empty placeholder"),
            ("iot.{a-b}", "not a placeholder"),
            ("iot/{kind}", "contains '/'"),
            ("bad topic", "contains ' '"),
            ("", "is empty"),
        ] {
            let err = TopicTemplate::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn prefix_and_groups() {
        let t = TopicTemplate::parse("iot.{kind}.{1}").unwrap();
        assert_eq!(t.prefix(), "iot.");
        assert_eq!(t.groups().collect::<Vec<_>>(), ["kind"]);
        assert!(!t.is_static());
    }
}
