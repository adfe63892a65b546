//! The MQTT side of `check`: is the broker reachable (TCP, then TLS and CONNACK), does it accept the
//! credentials (the CONNACK return code), and does it grant each route's filter (the SUBACK code per
//! filter). It connects as the gateway does (`crate::mqtt::client`, MQTT 3.1.1 or 5 as `mqtt.protocol`
//! says, the same TLS) under a client id of its own and a clean session, so a running gateway's session
//! is never taken over, and disconnects cleanly.

use std::collections::HashMap;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as Code5;
use rumqttc::ConnectReturnCode;

use super::report::{Item, Side};
use crate::config::{BrokerAddr, MqttSettings, Protocol};
use crate::core::routing::RouteTable;
use crate::mqtt::client::{self, Client, ConnectionError, Event, EventLoop, Granted};

const SIDE: Side = Side::Mqtt;

/// The largest packet MQTT 3.1.1 can express.
const MQTT_MAX_PACKET: usize = 268_435_455;

/// The broker's answer to one SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Suback {
    Granted(u8),
    /// With the reason MQTT 5 gives ("failure" on 3.1.1).
    Refused(&'static str),
}

/// A filter to check, and what to call it in the report.
#[derive(Debug, Clone)]
struct Target {
    filter: String,
    qos: u8,
    /// `route "a" filter "cmnd/#"`
    label: String,
    /// The fallback filters the gateway would subscribe if the broker refused this one.
    fallbacks: Vec<(String, u8)>,
}

/// Every item of the MQTT side, in order: reachable, authenticated, one per filter.
pub(super) async fn check(settings: &MqttSettings, routes: &RouteTable, timeout: Duration) -> Vec<Item> {
    let targets = targets(settings, routes);
    let addr = settings.broker.to_string();
    let mut items = Vec::new();

    if let Err((detail, hint)) = tcp_probe(&settings.broker, timeout).await {
        items.push(Item::fail(SIDE, "reachable", detail, hint));
        items.push(Item::skip(SIDE, "authenticated", "not checked: the broker is not reachable"));
        items.extend(targets.iter().map(|t| Item::skip(SIDE, &t.label, "not checked: the broker is not reachable")));
        return items;
    }

    let client_id = check_client_id(&settings.client_id);
    let mut own = settings.clone();
    // Never the gateway's own id or session: a check must not take over a running gateway's connection
    // or disturb its persistent session.
    own.client_id = client_id.clone();
    own.clean_session = true;
    own.session_expiry = 0;
    // Retained messages arrive with each subscription; one larger than mqtt.max_packet_size_bytes would
    // close the connection before the SUBACKs are read. The gateway copes with those (it takes them in
    // on its next connection and dead-letters them), so here any size MQTT allows is read and dropped.
    own.max_packet_size = MQTT_MAX_PACKET;
    own.connect_timeout = timeout.max(Duration::from_secs(1));
    let (client, mut eventloop) = client::new(&own, 16);
    match crate::mqtt::tls::transport(settings) {
        Ok(t) => eventloop.set_transport(t),
        Err(e) => {
            items.push(Item::fail(
                SIDE,
                "reachable",
                format!("{addr}: the TLS files cannot be used: {e}"),
                "fix mqtt.tls (the files it names must be readable PEM)",
            ));
            items.push(Item::skip(SIDE, "authenticated", "not checked: no TLS configuration"));
            items.extend(targets.iter().map(|t| Item::skip(SIDE, &t.label, "not checked: no TLS configuration")));
            return items;
        }
    }

    let transport = match settings.broker.transport {
        crate::config::Transport::Tcp => "",
        crate::config::Transport::Tls => " (TLS)",
        crate::config::Transport::Ws => " (WebSocket)",
        crate::config::Transport::Wss => " (WebSocket, TLS)",
    };
    match connect(&mut eventloop, timeout, settings).await {
        Ok(()) => {
            items.push(Item::ok(SIDE, "reachable", format!("{addr}{transport}")));
            let who = match &settings.credentials {
                Some((user, _)) => format!("as user \"{user}\""),
                None => "anonymously (no mqtt.username set)".to_string(),
            };
            let protocol = settings.protocol.as_str();
            items.push(Item::ok(
                SIDE,
                "authenticated",
                format!("{who}, client id \"{client_id}\", clean session, MQTT {protocol}"),
            ));
        }
        Err(Connect::Refused(detail, hint)) => {
            items.push(Item::ok(SIDE, "reachable", format!("{addr}{transport}")));
            items.push(Item::fail(SIDE, "authenticated", detail, hint));
            items.extend(
                targets.iter().map(|t| Item::skip(SIDE, &t.label, "not checked: the broker refused the connection")),
            );
            return items;
        }
        Err(Connect::Failed(detail, hint)) => {
            items.push(Item::fail(SIDE, "reachable", detail, hint));
            items.push(Item::skip(SIDE, "authenticated", "not checked: no MQTT connection"));
            items.extend(targets.iter().map(|t| Item::skip(SIDE, &t.label, "not checked: no MQTT connection")));
            return items;
        }
    }

    let who = match &settings.credentials {
        Some((user, _)) => format!("user \"{user}\""),
        None => "anonymous clients".to_string(),
    };
    let mut answers: HashMap<String, Suback> = HashMap::new();
    let mut lost: Option<String> = None;
    for t in &targets {
        if let Some(why) = &lost {
            items.push(Item::skip(SIDE, &t.label, format!("not checked: {why}")));
            continue;
        }
        let answer = match subscribe(&client, &mut eventloop, &mut answers, &t.filter, t.qos, timeout).await {
            Ok(a) => a,
            Err((detail, hint, why)) => {
                items.push(Item::fail(SIDE, &t.label, detail, hint));
                lost = Some(why);
                continue;
            }
        };
        match answer {
            Suback::Granted(q) if q < t.qos => items.push(Item::ok(
                SIDE,
                &t.label,
                format!("granted QoS {q} (QoS {} requested: the broker lowers it)", t.qos),
            )),
            Suback::Granted(q) => items.push(Item::ok(SIDE, &t.label, format!("granted QoS {q}"))),
            Suback::Refused(reason) => {
                let mut hint = format!("the broker's ACL must let {who} subscribe to \"{}\"", t.filter);
                let mut fallbacks = Vec::new();
                for (f, q) in &t.fallbacks {
                    match subscribe(&client, &mut eventloop, &mut answers, f, *q, timeout).await {
                        Ok(Suback::Granted(g)) => fallbacks.push(format!("\"{f}\" granted QoS {g}")),
                        Ok(Suback::Refused(_)) => fallbacks.push(format!("\"{f}\" refused too")),
                        Err((detail, _, why)) => {
                            fallbacks.push(format!("\"{f}\" not known: {detail}"));
                            lost = Some(why);
                            break;
                        }
                    }
                }
                if !fallbacks.is_empty() {
                    hint.push_str(&format!(
                        "; the gateway would subscribe the fallback filters instead: {}",
                        fallbacks.join(", ")
                    ));
                }
                let detail = match settings.protocol {
                    Protocol::V311 => "refused by the broker (SUBACK 0x80)".to_string(),
                    Protocol::V5 => format!("refused by the broker (SUBACK: {reason})"),
                };
                items.push(Item::fail(SIDE, &t.label, detail, hint));
            }
        }
    }

    if lost.is_none() {
        disconnect(&client, &mut eventloop, timeout.min(Duration::from_secs(2))).await;
    }
    items
}

