//! The MQTT edge: one rumqttc connection, polled at all times. It reconnects with backoff, subscribes
//! the route table's plan (again after every reconnect that found no session), falls back to a route's
//! fallback filters when the broker refuses one in its SUBACK, and forwards publishes to the pipeline
//! through the intake. When the intake is full it stops reading the connection (the broker holds the
//! rest) while still answering keep-alives.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, PubAck, PubRec, Publish, QoS, SubscribeFilter, SubscribeReasonCode, Transport};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::ack::AckToken;
use crate::backoff::Backoff;
use crate::config::MqttSettings;
use crate::intake::IntakeSender;
use crate::metrics::{DropReason, Metrics};
use crate::route::RouteTable;

/// A message as it leaves the MQTT edge.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub pkid: u16,
    pub received_at: SystemTime,
    /// Which connection it arrived on (packet ids are only meaningful within one).
    pub connection: u64,
    /// The route table in effect when it arrived: a message is routed by one complete route set, even if
    /// a reload swaps the table while it waits in the buffer.
    pub routes: Arc<RouteTable>,
}

/// Tokens the wiring uses to end the MQTT side in two steps.
#[derive(Clone)]
pub struct Stop {
    /// Stop forwarding messages: what arrives after this is not taken.
    pub receiving: CancellationToken,
    /// Disconnect and return.
    pub disconnect: CancellationToken,
}

pub fn options(s: &MqttSettings) -> MqttOptions {
    let mut o = MqttOptions::new(&s.client_id, &s.host, s.port);
    o.set_keep_alive(s.keep_alive);
    o.set_clean_session(s.clean_session);
    // rumqttc's 10 KiB default drops the connection on any larger message.
    o.set_max_packet_size(s.max_packet_size, s.max_packet_size);
    if let Some((user, pass)) = &s.credentials {
        o.set_credentials(user, pass.expose());
    }
    if s.tls {
        o.set_transport(Transport::tls_with_default_config());
    }
    o
}

fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Subscription bookkeeping. rumqttc tells us the packet id of a SUBSCRIBE only when it goes out
/// (`Outgoing::Subscribe`), in request order, so requests wait in a FIFO until then.
#[derive(Default)]
struct Subscriptions {
    requested: VecDeque<Vec<(String, u8)>>,
    by_pkid: HashMap<u16, Vec<(String, u8)>>,
    /// Filters subscribed, or being subscribed, on this connection, with their QoS.
    wanted: HashMap<String, u8>,
    /// Filters the broker refused on this connection (their routes' fallbacks stand in for them).
    refused: Vec<String>,
    /// Subscribe QoS 2 routes at QoS 1. With a persistent session rumqttc 0.25 cannot resume an incoming
    /// QoS 2 exchange (it answers the broker's re-sent PUBREL with a protocol error and reconnects, over
    /// and over: rumqtt#664). QoS 2 adds nothing here anyway: the Kafka side is at-least-once.
    cap_qos_at_1: bool,
}

impl Subscriptions {
    /// Brings the connection's subscriptions in line with `table`: subscribes what is missing (or at
    /// another QoS), unsubscribes what no route needs any more. The connection is kept.
    fn apply(&mut self, client: &AsyncClient, table: &RouteTable) {
        let mut desired: Vec<(String, u8)> = Vec::new();
        for s in table.subscriptions() {
            if self.refused.contains(&s.filter) {
                desired.extend(table.fallbacks_for(s));
            } else {
                desired.push((s.filter.clone(), s.qos));
            }
        }
        desired.retain(|(f, _)| !self.refused.contains(f));
        if self.cap_qos_at_1 {
            for (_, q) in desired.iter_mut() {
                *q = (*q).min(1);
            }
        }
        // New subscriptions first: the broker handles a connection's packets in order, so a filter that
        // replaces another is active before the old one goes, and no message falls between them.
        let missing: Vec<(String, u8)> = desired.iter().filter(|(f, q)| self.wanted.get(f) != Some(q)).cloned().collect();
        self.subscribe(client, missing);
        let stale: Vec<String> = self.wanted.keys().filter(|f| !desired.iter().any(|(d, _)| d == *f)).cloned().collect();
        for filter in stale {
            self.wanted.remove(&filter);
            match client.try_unsubscribe(filter.clone()) {
                Ok(()) => tracing::info!(filter = %filter, "unsubscribed: no route needs it any more"),
                Err(e) => tracing::error!(filter = %filter, error = %e, "could not queue the UNSUBSCRIBE request"),
            }
        }
    }

