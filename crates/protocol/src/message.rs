//! Client messages (parsed) and server messages (built as JSON text).
//!
//! Server messages are produced as finished JSON strings so the gateway can
//! encode a message once and hand the same bytes to every recipient. Payloads
//! (`data`) are carried as raw JSON text: HTTP API triggers carry a JSON
//! string, client events any JSON value, and both are relayed byte for byte.

use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt::Write as _;

/// A message received from a client socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    Ping,
    Pong,
    Subscribe(Subscribe),
    Unsubscribe {
        channel: String,
    },
    Signin {
        auth: String,
        user_data: String,
    },
    /// A `client-*` event; `data` is the raw JSON of the payload.
    ClientEvent {
        event: String,
        channel: String,
        data: String,
    },
    /// A well-formed message with an event Herald does not know.
    Unknown {
        event: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Subscribe {
    pub channel: String,
    #[serde(default)]
    pub auth: Option<String>,
    #[serde(default)]
    pub channel_data: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageError {
    /// Not JSON, or not an object with a string `event`.
    Malformed(String),
    /// A known event without a field it needs.
    MissingField { event: String, field: &'static str },
}

impl std::fmt::Display for MessageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed(why) => write!(f, "malformed message: {why}"),
            Self::MissingField { event, field } => write!(f, "{event} needs `{field}`"),
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    event: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct SigninData {
    auth: String,
    user_data: String,
}

#[derive(Deserialize)]
struct UnsubscribeData {
    channel: String,
}

/// Some clients send `data` as a JSON-encoded string rather than an object;
/// accept both for the `pusher:` events whose data Herald reads.
fn data_object<'de, T: Deserialize<'de>>(
    raw: &'de RawValue,
    event: &str,
) -> Result<T, MessageError> {
    let text = raw.get();
    let parsed = if text.starts_with('"') {
        let inner: String =
            serde_json::from_str(text).map_err(|e| MessageError::Malformed(e.to_string()))?;
        serde_json::from_str::<serde_json::Value>(&inner)
            .and_then(T::deserialize)
            .map_err(|e| e.to_string())
    } else {
        serde_json::from_str(text).map_err(|e| e.to_string())
    };
    parsed.map_err(|why| MessageError::Malformed(format!("{event}: {why}")))
}

impl ClientMessage {
    pub fn parse(text: &str) -> Result<Self, MessageError> {
        let env: Envelope =
            serde_json::from_str(text).map_err(|e| MessageError::Malformed(e.to_string()))?;
        let need_data = |field| {
            env.data.ok_or(MessageError::MissingField {
                event: env.event.clone(),
                field,
            })
        };
        Ok(match env.event.as_str() {
            "pusher:ping" => Self::Ping,
            "pusher:pong" => Self::Pong,
            "pusher:subscribe" => Self::Subscribe(data_object(need_data("data")?, &env.event)?),
            "pusher:unsubscribe" => {
                let d: UnsubscribeData = data_object(need_data("data")?, &env.event)?;
                Self::Unsubscribe { channel: d.channel }
            }
            "pusher:signin" => {
                let d: SigninData = data_object(need_data("data")?, &env.event)?;
                Self::Signin {
                    auth: d.auth,
                    user_data: d.user_data,
                }
            }
            e if e.starts_with("client-") => {
                let channel = env.channel.clone().ok_or(MessageError::MissingField {
                    event: env.event.clone(),
                    field: "channel",
                })?;
                let data = env.data.map_or("null", |d| d.get()).to_owned();
                Self::ClientEvent {
                    event: env.event,
                    channel,
                    data,
                }
            }
            _ => Self::Unknown { event: env.event },
        })
    }
}

/// JSON string literal for `s`.
pub fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("strings always serialize")
}

/// A channel event frame: `{"event":..,"channel":..,"data":<raw>[,"user_id":..]}`.
/// `data` must already be valid JSON text.
pub fn channel_event(event: &str, channel: &str, data: &str, user_id: Option<&str>) -> String {
    event_message(event, Some(channel), data, user_id)
}

/// An event frame with an optional channel; `data` must already be valid JSON text.
pub fn event_message(
    event: &str,
    channel: Option<&str>,
    data: &str,
    user_id: Option<&str>,
) -> String {
    event_message_with_id(event, channel, data, user_id, None)
}

/// [`event_message`] with the `id` of an event on a history channel (a
/// Herald extension: a number that grows with time on the channel, so an
/// event shown again after a reconnect can be told from a new one).
pub fn event_message_with_id(
    event: &str,
    channel: Option<&str>,
    data: &str,
    user_id: Option<&str>,
    id: Option<u64>,
) -> String {
    let mut out = String::with_capacity(event.len() + data.len() + 64);
    let _ = write!(out, r#"{{"event":{}"#, json_string(event));
    if let Some(channel) = channel {
        let _ = write!(out, r#","channel":{}"#, json_string(channel));
    }
    let _ = write!(out, r#","data":{data}"#);
    if let Some(user) = user_id {
        let _ = write!(out, r#","user_id":{}"#, json_string(user));
    }
    if let Some(id) = id {
        let _ = write!(out, r#","id":{id}"#);
    }
    out.push('}');
    out
}

/// An event without a channel whose `data` is a JSON string holding `payload` (as Pusher sends
/// connection-level events).
fn connection_event(event: &str, payload: &serde_json::Value) -> String {
    event_message(event, None, &json_string(&payload.to_string()), None)
}

pub fn connection_established(socket_id: &str, activity_timeout: u64) -> String {
    connection_event(
        "pusher:connection_established",
        &serde_json::json!({ "socket_id": socket_id, "activity_timeout": activity_timeout }),
    )
}

/// `pusher:error`; Pusher sends its data as an object.
pub fn error(code: Option<u16>, message: &str) -> String {
    serde_json::json!({ "event": "pusher:error", "data": { "code": code, "message": message } })
        .to_string()
}

pub fn ping() -> String {
    r#"{"event":"pusher:ping","data":{}}"#.to_owned()
}

pub fn pong() -> String {
    r#"{"event":"pusher:pong","data":{}}"#.to_owned()
}

/// `pusher_internal:subscription_succeeded`; `presence` is the `{ids,hash,count}` object for
/// presence channels.
pub fn subscription_succeeded(channel: &str, presence: Option<serde_json::Value>) -> String {
    let data = match presence {
        Some(p) => serde_json::json!({ "presence": p }).to_string(),
        None => "{}".to_owned(),
    };
    channel_event(
        "pusher_internal:subscription_succeeded",
        channel,
        &json_string(&data),
        None,
    )
}

/// `pusher:subscription_error` with Pusher's `{type, error, status}` data.
pub fn subscription_error(channel: &str, kind: &str, error: &str, status: u16) -> String {
    let data = serde_json::json!({ "type": kind, "error": error, "status": status });
    channel_event(
        "pusher:subscription_error",
        channel,
        &data.to_string(),
        None,
    )
}

/// Data of `pusher_internal:member_added`; `user_info` is raw JSON.
pub fn member_added_data(user_id: &str, user_info: &str) -> String {
    json_string(&format!(
        r#"{{"user_id":{},"user_info":{}}}"#,
        json_string(user_id),
        user_info
    ))
}

/// Data of `pusher_internal:member_removed`.
pub fn member_removed_data(user_id: &str) -> String {
    json_string(&format!(r#"{{"user_id":{}}}"#, json_string(user_id)))
}

/// Data of `pusher_internal:subscription_count`.
pub fn subscription_count_data(count: usize) -> String {
    json_string(&format!(r#"{{"subscription_count":{count}}}"#))
}

pub fn cache_miss(channel: &str) -> String {
    format!(
        r#"{{"event":"pusher:cache_miss","channel":{}}}"#,
        json_string(channel)
    )
}

/// `pusher:signin_success`; Pusher sends its data as an object.
pub fn signin_success(user_data: &str) -> String {
    let data = serde_json::json!({ "user_data": user_data }).to_string();
    event_message("pusher:signin_success", None, &data, None)
}

/// Data of `pusher_internal:watchlist_events`: `(name, user_ids)` pairs such as
/// `("online", ["1"])`; pairs without users are left out.
pub fn watchlist_data(events: &[(&str, &[String])]) -> String {
    let events: Vec<serde_json::Value> = events
        .iter()
        .filter(|(_, ids)| !ids.is_empty())
        .map(|(name, ids)| serde_json::json!({ "name": name, "user_ids": ids }))
        .collect();
    json_string(&serde_json::json!({ "events": events }).to_string())
}

/// True for socket ids of the form Pusher issues: `digits.digits`.
pub fn is_valid_socket_id(s: &str) -> bool {
    match s.split_once('.') {
        Some((a, b)) => {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_every_client_message() {
        assert_eq!(
            ClientMessage::parse(r#"{"event":"pusher:ping","data":{}}"#),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(
            ClientMessage::parse(
                r#"{"event":"pusher:subscribe","data":{"channel":"presence-a","auth":"k:s","channel_data":"{\"user_id\":1}"}}"#
            ),
            Ok(ClientMessage::Subscribe(Subscribe {
                channel: "presence-a".into(),
                auth: Some("k:s".into()),
                channel_data: Some(r#"{"user_id":1}"#.into()),
            }))
        );
        assert_eq!(
            ClientMessage::parse(r#"{"event":"pusher:subscribe","data":"{\"channel\":\"a\"}"}"#),
            Ok(ClientMessage::Subscribe(Subscribe {
                channel: "a".into(),
                auth: None,
                channel_data: None
            }))
        );
        assert_eq!(
            ClientMessage::parse(r#"{"event":"pusher:unsubscribe","data":{"channel":"a"}}"#),
            Ok(ClientMessage::Unsubscribe {
                channel: "a".into()
            })
        );
        assert_eq!(
            ClientMessage::parse(
                r#"{"event":"pusher:signin","data":{"auth":"k:s","user_data":"{}"}}"#
            ),
            Ok(ClientMessage::Signin {
                auth: "k:s".into(),
                user_data: "{}".into()
            })
        );
        assert_eq!(
            ClientMessage::parse(
                r#"{"event":"client-typing","channel":"private-a","data":{"x": 1}}"#
            ),
            Ok(ClientMessage::ClientEvent {
                event: "client-typing".into(),
                channel: "private-a".into(),
                data: r#"{"x": 1}"#.into()
            })
        );
        assert_eq!(
            ClientMessage::parse(r#"{"event":"pusher:whatever"}"#),
            Ok(ClientMessage::Unknown {
                event: "pusher:whatever".into()
            })
        );
    }

    #[test]
    fn rejects_every_malformed_message() {
        for bad in [
            "",
            "not json",
            "[]",
            "{}",
            r#"{"event":5}"#,
            r#"{"event":"pusher:subscribe"}"#,
            r#"{"event":"pusher:subscribe","data":{}}"#,
            r#"{"event":"pusher:subscribe","data":{"channel":7}}"#,
            r#"{"event":"pusher:subscribe","data":"not an object"}"#,
            r#"{"event":"pusher:signin","data":{"auth":"a"}}"#,
            r#"{"event":"client-x","data":{}}"#,
            r#"{"event":"pusher:ping","data":{}"#,
        ] {
            assert!(ClientMessage::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn builds_server_messages_pusher_js_can_read() {
        let established: serde_json::Value =
            serde_json::from_str(&connection_established("1.2", 120)).unwrap();
        let inner: serde_json::Value =
            serde_json::from_str(established["data"].as_str().unwrap()).unwrap();
        assert_eq!(inner["socket_id"], "1.2");
        assert_eq!(inner["activity_timeout"], 120);

        let ev: serde_json::Value =
            serde_json::from_str(&channel_event("e\"v", "c", r#""{\"a\":1}""#, Some("u1")))
                .unwrap();
        assert_eq!(ev["event"], "e\"v");
        assert_eq!(ev["data"], r#"{"a":1}"#);
        assert_eq!(ev["user_id"], "u1");

        let added: serde_json::Value = serde_json::from_str(
            serde_json::from_str::<String>(&member_added_data("7", r#"{"name":"A"}"#))
                .unwrap()
                .as_str(),
        )
        .unwrap();
        assert_eq!(added["user_info"]["name"], "A");
    }

    #[test]
    fn socket_id_format() {
        assert!(is_valid_socket_id("123.456"));
        for bad in ["", "1", "1.", ".1", "a.1", "1.2.3", "1 .2"] {
            assert!(!is_valid_socket_id(bad), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = ClientMessage::parse(&s);
        }

        #[test]
        fn channel_event_is_valid_json_for_any_names(ev in ".{0,40}", ch in ".{0,40}", user in ".{0,10}") {
            let text = channel_event(&ev, &ch, "null", Some(&user));
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(v["event"].as_str(), Some(ev.as_str()));
            prop_assert_eq!(v["channel"].as_str(), Some(ch.as_str()));
        }
    }
}
