//! What a check reports: one [`Item`] per thing checked (OK, FAIL with a hint, or SKIP with the reason),
//! the text they print as, the exit code they add up to, and the redaction that keeps secrets out of it.

use std::fmt;

/// The outcome of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Fail,
    /// Not checked, and not a failure by itself: a topic template, or an item whose prerequisite failed
    /// (that one is then a FAIL).
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        }
    }
}

/// Which side of the gateway an item concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Mqtt,
    Kafka,
    Registry,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Mqtt => "mqtt",
            Side::Kafka => "kafka",
            Side::Registry => "registry",
        }
    }
}

/// One line of the report: `OK    mqtt  reachable: 127.0.0.1:1883`, and for a FAIL a hint below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub status: Status,
    pub side: Side,
    /// What was checked, e.g. `reachable` or `route "a" filter "cmnd/#"`.
    pub what: String,
    /// What was found.
    pub detail: String,
    /// What to do about a FAIL.
    pub hint: Option<String>,
}

impl Item {
    pub fn ok(side: Side, what: impl Into<String>, detail: impl Into<String>) -> Self {
        Item { status: Status::Ok, side, what: what.into(), detail: detail.into(), hint: None }
    }

    pub fn fail(side: Side, what: impl Into<String>, detail: impl Into<String>, hint: impl Into<String>) -> Self {
        Item { status: Status::Fail, side, what: what.into(), detail: detail.into(), hint: Some(hint.into()) }
    }

    pub fn skip(side: Side, what: impl Into<String>, reason: impl Into<String>) -> Self {
        Item { status: Status::Skip, side, what: what.into(), detail: reason.into(), hint: None }
    }
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<5} {:<5} {}: {}", self.status.label(), self.side.label(), self.what, self.detail)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n      hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every item of one check, in the order they were checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub items: Vec<Item>,
}

impl Report {
    pub fn count(&self, status: Status) -> usize {
        self.items.iter().filter(|i| i.status == status).count()
    }

    /// 0 when nothing failed, 1 otherwise. (2, an invalid configuration, is decided before any check.)
    pub fn exit_code(&self) -> u8 {
        if self.count(Status::Fail) == 0 {
            crate::commands::exit::OK
        } else {
            crate::commands::exit::FAILED
        }
    }

    /// Replaces every occurrence of each secret in the report's text by `***`. Secrets shorter than 4
    /// characters are left alone: replacing them would garble the text, and they are no secret worth
    /// the name.
    pub fn redact(&mut self, secrets: &[&str]) {
        let secrets: Vec<&str> = secrets.iter().copied().filter(|s| s.chars().count() >= 4).collect();
        if secrets.is_empty() {
            return;
        }
        let clean = |text: &mut String| {
            for s in &secrets {
                if text.contains(s) {
                    *text = text.replace(s, "***");
                }
            }
        };
        for item in &mut self.items {
            clean(&mut item.what);
            clean(&mut item.detail);
            if let Some(h) = item.hint.as_mut() {
                clean(h);
            }
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for item in &self.items {
            writeln!(f, "{item}")?;
        }
        let (ok, fail, skip) = (self.count(Status::Ok), self.count(Status::Fail), self.count(Status::Skip));
        if fail == 0 {
            writeln!(f, "check passed: {ok} OK, {skip} skipped")
        } else {
            writeln!(f, "check failed: {fail} FAIL, {ok} OK, {skip} skipped")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_fixed_columns_and_a_hint_under_a_failure() {
        let ok = Item::ok(Side::Mqtt, "reachable", "127.0.0.1:1883");
        assert_eq!(ok.to_string(), "OK    mqtt  reachable: 127.0.0.1:1883");
        let fail = Item::fail(Side::Kafka, "reachable", "connection refused", "check kafka.bootstrap_servers");
        assert_eq!(
            fail.to_string(),
            "FAIL  kafka reachable: connection refused\n      hint: check kafka.bootstrap_servers"
        );
        let skip = Item::skip(Side::Kafka, "topic \"iot.{kind}\"", "a template");
        assert_eq!(skip.to_string(), "SKIP  kafka topic \"iot.{kind}\": a template");
    }

    #[test]
    fn the_exit_code_is_1_only_when_something_failed() {
        let mut r = Report { items: vec![Item::ok(Side::Mqtt, "a", "b"), Item::skip(Side::Kafka, "c", "d")] };
        assert_eq!(r.exit_code(), 0);
        assert!(r.to_string().ends_with("check passed: 1 OK, 1 skipped\n"));
        r.items.push(Item::fail(Side::Mqtt, "e", "f", "g"));
        assert_eq!(r.exit_code(), 1);
        assert!(r.to_string().ends_with("check failed: 1 FAIL, 1 OK, 1 skipped\n"));
    }

    #[test]
    fn secrets_are_redacted_everywhere_but_short_ones_are_left() {
        let mut r =
            Report { items: vec![Item::fail(Side::Kafka, "x hunter22", "said hunter22", "not hunter22 again")] };
        r.redact(&["hunter22", "ab"]);
        let text = r.to_string();
        assert!(!text.contains("hunter22"), "{text}");
        assert!(text.contains("x ***: said ***"), "{text}");
        assert!(text.contains("not *** again"), "{text}");
    }
}
