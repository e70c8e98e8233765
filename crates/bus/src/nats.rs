//! The NATS bus of cluster mode.
//!
//! Each message is encoded once (MessagePack) and published on the subject
//! of its (app, channel). The HTTP API's events are stored in the event
//! stream and answered 200 only with its acknowledgement; other messages
//! (client events, control) resolve after a round trip through the server
//! on the same connection (a barrier message to ourselves). Gateways listen
//! to the stream's republished copies and fill any gap from the stream, so
//! a socket that stays connected misses nothing (`stream.rs`).

use crate::batch::{Holds, CLOCK_SKEW, HOLD};
use crate::follow::Follower;
use crate::history::{self, HistoryRules, Retained};
use crate::stream::{republished, EventStream, Stored, StreamSettings};
use crate::subject::{control_subject, event_subject};
use crate::{BusError, BusMessage, Envelope, Sink};
use async_nats::connection::State;
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use async_nats::{Client, ConnectOptions};
use futures::future::BoxFuture;
use futures::StreamExt;
use herald_config::HistoryRule;
use herald_config::NatsConfig;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a publish may wait for the server's acknowledgement.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request's events (HTTP API) wait for the server: their
/// deadline. A failure is answered once it and [`CLOCK_SKEW`] twice over
/// have passed, so within [`PUBLISH_TIMEOUT`] in all (see `batch.rs`).
const REQUEST_DEADLINE: Duration = Duration::from_secs(3);
/// How long a new subscriber waits for its channel's NATS subscription to be
/// live before it is acknowledged anyway (NATS down: it will go live on reconnect).
const INTEREST_TIMEOUT: Duration = Duration::from_millis(500);
/// How long held parts wait, after a reconnect, for their commit to be read
/// back from the event stream before the hold time runs on.
const CATCH_UP_GRACE: Duration = Duration::from_secs(2);
/// How often the client pings the server; a stall is noticed within about
/// two intervals (async-nats allows two unanswered pings).
const PING_INTERVAL: Duration = Duration::from_secs(1);

/// What the NATS connection reports to its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsEvent {
    /// (Re)connected.
    Up,
    /// Lost; reconnecting.
    Down,
    /// A subscription's buffer in this client overflowed and NATS messages
    /// were dropped before Herald saw them.
    SlowConsumer,
}

/// Connects, retrying in the background if NATS is not up yet; `on_event`
/// hears every (re)connect, loss and client-side slow consumer.
/// `name` is the client name the NATS server shows (`herald-gateway-<node>`).
pub async fn connect(
    settings: &NatsConfig,
    name: &str,
    on_event: impl Fn(NatsEvent) + Send + Sync + 'static,
) -> Result<Client, BusError> {
    let unavailable = |e: &dyn std::fmt::Display| BusError::Unavailable(e.to_string());
    let mut options = ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        // A stalled server (TCP up, nothing answers) is found by unanswered
        // pings: after two intervals the client drops the connection and the
        // node turns unready. async-nats' default interval is 60 s.
        .ping_interval(PING_INTERVAL)
        // At most 1 s between attempts: when NATS comes back, delivery
        // resumes within about a second (plus the handshake).
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis((attempt as u64 * 100).min(1000))
        });
    if let Some(path) = &settings.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| unavailable(&e))?;
    }
    if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &settings.token {
        options = options.token(token.clone());
    }
    if let Some(seed) = &settings.nkey_seed {
        options = options.nkey(seed.clone());
    }
    if let Some(ca) = &settings.tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&settings.tls_cert, &settings.tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if settings.tls_required {
        options = options.require_tls(true);
    }
    let on_event = Arc::new(on_event);
    options = options.event_callback(move |event| {
        let on_event = on_event.clone();
        async move {
            match event {
                async_nats::Event::Connected => {
                    tracing::info!("NATS connected");
                    on_event(NatsEvent::Up);
                }
                async_nats::Event::Disconnected => {
                    tracing::warn!("NATS disconnected; reconnecting");
                    on_event(NatsEvent::Down);
                }
                async_nats::Event::SlowConsumer(sid) => {
                    tracing::warn!(
                        subscription = sid,
                        "NATS slow consumer: messages dropped in this client"
                    );
                    on_event(NatsEvent::SlowConsumer);
                }
                other => tracing::info!(event = %other, "NATS event"),
            }
        }
    });
    options
        .connect(settings.servers.as_slice())
        .await
        .map_err(|e| unavailable(&e))
}

