//! All or nothing for a request that publishes to several channels (a
//! multi-channel trigger, a batch), on each receiving node.
//!
//! Core NATS publishes one subject at a time, and a server that dies between
//! two of them delivers part of the request. So the parts travel on their
//! channels' subjects marked with a batch id, and the receiving node holds
//! them until the batch's commit arrives on the app's control subject; the
//! publisher sends the commit only after every part, and answers 200 only
//! after the server has taken the commit. A batch whose commit does not
//! come within [`HOLD`] is dropped: its request was answered 503 or 504.
//!
//! **Deadlines.** The NATS client buffers what it is given while it is
//! (re)connecting and sends it after it reconnects, perhaps long after the
//! publisher answered 503. So a request's events and commit carry a
//! deadline: the publisher waits for the server until then, and answers a
//! failure only once the deadline plus [`CLOCK_SKEW`] twice over has passed
//! on its clock; a receiving node drops an event, or ignores a commit, that
//! arrives more than [`CLOCK_SKEW`] after the deadline on its clock. With
//! node clocks within [`CLOCK_SKEW`] of each other, what the client sends
//! after a failure was answered is delivered nowhere, and an event answered
//! 200 is never dropped for lateness by its deadline.
//!
//! Order per channel is kept: a message that arrives on a channel behind a
//! held part waits behind it. Parts and commits come through different
//! subscriptions (and tasks), so a commit may be seen before its parts; it
//! is remembered for [`HOLD`] as well. While nothing is held, delivery takes
//! no lock.

use crate::{BusMessage, Envelope, Sink};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// How long a part waits for its commit, and a commit for its parts: the
/// publisher's own wait for the server (a request not committed by then
/// was answered 503).
pub(crate) const HOLD: Duration = Duration::from_secs(5);

/// How far apart the nodes' clocks may be for the deadlines to hold.
pub(crate) const CLOCK_SKEW: Duration = Duration::from_secs(1);

/// Whether a message with this deadline came too late to act on: stored
/// (cluster: the event stream's time, the same on every node) or, without
/// a storage time, received more than [`CLOCK_SKEW`] after it.
pub(crate) fn too_late(deadline_ms: Option<u64>, stored_ms: Option<u64>) -> bool {
    let at = stored_ms.unwrap_or_else(herald_protocol::unix_millis);
    deadline_ms.is_some_and(|d| at > d + CLOCK_SKEW.as_millis() as u64)
}

/// A channel's messages waiting behind a held part, in arrival order.
enum Waiting {
    Part(u64, BusMessage),
    Plain(BusMessage),
}

#[derive(Default)]
struct State {
    /// Per (app, channel), what waits; never an empty queue.
    queues: HashMap<(String, String), VecDeque<Waiting>>,
    /// Batches with a held part, and until when they may wait.
    held: HashMap<u64, Instant>,
    /// Commits seen, kept until their parts can no longer arrive.
    committed: HashMap<u64, Instant>,
}

/// The holding area between the node's bus subscriptions and its sink.
#[derive(Default)]
pub(crate) struct Holds {
    state: Mutex<State>,
    /// Messages waiting in `queues`: with none, delivery skips the lock.
    waiting: AtomicUsize,
}

fn channel_of(envelope: &Envelope) -> (String, String) {
    (envelope.app.clone(), envelope.channel.clone())
}

