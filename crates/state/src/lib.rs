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
mod local;
mod metrics;
pub mod view;

pub use metrics::{ChannelGauges, KvMetrics};

pub use error::StateError;
use herald_protocol::unix_millis;
use local::{Entry, Local};
use parking_lot::RwLock;
use std::sync::Arc;
pub use view::{
    CachedEvent, Change, ChannelSummary, MemberCaps, Page, Transition, UserStatus, View,
};

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

/// How long a first presence join waits for the member to be replicated
/// before it is answered from this node's view (see [`ChannelState::join`]).
pub const JOIN_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

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

/// What the state front and the store's background tasks share.
pub(crate) struct Shared {
    pub(crate) node: String,
    pub(crate) replica: Replica,
    /// This node's own counts. Never held across an await: writes to the
    /// store are ordered per entry by the writer (`kv`), not by this lock.
    pub(crate) local: parking_lot::Mutex<Local>,
}

/// The shared view plus where transitions go.
pub(crate) struct Replica {
    view: RwLock<View>,
    listeners: RwLock<Vec<Arc<dyn Listener>>>,
}

impl Replica {
    fn new(member_caps: MemberCaps) -> Self {
        Self {
            view: RwLock::new(View::with_member_caps(member_caps)),
            listeners: RwLock::default(),
        }
    }