/// A live NATS subscription; the task ends (and unsubscribes) when dropped.
struct Subscription {
    task: JoinHandle<()>,
    live: watch::Receiver<bool>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) struct NatsBus {
    client: Client,
    js: jetstream::Context,
    /// Reads missed messages back from the event stream, and trims it.
    stream: EventStream,
    /// Bumped on every (re)connect: subscriptions then catch up.
    connections: watch::Receiver<u64>,
    /// Each stored event's time to live, outside history channels.
    event_ttl: Duration,
    pub(crate) history: HistoryRules,
    prefix: String,
    sink: Arc<OnceLock<Arc<dyn Sink>>>,
    /// Parts of multi-channel requests waiting for their commit.
    holds: Arc<Holds>,
    /// Drops held parts whose commit never came.
    expiry: JoinHandle<()>,
    subscriptions: Mutex<HashMap<String, Subscription>>,
    barrier: Arc<Barrier>,
}

impl Drop for NatsBus {
    fn drop(&mut self) {
        self.expiry.abort();
    }
}

/// Round trips through the server: a token published to our own subject
/// comes back only after the server processed everything this connection
/// sent before it (NATS keeps a connection's order).
struct Barrier {
    subject: String,
    next: std::sync::atomic::AtomicU64,
    waiting: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<()>>>,
}

impl Barrier {
    fn start(client: &Client, subject: String) -> Arc<Self> {
        let barrier = Arc::new(Self {
            subject,
            next: std::sync::atomic::AtomicU64::new(0),
            waiting: Mutex::default(),
        });
        let (client, me) = (client.clone(), barrier.clone());
        tokio::spawn(async move {
            let Ok(mut tokens) = client.subscribe(me.subject.clone()).await else {
                tracing::error!("NATS barrier subscription failed");
                return;
            };
            while let Some(message) = tokens.next().await {
                let token = std::str::from_utf8(&message.payload)
                    .ok()
                    .and_then(|t| t.parse().ok());
                if let Some(waiter) = token.and_then(|t: u64| me.waiting.lock().remove(&t)) {
                    let _ = waiter.send(());
                }
            }
        });
        barrier
    }

    /// Resolves once the server has processed everything sent before it,
    /// or fails after `timeout` (NATS down or stalled). The token's waiter
    /// is removed however the wait ends, also when the caller gives up.
    async fn pass(&self, client: &Client, timeout: Duration) -> Result<(), BusError> {
        let token = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiting.lock().insert(token, tx);
        let _forget = Forget(self, token);
        let round_trip = async {
            client
                .publish(self.subject.clone(), token.to_string().into())
                .await
                .map_err(|e| BusError::Unavailable(e.to_string()))?;
            rx.await
                .map_err(|_| BusError::Unavailable("barrier dropped".into()))
        };
        tokio::time::timeout(timeout, round_trip)
            .await
            .unwrap_or(Err(BusError::PublishTimeout))
    }
}

/// Removes a barrier token's waiter when its wait ends.
struct Forget<'a>(&'a Barrier, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.waiting.lock().remove(&self.1);
    }
}

impl NatsBus {
    pub(crate) fn new(
        client: Client,
        prefix: &str,
        stream: &StreamSettings,
        connections: watch::Receiver<u64>,
    ) -> Self {
        let inbox = client.new_inbox();
        let unique = inbox.rsplit('.').next().unwrap_or("barrier");
        let sink: Arc<OnceLock<Arc<dyn Sink>>> = Arc::default();
        let holds = Arc::new(Holds::default());
        let expiry = tokio::spawn({
            let (sink, holds, client) = (sink.clone(), holds.clone(), client.clone());
            async move {
                let mut tick = tokio::time::interval(HOLD / 10);
                let mut was_down = false;
                loop {
                    tick.tick().await;
                    // A held part's commit may be stored and reach this node
                    // only once NATS is back (read back from the stream):
                    // time without NATS does not count, and the control
                    // subject gets time to catch up after a reconnect.
                    if client.connection_state() != State::Connected {
                        holds.postpone(HOLD / 10);
                        was_down = true;
                        continue;
                    }
                    if std::mem::take(&mut was_down) {
                        holds.postpone(CATCH_UP_GRACE);
                    }
                    if let Some(sink) = sink.get() {
                        holds.expire(sink.as_ref());
                    }
                }
            }
        });
        let js = jetstream::new(client.clone());
        Self {
            barrier: Barrier::start(&client, format!("{prefix}.barrier.{unique}")),
            stream: EventStream::new(js.clone(), stream.name.clone()),
            js,
            connections,
            event_ttl: stream.retention,
            history: HistoryRules::default(),
            client,
            prefix: prefix.to_owned(),
            sink,
            holds,
            expiry,
            subscriptions: Mutex::default(),
        }
    }

    pub(crate) fn attach(&self, sink: Arc<dyn Sink>) {
        if self.sink.set(sink).is_err() {
            panic!("NatsBus::attach called twice");
        }
    }

