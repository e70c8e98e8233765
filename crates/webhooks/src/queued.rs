//! An event on its way to a receiver: what the queue hands over, the
//! sender delivers and a dead letter is made from. Its own module so that
//! the queue, the sender and the dead letters share these types without
//! depending on each other for them.

use async_nats::jetstream::{self, AckKind};
use herald_protocol::webhook::WebhookEvent;
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedSemaphorePermit;

/// One event for one receiver, as it waits in the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    pub app_id: String,
    /// Index of the receiver in the app's `webhooks`.
    pub target: usize,
    /// Unix milliseconds when it was queued; the retry window starts here.
    pub queued_ms: u64,
    pub event: WebhookEvent,
}

/// How a delivered (or dead) event is let go of.
pub(crate) enum Ack {
    /// Standalone: nothing to tell anyone.
    Memory,
    /// Cluster: acknowledged to the stream, which then deletes it.
    JetStream(Box<jetstream::Message>),
}

impl Ack {
    pub(crate) fn sequence(&self) -> Option<u64> {
        match self {
            Self::Memory => None,
            Self::JetStream(m) => m.info().ok().map(|i| i.stream_sequence),
        }
    }

    pub(crate) async fn done(&self) {
        if let Self::JetStream(m) = self {
            if let Err(e) = m.ack().await {
                tracing::warn!(error = %e, "webhook acknowledgement failed; it will be sent again");
            }
        }
    }

    /// Tells the stream the event is still being worked on (not redelivered).
    pub(crate) async fn in_progress(&self) {
        if let Self::JetStream(m) = self {
            let _ = m.ack_with(AckKind::Progress).await;
        }
    }
}

/// An event on its way to its receiver.
pub(crate) struct Pending {
    pub(crate) queued: Queued,
    pub(crate) attempts: u32,
    pub(crate) last_error: String,
    pub(crate) ack: Ack,
    /// Its place among the events this process may hold
    /// (`webhook_max_pending`), given back when the event is dropped.
    _room: OwnedSemaphorePermit,
}

impl Pending {
    pub(crate) fn new(queued: Queued, ack: Ack, room: OwnedSemaphorePermit) -> Self {
        Self {
            queued,
            attempts: 0,
            last_error: String::new(),
            ack,
            _room: room,
        }
    }
}
