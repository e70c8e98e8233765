//! The ingest role: the Pusher HTTP API at `/apps/{app_id}/...`.
//!
//! Every request is authenticated exactly as the Pusher server SDKs sign it,
//! fully validated, and only then published to the bus, so a refused request
//! delivers nothing. Channel queries are answered from the shared channel
//! state, never by asking gateways.

use bytes::Bytes;
use herald_bus::{Bus, BusMessage, Envelope};
use herald_config::AppConfig;
use herald_metrics::Metrics;
use herald_state::ChannelState;
use herald_protocol::api::{self, ApiError, Info, Publication};
use herald_protocol::rate::TokenBucket;
use herald_protocol::{auth, ChannelName};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// How far `auth_timestamp` may be from the server clock (Pusher: 600 s).
const MAX_CLOCK_SKEW_SECS: u64 = 600;

pub struct Ingest {
    apps_by_id: HashMap<String, Arc<AppConfig>>,
    /// Per-app request budgets, for apps with `max_api_requests_per_second`.
    rates: HashMap<String, parking_lot::Mutex<TokenBucket>>,
    state: Arc<ChannelState>,
    bus: Arc<Bus>,
    metrics: Arc<Metrics>,
    /// How long a request body may take to arrive (`body_timeout`).
    body_timeout: std::time::Duration,
}

/// A refused request: status and the message for the JSON error body.
struct Refused(StatusCode, String);

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
        Refused(status, e.message().to_owned())
    }
}

fn refused(status: StatusCode, message: impl Into<String>) -> Refused {
    Refused(status, message.into())
}

enum Route {
    Events,
    BatchEvents,
    Channels,
    Channel(String),
    Users(String),
    TerminateConnections(String),
}

impl Route {
    fn label(&self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::BatchEvents => "batch_events",
            Self::Channels => "channels",
            Self::Channel(_) => "channel",
            Self::Users(_) => "users",
            Self::TerminateConnections(_) => "terminate_connections",
        }
    }

    fn method(&self) -> Method {
        match self {
            Self::Events | Self::BatchEvents | Self::TerminateConnections(_) => Method::POST,
            _ => Method::GET,
        }
    }
}

fn decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

/// Splits `/apps/{id}/...` into the app id and the route.
fn route(path: &str) -> Option<(String, Route)> {
    let rest = path.strip_prefix("/apps/")?;
    let segments: Vec<&str> = rest.split('/').collect();
    let route = match segments[1..] {
        ["events"] => Route::Events,
        ["batch_events"] => Route::BatchEvents,
        ["channels"] => Route::Channels,
        ["channels", name] => Route::Channel(decode(name)),
        ["channels", name, "users"] => Route::Users(decode(name)),
        ["users", user, "terminate_connections"] => Route::TerminateConnections(decode(user)),
        _ => return None,
    };
    Some((decode(segments[0]), route))
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response")
}

impl Ingest {
    pub fn new(
        apps: &[Arc<AppConfig>],
        state: Arc<ChannelState>,
        bus: Arc<Bus>,
        metrics: Arc<Metrics>,
        body_timeout: std::time::Duration,
    ) -> Self {
        Self {
            apps_by_id: apps.iter().map(|a| (a.id.clone(), a.clone())).collect(),
            rates: apps
                .iter()
                .filter(|a| a.max_api_requests_per_second > 0)
                .map(|a| {
                    let bucket =
                        TokenBucket::new(a.max_api_requests_per_second, std::time::Instant::now());
                    (a.id.clone(), parking_lot::Mutex::new(bucket))
                })
                .collect(),
            state,
            bus,
            metrics,
            body_timeout,
        }
    }

