//! Dead letters: events whose receiver failed for the whole retry window,
//! kept for an operator to inspect and replay (`herald webhooks
//! dead-letters` / `herald webhooks replay`, through the admin port).
//! Standalone keeps the last [`MEMORY_LIMIT`] in memory; cluster mode keeps
//! them in a JetStream stream for a week.

use crate::error::WebhookError;
use crate::queued::Queued;
use async_nats::jetstream::{message::PublishMessage, Context};
use herald_protocol::token::encode_token;
use herald_protocol::unix_millis;
use herald_protocol::webhook::WebhookEvent;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::future::Future;

/// Dead letters kept by a standalone process (oldest dropped first).
pub const MEMORY_LIMIT: usize = 10_000;
/// Dead letters listed or replayed per request.
const PAGE: u64 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub app_id: String,
    /// Index of the receiver in the app's `webhooks`.
    pub target: usize,
    pub url: String,
    pub event: WebhookEvent,
    pub queued_ms: u64,
    pub failed_ms: u64,
    pub attempts: u32,
    pub last_error: String,
}

impl DeadLetter {
    /// The event queued again for its receiver, with a fresh retry window.
    pub(crate) fn requeued(self) -> Queued {
        Queued {
            app_id: self.app_id,
            target: self.target,
            queued_ms: unix_millis(),
            event: self.event,
        }
    }
}

/// Where this process keeps its dead letters (see "Standalone or cluster"
/// in docs/architecture.md).
pub struct DeadLetters(Backend);

enum Backend {
    Memory(Mutex<VecDeque<DeadLetter>>),
    Nats {
        js: Box<Context>,
        stream: String,
        subject_prefix: String,
    },
}

impl DeadLetters {
    pub fn in_memory() -> Self {
        Self(Backend::Memory(Mutex::default()))
    }

    /// The cluster's dead-letter stream.
    pub fn nats(js: Context, nats: &herald_config::NatsConfig) -> Self {
        Self(Backend::Nats {
            js: Box::new(js),
            stream: nats.webhook_dead_letter_stream.clone(),
            subject_prefix: nats.subject_prefix.clone(),
        })
    }

    pub(crate) async fn add(&self, letter: DeadLetter) -> Result<(), WebhookError> {
        match &self.0 {
            Backend::Memory(list) => {
                let mut list = list.lock();
                if list.len() == MEMORY_LIMIT {
                    list.pop_front();
                }
                list.push_back(letter);
                Ok(())
            }
            Backend::Nats {
                js, subject_prefix, ..
            } => {
                let subject = format!("{subject_prefix}.whdead.{}", encode_token(&letter.app_id));
                let payload = serde_json::to_vec(&letter).expect("dead letters serialize");
                js.send_publish(subject, PublishMessage::build().payload(payload.into()))
                    .await
                    .map_err(WebhookError::nats)?
                    .await
                    .map(|_| ())
                    .map_err(WebhookError::nats)
            }
        }
    }

    /// The stored dead letters with their stream sequences (cluster).
    async fn stored(&self) -> Result<Vec<(Option<u64>, DeadLetter)>, WebhookError> {
        match &self.0 {
            Backend::Memory(list) => Ok(list.lock().iter().map(|l| (None, l.clone())).collect()),
            Backend::Nats { js, stream, .. } => {
                let mut stream = js.get_stream(stream).await.map_err(WebhookError::nats)?;
                let state = stream
                    .info()
                    .await
                    .map_err(WebhookError::nats)?
                    .state
                    .clone();
                let mut out = Vec::new();
                if state.messages == 0 {
                    return Ok(out);
                }
                let last = state.last_sequence.min(state.first_sequence + PAGE);
                for seq in state.first_sequence..=last {
                    // Replayed letters are deleted: gaps are expected.
                    let Ok(message) = stream.get_raw_message(seq).await else {
                        continue;
                    };
                    match serde_json::from_slice(&message.payload) {
                        Ok(letter) => out.push((Some(seq), letter)),
                        Err(e) => {
                            tracing::warn!(seq, error = %e, "undecodable dead letter skipped")
                        }
                    }
                }
                Ok(out)
            }
        }
    }

    pub async fn list(&self) -> Result<Vec<DeadLetter>, WebhookError> {
        Ok(self.stored().await?.into_iter().map(|(_, l)| l).collect())
    }

    /// Hands every dead letter to `requeue` (which queues it again) and
    /// removes it from the list; returns how many. The queue is a callback
    /// so that dead letters, which the sender fills, do not depend on the
    /// queue that feeds the sender.
    pub(crate) async fn replay<F, Fut>(&self, requeue: F) -> Result<usize, WebhookError>
    where
        F: Fn(DeadLetter) -> Fut,
        Fut: Future<Output = Result<(), WebhookError>>,
    {
        match &self.0 {
            Backend::Memory(list) => {
                let mut count = 0;
                // One at a time: a letter the queue refuses (full) stays listed.
                loop {
                    let Some(letter) = list.lock().pop_front() else {
                        return Ok(count);
                    };
                    if let Err(e) = requeue(letter.clone()).await {
                        list.lock().push_front(letter);
                        return Err(e);
                    }
                    count += 1;
                }
            }
            Backend::Nats { js, stream, .. } => {
                let stream = js.get_stream(stream).await.map_err(WebhookError::nats)?;
                let mut count = 0;
                for (seq, letter) in self.stored().await? {
                    requeue(letter).await?;
                    if let Some(seq) = seq {
                        stream
                            .delete_message(seq)
                            .await
                            .map_err(WebhookError::nats)?;
                    }
                    count += 1;
                }
                Ok(count)
            }
        }
    }
}
