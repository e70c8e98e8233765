//! The replicated store of cluster mode: JetStream KV.
//!
//! Every entry a node owns is one key that names the node, so nodes never
//! write each other's keys and a node's entries can be found by its id:
//!
//! | key (tokens encoded with `herald_protocol::token`) | value |
//! | --- | --- |
//! | `n.{node}` | heartbeat: written every `node_ttl / 3` with a per-message TTL of `node_ttl` |
//! | `s.{app}.{channel}.{node}` | the node's subscription count (decimal) |
//! | `m.{app}.{channel}.{user}.{node}` | the member's `user_info` JSON |
//! | `o.{app}.{user}.{node}` | `1` while the user is signed in on the node |
//!
//! Cache channels' last events live in a second bucket whose `max_age` is
//! Pusher's 30-minute cache lifetime: `c.{app}.{channel}` → JSON.
//!
//! Every node (gateways and ingests) watches both buckets from the start and
//! folds the entries into its [`View`](crate::View) in stream order, so all
//! nodes see the same transitions. A node's own put is complete once its
//! watch has applied that revision, which is what makes "member_added
//! before subscription_succeeded" and read-your-writes hold across the
//! cluster.
//!
//! Liveness costs one write per node per beat, however many members it has.
//! When a heartbeat expires, the server's limit marker (NATS 2.11+) shows up
//! in every watch at the same stream position: every node drops the dead
//! node's entries from its view at once, telling its own sockets
//! `member_removed`, and the live node with the lowest id deletes the keys.
//! A node that never heartbeats again after a restart of NATS or of the
//! watching node is dropped by a sweep after `node_ttl` plus a grace period.
//! A live node whose entries were removed (its heartbeat lapsed, or NATS
//! lost its data) writes them again from its local counts.

use crate::{CachedEvent, Change, Origin, Shared};
use async_nats::jetstream::kv::{self, Operation, Store};
use async_nats::jetstream::Context;
use bytes::Bytes;
use futures::StreamExt;
use herald_protocol::token::{decode_token, encode_token};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// How long a node waits for its own write to come back through the watch.
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long delete markers of expired heartbeats stay in the bucket.
const MARKER_TTL: Duration = Duration::from_secs(60);

/// Bucket names, replication and liveness timing.
#[derive(Debug, Clone)]
pub struct KvSettings {
    pub state_bucket: String,
    pub cache_bucket: String,
    pub replicas: usize,
    /// A node whose heartbeat is this old is dead; beats go out every third of it.
    pub node_ttl: Duration,
    pub metrics: KvMetrics,
}

/// What the store reports to Prometheus.
#[derive(Debug, Clone)]
pub struct KvMetrics {
    pub write_failures: prometheus::IntCounter,
    pub apply_seconds: prometheus::Histogram,
    pub nodes_removed: prometheus::IntCounter,
    pub healthy: prometheus::IntGauge,
}

fn key(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| encode_token(p))
        .collect::<Vec<_>>()
        .join(".")
}

/// The bucket key and value (None: delete) a change writes.
fn encode(change: &Change) -> (String, Option<Bytes>) {
    match change {
        Change::Subscriptions {
            app,
            channel,
            node,
            count,
        } => {
            let value = (*count > 0).then(|| Bytes::from(count.to_string()));
            (format!("s.{}", key(&[app, channel, node])), value)
        }
        Change::Member {
            app,
            channel,
            user,
            node,
            info,
        } => {
            let value = info.clone().map(Bytes::from);
            (format!("m.{}", key(&[app, channel, user, node])), value)
        }
        Change::Online {
            app,
            user,
            node,
            online,
        } => {
            let value = online.then(|| Bytes::from_static(b"1"));
            (format!("o.{}", key(&[app, user, node])), value)
        }
        Change::Cache {
            app,
            channel,
            event,
        } => {
            let value = event
                .as_ref()
                .map(|e| Bytes::from(serde_json::to_vec(e).expect("cached events serialize")));
            (format!("c.{}", key(&[app, channel])), value)
        }
    }
}

