//! The replicated view of channel state, and the transitions it produces.
//!
//! Every entry is owned by one node (the gateway holding the connections):
//! a node's subscription count per channel, a user's presence on a channel
//! through that node, a user's signed-in presence on that node. Folding the
//! same ordered stream of [`Change`]s gives every node the same [`View`], and
//! the [`Transition`]s that fall out (a user's first node joins, the last one
//! leaves) are therefore the same on every node: each node tells its own
//! sockets, and every socket in the cluster hears each transition once.

use herald_config::AppConfig;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// The last event of a cache channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedEvent {
    pub event: String,
    /// Raw JSON of `data`.
    pub data: String,
    /// Unix milliseconds when it was stored.
    pub stored_ms: u64,
}

/// One entry written or removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `node` holds `count` subscriptions to the channel (0: none).
    Subscriptions {
        app: String,
        channel: String,
        node: String,
        count: usize,
    },
    /// `user` is on a presence channel through `node` with `info` (None: left).
    Member {
        app: String,
        channel: String,
        user: String,
        node: String,
        info: Option<String>,
    },
    /// `user` is signed in on `node` (watchlists).
    Online {
        app: String,
        user: String,
        node: String,
        online: bool,
    },
    /// A cache channel's last event (None: expired or removed).
    Cache {
        app: String,
        channel: String,
        event: Option<CachedEvent>,
    },
}

/// A cluster-wide change that subscribers are told about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    MemberAdded {
        app: String,
        channel: String,
        user: String,
        info: String,
    },
    MemberRemoved {
        app: String,
        channel: String,
        user: String,
    },
    SubscriptionCount {
        app: String,
        channel: String,
        /// The count before this change (0: the channel became occupied).
        previous: usize,
        count: usize,
    },
    UserOnline {
        app: String,
        user: String,
    },
    UserOffline {
        app: String,
        user: String,
    },
}

#[derive(Default, Debug)]
struct ChannelView {
    subscriptions: HashMap<String, usize>,
    /// user -> node -> user_info; ordered so member lists are stable.
    members: BTreeMap<String, HashMap<String, String>>,
    /// (user, node) entries that arrived when the channel was full: not
    /// members, but still entries their node owns and must remove.
    refused: HashSet<(String, String)>,
    cache: Option<CachedEvent>,
}

impl ChannelView {
    fn subscription_count(&self) -> usize {
        self.subscriptions.values().sum()
    }

    fn is_empty(&self) -> bool {
        self.subscriptions.is_empty()
            && self.members.is_empty()
            && self.refused.is_empty()
            && self.cache.is_none()
    }
}

#[derive(Default, Debug)]
struct AppView {
    channels: HashMap<String, ChannelView>,
    online: HashMap<String, HashSet<String>>,
}

/// Whether a user is online anywhere in the cluster (see [`View::user_status`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserStatus {
    pub signed_in: bool,
    pub presence_channels: Vec<String>,
}

impl UserStatus {
    /// Online: signed in, or a member of some presence channel.
    pub fn online(&self) -> bool {
        self.signed_in || !self.presence_channels.is_empty()
    }
}

/// What the HTTP API reports about a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSummary {
    pub name: String,
    pub subscription_count: usize,
    pub user_count: usize,
}

#[derive(Default, Debug)]
pub struct View {
    apps: HashMap<String, AppView>,
    /// A member entry for a new user of a channel that already has its
    /// app's cap of members is refused. Every node folds the same stream
    /// with the same caps, so every node refuses the same entry.
    member_caps: MemberCaps,
}

/// Which member ids [`View::users_page`] lists: up to `limit` after `after`.
#[derive(Debug, Clone, Copy)]
pub struct Page<'a> {
    pub after: Option<&'a str>,
    pub limit: usize,
}

/// How many members each presence channel admits, from the apps' shared
/// config: `max_presence_members`, or `max_large_presence_members` on a
/// large presence channel. No cap for apps not named.
#[derive(Default, Debug, Clone)]
pub struct MemberCaps(HashMap<String, Arc<AppConfig>>);

impl MemberCaps {
    pub fn new<'a>(apps: impl IntoIterator<Item = &'a Arc<AppConfig>>) -> Self {
        Self(
            apps.into_iter()
                .map(|a| (a.id.clone(), a.clone()))
                .collect(),
        )
    }

    pub fn cap(&self, app: &str, channel: &str) -> usize {
        self.0
            .get(app)
            .map_or(usize::MAX, |a| a.member_cap(channel))
    }
}

