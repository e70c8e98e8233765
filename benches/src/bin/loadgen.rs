//! `herald-loadgen`: load for any Pusher-compatible server.
//!
//! Modes: `fanout` (deliveries/s, loss, duplicates, end-to-end latency),
//! `idle` (server RSS per subscribed connection), `connect-rate`
//! (connections + subscriptions per second), `crowd` (a large presence
//! channel: CPU per join, watchers exact), `presence-churn` (presence
//! joins + leaves per second, and how long the HTTP API takes to agree),
//! `subscribe-flood` (others' subscribe latency while one socket floods
//! subscribes) and `storm` (a gateway of a cluster killed under clients
//! with public, private and presence channels: how long until they are all
//! subscribed again elsewhere; see `herald_bench::storm`).
//! Each run prints readable lines and one JSON summary line, and reports the
//! generator's own CPU use so a run where the generator was the bottleneck
//! says so.

// In a folder of the binary's name: a file directly in src/bin/ would be
// taken for a binary of its own.
#[path = "loadgen/crowd.rs"]
mod crowd;
#[path = "loadgen/subscribe_flood.rs"]
mod subscribe_flood;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use herald_bench::*;
use herald_protocol::auth;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[derive(Parser)]
#[command(name = "herald-loadgen", about = "Pusher-protocol load generator")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
    /// Generator threads [default: all cores].
    #[arg(long, global = true)]
    threads: Option<usize>,
}

#[derive(Args, Clone)]
struct Target {
    /// WebSocket endpoints (host:port), comma-separated; connections are spread over them.
    #[arg(long, value_delimiter = ',', required = true)]
    ws: Vec<SocketAddr>,
    #[arg(long, default_value = "app-id")]
    app_id: String,
    #[arg(long, default_value = "app-key")]
    key: String,
    #[arg(long, default_value = "app-secret")]
    secret: String,
    /// Connections opened at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
}

