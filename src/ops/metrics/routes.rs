//! Counters kept per route, and the registry that keeps them across reloads.
//!
//! Each [`Route`](crate::core::routing::Route) carries an `Arc` of its [`RouteStats`], bound when its table is
//! put in effect, so counting a record costs an atomic add and no lookup. A route that a reload keeps
//! (same name, same topic) keeps its counters; Prometheus counters never go back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use crate::core::routing::stats::{Histogram, RouteStats, LATENCY_BUCKETS};
use crate::core::routing::RouteTable;

/// Every route's counters since start, in the order routes first appeared.
#[derive(Debug, Default)]
pub struct RouteRegistry {
    inner: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    index: HashMap<(Arc<str>, String), usize>,
    all: Vec<Arc<RouteStats>>,
}

impl RouteRegistry {
    /// Gives every route of `table` its counters: the ones it had if a route of that name and topic was
    /// seen before, new ones otherwise.
    pub fn bind(&self, table: &mut RouteTable) {
        let mut reg = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        table.bind_stats(|route| {
            let key = (route.name.clone(), route.topic.source().to_string());
            let i = match reg.index.get(&key) {
                Some(&i) => i,
                None => {
                    let stats = RouteStats { route: key.0.clone(), topic: key.1.clone(), ..RouteStats::default() };
                    reg.all.push(Arc::new(stats));
                    let i = reg.all.len() - 1;
                    reg.index.insert(key, i);
                    i
                }
            };
            reg.all[i].clone()
        });
    }

    /// Every route's counters, for a scrape or the statistics line.
    pub fn all(&self) -> Vec<Arc<RouteStats>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).all.clone()
    }
}
