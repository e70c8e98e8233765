//! What webhook delivery reports to Prometheus. Every role queues webhooks
//! (a crashed node's transitions are reported by the others), so every role
//! registers these families; the sender's series move only where the HTTP
//! API runs.

use herald_metrics::Metrics;
use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec};

pub struct WebhookMetrics {
    /// Webhook events put in the queue (cluster: not counting duplicates
    /// another node queued first).
    pub queued: IntCounterVec,
    /// Webhook events a receiver accepted with a 2XX.
    pub sent: IntCounterVec,
    /// Webhook events that failed for the whole retry window (dead letters).
    pub dead: IntCounterVec,
    /// Failed webhook requests' events that will be retried.
    pub retries: IntCounterVec,
    /// Held-back `channel_vacated`/`member_removed` dropped with their re-add.
    pub suppressed: IntCounterVec,
    /// Webhook events that could not be queued (queue full, NATS down).
    pub queue_failures: IntCounterVec,
    /// Webhook events this process holds for delivery.
    pub pending: IntGaugeVec,
    /// From queueing a webhook event to its receiver's 2XX.
    pub lag: HistogramVec,
}

impl WebhookMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let by_app = |name: &str, help: &str| metrics.counter_vec(name, help, &["app"]);
        Self {
            queued: by_app(
                "herald_webhook_events_queued_total",
                "Webhook events queued for delivery.",
            ),
            sent: by_app(
                "herald_webhook_events_sent_total",
                "Webhook events accepted by a receiver (2XX).",
            ),
            dead: by_app(
                "herald_webhook_events_dead_total",
                "Webhook events that failed for the whole retry window.",
            ),
            retries: by_app(
                "herald_webhook_retries_total",
                "Webhook events of failed requests, to be retried.",
            ),
            suppressed: by_app(
                "herald_webhook_events_suppressed_total",
                "Held-back vacated/removed webhook events dropped because the channel or user came back.",
            ),
            queue_failures: by_app(
                "herald_webhook_queue_failures_total",
                "Webhook events that could not be queued.",
            ),
            pending: metrics.gauge_vec(
                "herald_webhook_pending_events",
                "Webhook events held by this process for delivery.",
                &["app"],
            ),
            lag: metrics.histogram_vec(
                "herald_webhook_lag_seconds",
                "Time from queueing a webhook event to its receiver's 2XX.",
                &["app"],
                vec![0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 150.0, 300.0],
            ),
        }
    }

    /// Creates the series of a configured app at zero, so that a fresh pod
    /// exports them and `increase()` sees the first event.
    pub fn init_app(&self, app: &str) {
        for counter in [
            &self.queued,
            &self.sent,
            &self.dead,
            &self.retries,
            &self.suppressed,
            &self.queue_failures,
        ] {
            counter.with_label_values(&[app]);
        }
        self.pending.with_label_values(&[app]);
        self.lag.with_label_values(&[app]);
    }
}
