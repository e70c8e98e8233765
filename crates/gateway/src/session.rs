//! The Pusher protocol state machine of one connection.
//!
//! A session owns what its socket subscribed to and who it signed in as, so
//! that everything it added to the hub, the channel state and the bus
//! interest is removed again in [`Session::finish`], however the connection
//! ended.

use crate::hub::watchlist_channel;
use crate::peer::Peer;
use crate::reader::{Frame, ReadError};
use crate::Gateway;
use herald_bus::{BusMessage, Envelope};
use herald_config::AppConfig;
use herald_protocol::channel::{ChannelKind, MAX_EVENT_NAME_LEN};
use herald_protocol::frame::{FrameError, OpCode};
use herald_protocol::message::{self, ClientMessage, Subscribe};
use herald_protocol::rate::TokenBucket;
use herald_protocol::webhook::{WebhookEvent, WebhookKind};
use herald_protocol::{auth, codes, frame, ChannelName};
use herald_state::JoinError;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::time::Instant;

/// Most frames one fragmented message may arrive in (close 1008 beyond).
const MAX_FRAGMENTS: usize = 256;
/// Most users one sign-in may watch (Pusher's limit).
const MAX_WATCHLIST: usize = 100;
/// Longest user id accepted in `channel_data` or `user_data` (Pusher's limit).
const MAX_USER_ID_LEN: usize = 128;

struct Subscription {
    name: ChannelName,
    /// The user id this socket joined a presence channel as.
    presence_user: Option<String>,
}

/// A message arriving in fragments; binary ones are only measured, then refused.
struct Fragmented {
    binary: bool,
    data: Vec<u8>,
    len: usize,
    frames: usize,
}

struct User {
    id: String,
    /// Raw JSON of `user_info` from `user_data`, used as presence info when a
    /// signed-in socket joins a presence channel without `channel_data`.
    info: Option<String>,
    watchlist: Vec<String>,
}

pub struct Session {
    gateway: Arc<Gateway>,
    app: Arc<AppConfig>,
    peer: Peer,
    subscriptions: HashMap<String, Subscription>,
    user: Option<User>,
    client_events: TokenBucket,
    /// A fragmented message being reassembled.
    fragments: Option<Fragmented>,
    /// With `user_authentication_timeout`: when the socket must have signed in
    /// or subscribed to a private or presence channel (Pusher's "authorized connections").
    auth_deadline: Option<Instant>,
    authorized: bool,
}

#[derive(Deserialize)]
struct ChannelData<'a> {
    user_id: serde_json::Value,
    #[serde(default, borrow)]
    user_info: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct UserData<'a> {
    id: serde_json::Value,
    #[serde(default, borrow)]
    user_info: Option<&'a RawValue>,
    #[serde(default)]
    watchlist: Vec<serde_json::Value>,
}

/// Makes sure the joiner is in its own member list, even if its write has
/// not reached the replicated view yet (NATS failing over): pusher-js needs
/// itself there to set `members.me`.
fn include_member(presence: &mut serde_json::Value, user: &str, info: &str) {
    if presence["hash"].get(user).is_some() {
        return;
    }
    let info = serde_json::from_str(info).unwrap_or(serde_json::Value::Null);
    presence["hash"][user] = info;
    if let Some(ids) = presence["ids"].as_array_mut() {
        ids.push(user.into());
        let count = ids.len();
        presence["count"] = count.into();
    }
}

/// A user id given as a JSON string or number, non-empty and at most 128 characters.
fn user_id_of(value: &serde_json::Value) -> Option<String> {
    let id = match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => return None,
    };
    (!id.is_empty() && id.chars().count() <= MAX_USER_ID_LEN).then_some(id)
}

