//! One WebSocket connection: handshake refusal, the reader and the writer.
//!
//! fastwebsockets performs the handshake; reading and writing frames are
//! ours. The read side is a lean frame reader (`reader`) that holds no buffer
//! while a connection is idle; the write side takes finished frame bytes
//! shared by many sockets, which fastwebsockets has no call for. The writer task
//! drains the bounded outbox, coalescing queued frames into one write, and
//! also owns the keep-alive clock (server `pusher:ping`, close 4201), so the
//! reader never has to cancel a half-read frame to serve a timer.

use crate::peer::Peer;
use crate::reader::FrameReader;
use crate::session::Session;
use crate::Gateway;
use bytes::{Bytes, BytesMut};
use herald_protocol::{codes, frame, message};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

/// Largest batch of queued frames coalesced into one write.
const COALESCE_BYTES: usize = 64 * 1024;
/// How long a close frame may take to write before the socket is dropped anyway.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// A handshake refused with a Pusher error code.
pub struct Refusal {
    code: u16,
    message: String,
    app: String,
    label: &'static str,
}

impl Refusal {
    pub fn new(code: u16, message: String, app: &str, label: &'static str) -> Self {
        Self {
            code,
            message,
            app: app.to_owned(),
            label,
        }
    }
}

/// When the client last sent anything, shared by reader (writes) and writer (reads).
pub struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    /// Bumped on every received frame: "anything since the ping?" is exact,
    /// even when the answer arrives within the same millisecond.
    frames: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            frames: AtomicU64::new(0),
        }
    }

    pub fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.frames.fetch_add(1, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }
}

type Admission = Result<Arc<herald_config::AppConfig>, Refusal>;

/// Runs an upgraded connection. A plain TCP socket is split into owned
/// halves (no lock between reader and writer); other transports fall back
/// to a shared split.
pub async fn run(
    gateway: Arc<Gateway>,
    upgraded: Upgraded,
    admission: Admission,
    client: std::net::IpAddr,
) {
    if !gateway.acquire_ip(client) {
        gateway
            .metrics
            .limit_rejections
            .with_label_values(&["", "connections_per_ip"])
            .inc();
        let refusal = Refusal::new(
            codes::OVER_CAPACITY,
            format!("too many connections from {client}"),
            "",
            "per_ip_limit",
        );
        let (_, mut write_half) = tokio::io::split(TokioIo::new(upgraded));
        return refuse(&gateway, &mut write_half, refusal).await;
    }
    serve_upgraded(gateway.clone(), upgraded, admission).await;
    gateway.release_ip(client);
}

async fn serve_upgraded(gateway: Arc<Gateway>, upgraded: Upgraded, admission: Admission) {
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            // Copy what the HTTP layer read ahead, so its buffer is not kept alive.
            let leftover = parts.read_buf.to_vec();
            let (read_half, write_half) = parts.io.into_inner().into_split();
            serve(gateway, read_half, write_half, &leftover, admission).await
        }
        Err(upgraded) => {
            let (read_half, write_half) = tokio::io::split(TokioIo::new(upgraded));
            serve(gateway, read_half, write_half, &[], admission).await
        }
    }
}

async fn serve<R, W>(
    gateway: Arc<Gateway>,
    read_half: R,
    mut write_half: W,
    leftover: &[u8],
    admission: Admission,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let app = match admission {
        Ok(app) => app,
        Err(refusal) => return refuse(&gateway, &mut write_half, refusal).await,
    };
    let metrics = gateway.metrics.clone();
    let socket_id = gateway.next_socket_id();
    let (outbox, inbox) = mpsc::channel(gateway.settings.outbox_capacity);
    let slow = metrics
        .slow_consumer_disconnects
        .with_label_values(&[&app.id]);
    let (peer, closed) = Peer::new(socket_id.clone(), outbox, slow);
    let app_hub = gateway
        .hub
        .app(&app.id)
        .expect("every configured app has a hub");
    if !app_hub.try_connect(&peer) {
        let refusal = Refusal::new(
            codes::OVER_CONNECTION_QUOTA,
            "Application is over connection quota".into(),
            &app.id,
            "over_quota",
        );
        return refuse(&gateway, &mut write_half, refusal).await;
    }
    metrics.connections.with_label_values(&[&app.id]).inc();
    metrics
        .connections_opened
        .with_label_values(&[&app.id])
        .inc();
    tracing::debug!(socket_id = %socket_id, app = %app.id, "connection opened");

    let activity = Arc::new(Activity::new());
    let writer = tokio::spawn(write_loop(
        write_half,
        inbox,
        peer.clone(),
        closed.clone(),
        activity.clone(),
        gateway.settings.clone(),
    ));
    peer.send(frame::text(&message::connection_established(
        &socket_id,
        gateway.settings.activity_timeout.as_secs(),
    )));

    let mut reader = FrameReader::new(read_half, leftover, gateway.settings.max_message_bytes);

    let mut session = Session::new(gateway.clone(), app.clone(), peer.clone(), activity);
    session.run(&mut reader, closed).await;
    session.finish().await;
    app_hub.disconnect(&socket_id);
    peer.close(codes::WS_NORMAL, "", "client_closed");
    let reason = peer.close_reason().map_or("client_closed", |r| r.label);
    drop(peer);
    let _ = writer.await;
    if !matches!(reason, "client_closed" | "client_gone") {
        // The server closed: read (and discard) what the client still sends
        // until its Close, briefly, so that dropping the socket with unread
        // data does not reset it before the client has seen our close code.
        let _ = timeout(CLOSE_WRITE_TIMEOUT, async {
            while let Ok(frame) = reader.read().await {
                if frame.opcode == herald_protocol::frame::OpCode::Close {
                    break;
                }
            }
        })
        .await;
    }
    metrics.connections.with_label_values(&[&app.id]).dec();
    metrics
        .connections_closed
        .with_label_values(&[&app.id, reason])
        .inc();
    tracing::debug!(socket_id = %socket_id, app = %app.id, reason, "connection closed");
}

