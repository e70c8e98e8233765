//! Channel occupancy, presence members, cached events and online users.
//!
//! Pusher defines these cluster-wide: `member_added` fires for a user's first
//! connection anywhere, and the HTTP API counts every subscriber.
//! [`ChannelState`] is the one interface the gateway and the ingest use. It
//! keeps this node's own counts, writes the entries this node owns, and
//! answers reads from a [`View`] of everyone's entries. Transitions in that
//! view (member added or removed, subscription count, user online or offline)
//! are handed to a [`Listener`], the gateway's fan-out, which tells local
//! sockets. Standalone applies writes to the view directly; cluster mode
//! replicates them through JetStream KV (see `kv`) and applies them as the
//! watch delivers them, in the same order on every node.

mod error;
pub mod kv;
mod metrics;
pub mod view;

pub use metrics::{ChannelGauges, KvMetrics};

pub use error::StateError;
use herald_protocol::unix_millis;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
pub use view::{CachedEvent, Change, ChannelSummary, Transition, View};

/// The replicated write a transition came from: the entry's key and the
/// revision of its last put (for a removal, the put being removed). Every
/// node folds the same stream, so this names a transition cluster-wide,
/// which is what lets every node report it and a receiver still hear it
/// once (webhook deduplication). Standalone transitions have none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub key: String,
    pub revision: u64,
    /// The entry was removed (else written) at this point.
    pub removed: bool,
}

impl Origin {
    /// A name for this point of the stream, the same on every node.
    pub fn id(&self) -> String {
        let op = if self.removed { "del" } else { "put" };
        format!("{op}:{}:{}", self.key, self.revision)
    }
}

/// How long a cache channel keeps its last event (Pusher: 30 minutes).
pub const CACHE_TTL_MS: u64 = 30 * 60 * 1000;

/// Receives the view's transitions (the gateway's local fan-out).
pub trait Listener: Send + Sync {
    fn on_transition(&self, transition: &Transition, origin: Option<&Origin>);
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinError {
    /// The channel already has the maximum number of distinct members.
    Full { max: usize },
}

/// This node's own reference counts; only the first and last of each write
/// to the view. They are the truth about this node's entries: the replicated
/// store is rewritten from them whenever it lost some (see `kv`).
#[derive(Default)]
pub(crate) struct Local {
    subscriptions: HashMap<(String, String), usize>,
    /// Connections and `user_info` per (app, channel, user).
    members: HashMap<(String, String, String), (usize, String)>,
    online: HashMap<(String, String), usize>,
}

impl Local {
    /// Every entry this node owns, as the changes that write it.
    pub(crate) fn changes(&self, node: &str) -> Vec<Change> {
        let subscriptions =
            self.subscriptions
                .iter()
                .map(|((app, channel), count)| Change::Subscriptions {
                    app: app.clone(),
                    channel: channel.clone(),
                    node: node.into(),
                    count: *count,
                });
        let members = self
            .members
            .iter()
            .map(|((app, channel, user), (_, info))| Change::Member {
                app: app.clone(),
                channel: channel.clone(),
                user: user.clone(),
                node: node.into(),
                info: Some(info.clone()),
            });
        let online = self.online.keys().map(|(app, user)| Change::Online {
            app: app.clone(),
            user: user.clone(),
            node: node.into(),
            online: true,
        });
        subscriptions.chain(members).chain(online).collect()
    }

    /// For a removal of one of this node's entries: the write that restores
    /// it, if this node still holds it.
    pub(crate) fn restore(&self, removed: &Change) -> Option<Change> {
        let mut restored = removed.clone();
        match &mut restored {
            Change::Subscriptions {
                app,
                channel,
                count,
                ..
            } => {
                *count = *self.subscriptions.get(&(app.clone(), channel.clone()))?;
            }
            Change::Member {
                app,
                channel,
                user,
                info,
                ..
            } => {
                *info = Some(
                    self.members
                        .get(&(app.clone(), channel.clone(), user.clone()))?
                        .1
                        .clone(),
                );
            }
            Change::Online {
                app, user, online, ..
            } => {
                self.online.get(&(app.clone(), user.clone()))?;
                *online = true;
            }
            Change::Cache { .. } => return None,
        }
        Some(restored)
    }
}

/// What the state front and the store's background tasks share.
pub(crate) struct Shared {
    pub(crate) node: String,
    pub(crate) replica: Replica,
    /// Serialises this node's writes, so a put and the delete that follows it
    /// can never reach the store in the other order.
    pub(crate) local: tokio::sync::Mutex<Local>,
}

/// The shared view plus where transitions go.
#[derive(Default)]
pub(crate) struct Replica {
    view: RwLock<View>,
    listeners: RwLock<Vec<Arc<dyn Listener>>>,
}

impl Replica {
    pub(crate) fn apply(&self, change: Change, origin: Option<Origin>) {
        let transition = self.view.write().apply(change);
        if let Some(t) = transition {
            for listener in self.listeners.read().iter() {
                listener.on_transition(&t, origin.as_ref());
            }
        }
    }