impl Session {
    pub fn new(gateway: Arc<Gateway>, app: Arc<AppConfig>, peer: Peer) -> Self {
        let auth_deadline = app
            .user_authentication_timeout()
            .map(|t| Instant::now() + t);
        let client_events =
            TokenBucket::new(app.max_client_events_per_second, std::time::Instant::now());
        Self {
            gateway,
            app,
            peer,
            subscriptions: HashMap::new(),
            user: None,
            client_events,
            fragments: None,
            auth_deadline,
            authorized: false,
        }
    }

    /// While the socket has neither signed in nor subscribed to a private
    /// or presence channel: when it must have (`user_authentication_timeout`).
    pub fn auth_deadline(&self) -> Option<Instant> {
        self.auth_deadline.filter(|_| !self.authorized)
    }

    /// The socket missed its sign-in deadline: closes it with 4009.
    pub fn auth_timed_out(&self) {
        self.gateway
            .metrics
            .auth_failures
            .with_label_values(&[&self.app.id, "auth_timeout"])
            .inc();
        self.close(
            codes::UNAUTHORIZED,
            "Connection not authorized within the user authentication timeout",
            "auth_timeout",
        );
    }

    /// Handles what the reader returned; false ends the session.
    pub async fn on_read(&mut self, read: Result<Frame, ReadError>) -> bool {
        match read {
            // Boxed: an idle connection's task then holds only the wait for
            // the next frame, not the largest handler's state.
            Ok(frame) => Box::pin(self.on_frame(frame.fin, frame.opcode, &frame.payload)).await,
            Err(e) => {
                self.on_read_error(e);
                false
            }
        }
    }

    fn close(&self, code: u16, message: &str, label: &'static str) {
        self.peer.close(code, message, label);
    }

    fn on_read_error(&self, error: ReadError) {
        let error = match error {
            ReadError::Gone => return self.close(codes::WS_NORMAL, "", "client_gone"),
            ReadError::Frame(error) => error,
        };
        let (code, message, label) = match error {
            FrameError::TooLarge(_) => (
                codes::WS_MESSAGE_TOO_BIG,
                "message too big",
                "message_too_big",
            ),
            _ => (codes::WS_PROTOCOL_ERROR, "protocol error", "protocol_error"),
        };
        tracing::debug!(socket_id = %self.peer.socket_id(), %error, "closing on a bad frame");
        self.count_limit(label);
        self.close(code, message, label);
    }

    fn count_limit(&self, limit: &str) {
        self.gateway
            .metrics
            .limit_rejections
            .with_label_values(&[&self.app.id, limit])
            .inc();
    }

    /// Handles one frame; false ends the session.
    async fn on_frame(&mut self, fin: bool, opcode: OpCode, payload: &[u8]) -> bool {
        self.gateway
            .metrics
            .bytes_received
            .with_label_values(&[&self.app.id])
            .inc_by(payload.len() as u64);
        match opcode {
            OpCode::Text | OpCode::Binary if self.fragments.is_some() => {
                self.close(
                    codes::WS_PROTOCOL_ERROR,
                    "new message inside a fragmented one",
                    "protocol_error",
                );
                false
            }
            OpCode::Text if fin => self.on_text(payload).await,
            OpCode::Binary if fin => {
                self.send_error(None, "binary messages are not supported");
                true
            }
            OpCode::Text | OpCode::Binary => {
                let binary = opcode == OpCode::Binary;
                let data = if binary { Vec::new() } else { payload.to_vec() };
                self.fragments = Some(Fragmented {
                    binary,
                    data,
                    len: payload.len(),
                    frames: 1,
                });
                true
            }
            OpCode::Continuation => {
                let Some(mut message) = self.fragments.take() else {
                    self.close(
                        codes::WS_PROTOCOL_ERROR,
                        "continuation without a message",
                        "protocol_error",
                    );
                    return false;
                };
                message.len += payload.len();
                message.frames += 1;
                if message.frames > MAX_FRAGMENTS {
                    self.count_limit("fragments");
                    self.close(
                        codes::WS_POLICY_VIOLATION,
                        "message in too many fragments",
                        "too_many_fragments",
                    );
                    return false;
                }
                if message.len > self.gateway.settings.max_message_bytes {
                    self.count_limit("message_too_big");
                    self.close(
                        codes::WS_MESSAGE_TOO_BIG,
                        "message too big",
                        "message_too_big",
                    );
                    return false;
                }
                if !message.binary {
                    message.data.extend_from_slice(payload);
                }
                match (fin, message.binary) {
                    (false, _) => {
                        self.fragments = Some(message);
                        true
                    }
                    (true, false) => self.on_text(&message.data).await,
                    (true, true) => {
                        self.send_error(None, "binary messages are not supported");
                        true
                    }
                }
            }
            OpCode::Ping => {
                self.peer.send(frame::pong(payload));
                true
            }
            OpCode::Pong => true,
            OpCode::Close => {
                let code = match payload {
                    [a, b, ..] => u16::from_be_bytes([*a, *b]),
                    _ => codes::WS_NORMAL,
                };
                self.close(code, "", "client_closed");
                false
            }
        }
    }

