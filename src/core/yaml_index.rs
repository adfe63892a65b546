//! Where each key of a YAML document stands, so that configuration errors can name a line.
//!
//! serde only reports the location of the first structural error it meets, and semantic errors (a regex
//! that does not compile, say) are found after deserialization, when locations are gone. This index maps
//! a key path such as `routes[1].device_id.regex` to the line and column of that key in the file.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// Key paths (`a.b[2].c`) to positions.
#[derive(Debug, Default, Clone)]
pub struct YamlIndex {
    positions: HashMap<String, Position>,
}

impl YamlIndex {
    /// Indexes `text`. A document the parser rejects gives an empty index; its syntax error is reported by
    /// the deserializer, which has the better message.
    pub fn build(text: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, false).is_err() {
            return Self::default();
        }
        Self { positions: builder.positions }
    }

    /// The position of `path`, or of its nearest indexed ancestor when the path itself is not in the file
    /// (a missing required key is reported at its parent).
    pub fn locate(&self, path: &str) -> Option<Position> {
        let mut path = path;
        loop {
            if let Some(p) = self.positions.get(path) {
                return Some(*p);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

enum Frame {
    /// A mapping: `key` is the pending key once read, `expect_key` says what the next node is.
    Map {
        path: String,
        key: Option<String>,
        expect_key: bool,
        first_key: bool,
    },
    Seq {
        path: String,
        index: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    positions: HashMap<String, Position>,
}

impl Builder {
    /// Called before a value node: returns that node's path and moves the parent frame along.
    fn enter_value(&mut self, mark: Marker) -> Option<String> {
        let path = match self.stack.last_mut()? {
            Frame::Map { path, key, expect_key, .. } => {
                *expect_key = true;
                let k = key.take()?;
                join(path, &k)
            }
            Frame::Seq { path, index } => {
                let p = format!("{path}[{index}]");
                *index += 1;
                p
            }
        };
        self.positions.entry(path.clone()).or_insert(position(mark));
        Some(path)
    }

    /// True if the node now starting is a mapping key.
    fn at_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { expect_key: true, .. }))
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn position(mark: Marker) -> Position {
    // yaml-rust2 counts lines from 1 and columns from 0.
    Position { line: mark.line(), column: mark.col() + 1 }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                if self.at_key() {
                    if let Some(Frame::Map { path, key, expect_key, first_key }) = self.stack.last_mut() {
                        // A block mapping's start mark can sit past its first key; its first key is
                        // where a reader looks for it (`- name: a` is the start of `routes[0]`).
                        if std::mem::take(first_key) && !path.is_empty() {
                            self.positions.insert(path.clone(), position(mark));
                        }
                        let full = join(path, &value);
                        self.positions.entry(full).or_insert(position(mark));
                        *key = Some(value);
                        *expect_key = false;
                    }
                } else {
                    self.enter_value(mark);
                }
            }
            Event::Alias(_) => {
                if self.at_key() {
                    if let Some(Frame::Map { key, expect_key, .. }) = self.stack.last_mut() {
                        *key = Some("*alias".into());
                        *expect_key = false;
                    }
                } else {
                    self.enter_value(mark);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                let path = if self.stack.is_empty() {
                    Some(String::new())
                } else if self.at_key() {
                    // A complex key: index nothing below it.
                    None
                } else {
                    self.enter_value(mark)
                };
                let path = path.unwrap_or_else(|| "\u{0}complex".into());
                self.stack.push(if is_map {
                    Frame::Map { path, key: None, expect_key: true, first_key: true }
                } else {
                    Frame::Seq { path, index: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
mqtt:
  broker: localhost:1883
routes:
  - name: first
    filter: cmnd/#
  - name: second
    device_id:
      regex: '('
";

    #[test]
    fn keys_are_found_with_line_and_column() {
        let index = YamlIndex::build(DOC);
        assert_eq!(index.locate("mqtt.broker"), Some(Position { line: 2, column: 3 }));
        assert_eq!(index.locate("routes[0].filter").map(|p| p.line), Some(5));
        assert_eq!(index.locate("routes[1].device_id.regex").map(|p| p.line), Some(8));
    }

    #[test]
    fn a_missing_key_is_located_at_its_parent() {
        let index = YamlIndex::build(DOC);
        assert_eq!(index.locate("routes[1].topic"), Some(Position { line: 6, column: 5 }));
    }

    #[test]
    fn broken_yaml_gives_an_empty_index() {
        let index = YamlIndex::build("a: [1, 2\nb: c");
        assert_eq!(index.locate("a"), None);
    }
}
