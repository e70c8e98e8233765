//! The bus: how events travel from the HTTP API (or a client) to every
//! gateway with subscribers for the channel.
//!
//! [`Bus`] is the one type both roles talk to. Standalone delivers through
//! an in-process call to the gateway; the cluster carries the same
//! [`BusMessage`], encoded once with rmp-serde, over NATS subjects keyed by
//! (app, channel). Gateways declare which channels they have local
//! subscribers for with [`Bus::set_interest`], so a clustered bus only ever
//! delivers a channel's traffic to nodes that need it. Which of the two a
//! process uses is a private enum chosen once at startup (see "Standalone
//! or cluster" in docs/architecture.md).

mod batch;
mod follow;
pub mod history;
mod local;
pub mod nats;
pub mod stream;
pub mod subject;

use futures::future::BoxFuture;
use herald_protocol::unix_millis;
use history::{HistoryRules, Retained};
use local::LocalBus;
use nats::NatsBus;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
/// Bumped when [`Envelope`] changes incompatibly; receivers drop other versions.
pub const ENVELOPE_VERSION: u8 = 1;

/// One event for one channel, as it travels between roles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u8,
    pub app: String,
    pub channel: String,
    pub event: String,
    /// The `data` field as raw JSON text, relayed untouched.
    pub data: String,
    /// Socket that must not receive the event (`socket_id` on triggers, the sender of a client event).
    pub except_socket: Option<String>,
    /// The sender's user id on presence client events.
    pub user_id: Option<String>,
    /// When the event entered Herald, for end-to-end latency.
    pub published_at_ms: u64,
    /// W3C `traceparent` of the publishing span.
    pub traceparent: Option<String>,
    /// Set on each event of a request that publishes several (a
    /// multi-channel trigger, a batch): the receiving node holds it until
    /// [`BusMessage::Commit`] of the same batch (see `batch.rs`).
    #[serde(default)]
    pub batch: Option<u64>,
    /// Unix ms after which the publisher gives up on the request and
    /// answers 503: a node drops the event if it arrives later (a client
    /// that re-sends its buffer after reconnecting must not deliver a
    /// refused request; see `batch.rs`, "Deadlines").
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// On a history channel, the event's id (set where it is received:
    /// the event stream's sequence, or standalone's counter), sent to
    /// clients so that they can tell an event shown again from a new one.
    #[serde(default)]
    pub id: Option<u64>,
}

impl Envelope {
    pub fn new(app: &str, channel: &str, event: &str, data: String) -> Self {
        Self {
            version: ENVELOPE_VERSION,
            app: app.into(),
            channel: channel.into(),
            event: event.into(),
            data,
            except_socket: None,
            user_id: None,
            published_at_ms: unix_millis(),
            traceparent: None,
            batch: None,
            deadline_ms: None,
            id: None,
        }
    }

    /// A `client-` event sent by a socket (never kept in history).
    pub fn is_client_event(&self) -> bool {
        self.event.starts_with("client-")
    }

    pub fn except(mut self, socket_id: Option<String>) -> Self {
        self.except_socket = socket_id;
        self
    }

    pub fn from_user(mut self, user_id: Option<String>) -> Self {
        self.user_id = user_id;
        self
    }
}

/// Everything the bus carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BusMessage {
    Event(Envelope),
    /// Close every connection of a user (`terminate_connections`).
    TerminateUser {
        app: String,
        user_id: String,
    },
    /// Every event of `batch` has been published: deliver them. Handled by
    /// the NATS bus itself; a sink never sees one.
    Commit {
        app: String,
        batch: u64,
        /// As [`Envelope::deadline_ms`]: a late commit commits nothing.
        #[serde(default)]
        deadline_ms: Option<u64>,
    },
}

impl BusMessage {
    /// The wire form: MessagePack with named fields, so fields can be added compatibly.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("bus messages always serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, BusError> {
        rmp_serde::from_slice(bytes).map_err(|e| BusError::Decode(e.to_string()))
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// NATS refused or lost the connection or the message.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("bus unavailable: NATS is not connected")]
    NotConnected,
    #[error("bus unavailable: NATS did not acknowledge the publish in time")]
    PublishTimeout,
    /// The messages were handed to NATS, which then failed before
    /// confirming them: the server may have delivered them before it did.
    /// A request's events went to all of their channels or to none.
    #[error(
        "outcome unknown: NATS failed before confirming the events ({0}); they were delivered to all of their channels or to none, and a retry may deliver them twice"
    )]
    Unconfirmed(String),
    /// Standalone, before the gateway attached.
    #[error("bus unavailable: no gateway attached")]
    NotAttached,
    #[error("undecodable bus message: {0}")]
    Decode(String),
}

/// Receives what the bus delivers to this node (the gateway's fan-out).
pub trait Sink: Send + Sync {
    fn deliver(&self, message: &BusMessage);

    /// The bus dropped `events` events whose request was answered 503:
    /// parts whose commit never came, or events past their deadline.
    fn uncommitted_dropped(&self, events: usize) {
        let _ = events;
    }

    /// A gap was found in a subscribed subject's messages (cluster).
    fn gap_detected(&self) {}

    /// `events` missed messages were read back from the event stream and
    /// delivered.
    fn recovered(&self, events: usize) {
        let _ = events;
    }

    /// Missed messages could not be read back: sockets may have missed them.
    fn recovery_failed(&self) {}
}

/// The bus of this process: in-process (standalone) or NATS (cluster).
pub struct Bus(Backend);

