//! Shutdown of a role serving WebSockets: every connection is closed with
//! 4200 ("reconnect") spread over the drain window, so that a rolling deploy
//! moves clients to other nodes without a reconnect storm; then the process
//! waits (bounded by `shutdown_timeout`) for the sockets to finish closing.

use herald_gateway::Gateway;
use std::time::Duration;

/// Closes every connection over `window`, then waits up to `timeout` for
/// them to be gone.
pub async fn drain(gateway: &Gateway, window: Duration, timeout: Duration) {
    gateway.drain(window).await;
    let drained = tokio::time::timeout(timeout, async {
        while gateway.connection_count() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = gateway.connection_count(),
            "shutdown timeout reached with connections open"
        );
    }
}
