//! The reconnect storm on a cluster (issue 16, item 5).
//!
//! When a gateway dies, every client it held reconnects at once to the
//! survivors, and each private and presence channel of those clients needs
//! a fresh authorization from the application (a signature covers the
//! socket id, which is new with every connection). What users see is how
//! long that storm takes; what the application sees is its auth endpoint
//! hit once per channel per reconnect (more would mean refused and retried
//! subscriptions); what presence users see is whether member lists are
//! right once the dead node's entries are gone. This module plays the two
//! parts the server does not: the clients (raw sockets, retrying the way
//! pusher-js does after an abnormal close: a fixed 1 s, then the next
//! address) and a Laravel-like `/broadcasting/auth` endpoint, a real HTTP
//! server on loopback that counts every request (`auth`); `convergence`
//! checks the cluster state afterwards.

mod auth;
mod convergence;

use crate::{
    connect_raw, cpu_time, generator_load, percentile, Api, GeneratorLoad, RawFrames, SUBSCRIBED,
};
use anyhow::{anyhow, bail, Context};
use auth::{AuthClient, AuthEndpoint, AuthRequest, Signer};
use convergence::converge;
pub use convergence::Convergence;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

/// How often the HTTP API is asked whether the cluster state converged.
const POLL: Duration = Duration::from_millis(50);

/// One storm: who connects where, which gateway dies, how long to wait.
pub struct StormConfig {
    /// Gateways; client `i` first connects to `ws[i % len]`. `ws[0]` is the
    /// gateway of `kill_pid`: its clients are the ones that reconnect.
    pub ws: Vec<SocketAddr>,
    /// The HTTP API (an ingest), also the app's id, key and secret.
    pub api: Api,
    pub clients: usize,
    /// Clients per channel group: each group shares one public, one
    /// private and one presence channel.
    pub members_per_channel: usize,
    /// Initial connections opened at once (reconnects are not limited:
    /// clients of a dead gateway do not coordinate).
    pub concurrency: usize,
    pub kill_pid: u32,
    /// pusher-js waits 1 s after an abnormal close before it reconnects.
    pub reconnect_delay: Duration,
    /// Bound on each wait after the kill (resubscription, convergence).
    pub deadline: Duration,
    /// The generator's threads (to tell whether it was saturated).
    pub threads: usize,
}

/// The three channels of client `i`: public, private, presence.
fn channels_of(client: usize, members_per_channel: usize) -> [String; 3] {
    let group = client / members_per_channel;
    [
        format!("storm-{group}"),
        format!("private-storm-{group}"),
        format!("presence-storm-{group}"),
    ]
}

fn user_id(client: usize) -> String {
    format!("u{client}")
}

// ---------------------------------------------------------------------------
// The clients

/// What every client task shares.
struct ClientContext {
    ws: Vec<SocketAddr>,
    key: String,
    members_per_channel: usize,
    auth: AuthClient,
    initial: Semaphore,
    reconnect_delay: Duration,
    /// Each client's presence member list as pusher-js would keep it.
    members: Vec<Mutex<BTreeSet<String>>>,
}

/// What a client task reports; `attempt` 0 is its first connection.
enum ClientEvent {
    Subscribed {
        client: usize,
        attempt: u32,
        socket_id: String,
        at: Instant,
    },
    Closed {
        client: usize,
        at: Instant,
    },
    Failed {
        client: usize,
        attempt: u32,
        error: String,
    },
}

