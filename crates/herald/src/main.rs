//! The `herald` binary: one executable, one subcommand per deployment shape.
//!
//! `herald standalone` runs the gateway and the HTTP API on one port with the
//! in-process bus and channel state: no external services. `herald gateway`
//! and `herald ingest` run one role each and join through NATS: the NATS bus
//! carries events, JetStream KV carries presence and occupancy.

mod state_metrics;
mod tls;
mod webhooks;

/// jemalloc returns the memory of short-lived handshake buffers instead of
/// keeping it fragmented between long-lived per-connection objects (measured
/// in docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use herald_bus::Bus;
use herald_config::{AppSource, Config};
use herald_gateway::{Gateway, Settings};
use herald_ingest::Ingest;
use herald_metrics::Metrics;
use herald_state::kv::{KvMetrics, KvSettings};
use herald_state::ChannelState;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

const DEFAULT_BIND: &str = "0.0.0.0:6001";
const DEFAULT_METRICS_BIND: &str = "0.0.0.0:9601";

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Pusher-compatible WebSocket broadcast server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Gateway and HTTP API in one process on one port, no external services.
    Standalone(CommonArgs),
    /// Cluster role: WebSocket connections at /app/{key}, joined by NATS.
    Gateway(ClusterArgs),
    /// Cluster role: the Pusher HTTP API at /apps/{id}/..., joined by NATS.
    Ingest(ClusterArgs),
    /// Inspect and replay webhook dead letters of a running standalone or ingest.
    #[command(subcommand)]
    Webhooks(webhooks::WebhookCommand),
}

#[derive(clap::Args)]
struct CommonArgs {
    /// TOML config file (see docs/configuration.md).
    #[arg(long, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    /// Address for WebSocket clients and the HTTP API [default: 0.0.0.0:6001].
    #[arg(long, env = "HERALD_BIND")]
    bind: Option<SocketAddr>,
    /// Address for /metrics, /healthz and /readyz [default: 0.0.0.0:9601].
    #[arg(long, env = "HERALD_METRICS_BIND")]
    metrics_bind: Option<SocketAddr>,
    /// Seconds over which connections are closed after SIGTERM [default: 30 gateway, 0 standalone].
    #[arg(long, env = "HERALD_DRAIN_WINDOW")]
    drain_window: Option<u64>,
    /// Log format; filter with RUST_LOG (default info).
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(clap::Args)]
struct ClusterArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// NATS servers, comma-separated (overrides nats.servers in the config file).
    #[arg(long, env = "HERALD_NATS", value_delimiter = ',')]
    nats: Vec<String>,
    /// This node's id, unique among live nodes [default: random].
    #[arg(long, env = "HERALD_NODE_ID")]
    node_id: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Which parts of Herald this process runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Standalone,
    Gateway,
    Ingest,
}

impl Role {
    fn serves_websockets(self) -> bool {
        self != Role::Ingest
    }

    fn serves_api(self) -> bool {
        self != Role::Gateway
    }
}

/// Loads the file (if any), then the environment, then flags, validating the result.
fn load_config(
    args: &CommonArgs,
    nats: &[String],
) -> Result<(Config, AppSource), herald_config::ConfigError> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    let env = |name: &str| std::env::var(name).ok();
    config.nats.apply_env(env);
    if !nats.is_empty() {
        config.nats.servers = nats.to_vec();
    }
    let source = config.fill_apps_from_env(env)?;
    Ok((config, source))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let (role, args, nats, node_id) = match cli.command {
        Command::Standalone(common) => (Role::Standalone, common, Vec::new(), None),
        Command::Gateway(c) => (Role::Gateway, c.common, c.nats, c.node_id),
        Command::Ingest(c) => (Role::Ingest, c.common, c.nats, c.node_id),
        Command::Webhooks(command) => return webhooks::command(command),
    };
    let format = match args.log_format {
        LogFormat::Text => herald_telemetry::LogFormat::Text,
        LogFormat::Json => herald_telemetry::LogFormat::Json,
    };
    let telemetry = herald_telemetry::init(
        format,
        &format!("herald-{}", format!("{role:?}").to_lowercase()),
    );
    let (config, source) = match load_config(&args, &nats) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("herald: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if role != Role::Standalone && config.nats.servers.is_empty() {
        eprintln!("herald: {role:?} needs NATS: pass --nats URL[,URL...] or set nats.servers");
        return std::process::ExitCode::from(2);
    }
    let node_id = node_id.unwrap_or_else(|| format!("{:08x}", rand::random::<u32>()));
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let outcome = runtime.block_on(run(role, args, config, source, node_id));
    telemetry.shutdown();
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The bus and channel state a role works with.
struct Backbone {
    state: Arc<ChannelState>,
    bus: Arc<Bus>,
    /// Cluster mode's JetStream (webhook queue).
    js: Option<async_nats::jetstream::Context>,
}

