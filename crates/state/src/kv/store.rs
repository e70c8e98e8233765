//! This node's side of the replicated store: writing its entries,
//! heartbeating, writing them all again when the store lost some
//! (re-assertion), and removing the entries of nodes found dead. Everything
//! here changes the buckets; reading them back is the watch's job.

use super::keys::{encode, heartbeat_key};
use super::watch::bucket_info;
use super::{Inner, Stale, APPLY_TIMEOUT, MARKER_TTL};
use crate::local::Entry;
use crate::{Change, StateError};
use async_nats::jetstream::kv::{self, Store};
use async_nats::jetstream::Context;
use bytes::Bytes;
use futures::StreamExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Removals in flight at once when many keys go together.
const PURGE_WINDOW: usize = 1024;

pub(super) async fn open_bucket(
    js: &Context,
    name: &str,
    replicas: usize,
    max_age: Duration,
) -> Result<Store, StateError> {
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
    .map_err(|source| StateError::OpenBucket {
        bucket: name.to_owned(),
        source,
    })
}

/// How a heartbeat went, for what the keep-alive does next.
enum Beat {
    Accepted,
    /// Accepted after failures: NATS is back, possibly without its data.
    Recovered,
    Failed,
}

impl Inner {
    /// The bucket a change goes to, and how far the watch has applied it.
    fn bucket_for(&self, change: &Change) -> (&Store, &watch::Receiver<u64>) {
        match change {
            Change::Cache { .. } => (&self.cache, &self.cache_applied),
            _ => (&self.state, &self.state_applied),
        }
    }

    pub(super) async fn write(&self, change: &Change) -> Result<(), StateError> {
        let (store, applied) = self.bucket_for(change);
        let (key, value) = encode(change);
        self.settings.metrics.writes.inc();
        match value {
            Some(value) => {
                let started = Instant::now();
                let revision = store.put(&key, value).await?;
                let mut applied = applied.clone();
                let seen = applied.wait_for(|_| {
                    self.applied_keys
                        .lock()
                        .get(&key)
                        .is_some_and(|r| *r >= revision)
                });
                if tokio::time::timeout(APPLY_TIMEOUT, seen).await.is_err() {
                    let late = format!("revision {revision} of {key}");
                    self.kv_trouble(&store.name, "KV write not seen by the watch in time", &late);
                }
                self.settings
                    .metrics
                    .apply_seconds
                    .observe(started.elapsed().as_secs_f64());
                Ok(())
            }
            // A purge marker with a TTL, unlike a delete marker, does not stay forever.
            None => Ok(store.purge_with_ttl(&key, MARKER_TTL).await?),
        }
    }

    /// How long a JetStream API request of the watch may take before it is
    /// sent again: a beat (`node_ttl / 3`).
    pub(super) fn api_wait(&self) -> Duration {
        (self.settings.node_ttl / 3).max(Duration::from_millis(200))
    }

    /// Logs a KV failure: a warning while the heartbeats get through, at
    /// debug level while the heartbeat has reported KV unavailable (that
    /// outage has its one line already).
    pub(super) fn kv_trouble(&self, bucket: &str, message: &str, error: &dyn std::fmt::Display) {
        if self.beating.load(Ordering::Relaxed) {
            tracing::warn!(bucket, %error, "{message}");
        } else {
            tracing::debug!(bucket, %error, "{message}");
        }
    }

    /// Publishes this node's heartbeat with a per-message TTL.
    pub(super) async fn heartbeat(&self) -> Result<(), StateError> {
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
            .await?;
        ack.await?;
        Ok(())
    }

    /// Makes the store match this node's local counts: marks every entry
    /// it holds, and every entry the view still attributes to it but it no
    /// longer holds (a removal that never reached NATS), for writing.
    fn reassert_all(&self) {
        let stale = self.stale_own_entries();
        let held = self.shared.local.lock().entries();
        tracing::debug!(
            entries = held.len(),
            stale = stale.len(),
            "re-asserting this node's entries"
        );
        for entry in stale.into_iter().chain(held) {
            self.writer.mark(entry, true);
        }
    }

    /// Entries the view attributes to this node that it does not hold: a
    /// removal that never reached NATS, or keys of a previous life of this
    /// node id that arrived after startup.
    fn stale_own_entries(&self) -> Vec<Entry> {
        let owned = self.shared.replica.view.read().owned_by(&self.shared.node);
        let local = self.shared.local.lock();
        owned
            .iter()
            .filter_map(Entry::of)
            .filter(|entry| !local.holds(entry))
            .collect()
    }

