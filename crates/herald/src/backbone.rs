//! The bus and channel state a role works with: in-process for
//! `herald standalone`, NATS and JetStream KV for the cluster roles. This is
//! the one place where standalone and cluster part ways.

use crate::Role;
use herald_bus::Bus;
use herald_config::Config;
use herald_metrics::Metrics;
use herald_state::kv::KvSettings;
use herald_state::{ChannelState, KvMetrics};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub struct Backbone {
    pub state: Arc<ChannelState>,
    pub bus: Arc<Bus>,
    /// Cluster mode's JetStream (webhook queue).
    pub js: Option<async_nats::jetstream::Context>,
}

/// Opens the backbone of `role`. In cluster mode NATS may not be up yet
/// (pods start in any order): this keeps trying, and the caller stays
/// unready meanwhile.
pub async fn open(
    role: Role,
    config: &Config,
    metrics: &Arc<Metrics>,
    kv_metrics: KvMetrics,
    node_id: &str,
) -> anyhow::Result<Backbone> {
    // Every node must admit the same members: the caps come from the shared config.
    let member_caps: HashMap<String, usize> = config
        .apps
        .iter()
        .map(|app| (app.id.clone(), app.max_presence_members))
        .collect();
    if role == Role::Standalone {
        metrics.set_bus_connected(true);
        // In-process state has no store to lose touch with.
        kv_metrics.healthy.set(1);
        return Ok(Backbone {
            state: Arc::new(ChannelState::in_memory(member_caps)),
            bus: Arc::new(Bus::in_memory()),
            js: None,
        });
    }
    let n = &config.nats;
    let name = format!("herald-{}-{node_id}", role.name());
    let watcher = metrics.clone();
    let client =
        herald_bus::nats::connect(n, &name, move |up| watcher.set_bus_connected(up)).await?;
    let kv = KvSettings {
        state_bucket: n.state_bucket.clone(),
        cache_bucket: n.cache_bucket.clone(),
        replicas: n.kv_replicas,
        node_ttl: Duration::from_secs(n.node_ttl),
        metrics: kv_metrics,
    };
    let state = loop {
        match ChannelState::replicated(client.clone(), node_id, &kv, member_caps.clone()).await {
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
