//! The Pusher protocol state machine of one connection.
//!
//! A session owns what its socket subscribed to and who it signed in as, so
//! that everything it added to the hub, the channel state and the bus
//! interest is removed again in [`Session::finish`], however the connection
//! ended. It only dispatches: each client request is handled in a module of
//! its own (`subscribe` with its `subscribe_rate`, `presence`, `signin`,
//! `client_event`) that gets a [`Context`] with the handles it may use
//! rather than the whole gateway.

mod client_event;
mod context;
mod presence;
mod refused;
mod signin;
mod subscribe;
mod subscribe_rate;

use crate::message::{Message, MessageError};
use crate::peer::Peer;
use crate::Gateway;
use client_event::ClientEvent;
use context::Context;
use herald_bus::BusMessage;
use herald_config::AppConfig;
use herald_protocol::message::{self, ClientMessage};
use herald_protocol::rate::TokenBucket;
use herald_protocol::{codes, frame, Cause, ChannelName, Disconnect};
use std::collections::HashMap;
use std::sync::Arc;
use subscribe_rate::SubscribeRate;
use tokio::time::Instant;

/// Longest user id accepted in `channel_data` or `user_data` (Pusher's limit).
const MAX_USER_ID_LEN: usize = 128;

struct Subscription {
    name: ChannelName,
    /// Who this socket joined a presence channel as.
    member: Option<presence::Member>,
}

/// A socket's subscriptions by channel name.
type Subscriptions = HashMap<String, Subscription>;

struct User {
    id: String,
    /// Raw JSON of `user_info` from `user_data`, used as presence info when a
    /// signed-in socket joins a presence channel without `channel_data`.
    info: Option<String>,
    watchlist: Vec<String>,
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

pub struct Session {
    gateway: Arc<Gateway>,
    app: Arc<AppConfig>,
    peer: Peer,
    subscriptions: Subscriptions,
    user: Option<User>,
    client_events: TokenBucket,
    subscribes: SubscribeRate,
    /// With `user_authentication_timeout`: when the socket must have signed in
    /// or subscribed to a private or presence channel (Pusher's "authorized connections").
    auth_deadline: Option<Instant>,
    authorized: bool,
}

impl Session {
    pub fn new(gateway: Arc<Gateway>, app: Arc<AppConfig>, peer: Peer) -> Self {
        let auth_deadline = app
            .user_authentication_timeout()
            .map(|t| Instant::now() + t);
        let opened = std::time::Instant::now();
        let client_events = TokenBucket::new(app.max_client_events_per_second, opened);
        let subscribes = SubscribeRate::new(&app, opened);
        Self {
            gateway,
            app,
            peer,
            subscriptions: HashMap::new(),
            user: None,
            client_events,
            subscribes,
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
        self.context().count_auth_failure("auth_timeout");
        self.peer.close(Disconnect::new(
            Cause::AuthTimeout,
            codes::UNAUTHORIZED,
            "Connection not authorized within the user authentication timeout",
        ));
    }

    /// Handles what the reader returned (`None`: a fragment of a message
    /// still unfinished); false ends the session.
    pub async fn on_read(&mut self, read: Result<Option<Message>, MessageError>) -> bool {
        match read {
            Ok(None) => true,
            // Boxed: an idle connection's task then holds only the wait for
            // the next frame, not the largest handler's state.
            Ok(Some(message)) => Box::pin(self.on_message(message)).await,
            Err(e) => {
                self.on_read_error(&e);
                false
            }
        }
    }

    fn on_read_error(&self, error: &MessageError) {
        if let MessageError::Read(crate::reader::ReadError::Frame(error)) = error {
            tracing::debug!(socket_id = %self.peer.socket_id(), %error, "closing on a bad frame");
        }
        if let Some(limit) = error.limit() {
            self.context().count_limit(limit);
        }
        self.peer.close(error.disconnect());
    }

    /// The handlers' view of the gateway. Where a handler also needs the
    /// session's own state mutably, the context is built from the fields
    /// instead (`Context::new`), which the borrow checker can tell apart.
    fn context(&self) -> Context<'_> {
        Context::new(&self.gateway, &self.app, &self.peer)
    }

    /// Handles one whole message; false ends the session.
    async fn on_message(&mut self, message: Message) -> bool {
        match message {
            Message::Text(payload) => self.on_text(&payload).await,
            Message::Binary => {
                self.context()
                    .send_error(None, "binary messages are not supported");
                true
            }
            Message::Ping(payload) => {
                self.peer.send(frame::pong(&payload));
                true
            }
            Message::Pong => true,
            Message::Close(code) => {
                self.peer.close(Disconnect::client_closed(code));
                false
            }
        }
    }

    async fn on_text(&mut self, payload: &[u8]) -> bool {
        let cx = Context::new(&self.gateway, &self.app, &self.peer);
        let Ok(text) = std::str::from_utf8(payload) else {
            cx.count_limit("invalid_payload");
            self.peer.close(Disconnect::new(
                Cause::InvalidPayload,
                codes::WS_INVALID_PAYLOAD,
                "invalid UTF-8",
            ));
            return false;
        };
        let parsed = ClientMessage::parse(text);
        let kind = match &parsed {
            Ok(ClientMessage::ClientEvent { .. }) => "client_event",
            Ok(ClientMessage::Ping | ClientMessage::Pong) => "ping",
            Ok(_) => "protocol",
            Err(_) => "malformed",
        };
        cx.metrics
            .messages_received
            .with_label_values(&[&self.app.id, kind])
            .inc();
        match parsed {
            Err(e) => cx.send_error(None, &e.to_string()),
            Ok(ClientMessage::Ping) => cx.send_text(&message::pong()),
            Ok(ClientMessage::Pong) => {}
            Ok(ClientMessage::Subscribe(sub)) => {
                let user = self.user.as_ref();
                let subscriptions = &mut self.subscriptions;
                let rate = &mut self.subscribes;
                self.authorized |= subscribe::subscribe(&cx, subscriptions, rate, user, sub).await;
            }
            Ok(ClientMessage::Unsubscribe { channel }) => {
                subscribe::unsubscribe(&cx, &mut self.subscriptions, &channel).await
            }
            Ok(ClientMessage::Signin { auth, user_data }) => {
                self.authorized |= signin::signin(&cx, &mut self.user, &auth, &user_data).await;
            }
            Ok(ClientMessage::ClientEvent {
                event,
                channel,
                data,
            }) => {
                let sent = ClientEvent {
                    event,
                    channel,
                    data,
                };
                let accepted =
                    client_event::accept(&cx, &self.subscriptions, &mut self.client_events, sent);
                if let Some(envelope) = accepted {
                    self.gateway
                        .publish(&self.app.id, BusMessage::Event(envelope))
                        .await;
                }
            }
            Ok(ClientMessage::Unknown { event }) => cx.send_error(
                None,
                &format!("unknown event `{event}`; events sent by clients must start with client-"),
            ),
        }
        true
    }

    /// Undoes everything the session registered.
    pub async fn finish(&mut self) {
        let cx = Context::new(&self.gateway, &self.app, &self.peer);
        let channels: Vec<String> = self.subscriptions.keys().cloned().collect();
        for channel in channels {
            subscribe::unsubscribe(&cx, &mut self.subscriptions, &channel).await;
        }
        if let Some(user) = self.user.take() {
            signin::sign_out(&cx, user).await;
        }
    }
}