    async fn on_text(&mut self, payload: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(payload) else {
            self.count_limit("invalid_payload");
            self.close(
                codes::WS_INVALID_PAYLOAD,
                "invalid UTF-8",
                "invalid_payload",
            );
            return false;
        };
        let parsed = ClientMessage::parse(text);
        let kind = match &parsed {
            Ok(ClientMessage::ClientEvent { .. }) => "client_event",
            Ok(ClientMessage::Ping | ClientMessage::Pong) => "ping",
            Ok(_) => "protocol",
            Err(_) => "malformed",
        };
        self.gateway
            .metrics
            .messages_received
            .with_label_values(&[&self.app.id, kind])
            .inc();
        match parsed {
            Err(e) => self.send_error(None, &e.to_string()),
            Ok(ClientMessage::Ping) => self.send_text(&message::pong()),
            Ok(ClientMessage::Pong) => {}
            Ok(ClientMessage::Subscribe(sub)) => self.subscribe(sub).await,
            Ok(ClientMessage::Unsubscribe { channel }) => self.unsubscribe(&channel).await,
            Ok(ClientMessage::Signin { auth, user_data }) => self.signin(&auth, &user_data).await,
            Ok(ClientMessage::ClientEvent {
                event,
                channel,
                data,
            }) => self.client_event(event, channel, data).await,
            Ok(ClientMessage::Unknown { event }) => self.send_error(
                None,
                &format!("unknown event `{event}`; events sent by clients must start with client-"),
            ),
        }
        true
    }

    fn send_text(&self, text: &str) {
        self.peer.send(frame::text(text));
    }

    fn send_error(&self, code: Option<u16>, message: &str) {
        self.send_text(&message::error(code, message));
    }

    fn subscription_error(&self, channel: &str, kind: &str, error: &str, status: u16) {
        if status == 401 {
            self.gateway
                .metrics
                .auth_failures
                .with_label_values(&[&self.app.id, "channel"])
                .inc();
        } else {
            self.count_limit("subscription");
        }
        tracing::debug!(socket_id = %self.peer.socket_id(), channel, error, "subscription refused");
        // Pusher itself answers a bad signature with a channel-less `pusher:error`;
        // `pusher:subscription_error` on the channel reaches Echo's `.error()`.
        self.send_text(&message::subscription_error(channel, kind, error, status));
    }

    fn app_hub(&self) -> &crate::hub::AppHub {
        self.gateway
            .hub
            .app(&self.app.id)
            .expect("every configured app has a hub")
    }

    /// Adds this socket to a local routing entry and waits until the bus
    /// delivers that channel here.
    async fn join_local(&self, channel: &str) {
        self.app_hub().join_channel(channel, &self.peer).await;
    }

    fn leave_local(&self, channel: &str) {
        self.app_hub().leave_channel(channel, self.peer.socket_id());
    }

    async fn publish(&self, envelope: Envelope) {
        self.gateway
            .publish(&self.app.id, BusMessage::Event(envelope))
            .await;
    }

