//! This node's registry of sockets by app, channel and user, and the fan-out.
//!
//! The hub is the bus [`Sink`]: for each delivered event it builds the Pusher
//! JSON and the WebSocket frame once, then queues the same bytes on every
//! local subscriber except the excluded socket. Per-subscriber work is a
//! reference-count increment and a non-blocking queue push.

use crate::count_throttle::{CountThrottle, Offer};
use crate::crowd::Crowds;
use crate::metrics::GatewayMetrics;
use crate::peer::Peer;
use bytes::Bytes;
use futures::future::BoxFuture;
use herald_bus::{Bus, BusMessage, Envelope, Sink, ENVELOPE_VERSION};
use herald_config::AppConfig;
use herald_protocol::channel::WATCHLIST_PREFIX;
use herald_protocol::unix_millis;
use herald_protocol::{codes, frame, message, Cause, Disconnect};
use herald_state::{Listener, Origin, Transition};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use tokio::time::Instant;

type Sockets = HashMap<Arc<str>, Peer>;

/// One app's local sockets.
pub struct AppHub {
    pub config: Arc<AppConfig>,
    bus: Arc<Bus>,
    connections: AtomicUsize,
    /// Every open connection, for shutdown.
    peers: RwLock<Sockets>,
    /// Subscribers per channel (including internal `#` routing channels).
    channels: RwLock<HashMap<String, Sockets>>,
    /// Signed-in sockets per user id, for `terminate_connections`.
    users: RwLock<HashMap<String, Sockets>>,
    /// Watchers and pending member events of large presence channels.
    pub crowds: Crowds,
}

/// Adds `peer` under `key`; `on_insert` runs while the map is still locked.
fn insert<R>(
    map: &RwLock<HashMap<String, Sockets>>,
    key: &str,
    peer: &Peer,
    on_insert: impl FnOnce() -> R,
) -> R {
    let mut map = map.write();
    map.entry(key.to_owned())
        .or_default()
        .insert(peer.socket_id().clone(), peer.clone());
    on_insert()
}

/// Removes `socket_id` from `key`; `on_last` runs, still under the lock, if
/// it was the last socket there.
fn remove(
    map: &RwLock<HashMap<String, Sockets>>,
    key: &str,
    socket_id: &str,
    on_last: impl FnOnce(),
) {
    let mut map = map.write();
    let Some(sockets) = map.get_mut(key) else {
        return;
    };
    if sockets.remove(socket_id).is_some() && sockets.is_empty() {
        map.remove(key);
        on_last();
    }
}

impl AppHub {
    fn new(config: Arc<AppConfig>, bus: Arc<Bus>) -> Self {
        Self {
            config,
            bus,
            connections: AtomicUsize::new(0),
            peers: RwLock::default(),
            channels: RwLock::default(),
            users: RwLock::default(),
            crowds: Crowds::default(),
        }
    }

