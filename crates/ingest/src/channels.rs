//! `GET /apps/{id}/channels`, `GET /apps/{id}/channels/{name}`,
//! `GET /apps/{id}/channels/{name}/users` and (a Herald extension)
//! `GET /apps/{id}/channels/{name}/events`: channel queries.
//!
//! They are answered from the shared channel state, or the bus's retained
//! history, never by asking gateways, so an ingest answers them alone.

use crate::error::HttpError;
use crate::request::QueryParams;
use crate::Ingest;
use herald_config::AppConfig;
use herald_protocol::api::Info;
use herald_protocol::ChannelName;
use herald_state::Page;
use serde_json::{json, Map, Value};

/// Most user ids one page of `GET /channels/{name}/users?limit=` holds.
const MAX_USERS_PAGE: usize = 10_000;

impl Ingest {
    /// The occupied channels whose name starts with `filter_by_prefix`.
    pub(crate) fn list_channels(
        &self,
        app: &AppConfig,
        params: &QueryParams,
    ) -> Result<Value, HttpError> {
        let prefix = params.get("filter_by_prefix").unwrap_or("");
        let info = Info::parse(params.get("info"))?;
        if info.cache {
            return Err(HttpError::bad_request(
                "info=cache is only available for one channel",
            ));
        }
        if info.user_count && !prefix.starts_with("presence-") {
            return Err(HttpError::bad_request(
                "info=user_count requires filter_by_prefix=presence-",
            ));
        }
        let channels: Map<String, Value> = self
            .state
            .channels(&app.id, prefix)
            .into_iter()
            .map(|c| {
                let mut attrs = Map::new();
                if info.user_count {
                    attrs.insert("user_count".into(), c.user_count.into());
                }
                if info.subscription_count {
                    attrs.insert("subscription_count".into(), c.subscription_count.into());
                }
                (c.name, Value::Object(attrs))
            })
            .collect();
        Ok(json!({ "channels": channels }))
    }

    /// One channel: whether it is occupied, and the requested `info` attributes.
    pub(crate) fn show_channel(
        &self,
        app: &AppConfig,
        name: &str,
        params: &QueryParams,
    ) -> Result<Value, HttpError> {
        let channel = parse_channel(name)?;
        let info = Info::parse(params.get("info"))?;
        if info.user_count && !channel.is_presence() {
            return Err(HttpError::bad_request(
                "info=user_count is only available for presence channels",
            ));
        }
        if info.cache && !channel.is_cache() {
            return Err(HttpError::bad_request(
                "info=cache is only available for cache channels",
            ));
        }
        let summary = self.state.channel(&app.id, name);
        let mut body = self.channel_info(app, &channel, info);
        body["occupied"] = (summary.subscription_count > 0).into();
        Ok(body)
    }

    /// The ids of the users in a presence channel: all of them (as Pusher
    /// answers), or with `limit` (a Herald extension for large channels) a
    /// page of them in id order after the `after` id, with `next_after` to
    /// ask for the next page while there is one.
    pub(crate) fn list_users(
        &self,
        app: &AppConfig,
        name: &str,
        params: &QueryParams,
    ) -> Result<Value, HttpError> {
        let channel = parse_channel(name)?;
        if !channel.is_presence() {
            return Err(HttpError::bad_request(
                "users are only available for presence channels",
            ));
        }
        let ids = |ids: Vec<String>| -> Vec<Value> {
            ids.into_iter().map(|id| json!({ "id": id })).collect()
        };
        let Some(limit) = params.get("limit") else {
            return Ok(json!({ "users": ids(self.state.users(&app.id, name)) }));
        };
        let limit = limit
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_USERS_PAGE).contains(l))
            .ok_or_else(|| {
                HttpError::bad_request(format!("limit must be 1 to {MAX_USERS_PAGE}"))
            })?;
        let after = params.get("after");
        let (page, more) = self.state.users_page(&app.id, name, Page { after, limit });
        let mut body = json!({});
        if more {
            body["next_after"] = page.last().cloned().into();
        }
        body["users"] = ids(page).into();
        Ok(body)
    }

    /// The requested `info` attributes of one channel.
    pub(crate) fn channel_info(&self, app: &AppConfig, channel: &ChannelName, info: Info) -> Value {
        let summary = self.state.channel(&app.id, channel.as_str());
        let mut attrs = Map::new();
        if info.user_count && channel.is_presence() {
            attrs.insert("user_count".into(), summary.user_count.into());
        }
        if info.subscription_count {
            attrs.insert(
                "subscription_count".into(),
                summary.subscription_count.into(),
            );
        }
        if info.cache && channel.is_cache() {
            let cached = self.state.cache(&app.id, channel.as_str()).map(|c| {
                json!({ "event": c.event, "data": serde_json::from_str::<Value>(&c.data).unwrap_or(Value::Null) })
            });
            attrs.insert("cache".into(), cached.unwrap_or(Value::Null));
        }
        Value::Object(attrs)
    }

    /// A history channel's retained events, oldest first; with `after_id`,
    /// only those with a greater id (to fill a page without repeating).
    pub(crate) async fn channel_events(
        &self,
        app: &AppConfig,
        name: &str,
        params: &QueryParams,
    ) -> Result<Value, HttpError> {
        let channel = parse_channel(name)?;
        if !self.bus.keeps_history(&app.id, channel.as_str()) {
            return Err(HttpError::new(
                hyper::StatusCode::NOT_FOUND,
                format!(
                    "`{name}` is not a history channel (no [[apps.history]] prefix matches it)"
                ),
            ));
        }
        let after = params
            .get("after_id")
            .map(|a| {
                a.parse::<u64>().map_err(|_| {
                    HttpError::bad_request("after_id must be an event id (a whole number)")
                })
            })
            .transpose()?;
        let events = self
            .bus
            .retained(&app.id, channel.as_str(), after)
            .await
            .map_err(|e| HttpError::new(hyper::StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        let events: Vec<Value> = events
            .into_iter()
            .map(|e| {
                // `data` as triggered: usually a string holding JSON, as Pusher sends it.
                let data: Value = serde_json::from_str(&e.data).unwrap_or(Value::String(e.data));
                let mut event =
                    json!({ "id": e.id, "name": e.event, "channel": e.channel, "data": data });
                if let Some(user) = e.user_id {
                    event["user_id"] = user.into();
                }
                event
            })
            .collect();
        Ok(json!({ "events": events }))
    }
}

fn parse_channel(name: &str) -> Result<ChannelName, HttpError> {
    ChannelName::parse(name)
        .map_err(|e| HttpError::bad_request(format!("invalid channel `{name}`: {e}")))
}