    async fn subscribe(&mut self, sub: Subscribe) {
        let channel = sub.channel.as_str();
        let name = match ChannelName::parse(channel) {
            Ok(name) => name,
            Err(e) => {
                return self.subscription_error(channel, "InvalidChannel", &e.to_string(), 400)
            }
        };
        if name.kind() == ChannelKind::ServerToUser {
            // pusher-js subscribes to its own user channel after sign-in; the
            // socket already receives it, so this only acknowledges.
            let own = self
                .user
                .as_ref()
                .is_some_and(|u| ChannelName::server_to_user(&u.id) == name);
            return if own {
                self.send_text(&message::subscription_succeeded(channel, None))
            } else {
                self.subscription_error(
                    channel,
                    "AuthError",
                    "only the signed-in user can subscribe to its own #server-to-user channel",
                    403,
                )
            };
        }
        if let Some(existing) = self.subscriptions.get(channel) {
            let presence = existing
                .name
                .is_presence()
                .then(|| self.gateway.state.presence_data(&self.app.id, channel));
            return self.send_text(&message::subscription_succeeded(channel, presence));
        }
        if self.subscriptions.len() >= self.app.max_subscriptions_per_connection {
            let why = format!(
                "a connection may hold {} subscriptions",
                self.app.max_subscriptions_per_connection
            );
            return self.subscription_error(channel, "LimitReached", &why, 403);
        }
        let socket_id = self.peer.socket_id().clone();
        if name.requires_auth() {
            let signed =
                auth::channel_string_to_sign(&socket_id, channel, sub.channel_data.as_deref());
            let valid = sub.auth.as_deref().is_some_and(|token| {
                self.app
                    .secrets()
                    .any(|secret| auth::verify_token(&self.app.key, secret, &signed, token))
            });
            if !valid {
                return self.subscription_error(channel, "AuthError", "Invalid signature", 401);
            }
        }
        let mut presence_user = None;
        if name.is_presence() {
            let (user_id, info) = match (sub.channel_data.as_deref(), &self.user) {
                (Some(data), _) => {
                    match serde_json::from_str::<ChannelData>(data) {
                        Ok(parsed) => match user_id_of(&parsed.user_id) {
                            Some(id) => (
                                id,
                                parsed.user_info.map_or("null", RawValue::get).to_owned(),
                            ),
                            None => {
                                let why = format!("channel_data needs a user_id of 1 to {MAX_USER_ID_LEN} characters");
                                return self.subscription_error(channel, "AuthError", &why, 400);
                            }
                        },
                        Err(e) => {
                            return self.subscription_error(
                                channel,
                                "AuthError",
                                &format!("invalid channel_data: {e}"),
                                400,
                            )
                        }
                    }
                }
                // pusher-js 8 omits channel_data for a signed-in user: the member is that user.
                (None, Some(user)) => (
                    user.id.clone(),
                    user.info.clone().unwrap_or_else(|| "null".into()),
                ),
                (None, None) => {
                    let why = "presence channels need channel_data or a signed-in user";
                    return self.subscription_error(channel, "AuthError", why, 401);
                }
            };
            let info = info.as_str();
            if info.len() > self.app.max_presence_user_info_bytes {
                let why = format!(
                    "user_info is {} bytes, the limit is {}",
                    info.len(),
                    self.app.max_presence_user_info_bytes
                );
                return self.subscription_error(channel, "LimitReached", &why, 403);
            }
            // member_added reaches the other subscribers during the join; this
            // socket joins the local fan-out only afterwards, so it never hears
            // about itself.
            let joined = self.gateway.state.join(
                &self.app.id,
                channel,
                &user_id,
                info,
                self.app.max_presence_members,
            );
            if let Err(JoinError::Full { max }) = joined.await {
                let why = format!("presence channel is full ({max} members)");
                return self.subscription_error(channel, "LimitReached", &why, 403);
            }
            presence_user = Some((user_id, info.to_owned()));
        }
        self.authorized |= name.requires_auth();
        // Count first, then join the fan-out: the new count reaches the
        // others now, and this socket gets it below, after its ack.
        self.gateway.state.subscribe(&self.app.id, channel).await;
        self.join_local(channel).await;
        self.gateway
            .metrics
            .subscriptions
            .with_label_values(&[&self.app.id])
            .inc();
        let presence = presence_user.as_ref().map(|(user, info)| {
            let mut presence = self.gateway.state.presence_data(&self.app.id, channel);
            include_member(&mut presence, user, info);
            presence
        });
        let presence_user = presence_user.map(|(user, _)| user);
        self.send_text(&message::subscription_succeeded(channel, presence));
        if self.app.subscription_count && !name.is_presence() {
            // The others heard the new count during subscribe(); this socket joined after.
            let count = self
                .gateway
                .state
                .channel(&self.app.id, channel)
                .subscription_count;
            let data = message::subscription_count_data(count);
            self.send_text(&message::channel_event(
                "pusher_internal:subscription_count",
                channel,
                &data,
                None,
            ));
        }
        if name.is_cache() {
            match self.gateway.state.cache(&self.app.id, channel) {
                Some(cached) => self.send_text(&message::channel_event(
                    &cached.event,
                    channel,
                    &cached.data,
                    None,
                )),
                None => {
                    self.send_text(&message::cache_miss(channel));
                    if self
                        .gateway
                        .webhooks
                        .wants(&self.app.id, WebhookKind::CacheMiss)
                    {
                        let event = WebhookEvent::new(WebhookKind::CacheMiss, channel, None);
                        self.gateway.webhooks.emit(&self.app.id, event);
                    }
                }
            }
        }
        self.subscriptions.insert(
            channel.to_owned(),
            Subscription {
                name,
                presence_user,
            },
        );
    }