fn heartbeat_key(node: &str) -> String {
    format!("n.{}", encode_token(node))
}

/// The node whose heartbeat key this is.
fn heartbeat_node(key: &str) -> Option<String> {
    decode_token(key.strip_prefix("n.")?)
}

/// The change an entry of either bucket stands for; None for foreign keys.
fn decode(key: &str, value: Option<&[u8]>) -> Option<Change> {
    let mut parts = key.split('.');
    let kind = parts.next()?;
    let tokens: Vec<String> = parts.map(decode_token).collect::<Option<_>>()?;
    let text = value.map(|v| String::from_utf8_lossy(v).into_owned());
    Some(match (kind, tokens.as_slice()) {
        ("s", [app, channel, node]) => Change::Subscriptions {
            app: app.clone(),
            channel: channel.clone(),
            node: node.clone(),
            count: text.and_then(|t| t.parse().ok()).unwrap_or(0),
        },
        ("m", [app, channel, user, node]) => Change::Member {
            app: app.clone(),
            channel: channel.clone(),
            user: user.clone(),
            node: node.clone(),
            info: text,
        },
        ("o", [app, user, node]) => Change::Online {
            app: app.clone(),
            user: user.clone(),
            node: node.clone(),
            online: text.is_some(),
        },
        ("c", [app, channel]) => Change::Cache {
            app: app.clone(),
            channel: channel.clone(),
            event: value.and_then(|v| serde_json::from_slice::<CachedEvent>(v).ok()),
        },
        _ => return None,
    })
}

async fn open_bucket(
    js: &Context,
    name: &str,
    replicas: usize,
    max_age: Duration,
) -> Result<Store, String> {
    js.create_or_update_key_value(kv::Config {
        bucket: name.to_owned(),
        history: 1,
        max_age,
        num_replicas: replicas,
        // Per-message TTL for heartbeats, and a visible marker when one expires.
        limit_markers: Some(MARKER_TTL),
        ..Default::default()
    })
    .await
    .map_err(|e| format!("cannot open KV bucket {name}: {e}"))
}

/// The current (not cached) state of a bucket's stream.
async fn bucket_info(
    js: &Context,
    bucket: &str,
) -> Result<async_nats::jetstream::stream::Info, String> {
    let stream = js
        .get_stream(format!("KV_{bucket}"))
        .await
        .map_err(|e| format!("KV bucket {bucket} unavailable: {e}"))?;
    stream
        .get_info()
        .await
        .map_err(|e| format!("KV bucket {bucket} unavailable: {e}"))
}

/// When each other node last heartbeated, as this node saw it.
struct Liveness {
    ttl: Duration,
    inner: Mutex<LivenessState>,
}

struct LivenessState {
    seen: HashMap<String, Instant>,
    /// Start of the current observation window: this node's start, or the
    /// moment it got its KV connection back. Nobody is judged on silence
    /// from before it, since nobody could heartbeat then.
    since: Instant,
}