    fn subscribe(&mut self, client: &AsyncClient, filters: Vec<(String, u8)>) {
        if filters.is_empty() {
            return;
        }
        let request: Vec<SubscribeFilter> = filters.iter().map(|(f, q)| SubscribeFilter::new(f.clone(), qos(*q))).collect();
        // try_: never await the request channel from the polling task (it can deadlock when full).
        match client.try_subscribe_many(request) {
            Ok(()) => {
                for (f, q) in &filters {
                    self.wanted.insert(f.clone(), *q);
                }
                self.requested.push_back(filters);
            }
            Err(e) => tracing::error!(error = %e, "could not queue the SUBSCRIBE request"),
        }
    }
}

/// The channels between the MQTT edge and the rest of the gateway.
pub struct Links {
    /// Messages out to the pipeline, bounded by bytes (see crate::intake).
    pub out: IntakeSender,
    /// Acks in, from the ack sequencer, in arrival order.
    pub acks: mpsc::UnboundedReceiver<AckToken>,
    /// The number of the current connection, for the sequencer to drop acks of older ones early.
    pub connection: Arc<AtomicU64>,
}

pub async fn run(settings: MqttSettings, mut routes: watch::Receiver<Arc<RouteTable>>, links: Links, metrics: Arc<Metrics>, stop: Stop) {
    let Links { out, acks: mut acks_in, connection: shared_connection } = links;
    let broker = format!("{}:{}", settings.host, settings.port);
    let mut options = options(&settings);
    // Acks are ours to send, after Kafka has the records (see crate::ack).
    options.set_manual_acks(true);
    // Room for a burst of acks in rumqttc's request channel; an ack that does not fit waits in `unsent`.
    let (client, mut eventloop) = AsyncClient::new(options, 4096);
    let mut net = eventloop.network_options();
    net.set_connection_timeout(settings.connect_timeout.as_secs());
    eventloop.set_network_options(net);

    let mut backoff = Backoff::new(settings.reconnect_min, settings.reconnect_max);
    let mut subs = Subscriptions { cap_qos_at_1: !settings.clean_session, ..Subscriptions::default() };
    if !settings.clean_session && routes.borrow().routes().iter().any(|r| r.qos == 2) {
        tracing::warn!("QoS 2 routes are subscribed at QoS 1 with a persistent session (clean_session: false): rumqttc cannot resume QoS 2 exchanges; delivery to Kafka is at-least-once either way");
    }
    let mut connection: u64 = 0;
    let mut out = Some(out);
    // The route table in effect, kept here so that a message costs no lock to find it.
    let mut table = routes.borrow_and_update().clone();
    let mut out_acks = AckOut::default();
    let mut routes_open = true;
    let mut acks_open = true;
    tracing::info!(broker = %broker, client_id = %settings.client_id, clean_session = settings.clean_session, "connecting to the MQTT broker");

    let mut retry_unsent = tokio::time::interval(Duration::from_millis(5));
    retry_unsent.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'run: loop {
        // The intake is full: stop reading, so the broker holds what follows (TCP pushes back on it),
        // and keep the connection alive meanwhile.
        if out.as_ref().is_some_and(IntakeSender::is_full) && metrics.mqtt_connected.load(Relaxed) {
            let acks = AckInbox { rx: &mut acks_in, open: &mut acks_open, client: &client, connection, out: &mut out_acks };
            match stall(&mut eventloop, &settings, &stop, &metrics, out.as_ref(), acks).await {
                Stalled::Room => {}
                Stalled::Disconnect => break 'run,
                Stalled::StopReceiving => out = None,
            }
        }
        // Checked per event without waiting on them: cheap (atomic reads), where a select! over them
        // would register and drop a waiter on each, for every message.
        if stop.disconnect.is_cancelled() {
            break 'run;
        }
        if out.is_some() && stop.receiving.is_cancelled() {
            // Dropping the sender lets the pipeline drain what it has and finish.
            out = None;
        }
        if acks_open {
            let inbox = AckInbox { rx: &mut acks_in, open: &mut acks_open, client: &client, connection, out: &mut out_acks };
            write_due_acks(&mut eventloop, inbox, settings.connect_timeout, &metrics).await;
        }
        if routes_open && routes.has_changed().unwrap_or(false) {
            table = routes.borrow_and_update().clone();
            if metrics.mqtt_connected.load(Relaxed) {
                subs.apply(&client, &table);
            }
        }
        // One poll future per event, kept alive while the other branches run: dropping rumqttc's poll
        // midway can abandon a connection attempt or a half-written ack (rumqtt#930). It goes first: in
        // a burst the event is ready and nothing else is polled; the checks above keep the others
        // served, and the branches below wait for them when the connection is quiet.
        let event = {
            let mut poll = std::pin::pin!(eventloop.poll());
            loop {
                tokio::select! {
                    biased;
                    event = &mut poll => break event,
                    _ = stop.disconnect.cancelled() => break 'run,
                    _ = stop.receiving.cancelled(), if out.is_some() => {
                        out = None;
                    }
                    ack = acks_in.recv(), if acks_open => match ack {
                        Some(a) => send_ack(&client, a, connection, &mut out_acks, &metrics),
                        None => acks_open = false,
                    },
                    _ = retry_unsent.tick(), if !out_acks.unsent.is_empty() => {
                        let retry: Vec<AckToken> = out_acks.unsent.drain(..).collect();
                        for a in retry {
                            send_ack(&client, a, connection, &mut out_acks, &metrics);
                        }
                    }
                    changed = routes.changed(), if routes_open => match changed {
                        Ok(()) => {
                            table = routes.borrow_and_update().clone();
                            if metrics.mqtt_connected.load(Relaxed) {
                                subs.apply(&client, &table);
                            }
                        }
                        Err(_) => routes_open = false,
                    },
                }
            }
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                // Data arriving proves the connection alive. rumqttc counts only a PINGRESP as proof, and
                // a PINGRESP queued behind a backlog the broker held for us (after a stall, in a burst)
                // can take longer than the keep-alive to read: rumqttc would drop a healthy connection.
                eventloop.state.await_pingresp = false;
                forward(p, connection, &table, &mut out, &metrics);
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff.reset();
                connection += 1;
                shared_connection.store(connection, Relaxed);
                metrics.mqtt_connected(&broker, ack.session_present);
                subs.by_pkid.clear();
                subs.wanted.clear();
                subs.refused.clear();
                // rumqttc never resubscribes (rumqtt#250). Without a session the broker forgot our
                // subscriptions; with one, subscribing again is harmless and picks up route changes.
                table = routes.borrow_and_update().clone();
                subs.apply(&client, &table);
            }
            Ok(Event::Outgoing(Outgoing::PubAck(_) | Outgoing::PubRec(_))) => {
                // rumqttc wrote an ack we had queued in its channel.
                out_acks.in_channel = out_acks.in_channel.saturating_sub(1);
            }
            Ok(Event::Outgoing(Outgoing::Subscribe(pkid))) => {
                if let Some(batch) = subs.requested.pop_front() {
                    subs.by_pkid.insert(pkid, batch);
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let Some(batch) = subs.by_pkid.remove(&ack.pkid) else { continue };
                let mut fallbacks: Vec<(String, u8)> = Vec::new();
                for ((filter, wanted_qos), code) in batch.iter().zip(ack.return_codes.iter()) {
                    match code {
                        SubscribeReasonCode::Success(granted) => {
                            let granted = *granted as u8;
                            if granted < *wanted_qos {
                                tracing::warn!(filter = %filter, requested_qos = wanted_qos, granted_qos = granted, "subscribed, at a lower QoS than requested");
                            } else {
                                tracing::info!(filter = %filter, qos = granted, "subscribed");
                            }
                        }
                        SubscribeReasonCode::Failure => {
                            metrics.subscriptions_rejected.fetch_add(1, Relaxed);
                            subs.wanted.remove(filter);
                            subs.refused.push(filter.clone());
                            let planned = table.subscriptions().iter().find(|s| &s.filter == filter);
                            let candidates: Vec<(String, u8)> = planned
                                .map(|s| table.fallbacks_for(s))
                                .unwrap_or_default()
                                .into_iter()
                                .filter(|(f, _)| !subs.wanted.contains_key(f) && !subs.refused.contains(f))
                                .collect();
                            if candidates.is_empty() {
                                tracing::error!(filter = %filter, "the broker refused the subscription and no fallback filter is left; messages for it will not arrive");
                            } else {
                                let names: Vec<&str> = candidates.iter().map(|(f, _)| f.as_str()).collect();
                                tracing::warn!(filter = %filter, fallback_filters = ?names, "the broker refused the subscription; subscribing the fallback filters");
                                fallbacks.extend(candidates);
                            }
                        }
                    }
                }
                subs.subscribe(&client, fallbacks);
            }
            Ok(_) => {}
            Err(e) => {
                // rumqttc reads packets in batches and may still hold events of the failed connection;
                // it would hand them out after the reconnect, where a PUBLISH's packet id names another
                // message. QoS 0 messages have no packet id to go stale: they are taken. The others,
                // never acknowledged, come again with a persistent session.
                for event in eventloop.state.events.drain(..) {
                    if let Event::Incoming(Packet::Publish(p)) = event {
                        if p.qos == QoS::AtMostOnce {
                            forward(p, connection, &table, &mut out, &metrics);
                        }
                    }
                }
                // Whatever was acknowledged from here on belongs to a connection that is gone: a new
                // number makes send_ack drop those acks (rumqttc would send them on the next connection,
                // where the packet ids may name other messages).
                connection += 1;
                shared_connection.store(connection, Relaxed);
                // rumqttc drops the acks still in its channel on a broken connection.
                out_acks.in_channel = 0;
                // SUBSCRIBEs not yet sent are void on a new connection; CONNACK applies the plan again.
                subs.requested.clear();
                subs.by_pkid.clear();
                eventloop.pending.retain(|r| !matches!(r, rumqttc::Request::Subscribe(_) | rumqttc::Request::Unsubscribe(_)));
                if let rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(rumqttc::Error::PayloadSizeLimitExceeded(size))) = &e {
                    oversize(&mut eventloop, *size, settings.max_packet_size, &metrics);
                }
                let delay = backoff.next_delay();
                metrics.mqtt_connection_error(&broker, &e, backoff.attempt(), delay);
                // Keep taking acks while waiting, so the stage that sends them never blocks on us; they
                // belong to the connection that is gone and are dropped.
                let pause = tokio::time::sleep(delay);
                tokio::pin!(pause);
                loop {
                    tokio::select! {
                        _ = &mut pause => break,
                        _ = stop.disconnect.cancelled() => break 'run,
                        ack = acks_in.recv(), if acks_open => match ack {
                            Some(a) => send_ack(&client, a, connection, &mut out_acks, &metrics),
                            None => acks_open = false,
                        },
                    }
                }
            }
        }
    }

    // The last acks go out before the DISCONNECT (rumqttc sends requests in order).
    while let Ok(a) = acks_in.try_recv() {
        out_acks.unsent.push_back(a);
    }
    for a in out_acks.unsent.drain(..).collect::<Vec<_>>() {
        send_ack(&client, a, connection, &mut out_acks, &metrics);
    }
    if !out_acks.unsent.is_empty() {
        tracing::warn!(acks = out_acks.unsent.len(), "acks that did not fit before disconnecting; the broker delivers those messages again");
    }
    // Say goodbye properly so the broker does not publish a will or keep us as a zombie session.
    if metrics.mqtt_connected.load(Relaxed) && client.try_disconnect().is_ok() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Ok(ev)) = tokio::time::timeout_at(deadline, eventloop.poll()).await {
            if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    }
    metrics.mqtt_connected.store(false, Relaxed);
    tracing::info!(broker = %broker, "disconnected from the MQTT broker");
}

