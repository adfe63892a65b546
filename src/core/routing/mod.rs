//! The routing core: validated routes and the pure decisions made per message. Which routes match a
//! topic ([`matcher`], by MQTT's rules in [`filter`]), which device id a topic carries, which Kafka key
//! and topic a record gets ([`template`], [`topic_name`]), whether the payload keeps the route's
//! contract ([`schema`]) and its rate ([`rate_limit`]), and which replica writes a device
//! ([`replicas`]). Each route carries its counters ([`stats`]). No I/O here.

pub mod filter;
pub mod matcher;
pub mod rate_limit;
pub mod replicas;
pub mod schema;
pub mod stats;
pub mod template;
pub mod topic_name;

use std::fmt;
use std::sync::Arc;

use jsonpath_rust::parser::model::JpQuery;
use regex::Regex;
use serde_json::Value;

use filter::Subscription;
use matcher::Matcher;
use stats::RouteStats;
use template::TopicTemplate;

/// One route, checked: its filters are valid, its regexes compiled, its JSONPath parsed.
#[derive(Debug, Clone)]
pub struct Route {
    /// Shared, because every record of the route carries it to the delivery stage.
    pub name: Arc<str>,
    pub filter: String,
    pub fallback_filters: Vec<String>,
    pub qos: u8,
    pub topic: TopicTemplate,
    pub dead_letter_topic: String,
    pub device_id: DeviceIdRule,
    pub key: KeyRule,
    pub format: ValueFormat,
    pub payload: PayloadFormat,
    /// `schema`: the payload's contract, compiled.
    pub schema: Option<Arc<crate::core::routing::schema::RouteSchema>>,
    /// `encoding`: the registry schema the value is written with; `None` for plain JSON.
    pub encoding: Option<Arc<crate::core::encoding::EncodingRule>>,
    /// `rate_limit`: enforced by the engine (see [`crate::core::routing::rate_limit`]).
    pub rate_limit: Option<crate::core::routing::rate_limit::RateLimit>,
    /// The route as configured, serialized: two routes with the same fingerprint behave the same. Used
    /// to tell which routes a reload changed.
    pub fingerprint: String,
    /// Its counters; bound to the gateway's registry when its table is put in effect (see
    /// [`crate::ops::metrics::RouteRegistry`]), unregistered until then.
    pub stats: Arc<RouteStats>,
}

impl Route {
    /// The device id `topic` carries by this route's rule, with the regex's other groups when the topic
    /// template names them: found once per record, then used for the replica, the key, the topic and
    /// the headers.
    pub fn device<'t>(&'t self, topic: &'t str) -> DeviceId<'t> {
        self.device_id.extract_with_captures(topic, self.topic.groups().next().is_some())
    }
}

/// What a record's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueFormat {
    /// The spec's `{"original_topic", "device_id", "payload", "timestamp"}`.
    Envelope,
    /// The payload bytes unchanged; topic, device id and receive time travel in headers.
    Raw,
}

/// How an envelope embeds the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// Must be JSON; embedded as the JSON it is. Anything else is dead-lettered.
    Json,
    /// Must be UTF-8; embedded as a JSON string.
    Text,
    /// Any bytes; embedded as a base64 JSON string.
    Base64,
}

/// What to do when a JSONPath key selects nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyMissing {
    DeviceId,
    None,
    DeadLetter,
}

/// How a device id is read from an MQTT topic.
#[derive(Debug, Clone)]
pub struct DeviceIdRule {
    /// Must contain a named group `device_id`. Private, like the rest: `groups` is derived from them
    /// (see [`DeviceIdRule::new`]).
    regex: Regex,
    fallback_regex: Option<Regex>,
    /// Used when neither regex matches.
    default: String,
    /// The index of the `device_id` group in `regex` and `fallback_regex`: found once, not by name
    /// (a hash lookup) per message.
    groups: [Option<usize>; 2],
}

/// Which of the three ways the device id was found; counted, so operators see the extraction rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceIdSource {
    Regex,
    Fallback,
    Default,
}

/// The device id of one message, and the regex match it came from (for template groups).
pub struct DeviceId<'t> {
    pub id: &'t str,
    pub source: DeviceIdSource,
    pub captures: Option<regex::Captures<'t>>,
}