    /// Drops every entry `node` owns (it died); returns the removals made.
    pub(crate) fn remove_node(
        &self,
        node: &str,
        origin_of: impl Fn(&Change) -> Option<Origin>,
    ) -> Vec<Change> {
        let removals = self.view.read().owned_by(node);
        for removal in &removals {
            self.apply(removal.clone(), origin_of(removal));
        }
        removals
    }
}

pub struct ChannelState {
    shared: Arc<Shared>,
    backend: Backend,
}

/// Where this node's writes go (see "Standalone or cluster" in
/// docs/architecture.md).
enum Backend {
    /// Standalone: writes are applied to the view directly.
    Memory,
    /// Cluster: writes are replicated through JetStream KV and applied as
    /// the watch delivers them.
    Nats(kv::KvStore),
}

fn bump<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K, up: bool) -> usize {
    let count = map.entry(key).or_default();
    *count = if up {
        *count + 1
    } else {
        count.saturating_sub(1)
    };
    *count
}

fn drop_zero<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if map.get(key) == Some(&0) {
        map.remove(key);
    }
}

impl ChannelState {
    /// The standalone state: one node, writes applied at once.
    pub fn in_memory() -> Self {
        Self {
            shared: Arc::new(Shared {
                node: "local".into(),
                replica: Replica::default(),
                local: Default::default(),
            }),
            backend: Backend::Memory,
        }
    }

    /// Cluster state replicated through JetStream KV; `node` must be unique
    /// among live nodes. Returns once the existing entries are in the view.
    pub async fn replicated(
        client: async_nats::Client,
        node: &str,
        settings: &kv::KvSettings,
    ) -> Result<Self, StateError> {
        let shared = Arc::new(Shared {
            node: node.to_owned(),
            replica: Replica::default(),
            local: Default::default(),
        });
        let store = kv::KvStore::open(client, settings, shared.clone()).await?;
        Ok(Self {
            shared,
            backend: Backend::Nats(store),
        })
    }

    /// Adds a receiver of transitions (the gateway's fan-out, webhooks);
    /// add them before traffic.
    pub fn add_listener(&self, listener: Arc<dyn Listener>) {
        self.shared.replica.listeners.write().push(listener);
    }

    async fn write(&self, change: Change) {
        match &self.backend {
            Backend::Nats(store) => store.write(&change).await,
            Backend::Memory => self.shared.replica.apply(change, None),
        }
    }

