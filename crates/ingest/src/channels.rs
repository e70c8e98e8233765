//! `GET /apps/{id}/channels`, `GET /apps/{id}/channels/{name}` and
//! `GET /apps/{id}/channels/{name}/users`: channel queries.
//!
//! They are answered from the shared channel state, never by asking
//! gateways, so an ingest answers them alone.

use crate::error::HttpError;
use crate::request::QueryParams;
use crate::Ingest;
use herald_config::AppConfig;
use herald_protocol::api::Info;
use herald_protocol::ChannelName;
use serde_json::{json, Map, Value};

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

    /// The ids of the users in a presence channel.
    pub(crate) fn list_users(&self, app: &AppConfig, name: &str) -> Result<Value, HttpError> {
        let channel = parse_channel(name)?;
        if !channel.is_presence() {
            return Err(HttpError::bad_request(
                "users are only available for presence channels",
            ));
        }
        let users: Vec<Value> = self
            .state
            .users(&app.id, name)
            .into_iter()
            .map(|id| json!({ "id": id }))
            .collect();
        Ok(json!({ "users": users }))
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
}

fn parse_channel(name: &str) -> Result<ChannelName, HttpError> {
    ChannelName::parse(name)
        .map_err(|e| HttpError::bad_request(format!("invalid channel `{name}`: {e}")))
}