impl View {
    /// An empty view that admits at most `member_caps` members per presence channel.
    pub fn with_member_caps(member_caps: MemberCaps) -> Self {
        Self {
            apps: HashMap::new(),
            member_caps,
        }
    }

    fn channel(&self, app: &str, channel: &str) -> Option<&ChannelView> {
        self.apps.get(app)?.channels.get(channel)
    }

    /// Applies one change; returns the transition it caused, if any.
    pub fn apply(&mut self, change: Change) -> Option<Transition> {
        match change {
            Change::Subscriptions {
                app,
                channel,
                node,
                count,
            } => self.apply_subscriptions(app, channel, node, count),
            Change::Member {
                app,
                channel,
                user,
                node,
                info,
            } => self.apply_member(app, channel, user, node, info),
            Change::Online {
                app,
                user,
                node,
                online,
            } => self.apply_online(app, user, node, online),
            Change::Cache {
                app,
                channel,
                event,
            } => {
                self.apply_cache(app, channel, event);
                None
            }
        }
    }

    /// A node's subscription count for a channel (0: none).
    fn apply_subscriptions(
        &mut self,
        app: String,
        channel: String,
        node: String,
        count: usize,
    ) -> Option<Transition> {
        let app_view = self.apps.entry(app.clone()).or_default();
        let entry = app_view.channels.entry(channel.clone()).or_default();
        let before = entry.subscription_count();
        if count == 0 {
            entry.subscriptions.remove(&node);
        } else {
            entry.subscriptions.insert(node, count);
        }
        let after = entry.subscription_count();
        if entry.is_empty() {
            app_view.channels.remove(&channel);
        }
        (before != after).then_some(Transition::SubscriptionCount {
            app,
            channel,
            previous: before,
            count: after,
        })
    }

    /// A node's connection of a presence member (`info` None: gone).
    fn apply_member(
        &mut self,
        app: String,
        channel: String,
        user: String,
        node: String,
        info: Option<String>,
    ) -> Option<Transition> {
        let cap = self.member_caps.cap(&app, &channel);
        let app_view = self.apps.entry(app.clone()).or_default();
        let entry = app_view.channels.entry(channel.clone()).or_default();
        let transition = match info {
            Some(_) if !entry.members.contains_key(&user) && entry.members.len() >= cap => {
                entry.refused.insert((user, node));
                None
            }
            Some(info) => {
                let nodes = entry.members.entry(user.clone()).or_default();
                let first = nodes.is_empty();
                nodes.insert(node, info.clone());
                first.then_some(Transition::MemberAdded {
                    app,
                    channel: channel.clone(),
                    user,
                    info,
                })
            }
            None => {
                entry.refused.remove(&(user.clone(), node.clone()));
                let removed = entry
                    .members
                    .get_mut(&user)
                    .is_some_and(|nodes| nodes.remove(&node).is_some() && nodes.is_empty());
                removed.then(|| {
                    entry.members.remove(&user);
                    Transition::MemberRemoved {
                        app,
                        channel: channel.clone(),
                        user,
                    }
                })
            }
        };
        if entry.is_empty() {
            app_view.channels.remove(&channel);
        }
        transition
    }

    /// Whether a user is signed in on a node.
    fn apply_online(
        &mut self,
        app: String,
        user: String,
        node: String,
        online: bool,
    ) -> Option<Transition> {
        let app_view = self.apps.entry(app.clone()).or_default();
        if online {
            let nodes = app_view.online.entry(user.clone()).or_default();
            let first = nodes.is_empty();
            nodes.insert(node);
            first.then_some(Transition::UserOnline { app, user })
        } else {
            let removed = app_view
                .online
                .get_mut(&user)
                .is_some_and(|nodes| nodes.remove(&node) && nodes.is_empty());
            removed.then(|| {
                app_view.online.remove(&user);
                Transition::UserOffline { app, user }
            })
        }
    }

    /// A cache channel's last event (None: expired or gone).
    fn apply_cache(&mut self, app: String, channel: String, event: Option<CachedEvent>) {
        let app_view = self.apps.entry(app).or_default();
        let entry = app_view.channels.entry(channel.clone()).or_default();
        entry.cache = event;
        if entry.is_empty() {
            app_view.channels.remove(&channel);
        }
    }

