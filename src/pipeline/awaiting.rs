//! Records waiting for their route's registry schema (see [`crate::registry`]): the schema of their
//! subject is not resolved yet, because the route was just loaded, the subject is new, or the registry
//! does not answer. One queue per route and device, in arrival order; while one is not empty, every new
//! record of that route for that device joins it, so each device's order holds, and a device whose
//! schema is known is not held up by another's new subject. They are built again when the registry edge
//! says something changed, front first; each then takes its turn under the route's rate limit, if any.
//!
//! Their messages stay unsettled, so QoS 1/2 messages are not acknowledged and the waiting counts
//! against `mqtt.max_unacked_messages`: a registry that stays away fills the window and the engine stops
//! taking messages (the backpressure), as a rate limit does.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// One device's records waiting: (message slot, route index in the message's table), in arrival order.
type Queue = VecDeque<(u32, u32)>;

#[derive(Default)]
pub(super) struct Awaiting {
    /// Per route name, per device id.
    queues: HashMap<Arc<str>, HashMap<Box<str>, Queue>>,
    len: usize,
}

impl Awaiting {
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Records of `route` for `device` are waiting: a new one must wait behind them.
    pub(super) fn has(&self, route: &str, device: &str) -> bool {
        self.len > 0 && self.queues.get(route).and_then(|d| d.get(device)).is_some_and(|q| !q.is_empty())
    }

    pub(super) fn push(&mut self, route: &Arc<str>, device: &str, slot: u32, index: u32) {
        let devices = self.queues.entry(route.clone()).or_default();
        match devices.get_mut(device) {
            Some(q) => q.push_back((slot, index)),
            None => {
                devices.insert(device.into(), VecDeque::from([(slot, index)]));
            }
        }
        self.len += 1;
    }

    /// The queues with records waiting: (route, device).
    pub(super) fn queues(&self) -> Vec<(Arc<str>, Box<str>)> {
        self.queues.iter().flat_map(|(r, devices)| devices.keys().map(move |d| (r.clone(), d.clone()))).collect()
    }

    pub(super) fn front(&self, route: &str, device: &str) -> Option<(u32, u32)> {
        self.queues.get(route).and_then(|d| d.get(device)).and_then(|q| q.front().copied())
    }

    pub(super) fn pop_front(&mut self, route: &str, device: &str) {
        let Some(devices) = self.queues.get_mut(route) else { return };
        if let Some(q) = devices.get_mut(device) {
            if q.pop_front().is_some() {
                self.len -= 1;
            }
            if q.is_empty() {
                devices.remove(device);
            }
        }
        if devices.is_empty() {
            self.queues.remove(route);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_and_device_waits_in_arrival_order_and_alone() {
        let mut a = Awaiting::default();
        let (r1, r2): (Arc<str>, Arc<str>) = (Arc::from("r1"), Arc::from("r2"));
        assert!(a.is_empty() && !a.has("r1", "d"));
        a.push(&r1, "d", 0, 0);
        a.push(&r2, "d", 1, 0);
        a.push(&r1, "d", 2, 0);
        a.push(&r1, "e", 3, 0);
        assert_eq!((a.len(), a.has("r1", "d"), a.has("r1", "x"), a.has("r3", "d")), (4, true, false, false));
        assert_eq!(a.front("r1", "d"), Some((0, 0)));
        a.pop_front("r1", "d");
        assert_eq!(a.front("r1", "d"), Some((2, 0)), "the next of r1's d, not r2's or e's");
        a.pop_front("r1", "d");
        assert!(!a.has("r1", "d") && a.has("r1", "e") && a.has("r2", "d"));
        let mut queues = a.queues();
        queues.sort();
        assert_eq!(queues, vec![(r1.clone(), "e".into()), (r2.clone(), "d".into())]);
        a.pop_front("r1", "e");
        a.pop_front("r2", "d");
        a.pop_front("r2", "d");
        assert!(a.is_empty() && a.queues().is_empty());
    }
}
