//! What one receiver's delivery task holds, and why nothing it holds is
//! sent twice.
//!
//! Every event the process took from the queue waits here (not in a channel
//! in front of it) until it is acknowledged, so one loop over the backlog
//! keeps all of them alive in JetStream: none passes the ack wait and is
//! handed out again while it waits behind a slow receiver. Should JetStream
//! redeliver one anyway (a progress or final acknowledgement was lost), the
//! copy is recognised by its stream sequence: dropped while the original is
//! still held, acknowledged again (not sent) once the original was sent.

use crate::metrics::WebhookMetrics;
use crate::queued::Pending;
use herald_protocol::webhook::WebhookEvent;
use std::collections::{HashSet, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

/// The events a receiver's task holds, oldest first.
pub(crate) struct Backlog {
    queue: VecDeque<Pending>,
    /// Stream sequences held, to drop a redelivery of one we still have.
    held: HashSet<u64>,
    sent: RecentlySent,
}

impl Backlog {
    /// `remember`: how long (and how many) acknowledged sequences are kept
    /// to recognise a late redelivery.
    pub(crate) fn new(remember: Duration, most: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            held: HashSet::new(),
            sent: RecentlySent::new(remember, most),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Takes an event in at the back. Returns a redelivery of an event
    /// already sent, which the caller acknowledges again; a redelivery of
    /// one still held is dropped here.
    pub(crate) fn accept(&mut self, pending: Pending, metrics: &WebhookMetrics) -> Option<Pending> {
        if let Some(seq) = pending.ack.sequence() {
            if self.sent.contains(seq, Instant::now()) {
                return Some(pending);
            }
            if !self.held.insert(seq) {
                return None;
            }
        }
        metrics
            .pending
            .with_label_values(&[&pending.queued.app_id])
            .inc();
        self.queue.push_back(pending);
        None
    }

    /// The events of the first `count` held ones (the next request's body).
    pub(crate) fn front_events(&self, count: usize) -> Vec<WebhookEvent> {
        self.queue
            .iter()
            .take(count)
            .map(|p| p.queued.event.clone())
            .collect()
    }

    /// Removes the first `count` held events (a request's batch, answered).
    pub(crate) fn take_front(&mut self, count: usize) -> Vec<Pending> {
        self.queue.drain(..count.min(self.queue.len())).collect()
    }

    /// Puts a taken event back at the front (to be retried).
    pub(crate) fn put_back(&mut self, pending: Pending) {
        self.queue.push_front(pending);
    }

    /// Forgets a taken event that was acknowledged (sent or a dead letter).
    pub(crate) fn release(&mut self, pending: &Pending, metrics: &WebhookMetrics) {
        if let Some(seq) = pending.ack.sequence() {
            self.held.remove(&seq);
            self.sent.insert(seq, Instant::now());
        }
        metrics
            .pending
            .with_label_values(&[&pending.queued.app_id])
            .dec();
    }

    /// Tells JetStream every held event is still being worked on.
    pub(crate) async fn keep_alive(&self) {
        for pending in &self.queue {
            pending.ack.in_progress().await;
        }
    }
}

/// Stream sequences acknowledged in the last `keep` (at most `most` of
/// them), oldest first.
struct RecentlySent {
    keep: Duration,
    most: usize,
    order: VecDeque<(Instant, u64)>,
    set: HashSet<u64>,
}

impl RecentlySent {
    fn new(keep: Duration, most: usize) -> Self {
        Self {
            keep,
            most,
            order: VecDeque::new(),
            set: HashSet::new(),
        }
    }

    fn insert(&mut self, seq: u64, now: Instant) {
        self.forget_old(now);
        if self.most == 0 || !self.set.insert(seq) {
            return;
        }
        if self.order.len() == self.most {
            if let Some((_, oldest)) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
        self.order.push_back((now, seq));
    }

    fn contains(&mut self, seq: u64, now: Instant) -> bool {
        self.forget_old(now);
        self.set.contains(&seq)
    }

    fn forget_old(&mut self, now: Instant) {
        while let Some(&(at, seq)) = self.order.front() {
            if now.duration_since(at) < self.keep {
                break;
            }
            self.order.pop_front();
            self.set.remove(&seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recently_sent_forgets_after_the_window() {
        let start = Instant::now();
        let mut sent = RecentlySent::new(Duration::from_secs(10), 100);
        sent.insert(7, start);
        sent.insert(8, start + Duration::from_secs(5));
        assert!(sent.contains(7, start + Duration::from_secs(9)));
        assert!(!sent.contains(7, start + Duration::from_secs(10)));
        assert!(sent.contains(8, start + Duration::from_secs(10)));
        assert!(!sent.contains(9, start));
    }

    #[test]
    fn recently_sent_keeps_at_most_the_newest() {
        let now = Instant::now();
        let mut sent = RecentlySent::new(Duration::from_secs(60), 2);
        for seq in [1, 2, 2, 3] {
            sent.insert(seq, now);
        }
        assert!(!sent.contains(1, now));
        assert!(sent.contains(2, now) && sent.contains(3, now));
        assert_eq!(sent.order.len(), 2);
    }
}