#[derive(Subcommand)]
enum Mode {
    /// N subscribers over C channels, M events/s through the HTTP API.
    Fanout {
        #[command(flatten)]
        target: Target,
        /// HTTP API endpoint (host:port).
        #[arg(long)]
        api: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[arg(long, default_value_t = 1)]
        channels: usize,
        /// Events per second (over all channels).
        #[arg(long, default_value_t = 100)]
        rate: u64,
        /// Seconds of publishing.
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// N subscribed connections held open; server RSS per connection.
    Idle {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// The server's pid, to read its RSS.
        #[arg(long)]
        server_pid: u32,
        /// Seconds the connections stay open before RSS is read again (the
        /// steady state of idle connections; the first reading is at 2 s).
        #[arg(long, default_value_t = 15)]
        settle: u64,
    },
    /// Connections + subscriptions per second.
    ConnectRate {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
    },
    /// Presence joins and leaves per second, then API convergence time.
    PresenceChurn {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        api: SocketAddr,
        #[arg(long, default_value_t = 200)]
        users: usize,
        #[arg(long, default_value_t = 20)]
        channels: usize,
        #[arg(long, default_value_t = 5)]
        duration: u64,
    },
    /// Flooder sockets send subscribes as fast as they can while other
    /// clients time theirs.
    SubscribeFlood {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1)]
        flooders: usize,
        /// Ordinary clients, each subscribing to a fresh channel every interval.
        #[arg(long, default_value_t = 200)]
        others: usize,
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// Members joining one large presence channel, watched by a few: join
    /// rate, servers' CPU per join, watchers exact after the last join.
    Crowd {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value = "presence-user-presence")]
        channel: String,
        #[arg(long, default_value_t = 1000)]
        members: usize,
        /// Index of this process's first user (several processes share a crowd).
        #[arg(long, default_value_t = 0)]
        first_member: usize,
        #[arg(long, default_value_t = 5)]
        watchers: usize,
        /// Members the watchers must count at the end [default: watchers + members].
        #[arg(long)]
        expect_total: Option<usize>,
        /// Server pids (gateways, ingest) whose CPU time is measured.
        #[arg(long, value_delimiter = ',')]
        server_pids: Vec<u32>,
        /// Seconds the members stay joined after the last join.
        #[arg(long, default_value_t = 0)]
        hold: u64,
        /// Seconds the watchers may take to be exact.
        #[arg(long, default_value_t = 30)]
        deadline: u64,
        /// File through which the processes of one crowd share their last
        /// join (see `crowd`).
        #[arg(long)]
        last_join_file: Option<std::path::PathBuf>,
        /// After the watchers are exact, kill -9 this pid (the gateway at
        /// the first --ws address) and time its members' removal.
        #[arg(long)]
        kill_pid: Option<u32>,
    },
    /// Clients with a public, a private and a presence channel (authorized
    /// by the generator's own HTTP auth endpoint) spread over the --ws
    /// gateways; the generator kill -9s --kill-pid, the gateway at the
    /// FIRST --ws address; its clients reconnect like pusher-js (after
    /// --reconnect-delay-ms, to the next address).
    Storm {
        #[command(flatten)]
        target: Target,
        /// HTTP API endpoint (an ingest): member lists and counts.
        #[arg(long)]
        api: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        /// Clients per channel (each group of this many shares its public,
        /// private and presence channel).
        #[arg(long, default_value_t = 100)]
        members: usize,
        /// Pid of the gateway listening at the first --ws address.
        #[arg(long)]
        kill_pid: u32,
        #[arg(long, default_value_t = 1000)]
        reconnect_delay_ms: u64,
        /// Seconds each wait after the kill may take at most.
        #[arg(long, default_value_t = 30)]
        deadline: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let threads = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let fd_limit = raise_fd_limit();
    runtime.block_on(async move {
        match cli.mode {
            Mode::Fanout {
                target,
                api,
                subscribers,
                channels,
                rate,
                duration,
            } => fanout(&target, api, subscribers, channels, rate, duration, threads).await,
            Mode::Idle {
                target,
                connections,
                server_pid,
                settle,
            } => idle(&target, connections, server_pid, settle, fd_limit).await,
            Mode::ConnectRate {
                target,
                connections,
            } => connect_rate(&target, connections, threads).await,
            Mode::PresenceChurn {
                target,
                api,
                users,
                channels,
                duration,
            } => presence_churn(&target, api, users, channels, duration, threads).await,
            Mode::SubscribeFlood {
                target,
                flooders,
                others,
                interval_ms,
                duration,
            } => {
                let flood = subscribe_flood::Flood {
                    flooders,
                    others,
                    interval_ms,
                    duration,
                };
                subscribe_flood::run(&target, flood, threads).await
            }
            Mode::Crowd {
                target,
                channel,
                members,
                first_member,
                watchers,
                expect_total,
                server_pids,
                hold,
                deadline,
                last_join_file,
                kill_pid,
            } => {
                if (members + watchers) as u64 + 1024 > fd_limit {
                    bail!("{} sockets need more open files than this process may have ({fd_limit})", members + watchers);
                }
                let crowd = crowd::Crowd {
                    channel,
                    members,
                    first_member,
                    watchers,
                    expect_total: expect_total.unwrap_or(members + watchers),
                    server_pids,
                    hold,
                    deadline,
                    last_join_file,
                    kill_pid,
                };
                crowd::run(&target, crowd).await
            }
            Mode::Storm {
                target,
                api,
                clients,
                members,
                kill_pid,
                reconnect_delay_ms,
                deadline,
            } => {
                if clients as u64 + 1024 > fd_limit {
                    bail!("{clients} clients need more open files than this process may have ({fd_limit})");
                }
                let report = storm::run(storm::StormConfig {
                    api: Api::new(api, &target.app_id, &target.key, &target.secret),
                    ws: target.ws,
                    clients,
                    members_per_channel: members,
                    concurrency: target.concurrency,
                    kill_pid,
                    reconnect_delay: Duration::from_millis(reconnect_delay_ms),
                    deadline: Duration::from_secs(deadline),
                    threads,
                })
                .await?;
                report.print();
                let problems = report.problems();
                if !problems.is_empty() {
                    bail!("storm: {}", problems.join("; "));
                }
                Ok(())
            }
        }
    })
}

