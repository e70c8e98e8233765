//! The sockets a Herald process serves on, bound before [`crate::run`] so
//! that a caller (the binary, or a test binding port 0) owns the addresses
//! and learns the ports actually taken.

use anyhow::Context;
use herald_config::Config;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// Where WebSocket clients and the HTTP API are served unless configured.
pub const DEFAULT_BIND: &str = "0.0.0.0:6001";
/// Where `/metrics`, `/healthz` and `/readyz` are served unless configured.
pub const DEFAULT_METRICS_BIND: &str = "0.0.0.0:9601";

/// Pending connections the kernel may queue for `accept` (capped by
/// `net.core.somaxconn`). The default of 128 overflows under a burst of
/// connects (a reconnect storm, the connect-rate benchmark) and the client
/// then waits a full second for its SYN to be retransmitted.
const LISTEN_BACKLOG: u32 = 4096;

/// The bound listeners of one process.
pub struct Listeners {
    /// WebSockets and the HTTP API, plain (ws/http).
    pub client: TcpListener,
    /// The same over TLS (wss/https), when `tls_bind`, `tls_cert` and `tls_key` are set.
    pub tls: Option<TcpListener>,
    /// Metrics and health.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the addresses `config` names (or the defaults).
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let admin_addr = config
            .metrics_bind
            .unwrap_or_else(|| DEFAULT_METRICS_BIND.parse().expect("valid default"));
        let admin = herald_metrics::bind_admin(admin_addr).await?;
        let client_addr = config
            .bind
            .unwrap_or_else(|| DEFAULT_BIND.parse().expect("valid default"));
        let client = listen(client_addr)?;
        let tls = match (config.tls_bind, &config.tls_cert, &config.tls_key) {
            (Some(addr), Some(_), Some(_)) => Some(listen(addr)?),
            _ => None,
        };
        Ok(Self { client, tls, admin })
    }
}

/// Binds a client listener with a backlog fit for connection bursts.
pub fn listen(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let bind = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    bind().with_context(|| format!("cannot bind {addr}"))
}
