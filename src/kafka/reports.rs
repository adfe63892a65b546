//! Delivery reports, collected in batches. librdkafka reports each record's fate on its own thread (the
//! poller, see [`super::spawn_poller`]); the context pushes them onto one shared list and wakes the
//! pipeline only when the list goes from empty to not empty, so a burst of reports costs one wake-up,
//! not a future, a channel and a cross-thread wake per record.

use std::sync::Mutex;

use rdkafka::error::KafkaError;
use rdkafka::message::{Message as _, OwnedMessage};
use rdkafka::producer::DeliveryResult;
use tokio::sync::Notify;

/// What became of one record.
#[derive(Debug)]
pub struct Report {
    /// The tag the record was sent with (see `crate::inflight::Tag`).
    pub tag: usize,
    /// Partition and offset, or why not.
    pub result: Result<(i32, i64), Failure>,
}

/// A record Kafka did not take, with everything needed to produce it again.
#[derive(Debug)]
pub struct Failure {
    pub error: KafkaError,
    pub record: OwnedMessage,
}

/// The list of reports not yet taken, and the wake-up for whoever takes them.
#[derive(Default)]
pub struct Reports {
    list: Mutex<Vec<Report>>,
    ready: Notify,
}

impl Reports {
    /// Called by librdkafka (through the producer context) for every record.
    pub fn push(&self, result: &DeliveryResult<'_>, tag: usize) {
        let result = match result {
            Ok(message) => Ok((message.partition(), message.offset())),
            Err((error, message)) => Err(Failure { error: error.clone(), record: message.detach() }),
        };
        let was_empty = {
            let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
            list.push(Report { tag, result });
            list.len() == 1
        };
        if was_empty {
            // A stored permit if nobody waits yet: the next `ready()` returns at once.
            self.ready.notify_one();
        }
    }

    /// Waits until there are reports to take.
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Takes every report so far into `into` (emptied first), keeping the allocation.
    pub fn take(&self, into: &mut Vec<Report>) {
        into.clear();
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *list, into);
    }
}
