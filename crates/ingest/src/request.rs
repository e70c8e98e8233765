//! Reading a request's query and body.
//!
//! Both are read before the signature is checked (the signature covers
//! them), so the body is bounded in size and in time: an unauthenticated
//! client must not be able to hold memory or a connection at will.

use crate::error::HttpError;
use bytes::Bytes;
use herald_config::AppConfig;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::StatusCode;
use std::time::Duration;

/// The query parameters in the order they came: the signature is computed
/// over all of them.
pub(crate) struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    pub(crate) fn parse(query: &str) -> Self {
        Self(
            url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// The first value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Reads the whole body: 408 if it takes longer than `timeout`, 413 if it is
/// larger than twice the largest batch `app` accepts plus 64 KiB.
pub(crate) async fn read_body(
    body: Incoming,
    app: &AppConfig,
    timeout: Duration,
) -> Result<Bytes, HttpError> {
    let body_limit = app.max_event_payload_bytes * app.max_batch_events * 2 + 64 * 1024;
    // A client sending a head and then trickling the body would hold the
    // connection and up to `body_limit` bytes before any signature check.
    let body = tokio::time::timeout(timeout, Limited::new(body, body_limit).collect())
        .await
        .map_err(|_| {
            HttpError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("request body not received within {} s", timeout.as_secs()),
            )
        })?
        .map_err(|_| {
            HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body over {body_limit} bytes"),
            )
        })?;
    Ok(body.to_bytes())
}