    /// The changes that would remove every entry `node` owns.
    pub fn owned_by(&self, node: &str) -> Vec<Change> {
        let mut out = Vec::new();
        for (app, app_view) in &self.apps {
            for (channel, c) in &app_view.channels {
                if c.subscriptions.contains_key(node) {
                    out.push(Change::Subscriptions {
                        app: app.clone(),
                        channel: channel.clone(),
                        node: node.into(),
                        count: 0,
                    });
                }
                let refused = c.refused.iter().filter(|(_, n)| n == node).map(|(u, _)| u);
                for user in c
                    .members
                    .iter()
                    .filter(|(_, nodes)| nodes.contains_key(node))
                    .map(|(user, _)| user)
                    .chain(refused)
                {
                    out.push(Change::Member {
                        app: app.clone(),
                        channel: channel.clone(),
                        user: user.clone(),
                        node: node.into(),
                        info: None,
                    });
                }
            }
            for (user, nodes) in &app_view.online {
                if nodes.contains(node) {
                    out.push(Change::Online {
                        app: app.clone(),
                        user: user.clone(),
                        node: node.into(),
                        online: false,
                    });
                }
            }
        }
        out
    }

    /// Every node that owns at least one entry.
    pub fn nodes(&self) -> HashSet<String> {
        let mut out = HashSet::new();
        for app_view in self.apps.values() {
            for c in app_view.channels.values() {
                out.extend(c.subscriptions.keys().cloned());
                out.extend(c.members.values().flat_map(|n| n.keys().cloned()));
                out.extend(c.refused.iter().map(|(_, node)| node.clone()));
            }
            out.extend(app_view.online.values().flatten().cloned());
        }
        out
    }

    /// Per app: occupied channels and presence members (summed over channels).
    pub fn stats(&self) -> Vec<(String, usize, usize)> {
        self.apps
            .iter()
            .map(|(app, a)| {
                let occupied = a
                    .channels
                    .values()
                    .filter(|c| c.subscription_count() > 0)
                    .count();
                let members = a.channels.values().map(|c| c.members.len()).sum();
                (app.clone(), occupied, members)
            })
            .collect()
    }

    pub fn has_member(&self, app: &str, channel: &str, user: &str) -> bool {
        self.channel(app, channel)
            .is_some_and(|c| c.members.contains_key(user))
    }

    /// `node`'s replicated subscription count for a channel.
    pub fn node_subscriptions(&self, app: &str, channel: &str, node: &str) -> usize {
        self.channel(app, channel)
            .and_then(|c| c.subscriptions.get(node).copied())
            .unwrap_or(0)
    }

    /// How many members the presence `channel` admits (see [`MemberCaps`]).
    pub fn member_cap(&self, app: &str, channel: &str) -> usize {
        self.member_caps.cap(app, channel)
    }

    pub fn member_count(&self, app: &str, channel: &str) -> usize {
        self.channel(app, channel).map_or(0, |c| c.members.len())
    }

    /// The `{ids, hash, count}` object of `pusher_internal:subscription_succeeded`.
    pub fn presence_data(&self, app: &str, channel: &str) -> serde_json::Value {
        let mut ids = Vec::new();
        let mut hash = serde_json::Map::new();
        for (id, nodes) in self
            .channel(app, channel)
            .into_iter()
            .flat_map(|c| &c.members)
        {
            ids.push(serde_json::Value::String(id.clone()));
            // Any node's copy will do: every connection of a user signs the same info.
            let info = nodes.values().next().map(String::as_str).unwrap_or("null");
            hash.insert(
                id.clone(),
                serde_json::from_str(info).unwrap_or(serde_json::Value::Null),
            );
        }
        serde_json::json!({ "count": ids.len(), "ids": ids, "hash": hash })
    }

