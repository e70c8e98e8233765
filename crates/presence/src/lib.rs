//! Channel occupancy, presence members, cached events and online users.
//!
//! This is the state Pusher defines cluster-wide: `member_added` fires for a
//! user's first connection anywhere, and the HTTP API counts every
//! subscriber. Standalone keeps it in this in-memory [`ChannelState`], shared
//! by the gateway (which writes it as sockets come and go) and the ingest
//! (which answers channel queries from it). It is kept apart from the
//! gateway's socket registry so that a replicated store can take its place
//! in cluster mode without touching fan-out.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// How long a cache channel keeps its last event (Pusher: 30 minutes).
pub const CACHE_TTL: Duration = Duration::from_secs(30 * 60);

#[derive(Default)]
pub struct ChannelState {
    apps: Mutex<HashMap<String, AppState>>,
}

#[derive(Default)]
struct AppState {
    channels: HashMap<String, Channel>,
    /// Signed-in connections per user id.
    online: HashMap<String, usize>,
}

#[derive(Default)]
struct Channel {
    subscriptions: usize,
    /// Ordered so member lists are stable.
    members: BTreeMap<String, Member>,
    cache: Option<CachedEvent>,
}

impl Channel {
    fn is_empty(&self) -> bool {
        self.subscriptions == 0 && self.members.is_empty() && self.cache.is_none()
    }
}

struct Member {
    /// Raw JSON of `user_info` as the member's `channel_data` carried it.
    info: String,
    connections: usize,
}

/// The last event published to a cache channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedEvent {
    pub event: String,
    /// Raw JSON of `data`.
    pub data: String,
    stored: Instant,
}

/// What the HTTP API reports about a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSummary {
    pub name: String,
    pub subscription_count: usize,
    pub user_count: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinError {
    /// The channel already has the maximum number of distinct members.
    Full { max: usize },
}

impl ChannelState {
    fn with_channel<R>(&self, app: &str, channel: &str, f: impl FnOnce(&mut Channel) -> R) -> R {
        let mut apps = self.apps.lock();
        let state = apps.entry(app.to_owned()).or_default();
        let entry = state.channels.entry(channel.to_owned()).or_default();
        let result = f(entry);
        if entry.is_empty() {
            state.channels.remove(channel);
        }
        result
    }

    /// Counts one more subscribed connection; returns the new count.
    pub fn subscribe(&self, app: &str, channel: &str) -> usize {
        self.with_channel(app, channel, |c| {
            c.subscriptions += 1;
            c.subscriptions
        })
    }

    /// Counts one subscribed connection less; returns the new count.
    pub fn unsubscribe(&self, app: &str, channel: &str) -> usize {
        self.with_channel(app, channel, |c| {
            c.subscriptions = c.subscriptions.saturating_sub(1);
            c.subscriptions
        })
    }

    /// Adds one connection of `user_id` to a presence channel. Returns true
    /// when this is the user's first connection there (`member_added`).
    pub fn join(
        &self,
        app: &str,
        channel: &str,
        user_id: &str,
        user_info: &str,
        max_members: usize,
    ) -> Result<bool, JoinError> {
        self.with_channel(app, channel, |c| {
            if let Some(m) = c.members.get_mut(user_id) {
                m.connections += 1;
                return Ok(false);
            }
            if c.members.len() >= max_members {
                return Err(JoinError::Full { max: max_members });
            }
            c.members.insert(
                user_id.to_owned(),
                Member {
                    info: user_info.to_owned(),
                    connections: 1,
                },
            );
            Ok(true)
        })
    }

    /// Removes one connection of `user_id`. Returns true when it was the
    /// user's last one there (`member_removed`).
    pub fn leave(&self, app: &str, channel: &str, user_id: &str) -> bool {
        self.with_channel(app, channel, |c| match c.members.get_mut(user_id) {
            Some(m) if m.connections > 1 => {
                m.connections -= 1;
                false
            }
            Some(_) => {
                c.members.remove(user_id);
                true
            }
            None => false,
        })
    }

    /// The `{ids, hash, count}` object of `pusher_internal:subscription_succeeded`.
    pub fn presence_data(&self, app: &str, channel: &str) -> serde_json::Value {
        let apps = self.apps.lock();
        let members = apps
            .get(app)
            .and_then(|a| a.channels.get(channel))
            .map(|c| &c.members);
        let mut ids = Vec::new();
        let mut hash = serde_json::Map::new();
        for (id, m) in members.into_iter().flatten() {
            ids.push(serde_json::Value::String(id.clone()));
            let info = serde_json::from_str(&m.info).unwrap_or(serde_json::Value::Null);
            hash.insert(id.clone(), info);
        }
        serde_json::json!({ "count": ids.len(), "ids": ids, "hash": hash })
    }