    pub(crate) fn listen_control(&self, apps: &[String]) {
        let mut subs = self.subscriptions.lock();
        for app in apps {
            let subject = control_subject(&self.prefix, app);
            let sub = self.subscribe(subject.clone(), false);
            subs.insert(subject, sub);
        }
    }

    /// Listens to `subject`'s stored copies, in order and without gaps
    /// (`follow.rs`).
    fn subscribe(&self, subject: String, history: bool) -> Subscription {
        let (live_tx, live) = watch::channel(false);
        let client = self.client.clone();
        let barrier = self.barrier.clone();
        let mut connections = self.connections.clone();
        let listen = republished(&self.prefix, &subject);
        let mut follower = Follower::new(
            subject,
            self.stream.clone(),
            self.holds.clone(),
            self.sink.clone(),
            history,
        );
        let task = tokio::spawn(async move {
            let mut messages = match client.subscribe(listen.clone()).await {
                Ok(messages) => messages,
                Err(e) => {
                    tracing::error!(subject = %listen, error = %e, "NATS subscribe failed");
                    return;
                }
            };
            // The server has the SUB once a barrier sent after it returns.
            // Without an answer (NATS down or stalled) read on anyway: the
            // client re-sends the SUB on reconnect and the channel must not
            // go silent waiting for a token that was lost.
            if barrier.pass(&client, INTEREST_TIMEOUT).await.is_ok() {
                let _ = live_tx.send(true);
            }
            connections.mark_unchanged();
            loop {
                tokio::select! {
                    message = messages.next() => {
                        let Some(message) = message else { break };
                        let stored = Stored::of(message.headers.as_ref());
                        follower.on_live(stored, &message.payload).await;
                    }
                    Ok(()) = connections.changed() => follower.catch_up().await,
                }
            }
        });
        Subscription { task, live }
    }

    /// Publishes on the message's subject and waits (at most
    /// [`PUBLISH_TIMEOUT`]) for the server to have processed it (a barrier
    /// round trip).
    pub(crate) async fn publish(&self, message: &BusMessage) -> Result<(), BusError> {
        if self.client.connection_state() != State::Connected {
            return Err(BusError::NotConnected);
        }
        let sent = tokio::time::timeout(PUBLISH_TIMEOUT, async {
            self.client
                .publish(
                    self.subject_of(message),
                    bytes::Bytes::from(message.encode()),
                )
                .await
                .map_err(|e| BusError::Unavailable(e.to_string()))?;
            self.barrier.pass(&self.client, PUBLISH_TIMEOUT).await
        })
        .await;
        sent.unwrap_or(Err(BusError::PublishTimeout))
    }

    /// Publishes a request's events as one batch: each part on its
    /// channel's subject, then the commit, then one barrier. A part the
    /// server took without its commit is never delivered (see `batch.rs`).
    /// Every event carries the request's deadline, so that what the client
    /// sends after a failure was answered is dropped where it arrives.
    pub(crate) async fn publish_all(&self, mut events: Vec<Envelope>) -> Result<(), BusError> {
        let Some(app) = events.first().map(|e| e.app.clone()) else {
            return Ok(());
        };
        let started = tokio::time::Instant::now();
        let deadline_ms = herald_protocol::unix_millis() + REQUEST_DEADLINE.as_millis() as u64;
        let batch = (events.len() > 1).then(rand::random::<u64>);
        for event in &mut events {
            event.batch = batch;
            event.deadline_ms = Some(deadline_ms);
        }
        let mut messages: Vec<BusMessage> = events.into_iter().map(BusMessage::Event).collect();
        if let Some(batch) = batch {
            messages.push(BusMessage::Commit {
                app,
                batch,
                deadline_ms: Some(deadline_ms),
            });
        }
        if self.client.connection_state() != State::Connected {
            // Nothing was handed to the client.
            return Err(BusError::NotConnected);
        }
        let commit = match batch {
            Some(_) => messages.pop(),
            None => None,
        };
        let outcome = tokio::time::timeout(REQUEST_DEADLINE, async {
            self.store(&messages).await?;
            // Only once every part is stored: a stored commit releases them.
            match &commit {
                Some(commit) => self.store(std::slice::from_ref(commit)).await,
                None => Ok(()),
            }
        })
        .await
        .unwrap_or(Err(BusError::PublishTimeout));
        if let Err(e) = outcome {
            // The client may still send what it was given: answer only when
            // no node would act on it any more (a message stored after the
            // deadline is dropped everywhere). What was stored in time is
            // delivered, so the outcome is unknown.
            tokio::time::sleep_until(started + REQUEST_DEADLINE + CLOCK_SKEW * 2).await;
            return Err(BusError::Unconfirmed(e.to_string()));
        }
        Ok(())
    }