impl<'t> DeviceId<'t> {
    /// The named group `name` of the regex match the device id came from, if it matched.
    pub fn group(&self, name: &str) -> Option<&'t str> {
        self.captures.as_ref().and_then(|c| c.name(name)).map(|m| m.as_str())
    }
}

/// The index of the group named `device_id` in `regex`.
fn device_id_group(regex: &Regex) -> Option<usize> {
    regex.capture_names().position(|n| n == Some("device_id"))
}

impl DeviceIdRule {
    pub fn new(regex: Regex, fallback_regex: Option<Regex>, default: String) -> Self {
        let groups = [device_id_group(&regex), fallback_regex.as_ref().and_then(device_id_group)];
        Self { regex, fallback_regex, default, groups }
    }

    pub fn extract<'t>(&'t self, topic: &'t str) -> (&'t str, DeviceIdSource) {
        let d = self.extract_with_captures(topic, false);
        (d.id, d.source)
    }

    /// Like [`extract`](Self::extract); with `keep_captures`, also the other named groups.
    pub fn extract_with_captures<'t>(&'t self, topic: &'t str, keep_captures: bool) -> DeviceId<'t> {
        let tries = [(&self.regex, DeviceIdSource::Regex, self.groups[0])]
            .into_iter()
            .chain(self.fallback_regex.as_ref().map(|r| (r, DeviceIdSource::Fallback, self.groups[1])));
        for (regex, source, group) in tries {
            let Some(group) = group else { continue };
            if let Some(caps) = regex.captures(topic) {
                if let Some(id) = caps.get(group).map(|m| m.as_str()).filter(|s| !s.is_empty()) {
                    return DeviceId { id, source, captures: keep_captures.then_some(caps) };
                }
            }
        }
        DeviceId { id: &self.default, source: DeviceIdSource::Default, captures: None }
    }
}

/// The Kafka key of a route's records.
#[derive(Debug, Clone)]
pub enum KeyRule {
    /// The device id (the spec's choice: one device, one partition, order kept).
    DeviceId,
    /// No key: records spread over partitions, no order between them.
    None,
    /// The first value a JSONPath selects in the JSON payload; `missing` says what happens when it
    /// selects nothing (or the payload is not JSON).
    JsonPath { source: String, query: Box<JpQuery>, missing: KeyMissing },
}

impl fmt::Display for KeyRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRule::DeviceId => f.write_str("device_id"),
            KeyRule::None => f.write_str("none"),
            KeyRule::JsonPath { source, .. } => f.write_str(source),
        }
    }
}

impl KeyRule {
    /// The key for a record, or the reason the message must be dead-lettered. `payload` is the parsed
    /// JSON payload when there is one.
    pub fn select(&self, device_id: &str, payload: Option<&Value>) -> Result<Option<Vec<u8>>, String> {
        match self {
            KeyRule::DeviceId => Ok(Some(device_id.as_bytes().to_vec())),
            KeyRule::None => Ok(None),
            KeyRule::JsonPath { source, query, missing } => {
                let found = payload.and_then(|p| {
                    jsonpath_rust::query::js_path_process(query, p).ok().and_then(|refs| refs.into_iter().next())
                });
                match found.map(|r| r.val) {
                    Some(Value::String(s)) => Ok(Some(s.as_bytes().to_vec())),
                    Some(Value::Null) | None => match missing {
                        KeyMissing::DeviceId => Ok(Some(device_id.as_bytes().to_vec())),
                        KeyMissing::None => Ok(None),
                        KeyMissing::DeadLetter => Err(format!("key path `{source}` selects nothing in the payload")),
                    },
                    Some(other) => Ok(Some(other.to_string().into_bytes())),
                }
            }
        }
    }

    pub fn needs_payload(&self) -> bool {
        matches!(self, KeyRule::JsonPath { .. })
    }
}

