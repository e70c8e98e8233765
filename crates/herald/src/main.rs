//! The `herald` binary: one executable, one subcommand per deployment shape.
//!
//! `herald standalone` runs the gateway and the HTTP API on one port with the
//! in-process bus and channel state: no external services.

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use herald_bus::{Bus, LocalBus};
use herald_config::{AppSource, Config};
use herald_gateway::{Gateway, Settings};
use herald_ingest::Ingest;
use herald_metrics::Metrics;
use herald_presence::ChannelState;
use herald_protocol::codes;
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
    /// Log format; filter with RUST_LOG (default info).
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Loads the file (if any), then the `PUSHER_APP_*` app, validating both.
fn load_config(args: &CommonArgs) -> Result<(Config, AppSource), herald_config::ConfigError> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    let source = config.fill_apps_from_env(|name| std::env::var(name).ok())?;
    Ok((config, source))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let Command::Standalone(args) = cli.command;
    init_logging(args.log_format);
    let (config, source) = match load_config(&args) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("herald: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(standalone(args, config, source)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn standalone(args: CommonArgs, config: Config, source: AppSource) -> anyhow::Result<()> {
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
    let state = Arc::new(ChannelState::in_memory());
    let bus = Arc::new(LocalBus::default());
    let dyn_bus: Arc<dyn Bus> = bus.clone();
    let gateway = Gateway::new(
        Settings::from_config(&config),
        &apps,
        state.clone(),
        dyn_bus.clone(),
        metrics.clone(),
    );
    bus.attach(gateway.hub());
    state.set_listener(gateway.hub());
    let ingest = Arc::new(Ingest::new(&apps, state.clone(), dyn_bus, metrics.clone()));

    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot bind {bind}"))?;
    let admin = herald_metrics::bind_admin(metrics_bind).await?;
    tokio::spawn(herald_metrics::serve_admin(admin, metrics.clone()));
    metrics.set_ready(true);
    tracing::info!(%bind, %metrics_bind, apps = apps.len(), "herald standalone listening");

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(stream, gateway.clone(), ingest.clone()));
            }
        }
    }

    metrics.set_ready(false);
    drop(listener);
    tracing::info!(
        connections = gateway.connection_count(),
        "shutting down: closing connections with 4200"
    );
    gateway.close_all(codes::RECONNECT, "Server shutting down; reconnect");
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
    tracing::info!("herald stopped");
    Ok(())
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    gateway: Arc<Gateway>,
    ingest: Arc<Ingest>,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let gateway = gateway.clone();
        let ingest = ingest.clone();
        async move {
            let path = req.uri().path();
            let response = if path.starts_with("/app/") {
                gateway.handle(req)
            } else if path.starts_with("/apps/") {
                ingest.handle(req).await
            } else {
                Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(Full::new(Bytes::from_static(
                        b"not found: WebSockets at /app/{key}, the HTTP API at /apps/{id}/\n",
                    )))
                    .expect("static response")
            };
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
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