/// The check's own client id: the gateway's, marked, with the process id so two checks never collide.
fn check_client_id(client_id: &str) -> String {
    format!("{client_id}-check-{}", std::process::id())
}

const BROKER_HINT: &str = "check mqtt.broker (env MQTT_BROKER) and that the broker runs and listens there";

/// A plain TCP connection first, so that "nothing listens there" is told apart from what goes wrong
/// after it (TLS, the MQTT handshake, credentials).
async fn tcp_probe(broker: &BrokerAddr, timeout: Duration) -> Result<(), (String, String)> {
    let (host, port, addr) = (broker.host.as_str(), broker.port, broker.authority());
    let secs = timeout.as_secs_f64();
    let resolved = match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => addrs.collect::<Vec<_>>(),
        Ok(Err(e)) => return Err((format!("cannot resolve host \"{host}\": {e}"), BROKER_HINT.into())),
        Err(_) => return Err((format!("cannot resolve host \"{host}\" within {secs}s"), BROKER_HINT.into())),
    };
    if resolved.is_empty() {
        return Err((format!("host \"{host}\" resolves to no address"), BROKER_HINT.into()));
    }
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&resolved[..])).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err((format!("{addr}: connection refused (nothing listens there)"), BROKER_HINT.into()))
        }
        Ok(Err(e)) => Err((format!("{addr}: cannot connect: {e}"), BROKER_HINT.into())),
        Err(_) => Err((
            format!("{addr}: no answer to the TCP connect within {secs}s"),
            format!("{BROKER_HINT}; a firewall may be dropping the packets"),
        )),
    }
}

enum Connect {
    /// The broker answered CONNECT with a refusal: what it means, and a hint.
    Refused(String, String),
    /// No CONNACK: what happened, and a hint.
    Failed(String, String),
}

