//! Subscription bookkeeping: which filters are subscribed on this connection, which the broker refused,
//! and the fallback filters that stand in for refused ones. rumqttc tells us the packet id of a
//! SUBSCRIBE only when it goes out (`Outgoing::Subscribe`), in request order, so requests wait in a FIFO
//! until then.
//!
//! With `mqtt.shared_group` every filter goes on the wire as `$share/<group>/<filter>`: the broker hands
//! each message to one member of the group. Everything here keeps the plain filters; only SUBSCRIBE and
//! UNSUBSCRIBE see the prefix (messages arrive with their own topic either way).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;

use super::client::{Client, Granted};
use crate::core::routing::RouteTable;
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;

#[derive(Default)]
pub(super) struct Subscriptions {
    requested: VecDeque<Vec<(String, u8)>>,
    by_pkid: HashMap<u16, Vec<(String, u8)>>,
    /// Filters subscribed, or being subscribed, on this connection, with their QoS.
    wanted: HashMap<String, u8>,
    /// Filters the broker refused on this connection (their routes' fallbacks stand in for them).
    refused: Vec<String>,
    /// Refused filters with no fallback left: their routes receive nothing (the gateway is not ready).
    unserved: Vec<String>,
    /// Subscribe QoS 2 routes at QoS 1. With a persistent session rumqttc 0.25 cannot resume an incoming
    /// QoS 2 exchange (it answers the broker's re-sent PUBREL with a protocol error and reconnects, over
    /// and over: rumqtt#664). QoS 2 adds nothing here anyway: the Kafka side is at-least-once.
    cap_qos_at_1: bool,
    /// `mqtt.shared_group`.
    shared_group: Option<String>,
}

impl Subscriptions {
    pub(super) fn new(cap_qos_at_1: bool, shared_group: Option<String>) -> Self {
        Self { cap_qos_at_1, shared_group, ..Self::default() }
    }

    /// The filter as the broker sees it.
    fn on_wire(&self, filter: &str) -> String {
        match &self.shared_group {
            Some(group) => format!("$share/{group}/{filter}"),
            None => filter.to_string(),
        }
    }

    /// A new connection: nothing is subscribed or refused on it yet.
    pub(super) fn reset(&mut self) {
        self.by_pkid.clear();
        self.wanted.clear();
        self.refused.clear();
        self.unserved.clear();
    }

    /// Tells readiness how the subscriptions stand: requested and not acknowledged, and refused for good.
    pub(super) fn publish(&self, health: &Health) {
        let pending = self.requested.iter().chain(self.by_pkid.values()).map(Vec::len).sum();
        health.set_subscriptions(pending, self.unserved.clone());
    }

    /// SUBSCRIBEs not yet sent are void on a new connection; CONNACK applies the plan again.
    pub(super) fn connection_lost(&mut self) {
        self.requested.clear();
        self.by_pkid.clear();
    }

    /// The routes changed: subscribe what the new table needs, if there is a connection to do it on
    /// (otherwise CONNACK applies the plan).
    pub(super) fn follow(&mut self, client: &Client, table: &RouteTable, connected: bool, health: &Health) {
        if connected {
            self.apply(client, table);
            self.publish(health);
        }
    }