/// Hands a received message to the pipeline with the route table in effect now (a message is routed by
/// one complete route set, even if a reload swaps the table while it waits in the intake).
fn forward(p: Publish, connection: u64, table: &Arc<RouteTable>, out: &mut Option<IntakeSender>, metrics: &Metrics) {
    let Some(tx) = out.as_ref() else {
        // Shutting down: not taken, not acknowledged (QoS 1/2 come again next session).
        metrics.message_dropped(DropReason::Shutdown, &p.topic);
        return;
    };
    let qos = p.qos as u8;
    metrics.message_received(&p.topic, qos, p.payload.len());
    let inbound = Inbound {
        topic: p.topic,
        payload: p.payload,
        qos,
        retain: p.retain,
        pkid: p.pkid,
        received_at: SystemTime::now(),
        connection,
        routes: table.clone(),
    };
    if let Err(m) = tx.send(inbound) {
        // The pipeline is gone (it only stops at shutdown).
        metrics.message_dropped(DropReason::Shutdown, &m.topic);
        *out = None;
    }
}

enum Stalled {
    Room,
    Disconnect,
    StopReceiving,
}

/// Where acks come in, for the code that takes them outside the main select.
struct AckInbox<'a> {
    rx: &'a mut mpsc::UnboundedReceiver<AckToken>,
    open: &'a mut bool,
    client: &'a AsyncClient,
    connection: u64,
    out: &'a mut AckOut,
}