impl Liveness {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            inner: Mutex::new(LivenessState {
                seen: HashMap::new(),
                since: Instant::now(),
            }),
        }
    }

    /// Silence longer than this means dead.
    fn limit(&self) -> Duration {
        self.ttl + self.ttl / 3
    }

    fn seen(&self, node: &str) {
        self.inner
            .lock()
            .seen
            .insert(node.to_owned(), Instant::now());
    }

    fn forget(&self, node: &str) {
        self.inner.lock().seen.remove(node);
    }

    /// After an outage: every node gets a fresh window to heartbeat again.
    fn restart(&self) {
        self.inner.lock().since = Instant::now();
    }

    /// Whether an expiry marker for `node` is evidence of its death: it
    /// came when the heartbeat this node last saw ran out (not long after,
    /// as when NATS itself was down), and not right after an outage.
    fn expired_on_time(&self, node: &str) -> bool {
        let state = self.inner.lock();
        let settled = state.since.elapsed() > self.limit();
        let on_time = state
            .seen
            .get(node)
            .is_some_and(|at| at.elapsed() <= self.limit());
        settled && on_time
    }

    /// Nodes silent for longer than the limit within the current window.
    fn silent(&self, candidates: impl IntoIterator<Item = String>) -> Vec<String> {
        let state = self.inner.lock();
        candidates
            .into_iter()
            .filter(|n| {
                let last = state
                    .seen
                    .get(n)
                    .map_or(state.since, |at| (*at).max(state.since));
                last.elapsed() > self.limit()
            })
            .collect()
    }

    /// Whether this node's watch is current: its own heartbeat came back
    /// through it within two beats. A stalled watch (its NATS server died,
    /// say) shows everyone as silent; nobody is judged on that.
    fn watch_healthy(&self, me: &str) -> bool {
        let state = self.inner.lock();
        state
            .seen
            .get(me)
            .is_some_and(|at| at.elapsed() <= self.ttl * 2 / 3 + self.ttl / 6)
    }

    /// Whether `node` has the lowest id among the nodes heard from lately.
    fn is_lowest_live(&self, node: &str) -> bool {
        let state = self.inner.lock();
        !state
            .seen
            .iter()
            .any(|(other, at)| other.as_str() < node && at.elapsed() <= self.ttl)
    }
}

struct Inner {
    shared: Arc<Shared>,
    js: Context,
    settings: KvSettings,
    state: Store,
    cache: Store,
    state_applied: watch::Receiver<u64>,
    cache_applied: watch::Receiver<u64>,
    /// The revision of each live key as this node's view has applied it.
    /// A put is complete when its own key shows its revision here; a bare
    /// stream position would mislead right after a bucket is re-created.
    applied_keys: Mutex<HashMap<String, u64>>,
    liveness: Liveness,
    /// Rewrite every local entry (they were removed while this node lived).
    reassert: Notify,
    /// A re-assert is running (at most one at a time).
    reasserting: std::sync::atomic::AtomicBool,
    /// Whether this node's last heartbeat was accepted by NATS.
    beating: std::sync::atomic::AtomicBool,
    /// Dead nodes whose keys are still to be deleted, and when they died.
    cleanups: Mutex<HashMap<String, (Instant, Vec<Change>)>>,
    client: async_nats::Client,
}

pub(crate) struct KvStore {
    inner: Arc<Inner>,
}

/// Waits (bounded) until the watch has applied `revision`.
async fn wait_applied(applied: &watch::Receiver<u64>, revision: u64) {
    let mut applied = applied.clone();
    if tokio::time::timeout(APPLY_TIMEOUT, applied.wait_for(|r| *r >= revision))
        .await
        .is_err()
    {
        tracing::warn!(revision, "KV write not seen by the watch in time");
    }
}

impl Inner {
    fn store(&self, change: &Change) -> (&Store, &watch::Receiver<u64>) {
        match change {
            Change::Cache { .. } => (&self.cache, &self.cache_applied),
            _ => (&self.state, &self.state_applied),
        }
    }

