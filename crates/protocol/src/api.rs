//! HTTP API request bodies and their validation.
//!
//! The ingest turns a request into validated [`Publication`]s before anything
//! is published, so a request that breaks any rule delivers nothing.

use crate::channel::{ChannelName, MAX_EVENT_NAME_LEN};
use crate::message::{is_valid_socket_id, json_string};
use serde::Deserialize;

/// The per-app limits the API enforces.
#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    pub max_event_payload_bytes: usize,
    pub max_channels_per_event: usize,
    pub max_batch_events: usize,
}

/// Why a request was refused; maps to 400 or 413.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    BadRequest(String),
    PayloadTooLarge(String),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::PayloadTooLarge(_) => 413,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Self::BadRequest(m) | Self::PayloadTooLarge(m) => m,
        }
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

/// Which `info` attributes a request asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Info {
    pub user_count: bool,
    pub subscription_count: bool,
    pub cache: bool,
}

impl Info {
    /// Parses a comma-separated `info` value; unknown attributes are a 400.
    pub fn parse(value: Option<&str>) -> Result<Self, ApiError> {
        let mut info = Self::default();
        for attr in value
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            match attr {
                "user_count" => info.user_count = true,
                "subscription_count" => info.subscription_count = true,
                "cache" => info.cache = true,
                other => return Err(bad(format!("unknown info attribute `{other}`"))),
            }
        }
        Ok(info)
    }

    pub fn any(&self) -> bool {
        self.user_count || self.subscription_count || self.cache
    }
}