    async fn unsubscribe(&mut self, channel: &str) {
        let Some(sub) = self.subscriptions.remove(channel) else {
            return;
        };
        self.leave_local(channel);
        self.gateway
            .metrics
            .subscriptions
            .with_label_values(&[&self.app.id])
            .dec();
        if let Some(user_id) = sub.presence_user {
            self.gateway
                .state
                .leave(&self.app.id, channel, &user_id)
                .await;
        }
        self.gateway.state.unsubscribe(&self.app.id, channel).await;
    }

    /// `pusher:signin`. A refused sign-in answers `pusher:error` 4009 and
    /// leaves the socket open, as Pusher documents.
    async fn signin(&mut self, token: &str, user_data: &str) {
        let socket_id = self.peer.socket_id().clone();
        let signed = auth::user_string_to_sign(&socket_id, user_data);
        let parsed = serde_json::from_str::<UserData>(user_data).ok();
        let user_id = parsed.as_ref().and_then(|d| user_id_of(&d.id));
        let signed_ok = self
            .app
            .secrets()
            .any(|secret| auth::verify_token(&self.app.key, secret, &signed, token));
        let refusal = if !signed_ok {
            Some("Invalid signature".to_owned())
        } else if user_id.is_none() {
            Some(format!(
                "user_data must be a JSON object with an id of 1 to {MAX_USER_ID_LEN} characters"
            ))
        } else if self.user.is_some() {
            Some("already signed in".to_owned())
        } else {
            None
        };
        let (Some(id), Some(data), None) = (user_id, parsed, refusal.as_ref()) else {
            self.gateway
                .metrics
                .auth_failures
                .with_label_values(&[&self.app.id, "signin"])
                .inc();
            return self.send_error(
                Some(codes::UNAUTHORIZED),
                refusal.as_deref().unwrap_or_default(),
            );
        };
        let mut watchlist: Vec<String> = data.watchlist.iter().filter_map(user_id_of).collect();
        if watchlist.len() > MAX_WATCHLIST {
            self.count_limit("watchlist");
            let why =
                format!("a watchlist holds at most {MAX_WATCHLIST} users; the rest are ignored");
            self.send_error(Some(codes::WATCHLIST_TOO_LONG), &why);
            watchlist.truncate(MAX_WATCHLIST);
        }
        self.app_hub().add_user(&id, &self.peer);
        self.join_local(ChannelName::server_to_user(&id).as_str())
            .await;
        for watched in &watchlist {
            self.join_local(&watchlist_channel(watched)).await;
        }
        self.authorized = true;
        self.send_text(&message::signin_success(user_data));
        if !watchlist.is_empty() {
            // The first watchlist event reports every watched user, online or not.
            let online = self.gateway.state.online_among(&self.app.id, &watchlist);
            let offline: Vec<String> = watchlist
                .iter()
                .filter(|u| !online.contains(u))
                .cloned()
                .collect();
            let data = message::watchlist_data(&[("online", &online), ("offline", &offline)]);
            self.send_text(&message::event_message(
                "pusher_internal:watchlist_events",
                None,
                &data,
                None,
            ));
        }
        self.gateway.state.user_online(&self.app.id, &id).await;
        let info = data.user_info.map(|raw| raw.get().to_owned());
        self.user = Some(User {
            id,
            info,
            watchlist,
        });
    }

