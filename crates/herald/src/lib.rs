//! Herald as a library: [`run`] serves one role on listeners the caller
//! has bound, until the caller's shutdown future resolves, then drains.
//!
//! The `herald` binary is a thin shell around this (flags, config, signal
//! handling); tests start Herald in-process the same way, on port 0.
//!
//! - [`listeners`]: binding the client, TLS and admin ports.
//! - `backbone`: in-process or NATS bus and channel state (the one place
//!   where standalone and cluster part ways).
//! - `accept`: the accept loops, plain and TLS; `routing`: `/app` to the
//!   gateway, `/apps` to the HTTP API.
//! - `drain`: closing connections on shutdown.
//! - `webhooks`: which role queues and which sends webhooks.
//! - [`admin_client`]: the `herald webhooks` commands.

mod accept;
pub mod admin_client;
mod backbone;
mod drain;
pub mod listeners;
mod routing;
mod tls;
mod webhooks;

pub use listeners::Listeners;

use herald_config::Config;
use herald_gateway::{Gateway, Settings};
use herald_ingest::Ingest;
use herald_metrics::Metrics;
use herald_state::{ChannelGauges, KvMetrics, MemberCaps};
use herald_webhooks::WebhookMetrics;
use routing::Routes;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Which parts of Herald this process runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    /// Gateway and HTTP API in one process, in-process bus and state.
    Standalone,
    /// WebSocket connections, joined to the others by NATS.
    Gateway,
    /// The Pusher HTTP API, joined to the others by NATS.
    Ingest,
}

impl Role {
    pub fn serves_websockets(self) -> bool {
        self != Role::Ingest
    }

    pub fn serves_api(self) -> bool {
        self != Role::Gateway
    }

    /// Lower-case name, as in logs, the service name and NATS client names.
    pub fn name(self) -> &'static str {
        match self {
            Role::Standalone => "standalone",
            Role::Gateway => "gateway",
            Role::Ingest => "ingest",
        }
    }

    /// Seconds over which connections are closed on shutdown when
    /// `drain_window` is not set: a gateway sits behind a balancer with
    /// other gateways to move to; a standalone process has none.
    fn default_drain_window(self) -> u64 {
        if self == Role::Gateway {
            30
        } else {
            0
        }
    }
}

/// Loads a TLS certificate chain and key as the TLS listener would.
pub fn check_tls(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<()> {
    tls::Tls::new(cert, key).map(drop)
}

/// Says where the apps came from; loudly when Herald falls back to the
/// development app, which must never reach production.
pub fn log_app_source(source: herald_config::AppSource) {
    use herald_config::AppSource;
    match source {
        AppSource::Development => tracing::warn!(
            "no apps configured: serving the development app (id app-id, key app-key, secret app-secret); \
             set [[apps]] in the config file or PUSHER_APP_ID/PUSHER_APP_KEY/PUSHER_APP_SECRET before production"
        ),
        AppSource::PusherEnv => tracing::info!("app taken from PUSHER_APP_ID/PUSHER_APP_KEY/PUSHER_APP_SECRET"),
        AppSource::ReverbEnv => tracing::info!(
            "app taken from REVERB_APP_ID/REVERB_APP_KEY/REVERB_APP_SECRET (no PUSHER_APP_* set)"
        ),
        AppSource::File => {}
    }
}

/// Serves `role` on `listeners` until `shutdown` resolves, then turns
/// unready, stops accepting and drains the connections. `node_id` must be
/// unique among live cluster nodes.
pub async fn run(
    role: Role,
    config: Config,
    node_id: &str,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let apps: Vec<_> = config.apps.iter().cloned().map(Arc::new).collect();
    // Every node must admit the same members: the caps come from the shared config.
    let member_caps = MemberCaps::new(&apps);
    let metrics_bind = listeners.admin.local_addr()?;
    // Every role has channel state, a bus and webhook reporting, so their
    // families are registered here; the gateway and the HTTP API register
    // theirs when they are built.
    let metrics = Arc::new(Metrics::new());
    metrics.set_role(role.name());
    let kv_metrics = KvMetrics::register(&metrics);
    let webhook_metrics = Arc::new(WebhookMetrics::register(&metrics));
    for app in &apps {
        metrics.init_app(&app.id);
        webhook_metrics.init_app(&app.id);
    }
    // Metrics and health first, so an orchestrator sees "alive, not ready" while NATS comes up.
    tokio::spawn(herald_metrics::serve_admin(
        listeners.admin,
        metrics.clone(),
        Duration::from_secs(config.header_timeout),
    ));
    // The shutdown is honoured from here on, also while waiting for NATS.
    tokio::pin!(shutdown);
    let backbone = tokio::select! {
        backbone = backbone::open(role, &config, &metrics, kv_metrics, node_id, member_caps) => backbone?,
        _ = &mut shutdown => {
            tracing::info!("stopped before startup completed");
            return Ok(());
        }
    };
    ChannelGauges::register(&metrics, backbone.state.clone());
    let webhooks = webhooks::start(
        role,
        &config,
        &apps,
        backbone.js.as_ref(),
        &backbone.state,
        &metrics,
        webhook_metrics,
    )
    .await?;
    let routes = routes(role, &config, &apps, &backbone, &metrics, webhooks);
    let tls_accept = match (listeners.tls, &config.tls_cert, &config.tls_key) {
        (Some(listener), Some(cert), Some(key)) => {
            let tls = tls::Tls::new(cert, key)?;
            tokio::spawn(tls.clone().watch());
            tracing::info!(tls_bind = %listener.local_addr()?, "TLS listener (wss/https)");
            Some(tokio::spawn(accept::tls(
                listener,
                tls,
                routes.clone(),
                metrics.clone(),
            )))
        }
        _ => None,
    };
    metrics.set_ready(true);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        role = ?role,
        node = %node_id,
        bind = %listeners.client.local_addr()?,
        %metrics_bind,
        apps = apps.len(),
        "herald listening"
    );
    let gateway = routes.gateway.clone();
    accept::plain(listeners.client, routes, &metrics, shutdown).await;

    metrics.set_draining();
    if let Some(tls_accept) = tls_accept {
        tls_accept.abort();
    }
    if let Some(gateway) = &gateway {
        let window = config.drain_window.unwrap_or(role.default_drain_window());
        drain::drain(
            gateway,
            Duration::from_secs(window),
            Duration::from_secs(config.shutdown_timeout),
        )
        .await;
    }
    tracing::info!("herald stopped");
    Ok(())
}

/// Builds the gateway and/or the HTTP API of `role` on the backbone, and
/// connects the gateway's fan-out to the bus and the state's transitions.
fn routes(
    role: Role,
    config: &Config,
    apps: &[Arc<herald_config::AppConfig>],
    backbone: &backbone::Backbone,
    metrics: &Arc<Metrics>,
    webhooks: Arc<herald_webhooks::Webhooks>,
) -> Routes {
    let gateway = role.serves_websockets().then(|| {
        let gateway = Gateway::new(
            Settings::from_config(config),
            apps,
            backbone.state.clone(),
            backbone.bus.clone(),
            metrics,
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
            apps,
            backbone.state.clone(),
            backbone.bus.clone(),
            metrics,
            Duration::from_secs(config.body_timeout),
        ))
    });
    Routes {
        gateway,
        ingest,
        header_timeout: Duration::from_secs(config.header_timeout),
    }
}
