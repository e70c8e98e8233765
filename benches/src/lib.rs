//! Building blocks of `herald-loadgen`: a Pusher WebSocket client, a signed
//! HTTP API client, and the measurements every mode reports. Nothing here is
//! Herald-specific: it speaks the Pusher protocol to any compatible server.

pub mod storm;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connections per loopback source address, below the ephemeral port range.
const PER_SOURCE_ADDRESS: usize = 25_000;

/// The source address for connection `n`: 127.0.0.1, then .2, … every 25k.
pub fn source_address(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (n / PER_SOURCE_ADDRESS) as u8))
}

/// TCP connection number `n` to `server`. On loopback, connections past
/// the first 25,000 bind a further 127.0.0.x source address; the first keep
/// the kernel's choice (127.0.0.1), which spares a `bind` and its port
/// search per connection.
async fn tcp_connect(server: SocketAddr, n: usize) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if server.ip().is_loopback() && n >= PER_SOURCE_ADDRESS {
        socket.bind(SocketAddr::new(source_address(n), 0))?;
    }
    let stream = socket.connect(server).await.context("TCP connect")?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Opens a Pusher WebSocket and returns it with its socket id.
pub async fn connect(server: SocketAddr, key: &str, n: usize) -> anyhow::Result<(Ws, String)> {
    let stream = tcp_connect(server, n).await?;
    let url = format!("ws://{server}/app/{key}?protocol=7&client=herald-loadgen&version=1");
    let (mut ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
        .await
        .context("WebSocket handshake")?;
    let established = next_event(&mut ws).await?;
    if established["event"] != "pusher:connection_established" {
        bail!("expected connection_established, got {established}");
    }
    let data: serde_json::Value =
        serde_json::from_str(established["data"].as_str().unwrap_or("{}"))?;
    let socket_id = data["socket_id"]
        .as_str()
        .ok_or_else(|| anyhow!("no socket_id"))?
        .to_owned();
    Ok((ws, socket_id))
}

/// The next Pusher message (text frame) from the socket.
pub async fn next_event(ws: &mut Ws) -> anyhow::Result<serde_json::Value> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text)?),
            Some(Ok(Message::Close(frame))) => bail!("closed: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

/// Subscribes and waits for `subscription_succeeded`; `auth` and
/// `channel_data` are sent when given.
pub async fn subscribe(
    ws: &mut Ws,
    channel: &str,
    auth: Option<String>,
    channel_data: Option<String>,
) -> anyhow::Result<()> {
    let mut data = serde_json::json!({ "channel": channel });
    if let Some(auth) = auth {
        data["auth"] = auth.into();
    }
    if let Some(cd) = channel_data {
        data["channel_data"] = cd.into();
    }
    send(
        ws,
        &serde_json::json!({ "event": "pusher:subscribe", "data": data }),
    )
    .await?;
    loop {
        let msg = next_event(ws).await?;
        match msg["event"].as_str() {
            Some("pusher_internal:subscription_succeeded") if msg["channel"] == channel => {
                return Ok(())
            }
            Some("pusher:subscription_error") | Some("pusher:error") => {
                bail!("subscription refused: {msg}")
            }
            _ => continue,
        }
    }
}

pub async fn send(ws: &mut Ws, value: &serde_json::Value) -> anyhow::Result<()> {
    ws.send(Message::text(value.to_string())).await?;
    Ok(())
}

/// A pooled HTTP/1 client (keeps up to `idle_per_host` connections open
/// per server between requests).
pub type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

pub fn http_client(idle_per_host: usize) -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(idle_per_host)
        .build_http()
}

/// What an auth endpoint answers for a private or presence channel: the
/// token, and for presence the member's `channel_data` it signed.
pub struct ChannelAuth {
    pub auth: String,
    pub channel_data: Option<String>,
}

