//! Wiring of webhooks per role.
//!
//! Every role with channel state reports transitions (so a crashed node is
//! covered by the others); the sender runs where the HTTP API runs
//! (standalone, ingest), which also serves the dead letters on its admin
//! port. Without any receiver configured nothing is started.

use crate::Role;
use herald_config::Config;
use herald_metrics::Metrics;
use herald_state::ChannelState;
use herald_webhooks::{DeadLetters, Queue, Sender, WebhookAdmin, WebhookMetrics, Webhooks};
use std::sync::Arc;
use std::time::Duration;

pub async fn start(
    role: Role,
    config: &Config,
    apps: &[Arc<herald_config::AppConfig>],
    js: Option<&async_nats::jetstream::Context>,
    state: &ChannelState,
    metrics: &Metrics,
    webhook_metrics: Arc<WebhookMetrics>,
) -> anyhow::Result<Arc<Webhooks>> {
    let delivery = config.webhook_delivery();
    if !herald_webhooks::configured(apps) {
        return Ok(Webhooks::new(
            apps,
            None,
            delivery.hold_back,
            webhook_metrics.clone(),
        ));
    }
    let sends = role.serves_api();
    let (queue, dead) = match js {
        None => {
            let dead = Arc::new(DeadLetters::in_memory());
            let sender =
                Sender::start(apps, &delivery, dead.clone(), webhook_metrics.clone(), None)?;
            (Arc::new(Queue::in_memory(sender)), dead)
        }
        Some(js) => {
            // NATS is up (the channel state just opened); the streams may still be new.
            while let Err(e) = herald_webhooks::ensure_streams(js, &config.nats).await {
                tracing::warn!(error = %e, "webhook streams unavailable; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let queue = Arc::new(Queue::nats(
                js.clone(),
                &config.nats,
                webhook_metrics.clone(),
            ));
            let dead = Arc::new(DeadLetters::nats(js.clone(), &config.nats));
            if sends {
                let ack_wait = Duration::from_secs(config.nats.webhook_ack_wait_secs);
                let keep_alive = (ack_wait / 3).max(Duration::from_millis(200));
                let sender = Sender::start(
                    apps,
                    &delivery,
                    dead.clone(),
                    webhook_metrics.clone(),
                    Some(keep_alive),
                )?;
                herald_webhooks::consume(js.clone(), config.nats.clone(), sender);
            }
            (queue, dead)
        }
    };
    if sends {
        metrics.set_admin_routes(Arc::new(WebhookAdmin {
            dead,
            queue: queue.clone(),
        }));
    }
    let webhooks = Webhooks::new(apps, Some(queue), delivery.hold_back, webhook_metrics);
    state.add_listener(webhooks.clone());
    let receivers: usize = apps.iter().map(|a| a.webhooks.len()).sum();
    tracing::info!(receivers, sender = sends, "webhooks enabled");
    Ok(webhooks)
}
