//! Whether a downlink can publish to a topic an uplink route subscribes to: the gateway would then take
//! its own downlink messages back to Kafka.
//!
//! Exact for the topics a template can render: a placeholder fills part of one level with one or more
//! characters other than `/`, `+`, `#` (see [`super::template`]), so a template is a fixed number of
//! levels, each a small glob, and a filter matches it level by level.

use super::template::{Part, Template};

/// True if some topic `template` can render matches `filter` (a valid MQTT filter, `$share/` removed).
pub fn can_reach(template: &Template, filter: &str) -> bool {
    let levels = template.levels();
    let filter: Vec<&str> = filter.split('/').collect();
    for (i, f) in filter.iter().enumerate() {
        if *f == "#" {
            // `a/#` matches `a` too.
            return levels.len() >= i;
        }
        let Some(level) = levels.get(i) else { return false };
        if *f == "+" {
            continue;
        }
        if !glob(level, f) {
            return false;
        }
    }
    levels.len() == filter.len()
}

/// Whether `level` (literals, and placeholders of one or more characters) can render as `text`.
fn glob(level: &[Part], text: &str) -> bool {
    match level.split_first() {
        None => text.is_empty(),
        Some((Part::Literal(l), rest)) => text.strip_prefix(l.as_str()).is_some_and(|t| glob(rest, t)),
        Some((Part::Placeholder(_), rest)) => {
            // One character at least, then any split of the rest.
            text.char_indices()
                .skip(1)
                .map(|(i, _)| i)
                .chain([text.len()])
                .filter(|&i| i > 0)
                .any(|i| glob(rest, &text[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reach_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("cmnd/{key}/set", "cmnd/#", true),
            ("cmnd/{key}/set", "#", true),
            ("cmnd/{key}/set", "cmnd/+/set", true),
            ("cmnd/{key}/set", "cmnd/+/+/+/+", false),
            ("cmnd/{key}/set", "cmnd/+", false),
            ("cmnd/{key}/set", "cmnd/f2-1/set", true),
            ("cmnd/{key}/set", "cmnd/f2-1/get", false),
            ("cmnd/{key}/set", "cmnd//set", false),
            ("cmnd/{key}/set", "tele/#", false),
            ("cmnd/{key}/set", "cmnd/{key}/set", true),
            ("cmnd/dev-{key}/set", "cmnd/dev-/set", false),
            ("cmnd/dev-{key}/set", "cmnd/dev-7/set", true),
            ("cmnd/dev-{key}/set", "cmnd/other/set", false),
            ("cmnd/{key}-{partition}", "cmnd/a-1", true),
            ("cmnd/{key}-{partition}", "cmnd/a1", false),
            ("cmnd/{key}", "cmnd/{key}/#", true),
            ("a/b", "a/b/#", true),
            ("a", "a/#", true),
            ("a/b/c", "a/b", false),
            ("a//c", "a/+/c", true),
        ];
        for (template, filter, want) in cases {
            let t = Template::parse(template).unwrap();
            assert_eq!(can_reach(&t, filter), *want, "{template} vs {filter}");
        }
    }
}
