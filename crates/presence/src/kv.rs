//! The replicated store of cluster mode: JetStream KV.
//!
//! Every entry a node owns is one key that names the node, so nodes never
//! write each other's keys and a node's entries can be found by its id:
//!
//! | key (tokens encoded with `herald_protocol::token`) | value |
//! | --- | --- |
//! | `s.{app}.{channel}.{node}` | the node's subscription count (decimal) |
//! | `m.{app}.{channel}.{user}.{node}` | the member's `user_info` JSON |
//! | `o.{app}.{user}.{node}` | `1` while the user is signed in on the node |
//!
//! Cache channels' last events live in a second bucket whose `max_age` is
//! Pusher's 30-minute cache lifetime: `c.{app}.{channel}` → JSON.
//!
//! Every node (gateways and ingests) watches both buckets from the start and
//! folds the entries into its [`View`](crate::View) in stream order, so all
//! nodes see the same transitions. A node's own put is complete once its
//! watch has applied that revision, which is what makes "member_added
//! before subscription_succeeded" and read-your-writes hold across the
//! cluster.

use crate::{CachedEvent, Change, Replica};
use async_nats::jetstream::kv::{self, Operation, Store};
use bytes::Bytes;
use futures::StreamExt;
use herald_protocol::token::{decode_token, encode_token};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long a node waits for its own write to come back through the watch.
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Bucket names and replication.
#[derive(Debug, Clone)]
pub struct KvSettings {
    pub state_bucket: String,
    pub cache_bucket: String,
    pub replicas: usize,
}

impl Default for KvSettings {
    fn default() -> Self {
        Self {
            state_bucket: "herald-state".into(),
            cache_bucket: "herald-cache".into(),
            replicas: 1,
        }
    }
}

pub(crate) struct KvStore {
    state: Store,
    cache: Store,
    state_applied: watch::Receiver<u64>,
    cache_applied: watch::Receiver<u64>,
}

fn key(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| encode_token(p))
        .collect::<Vec<_>>()
        .join(".")
}

/// The bucket key and value (None: delete) a change writes.
fn encode(change: &Change) -> (bool, String, Option<Bytes>) {
    match change {
        Change::Subscriptions {
            app,
            channel,
            node,
            count,
        } => {
            let value = (*count > 0).then(|| Bytes::from(count.to_string()));
            (false, format!("s.{}", key(&[app, channel, node])), value)
        }
        Change::Member {
            app,
            channel,
            user,
            node,
            info,
        } => {
            let value = info.clone().map(Bytes::from);
            (
                false,
                format!("m.{}", key(&[app, channel, user, node])),
                value,
            )
        }
        Change::Online {
            app,
            user,
            node,
            online,
        } => {
            let value = online.then(|| Bytes::from_static(b"1"));
            (false, format!("o.{}", key(&[app, user, node])), value)
        }
        Change::Cache {
            app,
            channel,
            event,
        } => {
            let value = event
                .as_ref()
                .map(|e| Bytes::from(serde_json::to_vec(e).expect("cached events serialize")));
            (true, format!("c.{}", key(&[app, channel])), value)
        }
    }
}

/// The change an entry of either bucket stands for; None for foreign keys.
fn decode(key: &str, value: Option<&[u8]>) -> Option<Change> {
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

async fn open_bucket(
    js: &async_nats::jetstream::Context,
    name: &str,
    replicas: usize,
    max_age: Duration,
) -> Result<Store, String> {
    js.create_or_update_key_value(kv::Config {
        bucket: name.to_owned(),
        history: 1,
        max_age,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("cannot open KV bucket {name}: {e}"))
}

/// Folds the bucket into the replica forever, re-opening the watch after
/// errors from the revision after the last one applied.
fn spawn_watcher(store: Store, replica: Arc<Replica>, applied: watch::Sender<u64>) {
    tokio::spawn(async move {
        loop {
            let next = *applied.borrow() + 1;
            let watch = if next == 1 {
                store.watch_with_history(">").await
            } else {
                store.watch_all_from_revision(next).await
            };
            let mut entries = match watch {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(bucket = %store.name, error = %e, "KV watch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            while let Some(entry) = entries.next().await {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(e) => {
                        tracing::warn!(bucket = %store.name, error = %e, "KV watch interrupted; resuming");
                        break;
                    }
                };
                let value = (entry.operation == Operation::Put).then_some(&entry.value[..]);
                if let Some(change) = decode(&entry.key, value) {
                    replica.apply(change);
                }
                applied.send_replace(entry.revision);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

/// Waits (bounded) until the watch has applied `revision`.
async fn wait_applied(applied: &watch::Receiver<u64>, revision: u64) {
    let mut applied = applied.clone();
    if tokio::time::timeout(APPLY_TIMEOUT, applied.wait_for(|r| *r >= revision))
        .await
        .is_err()
    {
        tracing::warn!(revision, "KV write not seen by the watch in time");
    }
}

impl KvStore {
    pub(crate) async fn open(
        client: async_nats::Client,
        settings: &KvSettings,
        replica: Arc<Replica>,
    ) -> Result<Self, String> {
        let js = async_nats::jetstream::new(client);
        let state = open_bucket(
            &js,
            &settings.state_bucket,
            settings.replicas,
            Duration::ZERO,
        )
        .await?;
        let cache_ttl = Duration::from_millis(crate::CACHE_TTL_MS);
        let cache = open_bucket(&js, &settings.cache_bucket, settings.replicas, cache_ttl).await?;
        let mut appliers = Vec::new();
        for store in [&state, &cache] {
            let (tx, rx) = watch::channel(0);
            let last = store
                .status()
                .await
                .map_err(|e| format!("cannot read KV bucket {}: {e}", store.name))?
                .info
                .state
                .last_sequence;
            spawn_watcher(store.clone(), replica.clone(), tx);
            // Serve nothing before the existing entries are in the view.
            wait_applied(&rx, last).await;
            appliers.push(rx);
        }
        let cache_applied = appliers.pop().expect("two buckets");
        let state_applied = appliers.pop().expect("two buckets");
        Ok(Self {
            state,
            cache,
            state_applied,
            cache_applied,
        })
    }

    /// Writes one owned entry; a put returns once this node's view has it.
    pub(crate) async fn write(&self, change: &Change) {
        let (is_cache, key, value) = encode(change);
        let (store, applied) = if is_cache {
            (&self.cache, &self.cache_applied)
        } else {
            (&self.state, &self.state_applied)
        };
        let result = match value {
            Some(value) => match store.put(&key, value).await {
                Ok(revision) => {
                    wait_applied(applied, revision).await;
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            },
            None => store.delete(&key).await.map_err(|e| e.to_string()),
        };
        if let Err(e) = result {
            tracing::warn!(%key, error = %e, "KV write failed");
        }
    }
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
            let (_, key, value) = encode(&change);
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=.".contains(&b)),
                "{key}"
            );
            assert_eq!(decode(&key, value.as_deref()), Some(change));
        }
        assert_eq!(decode("x.1", None), None);
        assert_eq!(decode("s.1.2", None), None);
    }
}
