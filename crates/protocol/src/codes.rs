//! Pusher error and close codes, with the client behaviour each range triggers.
//!
//! 4000–4099: the client must not reconnect. 4100–4199: reconnect after a
//! back-off. 4200–4299: reconnect at once. 4300–4399: other errors; pusher-js
//! does not reconnect after a close in this range, so Herald only ever sends
//! them as `pusher:error` messages on an open socket.

pub const APP_NOT_FOUND: u16 = 4001;
pub const APP_DISABLED: u16 = 4003;
pub const OVER_CONNECTION_QUOTA: u16 = 4004;
pub const INVALID_VERSION_FORMAT: u16 = 4006;
pub const UNSUPPORTED_PROTOCOL: u16 = 4007;
pub const NO_PROTOCOL_VERSION: u16 = 4008;
pub const UNAUTHORIZED: u16 = 4009;
/// Over capacity; Herald uses it for slow consumers.
pub const OVER_CAPACITY: u16 = 4100;
/// Generic "reconnect now": server shutdown, drain.
pub const RECONNECT: u16 = 4200;
pub const PONG_NOT_RECEIVED: u16 = 4201;
pub const CLIENT_EVENT_REJECTED: u16 = 4301;
/// A watchlist longer than 100 users; the first 100 are kept.
pub const WATCHLIST_TOO_LONG: u16 = 4302;

/// WebSocket close codes (RFC 6455) Herald sends.
pub const WS_NORMAL: u16 = 1000;
pub const WS_PROTOCOL_ERROR: u16 = 1002;
pub const WS_INVALID_PAYLOAD: u16 = 1007;
pub const WS_POLICY_VIOLATION: u16 = 1008;
pub const WS_MESSAGE_TOO_BIG: u16 = 1009;
