//! Herald started in-process through `herald::run`, against real sockets
//! and (for the cluster) a real nats-server. The Node suite in tests/e2e
//! covers the protocol with the real client libraries; these tests cover
//! the library face itself: startup on port 0, shutdown through the
//! caller's future, and the roles joined through NATS.

mod support;

use futures::StreamExt;
use herald::Role;
use herald_bench::{connect, next_event, subscribe, Ws};
use support::{config, Herald, Nats, APP, WAIT};
use tokio_tungstenite::tungstenite::Message;

/// Waits (bounded) for `event` on `channel` and returns its data.
async fn receive(ws: &mut Ws, channel: &str, event: &str) -> String {
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let msg = next_event(ws).await.expect("socket open");
            if msg["event"] == event && msg["channel"] == channel {
                return msg["data"].as_str().unwrap_or_default().to_owned();
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("{event} on {channel} not received within {WAIT:?}"))
}

#[tokio::test]
async fn standalone_delivers_a_trigger_to_a_subscriber() {
    let herald = Herald::start(Role::Standalone, config(None), "a").await;
    let (mut ws, _) = connect(herald.addr, APP.1, 0).await.unwrap();
    subscribe(&mut ws, "orders", None, None).await.unwrap();
    herald
        .api()
        .trigger("orders", "order.created", r#"{"id":1}"#)
        .await
        .unwrap();
    assert_eq!(
        receive(&mut ws, "orders", "order.created").await,
        r#"{"id":1}"#
    );
    herald.stop().await.unwrap();
}

/// The close code a server sent, waiting (bounded) for the Close frame.
async fn close_code(ws: &mut Ws) -> u16 {
    let closed = tokio::time::timeout(WAIT, async {
        while let Some(frame) = ws.next().await {
            if let Ok(Message::Close(Some(close))) = frame {
                return u16::from(close.code);
            }
        }
        panic!("connection ended without a Close frame");
    })
    .await;
    closed.expect("Close frame within the wait")
}

#[tokio::test]
async fn shutdown_future_drains_every_client_with_4200_and_run_returns() {
    let mut cfg = config(None);
    cfg.drain_window = Some(1);
    let herald = Herald::start(Role::Standalone, cfg, "a").await;
    let mut clients = Vec::new();
    for n in 0..5 {
        let (mut ws, _) = connect(herald.addr, APP.1, n).await.unwrap();
        subscribe(&mut ws, "drain", None, None).await.unwrap();
        clients.push(ws);
    }
    let addr = herald.addr;
    let (stopped, codes) = tokio::join!(herald.stop(), async {
        let mut codes = Vec::new();
        for ws in &mut clients {
            codes.push(close_code(ws).await);
        }
        codes
    });
    stopped.unwrap();
    assert_eq!(codes, vec![4200; 5]);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the client port still accepts after run returned"
    );
}