/// A signed Pusher HTTP API client.
#[derive(Clone)]
pub struct Api {
    pub server: SocketAddr,
    pub app_id: String,
    pub key: String,
    pub secret: String,
    client: HttpClient,
}

impl Api {
    pub fn new(server: SocketAddr, app_id: &str, key: &str, secret: &str) -> Self {
        Self {
            server,
            app_id: app_id.into(),
            key: key.into(),
            secret: secret.into(),
            client: http_client(64),
        }
    }

    /// Signs and sends a request; returns status and body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        use herald_protocol::auth;
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            .to_string();
        let md5 = body.map(|b| auth::body_md5(b.as_bytes()));
        let mut params: Vec<(&str, &str)> = vec![
            ("auth_key", &self.key),
            ("auth_timestamp", &timestamp),
            ("auth_version", "1.0"),
        ];
        if let Some(md5) = &md5 {
            params.push(("body_md5", md5));
        }
        params.extend_from_slice(query);
        let signature = auth::sign(
            &self.secret,
            &auth::api_string_to_sign(method, path, params.iter().copied()),
        );
        let mut qs: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        qs.push(format!("auth_signature={signature}"));
        let uri = format!("http://{}{}?{}", self.server, path, qs.join("&"));
        let request = hyper::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))?;
        let response = self.client.request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// `POST /apps/{id}/events` for one channel.
    pub async fn trigger(&self, channel: &str, event: &str, data: &str) -> anyhow::Result<()> {
        let body =
            serde_json::json!({ "name": event, "channel": channel, "data": data }).to_string();
        let path = format!("/apps/{}/events", self.app_id);
        let (status, text) = self.request("POST", &path, &[], Some(&body)).await?;
        if status != 200 {
            bail!("trigger answered {status}: {text}");
        }
        Ok(())
    }

    /// The user ids of a presence channel.
    pub async fn users(&self, channel: &str) -> anyhow::Result<Vec<String>> {
        let path = format!("/apps/{}/channels/{channel}/users", self.app_id);
        let (status, text) = self.request("GET", &path, &[], None).await?;
        if status != 200 {
            bail!("users answered {status}: {text}");
        }
        let v: serde_json::Value = serde_json::from_str(&text)?;
        Ok(v["users"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|u| u["id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// Microseconds since the Unix epoch (the latency timestamp in payloads).
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// CPU time (user + system, all threads) this process has used.
pub fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// CPU time (user + system) another process has used, from /proc (in
/// clock ticks of 10 ms, Linux's USER_HZ).
pub fn process_cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("unreadable /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let ticks: u64 = fields
        .get(11..13)
        .ok_or_else(|| anyhow!("short /proc/{pid}/stat"))?
        .iter()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    Ok(Duration::from_millis(ticks * 10))
}

/// Raises the open-files limit to its hard maximum; returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Resident set size of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for pid {pid}"))
}

/// The value at quantile `q` of sorted samples.
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// How busy the generator was: CPU seconds per wall second, and whether it
/// was close enough to the machine's cores to distort the result.
pub struct GeneratorLoad {
    pub cores_used: f64,
    pub threads: usize,
    pub saturated: bool,
}

pub fn generator_load(cpu: Duration, wall: Duration, threads: usize) -> GeneratorLoad {
    let cores_used = cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9);
    GeneratorLoad {
        cores_used,
        threads,
        saturated: cores_used > 0.9 * threads as f64,
    }
}

/// Prints the generator's CPU use, and a warning when it was saturated.
pub fn report_load(load: &GeneratorLoad) {
    println!(
        "generator used {:.2} of {} core(s)",
        load.cores_used, load.threads
    );
    if load.saturated {
        println!("WARNING: the generator was saturated; the figures above understate the server");
    }
}

/// Time since `start` in seconds, for reports.
pub fn secs(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

/// A subscriber connection spoken without a WebSocket library: the bulk
/// modes (fan-out, idle, connect-rate) open thousands of them, and the
/// generator must cost less than what it measures. Server frames are parsed
/// straight from the socket: no allocation and no UTF-8 pass per message.
pub struct RawFrames {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
}

/// Opens a Pusher connection and subscribes it to the public `channel`.
pub async fn subscribe_raw(
    server: SocketAddr,
    key: &str,
    n: usize,
    channel: &str,
) -> anyhow::Result<RawFrames> {
    let (mut frames, _) = connect_raw(server, key, n).await?;
    frames.send_subscribe(channel, None).await?;
    frames
        .wait_for(SUBSCRIBED)
        .await
        .with_context(|| format!("subscription to {channel}"))?;
    Ok(frames)
}

/// The marker of a `subscription_succeeded` frame.
pub const SUBSCRIBED: &[u8] = b"pusher_internal:subscription_succeeded";

/// Opens a Pusher connection (handshake and `connection_established`);
/// returns it with its socket id.
pub async fn connect_raw(
    server: SocketAddr,
    key: &str,
    n: usize,
) -> anyhow::Result<(RawFrames, String)> {
    use tokio::io::AsyncWriteExt;
    let mut stream = tcp_connect(server, n).await?;
    let request = format!(
        "GET /app/{key}?protocol=7&client=herald-loadgen&version=1 HTTP/1.1\r\nHost: {server}\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: aGVyYWxkLWxvYWRnZW4hIQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut frames = RawFrames {
        stream,
        buf: Vec::with_capacity(4096),
        start: 0,
    };
    frames.read_head().await.context("WebSocket handshake")?;
    let established = frames
        .wait_for(b"pusher:connection_established")
        .await
        .context("connection_established")?;
    Ok((frames, socket_id_of(&established)?))
}

/// The socket id in a `connection_established` frame (its `data` is a JSON
/// string holding an object).
fn socket_id_of(established: &[u8]) -> anyhow::Result<String> {
    let frame: serde_json::Value = serde_json::from_slice(established)?;
    let data: serde_json::Value = serde_json::from_str(frame["data"].as_str().unwrap_or("{}"))?;
    data["socket_id"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| anyhow!("no socket_id in {frame}"))
}

/// A client text frame (masked, as clients must).
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(&MASK);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    frame
}

impl RawFrames {
    /// Sends `pusher:subscribe` for `channel`; `auth` is the authorization
    /// (token, and `channel_data` for presence) a private or presence
    /// channel needs. Does not wait for the answer: see [`Self::wait_for`].
    pub async fn send_subscribe(
        &mut self,
        channel: &str,
        auth: Option<&ChannelAuth>,
    ) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut data = serde_json::json!({ "channel": channel });
        if let Some(a) = auth {
            data["auth"] = a.auth.as_str().into();
            if let Some(cd) = &a.channel_data {
                data["channel_data"] = cd.as_str().into();
            }
        }
        let message = serde_json::json!({ "event": "pusher:subscribe", "data": data }).to_string();
        self.stream
            .write_all(&masked_text_frame(message.as_bytes()))
            .await?;
        Ok(())
    }

    /// Reads the handshake response up to its blank line; it must be a 101.
    async fn read_head(&mut self) -> anyhow::Result<()> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                if !self.buf.starts_with(b"HTTP/1.1 101") {
                    let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                    bail!("expected 101 Switching Protocols, got: {head}");
                }
                self.start = end + 4;
                return Ok(());
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("connection closed during the handshake");
            }
        }
    }

    /// Reads until a text frame containing `marker` arrives and returns
    /// it; an error event or a close before it fails.
    pub async fn wait_for(&mut self, marker: &[u8]) -> anyhow::Result<Vec<u8>> {
        let contains = |text: &[u8], what: &[u8]| text.windows(what.len()).any(|w| w == what);
        loop {
            let (mut found, mut refused) = (None, None);
            // Stops at the marker: frames after it are the caller's.
            let open = self.process_buffered(|text| {
                if contains(text, marker) {
                    found = Some(text.to_vec());
                } else if contains(text, b"pusher:error") || contains(text, b"subscription_error") {
                    refused = Some(String::from_utf8_lossy(text).into_owned());
                }
                found.is_some() || refused.is_some()
            }) && (found.is_some() || refused.is_some() || self.fill().await?);
            if let Some(refusal) = refused {
                bail!("refused: {refusal}");
            }
            if let Some(frame) = found {
                return Ok(frame);
            }
            if !open {
                bail!("connection closed");
            }
        }
    }

    /// Reads more bytes from the socket; false at end of stream.
    async fn fill(&mut self) -> std::io::Result<bool> {
        use tokio::io::AsyncReadExt;
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(4096);
        }
        Ok(self.stream.read_buf(&mut self.buf).await? > 0)
    }

    /// Hands complete buffered text frames to `on_text` until it returns
    /// true (stop) or none is left; false if a close frame came.
    fn process_buffered(&mut self, mut on_text: impl FnMut(&[u8]) -> bool) -> bool {
        while let Some((opcode, header, len)) = server_frame(&self.buf[self.start..]) {
            let payload = self.start + header..self.start + header + len;
            self.start += header + len;
            match opcode {
                0x1 if on_text(&self.buf[payload]) => break,
                0x8 => return false,
                _ => {}
            }
        }
        true
    }

    /// Reads once from the socket (unless complete frames are already
    /// buffered), then hands every complete text frame's payload to
    /// `on_text`. False when the server closed the connection.
    /// Cancel-safe: bytes read are kept for the next call.
    pub async fn read_texts(&mut self, mut on_text: impl FnMut(&[u8])) -> std::io::Result<bool> {
        // Frames left buffered (after `wait_for`'s marker) come first.
        let buffered = server_frame(&self.buf[self.start..]).is_some();
        Ok((buffered || self.fill().await?)
            && self.process_buffered(|text| {
                on_text(text);
                false
            }))
    }
}

