//! Herald's configuration: the TOML file, the Laravel-style `PUSHER_APP_*`
//! variables, and validation with errors that name the offending key.
//!
//! Layering is defaults < file < environment < flags. This crate owns the
//! first two layers and the app list; the binary applies `HERALD_*` variables
//! and flags (one `clap` definition serves both) on top.

use herald_protocol::api::ApiLimits;
use herald_protocol::webhook::WebhookKind;
use serde::Deserialize;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the WebSocket and HTTP API listener (default 0.0.0.0:6001).
    pub bind: Option<SocketAddr>,
    /// Address of /metrics, /healthz, /readyz (default 0.0.0.0:9601).
    pub metrics_bind: Option<SocketAddr>,
    /// Optional second listener serving the same routes over TLS (wss/https);
    /// needs `tls_cert` and `tls_key`. The plain listener stays available
    /// for use behind a terminating proxy.
    pub tls_bind: Option<SocketAddr>,
    /// PEM certificate chain and private key; re-read when the files change.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Seconds of client silence before the server sends `pusher:ping`; also
    /// announced to clients in `pusher:connection_established`.
    pub activity_timeout: u64,
    /// Seconds to wait for any message after a server ping before closing with 4201.
    pub pong_timeout: u64,
    /// Largest WebSocket message accepted from a client, after reassembly of fragments.
    pub max_message_bytes: usize,
    /// Frames queued per connection before it counts as a slow consumer (close 4100).
    pub outbox_capacity: usize,
    /// Seconds a single socket write may take before the connection is dropped.
    pub write_timeout: u64,
    /// Seconds a client may take to send a complete HTTP request head
    /// (upgrade or API call) before the connection is closed (slowloris).
    pub header_timeout: u64,
    /// Seconds an HTTP API request body may take to arrive in full, from
    /// the end of its head; then 408 and the connection is closed.
    pub body_timeout: u64,
    /// Open WebSocket connections allowed from one IP address (0 = unlimited);
    /// over it the socket is closed with 4100 (reconnect later).
    pub max_connections_per_ip: usize,
    /// Open WebSocket connections allowed on this process in all (0 =
    /// unlimited); over it the socket is closed with 4100 (reconnect later,
    /// perhaps to another node). A ceiling below the file-descriptor limit
    /// keeps descriptors free for the HTTP API, the admin port and NATS.
    pub max_connections: usize,
    /// Addresses and CIDR ranges of the proxies in front of Herald (an
    /// Ingress, a load balancer). From a connection whose TCP peer is one of
    /// them, the client's address is read from `X-Forwarded-For`.
    pub trusted_proxies: Vec<String>,
    /// Seconds over which a gateway closes its connections (4200) after
    /// SIGTERM, so clients move to other nodes gradually. Default: 30 for
    /// `herald gateway`, 0 (all at once) for `herald standalone`.
    pub drain_window: Option<u64>,
    /// Seconds allowed after the drain for the last connections to close.
    pub shutdown_timeout: u64,
    /// Milliseconds `channel_vacated` and `member_removed` webhooks are held
    /// back; dropped (with the re-add) if the channel or user comes back.
    pub webhook_hold_back_ms: u64,
    /// Milliseconds a webhook batch collects events before it is sent.
    pub webhook_batch_ms: u64,
    /// Most events in one webhook request.
    pub webhook_batch_size: usize,
    /// Milliseconds a receiver has to answer 2XX.
    pub webhook_timeout_ms: u64,
    /// Seconds after queueing that a failing webhook is retried before it
    /// becomes a dead letter.
    pub webhook_retry_window_secs: u64,
    /// Most webhook events one process holds for delivery (all receivers
    /// together): standalone drops (and counts) events beyond it, an ingest
    /// stops pulling from the stream. Bounds the memory of a backlog while
    /// a receiver is down.
    pub webhook_max_pending: usize,
    /// Cluster mode: how to reach NATS (ignored by `herald standalone`).
    pub nats: NatsConfig,
    pub apps: Vec<AppConfig>,
}

impl Config {
    /// How webhooks are held back, batched, timed out and retried.
    pub fn webhook_delivery(&self) -> WebhookDelivery {
        WebhookDelivery {
            hold_back: Duration::from_millis(self.webhook_hold_back_ms),
            batch_window: Duration::from_millis(self.webhook_batch_ms),
            batch_size: self.webhook_batch_size,
            timeout: Duration::from_millis(self.webhook_timeout_ms),
            retry_window: Duration::from_secs(self.webhook_retry_window_secs),
            max_pending: self.webhook_max_pending,
        }
    }
}

/// Webhook delivery timing (Pusher's rules by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    pub hold_back: Duration,
    pub batch_window: Duration,
    pub batch_size: usize,
    pub timeout: Duration,
    pub retry_window: Duration,
    pub max_pending: usize,
}