impl Holds {
    /// Delivers `message` (stored at `stored_ms`, if known) to `sink` now,
    /// or holds it (see the module docs).
    pub(crate) fn deliver(&self, message: BusMessage, stored_ms: Option<u64>, sink: &dyn Sink) {
        let BusMessage::Event(envelope) = &message else {
            match message {
                // Its parts then wait out HOLD and are dropped.
                BusMessage::Commit { deadline_ms, .. } if too_late(deadline_ms, stored_ms) => {
                    tracing::warn!("ignoring a commit that came after its request was refused");
                }
                BusMessage::Commit { batch, .. } => self.commit(batch, sink),
                other => sink.deliver(&other),
            }
            return;
        };
        if too_late(envelope.deadline_ms, stored_ms) {
            sink.uncommitted_dropped(1);
            tracing::debug!(channel = %envelope.channel, "dropping an event that came after its request was refused");
            return;
        }
        // Messages of one channel come through one subscription, so only
        // this channel's own task adds to its queue: with nothing waiting
        // anywhere, a plain event cannot overtake a held one.
        if envelope.batch.is_none() && self.waiting.load(Ordering::Acquire) == 0 {
            sink.deliver(&message);
            return;
        }
        let mut state = self.state.lock();
        let key = channel_of(envelope);
        let item = match envelope.batch {
            Some(batch) if !state.committed.contains_key(&batch) => {
                state
                    .held
                    .entry(batch)
                    .or_insert_with(|| Instant::now() + HOLD);
                Waiting::Part(batch, message)
            }
            // Committed already, or plain, with nothing ahead of it.
            _ if !state.queues.contains_key(&key) => {
                drop(state);
                sink.deliver(&message);
                return;
            }
            // Free to go, but behind a held part: it goes when that does.
            _ => Waiting::Plain(message),
        };
        state.queues.entry(key).or_default().push_back(item);
        self.waiting.fetch_add(1, Ordering::AcqRel);
    }

    /// The batch is committed: its held parts, and what waits behind them,
    /// go out in order.
    fn commit(&self, batch: u64, sink: &dyn Sink) {
        let mut state = self.state.lock();
        state.held.remove(&batch);
        state.committed.insert(batch, Instant::now() + HOLD);
        self.release(&mut state, sink);
    }

    /// Gives every held part, and every remembered commit, `by` longer.
    pub(crate) fn postpone(&self, by: Duration) {
        let mut state = self.state.lock();
        let State {
            held, committed, ..
        } = &mut *state;
        for until in held.values_mut().chain(committed.values_mut()) {
            *until += by;
        }
    }

