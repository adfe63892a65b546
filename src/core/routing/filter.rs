//! MQTT topic filters: validation, matching, and the subscription plan.
//!
//! The plan answers one question: which filters do we send to the broker so that every message a route
//! wants arrives, and arrives **once**? MQTT 3.1.1 lets a broker deliver a message once per matching
//! subscription when a client's subscriptions overlap (Mosquitto 2 does, its `allow_duplicate_messages`
//! defaults to true), and v3.1.1 has no subscription identifiers to tell the copies apart. So the plan never
//! subscribes two overlapping filters: a filter covered by another is dropped, and two filters that overlap
//! only partly (`a/+/c` and `a/b/+`) are replaced by the narrowest filter covering both (`a/+/+`). Topics
//! the wider filter brings in that no route wants are counted as unrouted and dropped.

use std::fmt;

/// Why a string is not a usable MQTT topic filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("the filter is empty")]
    Empty,
    #[error("'#' must be the last level and stand alone (e.g. 'cmnd/#', not 'cmnd#' or 'cmnd/#/x')")]
    MisplacedHash,
    #[error("'+' must fill a whole level (e.g. 'cmnd/+/state', not 'cmnd/dev+')")]
    MisplacedPlus,
    #[error("the filter contains a NUL character")]
    Nul,
    #[error("the filter is longer than the 65535 bytes MQTT allows")]
    TooLong,
    #[error("shared subscriptions ('$share/...') are not supported yet; subscribe the plain filter")]
    Shared,
}

/// Checks a topic filter against MQTT 3.1.1 section 4.7.
pub fn validate(filter: &str) -> Result<(), FilterError> {
    if filter.is_empty() {
        return Err(FilterError::Empty);
    }
    if filter.len() > 65_535 {
        return Err(FilterError::TooLong);
    }
    if filter.contains('\0') {
        return Err(FilterError::Nul);
    }
    if filter.starts_with("$share/") {
        return Err(FilterError::Shared);
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != last) {
            return Err(FilterError::MisplacedHash);
        }
        if level.contains('+') && *level != "+" {
            return Err(FilterError::MisplacedPlus);
        }
    }
    Ok(())
}

/// Does `topic` match `filter`? Wildcards at the first level do not match topics starting with `$`
/// (MQTT 3.1.1 section 4.7.2), so `#` never picks up `$SYS/...`.
pub fn matches(topic: &str, filter: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            // `a/#` matches `a` itself as well as everything below it.
            return true;
        }
        match topic_levels.next() {
            Some(t) if f == "+" || f == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

/// Is there a topic that both filters match?
pub fn overlaps(a: &str, b: &str) -> bool {
    let (mut la, mut lb) = (a.split('/'), b.split('/'));
    loop {
        match (la.next(), lb.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some(x), Some(y)) => {
                if x != "+" && y != "+" && x != y {
                    return false;
                }
            }
            // One filter is longer; only a trailing '#' on it could still match the shorter
            // topic (`a/#` matches `a`).
            (None, Some(rest)) | (Some(rest), None) => {
                return rest == "#";
            }
        }
    }
}

/// The narrowest filter that matches every topic either filter matches.
pub fn generalize(a: &str, b: &str) -> String {
    let (va, vb): (Vec<&str>, Vec<&str>) = (a.split('/').collect(), b.split('/').collect());
    let mut out: Vec<&str> = Vec::new();
    for i in 0..va.len().max(vb.len()) {
        match (va.get(i), vb.get(i)) {
            (Some(&"#"), _) | (_, Some(&"#")) | (None, _) | (_, None) => {
                out.push("#");
                break;
            }
            (Some(x), Some(y)) if x == y => out.push(x),
            _ => out.push("+"),
        }
    }
    out.join("/")
}

/// Does `wide` match every topic `narrow` matches?
pub fn covers(wide: &str, narrow: &str) -> bool {
    generalize(wide, narrow) == wide
}

/// One filter to subscribe and the route filters it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub filter: String,
    pub qos: u8,
    /// The filters the routes asked for that this subscription delivers.
    pub serves: Vec<String>,
}

impl fmt::Display for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (QoS {})", self.filter, self.qos)
    }
}

