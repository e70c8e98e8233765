//! The error type of every HTTP API endpoint.
//!
//! A refused request carries its status code and the message of its JSON
//! body from wherever it was refused, so the endpoints return it with `?`
//! and [`crate::Ingest::handle`] turns it into the response in one place.

use crate::json_response;
use bytes::Bytes;
use herald_protocol::api::ApiError;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::json;

/// A refused request: its status and the message of its `{"error": ...}` body.
pub(crate) struct HttpError {
    status: StatusCode,
    message: String,
}

impl HttpError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// A 400 Bad Request.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// The JSON error response. After a 408 the connection is closed.
    pub(crate) fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = json_response(self.status, &json!({ "error": self.message }));
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still come: the connection cannot
            // carry another request.
            response
                .headers_mut()
                .insert(hyper::header::CONNECTION, "close".parse().expect("static"));
        }
        response
    }
}

/// Validation errors of the request bodies (400 or 413).
impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
        Self::new(status, e.message())
    }
}