    /// Stores `messages` in the event stream, each encoded once under an id
    /// of its own, and retries what is not acknowledged until all are (the
    /// stream stores a retried message once and acknowledges it again).
    /// The caller bounds the wait.
    async fn store(&self, messages: &[BusMessage]) -> Result<(), BusError> {
        // Per message: subject, payload, id and its history rule (if any).
        let encoded: Vec<(String, bytes::Bytes, String, Option<&HistoryRule>)> = messages
            .iter()
            .map(|m| {
                let id = format!("{:016x}", rand::random::<u64>());
                let rule = match m {
                    BusMessage::Event(e) => self.history.rule(&e.app, &e.channel),
                    _ => None,
                };
                (self.subject_of(m), bytes::Bytes::from(m.encode()), id, rule)
            })
            .collect();
        let mut pending: Vec<usize> = (0..encoded.len()).collect();
        loop {
            let mut acks: Vec<(usize, PublishAckFuture)> = Vec::with_capacity(pending.len());
            let mut failed = Vec::new();
            for &i in &pending {
                let (subject, payload, id, rule) = &encoded[i];
                let ttl = rule.map_or(self.event_ttl.as_secs(), |r| r.seconds);
                let publish = PublishMessage::build()
                    .payload(payload.clone())
                    .message_id(id)
                    .header("Nats-TTL", ttl.to_string().as_str());
                match self.js.send_publish(subject.clone(), publish).await {
                    Ok(ack) => acks.push((i, ack)),
                    Err(e) => failed.push((i, e.to_string())),
                }
            }
            for (i, ack) in acks {
                if let Err(e) = ack.await {
                    failed.push((i, e.to_string()));
                }
            }
            let Some((_, why)) = failed.first() else {
                // History channels keep their last events only (in the
                // background: the request is answered already).
                for (subject, _, _, rule) in &encoded {
                    if let Some(rule) = rule {
                        self.stream.trim(subject.clone(), rule.events as u64);
                    }
                }
                return Ok(());
            };
            tracing::debug!(error = %why, unacknowledged = failed.len(), "event stream publish not acknowledged; retrying");
            pending = failed.into_iter().map(|(i, _)| i).collect();
            pending.sort_unstable();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A history channel's retained events (`history.rs`), read from the
    /// event stream: the channel's stored events, which trimming keeps to
    /// about the rule's count.
    pub(crate) async fn retained(
        &self,
        app: &str,
        channel: &str,
        after: Option<u64>,
    ) -> Result<Vec<Retained>, BusError> {
        let Some(rule) = self.history.rule(app, channel) else {
            return Ok(Vec::new());
        };
        let subject = event_subject(&self.prefix, app, channel);
        let mut found = Vec::new();
        let mut next = after.map_or(1, |a| a + 1);
        // Trimming runs after each store, so only a few more than the rule's
        // count can be there; the bound keeps a lagging trim from costing more.
        for _ in 0..rule.events * 4 + 16 {
            let Some(m) = self
                .stream
                .next(&subject, next)
                .await
                .map_err(BusError::Unavailable)?
            else {
                break;
            };
            next = m.seq + 1;
            if let Ok(BusMessage::Event(envelope)) = BusMessage::decode(&m.payload) {
                let at_ms = m.at_ms.unwrap_or_default();
                let late = crate::batch::too_late(envelope.deadline_ms, Some(at_ms));
                if !late && !envelope.is_client_event() {
                    found.push(Retained::of(m.seq, at_ms, &envelope));
                }
            }
        }
        Ok(history::select(
            found,
            rule,
            after,
            herald_protocol::unix_millis(),
        ))
    }

    fn subject_of(&self, message: &BusMessage) -> String {
        match message {
            BusMessage::Event(e) => event_subject(&self.prefix, &e.app, &e.channel),
            BusMessage::TerminateUser { app, .. } | BusMessage::Commit { app, .. } => {
                control_subject(&self.prefix, app)
            }
        }
    }

    /// Subscribes to (or drops) the channel's subject at once; the future
    /// waits (bounded) until the subscription is live.
    pub(crate) fn set_interest(
        &self,
        app: &str,
        channel: &str,
        interested: bool,
    ) -> BoxFuture<'static, ()> {
        let subject = event_subject(&self.prefix, app, channel);
        let mut subs = self.subscriptions.lock();
        if !interested {
            subs.remove(&subject);
            return Box::pin(std::future::ready(()));
        }
        let mut live = subs
            .entry(subject.clone())
            .or_insert_with(|| {
                let history = self.history.rule(app, channel).is_some();
                self.subscribe(subject, history)
            })
            .live
            .clone();
        Box::pin(async move {
            let _ = tokio::time::timeout(INTEREST_TIMEOUT, live.wait_for(|l| *l)).await;
        })
    }
}
