//! The ingest role: the Pusher HTTP API at `/apps/{app_id}/...`.
//!
//! Every request is authenticated exactly as the Pusher server SDKs sign it,
//! fully validated, and only then published to the bus, so a refused request
//! delivers nothing. Channel queries are answered from the shared channel
//! state, never by asking gateways.
//!
//! `Ingest::serve` takes every request through the same steps (route,
//! method, app, body, signature, app enabled, API rate) before handing it to
//! its endpoint: `events` (triggering), `channels` (channel queries) or
//! `users` (terminating a user's connections). Any step refuses with an
//! `HttpError` (`error.rs`), which [`Ingest::handle`] logs, counts and answers.
//! Logging and bus publishing stay in this module, so their log target and
//! spans are those of the crate.

mod authentication;
mod channels;
mod error;
mod events;
mod metrics;
mod request;
mod routing;
mod users;

use authentication::{RequestBudgets, SignedRequest};
use bytes::Bytes;
use error::HttpError;
use herald_bus::{Bus, BusError, BusMessage, Envelope};
use herald_config::AppConfig;
use herald_metrics::Metrics;
use herald_state::ChannelState;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use metrics::IngestMetrics;
use request::QueryParams;
use routing::Route;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

pub struct Ingest {
    apps_by_id: HashMap<String, Arc<AppConfig>>,
    /// Per-app request budgets, for apps with `max_api_requests_per_second`.
    budgets: RequestBudgets,
    state: Arc<ChannelState>,
    bus: Arc<Bus>,
    metrics: IngestMetrics,
    /// How long a request body may take to arrive (`body_timeout`).
    body_timeout: std::time::Duration,
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response")
}

impl Ingest {
    /// Builds the HTTP API and registers its metric families into `metrics`.
    pub fn new(
        apps: &[Arc<AppConfig>],
        state: Arc<ChannelState>,
        bus: Arc<Bus>,
        metrics: &Metrics,
        body_timeout: std::time::Duration,
    ) -> Self {
        let metrics = IngestMetrics::register(metrics);
        for app in apps {
            // Exported at 0 from the start, like the other per-app series.
            metrics.history_events.with_label_values(&[&app.id]);
        }
        Self {
            apps_by_id: apps.iter().map(|a| (a.id.clone(), a.clone())).collect(),
            budgets: RequestBudgets::new(apps),
            state,
            bus,
            metrics,
            body_timeout,
        }
    }

    /// Serves one HTTP API request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let routed = Route::parse(req.uri().path());
        let label = routed.as_ref().map_or("unknown", |(_, r)| r.label());
        let span =
            tracing::info_span!("http_api", endpoint = label, status = tracing::field::Empty);
        let served = self.serve(req, routed).instrument(span.clone()).await;
        let status = match &served {
            Ok(_) => StatusCode::OK,
            Err(e) => {
                tracing::info!(status = e.status().as_u16(), endpoint = label, error = %e.message(), "HTTP API request refused");
                e.status()
            }
        };
        span.record("status", status.as_u16());
        self.metrics
            .api_requests
            .with_label_values(&[label, status.as_str()])
            .inc();
        self.metrics
            .api_request_duration
            .with_label_values(&[label])
            .observe(started.elapsed().as_secs_f64());
        match served {
            Ok(body) => json_response(status, &body),
            Err(e) => e.into_response(),
        }
    }

    /// Takes a request through the checks every endpoint shares, then to its endpoint.
    async fn serve(
        &self,
        req: Request<Incoming>,
        routed: Option<(String, Route)>,
    ) -> Result<Value, HttpError> {
        let (app_id, route) =
            routed.ok_or_else(|| HttpError::new(StatusCode::NOT_FOUND, "no such endpoint"))?;
        route.check_method(req.method())?;
        let app = self.apps_by_id.get(&app_id).cloned().ok_or_else(|| {
            HttpError::new(StatusCode::NOT_FOUND, format!("unknown app `{app_id}`"))
        })?;
        let (parts, body) = req.into_parts();
        let body = request::read_body(body, &app, self.body_timeout).await?;
        let params = QueryParams::parse(parts.uri.query().unwrap_or_default());
        let signed = SignedRequest {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            params: &params,
            body: &body,
        };
        authentication::authenticate(&app, &signed, &self.metrics)?;
        if !app.enabled {
            return Err(HttpError::new(StatusCode::FORBIDDEN, "app is disabled"));
        }
        self.budgets.take(&app, &self.metrics)?;
        match route {
            Route::Events => self.trigger(&app, &body).await,
            Route::BatchEvents => self.trigger_batch(&app, &body).await,
            Route::Channels => self.list_channels(&app, &params),
            Route::Channel(name) => self.show_channel(&app, &name, &params),
            Route::Users(name) => self.list_users(&app, &name, &params),
            Route::ChannelEvents(name) => self.channel_events(&app, &name, &params).await,
            Route::User(user_id) => Ok(self.user_status(&app, &user_id)),
            Route::TerminateConnections(user_id) => self.terminate_connections(&app, user_id).await,
        }
    }

    /// Publishes one request's events, all or nothing (`Bus::publish_all`):
    /// counts them, carries the trace context, and turns a bus failure
    /// into a 503.
    async fn publish(&self, app: &AppConfig, mut events: Vec<Envelope>) -> Result<(), HttpError> {
        self.metrics
            .bus_publishes
            .with_label_values(&[&app.id])
            .inc_by(events.len() as u64);
        let kept = events
            .iter()
            .filter(|e| self.bus.keeps_history(&app.id, &e.channel))
            .count();
        let span = tracing::info_span!("publish", app = %app.id);
        let published = async {
            let traceparent = herald_telemetry::current_traceparent();
            for envelope in &mut events {
                envelope.traceparent.clone_from(&traceparent);
            }
            self.bus.publish_all(events).await
        }
        .instrument(span)
        .await;
        if published.is_ok() && kept > 0 {
            self.metrics
                .history_events
                .with_label_values(&[&app.id])
                .inc_by(kept as u64);
        }
        self.unless_refused(app, published)
    }

    /// Publishes a control message (to every gateway of the app).
    async fn publish_control(&self, app: &AppConfig, message: BusMessage) -> Result<(), HttpError> {
        self.metrics
            .bus_publishes
            .with_label_values(&[&app.id])
            .inc();
        let published = self.bus.publish(message).await;
        self.unless_refused(app, published)
    }

    /// A bus failure is counted: a 503 when nothing was sent, a 504 when
    /// NATS failed before confirming what it was given (delivered to all
    /// of the request's channels or to none).
    fn unless_refused(
        &self,
        app: &AppConfig,
        published: Result<(), BusError>,
    ) -> Result<(), HttpError> {
        published.map_err(|e| {
            self.metrics
                .bus_publish_failures
                .with_label_values(&[&app.id])
                .inc();
            let status = match e {
                BusError::Unconfirmed(_) => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            HttpError::new(status, e.to_string())
        })
    }
}