/// Connects, subscribes the public channel, authorizes the private and
/// presence channels (both requests at once, as pusher-js does) and
/// subscribes them; returns once all three succeeded, with the presence
/// channel's member ids from its `subscription_succeeded`.
async fn join(
    ctx: &ClientContext,
    client: usize,
    server: SocketAddr,
) -> anyhow::Result<(RawFrames, String, BTreeSet<String>)> {
    let (mut frames, socket_id) = connect_raw(server, &ctx.key, client).await?;
    let [public, private, presence] = channels_of(client, ctx.members_per_channel);
    frames.send_subscribe(&public, None).await?;
    let (private_auth, presence_auth) = tokio::try_join!(
        ctx.auth.authorize(client, &socket_id, &private),
        ctx.auth.authorize(client, &socket_id, &presence),
    )?;
    frames.send_subscribe(&private, Some(&private_auth)).await?;
    frames
        .send_subscribe(&presence, Some(&presence_auth))
        .await?;
    let mut members = None;
    for channel in [public, private, presence] {
        let frame = frames
            .wait_for(SUBSCRIBED)
            .await
            .with_context(|| format!("subscriptions on {server} ({channel} among them)"))?;
        members = members.or(presence_snapshot(&frame)?);
    }
    let members = members.ok_or_else(|| anyhow!("no presence snapshot"))?;
    Ok((frames, socket_id, members))
}

/// The member ids in a presence channel's `subscription_succeeded`; None
/// for other channels.
fn presence_snapshot(frame: &[u8]) -> anyhow::Result<Option<BTreeSet<String>>> {
    let v: serde_json::Value = serde_json::from_slice(frame)?;
    if !v["channel"]
        .as_str()
        .is_some_and(|c| c.starts_with("presence-"))
    {
        return Ok(None);
    }
    let data: serde_json::Value = serde_json::from_str(v["data"].as_str().unwrap_or("{}"))?;
    let ids = data["presence"]["ids"]
        .as_array()
        .ok_or_else(|| anyhow!("no presence ids in {v}"))?;
    Ok(Some(
        ids.iter()
            .filter_map(|id| id.as_str().map(String::from))
            .collect(),
    ))
}

