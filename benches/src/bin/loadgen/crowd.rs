//! `crowd`: members joining one large presence channel (an app's
//! `large_presence_prefixes`, docs/presence.md §12), watched by a few.
//!
//! `watchers` sockets join first with `"watcher": true` in their
//! `user_info` and keep count of the members from their list and the
//! `member_added` / `member_removed` frames they hear. Then `members`
//! sockets join, `concurrency` at a time, spread over the `--ws` gateways.
//! The run reports how long the joins took, the servers' CPU time per join
//! (from /proc of `--server-pids`, over the join phase until the watchers
//! are exact, divided by every join into the crowd, which must start
//! empty), and how long after the last join every watcher's count was
//! `expect_total`. Several generator processes can share one crowd: give
//! each its own `first_member` range and only one of them watchers; every
//! process holds its members until `hold` seconds after its last join.

use super::Target;
use anyhow::{bail, Context};
use futures::StreamExt;
use herald_bench::*;
use herald_protocol::auth;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// The `crowd` flags.
pub struct Crowd {
    pub channel: String,
    pub members: usize,
    pub first_member: usize,
    pub watchers: usize,
    /// Members the watchers must end up counting (all processes', watchers included).
    pub expect_total: usize,
    pub server_pids: Vec<u32>,
    pub hold: u64,
    pub deadline: u64,
    /// Shared by the processes of one crowd: a process without watchers
    /// writes the Unix time (ms) of its last join there; the one with
    /// watchers measures "exact" from the latest last join.
    pub last_join_file: Option<std::path::PathBuf>,
    /// After the watchers are exact, SIGKILL this pid (the gateway at the
    /// first `--ws` address) and measure how its members leave the other
    /// gateways' watchers. One generator process only.
    pub kill_pid: Option<u32>,
}