/// Acks on their way out. Two ways, one order: through rumqttc's request channel (its `poll` writes and
/// flushes each on its own: one system call per ack), or written by [`write_due_acks`] straight to the
/// connection between events, a batch with one flush. A batch is written only when no ack queued earlier
/// is still waiting in the channel, so arrival order holds.
#[derive(Default)]
struct AckOut {
    /// Did not fit in rumqttc's channel; retried before anything newer.
    unsent: VecDeque<AckToken>,
    /// Queued in rumqttc's channel and not yet written (it reports each one it writes).
    in_channel: usize,
}

/// Between events: takes the acks that are due and writes them to the connection with one flush.
async fn write_due_acks(eventloop: &mut rumqttc::EventLoop, inbox: AckInbox<'_>, timeout: Duration, metrics: &Metrics) {
    let mut written = 0;
    loop {
        let a = match inbox.rx.try_recv() {
            Ok(a) => a,
            Err(mpsc::error::TryRecvError::Empty) => break,
            Err(mpsc::error::TryRecvError::Disconnected) => {
                *inbox.open = false;
                break;
            }
        };
        if a.connection != inbox.connection {
            metrics.stale_acks_dropped.fetch_add(1, Relaxed);
            continue;
        }
        let network = match eventloop.network.as_mut() {
            Some(n) if inbox.out.in_channel == 0 && inbox.out.unsent.is_empty() => n,
            // Behind the acks already queued, in order.
            _ => {
                send_ack(inbox.client, a, inbox.connection, inbox.out, metrics);
                continue;
            }
        };
        let packet = if a.qos >= 2 { Packet::PubRec(PubRec::new(a.pkid)) } else { Packet::PubAck(PubAck::new(a.pkid)) };
        // A broken connection is reported by the next poll; the messages not acknowledged come again.
        if network.write(packet).await.is_err() {
            break;
        }
        written += 1;
    }
    if written > 0 {
        if let Some(network) = eventloop.network.as_mut() {
            if let Ok(Ok(())) = tokio::time::timeout(timeout, network.flush()).await {
                metrics.acks_sent.fetch_add(written, Relaxed);
            }
        }
    }
}

