//! What the channel state reports to Prometheus. Every role has channel
//! state (in memory or replicated), so every role registers these families:
//!
//! - [`KvMetrics`]: the JetStream KV store's health and replication lag (a
//!   standalone process reports itself healthy and never fails a write);
//! - [`ChannelGauges`]: occupied channels and presence members per app, read
//!   from the state at scrape time. In cluster mode the state is the
//!   replicated view, so every node reports the cluster-wide figure.

use crate::ChannelState;
use herald_metrics::Metrics;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts};
use std::sync::Arc;

/// Gauges computed from the state at each scrape.
pub struct ChannelGauges {
    state: Arc<ChannelState>,
    occupied: IntGaugeVec,
    members: IntGaugeVec,
}

impl ChannelGauges {
    /// Registers the gauges of `state` into `metrics`.
    pub fn register(metrics: &Metrics, state: Arc<ChannelState>) {
        let gauge = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["app"]).expect("valid metric")
        };
        let gauges = Self {
            state,
            occupied: gauge(
                "herald_channels_occupied",
                "Channels with at least one subscriber (cluster-wide).",
            ),
            members: gauge(
                "herald_presence_members",
                "Presence members summed over presence channels (cluster-wide).",
            ),
        };
        metrics.register(Box::new(gauges));
    }
}

impl Collector for ChannelGauges {
    fn desc(&self) -> Vec<&Desc> {
        self.occupied
            .desc()
            .into_iter()
            .chain(self.members.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.occupied.reset();
        self.members.reset();
        for (app, occupied, members) in self.state.stats() {
            self.occupied
                .with_label_values(&[&app])
                .set(occupied as i64);
            self.members.with_label_values(&[&app]).set(members as i64);
        }
        self.occupied
            .collect()
            .into_iter()
            .chain(self.members.collect())
            .collect()
    }
}

/// What the KV store reports.
#[derive(Debug, Clone)]
pub struct KvMetrics {
    /// This node's writes to the cluster state (puts and removals).
    pub writes: prometheus::IntCounter,
    /// Cluster state (JetStream KV) writes that failed; they are re-asserted later.
    pub write_failures: prometheus::IntCounter,
    /// From a node's KV put to its own watch applying it: the replication lag.
    pub apply_seconds: prometheus::Histogram,
    /// Gateways found dead (heartbeat expired) whose entries were removed.
    pub nodes_removed: prometheus::IntCounter,
    /// 1 while this node's heartbeats reach the cluster state (JetStream KV).
    pub healthy: prometheus::IntGauge,
}

impl KvMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        Self {
            writes: metrics.counter(
                "herald_kv_writes_total",
                "Writes of this node to the cluster state (JetStream KV), coalesced per entry.",
            ),
            write_failures: metrics.counter(
                "herald_kv_write_failures_total",
                "Cluster state (JetStream KV) writes that failed.",
            ),
            apply_seconds: metrics.histogram(
                "herald_kv_apply_seconds",
                "Time from a KV write to this node's watch applying it.",
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                ],
            ),
            healthy: metrics.gauge(
                "herald_kv_healthy",
                "1 while this node's heartbeats reach the cluster state (JetStream KV).",
            ),
            nodes_removed: metrics.counter(
                "herald_nodes_removed_total",
                "Gateways found dead whose presence entries were removed.",
            ),
        }
    }
}
