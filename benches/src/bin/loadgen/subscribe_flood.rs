//! `subscribe-flood`: does one socket flooding `pusher:subscribe` slow down
//! everybody else's subscribes?
//!
//! Flooder sockets send subscribe + unsubscribe pairs for fresh channels as
//! fast as the server reads them. The unsubscribe keeps a flooder below
//! `max_subscriptions_per_connection`, so without a subscribe rate limit
//! every pair is real work (a channel created and removed) rather than a
//! cheap refusal. Meanwhile `others` ordinary clients each subscribe to a
//! fresh channel every `interval_ms` and time the acknowledgement. The run
//! reports the others' latency percentiles and how many of the flood's
//! subscribes were accepted, refused over the rate (429) or refused
//! otherwise.

use super::Target;
use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use herald_bench::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// How the flood is shaped (the `subscribe-flood` flags).
pub struct Flood {
    pub flooders: usize,
    pub others: usize,
    pub interval_ms: u64,
    pub duration: u64,
}

/// Subscribes a flooder sends between two flushes.
const FLOOD_BATCH: usize = 64;

/// How long a flooder waits, after it stopped sending, for the answers to
/// what it sent.
const ANSWER_GRACE: Duration = Duration::from_secs(10);

/// What became of one flooder's subscribes.
#[derive(Default)]
struct FloodCounts {
    sent: u64,
    accepted: u64,
    over_rate: u64,
    refused_otherwise: u64,
}

impl FloodCounts {
    fn add(&mut self, other: &FloodCounts) {
        self.sent += other.sent;
        self.accepted += other.accepted;
        self.over_rate += other.over_rate;
        self.refused_otherwise += other.refused_otherwise;
    }
}

pub async fn run(target: &Target, flood: Flood, threads: usize) -> anyhow::Result<()> {
    let server = |n: usize| target.ws[n % target.ws.len()];
    let mut others = Vec::with_capacity(flood.others);
    for i in 0..flood.others {
        others.push(connect(server(i), &target.key, i).await?.0);
    }
    let mut flooders = Vec::with_capacity(flood.flooders);
    for f in 0..flood.flooders {
        let n = flood.others + f;
        flooders.push(connect(server(n), &target.key, n).await?.0);
    }
    let cpu_start = cpu_time();
    let start = Instant::now();
    let stop_at = start + Duration::from_secs(flood.duration);
    let flooding: Vec<_> = flooders
        .into_iter()
        .enumerate()
        .map(|(f, ws)| tokio::spawn(flood_subscribes(ws, f, stop_at)))
        .collect();
    let interval = Duration::from_millis(flood.interval_ms.max(1));
    let timing: Vec<_> = others
        .into_iter()
        .enumerate()
        .map(|(i, ws)| {
            // Spread over the interval, so the others do not subscribe in step.
            let first = start + interval.mul_f64(i as f64 / flood.others as f64);
            tokio::spawn(time_subscribes(ws, i, first, interval, stop_at))
        })
        .collect();
    let mut latencies = Vec::new();
    for task in timing {
        latencies.extend(task.await?.context("an ordinary client")?);
    }
    let mut counts = FloodCounts::default();
    for task in flooding {
        counts.add(&task.await?.context("a flooder")?);
    }
    let load = generator_load(cpu_time() - cpu_start, start.elapsed(), threads);
    latencies.sort_unstable();
    report(&flood, &counts, &latencies, &load);
    Ok(())
}

