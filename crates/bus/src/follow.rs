//! One subscribed subject, delivered in stream order, each message once,
//! with gaps filled from the stream (see `stream.rs` for why).
//!
//! A [`Follower`] lives in its subject's subscription task, so one subject's
//! messages, live or read back, pass through one place in order. The count
//! starts at the first message this node receives on the subject: asking
//! the stream for a starting point when subscribing would cost every new
//! channel a round trip, and could not tell which of the messages stored
//! meanwhile were before the subscription.

use crate::batch::Holds;
use crate::stream::{EventStream, Stored};
use crate::{BusMessage, Sink};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::time::Instant;

/// How long a gap is retried while the stream cannot be read (NATS down or
/// electing a leader) before its messages are counted as lost.
const RECOVERY_PATIENCE: Duration = Duration::from_secs(30);
/// Between two attempts to read the stream.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

pub(crate) struct Follower {
    /// The published subject (the stream's), not the republished one.
    subject: String,
    /// The last sequence delivered; `None` until the subject's first
    /// message on this node, which starts the count.
    last: Option<u64>,
    stream: EventStream,
    holds: Arc<Holds>,
    sink: Arc<OnceLock<Arc<dyn Sink>>>,
    /// A history channel: each event gets its stream sequence as its id.
    stamp_ids: bool,
}

impl Follower {
    pub(crate) fn new(
        subject: String,
        stream: EventStream,
        holds: Arc<Holds>,
        sink: Arc<OnceLock<Arc<dyn Sink>>>,
        stamp_ids: bool,
    ) -> Self {
        Self {
            subject,
            last: None,
            stream,
            holds,
            sink,
            stamp_ids,
        }
    }

    /// A live (republished) message: fills the gap before it, skips it if
    /// it was delivered already.
    pub(crate) async fn on_live(&mut self, stored: Option<Stored>, payload: &[u8]) {
        let Some(stored) = stored else {
            // Not from the stream (a server without republish): as is.
            self.deliver(payload, None, None);
            return;
        };
        if let Some(last) = self.last {
            if stored.seq <= last {
                return;
            }
            if stored.previous > last {
                if let Some(sink) = self.sink.get() {
                    sink.gap_detected();
                }
                tracing::info!(subject = %self.subject, after = last, before = stored.seq, "gap in a channel's messages; reading them back from the event stream");
                self.recover(last + 1, Some(stored.seq), stored.previous)
                    .await;
            }
        }
        self.deliver(payload, Some(stored.seq), stored.at_ms);
        self.last = Some(stored.seq);
    }

    /// After a reconnect: delivers what was stored since the last delivered
    /// message and missed meanwhile. The stream may have no leader for a
    /// while (its server was the one lost): retried as long as a gap is.
    pub(crate) async fn catch_up(&mut self) {
        let Some(last) = self.last else {
            return;
        };
        let give_up = Instant::now() + RECOVERY_PATIENCE;
        let tail = loop {
            match self.stream.last_seq(&self.subject).await {
                Ok(tail) => break tail,
                Err(e) if Instant::now() < give_up => {
                    tracing::debug!(subject = %self.subject, error = %e, "event stream not readable yet; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => return self.failed(&e),
            }
        };
        if tail > last {
            if let Some(sink) = self.sink.get() {
                sink.gap_detected();
            }
            self.recover(last + 1, None, tail).await;
        }
    }

    /// Delivers the stored messages from `from` up to (not including)
    /// `until`, or to the end; `must_reach` is the last of them known to
    /// have been stored.
    async fn recover(&mut self, from: u64, until: Option<u64>, must_reach: u64) {
        let mut next = from;
        let give_up = Instant::now() + RECOVERY_PATIENCE;
        let mut recovered = 0usize;
        loop {
            match self.stream.next(&self.subject, next).await {
                Ok(Some(m)) if until.is_none_or(|u| m.seq < u) => {
                    self.deliver(&m.payload, Some(m.seq), m.at_ms);
                    self.last = Some(m.seq);
                    recovered += 1;
                    next = m.seq + 1;
                }
                Ok(_) => {
                    if self.last.is_none_or(|l| l < must_reach) {
                        self.failed(&format!(
                            "messages up to {must_reach} are no longer in the event stream"
                        ));
                    }
                    break;
                }
                Err(e) if Instant::now() < give_up => {
                    tracing::debug!(subject = %self.subject, error = %e, "event stream not readable yet; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => {
                    self.failed(&e);
                    break;
                }
            }
        }
        if recovered > 0 {
            if let Some(sink) = self.sink.get() {
                sink.recovered(recovered);
            }
            tracing::info!(subject = %self.subject, events = recovered, "recovered missed messages from the event stream");
        }
    }

    fn failed(&self, why: &str) {
        if let Some(sink) = self.sink.get() {
            sink.recovery_failed();
        }
        tracing::error!(subject = %self.subject, error = why, "could not recover missed messages: connected sockets may have missed events");
    }

    fn deliver(&self, payload: &[u8], seq: Option<u64>, stored_ms: Option<u64>) {
        match BusMessage::decode(payload) {
            Ok(mut decoded) => {
                if let (true, BusMessage::Event(envelope)) = (self.stamp_ids, &mut decoded) {
                    envelope.id = seq;
                }
                if let Some(sink) = self.sink.get() {
                    self.holds.deliver(decoded, stored_ms, sink.as_ref());
                }
            }
            Err(e) => {
                tracing::warn!(subject = %self.subject, error = %e, "dropping undecodable bus message")
            }
        }
    }
}
