//! The gateway role: WebSocket connections at `/app/{key}`, the Pusher
//! protocol per connection, and fan-out of bus events to local sockets.
//!
//! - [`hub`]: which local sockets want which channel; the bus sink and fan-out.
//! - [`peer`]: the non-blocking handle to one connection (bounded outbox, close signal).
//! - `connection`: the socket's reader and writer tasks and the handshake checks.
//! - `reader`: the lean, cancel-safe frame reader (no buffer while idle).
//! - `message`: reassembly of fragmented messages on top of the reader.
//! - `session`: the protocol state machine of one connection, a dispatcher
//!   over one module per client request (subscribe, presence, sign-in,
//!   client events).

mod client_address;
mod connection;
mod count_throttle;
mod crowd;
pub mod hub;
mod message;
pub mod metrics;
pub mod peer;
mod reader;
mod session;
mod upgrade_response;

pub use upgrade_response::CorkUpgradeResponse;

use client_address::client_address;

use bytes::Bytes;
use herald_bus::{Bus, BusMessage};
use herald_config::{AppConfig, Config};
use herald_metrics::Metrics;
use herald_protocol::{codes, Cause, Disconnect};
use herald_state::ChannelState;
use herald_webhooks::Webhooks;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use metrics::GatewayMetrics;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use hub::Hub;

/// Connection settings shared by every socket of the node.
#[derive(Debug, Clone)]
pub struct Settings {
    pub activity_timeout: Duration,
    pub pong_timeout: Duration,
    pub max_message_bytes: usize,
    pub outbox_capacity: usize,
    pub write_timeout: Duration,
    pub max_connections_per_ip: usize,
    /// Open connections of the whole process (`max_connections`, 0 = unlimited).
    pub max_connections: usize,
    /// Proxies whose `X-Forwarded-For` names the client (`trusted_proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            activity_timeout: Duration::from_secs(config.activity_timeout),
            pong_timeout: Duration::from_secs(config.pong_timeout),
            max_message_bytes: config.max_message_bytes,
            outbox_capacity: config.outbox_capacity,
            write_timeout: Duration::from_secs(config.write_timeout),
            max_connections_per_ip: config.max_connections_per_ip,
            max_connections: config.max_connections,
            trusted_proxies: config.trusted_proxy_ranges(),
        }
    }
}

pub struct Gateway {
    settings: Settings,
    apps_by_key: HashMap<String, Arc<AppConfig>>,
    hub: Arc<Hub>,
    state: Arc<ChannelState>,
    bus: Arc<Bus>,
    metrics: Arc<GatewayMetrics>,
    /// Where client events and cache misses are reported as webhooks.
    webhooks: Arc<Webhooks>,
    /// Open connections per client address, when `max_connections_per_ip` is set.
    per_ip: parking_lot::Mutex<HashMap<IpAddr, usize>>,
    /// Open connections in all, when `max_connections` is set.
    open: AtomicUsize,
    /// Random per process, so socket ids from different nodes never collide.
    socket_prefix: u32,
    next_socket: AtomicU64,
}

/// Every [`crowd::BURST`], until the hub is gone: the large presence
/// channels' member events and counts (see `crowd`).
async fn burst_crowds(hub: std::sync::Weak<Hub>, state: Arc<ChannelState>) {
    let mut every = tokio::time::interval(crowd::BURST);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        hub.burst_crowds(|app, channel| state.member_count(app, channel));
    }
}