    async fn write(&self, change: &Change) -> Result<(), String> {
        let (store, applied) = self.store(change);
        let (key, value) = encode(change);
        match value {
            Some(value) => {
                let started = Instant::now();
                let revision = store.put(&key, value).await.map_err(|e| e.to_string())?;
                let mut applied = applied.clone();
                let seen = applied.wait_for(|_| {
                    self.applied_keys
                        .lock()
                        .get(&key)
                        .is_some_and(|r| *r >= revision)
                });
                if tokio::time::timeout(APPLY_TIMEOUT, seen).await.is_err() {
                    tracing::warn!(%key, revision, "KV write not seen by the watch in time");
                }
                self.settings
                    .metrics
                    .apply_seconds
                    .observe(started.elapsed().as_secs_f64());
                Ok(())
            }
            // A purge marker with a TTL, unlike a delete marker, does not stay forever.
            None => store
                .purge_with_ttl(&key, MARKER_TTL)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Publishes this node's heartbeat with a per-message TTL.
    async fn heartbeat(&self) -> Result<(), String> {
        let subject = format!(
            "$KV.{}.{}",
            self.settings.state_bucket,
            heartbeat_key(&self.shared.node)
        );
        let mut headers = async_nats::HeaderMap::new();
        let ttl = self.settings.node_ttl.as_secs().max(1);
        headers.insert(
            async_nats::header::NATS_MESSAGE_TTL,
            ttl.to_string().as_str(),
        );
        let ack = self
            .js
            .publish_with_headers(
                subject,
                headers,
                Bytes::from(herald_protocol::unix_millis().to_string()),
            )
            .await
            .map_err(|e| e.to_string())?;
        ack.await.map(|_| ()).map_err(|e| e.to_string())
    }

    /// Rewrites every entry this node holds.
    /// Makes the store match this node's local counts: rewrites every entry
    /// it holds and deletes every entry the view still attributes to it but
    /// it no longer holds (a delete that never reached NATS).
    async fn reassert_all(&self) -> Result<(), String> {
        let local = self.shared.local.lock().await;
        let node = &self.shared.node;
        let stale: Vec<Change> = self
            .shared
            .replica
            .view
            .read()
            .owned_by(node)
            .into_iter()
            .filter(|removal| local.restore(removal).is_none())
            .collect();
        let changes = local.changes(node);
        tracing::info!(
            entries = changes.len(),
            stale = stale.len(),
            "re-asserting this node's entries"
        );
        for change in stale.iter().chain(&changes) {
            self.write(change).await?;
        }
        Ok(())
    }

    /// A dead node's entries leave every view; the lowest live node deletes the keys.
    fn node_gone(self: &Arc<Self>, node: &str) {
        if node == self.shared.node {
            tracing::warn!("this node's heartbeat lapsed; re-asserting its entries");
            self.reassert.notify_one();
            return;
        }
        self.liveness.forget(node);
        let removals = self
            .shared
            .replica
            .remove_node(node, |removal| self.origin_of(&encode(removal).0));
        if removals.is_empty() {
            return;
        }
        tracing::info!(
            node,
            entries = removals.len(),
            "node is gone; its members were removed"
        );
        self.settings.metrics.nodes_removed.inc();
        self.cleanups
            .lock()
            .insert(node.to_owned(), (Instant::now(), removals));
    }

    /// Deletes dead nodes' keys if this node is the lowest live one. Every
    /// node remembers the deaths it saw for a while, so when the node that
    /// should clean up died too, the next one in line still does it; a
    /// failed delete stays pending and is retried on the next beat.
    async fn clean_up_dead_nodes(&self) {
        let keep_for = self.settings.node_ttl * 3;
        if !self.liveness.is_lowest_live(&self.shared.node) {
            self.cleanups
                .lock()
                .retain(|_, (at, _)| at.elapsed() < keep_for);
            return;
        }
        let pending: Vec<(String, (Instant, Vec<Change>))> = self.cleanups.lock().drain().collect();
        for (node, (at, removals)) in pending {
            let mut failed = Vec::new();
            for removal in removals {
                if let Err(e) = self.write(&removal).await {
                    tracing::warn!(node, error = %e, "deleting a dead node's key failed; will retry");
                    failed.push(removal);
                }
            }
            if !failed.is_empty() {
                self.cleanups.lock().insert(node, (at, failed));
            }
        }
    }

    /// An entry of this node was removed: write it again if this node still holds it.
    fn repair(self: &Arc<Self>, removed: Change) {
        let inner = self.clone();
        tokio::spawn(async move {
            let local = inner.shared.local.lock().await;
            if let Some(restored) = local.restore(&removed) {
                tracing::info!(
                    ?restored,
                    "restoring an entry removed while this node holds it"
                );
                if let Err(e) = inner.write(&restored).await {
                    tracing::warn!(error = %e, "restoring an entry failed");
                    inner.reassert.notify_one();
                }
            }
        });
    }

    /// A removal's origin: the key and the revision of the put it removes.
    fn origin_of(&self, key: &str) -> Option<Origin> {
        let revision = *self.applied_keys.lock().get(key)?;
        Some(Origin {
            key: key.to_owned(),
            revision,
            removed: true,
        })
    }

    fn owned_by_me(&self, change: &Change) -> bool {
        match change {
            Change::Subscriptions { node, .. }
            | Change::Member { node, .. }
            | Change::Online { node, .. } => *node == self.shared.node,
            Change::Cache { .. } => false,
        }
    }

    fn on_entry(self: &Arc<Self>, entry: &kv::Entry) {
        let put = entry.operation == Operation::Put;
        if let Some(node) = heartbeat_node(&entry.key) {
            let me = self.shared.node.as_str();
            if put {
                if node == me && !self.liveness.watch_healthy(me) {
                    // The watch is current again: everyone gets a fresh window.
                    self.liveness.restart();
                }
                self.liveness.seen(&node);
            } else if node == me
                || (self.liveness.expired_on_time(&node) && self.liveness.watch_healthy(me))
            {
                self.node_gone(&node);
            }
            // Otherwise the heartbeat expired late: NATS was down, nobody
            // could beat. The sweep decides once every node had its chance.
            return;
        }
        let Some(change) = decode(&entry.key, put.then_some(&entry.value[..])) else {
            return;
        };
        let removal_of_mine = !put && self.owned_by_me(&change);
        let origin = if put {
            Some(Origin {
                key: entry.key.clone(),
                revision: entry.revision,
                removed: false,
            })
        } else {
            self.origin_of(&entry.key)
        };
        self.shared.replica.apply(change.clone(), origin);
        if removal_of_mine {
            self.repair(change);
        }
    }

    /// Beats, sweeps silent nodes, and re-asserts after losses, forever.
    async fn keep_alive(self: Arc<Self>) {
        let beat = (self.settings.node_ttl / 3).max(Duration::from_millis(200));
        let mut failing = false;
        // Set when the store may lack this node's entries; retried every beat.
        let mut reassert = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(beat) => {}
                _ = self.reassert.notified() => reassert = true,
            }
            let beat_result = self.heartbeat().await;
            self.beating
                .store(beat_result.is_ok(), std::sync::atomic::Ordering::Relaxed);
            self.settings
                .metrics
                .healthy
                .set(i64::from(beat_result.is_ok()));
            match beat_result {
                Ok(()) if failing => {
                    // NATS is back, possibly without its data.
                    failing = false;
                    tracing::info!("KV reachable again");
                    self.liveness.restart();
                    reassert = true;
                }
                Ok(()) => {}
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "heartbeat failed");
                    }
                    failing = true;
                    self.reopen_buckets().await;
                    // Silence is this node's own outage, not evidence about others.
                    continue;
                }
            }
            // Re-asserting may wait on slow writes; it runs beside the beat so
            // that heartbeats never lapse because of it.
            if reassert
                && !self
                    .reasserting
                    .swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                reassert = false;
                let inner = self.clone();
                tokio::spawn(async move {
                    inner.reopen_buckets().await;
                    if let Err(e) = inner.reassert_all().await {
                        tracing::warn!(error = %e, "re-assert failed; retrying next beat");
                        inner.reassert.notify_one();
                    }
                    inner
                        .reasserting
                        .store(false, std::sync::atomic::Ordering::SeqCst);
                });
            }
            if !self.liveness.watch_healthy(&self.shared.node) {
                continue;
            }
            let others = self.shared.replica.view.read().nodes();
            let mine = self.shared.node.clone();
            for node in self
                .liveness
                .silent(others.into_iter().filter(|n| *n != mine))
            {
                self.node_gone(&node);
            }
            self.clean_up_dead_nodes().await;
        }
    }

    /// Re-creates the buckets if NATS lost them (restart without JetStream data).
    async fn reopen_buckets(&self) {
        let s = &self.settings;
        let cache_ttl = Duration::from_millis(crate::CACHE_TTL_MS);
        for (name, max_age) in [
            (&s.state_bucket, Duration::ZERO),
            (&s.cache_bucket, cache_ttl),
        ] {
            if let Err(e) = open_bucket(&self.js, name, s.replicas, max_age).await {
                tracing::debug!(error = %e, "bucket not reopened yet");
            }
        }
    }
}

