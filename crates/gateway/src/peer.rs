//! The handle through which everything else talks to one connection.
//!
//! A [`Peer`] is cheap to clone and is what the hub stores per subscription.
//! Sending never blocks: a frame goes into the connection's bounded outbox or,
//! if the outbox is full, the connection is closed as a slow consumer, so one
//! stalled client can neither grow memory nor hold up fan-out to others.
//!
//! The outbox is a plain queue in the peer's own allocation rather than a
//! channel: it allocates nothing while empty (most sockets, most of the
//! time) and gives back what a burst grew, which keeps an idle connection
//! small (docs/benchmarks.md).

use bytes::Bytes;
use herald_protocol::{codes, Cause, Disconnect};
use parking_lot::Mutex;
use prometheus::IntCounter;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::task::{Poll, Waker};

#[derive(Clone)]
pub struct Peer(Arc<PeerInner>);

struct PeerInner {
    socket_id: Arc<str>,
    state: Mutex<State>,
    capacity: usize,
    slow_consumers: IntCounter,
}

struct State {
    frames: VecDeque<Bytes>,
    /// The first close asked for; the connection closes with it.
    close: Option<Disconnect>,
    /// The connection's task is gone: frames are refused.
    gone: bool,
    /// The connection's task, while it waits for a frame or a close; taken
    /// by the first that comes (the task is then scheduled: later frames
    /// need not wake it again).
    waiting: Option<Waker>,
}

/// What the connection's task is woken for.
pub enum Next {
    Frame(Bytes),
    /// A close was asked for ([`Peer::close_reason`] says why).
    Close,
}

/// The receiving end of a connection's outbox, owned by its task.
pub struct Inbox(Arc<PeerInner>);

impl Inbox {
    /// The next queued frame, if any (also after a close was asked for).
    pub fn try_recv(&self) -> Option<Bytes> {
        self.0.state.lock().frames.pop_front()
    }

    pub fn is_empty(&self) -> bool {
        self.0.state.lock().frames.is_empty()
    }

    /// Gives back the queue's memory once it is drained (idle sockets hold none).
    pub fn release_if_empty(&self) {
        let mut state = self.0.state.lock();
        if state.frames.is_empty() {
            state.frames = VecDeque::new();
        }
    }

    /// Waits for a close request (first) or the next frame. Cancel-safe:
    /// a frame is only taken when this returns it.
    pub fn next(&self) -> impl Future<Output = Next> + '_ {
        std::future::poll_fn(|cx| {
            let mut state = self.0.state.lock();
            if state.close.is_some() {
                return Poll::Ready(Next::Close);
            }
            if let Some(frame) = state.frames.pop_front() {
                return Poll::Ready(Next::Frame(frame));
            }
            if !state
                .waiting
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                state.waiting = Some(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.gone = true;
        state.frames = VecDeque::new();
        state.waiting = None;
    }
}

impl Peer {
    /// A peer whose outbox holds at most `capacity` frames, and the outbox's
    /// receiving end.
    pub fn new(socket_id: Arc<str>, capacity: usize, slow_consumers: IntCounter) -> (Self, Inbox) {
        let inner = Arc::new(PeerInner {
            socket_id,
            state: Mutex::new(State {
                frames: VecDeque::new(),
                close: None,
                gone: false,
                waiting: None,
            }),
            capacity,
            slow_consumers,
        });
        (Self(inner.clone()), Inbox(inner))
    }

    pub fn socket_id(&self) -> &Arc<str> {
        &self.0.socket_id
    }

    /// Frames the outbox can still take before the connection counts as
    /// too slow.
    pub fn room(&self) -> usize {
        let state = self.0.state.lock();
        self.0.capacity.saturating_sub(state.frames.len())
    }

    /// Queues a finished frame. Returns false if the connection is gone or
    /// was just closed for being too slow.
    pub fn send(&self, frame: Bytes) -> bool {
        {
            let mut state = self.0.state.lock();
            if state.gone {
                return false;
            }
            if state.frames.len() < self.0.capacity {
                state.frames.push_back(frame);
                let waiting = state.waiting.take();
                drop(state);
                if let Some(task) = waiting {
                    task.wake();
                }
                return true;
            }
        }
        self.close_slow_consumer("too many queued messages");
        false
    }

    /// Closes a connection that cannot keep up (queue overflow or stalled write), counted once.
    pub fn close_slow_consumer(&self, why: &str) {
        if self.close(Disconnect::new(
            Cause::SlowConsumer,
            codes::OVER_CAPACITY,
            format!("slow consumer: {why}"),
        )) {
            self.0.slow_consumers.inc();
            tracing::info!(socket_id = %self.0.socket_id, why, "closing slow consumer");
        }
    }

    /// Asks the connection to close. The first disconnect wins; returns
    /// whether this call was it.
    pub fn close(&self, disconnect: Disconnect) -> bool {
        let waiting = {
            let mut state = self.0.state.lock();
            if state.close.is_some() {
                return false;
            }
            state.close = Some(disconnect);
            state.waiting.take()
        };
        if let Some(task) = waiting {
            task.wake();
        }
        true
    }

    pub fn close_reason(&self) -> Option<Disconnect> {
        self.0.state.lock().close.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_outbox_closes_the_peer_once_and_counts_it() {
        let counter = IntCounter::new("t", "t").unwrap();
        let (peer, rx) = Peer::new("1.1".into(), 2, counter.clone());
        assert!(peer.send(Bytes::from_static(b"a")));
        assert!(peer.send(Bytes::from_static(b"b")));
        assert!(!peer.send(Bytes::from_static(b"c")));
        assert!(!peer.send(Bytes::from_static(b"d")));
        assert_eq!(counter.get(), 1);
        // The close comes first; what was queued before the overflow is
        // still there (to flush), nothing more.
        assert!(matches!(rx.next().await, Next::Close));
        assert_eq!(peer.close_reason().unwrap().code, 4100);
        assert_eq!(rx.try_recv().unwrap(), "a");
        assert_eq!(rx.try_recv().unwrap(), "b");
        assert!(rx.try_recv().is_none());
        assert!(!peer.close(Disconnect::new(Cause::Shutdown, 4200, "later")));
    }

    #[tokio::test]
    async fn a_waiting_writer_wakes_for_a_frame_and_a_gone_writer_refuses_frames() {
        let counter = IntCounter::new("t", "t").unwrap();
        let (peer, rx) = Peer::new("1.1".into(), 4, counter);
        let sender = peer.clone();
        let waiting = tokio::spawn(async move {
            match rx.next().await {
                Next::Frame(frame) => frame,
                Next::Close => panic!("not closed"),
            }
        });
        tokio::task::yield_now().await;
        assert!(sender.send(Bytes::from_static(b"x")));
        assert_eq!(waiting.await.unwrap(), "x");
        // The task (and its inbox) ended: nothing is queued for nobody.
        assert!(!peer.send(Bytes::from_static(b"y")));
    }

    #[tokio::test]
    async fn a_waiting_writer_wakes_for_a_close() {
        let counter = IntCounter::new("t", "t").unwrap();
        let (peer, rx) = Peer::new("1.1".into(), 4, counter);
        let waiting = tokio::spawn(async move { matches!(rx.next().await, Next::Close) });
        tokio::task::yield_now().await;
        assert!(peer.close(Disconnect::new(Cause::Shutdown, 4200, "restarting")));
        let woke = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
        assert!(woke.unwrap().unwrap());
    }
}
