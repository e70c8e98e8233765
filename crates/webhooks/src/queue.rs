//! Where webhook events wait for their sender.
//!
//! Standalone hands them straight to this process's [`Sender`]. Cluster
//! mode publishes them to a JetStream work-queue stream, deduplicated by
//! message id, which the ingest processes consume through one shared
//! durable consumer; a second stream keeps the dead letters.
//!
//! The consumer pulls only as many events as the sender has room for
//! (`webhook_max_pending`), so every event pulled is in a receiver's
//! backlog, where it is kept alive until acknowledged: none sits in a
//! client-side buffer while its ack wait runs out.

use crate::error::WebhookError;
use crate::metrics::WebhookMetrics;
use crate::queued::{Ack, Pending, Queued};
use crate::sender::Sender;
use async_nats::jetstream::{self, consumer, message::PublishMessage, stream, Context};
use futures::StreamExt;
use herald_config::NatsConfig;
use herald_protocol::token::encode_token;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

/// Events waiting to be published to JetStream, per process.
const PUBLISH_BACKLOG: usize = 65_536;
/// How long JetStream remembers message ids: far longer than nodes disagree
/// about when a transition happened (milliseconds, or the hold-back).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Queued events older than this are dropped by the stream (a sender was
/// down for a day): far beyond the retry window.
const QUEUE_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Dead letters are kept this long unless replayed.
const DEAD_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Events handed to senders and not yet acknowledged, cluster-wide.
const MAX_ACK_PENDING: i64 = 20_000;
/// Most events one pull request asks for.
const PULL_BATCH: usize = 256;
/// How long a pull request waits for events when the stream is empty.
const PULL_WAIT: Duration = Duration::from_secs(5);
const CONSUMER: &str = "herald-webhook-sender";

/// Where this process queues webhook events (see "Standalone or cluster"
/// in docs/architecture.md).
pub struct Queue(Backend);

enum Backend {
    /// Standalone: straight to this process's sender.
    Memory(Arc<Sender>),
    /// Cluster: to the JetStream stream, through a publishing task.
    Nats {
        backlog: mpsc::Sender<(Queued, Option<String>)>,
        js: Box<JsQueue>,
    },
}

/// Publishing into the cluster's webhook stream.
#[derive(Clone)]
struct JsQueue {
    js: Context,
    subject_prefix: String,
    metrics: Arc<WebhookMetrics>,
}

impl JsQueue {
    /// Publishes one event; `id` makes a repeat within the duplicate window a no-op.
    async fn publish(&self, queued: &Queued, id: Option<&str>) -> Result<(), WebhookError> {
        let subject = format!(
            "{}.wh.{}",
            self.subject_prefix,
            encode_token(&queued.app_id)
        );
        let payload = serde_json::to_vec(queued).expect("queued events serialize");
        let mut publish = PublishMessage::build().payload(payload.into());
        if let Some(id) = id {
            publish = publish.message_id(id);
        }
        let ack = self
            .js
            .send_publish(subject, publish)
            .await
            .map_err(WebhookError::nats)?
            .await
            .map_err(WebhookError::nats)?;
        if !ack.duplicate {
            self.metrics
                .queued
                .with_label_values(&[&queued.app_id])
                .inc();
        }
        Ok(())
    }

    /// Publishes with a few retries (NATS may be reconnecting); the id makes
    /// retrying safe.
    async fn publish_retrying(&self, queued: Queued, id: Option<String>) {
        let mut attempt = 0;
        let last_error = loop {
            match self.publish(&queued, id.as_deref()).await {
                Ok(()) => return,
                Err(e) if attempt == 4 => break e,
                Err(_) => attempt += 1,
            }
            tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
        };
        self.metrics
            .queue_failures
            .with_label_values(&[&queued.app_id])
            .inc();
        tracing::warn!(app = %queued.app_id, event = ?queued.event.name, error = %last_error, "webhook event could not be queued");
    }
}

impl Queue {
    /// The standalone queue: events go straight to this process's sender.
    pub fn in_memory(sender: Arc<Sender>) -> Self {
        Self(Backend::Memory(sender))
    }

    /// The cluster queue; publishes from a background task.
    pub fn nats(js: Context, nats: &NatsConfig, metrics: Arc<WebhookMetrics>) -> Self {
        let js = JsQueue {
            js,
            subject_prefix: nats.subject_prefix.clone(),
            metrics,
        };
        let (backlog, mut rx) = mpsc::channel::<(Queued, Option<String>)>(PUBLISH_BACKLOG);
        let publisher = js.clone();
        tokio::spawn(async move {
            while let Some((queued, id)) = rx.recv().await {
                // Acks are awaited concurrently so one slow ack does not stall the rest.
                let publisher = publisher.clone();
                tokio::spawn(async move { publisher.publish_retrying(queued, id).await });
            }
        });
        Self(Backend::Nats {
            backlog,
            js: Box::new(js),
        })
    }