/// Builds a subscription set with no two overlapping filters from the `(filter, qos)` pairs the routes
/// want. Each result subscribes at the highest QoS of the filters it serves. Order follows first appearance.
pub fn plan(wanted: &[(String, u8)]) -> Vec<Subscription> {
    let mut subs: Vec<Subscription> = Vec::new();
    for (filter, qos) in wanted {
        let mut merged = Subscription { filter: filter.clone(), qos: *qos, serves: vec![filter.clone()] };
        // Keep the place of the earliest subscription absorbed, so the plan is stable across reloads.
        let mut place = subs.len();
        // Merging can widen the filter so that it now overlaps one it did not before: repeat until none.
        while let Some(i) = subs.iter().position(|s| overlaps(&s.filter, &merged.filter)) {
            let other = subs.remove(i);
            place = place.min(i);
            merged.filter = generalize(&other.filter, &merged.filter);
            merged.qos = merged.qos.max(other.qos);
            let mut serves = other.serves;
            for s in merged.serves {
                if !serves.contains(&s) {
                    serves.push(s);
                }
            }
            merged.serves = serves;
        }
        subs.insert(place.min(subs.len()), merged);
    }
    subs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_follows_mqtt_rules() {
        let cases: &[(&str, Result<(), FilterError>)] = &[
            ("cmnd/#", Ok(())),
            ("cmnd/+/+/+/+", Ok(())),
            ("#", Ok(())),
            ("+", Ok(())),
            ("a//b", Ok(())),
            ("/", Ok(())),
            ("", Err(FilterError::Empty)),
            ("cmnd#", Err(FilterError::MisplacedHash)),
            ("cmnd/#/x", Err(FilterError::MisplacedHash)),
            ("cmnd/dev+", Err(FilterError::MisplacedPlus)),
            ("cmnd/++", Err(FilterError::MisplacedPlus)),
            ("a\0b", Err(FilterError::Nul)),
            ("$share/g/cmnd/#", Err(FilterError::Shared)),
        ];
        for (filter, want) in cases {
            assert_eq!(&validate(filter), want, "filter {filter:?}");
        }
    }

    #[test]
    fn matching_table() {
        let cases = [
            ("cmnd/f2-e4fd45f654be/access-control-mode/J1/door-sensors", "cmnd/#", true),
            ("cmnd", "cmnd/#", true),
            ("cmnd/a/b/c/d", "cmnd/+/+/+/+", true),
            ("cmnd/a/b/c", "cmnd/+/+/+/+", false),
            ("cmnd/a/b/c/d/e", "cmnd/+/+/+/+", false),
            ("cmnd/a", "cmnd/+", true),
            ("cmnd/a/b", "cmnd/+", false),
            ("cmnd/", "cmnd/+", true),
            ("other/a", "cmnd/#", false),
            ("$SYS/broker/uptime", "#", false),
            ("$SYS/broker/uptime", "+/broker/#", false),
            ("$SYS/broker/uptime", "$SYS/#", true),
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
        ];
        for (topic, filter, want) in cases {
            assert_eq!(matches(topic, filter), want, "topic {topic:?} filter {filter:?}");
        }
    }

    #[test]
    fn plus_does_not_match_across_levels() {
        assert!(!matches("a/b/c", "a/+"));
    }

    #[test]
    fn overlap_table() {
        let cases = [
            ("cmnd/#", "cmnd/+/+/+/+", true),
            ("a/+/c", "a/b/+", true),
            ("a/+/c", "a/b/d", false),
            ("a/b", "a/b/c", false),
            ("a/#", "a", true),
            ("a/b", "x/#", false),
            ("#", "anything/at/all", true),
        ];
        for (a, b, want) in cases {
            assert_eq!(overlaps(a, b), want, "{a:?} vs {b:?}");
            assert_eq!(overlaps(b, a), want, "{b:?} vs {a:?}");
        }
    }

    #[test]
    fn generalize_is_the_narrowest_cover() {
        assert_eq!(generalize("cmnd/#", "cmnd/+/+/+/+"), "cmnd/#");
        assert_eq!(generalize("a/+/c", "a/b/+"), "a/+/+");
        assert_eq!(generalize("a/#", "a"), "a/#");
        assert!(covers("cmnd/#", "cmnd/+/+/+/+"));
        assert!(!covers("cmnd/+/+/+/+", "cmnd/#"));
    }

    #[test]
    fn plan_drops_covered_filters_and_keeps_highest_qos() {
        let plan = plan(&[("cmnd/#".into(), 0), ("cmnd/+/+/+/+".into(), 1), ("other/x".into(), 0)]);
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0].filter, "cmnd/#");
        assert_eq!(plan[0].qos, 1);
        assert_eq!(plan[0].serves, vec!["cmnd/#".to_string(), "cmnd/+/+/+/+".to_string()]);
        assert_eq!(plan[1].filter, "other/x");
    }

    #[test]
    fn plan_merges_partial_overlaps_until_none_remain() {
        let plan = plan(&[("a/+/c".into(), 0), ("a/b/+".into(), 0), ("a/x/y".into(), 0), ("b/c".into(), 0)]);
        let filters: Vec<&str> = plan.iter().map(|s| s.filter.as_str()).collect();
        assert_eq!(filters, vec!["a/+/+", "b/c"]);
        for (i, x) in plan.iter().enumerate() {
            for y in plan.iter().skip(i + 1) {
                assert!(!overlaps(&x.filter, &y.filter));
            }
        }
    }

    #[test]
    fn identical_filters_are_subscribed_once() {
        let plan = plan(&[("cmnd/#".into(), 0), ("cmnd/#".into(), 0)]);
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].serves, vec!["cmnd/#".to_string()]);
    }
}
