//! Dead letters: events whose receiver failed for the whole retry window,
//! kept for an operator to inspect and replay (`herald webhooks
//! dead-letters` / `herald webhooks replay`, through the admin port).
//! Standalone keeps the last [`MEMORY_LIMIT`] in memory; cluster mode keeps
//! them in a JetStream stream for a week.

use crate::queue::Queue;
use crate::Queued;
use async_nats::jetstream::{message::PublishMessage, Context};
use herald_metrics::{AdminResponse, AdminRoutes};
use herald_protocol::token::encode_token;
use herald_protocol::unix_millis;
use herald_protocol::webhook::WebhookEvent;
use hyper::{Method, StatusCode};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

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

pub enum DeadLetters {
    Memory(Mutex<VecDeque<DeadLetter>>),
    JetStream {
        js: Box<Context>,
        stream: String,
        subject_prefix: String,
    },
}

impl DeadLetters {
    pub fn in_memory() -> Self {
        Self::Memory(Mutex::default())
    }

    pub fn jetstream(js: Context, nats: &herald_config::NatsConfig) -> Self {
        Self::JetStream {
            js: Box::new(js),
            stream: nats.webhook_dead_letter_stream.clone(),
            subject_prefix: nats.subject_prefix.clone(),
        }
    }

    pub(crate) async fn add(&self, letter: DeadLetter) -> Result<(), String> {
        match self {
            Self::Memory(list) => {
                let mut list = list.lock();
                if list.len() == MEMORY_LIMIT {
                    list.pop_front();
                }
                list.push_back(letter);
                Ok(())
            }
            Self::JetStream {
                js, subject_prefix, ..
            } => {
                let subject = format!("{subject_prefix}.whdead.{}", encode_token(&letter.app_id));
                let payload = serde_json::to_vec(&letter).expect("dead letters serialize");
                js.send_publish(subject, PublishMessage::build().payload(payload.into()))
                    .await
                    .map_err(|e| e.to_string())?
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// The stored dead letters with their stream sequences (cluster).
    async fn stored(&self) -> Result<Vec<(Option<u64>, DeadLetter)>, String> {
        match self {
            Self::Memory(list) => Ok(list.lock().iter().map(|l| (None, l.clone())).collect()),
            Self::JetStream { js, stream, .. } => {
                let mut stream = js.get_stream(stream).await.map_err(|e| e.to_string())?;
                let state = stream
                    .info()
                    .await
                    .map_err(|e| e.to_string())?
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

    pub async fn list(&self) -> Result<Vec<DeadLetter>, String> {
        Ok(self.stored().await?.into_iter().map(|(_, l)| l).collect())
    }

    /// Queues every dead letter again (with a fresh retry window) and
    /// removes it from the list; returns how many.
    pub async fn replay(&self, queue: &Queue) -> Result<usize, String> {
        let requeue = |letter: DeadLetter| Queued {
            app_id: letter.app_id,
            target: letter.target,
            queued_ms: unix_millis(),
            event: letter.event,
        };
        match self {
            Self::Memory(list) => {
                let letters: Vec<_> = list.lock().drain(..).collect();
                let count = letters.len();
                for letter in letters {
                    queue.push_now(requeue(letter)).await?;
                }
                Ok(count)
            }
            Self::JetStream { js, stream, .. } => {
                let stream = js.get_stream(stream).await.map_err(|e| e.to_string())?;
                let mut count = 0;
                for (seq, letter) in self.stored().await? {
                    queue.push_now(requeue(letter)).await?;
                    if let Some(seq) = seq {
                        stream
                            .delete_message(seq)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    count += 1;
                }
                Ok(count)
            }
        }
    }
}

/// `GET /webhooks/dead-letters` and `POST /webhooks/dead-letters/replay`
/// on the admin port.
pub struct WebhookAdmin {
    pub dead: Arc<DeadLetters>,
    pub queue: Arc<Queue>,
}

type Answer = Pin<Box<dyn Future<Output = AdminResponse> + Send>>;

fn json(result: Result<serde_json::Value, String>) -> AdminResponse {
    match result {
        Ok(body) => (StatusCode::OK, "application/json", format!("{body}\n")),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "application/json",
            format!("{}\n", serde_json::json!({ "error": e })),
        ),
    }
}

impl AdminRoutes for WebhookAdmin {
    fn route(&self, method: &Method, path: &str) -> Option<Answer> {
        let dead = self.dead.clone();
        match (method, path) {
            (&Method::GET, "/webhooks/dead-letters") => Some(Box::pin(async move {
                json(
                    dead.list()
                        .await
                        .map(|l| serde_json::json!({ "dead_letters": l })),
                )
            })),
            (&Method::POST, "/webhooks/dead-letters/replay") => {
                let queue = self.queue.clone();
                Some(Box::pin(async move {
                    json(
                        dead.replay(&queue)
                            .await
                            .map(|n| serde_json::json!({ "replayed": n })),
                    )
                }))
            }
            (_, "/webhooks/dead-letters" | "/webhooks/dead-letters/replay") => {
                Some(Box::pin(async {
                    (
                        StatusCode::METHOD_NOT_ALLOWED,
                        "text/plain",
                        "method not allowed\n".to_owned(),
                    )
                }))
            }
            _ => None,
        }
    }
}
