//! Reading the buckets back: each bucket is watched from the start and its
//! entries are folded into this node's view in stream order, the same on
//! every node. Heartbeats feed [`Liveness`](super::liveness::Liveness); a
//! removal of one of this node's own entries is repaired. The watch is
//! re-opened when it breaks, stalls, or its bucket is re-created.

use super::keys::{decode, heartbeat_node};
use super::{Inner, APPLY_TIMEOUT};
use crate::{Change, Origin, StateError};
use async_nats::jetstream::kv::{self, Operation, Store};
use async_nats::jetstream::stream;
use futures::StreamExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The longest a watch's JetStream request is waited for (the client's own timeout).
const MAX_API_WAIT: Duration = Duration::from_secs(5);
/// The pause before a failed or broken watch is opened again.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// The current (not cached) state of a bucket's stream.
pub(super) async fn bucket_info(
    js: &async_nats::jetstream::Context,
    bucket: &str,
) -> Result<stream::Info, StateError> {
    let unavailable = |source: async_nats::Error| StateError::BucketUnavailable {
        bucket: bucket.to_owned(),
        source,
    };
    let stream = js
        .get_stream(format!("KV_{bucket}"))
        .await
        .map_err(|e| unavailable(e.into()))?;
    stream.get_info().await.map_err(|e| unavailable(e.into()))
}

/// Waits (bounded) until the watch has applied `revision`.
pub(super) async fn wait_applied(applied: &watch::Receiver<u64>, revision: u64) {
    let mut applied = applied.clone();
    if tokio::time::timeout(APPLY_TIMEOUT, applied.wait_for(|r| *r >= revision))
        .await
        .is_err()
    {
        tracing::warn!(revision, "KV write not seen by the watch in time");
    }
}

/// Folds a bucket into the view forever. After an error the watch resumes
/// after the last applied revision. A bucket that was re-created (NATS lost
/// its data) is noticed by its creation time, also when the watch merely
/// stalls, and read again from its start; the view keeps its entries until
/// their owners re-assert them or are found dead.
pub(super) fn spawn_watcher(inner: Arc<Inner>, cache: bool, applied: watch::Sender<u64>) {
    tokio::spawn(async move {
        let store = if cache { &inner.cache } else { &inner.state };
        let mut watched: Option<stream::Info> = None;
        let mut failures: u32 = 0;
        loop {
            // A request sent while JetStream elects its leaders goes
            // unanswered: each attempt gives up a beat later than the last,
            // up to the client's own timeout, and the next one goes soon.
            let wait = (inner.api_wait() * (failures + 1)).min(MAX_API_WAIT);
            failures += 1;
            let info = tokio::time::timeout(wait, bucket_info(&inner.js, &store.name));
            let info = match info
                .await
                .unwrap_or_else(|_| Err(StateError::timed_out(&store.name)))
            {
                Ok(info) => info,
                Err(e) => {
                    tracing::debug!(bucket = %store.name, error = %e, "KV bucket unavailable");
                    tokio::time::sleep(RETRY_AFTER).await;
                    continue;
                }
            };
            if watched.as_ref().is_some_and(|w| w.created != info.created) {
                inner.bucket_recreated(store, cache, &applied);
            }
            let current = &*watched.insert(info);
            let Some(entries) = inner.open_watch(store, &applied, wait).await else {
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            };
            failures = 0;
            inner.follow(store, entries, current, &applied).await;
            // The watch broke, most likely with the connection.
            inner.liveness.restart();
            tokio::time::sleep(RETRY_AFTER).await;
        }
    });
}

impl Inner {
    /// Watches `store` from just after the last applied revision (from its
    /// start the first time); None after logging a failure.
    async fn open_watch(
        &self,
        store: &Store,
        applied: &watch::Sender<u64>,
        wait: Duration,
    ) -> Option<kv::Watch> {
        let next = *applied.borrow() + 1;
        let watch = async {
            if next == 1 {
                store.watch_with_history(">").await
            } else {
                store.watch_all_from_revision(next).await
            }
        };
        match tokio::time::timeout(wait, watch).await {
            Ok(Ok(watch)) => Some(watch),
            Ok(Err(e)) => {
                self.kv_trouble(&store.name, "KV watch failed; retrying", &e);
                None
            }
            Err(_) => {
                self.kv_trouble(&store.name, "KV watch failed; retrying", &"timed out");
                None
            }
        }
    }

    /// The bucket lost its data: it is read again from its start, and this
    /// node writes its entries again.
    fn bucket_recreated(&self, store: &Store, cache: bool, applied: &watch::Sender<u64>) {
        tracing::warn!(bucket = %store.name, "KV bucket was re-created; reading it from the start");
        // Only this bucket's keys: the other watcher's waits stay valid.
        self.applied_keys
            .lock()
            .retain(|key, _| key.starts_with("c.") != cache);
        applied.send_replace(0);
        self.reassert.notify_one();
    }

    /// Applies the watch's entries until it breaks, stalls, or its bucket
    /// (`watched`) is re-created.
    async fn follow(
        self: &Arc<Self>,
        store: &Store,
        mut entries: kv::Watch,
        watched: &stream::Info,
        applied: &watch::Sender<u64>,
    ) {
        let check_every = (self.settings.node_ttl / 3).max(Duration::from_millis(200));
        let opened = Instant::now();
        let mut check = tokio::time::interval(check_every);
        check.tick().await;
        loop {
            tokio::select! {
                entry = entries.next() => match entry {
                    Some(Ok(entry)) => self.apply(&entry, applied),
                    Some(Err(e)) => {
                        self.kv_trouble(&store.name, "KV watch interrupted; resuming", &e);
                        return;
                    }
                    None => return,
                },
                _ = check.tick() => {
                    if self.watch_outdated(store, watched, opened).await {
                        return;
                    }
                }
            }
        }
    }

    /// Whether the watch must be re-opened: it stalled, or its bucket was
    /// re-created. The stall is judged first and without asking NATS: while
    /// a stream leader is being elected, asking waits for a timeout.
    async fn watch_outdated(&self, store: &Store, watched: &stream::Info, opened: Instant) -> bool {
        // This node's heartbeats are accepted but do not come back:
        // the watch's consumer died with its NATS server. Do not
        // wait for the client to notice (it takes ~10 s).
        let stalled = self.beating.load(Ordering::Relaxed)
            && !self.liveness.watch_healthy(&self.shared.node)
            && opened.elapsed() > self.settings.node_ttl;
        if stalled {
            tracing::warn!(bucket = %store.name, "KV watch stalled; re-opening it");
            return true;
        }
        let info = tokio::time::timeout(self.api_wait(), bucket_info(&self.js, &store.name));
        info.await
            .is_ok_and(|i| i.is_ok_and(|i| i.created != watched.created))
    }

    /// Folds one entry into the view and records how far the watch got.
    fn apply(self: &Arc<Self>, entry: &kv::Entry, applied: &watch::Sender<u64>) {
        self.on_entry(entry);
        {
            let mut keys = self.applied_keys.lock();
            if entry.operation == Operation::Put {
                keys.insert(entry.key.clone(), entry.revision);
            } else {
                keys.remove(&entry.key);
            }
        }
        applied.send_replace(entry.revision);
    }

    /// A removal's origin: the key and the revision of the put it removes.
    pub(super) fn origin_of(&self, key: &str) -> Option<Origin> {
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

    /// What an entry means: a heartbeat feeds liveness (an expired one may
    /// mean a dead node); any other entry is a change to the view.
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
            self.repair(&change);
        }
    }
}
