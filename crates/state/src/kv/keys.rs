//! How changes and heartbeats are spelled as bucket keys and values, and
//! read back: the one place that knows the key layout tabled in the
//! parent module, so writers and the watch cannot disagree about it.

use crate::{CachedEvent, Change};
use bytes::Bytes;
use herald_protocol::token::{decode_token, encode_token};

fn key(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| encode_token(p))
        .collect::<Vec<_>>()
        .join(".")
}

/// The bucket key and value (None: delete) a change writes.
pub(super) fn encode(change: &Change) -> (String, Option<Bytes>) {
    match change {
        Change::Subscriptions {
            app,
            channel,
            node,
            count,
        } => {
            let value = (*count > 0).then(|| Bytes::from(count.to_string()));
            (format!("s.{}", key(&[app, channel, node])), value)
        }
        Change::Member {
            app,
            channel,
            user,
            node,
            info,
        } => {
            let value = info.clone().map(Bytes::from);
            (format!("m.{}", key(&[app, channel, user, node])), value)
        }
        Change::Online {
            app,
            user,
            node,
            online,
        } => {
            let value = online.then(|| Bytes::from_static(b"1"));
            (format!("o.{}", key(&[app, user, node])), value)
        }
        Change::Cache {
            app,
            channel,
            event,
        } => {
            let value = event
                .as_ref()
                .map(|e| Bytes::from(serde_json::to_vec(e).expect("cached events serialize")));
            (format!("c.{}", key(&[app, channel])), value)
        }
    }
}

pub(super) fn heartbeat_key(node: &str) -> String {
    format!("n.{}", encode_token(node))
}

/// The node whose heartbeat key this is.
pub(super) fn heartbeat_node(key: &str) -> Option<String> {
    decode_token(key.strip_prefix("n.")?)
}

/// The change an entry of either bucket stands for; None for foreign keys.
pub(super) fn decode(key: &str, value: Option<&[u8]>) -> Option<Change> {
    let mut parts = key.split('.');
    let kind = parts.next()?;
    let tokens: Vec<String> = parts.map(decode_token).collect::<Option<_>>()?;
    let text = value.map(|v| String::from_utf8_lossy(v).into_owned());
    Some(match (kind, tokens.as_slice()) {
        ("s", [app, channel, node]) => Change::Subscriptions {
            app: app.clone(),
            channel: channel.clone(),
            node: node.clone(),
            count: text.and_then(|t| t.parse().ok()).unwrap_or(0),
        },
        ("m", [app, channel, user, node]) => Change::Member {
            app: app.clone(),
            channel: channel.clone(),
            user: user.clone(),
            node: node.clone(),
            info: text,
        },
        ("o", [app, user, node]) => Change::Online {
            app: app.clone(),
            user: user.clone(),
            node: node.clone(),
            online: text.is_some(),
        },
        ("c", [app, channel]) => Change::Cache {
            app: app.clone(),
            channel: channel.clone(),
            event: value.and_then(|v| serde_json::from_slice::<CachedEvent>(v).ok()),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_every_change() {
        let changes = [
            Change::Subscriptions {
                app: "1".into(),
                channel: "a.b".into(),
                node: "n 1".into(),
                count: 3,
            },
            Change::Member {
                app: "1".into(),
                channel: "presence-x".into(),
                user: "u.1*".into(),
                node: "n".into(),
                info: Some(r#"{"name":"A"}"#.into()),
            },
            Change::Member {
                app: "1".into(),
                channel: "presence-x".into(),
                user: "u".into(),
                node: "n".into(),
                info: None,
            },
            Change::Online {
                app: "1".into(),
                user: "u".into(),
                node: "n".into(),
                online: true,
            },
            Change::Online {
                app: "1".into(),
                user: "u".into(),
                node: "n".into(),
                online: false,
            },
            Change::Cache {
                app: "1".into(),
                channel: "cache-x".into(),
                event: Some(CachedEvent {
                    event: "e".into(),
                    data: "\"1\"".into(),
                    stored_ms: 5,
                }),
            },
        ];
        for change in changes {
            let (key, value) = encode(&change);
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=.".contains(&b)),
                "{key}"
            );
            assert_eq!(decode(&key, value.as_deref()), Some(change));
        }
        assert_eq!(decode("x.1", None), None);
        assert_eq!(heartbeat_node(&heartbeat_key("gw.1")), Some("gw.1".into()));
        assert_eq!(decode(&heartbeat_key("gw"), None), None);
        assert_eq!(decode("s.1.2", None), None);
    }
}
