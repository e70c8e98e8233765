//! One WebSocket connection: handshake refusal, and the connection's task.
//!
//! fastwebsockets performs the handshake; reading and writing frames are
//! ours. The read side is a lean frame reader (`reader`) that holds no buffer
//! while a connection is idle, under the reassembly of fragmented messages
//! (`message`); the write side takes finished frame bytes
//! shared by many sockets, which fastwebsockets has no call for.
//!
//! One task per connection does everything: it waits at once for the close
//! signal, the outbox (drained with queued frames coalesced into one write),
//! the keep-alive and sign-in deadlines, and the next client frame (the reader
//! is cancel-safe, so serving a timer or a write never loses a half-read
//! frame). One task instead of a reader and a writer, and nothing allocated
//! while idle, is what keeps an idle connection at a few KiB
//! (docs/benchmarks.md).

use crate::hub::AppHub;
use crate::message::{Message, MessageError, MessageReader};
use crate::peer::{Inbox, Next, Peer};
use crate::reader::Source;
use crate::session::Session;
use crate::upgrade_response::CorkUpgradeResponse;
use crate::Gateway;
use bytes::BytesMut;
use herald_config::AppConfig;
use herald_protocol::{codes, frame, message, Cause, Disconnect};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout, Instant};

/// Largest batch of queued frames coalesced into one write.
const COALESCE_BYTES: usize = 64 * 1024;
/// How long a close frame may take to write before the socket is dropped anyway.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// A handshake refused with a Pusher error code.
pub struct Refusal {
    disconnect: Disconnect,
    /// The app's id ("" before the app is known).
    app: String,
}

impl Refusal {
    pub fn new(disconnect: Disconnect, app: &str) -> Self {
        Self {
            disconnect,
            app: app.to_owned(),
        }
    }
}

type Admission = Result<Arc<AppConfig>, Refusal>;

/// Runs an upgraded connection. A plain TCP socket is split into owned
/// halves (no lock between reader and writer); other transports fall back
/// to a shared split.
pub async fn run(
    gateway: Arc<Gateway>,
    upgraded: Upgraded,
    admission: Admission,
    client: std::net::IpAddr,
) {
    if let Err((limit, disconnect)) = gateway.acquire(client) {
        gateway
            .metrics
            .limit_rejections
            .with_label_values(&["", limit])
            .inc();
        let (_, mut write_half) = tokio::io::split(TokioIo::new(upgraded));
        return refuse(&gateway, &mut write_half, Refusal::new(disconnect, "")).await;
    }
    serve_upgraded(gateway.clone(), upgraded, admission).await;
    gateway.release(client);
}