    /// Brings the connection's subscriptions in line with `table`: subscribes what is missing (or at
    /// another QoS), unsubscribes what no route needs any more. The connection is kept.
    pub(super) fn apply(&mut self, client: &Client, table: &RouteTable) {
        let mut desired: Vec<(String, u8)> = Vec::new();
        for s in table.subscriptions() {
            if self.refused.contains(&s.filter) {
                desired.extend(table.fallbacks_for(s));
            } else {
                desired.push((s.filter.clone(), s.qos));
            }
        }
        desired.retain(|(f, _)| !self.refused.contains(f));
        self.unserved.retain(|f| table.subscriptions().iter().any(|s| &s.filter == f));
        if self.cap_qos_at_1 {
            for (_, q) in desired.iter_mut() {
                *q = (*q).min(1);
            }
        }
        // New subscriptions first: the broker handles a connection's packets in order, so a filter that
        // replaces another is active before the old one goes, and no message falls between them.
        let missing: Vec<(String, u8)> =
            desired.iter().filter(|(f, q)| self.wanted.get(f) != Some(q)).cloned().collect();
        self.subscribe(client, missing);
        let stale: Vec<String> =
            self.wanted.keys().filter(|f| !desired.iter().any(|(d, _)| d == *f)).cloned().collect();
        for filter in stale {
            self.wanted.remove(&filter);
            match client.try_unsubscribe(self.on_wire(&filter)) {
                Ok(()) => tracing::info!(filter = %filter, "unsubscribed: no route needs it any more"),
                Err(e) => tracing::error!(filter = %filter, error = %e, "could not queue the UNSUBSCRIBE request"),
            }
        }
    }

    fn subscribe(&mut self, client: &Client, filters: Vec<(String, u8)>) {
        if filters.is_empty() {
            return;
        }
        let request: Vec<(String, u8)> = filters.iter().map(|(f, q)| (self.on_wire(f), *q)).collect();
        // try_: never await the request channel from the polling task (it can deadlock when full).
        match client.try_subscribe(&request) {
            Ok(()) => {
                for (f, q) in &filters {
                    self.wanted.insert(f.clone(), *q);
                }
                self.requested.push_back(filters);
            }
            Err(e) => tracing::error!(error = %e, "could not queue the SUBSCRIBE request"),
        }
    }

    /// A SUBSCRIBE went out with packet id `pkid`.
    pub(super) fn on_subscribe_sent(&mut self, pkid: u16) {
        if let Some(batch) = self.requested.pop_front() {
            self.by_pkid.insert(pkid, batch);
        }
    }

    /// The broker's answer to a SUBSCRIBE: a refused filter is replaced by the fallback filters of the
    /// routes it served.
    pub(super) fn on_suback(
        &mut self,
        client: &Client,
        table: &RouteTable,
        pkid: u16,
        granted: &[Granted],
        metrics: &Metrics,
    ) {
        let Some(batch) = self.by_pkid.remove(&pkid) else { return };
        let mut fallbacks: Vec<(String, u8)> = Vec::new();
        for ((filter, wanted_qos), code) in batch.iter().zip(granted.iter()) {
            match code {
                Granted::Qos(granted) => {
                    let granted = *granted;
                    if granted < *wanted_qos {
                        tracing::warn!(filter = %filter, requested_qos = wanted_qos, granted_qos = granted, "subscribed, at a lower QoS than requested");
                    } else {
                        tracing::info!(filter = %filter, qos = granted, shared_group = self.shared_group.as_deref(), "subscribed");
                    }
                }
                Granted::Refused(reason) => {
                    metrics.subscriptions_rejected.fetch_add(1, Relaxed);
                    self.wanted.remove(filter);
                    self.refused.push(filter.clone());
                    let planned = table.subscriptions().iter().find(|s| &s.filter == filter);
                    let candidates: Vec<(String, u8)> = planned
                        .map(|s| table.fallbacks_for(s))
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|(f, _)| !self.wanted.contains_key(f) && !self.refused.contains(f))
                        .collect();
                    if candidates.is_empty() {
                        self.unserved.push(filter.clone());
                        tracing::error!(filter = %filter, reason, "the broker refused the subscription and no fallback filter is left; messages for it will not arrive");
                    } else {
                        let names: Vec<&str> = candidates.iter().map(|(f, _)| f.as_str()).collect();
                        tracing::warn!(filter = %filter, reason, fallback_filters = ?names, "the broker refused the subscription; subscribing the fallback filters");
                        fallbacks.extend(candidates);
                    }
                }
            }
        }
        self.subscribe(client, fallbacks);
    }
}
