//! `GET /webhooks/dead-letters` and `POST /webhooks/dead-letters/replay`
//! on the admin port: the one place that needs both the dead letters and
//! the queue (a replay moves the former into the latter).

use crate::dead::DeadLetters;
use crate::error::WebhookError;
use crate::queue::Queue;
use herald_metrics::{AdminResponse, AdminRoutes};
use hyper::{Method, StatusCode};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub struct WebhookAdmin {
    pub dead: Arc<DeadLetters>,
    pub queue: Arc<Queue>,
}

type Answer = Pin<Box<dyn Future<Output = AdminResponse> + Send>>;

fn json(result: Result<serde_json::Value, WebhookError>) -> AdminResponse {
    match result {
        Ok(body) => (StatusCode::OK, "application/json", format!("{body}\n")),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "application/json",
            format!("{}\n", serde_json::json!({ "error": e.to_string() })),
        ),
    }
}

impl AdminRoutes for WebhookAdmin {
    fn route(&self, method: &Method, path: &str) -> Option<Answer> {
        let dead = self.dead.clone();
        match (method, path) {
            (&Method::GET, "/webhooks/dead-letters") => Some(Box::pin(async move {
                json(
                    dead.list()
                        .await
                        .map(|l| serde_json::json!({ "dead_letters": l })),
                )
            })),
            (&Method::POST, "/webhooks/dead-letters/replay") => {
                let queue = self.queue.clone();
                Some(Box::pin(async move {
                    json(
                        dead.replay(|letter| queue.push_now(letter.requeued()))
                            .await
                            .map(|n| serde_json::json!({ "replayed": n })),
                    )
                }))
            }
            (_, "/webhooks/dead-letters" | "/webhooks/dead-letters/replay") => {
                Some(Box::pin(async {
                    (
                        StatusCode::METHOD_NOT_ALLOWED,
                        "text/plain",
                        "method not allowed\n".to_owned(),
                    )
                }))
            }
            _ => None,
        }
    }
}
