//! What the gateway reports to Prometheus: its own families (connections,
//! messages, bytes, slow consumers, fan-out latency), registered when the
//! gateway is built, beside handles on the shared families it also writes
//! (auth failures, limit rejections, bus publishes).

use herald_metrics::{Metrics, LATENCY_BUCKETS};
use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGaugeVec};

pub struct GatewayMetrics {
    /// Open client connections.
    pub connections: IntGaugeVec,
    /// Connections accepted, by app.
    pub connections_opened: IntCounterVec,
    /// Connections closed, by app and reason.
    pub connections_closed: IntCounterVec,
    /// Handshakes refused before a connection was established, by reason (app label "" when unknown).
    pub connections_refused: IntCounterVec,
    /// Channel subscriptions held by this node's connections.
    pub subscriptions: IntGaugeVec,
    /// Messages written to sockets, by kind (event, client_event, internal, error).
    pub messages_sent: IntCounterVec,
    /// Messages read from sockets, by kind.
    pub messages_received: IntCounterVec,
    pub bytes_sent: IntCounterVec,
    pub bytes_received: IntCounterVec,
    /// Connections dropped because their queue overflowed or a write stalled.
    pub slow_consumer_disconnects: IntCounterVec,
    /// From the trigger's publish timestamp to the queueing of the frame for the sockets.
    pub delivery_latency: HistogramVec,
    /// Events dropped because their request had been answered 503 or 504.
    pub uncommitted_dropped: IntCounter,
    /// Gaps found in a subscribed subject's messages (cluster).
    pub bus_gaps: IntCounter,
    /// Missed messages read back from the event stream and delivered.
    pub bus_recovered: IntCounter,
    /// Gaps that could not be filled: sockets may have missed events.
    pub bus_recovery_failures: IntCounter,
    pub auth_failures: IntCounterVec,
    pub limit_rejections: IntCounterVec,
    pub bus_publishes: IntCounterVec,
    pub bus_publish_failures: IntCounterVec,
}

impl GatewayMetrics {
    pub fn register(m: &Metrics) -> Self {
        Self {
            connections: m.gauge_vec("herald_connections", "Open client connections.", &["app"]),
            connections_opened: m.counter_vec(
                "herald_connections_opened_total",
                "Client connections established.",
                &["app"],
            ),
            connections_closed: m.counter_vec(
                "herald_connections_closed_total",
                "Client connections closed, by reason.",
                &["app", "reason"],
            ),
            connections_refused: m.counter_vec(
                "herald_connections_refused_total",
                "WebSocket handshakes refused, by reason.",
                &["app", "reason"],
            ),
            subscriptions: m.gauge_vec(
                "herald_subscriptions",
                "Channel subscriptions held by connections on this node.",
                &["app"],
            ),
            messages_sent: m.counter_vec(
                "herald_messages_sent_total",
                "Messages written to client sockets, by kind.",
                &["app", "kind"],
            ),
            messages_received: m.counter_vec(
                "herald_messages_received_total",
                "Messages read from client sockets, by kind.",
                &["app", "kind"],
            ),
            bytes_sent: m.counter_vec(
                "herald_bytes_sent_total",
                "WebSocket bytes written to clients.",
                &["app"],
            ),
            bytes_received: m.counter_vec(
                "herald_bytes_received_total",
                "WebSocket payload bytes read from clients.",
                &["app"],
            ),
            slow_consumer_disconnects: m.counter_vec(
                "herald_slow_consumer_disconnects_total",
                "Connections closed because they could not keep up.",
                &["app"],
            ),
            uncommitted_dropped: m.counter(
                "herald_bus_uncommitted_events_dropped_total",
                "Events dropped because their request was answered 503 or 504: parts of multi-channel triggers and batches whose commit never came, and events that arrived after their request's deadline.",
            ),
            bus_gaps: m.counter(
                "herald_bus_gaps_total",
                "Gaps found in a channel's messages on this gateway (NATS reconnects, client-side slow consumers); each is filled from the event stream.",
            ),
            bus_recovered: m.counter(
                "herald_bus_recovered_events_total",
                "Missed messages read back from the event stream and delivered.",
            ),
            bus_recovery_failures: m.counter(
                "herald_bus_recovery_failures_total",
                "Gaps that could not be filled (the event stream unreadable for 30 s, or the messages past nats.event_retention_secs): connected sockets may have missed events.",
            ),
            delivery_latency: m.histogram_vec(
                "herald_delivery_latency_seconds",
                "Time from the trigger's publish to queueing on the sockets.",
                &["app"],
                LATENCY_BUCKETS.to_vec(),
            ),
            auth_failures: m.auth_failures.clone(),
            limit_rejections: m.limit_rejections.clone(),
            bus_publishes: m.bus_publishes.clone(),
            bus_publish_failures: m.bus_publish_failures.clone(),
        }
    }

    /// Counts the member event frames a large presence channel's burst queued.
    pub fn count_burst(&self, app: &str, burst: &crate::crowd::Burst) {
        if burst.frames > 0 {
            self.messages_sent
                .with_label_values(&[app, "internal"])
                .inc_by(burst.frames as u64);
            self.bytes_sent
                .with_label_values(&[app])
                .inc_by(burst.bytes as u64);
        }
    }

    /// Creates the series of a configured app at zero, so that a fresh pod
    /// exports them and `increase()` sees the first event.
    pub fn init_app(&self, app: &str) {
        for gauge in [&self.connections, &self.subscriptions] {
            gauge.with_label_values(&[app]);
        }
        for counter in [
            &self.connections_opened,
            &self.bytes_sent,
            &self.bytes_received,
            &self.slow_consumer_disconnects,
        ] {
            counter.with_label_values(&[app]);
        }
        for kind in ["channel", "signin", "auth_timeout"] {
            self.auth_failures.with_label_values(&[app, kind]);
        }
        for kind in ["event", "client_event", "internal"] {
            self.messages_sent.with_label_values(&[app, kind]);
        }
        for kind in ["client_event", "ping", "protocol", "malformed"] {
            self.messages_received.with_label_values(&[app, kind]);
        }
    }
}