/// Sends `pusher:error` and the matching close code, then drops the socket.
async fn refuse<W: AsyncWrite + Unpin>(gateway: &Gateway, write_half: &mut W, refusal: Refusal) {
    gateway
        .metrics
        .connections_refused
        .with_label_values(&[&refusal.app, refusal.label])
        .inc();
    tracing::info!(code = refusal.code, app = %refusal.app, reason = refusal.label, "refusing connection");
    let mut bytes = BytesMut::new();
    bytes.extend_from_slice(&frame::text(&message::error(
        Some(refusal.code),
        &refusal.message,
    )));
    bytes.extend_from_slice(&frame::close(refusal.code, &refusal.message));
    let _ = timeout(CLOSE_WRITE_TIMEOUT, async {
        write_half.write_all(&bytes).await?;
        write_half.shutdown().await
    })
    .await;
}

/// True if a timed write succeeded; otherwise closes the peer for the
/// reason (a failed socket, or a write that stalled: a slow consumer).
fn written_or_closed(
    outcome: Result<std::io::Result<()>, tokio::time::error::Elapsed>,
    peer: &Peer,
) -> bool {
    match outcome {
        Ok(Ok(())) => true,
        Ok(Err(_)) => {
            peer.close(codes::WS_NORMAL, "", "write_error");
            false
        }
        Err(_) => {
            peer.close_slow_consumer("socket write stalled");
            false
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut io: W,
    mut inbox: mpsc::Receiver<Bytes>,
    peer: Peer,
    mut closed: tokio::sync::watch::Receiver<Option<crate::peer::CloseReason>>,
    activity: Arc<Activity>,
    settings: crate::Settings,
) {
    // When the server pinged, and how many frames the client had sent by then.
    let mut ping_sent: Option<(Instant, u64)> = None;
    let mut healthy = true;
    let mut batch = BytesMut::new();
    loop {
        if ping_sent.is_some_and(|(_, frames)| activity.frames() != frames) {
            ping_sent = None;
        }
        let deadline = match ping_sent {
            None => activity.last() + settings.activity_timeout,
            Some((sent, _)) => sent + settings.pong_timeout,
        };
        tokio::select! {
            biased;
            _ = closed.changed() => break,
            next = inbox.recv() => {
                let Some(first) = next else { break };
                let outcome = if inbox.is_empty() {
                    timeout(settings.write_timeout, io.write_all(&first)).await
                } else {
                    batch.clear();
                    batch.extend_from_slice(&first);
                    while batch.len() < COALESCE_BYTES {
                        match inbox.try_recv() {
                            Ok(more) => batch.extend_from_slice(&more),
                            Err(_) => break,
                        }
                    }
                    let written = timeout(settings.write_timeout, io.write_all(&batch)).await;
                    if batch.capacity() > COALESCE_BYTES {
                        // A burst grew the batch; do not keep that memory per idle socket.
                        batch = BytesMut::new();
                    }
                    written
                };
                if !written_or_closed(outcome, &peer) {
                    healthy = false;
                    break;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                match ping_sent {
                    None if activity.last() + settings.activity_timeout <= Instant::now() => {
                        // Count frames before writing: a pong may arrive during the write.
                        let frames = activity.frames();
                        let ping = frame::text(&message::ping());
                        let outcome = timeout(settings.write_timeout, io.write_all(&ping)).await;
                        if !written_or_closed(outcome, &peer) {
                            healthy = false;
                            break;
                        }
                        ping_sent = Some((Instant::now(), frames));
                    }
                    None => {}
                    Some((_, frames)) if activity.frames() == frames => {
                        peer.close(codes::PONG_NOT_RECEIVED, "Pong reply not received", "pong_timeout");
                    }
                    Some(_) => {}
                }
            }
        }
    }
    let Some(reason) = peer.close_reason().filter(|_| healthy) else {
        return;
    };
    // Flush what was queued before the close (e.g. the `pusher:error` explaining
    // it), except for a slow consumer, whose backlog is the problem.
    batch.clear();
    if reason.label != "slow_consumer" {
        while let Ok(queued) = inbox.try_recv() {
            batch.extend_from_slice(&queued);
        }
    }
    batch.extend_from_slice(&frame::close(reason.code, &reason.message));
    let _ = timeout(CLOSE_WRITE_TIMEOUT, async {
        io.write_all(&batch).await?;
        io.shutdown().await
    })
    .await;
}