    /// Serves one HTTP API request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let routed = route(req.uri().path());
        let label = routed.as_ref().map_or("unknown", |(_, r)| r.label());
        let span =
            tracing::info_span!("http_api", endpoint = label, status = tracing::field::Empty);
        let (status, body) = match self.serve(req, routed).instrument(span.clone()).await {
            Ok(body) => (StatusCode::OK, body),
            Err(Refused(status, message)) => {
                tracing::info!(status = status.as_u16(), endpoint = label, error = %message, "HTTP API request refused");
                (status, json!({ "error": message }))
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
        let mut response = json_response(status, &body);
        if status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still come: the connection cannot
            // carry another request.
            response
                .headers_mut()
                .insert(hyper::header::CONNECTION, "close".parse().expect("static"));
        }
        response
    }

    async fn serve(
        &self,
        req: Request<Incoming>,
        routed: Option<(String, Route)>,
    ) -> Result<Value, Refused> {
        let (app_id, route) =
            routed.ok_or_else(|| refused(StatusCode::NOT_FOUND, "no such endpoint"))?;
        if req.method() != route.method() {
            return Err(refused(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} expects {}", route.label(), route.method()),
            ));
        }
        let app = self
            .apps_by_id
            .get(&app_id)
            .cloned()
            .ok_or_else(|| refused(StatusCode::NOT_FOUND, format!("unknown app `{app_id}`")))?;
        let (parts, body) = req.into_parts();
        let body_limit = app.max_event_payload_bytes * app.max_batch_events * 2 + 64 * 1024;
        // A client sending a head and then trickling the body would hold the
        // connection and up to `body_limit` bytes before any signature check.
        let body =
            tokio::time::timeout(self.body_timeout, Limited::new(body, body_limit).collect())
                .await
                .map_err(|_| {
                    refused(
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "request body not received within {} s",
                            self.body_timeout.as_secs()
                        ),
                    )
                })?
                .map_err(|_| {
                    refused(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("request body over {body_limit} bytes"),
                    )
                })?
                .to_bytes();
        let query = parts.uri.query().unwrap_or_default();
        let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        self.authenticate(
            &app,
            parts.method.as_str(),
            parts.uri.path(),
            &params,
            &body,
        )?;
        if !app.enabled {
            return Err(refused(StatusCode::FORBIDDEN, "app is disabled"));
        }
        if let Some(bucket) = self.rates.get(&app.id) {
            if !bucket.lock().try_take(std::time::Instant::now()) {
                self.metrics
                    .limit_rejections
                    .with_label_values(&[&app.id, "api_rate"])
                    .inc();
                let why = format!(
                    "over {} API requests per second for this app",
                    app.max_api_requests_per_second
                );
                return Err(refused(StatusCode::TOO_MANY_REQUESTS, why));
            }
        }
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        match route {
            Route::Events => {
                let req: api::TriggerRequest = parse_json(&body)?;
                let (pubs, info) = api::validate_trigger(&req, &app.api_limits())?;
                self.publish_all(&app, &pubs).await?;
                if !info.any() {
                    return Ok(json!({}));
                }
                let channels: Map<String, Value> = pubs
                    .iter()
                    .map(|p| {
                        (
                            p.channel.to_string(),
                            self.channel_info(&app, &p.channel, info),
                        )
                    })
                    .collect();
                Ok(json!({ "channels": channels }))
            }
            Route::BatchEvents => {
                let req: api::BatchRequest = parse_json(&body)?;
                let events = api::validate_batch(&req, &app.api_limits())?;
                let pubs: Vec<Publication> = events.iter().map(|(p, _)| p.clone()).collect();
                self.publish_all(&app, &pubs).await?;
                if !events.iter().any(|(_, info)| info.any()) {
                    return Ok(json!({}));
                }
                let batch: Vec<Value> = events
                    .iter()
                    .map(|(p, info)| self.channel_info(&app, &p.channel, *info))
                    .collect();
                Ok(json!({ "batch": batch }))
            }
            Route::Channels => {
                let prefix = param("filter_by_prefix").unwrap_or("");
                let info = Info::parse(param("info"))?;
                if info.cache {
                    return Err(refused(
                        StatusCode::BAD_REQUEST,
                        "info=cache is only available for one channel",
                    ));
                }
                if info.user_count && !prefix.starts_with("presence-") {
                    return Err(refused(
                        StatusCode::BAD_REQUEST,
                        "info=user_count requires filter_by_prefix=presence-",
                    ));
                }
                let channels: Map<String, Value> = self
                    .state
                    .channels(&app.id, prefix)
                    .into_iter()
                    .map(|c| {
                        let mut attrs = Map::new();
                        if info.user_count {
                            attrs.insert("user_count".into(), c.user_count.into());
                        }
                        if info.subscription_count {
                            attrs.insert("subscription_count".into(), c.subscription_count.into());
                        }
                        (c.name, Value::Object(attrs))
                    })
                    .collect();
                Ok(json!({ "channels": channels }))
            }
            Route::Channel(name) => {
                let channel = parse_channel(&name)?;
                let info = Info::parse(param("info"))?;
                if info.user_count && !channel.is_presence() {
                    return Err(refused(
                        StatusCode::BAD_REQUEST,
                        "info=user_count is only available for presence channels",
                    ));
                }
                if info.cache && !channel.is_cache() {
                    return Err(refused(
                        StatusCode::BAD_REQUEST,
                        "info=cache is only available for cache channels",
                    ));
                }
                let summary = self.state.channel(&app.id, &name);
                let mut body = self.channel_info(&app, &channel, info);
                body["occupied"] = (summary.subscription_count > 0).into();
                Ok(body)
            }
            Route::Users(name) => {
                let channel = parse_channel(&name)?;
                if !channel.is_presence() {
                    return Err(refused(
                        StatusCode::BAD_REQUEST,
                        "users are only available for presence channels",
                    ));
                }
                let users: Vec<Value> = self
                    .state
                    .users(&app.id, &name)
                    .into_iter()
                    .map(|id| json!({ "id": id }))
                    .collect();
                Ok(json!({ "users": users }))
            }
            Route::TerminateConnections(user_id) => {
                let message = BusMessage::TerminateUser {
                    app: app.id.clone(),
                    user_id,
                };
                self.publish(&app, message).await?;
                Ok(json!({}))
            }
        }
    }

    /// Checks `auth_key`, `auth_timestamp`, `auth_version`, `body_md5` and `auth_signature`.
    fn authenticate(
        &self,
        app: &AppConfig,
        method: &str,
        path: &str,
        params: &[(String, String)],
        body: &[u8],
    ) -> Result<(), Refused> {
        let fail = |why: &str| {
            self.metrics
                .auth_failures
                .with_label_values(&[&app.id, "api"])
                .inc();
            Err(refused(StatusCode::UNAUTHORIZED, why))
        };
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        if param("auth_key") != Some(app.key.as_str()) {
            return fail("auth_key is missing or not this app's key");
        }
        if param("auth_version").is_some_and(|v| v != "1.0") {
            return fail("auth_version must be 1.0");
        }
        let Some(timestamp) = param("auth_timestamp").and_then(|t| t.parse::<u64>().ok()) else {
            return fail("auth_timestamp is missing or not a number");
        };
        let now = herald_protocol::unix_millis() / 1000;
        if now.abs_diff(timestamp) > MAX_CLOCK_SKEW_SECS {
            return fail("auth_timestamp is more than 600 s from the server time; check the clock");
        }
        match param("body_md5") {
            Some(md5) if md5 != auth::body_md5(body) => {
                return fail("body_md5 does not match the body")
            }
            None if !body.is_empty() => return fail("body_md5 is required with a body"),
            _ => {}
        }
        let Some(signature) = param("auth_signature") else {
            return fail("auth_signature is missing");
        };
        let pairs = || params.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        // SDKs sign the path as they put it in the URL; some escape it there, some do not.
        let decoded = decode(path);
        let valid = [path, decoded.as_str()].iter().any(|p| {
            let signed = auth::api_string_to_sign(method, p, pairs());
            app.secrets()
                .any(|secret| auth::verify(secret, &signed, signature))
        });
        if !valid {
            return fail("invalid auth_signature");
        }
        Ok(())
    }

    async fn publish_all(&self, app: &AppConfig, pubs: &[Publication]) -> Result<(), Refused> {
        for p in pubs {
            if p.channel.is_cache() {
                self.state
                    .set_cache(&app.id, p.channel.as_str(), &p.event, &p.data)
                    .await
                    .map_err(|e| {
                        refused(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("cache channel store unavailable: {e}"),
                        )
                    })?;
            }
            let envelope = Envelope::new(&app.id, p.channel.as_str(), &p.event, p.data.clone())
                .except(p.except_socket.clone());
            self.publish(app, BusMessage::Event(envelope)).await?;
        }
        Ok(())
    }

    async fn publish(&self, app: &AppConfig, mut message: BusMessage) -> Result<(), Refused> {
        self.metrics
            .bus_publishes
            .with_label_values(&[&app.id])
            .inc();
        let span = tracing::info_span!("publish", app = %app.id);
        let published = async {
            if let BusMessage::Event(envelope) = &mut message {
                envelope.traceparent = herald_telemetry::current_traceparent();
            }
            self.bus.publish(message).await
        }
        .instrument(span)
        .await;
        published.map_err(|e| {
            self.metrics
                .bus_publish_failures
                .with_label_values(&[&app.id])
                .inc();
            refused(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        })
    }

    /// The requested `info` attributes of one channel.
    fn channel_info(&self, app: &AppConfig, channel: &ChannelName, info: Info) -> Value {
        let summary = self.state.channel(&app.id, channel.as_str());
        let mut attrs = Map::new();
        if info.user_count && channel.is_presence() {
            attrs.insert("user_count".into(), summary.user_count.into());
        }
        if info.subscription_count {
            attrs.insert(
                "subscription_count".into(),
                summary.subscription_count.into(),
            );
        }
        if info.cache && channel.is_cache() {
            let cached = self.state.cache(&app.id, channel.as_str()).map(|c| {
                json!({ "event": c.event, "data": serde_json::from_str::<Value>(&c.data).unwrap_or(Value::Null) })
            });
            attrs.insert("cache".into(), cached.unwrap_or(Value::Null));
        }
        Value::Object(attrs)
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refused> {
    serde_json::from_slice(body)
        .map_err(|e| refused(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

fn parse_channel(name: &str) -> Result<ChannelName, Refused> {
    ChannelName::parse(name).map_err(|e| {
        refused(
            StatusCode::BAD_REQUEST,
            format!("invalid channel `{name}`: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let ok = |p: &str| route(p).map(|(app, r)| (app, r.label()));
        assert_eq!(ok("/apps/1/events"), Some(("1".into(), "events")));
        assert_eq!(
            ok("/apps/1/batch_events"),
            Some(("1".into(), "batch_events"))
        );
        assert_eq!(ok("/apps/1/channels"), Some(("1".into(), "channels")));
        assert_eq!(
            ok("/apps/1/channels/presence-a"),
            Some(("1".into(), "channel"))
        );
        assert_eq!(
            ok("/apps/1/channels/presence-a/users"),
            Some(("1".into(), "users"))
        );
        assert_eq!(
            ok("/apps/1/users/u%201/terminate_connections"),
            Some(("1".into(), "terminate_connections"))
        );
        match route("/apps/1/users/u%201/terminate_connections") {
            Some((_, Route::TerminateConnections(user))) => assert_eq!(user, "u 1"),
            _ => panic!("not routed"),
        }
        assert!(route("/apps/1/nope").is_none());
        assert!(route("/apps/1").is_none());
        assert!(route("/app/1/events").is_none());
    }
}
