//! What the HTTP API reports to Prometheus: its own request families,
//! registered when the API is built, beside handles on the shared families
//! it also writes (auth failures, limit rejections, bus publishes).

use herald_metrics::{Metrics, LATENCY_BUCKETS};
use prometheus::{HistogramVec, IntCounterVec};

pub(crate) struct IngestMetrics {
    /// HTTP API requests, by endpoint and status.
    pub api_requests: IntCounterVec,
    pub api_request_duration: HistogramVec,
    pub auth_failures: IntCounterVec,
    pub limit_rejections: IntCounterVec,
    pub bus_publishes: IntCounterVec,
    pub bus_publish_failures: IntCounterVec,
    /// Events triggered on history channels (kept for new subscribers).
    pub history_events: IntCounterVec,
}

impl IngestMetrics {
    pub(crate) fn register(metrics: &Metrics) -> Self {
        Self {
            api_requests: metrics.counter_vec(
                "herald_api_requests_total",
                "HTTP API requests, by endpoint and status.",
                &["endpoint", "status"],
            ),
            api_request_duration: metrics.histogram_vec(
                "herald_api_request_duration_seconds",
                "HTTP API request latency.",
                &["endpoint"],
                LATENCY_BUCKETS.to_vec(),
            ),
            auth_failures: metrics.auth_failures.clone(),
            limit_rejections: metrics.limit_rejections.clone(),
            bus_publishes: metrics.bus_publishes.clone(),
            bus_publish_failures: metrics.bus_publish_failures.clone(),
            history_events: metrics.counter_vec(
                "herald_history_events_total",
                "Events triggered through the HTTP API on history channels, kept for new subscribers (the last N per channel).",
                &["app"],
            ),
        }
    }
}
