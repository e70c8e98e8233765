//! `POST /apps/{id}/users/{user_id}/terminate_connections` and
//! `GET /apps/{id}/users/{user_id}`.
//!
//! The ingest does not know where a user's connections are, so it asks every
//! gateway over the bus to close them. Whether a user is online it answers
//! from the replicated channel state, like the channel queries.

use crate::error::HttpError;
use crate::Ingest;
use herald_bus::BusMessage;
use herald_config::AppConfig;
use serde_json::{json, Value};

impl Ingest {
    /// Closes every connection of `user_id` in `app`.
    pub(crate) async fn terminate_connections(
        &self,
        app: &AppConfig,
        user_id: String,
    ) -> Result<Value, HttpError> {
        let message = BusMessage::TerminateUser {
            app: app.id.clone(),
            user_id,
        };
        self.publish_control(app, message).await?;
        Ok(json!({}))
    }

    /// Whether `user_id` is online anywhere in the cluster (a Herald
    /// extension): signed in on some connection, or a member of a presence
    /// channel, and which ones.
    pub(crate) fn user_status(&self, app: &AppConfig, user_id: &str) -> Value {
        let status = self.state.user_status(&app.id, user_id);
        json!({
            "id": user_id,
            "online": status.online(),
            "signed_in": status.signed_in,
            "presence_channels": status.presence_channels,
        })
    }
}
