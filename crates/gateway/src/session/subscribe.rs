//! `pusher:subscribe` and `pusher:unsubscribe`.
//!
//! Subscribing touches the socket's own bookkeeping, the cluster-wide
//! channel state, this node's routing (and with it the bus interest) and
//! webhooks, in an order clients can observe: the others hear
//! `member_added` and the new count before the joiner's acknowledgement,
//! the joiner gets its count and cached event after it. [`subscribe`] reads
//! as that sequence of named steps.

use super::context::Context;
use super::presence::{self, Member};
use super::refused::Refused;
use super::subscribe_rate::SubscribeRate;
use super::{Subscription, Subscriptions, User};
use herald_protocol::channel::ChannelKind;
use herald_protocol::message::{self, Subscribe};
use herald_protocol::webhook::{WebhookEvent, WebhookKind};
use herald_protocol::{auth, ChannelName};

/// Counts, logs and answers a refused subscription.
fn report(refused: &Refused, cx: &Context<'_>, channel: &str) {
    if refused.status == 401 {
        cx.count_auth_failure("channel");
    } else {
        cx.count_limit(refused.limit);
    }
    let error = refused.error.as_str();
    tracing::debug!(socket_id = %cx.peer.socket_id(), channel, error, "subscription refused");
    // Pusher itself answers a bad signature with a channel-less `pusher:error`;
    // `pusher:subscription_error` on the channel reaches Echo's `.error()`.
    cx.send_text(&message::subscription_error(
        channel,
        refused.kind,
        error,
        refused.status,
    ));
}

/// Handles `pusher:subscribe`; returns whether it authorized the connection
/// (a private or presence channel was joined). Over the connection's
/// subscribe rate it is refused before anything else is looked at.
pub(super) async fn subscribe(
    cx: &Context<'_>,
    subscriptions: &mut Subscriptions,
    rate: &mut SubscribeRate,
    user: Option<&User>,
    sub: Subscribe,
) -> bool {
    let channel = sub.channel.as_str();
    let outcome = match rate.take(std::time::Instant::now()) {
        Ok(()) => try_subscribe(cx, subscriptions, user, &sub).await,
        Err(refused) => Err(refused),
    };
    match outcome {
        Ok(authorized) => authorized,
        Err(refused) => {
            report(&refused, cx, channel);
            false
        }
    }
}

async fn try_subscribe(
    cx: &Context<'_>,
    subscriptions: &mut Subscriptions,
    user: Option<&User>,
    sub: &Subscribe,
) -> Result<bool, Refused> {
    let channel = sub.channel.as_str();
    let name = ChannelName::parse(channel)
        .map_err(|e| Refused::new("InvalidChannel", e.to_string(), 400))?;
    if name.kind() == ChannelKind::ServerToUser {
        return acknowledge_own_user_channel(cx, user, &name).map(|()| false);
    }
    if let Some(existing) = subscriptions.get(channel) {
        match &existing.member {
            Some(member) => presence::send_snapshot(cx, channel, member),
            None => cx.send_text(&message::subscription_succeeded(channel, None)),
        }
        return Ok(false);
    }
    let max = cx.app.max_subscriptions_per_connection;
    if subscriptions.len() >= max {
        let why = format!("a connection may hold {max} subscriptions");
        return Err(Refused::new("LimitReached", why, 403));
    }
    if name.requires_auth() {
        authorize(cx, sub)?;
    }
    let member = if name.is_presence() {
        Some(presence::join(cx, channel, sub.channel_data.as_deref(), user).await?)
    } else {
        None
    };
    declare_interest(cx, channel).await;
    acknowledge(cx, &name, member.as_ref());
    report_cache(cx, &name);
    report_history(cx, &name).await;
    let authorized = name.requires_auth();
    subscriptions.insert(channel.to_owned(), Subscription { name, member });
    Ok(authorized)
}

/// pusher-js subscribes to its own user channel after sign-in; the socket
/// already receives it, so this only acknowledges.
fn acknowledge_own_user_channel(
    cx: &Context<'_>,
    user: Option<&User>,
    name: &ChannelName,
) -> Result<(), Refused> {
    if !user.is_some_and(|u| ChannelName::server_to_user(&u.id) == *name) {
        let why = "only the signed-in user can subscribe to its own #server-to-user channel";
        return Err(Refused::new("AuthError", why, 403));
    }
    cx.send_text(&message::subscription_succeeded(name.as_str(), None));
    Ok(())
}