/// NATS connection, credentials, TLS, subject prefix and KV buckets.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URLs; `--nats` (comma-separated) replaces them.
    pub servers: Vec<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// NKey seed (`SU...`).
    pub nkey_seed: Option<String>,
    /// A `.creds` file (JWT + NKey).
    pub credentials_file: Option<PathBuf>,
    /// CA certificate(s) to trust, PEM.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key for mutual TLS, PEM.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_required: bool,
    /// First token of every bus subject.
    pub subject_prefix: String,
    /// KV bucket of presence, occupancy and online users.
    pub state_bucket: String,
    /// KV bucket of cache channels' last events.
    pub cache_bucket: String,
    /// Replicas of both buckets (3 on a 3-server NATS cluster).
    pub kv_replicas: usize,
    /// Seconds after which a gateway that stopped heartbeating counts as dead
    /// and its presence members are removed cluster-wide.
    pub node_ttl: u64,
    /// JetStream stream of queued webhooks (deduplicated, shared by senders).
    pub webhook_stream: String,
    /// JetStream stream of webhooks that failed for the whole retry window.
    pub webhook_dead_letter_stream: String,
    /// Seconds before webhooks held by a sender that died go to another.
    pub webhook_ack_wait_secs: u64,
    /// JetStream stream that keeps every event for a while, so that a
    /// gateway that missed some (a NATS reconnect) reads them back.
    pub event_stream: String,
    /// Seconds the event stream keeps events: the longest NATS outage a
    /// gateway recovers every missed event from.
    pub event_retention_secs: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            user: None,
            password: None,
            token: None,
            nkey_seed: None,
            credentials_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_required: false,
            subject_prefix: "herald".into(),
            state_bucket: "herald-state".into(),
            cache_bucket: "herald-cache".into(),
            kv_replicas: 1,
            node_ttl: 3,
            webhook_stream: "herald-webhooks".into(),
            webhook_dead_letter_stream: "herald-webhooks-dead".into(),
            webhook_ack_wait_secs: 30,
            event_stream: "herald-events".into(),
            event_retention_secs: 120,
        }
    }
}

impl NatsConfig {
    /// Secrets and paths from `HERALD_NATS_*` variables override the file.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        let text = |slot: &mut Option<String>, name: &str| {
            if let Some(v) = env(name) {
                *slot = Some(v);
            }
        };
        text(&mut self.user, "HERALD_NATS_USER");
        text(&mut self.password, "HERALD_NATS_PASSWORD");
        text(&mut self.token, "HERALD_NATS_TOKEN");
        text(&mut self.nkey_seed, "HERALD_NATS_NKEY_SEED");
        let path = |slot: &mut Option<PathBuf>, name: &str| {
            if let Some(v) = env(name) {
                *slot = Some(PathBuf::from(v));
            }
        };
        path(&mut self.credentials_file, "HERALD_NATS_CREDENTIALS_FILE");
        path(&mut self.tls_ca, "HERALD_NATS_TLS_CA");
        path(&mut self.tls_cert, "HERALD_NATS_TLS_CERT");
        path(&mut self.tls_key, "HERALD_NATS_TLS_KEY");
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: None,
            metrics_bind: None,
            tls_bind: None,
            tls_cert: None,
            tls_key: None,
            activity_timeout: 120,
            pong_timeout: 30,
            max_message_bytes: 64 * 1024,
            outbox_capacity: 1024,
            write_timeout: 10,
            header_timeout: 10,
            body_timeout: 10,
            max_connections_per_ip: 0,
            max_connections: 0,
            trusted_proxies: Vec::new(),
            drain_window: None,
            shutdown_timeout: 5,
            webhook_hold_back_ms: 3000,
            webhook_batch_ms: 250,
            webhook_batch_size: 20,
            webhook_timeout_ms: 4000,
            webhook_retry_window_secs: 300,
            webhook_max_pending: 100_000,
            nats: NatsConfig::default(),
            apps: Vec::new(),
        }
    }
}

/// Channels whose last events are kept and shown to every new subscriber.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HistoryRule {
    /// Channels whose name (on the wire, e.g. `private-admin-`) starts with this.
    pub prefix: String,
    /// How many of the last events are kept.
    #[serde(default = "default_history_events")]
    pub events: usize,
    /// How long an event is kept, in seconds.
    #[serde(default = "default_history_seconds")]
    pub seconds: u64,
}

/// Most events a history rule keeps per channel (each new subscriber is sent all of them).
pub const MAX_HISTORY_EVENTS: usize = 1000;
/// Longest a history rule keeps an event: 7 days.
pub const MAX_HISTORY_SECONDS: u64 = 7 * 24 * 3600;

fn default_history_events() -> usize {
    20
}

fn default_history_seconds() -> u64 {
    3600
}

/// Environment variable with history rules for the app taken from the
/// environment: `prefix:events[:seconds]`, comma-separated.
pub const HISTORY_VAR: &str = "HERALD_HISTORY_CHANNELS";

