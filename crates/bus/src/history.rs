//! History channels: the last events of a channel, kept so that a new
//! subscriber (an admin opening the dashboard) sees them at once, and a
//! backend can read them through the HTTP API.
//!
//! Which channels, and how much, is per app ([`HistoryRule`]: a channel
//! prefix, the last N events, at most T seconds old). Standalone keeps them
//! in memory ([`Rings`]); the cluster keeps them in the event stream
//! (`stream.rs`), where a history channel's events are stored with the
//! rule's time to live instead of `event_retention_secs`, and trimmed to
//! the last N after each store. Each retained event has an id: the event
//! stream's sequence in a cluster, a per-process counter standalone; ids
//! grow with time on a channel, so "events since id X" is well defined.

use crate::Envelope;
use herald_config::{AppConfig, HistoryRule};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};

/// The history rules of every app.
#[derive(Debug, Default, Clone)]
pub struct HistoryRules(HashMap<String, Vec<HistoryRule>>);

impl HistoryRules {
    pub fn of<'a>(apps: impl IntoIterator<Item = &'a AppConfig>) -> Self {
        Self(
            apps.into_iter()
                .filter(|app| !app.history.is_empty())
                .map(|app| (app.id.clone(), app.history.clone()))
                .collect(),
        )
    }

    /// The rule of `channel` of `app`: the one with the longest prefix.
    pub fn rule(&self, app: &str, channel: &str) -> Option<&HistoryRule> {
        self.0
            .get(app)?
            .iter()
            .filter(|rule| channel.starts_with(rule.prefix.as_str()))
            .max_by_key(|rule| rule.prefix.len())
    }

    /// The longest time any rule keeps events, in seconds.
    pub fn longest_seconds(&self) -> u64 {
        self.0
            .values()
            .flatten()
            .map(|r| r.seconds)
            .max()
            .unwrap_or(0)
    }
}

/// One retained event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    pub id: u64,
    pub event: String,
    pub channel: String,
    /// Raw JSON text, as triggered.
    pub data: String,
    /// The sender of a client event on a presence channel.
    pub user_id: Option<String>,
    /// When it was kept (unix ms).
    pub at_ms: u64,
}

impl Retained {
    pub(crate) fn of(id: u64, at_ms: u64, envelope: &Envelope) -> Self {
        Self {
            id,
            event: envelope.event.clone(),
            channel: envelope.channel.clone(),
            data: envelope.data.clone(),
            user_id: envelope.user_id.clone(),
            at_ms,
        }
    }
}

/// Keeps what `rule` allows of `events` (oldest first): after `after`, at
/// most `rule.seconds` old, the last `rule.events`.
pub(crate) fn select(
    events: impl IntoIterator<Item = Retained>,
    rule: &HistoryRule,
    after: Option<u64>,
    now_ms: u64,
) -> Vec<Retained> {
    let oldest = now_ms.saturating_sub(rule.seconds.saturating_mul(1000));
    let mut kept: Vec<Retained> = events
        .into_iter()
        .filter(|e| e.at_ms >= oldest && after.is_none_or(|a| e.id > a))
        .collect();
    let excess = kept.len().saturating_sub(rule.events);
    kept.drain(..excess);
    kept
}

/// Standalone's history: the last events of each history channel, in memory.
#[derive(Default)]
pub(crate) struct Rings {
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    next_id: u64,
    events: HashMap<(String, String), VecDeque<Retained>>,
}

impl Rings {
    /// Keeps `envelope` under `rule`; returns its id.
    pub(crate) fn record(&self, envelope: &Envelope, rule: &HistoryRule, now_ms: u64) -> u64 {
        let mut rings = self.kept.lock();
        rings.next_id += 1;
        let id = rings.next_id;
        let ring = rings
            .events
            .entry((envelope.app.clone(), envelope.channel.clone()))
            .or_default();
        ring.push_back(Retained::of(id, now_ms, envelope));
        let oldest = now_ms.saturating_sub(rule.seconds.saturating_mul(1000));
        while ring.len() > rule.events || ring.front().is_some_and(|e| e.at_ms < oldest) {
            ring.pop_front();
        }
        id
    }

    pub(crate) fn read(
        &self,
        app: &str,
        channel: &str,
        rule: &HistoryRule,
        after: Option<u64>,
        now_ms: u64,
    ) -> Vec<Retained> {
        let rings = self.kept.lock();
        let key = (app.to_owned(), channel.to_owned());
        let kept = rings.events.get(&key).into_iter().flatten().cloned();
        select(kept, rule, after, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(events: usize, seconds: u64) -> HistoryRule {
        HistoryRule {
            prefix: "private-admin-".into(),
            events,
            seconds,
        }
    }

    fn event(n: u32) -> Envelope {
        Envelope::new(
            "app",
            "private-admin-orders",
            "NewOrder",
            format!("{{\"n\":{n}}}"),
        )
    }

    #[test]
    fn the_last_events_within_the_age_are_kept_oldest_first() {
        let rings = Rings::default();
        let rule = rule(3, 60);
        for n in 0..5 {
            rings.record(&event(n), &rule, 1_000_000 + u64::from(n) * 1000);
        }
        let read = |after, now| rings.read("app", "private-admin-orders", &rule, after, now);
        let data = |v: Vec<Retained>| v.into_iter().map(|e| e.data).collect::<Vec<_>>();
        assert_eq!(
            data(read(None, 1_005_000)),
            [r#"{"n":2}"#, r#"{"n":3}"#, r#"{"n":4}"#]
        );
        // since an id: only the newer ones
        let ids: Vec<u64> = read(None, 1_005_000).iter().map(|e| e.id).collect();
        assert_eq!(data(read(Some(ids[1]), 1_005_000)), [r#"{"n":4}"#]);
        // 60 s after the third event, only the last two are young enough
        assert_eq!(data(read(None, 1_062_500)), [r#"{"n":3}"#, r#"{"n":4}"#]);
        assert!(rings
            .read("app", "private-admin-other", &rule, None, 1_005_000)
            .is_empty());
    }

    #[test]
    fn the_longest_prefix_decides() {
        let mut app = AppConfig::new("app", "key", "secret");
        app.history = vec![
            rule(5, 60),
            HistoryRule {
                prefix: "private-admin-orders".into(),
                events: 9,
                seconds: 60,
            },
        ];
        let rules = HistoryRules::of([&app]);
        assert_eq!(
            rules
                .rule("app", "private-admin-orders-eu")
                .map(|r| r.events),
            Some(9)
        );
        assert_eq!(
            rules.rule("app", "private-admin-stock").map(|r| r.events),
            Some(5)
        );
        assert_eq!(rules.rule("app", "orders"), None);
        assert_eq!(rules.rule("other", "private-admin-stock"), None);
        assert_eq!(rules.longest_seconds(), 60);
    }
}