impl Gateway {
    /// Builds the gateway and registers its metric families into `metrics`.
    pub fn new(
        settings: Settings,
        apps: &[Arc<AppConfig>],
        state: Arc<ChannelState>,
        bus: Arc<Bus>,
        metrics: &Metrics,
        webhooks: Arc<Webhooks>,
    ) -> Arc<Self> {
        let metrics = Arc::new(GatewayMetrics::register(metrics));
        for app in apps {
            metrics.init_app(&app.id);
        }
        let hub = Hub::new(apps, bus.clone(), metrics.clone());
        if apps.iter().any(|a| !a.large_presence_prefixes.is_empty()) {
            tokio::spawn(burst_crowds(Arc::downgrade(&hub), state.clone()));
        }
        Arc::new(Self {
            settings,
            apps_by_key: apps.iter().map(|a| (a.key.clone(), a.clone())).collect(),
            hub,
            state,
            bus,
            metrics,
            webhooks,
            per_ip: parking_lot::Mutex::default(),
            open: AtomicUsize::new(0),
            socket_prefix: rand::random::<u32>() % 1_000_000_000,
            next_socket: AtomicU64::new(1),
        })
    }

    /// The fan-out side, to attach to the bus.
    pub fn hub(&self) -> Arc<Hub> {
        self.hub.clone()
    }

    fn next_socket_id(&self) -> Arc<str> {
        let n = self.next_socket.fetch_add(1, Ordering::Relaxed);
        format!("{}.{}", self.socket_prefix, n).into()
    }

    /// Publishes on the bus, counting the outcome.
    async fn publish(&self, app: &str, message: BusMessage) {
        self.metrics.bus_publishes.with_label_values(&[app]).inc();
        if let Err(e) = self.bus.publish(message).await {
            self.metrics
                .bus_publish_failures
                .with_label_values(&[app])
                .inc();
            tracing::warn!(error = %e, app, "bus publish failed");
        }
    }

    /// Handles `GET /app/{key}`: upgrades to a WebSocket and runs the
    /// connection. `peer`: the TCP peer's address.
    pub fn handle(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        peer: IpAddr,
    ) -> Response<Full<Bytes>> {
        let client = client_address(peer, req.headers(), &self.settings.trusted_proxies);
        let key = req
            .uri()
            .path()
            .strip_prefix("/app/")
            .unwrap_or_default()
            .to_owned();
        if !fastwebsockets::upgrade::is_upgrade_request(&req) {
            return plain(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade\n");
        }
        let query = req.uri().query().unwrap_or_default().to_owned();
        let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
            Ok(pair) => pair,
            Err(e) => return plain(StatusCode::BAD_REQUEST, &format!("{e}\n")),
        };
        let origin = req
            .headers()
            .get(hyper::header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .map(str::to_owned);
        let admission = self.admit(&key, &query, origin.as_deref());
        let gateway = self.clone();
        tokio::spawn(async move {
            match upgrade.await {
                Ok(ws) => {
                    connection::run(gateway, ws.into_inner().into_inner(), admission, client).await
                }
                Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
            }
        });
        let (parts, _) = response.into_parts();
        Response::from_parts(parts, Full::default())
    }

    /// Checks the app key and protocol version of a handshake.
    fn admit(
        &self,
        key: &str,
        query: &str,
        origin: Option<&str>,
    ) -> Result<Arc<AppConfig>, connection::Refusal> {
        use connection::Refusal;
        let app = self.apps_by_key.get(key).ok_or_else(|| {
            let why = format!("App key {key} not in this cluster");
            Refusal::new(
                Disconnect::new(Cause::AppNotFound, codes::APP_NOT_FOUND, why),
                "",
            )
        })?;
        let refuse = |disconnect| Err(Refusal::new(disconnect, &app.id));
        if !app.enabled {
            return refuse(Disconnect::new(
                Cause::AppDisabled,
                codes::APP_DISABLED,
                "Application disabled",
            ));
        }
        if !app.allows_origin(origin) {
            let why = format!(
                "Origin {} is not allowed for this app",
                origin.unwrap_or("(none)")
            );
            return refuse(Disconnect::new(
                Cause::OriginNotAllowed,
                codes::UNAUTHORIZED,
                why,
            ));
        }
        let protocol = url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "protocol")
            .map(|(_, v)| v.into_owned());
        match protocol.as_deref().map(str::parse::<u32>) {
            None => refuse(Disconnect::new(
                Cause::NoProtocol,
                codes::NO_PROTOCOL_VERSION,
                "No protocol version supplied",
            )),
            Some(Err(_)) => refuse(Disconnect::new(
                Cause::InvalidProtocol,
                codes::INVALID_VERSION_FORMAT,
                "Invalid version string format",
            )),
            Some(Ok(5..=7)) => Ok(app.clone()),
            Some(Ok(v)) => refuse(Disconnect::new(
                Cause::UnsupportedProtocol,
                codes::UNSUPPORTED_PROTOCOL,
                format!("Unsupported protocol version {v}; Herald speaks 5 to 7"),
            )),
        }
    }

