//! Pusher webhooks as data: the event kinds, the JSON of each event and of a
//! request body, and the signature header.
//!
//! Field names and shapes are exactly Pusher's, so the official server SDKs'
//! webhook helpers (`pusher.webhook(req).isValid()`) accept what Herald sends.

use serde::{Deserialize, Serialize};

/// The webhook event kinds an app can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookKind {
    ChannelOccupied,
    ChannelVacated,
    MemberAdded,
    MemberRemoved,
    ClientEvent,
    CacheMiss,
    SubscriptionCount,
    /// Herald extensions, sent only to receivers that list them: a user's
    /// first signed-in connection anywhere, and its last one closing.
    UserOnline,
    UserOffline,
}

impl WebhookKind {
    pub const ALL: [WebhookKind; 9] = [
        Self::ChannelOccupied,
        Self::ChannelVacated,
        Self::MemberAdded,
        Self::MemberRemoved,
        Self::ClientEvent,
        Self::CacheMiss,
        Self::SubscriptionCount,
        Self::UserOnline,
        Self::UserOffline,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::ChannelOccupied => "channel_occupied",
            Self::ChannelVacated => "channel_vacated",
            Self::MemberAdded => "member_added",
            Self::MemberRemoved => "member_removed",
            Self::ClientEvent => "client_event",
            Self::CacheMiss => "cache_miss",
            Self::SubscriptionCount => "subscription_count",
            Self::UserOnline => "user_online",
            Self::UserOffline => "user_offline",
        }
    }

    /// Whether Pusher has this kind; the others go only to receivers that
    /// name them in `events`.
    pub fn is_pusher(self) -> bool {
        !matches!(self, Self::UserOnline | Self::UserOffline)
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One event of a webhook request, as Pusher serialises it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEvent {
    pub name: WebhookKind,
    /// Empty (and left out) for `user_online` / `user_offline`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub channel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// `client_event`: the event name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// `client_event`: the data string as the client sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_count: Option<usize>,
}

impl WebhookEvent {
    /// An event that names only its channel (and a user, for member events).
    pub fn new(name: WebhookKind, channel: &str, user_id: Option<&str>) -> Self {
        Self {
            name,
            channel: channel.to_owned(),
            user_id: user_id.map(str::to_owned),
            event: None,
            data: None,
            socket_id: None,
            subscription_count: None,
        }
    }
}

/// The body of one webhook request.
#[derive(Debug, Serialize)]
pub struct WebhookBody<'a> {
    pub time_ms: u64,
    pub events: &'a [WebhookEvent],
}

/// The request body and its `X-Pusher-Signature` (hex HMAC-SHA256 of the
/// body under the app secret).
pub fn signed_body(secret: &str, time_ms: u64, events: &[WebhookEvent]) -> (String, String) {
    let body =
        serde_json::to_string(&WebhookBody { time_ms, events }).expect("webhook bodies serialize");
    let signature = crate::auth::sign(secret, &body);
    (body, signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_as_pusher_does() {
        let member = WebhookEvent::new(WebhookKind::MemberAdded, "presence-x", Some("7"));
        assert_eq!(
            serde_json::to_string(&member).unwrap(),
            r#"{"name":"member_added","channel":"presence-x","user_id":"7"}"#
        );
        let count = WebhookEvent {
            subscription_count: Some(3),
            ..WebhookEvent::new(WebhookKind::SubscriptionCount, "orders", None)
        };
        assert_eq!(
            serde_json::to_string(&count).unwrap(),
            r#"{"name":"subscription_count","channel":"orders","subscription_count":3}"#
        );
    }

    #[test]
    fn user_events_have_no_channel() {
        let online = WebhookEvent::new(WebhookKind::UserOnline, "", Some("7"));
        assert_eq!(
            serde_json::to_string(&online).unwrap(),
            r#"{"name":"user_online","user_id":"7"}"#
        );
    }

    #[test]
    fn body_signature_is_hmac_of_the_exact_body() {
        let events = [WebhookEvent::new(WebhookKind::ChannelOccupied, "c", None)];
        let (body, signature) = signed_body("secret", 1, &events);
        assert_eq!(
            body,
            r#"{"time_ms":1,"events":[{"name":"channel_occupied","channel":"c"}]}"#
        );
        assert!(crate::auth::verify("secret", &body, &signature));
    }

    #[test]
    fn kinds_round_trip_their_names() {
        for kind in WebhookKind::ALL {
            assert_eq!(WebhookKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(WebhookKind::from_name("nope"), None);
    }
}
