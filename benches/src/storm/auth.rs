//! The application's side of the storm: a Laravel-like
//! `POST /broadcasting/auth` endpoint (a real HTTP server on loopback) that
//! logs every request, so the run can check "one request per private or
//! presence channel per connection", and the client of it that pusher-js's
//! `channelAuthorization` would be.

use super::{channels_of, user_id};
use crate::{http_client, ChannelAuth, HttpClient};
use anyhow::{anyhow, bail};
use bytes::Bytes;
use herald_protocol::auth;
use http_body_util::{BodyExt, Full};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// HTTP requests the clients have in flight to the auth endpoint at most
/// (an application server's worker pool; also one pooled connection each).
const AUTH_IN_FLIGHT: usize = 256;

/// One request the auth endpoint received.
pub(super) struct AuthRequest {
    pub(super) client: usize,
    pub(super) socket_id: String,
    pub(super) channel: String,
    pub(super) at: Instant,
}

/// A Laravel-like `POST /broadcasting/auth`: form `socket_id` and
/// `channel_name`, the user from the `x-user` header (the session), a
/// `{auth, channel_data}` answer signed with the app secret for the user's
/// own private and presence channels, 403 for anything else.
pub(super) struct AuthEndpoint {
    pub(super) addr: SocketAddr,
    pub(super) log: Arc<Mutex<Vec<AuthRequest>>>,
    server: JoinHandle<()>,
}

/// What the endpoint needs to sign.
pub(super) struct Signer {
    pub(super) key: String,
    pub(super) secret: String,
    pub(super) members_per_channel: usize,
}

impl AuthEndpoint {
    pub(super) async fn start(signer: Signer) -> anyhow::Result<Self> {
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (signer, requests) = (Arc::new(signer), log.clone());
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (signer, requests) = (signer.clone(), requests.clone());
                let service = service_fn(move |req| {
                    let (signer, requests) = (signer.clone(), requests.clone());
                    async move { Ok::<_, Infallible>(answer(req, &signer, &requests).await) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(io, service),
                );
            }
        });
        Ok(Self { addr, log, server })
    }
}

impl Drop for AuthEndpoint {
    fn drop(&mut self) {
        self.server.abort();
    }
}

type Response = hyper::Response<Full<Bytes>>;

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    signer: &Signer,
    log: &Mutex<Vec<AuthRequest>>,
) -> Response {
    let reply = |status: u16, body: serde_json::Value| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("a valid response")
    };
    let client = req
        .headers()
        .get("x-user")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let Ok(body) = req.into_body().collect().await else {
        return reply(400, serde_json::json!({ "message": "unreadable body" }));
    };
    let form = String::from_utf8_lossy(&body.to_bytes()).into_owned();
    let (Some(client), Some(socket_id), Some(channel)) = (
        client,
        form_value(&form, "socket_id"),
        form_value(&form, "channel_name"),
    ) else {
        return reply(403, serde_json::json!({ "message": "Unauthenticated." }));
    };
    let [_, private, presence] = channels_of(client, signer.members_per_channel);
    let channel_data = (channel == presence).then(|| {
        serde_json::json!({ "user_id": user_id(client), "user_info": { "name": format!("user {client}") } })
            .to_string()
    });
    let allowed = channel == private || channel == presence;
    let signed = auth::channel_string_to_sign(&socket_id, &channel, channel_data.as_deref());
    log.lock().expect("auth log").push(AuthRequest {
        client,
        socket_id,
        channel,
        at: Instant::now(),
    });
    if !allowed {
        return reply(
            403,
            serde_json::json!({ "message": "This action is unauthorized." }),
        );
    }
    let token = auth::token(&signer.key, &signer.secret, &signed);
    match channel_data {
        Some(data) => reply(
            200,
            serde_json::json!({ "auth": token, "channel_data": data }),
        ),
        None => reply(200, serde_json::json!({ "auth": token })),
    }
}

/// The value of `name` in an `application/x-www-form-urlencoded` body.
fn form_value(body: &str, name: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = [bytes.next().unwrap_or(b'0'), bytes.next().unwrap_or(b'0')];
                let hex = std::str::from_utf8(&hex).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
            }
            b => out.push(b),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn form_encode(pairs: &[(&str, &str)]) -> String {
    let encode = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                b => format!("%{b:02X}"),
            })
            .collect()
    };
    let pairs: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    pairs.join("&")
}

/// What pusher-js's `channelAuthorization` does: one POST per channel.
pub(super) struct AuthClient {
    url: String,
    http: HttpClient,
    in_flight: Semaphore,
}

impl AuthClient {
    pub(super) fn new(endpoint: SocketAddr) -> Self {
        Self {
            url: format!("http://{endpoint}/broadcasting/auth"),
            http: http_client(AUTH_IN_FLIGHT),
            in_flight: Semaphore::new(AUTH_IN_FLIGHT),
        }
    }

    pub(super) async fn authorize(
        &self,
        client: usize,
        socket_id: &str,
        channel: &str,
    ) -> anyhow::Result<ChannelAuth> {
        let body = form_encode(&[("socket_id", socket_id), ("channel_name", channel)]);
        let request = hyper::Request::post(&self.url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-user", client.to_string())
            .body(Full::new(Bytes::from(body)))?;
        let _permit = self.in_flight.acquire().await?;
        let response = self.http.request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("auth for {channel} answered {status}");
        }
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        Ok(ChannelAuth {
            auth: v["auth"]
                .as_str()
                .ok_or_else(|| anyhow!("no auth in {v}"))?
                .to_owned(),
            channel_data: v["channel_data"].as_str().map(String::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_round_trip() {
        let body = form_encode(&[("socket_id", "123.456"), ("channel_name", "presence-a b;c")]);
        assert_eq!(body, "socket_id=123.456&channel_name=presence-a%20b%3Bc");
        assert_eq!(form_value(&body, "socket_id").as_deref(), Some("123.456"));
        assert_eq!(
            form_value(&body, "channel_name").as_deref(),
            Some("presence-a b;c")
        );
        assert_eq!(form_value("a=x+y", "a").as_deref(), Some("x y"));
        assert_eq!(form_value(&body, "missing"), None);
    }
}
