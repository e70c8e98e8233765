//! What a request handler may touch, and the replies every handler sends.
//!
//! Handlers get this borrowed view instead of the whole gateway: the
//! connection's app and socket, this app's routing (`AppHub`), the
//! cluster-wide channel state, the bus's retained history, metrics and
//! webhooks. Publishing on the bus is not in it; a handler that wants
//! something published returns it to the session.

use crate::hub::AppHub;
use crate::metrics::GatewayMetrics;
use crate::peer::Peer;
use crate::Gateway;
use herald_bus::Bus;
use herald_config::AppConfig;
use herald_protocol::{frame, message};
use herald_state::ChannelState;
use herald_webhooks::Webhooks;

pub(super) struct Context<'a> {
    pub app: &'a AppConfig,
    pub peer: &'a Peer,
    pub hub: &'a AppHub,
    pub state: &'a ChannelState,
    /// Read for history channels' retained events only.
    pub bus: &'a Bus,
    pub metrics: &'a GatewayMetrics,
    pub webhooks: &'a Webhooks,
}

impl<'a> Context<'a> {
    pub fn new(gateway: &'a Gateway, app: &'a AppConfig, peer: &'a Peer) -> Self {
        Self {
            app,
            peer,
            hub: gateway
                .hub
                .app(&app.id)
                .expect("every configured app has a hub"),
            state: &gateway.state,
            bus: &gateway.bus,
            metrics: &gateway.metrics,
            webhooks: &gateway.webhooks,
        }
    }

    pub fn send_text(&self, text: &str) {
        self.peer.send(frame::text(text));
    }

    /// Sends `pusher:error`; the socket stays open.
    pub fn send_error(&self, code: Option<u16>, message: &str) {
        self.send_text(&message::error(code, message));
    }

    /// Counts a request refused by a limit (`herald_limit_rejections_total`).
    pub fn count_limit(&self, limit: &str) {
        self.metrics
            .limit_rejections
            .with_label_values(&[&self.app.id, limit])
            .inc();
    }

    /// Counts a refused signature or sign-in (`herald_auth_failures_total`).
    pub fn count_auth_failure(&self, kind: &str) {
        self.metrics
            .auth_failures
            .with_label_values(&[&self.app.id, kind])
            .inc();
    }

    /// Adds this socket to a local routing entry and waits until the bus
    /// delivers that channel here.
    pub async fn join_local(&self, channel: &str) {
        self.hub.join_channel(channel, self.peer).await;
    }

    pub fn leave_local(&self, channel: &str) {
        self.hub.leave_channel(channel, self.peer.socket_id());
    }
}
