//! Client events (`client-*`): what a socket may send to its channel's other
//! subscribers.
//!
//! An event is checked against the app's rules and the socket's rate limit,
//! reported as a webhook if the app wants it, and returned as the envelope
//! to publish; the session publishes it, so this module needs no bus.

use super::context::Context;
use super::Subscriptions;
use herald_bus::Envelope;
use herald_protocol::channel::MAX_EVENT_NAME_LEN;
use herald_protocol::codes;
use herald_protocol::rate::TokenBucket;
use herald_protocol::webhook::{WebhookEvent, WebhookKind};

/// A client event as sent.
pub(super) struct ClientEvent {
    pub event: String,
    pub channel: String,
    pub data: String,
}

/// The envelope to publish for `sent`, or `None` after answering why not
/// with `pusher:error`. Client events are never cached: Pusher caches only
/// server events.
pub(super) fn accept(
    cx: &Context<'_>,
    subscriptions: &Subscriptions,
    rate: &mut TokenBucket,
    sent: ClientEvent,
) -> Option<Envelope> {
    if let Some(why) = refusal(cx, subscriptions, &sent) {
        cx.count_limit("client_event");
        cx.send_error(None, &why);
        return None;
    }
    if !rate.try_take(std::time::Instant::now()) {
        cx.count_limit("client_event_rate");
        cx.send_error(
            Some(codes::CLIENT_EVENT_REJECTED),
            "Client event rejected due to rate limit",
        );
        return None;
    }
    let ClientEvent {
        event,
        channel,
        data,
    } = sent;
    let presence_user = subscriptions[&channel]
        .member
        .as_ref()
        .map(|m| m.user_id.as_str());
    if cx.webhooks.wants(&cx.app.id, WebhookKind::ClientEvent) {
        let webhook = WebhookEvent {
            event: Some(event.clone()),
            data: Some(data.clone()),
            socket_id: Some(cx.peer.socket_id().to_string()),
            ..WebhookEvent::new(WebhookKind::ClientEvent, &channel, presence_user)
        };
        cx.webhooks.emit(&cx.app.id, webhook);
    }
    let envelope = Envelope::new(&cx.app.id, &channel, &event, data)
        .except(Some(cx.peer.socket_id().to_string()))
        .from_user(presence_user.map(str::to_owned));
    Some(envelope)
}

/// Why the app's rules refuse `sent`, if they do.
fn refusal(cx: &Context<'_>, subscriptions: &Subscriptions, sent: &ClientEvent) -> Option<String> {
    let max_data = cx.app.max_event_payload_bytes;
    if !cx.app.client_events {
        Some("client events are not enabled for this app".to_owned())
    } else if sent.event.chars().count() > MAX_EVENT_NAME_LEN {
        Some(format!(
            "event name is longer than {MAX_EVENT_NAME_LEN} characters"
        ))
    } else if sent.data.len() > max_data {
        Some(format!(
            "data is {} bytes, the limit is {max_data}",
            sent.data.len()
        ))
    } else {
        match subscriptions.get(&sent.channel) {
            None => Some(format!("not subscribed to {}", sent.channel)),
            Some(sub) if !sub.name.allows_client_events() => {
                Some("client events are only allowed on private and presence channels".to_owned())
            }
            Some(_) => None,
        }
    }
}
