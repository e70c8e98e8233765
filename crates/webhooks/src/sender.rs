//! Delivery: one task per receiver collects events into batches (up to
//! `webhook_batch_size` within `webhook_batch_ms`), signs and POSTs them,
//! and on anything but a 2XX within the timeout retries with exponential
//! backoff until the retry window of each event has passed; then the event
//! becomes a dead letter. One request per receiver is in flight at a time,
//! so a failing receiver is not flooded and, once it recovers, its backlog
//! drains in full batches.

use crate::dead::{DeadLetter, DeadLetters};
use crate::error::WebhookError;
use crate::metrics::WebhookMetrics;
use crate::queued::{Ack, Pending};
use async_nats::jetstream::AckKind;
use herald_config::{AppConfig, WebhookDelivery};
use herald_protocol::unix_millis;
use herald_protocol::webhook::{signed_body, WebhookEvent};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Events waiting for one receiver in this process, beyond which new ones
/// are refused (standalone) or the JetStream consumer waits.
const TARGET_BACKLOG: usize = 100_000;

/// This process's delivery of webhooks to every configured receiver.
pub struct Sender {
    targets: HashMap<(String, usize), mpsc::Sender<Pending>>,
    metrics: Arc<WebhookMetrics>,
}

impl Sender {
    /// Starts one delivery task per receiver. `keep_alive`: how often held
    /// JetStream events are reported in progress (a third of the ack wait).
    pub fn start(
        apps: &[Arc<AppConfig>],
        delivery: &WebhookDelivery,
        dead: Arc<DeadLetters>,
        metrics: Arc<WebhookMetrics>,
        keep_alive: Option<Duration>,
    ) -> Result<Arc<Self>, WebhookError> {
        let client = reqwest::Client::builder()
            .timeout(delivery.timeout)
            .connect_timeout(delivery.timeout)
            // A redirect would turn the POST into a body-less GET whose 2XX
            // would count as delivered: a 3XX is a failure instead.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("herald-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(WebhookError::HttpClient)?;
        let mut targets = HashMap::new();
        for app in apps {
            for (index, hook) in app.webhooks.iter().enumerate() {
                let (tx, rx) = mpsc::channel(TARGET_BACKLOG);
                let target = Target {
                    app: app.clone(),
                    index,
                    url: hook.url.clone(),
                    delivery: delivery.clone(),
                    client: client.clone(),
                    dead: dead.clone(),
                    metrics: metrics.clone(),
                    keep_alive,
                };
                tokio::spawn(target.run(rx));
                targets.insert((app.id.clone(), index), tx);
            }
        }
        Ok(Arc::new(Self { targets, metrics }))
    }

    pub(crate) fn metrics(&self) -> &WebhookMetrics {
        &self.metrics
    }

    /// Hands an event to its receiver's task without waiting (standalone).
    pub(crate) fn route(&self, pending: Pending) {
        let app = pending.queued.app_id.clone();
        let refused = match self.targets.get(&(app.clone(), pending.queued.target)) {
            Some(tx) => tx.try_send(pending).is_err(),
            None => true,
        };
        if refused {
            self.metrics.queue_failures.with_label_values(&[&app]).inc();
            tracing::warn!(%app, "webhook backlog full or receiver unknown; event dropped");
        }
    }

    /// Hands an event to its receiver's task, waiting while it is busy
    /// (the JetStream consumer: the stream keeps the rest meanwhile).
    pub(crate) async fn route_waiting(&self, pending: Pending) {
        let key = (pending.queued.app_id.clone(), pending.queued.target);
        match self.targets.get(&key) {
            Some(tx) => {
                let _ = tx.send(pending).await;
            }
            None => {
                tracing::warn!(app = %key.0, target = key.1, "webhook for a receiver that is no longer configured; dropped");
                if let Ack::JetStream(m) = &pending.ack {
                    let _ = m.ack_with(AckKind::Term).await;
                }
            }
        }
    }
}

/// One receiver of one app.
struct Target {
    app: Arc<AppConfig>,
    index: usize,
    url: String,
    delivery: WebhookDelivery,
    client: reqwest::Client,
    dead: Arc<DeadLetters>,
    metrics: Arc<WebhookMetrics>,
    keep_alive: Option<Duration>,
}

/// The events a receiver's task holds, oldest first.
#[derive(Default)]
struct Backlog {
    queue: VecDeque<Pending>,
    /// Stream sequences held, to drop a redelivery of one we still have.
    sequences: HashSet<u64>,
}

impl Backlog {
    fn accept(&mut self, pending: Pending, metrics: &WebhookMetrics) {
        if let Some(seq) = pending.ack.sequence() {
            if !self.sequences.insert(seq) {
                return;
            }
        }
        metrics
            .pending
            .with_label_values(&[&pending.queued.app_id])
            .inc();
        self.queue.push_back(pending);
    }

    fn release(&mut self, pending: &Pending, metrics: &WebhookMetrics) {
        if let Some(seq) = pending.ack.sequence() {
            self.sequences.remove(&seq);
        }
        metrics
            .pending
            .with_label_values(&[&pending.queued.app_id])
            .dec();
    }
}

