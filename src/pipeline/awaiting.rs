//! Records waiting for their route's registry schema (see [`crate::registry`]): the schema of their
//! subject is not resolved yet, because the route was just loaded, the subject is new, or the registry
//! does not answer. One queue per route, in arrival order; while a route's queue is not empty, every new
//! record of that route joins it, so the route's order (and so each device's) holds. They are built again
//! when the registry edge says something changed, front first.
//!
//! Their messages stay unsettled, so QoS 1/2 messages are not acknowledged and the waiting counts
//! against `mqtt.max_unacked_messages`: a registry that stays away fills the window and the engine stops
//! taking messages (the backpressure), as a rate limit does.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

#[derive(Default)]
pub(super) struct Awaiting {
    /// Per route name: (message slot, route index in the message's table).
    queues: HashMap<Arc<str>, VecDeque<(u32, u32)>>,
    len: usize,
}

impl Awaiting {
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Records of `route` are waiting: a new one must wait behind them.
    pub(super) fn has(&self, route: &str) -> bool {
        self.queues.get(route).is_some_and(|q| !q.is_empty())
    }

    pub(super) fn push(&mut self, route: &Arc<str>, slot: u32, index: u32) {
        self.queues.entry(route.clone()).or_default().push_back((slot, index));
        self.len += 1;
    }

    /// The routes with records waiting.
    pub(super) fn routes(&self) -> Vec<Arc<str>> {
        self.queues.iter().filter(|(_, q)| !q.is_empty()).map(|(r, _)| r.clone()).collect()
    }

    pub(super) fn front(&self, route: &str) -> Option<(u32, u32)> {
        self.queues.get(route).and_then(|q| q.front().copied())
    }

    pub(super) fn pop_front(&mut self, route: &str) {
        if let Some(q) = self.queues.get_mut(route) {
            if q.pop_front().is_some() {
                self.len -= 1;
            }
            if q.is_empty() {
                self.queues.remove(route);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_waits_in_arrival_order_and_alone() {
        let mut a = Awaiting::default();
        let (r1, r2): (Arc<str>, Arc<str>) = (Arc::from("r1"), Arc::from("r2"));
        assert!(a.is_empty() && !a.has("r1"));
        a.push(&r1, 0, 0);
        a.push(&r2, 1, 0);
        a.push(&r1, 2, 0);
        assert_eq!((a.len(), a.has("r1"), a.has("r3")), (3, true, false));
        assert_eq!(a.front("r1"), Some((0, 0)));
        a.pop_front("r1");
        assert_eq!(a.front("r1"), Some((2, 0)), "the next of r1, not r2's");
        a.pop_front("r1");
        assert!(!a.has("r1") && a.has("r2"));
        assert_eq!(a.routes(), vec![r2.clone()]);
        a.pop_front("r2");
        a.pop_front("r2");
        assert!(a.is_empty());
    }
}