async fn serve_upgraded(gateway: Arc<Gateway>, upgraded: Upgraded, admission: Admission) {
    match upgraded.downcast::<TokioIo<CorkUpgradeResponse>>() {
        Ok(parts) => {
            // Copy what the HTTP layer read ahead and drop its buffer (an
            // 8 KiB allocation it shares) now, not when the connection ends:
            // it was most of an idle connection's memory.
            let hyper::upgrade::Parts { io, read_buf, .. } = parts;
            let leftover = read_buf.to_vec();
            drop(read_buf);
            let (read_half, write_half) = io.into_inner().into_inner().into_split();
            // Boxed (here and below): allocated at its own size instead of
            // inside a task that must also fit the other transport's.
            Box::pin(serve(gateway, read_half, write_half, &leftover, admission)).await
        }
        Err(upgraded) => {
            let (read_half, write_half) = tokio::io::split(TokioIo::new(upgraded));
            Box::pin(serve(gateway, read_half, write_half, &[], admission)).await
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
    R: Source + Send,
    W: AsyncWrite + Unpin + Send,
{
    let app = match admission {
        Ok(app) => app,
        Err(refusal) => return refuse(&gateway, &mut write_half, refusal).await,
    };
    let metrics = &gateway.metrics;
    let settings = &gateway.settings;
    let (peer, inbox, app_hub) = match connect(&gateway, &app) {
        Ok(connected) => connected,
        Err(refusal) => return refuse(&gateway, &mut write_half, refusal).await,
    };
    let socket_id = peer.socket_id().clone();
    let bytes_received = metrics.bytes_received.with_label_values(&[&app.id]);
    let mut reader = MessageReader::new(
        read_half,
        leftover,
        settings.max_message_bytes,
        bytes_received,
    );
    let mut session = Session::new(gateway.clone(), app.clone(), peer.clone());
    let healthy = drive(
        &mut session,
        &mut reader,
        &mut write_half,
        &inbox,
        &peer,
        settings,
    )
    .await;
    peer.close(Disconnect::client_closed(codes::WS_NORMAL));
    let reason = peer.close_reason().expect("closed above");
    if healthy {
        write_close(&mut write_half, &inbox, &reason).await;
    }
    drop(inbox);
    // Boxed: its state would otherwise be part of every idle connection's task.
    Box::pin(session.finish()).await;
    app_hub.disconnect(&socket_id);
    drop(peer);
    if healthy && !reason.by_client() {
        // The server closed: read (and discard) what the client still sends
        // until its Close, briefly, so that dropping the socket with unread
        // data does not reset it before the client has seen our close code.
        let _ = Box::pin(timeout(CLOSE_WRITE_TIMEOUT, reader.discard_until_close())).await;
    }
    let reason = reason.label();
    metrics.connections.with_label_values(&[&app.id]).dec();
    metrics
        .connections_closed
        .with_label_values(&[&app.id, reason])
        .inc();
    tracing::debug!(socket_id = %socket_id, app = %app.id, reason, "connection closed");
}

/// Registers the socket with its app's hub (within the app's connection
/// quota), counts it and greets it with `pusher:connection_established`.
fn connect<'g>(
    gateway: &'g Gateway,
    app: &AppConfig,
) -> Result<(Peer, Inbox, &'g AppHub), Refusal> {
    let metrics = &gateway.metrics;
    let socket_id = gateway.next_socket_id();
    let slow = metrics
        .slow_consumer_disconnects
        .with_label_values(&[&app.id]);
    let (peer, inbox) = Peer::new(socket_id.clone(), gateway.settings.outbox_capacity, slow);
    let app_hub = gateway
        .hub
        .app(&app.id)
        .expect("every configured app has a hub");
    if !app_hub.try_connect(&peer) {
        return Err(Refusal::new(
            Disconnect::new(
                Cause::OverQuota,
                codes::OVER_CONNECTION_QUOTA,
                "Application is over connection quota",
            ),
            &app.id,
        ));
    }
    metrics.connections.with_label_values(&[&app.id]).inc();
    metrics
        .connections_opened
        .with_label_values(&[&app.id])
        .inc();
    tracing::debug!(socket_id = %socket_id, app = %app.id, "connection opened");
    peer.send(frame::text(&message::connection_established(
        &socket_id,
        gateway.settings.activity_timeout.as_secs(),
    )));
    Ok((peer, inbox, app_hub))
}

/// Flushes what was queued before the close (e.g. the `pusher:error`
/// explaining it), except for a slow consumer, whose backlog is the
/// problem; then the close frame.
async fn write_close<W: AsyncWrite + Unpin>(io: &mut W, inbox: &Inbox, disconnect: &Disconnect) {
    let mut bytes = BytesMut::new();
    if disconnect.cause != Cause::SlowConsumer {
        while let Some(queued) = inbox.try_recv() {
            bytes.extend_from_slice(&queued);
        }
    }
    bytes.extend_from_slice(&frame::close(disconnect.code, &disconnect.reason));
    write_last(io, &bytes).await;
}

/// Sends `pusher:error` and the matching close code, then drops the socket.
async fn refuse<W: AsyncWrite + Unpin>(gateway: &Gateway, write_half: &mut W, refusal: Refusal) {
    let Refusal { disconnect, app } = refusal;
    let (code, reason) = (disconnect.code, disconnect.label());
    gateway
        .metrics
        .connections_refused
        .with_label_values(&[&app, reason])
        .inc();
    tracing::info!(code, app = %app, reason, "refusing connection");
    let mut bytes = BytesMut::new();
    bytes.extend_from_slice(&frame::text(&message::error(
        Some(code),
        &disconnect.reason,
    )));
    bytes.extend_from_slice(&frame::close(code, &disconnect.reason));
    write_last(write_half, &bytes).await;
}

/// Writes the last bytes (ending in a close frame) and shuts the socket's
/// write side, within `CLOSE_WRITE_TIMEOUT`.
async fn write_last<W: AsyncWrite + Unpin>(io: &mut W, bytes: &[u8]) {
    let _ = timeout(CLOSE_WRITE_TIMEOUT, async {
        io.write_all(bytes).await?;
        io.shutdown().await
    })
    .await;
}

/// Writes `bytes` within `limit`; true if done, else closes the peer for
/// the reason (a failed socket, or a write that stalled: a slow consumer).
/// A write that completes at once (nearly all, to a healthy socket) does
/// not arm a timer.
async fn write_or_close<W: AsyncWrite + Unpin>(
    io: &mut W,
    bytes: &[u8],
    limit: Duration,
    peer: &Peer,
) -> bool {
    let mut write = std::pin::pin!(io.write_all(bytes));
    let outcome = match futures::poll!(write.as_mut()) {
        std::task::Poll::Ready(done) => Ok(done),
        std::task::Poll::Pending => timeout(limit, write).await,
    };
    match outcome {
        Ok(Ok(())) => true,
        Ok(Err(_)) => {
            peer.close(Disconnect::new(Cause::WriteError, codes::WS_NORMAL, ""));
            false
        }
        Err(_) => {
            peer.close_slow_consumer("socket write stalled");
            false
        }
    }
}

/// Runs the connection until it closes: writes queued frames, keeps the
/// client alive, and hands client frames to the session. Returns false if
/// the socket failed (nothing more can be written to it).
async fn drive<R, W>(
    session: &mut Session,
    reader: &mut MessageReader<R>,
    io: &mut W,
    inbox: &Inbox,
    peer: &Peer,
    settings: &crate::Settings,
) -> bool
where
    R: Source,
    W: AsyncWrite + Unpin,
{
    let mut last_frame = Instant::now();
    // When the server pinged, if it did since the client's last frame.
    let mut ping_sent: Option<Instant> = None;
    let mut batch = BytesMut::new();
    // One timer for the connection's life, moved only when its deadline moves.
    let timer = tokio::time::sleep_until(last_frame + settings.activity_timeout);
    tokio::pin!(timer);
    loop {
        let keep_alive = match ping_sent {
            None => last_frame + settings.activity_timeout,
            Some(sent) => sent + settings.pong_timeout,
        };
        let deadline = session
            .auth_deadline()
            .map_or(keep_alive, |auth| auth.min(keep_alive));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        tokio::select! {
            biased;
            next = inbox.next() => {
                let Next::Frame(first) = next else { return true };
                if !flush(io, first, inbox, &mut batch, settings, peer).await {
                    return false;
                }
            }
            _ = &mut timer => {
                let now = Instant::now();
                if session.auth_deadline().is_some_and(|auth| auth <= now) {
                    session.auth_timed_out();
                } else if ping_sent.is_none() && last_frame + settings.activity_timeout <= now {
                    let ping = frame::text(&message::ping());
                    if !write_or_close(io, &ping, settings.write_timeout, peer).await {
                        return false;
                    }
                    ping_sent = Some(Instant::now());
                } else if ping_sent.is_some_and(|sent| sent + settings.pong_timeout <= now) {
                    peer.close(Disconnect::new(
                        Cause::PongTimeout,
                        codes::PONG_NOT_RECEIVED,
                        "Pong reply not received",
                    ));
                }
            }
            read = reader.read() => {
                if read.is_ok() {
                    last_frame = Instant::now();
                    ping_sent = None;
                }
                // Boxed: allocated only while a frame is handled, not part of
                // every idle connection's task.
                match Box::pin(handle(session, read, io, inbox, &mut batch, settings, peer)).await {
                    Handled::Continue => {}
                    Handled::End => return true,
                    Handled::Failed => return false,
                }
            }
        }
    }
}

enum Handled {
    Continue,
    /// The session ended or a close was asked for.
    End,
    /// The socket failed while writing.
    Failed,
}

/// Hands what the reader returned to the session. A handler may wait (cluster state
/// writes): what is queued meanwhile, broadcasts included, goes out without
/// waiting for it.
async fn handle<W: AsyncWrite + Unpin>(
    session: &mut Session,
    read: Result<Option<Message>, MessageError>,
    io: &mut W,
    inbox: &Inbox,
    batch: &mut BytesMut,
    settings: &crate::Settings,
    peer: &Peer,
) -> Handled {
    let handling = session.on_read(read);
    tokio::pin!(handling);
    let (mut closing, mut failed) = (false, false);
    let keep_going = loop {
        tokio::select! {
            biased;
            keep_going = &mut handling => break keep_going,
            next = inbox.next(), if !closing && !failed => match next {
                Next::Frame(first) => failed = !flush(io, first, inbox, batch, settings, peer).await,
                Next::Close => closing = true,
            },
        }
    };
    match (failed, closing || !keep_going) {
        (true, _) => Handled::Failed,
        (false, true) => Handled::End,
        (false, false) => Handled::Continue,
    }
}

/// Writes `first` and whatever else is queued (coalesced, up to
/// `COALESCE_BYTES`); false if the socket failed or stalled.
async fn flush<W: AsyncWrite + Unpin>(
    io: &mut W,
    first: bytes::Bytes,
    inbox: &Inbox,
    batch: &mut BytesMut,
    settings: &crate::Settings,
    peer: &Peer,
) -> bool {
    let written = if inbox.is_empty() {
        write_or_close(io, &first, settings.write_timeout, peer).await
    } else {
        batch.extend_from_slice(&first);
        while batch.len() < COALESCE_BYTES {
            match inbox.try_recv() {
                Some(more) => batch.extend_from_slice(&more),
                None => break,
            }
        }
        let written = write_or_close(io, batch, settings.write_timeout, peer).await;
        // Keep the batch buffer only while frames keep coming: an idle
        // socket holds none.
        if inbox.is_empty() || batch.capacity() > COALESCE_BYTES {
            *batch = BytesMut::new();
        } else {
            batch.clear();
        }
        written
    };
    inbox.release_if_empty();
    written
}