async fn backbone(
    role: Role,
    config: &Config,
    metrics: &Arc<Metrics>,
    node_id: &str,
) -> anyhow::Result<Backbone> {
    if role == Role::Standalone {
        metrics.set_bus_connected(true);
        metrics.kv_healthy.set(1);
        return Ok(Backbone {
            state: Arc::new(ChannelState::in_memory()),
            bus: Arc::new(Bus::in_memory()),
            js: None,
        });
    }
    let n = &config.nats;
    let name = format!("herald-{}-{node_id}", format!("{role:?}").to_lowercase());
    let watcher = metrics.clone();
    let client =
        herald_bus::nats::connect(n, &name, move |up| watcher.set_bus_connected(up)).await?;
    let kv = KvSettings {
        state_bucket: n.state_bucket.clone(),
        cache_bucket: n.cache_bucket.clone(),
        replicas: n.kv_replicas,
        node_ttl: Duration::from_secs(n.node_ttl),
        metrics: KvMetrics {
            write_failures: metrics.kv_write_failures.clone(),
            apply_seconds: metrics.kv_apply_seconds.clone(),
            nodes_removed: metrics.nodes_removed.clone(),
            healthy: metrics.kv_healthy.clone(),
        },
    };
    // NATS may not be up yet (pods start in any order): keep trying, not ready meanwhile.
    let state = loop {
        match ChannelState::replicated(client.clone(), node_id, &kv).await {
            Ok(state) => break state,
            Err(e) => {
                tracing::warn!(error = %e, "cluster state unavailable; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let js = async_nats::jetstream::new(client.clone());
    Ok(Backbone {
        state: Arc::new(state),
        bus: Arc::new(Bus::nats(client, &n.subject_prefix)),
        js: Some(js),
    })
}

async fn run(
    role: Role,
    args: CommonArgs,
    config: Config,
    source: AppSource,
    node_id: String,
) -> anyhow::Result<()> {
    match source {
        AppSource::Development => tracing::warn!(
            "no apps configured: serving the development app (id app-id, key app-key, secret app-secret); \
             set [[apps]] in the config file or PUSHER_APP_ID/PUSHER_APP_KEY/PUSHER_APP_SECRET before production"
        ),
        AppSource::PusherEnv => tracing::info!("app taken from PUSHER_APP_ID/PUSHER_APP_KEY/PUSHER_APP_SECRET"),
        AppSource::File => {}
    }
    let bind = args
        .bind
        .or(config.bind)
        .unwrap_or_else(|| DEFAULT_BIND.parse().expect("valid default"));
    let metrics_bind = args
        .metrics_bind
        .or(config.metrics_bind)
        .unwrap_or_else(|| DEFAULT_METRICS_BIND.parse().expect("valid default"));

    let apps: Vec<_> = config.apps.iter().cloned().map(Arc::new).collect();
    let metrics = Arc::new(Metrics::new());
    for app in &apps {
        metrics.init_app(&app.id, role.serves_websockets());
    }
    // Metrics and health first, so an orchestrator sees "alive, not ready" while NATS comes up.
    let admin = herald_metrics::bind_admin(metrics_bind).await?;
    tokio::spawn(herald_metrics::serve_admin(admin, metrics.clone()));
    // SIGTERM is honoured from here on, also while waiting for NATS.
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let backbone = tokio::select! {
        backbone = backbone(role, &config, &metrics, &node_id) => backbone?,
        _ = &mut shutdown => {
            tracing::info!("stopped before startup completed");
            return Ok(());
        }
    };
    metrics.register(Box::new(state_metrics::StateMetrics::new(
        backbone.state.clone(),
    )));

    let webhooks = webhooks::start(
        role,
        &config,
        &apps,
        backbone.js.as_ref(),
        &backbone.state,
        &metrics,
    )
    .await?;
    let gateway = role.serves_websockets().then(|| {
        let gateway = Gateway::new(
            Settings::from_config(&config),
            &apps,
            backbone.state.clone(),
            backbone.bus.clone(),
            metrics.clone(),
            webhooks,
        );
        backbone.state.add_listener(gateway.hub());
        backbone.bus.attach(gateway.hub());
        backbone
            .bus
            .listen_control(&apps.iter().map(|a| a.id.clone()).collect::<Vec<_>>());
        gateway
    });
    let ingest = role.serves_api().then(|| {
        Arc::new(Ingest::new(
            &apps,
            backbone.state.clone(),
            backbone.bus.clone(),
            metrics.clone(),
            Duration::from_secs(config.body_timeout),
        ))
    });

    let listener = listen(bind).with_context(|| format!("cannot bind {bind}"))?;
    let header_timeout = Duration::from_secs(config.header_timeout);
    let tls_listener = match (config.tls_bind, &config.tls_cert, &config.tls_key) {
        (Some(tls_bind), Some(cert), Some(key)) => {
            let tls = tls::Tls::new(cert, key)?;
            tokio::spawn(tls.clone().watch());
            let tls_listener =
                listen(tls_bind).with_context(|| format!("cannot bind {tls_bind}"))?;
            tracing::info!(%tls_bind, "TLS listener (wss/https)");
            let (gateway, ingest) = (gateway.clone(), ingest.clone());
            Some(tokio::spawn(async move {
                loop {
                    let Ok((stream, remote)) = tls_listener.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let (acceptor, gateway, ingest) =
                        (tls.acceptor(), gateway.clone(), ingest.clone());
                    tokio::spawn(async move {
                        // The TLS handshake gets the same deadline as a request head.
                        match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(tls_stream)) => {
                                serve_connection(
                                    tls_stream,
                                    remote.ip(),
                                    header_timeout,
                                    gateway,
                                    ingest,
                                )
                                .await
                            }
                            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!("TLS handshake timed out"),
                        }
                    });
                }
            }))
        }
        _ => None,
    };
    metrics.set_ready(true);
    tracing::info!(role = ?role, node = %node_id, %bind, %metrics_bind, apps = apps.len(), "herald listening");

    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                // The 101 of a WebSocket handshake goes out in one segment with
                // the connection's first frame.
                let stream = herald_gateway::CorkUpgradeResponse::new(stream);
                tokio::spawn(serve_connection(stream, remote.ip(), header_timeout, gateway.clone(), ingest.clone()));
            }
        }
    }

    metrics.set_ready(false);
    drop(listener);
    if let Some(tls_accept) = tls_listener {
        tls_accept.abort();
    }
    if let Some(gateway) = &gateway {
        let default_window = if role == Role::Gateway { 30 } else { 0 };
        let window = Duration::from_secs(
            args.drain_window
                .or(config.drain_window)
                .unwrap_or(default_window),
        );
        gateway.drain(window).await;
        let drained = tokio::time::timeout(Duration::from_secs(config.shutdown_timeout), async {
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
    tracing::info!("herald stopped");
    Ok(())
}

/// Pending connections the kernel may queue for `accept` (capped by
/// `net.core.somaxconn`). The default of 128 overflows under a burst of
/// connects (a reconnect storm, the connect-rate benchmark) and the client
/// then waits a full second for its SYN to be retransmitted.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a client listener with a backlog fit for connection bursts.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn serve_connection<S>(
    stream: S,
    remote: std::net::IpAddr,
    header_timeout: Duration,
    gateway: Option<Arc<Gateway>>,
    ingest: Option<Arc<Ingest>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let gateway = gateway.clone();
        let ingest = ingest.clone();
        async move {
            let path = req.uri().path();
            let response = match (&gateway, &ingest) {
                (Some(gateway), _) if path.starts_with("/app/") => gateway.handle(req, remote),
                (_, Some(ingest)) if path.starts_with("/apps/") => ingest.handle(req).await,
                _ => Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(Full::new(Bytes::from(not_found_hint(
                        gateway.is_some(),
                        ingest.is_some(),
                    ))))
                    .expect("static response"),
            };
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    // A request head must arrive within header_timeout (slowloris).
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
}

fn not_found_hint(websockets: bool, api: bool) -> &'static str {
    match (websockets, api) {
        (true, true) => "not found: WebSockets at /app/{key}, the HTTP API at /apps/{id}/\n",
        (true, false) => "not found: this gateway serves WebSockets at /app/{key}; the HTTP API is on the ingest\n",
        _ => "not found: this ingest serves the HTTP API at /apps/{id}/; WebSockets are on the gateways\n",
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
