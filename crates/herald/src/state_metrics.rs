//! Gauges read from the channel state at scrape time: occupied channels and
//! presence members per app. In cluster mode the state is the replicated
//! view, so every node reports the cluster-wide figure.

use herald_state::ChannelState;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts};
use std::sync::Arc;

pub struct StateMetrics {
    state: Arc<ChannelState>,
    occupied: IntGaugeVec,
    members: IntGaugeVec,
}

impl StateMetrics {
    pub fn new(state: Arc<ChannelState>) -> Self {
        let gauge = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["app"]).expect("valid metric")
        };
        Self {
            state,
            occupied: gauge(
                "herald_channels_occupied",
                "Channels with at least one subscriber (cluster-wide).",
            ),
            members: gauge(
                "herald_presence_members",
                "Presence members summed over presence channels (cluster-wide).",
            ),
        }
    }
}

impl Collector for StateMetrics {
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