/// Opens `count` connections (bounded concurrency), each subscribed to
/// `channel(i)`; returns them in order.
async fn open_subscribed(
    target: &Target,
    count: usize,
    channel: impl Fn(usize) -> String,
) -> anyhow::Result<Vec<RawFrames>> {
    let limit = Arc::new(Semaphore::new(target.concurrency));
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let server = target.ws[i % target.ws.len()];
        let key = target.key.clone();
        let name = channel(i);
        let limit = limit.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire().await?;
            subscribe_raw(server, &key, i, &name).await
        }));
    }
    let mut out = Vec::with_capacity(count);
    for task in tasks {
        out.push(task.await??);
    }
    Ok(out)
}

/// Where the sequence number and send timestamp sit in a relayed payload
/// (`"data":"{\"s\":42,\"t\":…}"`).
const SEQ: &str = r#"\"s\":"#;
const SENT_AT: &str = r#"\"t\":"#;

/// Finds `pattern` (`SEQ`, `SENT_AT`) in a frame and returns the number
/// after it. No allocation: this runs once per delivery.
fn field(text: &[u8], pattern: &str) -> Option<u64> {
    let pattern = pattern.as_bytes();
    let start = text.windows(pattern.len()).position(|w| w == pattern)? + pattern.len();
    let digits = text[start..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .fold(None, |n: Option<u64>, d| {
            Some(n.unwrap_or(0) * 10 + u64::from(d - b'0'))
        });
    digits
}

struct Received {
    latencies_us: Vec<u64>,
    unique: u64,
    duplicates: u64,
    last_at: Option<Instant>,
}

#[allow(clippy::too_many_arguments)]
async fn fanout(
    target: &Target,
    api_addr: SocketAddr,
    subscribers: usize,
    channels: usize,
    rate: u64,
    duration: u64,
    threads: usize,
) -> anyhow::Result<()> {
    let channels = channels.max(1);
    let connect_start = Instant::now();
    let sockets =
        open_subscribed(target, subscribers, |i| format!("bench-{}", i % channels)).await?;
    println!(
        "connected and subscribed {subscribers} sockets in {:.2}s",
        secs(connect_start)
    );

    let total_events = rate * duration;
    let per_channel = (total_events as usize).div_ceil(channels) + 1;
    // Readers run until told to stop; no timer per message (that would cost
    // the generator as much as the delivery it measures).
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for mut frames in sockets {
        let mut stopped = stopped.clone();
        let received = received.clone();
        readers.push(tokio::spawn(async move {
            let mut seen = vec![false; per_channel];
            let mut r = Received {
                latencies_us: Vec::new(),
                unique: 0,
                duplicates: 0,
                last_at: None,
            };
            let mut on_text = |msg: &[u8]| {
                let (Some(seq), Some(ts)) = (field(msg, SEQ), field(msg, SENT_AT)) else {
                    return;
                };
                r.latencies_us.push(now_micros().saturating_sub(ts));
                r.last_at = Some(Instant::now());
                match seen.get_mut(seq as usize) {
                    Some(flag) if !*flag => {
                        *flag = true;
                        r.unique += 1;
                    }
                    Some(_) => r.duplicates += 1,
                    None => {}
                }
                received.fetch_add(1, Ordering::Relaxed);
            };
            loop {
                tokio::select! {
                    biased;
                    _ = stopped.changed() => break,
                    more = frames.read_texts(&mut on_text) => {
                        if !matches!(more, Ok(true)) {
                            break;
                        }
                    }
                }
            }
            r
        }));
    }

    let api = Api::new(api_addr, &target.app_id, &target.key, &target.secret);
    let cpu_start = cpu_time();
    let publish_start = Instant::now();
    let failures = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(Semaphore::new(256));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    let mut seqs = vec![0u64; channels];
    let mut sent_per_channel = vec![0u64; channels];
    let mut publishes = Vec::new();
    for n in 0..total_events {
        ticker.tick().await;
        let c = (n as usize) % channels;
        let seq = seqs[c];
        seqs[c] += 1;
        sent_per_channel[c] += 1;
        let data = format!("{{\"s\":{seq},\"t\":{}}}", now_micros());
        let api = api.clone();
        let failures = failures.clone();
        let permit = in_flight.clone().acquire_owned().await?;
        publishes.push(tokio::spawn(async move {
            if api
                .trigger(&format!("bench-{c}"), "bench", &data)
                .await
                .is_err()
            {
                failures.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        }));
    }
    for p in publishes {
        p.await?;
    }
    let publish_secs = secs(publish_start);
    let subscribers_per_channel =
        |c: usize| (0..subscribers).filter(|i| i % channels == c).count() as u64;
    let expected: u64 = (0..channels)
        .map(|c| sent_per_channel[c] * subscribers_per_channel(c))
        .sum();
    // Drain: until everything arrived, or nothing more for 500 ms (losses).
    let mut last_count = 0;
    let mut quiet_since = Instant::now();
    loop {
        let count = received.load(Ordering::Relaxed);
        if count >= expected || quiet_since.elapsed() > Duration::from_millis(500) {
            break;
        }
        if count != last_count {
            last_count = count;
            quiet_since = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    let mut latencies = Vec::new();
    let (mut unique, mut duplicates, mut last) = (0u64, 0u64, publish_start);
    for r in readers {
        let r = r.await?;
        unique += r.unique;
        duplicates += r.duplicates;
        if let Some(at) = r.last_at {
            last = last.max(at);
        }
        latencies.extend(r.latencies_us);
    }
    let wall = last.duration_since(publish_start);
    let load = generator_load(cpu_time() - cpu_start, wall, threads);
    latencies.sort_unstable();
    let failed = failures.load(Ordering::Relaxed);
    let lost = expected.saturating_sub(unique);
    let rate_achieved = unique as f64 / wall.as_secs_f64().max(1e-9);
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "fanout: {subscribers} subscribers, {channels} channel(s), {total_events} events in {publish_secs:.2}s ({failed} failed triggers)"
    );
    println!(
        "delivered {unique} of {expected} ({lost} lost, {duplicates} duplicates) = {rate_achieved:.0} deliveries/s; latency p50 {:.2} ms p90 {:.2} ms p99 {:.2} ms max {:.2} ms",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.9)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 1.0))
    );
    report_load(&load);
    println!(
        "{}",
        serde_json::json!({
            "mode": "fanout", "subscribers": subscribers, "channels": channels, "events": total_events,
            "failed_triggers": failed, "expected": expected, "delivered": unique, "lost": lost, "duplicates": duplicates,
            "deliveries_per_s": rate_achieved.round(),
            "latency_ms": { "p50": ms(percentile(&latencies, 0.5)), "p90": ms(percentile(&latencies, 0.9)),
                            "p99": ms(percentile(&latencies, 0.99)), "max": ms(percentile(&latencies, 1.0)) },
            "generator_cores": load.cores_used, "generator_saturated": load.saturated,
        })
    );
    Ok(())
}

