//! The write path of this node's entries: coalesced, ordered per entry, and
//! never in front of a connection.
//!
//! A state change marks its [`Entry`] dirty and returns at once. A flusher
//! task writes dirty entries from this node's counts as they are when the
//! write starts ([`Local::current`](crate::local::Local::current)), so any
//! number of changes to one entry between two writes cost one write:
//!
//! - transitions the cluster reports (this node starts or stops holding a
//!   channel, a member, a signed-in user) are written at once;
//! - subscription counts in between are written at most every
//!   [`COUNT_INTERVAL`] per channel.
//!
//! At most one write per entry is in flight, so a put and the removal that
//! follows it reach the store in order; writes of different entries run
//! side by side (up to [`MAX_IN_FLIGHT`]), so one slow key or a stalled
//! NATS delays no other entry's bookkeeping and no connection. A failed
//! write asks for a re-assert, which marks every entry dirty again once
//! NATS answers.

use super::keys::encode;
use super::Inner;
use crate::local::Entry;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, Notify, Semaphore};
use tokio::time::Instant;

/// How often a channel's changing subscription count is written, at most.
pub(crate) const COUNT_INTERVAL: Duration = Duration::from_millis(100);
/// Writes in flight at once (each waits for NATS and for the watch).
const MAX_IN_FLIGHT: usize = 256;

/// Callers waiting for an entry's write to be applied.
type Waiters = Vec<oneshot::Sender<()>>;

#[derive(Default)]
struct Queue {
    /// Dirty entries and when each is due.
    due: HashMap<Entry, Instant>,
    in_flight: HashSet<Entry>,
    /// Callers waiting for the next write of an entry to be applied.
    waiters: HashMap<Entry, Waiters>,
}

#[derive(Default)]
pub(crate) struct Writer {
    queue: Mutex<Queue>,
    wake: Notify,
}

impl Writer {
    /// Marks `entry` for writing: now when `urgent`, else within [`COUNT_INTERVAL`].
    pub(crate) fn mark(&self, entry: Entry, urgent: bool) {
        let now = Instant::now();
        let at = if urgent { now } else { now + COUNT_INTERVAL };
        let mut queue = self.queue.lock();
        let newly_dirty = !queue.due.contains_key(&entry);
        let due = queue.due.entry(entry).or_insert(at);
        if at < *due {
            *due = at;
        }
        drop(queue);
        // The flusher sleeps until its earliest due entry: tell it about a
        // new one, or one that became due sooner.
        if urgent || newly_dirty {
            self.wake.notify_one();
        }
    }

    /// Marks `entry` for writing now and returns a receiver that resolves
    /// once a write started after this call has been applied by this
    /// node's watch (dropped unresolved if that write failed).
    pub(crate) fn mark_and_wait(&self, entry: Entry) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .lock()
            .waiters
            .entry(entry.clone())
            .or_default()
            .push(tx);
        self.mark(entry, true);
        rx
    }

    /// Takes the entries due by `now` that have no write in flight, with
    /// their waiters; returns when the next one is due.
    fn take_due(&self, now: Instant) -> (Vec<(Entry, Waiters)>, Option<Instant>) {
        let mut queue = self.queue.lock();
        let ready: Vec<Entry> = queue
            .due
            .iter()
            .filter(|(entry, at)| **at <= now && !queue.in_flight.contains(*entry))
            .map(|(entry, _)| entry.clone())
            .collect();
        let mut taken = Vec::with_capacity(ready.len());
        for entry in ready {
            queue.due.remove(&entry);
            queue.in_flight.insert(entry.clone());
            let waiters = queue.waiters.remove(&entry).unwrap_or_default();
            taken.push((entry, waiters));
        }
        let next = queue
            .due
            .iter()
            .filter(|(entry, _)| !queue.in_flight.contains(*entry))
            .map(|(_, at)| *at)
            .min();
        (taken, next)
    }

    /// A write finished: the entry may be written again.
    fn done(&self, entry: &Entry) {
        let mut queue = self.queue.lock();
        queue.in_flight.remove(entry);
        let again = queue.due.contains_key(entry);
        drop(queue);
        if again {
            self.wake.notify_one();
        }
    }
}

impl Inner {
    /// Writes dirty entries forever.
    pub(super) async fn flush(self: Arc<Self>) {
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        loop {
            let (taken, next) = self.writer.take_due(Instant::now());
            for (entry, waiters) in taken {
                let permit = slots.clone().acquire_owned().await.expect("never closed");
                let inner = self.clone();
                tokio::spawn(async move {
                    inner.write_entry(&entry, waiters).await;
                    inner.writer.done(&entry);
                    drop(permit);
                });
            }
            let wake = self.writer.wake.notified();
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = wake => {}
                    }
                }
                None => wake.await,
            }
        }
    }

    /// Writes one entry as this node holds it now.
    async fn write_entry(&self, entry: &Entry, waiters: Waiters) {
        let change = self.shared.local.lock().current(entry, &self.shared.node);
        let (key, value) = encode(&change);
        if value.is_none() && !self.applied_keys.lock().contains_key(&key) {
            // Never written (or already gone): nothing to remove.
            for waiter in waiters {
                let _ = waiter.send(());
            }
            return;
        }
        if self.client.connection_state() != async_nats::connection::State::Connected {
            // Do not queue behind an outage: the re-assert writes every
            // entry once NATS is back.
            self.settings.metrics.write_failures.inc();
            self.reassert.notify_one();
            return;
        }
        match self.write(&change).await {
            Ok(()) => {
                for waiter in waiters {
                    let _ = waiter.send(());
                }
            }
            Err(e) => {
                self.kv_trouble(&self.settings.state_bucket, "KV write failed", &e);
                self.settings.metrics.write_failures.inc();
                self.reassert.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(name: &str) -> Entry {
        Entry::Subscriptions {
            app: "a".into(),
            channel: name.into(),
        }
    }

    #[tokio::test]
    async fn counts_coalesce_transitions_go_at_once_and_one_write_per_entry_is_in_flight() {
        let writer = Writer::default();
        for _ in 0..1000 {
            writer.mark(channel("busy"), false);
        }
        writer.mark(channel("new"), true);
        let now = Instant::now();
        let (taken, next) = writer.take_due(now);
        let names: Vec<_> = taken.iter().map(|(e, _)| e.clone()).collect();
        assert_eq!(names, [channel("new")], "only the transition is due now");
        assert!(next.is_some_and(|at| at > now - COUNT_INTERVAL && at <= now + COUNT_INTERVAL));
        // A thousand count changes are one write when their interval is up.
        let (taken, _) = writer.take_due(now + COUNT_INTERVAL * 2);
        assert_eq!(taken.len(), 1);
        // While "busy" is being written, marking it again waits for that write.
        writer.mark(channel("busy"), true);
        assert!(writer.take_due(now + COUNT_INTERVAL * 3).0.is_empty());
        writer.done(&channel("busy"));
        assert_eq!(writer.take_due(now + COUNT_INTERVAL * 3).0.len(), 1);
    }
}
