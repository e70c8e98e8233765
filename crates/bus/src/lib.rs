//! The bus: how events travel from the HTTP API (or a client) to every
//! gateway with subscribers for the channel.
//!
//! [`Bus`] is the one abstraction both roles talk to. Standalone uses
//! [`LocalBus`], which hands messages straight to the in-process gateway; the
//! cluster implementation carries the same [`BusMessage`], encoded once with
//! rmp-serde, over NATS subjects keyed by (app, channel). Gateways declare
//! which channels they have local subscribers for with
//! [`Bus::set_interest`], so a clustered bus only ever delivers a channel's
//! traffic to nodes that need it.

pub mod nats;
pub mod subject;

use futures::future::BoxFuture;
use herald_protocol::unix_millis;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock};

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
        }
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
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("undecodable bus message: {0}")]
    Decode(String),
}

/// Receives what the bus delivers to this node (the gateway's fan-out).
pub trait Sink: Send + Sync {
    fn deliver(&self, message: &BusMessage);
}

pub trait Bus: Send + Sync {
    /// Publishes to every node interested in the message's channel. Resolves
    /// once the bus has accepted it.
    fn publish(&self, message: BusMessage) -> BoxFuture<'static, Result<(), BusError>>;

    /// Declares whether this node has local subscribers for (app, channel).
    /// Idempotent. With `true`, the returned future resolves once the bus
    /// delivers the channel's messages to this node, so a subscriber
    /// acknowledged after it cannot miss an event published after that.
    fn set_interest(&self, app: &str, channel: &str, interested: bool) -> BoxFuture<'static, ()>;
}

/// The in-process bus of `herald standalone`: delivery is a direct call.
#[derive(Default)]
pub struct LocalBus {
    sink: OnceLock<Arc<dyn Sink>>,
}

impl LocalBus {
    /// Connects the receiving side; called once at startup.
    pub fn attach(&self, sink: Arc<dyn Sink>) {
        if self.sink.set(sink).is_err() {
            panic!("LocalBus::attach called twice");
        }
    }
}

impl Bus for LocalBus {
    fn publish(&self, message: BusMessage) -> BoxFuture<'static, Result<(), BusError>> {
        let result = match self.sink.get() {
            Some(sink) => {
                sink.deliver(&message);
                Ok(())
            }
            None => Err(BusError::Unavailable("no gateway attached".into())),
        };
        Box::pin(async move { result })
    }

    /// Every message reaches the single local gateway, which filters by its
    /// own subscriptions, so interest needs no bookkeeping here.
    fn set_interest(
        &self,
        _app: &str,
        _channel: &str,
        _interested: bool,
    ) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
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
        let bus = LocalBus::default();
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