/// The full error chain of a request failure ("connection refused", not
/// just "error sending request").
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Target {
    async fn post(&self, events: &[WebhookEvent]) -> Result<(), WebhookError> {
        let (body, signature) = signed_body(&self.app.secret, unix_millis(), events);
        let response = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Pusher-Key", &self.app.key)
            .header("X-Pusher-Signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| WebhookError::Request(describe(&e)))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(WebhookError::Status(status))
        }
    }

    async fn keep_alive_all<'a>(held: impl Iterator<Item = &'a Pending>) {
        for pending in held {
            pending.ack.in_progress().await;
        }
    }

    async fn run(self, mut rx: mpsc::Receiver<Pending>) {
        let app = self.app.id.clone();
        let metrics = self.metrics.clone();
        let mut backlog = Backlog::default();
        let mut backoff = FIRST_BACKOFF;
        let mut open = true;
        let mut keep_alive =
            tokio::time::interval(self.keep_alive.unwrap_or(Duration::from_secs(3600)));
        loop {
            if backlog.queue.is_empty() {
                tokio::select! {
                    pending = rx.recv(), if open => match pending {
                        Some(p) => backlog.accept(p, &metrics),
                        None => open = false,
                    },
                    _ = keep_alive.tick() => {}
                }
                if !open && backlog.queue.is_empty() {
                    return;
                }
                continue;
            }
            // Let a fresh batch fill for the batch window.
            let deadline = Instant::now() + self.delivery.batch_window;
            while open && backlog.queue.len() < self.delivery.batch_size {
                tokio::select! {
                    pending = rx.recv() => match pending {
                        Some(p) => backlog.accept(p, &metrics),
                        None => open = false,
                    },
                    _ = sleep_until(deadline) => break,
                }
            }
            let take = backlog.queue.len().min(self.delivery.batch_size);
            let batch: Vec<Pending> = backlog.queue.drain(..take).collect();
            let events: Vec<WebhookEvent> = batch.iter().map(|p| p.queued.event.clone()).collect();
            let post = self.post(&events);
            tokio::pin!(post);
            let result = loop {
                tokio::select! {
                    result = &mut post => break result,
                    _ = keep_alive.tick() => {
                        Self::keep_alive_all(batch.iter().chain(&backlog.queue)).await;
                    }
                }
            };
            match result {
                Ok(()) => {
                    let now = unix_millis();
                    for pending in &batch {
                        pending.ack.done().await;
                        backlog.release(pending, &metrics);
                        let lag = now.saturating_sub(pending.queued.queued_ms) as f64 / 1000.0;
                        metrics.lag.with_label_values(&[&app]).observe(lag);
                    }
                    metrics
                        .sent
                        .with_label_values(&[&app])
                        .inc_by(batch.len() as u64);
                    backoff = FIRST_BACKOFF;
                }
                Err(error) => {
                    tracing::warn!(%app, url = %self.url, events = batch.len(), %error, retry_in = ?backoff, "webhook request failed");
                    self.fail(batch, &error, &mut backlog).await;
                    // Back off; meanwhile take new events and keep held ones alive.
                    let until = Instant::now() + backoff;
                    loop {
                        tokio::select! {
                            pending = rx.recv(), if open => match pending {
                                Some(p) => backlog.accept(p, &metrics),
                                None => open = false,
                            },
                            _ = keep_alive.tick() => Self::keep_alive_all(backlog.queue.iter()).await,
                            _ = sleep_until(until) => break,
                        }
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// A failed batch: events past their retry window become dead letters,
    /// the rest go back to the front of the queue in order.
    async fn fail(&self, batch: Vec<Pending>, error: &WebhookError, backlog: &mut Backlog) {
        let app = &self.app.id;
        let window = self.delivery.retry_window.as_millis() as u64;
        let now = unix_millis();
        for mut pending in batch.into_iter().rev() {
            pending.attempts += 1;
            pending.last_error = error.to_string();
            if now.saturating_sub(pending.queued.queued_ms) < window {
                self.metrics.retries.with_label_values(&[app]).inc();
                backlog.queue.push_front(pending);
                continue;
            }
            let letter = DeadLetter {
                app_id: app.clone(),
                target: self.index,
                url: self.url.clone(),
                event: pending.queued.event.clone(),
                queued_ms: pending.queued.queued_ms,
                failed_ms: now,
                attempts: pending.attempts,
                last_error: pending.last_error.clone(),
            };
            match self.dead.add(letter).await {
                Ok(()) => {
                    tracing::warn!(%app, url = %self.url, event = ?pending.queued.event.name, attempts = pending.attempts, "webhook event failed for the whole retry window; kept as a dead letter");
                    self.metrics.dead.with_label_values(&[app]).inc();
                    pending.ack.done().await;
                    backlog.release(&pending, &self.metrics);
                }
                Err(e) => {
                    tracing::warn!(%app, error = %e, "storing a dead letter failed; the event stays queued");
                    backlog.queue.push_front(pending);
                }
            }
        }
    }
}
