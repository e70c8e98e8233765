//! Prometheus metrics and the admin endpoints (`/metrics`, `/healthz`, `/readyz`).
//!
//! Every label set is bounded: metrics are labelled by app (configured apps
//! only), reason, kind, endpoint or status, never by channel, user or socket.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

pub struct Metrics {
    registry: Registry,
    ready: AtomicBool,
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
    /// Refused subscriptions and sign-ins, by kind.
    pub auth_failures: IntCounterVec,
    /// Requests or messages refused by a limit, by limit.
    pub limit_rejections: IntCounterVec,
    /// Connections dropped because their queue overflowed or a write stalled.
    pub slow_consumer_disconnects: IntCounterVec,
    /// HTTP API requests, by endpoint and status.
    pub api_requests: IntCounterVec,
    pub api_request_duration: HistogramVec,
    /// Events published to the bus, and publish failures.
    pub bus_publishes: IntCounterVec,
    pub bus_publish_failures: IntCounterVec,
    /// 1 while the bus is connected (always 1 standalone).
    pub bus_connected: prometheus::IntGauge,
    /// Times the bus connection was (re-)established.
    pub bus_connects: prometheus::IntCounter,
    /// Cluster state (JetStream KV) writes that failed; they are re-asserted later.
    pub kv_write_failures: prometheus::IntCounter,
    /// From a node's KV put to its own watch applying it: the replication lag.
    pub kv_apply_seconds: prometheus::Histogram,
    /// 1 while this node's heartbeats reach the cluster state (JetStream KV).
    pub kv_healthy: prometheus::IntGauge,
    /// Gateways found dead (heartbeat expired) whose entries were removed.
    pub nodes_removed: prometheus::IntCounter,
    /// From the trigger's publish timestamp to the queueing of the frame for the sockets.
    pub delivery_latency: HistogramVec,
    /// Webhook events put in the queue (cluster: not counting duplicates
    /// another node queued first).
    pub webhook_queued: IntCounterVec,
    /// Webhook events a receiver accepted with a 2XX.
    pub webhook_sent: IntCounterVec,
    /// Webhook events that failed for the whole retry window (dead letters).
    pub webhook_dead: IntCounterVec,
    /// Failed webhook requests' events that will be retried.
    pub webhook_retries: IntCounterVec,
    /// Held-back `channel_vacated`/`member_removed` dropped with their re-add.
    pub webhook_suppressed: IntCounterVec,
    /// Webhook events that could not be queued (queue full, NATS down).
    pub webhook_queue_failures: IntCounterVec,
    /// Webhook events this process holds for delivery.
    pub webhook_pending: IntGaugeVec,
    /// From queueing a webhook event to its receiver's 2XX.
    pub webhook_lag: HistogramVec,
    admin_routes: std::sync::OnceLock<Arc<dyn AdminRoutes>>,
}