/// (opcode, header length, payload length) of the complete unmasked frame
/// at the start of `buf`, if there is one.
fn server_frame(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let [b0, b1, ..] = *buf else { return None };
    let (header, len) = match b1 & 0x7f {
        126 => (
            4,
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
        ),
        127 => (
            10,
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
        ),
        n => (2, n as usize),
    };
    (buf.len() >= header + len).then_some((b0 & 0x0f, header, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_sources() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 51);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 1.0), 100);
        assert_eq!(percentile(&[], 0.5), 0);
        assert_eq!(source_address(0), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(
            source_address(25_000),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))
        );
    }

    #[tokio::test]
    async fn frames_after_the_awaited_one_are_left_for_the_reader() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let text = |payload: &[u8]| [&[0x81, payload.len() as u8][..], payload].concat();
        let both = [text(b"subscription_succeeded"), text(b"event-1")].concat();
        server.write_all(&both).await.unwrap();
        let mut frames = RawFrames {
            stream,
            buf: Vec::new(),
            start: 0,
        };
        frames.wait_for(b"subscription_succeeded").await.unwrap();
        let mut got = Vec::new();
        let read = frames.read_texts(|t| got.push(t.to_vec()));
        let open = tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .unwrap()
            .unwrap();
        assert!(open);
        assert_eq!(got, [b"event-1".to_vec()]);
    }

    #[test]
    fn finds_complete_server_frames_only() {
        assert_eq!(server_frame(&[0x81, 2, b'h', b'i']), Some((1, 2, 2)));
        assert_eq!(server_frame(&[0x81, 2, b'h']), None);
        let mut long = vec![0x81, 126, 0x01, 0x00];
        long.resize(4 + 256, b'x');
        assert_eq!(server_frame(&long), Some((1, 4, 256)));
        assert_eq!(server_frame(&long[..100]), None);
    }
}