/// Applies a `pusher_internal:member_added` / `member_removed` frame to a
/// member list, as pusher-js does (a client has one presence channel).
fn apply_member_event(frame: &[u8], members: &mut BTreeSet<String>) {
    let has = |what: &[u8]| frame.windows(what.len()).any(|w| w == what);
    let (added, removed) = (
        has(b"pusher_internal:member_added"),
        has(b"pusher_internal:member_removed"),
    );
    if !added && !removed {
        return;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(frame) else {
        return;
    };
    let data: serde_json::Value =
        serde_json::from_str(v["data"].as_str().unwrap_or("{}")).unwrap_or_default();
    if let Some(user) = data["user_id"].as_str() {
        if added {
            members.insert(user.to_owned());
        } else {
            members.remove(user);
        }
    }
}

/// One client, for as long as the run lasts (the run aborts it): join,
/// keep its member list until the server closes, wait the reconnect
/// delay, join the next address; a failed attempt waits the delay too.
async fn client_loop(
    ctx: Arc<ClientContext>,
    client: usize,
    events: mpsc::UnboundedSender<ClientEvent>,
) {
    let mut server = client % ctx.ws.len();
    for attempt in 0u32.. {
        let permit = match attempt {
            0 => ctx.initial.acquire().await.ok(),
            _ => None,
        };
        let joined = join(&ctx, client, ctx.ws[server]).await;
        drop(permit);
        let event = match joined {
            Ok((mut frames, socket_id, snapshot)) => {
                *ctx.members[client].lock().expect("members") = snapshot;
                let _ = events.send(ClientEvent::Subscribed {
                    client,
                    attempt,
                    socket_id,
                    at: Instant::now(),
                });
                let on_text = |text: &[u8]| {
                    apply_member_event(text, &mut ctx.members[client].lock().expect("members"))
                };
                while let Ok(true) = frames.read_texts(on_text).await {}
                ClientEvent::Closed {
                    client,
                    at: Instant::now(),
                }
            }
            Err(e) => ClientEvent::Failed {
                client,
                attempt,
                error: format!("{e:#}"),
            },
        };
        let _ = events.send(event);
        server = (server + 1) % ctx.ws.len();
        tokio::time::sleep(ctx.reconnect_delay).await;
    }
}

// ---------------------------------------------------------------------------
// The run

/// Everything a storm measured.
pub struct StormReport {
    pub clients: usize,
    pub connect_secs: f64,
    /// Clients of the killed gateway.
    pub affected: usize,
    pub resubscribed: usize,
    /// Affected clients not subscribed again within the deadline.
    pub failed: usize,
    /// Closes seen by clients of the surviving gateway(s).
    pub unexpected_closes: usize,
    pub failed_attempts: usize,
    pub first_error: Option<String>,
    /// Kill to the last client's close being seen.
    pub last_close_ms: f64,
    /// Per affected client: kill to all three channels subscribed again.
    pub resubscribe_ms: Vec<u64>,
    pub auth: AuthAudit,
    pub convergence: Convergence,
    pub generator: GeneratorLoad,
}

impl StormReport {
    /// Kill to the last affected client fully resubscribed.
    pub fn storm_ms(&self) -> u64 {
        percentile(&self.resubscribe_ms, 1.0)
    }

    /// Every check that is not a timing: no failed client, exact auth
    /// counts, exact cluster state.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.failed > 0 {
            out.push(format!("{} clients not subscribed again", self.failed));
        }
        if self.unexpected_closes > 0 {
            out.push(format!(
                "{} clients of the survivor were closed",
                self.unexpected_closes
            ));
        }
        if !self.auth.exact() {
            out.push("auth requests per channel per connection were not exactly 1".into());
        }
        let c = &self.convergence;
        if c.exact_ms.is_none() {
            out.push(format!(
                "cluster state not exact within the deadline ({} clients that reconnected and {} that stayed have a wrong member list)",
                c.wrong_lists_reconnected, c.wrong_lists_stayed
            ));
        }
        if c.users_regressed {
            out.push("a presence member list was exact, then not".into());
        }
        out
    }

    pub fn print(&self) {
        let p = |q| percentile(&self.resubscribe_ms, q);
        let ms = |v: Option<f64>| v.map_or("never".to_owned(), |v| format!("{v:.0} ms"));
        println!(
            "storm: {} clients subscribed (public + private + presence) in {:.2}s; killed the gateway of {} of them",
            self.clients, self.connect_secs, self.affected
        );
        println!(
            "resubscribed {} of {} ({} failed, {} failed attempts, {} unexpected closes); kill -> last close seen {:.0} ms; \
             kill -> resubscribed p50 {} ms p99 {} ms max {} ms (target <= 5000 ms: {})",
            self.resubscribed, self.affected, self.failed, self.failed_attempts, self.unexpected_closes,
            self.last_close_ms, p(0.5), p(0.99), p(1.0),
            if self.failed == 0 && self.storm_ms() <= 5000 { "met" } else { "MISSED" }
        );
        if let Some(e) = &self.first_error {
            println!("first error: {e}");
        }
        let a = &self.auth;
        println!(
            "auth: {} requests ({} before the kill, {} after); per channel per reconnect min {} max {} over {} reconnects; \
             {} requests after the kill from clients that stayed",
            a.total, a.before_kill, a.after_kill, a.per_reconnect_min, a.per_connection_max, a.reconnects, a.from_stayed_after_kill
        );
        let c = &self.convergence;
        println!(
            "cluster state after the kill: HTTP API member lists exact at {}, subscription counts exact at {}, \
             every client's own member list exact at {}, all at {}{}",
            ms(c.users_exact_ms), ms(c.counts_exact_ms), ms(c.clients_exact_ms), ms(c.exact_ms),
            if c.users_regressed { " (an API member list regressed after being exact)" } else { "" }
        );
        if c.exact_ms.is_none() {
            println!(
                "wrong client member lists at the end: {} of clients that reconnected, {} of clients that stayed",
                c.wrong_lists_reconnected, c.wrong_lists_stayed
            );
        }
        crate::report_load(&self.generator);
        println!(
            "{}",
            serde_json::json!({
                "mode": "storm", "clients": self.clients, "connect_secs": self.connect_secs,
                "affected": self.affected, "resubscribed": self.resubscribed, "failed": self.failed,
                "failed_attempts": self.failed_attempts, "unexpected_closes": self.unexpected_closes,
                "last_close_ms": self.last_close_ms,
                "resubscribe_ms": { "p50": p(0.5), "p99": p(0.99), "max": p(1.0) },
                "auth": { "total": a.total, "before_kill": a.before_kill, "after_kill": a.after_kill,
                          "reconnects": a.reconnects, "per_reconnect_min": a.per_reconnect_min,
                          "per_connection_max": a.per_connection_max, "from_stayed_after_kill": a.from_stayed_after_kill,
                          "exact": a.exact() },
                "convergence_ms": { "users": c.users_exact_ms, "counts": c.counts_exact_ms,
                                    "client_lists": c.clients_exact_ms, "all": c.exact_ms },
                "wrong_client_lists": { "reconnected": c.wrong_lists_reconnected, "stayed": c.wrong_lists_stayed },
                "users_regressed": c.users_regressed,
                "generator_cores": self.generator.cores_used, "generator_saturated": self.generator.saturated,
            })
        );
    }
}