    /// Marks this node's stale entries for removal (see `keep_alive`).
    fn remove_stale_own_entries(&self) {
        let stale = self.stale_own_entries();
        if !stale.is_empty() {
            tracing::info!(
                entries = stale.len(),
                "removing entries this node does not hold"
            );
        }
        for entry in stale {
            self.writer.mark(entry, true);
        }
    }

    /// A dead node's entries leave every view; the lowest live node deletes the keys.
    pub(super) fn node_gone(self: &Arc<Self>, node: &str) {
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
        let applied = self.applied_keys.lock();
        let stale = removals
            .iter()
            .filter_map(|removal| {
                let key = encode(removal).0;
                applied.get(&key).map(|revision| (key, *revision))
            })
            .collect();
        drop(applied);
        self.cleanups
            .lock()
            .insert(node.to_owned(), (Instant::now(), stale));
    }

    /// Deletes dead nodes' keys if this node is the lowest live one. Every
    /// node remembers the deaths it saw for a while, so when the node that
    /// should clean up died too, the next one in line still does it; a
    /// failed delete stays pending and is retried on the next beat. A key is
    /// deleted only at the revision seen when its node died: one the node
    /// wrote again after coming back (a fast restart with the same id) is
    /// left alone, by this check and by the store's own revision check.
    async fn clean_up_dead_nodes(&self) {
        let keep_for = self.settings.node_ttl * 3;
        if !self.liveness.is_lowest_live(&self.shared.node) {
            self.cleanups
                .lock()
                .retain(|_, (at, _)| at.elapsed() < keep_for);
            return;
        }
        let pending: Vec<(String, (Instant, Vec<Stale>))> = self.cleanups.lock().drain().collect();
        for (node, (at, stale)) in pending {
            let stale = stale
                .into_iter()
                .filter(|(key, revision)| self.unchanged(key, *revision))
                .collect();
            let failed: Vec<Stale> = self
                .purge_unchanged(stale)
                .await
                .into_iter()
                .filter(|((key, revision), e)| {
                    let retry = self.unchanged(key, *revision);
                    if retry {
                        tracing::warn!(node, error = %e, "deleting a dead node's key failed; will retry");
                    }
                    retry
                })
                .map(|(stale, _)| stale)
                .collect();
            if !failed.is_empty() {
                self.cleanups.lock().insert(node, (at, failed));
            }
        }
    }

    /// Removes, before this node serves, every entry a previous run of its
    /// node id left in the view, and waits until the view no longer has
    /// them. What fails is left to the periodic removal of stale entries.
    pub(super) async fn remove_previous_life(&self) -> Result<(), StateError> {
        let owned = self.shared.replica.view.read().owned_by(&self.shared.node);
        if owned.is_empty() {
            return Ok(());
        }
        tracing::info!(
            entries = owned.len(),
            "removing entries left by a previous run of this node id"
        );
        let stale: Vec<Stale> = {
            let applied = self.applied_keys.lock();
            owned
                .iter()
                .filter_map(|change| {
                    let key = encode(change).0;
                    applied.get(&key).map(|revision| (key, *revision))
                })
                .collect()
        };
        let failed = self.purge_unchanged(stale).await;
        if let Some((_, e)) = failed.first() {
            tracing::warn!(failed = failed.len(), error = %e, "removing a previous run's entries failed; retrying later");
        }
        let last = bucket_info(&self.js, &self.settings.state_bucket)
            .await?
            .state
            .last_sequence;
        super::watch::wait_applied(&self.state_applied, last).await;
        Ok(())
    }