    /// Applies a change and tells the listeners its transition **while the
    /// view is still write-locked**: a reader that takes a snapshot and
    /// sends it under the read lock ([`ChannelState::with_presence_data`])
    /// then sees every transition either in its snapshot or after it, never
    /// a transition before a snapshot that lacks it. Listeners must not read
    /// the state.
    pub(crate) fn apply(&self, change: Change, origin: Option<Origin>) {
        let mut view = self.view.write();
        if let Some(t) = view.apply(change) {
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

impl ChannelState {
    /// The standalone state: one node, writes applied at once.
    /// `member_caps`: `max_presence_members` per app (see [`View::with_member_caps`]).
    pub fn in_memory(member_caps: MemberCaps) -> Self {
        Self {
            shared: Arc::new(Shared {
                node: "local".into(),
                replica: Replica::new(member_caps),
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
        member_caps: MemberCaps,
    ) -> Result<Self, StateError> {
        let shared = Arc::new(Shared {
            node: node.to_owned(),
            replica: Replica::new(member_caps),
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

    fn view(&self) -> parking_lot::RwLockReadGuard<'_, View> {
        self.shared.replica.view.read()
    }

    /// Publishes `entry` as this node holds it now: in memory at once (under
    /// the lock, so the view sees this node's changes in order), in the
    /// cluster through the writer, coalesced unless `urgent`.
    fn publish(&self, local: &Local, entry: Entry, urgent: bool) {
        match &self.backend {
            Backend::Memory => {
                let change = local.current(&entry, &self.shared.node);
                self.shared.replica.apply(change, None);
            }
            Backend::Nats(store) => store.mark(entry, urgent),
        }
    }

    /// Counts one more local subscription to `channel`. Never waits: the
    /// cluster hears at once that this node holds the channel, and the
    /// count itself within `COUNT_INTERVAL`.
    pub fn subscribe(&self, app: &str, channel: &str) {
        self.change_subscriptions(app, channel, true);
    }

    /// Counts one local subscription less.
    pub fn unsubscribe(&self, app: &str, channel: &str) {
        self.change_subscriptions(app, channel, false);
    }

    fn change_subscriptions(&self, app: &str, channel: &str, up: bool) {
        let mut local = self.shared.local.lock();
        let count = local.subscriptions(app, channel, up);
        // This node starting or stopping to hold the channel is news now.
        let urgent = count == usize::from(up);
        let entry = Entry::Subscriptions {
            app: app.into(),
            channel: channel.into(),
        };
        self.publish(&local, entry, urgent);
    }

    /// The channel's subscription count with this node's own share exact
    /// (the replicated shares of other nodes may lag by `COUNT_INTERVAL`
    /// plus replication).
    pub fn subscription_count(&self, app: &str, channel: &str) -> usize {
        let mine = self.shared.local.lock().subscription_count(app, channel);
        let view = self.view();
        let replicated_mine = view.node_subscriptions(app, channel, &self.shared.node);
        view.summary(app, channel).subscription_count - replicated_mine + mine
    }

    /// Adds one local connection of `user` to a presence channel. On the
    /// user's first connection here it waits, at most [`JOIN_WAIT`], until
    /// the member is in this node's view of the cluster: the others have
    /// then been told `member_added`, and the channel's cluster-wide cap
    /// ([`MemberCaps`]) has admitted or refused the user (members are
    /// admitted in the order the store records them, the same on every node). When the store does not
    /// answer in time (a NATS stall) the join is answered from this node's
    /// view and the member is replicated when NATS is back.
    pub async fn join(
        &self,
        app: &str,
        channel: &str,
        user: &str,
        info: &str,
    ) -> Result<(), JoinError> {
        let entry = Entry::Member {
            app: app.into(),
            channel: channel.into(),
            user: user.into(),
        };
        let applied = {
            let mut local = self.shared.local.lock();
            if !local.has_member(app, channel, user) {
                let view = self.view();
                let max = view.member_cap(app, channel);
                if !view.has_member(app, channel, user) && view.member_count(app, channel) >= max {
                    return Err(JoinError::Full { max });
                }
            }
            if !local.join(app, channel, user, info) {
                return Ok(());
            }
            match &self.backend {
                Backend::Memory => {
                    self.publish(&local, entry.clone(), true);
                    None
                }
                Backend::Nats(store) => Some(store.mark_and_wait(entry.clone())),
            }
        };
        if let Some(applied) = applied {
            // Not applied in time, or the write failed (NATS down, bucket
            // gone): the re-assert writes it later; answer from this view.
            let in_view = tokio::time::timeout(JOIN_WAIT, applied).await;
            if !matches!(in_view, Ok(Ok(()))) {
                tracing::debug!(
                    app,
                    channel,
                    user,
                    "presence join answered before replication"
                );
                return Ok(());
            }
        }
        self.admitted(&entry)
    }

    /// After a first join was applied: whether the cluster-wide cap let the
    /// member in. A refused member is forgotten here and its entry removed.
    fn admitted(&self, entry: &Entry) -> Result<(), JoinError> {
        let Entry::Member { app, channel, user } = entry else {
            return Ok(());
        };
        let view = self.view();
        if view.has_member(app, channel, user) {
            return Ok(());
        }
        let max = view.member_cap(app, channel);
        drop(view);
        let mut local = self.shared.local.lock();
        local.forget_member(app, channel, user);
        self.publish(&local, entry.clone(), true);
        Err(JoinError::Full { max })
    }

    /// Removes one local connection of `user` from a presence channel.
    pub fn leave(&self, app: &str, channel: &str, user: &str) {
        let mut local = self.shared.local.lock();
        if local.leave(app, channel, user) {
            let entry = Entry::Member {
                app: app.into(),
                channel: channel.into(),
                user: user.into(),
            };
            self.publish(&local, entry, true);
        }
    }

    /// Counts a signed-in local connection of `user`.
    pub fn user_online(&self, app: &str, user: &str) {
        self.change_online(app, user, true);
    }

    pub fn user_offline(&self, app: &str, user: &str) {
        self.change_online(app, user, false);
    }

    fn change_online(&self, app: &str, user: &str, up: bool) {
        let mut local = self.shared.local.lock();
        if local.online(app, user, up) == usize::from(up) {
            let entry = Entry::Online {
                app: app.into(),
                user: user.into(),
            };
            self.publish(&local, entry, true);
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

    /// Runs `send` with the channel's member list while no transition can be
    /// told: whatever `send` queues lands after every `member_added` and
    /// `member_removed` the list reflects, and before any it does not.
    pub fn with_presence_data<R>(
        &self,
        app: &str,
        channel: &str,
        send: impl FnOnce(serde_json::Value) -> R,
    ) -> R {
        let view = self.view();
        send(view.presence_data(app, channel))
    }

    pub fn users(&self, app: &str, channel: &str) -> Vec<String> {
        self.view().users(app, channel)
    }

    /// A page of a presence channel's user ids (see [`View::users_page`]).
    pub fn users_page(&self, app: &str, channel: &str, page: Page<'_>) -> (Vec<String>, bool) {
        self.view().users_page(app, channel, page)
    }

    /// Members of a presence channel, cluster-wide.
    pub fn member_count(&self, app: &str, channel: &str) -> usize {
        self.view().member_count(app, channel)
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

    pub fn user_status(&self, app: &str, user: &str) -> UserStatus {
        self.view().user_status(app, user)
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
        let state = ChannelState::in_memory(MemberCaps::default());
        let rec = Arc::new(Recorder::default());
        state.add_listener(rec.clone());
        state.join("a", "presence-x", "u1", "{}").await.unwrap();
        state.join("a", "presence-x", "u1", "{}").await.unwrap();
        state.leave("a", "presence-x", "u1");
        assert_eq!(state.users("a", "presence-x"), ["u1"]);
        state.leave("a", "presence-x", "u1");
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
        let mut app = herald_config::AppConfig::new("a", "k", "s");
        app.max_presence_members = 1;
        let state = ChannelState::in_memory(MemberCaps::new([&Arc::new(app)]));
        state.join("a", "presence-x", "u1", "{}").await.unwrap();
        state.join("a", "presence-x", "u1", "{}").await.unwrap();
        assert_eq!(
            state.join("a", "presence-x", "u2", "{}").await,
            Err(JoinError::Full { max: 1 })
        );
    }

    #[tokio::test]
    async fn counts_subscriptions_and_online_users() {
        let state = ChannelState::in_memory(MemberCaps::default());
        state.subscribe("a", "orders");
        state.subscribe("a", "orders");
        assert_eq!(state.channel("a", "orders").subscription_count, 2);
        state.unsubscribe("a", "orders");
        state.unsubscribe("a", "orders");
        assert!(state.channels("a", "").is_empty());
        state.user_online("a", "u");
        state.user_online("a", "u");
        state.user_offline("a", "u");
        assert_eq!(state.online_among("a", &["u".into()]), ["u"]);
        state.user_offline("a", "u");
        assert!(state.online_among("a", &["u".into()]).is_empty());
    }
}
