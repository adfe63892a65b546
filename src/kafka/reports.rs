//! Delivery reports, collected in batches: while [`super::events::Events`] serves librdkafka's events,
//! the producer context pushes each record's fate onto one list, which the pipeline then takes whole. No
//! future, channel or wake-up per record.

use std::sync::Mutex;

use rdkafka::error::KafkaError;
use rdkafka::message::{Message as _, OwnedMessage};
use rdkafka::producer::DeliveryResult;

/// What became of one record.
#[derive(Debug)]
pub struct DeliveryReport {
    /// The tag the record was sent with: the pipeline chooses it (its index of the record in flight).
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

/// The reports not yet taken. A lock, though only the pipeline's thread pushes and takes: the context
/// must be `Sync`, and an uncontended lock costs next to nothing per batch.
#[derive(Default)]
pub struct Reports {
    list: Mutex<Vec<DeliveryReport>>,
}

impl Reports {
    /// Called by librdkafka (through the producer context) for every record, from inside `poll`.
    pub fn push(&self, result: &DeliveryResult<'_>, tag: usize) {
        let result = match result {
            Ok(message) => Ok((message.partition(), message.offset())),
            Err((error, message)) => Err(Failure { error: error.clone(), record: message.detach() }),
        };
        self.list.lock().unwrap_or_else(|e| e.into_inner()).push(DeliveryReport { tag, result });
    }

    /// Takes every report so far into `into` (emptied first), keeping the allocation.
    pub fn take(&self, into: &mut Vec<DeliveryReport>) {
        into.clear();
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *list, into);
    }
}