/// Checks the `auth` signature of a private or presence subscription.
fn authorize(cx: &Context<'_>, sub: &Subscribe) -> Result<(), Refused> {
    let channel = sub.channel.as_str();
    let signed =
        auth::channel_string_to_sign(cx.peer.socket_id(), channel, sub.channel_data.as_deref());
    let valid = sub.auth.as_deref().is_some_and(|token| {
        cx.app
            .secrets()
            .any(|secret| auth::verify_token(&cx.app.key, secret, &signed, token))
    });
    if !valid {
        return Err(Refused::new("AuthError", "Invalid signature", 401));
    }
    Ok(())
}

/// Counts the subscription cluster-wide, then joins this node's fan-out
/// (declaring the bus interest): the new count reaches the others now, and
/// this socket gets it after its acknowledgement.
async fn declare_interest(cx: &Context<'_>, channel: &str) {
    cx.state.subscribe(&cx.app.id, channel);
    cx.join_local(channel).await;
    cx.metrics
        .subscriptions
        .with_label_values(&[&cx.app.id])
        .inc();
}

/// `pusher_internal:subscription_succeeded` (with the member list on a
/// presence channel), then the count the others heard before this socket joined.
fn acknowledge(cx: &Context<'_>, name: &ChannelName, member: Option<&Member>) {
    let channel = name.as_str();
    match member {
        // The snapshot is taken and queued with no transition in between
        // (this socket is already in the fan-out and hears the rest).
        Some(member) => presence::send_snapshot(cx, channel, member),
        None => cx.send_text(&message::subscription_succeeded(channel, None)),
    }
    if cx.app.subscription_count && !name.is_presence() {
        let count = cx.state.subscription_count(&cx.app.id, channel);
        let data = message::subscription_count_data(count);
        cx.send_text(&message::channel_event(
            "pusher_internal:subscription_count",
            channel,
            &data,
            None,
        ));
    }
}

/// On a cache channel: the cached event, or `pusher:cache_miss` and the
/// `cache_miss` webhook.
fn report_cache(cx: &Context<'_>, name: &ChannelName) {
    if !name.is_cache() {
        return;
    }
    let channel = name.as_str();
    match cx.state.cache(&cx.app.id, channel) {
        Some(cached) => cx.send_text(&message::channel_event(
            &cached.event,
            channel,
            &cached.data,
            None,
        )),
        None => {
            cx.send_text(&message::cache_miss(channel));
            if cx.webhooks.wants(&cx.app.id, WebhookKind::CacheMiss) {
                let event = WebhookEvent::new(WebhookKind::CacheMiss, channel, None);
                cx.webhooks.emit(&cx.app.id, event);
            }
        }
    }
}

/// How long a subscribe waits for a history channel's retained events.
const HISTORY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// On a history channel: its retained events, oldest first, each with its
/// id, as ordinary events right after the acknowledgement.
async fn report_history(cx: &Context<'_>, name: &ChannelName) {
    let channel = name.as_str();
    if !cx.bus.keeps_history(&cx.app.id, channel) {
        return;
    }
    let retained =
        tokio::time::timeout(HISTORY_WAIT, cx.bus.retained(&cx.app.id, channel, None)).await;
    match retained {
        Ok(Ok(events)) => {
            for e in events {
                cx.send_text(&message::event_message_with_id(
                    &e.event,
                    Some(channel),
                    &e.data,
                    e.user_id.as_deref(),
                    Some(e.id),
                ));
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(%channel, error = %e, "history channel: retained events unavailable")
        }
        Err(_) => tracing::warn!(%channel, "history channel: retained events not read within 2 s"),
    }
}

/// Handles `pusher:unsubscribe` (and every subscription when the session ends).
pub(super) async fn unsubscribe(
    cx: &Context<'_>,
    subscriptions: &mut Subscriptions,
    channel: &str,
) {
    let Some(sub) = subscriptions.remove(channel) else {
        return;
    };
    cx.leave_local(channel);
    cx.metrics
        .subscriptions
        .with_label_values(&[&cx.app.id])
        .dec();
    if let Some(member) = sub.member {
        presence::leave(cx, channel, &member.user_id).await;
    }
    cx.state.unsubscribe(&cx.app.id, channel);
}