#[tokio::test]
async fn two_gateways_and_an_ingest_deliver_across_gateways() {
    let nats = Nats::start();
    let gateway_a = Herald::start(Role::Gateway, config(Some(&nats)), "gw-a").await;
    let gateway_b = Herald::start(Role::Gateway, config(Some(&nats)), "gw-b").await;
    let ingest = Herald::start(Role::Ingest, config(Some(&nats)), "in-1").await;
    let (mut on_a, _) = connect(gateway_a.addr, APP.1, 0).await.unwrap();
    let (mut on_b, _) = connect(gateway_b.addr, APP.1, 1).await.unwrap();
    subscribe(&mut on_a, "stock", None, None).await.unwrap();
    subscribe(&mut on_b, "stock", None, None).await.unwrap();
    ingest
        .api()
        .trigger("stock", "stock.low", r#"{"sku":"A1"}"#)
        .await
        .unwrap();
    assert_eq!(
        receive(&mut on_a, "stock", "stock.low").await,
        r#"{"sku":"A1"}"#
    );
    assert_eq!(
        receive(&mut on_b, "stock", "stock.low").await,
        r#"{"sku":"A1"}"#
    );
    // Occupancy is cluster-wide: the ingest counts both gateways' subscribers.
    let path = format!("/apps/{}/channels/stock", APP.0);
    let counted = tokio::time::timeout(WAIT, async {
        loop {
            let query = [("info", "subscription_count")];
            let (status, body) = ingest
                .api()
                .request("GET", &path, &query, None)
                .await
                .unwrap();
            assert_eq!(status, 200, "{body}");
            let info: serde_json::Value = serde_json::from_str(&body).unwrap();
            if info["subscription_count"] == 2 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    })
    .await;
    assert!(counted.is_ok(), "subscription_count never reached 2");
    for herald in [gateway_a, gateway_b, ingest] {
        herald.stop().await.unwrap();
    }
}

/// The ids of a presence channel's members, as the ingest's HTTP API lists them.
async fn users(ingest: &Herald, channel: &str) -> Vec<String> {
    let path = format!("/apps/{}/channels/{channel}/users", APP.0);
    let (status, body) = ingest.api().request("GET", &path, &[], None).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let users: serde_json::Value = serde_json::from_str(&body).unwrap();
    users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn an_own_key_the_gateway_does_not_hold_is_removed_within_two_node_ttls() {
    let nats = Nats::start();
    let gateway = Herald::start(Role::Gateway, config(Some(&nats)), "gw-a").await;
    let ingest = Herald::start(Role::Ingest, config(Some(&nats)), "in-1").await;
    // A member key in gw-a's name that gw-a never wrote (a previous life's
    // entry arriving late, or a removal that was lost).
    let client = async_nats::connect(&nats.url).await.unwrap();
    let kv = async_nats::jetstream::new(client)
        .get_key_value("herald-state")
        .await
        .unwrap();
    let key = member_key("presence-ghost", "ghost", "gw-a");
    kv.put(&key, r#"{"name":"ghost"}"#.into()).await.unwrap();
    let seen = tokio::time::timeout(WAIT, async {
        while users(&ingest, "presence-ghost").await.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(seen.is_ok(), "the ghost never showed up at the ingest");
    let appeared = std::time::Instant::now();
    // node_ttl is 3 s by default: gone within 2 × node_ttl.
    let gone = tokio::time::timeout(std::time::Duration::from_secs(6), async {
        while !users(&ingest, "presence-ghost").await.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        gone.is_ok(),
        "the ghost is still listed {:?} after it appeared",
        appeared.elapsed()
    );
    assert!(
        kv.get(&key).await.unwrap().is_none(),
        "the key is still in the bucket"
    );
    for herald in [gateway, ingest] {
        herald.stop().await.unwrap();
    }
}

/// Keys of the state bucket under `prefix` that hold a value: the last
/// message of each subject, less delete and purge markers. (`Store::keys`
/// was seen to stop early on a bucket of 100,000 keys.)
async fn live_keys(js: &async_nats::jetstream::Context, prefix: &str) -> usize {
    use async_nats::jetstream::consumer::{push::OrderedConfig, DeliverPolicy};
    let stream = js.get_stream("KV_herald-state").await.expect("stream");
    let mut consumer = stream
        .create_consumer(OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            filter_subject: format!("$KV.herald-state.{prefix}>"),
            headers_only: true,
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let pending = consumer.info().await.expect("consumer info").num_pending;
    let mut messages = consumer.messages().await.expect("messages");
    let mut live = 0;
    for _ in 0..pending {
        let message = tokio::time::timeout(WAIT, messages.next())
            .await
            .expect("listing keys within the wait")
            .expect("listing ended early")
            .expect("listing failed");
        let marker = message
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some();
        live += usize::from(!marker);
    }
    live
}

// Multi-threaded, as the binary runs: on one thread the test's own polling
// and the node's watch and purges take turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_the_same_node_id_clears_100_000_keys_of_its_previous_life_within_5_s() {
    const KEYS: usize = 100_000;
    let nats = Nats::start();
    // The first life creates the buckets; what it leaves behind is written
    // below. It runs on a runtime of its own, dropped after it stops, so
    // none of its background tasks outlives it (as a process exit would).
    let first_config = config(Some(&nats));
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            Herald::start(Role::Gateway, first_config, "gw-a")
                .await
                .stop()
                .await
                .unwrap();
        });
    })
    .join()
    .unwrap();
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    // 100,000 members of gw-a (a crash with that many), written pipelined.
    let mut acks = Vec::with_capacity(1024);
    for i in 0..KEYS {
        let key = member_key(
            &format!("presence-{}", i % 100),
            &format!("user-{i}"),
            "gw-a",
        );
        acks.push(
            js.publish(format!("$KV.herald-state.{key}"), r#"{"n":1}"#.into())
                .await
                .unwrap(),
        );
        if acks.len() == 1024 || i == KEYS - 1 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    assert_eq!(live_keys(&js, "m.").await, KEYS);

    let started = std::time::Instant::now();
    let gateway = Herald::start(Role::Gateway, config(Some(&nats)), "gw-a").await;
    let ready = started.elapsed();
    // A member of this life joins: it is the one key that must remain.
    let _alive = join(gateway.addr, "presence-0", "alive").await;
    // A listing shows the bucket as of its start, so that is when it counts.
    let cleared_at = tokio::time::timeout(WAIT, async {
        loop {
            let at = started.elapsed();
            if live_keys(&js, "m.").await == 1 {
                return at;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the bucket never came down to the one live member");
    println!("ready after {ready:?}, {KEYS} stale keys cleared {cleared_at:?} after start");
    assert!(
        cleared_at <= std::time::Duration::from_secs(5),
        "the bucket came down to the one live member {cleared_at:?} after the restart (ready after {ready:?}); the bound is 5 s"
    );
    gateway.stop().await.unwrap();
}

/// A gateway on a runtime of its own, so that it can die the way a process
/// does: every task stopped at once, no goodbye written to NATS.
struct Crashable {
    addr: std::net::SocketAddr,
    die: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Crashable {
    async fn start(nats: &Nats, node_id: &'static str) -> Self {
        let config = config(Some(nats));
        let (started, addr) = tokio::sync::oneshot::channel();
        let (die, dead) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            let herald = runtime.block_on(Herald::start(Role::Gateway, config, node_id));
            let _ = started.send(herald.addr);
            let _ = dead.recv();
            drop(runtime);
            drop(herald);
        });
        let addr = addr.await.expect("the gateway started");
        Self { addr, die, thread }
    }

    fn crash(self) {
        let _ = self.die.send(());
        self.thread.join().unwrap();
    }
}

/// Joins `user` to presence `channel` on the gateway at `addr`; the socket
/// must be kept open for the member to stay.
async fn join(addr: std::net::SocketAddr, channel: &str, user: &str) -> Ws {
    let (mut ws, socket_id) = connect(addr, APP.1, 0).await.unwrap();
    let data = format!(r#"{{"user_id":"{user}","user_info":{{}}}}"#);
    let auth = herald_protocol::auth::token(
        APP.1,
        APP.2,
        &herald_protocol::auth::channel_string_to_sign(&socket_id, channel, Some(&data)),
    );
    subscribe(&mut ws, channel, Some(auth), Some(data))
        .await
        .unwrap();
    ws
}

/// The bucket key of `user`'s membership of `channel` on `node`.
fn member_key(channel: &str, user: &str, node: &str) -> String {
    let token = herald_protocol::token::encode_token;
    format!(
        "m.{}.{}.{}.{}",
        token(APP.0),
        token(channel),
        token(user),
        token(node)
    )
}

/// The revision of `key` while it holds a value.
async fn live_revision(kv: &async_nats::jetstream::kv::Store, key: &str) -> Option<u64> {
    kv.entry(key)
        .await
        .unwrap()
        .filter(|e| e.operation == async_nats::jetstream::kv::Operation::Put)
        .map(|e| e.revision)
}

/// Waits (bounded) until `condition` holds, polling every 50 ms.
async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, condition: impl Fn() -> F) {
    let met = tokio::time::timeout(WAIT, async {
        while !condition().await {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(met.is_ok(), "{what} not within {WAIT:?}");
}

#[tokio::test]
async fn dead_node_cleanup_leaves_a_key_its_node_wrote_after_coming_back() {
    let nats = Nats::start();
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    // gw-a cleans up only while it is the lowest live node: a heartbeat in
    // the name of "gw-0" holds the cleanup back until the dead node is back.
    let gateway = Herald::start(Role::Gateway, config(Some(&nats)), "gw-a").await;
    let kv = js.get_key_value("herald-state").await.unwrap();
    let fake_beats = {
        let kv = kv.clone();
        tokio::spawn(async move {
            loop {
                let key = format!("n.{}", herald_protocol::token::encode_token("gw-0"));
                let _ = kv.put(key, "0".into()).await;
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
        })
    };
    let gw_y = Crashable::start(&nats, "gw-y").await;
    let gw_z = Crashable::start(&nats, "gw-z").await;
    let (w, u) = (
        member_key("presence-x", "w", "gw-y"),
        member_key("presence-x", "u", "gw-z"),
    );
    let _members = (
        join(gw_y.addr, "presence-x", "w").await,
        join(gw_z.addr, "presence-x", "u").await,
    );
    wait_until("both members in the bucket", || async {
        live_revision(&kv, &w).await.is_some() && live_revision(&kv, &u).await.is_some()
    })
    .await;
    let first_life = live_revision(&kv, &u).await.unwrap();
    gw_y.crash();
    gw_z.crash();
    let removed = || async {
        let text = reqwest::get(format!("http://{}/metrics", gateway.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("herald_nodes_removed_total "))
            .map_or(0.0, |v| v.parse::<f64>().unwrap())
    };
    wait_until("gw-a declaring gw-y and gw-z dead", || async {
        removed().await >= 2.0
    })
    .await;

    // gw-z comes back with the same id and u joins again, before the
    // cleanup gw-a has pending for gw-z's first life has run.
    let gw_z = Herald::start(Role::Gateway, config(Some(&nats)), "gw-z").await;
    let _u_again = join(gw_z.addr, "presence-x", "u").await;
    wait_until("u's key written by gw-z's second life", || async {
        live_revision(&kv, &u).await.is_some_and(|r| r > first_life)
    })
    .await;
    let second_life = live_revision(&kv, &u).await.unwrap();

    // Now gw-a is the lowest live node and runs its pending cleanup: w's
    // key goes (gw-y never came back), u's key stays.
    fake_beats.abort();
    wait_until(
        "gw-a deleting the key of gw-y, which stayed dead",
        || async { live_revision(&kv, &w).await.is_none() },
    )
    .await;
    // The cleanup of both dead nodes runs in one pass; give it one beat
    // (node_ttl / 3) to finish before judging what it left.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(
        live_revision(&kv, &u).await,
        Some(second_life),
        "the dead-node cleanup deleted the key gw-z wrote after coming back"
    );
    gw_z.stop().await.unwrap();
    gateway.stop().await.unwrap();
}
