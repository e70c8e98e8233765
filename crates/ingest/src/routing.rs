//! Routing: which endpoint a path names, and the method it expects.
//!
//! The route is known before anything else about a request is looked at, so
//! its label names the endpoint in logs and metrics even for refused requests.

use crate::error::HttpError;
use hyper::{Method, StatusCode};

pub(crate) enum Route {
    Events,
    BatchEvents,
    Channels,
    Channel(String),
    Users(String),
    /// Herald extension: a history channel's retained events.
    ChannelEvents(String),
    /// Herald extension: whether a user is online anywhere.
    User(String),
    TerminateConnections(String),
}

impl Route {
    /// Splits `/apps/{id}/...` into the app id and the route.
    pub(crate) fn parse(path: &str) -> Option<(String, Route)> {
        let rest = path.strip_prefix("/apps/")?;
        let segments: Vec<&str> = rest.split('/').collect();
        let route = match segments[1..] {
            ["events"] => Route::Events,
            ["batch_events"] => Route::BatchEvents,
            ["channels"] => Route::Channels,
            ["channels", name] => Route::Channel(percent_decode(name)),
            ["channels", name, "users"] => Route::Users(percent_decode(name)),
            ["channels", name, "events"] => Route::ChannelEvents(percent_decode(name)),
            ["users", user] => Route::User(percent_decode(user)),
            ["users", user, "terminate_connections"] => {
                Route::TerminateConnections(percent_decode(user))
            }
            _ => return None,
        };
        Some((percent_decode(segments[0]), route))
    }

    /// The endpoint's name in the `endpoint` label of logs and metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::BatchEvents => "batch_events",
            Self::Channels => "channels",
            Self::Channel(_) => "channel",
            Self::Users(_) => "users",
            Self::ChannelEvents(_) => "channel_events",
            Self::User(_) => "user",
            Self::TerminateConnections(_) => "terminate_connections",
        }
    }

    /// Refuses a request whose method is not the one this endpoint expects (405).
    pub(crate) fn check_method(&self, method: &Method) -> Result<(), HttpError> {
        let expected = self.method();
        if *method != expected {
            return Err(HttpError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} expects {}", self.label(), expected),
            ));
        }
        Ok(())
    }

    fn method(&self) -> Method {
        match self {
            Self::Events | Self::BatchEvents | Self::TerminateConnections(_) => Method::POST,
            _ => Method::GET,
        }
    }
}

/// Decodes a `%`-escaped path or path segment (invalid UTF-8 becomes U+FFFD).
pub(crate) fn percent_decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let ok = |p: &str| Route::parse(p).map(|(app, r)| (app, r.label()));
        assert_eq!(ok("/apps/1/events"), Some(("1".into(), "events")));
        assert_eq!(
            ok("/apps/1/batch_events"),
            Some(("1".into(), "batch_events"))
        );
        assert_eq!(ok("/apps/1/channels"), Some(("1".into(), "channels")));
        assert_eq!(
            ok("/apps/1/channels/presence-a"),
            Some(("1".into(), "channel"))
        );
        assert_eq!(
            ok("/apps/1/channels/presence-a/users"),
            Some(("1".into(), "users"))
        );
        assert_eq!(
            ok("/apps/1/users/u%201/terminate_connections"),
            Some(("1".into(), "terminate_connections"))
        );
        match Route::parse("/apps/1/users/u%201/terminate_connections") {
            Some((_, Route::TerminateConnections(user))) => assert_eq!(user, "u 1"),
            _ => panic!("not routed"),
        }
        assert!(Route::parse("/apps/1/nope").is_none());
        assert!(Route::parse("/apps/1").is_none());
        assert!(Route::parse("/app/1/events").is_none());
    }
}
