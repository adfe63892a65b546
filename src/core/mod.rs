//! The pure core: the message as it arrives, the routes and what they decide per message (which routes
//! match, which device, which key, which topic, whether the payload keeps its contract and its rate), the
//! record a message becomes and why one is dead-lettered. No I/O, no clock read (times are passed in),
//! and no import of any other module of the crate: the edges and the pipeline import this, never the
//! other way round.

pub mod backoff;
pub mod downlink;
pub mod encoding;
pub mod envelope;
pub mod message;
pub mod routing;
pub mod stamp;
pub mod yaml_index;