/// A response of an extra admin endpoint: status, content type, body.
pub type AdminResponse = (StatusCode, &'static str, String);

/// Admin endpoints served beside the metrics by another concern (the
/// webhook dead letters).
pub trait AdminRoutes: Send + Sync {
    /// The answer to `method path`, or None when the path is not one of these.
    fn route(
        &self,
        method: &hyper::Method,
        path: &str,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = AdminResponse> + Send>>>;
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn plain_counter(registry: &Registry, name: &str, help: &str) -> prometheus::IntCounter {
    let c = prometheus::IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn plain_gauge(registry: &Registry, name: &str, help: &str) -> prometheus::IntGauge {
    let g = prometheus::IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        Self {
            connections: gauge(
                &r,
                "herald_connections",
                "Open client connections.",
                &["app"],
            ),
            connections_opened: counter(
                &r,
                "herald_connections_opened_total",
                "Client connections established.",
                &["app"],
            ),
            connections_closed: counter(
                &r,
                "herald_connections_closed_total",
                "Client connections closed, by reason.",
                &["app", "reason"],
            ),
            connections_refused: counter(
                &r,
                "herald_connections_refused_total",
                "WebSocket handshakes refused, by reason.",
                &["app", "reason"],
            ),
            subscriptions: gauge(
                &r,
                "herald_subscriptions",
                "Channel subscriptions held by connections on this node.",
                &["app"],
            ),
            messages_sent: counter(
                &r,
                "herald_messages_sent_total",
                "Messages written to client sockets, by kind.",
                &["app", "kind"],
            ),
            messages_received: counter(
                &r,
                "herald_messages_received_total",
                "Messages read from client sockets, by kind.",
                &["app", "kind"],
            ),
            bytes_sent: counter(
                &r,
                "herald_bytes_sent_total",
                "WebSocket bytes written to clients.",
                &["app"],
            ),
            bytes_received: counter(
                &r,
                "herald_bytes_received_total",
                "WebSocket payload bytes read from clients.",
                &["app"],
            ),
            auth_failures: counter(
                &r,
                "herald_auth_failures_total",
                "Refused channel authorizations, sign-ins and API signatures.",
                &["app", "kind"],
            ),
            limit_rejections: counter(
                &r,
                "herald_limit_rejections_total",
                "Messages, subscriptions and requests refused by a limit.",
                &["app", "limit"],
            ),
            slow_consumer_disconnects: counter(
                &r,
                "herald_slow_consumer_disconnects_total",
                "Connections closed because they could not keep up.",
                &["app"],
            ),
            api_requests: counter(
                &r,
                "herald_api_requests_total",
                "HTTP API requests, by endpoint and status.",
                &["endpoint", "status"],
            ),
            api_request_duration: histogram(
                &r,
                "herald_api_request_duration_seconds",
                "HTTP API request latency.",
                &["endpoint"],
                latency_buckets.clone(),
            ),
            bus_publishes: counter(
                &r,
                "herald_bus_publishes_total",
                "Messages published to the bus.",
                &["app"],
            ),
            bus_publish_failures: counter(
                &r,
                "herald_bus_publish_failures_total",
                "Bus publishes that failed.",
                &["app"],
            ),
            bus_connected: plain_gauge(
                &r,
                "herald_bus_connected",
                "1 while the bus (NATS) is connected.",
            ),
            bus_connects: plain_counter(
                &r,
                "herald_bus_connects_total",
                "Bus (NATS) connections established, including reconnects.",
            ),
            kv_write_failures: plain_counter(
                &r,
                "herald_kv_write_failures_total",
                "Cluster state (JetStream KV) writes that failed.",
            ),
            kv_apply_seconds: {
                let opts = HistogramOpts::new(
                    "herald_kv_apply_seconds",
                    "Time from a KV write to this node's watch applying it.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                ]);
                let h = prometheus::Histogram::with_opts(opts).expect("valid metric");
                r.register(Box::new(h.clone())).expect("unique metric");
                h
            },
            kv_healthy: plain_gauge(
                &r,
                "herald_kv_healthy",
                "1 while this node's heartbeats reach the cluster state (JetStream KV).",
            ),
            nodes_removed: plain_counter(
                &r,
                "herald_nodes_removed_total",
                "Gateways found dead whose presence entries were removed.",
            ),
            delivery_latency: histogram(
                &r,
                "herald_delivery_latency_seconds",
                "Time from the trigger's publish to queueing on the sockets.",
                &["app"],
                latency_buckets,
            ),
            webhook_queued: counter(
                &r,
                "herald_webhook_events_queued_total",
                "Webhook events queued for delivery.",
                &["app"],
            ),
            webhook_sent: counter(
                &r,
                "herald_webhook_events_sent_total",
                "Webhook events accepted by a receiver (2XX).",
                &["app"],
            ),
            webhook_dead: counter(
                &r,
                "herald_webhook_events_dead_total",
                "Webhook events that failed for the whole retry window.",
                &["app"],
            ),
            webhook_retries: counter(
                &r,
                "herald_webhook_retries_total",
                "Webhook events of failed requests, to be retried.",
                &["app"],
            ),
            webhook_suppressed: counter(
                &r,
                "herald_webhook_events_suppressed_total",
                "Held-back vacated/removed webhook events dropped because the channel or user came back.",
                &["app"],
            ),
            webhook_queue_failures: counter(
                &r,
                "herald_webhook_queue_failures_total",
                "Webhook events that could not be queued.",
                &["app"],
            ),
            webhook_pending: gauge(
                &r,
                "herald_webhook_pending_events",
                "Webhook events held by this process for delivery.",
                &["app"],
            ),
            webhook_lag: histogram(
                &r,
                "herald_webhook_lag_seconds",
                "Time from queueing a webhook event to its receiver's 2XX.",
                &["app"],
                vec![0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 150.0, 300.0],
            ),
            admin_routes: std::sync::OnceLock::new(),
            registry: r,
            ready: AtomicBool::new(false),
        }
    }

    /// Creates the series of a configured app at zero, so that a fresh pod
    /// exports them and `increase()` sees the first event. Connection series
    /// only where WebSockets are served.
    pub fn init_app(&self, app: &str, websockets: bool) {
        for counter in [&self.bus_publishes, &self.bus_publish_failures] {
            counter.with_label_values(&[app]);
        }
        for counter in [
            &self.webhook_queued,
            &self.webhook_sent,
            &self.webhook_dead,
            &self.webhook_retries,
            &self.webhook_suppressed,
            &self.webhook_queue_failures,
        ] {
            counter.with_label_values(&[app]);
        }
        self.webhook_pending.with_label_values(&[app]);
        self.webhook_lag.with_label_values(&[app]);
        self.auth_failures.with_label_values(&[app, "api"]);
        if !websockets {
            return;
        }
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

    /// Adds a collector computed at scrape time (e.g. from replicated state).
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        self.registry.register(collector).expect("unique metric");
    }

    /// Marks the process ready (listening) or not (starting, draining).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Records the bus connection state.
    pub fn set_bus_connected(&self, connected: bool) {
        self.bus_connected.set(i64::from(connected));
        if connected {
            self.bus_connects.inc();
        }
    }

    /// Ready to take traffic: listening, not draining, bus connected.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && self.bus_connected.get() == 1
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }

    /// Serves `routes` on the admin port too; set once.
    pub fn set_admin_routes(&self, routes: Arc<dyn AdminRoutes>) {
        if self.admin_routes.set(routes).is_err() {
            panic!("Metrics::set_admin_routes called twice");
        }
    }

    async fn respond_to(&self, method: &hyper::Method, path: &str) -> Response<Full<Bytes>> {
        let Some(answer) = self
            .admin_routes
            .get()
            .and_then(|routes| routes.route(method, path))
        else {
            return self.respond(path);
        };
        let (status, content_type, body) = answer.await;
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("valid response")
    }

    fn respond(&self, path: &str) -> Response<Full<Bytes>> {
        let (status, body) = match path {
            "/metrics" => (StatusCode::OK, self.render()),
            "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
            "/readyz" if self.is_ready() => (StatusCode::OK, "ready\n".to_owned()),
            "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_owned()),
            _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
        };
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(body)))
            .expect("static response")
    }
}

/// Serves the admin endpoints on `listener` until the task is dropped.
pub async fn serve_admin(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let resp = metrics.respond_to(req.method(), req.uri().path()).await;
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Binds the admin address; an error names it.
pub async fn bind_admin(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot bind metrics address {addr}: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labelled_metrics_and_readiness() {
        let m = Metrics::new();
        m.connections.with_label_values(&["app1"]).set(3);
        assert!(m.render().contains(r#"herald_connections{app="app1"} 3"#));
        assert_eq!(
            m.respond("/readyz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        m.set_ready(true);
        assert_eq!(
            m.respond("/readyz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        m.set_bus_connected(true);
        assert_eq!(m.respond("/readyz").status(), StatusCode::OK);
        m.set_bus_connected(false);
        assert_eq!(
            m.respond("/readyz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        m.set_bus_connected(true);
        assert!(m.render().contains("herald_bus_connects_total 2"));
        assert_eq!(m.respond("/healthz").status(), StatusCode::OK);
        assert_eq!(m.respond("/nope").status(), StatusCode::NOT_FOUND);
    }
}
