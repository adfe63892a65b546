//! Which routes a topic matches, without trying every route: the routes' filters (and fallback filters)
//! in a trie of topic levels, so that matching costs a walk down the topic's own levels however many
//! routes there are. Same rules as [`crate::core::routing::filter::matches`] (MQTT 3.1.1 section 4.7), which the tests
//! hold it to.

use std::collections::HashMap;

#[derive(Debug, Default, Clone)]
struct Node {
    literal: HashMap<Box<str>, Node>,
    plus: Option<Box<Node>>,
    /// Routes with a filter ending in `#` here: they match every topic that reaches this node, whatever
    /// follows, nothing included (`a/#` matches `a`).
    hash: Vec<u32>,
    /// Routes with a filter ending exactly at this node.
    end: Vec<u32>,
}

/// A set of filters, each standing for a route (by index); a route may have several filters.
#[derive(Debug, Default, Clone)]
pub struct Matcher {
    root: Node,
}

impl Matcher {
    /// Adds `filter` (already validated) for route `route`.
    pub fn insert(&mut self, route: u32, filter: &str) {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            match level {
                "#" => {
                    node.hash.push(route);
                    return;
                }
                "+" => node = node.plus.get_or_insert_with(Default::default),
                _ => node = node.literal.entry(level.into()).or_default(),
            }
        }
        node.end.push(route);
    }

    /// The routes whose filters match `topic`, ascending (file order), each once, into `out` (cleared).
    pub fn matches(&self, topic: &str, out: &mut Vec<u32>) {
        out.clear();
        // Wildcards at the first level do not match topics that start with `$` (`#` never picks up `$SYS`).
        let dollar = topic.starts_with('$');
        walk(&self.root, Some(topic), dollar, out);
        if out.len() > 1 {
            out.sort_unstable();
            out.dedup();
        }
    }
}

/// `rest`: the levels still to match, `None` once all are consumed (`Some("")` is one empty level).
fn walk(node: &Node, rest: Option<&str>, no_wildcards: bool, out: &mut Vec<u32>) {
    if !no_wildcards {
        out.extend_from_slice(&node.hash);
    }
    let Some(rest) = rest else {
        out.extend_from_slice(&node.end);
        return;
    };
    let (level, after) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    if !node.literal.is_empty() {
        if let Some(child) = node.literal.get(level) {
            walk(child, after, false, out);
        }
    }
    if let Some(plus) = node.plus.as_deref() {
        if !no_wildcards {
            walk(plus, after, false, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::routing::filter;
    use proptest::prelude::*;

    fn matcher(filters: &[&str]) -> Matcher {
        let mut m = Matcher::default();
        for (i, f) in filters.iter().enumerate() {
            m.insert(i as u32, f);
        }
        m
    }

    fn matched(m: &Matcher, topic: &str) -> Vec<u32> {
        let mut out = Vec::new();
        m.matches(topic, &mut out);
        out
    }

    #[test]
    fn matching_table() {
        let m = matcher(&["cmnd/#", "cmnd/+/state", "#", "+/+", "tele/dev/state", "a//b", "+/#"]);
        let cases: &[(&str, &[u32])] = &[
            ("cmnd/dev/state", &[0, 1, 2, 6]),
            ("cmnd", &[0, 2, 6]),
            ("cmnd/dev", &[0, 2, 3, 6]),
            ("tele/dev/state", &[2, 4, 6]),
            ("tele/dev/state/x", &[2, 6]),
            ("a//b", &[2, 5, 6]),
            ("a/x/b", &[2, 6]),
            ("$SYS/broker/load", &[]),
            ("$SYS/x", &[]),
            ("/x", &[2, 3, 6]),
        ];
        for (topic, want) in cases {
            assert_eq!(matched(&m, topic), *want, "topic {topic:?}");
        }
    }

    #[test]
    fn a_route_with_several_matching_filters_is_returned_once() {
        let mut m = Matcher::default();
        m.insert(0, "cmnd/#");
        m.insert(0, "cmnd/+/+");
        m.insert(1, "cmnd/dev/x");
        assert_eq!(matched(&m, "cmnd/dev/x"), [0, 1]);
    }

    #[test]
    fn dollar_topics_match_only_literal_first_levels() {
        let m = matcher(&["$SYS/#", "+/broker", "#"]);
        assert_eq!(matched(&m, "$SYS/broker"), [0]);
        assert_eq!(matched(&m, "sys/broker"), [1, 2]);
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![Just("a".to_string()), Just("b".to_string()), Just(String::new()), Just("$x".to_string())]
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..5).prop_map(|l| l.join("/"))
    }

    fn filter_strategy() -> impl Strategy<Value = String> {
        let lvl = prop_oneof![level(), Just("+".to_string())];
        (prop::collection::vec(lvl, 1..5), any::<bool>()).prop_map(|(mut l, hash)| {
            if hash {
                l.push("#".into());
            }
            l.join("/")
        })
    }

    proptest! {
        #[test]
        fn the_trie_agrees_with_matching_filter_by_filter(filters in prop::collection::vec(filter_strategy(), 1..12), topic in topic()) {
            let m = {
                let mut m = Matcher::default();
                for (i, f) in filters.iter().enumerate() {
                    m.insert(i as u32, f);
                }
                m
            };
            let want: Vec<u32> = filters.iter().enumerate().filter(|(_, f)| filter::matches(&topic, f)).map(|(i, _)| i as u32).collect();
            prop_assert_eq!(matched(&m, &topic), want);
        }
    }
}