    /// Queues an event without waiting (called from state transitions).
    pub(crate) fn push(&self, queued: Queued, id: Option<String>) {
        match &self.0 {
            Backend::Memory(sender) => {
                // A refusal is counted (and logged) by the sender.
                let _ = sender.offer(queued);
            }
            Backend::Nats { backlog, js } => {
                if let Err(e) = backlog.try_send((queued, id)) {
                    let queued = match e {
                        mpsc::error::TrySendError::Full(q)
                        | mpsc::error::TrySendError::Closed(q) => q.0,
                    };
                    js.metrics
                        .queue_failures
                        .with_label_values(&[&queued.app_id])
                        .inc();
                    tracing::warn!(app = %queued.app_id, "webhook publish backlog full; event dropped");
                }
            }
        }
    }

    /// Queues an event and waits until it is stored (replay of dead letters).
    pub(crate) async fn push_now(&self, queued: Queued) -> Result<(), WebhookError> {
        match &self.0 {
            Backend::Memory(sender) => sender.offer(queued),
            Backend::Nats { js, .. } => js.publish(&queued, None).await,
        }
    }
}

/// Creates the webhook and dead-letter streams if they are missing.
pub async fn ensure_streams(js: &Context, nats: &NatsConfig) -> Result<(), WebhookError> {
    let prefix = &nats.subject_prefix;
    for (name, subject, retention, max_age) in [
        (
            &nats.webhook_stream,
            format!("{prefix}.wh.>"),
            stream::RetentionPolicy::WorkQueue,
            QUEUE_MAX_AGE,
        ),
        (
            &nats.webhook_dead_letter_stream,
            format!("{prefix}.whdead.>"),
            stream::RetentionPolicy::Limits,
            DEAD_MAX_AGE,
        ),
    ] {
        js.get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject],
            retention,
            max_age,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: nats.kv_replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|source| WebhookError::Stream {
            name: name.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Feeds `sender` from the cluster's webhook stream forever, re-opening the
/// consumer (and the streams, if NATS lost them) after errors.
pub fn consume(js: Context, nats: NatsConfig, sender: Arc<Sender>) {
    tokio::spawn(async move {
        loop {
            if let Err(e) = consume_once(&js, &nats, &sender).await {
                tracing::warn!(error = %e, "webhook consumer interrupted; re-opening");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

async fn consume_once(
    js: &Context,
    nats: &NatsConfig,
    sender: &Sender,
) -> Result<(), WebhookError> {
    ensure_streams(js, nats).await?;
    let stream = js
        .get_stream(&nats.webhook_stream)
        .await
        .map_err(WebhookError::nats)?;
    let config = consumer::pull::Config {
        durable_name: Some(CONSUMER.into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(nats.webhook_ack_wait_secs),
        max_ack_pending: MAX_ACK_PENDING,
        ..Default::default()
    };
    // Create or update, so a changed ack wait takes effect.
    let consumer: consumer::PullConsumer = match stream.create_consumer(config.clone()).await {
        Ok(c) => c,
        Err(_) => stream
            .get_consumer(CONSUMER)
            .await
            .map_err(WebhookError::nats)?,
    };
    loop {
        let mut room = sender.room_for(PULL_BATCH).await;
        let mut batch = consumer
            .batch()
            .max_messages(room.len())
            .expires(PULL_WAIT)
            .messages()
            .await
            .map_err(WebhookError::nats)?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(WebhookError::nats)?;
            let room = room.pop().expect("a pull asks for at most its room");
            hand_over(sender, message, room).await;
        }
    }
}

/// Gives a pulled event to its receiver's task; terminates what cannot be
/// delivered (undecodable, receiver no longer configured).
async fn hand_over(sender: &Sender, message: jetstream::Message, room: OwnedSemaphorePermit) {
    let queued = match serde_json::from_slice::<Queued>(&message.payload) {
        Ok(queued) => queued,
        Err(e) => {
            tracing::warn!(error = %e, "undecodable webhook event dropped");
            let _ = message.ack_with(jetstream::AckKind::Term).await;
            return;
        }
    };
    if let Err(pending) = sender.route(Pending::new(
        queued,
        Ack::JetStream(Box::new(message)),
        room,
    )) {
        tracing::warn!(app = %pending.queued.app_id, target = pending.queued.target, "webhook for a receiver that is no longer configured; dropped");
        if let Ack::JetStream(m) = &pending.ack {
            let _ = m.ack_with(jetstream::AckKind::Term).await;
        }
    }
}
