//! `POST /apps/{id}/events` and `POST /apps/{id}/batch_events`: triggering events.
//!
//! The whole request is validated before the first event is published, so a
//! refused request delivers nothing; a request's events are published as one
//! batch, so one the bus refuses (503) delivers nothing either.

use crate::error::HttpError;
use crate::Ingest;
use herald_bus::Envelope;
use herald_config::AppConfig;
use herald_protocol::api::{self, Publication};
use hyper::StatusCode;
use serde_json::{json, Map, Value};

impl Ingest {
    /// One event to one or more channels.
    pub(crate) async fn trigger(&self, app: &AppConfig, body: &[u8]) -> Result<Value, HttpError> {
        let req: api::TriggerRequest = parse_json(body)?;
        let (pubs, info) = api::validate_trigger(&req, &app.api_limits())?;
        self.publish_events(app, &pubs).await?;
        if !info.any() {
            return Ok(json!({}));
        }
        let channels: Map<String, Value> = pubs
            .iter()
            .map(|p| {
                (
                    p.channel.to_string(),
                    self.channel_info(app, &p.channel, info),
                )
            })
            .collect();
        Ok(json!({ "channels": channels }))
    }

    /// Several events, each to one channel.
    pub(crate) async fn trigger_batch(
        &self,
        app: &AppConfig,
        body: &[u8],
    ) -> Result<Value, HttpError> {
        let req: api::BatchRequest = parse_json(body)?;
        let events = api::validate_batch(&req, &app.api_limits())?;
        let pubs: Vec<Publication> = events.iter().map(|(p, _)| p.clone()).collect();
        self.publish_events(app, &pubs).await?;
        if !events.iter().any(|(_, info)| info.any()) {
            return Ok(json!({}));
        }
        let batch: Vec<Value> = events
            .iter()
            .map(|(p, info)| self.channel_info(app, &p.channel, *info))
            .collect();
        Ok(json!({ "batch": batch }))
    }

    /// Publishes the request's events as one batch (all or nothing); an
    /// event to a cache channel is stored as the channel's cache first.
    async fn publish_events(&self, app: &AppConfig, pubs: &[Publication]) -> Result<(), HttpError> {
        for p in pubs.iter().filter(|p| p.channel.is_cache()) {
            self.state
                .set_cache(&app.id, p.channel.as_str(), &p.event, &p.data)
                .await
                .map_err(|e| {
                    HttpError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("cache channel store unavailable: {e}"),
                    )
                })?;
        }
        let events = pubs
            .iter()
            .map(|p| {
                Envelope::new(&app.id, p.channel.as_str(), &p.event, p.data.clone())
                    .except(p.except_socket.clone())
            })
            .collect();
        self.publish(app, events).await
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, HttpError> {
    serde_json::from_slice(body)
        .map_err(|e| HttpError::bad_request(format!("invalid JSON body: {e}")))
}
