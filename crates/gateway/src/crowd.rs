//! Large presence channels (an app's `large_presence_prefixes`): a crowd of
//! members who are there to be counted, and a few watchers who want to see
//! them.
//!
//! On an ordinary presence channel every join is told to every member, so N
//! members joining cost N²/2 frames, and each joiner's acknowledgement
//! carries the whole list: at 20,000 members that is 200 million frames and
//! a megabyte per join. On a large presence channel:
//!
//! - a **watcher** (a member whose signed `user_info` has `"watcher": true`)
//!   gets the whole list on subscribe and every `member_added` /
//!   `member_removed` after it, coalesced into one burst every [`BURST`]:
//!   only net changes are told, so a user who leaves and comes back before
//!   the burst is not mentioned at all;
//! - every other member is acknowledged with a list of itself alone (with
//!   the channel's true `count`) and is told no member events;
//! - every subscriber gets `pusher_internal:subscription_count` carrying the
//!   member count when it changed, at most once per [`COUNT_EVERY`].
//!
//! A join then costs the same at 20 members and at 20,000: one frame per
//! watcher (in a burst) and one small acknowledgement. Stock pusher-js and
//! laravel-echo understand every frame: a watcher's `here` / `joining` /
//! `leaving` work as on any presence channel, and the others read the count
//! from `pusher:subscription_count` (docs/presence.md, "Large presence
//! channels").
//!
//! A burst never tells a watcher about a change its snapshot already
//! shows: each watcher keeps its own pending changes, counted from its
//! snapshot, and [`Crowds::add_watcher`] runs while the caller holds the
//! view's read lock (so no transition slips in between the snapshot and the
//! registration). A burst fills at most half the room left in a watcher's
//! outbox, oldest change first, so it never makes the watcher a slow
//! consumer; the rest waits for the next burst. Transitions arrive under
//! the view's write lock and take this module's lock inside it; nothing
//! here takes the view's lock.

use crate::peer::Peer;
use bytes::Bytes;
use herald_protocol::{frame, message};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often watchers are told the member changes of a large channel.
pub const BURST: Duration = Duration::from_millis(100);
/// Least time between two member counts told on one large channel.
pub const COUNT_EVERY: Duration = Duration::from_secs(1);

/// One app's large presence channels on this node, by channel name.
#[derive(Default)]
pub struct Crowds(Mutex<HashMap<String, Crowd>>);

#[derive(Default)]
struct Crowd {
    /// This node's watcher sockets of the channel.
    watchers: HashMap<Arc<str>, Watcher>,
    /// The member count changed since it was last told.
    count_changed: bool,
    count_told_at: Option<Instant>,
}

/// A watcher socket and what it has not been told yet: each watcher's
/// changes count from its own snapshot, so one that joins mid-burst is
/// never told what its list already shows.
struct Watcher {
    peer: Peer,
    /// Net change per user since this watcher last heard of the user.
    pending: HashMap<String, Pending>,
    /// Users with a pending change, oldest first.
    order: VecDeque<String>,
}

/// A user's change not yet told to one watcher.
struct Pending {
    /// Whether the watcher last heard of the user as a member.
    was_member: bool,
    /// The user's `user_info` if a member now, None if not.
    now: Option<String>,
}

/// What one burst over every crowd did.
#[derive(Default, Debug, PartialEq, Eq)]
pub struct Burst {
    /// Member event frames queued on watcher sockets.
    pub frames: usize,
    /// Their bytes in all.
    pub bytes: usize,
    /// Channels whose member count is due to be told.
    pub counts_due: Vec<String>,
}

