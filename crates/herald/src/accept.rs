//! The accept loops of the client port, plain and TLS. Each accepted socket
//! gets its own task; the loops themselves never block on a connection, and
//! ride out a failing `accept` (no descriptors left) with
//! [`AcceptBackoff`] instead of spinning.

use crate::routing::Routes;
use crate::tls::Tls;
use herald_metrics::{AcceptBackoff, Metrics};
use std::sync::Arc;
use tokio::net::TcpListener;

/// Accepts plain connections until `shutdown` resolves, then drops the
/// listener (new connections are refused from then on).
pub async fn plain(
    listener: TcpListener,
    routes: Routes,
    metrics: &Metrics,
    shutdown: impl std::future::Future,
) {
    let mut backoff = AcceptBackoff::new(metrics, "client");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            (stream, remote) = backoff.accept(&listener) => {
                let _ = stream.set_nodelay(true);
                // The 101 of a WebSocket handshake goes out in one segment with
                // the connection's first frame.
                let stream = herald_gateway::CorkUpgradeResponse::new(stream);
                tokio::spawn(routes.clone().serve(stream, remote.ip()));
            }
        }
    }
}

/// Accepts TLS connections forever (the caller aborts the task to stop).
/// The TLS handshake gets the same deadline as a request head.
pub async fn tls(listener: TcpListener, tls: Arc<Tls>, routes: Routes, metrics: Arc<Metrics>) {
    let mut backoff = AcceptBackoff::new(&metrics, "tls");
    loop {
        let (stream, remote) = backoff.accept(&listener).await;
        let _ = stream.set_nodelay(true);
        let (acceptor, routes) = (tls.acceptor(), routes.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(routes.header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => routes.serve(tls_stream, remote.ip()).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        });
    }
}
