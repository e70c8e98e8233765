//! Pusher webhooks: channel and member transitions, client events and cache
//! misses, POSTed signed and in batches to each app's receivers, retried,
//! and fired once across the cluster.
//!
//! Why each event fires once:
//! - Every node (gateways and ingests) folds the same replicated stream of
//!   channel state, so every node sees every transition, also those a dead
//!   node's removal causes. Each node queues it under an id made of the
//!   stream position that caused it ([`Origin::id`]): the same on every
//!   node, so JetStream's duplicate window keeps one copy, and a node that
//!   crashes is covered by the others.
//! - `channel_vacated` and `member_removed` are held back (Pusher: 3 s) on
//!   every node and dropped together with their re-add if the channel or
//!   user comes back meanwhile.
//! - The queue is a JetStream work-queue stream. The senders (the ingest
//!   processes) share one durable consumer and acknowledge an event only
//!   after its receiver answered 2XX, so events held by a sender that died
//!   go to another sender after the ack wait. Delivery to a receiver is at
//!   least once: a sender that dies between the 2XX and its acknowledgement
//!   sends that batch again.
//!   Every event a sender holds is reported in progress, so none waiting
//!   behind a slow receiver is handed out twice.
//! - Standalone keeps the queue in memory: pending webhooks do not survive
//!   a restart of the process, and beyond `webhook_max_pending` they are
//!   dropped (and counted).
//!
//! Modules: `queued` (an event on its way, the type the others share),
//! `queue` (where events wait: memory or JetStream), `sender` (batching,
//! signing, POSTing, retrying), `backlog` (what a receiver's task holds,
//! kept alive and deduplicated), `dead` (dead letters), `admin` (the admin
//! endpoints that list and replay them), `error`. Dependencies run one
//! way: admin → queue → sender → backlog, dead → queued.

mod admin;
mod backlog;
mod dead;
mod error;
mod metrics;
mod queue;
mod queued;
mod sender;

pub use admin::WebhookAdmin;
pub use dead::{DeadLetter, DeadLetters};
pub use error::WebhookError;
pub use metrics::WebhookMetrics;
pub use queue::{consume, ensure_streams, Queue};
pub use queued::Queued;
pub use sender::Sender;

use herald_config::AppConfig;
use herald_protocol::unix_millis;
use herald_protocol::webhook::{WebhookEvent, WebhookKind};
use herald_state::{Listener, Origin, Transition};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// (app, channel, user): what a held-back event is about; no user for the channel itself.
type HeldKey = (String, String, Option<String>);

/// Turns what happens into queued webhook events: the transitions of the
/// channel state (as a [`Listener`]) and the gateway's client events and
/// cache misses.
pub struct Webhooks {
    inner: Arc<Inner>,
}

struct Inner {
    apps: HashMap<String, Arc<AppConfig>>,
    /// None when no app has a receiver: nothing is ever queued.
    queue: Option<Arc<Queue>>,
    hold_back: Duration,
    /// Held-back events by subject, with the token of the hold.
    held: Mutex<HashMap<HeldKey, u64>>,
    next_hold: AtomicU64,
    metrics: Arc<WebhookMetrics>,
}

/// Whether any app has a webhook receiver.
pub fn configured(apps: &[Arc<AppConfig>]) -> bool {
    apps.iter().any(|a| !a.webhooks.is_empty())
}

impl Webhooks {
    pub fn new(
        apps: &[Arc<AppConfig>],
        queue: Option<Arc<Queue>>,
        hold_back: Duration,
        metrics: Arc<WebhookMetrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            inner: Arc::new(Inner {
                apps: apps.iter().map(|a| (a.id.clone(), a.clone())).collect(),
                queue,
                hold_back,
                held: Mutex::default(),
                next_hold: AtomicU64::new(1),
                metrics,
            }),
        })
    }

    /// Whether some receiver of `app` wants events of `kind` (cheap; check
    /// before building an event on a hot path).
    pub fn wants(&self, app: &str, kind: WebhookKind) -> bool {
        self.inner.queue.is_some()
            && self
                .inner
                .apps
                .get(app)
                .is_some_and(|a| a.webhooks.iter().any(|h| h.wants(kind)))
    }

    /// Queues an event that only one node sees (client event, cache miss).
    pub fn emit(&self, app: &str, event: WebhookEvent) {
        self.inner.emit(app, event, None);
    }
}