    /// A page of a presence channel's member ids, in id order, and whether
    /// more follow.
    pub fn users_page(&self, app: &str, channel: &str, page: Page<'_>) -> (Vec<String>, bool) {
        use std::ops::Bound;
        let Some(members) = self.channel(app, channel).map(|c| &c.members) else {
            return (Vec::new(), false);
        };
        let start = page
            .after
            .map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_owned()));
        let mut ids = members.range((start, Bound::Unbounded)).map(|(id, _)| id);
        let ids_of_page: Vec<String> = ids.by_ref().take(page.limit).cloned().collect();
        (ids_of_page, ids.next().is_some())
    }

    /// User ids of a presence channel's members.
    pub fn users(&self, app: &str, channel: &str) -> Vec<String> {
        self.channel(app, channel)
            .map(|c| c.members.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Occupied channels whose name starts with `prefix`, sorted by name.
    pub fn channels(&self, app: &str, prefix: &str) -> Vec<ChannelSummary> {
        let mut out: Vec<ChannelSummary> = self
            .apps
            .get(app)
            .into_iter()
            .flat_map(|a| a.channels.iter())
            .filter(|(name, c)| c.subscription_count() > 0 && name.starts_with(prefix))
            .map(|(name, c)| summary(name, c))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// One channel's counts (zeros when nobody is subscribed).
    pub fn summary(&self, app: &str, name: &str) -> ChannelSummary {
        match self.channel(app, name) {
            Some(c) => summary(name, c),
            None => ChannelSummary {
                name: name.to_owned(),
                subscription_count: 0,
                user_count: 0,
            },
        }
    }

    /// The cached event of a cache channel if it is younger than `ttl_ms`.
    pub fn cache(&self, app: &str, channel: &str, now_ms: u64, ttl_ms: u64) -> Option<CachedEvent> {
        self.channel(app, channel)?
            .cache
            .clone()
            .filter(|c| now_ms.saturating_sub(c.stored_ms) <= ttl_ms)
    }

    /// Where a user is online in the cluster: signed in on some connection,
    /// and the presence channels it is a member of (sorted).
    pub fn user_status(&self, app: &str, user: &str) -> UserStatus {
        let Some(state) = self.apps.get(app) else {
            return UserStatus::default();
        };
        let mut presence_channels: Vec<String> = state
            .channels
            .iter()
            .filter(|(_, c)| c.members.contains_key(user))
            .map(|(name, _)| name.clone())
            .collect();
        presence_channels.sort();
        UserStatus {
            signed_in: state.online.contains_key(user),
            presence_channels,
        }
    }

    /// The users of `candidates` that are signed in somewhere.
    pub fn online_among(&self, app: &str, candidates: &[String]) -> Vec<String> {
        let Some(state) = self.apps.get(app) else {
            return Vec::new();
        };
        candidates
            .iter()
            .filter(|u| state.online.contains_key(*u))
            .cloned()
            .collect()
    }
}

fn summary(name: &str, c: &ChannelView) -> ChannelSummary {
    ChannelSummary {
        name: name.to_owned(),
        subscription_count: c.subscription_count(),
        user_count: c.members.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(user: &str, node: &str, info: Option<&str>) -> Change {
        Change::Member {
            app: "a".into(),
            channel: "presence-x".into(),
            user: user.into(),
            node: node.into(),
            info: info.map(Into::into),
        }
    }

    #[test]
    fn a_member_is_added_on_its_first_node_and_removed_on_its_last() {
        let mut v = View::default();
        assert!(matches!(
            v.apply(member("u1", "n1", Some(r#"{"n":1}"#))),
            Some(Transition::MemberAdded { .. })
        ));
        assert_eq!(v.apply(member("u1", "n2", Some(r#"{"n":1}"#))), None);
        assert!(matches!(
            v.apply(member("u2", "n2", Some("null"))),
            Some(Transition::MemberAdded { .. })
        ));
        let p = v.presence_data("a", "presence-x");
        assert_eq!(p["count"], 2);
        assert_eq!(p["hash"]["u1"]["n"], 1);
        assert_eq!(v.apply(member("u1", "n1", None)), None);
        assert!(matches!(
            v.apply(member("u1", "n2", None)),
            Some(Transition::MemberRemoved { .. })
        ));
        // A repeated removal changes nothing.
        assert_eq!(v.apply(member("u1", "n2", None)), None);
        assert_eq!(v.users("a", "presence-x"), vec!["u2".to_string()]);
    }

    #[test]
    fn removing_a_node_removes_exactly_its_entries() {
        let mut v = View::default();
        v.apply(member("u1", "n1", Some("{}")));
        v.apply(member("u1", "n2", Some("{}")));
        v.apply(member("u2", "n2", Some("{}")));
        v.apply(Change::Subscriptions {
            app: "a".into(),
            channel: "orders".into(),
            node: "n2".into(),
            count: 4,
        });
        v.apply(Change::Online {
            app: "a".into(),
            user: "u2".into(),
            node: "n2".into(),
            online: true,
        });
        assert_eq!(v.nodes().len(), 2);
        let removal = v.owned_by("n2");
        assert_eq!(removal.len(), 4);
        let transitions: Vec<_> = removal.into_iter().filter_map(|c| v.apply(c)).collect();
        // u1 is still on n1: only u2 leaves, goes offline, and the count drops.
        assert_eq!(transitions.len(), 3);
        assert!(transitions.contains(&Transition::MemberRemoved {
            app: "a".into(),
            channel: "presence-x".into(),
            user: "u2".into()
        }));
        assert_eq!(v.users("a", "presence-x"), ["u1"]);
        assert!(v.owned_by("n2").is_empty());
        assert_eq!(v.nodes().len(), 1);
    }

    #[test]
    fn subscription_counts_sum_over_nodes() {
        let mut v = View::default();
        let subs = |node: &str, count| Change::Subscriptions {
            app: "a".into(),
            channel: "orders".into(),
            node: node.into(),
            count,
        };
        assert!(matches!(
            v.apply(subs("n1", 2)),
            Some(Transition::SubscriptionCount { count: 2, .. })
        ));
        assert!(matches!(
            v.apply(subs("n2", 1)),
            Some(Transition::SubscriptionCount { count: 3, .. })
        ));
        assert_eq!(v.apply(subs("n2", 1)), None);
        assert_eq!(v.summary("a", "orders").subscription_count, 3);
        assert_eq!(v.channels("a", "ord").len(), 1);
        v.apply(subs("n1", 0));
        v.apply(subs("n2", 0));
        assert!(v.channels("a", "").is_empty());
    }

    #[test]
    fn cache_outlives_subscribers_until_its_ttl() {
        let mut v = View::default();
        let event = CachedEvent {
            event: "e".into(),
            data: "1".into(),
            stored_ms: 1000,
        };
        v.apply(Change::Cache {
            app: "a".into(),
            channel: "cache-x".into(),
            event: Some(event.clone()),
        });
        assert_eq!(v.cache("a", "cache-x", 2000, 5000), Some(event));
        assert_eq!(v.cache("a", "cache-x", 7000, 5000), None);
        assert!(v.channels("a", "").is_empty());
    }

    #[test]
    fn users_are_online_while_signed_in_on_any_node() {
        let mut v = View::default();
        let online = |node: &str, on| Change::Online {
            app: "a".into(),
            user: "u".into(),
            node: node.into(),
            online: on,
        };
        assert!(matches!(
            v.apply(online("n1", true)),
            Some(Transition::UserOnline { .. })
        ));
        assert_eq!(v.apply(online("n2", true)), None);
        assert_eq!(
            v.online_among("a", &["u".into(), "v".into()]),
            vec!["u".to_string()]
        );
        assert_eq!(v.apply(online("n1", false)), None);
        assert!(matches!(
            v.apply(online("n2", false)),
            Some(Transition::UserOffline { .. })
        ));
    }

    #[test]
    fn a_full_channel_refuses_new_members_in_stream_order_on_every_node() {
        let mut app = AppConfig::new("a", "k", "s");
        app.max_presence_members = 1;
        let mut v = View::with_member_caps(MemberCaps::new([&Arc::new(app)]));
        assert!(v.apply(member("u1", "n1", Some("{}"))).is_some());
        // Another node's join of a second user lost the race: refused everywhere.
        assert_eq!(v.apply(member("u2", "n2", Some("{}"))), None);
        assert_eq!(v.users("a", "presence-x"), ["u1"]);
        // The same user through another node is not a new member.
        assert_eq!(v.apply(member("u1", "n2", Some("{}"))), None);
        // The refused entry is still n2's to remove, and removing it tells nobody.
        assert!(v.owned_by("n2").contains(&member("u2", "n2", None)));
        assert_eq!(v.apply(member("u2", "n2", None)), None);
        assert!(!v.owned_by("n2").contains(&member("u2", "n2", None)));
    }

    #[test]
    fn a_large_presence_channel_has_its_own_cap() {
        let mut app = AppConfig::new("a", "k", "s");
        app.max_presence_members = 1;
        app.large_presence_prefixes = vec!["presence-crowd".into()];
        app.max_large_presence_members = 3;
        let mut v = View::with_member_caps(MemberCaps::new([&Arc::new(app)]));
        let crowd = |user: &str| Change::Member {
            app: "a".into(),
            channel: "presence-crowd-1".into(),
            user: user.into(),
            node: "n1".into(),
            info: Some("{}".into()),
        };
        for user in ["u1", "u2", "u3"] {
            assert!(v.apply(crowd(user)).is_some(), "{user} admitted");
        }
        assert_eq!(v.apply(crowd("u4")), None, "the fourth is refused");
        assert_eq!(v.member_count("a", "presence-crowd-1"), 3);
        assert!(v.apply(member("u1", "n1", Some("{}"))).is_some());
        assert_eq!(
            v.apply(member("u2", "n1", Some("{}"))),
            None,
            "other channels keep max_presence_members"
        );
    }
}
