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

//!
//! Modules, one concern each: `keys` (how changes and heartbeats are
//! spelled as keys), `liveness` (which nodes are alive), `watch` (folding
//! the buckets into the view), `store` (writes, heartbeats, re-assertion
//! and the removal of dead nodes).

mod keys;
mod liveness;
mod store;
mod watch;
mod writer;

use crate::local::Entry;
pub use crate::metrics::KvMetrics;
use crate::{Change, Shared, StateError};
use async_nats::jetstream::kv::Store;
use async_nats::jetstream::Context;
use liveness::Liveness;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::sync::Notify;
use tokio::time::Instant;
use writer::Writer;

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

/// A dead node's key as this node's watch last applied it: removed only if
/// it still has this revision (the node may have come back and rewritten it).
type Stale = (String, u64);

/// What the watchers, the keep-alive task and the writers share.
struct Inner {
    shared: Arc<Shared>,
    js: Context,
    settings: KvSettings,
    state: Store,
    cache: Store,
    state_applied: tokio::sync::watch::Receiver<u64>,
    cache_applied: tokio::sync::watch::Receiver<u64>,
    /// The revision of each live key as this node's view has applied it.
    /// A put is complete when its own key shows its revision here; a bare
    /// stream position would mislead right after a bucket is re-created.
    applied_keys: Mutex<HashMap<String, u64>>,
    liveness: Liveness,
    /// Rewrite every local entry (they were removed while this node lived).
    reassert: Notify,
    /// A re-assert is running (at most one at a time).
    reasserting: AtomicBool,
    /// An attempt to re-create lost buckets is running (at most one).
    reopening: AtomicBool,
    /// Whether this node's last heartbeat was accepted by NATS.
    beating: AtomicBool,
    /// Dead nodes whose keys are still to be deleted, and when they died.
    cleanups: Mutex<HashMap<String, (Instant, Vec<Stale>)>>,
    client: async_nats::Client,
    /// This node's dirty entries and their writes.
    writer: Writer,
}

pub(crate) struct KvStore {
    inner: Arc<Inner>,
}

impl KvStore {
    /// Opens the buckets, heartbeats, reads every existing entry into the
    /// view, and clears what a previous life of this node id left behind.
    pub(crate) async fn open(
        client: async_nats::Client,
        settings: &KvSettings,
        shared: Arc<Shared>,
    ) -> Result<Self, StateError> {
        let client_for_state = client.clone();
        let js = async_nats::jetstream::new(client);
        let state = store::open_bucket(
            &js,
            &settings.state_bucket,
            settings.replicas,
            Duration::ZERO,
        )
        .await?;
        let cache_ttl = Duration::from_millis(crate::CACHE_TTL_MS);
        let cache =
            store::open_bucket(&js, &settings.cache_bucket, settings.replicas, cache_ttl).await?;
        let mut lasts = Vec::new();
        for store in [&state, &cache] {
            lasts.push(
                watch::bucket_info(&js, &store.name)
                    .await?
                    .state
                    .last_sequence,
            );
        }
        let (state_tx, state_applied) = tokio::sync::watch::channel(0);
        let (cache_tx, cache_applied) = tokio::sync::watch::channel(0);
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
            beating: AtomicBool::new(false),
            reasserting: AtomicBool::new(false),
            reopening: AtomicBool::new(false),
            client: client_for_state,
            liveness: Liveness::new(settings.node_ttl),
            reassert: Notify::new(),
            writer: Writer::default(),
        });
        inner.heartbeat().await?;
        inner
            .beating
            .store(true, std::sync::atomic::Ordering::Relaxed);
        inner.settings.metrics.healthy.set(1);
        watch::spawn_watcher(inner.clone(), false, state_tx);
        watch::spawn_watcher(inner.clone(), true, cache_tx);
        // Serve nothing before the existing entries are in the view.
        watch::wait_applied(&inner.state_applied, lasts[0]).await;
        watch::wait_applied(&inner.cache_applied, lasts[1]).await;
        inner.remove_previous_life().await?;
        tokio::spawn(inner.clone().keep_alive());
        tokio::spawn(inner.clone().flush());
        Ok(Self { inner })
    }

    /// Writes an entry nobody re-asserts (a cache entry), reporting failure.
    pub(crate) async fn write_checked(&self, change: &Change) -> Result<(), StateError> {
        self.inner
            .write(change)
            .await
            .inspect_err(|_| self.inner.settings.metrics.write_failures.inc())
    }

    /// Marks one of this node's entries for writing (see `writer`).
    pub(crate) fn mark(&self, entry: Entry, urgent: bool) {
        self.inner.writer.mark(entry, urgent);
    }

    /// Marks an entry for writing now; the receiver resolves once it is in
    /// this node's view, that is, cluster-consistent.
    pub(crate) fn mark_and_wait(&self, entry: Entry) -> oneshot::Receiver<()> {
        self.inner.writer.mark_and_wait(entry)
    }
}
