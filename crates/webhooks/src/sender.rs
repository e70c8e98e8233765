//! Delivery: one task per receiver collects events into batches (up to
//! `webhook_batch_size` within `webhook_batch_ms`), signs and POSTs them,
//! and on anything but a 2XX within the timeout retries with exponential
//! backoff until the retry window of each event has passed; then the event
//! becomes a dead letter. One request per receiver is in flight at a time,
//! so a failing receiver is not flooded and, once it recovers, its backlog
//! drains in full batches.
//!
//! The process holds at most `webhook_max_pending` events (all receivers
//! together): standalone drops what comes beyond, the JetStream consumer
//! pulls no more than there is room for. Each task takes every event handed
//! to it into its backlog at once, also while a request is in flight, so
//! the periodic progress acknowledgement covers everything held.

use crate::backlog::Backlog;
use crate::dead::{DeadLetter, DeadLetters};
use crate::error::WebhookError;
use crate::metrics::WebhookMetrics;
use crate::queued::{Ack, Pending, Queued};
use herald_config::{AppConfig, WebhookDelivery};
use herald_protocol::unix_millis;
use herald_protocol::webhook::{signed_body, WebhookEvent};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep, Interval};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long acknowledged stream sequences are remembered, in keep-alive
/// periods (a third of the ack wait each): a redelivery caused by a lost
/// acknowledgement comes within one ack wait of it.
const REMEMBER_SENT: u32 = 6;

