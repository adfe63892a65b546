//! Wakes the pipeline when librdkafka has events for it (delivery reports, errors). librdkafka writes a
//! byte into a pipe when its event queue goes from empty to not empty, the runtime watches the other end,
//! and the events are then served on the pipeline's own thread: no thread of ours between Kafka's answer
//! and the ack, and one wake-up for a whole batch of reports.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::producer::Producer as _;
use tokio::net::unix::pipe;

use super::GatewayProducer;

/// Events served in one go before the caller gets to its other work (each is a batch of reports).
const EVENTS_PER_SERVE: usize = 64;

pub struct Events {
    producer: Arc<GatewayProducer>,
    /// librdkafka's main queue, where the delivery reports arrive (our own reference to it).
    queue: *mut rd::rd_kafka_queue_t,
    rx: pipe::Receiver,
    /// Kept open while librdkafka may write to it (see `Drop`).
    _tx: pipe::Sender,
}

// SAFETY: the queue handle is a reference-counted librdkafka object whose functions are thread-safe; the
// pointer is only used through them and released once, in `drop`.
unsafe impl Send for Events {}

impl Events {
    /// Must be created inside the runtime (the pipe is registered with it).
    pub fn new(producer: Arc<GatewayProducer>) -> io::Result<Self> {
        let (tx, rx) = pipe::pipe()?;
        // SAFETY: the client pointer is the live producer's; the queue reference is released in `drop`.
        let queue = unsafe { rd::rd_kafka_queue_get_main(producer.client().native_ptr()) };
        if queue.is_null() {
            return Err(io::Error::other("librdkafka has no main queue"));
        }
        const BYTE: &[u8] = b"!";
        // SAFETY: `queue` is valid, the fd stays open until `drop` disables the event first, and the
        // payload is a static byte.
        unsafe {
            rd::rd_kafka_queue_io_event_enable(
                queue,
                std::os::fd::AsRawFd::as_raw_fd(&tx),
                BYTE.as_ptr().cast(),
                BYTE.len(),
            )
        };
        Ok(Self { producer, queue, rx, _tx: tx })
    }

    /// Waits until librdkafka says there are events.
    pub async fn ready(&self) {
        if self.rx.readable().await.is_err() {
            // Not expected from a pipe we own; do not spin on it.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Serves queued events: delivery reports go to the context's [`super::reports::Reports`]. Returns
    /// true if events are left (served in the next round, since librdkafka writes no new byte for them).
    pub fn serve(&self) -> bool {
        let mut sink = [0u8; 64];
        while matches!(self.rx.try_read(&mut sink), Ok(n) if n > 0) {}
        for _ in 0..EVENTS_PER_SERVE {
            // SAFETY: `queue` is valid until `drop`.
            if unsafe { rd::rd_kafka_queue_length(self.queue) } == 0 {
                return false;
            }
            self.producer.poll(Duration::ZERO);
        }
        // SAFETY: as above.
        unsafe { rd::rd_kafka_queue_length(self.queue) > 0 }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        // SAFETY: `queue` is valid; disabling first means librdkafka never writes to the fd once it closes.
        unsafe {
            rd::rd_kafka_queue_io_event_enable(self.queue, -1, std::ptr::null(), 0);
            rd::rd_kafka_queue_destroy(self.queue);
        }
    }
}