/// Parses [`HISTORY_VAR`]: `private-admin-:20:3600,orders:50`.
pub fn parse_history_rules(text: &str) -> Result<Vec<HistoryRule>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut fields = part.split(':');
            let prefix = fields.next().unwrap_or_default().to_owned();
            let number = |field: Option<&str>, default: u64, what: &str| match field {
                None => Ok(default),
                Some(f) => f
                    .parse::<u64>()
                    .map_err(|_| format!("`{part}`: {what} `{f}` is not a whole number")),
            };
            let events = number(fields.next(), default_history_events() as u64, "events")?;
            let seconds = number(fields.next(), default_history_seconds(), "seconds")?;
            if fields.next().is_some() {
                return Err(format!("`{part}` is not prefix:events[:seconds]"));
            }
            Ok(HistoryRule {
                prefix,
                events: events as usize,
                seconds,
            })
        })
        .collect()
}

/// One Pusher app: credentials, switches and limits (Pusher's defaults).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub id: String,
    pub key: String,
    pub secret: String,
    /// A second accepted secret while rotating: sign with the new `secret`,
    /// keep accepting the old one here until every client has moved.
    #[serde(default)]
    pub previous_secret: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Allow `client-*` events (off by default, as on Pusher).
    #[serde(default)]
    pub client_events: bool,
    /// Send `pusher_internal:subscription_count` on non-presence channels.
    #[serde(default)]
    pub subscription_count: bool,
    /// Seconds within which a socket must sign in or subscribe to a private or
    /// presence channel, else it is closed with 4009 (0 = not required).
    #[serde(default)]
    pub user_authentication_timeout: u64,
    /// Concurrent connections allowed (0 = unlimited).
    #[serde(default)]
    pub max_connections: usize,
    #[serde(default = "default_max_presence_members")]
    pub max_presence_members: usize,
    /// Presence channels for crowds (wire names starting with one of these,
    /// e.g. `presence-user-presence`): members whose `user_info` has
    /// `"watcher": true` get the member list and member events (in bursts);
    /// the others only their own entry and the member count
    /// (docs/presence.md, "Large presence channels").
    #[serde(default)]
    pub large_presence_prefixes: Vec<String>,
    /// Members a large presence channel admits, cluster-wide.
    #[serde(default = "default_max_large_presence_members")]
    pub max_large_presence_members: usize,
    /// History channels: a subscriber first receives the last events of a
    /// channel matching one of these (docs/protocol.md, "History channels").
    #[serde(default)]
    pub history: Vec<HistoryRule>,
    #[serde(default = "default_max_user_info")]
    pub max_presence_user_info_bytes: usize,
    #[serde(default = "default_max_payload")]
    pub max_event_payload_bytes: usize,
    #[serde(default = "default_max_channels")]
    pub max_channels_per_event: usize,
    #[serde(default = "default_max_batch")]
    pub max_batch_events: usize,
    #[serde(default = "default_client_rate")]
    pub max_client_events_per_second: u32,
    /// Channels one connection may be subscribed to at once.
    #[serde(default = "default_max_subscriptions")]
    pub max_subscriptions_per_connection: usize,
    /// `pusher:subscribe` requests per connection per second, after a burst
    /// of `max_subscriptions_per_connection` (so a reconnecting client can
    /// resubscribe to every channel it may hold at once); over it: 429.
    #[serde(default = "default_subscribe_rate")]
    pub max_subscribes_per_second: u32,
    /// HTTP API requests per second for the app (0 = unlimited); over it: 429.
    #[serde(default)]
    pub max_api_requests_per_second: u32,
    /// Browser origins allowed to connect (`https://shop.example`, or
    /// `*.example.com` for any subdomain); empty allows every origin.
    /// A refused handshake gets 4009.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Where this app's webhooks are POSTed.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
}

/// One webhook receiver of an app.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL the events are POSTed to.
    pub url: String,
    /// Event kinds to send (`member_added`, ...); empty: all of them.
    #[serde(default)]
    pub events: Vec<String>,
}

impl WebhookConfig {
    /// Whether this receiver wants events of `kind`: the ones it lists, or
    /// with an empty list every kind Pusher has (Herald's own only when listed).
    pub fn wants(&self, kind: WebhookKind) -> bool {
        if self.events.is_empty() {
            return kind.is_pusher();
        }
        self.events.iter().any(|e| e == kind.name())
    }
}

fn default_max_subscriptions() -> usize {
    1000
}
fn default_subscribe_rate() -> u32 {
    50
}

fn yes() -> bool {
    true
}
fn default_max_presence_members() -> usize {
    100
}
fn default_max_large_presence_members() -> usize {
    20_000
}
fn default_max_user_info() -> usize {
    1024
}
fn default_max_payload() -> usize {
    10 * 1024
}
fn default_max_channels() -> usize {
    100
}
fn default_max_batch() -> usize {
    10
}
fn default_client_rate() -> u32 {
    10
}