/// Folds a bucket into the view forever. After an error the watch resumes
/// after the last applied revision. A bucket that was re-created (NATS lost
/// its data) is noticed by its creation time, also when the watch merely
/// stalls, and read again from its start; the view keeps its entries until
/// their owners re-assert them or are found dead.
fn spawn_watcher(inner: Arc<Inner>, cache: bool, applied: watch::Sender<u64>) {
    tokio::spawn(async move {
        let check_every = (inner.settings.node_ttl / 3).max(Duration::from_millis(200));
        let mut watched: Option<async_nats::jetstream::stream::Info> = None;
        loop {
            let store = if cache { &inner.cache } else { &inner.state };
            let info = match bucket_info(&inner.js, &store.name).await {
                Ok(info) => info,
                Err(e) => {
                    tracing::debug!(bucket = %store.name, error = %e, "KV bucket unavailable");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if watched.as_ref().is_some_and(|w| w.created != info.created) {
                tracing::warn!(bucket = %store.name, "KV bucket was re-created; reading it from the start");
                // Only this bucket's keys: the other watcher's waits stay valid.
                inner
                    .applied_keys
                    .lock()
                    .retain(|key, _| key.starts_with("c.") != cache);
                applied.send_replace(0);
                inner.reassert.notify_one();
            }
            let created = info.created;
            watched = Some(info);
            let next = *applied.borrow() + 1;
            let watch = if next == 1 {
                store.watch_with_history(">").await
            } else {
                store.watch_all_from_revision(next).await
            };
            let mut entries = match watch {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(bucket = %store.name, error = %e, "KV watch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let opened = Instant::now();
            let mut check = tokio::time::interval(check_every);
            check.tick().await;
            loop {
                tokio::select! {
                    entry = entries.next() => match entry {
                        Some(Ok(entry)) => {
                            inner.on_entry(&entry);
                            {
                                let mut keys = inner.applied_keys.lock();
                                if entry.operation == Operation::Put {
                                    keys.insert(entry.key.clone(), entry.revision);
                                } else {
                                    keys.remove(&entry.key);
                                }
                            }
                            applied.send_replace(entry.revision);
                        }
                        Some(Err(e)) => {
                            tracing::warn!(bucket = %store.name, error = %e, "KV watch interrupted; resuming");
                            break;
                        }
                        None => break,
                    },
                    _ = check.tick() => {
                        let recreated = bucket_info(&inner.js, &store.name).await.is_ok_and(|i| i.created != created);
                        // This node's heartbeats are accepted but do not come back:
                        // the watch's consumer died with its NATS server. Do not
                        // wait for the client to notice (it takes ~10 s).
                        let stalled = inner.beating.load(std::sync::atomic::Ordering::Relaxed)
                            && !inner.liveness.watch_healthy(&inner.shared.node)
                            && opened.elapsed() > inner.settings.node_ttl;
                        if stalled {
                            tracing::warn!(bucket = %store.name, "KV watch stalled; re-opening it");
                        }
                        if recreated || stalled {
                            break;
                        }
                    }
                }
            }
            // The watch broke, most likely with the connection.
            inner.liveness.restart();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

impl KvStore {
    /// Opens the buckets, heartbeats, reads every existing entry into the
    /// view, and clears what a previous life of this node id left behind.
    pub(crate) async fn open(
        client: async_nats::Client,
        settings: &KvSettings,
        shared: Arc<Shared>,
    ) -> Result<Self, String> {
        let client_for_state = client.clone();
        let js = async_nats::jetstream::new(client);
        let state = open_bucket(
            &js,
            &settings.state_bucket,
            settings.replicas,
            Duration::ZERO,
        )
        .await?;
        let cache_ttl = Duration::from_millis(crate::CACHE_TTL_MS);
        let cache = open_bucket(&js, &settings.cache_bucket, settings.replicas, cache_ttl).await?;
        let mut lasts = Vec::new();
        for store in [&state, &cache] {
            lasts.push(bucket_info(&js, &store.name).await?.state.last_sequence);
        }
        let (state_tx, state_applied) = watch::channel(0);
        let (cache_tx, cache_applied) = watch::channel(0);
        let inner = Arc::new(Inner {
            shared,
            js,
            settings: settings.clone(),
            state,
            cache,
            state_applied,
            cache_applied,
            applied_keys: Mutex::default(),
            cleanups: Mutex::default(),
            beating: std::sync::atomic::AtomicBool::new(false),
            reasserting: std::sync::atomic::AtomicBool::new(false),
            client: client_for_state,
            liveness: Liveness::new(settings.node_ttl),
            reassert: Notify::new(),
        });
        inner.heartbeat().await?;
        spawn_watcher(inner.clone(), false, state_tx);
        spawn_watcher(inner.clone(), true, cache_tx);
        // Serve nothing before the existing entries are in the view.
        wait_applied(&inner.state_applied, lasts[0]).await;
        wait_applied(&inner.cache_applied, lasts[1]).await;
        let stale = inner
            .shared
            .replica
            .view
            .read()
            .owned_by(&inner.shared.node);
        if !stale.is_empty() {
            tracing::info!(
                entries = stale.len(),
                "removing entries left by a previous run of this node id"
            );
            for removal in stale {
                inner.write(&removal).await?;
            }
        }
        tokio::spawn(inner.clone().keep_alive());
        Ok(Self { inner })
    }

    /// Writes an entry nobody re-asserts (a cache entry), reporting failure.
    pub(crate) async fn write_checked(&self, change: &Change) -> Result<(), String> {
        self.inner
            .write(change)
            .await
            .inspect_err(|_| self.inner.settings.metrics.write_failures.inc())
    }

    /// Writes one owned entry; a put returns once this node's view has it.
    /// A failure is logged; the entry is written again when NATS is back.
    pub(crate) async fn write(&self, change: &Change) {
        if self.inner.client.connection_state() != async_nats::connection::State::Connected {
            // Do not hold up this node's sockets on an outage: the entry is
            // written by the re-assert once NATS is back.
            self.inner.settings.metrics.write_failures.inc();
            self.inner.reassert.notify_one();
            return;
        }
        if let Err(e) = self.inner.write(change).await {
            tracing::warn!(error = %e, "KV write failed");
            self.inner.settings.metrics.write_failures.inc();
            self.inner.reassert.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_every_change() {
        let changes = [
            Change::Subscriptions {
                app: "1".into(),
                channel: "a.b".into(),
                node: "n 1".into(),
                count: 3,
            },
            Change::Member {
                app: "1".into(),
                channel: "presence-x".into(),
                user: "u.1*".into(),
                node: "n".into(),
                info: Some(r#"{"name":"A"}"#.into()),
            },
            Change::Member {
                app: "1".into(),
                channel: "presence-x".into(),
                user: "u".into(),
                node: "n".into(),
                info: None,
            },
            Change::Online {
                app: "1".into(),
                user: "u".into(),
                node: "n".into(),
                online: true,
            },
            Change::Online {
                app: "1".into(),
                user: "u".into(),
                node: "n".into(),
                online: false,
            },
            Change::Cache {
                app: "1".into(),
                channel: "cache-x".into(),
                event: Some(CachedEvent {
                    event: "e".into(),
                    data: "\"1\"".into(),
                    stored_ms: 5,
                }),
            },
        ];
        for change in changes {
            let (key, value) = encode(&change);
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=.".contains(&b)),
                "{key}"
            );
            assert_eq!(decode(&key, value.as_deref()), Some(change));
        }
        assert_eq!(decode("x.1", None), None);
        assert_eq!(heartbeat_node(&heartbeat_key("gw.1")), Some("gw.1".into()));
        assert_eq!(decode(&heartbeat_key("gw"), None), None);
        assert_eq!(decode("s.1.2", None), None);
    }
}
