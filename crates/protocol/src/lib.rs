//! The Pusher protocol 7 and HTTP API as plain data and pure functions.
//!
//! Everything the gateway and ingest must agree on lives here: channel name
//! rules, client and server messages, signatures, error and close codes (and
//! the disconnects that carry them), HTTP API bodies and the WebSocket frame
//! encoding of server messages. Nothing in this crate performs I/O, so all of
//! it is unit- and property-testable, and every other crate depends on it
//! rather than on each other.

pub mod api;
pub mod auth;
pub mod channel;
pub mod codes;
pub mod disconnect;
pub mod frame;
pub mod message;
pub mod rate;
pub mod token;
pub mod webhook;

pub use channel::{ChannelKind, ChannelName, ChannelNameError};
pub use disconnect::{Cause, Disconnect};

/// Wall-clock milliseconds since the Unix epoch (0 for a clock set before
/// it): the time of bus envelopes, webhook bodies and cache entries, which
/// other nodes compare with their own clocks.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
