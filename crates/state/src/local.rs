//! This node's own reference counts: the truth about the entries it owns.
//!
//! Only the first and last of each count matter to the cluster (a channel
//! this node occupies or leaves, a member or signed-in user it adds or
//! removes); counts in between are published coalesced. The replicated
//! store is always written from these counts as they are at the moment of
//! the write ([`Local::current`]), never from a queued change, so a write
//! that was delayed or retried can only ever make the store more current.

use crate::Change;
use std::collections::HashMap;

/// One entry this node owns in the replicated state: its key without the
/// node. Writes are ordered per entry, never per node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Entry {
    Subscriptions {
        app: String,
        channel: String,
    },
    Member {
        app: String,
        channel: String,
        user: String,
    },
    Online {
        app: String,
        user: String,
    },
}

impl Entry {
    /// The entry a node-owned change writes (None for cache entries).
    pub(crate) fn of(change: &Change) -> Option<Self> {
        Some(match change {
            Change::Subscriptions { app, channel, .. } => Self::Subscriptions {
                app: app.clone(),
                channel: channel.clone(),
            },
            Change::Member {
                app, channel, user, ..
            } => Self::Member {
                app: app.clone(),
                channel: channel.clone(),
                user: user.clone(),
            },
            Change::Online { app, user, .. } => Self::Online {
                app: app.clone(),
                user: user.clone(),
            },
            Change::Cache { .. } => return None,
        })
    }
}

#[derive(Default)]
pub(crate) struct Local {
    subscriptions: HashMap<(String, String), usize>,
    /// Connections and `user_info` per (app, channel, user).
    members: HashMap<(String, String, String), (usize, String)>,
    online: HashMap<(String, String), usize>,
}

/// Adds or removes one from a count, dropping it at zero; the new count.
fn bump<K: std::hash::Hash + Eq + Clone>(map: &mut HashMap<K, usize>, key: K, up: bool) -> usize {
    let count = map.entry(key.clone()).or_default();
    *count = if up {
        *count + 1
    } else {
        count.saturating_sub(1)
    };
    let count = *count;
    if count == 0 {
        map.remove(&key);
    }
    count
}

impl Local {
    /// One more (or less) local subscription; the new count.
    pub(crate) fn subscriptions(&mut self, app: &str, channel: &str, up: bool) -> usize {
        bump(
            &mut self.subscriptions,
            (app.to_owned(), channel.to_owned()),
            up,
        )
    }

    pub(crate) fn subscription_count(&self, app: &str, channel: &str) -> usize {
        self.subscriptions
            .get(&(app.to_owned(), channel.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// One more local connection of a member; whether it is the user's first here.
    pub(crate) fn join(&mut self, app: &str, channel: &str, user: &str, info: &str) -> bool {
        let key = (app.to_owned(), channel.to_owned(), user.to_owned());
        let entry = self
            .members
            .entry(key)
            .or_insert_with(|| (0, info.to_owned()));
        entry.0 += 1;
        entry.0 == 1
    }

    pub(crate) fn has_member(&self, app: &str, channel: &str, user: &str) -> bool {
        self.members
            .contains_key(&(app.to_owned(), channel.to_owned(), user.to_owned()))
    }

    /// One local connection of a member less; whether it was the user's last here.
    pub(crate) fn leave(&mut self, app: &str, channel: &str, user: &str) -> bool {
        let key = (app.to_owned(), channel.to_owned(), user.to_owned());
        let Some(entry) = self.members.get_mut(&key) else {
            return false;
        };
        entry.0 -= 1;
        if entry.0 > 0 {
            return false;
        }
        self.members.remove(&key);
        true
    }

    /// Drops every local connection of a member (a join refused after the fact).
    pub(crate) fn forget_member(&mut self, app: &str, channel: &str, user: &str) {
        self.members
            .remove(&(app.to_owned(), channel.to_owned(), user.to_owned()));
    }

    /// One more (or less) signed-in connection of a user; the new count.
    pub(crate) fn online(&mut self, app: &str, user: &str, up: bool) -> usize {
        bump(&mut self.online, (app.to_owned(), user.to_owned()), up)
    }

    /// Every entry this node holds.
    pub(crate) fn entries(&self) -> Vec<Entry> {
        let subscriptions = self
            .subscriptions
            .keys()
            .map(|(app, channel)| Entry::Subscriptions {
                app: app.clone(),
                channel: channel.clone(),
            });
        let members = self
            .members
            .keys()
            .map(|(app, channel, user)| Entry::Member {
                app: app.clone(),
                channel: channel.clone(),
                user: user.clone(),
            });
        let online = self.online.keys().map(|(app, user)| Entry::Online {
            app: app.clone(),
            user: user.clone(),
        });
        subscriptions.chain(members).chain(online).collect()
    }

    /// Whether this node holds `entry` now.
    pub(crate) fn holds(&self, entry: &Entry) -> bool {
        match entry {
            Entry::Subscriptions { app, channel } => self.subscription_count(app, channel) > 0,
            Entry::Member { app, channel, user } => self.has_member(app, channel, user),
            Entry::Online { app, user } => self.online.contains_key(&(app.clone(), user.clone())),
        }
    }

    /// The change that makes the store show `entry` as this node holds it
    /// now: a put of the current value, or a removal when it holds none.
    pub(crate) fn current(&self, entry: &Entry, node: &str) -> Change {
        let node = node.to_owned();
        match entry {
            Entry::Subscriptions { app, channel } => Change::Subscriptions {
                app: app.clone(),
                channel: channel.clone(),
                node,
                count: self.subscription_count(app, channel),
            },
            Entry::Member { app, channel, user } => Change::Member {
                app: app.clone(),
                channel: channel.clone(),
                user: user.clone(),
                node,
                info: self
                    .members
                    .get(&(app.clone(), channel.clone(), user.clone()))
                    .map(|(_, info)| info.clone()),
            },
            Entry::Online { app, user } => Change::Online {
                app: app.clone(),
                user: user.clone(),
                node,
                online: self.online.contains_key(&(app.clone(), user.clone())),
            },
        }
    }
}