/// The routes in effect, in file order, with the subscriptions they need. Held behind an `Arc` so that a
/// reload swaps the whole set at once and a message is routed by one complete set.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
    subscriptions: Vec<Subscription>,
    /// Every route's filters, for matching a topic against all routes at once.
    matcher: Matcher,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        let wanted: Vec<(String, u8)> = routes.iter().map(|r| (r.filter.clone(), r.qos)).collect();
        let subscriptions = filter::plan(&wanted);
        let mut matcher = Matcher::default();
        for (i, r) in routes.iter().enumerate() {
            for f in std::iter::once(&r.filter).chain(&r.fallback_filters) {
                matcher.insert(i as u32, f);
            }
        }
        Self { routes, subscriptions, matcher }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Gives each route the counters `stats` picks for it.
    pub fn bind_stats(&mut self, mut stats: impl FnMut(&Route) -> Arc<RouteStats>) {
        for r in &mut self.routes {
            r.stats = stats(r);
        }
    }

    /// The filters to subscribe, none overlapping another (see [`filter::plan`]).
    pub fn subscriptions(&self) -> &[Subscription] {
        &self.subscriptions
    }

    /// Every route whose filters match `topic`, in file order (fan-out).
    pub fn matching<'a>(&'a self, topic: &str) -> impl Iterator<Item = &'a Route> + 'a {
        let mut found = Vec::new();
        self.matching_indices(topic, &mut found);
        found.into_iter().map(move |i| &self.routes[i as usize])
    }

    /// The indices of the routes whose filters match `topic`, in file order, into `out` (a buffer the
    /// caller keeps, so matching allocates nothing). Costs a walk of the topic's levels, not a try per route.
    pub fn matching_indices(&self, topic: &str, out: &mut Vec<u32>) {
        self.matcher.matches(topic, out);
    }

    pub fn route(&self, index: u32) -> &Route {
        &self.routes[index as usize]
    }

    /// The fallback filters to subscribe when the broker refused `filter`: those of every route the
    /// subscription served, each at that route's QoS.
    pub fn fallbacks_for(&self, subscription: &Subscription) -> Vec<(String, u8)> {
        let mut out: Vec<(String, u8)> = Vec::new();
        for route in self.routes.iter().filter(|r| subscription.serves.contains(&r.filter)) {
            for f in &route.fallback_filters {
                if !out.iter().any(|(g, _)| g == f) {
                    out.push((f.clone(), route.qos));
                }
            }
        }
        out
    }
}