/// This process's delivery of webhooks to every configured receiver.
pub struct Sender {
    targets: HashMap<(String, usize), mpsc::UnboundedSender<Pending>>,
    metrics: Arc<WebhookMetrics>,
    /// One permit per event this process may hold (`webhook_max_pending`).
    room: Arc<Semaphore>,
    max_pending: usize,
    /// Whether events are being dropped for want of room (logged once per episode).
    full: AtomicBool,
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
                // Unbounded: the room semaphore bounds what is ever in it.
                let (tx, rx) = mpsc::unbounded_channel();
                let target = Target {
                    app: app.clone(),
                    index,
                    url: hook.url.clone(),
                    delivery: delivery.clone(),
                    client: client.clone(),
                    dead: dead.clone(),
                    metrics: metrics.clone(),
                };
                tokio::spawn(target.run(Inbox::new(rx, keep_alive, delivery, metrics.clone())));
                targets.insert((app.id.clone(), index), tx);
            }
        }
        Ok(Arc::new(Self {
            targets,
            metrics,
            room: Arc::new(Semaphore::new(delivery.max_pending)),
            max_pending: delivery.max_pending,
            full: AtomicBool::new(false),
        }))
    }

    /// Takes an event straight from this process (standalone) if there is
    /// room for it; counts it as queued, or as a queue failure.
    pub(crate) fn offer(&self, queued: Queued) -> Result<(), WebhookError> {
        let app = queued.app_id.clone();
        let result = match self.room.clone().try_acquire_owned() {
            Ok(room) => {
                self.full.store(false, Ordering::Relaxed);
                self.route(Pending::new(queued, Ack::Memory, room))
                    .map_err(|_| WebhookError::UnknownReceiver)
            }
            Err(_) => {
                if !self.full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%app, max_pending = self.max_pending, "webhook backlog full; events are dropped until it drains");
                }
                Err(WebhookError::BacklogFull)
            }
        };
        match &result {
            Ok(()) => self.metrics.queued.with_label_values(&[&app]).inc(),
            Err(_) => self.metrics.queue_failures.with_label_values(&[&app]).inc(),
        }
        result
    }

    /// Waits until this process may hold another event, then reserves room
    /// for as many more as are free, up to `most` (what the JetStream
    /// consumer pulls next).
    pub(crate) async fn room_for(&self, most: usize) -> Vec<OwnedSemaphorePermit> {
        let first = self.room.clone().acquire_owned().await;
        let first = first.expect("the room semaphore is never closed");
        let mut room = vec![first];
        while room.len() < most {
            match self.room.clone().try_acquire_owned() {
                Ok(permit) => room.push(permit),
                Err(_) => break,
            }
        }
        room
    }

    /// Hands an event to its receiver's task; gives it back if that
    /// receiver is not (or no longer) configured.
    pub(crate) fn route(&self, pending: Pending) -> Result<(), Box<Pending>> {
        let key = (pending.queued.app_id.clone(), pending.queued.target);
        match self.targets.get(&key) {
            Some(tx) => tx.send(pending).map_err(|e| Box::new(e.0)),
            None => Err(Box::new(pending)),
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
}

/// A receiver's task's side of what it is handed: the channel, the backlog
/// it is moved into, and the keep-alive clock of the events held.
struct Inbox {
    rx: mpsc::UnboundedReceiver<Pending>,
    open: bool,
    backlog: Backlog,
    keep_alive: Interval,
    metrics: Arc<WebhookMetrics>,
}

impl Inbox {
    fn new(
        rx: mpsc::UnboundedReceiver<Pending>,
        keep_alive: Option<Duration>,
        delivery: &WebhookDelivery,
        metrics: Arc<WebhookMetrics>,
    ) -> Self {
        // Standalone has nothing to keep alive and no redeliveries.
        let period = keep_alive.unwrap_or(Duration::from_secs(3600));
        Self {
            rx,
            open: true,
            backlog: Backlog::new(period * REMEMBER_SENT, delivery.max_pending),
            keep_alive: tokio::time::interval(period),
            metrics,
        }
    }

    /// Drives `until` to completion while taking in new events and keeping
    /// the held ones alive.
    async fn during<F: Future>(&mut self, until: F) -> F::Output {
        tokio::pin!(until);
        loop {
            if let Some(output) = self.step(&mut until).await {
                return output;
            }
        }
    }

    /// Waits for the first of: `until` completing (its output), an event
    /// arriving, the keep-alive period.
    async fn step<F: Future + Unpin>(&mut self, until: &mut F) -> Option<F::Output> {
        tokio::select! {
            output = until => Some(output),
            pending = self.rx.recv(), if self.open => {
                match pending {
                    Some(pending) => {
                        if let Some(redelivered) = self.backlog.accept(pending, &self.metrics) {
                            redelivered.ack.done().await;
                        }
                    }
                    None => self.open = false,
                }
                None
            }
            _ = self.keep_alive.tick() => {
                self.backlog.keep_alive().await;
                None
            }
        }
    }

    /// Waits until something is held; false once the channel closed and
    /// nothing is left.
    async fn wait_for_events(&mut self) -> bool {
        while self.backlog.is_empty() {
            if !self.open {
                return false;
            }
            self.step(&mut std::future::pending::<()>()).await;
        }
        true
    }

    /// Lets a batch fill for `window` or until `size` events are held.
    async fn fill(&mut self, size: usize, window: Duration) {
        let deadline = sleep(window);
        tokio::pin!(deadline);
        while self.open && self.backlog.len() < size {
            if self.step(&mut deadline).await.is_some() {
                break;
            }
        }
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

    /// Delivers what `inbox` is handed until its channel closes.
    async fn run(self, mut inbox: Inbox) {
        let app = self.app.id.clone();
        let mut backoff = FIRST_BACKOFF;
        while inbox.wait_for_events().await {
            inbox
                .fill(self.delivery.batch_size, self.delivery.batch_window)
                .await;
            // The batch stays in the backlog (kept alive) while it is posted.
            let take = inbox.backlog.len().min(self.delivery.batch_size);
            let events = inbox.backlog.front_events(take);
            let result = inbox.during(self.post(&events)).await;
            let batch = inbox.backlog.take_front(take);
            match result {
                Ok(()) => {
                    self.delivered(batch, &mut inbox.backlog).await;
                    backoff = FIRST_BACKOFF;
                }
                Err(error) => {
                    tracing::warn!(%app, url = %self.url, events = batch.len(), %error, retry_in = ?backoff, "webhook request failed");
                    self.fail(batch, &error, &mut inbox.backlog).await;
                    inbox.during(sleep(backoff)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// A batch the receiver accepted: acknowledged and let go of.
    async fn delivered(&self, batch: Vec<Pending>, backlog: &mut Backlog) {
        let app = &self.app.id;
        let now = unix_millis();
        for pending in &batch {
            pending.ack.done().await;
            backlog.release(pending, &self.metrics);
            let lag = now.saturating_sub(pending.queued.queued_ms) as f64 / 1000.0;
            self.metrics.lag.with_label_values(&[app]).observe(lag);
        }
        self.metrics
            .sent
            .with_label_values(&[app])
            .inc_by(batch.len() as u64);
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
                backlog.put_back(pending);
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
                    backlog.put_back(pending);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_config::{Config, WebhookConfig};
    use herald_metrics::Metrics;
    use herald_protocol::webhook::WebhookKind;

    #[tokio::test]
    async fn standalone_drops_and_counts_what_exceeds_max_pending() {
        let mut app = AppConfig::new("shop", "key", "secret");
        // Nothing listens on the discard port: every request fails, nothing drains.
        app.webhooks.push(WebhookConfig {
            url: "http://127.0.0.1:9/hook".into(),
            events: Vec::new(),
        });
        let config = Config {
            webhook_max_pending: 3,
            ..Config::default()
        };
        let metrics = Arc::new(WebhookMetrics::register(&Metrics::new()));
        let dead = Arc::new(DeadLetters::in_memory());
        let sender = Sender::start(
            &[Arc::new(app)],
            &config.webhook_delivery(),
            dead,
            metrics.clone(),
            None,
        )
        .unwrap();
        let offer = |channel: &str| {
            sender.offer(Queued {
                app_id: "shop".into(),
                target: 0,
                queued_ms: unix_millis(),
                event: WebhookEvent::new(WebhookKind::ChannelOccupied, channel, None),
            })
        };
        let results: Vec<bool> = (0..5).map(|i| offer(&format!("c{i}")).is_ok()).collect();
        assert_eq!(results, [true, true, true, false, false]);
        assert_eq!(metrics.queued.with_label_values(&["shop"]).get(), 3);
        assert_eq!(metrics.queue_failures.with_label_values(&["shop"]).get(), 2);
    }
}