    async fn client_event(&mut self, event: String, channel: String, data: String) {
        let refusal = if !self.app.client_events {
            Some("client events are not enabled for this app".to_owned())
        } else if event.chars().count() > MAX_EVENT_NAME_LEN {
            Some(format!(
                "event name is longer than {MAX_EVENT_NAME_LEN} characters"
            ))
        } else if data.len() > self.app.max_event_payload_bytes {
            Some(format!(
                "data is {} bytes, the limit is {}",
                data.len(),
                self.app.max_event_payload_bytes
            ))
        } else {
            match self.subscriptions.get(&channel) {
                None => Some(format!("not subscribed to {channel}")),
                Some(sub) if !sub.name.allows_client_events() => Some(
                    "client events are only allowed on private and presence channels".to_owned(),
                ),
                Some(_) => None,
            }
        };
        if let Some(why) = refusal {
            self.count_limit("client_event");
            return self.send_error(None, &why);
        }
        if !self.client_events.try_take(std::time::Instant::now()) {
            self.count_limit("client_event_rate");
            return self.send_error(
                Some(codes::CLIENT_EVENT_REJECTED),
                "Client event rejected due to rate limit",
            );
        }
        // Client events are never cached: Pusher caches only server events.
        let sub = &self.subscriptions[&channel];
        if self
            .gateway
            .webhooks
            .wants(&self.app.id, WebhookKind::ClientEvent)
        {
            let webhook = WebhookEvent {
                event: Some(event.clone()),
                data: Some(data.clone()),
                socket_id: Some(self.peer.socket_id().to_string()),
                ..WebhookEvent::new(
                    WebhookKind::ClientEvent,
                    &channel,
                    sub.presence_user.as_deref(),
                )
            };
            self.gateway.webhooks.emit(&self.app.id, webhook);
        }
        let envelope = Envelope::new(&self.app.id, &channel, &event, data)
            .except(Some(self.peer.socket_id().to_string()))
            .from_user(sub.presence_user.clone());
        self.publish(envelope).await;
    }

    /// Undoes everything the session registered.
    pub async fn finish(&mut self) {
        let channels: Vec<String> = self.subscriptions.keys().cloned().collect();
        for channel in channels {
            self.unsubscribe(&channel).await;
        }
        if let Some(user) = self.user.take() {
            self.app_hub().remove_user(&user.id, self.peer.socket_id());
            self.leave_local(ChannelName::server_to_user(&user.id).as_str());
            for watched in &user.watchlist {
                self.leave_local(&watchlist_channel(watched));
            }
            self.gateway
                .state
                .user_offline(&self.app.id, &user.id)
                .await;
        }
    }
}