/// One flooder: sends until `stop_at`, reading the answers all along (a
/// flooder that stopped reading would be closed as a slow consumer), then
/// waits a little for the answers still under way.
async fn flood_subscribes(ws: Ws, f: usize, stop_at: Instant) -> anyhow::Result<FloodCounts> {
    let (mut sink, mut stream) = ws.split();
    let sent = AtomicU64::new(0);
    let done_sending = AtomicBool::new(false);
    let writer = async {
        while Instant::now() < stop_at {
            for _ in 0..FLOOD_BATCH {
                let channel = format!("flood-{f}-{}", sent.fetch_add(1, Ordering::Relaxed));
                for event in ["pusher:subscribe", "pusher:unsubscribe"] {
                    let message =
                        format!(r#"{{"event":"{event}","data":{{"channel":"{channel}"}}}}"#);
                    sink.feed(Message::text(message)).await?;
                }
            }
            sink.flush().await?;
        }
        done_sending.store(true, Ordering::Relaxed);
        anyhow::Ok(())
    };
    let reader = async {
        let mut counts = FloodCounts::default();
        let answered = |c: &FloodCounts| c.accepted + c.over_rate + c.refused_otherwise;
        let give_up = tokio::time::Instant::from_std(stop_at + ANSWER_GRACE);
        while !(done_sending.load(Ordering::Relaxed)
            && answered(&counts) >= sent.load(Ordering::Relaxed))
        {
            let next = tokio::time::timeout_at(give_up, stream.next()).await;
            let Ok(Some(message)) = next else { break };
            match message? {
                Message::Text(text) => classify(&text, &mut counts)?,
                Message::Close(frame) => bail!("the flooder was closed: {frame:?}"),
                _ => {}
            }
        }
        anyhow::Ok(counts)
    };
    let ((), mut counts) = tokio::try_join!(writer, reader)?;
    counts.sent = sent.load(Ordering::Relaxed);
    Ok(counts)
}

/// Counts an answer to a flooder's subscribe.
fn classify(text: &str, counts: &mut FloodCounts) -> anyhow::Result<()> {
    let message: serde_json::Value = serde_json::from_str(text)?;
    match message["event"].as_str() {
        Some("pusher_internal:subscription_succeeded") => counts.accepted += 1,
        Some("pusher:subscription_error") => {
            // An object (Herald, soketi) or, from other servers, its JSON text.
            let data = match &message["data"] {
                serde_json::Value::String(text) => serde_json::from_str(text)?,
                object => object.clone(),
            };
            if data["status"] == 429 {
                counts.over_rate += 1;
            } else {
                counts.refused_otherwise += 1;
            }
        }
        _ => {}
    }
    Ok(())
}

/// One ordinary client: from `first` on, every `interval` until `stop_at`,
/// subscribes to a fresh channel, times the acknowledgement (microseconds),
/// and leaves the channel again.
async fn time_subscribes(
    mut ws: Ws,
    i: usize,
    first: Instant,
    interval: Duration,
    stop_at: Instant,
) -> anyhow::Result<Vec<u64>> {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::from_std(first), interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut latencies = Vec::new();
    loop {
        let tick = ticker.tick().await.into_std();
        if tick >= stop_at {
            return Ok(latencies);
        }
        let channel = format!("other-{i}-{}", latencies.len());
        let asked = Instant::now();
        subscribe(&mut ws, &channel, None, None).await?;
        latencies.push(asked.elapsed().as_micros() as u64);
        let leave =
            serde_json::json!({ "event": "pusher:unsubscribe", "data": { "channel": channel } });
        send(&mut ws, &leave).await?;
    }
}

fn report(flood: &Flood, counts: &FloodCounts, latencies: &[u64], load: &GeneratorLoad) {
    let ms = |us: u64| us as f64 / 1000.0;
    let offered = counts.sent as f64 / flood.duration.max(1) as f64;
    let (p50, p99, max) = (
        ms(percentile(latencies, 0.5)),
        ms(percentile(latencies, 0.99)),
        ms(percentile(latencies, 1.0)),
    );
    println!(
        "subscribe-flood: {} flooder(s) sent {} subscribes in {} s ({offered:.0}/s offered): {} accepted, {} refused over the rate (429), {} refused otherwise",
        flood.flooders, counts.sent, flood.duration, counts.accepted, counts.over_rate, counts.refused_otherwise
    );
    println!(
        "{} other clients, {} subscribes: latency p50 {p50:.2} ms p99 {p99:.2} ms max {max:.2} ms",
        flood.others,
        latencies.len()
    );
    report_load(load);
    println!(
        "{}",
        serde_json::json!({
            "mode": "subscribe-flood", "flooders": flood.flooders, "seconds": flood.duration,
            "flood_sent": counts.sent, "flood_offered_per_s": offered.round(), "flood_accepted": counts.accepted,
            "flood_over_rate": counts.over_rate, "flood_refused_otherwise": counts.refused_otherwise,
            "others": flood.others, "other_subscribes": latencies.len(),
            "other_latency_ms": { "p50": p50, "p99": p99, "max": max },
            "generator_cores": load.cores_used, "generator_saturated": load.saturated,
        })
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_answers_by_event_and_status() {
        let mut counts = FloodCounts::default();
        let answers = [
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"a","data":"{}"}"#,
            r#"{"event":"pusher:subscription_error","channel":"b","data":"{\"type\":\"LimitReached\",\"error\":\"x\",\"status\":429}"}"#,
            r#"{"event":"pusher:subscription_error","channel":"c","data":{"type":"LimitReached","error":"x","status":429}}"#,
            r#"{"event":"pusher:subscription_error","channel":"d","data":{"type":"LimitReached","error":"x","status":403}}"#,
            r#"{"event":"pusher:pong","data":"{}"}"#,
        ];
        for answer in answers {
            classify(answer, &mut counts).unwrap();
        }
        assert_eq!(
            (counts.accepted, counts.over_rate, counts.refused_otherwise),
            (1, 2, 1)
        );
    }
}
