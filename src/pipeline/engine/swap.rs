//! The engine's side of a producer swap (new Kafka settings, see `pipeline/swap.rs`).
//!
//! From the moment a checked producer arrives, nothing more is handed to the producer in use: no new
//! message is taken, and retries, rate-limited records, records waiting for their schema and records
//! read back from the spool wait. Once the producer in use has reported on everything it held, the new
//! one takes its place and what waited goes to it, oldest first: per-device order holds across the swap.
//!
//! If the producer in use still holds records after [`DRAIN`] (its cluster is away, or it lost its
//! credentials), they are taken back from it: to the spool when there is one, else to be produced again
//! by the new producer, in order, ahead of anything new ([`policy::Verdict::ProduceAgain`]). If even
//! that does not empty it within [`GIVE_UP`] more, the swap is abandoned: the new producer is dropped and
//! the old one goes on (a SIGHUP tries again).
//!
//! [`policy::Verdict::ProduceAgain`]: super::super::policy::Verdict::ProduceAgain

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::super::swap::{retire, Swap};
use super::Engine;
use crate::kafka;

/// How long the producer in use has to deliver what it holds before it is taken back from it.
const DRAIN: Duration = Duration::from_secs(5);
/// How long after taking back before the swap is abandoned.
const GIVE_UP: Duration = Duration::from_secs(5);
/// How often the engine looks at the producer in use while it drains.
pub(super) const SWAP_POLL: Duration = Duration::from_millis(20);

/// A swap under way.
pub(super) struct Swapping {
    next: Swap,
    since: Instant,
    took_back: bool,
}

impl Engine {
    /// Whether a swap is under way: nothing may be handed to the producer in use.
    pub(super) fn swapping(&self) -> bool {
        self.swapping.is_some()
    }

    pub(super) fn begin_swap(&mut self, next: Swap) {
        tracing::info!(
            held = kafka::in_flight(&self.producer).max(0),
            "switching Kafka producers: new records wait until the producer in use has delivered what it holds"
        );
        self.swapping = Some(Swapping { next, since: Instant::now(), took_back: false });
    }

    /// Moves a swap on; true once the new producer is in use (its events are to be served).
    pub(super) fn advance_swap(&mut self) -> bool {
        let Some(swapping) = self.swapping.as_mut() else { return false };
        let held = kafka::in_flight(&self.producer);
        if held <= 0 {
            self.finish_swap();
            return true;
        }
        let waited = swapping.since.elapsed();
        if !swapping.took_back && waited >= DRAIN {
            swapping.took_back = true;
            tracing::warn!(
                held,
                waited_ms = waited.as_millis() as u64,
                "the Kafka producer in use did not deliver what it holds: taking it back, for the new producer"
            );
            if self.spool.is_some() {
                self.start_spooling(waited);
            } else {
                kafka::purge(&self.producer);
            }
        } else if swapping.took_back && waited >= DRAIN + GIVE_UP {
            let Some(abandoned) = self.swapping.take() else { return false };
            self.metrics.kafka_swaps_refused.fetch_add(1, Relaxed);
            tracing::error!(
                held,
                "new Kafka settings not applied: the producer in use still holds records it cannot give back; it stays in use (send SIGHUP to try again)"
            );
            retire(abandoned.next.producer);
        }
        false
    }

    fn finish_swap(&mut self) {
        let Some(Swapping { next, since, .. }) = self.swapping.take() else { return };
        kafka::set_live(&next.producer, true);
        let old = std::mem::replace(&mut self.producer, next.producer);
        self.events = next.events;
        self.in_use.set(self.producer.clone());
        // Readiness follows the new producer's statistics from its first report; until then, what the
        // check found.
        self.kafka_reported = false;
        self.last_progress = Instant::now();
        retire(old);
        self.metrics.kafka_swaps.fetch_add(1, Relaxed);
        tracing::info!(
            drained_ms = since.elapsed().as_millis() as u64,
            switch_ms = next.asked_at.elapsed().as_millis() as u64,
            "Kafka producer switched: records go to the new settings' cluster"
        );
    }
}
