//! What can go wrong with the replicated channel state. Every variant
//! displays what the log lines and the HTTP API's 503 bodies have always
//! said (docs/operations.md), so callers just print it.

use async_nats::jetstream::{context, kv};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot open KV bucket {bucket}: {source}")]
    OpenBucket {
        bucket: String,
        source: context::CreateKeyValueError,
    },
    #[error("KV bucket {bucket} unavailable: {source}")]
    BucketUnavailable {
        bucket: String,
        source: async_nats::Error,
    },
    #[error("KV bucket {bucket} unavailable: no answer in time")]
    TimedOut { bucket: String },
    #[error(transparent)]
    Put(#[from] kv::PutError),
    #[error(transparent)]
    Purge(#[from] kv::PurgeError),
    /// A heartbeat or a pipelined removal was refused.
    #[error(transparent)]
    Publish(#[from] context::PublishError),
}

impl StateError {
    pub(crate) fn timed_out(bucket: &str) -> Self {
        Self::TimedOut {
            bucket: bucket.to_owned(),
        }
    }
}