impl AppConfig {
    /// An app with Pusher's default switches and limits.
    pub fn new(id: &str, key: &str, secret: &str) -> Self {
        Self {
            id: id.into(),
            key: key.into(),
            secret: secret.into(),
            previous_secret: None,
            enabled: true,
            client_events: false,
            subscription_count: false,
            user_authentication_timeout: 0,
            max_connections: 0,
            max_presence_members: default_max_presence_members(),
            large_presence_prefixes: Vec::new(),
            max_large_presence_members: default_max_large_presence_members(),
            history: Vec::new(),
            max_presence_user_info_bytes: default_max_user_info(),
            max_event_payload_bytes: default_max_payload(),
            max_channels_per_event: default_max_channels(),
            max_batch_events: default_max_batch(),
            max_client_events_per_second: default_client_rate(),
            max_subscriptions_per_connection: default_max_subscriptions(),
            max_subscribes_per_second: default_subscribe_rate(),
            max_api_requests_per_second: 0,
            allowed_origins: Vec::new(),
            webhooks: Vec::new(),
        }
    }

    /// Whether `channel` is a large presence channel (see `large_presence_prefixes`).
    pub fn is_large_presence(&self, channel: &str) -> bool {
        self.large_presence_prefixes
            .iter()
            .any(|prefix| channel.starts_with(prefix.as_str()))
    }

    /// How many members the presence `channel` admits, cluster-wide.
    pub fn member_cap(&self, channel: &str) -> usize {
        if self.is_large_presence(channel) {
            self.max_large_presence_members
        } else {
            self.max_presence_members
        }
    }

    /// Whether a WebSocket handshake with this `Origin` header may connect.
    /// Without an allow-list every origin (and none) is allowed; with one,
    /// the origin must match an entry exactly, or a `*.domain` entry by
    /// suffix (`https://a.shop.example` matches `*.shop.example`).
    pub fn allows_origin(&self, origin: Option<&str>) -> bool {
        if self.allowed_origins.is_empty() {
            return true;
        }
        let Some(origin) = origin else { return false };
        let host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        self.allowed_origins
            .iter()
            .any(|allowed| match allowed.strip_prefix("*.") {
                Some(domain) => host.ends_with(&format!(".{domain}")),
                None => allowed == origin,
            })
    }

    /// The secrets a signature may be made with: the current one first.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.secret.as_str()).chain(self.previous_secret.as_deref())
    }

    pub fn api_limits(&self) -> ApiLimits {
        ApiLimits {
            max_event_payload_bytes: self.max_event_payload_bytes,
            max_channels_per_event: self.max_channels_per_event,
            max_batch_events: self.max_batch_events,
        }
    }

    pub fn user_authentication_timeout(&self) -> Option<Duration> {
        (self.user_authentication_timeout > 0)
            .then(|| Duration::from_secs(self.user_authentication_timeout))
    }
}

/// A configuration error; the message names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid config: `{key}` {problem}")]
    Invalid { key: String, problem: String },
}

/// Where the app list came from, so the binary can warn about a development app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppSource {
    File,
    /// `PUSHER_APP_ID` / `PUSHER_APP_KEY` / `PUSHER_APP_SECRET`.
    PusherEnv,
    /// `REVERB_APP_ID` / `REVERB_APP_KEY` / `REVERB_APP_SECRET`.
    ReverbEnv,
    Development,
}

/// Turns client events on (`true`) for the app taken from the environment.
pub const CLIENT_EVENTS_VAR: &str = "HERALD_CLIENT_EVENTS";
const PUSHER_VARS: [&str; 3] = ["PUSHER_APP_ID", "PUSHER_APP_KEY", "PUSHER_APP_SECRET"];
const REVERB_VARS: [&str; 3] = ["REVERB_APP_ID", "REVERB_APP_KEY", "REVERB_APP_SECRET"];