/// Waits, without reading the connection, until the intake has room. Keep-alive is honoured meanwhile:
/// rumqttc only pings from inside `poll`, which would also read, so the PINGREQs are written here, at
/// half the keep-alive so that a late one still lands within the broker's 1.5 x keep-alive. Acks are
/// still taken (they go out when reading resumes): the stage that sends them must never block on us,
/// or the pipeline that makes room in the intake would stop.
async fn stall(
    eventloop: &mut rumqttc::EventLoop,
    settings: &MqttSettings,
    stop: &Stop,
    metrics: &Metrics,
    out: Option<&IntakeSender>,
    acks: AckInbox<'_>,
) -> Stalled {
    let Some(out) = out else { return Stalled::Room };
    let started = tokio::time::Instant::now();
    metrics.intake_stalled(out.used_bytes());
    let every = (settings.keep_alive / 2).max(Duration::from_millis(500));
    let mut ping = tokio::time::interval_at(started + every, every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            biased;
            _ = stop.disconnect.cancelled() => break Stalled::Disconnect,
            _ = stop.receiving.cancelled() => break Stalled::StopReceiving,
            _ = out.room() => break Stalled::Room,
            ack = acks.rx.recv(), if *acks.open => match ack {
                Some(a) => send_ack(acks.client, a, acks.connection, acks.out, metrics),
                None => *acks.open = false,
            },
            _ = ping.tick() => {
                let Some(network) = eventloop.network.as_mut() else { break Stalled::Room };
                let sent = async {
                    network.write(Packet::PingReq).await?;
                    network.flush().await
                };
                match tokio::time::timeout(settings.connect_timeout, sent).await {
                    Ok(Ok(())) => tracing::debug!("PINGREQ sent while reading is paused"),
                    // Let rumqttc's poll find the broken connection and reconnect.
                    _ => break Stalled::Room,
                }
            }
        }
    };
    // Our PINGREQs' answers, and rumqttc's own, wait behind the messages the broker queued while we did
    // not read: a pending PINGRESP is no sign of a dead connection here.
    eventloop.state.await_pingresp = false;
    metrics.intake_resumed(started.elapsed());
    result
}

