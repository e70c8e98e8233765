//! Why the server ends a connection or refuses a handshake.
//!
//! A disconnect is three things that must travel together: the close code
//! the client acts on (see [`crate::codes`]), the reason text sent with it,
//! and the metric label it is counted under. Keeping them in one value, with
//! the cause as an enum rather than a label string, lets connection code ask
//! "who ended this?" without comparing strings, while the label values
//! (which are metric label values and must not change) live in one place.

use crate::codes;
use std::borrow::Cow;

/// What ended (or refused) a connection; its [`Cause::label`] is the value
/// of the `reason` label of `herald_connections_closed_total` and
/// `herald_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The client sent a Close frame (or its task ended without a server close).
    ClientClosed,
    /// The TCP connection closed or failed under the reader.
    ClientGone,
    WriteError,
    SlowConsumer,
    PongTimeout,
    /// Neither signed in nor authorized within `user_authentication_timeout`.
    AuthTimeout,
    ProtocolError,
    MessageTooBig,
    TooManyFragments,
    InvalidPayload,
    /// The node is draining.
    Shutdown,
    /// `terminate_connections` for the signed-in user.
    Terminated,
    // Handshake refusals.
    /// The process is at its `max_connections`.
    ConnectionLimit,
    PerIpLimit,
    OverQuota,
    AppNotFound,
    AppDisabled,
    OriginNotAllowed,
    NoProtocol,
    InvalidProtocol,
    UnsupportedProtocol,
}

impl Cause {
    pub fn label(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::ClientGone => "client_gone",
            Self::WriteError => "write_error",
            Self::SlowConsumer => "slow_consumer",
            Self::PongTimeout => "pong_timeout",
            Self::AuthTimeout => "auth_timeout",
            Self::ProtocolError => "protocol_error",
            Self::MessageTooBig => "message_too_big",
            Self::TooManyFragments => "too_many_fragments",
            Self::InvalidPayload => "invalid_payload",
            Self::Shutdown => "shutdown",
            Self::Terminated => "terminated",
            Self::ConnectionLimit => "connection_limit",
            Self::PerIpLimit => "per_ip_limit",
            Self::OverQuota => "over_quota",
            Self::AppNotFound => "app_not_found",
            Self::AppDisabled => "app_disabled",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::NoProtocol => "no_protocol",
            Self::InvalidProtocol => "invalid_protocol",
            Self::UnsupportedProtocol => "unsupported_protocol",
        }
    }
}

/// A close (or refusal) with its code, reason text and cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub code: u16,
    /// Sent in the close frame (and in the `pusher:error` of a refusal).
    pub reason: Cow<'static, str>,
    pub cause: Cause,
}

impl Disconnect {
    pub fn new(cause: Cause, code: u16, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            reason: reason.into(),
            cause,
        }
    }

    /// The client closed with `code` (the server echoes it, without a reason).
    pub fn client_closed(code: u16) -> Self {
        Self::new(Cause::ClientClosed, code, "")
    }

    /// A frame or message breaking RFC 6455 (1002).
    pub fn protocol_error(reason: &'static str) -> Self {
        Self::new(Cause::ProtocolError, codes::WS_PROTOCOL_ERROR, reason)
    }

    /// A frame or message over `max_message_bytes` (1009).
    pub fn message_too_big() -> Self {
        Self::new(
            Cause::MessageTooBig,
            codes::WS_MESSAGE_TOO_BIG,
            "message too big",
        )
    }

    /// The metric label of its cause.
    pub fn label(&self) -> &'static str {
        self.cause.label()
    }

    /// Whether the client ended the connection (rather than the server).
    pub fn by_client(&self) -> bool {
        matches!(self.cause, Cause::ClientClosed | Cause::ClientGone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_keep_the_wire_codes_and_labels() {
        let closed = Disconnect::client_closed(1001);
        assert_eq!((closed.code, &*closed.reason), (1001, ""));
        assert_eq!(closed.label(), "client_closed");
        assert!(closed.by_client());
        let big = Disconnect::message_too_big();
        assert_eq!((big.code, big.label()), (1009, "message_too_big"));
        assert!(!big.by_client());
        let bad = Disconnect::protocol_error("protocol error");
        assert_eq!((bad.code, bad.label()), (1002, "protocol_error"));
    }
}
