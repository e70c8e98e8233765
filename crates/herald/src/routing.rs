//! One HTTP/1 connection on the client port, routed by path prefix:
//! `/app/{key}` to the gateway (WebSocket upgrade), `/apps/{id}/...` to the
//! HTTP API. A role that lacks the other half answers 404 with a hint
//! naming where that half lives, since a wrong Ingress route is the usual
//! cause.

use bytes::Bytes;
use herald_gateway::Gateway;
use herald_ingest::Ingest;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// What the client port serves in this role.
#[derive(Clone)]
pub struct Routes {
    pub gateway: Option<Arc<Gateway>>,
    pub ingest: Option<Arc<Ingest>>,
    /// A request head must arrive within this (slowloris).
    pub header_timeout: Duration,
}

impl Routes {
    /// Serves one accepted connection (plain or TLS) until it closes or upgrades.
    pub async fn serve<S>(self, stream: S, remote: IpAddr)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let header_timeout = self.header_timeout;
        let service = service_fn(move |req: Request<Incoming>| {
            let routes = self.clone();
            async move { Ok::<_, std::convert::Infallible>(routes.route(req, remote).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades()
            .await;
    }

    async fn route(&self, req: Request<Incoming>, remote: IpAddr) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        match (&self.gateway, &self.ingest) {
            (Some(gateway), _) if path.starts_with("/app/") => gateway.handle(req, remote),
            (_, Some(ingest)) if path.starts_with("/apps/") => ingest.handle(req).await,
            _ => Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(Full::new(Bytes::from(not_found_hint(
                    self.gateway.is_some(),
                    self.ingest.is_some(),
                ))))
                .expect("static response"),
        }
    }
}

fn not_found_hint(websockets: bool, api: bool) -> &'static str {
    match (websockets, api) {
        (true, true) => "not found: WebSockets at /app/{key}, the HTTP API at /apps/{id}/\n",
        (true, false) => "not found: this gateway serves WebSockets at /app/{key}; the HTTP API is on the ingest\n",
        _ => "not found: this ingest serves the HTTP API at /apps/{id}/; WebSockets are on the gateways\n",
    }
}