/// The largest packet the gateway will raise its limit to in order to take an over-size message in and
/// dead-letter it (MQTT's own limit is 256 MiB).
const OVERSIZE_CEILING: usize = 64 * 1024 * 1024;

/// A message larger than `mqtt.max_packet_size_bytes` arrived. rumqttc cannot skip it: the connection is
/// closed, and a QoS 1/2 message of a persistent session comes back after every reconnect. So the limit
/// for the next connection is raised to let it in; the pipeline then dead-letters it for being over the
/// configured size. A QoS 0 message is gone with the connection: it is counted and logged.
fn oversize(eventloop: &mut rumqttc::EventLoop, size: usize, configured: usize, metrics: &Metrics) {
    metrics.oversize_messages.fetch_add(1, Relaxed);
    if size <= OVERSIZE_CEILING && size > eventloop.mqtt_options.max_packet_size() {
        eventloop.mqtt_options.set_max_packet_size(size + 1024, configured);
        tracing::error!(
            size,
            limit = configured,
            "a message larger than mqtt.max_packet_size_bytes closed the connection; taking it in on the next connection to dead-letter it (a QoS 0 one is lost). Raise mqtt.max_packet_size_bytes if such messages are expected"
        );
    } else {
        tracing::error!(size, limit = configured, "a message larger than mqtt.max_packet_size_bytes (and the gateway's ceiling) closed the connection; it is rejected");
    }
}

/// Queues a PUBACK (QoS 1) or PUBREC (QoS 2) for a message of the current connection. An ack for a
/// message of an earlier connection is dropped: its packet id may now name another message.
fn send_ack(client: &AsyncClient, a: AckToken, connection: u64, out: &mut AckOut, metrics: &Metrics) {
    if a.connection != connection {
        metrics.stale_acks_dropped.fetch_add(1, Relaxed);
        return;
    }
    if !out.unsent.is_empty() {
        // Older acks are waiting for room: this one goes behind them (arrival order).
        out.unsent.push_back(a);
        return;
    }
    let mut p = Publish::new("", qos(a.qos), Vec::<u8>::new());
    p.pkid = a.pkid;
    if client.try_ack(&p).is_err() {
        out.unsent.push_back(a);
    } else {
        out.in_channel += 1;
        metrics.acks_sent.fetch_add(1, Relaxed);
    }
}