/// TLS (when configured) and the MQTT handshake, up to the CONNACK.
async fn connect(eventloop: &mut EventLoop, timeout: Duration, settings: &MqttSettings) -> Result<(), Connect> {
    let secs = timeout.as_secs_f64();
    let no_connack_hint = "is this an MQTT listener? A TLS listener needs mqtts://host:port in mqtt.broker (env MQTT_BROKER), a plain one mqtt://; the broker's log says why it closed the connection";
    // rumqttc's own connection timeout is whole seconds: one more second of slack before ours.
    let client_id = check_client_id(&settings.client_id);
    match tokio::time::timeout(timeout + Duration::from_secs(1), eventloop.poll()).await {
        Ok(Ok(Event::ConnAck { .. })) => Ok(()),
        Ok(Ok(_)) => Err(Connect::Failed("expected a CONNACK, got another packet".into(), no_connack_hint.into())),
        Ok(Err(ConnectionError::V4(rumqttc::ConnectionError::ConnectionRefused(code)))) => {
            let (detail, hint) = refused(code, settings, &client_id);
            Err(Connect::Refused(detail, hint))
        }
        Ok(Err(ConnectionError::V5(rumqttc::v5::ConnectionError::ConnectionRefused(code)))) => {
            let (detail, hint) = refused5(code, settings, &client_id);
            Err(Connect::Refused(detail, hint))
        }
        Ok(Err(
            ConnectionError::V4(rumqttc::ConnectionError::NetworkTimeout)
            | ConnectionError::V5(rumqttc::v5::ConnectionError::Timeout(_)),
        ))
        | Err(_) => {
            Err(Connect::Failed(format!("TCP connected, but no CONNACK within {secs}s"), no_connack_hint.into()))
        }
        Ok(Err(e)) => {
            let d = crate::mqtt::diagnose::diagnose(&e, settings);
            Err(Connect::Failed(format!("TCP connected, but then {} ({e})", d.what), d.hint.into()))
        }
    }
}

/// What a CONNACK refusal means, and what to change.
fn refused(code: ConnectReturnCode, settings: &MqttSettings, client_id: &str) -> (String, String) {
    let credentials = "mqtt.username (env MQTT_USERNAME) and mqtt.password (env MQTT_PASSWORD)";
    match code {
        ConnectReturnCode::BadUserNamePassword => (
            "the broker refused the user name or password (CONNACK 4: bad user name or password)".into(),
            match &settings.credentials {
                Some((user, _)) => format!("check {credentials}; the user sent was \"{user}\""),
                None => format!("no credentials are configured: set {credentials}"),
            },
        ),
        ConnectReturnCode::NotAuthorized => (
            "not authorized (CONNACK 5)".into(),
            match &settings.credentials {
                Some((user, _)) => format!("the broker did not accept user \"{user}\": check {credentials}, and that the broker lets this user connect"),
                None => format!("the broker does not accept anonymous clients: set {credentials}"),
            },
        ),
        ConnectReturnCode::BadClientId => (
            format!("the broker refused the client id \"{client_id}\" (CONNACK 2: identifier rejected)"),
            "the check connects as <mqtt.client_id>-check-<pid>; a broker that limits ids to 23 characters refuses a long one: shorten mqtt.client_id (env GATEWAY_MQTT__CLIENT_ID)".into(),
        ),
        ConnectReturnCode::RefusedProtocolVersion => (
            "the broker refused MQTT 3.1.1 (CONNACK 1: unacceptable protocol version)".into(),
            "the gateway speaks MQTT 3.1.1: enable it on the broker's listener".into(),
        ),
        ConnectReturnCode::ServiceUnavailable => (
            "the broker is unavailable (CONNACK 3: server unavailable)".into(),
            "the broker accepts TCP connections but no MQTT sessions now; its log says why".into(),
        ),
        ConnectReturnCode::Success => ("refused with a success code (CONNACK 0)".into(), "the broker's log may say why".into()),
    }
}

/// An MQTT 5 CONNACK refusal: the codes 3.1.1 also has are told as there, the others by their name.
fn refused5(code: Code5, settings: &MqttSettings, client_id: &str) -> (String, String) {
    let as_v4 = match code {
        Code5::BadUserNamePassword => Some(ConnectReturnCode::BadUserNamePassword),
        Code5::NotAuthorized => Some(ConnectReturnCode::NotAuthorized),
        Code5::ClientIdentifierNotValid | Code5::BadClientId => Some(ConnectReturnCode::BadClientId),
        Code5::ServerUnavailable | Code5::ServiceUnavailable => Some(ConnectReturnCode::ServiceUnavailable),
        _ => None,
    };
    if let Some(c) = as_v4 {
        return refused(c, settings, client_id);
    }
    let (what, hint) = crate::mqtt::v5::refused(&code);
    (format!("{what} (CONNACK {code:?})"), hint.into())
}

