//! `pusher_internal:subscription_count` to clients, at most once per
//! [`INTERVAL`] per channel on this node.
//!
//! Every change of a channel's count is a transition, and each one would be
//! a message to every subscriber of the channel: a burst of N subscribes
//! would cost N² messages. The first change after a quiet interval is sent
//! at once; changes within the interval are folded into one message with
//! the latest count, sent when the interval is up. A subscriber therefore
//! sees a count at most [`INTERVAL`] old (plus, in a cluster, the state's
//! own coalescing and replication), and always the final one.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// The least time between two counts sent for one channel.
pub(crate) const INTERVAL: Duration = Duration::from_millis(100);

/// What to do with a new count.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Send it now.
    Now,
    /// Held; ask [`CountThrottle::due`] at this instant.
    Later(Instant),
    /// Held; a send is already scheduled and will carry it.
    Folded,
}

struct Slot {
    sent_at: Instant,
    /// The count waiting for the scheduled send.
    waiting: Option<usize>,
}

#[derive(Default)]
pub(crate) struct CountThrottle {
    slots: Mutex<HashMap<(String, String), Slot>>,
}

impl CountThrottle {
    pub(crate) fn offer(&self, app: &str, channel: &str, count: usize, now: Instant) -> Offer {
        let key = (app.to_owned(), channel.to_owned());
        let mut slots = self.slots.lock();
        let Some(slot) = slots.get_mut(&key) else {
            if count > 0 {
                slots.insert(
                    key,
                    Slot {
                        sent_at: now,
                        waiting: None,
                    },
                );
            }
            return Offer::Now;
        };
        if slot.waiting.is_some() {
            slot.waiting = Some(count);
            return Offer::Folded;
        }
        if now >= slot.sent_at + INTERVAL {
            slot.sent_at = now;
            if count == 0 {
                slots.remove(&key);
            }
            return Offer::Now;
        }
        slot.waiting = Some(count);
        Offer::Later(slot.sent_at + INTERVAL)
    }

    /// The scheduled send of a channel: the latest count, to send now.
    pub(crate) fn due(&self, app: &str, channel: &str, now: Instant) -> Option<usize> {
        let key = (app.to_owned(), channel.to_owned());
        let mut slots = self.slots.lock();
        let slot = slots.get_mut(&key)?;
        let count = slot.waiting.take()?;
        slot.sent_at = now;
        if count == 0 {
            slots.remove(&key);
        }
        Some(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_one_count_now_and_the_latest_after_the_interval() {
        let throttle = CountThrottle::default();
        let t0 = Instant::now();
        assert_eq!(throttle.offer("a", "c", 1, t0), Offer::Now);
        let at = t0 + INTERVAL;
        assert_eq!(throttle.offer("a", "c", 2, t0), Offer::Later(at));
        for n in 3..=500 {
            assert_eq!(throttle.offer("a", "c", n, t0), Offer::Folded);
        }
        assert_eq!(throttle.due("a", "c", at), Some(500));
        assert_eq!(throttle.due("a", "c", at), None);
        // Quiet for an interval: the next change goes at once; 0 forgets the channel.
        assert_eq!(throttle.offer("a", "c", 0, at + INTERVAL), Offer::Now);
        assert!(throttle.slots.lock().is_empty());
        // Other channels are not held back by this one.
        assert_eq!(throttle.offer("a", "other", 7, t0), Offer::Now);
    }
}