    /// User ids of a presence channel's members.
    pub fn users(&self, app: &str, channel: &str) -> Vec<String> {
        let apps = self.apps.lock();
        apps.get(app)
            .and_then(|a| a.channels.get(channel))
            .map(|c| c.members.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Occupied channels whose name starts with `prefix`, sorted by name.
    pub fn channels(&self, app: &str, prefix: &str) -> Vec<ChannelSummary> {
        let apps = self.apps.lock();
        let mut out: Vec<ChannelSummary> = apps
            .get(app)
            .into_iter()
            .flat_map(|a| a.channels.iter())
            .filter(|(name, c)| c.subscriptions > 0 && name.starts_with(prefix))
            .map(|(name, c)| summary(name, c))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// One channel's counts (zeros when nobody is subscribed).
    pub fn channel(&self, app: &str, name: &str) -> ChannelSummary {
        let apps = self.apps.lock();
        match apps.get(app).and_then(|a| a.channels.get(name)) {
            Some(c) => summary(name, c),
            None => ChannelSummary {
                name: name.to_owned(),
                subscription_count: 0,
                user_count: 0,
            },
        }
    }

    /// Stores the last event of a cache channel.
    pub fn set_cache(&self, app: &str, channel: &str, event: &str, data: &str) {
        self.with_channel(app, channel, |c| {
            c.cache = Some(CachedEvent {
                event: event.to_owned(),
                data: data.to_owned(),
                stored: Instant::now(),
            })
        })
    }

    /// The cached event of a cache channel, if one is younger than [`CACHE_TTL`].
    pub fn cache(&self, app: &str, channel: &str) -> Option<CachedEvent> {
        self.with_channel(app, channel, |c| {
            if c.cache
                .as_ref()
                .is_some_and(|e| e.stored.elapsed() > CACHE_TTL)
            {
                c.cache = None;
            }
            c.cache.clone()
        })
    }

    /// Counts a signed-in connection of `user_id`; true when the user just came online.
    pub fn user_online(&self, app: &str, user_id: &str) -> bool {
        let mut apps = self.apps.lock();
        let count = apps
            .entry(app.to_owned())
            .or_default()
            .online
            .entry(user_id.to_owned())
            .or_default();
        *count += 1;
        *count == 1
    }

    /// Counts a signed-in connection less; true when the user just went offline.
    pub fn user_offline(&self, app: &str, user_id: &str) -> bool {
        let mut apps = self.apps.lock();
        let Some(online) = apps.get_mut(app).map(|a| &mut a.online) else {
            return false;
        };
        match online.get_mut(user_id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                online.remove(user_id);
                true
            }
            None => false,
        }
    }

    /// The users of `candidates` that are online.
    pub fn online_among(&self, app: &str, candidates: &[String]) -> Vec<String> {
        let apps = self.apps.lock();
        let Some(state) = apps.get(app) else {
            return Vec::new();
        };
        candidates
            .iter()
            .filter(|u| state.online.contains_key(*u))
            .cloned()
            .collect()
    }
}

fn summary(name: &str, c: &Channel) -> ChannelSummary {
    ChannelSummary {
        name: name.to_owned(),
        subscription_count: c.subscriptions,
        user_count: c.members.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_added_on_first_and_removed_on_last_connection() {
        let s = ChannelState::default();
        assert_eq!(s.join("a", "presence-x", "u1", r#"{"n":1}"#, 10), Ok(true));
        assert_eq!(s.join("a", "presence-x", "u1", r#"{"n":1}"#, 10), Ok(false));
        assert_eq!(s.join("a", "presence-x", "u2", "null", 10), Ok(true));
        let p = s.presence_data("a", "presence-x");
        assert_eq!(p["count"], 2);
        assert_eq!(p["hash"]["u1"]["n"], 1);
        assert!(!s.leave("a", "presence-x", "u1"));
        assert!(s.leave("a", "presence-x", "u1"));
        assert!(!s.leave("a", "presence-x", "u1"));
        assert_eq!(s.users("a", "presence-x"), vec!["u2".to_string()]);
    }

    #[test]
    fn member_cap_counts_distinct_users() {
        let s = ChannelState::default();
        assert_eq!(s.join("a", "presence-x", "u1", "{}", 1), Ok(true));
        assert_eq!(s.join("a", "presence-x", "u1", "{}", 1), Ok(false));
        assert_eq!(
            s.join("a", "presence-x", "u2", "{}", 1),
            Err(JoinError::Full { max: 1 })
        );
    }

    #[test]
    fn occupancy_and_listing() {
        let s = ChannelState::default();
        assert_eq!(s.subscribe("a", "presence-x"), 1);
        assert_eq!(s.subscribe("a", "orders"), 1);
        assert_eq!(s.subscribe("a", "orders"), 2);
        assert_eq!(s.subscribe("b", "orders"), 1);
        let names: Vec<_> = s.channels("a", "").into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["orders", "presence-x"]);
        assert_eq!(s.channels("a", "presence-").len(), 1);
        assert_eq!(s.unsubscribe("a", "orders"), 1);
        assert_eq!(s.unsubscribe("a", "orders"), 0);
        assert_eq!(s.channel("a", "orders").subscription_count, 0);
        assert_eq!(s.channels("a", "").len(), 1);
    }

    #[test]
    fn cache_outlives_subscribers() {
        let s = ChannelState::default();
        assert_eq!(s.cache("a", "cache-x"), None);
        s.set_cache("a", "cache-x", "e", r#""1""#);
        s.subscribe("a", "cache-x");
        s.unsubscribe("a", "cache-x");
        assert_eq!(s.cache("a", "cache-x").unwrap().data, r#""1""#);
        assert!(s.channels("a", "").is_empty());
    }

    #[test]
    fn online_users() {
        let s = ChannelState::default();
        assert!(s.user_online("a", "u1"));
        assert!(!s.user_online("a", "u1"));
        assert_eq!(
            s.online_among("a", &["u1".into(), "u2".into()]),
            vec!["u1".to_string()]
        );
        assert!(!s.user_offline("a", "u1"));
        assert!(s.user_offline("a", "u1"));
        assert!(s.online_among("a", &["u1".into()]).is_empty());
    }
}