async fn idle(
    target: &Target,
    connections: usize,
    pid: u32,
    settle: u64,
    fd_limit: u64,
) -> anyhow::Result<()> {
    if connections as u64 + 64 > fd_limit {
        bail!("{connections} connections need more open files than this process may have ({fd_limit}); run several generators");
    }
    let before = rss_kib(pid)?;
    let sockets = open_subscribed(target, connections, |i| format!("idle-{}", i % 100)).await?;
    // Measure while every socket is open: shortly after connecting (what the
    // handshakes left behind included), and once the connections sat idle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let early = rss_kib(pid)?;
    tokio::time::sleep(Duration::from_secs(settle.saturating_sub(2))).await;
    let after = rss_kib(pid)?;
    let per = |rss: u64| rss.saturating_sub(before) as f64 / connections as f64;
    println!(
        "idle: {connections} subscribed connections; server RSS {before} KiB -> {early} KiB after 2 s ({:.2} KiB per connection) -> {after} KiB after {settle} s = {:.2} KiB per connection",
        per(early),
        per(after)
    );
    println!(
        "{}",
        serde_json::json!({ "mode": "idle", "connections": connections, "settle_secs": settle, "rss_before_kib": before, "rss_after_2s_kib": early, "rss_after_kib": after, "kib_per_connection_after_2s": per(early), "kib_per_connection": per(after) })
    );
    drop(sockets);
    Ok(())
}