/// The filters to check: exactly those the gateway subscribes (`filter::plan`: a route filter covered
/// by another's is not subscribed; partly overlapping ones are merged), each named by the routes it
/// serves, with the fallback filters the gateway would subscribe if the broker refused it.
fn targets(settings: &MqttSettings, routes: &RouteTable) -> Vec<Target> {
    // As the gateway does: QoS 2 is subscribed as 1 with a persistent session.
    let cap = |q: u8| if settings.clean_session { q } else { q.min(1) };
    let quote = |names: &[&str]| names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
    let plural = |names: &[&str]| if names.len() == 1 { "route" } else { "routes" };
    routes
        .subscriptions()
        .iter()
        .map(|s| {
            let served: Vec<_> = routes.routes().iter().filter(|r| s.serves.contains(&r.filter)).collect();
            let own: Vec<&str> = served.iter().filter(|r| r.filter == s.filter).map(|r| &*r.name).collect();
            let covered: Vec<&str> = served.iter().filter(|r| r.filter != s.filter).map(|r| &*r.name).collect();
            let label = match (own.is_empty(), covered.is_empty()) {
                (false, true) => format!("{} {} filter \"{}\"", plural(&own), quote(&own), s.filter),
                (false, false) => format!(
                    "{} {} filter \"{}\" (also serving {} {}, whose filters it covers)",
                    plural(&own),
                    quote(&own),
                    s.filter,
                    plural(&covered),
                    quote(&covered)
                ),
                (true, _) => format!(
                    "filter \"{}\" (subscribed for the overlapping filters of {} {})",
                    s.filter,
                    plural(&covered),
                    quote(&covered)
                ),
            };
            Target {
                filter: s.filter.clone(),
                qos: cap(s.qos),
                label,
                fallbacks: routes.fallbacks_for(s).into_iter().map(|(f, q)| (f, cap(q))).collect(),
            }
        })
        .collect()
}

/// SUBSCRIBEs `filter` alone and waits for its SUBACK (answers are remembered per filter). On failure:
/// what happened, a hint, and why the filters after it cannot be checked on this connection.
async fn subscribe(
    client: &Client,
    eventloop: &mut EventLoop,
    answers: &mut HashMap<String, Suback>,
    filter: &str,
    wanted: u8,
    timeout: Duration,
) -> Result<Suback, (String, String, String)> {
    if let Some(a) = answers.get(filter) {
        return Ok(a.clone());
    }
    let secs = timeout.as_secs_f64();
    // The request channel has room: this does not wait for the event loop.
    if let Err(e) = client.try_subscribe(&[(filter.to_string(), wanted)]) {
        return Err((
            format!("could not send the SUBSCRIBE: {e}"),
            "a filter the client library refuses; `validate` checks filters".into(),
            "the SUBSCRIBE could not be sent".into(),
        ));
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            // One SUBSCRIBE at a time: the next SUBACK answers it.
            Ok(Ok(Event::SubAck { granted, .. })) => {
                let answer = match granted.first() {
                    Some(Granted::Qos(q)) => Suback::Granted(*q),
                    Some(Granted::Refused(reason)) => Suback::Refused(reason),
                    None => Suback::Refused("no reason code"),
                };
                answers.insert(filter.to_string(), answer.clone());
                return Ok(answer);
            }
            // Retained messages and the like, which the subscription brings: not what is checked.
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.oversize().is_some() => {
                let size = e.oversize().unwrap_or_default();
                return Err((
                    format!("a message of {size} bytes, over mqtt.max_packet_size_bytes, arrived (a retained one?) and closed the connection"),
                    "raise mqtt.max_packet_size_bytes (env GATEWAY_MQTT__MAX_PACKET_SIZE_BYTES) to at least the broker's max_packet_size; the gateway would take it in on its next connection and dead-letter it".into(),
                    "the connection was lost".into(),
                ))
            }
            Ok(Err(e)) => {
                return Err((
                    format!("the connection was lost after the SUBSCRIBE: {e}"),
                    "some brokers disconnect a client that subscribes to a forbidden filter: check the broker's ACL for this user, and its log".into(),
                    "the connection was lost".into(),
                ))
            }
            Err(_) => {
                return Err((
                    format!("no SUBACK within {secs}s"),
                    "the broker accepted the connection but did not answer the SUBSCRIBE; its log may say why".into(),
                    "an earlier SUBSCRIBE got no answer".into(),
                ))
            }
        }
    }
}

/// DISCONNECT, so the broker closes the session at once (it is a clean one: nothing stays behind).
async fn disconnect(client: &Client, eventloop: &mut EventLoop, timeout: Duration) {
    if !client.try_disconnect() {
        return;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, eventloop.poll()).await {
        if matches!(event, Event::DisconnectSent) {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_client_id_is_never_the_gateways() {
        let id = check_client_id("edge-1");
        assert!(id.starts_with("edge-1-check-"), "{id}");
        assert_ne!(id, "edge-1");
    }
}