impl Watcher {
    fn new(peer: &Peer) -> Self {
        Self {
            peer: peer.clone(),
            pending: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn note(&mut self, user: &str, info: Option<&str>) {
        if let Some(pending) = self.pending.get_mut(user) {
            pending.now = info.map(str::to_owned);
            return;
        }
        self.pending.insert(
            user.to_owned(),
            Pending {
                was_member: info.is_none(),
                now: info.map(str::to_owned),
            },
        );
        self.order.push_back(user.to_owned());
    }

    /// Queues net changes, oldest first, filling at most half the room
    /// left in the watcher's outbox (so a burst never makes a watcher a
    /// slow consumer; a watcher that keeps up gets 512 a burst with the
    /// default outbox of 1,024). Each frame is built once per burst for
    /// all watchers (`frames`).
    fn tell(
        &mut self,
        channel: &str,
        frames: &mut HashMap<(String, bool), Bytes>,
        out: &mut Burst,
    ) {
        let most = self.peer.room() / 2;
        let mut told = 0;
        while told < most {
            let Some(user) = self.order.pop_front() else {
                break;
            };
            let Some(pending) = self.pending.remove(&user) else {
                continue;
            };
            let added = match (pending.was_member, &pending.now) {
                (false, Some(_)) => true,
                (true, None) => false,
                // Back where this watcher last saw it.
                _ => continue,
            };
            let frame = frames
                .entry((user.clone(), added))
                .or_insert_with(|| {
                    let text = match &pending.now {
                        Some(info) => message::channel_event(
                            "pusher_internal:member_added",
                            channel,
                            &message::member_added_data(&user, info),
                            None,
                        ),
                        None => message::channel_event(
                            "pusher_internal:member_removed",
                            channel,
                            &message::member_removed_data(&user),
                            None,
                        ),
                    };
                    frame::text(&text)
                })
                .clone();
            told += 1;
            let len = frame.len();
            if self.peer.send(frame) {
                out.frames += 1;
                out.bytes += len;
            }
        }
    }
}

impl Crowds {
    /// A member transition of a large channel: `info` Some when `user`
    /// became a member, None when it stopped being one.
    pub fn member(&self, channel: &str, user: &str, info: Option<&str>) {
        let mut crowds = self.0.lock();
        let crowd = crowds.entry(channel.to_owned()).or_default();
        crowd.count_changed = true;
        for watcher in crowd.watchers.values_mut() {
            watcher.note(user, info);
        }
    }

    /// Adds a watcher of `channel`. Call it while holding the view's read
    /// lock, and queue the watcher's snapshot under the same lock: every
    /// change after the snapshot is then told to it, none before.
    pub fn add_watcher(&self, channel: &str, peer: &Peer) {
        let mut crowds = self.0.lock();
        let crowd = crowds.entry(channel.to_owned()).or_default();
        crowd
            .watchers
            .insert(peer.socket_id().clone(), Watcher::new(peer));
    }

    pub fn remove_watcher(&self, channel: &str, socket_id: &str) {
        if let Some(crowd) = self.0.lock().get_mut(channel) {
            crowd.watchers.remove(socket_id);
        }
    }

    /// Tells every crowd's watchers their pending changes (as many as
    /// their outboxes have room for), and returns the channels whose
    /// changed member count is due (at most one per [`COUNT_EVERY`] each).
    /// Forgets crowds with nothing left to do.
    pub fn burst(&self, now: Instant) -> Burst {
        let mut out = Burst::default();
        let mut crowds = self.0.lock();
        for (channel, crowd) in crowds.iter_mut() {
            let mut frames = HashMap::new();
            for watcher in crowd.watchers.values_mut() {
                watcher.tell(channel, &mut frames, &mut out);
            }
            let due = crowd
                .count_told_at
                .is_none_or(|at| now.duration_since(at) >= COUNT_EVERY);
            if crowd.count_changed && due {
                crowd.count_changed = false;
                crowd.count_told_at = Some(now);
                out.counts_due.push(channel.clone());
            }
        }
        crowds.retain(|_, crowd| {
            !crowd.watchers.is_empty()
                || crowd.count_changed
                || crowd
                    .count_told_at
                    .is_some_and(|at| now.duration_since(at) < COUNT_EVERY)
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::Inbox;

    fn peer(id: &str) -> (Peer, Inbox) {
        let counter = prometheus::IntCounter::new("t", "t").unwrap();
        Peer::new(id.into(), 64, counter)
    }

    fn events(inbox: &Inbox) -> Vec<String> {
        std::iter::from_fn(|| inbox.try_recv())
            .map(|f| {
                let v: serde_json::Value = serde_json::from_slice(&f[2..]).unwrap();
                let data: serde_json::Value =
                    serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
                format!("{} {}", v["event"].as_str().unwrap(), data["user_id"])
            })
            .collect()
    }

    #[test]
    fn watchers_hear_net_changes_in_bursts_and_a_new_watcher_nothing_from_before() {
        let crowds = Crowds::default();
        let t0 = Instant::now();
        // No watcher yet: nothing is kept, but the count is due.
        crowds.member("presence-crowd", "u0", Some("{}"));
        let (w1, w1_inbox) = peer("1.1");
        crowds.add_watcher("presence-crowd", &w1);
        crowds.member("presence-crowd", "u1", Some(r#"{"n":1}"#));
        crowds.member("presence-crowd", "u2", Some("{}"));
        crowds.member("presence-crowd", "u2", None); // in and out: not told
        crowds.member("presence-crowd", "u0", None);
        crowds.member("presence-crowd", "u0", Some("{}")); // out and back: not told

        // A second watcher, whose snapshot shows u1: it hears only what follows.
        let (w2, w2_inbox) = peer("1.2");
        crowds.add_watcher("presence-crowd", &w2);
        crowds.member("presence-crowd", "u1", None);
        crowds.member("presence-crowd", "u3", Some("{}"));
        let burst = crowds.burst(t0);
        assert_eq!(burst.frames, 3);
        assert_eq!(burst.counts_due, ["presence-crowd"]);
        // u1 joined and left before w1's burst: nothing for it either.
        assert_eq!(events(&w1_inbox), [r#"pusher_internal:member_added "u3""#]);
        assert_eq!(
            events(&w2_inbox),
            [
                r#"pusher_internal:member_removed "u1""#,
                r#"pusher_internal:member_added "u3""#
            ]
        );
        // The count is told at most once per COUNT_EVERY.
        crowds.member("presence-crowd", "u4", Some("{}"));
        assert!(crowds.burst(t0 + BURST).counts_due.is_empty());
        crowds.member("presence-crowd", "u5", Some("{}"));
        assert_eq!(
            crowds.burst(t0 + COUNT_EVERY).counts_due,
            ["presence-crowd"]
        );
        assert_eq!(events(&w1_inbox).len(), 2, "u4 and u5 joined");
        // A watcher that left hears nothing more.
        crowds.remove_watcher("presence-crowd", "1.1");
        crowds.member("presence-crowd", "u6", Some("{}"));
        crowds.burst(t0 + COUNT_EVERY + BURST);
        assert!(events(&w1_inbox).is_empty());
        assert_eq!(events(&w2_inbox).len(), 3, "u4, u5 and u6 joined");
    }

    #[test]
    fn a_burst_is_bounded_and_the_rest_follows_oldest_first() {
        let crowds = Crowds::default();
        let t0 = Instant::now();
        let counter = prometheus::IntCounter::new("t", "t").unwrap();
        let (w, inbox) = Peer::new("1.1".into(), 100, counter);
        crowds.add_watcher("presence-crowd", &w);
        for i in 0..70 {
            crowds.member("presence-crowd", &format!("u{i}"), Some("{}"));
        }
        // Half the room of an empty outbox of 100, then half of what is left.
        assert_eq!(crowds.burst(t0).frames, 50);
        assert_eq!(
            crowds.burst(t0 + BURST).frames,
            20,
            "the other 20 fit in half of 50"
        );
        let told = events(&inbox);
        assert_eq!(told.len(), 70, "nobody was cut off as a slow consumer");
        assert_eq!(told[0], r#"pusher_internal:member_added "u0""#);
        assert_eq!(told[69], r#"pusher_internal:member_added "u69""#);
    }

    #[test]
    fn a_crowd_with_nothing_left_to_do_is_forgotten() {
        let crowds = Crowds::default();
        let t0 = Instant::now();
        crowds.member("presence-crowd", "u0", Some("{}"));
        assert_eq!(crowds.burst(t0).counts_due.len(), 1);
        assert_eq!(
            crowds.0.lock().len(),
            1,
            "kept while the count may change again soon"
        );
        assert!(crowds.burst(t0 + COUNT_EVERY).counts_due.is_empty());
        assert!(crowds.0.lock().is_empty());
    }
}