    /// Closes every connection with 4200 ("reconnect now"), spread evenly
    /// over `window` so that clients reconnect to other nodes gradually
    /// rather than all at once; a zero window closes them at once.
    pub async fn drain(&self, window: Duration) {
        const TICK: Duration = Duration::from_millis(50);
        let peers = self.hub.peers();
        if peers.is_empty() {
            return;
        }
        // At most one batch per tick; batch i goes out at i/batches of the window.
        let max_batches = (window.as_millis() / TICK.as_millis()).max(1) as usize;
        let per_batch = peers.len().div_ceil(max_batches);
        let batches = peers.len().div_ceil(per_batch) as u32;
        tracing::info!(
            connections = peers.len(),
            window_s = window.as_secs_f64(),
            "draining"
        );
        let start = tokio::time::Instant::now();
        for (i, batch) in peers.chunks(per_batch).enumerate() {
            tokio::time::sleep_until(start + window * i as u32 / batches).await;
            for peer in batch {
                peer.close(Disconnect::new(
                    Cause::Shutdown,
                    codes::RECONNECT,
                    "Server shutting down; reconnect",
                ));
            }
        }
    }

    pub fn connection_count(&self) -> usize {
        self.hub.connection_count()
    }

    /// Counts a connection from `ip` against `max_connections` and
    /// `max_connections_per_ip`; when one is full, the
    /// `herald_limit_rejections_total` label and the refusal instead.
    fn acquire(&self, ip: IpAddr) -> Result<(), (&'static str, Disconnect)> {
        if !self.acquire_slot() {
            let why = "too many connections to this server";
            let refusal = Disconnect::new(Cause::ConnectionLimit, codes::OVER_CAPACITY, why);
            return Err(("connections", refusal));
        }
        if !self.acquire_ip(ip) {
            self.release_slot();
            let why = format!("too many connections from {ip}");
            let refusal = Disconnect::new(Cause::PerIpLimit, codes::OVER_CAPACITY, why);
            return Err(("connections_per_ip", refusal));
        }
        Ok(())
    }

    /// Gives back what [`Self::acquire`] took.
    fn release(&self, ip: IpAddr) {
        self.release_ip(ip);
        self.release_slot();
    }

    /// Takes one of the process's `max_connections`; false when none is left.
    fn acquire_slot(&self) -> bool {
        let max = self.settings.max_connections;
        max == 0
            || self
                .open
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
                    (open < max).then_some(open + 1)
                })
                .is_ok()
    }

    fn release_slot(&self) {
        if self.settings.max_connections != 0 {
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Counts a connection from `ip`; false when the address is at its limit.
    fn acquire_ip(&self, ip: IpAddr) -> bool {
        let max = self.settings.max_connections_per_ip;
        if max == 0 {
            return true;
        }
        let mut per_ip = self.per_ip.lock();
        let count = per_ip.entry(ip).or_default();
        if *count >= max {
            return false;
        }
        *count += 1;
        true
    }

    fn release_ip(&self, ip: IpAddr) {
        if self.settings.max_connections_per_ip == 0 {
            return;
        }
        let mut per_ip = self.per_ip.lock();
        if let Some(count) = per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&ip);
            }
        }
    }
}

fn plain(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("static response")
}
