//! Which nodes are alive, judged from the heartbeats this node's watch
//! sees. Kept apart from the watch and the store because it is pure
//! bookkeeping over time: when silence counts as death, and when it does
//! not (right after an outage, or while this node's own watch is stalled).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// When each other node last heartbeated, as this node saw it.
pub(super) struct Liveness {
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
    pub(super) fn new(ttl: Duration) -> Self {
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

    pub(super) fn seen(&self, node: &str) {
        self.inner
            .lock()
            .seen
            .insert(node.to_owned(), Instant::now());
    }

    pub(super) fn forget(&self, node: &str) {
        self.inner.lock().seen.remove(node);
    }

    /// After an outage: every node gets a fresh window to heartbeat again.
    pub(super) fn restart(&self) {
        self.inner.lock().since = Instant::now();
    }

    /// Whether an expiry marker for `node` is evidence of its death: it
    /// came when the heartbeat this node last saw ran out (not long after,
    /// as when NATS itself was down), and not right after an outage.
    pub(super) fn expired_on_time(&self, node: &str) -> bool {
        let state = self.inner.lock();
        let settled = state.since.elapsed() > self.limit();
        let on_time = state
            .seen
            .get(node)
            .is_some_and(|at| at.elapsed() <= self.limit());
        settled && on_time
    }

    /// Nodes silent for longer than the limit within the current window.
    pub(super) fn silent(&self, candidates: impl IntoIterator<Item = String>) -> Vec<String> {
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
    pub(super) fn watch_healthy(&self, me: &str) -> bool {
        let state = self.inner.lock();
        state
            .seen
            .get(me)
            .is_some_and(|at| at.elapsed() <= self.ttl * 2 / 3 + self.ttl / 6)
    }

    /// Whether `node` has the lowest id among the nodes heard from lately.
    pub(super) fn is_lowest_live(&self, node: &str) -> bool {
        let state = self.inner.lock();
        !state
            .seen
            .iter()
            .any(|(other, at)| other.as_str() < node && at.elapsed() <= self.ttl)
    }
}