/// Connects every client, kills the gateway, measures the storm, then
/// waits for the cluster state to be exact and audits the auth requests.
pub async fn run(cfg: StormConfig) -> anyhow::Result<StormReport> {
    if cfg.ws.len() < 2 || cfg.members_per_channel == 0 {
        bail!("a storm needs 2 or more --ws gateways and members per channel > 0");
    }
    let endpoint = AuthEndpoint::start(Signer {
        key: cfg.api.key.clone(),
        secret: cfg.api.secret.clone(),
        members_per_channel: cfg.members_per_channel,
    })
    .await?;
    let ctx = Arc::new(ClientContext {
        ws: cfg.ws.clone(),
        key: cfg.api.key.clone(),
        members_per_channel: cfg.members_per_channel,
        auth: AuthClient::new(endpoint.addr),
        initial: Semaphore::new(cfg.concurrency.max(1)),
        reconnect_delay: cfg.reconnect_delay,
        members: (0..cfg.clients).map(|_| Mutex::default()).collect(),
    });
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let connect_start = Instant::now();
    let tasks: Vec<_> = (0..cfg.clients)
        .map(|i| tokio::spawn(client_loop(ctx.clone(), i, events_tx.clone())))
        .collect();
    let result = storm(&cfg, &mut events, connect_start, &endpoint, &ctx.members).await;
    tasks.iter().for_each(JoinHandle::abort);
    result
}

async fn storm(
    cfg: &StormConfig,
    events: &mut mpsc::UnboundedReceiver<ClientEvent>,
    connect_start: Instant,
    endpoint: &AuthEndpoint,
    members: &[Mutex<BTreeSet<String>>],
) -> anyhow::Result<StormReport> {
    wait_all_subscribed(events, cfg.clients).await?;
    let connect_secs = connect_start.elapsed().as_secs_f64();
    let affected: BTreeSet<usize> = (0..cfg.clients).step_by(cfg.ws.len()).collect();
    let cpu_start = cpu_time();
    let kill_at = Instant::now();
    let pid = rustix::process::Pid::from_raw(cfg.kill_pid as i32)
        .ok_or_else(|| anyhow!("bad pid {}", cfg.kill_pid))?;
    rustix::process::kill_process(pid, rustix::process::Signal::KILL)
        .with_context(|| format!("kill -9 {}", cfg.kill_pid))?;
    let outcome = wait_resubscribed(events, &affected, kill_at, cfg.deadline).await;
    let generator = generator_load(cpu_time() - cpu_start, kill_at.elapsed(), cfg.threads);
    let convergence = converge(
        &cfg.api,
        members,
        &outcome.sockets,
        cfg.members_per_channel,
        kill_at,
        cfg.deadline,
    )
    .await?;
    let log = endpoint.log.lock().expect("auth log");
    let auth = AuthAudit::of(&log, kill_at, &outcome.sockets, cfg.members_per_channel);
    let failed = affected
        .iter()
        .filter(|c| !outcome.sockets.contains_key(c))
        .count();
    Ok(StormReport {
        clients: cfg.clients,
        connect_secs,
        affected: affected.len(),
        resubscribed: affected.len() - failed,
        failed,
        unexpected_closes: outcome.unexpected_closes,
        failed_attempts: outcome.failed_attempts,
        first_error: outcome.first_error,
        last_close_ms: outcome.last_close.map_or(0.0, |at| ms_since(kill_at, at)),
        resubscribe_ms: outcome.resubscribe_ms,
        auth,
        convergence,
        generator,
    })
}

