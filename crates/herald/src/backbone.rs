//! The bus and channel state a role works with: in-process for
//! `herald standalone`, NATS and JetStream KV for the cluster roles. This is
//! the one place where standalone and cluster part ways.

use crate::Role;
use herald_bus::history::HistoryRules;
use herald_bus::nats::NatsEvent;
use herald_bus::stream::StreamSettings;
use herald_bus::Bus;
use herald_config::Config;
use herald_metrics::Metrics;
use herald_state::kv::KvSettings;
use herald_state::{ChannelState, KvMetrics, MemberCaps};
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
    member_caps: MemberCaps,
) -> anyhow::Result<Backbone> {
    if role == Role::Standalone {
        metrics.set_bus_connected(true);
        // In-process state has no store to lose touch with.
        kv_metrics.healthy.set(1);
        return Ok(Backbone {
            state: Arc::new(ChannelState::in_memory(member_caps)),
            bus: Arc::new(Bus::in_memory().retaining(HistoryRules::of(&config.apps))),
            js: None,
        });
    }
    let n = &config.nats;
    let name = format!("herald-{}-{node_id}", role.name());
    let watcher = metrics.clone();
    // Each (re)connect makes the bus's subscriptions catch up on what they
    // may have missed.
    let (connected, connections) = tokio::sync::watch::channel(0u64);
    let client = herald_bus::nats::connect(n, &name, move |event| match event {
        NatsEvent::Up => {
            watcher.set_bus_connected(true);
            connected.send_modify(|count| *count += 1);
        }
        NatsEvent::Down => watcher.set_bus_connected(false),
        NatsEvent::SlowConsumer => watcher.nats_slow_consumers.inc(),
    })
    .await?;
    let history = HistoryRules::of(&config.apps);
    let stream = StreamSettings {
        name: n.event_stream.clone(),
        retention: Duration::from_secs(n.event_retention_secs),
        max_age: Duration::from_secs(n.event_retention_secs.max(history.longest_seconds())),
        replicas: n.kv_replicas,
    };
    let kv = KvSettings {
        state_bucket: n.state_bucket.clone(),
        cache_bucket: n.cache_bucket.clone(),
        replicas: n.kv_replicas,
        node_ttl: Duration::from_secs(n.node_ttl),
        metrics: kv_metrics,
    };
    // The server's version is known once connected: give the first
    // connection its timeout before judging, so that an old server is
    // named at once rather than after a failed attempt.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while client.server_info().version.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut told_too_old = false;
    let state = loop {
        let version = client.server_info().version;
        if !version.is_empty() && !supported(&version) {
            // Stays unready, and says why once, until NATS is upgraded.
            if !told_too_old {
                tracing::error!(
                    server_version = %version,
                    "NATS server {version} is too old: Herald needs nats-server {}.{} or later \
                     (JetStream per-message TTLs for the cluster state); upgrade NATS. \
                     This node stays not ready until then",
                    MIN_NATS.0,
                    MIN_NATS.1
                );
                told_too_old = true;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let opened = async {
            let js = async_nats::jetstream::new(client.clone());
            herald_bus::stream::ensure(&js, &n.subject_prefix, &stream).await?;
            Ok::<_, anyhow::Error>(
                ChannelState::replicated(client.clone(), node_id, &kv, member_caps.clone()).await?,
            )
        };
        match opened.await {
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
        bus: Arc::new(
            Bus::nats(client, &n.subject_prefix, &stream, connections).retaining(history),
        ),
        js: Some(js),
    })
}

/// The oldest NATS server with what the cluster state needs: per-message
/// TTLs in JetStream (heartbeats and delete markers expire on their own).
/// Against an older one a node names the version once at ERROR and stays
/// unready; it starts when the client reconnects to an upgraded server.
const MIN_NATS: (u64, u64) = (2, 11);

/// Whether a NATS server version (`2.10.26`, `2.11.0-RC.1`) is at least [`MIN_NATS`].
fn supported(version: &str) -> bool {
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= MIN_NATS
}

#[cfg(test)]
mod tests {
    use super::supported;

    #[test]
    fn nats_2_11_and_later_are_supported() {
        for old in ["2.10.26", "2.9.0", "1.4.1", "garbage"] {
            assert!(!supported(old), "{old}");
        }
        for new in ["2.11.0", "2.11.0-RC.1", "2.12.8", "2.15.1", "3.0.0"] {
            assert!(supported(new), "{new}");
        }
    }
}