    /// Drops what waited too long: parts of batches never committed (their
    /// request was refused), and remembered commits. Called periodically.
    pub(crate) fn expire(&self, sink: &dyn Sink) {
        let now = Instant::now();
        let mut state = self.state.lock();
        state.committed.retain(|_, until| *until > now);
        let aborted: Vec<u64> = state
            .held
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(batch, _)| *batch)
            .collect();
        if aborted.is_empty() {
            return;
        }
        let mut dropped = 0;
        for queue in state.queues.values_mut() {
            let before = queue.len();
            queue.retain(|w| !matches!(w, Waiting::Part(b, _) if aborted.contains(b)));
            dropped += before - queue.len();
        }
        for batch in &aborted {
            state.held.remove(batch);
        }
        self.waiting.fetch_sub(dropped, Ordering::AcqRel);
        sink.uncommitted_dropped(dropped);
        tracing::warn!(
            batches = aborted.len(),
            events = dropped,
            "dropping multi-channel requests whose commit never came (they were answered 503)"
        );
        state.queues.retain(|_, q| !q.is_empty());
        self.release(&mut state, sink);
    }

    /// Delivers, per channel, the head of the queue while it is no longer
    /// held. Under the lock, so a channel's order holds against its own
    /// task's next message.
    fn release(&self, state: &mut State, sink: &dyn Sink) {
        let State {
            queues, committed, ..
        } = state;
        let mut released = 0;
        queues.retain(|_, queue| {
            while let Some(head) = queue.front() {
                let ready = match head {
                    Waiting::Part(batch, _) => committed.contains_key(batch),
                    Waiting::Plain(_) => true,
                };
                if !ready {
                    break;
                }
                let (Waiting::Part(_, message) | Waiting::Plain(message)) =
                    queue.pop_front().expect("a head");
                sink.deliver(&message);
                released += 1;
            }
            !queue.is_empty()
        });
        self.waiting.fetch_sub(released, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);
    impl Sink for Recorder {
        fn deliver(&self, message: &BusMessage) {
            if let BusMessage::Event(e) = message {
                self.0.lock().push(format!("{}:{}", e.channel, e.data));
            }
        }
    }

    fn event(channel: &str, data: &str, batch: Option<u64>) -> BusMessage {
        let mut envelope = Envelope::new("app", channel, "ev", data.into());
        envelope.batch = batch;
        BusMessage::Event(envelope)
    }

    fn commit(batch: u64) -> BusMessage {
        BusMessage::Commit {
            app: "app".into(),
            batch,
            deadline_ms: Some(herald_protocol::unix_millis() + 3000),
        }
    }

    fn seen(sink: &Recorder) -> Vec<String> {
        sink.0.lock().clone()
    }

    #[test]
    fn what_arrives_after_its_deadline_and_the_skew_is_dropped() {
        let (holds, sink) = (Holds::default(), Recorder::default());
        let past = herald_protocol::unix_millis() - CLOCK_SKEW.as_millis() as u64 - 1;
        let late = |data: &str, batch| {
            let BusMessage::Event(mut envelope) = event("a", data, batch) else {
                unreachable!()
            };
            envelope.deadline_ms = Some(past);
            BusMessage::Event(envelope)
        };
        holds.deliver(late("1", None), None, &sink);
        // A part in time, its commit too late: the part is never released.
        holds.deliver(event("a", "2", Some(9)), None, &sink);
        let late_commit = BusMessage::Commit {
            app: "app".into(),
            batch: 9,
            deadline_ms: Some(past),
        };
        holds.deliver(late_commit, None, &sink);
        // Within the skew after the deadline: still acted on.
        let BusMessage::Event(mut recent) = event("b", "3", None) else {
            unreachable!()
        };
        recent.deadline_ms = Some(herald_protocol::unix_millis() - 500);
        holds.deliver(BusMessage::Event(recent), None, &sink);
        assert_eq!(seen(&sink), ["b:3"]);
    }

    #[test]
    fn parts_wait_for_their_commit_and_later_events_wait_behind_them() {
        let (holds, sink) = (Holds::default(), Recorder::default());
        holds.deliver(event("a", "1", None), None, &sink);
        holds.deliver(event("a", "2", Some(7)), None, &sink);
        holds.deliver(event("b", "2", Some(7)), None, &sink);
        holds.deliver(event("a", "3", None), None, &sink);
        holds.deliver(event("c", "x", None), None, &sink);
        assert_eq!(seen(&sink), ["a:1", "c:x"]);
        holds.deliver(commit(7), None, &sink);
        // Order holds per channel; channels are released in no set order.
        let of = |channel: &str| -> Vec<String> {
            let prefix = format!("{channel}:");
            seen(&sink)
                .into_iter()
                .filter(|m| m.starts_with(&prefix))
                .collect()
        };
        assert_eq!(of("a"), ["a:1", "a:2", "a:3"]);
        assert_eq!(of("b"), ["b:2"]);
        assert_eq!(seen(&sink).len(), 5);
        assert_eq!(holds.waiting.load(Ordering::Acquire), 0);
        holds.deliver(event("a", "4", None), None, &sink);
        assert_eq!(seen(&sink).last().unwrap(), "a:4");
    }

    #[test]
    fn a_commit_seen_before_its_parts_lets_them_through() {
        let (holds, sink) = (Holds::default(), Recorder::default());
        holds.deliver(commit(9), None, &sink);
        holds.deliver(event("a", "1", Some(9)), None, &sink);
        assert_eq!(seen(&sink), ["a:1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_uncommitted_batch_is_dropped_and_what_waited_behind_it_goes_out() {
        let (holds, sink) = (Holds::default(), Recorder::default());
        holds.deliver(event("a", "1", Some(3)), None, &sink);
        holds.deliver(event("a", "2", None), None, &sink);
        holds.expire(&sink);
        assert!(seen(&sink).is_empty(), "held within the hold time");
        tokio::time::advance(HOLD + Duration::from_millis(1)).await;
        holds.expire(&sink);
        assert_eq!(seen(&sink), ["a:2"]);
        // A commit arriving after that delivers nothing.
        holds.deliver(commit(3), None, &sink);
        assert_eq!(seen(&sink), ["a:2"]);
        assert_eq!(holds.waiting.load(Ordering::Acquire), 0);
    }
}
