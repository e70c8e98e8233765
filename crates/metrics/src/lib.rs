//! Prometheus metrics and the admin endpoints (`/metrics`, `/healthz`, `/readyz`).
//!
//! Every label set is bounded: metrics are labelled by app (configured apps
//! only), reason, kind, endpoint or status, never by channel, user or socket.
//!
//! [`Metrics`] holds the registry, readiness and the few families that more
//! than one role writes (auth failures, limit rejections, bus publishes and
//! the bus connection). Every other family belongs to the concern that
//! writes it and is registered by that concern's own metrics type into this
//! registry: `GatewayMetrics` (connections, messages, fan-out latency),
//! `IngestMetrics` (HTTP API requests), `StateMetrics` (JetStream KV and
//! scrape-time channel gauges) and `WebhookMetrics`. A role registers only
//! the families of the concerns it runs.
//!
//! [`AcceptBackoff`] keeps every accept loop (this admin port's and the
//! client port's) alive and quiet when the process runs out of descriptors.

mod accept;

pub use accept::AcceptBackoff;

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
use std::time::Duration;
use tokio::net::TcpListener;

pub struct Metrics {
    registry: Registry,
    ready: AtomicBool,
    /// Refused subscriptions, sign-ins (gateway) and API signatures (HTTP API), by kind.
    pub auth_failures: IntCounterVec,
    /// Requests or messages refused by a limit, by limit (gateway and HTTP API).
    pub limit_rejections: IntCounterVec,
    /// Events published to the bus (HTTP API triggers, client events), and publish failures.
    pub bus_publishes: IntCounterVec,
    pub bus_publish_failures: IntCounterVec,
    /// 1 while the bus is connected (always 1 standalone); readiness depends on it.
    pub bus_connected: prometheus::IntGauge,
    /// Times the bus connection was (re-)established.
    pub bus_connects: prometheus::IntCounter,
    /// NATS messages the client dropped because a subscription's buffer overflowed.
    pub nats_slow_consumers: prometheus::IntCounter,
    /// 1 from the shutdown signal until the process exits.
    draining: prometheus::IntGauge,
    /// Always 1, labelled with the version and the role (see [`Metrics::set_role`]).
    build_info: IntGaugeVec,
    /// Failed `accept` calls, by listener (client, tls, admin); see [`AcceptBackoff`].
    accept_errors: IntCounterVec,
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

/// Buckets for request and delivery latencies, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Registering a family: each concern (gateway, HTTP API, channel state,
/// webhooks) builds its own families through these, into the one registry
/// that `/metrics` renders.
impl Metrics {
    fn add<C: prometheus::core::Collector + Clone + 'static>(&self, collector: C) -> C {
        self.registry
            .register(Box::new(collector.clone()))
            .expect("unique metric");
        collector
    }

    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    pub fn counter(&self, name: &str, help: &str) -> prometheus::IntCounter {
        self.add(prometheus::IntCounter::new(name, help).expect("valid metric"))
    }