/// The app the id, key and secret variables `names` spell, `None` when none
/// of them is set, an error naming the missing ones when only some are.
fn app_from_env(
    env: &impl Fn(&str) -> Option<String>,
    names: [&str; 3],
) -> Result<Option<AppConfig>, ConfigError> {
    match names.map(env) {
        [Some(id), Some(key), Some(secret)] => Ok(Some(AppConfig::new(&id, &key, &secret))),
        [None, None, None] => Ok(None),
        partial => {
            let missing = names
                .iter()
                .zip(partial.iter())
                .filter(|(_, v)| v.is_none())
                .map(|(k, _)| *k)
                .collect::<Vec<_>>()
                .join(", ");
            Err(ConfigError::Invalid {
                key: missing,
                problem: format!("is missing (set all of {} or none)", names.join(", ")),
            })
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            path: String::new(),
            message,
        };
        let document = toml::Deserializer::parse(text).map_err(|e| parse_error(e.to_string()))?;
        // serde_path_to_error names the key (`apps[0].max_presence_members`) of a type error.
        let config: Config = serde_path_to_error::deserialize(document).map_err(|e| {
            let key = e.path().to_string();
            let cause = e.into_inner().message().to_owned();
            parse_error(format!("`{key}`: {cause}"))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// With no `[[apps]]` in the file, take the app from `PUSHER_APP_ID`,
    /// `PUSHER_APP_KEY` and `PUSHER_APP_SECRET` (a Laravel `.env`), else
    /// from `REVERB_APP_ID`, `REVERB_APP_KEY` and `REVERB_APP_SECRET` (an app
    /// configured for Reverb: Laravel's `reverb` connection is the Pusher
    /// driver), else a development app. `HERALD_CLIENT_EVENTS=true` turns
    /// client events on for that app; per-app settings otherwise need the file.
    pub fn fill_apps_from_env(
        &mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<AppSource, ConfigError> {
        let client_events = match env(CLIENT_EVENTS_VAR).as_deref() {
            None => None,
            Some("true" | "1") => Some(true),
            Some("false" | "0") => Some(false),
            Some(_) => {
                return Err(ConfigError::Invalid {
                    key: CLIENT_EVENTS_VAR.into(),
                    problem: "must be true or false".into(),
                })
            }
        };
        let history = env(HISTORY_VAR)
            .map(|text| parse_history_rules(&text))
            .transpose()
            .map_err(|problem| ConfigError::Invalid {
                key: HISTORY_VAR.into(),
                problem,
            })?;
        if !self.apps.is_empty() {
            if history.is_some() {
                return Err(ConfigError::Invalid {
                    key: HISTORY_VAR.into(),
                    problem: "applies only to an app taken from the environment; the config file has [[apps]]: set [[apps.history]] there".into(),
                });
            }
            if client_events.is_some() {
                return Err(ConfigError::Invalid {
                    key: CLIENT_EVENTS_VAR.into(),
                    problem: "applies only to an app taken from the environment; the config file has [[apps]]: set client_events there".into(),
                });
            }
            return Ok(AppSource::File);
        }
        let source = match app_from_env(&env, PUSHER_VARS)? {
            Some(app) => {
                self.apps.push(app);
                AppSource::PusherEnv
            }
            None => match app_from_env(&env, REVERB_VARS)? {
                Some(app) => {
                    self.apps.push(app);
                    AppSource::ReverbEnv
                }
                None => {
                    self.apps
                        .push(AppConfig::new("app-id", "app-key", "app-secret"));
                    AppSource::Development
                }
            },
        };
        self.apps[0].client_events = client_events.unwrap_or(false);
        self.apps[0].history = history.unwrap_or_default();
        self.validate()?;
        Ok(source)
    }

    /// `trusted_proxies` as ranges (entries that do not parse are left out;
    /// `validate` refuses them).
    pub fn trusted_proxy_ranges(&self) -> Vec<ipnet::IpNet> {
        self.trusted_proxies
            .iter()
            .filter_map(|p| parse_ip_range(p))
            .collect()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, problem: &str| ConfigError::Invalid {
            key,
            problem: problem.into(),
        };
        for (key, value) in [
            ("activity_timeout", self.activity_timeout as usize),
            ("pong_timeout", self.pong_timeout as usize),
            ("max_message_bytes", self.max_message_bytes),
            ("outbox_capacity", self.outbox_capacity),
            ("write_timeout", self.write_timeout as usize),
            ("header_timeout", self.header_timeout as usize),
            ("body_timeout", self.body_timeout as usize),
            ("webhook_batch_ms", self.webhook_batch_ms as usize),
            ("webhook_batch_size", self.webhook_batch_size),
            ("webhook_timeout_ms", self.webhook_timeout_ms as usize),
            (
                "webhook_retry_window_secs",
                self.webhook_retry_window_secs as usize,
            ),
            ("webhook_max_pending", self.webhook_max_pending),
            (
                "nats.webhook_ack_wait_secs",
                self.nats.webhook_ack_wait_secs as usize,
            ),
            (
                "nats.event_retention_secs",
                self.nats.event_retention_secs as usize,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key.into(), "must be greater than 0"));
            }
        }
        for (i, proxy) in self.trusted_proxies.iter().enumerate() {
            if parse_ip_range(proxy).is_none() {
                return Err(invalid(
                    format!("trusted_proxies[{i}]"),
                    &format!("`{proxy}` is not an IP address or CIDR range (e.g. 10.0.0.0/8)"),
                ));
            }
        }
        if self.tls_bind.is_some() && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            return Err(invalid(
                "tls_cert".into(),
                "and tls_key are required with tls_bind",
            ));
        }
        if self.nats.kv_replicas == 0 || self.nats.kv_replicas > 5 {
            return Err(invalid(
                "nats.kv_replicas".into(),
                "must be between 1 and 5",
            ));
        }
        if self.nats.node_ttl == 0 {
            return Err(invalid("nats.node_ttl".into(), "must be at least 1 second"));
        }
        if self.nats.user.is_some() != self.nats.password.is_some() {
            return Err(invalid(
                "nats.password".into(),
                "and nats.user must be given together",
            ));
        }
        if self.nats.tls_cert.is_some() != self.nats.tls_key.is_some() {
            return Err(invalid(
                "nats.tls_key".into(),
                "and nats.tls_cert must be given together",
            ));
        }
        let (mut ids, mut keys) = (HashSet::new(), HashSet::new());
        for (i, app) in self.apps.iter().enumerate() {
            let key = |field: &str| format!("apps[{i}].{field}");
            for (field, value) in [("id", &app.id), ("key", &app.key), ("secret", &app.secret)] {
                if value.is_empty() {
                    return Err(invalid(key(field), "must not be empty"));
                }
            }
            if app.previous_secret.as_deref().is_some_and(str::is_empty) {
                return Err(invalid(
                    key("previous_secret"),
                    "must not be empty (leave it out instead)",
                ));
            }
            if !ids.insert(&app.id) {
                return Err(invalid(key("id"), "is used by another app"));
            }
            if !keys.insert(&app.key) {
                return Err(invalid(key("key"), "is used by another app"));
            }
            if let Some(prefix) = app
                .large_presence_prefixes
                .iter()
                .find(|p| !p.starts_with("presence-"))
            {
                return Err(invalid(
                    key("large_presence_prefixes"),
                    &format!("has `{prefix}`: every prefix must start with `presence-` (the channel's name on the wire)"),
                ));
            }
            for (j, rule) in app.history.iter().enumerate() {
                let field = |f: &str| key(&format!("history[{j}].{f}"));
                if rule.prefix.is_empty() {
                    return Err(invalid(field("prefix"), "must not be empty"));
                }
                if rule.events == 0 || rule.events > MAX_HISTORY_EVENTS {
                    return Err(invalid(
                        field("events"),
                        &format!("must be between 1 and {MAX_HISTORY_EVENTS}"),
                    ));
                }
                if rule.seconds == 0 || rule.seconds > MAX_HISTORY_SECONDS {
                    return Err(invalid(
                        field("seconds"),
                        &format!("must be between 1 and {MAX_HISTORY_SECONDS} (7 days)"),
                    ));
                }
            }
            for (field, value) in [
                ("max_presence_members", app.max_presence_members),
                ("max_large_presence_members", app.max_large_presence_members),
                (
                    "max_presence_user_info_bytes",
                    app.max_presence_user_info_bytes,
                ),
                ("max_event_payload_bytes", app.max_event_payload_bytes),
                ("max_channels_per_event", app.max_channels_per_event),
                ("max_batch_events", app.max_batch_events),
                (
                    "max_client_events_per_second",
                    app.max_client_events_per_second as usize,
                ),
                (
                    "max_subscriptions_per_connection",
                    app.max_subscriptions_per_connection,
                ),
                (
                    "max_subscribes_per_second",
                    app.max_subscribes_per_second as usize,
                ),
            ] {
                if value == 0 {
                    return Err(invalid(key(field), "must be greater than 0"));
                }
            }
            for (j, hook) in app.webhooks.iter().enumerate() {
                let field = |name: &str| key(&format!("webhooks[{j}].{name}"));
                let scheme_ok = hook.url.split_once("://").is_some_and(|(scheme, rest)| {
                    matches!(scheme, "http" | "https") && !rest.is_empty()
                });
                if !scheme_ok {
                    return Err(invalid(field("url"), "must be an http:// or https:// URL"));
                }
                if let Some(unknown) = hook
                    .events
                    .iter()
                    .find(|e| WebhookKind::from_name(e).is_none())
                {
                    let known: Vec<_> = WebhookKind::ALL.iter().map(|k| k.name()).collect();
                    return Err(invalid(
                        field("events"),
                        &format!(
                            "has unknown event `{unknown}` (known: {})",
                            known.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// An address (`10.1.2.3`, one host) or a CIDR range (`10.0.0.0/8`).
fn parse_ip_range(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_pushers() {
        let c = Config::from_toml("[[apps]]\nid='1'\nkey='k'\nsecret='s'\n").unwrap();
        let app = &c.apps[0];
        assert!(app.enabled && !app.client_events);
        assert_eq!(app.max_presence_members, 100);
        assert_eq!(app.max_event_payload_bytes, 10240);
        assert_eq!(app.max_channels_per_event, 100);
        assert_eq!(app.max_batch_events, 10);
        assert_eq!(c.activity_timeout, 120);
    }

    #[test]
    fn subscribe_rate_defaults_and_must_be_positive() {
        let app = "[[apps]]\nid='1'\nkey='k'\nsecret='s'\n";
        let c = Config::from_toml(app).unwrap();
        assert_eq!(c.apps[0].max_subscribes_per_second, 50);
        assert_eq!(AppConfig::new("1", "k", "s").max_subscribes_per_second, 50);
        let c = Config::from_toml(&format!("{app}max_subscribes_per_second = 5\n")).unwrap();
        assert_eq!(c.apps[0].max_subscribes_per_second, 5);
        let err = Config::from_toml(&format!("{app}max_subscribes_per_second = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`apps[0].max_subscribes_per_second` must be greater than 0"),
            "{err}"
        );
        let err = Config::from_toml(&format!("{app}max_subscribes_per_second = -1\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("apps[0].max_subscribes_per_second"), "{err}");
    }

    #[test]
    fn errors_name_the_key() {
        let err =
            Config::from_toml("[[apps]]\nid='1'\nkey='k'\nsecret='s'\nmax_presence_members=0\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("apps[0].max_presence_members"), "{err}");
        let err = Config::from_toml("[[apps]]\nid='1'\nkey='k'\nsecret='s'\nprevious_secret=''\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("apps[0].previous_secret"), "{err}");
        let err = Config::from_toml("[[apps]]\nid='1'\nkey='k'\nsecret='s'\nclient_event=true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("client_event"), "{err}");
        let err = Config::from_toml("pong_timeout = 'x'\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("pong_timeout"), "{err}");
        let two = "[[apps]]\nid='1'\nkey='k'\nsecret='s'\n[[apps]]\nid='2'\nkey='k'\nsecret='s'\n";
        let err = Config::from_toml(two).unwrap_err().to_string();
        assert!(err.contains("apps[1].key"), "{err}");
    }

    #[test]
    fn trusted_proxies_take_addresses_and_ranges() {
        let c = Config::from_toml("trusted_proxies = ['10.0.0.0/8', '192.168.1.7', 'fd00::/8']\n")
            .unwrap();
        let ranges = c.trusted_proxy_ranges();
        assert_eq!(ranges.len(), 3);
        assert!(ranges[0].contains(&"10.20.30.40".parse::<std::net::IpAddr>().unwrap()));
        assert!(ranges[1].contains(&"192.168.1.7".parse::<std::net::IpAddr>().unwrap()));
        assert!(!ranges[1].contains(&"192.168.1.8".parse::<std::net::IpAddr>().unwrap()));
        let err = Config::from_toml("trusted_proxies = ['10.0.0.0/8', 'ingress']\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("trusted_proxies[1]"), "{err}");
    }

    #[test]
    fn nats_settings_from_file_and_env() {
        let mut c =
            Config::from_toml("[nats]\nservers=['nats://a:4222']\nkv_replicas=3\n").unwrap();
        c.nats
            .apply_env(|k| (k == "HERALD_NATS_TOKEN").then(|| "t0k".to_string()));
        assert_eq!(c.nats.servers, ["nats://a:4222"]);
        assert_eq!(c.nats.token.as_deref(), Some("t0k"));
        assert_eq!(c.nats.subject_prefix, "herald");
        let err = Config::from_toml("[nats]\nuser='u'\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nats.password"), "{err}");
    }

    #[test]
    fn origin_allow_list() {
        let mut app = AppConfig::new("1", "k", "s");
        assert!(app.allows_origin(None) && app.allows_origin(Some("https://any")));
        app.allowed_origins = vec!["https://shop.example".into(), "*.admin.example".into()];
        assert!(app.allows_origin(Some("https://shop.example")));
        assert!(app.allows_origin(Some("https://eu.admin.example")));
        assert!(!app.allows_origin(Some("https://admin.example")));
        assert!(!app.allows_origin(Some("https://shop.example.evil")));
        assert!(!app.allows_origin(Some("http://evil-admin.example")));
        assert!(!app.allows_origin(None));
    }

    #[test]
    fn apps_from_laravel_env_or_development() {
        let mut c = Config::default();
        let env = vars(&[
            ("PUSHER_APP_ID", "local"),
            ("PUSHER_APP_KEY", "lkey"),
            ("PUSHER_APP_SECRET", "lsecret"),
        ]);
        assert_eq!(c.fill_apps_from_env(env).unwrap(), AppSource::PusherEnv);
        assert_eq!(c.apps[0].key, "lkey");

        let mut c = Config::default();
        assert_eq!(
            c.fill_apps_from_env(|_| None).unwrap(),
            AppSource::Development
        );

        let mut c = Config::default();
        let err = c
            .fill_apps_from_env(|k| (k == "PUSHER_APP_ID").then(|| "1".to_string()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("PUSHER_APP_KEY, PUSHER_APP_SECRET"), "{err}");
    }

    /// A lookup of the given variables only.
    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn an_app_configured_for_reverb_is_served_from_reverb_variables() {
        let reverb = [
            ("REVERB_APP_ID", "rid"),
            ("REVERB_APP_KEY", "rkey"),
            ("REVERB_APP_SECRET", "rsecret"),
        ];
        let mut c = Config::default();
        assert_eq!(
            c.fill_apps_from_env(vars(&reverb)).unwrap(),
            AppSource::ReverbEnv
        );
        assert_eq!(
            (c.apps[0].id.as_str(), c.apps[0].key.as_str()),
            ("rid", "rkey")
        );
        assert!(!c.apps[0].client_events);

        // PUSHER_APP_* wins when both are set.
        let both = [
            ("PUSHER_APP_ID", "pid"),
            ("PUSHER_APP_KEY", "pkey"),
            ("PUSHER_APP_SECRET", "psecret"),
            ("REVERB_APP_ID", "rid"),
            ("REVERB_APP_KEY", "rkey"),
            ("REVERB_APP_SECRET", "rsecret"),
        ];
        let mut c = Config::default();
        assert_eq!(
            c.fill_apps_from_env(vars(&both)).unwrap(),
            AppSource::PusherEnv
        );
        assert_eq!(c.apps[0].key, "pkey");

        let mut c = Config::default();
        let err = c
            .fill_apps_from_env(vars(&[("REVERB_APP_KEY", "k")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("REVERB_APP_ID, REVERB_APP_SECRET"), "{err}");
    }

    #[test]
    fn client_events_are_switched_on_for_the_app_from_the_environment() {
        let mut c = Config::default();
        c.fill_apps_from_env(vars(&[
            ("REVERB_APP_ID", "rid"),
            ("REVERB_APP_KEY", "rkey"),
            ("REVERB_APP_SECRET", "rsecret"),
            ("HERALD_CLIENT_EVENTS", "true"),
        ]))
        .unwrap();
        assert!(c.apps[0].client_events);

        let mut c = Config::default();
        let err = c
            .fill_apps_from_env(vars(&[("HERALD_CLIENT_EVENTS", "yes please")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("HERALD_CLIENT_EVENTS") && err.contains("true or false"),
            "{err}"
        );

        let mut c = Config::from_toml("[[apps]]\nid='1'\nkey='k'\nsecret='s'\n").unwrap();
        let err = c
            .fill_apps_from_env(vars(&[("HERALD_CLIENT_EVENTS", "true")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("set client_events there"), "{err}");
    }

    #[test]
    fn history_rules_come_from_the_file_or_the_environment_and_are_bounded() {
        let app = "[[apps]]\nid='1'\nkey='k'\nsecret='s'\n";
        let c = Config::from_toml(&format!(
            "{app}[[apps.history]]\nprefix='private-admin-'\n[[apps.history]]\nprefix='orders'\nevents=50\nseconds=60\n"
        ))
        .unwrap();
        assert_eq!(
            c.apps[0].history,
            [
                HistoryRule {
                    prefix: "private-admin-".into(),
                    events: 20,
                    seconds: 3600
                },
                HistoryRule {
                    prefix: "orders".into(),
                    events: 50,
                    seconds: 60
                },
            ]
        );
        for (bad, key) in [
            ("prefix=''", "apps[0].history[0].prefix"),
            ("prefix='a'\nevents=0", "apps[0].history[0].events"),
            ("prefix='a'\nevents=1001", "apps[0].history[0].events"),
            ("prefix='a'\nseconds=604801", "apps[0].history[0].seconds"),
        ] {
            let err = Config::from_toml(&format!("{app}[[apps.history]]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }

        let mut c = Config::default();
        c.fill_apps_from_env(vars(&[(
            "HERALD_HISTORY_CHANNELS",
            "private-admin-:20:86400, orders:5",
        )]))
        .unwrap();
        assert_eq!(
            c.apps[0].history,
            [
                HistoryRule {
                    prefix: "private-admin-".into(),
                    events: 20,
                    seconds: 86400
                },
                HistoryRule {
                    prefix: "orders".into(),
                    events: 5,
                    seconds: 3600
                },
            ]
        );
        for bad in ["a:x", "a:1:2:3", ":5", "a:0"] {
            let mut c = Config::default();
            let err = c
                .fill_apps_from_env(vars(&[("HERALD_HISTORY_CHANNELS", bad)]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("HERALD_HISTORY_CHANNELS") || err.contains("history"),
                "{bad}: {err}"
            );
        }
        let mut c = Config::from_toml(app).unwrap();
        let err = c
            .fill_apps_from_env(vars(&[("HERALD_HISTORY_CHANNELS", "a:1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[[apps.history]]"), "{err}");
    }

    #[test]
    fn webhooks_are_validated_by_key() {
        let app = "[[apps]]\nid='1'\nkey='k'\nsecret='s'\n";
        let ok = Config::from_toml(&format!(
            "{app}webhooks = [{{ url = 'https://shop.example/hook', events = ['member_added'] }}]\n"
        ))
        .unwrap();
        let hook = &ok.apps[0].webhooks[0];
        assert!(hook.wants(WebhookKind::MemberAdded) && !hook.wants(WebhookKind::CacheMiss));
        let all = WebhookConfig {
            url: "https://shop.example/hook".into(),
            events: Vec::new(),
        };
        assert!(all.wants(WebhookKind::CacheMiss) && !all.wants(WebhookKind::UserOnline));
        let err = Config::from_toml(&format!("{app}webhooks = [{{ url = 'ftp://x' }}]\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("apps[0].webhooks[0].url"), "{err}");
        let err = Config::from_toml(&format!(
            "{app}webhooks = [{{ url = 'http://x', events = ['member_joined'] }}]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("apps[0].webhooks[0].events") && err.contains("member_joined"),
            "{err}"
        );
    }
}