fn ms_since(start: Instant, at: Instant) -> f64 {
    at.saturating_duration_since(start).as_secs_f64() * 1000.0
}

/// The initial connections: all subscribed, or the first failure.
async fn wait_all_subscribed(
    events: &mut mpsc::UnboundedReceiver<ClientEvent>,
    clients: usize,
) -> anyhow::Result<()> {
    let mut subscribed = 0;
    while subscribed < clients {
        match events.recv().await {
            Some(ClientEvent::Subscribed { .. }) => subscribed += 1,
            Some(ClientEvent::Failed { client, error, .. }) => {
                bail!("client {client} could not subscribe before the kill: {error}")
            }
            Some(ClientEvent::Closed { client, .. }) => {
                bail!("client {client} was closed before the kill")
            }
            None => bail!("the clients stopped"),
        }
    }
    Ok(())
}

/// What happened between the kill and the last resubscription.
struct StormOutcome {
    /// Client -> socket id of its connection after the kill.
    sockets: HashMap<usize, String>,
    resubscribe_ms: Vec<u64>,
    last_close: Option<Instant>,
    unexpected_closes: usize,
    failed_attempts: usize,
    first_error: Option<String>,
}

/// Collects client events until every client that was closed (those of
/// the killed gateway, and any other) is subscribed again, or `deadline`.
async fn wait_resubscribed(
    events: &mut mpsc::UnboundedReceiver<ClientEvent>,
    affected: &BTreeSet<usize>,
    kill_at: Instant,
    deadline: Duration,
) -> StormOutcome {
    let mut out = StormOutcome {
        sockets: HashMap::new(),
        resubscribe_ms: Vec::with_capacity(affected.len()),
        last_close: None,
        unexpected_closes: 0,
        failed_attempts: 0,
        first_error: None,
    };
    let mut waiting = affected.clone();
    let until = tokio::time::Instant::from_std(kill_at + deadline);
    while !waiting.is_empty() {
        let Ok(Some(event)) = tokio::time::timeout_at(until, events.recv()).await else {
            break;
        };
        match event {
            ClientEvent::Closed { client, at } => {
                out.last_close = Some(at);
                if !affected.contains(&client) {
                    out.unexpected_closes += 1;
                    waiting.insert(client);
                }
            }
            ClientEvent::Subscribed {
                client,
                attempt,
                socket_id,
                at,
            } if attempt > 0 => {
                waiting.remove(&client);
                out.resubscribe_ms.push(ms_since(kill_at, at) as u64);
                out.sockets.insert(client, socket_id);
            }
            ClientEvent::Subscribed { .. } => {}
            ClientEvent::Failed {
                client,
                attempt,
                error,
            } => {
                out.failed_attempts += 1;
                out.first_error
                    .get_or_insert_with(|| format!("client {client}, attempt {attempt}: {error}"));
            }
        }
    }
    out.resubscribe_ms.sort_unstable();
    out
}

/// The auth requests, checked against "exactly one per private/presence
/// channel per connection, none from clients that stayed connected".
pub struct AuthAudit {
    pub total: usize,
    pub before_kill: usize,
    pub after_kill: usize,
    /// Successful reconnects (connections after the kill) checked.
    pub reconnects: usize,
    /// Fewest requests one channel of a reconnect got (must be 1).
    pub per_reconnect_min: u32,
    /// Most requests one (client, socket, channel) got (must be 1).
    pub per_connection_max: u32,
    pub from_stayed_after_kill: usize,
}

