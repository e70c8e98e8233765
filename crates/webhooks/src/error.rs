//! What can go wrong queuing, delivering and keeping webhook events. The
//! texts are what the log lines and the admin endpoints' 503 bodies have
//! always said (docs/operations.md), so callers just print them.

use async_nats::jetstream::context::CreateStreamError;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A JetStream request failed (publish, stream, consumer).
    #[error("{0}")]
    Nats(async_nats::Error),
    #[error("webhook stream {name}: {source}")]
    Stream {
        name: String,
        source: CreateStreamError,
    },
    #[error("webhook HTTP client: {0}")]
    HttpClient(reqwest::Error),
    /// A POST that got no answer, with its whole cause chain.
    #[error("{0}")]
    Request(String),
    /// Standalone holds `webhook_max_pending` events already.
    #[error("the webhook backlog is full (webhook_max_pending)")]
    BacklogFull,
    #[error("no such webhook receiver")]
    UnknownReceiver,
    /// A POST answered with something other than 2XX.
    #[error("HTTP {0}")]
    Status(reqwest::StatusCode),
}

impl WebhookError {
    /// For `map_err` on any JetStream call.
    pub(crate) fn nats(error: impl Into<async_nats::Error>) -> Self {
        Self::Nats(error.into())
    }
}