impl Inner {
    /// Queues `event` for every receiver of `app` that wants it; `id` (the
    /// same on every node that emits it) deduplicates in cluster mode.
    fn emit(&self, app: &str, event: WebhookEvent, id: Option<&str>) {
        let (Some(queue), Some(config)) = (&self.queue, self.apps.get(app)) else {
            return;
        };
        let queued_ms = unix_millis();
        for (target, hook) in config.webhooks.iter().enumerate() {
            if !hook.wants(event.name) {
                continue;
            }
            let queued = Queued {
                app_id: app.to_owned(),
                target,
                queued_ms,
                event: event.clone(),
            };
            queue.push(queued, id.map(|id| format!("{id}:{target}")));
        }
    }

    /// An arrival (occupied, member added): cancels a held-back departure of
    /// the same channel or user (and is then dropped itself), else is queued.
    fn arrive(&self, key: HeldKey, event: WebhookEvent, id: Option<String>) {
        if self.held.lock().remove(&key).is_some() {
            self.metrics.suppressed.with_label_values(&[&key.0]).inc();
            return;
        }
        self.emit(&key.0, event, id.as_deref());
    }

    /// A departure (vacated, member removed): queued after the hold-back
    /// unless an arrival cancelled it.
    fn hold(self: &Arc<Self>, key: HeldKey, event: WebhookEvent, id: Option<String>) {
        let token = self.next_hold.fetch_add(1, Ordering::Relaxed);
        self.held.lock().insert(key.clone(), token);
        let inner = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(inner.hold_back).await;
            let still_held = {
                let mut held = inner.held.lock();
                let ours = held.get(&key) == Some(&token);
                if ours {
                    held.remove(&key);
                }
                ours
            };
            if still_held {
                inner.emit(&key.0, event, id.as_deref());
            }
        });
    }
}

impl Listener for Webhooks {
    fn on_transition(&self, transition: &Transition, origin: Option<&Origin>) {
        let inner = &self.inner;
        if inner.queue.is_none() {
            return;
        }
        let id = |kind: WebhookKind| origin.map(|o| format!("{}:{}", kind.name(), o.id()));
        let key = |app: &str, channel: &str, user: Option<&str>| {
            (app.to_owned(), channel.to_owned(), user.map(str::to_owned))
        };
        match transition {
            Transition::MemberAdded {
                app, channel, user, ..
            } => inner.arrive(
                key(app, channel, Some(user)),
                WebhookEvent::new(WebhookKind::MemberAdded, channel, Some(user)),
                id(WebhookKind::MemberAdded),
            ),
            Transition::MemberRemoved { app, channel, user } => inner.hold(
                key(app, channel, Some(user)),
                WebhookEvent::new(WebhookKind::MemberRemoved, channel, Some(user)),
                id(WebhookKind::MemberRemoved),
            ),
            Transition::SubscriptionCount {
                app,
                channel,
                previous,
                count,
            } => {
                if *previous == 0 {
                    inner.arrive(
                        key(app, channel, None),
                        WebhookEvent::new(WebhookKind::ChannelOccupied, channel, None),
                        id(WebhookKind::ChannelOccupied),
                    );
                }
                // Presence channels report members instead, as on Pusher.
                if !channel.starts_with("presence-") {
                    let event = WebhookEvent {
                        subscription_count: Some(*count),
                        ..WebhookEvent::new(WebhookKind::SubscriptionCount, channel, None)
                    };
                    let id = id(WebhookKind::SubscriptionCount);
                    inner.emit(app, event, id.as_deref());
                }
                if *count == 0 {
                    inner.hold(
                        key(app, channel, None),
                        WebhookEvent::new(WebhookKind::ChannelVacated, channel, None),
                        id(WebhookKind::ChannelVacated),
                    );
                }
            }
            // Debounced like members: an offline followed within the
            // hold-back by an online (a page reload) sends neither.
            Transition::UserOnline { app, user } => inner.arrive(
                key(app, "", Some(user)),
                WebhookEvent::new(WebhookKind::UserOnline, "", Some(user)),
                id(WebhookKind::UserOnline),
            ),
            Transition::UserOffline { app, user } => inner.hold(
                key(app, "", Some(user)),
                WebhookEvent::new(WebhookKind::UserOffline, "", Some(user)),
                id(WebhookKind::UserOffline),
            ),
        }
    }
}
