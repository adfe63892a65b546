//! Why a value does not fit its schema, in the words a dead letter's `dlq_reason` carries.

use std::fmt;

/// Why a value does not fit its schema: where, what the schema expects there, and what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misfit {
    /// A JSON pointer into the value ("" for the value itself; "/payload/door-sensor-1"; "/items/3").
    pub path: String,
    /// What the schema wants there, in words.
    pub expected: String,
    /// What was there.
    pub found: String,
}

impl fmt::Display for Misfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() { "/" } else { &self.path };
        write!(f, "{path}: expected {}, found {}", self.expected, self.found)
    }
}

impl Misfit {
    pub fn new(expected: impl Into<String>, found: impl Into<String>) -> Self {
        Self { path: String::new(), expected: expected.into(), found: found.into() }
    }

    /// The same misfit one level down: `segment` (escaped as a JSON pointer segment) goes in front.
    pub fn under(mut self, segment: &str) -> Self {
        let escaped = segment.replace('~', "~0").replace('/', "~1");
        self.path = format!("/{escaped}{}", self.path);
        self
    }
}
