//! `POST /apps/{id}/users/{user_id}/terminate_connections`.
//!
//! The ingest does not know where a user's connections are, so it asks every
//! gateway over the bus to close them.

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
}