#[derive(Debug, Deserialize)]
pub struct TriggerRequest {
    pub name: String,
    pub data: serde_json::Value,
    #[serde(default)]
    pub channels: Option<Vec<String>>,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub socket_id: Option<String>,
    #[serde(default)]
    pub info: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct BatchEvent {
    pub channel: String,
    pub name: String,
    pub data: serde_json::Value,
    #[serde(default)]
    pub socket_id: Option<String>,
    #[serde(default)]
    pub info: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct BatchRequest {
    pub batch: Vec<BatchEvent>,
}

/// One event for one channel, validated and ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub channel: ChannelName,
    pub event: String,
    /// The `data` field as JSON text (a JSON string literal, as Pusher relays it).
    pub data: String,
    pub except_socket: Option<String>,
}

fn validate_common(
    name: &str,
    data: &serde_json::Value,
    socket_id: Option<&str>,
    limits: &ApiLimits,
) -> Result<String, ApiError> {
    if name.is_empty() {
        return Err(bad("event name is empty"));
    }
    if name.chars().count() > MAX_EVENT_NAME_LEN {
        return Err(bad(format!(
            "event name is longer than {MAX_EVENT_NAME_LEN} characters"
        )));
    }
    if let Some(id) = socket_id {
        if !is_valid_socket_id(id) {
            return Err(bad(format!("invalid socket_id `{id}`")));
        }
    }
    // Pusher's `data` is a string; other JSON is accepted and relayed as its JSON text.
    let text = match data {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.len() > limits.max_event_payload_bytes {
        return Err(ApiError::PayloadTooLarge(format!(
            "data is {} bytes, the limit is {}",
            text.len(),
            limits.max_event_payload_bytes
        )));
    }
    Ok(json_string(&text))
}

fn parse_channel(name: &str) -> Result<ChannelName, ApiError> {
    ChannelName::parse(name).map_err(|e| bad(format!("invalid channel `{name}`: {e}")))
}

/// Validates `POST /apps/{id}/events`.
pub fn validate_trigger(
    req: &TriggerRequest,
    limits: &ApiLimits,
) -> Result<(Vec<Publication>, Info), ApiError> {
    let names: Vec<&str> = match (&req.channels, &req.channel) {
        (Some(list), None) => list.iter().map(String::as_str).collect(),
        (None, Some(one)) => vec![one.as_str()],
        (Some(_), Some(_)) => return Err(bad("give either `channels` or `channel`, not both")),
        (None, None) => return Err(bad("`channels` is required")),
    };
    if names.is_empty() {
        return Err(bad("`channels` is empty"));
    }
    if names.len() > limits.max_channels_per_event {
        return Err(bad(format!(
            "{} channels given, the limit is {}",
            names.len(),
            limits.max_channels_per_event
        )));
    }
    let info = Info::parse(req.info.as_deref())?;
    let data = validate_common(&req.name, &req.data, req.socket_id.as_deref(), limits)?;
    let pubs = names
        .into_iter()
        .map(|name| {
            Ok(Publication {
                channel: parse_channel(name)?,
                event: req.name.clone(),
                data: data.clone(),
                except_socket: req.socket_id.clone(),
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok((pubs, info))
}

/// Validates `POST /apps/{id}/batch_events`.
pub fn validate_batch(
    req: &BatchRequest,
    limits: &ApiLimits,
) -> Result<Vec<(Publication, Info)>, ApiError> {
    if req.batch.len() > limits.max_batch_events {
        return Err(bad(format!(
            "{} events in batch, the limit is {}",
            req.batch.len(),
            limits.max_batch_events
        )));
    }
    req.batch
        .iter()
        .map(|ev| {
            let data = validate_common(&ev.name, &ev.data, ev.socket_id.as_deref(), limits)?;
            Ok((
                Publication {
                    channel: parse_channel(&ev.channel)?,
                    event: ev.name.clone(),
                    data,
                    except_socket: ev.socket_id.clone(),
                },
                Info::parse(ev.info.as_deref())?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ApiLimits = ApiLimits {
        max_event_payload_bytes: 10,
        max_channels_per_event: 2,
        max_batch_events: 2,
    };

    fn trigger(json: &str) -> Result<(Vec<Publication>, Info), ApiError> {
        validate_trigger(&serde_json::from_str(json).unwrap(), &LIMITS)
    }

    #[test]
    fn accepts_a_trigger() {
        let (pubs, info) = trigger(
            r#"{"name":"e","data":"{\"a\":1}","channels":["a","b"],"socket_id":"1.2","info":"subscription_count"}"#,
        )
        .unwrap();
        assert_eq!(pubs.len(), 2);
        assert_eq!(pubs[1].channel.as_str(), "b");
        assert_eq!(pubs[0].data, r#""{\"a\":1}""#);
        assert_eq!(pubs[0].except_socket.as_deref(), Some("1.2"));
        assert!(info.subscription_count && !info.user_count);
    }

    #[test]
    fn refuses_bad_triggers() {
        let cases = [
            (r#"{"name":"e","data":"x"}"#, 400),
            (r#"{"name":"e","data":"x","channels":[]}"#, 400),
            (r#"{"name":"e","data":"x","channels":["a","b","c"]}"#, 400),
            (r#"{"name":"e","data":"x","channels":["a b"]}"#, 400),
            (r#"{"name":"","data":"x","channel":"a"}"#, 400),
            (
                r#"{"name":"e","data":"x","channel":"a","socket_id":"x"}"#,
                400,
            ),
            (
                r#"{"name":"e","data":"x","channel":"a","info":"bogus"}"#,
                400,
            ),
            (r#"{"name":"e","data":"01234567890","channel":"a"}"#, 413),
        ];
        for (json, status) in cases {
            assert_eq!(trigger(json).unwrap_err().status(), status, "{json}");
        }
        let long = format!(
            r#"{{"name":"{}","data":"x","channel":"a"}}"#,
            "e".repeat(201)
        );
        assert_eq!(trigger(&long).unwrap_err().status(), 400);
    }

    proptest::proptest! {
        /// Any JSON body either validates into publications within the limits or
        /// is refused with 400/413; it never panics.
        #[test]
        fn arbitrary_trigger_bodies_never_panic(
            name in ".{0,8}", data in ".{0,16}", channels in proptest::collection::vec(".{0,6}", 0..4), socket in ".{0,6}"
        ) {
            let body = serde_json::json!({ "name": name, "data": data, "channels": channels, "socket_id": socket });
            if let Ok(req) = serde_json::from_value::<TriggerRequest>(body) {
                match validate_trigger(&req, &LIMITS) {
                    Ok((pubs, _)) => proptest::prop_assert!(!pubs.is_empty() && pubs.len() <= LIMITS.max_channels_per_event),
                    Err(e) => proptest::prop_assert!(e.status() == 400 || e.status() == 413),
                }
            }
        }
    }

    #[test]
    fn batch_limits() {
        let req: BatchRequest = serde_json::from_str(
            r#"{"batch":[{"channel":"a","name":"e","data":"1"},{"channel":"b","name":"e","data":"2","info":"user_count"}]}"#,
        )
        .unwrap();
        let out = validate_batch(&req, &LIMITS).unwrap();
        assert!(out[1].1.user_count);
        let req: BatchRequest = serde_json::from_str(
            r#"{"batch":[{"channel":"a","name":"e","data":"1"},{"channel":"a","name":"e","data":"1"},{"channel":"a","name":"e","data":"1"}]}"#,
        )
        .unwrap();
        assert_eq!(validate_batch(&req, &LIMITS).unwrap_err().status(), 400);
    }
}