    fn view(&self) -> parking_lot::RwLockReadGuard<'_, View> {
        self.shared.replica.view.read()
    }

    /// Counts one more local subscription to `channel`.
    pub async fn subscribe(&self, app: &str, channel: &str) {
        self.change_subscriptions(app, channel, true).await;
    }

    /// Counts one local subscription less.
    pub async fn unsubscribe(&self, app: &str, channel: &str) {
        self.change_subscriptions(app, channel, false).await;
    }

    async fn change_subscriptions(&self, app: &str, channel: &str, up: bool) {
        let mut local = self.shared.local.lock().await;
        let key = (app.to_owned(), channel.to_owned());
        let count = bump(&mut local.subscriptions, key.clone(), up);
        drop_zero(&mut local.subscriptions, &key);
        let (app, channel) = key;
        self.write(Change::Subscriptions {
            app,
            channel,
            node: self.shared.node.clone(),
            count,
        })
        .await;
    }

    /// Adds one local connection of `user` to a presence channel. The
    /// cluster-wide `member_added` (if this is the user's first connection
    /// anywhere) has been handed to the listener when this returns.
    pub async fn join(
        &self,
        app: &str,
        channel: &str,
        user: &str,
        info: &str,
        max_members: usize,
    ) -> Result<(), JoinError> {
        let mut local = self.shared.local.lock().await;
        let key = (app.to_owned(), channel.to_owned(), user.to_owned());
        if !local.members.contains_key(&key) {
            let view = self.view();
            if !view.has_member(app, channel, user)
                && view.member_count(app, channel) >= max_members
            {
                return Err(JoinError::Full { max: max_members });
            }
        }
        let entry = local
            .members
            .entry(key)
            .or_insert_with(|| (0, info.to_owned()));
        entry.0 += 1;
        if entry.0 == 1 {
            let info = Some(info.to_owned());
            let change = Change::Member {
                app: app.into(),
                channel: channel.into(),
                user: user.into(),
                node: self.shared.node.clone(),
                info,
            };
            self.write(change).await;
        }
        Ok(())
    }

    /// Removes one local connection of `user` from a presence channel.
    pub async fn leave(&self, app: &str, channel: &str, user: &str) {
        let mut local = self.shared.local.lock().await;
        let key = (app.to_owned(), channel.to_owned(), user.to_owned());
        let Some(entry) = local.members.get_mut(&key) else {
            return;
        };
        entry.0 -= 1;
        if entry.0 == 0 {
            local.members.remove(&key);
            let change = Change::Member {
                app: app.into(),
                channel: channel.into(),
                user: user.into(),
                node: self.shared.node.clone(),
                info: None,
            };
            self.write(change).await;
        }
    }

    /// Counts a signed-in local connection of `user`.
    pub async fn user_online(&self, app: &str, user: &str) {
        self.change_online(app, user, true).await;
    }

    pub async fn user_offline(&self, app: &str, user: &str) {
        self.change_online(app, user, false).await;
    }

    async fn change_online(&self, app: &str, user: &str, up: bool) {
        let mut local = self.shared.local.lock().await;
        let key = (app.to_owned(), user.to_owned());
        let count = bump(&mut local.online, key.clone(), up);
        drop_zero(&mut local.online, &key);
        if count == usize::from(up) {
            let change = Change::Online {
                app: app.into(),
                user: user.into(),
                node: self.shared.node.clone(),
                online: up,
            };
            self.write(change).await;
        }
    }

    /// Stores the last event of a cache channel.
    pub async fn set_cache(
        &self,
        app: &str,
        channel: &str,
        event: &str,
        data: &str,
    ) -> Result<(), StateError> {
        let event = CachedEvent {
            event: event.into(),
            data: data.into(),
            stored_ms: unix_millis(),
        };
        let change = Change::Cache {
            app: app.into(),
            channel: channel.into(),
            event: Some(event),
        };
        // Not owned by a node, so nothing would re-assert it: report failures.
        match &self.backend {
            Backend::Nats(store) => store.write_checked(&change).await,
            Backend::Memory => {
                self.shared.replica.apply(change, None);
                Ok(())
            }
        }
    }

    pub fn cache(&self, app: &str, channel: &str) -> Option<CachedEvent> {
        self.view().cache(app, channel, unix_millis(), CACHE_TTL_MS)
    }

    pub fn presence_data(&self, app: &str, channel: &str) -> serde_json::Value {
        self.view().presence_data(app, channel)
    }

    pub fn users(&self, app: &str, channel: &str) -> Vec<String> {
        self.view().users(app, channel)
    }

    pub fn channels(&self, app: &str, prefix: &str) -> Vec<ChannelSummary> {
        self.view().channels(app, prefix)
    }

    pub fn channel(&self, app: &str, name: &str) -> ChannelSummary {
        self.view().summary(app, name)
    }

    /// Per app: occupied channels and presence members, cluster-wide.
    pub fn stats(&self) -> Vec<(String, usize, usize)> {
        self.view().stats()
    }

    pub fn online_among(&self, app: &str, candidates: &[String]) -> Vec<String> {
        self.view().online_among(app, candidates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<Transition>>);
    impl Listener for Recorder {
        fn on_transition(&self, t: &Transition, _: Option<&Origin>) {
            self.0.lock().push(t.clone());
        }
    }

    #[tokio::test]
    async fn local_connections_of_one_user_make_one_member() {
        let state = ChannelState::in_memory();
        let rec = Arc::new(Recorder::default());
        state.add_listener(rec.clone());
        state.join("a", "presence-x", "u1", "{}", 10).await.unwrap();
        state.join("a", "presence-x", "u1", "{}", 10).await.unwrap();
        state.leave("a", "presence-x", "u1").await;
        assert_eq!(state.users("a", "presence-x"), ["u1"]);
        state.leave("a", "presence-x", "u1").await;
        assert!(state.users("a", "presence-x").is_empty());
        let kinds: Vec<_> = rec
            .0
            .lock()
            .iter()
            .map(|t| matches!(t, Transition::MemberAdded { .. }))
            .collect();
        assert_eq!(kinds, [true, false]);
    }

    #[tokio::test]
    async fn member_cap_counts_distinct_users() {
        let state = ChannelState::in_memory();
        state.join("a", "presence-x", "u1", "{}", 1).await.unwrap();
        state.join("a", "presence-x", "u1", "{}", 1).await.unwrap();
        assert_eq!(
            state.join("a", "presence-x", "u2", "{}", 1).await,
            Err(JoinError::Full { max: 1 })
        );
    }

    #[tokio::test]
    async fn counts_subscriptions_and_online_users() {
        let state = ChannelState::in_memory();
        state.subscribe("a", "orders").await;
        state.subscribe("a", "orders").await;
        assert_eq!(state.channel("a", "orders").subscription_count, 2);
        state.unsubscribe("a", "orders").await;
        state.unsubscribe("a", "orders").await;
        assert!(state.channels("a", "").is_empty());
        state.user_online("a", "u").await;
        state.user_online("a", "u").await;
        state.user_offline("a", "u").await;
        assert_eq!(state.online_among("a", &["u".into()]), ["u"]);
        state.user_offline("a", "u").await;
        assert!(state.online_among("a", &["u".into()]).is_empty());
    }
}