impl AuthAudit {
    fn of(
        log: &[AuthRequest],
        kill_at: Instant,
        reconnected: &HashMap<usize, String>,
        members_per_channel: usize,
    ) -> Self {
        let mut per_key: HashMap<(usize, &str, &str), u32> = HashMap::new();
        for r in log {
            *per_key
                .entry((r.client, &r.socket_id, &r.channel))
                .or_default() += 1;
        }
        let after: Vec<&AuthRequest> = log.iter().filter(|r| r.at >= kill_at).collect();
        let per_reconnect_min = reconnected
            .iter()
            .flat_map(|(&client, socket)| {
                let [_, private, presence] = channels_of(client, members_per_channel);
                [private, presence].map(|ch| {
                    per_key
                        .get(&(client, socket.as_str(), ch.as_str()))
                        .copied()
                        .unwrap_or(0)
                })
            })
            .min()
            .unwrap_or(0);
        Self {
            total: log.len(),
            before_kill: log.len() - after.len(),
            after_kill: after.len(),
            reconnects: reconnected.len(),
            per_reconnect_min,
            per_connection_max: per_key.values().copied().max().unwrap_or(0),
            from_stayed_after_kill: after
                .iter()
                .filter(|r| !reconnected.contains_key(&r.client))
                .count(),
        }
    }

    pub fn exact(&self) -> bool {
        self.per_connection_max == 1
            && (self.reconnects == 0 || self.per_reconnect_min == 1)
            && self.from_stayed_after_kill == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_lists_follow_snapshot_and_events() {
        let snapshot = br#"{"event":"pusher_internal:subscription_succeeded","channel":"presence-storm-0","data":"{\"presence\":{\"ids\":[\"u1\",\"u2\"],\"hash\":{},\"count\":2}}"}"#;
        let mut members = presence_snapshot(snapshot).unwrap().unwrap();
        assert_eq!(members, BTreeSet::from(["u1".to_owned(), "u2".to_owned()]));
        let public = br#"{"event":"pusher_internal:subscription_succeeded","channel":"storm-0","data":"{}"}"#;
        assert_eq!(presence_snapshot(public).unwrap(), None);
        apply_member_event(br#"{"event":"pusher_internal:member_added","channel":"presence-storm-0","data":"{\"user_id\":\"u3\",\"user_info\":{}}"}"#, &mut members);
        apply_member_event(br#"{"event":"pusher_internal:member_removed","channel":"presence-storm-0","data":"{\"user_id\":\"u1\"}"}"#, &mut members);
        apply_member_event(
            br#"{"event":"other","data":"{\"user_id\":\"u9\"}"}"#,
            &mut members,
        );
        assert_eq!(members, BTreeSet::from(["u2".to_owned(), "u3".to_owned()]));
    }

    #[test]
    fn groups_share_channels() {
        assert_eq!(channels_of(0, 100), channels_of(99, 100));
        assert_eq!(channels_of(100, 100)[2], "presence-storm-1");
    }

    #[test]
    fn audit_counts_requests_per_connection_and_channel() {
        let start = Instant::now();
        let later = start + Duration::from_secs(1);
        let req = |client, socket: &str, channel: &str, at| AuthRequest {
            client,
            socket_id: socket.into(),
            channel: channel.into(),
            at,
        };
        let mut log = vec![
            req(0, "1.1", "private-storm-0", start),
            req(0, "1.1", "presence-storm-0", start),
            req(1, "1.2", "private-storm-0", start),
            req(1, "1.2", "presence-storm-0", start),
            req(0, "2.1", "private-storm-0", later),
            req(0, "2.1", "presence-storm-0", later),
        ];
        let reconnected = HashMap::from([(0, "2.1".to_owned())]);
        let audit = AuthAudit::of(&log, later, &reconnected, 100);
        assert!(audit.exact());
        assert_eq!(
            (audit.before_kill, audit.after_kill, audit.reconnects),
            (4, 2, 1)
        );
        log.push(req(0, "2.1", "presence-storm-0", later));
        assert_eq!(
            AuthAudit::of(&log, later, &reconnected, 100).per_connection_max,
            2
        );
        log.pop();
        log.push(req(1, "1.2", "private-storm-0", later));
        assert!(!AuthAudit::of(&log, later, &reconnected, 100).exact());
    }
}
