//! Request authentication and the per-app request budget.
//!
//! Every request is checked exactly as the Pusher server SDKs sign it, and
//! only an authenticated request draws on its app's budget, so no one else
//! can use up an app's API rate.

use crate::error::HttpError;
use crate::metrics::IngestMetrics;
use crate::request::QueryParams;
use crate::routing::percent_decode;
use herald_config::AppConfig;
use herald_protocol::auth;
use herald_protocol::rate::TokenBucket;
use hyper::StatusCode;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// How far `auth_timestamp` may be from the server clock (Pusher: 600 s).
const MAX_CLOCK_SKEW_SECS: u64 = 600;

/// The parts of a request its signature covers.
pub(crate) struct SignedRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub params: &'a QueryParams,
    pub body: &'a [u8],
}

/// Checks `auth_key`, `auth_timestamp`, `auth_version`, `body_md5` and
/// `auth_signature`; a failure is a 401 and counts in `auth_failures`.
pub(crate) fn authenticate(
    app: &AppConfig,
    request: &SignedRequest,
    metrics: &IngestMetrics,
) -> Result<(), HttpError> {
    check_signature(app, request).map_err(|why| {
        metrics
            .auth_failures
            .with_label_values(&[&app.id, "api"])
            .inc();
        HttpError::new(StatusCode::UNAUTHORIZED, why)
    })
}

/// Why `request` is not signed by `app`, if it is not.
fn check_signature(app: &AppConfig, request: &SignedRequest) -> Result<(), &'static str> {
    let param = |name: &str| request.params.get(name);
    if param("auth_key") != Some(app.key.as_str()) {
        return Err("auth_key is missing or not this app's key");
    }
    if param("auth_version").is_some_and(|v| v != "1.0") {
        return Err("auth_version must be 1.0");
    }
    let Some(timestamp) = param("auth_timestamp").and_then(|t| t.parse::<u64>().ok()) else {
        return Err("auth_timestamp is missing or not a number");
    };
    let now = herald_protocol::unix_millis() / 1000;
    if now.abs_diff(timestamp) > MAX_CLOCK_SKEW_SECS {
        return Err("auth_timestamp is more than 600 s from the server time; check the clock");
    }
    match param("body_md5") {
        Some(md5) if md5 != auth::body_md5(request.body) => {
            return Err("body_md5 does not match the body")
        }
        None if !request.body.is_empty() => return Err("body_md5 is required with a body"),
        _ => {}
    }
    let Some(signature) = param("auth_signature") else {
        return Err("auth_signature is missing");
    };
    // SDKs sign the path as they put it in the URL; some escape it there, some do not.
    let decoded = percent_decode(request.path);
    let valid = [request.path, decoded.as_str()].iter().any(|path| {
        let signed = auth::api_string_to_sign(request.method, path, request.params.pairs());
        app.secrets()
            .any(|secret| auth::verify(secret, &signed, signature))
    });
    if !valid {
        return Err("invalid auth_signature");
    }
    Ok(())
}

/// Per-app request budgets, for apps with `max_api_requests_per_second`.
pub(crate) struct RequestBudgets(HashMap<String, Mutex<TokenBucket>>);

impl RequestBudgets {
    pub(crate) fn new(apps: &[Arc<AppConfig>]) -> Self {
        Self(
            apps.iter()
                .filter(|a| a.max_api_requests_per_second > 0)
                .map(|a| {
                    let bucket = TokenBucket::new(a.max_api_requests_per_second, Instant::now());
                    (a.id.clone(), Mutex::new(bucket))
                })
                .collect(),
        )
    }

    /// Takes one request from `app`'s budget; an empty budget is a 429 and
    /// counts in `limit_rejections`.
    pub(crate) fn take(&self, app: &AppConfig, metrics: &IngestMetrics) -> Result<(), HttpError> {
        let Some(bucket) = self.0.get(&app.id) else {
            return Ok(());
        };
        if bucket.lock().try_take(Instant::now()) {
            return Ok(());
        }
        metrics
            .limit_rejections
            .with_label_values(&[&app.id, "api_rate"])
            .inc();
        let why = format!(
            "over {} API requests per second for this app",
            app.max_api_requests_per_second
        );
        Err(HttpError::new(StatusCode::TOO_MANY_REQUESTS, why))
    }
}