/// Herald has exactly these two backends, so a closed enum: static
/// dispatch, no boxed future per publish, and both side by side here.
enum Backend {
    Memory(LocalBus),
    Nats(Box<NatsBus>),
}

impl Bus {
    /// The in-process bus of `herald standalone`: delivery is a direct call.
    pub fn in_memory() -> Self {
        Self(Backend::Memory(LocalBus::default()))
    }

    /// The cluster bus over NATS; `prefix` starts every subject, `stream`
    /// is the event stream ([`stream::ensure`] creates it) and
    /// `connections` counts the client's (re)connects.
    pub fn nats(
        client: async_nats::Client,
        prefix: &str,
        stream: &stream::StreamSettings,
        connections: tokio::sync::watch::Receiver<u64>,
    ) -> Self {
        Self(Backend::Nats(Box::new(NatsBus::new(
            client,
            prefix,
            stream,
            connections,
        ))))
    }

    /// Keeps the last events of the channels `rules` name (history
    /// channels): in memory standalone, in the event stream in a cluster.
    pub fn retaining(mut self, rules: HistoryRules) -> Self {
        match &mut self.0 {
            Backend::Memory(bus) => bus.history = rules,
            Backend::Nats(bus) => bus.history = rules,
        }
        self
    }

    /// Whether `channel` of `app` is a history channel.
    pub fn keeps_history(&self, app: &str, channel: &str) -> bool {
        let rules = match &self.0 {
            Backend::Memory(bus) => &bus.history,
            Backend::Nats(bus) => &bus.history,
        };
        rules.rule(app, channel).is_some()
    }

    /// The retained events of a history channel, oldest first; only those
    /// with an id above `after`, if given. Empty for other channels.
    pub async fn retained(
        &self,
        app: &str,
        channel: &str,
        after: Option<u64>,
    ) -> Result<Vec<Retained>, BusError> {
        match &self.0 {
            Backend::Memory(bus) => Ok(bus.retained(app, channel, after)),
            Backend::Nats(bus) => bus.retained(app, channel, after).await,
        }
    }

    /// Connects the receiving side (the gateway's fan-out); called once at startup.
    pub fn attach(&self, sink: Arc<dyn Sink>) {
        match &self.0 {
            Backend::Memory(bus) => bus.attach(sink),
            Backend::Nats(bus) => bus.attach(sink),
        }
    }

    /// Receives the control messages of `apps` (gateway role). The
    /// in-process bus delivers everything to its one gateway already.
    pub fn listen_control(&self, apps: &[String]) {
        if let Backend::Nats(bus) = &self.0 {
            bus.listen_control(apps);
        }
    }

    /// Publishes to every node interested in the message's channel. Resolves
    /// once the bus has accepted it.
    pub async fn publish(&self, message: BusMessage) -> Result<(), BusError> {
        match &self.0 {
            Backend::Memory(bus) => bus.publish(&message),
            Backend::Nats(bus) => bus.publish(&message).await,
        }
    }

    /// Publishes the events of one request, all or nothing: every node
    /// delivers all of them (the bus accepted the request) or none (an
    /// error). In-process there is nothing to fail between two events.
    pub async fn publish_all(&self, events: Vec<Envelope>) -> Result<(), BusError> {
        match &self.0 {
            Backend::Memory(bus) => events
                .into_iter()
                .try_for_each(|e| bus.publish(&BusMessage::Event(e))),
            Backend::Nats(bus) => bus.publish_all(events).await,
        }
    }

    /// Declares whether this node has local subscribers for (app, channel).
    /// Idempotent, and done when this returns: the returned future only
    /// waits, so dropping it is fine (and boxed, not `async fn`, for that
    /// reason; it is once per channel a node joins, not per message). With
    /// `true`, it resolves once the bus delivers the channel's messages to
    /// this node, so a subscriber acknowledged after it cannot miss an event
    /// published after that.
    pub fn set_interest(
        &self,
        app: &str,
        channel: &str,
        interested: bool,
    ) -> BoxFuture<'static, ()> {
        match &self.0 {
            // Every message reaches the single local gateway, which filters
            // by its own subscriptions, so interest needs no bookkeeping.
            Backend::Memory(_) => Box::pin(std::future::ready(())),
            Backend::Nats(bus) => bus.set_interest(app, channel, interested),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    #[test]
    fn envelope_round_trips_through_the_wire_form() {
        let msg = BusMessage::Event(
            Envelope::new("1", "presence-a.b*>", "ev", r#""{}""#.into())
                .except(Some("1.2".into()))
                .from_user(Some("u".into())),
        );
        assert_eq!(BusMessage::decode(&msg.encode()).unwrap(), msg);
        assert!(BusMessage::decode(b"\xc1garbage").is_err());
    }

    proptest::proptest! {
        /// Garbage on a bus subject is refused, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = BusMessage::decode(&bytes);
        }
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<BusMessage>>);
    impl Sink for Recorder {
        fn deliver(&self, message: &BusMessage) {
            self.0.lock().push(message.clone());
        }
    }

    #[test]
    fn local_bus_delivers_to_the_attached_sink() {
        let bus = Bus::in_memory();
        let msg = BusMessage::TerminateUser {
            app: "1".into(),
            user_id: "u".into(),
        };
        assert!(futures::executor::block_on(bus.publish(msg.clone())).is_err());
        let rec = Arc::new(Recorder::default());
        bus.attach(rec.clone());
        futures::executor::block_on(bus.publish(msg.clone())).unwrap();
        assert_eq!(rec.0.lock().as_slice(), &[msg]);
    }
}
