//! The disk spool: records that cannot reach Kafka now, kept on disk in order until they can.
//!
//! This edge owns one directory (`spool.dir`) and everything in it: the segment log ([`log`]) with its
//! framing, checksums, recovery after a crash and the durable mark of what Kafka has acknowledged; the
//! encoding of a record in it ([`record`]); and the thread that does its disk I/O ([`worker`]). It knows
//! nothing of brokers or of the message path: it stores records and returns them in the order they
//! came. It imports only the core.

pub mod log;
pub mod record;
pub mod worker;