    /// Reserves a connection slot; false when the app is at its quota.
    pub fn try_connect(&self, peer: &Peer) -> bool {
        let max = self.config.max_connections;
        let before = self.connections.fetch_add(1, Ordering::SeqCst);
        if max > 0 && before >= max {
            self.connections.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        self.peers
            .write()
            .insert(peer.socket_id().clone(), peer.clone());
        true
    }

    pub fn disconnect(&self, socket_id: &str) {
        if self.peers.write().remove(socket_id).is_some() {
            self.connections.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Adds a socket to a channel and declares the node's bus interest. The
    /// interest changes under the same lock as the registry, so they can
    /// never disagree. The future resolves when the bus delivers the channel.
    pub fn join_channel(&self, channel: &str, peer: &Peer) -> BoxFuture<'static, ()> {
        insert(&self.channels, channel, peer, || {
            self.bus.set_interest(&self.config.id, channel, true)
        })
    }

    /// Removes a socket from a channel, dropping the bus interest with the last one.
    pub fn leave_channel(&self, channel: &str, socket_id: &str) {
        remove(&self.channels, channel, socket_id, || {
            drop(self.bus.set_interest(&self.config.id, channel, false))
        })
    }

    pub fn add_user(&self, user_id: &str, peer: &Peer) {
        insert(&self.users, user_id, peer, || ());
    }

    pub fn remove_user(&self, user_id: &str, socket_id: &str) {
        remove(&self.users, user_id, socket_id, || ());
    }

    /// Queues `frame` on every subscriber of `channel` but `except`; returns how many got it.
    fn fan_out(&self, channel: &str, except: Option<&str>, frame: &Bytes) -> usize {
        let channels = self.channels.read();
        let Some(sockets) = channels.get(channel) else {
            return 0;
        };
        sockets
            .iter()
            .filter(|(id, _)| Some(&***id) != except)
            .filter(|(_, peer)| peer.send(frame.clone()))
            .count()
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// All apps' local sockets; the gateway side of the bus.
pub struct Hub {
    apps: HashMap<String, AppHub>,
    metrics: Arc<GatewayMetrics>,
    /// Subscription counts to clients, at most one per channel per interval.
    counts: CountThrottle,
    /// This hub, for the held counts' delayed sends.
    me: Weak<Hub>,
}

impl Hub {
    pub fn new(apps: &[Arc<AppConfig>], bus: Arc<Bus>, metrics: Arc<GatewayMetrics>) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            apps: apps
                .iter()
                .map(|a| (a.id.clone(), AppHub::new(a.clone(), bus.clone())))
                .collect(),
            metrics,
            counts: CountThrottle::default(),
            me: me.clone(),
        })
    }

    /// Tells the channel's sockets its subscription count, throttled (see `count_throttle`).
    fn send_count(&self, app: &str, channel: &str, count: usize) {
        match self.counts.offer(app, channel, count, Instant::now()) {
            Offer::Now => self.deliver_count(app, channel, count),
            Offer::Folded => {}
            Offer::Later(at) => {
                let (hub, app, channel) = (self.me.clone(), app.to_owned(), channel.to_owned());
                tokio::spawn(async move {
                    tokio::time::sleep_until(at).await;
                    let Some(hub) = hub.upgrade() else { return };
                    if let Some(count) = hub.counts.due(&app, &channel, Instant::now()) {
                        hub.deliver_count(&app, &channel, count);
                    }
                });
            }
        }
    }

    fn deliver_count(&self, app: &str, channel: &str, count: usize) {
        let data = message::subscription_count_data(count);
        let event = "pusher_internal:subscription_count";
        self.deliver_event(&Envelope::new(app, channel, event, data));
    }

    /// One burst of every large presence channel: member events to the
    /// watchers, and the member counts that are due to every subscriber.
    pub fn burst_crowds(&self, member_count: impl Fn(&str, &str) -> usize) {
        let now = Instant::now();
        for (app, hub) in &self.apps {
            let burst = hub.crowds.burst(now);
            self.metrics.count_burst(app, &burst);
            for channel in burst.counts_due {
                let count = member_count(app, &channel);
                self.deliver_count(app, &channel, count);
            }
        }
    }

    pub fn app(&self, app_id: &str) -> Option<&AppHub> {
        self.apps.get(app_id)
    }

    /// Every open connection of every app.
    pub fn peers(&self) -> Vec<Peer> {
        self.apps
            .values()
            .flat_map(|app| app.peers.read().values().cloned().collect::<Vec<_>>())
            .collect()
    }

    pub fn connection_count(&self) -> usize {
        self.apps.values().map(AppHub::connection_count).sum()
    }

    fn deliver_event(&self, env: &Envelope) {
        let Some(app) = self.apps.get(&env.app) else {
            return;
        };
        // Internal watchlist routing channels are not shown to clients.
        let channel = (!env.channel.starts_with(WATCHLIST_PREFIX)).then_some(env.channel.as_str());
        // A traced trigger continues its trace here: one span per node's fan-out.
        let span = env.traceparent.as_deref().map(|parent| {
            let span = tracing::info_span!("fan_out", app = %env.app, channel = %env.channel, recipients = tracing::field::Empty);
            herald_telemetry::set_parent(&span, parent);
            span
        });
        let _entered = span.as_ref().map(tracing::Span::enter);
        let text = message::event_message_with_id(
            &env.event,
            channel,
            &env.data,
            env.user_id.as_deref(),
            env.id,
        );
        let frame = frame::text(&text);
        let delivered = app.fan_out(&env.channel, env.except_socket.as_deref(), &frame);
        if let Some(span) = &span {
            span.record("recipients", delivered);
        }
        if delivered > 0 {
            let kind = if env.event.starts_with("pusher_internal:") {
                "internal"
            } else if env.event.starts_with("client-") {
                "client_event"
            } else {
                "event"
            };
            self.metrics
                .messages_sent
                .with_label_values(&[&env.app, kind])
                .inc_by(delivered as u64);
            self.metrics
                .bytes_sent
                .with_label_values(&[&env.app])
                .inc_by((delivered * frame.len()) as u64);
            let age_ms = unix_millis().saturating_sub(env.published_at_ms);
            self.metrics
                .delivery_latency
                .with_label_values(&[&env.app])
                .observe(age_ms as f64 / 1000.0);
        }
    }
}

impl Listener for Hub {
    /// Cluster-wide state transitions, told to this node's sockets only:
    /// every node gets the same transitions, so every socket hears each once.
    fn on_transition(&self, transition: &Transition, _origin: Option<&Origin>) {
        // A large presence channel's member changes go to its crowd, whose
        // bursts tell the watchers.
        let member = match transition {
            Transition::MemberAdded {
                app,
                channel,
                user,
                info,
            } => Some((app, channel, user, Some(info.as_str()))),
            Transition::MemberRemoved { app, channel, user } => Some((app, channel, user, None)),
            _ => None,
        };
        if let Some((app, channel, user, info)) = member {
            if let Some(hub) = self.apps.get(app) {
                if hub.config.is_large_presence(channel) {
                    hub.crowds.member(channel, user, info);
                    return;
                }
            }
        }
        let (app, channel, event, data) = match transition {
            Transition::MemberAdded {
                app,
                channel,
                user,
                info,
            } => (
                app,
                channel.clone(),
                "pusher_internal:member_added",
                message::member_added_data(user, info),
            ),
            Transition::MemberRemoved { app, channel, user } => (
                app,
                channel.clone(),
                "pusher_internal:member_removed",
                message::member_removed_data(user),
            ),
            Transition::SubscriptionCount {
                app,
                channel,
                count,
                ..
            } => {
                let wanted = self
                    .apps
                    .get(app)
                    .is_some_and(|a| a.config.subscription_count);
                if wanted && !channel.starts_with("presence-") {
                    self.send_count(app, channel, *count);
                }
                return;
            }
            Transition::UserOnline { app, user } | Transition::UserOffline { app, user } => {
                let name = if matches!(transition, Transition::UserOnline { .. }) {
                    "online"
                } else {
                    "offline"
                };
                let data = message::watchlist_data(&[(name, std::slice::from_ref(user))]);
                (
                    app,
                    watchlist_channel(user),
                    "pusher_internal:watchlist_events",
                    data,
                )
            }
        };
        self.deliver_event(&Envelope::new(app, &channel, event, data));
    }
}

/// The internal routing channel on which `user_id`'s watchers listen.
pub fn watchlist_channel(user_id: &str) -> String {
    format!("{WATCHLIST_PREFIX}{user_id}")
}

impl Sink for Hub {
    fn deliver(&self, message: &BusMessage) {
        match message {
            BusMessage::Event(env) if env.version != ENVELOPE_VERSION => {
                tracing::warn!(
                    version = env.version,
                    "dropping a bus event of another envelope version"
                );
            }
            BusMessage::Event(env) => self.deliver_event(env),
            BusMessage::TerminateUser { app, user_id } => {
                let Some(app) = self.apps.get(app) else {
                    return;
                };
                for peer in app
                    .users
                    .read()
                    .get(user_id)
                    .into_iter()
                    .flat_map(|s| s.values())
                {
                    peer.close(Disconnect::new(
                        Cause::Terminated,
                        codes::UNAUTHORIZED,
                        "connections terminated by the server",
                    ));
                }
            }
            // The NATS bus resolves commits itself (herald_bus::batch).
            BusMessage::Commit { .. } => {}
        }
    }