    /// Purges state keys, each only if it is still at the given revision,
    /// [`PURGE_WINDOW`] at a time in flight (one node may leave 100,000
    /// keys behind); returns those that failed. A key rewritten since
    /// fails the revision check.
    pub(super) async fn purge_unchanged(&self, keys: Vec<Stale>) -> Vec<(Stale, StateError)> {
        let purges = keys.into_iter().map(|(key, revision)| async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("KV-Operation", "PURGE");
            headers.insert(async_nats::header::NATS_ROLLUP, "sub");
            headers.insert(
                async_nats::header::NATS_MESSAGE_TTL,
                MARKER_TTL.as_secs().to_string().as_str(),
            );
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                revision.to_string().as_str(),
            );
            let subject = format!("$KV.{}.{key}", self.settings.state_bucket);
            self.settings.metrics.writes.inc();
            let acked = match self
                .js
                .publish_with_headers(subject, headers, Bytes::new())
                .await
            {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            acked.err().map(|e| ((key, revision), e.into()))
        });
        futures::stream::iter(purges)
            .buffer_unordered(PURGE_WINDOW)
            .filter_map(std::future::ready)
            .collect()
            .await
    }

    /// Whether this node's view still has `key` at `revision`.
    fn unchanged(&self, key: &str, revision: u64) -> bool {
        self.applied_keys.lock().get(key) == Some(&revision)
    }

    /// An entry of this node was removed: write it again if this node still holds it.
    pub(super) fn repair(&self, removed: &Change) {
        let Some(entry) = Entry::of(removed) else {
            return;
        };
        if self.shared.local.lock().holds(&entry) {
            tracing::info!(
                ?entry,
                "restoring an entry removed while this node holds it"
            );
            self.writer.mark(entry, true);
        }
    }

    /// Beats, sweeps silent nodes, and re-asserts after losses, forever.
    pub(super) async fn keep_alive(self: Arc<Self>) {
        let beat = (self.settings.node_ttl / 3).max(Duration::from_millis(200));
        let mut failing = false;
        // Set when the store may lack this node's entries; retried every beat.
        let mut reassert = false;
        let mut beats: u64 = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(beat) => {}
                _ = self.reassert.notified() => reassert = true,
            }
            match self.beat(&mut failing).await {
                Beat::Accepted => {}
                Beat::Recovered => reassert = true,
                // Silence is this node's own outage, not evidence about others.
                Beat::Failed => continue,
            }
            if reassert && self.start_reassert() {
                reassert = false;
            }
            // Once per node_ttl: an own key this node does not hold is gone
            // within two node_ttl of appearing.
            beats += 1;
            if beats.is_multiple_of(3) {
                self.remove_stale_own_entries();
            }
            if self.liveness.watch_healthy(&self.shared.node) {
                self.sweep().await;
            }
        }
    }

    /// Heartbeats once, reporting health; `failing` carries over between beats.
    /// One line per change of state: while JetStream is unavailable
    /// (no quorum, a stream leader being elected, NATS down) nothing else
    /// about KV is logged above debug level.
    async fn beat(self: &Arc<Self>, failing: &mut bool) -> Beat {
        let result = self.heartbeat().await;
        self.beating.store(result.is_ok(), Ordering::Relaxed);
        self.settings.metrics.healthy.set(i64::from(result.is_ok()));
        match result {
            Ok(()) if *failing => {
                *failing = false;
                tracing::info!("cluster state (JetStream KV) available again; re-asserting this node's entries");
                self.liveness.restart();
                Beat::Recovered
            }
            Ok(()) => Beat::Accepted,
            Err(e) => {
                if !*failing {
                    tracing::warn!(error = %e, "cluster state (JetStream KV) unavailable; presence is answered from this node's own view until it returns");
                }
                *failing = true;
                self.reopen_buckets_soon();
                Beat::Failed
            }
        }
    }

    /// Starts a re-assert unless one is running; whether it started.
    /// Re-asserting may wait on slow writes; it runs beside the beat so
    /// that heartbeats never lapse because of it.
    fn start_reassert(self: &Arc<Self>) -> bool {
        if self.reasserting.swap(true, Ordering::SeqCst) {
            return false;
        }
        let inner = self.clone();
        tokio::spawn(async move {
            // A write that fails asks for the next re-assert itself.
            inner.reassert_all();
            inner.reasserting.store(false, Ordering::SeqCst);
        });
        true
    }

    /// Declares the nodes silent for too long dead, and deletes dead nodes' keys.
    async fn sweep(self: &Arc<Self>) {
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

    /// Re-creates the buckets if NATS lost them (restart without JetStream
    /// data), in the background and one attempt at a time: while a stream
    /// leader is being elected these requests wait for their timeout, and
    /// the heartbeats must go on meanwhile to notice the new leader.
    fn reopen_buckets_soon(self: &Arc<Self>) {
        if self.reopening.swap(true, Ordering::SeqCst) {
            return;
        }
        let inner = self.clone();
        tokio::spawn(async move {
            let s = &inner.settings;
            let cache_ttl = Duration::from_millis(crate::CACHE_TTL_MS);
            for (name, max_age) in [
                (&s.state_bucket, Duration::ZERO),
                (&s.cache_bucket, cache_ttl),
            ] {
                if let Err(e) = open_bucket(&inner.js, name, s.replicas, max_age).await {
                    tracing::debug!(error = %e, "bucket not reopened yet");
                }
            }
            inner.reopening.store(false, Ordering::SeqCst);
        });
    }
}
