//! The handle through which everything else talks to one connection.
//!
//! A [`Peer`] is cheap to clone and is what the hub stores per subscription.
//! Sending never blocks: a frame goes into the connection's bounded outbox or,
//! if the outbox is full, the connection is closed as a slow consumer, so one
//! stalled client can neither grow memory nor hold up fan-out to others.

use bytes::Bytes;
use herald_protocol::codes;
use prometheus::IntCounter;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Why and how a connection is being closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub message: String,
    /// Label for `herald_connections_closed_total`.
    pub label: &'static str,
}

#[derive(Clone)]
pub struct Peer(Arc<PeerInner>);

struct PeerInner {
    socket_id: Arc<str>,
    outbox: mpsc::Sender<Bytes>,
    close: watch::Sender<Option<CloseReason>>,
    slow_consumers: IntCounter,
}

impl Peer {
    pub fn new(
        socket_id: Arc<str>,
        outbox: mpsc::Sender<Bytes>,
        slow_consumers: IntCounter,
    ) -> (Self, watch::Receiver<Option<CloseReason>>) {
        let (close, closed) = watch::channel(None);
        let peer = Self(Arc::new(PeerInner {
            socket_id,
            outbox,
            close,
            slow_consumers,
        }));
        (peer, closed)
    }

    pub fn socket_id(&self) -> &Arc<str> {
        &self.0.socket_id
    }

    /// Queues a finished frame. Returns false if the connection is gone or
    /// was just closed for being too slow.
    pub fn send(&self, frame: Bytes) -> bool {
        match self.0.outbox.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close_slow_consumer("too many queued messages");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Closes a connection that cannot keep up (queue overflow or stalled write), counted once.
    pub fn close_slow_consumer(&self, why: &str) {
        if self.close(
            codes::OVER_CAPACITY,
            &format!("slow consumer: {why}"),
            "slow_consumer",
        ) {
            self.0.slow_consumers.inc();
            tracing::info!(socket_id = %self.0.socket_id, why, "closing slow consumer");
        }
    }

    /// Asks the connection to close with `code`. The first reason wins;
    /// returns whether this call was it.
    pub fn close(&self, code: u16, message: &str, label: &'static str) -> bool {
        self.0.close.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(CloseReason {
                code,
                message: message.to_owned(),
                label,
            });
            true
        })
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.0.close.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_outbox_closes_the_peer_once_and_counts_it() {
        let (tx, mut rx) = mpsc::channel(2);
        let counter = IntCounter::new("t", "t").unwrap();
        let (peer, mut closed) = Peer::new("1.1".into(), tx, counter.clone());
        assert!(peer.send(Bytes::from_static(b"a")));
        assert!(peer.send(Bytes::from_static(b"b")));
        assert!(!peer.send(Bytes::from_static(b"c")));
        assert!(!peer.send(Bytes::from_static(b"d")));
        assert_eq!(counter.get(), 1);
        closed.changed().await.unwrap();
        assert_eq!(peer.close_reason().unwrap().code, 4100);
        // What was queued before the overflow is still there, nothing more.
        assert_eq!(rx.recv().await.unwrap(), "a");
        assert_eq!(rx.recv().await.unwrap(), "b");
        assert!(rx.try_recv().is_err());
        assert!(!peer.close(4200, "later", "shutdown"));
    }
}