/// What changed between two route tables, by route name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouteDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl RouteDiff {
    pub fn between(old: &RouteTable, new: &RouteTable) -> Self {
        let mut d = RouteDiff::default();
        for r in &new.routes {
            match old.routes.iter().find(|o| o.name == r.name) {
                None => d.added.push(r.name.to_string()),
                Some(o) if o.fingerprint != r.fingerprint => d.changed.push(r.name.to_string()),
                Some(_) => {}
            }
        }
        d.removed = old
            .routes
            .iter()
            .filter(|o| !new.routes.iter().any(|r| r.name == o.name))
            .map(|o| o.name.to_string())
            .collect();
        d
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn spec_device_rule() -> DeviceIdRule {
        DeviceIdRule::new(
            Regex::new(r"(?:^|/)(?P<device_id>f2-[0-9a-fA-F]{12})(?:/|$)").unwrap(),
            Some(Regex::new(r"^[^/]+/(?P<device_id>[^/]+)").unwrap()),
            "unknown".into(),
        )
    }

    pub fn route(name: &str, filter: &str, topic: &str) -> Route {
        Route {
            name: Arc::from(name),
            filter: filter.into(),
            fallback_filters: vec![],
            qos: 0,
            topic: TopicTemplate::parse(topic).unwrap(),
            dead_letter_topic: format!("{topic}.dlq"),
            device_id: spec_device_rule(),
            key: KeyRule::DeviceId,
            format: ValueFormat::Envelope,
            payload: PayloadFormat::Json,
            schema: None,
            encoding: None,
            rate_limit: None,
            fingerprint: format!("{name}|{filter}|{topic}"),
            stats: Default::default(),
        }
    }

    #[test]
    fn device_id_extraction_table() {
        let rule = spec_device_rule();
        let cases = [
            ("cmnd/f2-e4fd45f654be/access-control-mode/J1/door-sensors", "f2-e4fd45f654be", DeviceIdSource::Regex),
            ("cmnd/f2-E4FD45F654BE/state", "f2-E4FD45F654BE", DeviceIdSource::Regex),
            ("cmnd/site-7/f2-e4fd45f654be", "f2-e4fd45f654be", DeviceIdSource::Regex),
            ("cmnd/gateway-12/status", "gateway-12", DeviceIdSource::Fallback),
            ("cmnd/f2-e4fd45f654/short-mac", "f2-e4fd45f654", DeviceIdSource::Fallback),
            ("cmnd/f2-e4fd45f654bef0/long-mac", "f2-e4fd45f654bef0", DeviceIdSource::Fallback),
            ("cmnd", "unknown", DeviceIdSource::Default),
            ("cmnd/", "unknown", DeviceIdSource::Default),
        ];
        for (topic, id, source) in cases {
            assert_eq!(rule.extract(topic), (id, source), "topic {topic:?}");
        }
    }

    fn jsonpath(path: &str) -> KeyRule {
        jsonpath_with(path, KeyMissing::DeviceId)
    }

    fn jsonpath_with(path: &str, missing: KeyMissing) -> KeyRule {
        KeyRule::JsonPath {
            source: path.into(),
            query: Box::new(jsonpath_rust::parser::parse_json_path(path).unwrap()),
            missing,
        }
    }

    #[test]
    fn key_selection_table() {
        let payload: Value = serde_json::json!({"serial": "SN-1", "n": 42, "obj": {"a": 1}, "nil": null});
        let cases: Vec<(KeyRule, Option<&str>)> = vec![
            (KeyRule::DeviceId, Some("dev-1")),
            (KeyRule::None, None),
            (jsonpath("$.serial"), Some("SN-1")),
            (jsonpath("$.n"), Some("42")),
            (jsonpath("$.obj"), Some(r#"{"a":1}"#)),
            (jsonpath("$.missing"), Some("dev-1")),
            (jsonpath("$.nil"), Some("dev-1")),
        ];
        for (rule, want) in cases {
            let got = rule.select("dev-1", Some(&payload)).unwrap();
            assert_eq!(got.as_deref(), want.map(str::as_bytes), "key rule {rule}");
        }
        assert_eq!(jsonpath("$.serial").select("dev-1", None).unwrap().as_deref(), Some(&b"dev-1"[..]));
    }

    #[test]
    fn a_key_path_that_selects_nothing_follows_key_missing() {
        let payload: Value = serde_json::json!({"serial": "SN-1"});
        let get = |m| jsonpath_with("$.absent", m).select("dev-1", Some(&payload));
        assert_eq!(get(KeyMissing::DeviceId), Ok(Some(b"dev-1".to_vec())));
        assert_eq!(get(KeyMissing::None), Ok(None));
        assert!(get(KeyMissing::DeadLetter).unwrap_err().contains("$.absent"));
        assert_eq!(
            jsonpath_with("$.serial", KeyMissing::DeadLetter).select("d", None).unwrap_err(),
            "key path `$.serial` selects nothing in the payload"
        );
    }

    #[test]
    fn every_matching_route_is_returned_in_file_order() {
        let table = RouteTable::new(vec![
            route("all", "cmnd/#", "a"),
            route("five", "cmnd/+/+/+/+", "b"),
            route("other", "tele/#", "c"),
        ]);
        let names: Vec<&str> = table.matching("cmnd/x/y/z/w").map(|r| &*r.name).collect();
        assert_eq!(names, vec!["all", "five"]);
        assert_eq!(table.subscriptions().len(), 2, "cmnd/+/+/+/+ is covered by cmnd/#");
    }

    #[test]
    fn a_route_also_matches_its_fallback_filters() {
        // A message that reached us through a fallback subscription is still this route's.
        let mut r = route("narrow", "cmnd/+/state", "a");
        r.fallback_filters = vec!["cmnd/dev1/#".into()];
        let table = RouteTable::new(vec![r]);
        let matches = |topic: &str| table.matching(topic).next().is_some();
        assert!(matches("cmnd/dev1/state"));
        assert!(matches("cmnd/dev1/other/level"));
        assert!(!matches("cmnd/dev2/other/level"));
    }
}
