//! Why a value does not fit its schema, in the words a dead letter's `dlq_reason` carries.

use std::fmt;

/// Why a value does not fit its schema: where, what the schema expects there, and what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misfit {
    /// A JSON pointer into the value ("" for the value itself; "/payload/door-sensor-1"; "/items/3").
    pub path: String,
    /// What the schema wants there, in words: "boolean", "int (32-bit)", "one of the symbols OPEN, CLOSED",
    /// "record iot.Reading", "a field of record iot.Reading (known: a, b)".
    pub expected: String,
    /// What was there: "string \"hot\"" (cut to ~40 chars), "number 3.5", "null", "absent", "object", "array of 3".
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
        Misfit { path: String::new(), expected: expected.into(), found: found.into() }
    }

    /// Prepends one path segment (escaped as JSON pointer: ~ → ~0, / → ~1).
    ///
    /// Misfits are built at the offending value and gain their path while the error travels back up,
    /// so a value that fits never pays for paths.
    pub fn under(mut self, segment: &str) -> Self {
        let mut path = String::with_capacity(1 + segment.len() + self.path.len());
        path.push('/');
        for c in segment.chars() {
            match c {
                '~' => path.push_str("~0"),
                '/' => path.push_str("~1"),
                c => path.push(c),
            }
        }
        path.push_str(&self.path);
        self.path = path;
        self
    }
}
