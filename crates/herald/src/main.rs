//! The `herald` binary: one executable, one subcommand per deployment shape.
//!
//! `herald standalone` runs the gateway and the HTTP API on one port with the
//! in-process bus and channel state: no external services. `herald gateway`
//! and `herald ingest` run one role each and join through NATS: the NATS bus
//! carries events, JetStream KV carries presence and occupancy.
//!
//! This file only parses flags, loads the config and installs signal
//! handling; the server is the `herald` library ([`herald::run`]).

/// jemalloc returns the memory of short-lived handshake buffers instead of
/// keeping it fragmented between long-lived per-connection objects (measured
/// in docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::{Parser, Subcommand, ValueEnum};
use herald::admin_client::{self, WebhookCommand};
use herald::{Listeners, Role};
use herald_config::Config;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

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
    Webhooks(WebhookCommand),
    /// Validate the configuration (file, environment, flags) a role would
    /// start with, print a summary and exit: 0 valid, 2 invalid.
    CheckConfig(CheckArgs),
}

#[derive(clap::Args)]
struct CheckArgs {
    /// The role whose configuration to check.
    #[arg(long, value_enum, default_value_t = CheckedRole::Standalone)]
    role: CheckedRole,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CheckedRole {
    Standalone,
    Gateway,
    Ingest,
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

/// Loads the file (if any), then the environment, then flags, validating
/// the result for `role`.
fn load_config(
    role: Role,
    args: &CommonArgs,
    nats: &[String],
) -> Result<(Config, herald_config::AppSource), String> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    let env = |name: &str| std::env::var(name).ok();
    config.nats.apply_env(env);
    if !nats.is_empty() {
        config.nats.servers = nats.to_vec();
    }
    let source = config.fill_apps_from_env(env).map_err(|e| e.to_string())?;
    config.bind = args.bind.or(config.bind);
    config.metrics_bind = args.metrics_bind.or(config.metrics_bind);
    config.drain_window = args.drain_window.or(config.drain_window);
    if role != Role::Standalone && config.nats.servers.is_empty() {
        return Err(format!(
            "{role:?} needs NATS: pass --nats URL[,URL...] or set nats.servers"
        ));
    }
    Ok((config, source))
}

/// `herald check-config`: what `load_config` says, plus whether the TLS
/// certificate and key load, without binding or connecting anything.
fn check_config(check: CheckArgs) -> ExitCode {
    let role = match check.role {
        CheckedRole::Standalone => Role::Standalone,
        CheckedRole::Gateway => Role::Gateway,
        CheckedRole::Ingest => Role::Ingest,
    };
    let nats = if role == Role::Standalone {
        Vec::new()
    } else {
        check.cluster.nats
    };
    let (config, source) = match load_config(role, &check.cluster.common, &nats) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::from(2);
        }
    };
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        if let Err(e) = herald::check_tls(cert, key) {
            eprintln!("herald: {e:#}");
            return ExitCode::from(2);
        }
    }
    let apps: Vec<&str> = config.apps.iter().map(|a| a.id.as_str()).collect();
    println!(
        "config OK for herald {}: {} app(s) [{}] from {}",
        role.name(),
        apps.len(),
        apps.join(", "),
        match source {
            herald_config::AppSource::File => "the config file",
            herald_config::AppSource::PusherEnv => "PUSHER_APP_*",
            herald_config::AppSource::ReverbEnv => "REVERB_APP_*",
            herald_config::AppSource::Development =>
                "nowhere: the development app (never in production)",
        }
    );
    let shown =
        |addr: Option<SocketAddr>, default: &str| addr.map_or(default.into(), |a| a.to_string());
    println!(
        "  bind {}",
        shown(config.bind, herald::listeners::DEFAULT_BIND)
    );
    println!(
        "  metrics_bind {}",
        shown(config.metrics_bind, herald::listeners::DEFAULT_METRICS_BIND)
    );
    if let Some(tls) = config.tls_bind {
        println!("  tls_bind {tls} (certificate and key load)");
    }
    if role != Role::Standalone {
        println!("  nats {}", config.nats.servers.join(","));
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let (role, args, nats, node_id) = match Cli::parse().command {
        Command::Standalone(common) => (Role::Standalone, common, Vec::new(), None),
        Command::Gateway(c) => (Role::Gateway, c.common, c.nats, c.node_id),
        Command::Ingest(c) => (Role::Ingest, c.common, c.nats, c.node_id),
        Command::Webhooks(command) => return admin_client::command(command),
        Command::CheckConfig(check) => return check_config(check),
    };
    let format = match args.log_format {
        LogFormat::Text => herald_telemetry::LogFormat::Text,
        LogFormat::Json => herald_telemetry::LogFormat::Json,
    };
    let telemetry = herald_telemetry::init(format, &format!("herald-{}", role.name()));
    let (config, source) = match load_config(role, &args, &nats) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::from(2);
        }
    };
    herald::log_app_source(source);
    let node_id = node_id.unwrap_or_else(|| format!("{:08x}", rand::random::<u32>()));
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let outcome = runtime.block_on(async {
        let listeners = Listeners::bind(&config).await?;
        herald::run(role, config, &node_id, listeners, shutdown_signal()).await
    });
    telemetry.shutdown();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