    pub fn gauge(&self, name: &str, help: &str) -> prometheus::IntGauge {
        self.add(prometheus::IntGauge::new(name, help).expect("valid metric"))
    }

    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: Vec<f64>,
    ) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets);
        self.add(HistogramVec::new(opts, labels).expect("valid metric"))
    }

    pub fn histogram(&self, name: &str, help: &str, buckets: Vec<f64>) -> prometheus::Histogram {
        let opts = HistogramOpts::new(name, help).buckets(buckets);
        self.add(prometheus::Histogram::with_opts(opts).expect("valid metric"))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The registry with the families every role writes; each role then
    /// registers its own (see the module docs).
    pub fn new() -> Self {
        let core = Self {
            registry: Registry::new(),
            ready: AtomicBool::new(false),
            auth_failures: IntCounterVec::new(
                Opts::new(
                    "herald_auth_failures_total",
                    "Refused channel authorizations, sign-ins and API signatures.",
                ),
                &["app", "kind"],
            )
            .expect("valid metric"),
            limit_rejections: IntCounterVec::new(
                Opts::new(
                    "herald_limit_rejections_total",
                    "Messages, subscriptions and requests refused by a limit.",
                ),
                &["app", "limit"],
            )
            .expect("valid metric"),
            bus_publishes: IntCounterVec::new(
                Opts::new(
                    "herald_bus_publishes_total",
                    "Messages published to the bus.",
                ),
                &["app"],
            )
            .expect("valid metric"),
            bus_publish_failures: IntCounterVec::new(
                Opts::new(
                    "herald_bus_publish_failures_total",
                    "Bus publishes that failed.",
                ),
                &["app"],
            )
            .expect("valid metric"),
            bus_connected: prometheus::IntGauge::new(
                "herald_bus_connected",
                "1 while the bus (NATS) is connected.",
            )
            .expect("valid metric"),
            bus_connects: prometheus::IntCounter::new(
                "herald_bus_connects_total",
                "Bus (NATS) connections established, including reconnects.",
            )
            .expect("valid metric"),
            nats_slow_consumers: prometheus::IntCounter::new(
                "herald_nats_slow_consumers_total",
                "Times the NATS client dropped messages of a subscription whose buffer overflowed (slow consumer).",
            )
            .expect("valid metric"),
            draining: prometheus::IntGauge::new(
                "herald_draining",
                "1 while the process drains its connections before exiting.",
            )
            .expect("valid metric"),
            build_info: IntGaugeVec::new(
                Opts::new(
                    "herald_build_info",
                    "Always 1; labelled with the running Herald's version and role.",
                ),
                &["version", "role"],
            )
            .expect("valid metric"),
            accept_errors: IntCounterVec::new(
                Opts::new(
                    "herald_accept_errors_total",
                    "Failed accepts of new TCP connections (e.g. out of file descriptors), by listener.",
                ),
                &["listener"],
            )
            .expect("valid metric"),
            admin_routes: std::sync::OnceLock::new(),
        };
        core.add(core.auth_failures.clone());
        core.add(core.limit_rejections.clone());
        core.add(core.bus_publishes.clone());
        core.add(core.bus_publish_failures.clone());
        core.add(core.bus_connected.clone());
        core.add(core.bus_connects.clone());
        core.add(core.nats_slow_consumers.clone());
        core.add(core.draining.clone());
        core.add(core.build_info.clone());
        core.add(core.accept_errors.clone());
        // process_cpu_seconds_total, process_open_fds, process_max_fds,
        // process_resident_memory_bytes, ... (read from /proc at scrape time).
        #[cfg(target_os = "linux")]
        core.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        core
    }

    /// Creates the shared series of a configured app at zero, so that a
    /// fresh pod exports them and `increase()` sees the first event.
    pub fn init_app(&self, app: &str) {
        for counter in [&self.bus_publishes, &self.bus_publish_failures] {
            counter.with_label_values(&[app]);
        }
        self.auth_failures.with_label_values(&[app, "api"]);
    }

    /// Adds a collector computed at scrape time (e.g. from replicated state).
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        self.registry.register(collector).expect("unique metric");
    }

    /// Marks the process ready (listening) or not (starting, draining).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Names the role this process runs (standalone, gateway, ingest) in
    /// `herald_build_info`, so that alerts and dashboards tell them apart.
    pub fn set_role(&self, role: &str) {
        self.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), role])
            .set(1);
    }

    /// Marks the process as draining: unready for good, closing its connections.
    pub fn set_draining(&self) {
        self.set_ready(false);
        self.draining.set(1);
    }

    /// Records the bus connection state.
    pub fn set_bus_connected(&self, connected: bool) {
        self.bus_connected.set(i64::from(connected));
        if connected {
            self.bus_connects.inc();
        }
    }

    /// Ready to take traffic: listening, not draining, bus connected. The
    /// cluster state's health is not a condition: while JetStream elects
    /// leaders every node would turn unready at once, though events still
    /// flow; a node cut off from NATS is caught by the bus (pings).
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

/// Serves the admin endpoints on `listener` until the task is dropped. A
/// request head must arrive within `header_timeout`, as on the client port,
/// so that idle connections cannot hold the admin port's descriptors.
pub async fn serve_admin(listener: TcpListener, metrics: Arc<Metrics>, header_timeout: Duration) {
    let mut backoff = AcceptBackoff::new(&metrics, "admin");
    loop {
        let (stream, _) = backoff.accept(&listener).await;
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
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
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
        let connections = m.gauge_vec("herald_connections", "Open client connections.", &["app"]);
        connections.with_label_values(&["app1"]).set(3);
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