async fn connect_rate(target: &Target, connections: usize, threads: usize) -> anyhow::Result<()> {
    let cpu_start = cpu_time();
    let start = Instant::now();
    let sockets = open_subscribed(target, connections, |i| format!("rate-{}", i % 100)).await?;
    let wall = start.elapsed();
    let load = generator_load(cpu_time() - cpu_start, wall, threads);
    let rate = connections as f64 / wall.as_secs_f64();
    println!("connect-rate: {connections} connections + subscriptions in {:.2}s = {rate:.0}/s (concurrency {})", wall.as_secs_f64(), target.concurrency);
    report_load(&load);
    println!(
        "{}",
        serde_json::json!({ "mode": "connect-rate", "connections": connections, "seconds": wall.as_secs_f64(), "per_second": rate.round(),
                            "generator_cores": load.cores_used, "generator_saturated": load.saturated })
    );
    drop(sockets);
    Ok(())
}

async fn presence_churn(
    target: &Target,
    api_addr: SocketAddr,
    users: usize,
    channels: usize,
    duration: u64,
    threads: usize,
) -> anyhow::Result<()> {
    let channels = channels.max(1);
    let mut sockets = Vec::with_capacity(users);
    for i in 0..users {
        let (ws, socket_id) = connect(target.ws[i % target.ws.len()], &target.key, i).await?;
        sockets.push((ws, socket_id));
    }
    let ops = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(duration);
    let cpu_start = cpu_time();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, (mut ws, socket_id)) in sockets.into_iter().enumerate() {
        let ops = ops.clone();
        let (key, secret) = (target.key.clone(), target.secret.clone());
        tasks.push(tokio::spawn(async move {
            let channel = format!("presence-churn-{}", i % channels);
            let channel_data = serde_json::json!({ "user_id": format!("u{i}") }).to_string();
            let signed = auth::channel_string_to_sign(&socket_id, &channel, Some(&channel_data));
            let token = auth::token(&key, &secret, &signed);
            // Odd users end joined, even users end out: the expected final state.
            let mut joined = false;
            while Instant::now() < stop_at || joined != (i % 2 == 1) {
                if joined {
                    send(&mut ws, &serde_json::json!({ "event": "pusher:unsubscribe", "data": { "channel": channel } })).await?;
                } else {
                    subscribe(&mut ws, &channel, Some(token.clone()), Some(channel_data.clone())).await?;
                }
                joined = !joined;
                ops.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(ws)
        }));
    }
    let mut sockets = Vec::new();
    for t in tasks {
        sockets.push(t.await?.context("churn task")?);
    }
    let churn_secs = secs(start);
    let load = generator_load(cpu_time() - cpu_start, start.elapsed(), threads);
    let done_ops = ops.load(Ordering::Relaxed);
    // Convergence: until the HTTP API reports exactly the odd users on every channel.
    let api = Api::new(api_addr, &target.app_id, &target.key, &target.secret);
    let converge_start = Instant::now();
    let deadline = converge_start + Duration::from_secs(30);
    loop {
        let mut all = true;
        for c in 0..channels {
            let mut got = api.users(&format!("presence-churn-{c}")).await?;
            got.sort();
            let mut want: Vec<String> = (0..users)
                .filter(|i| i % channels == c && i % 2 == 1)
                .map(|i| format!("u{i}"))
                .collect();
            want.sort();
            all &= got == want;
        }
        if all {
            break;
        }
        if Instant::now() > deadline {
            bail!("the HTTP API did not converge within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let converge_ms = converge_start.elapsed().as_secs_f64() * 1000.0;
    let per_second = done_ops as f64 / churn_secs;
    println!("presence-churn: {users} users over {channels} channel(s): {done_ops} joins+leaves in {churn_secs:.2}s = {per_second:.0}/s; API converged {converge_ms:.0} ms after the last one");
    report_load(&load);
    println!(
        "{}",
        serde_json::json!({ "mode": "presence-churn", "users": users, "channels": channels, "operations": done_ops,
                            "per_second": per_second.round(), "convergence_ms": converge_ms,
                            "generator_cores": load.cores_used, "generator_saturated": load.saturated })
    );
    for mut ws in sockets {
        let _ = ws.close(None).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{field, SENT_AT, SEQ};

    #[test]
    fn reads_fields_from_a_relayed_payload() {
        let frame =
            r#"{"event":"bench","channel":"bench-0","data":"{\"s\":42,\"t\":1700000000000000}"}"#;
        let frame = frame.as_bytes();
        assert_eq!(field(frame, SEQ), Some(42));
        assert_eq!(field(frame, SENT_AT), Some(1_700_000_000_000_000));
        assert_eq!(field(frame, r#"\"x\":"#), None);
    }
}