/// What one watcher heard.
#[derive(Default)]
struct Heard {
    /// Members it knows of.
    count: AtomicI64,
    /// `member_removed` frames, and the distinct users they named.
    removed: AtomicI64,
    removed_users: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Signs and sends the subscription of user `user` with `info`, and waits
/// for its acknowledgement; returns the `count` it carried.
async fn join(
    target: &Target,
    n: usize,
    channel: &str,
    user: &str,
    info: serde_json::Value,
) -> anyhow::Result<(Ws, u64)> {
    let (mut ws, socket_id) = connect(target.ws[n % target.ws.len()], &target.key, n).await?;
    let channel_data = serde_json::json!({ "user_id": user, "user_info": info }).to_string();
    let signed = auth::channel_string_to_sign(&socket_id, channel, Some(&channel_data));
    let token = auth::token(&target.key, &target.secret, &signed);
    send(
        &mut ws,
        &serde_json::json!({ "event": "pusher:subscribe",
            "data": { "channel": channel, "auth": token, "channel_data": channel_data } }),
    )
    .await?;
    loop {
        let msg = next_event(&mut ws).await?;
        match msg["event"].as_str() {
            Some("pusher_internal:subscription_succeeded") => {
                let data: serde_json::Value =
                    serde_json::from_str(msg["data"].as_str().unwrap_or("{}"))?;
                return Ok((ws, data["presence"]["count"].as_u64().unwrap_or(0)));
            }
            Some("pusher:subscription_error" | "pusher:error") => bail!("{user} refused: {msg}"),
            _ => {}
        }
    }
}

/// The `user_id` of a `member_removed` frame.
fn removed_user(text: &str) -> Option<String> {
    let msg: serde_json::Value = serde_json::from_str(text).ok()?;
    let data: serde_json::Value = serde_json::from_str(msg["data"].as_str()?).ok()?;
    Some(data["user_id"].as_str()?.to_owned())
}

/// Kills the gateway at the first `--ws` address and waits until every
/// watcher on another gateway has heard each of its users leave; reports
/// how long that took, whether anyone was announced twice, and how many
/// frames the members on the other gateways got meanwhile.
async fn kill_gateway(
    target: &Target,
    crowd: &Crowd,
    pid: u32,
    watchers: &[(usize, Arc<Heard>)],
    survivor_frames: &AtomicI64,
) -> anyhow::Result<()> {
    let gateways = target.ws.len();
    let on_killed = |n: usize| n.is_multiple_of(gateways);
    let first = crowd.first_member;
    let gone = (first..first + crowd.watchers + crowd.members)
        .filter(|n| on_killed(*n))
        .count() as i64;
    let survivors: Vec<&Arc<Heard>> = watchers
        .iter()
        .filter(|(n, _)| !on_killed(*n))
        .map(|(_, h)| h)
        .collect();
    let surviving_members = (first + crowd.watchers..first + crowd.watchers + crowd.members)
        .filter(|n| !on_killed(*n))
        .count();
    let frames_before = survivor_frames.load(Ordering::Relaxed);
    let killed_at = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).context("pid")?,
        rustix::process::Signal::KILL,
    )?;
    let deadline = killed_at + Duration::from_secs(crowd.deadline);
    while !survivors
        .iter()
        .all(|h| h.removed_users.lock().expect("not poisoned").len() as i64 >= gone)
    {
        if Instant::now() > deadline {
            let heard: Vec<usize> = survivors
                .iter()
                .map(|h| h.removed_users.lock().expect("not poisoned").len())
                .collect();
            bail!(
                "watchers heard {heard:?} of {gone} removals {} s after the kill",
                crowd.deadline
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let removed_ms = killed_at.elapsed().as_secs_f64() * 1000.0;
    // Anything more (a second announcement) would come in the next bursts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let twice: Vec<i64> = survivors
        .iter()
        .map(|h| {
            h.removed.load(Ordering::Relaxed)
                - h.removed_users.lock().expect("not poisoned").len() as i64
        })
        .collect();
    let frames = survivor_frames.load(Ordering::Relaxed) - frames_before;
    let per_member = frames as f64 / surviving_members.max(1) as f64;
    println!(
        "crowd kill: gateway pid {pid} killed with {gone} members; every watcher elsewhere heard them all leave {removed_ms:.0} ms after the kill; announced twice: {twice:?}; frames to the {surviving_members} members elsewhere until 2 s later: {frames} ({per_member:.1} each)"
    );
    println!(
        "{}",
        serde_json::json!({ "mode": "crowd-kill", "members_gone": gone, "removed_at_watchers_ms": removed_ms,
            "announced_twice": twice, "frames_to_surviving_members": frames,
            "frames_per_surviving_member": per_member })
    );
    Ok(())
}

/// Sum of the CPU time the processes have used so far.
fn servers_cpu(pids: &[u32]) -> anyhow::Result<Duration> {
    pids.iter().map(|pid| process_cpu_time(*pid)).sum()
}

pub async fn run(target: &Target, crowd: Crowd) -> anyhow::Result<()> {
    let channel = crowd.channel.as_str();
    // The watchers: each counts the members it knows of.
    let mut watchers: Vec<(usize, Arc<Heard>)> = Vec::new();
    for w in 0..crowd.watchers {
        let n = crowd.first_member + w;
        let user = format!("watcher-{n}");
        let info = serde_json::json!({ "name": user, "watcher": true });
        let (mut ws, listed) = join(target, n, channel, &user, info).await?;
        let heard = Arc::new(Heard::default());
        heard.count.store(listed as i64, Ordering::Relaxed);
        watchers.push((n, heard.clone()));
        tokio::spawn(async move {
            while let Some(Ok(frame)) = ws.next().await {
                let text = frame.to_text().unwrap_or_default();
                if text.contains("pusher_internal:member_added") {
                    heard.count.fetch_add(1, Ordering::Relaxed);
                } else if text.contains("pusher_internal:member_removed") {
                    heard.count.fetch_sub(1, Ordering::Relaxed);
                    heard.removed.fetch_add(1, Ordering::Relaxed);
                    if let Some(user) = removed_user(text) {
                        heard
                            .removed_users
                            .lock()
                            .expect("not poisoned")
                            .insert(user);
                    }
                }
            }
        });
    }
    let counts: Vec<&AtomicI64> = watchers.iter().map(|(_, h)| &h.count).collect();
    let cpu_before = servers_cpu(&crowd.server_pids)?;
    let start = Instant::now();
    let slots = Arc::new(Semaphore::new(target.concurrency.max(1)));
    let mut joins = Vec::with_capacity(crowd.members);
    for i in 0..crowd.members {
        let n = crowd.first_member + crowd.watchers + i;
        let (target, slots, channel) = (target.clone(), slots.clone(), channel.to_owned());
        joins.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await?;
            let user = format!("member-{n}");
            let info = serde_json::json!({ "name": user });
            join(&target, n, &channel, &user, info).await
        }));
    }
    // Members read (and count) what they are sent, as browsers do: an
    // unread socket would end up closed as a slow consumer.
    let member_frames = Arc::new(AtomicI64::new(0));
    // Frames of the members that are not on the gateway to be killed.
    let survivor_frames = Arc::new(AtomicI64::new(0));
    let mut members = Vec::with_capacity(crowd.members);
    let mut largest_ack = 0;
    for (i, j) in joins.into_iter().enumerate() {
        let (mut ws, count) = j.await?.context("member join")?;
        largest_ack = largest_ack.max(count);
        let n = crowd.first_member + crowd.watchers + i;
        let survivor = (!n.is_multiple_of(target.ws.len())).then(|| survivor_frames.clone());
        let frames = member_frames.clone();
        members.push(tokio::spawn(async move {
            while let Some(Ok(_)) = ws.next().await {
                frames.fetch_add(1, Ordering::Relaxed);
                if let Some(survivor) = &survivor {
                    survivor.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let joined = start.elapsed();
    let last_join = Instant::now();
    let last_join_ms = herald_protocol::unix_millis();
    if let (Some(file), 0) = (&crowd.last_join_file, crowd.watchers) {
        std::fs::write(file, last_join_ms.to_string())?;
    }
    let deadline = last_join + Duration::from_secs(crowd.deadline);
    // The other processes' joins end before the watchers can be exact.
    let expect = crowd.expect_total as i64;
    while !counts.iter().all(|c| c.load(Ordering::Relaxed) == expect) {
        if Instant::now() > deadline {
            let seen: Vec<i64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            bail!(
                "watchers count {seen:?}, not {expect}, {} s after the last join",
                crowd.deadline
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let exact_at_ms = herald_protocol::unix_millis();
    let others_last: u64 = crowd
        .last_join_file
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    // Every process's last join, in whole milliseconds.
    let exact_ms = exact_at_ms.saturating_sub(last_join_ms.max(others_last)) as f64;
    let cpu = servers_cpu(&crowd.server_pids)? - cpu_before;
    // With watchers, the window covers every process's joins into the
    // (empty) crowd; without, this process's own.
    let joins_measured = if crowd.watchers > 0 {
        crowd.expect_total - crowd.watchers
    } else {
        crowd.members
    };
    let cpu_per_join_us = cpu.as_secs_f64() * 1e6 / joins_measured.max(1) as f64;
    let frames = member_frames.load(Ordering::Relaxed);
    println!(
        "crowd: {} members joined {channel} in {:.2} s ({:.0}/s); {} watcher(s) exact {exact_ms:.0} ms after the last join; servers' CPU {:.2} s = {cpu_per_join_us:.0} µs per join; {frames} frames to this process's members",
        crowd.members,
        joined.as_secs_f64(),
        crowd.members as f64 / joined.as_secs_f64(),
        crowd.watchers,
        cpu.as_secs_f64(),
    );
    println!(
        "{}",
        serde_json::json!({ "mode": "crowd", "members": crowd.members, "watchers": crowd.watchers,
            "expect_total": crowd.expect_total, "join_seconds": joined.as_secs_f64(),
            "watchers_exact_ms": exact_ms, "server_cpu_seconds": cpu.as_secs_f64(),
            "server_cpu_per_join_us": cpu_per_join_us, "largest_count_acknowledged": largest_ack,
            "frames_to_members": frames })
    );
    if let Some(pid) = crowd.kill_pid {
        kill_gateway(target, &crowd, pid, &watchers, &survivor_frames).await?;
    }
    tokio::time::sleep(Duration::from_secs(crowd.hold)).await;
    for member in members {
        member.abort();
    }
    Ok(())
}