    fn uncommitted_dropped(&self, events: usize) {
        self.metrics.uncommitted_dropped.inc_by(events as u64);
    }

    fn gap_detected(&self) {
        self.metrics.bus_gaps.inc();
    }

    fn recovered(&self, events: usize) {
        self.metrics.bus_recovered.inc_by(events as u64);
    }

    fn recovery_failed(&self) {
        self.metrics.bus_recovery_failures.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::Inbox;

    fn peer(id: &str, capacity: usize) -> (Peer, Inbox) {
        let counter = prometheus::IntCounter::new("t", "t").unwrap();
        Peer::new(id.into(), capacity, counter)
    }

    #[test]
    fn fan_out_shares_one_frame_and_skips_the_excluded_socket() {
        let app = Arc::new(AppConfig::new("1", "k", "s"));
        let hub = Hub::new(
            &[app],
            Arc::new(herald_bus::Bus::in_memory()),
            Arc::new(GatewayMetrics::register(&herald_metrics::Metrics::new())),
        );
        let a = hub.app("1").unwrap();
        let (p1, r1) = peer("1.1", 4);
        let (p2, r2) = peer("1.2", 4);
        drop(a.join_channel("c", &p1));
        drop(a.join_channel("c", &p2));
        hub.deliver(&BusMessage::Event(
            Envelope::new("1", "c", "e", r#""x""#.into()).except(Some("1.2".into())),
        ));
        hub.deliver(&BusMessage::Event(Envelope::new(
            "1",
            "c",
            "e2",
            r#""y""#.into(),
        )));
        let f1 = r1.try_recv().unwrap();
        assert_eq!(&f1[2..], br#"{"event":"e","channel":"c","data":"x"}"#);
        let g1 = r1.try_recv().unwrap();
        let g2 = r2.try_recv().unwrap();
        // The same allocation serves both sockets.
        assert_eq!(g1.as_ptr(), g2.as_ptr());
        assert!(r2.try_recv().is_none());
        a.leave_channel("c", "1.1");
        a.leave_channel("c", "1.2");
        hub.deliver(&BusMessage::Event(Envelope::new(
            "1",
            "c",
            "e3",
            r#""z""#.into(),
        )));
        assert!(r1.try_recv().is_none() && r2.try_recv().is_none());
    }

    #[test]
    fn connection_quota() {
        let mut cfg = AppConfig::new("1", "k", "s");
        cfg.max_connections = 1;
        let hub = Hub::new(
            &[Arc::new(cfg)],
            Arc::new(herald_bus::Bus::in_memory()),
            Arc::new(GatewayMetrics::register(&herald_metrics::Metrics::new())),
        );
        let a = hub.app("1").unwrap();
        let (p1, _r1) = peer("1.1", 1);
        let (p2, _r2) = peer("1.2", 1);
        assert!(a.try_connect(&p1));
        assert!(!a.try_connect(&p2));
        a.disconnect("1.1");
        assert!(a.try_connect(&p2));
        assert_eq!(hub.connection_count(), 1);
    }
}
