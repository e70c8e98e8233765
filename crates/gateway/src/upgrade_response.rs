//! The handshake's `101 Switching Protocols` and the connection's first
//! frame in one TCP segment.
//!
//! hyper writes the 101 response as soon as the service returns it, and the
//! connection's first frame (`pusher:connection_established`, or a refusal)
//! follows microseconds later: two segments, two wake-ups of the client and
//! two trips through the TCP stack for every connection. Under a connect
//! burst (a reconnect storm after a deploy) those are a large part of the
//! server's cost, so [`CorkUpgradeResponse`] wraps the plain TCP stream handed
//! to hyper and sends a 101 response with `MSG_MORE`: the kernel queues it
//! and sends it with the next write, which the connection task makes at once
//! (a close sends it too). Nothing is buffered here, so nothing is allocated
//! per connection for it.
//!
//! Only a response starting with `HTTP/1.1 101 `, written in one piece, is
//! corked, and only once per connection; every other write passes through.

use socket2::SockRef;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

const SWITCHING_PROTOCOLS: &[u8] = b"HTTP/1.1 101 ";

/// A TCP stream whose 101 response waits in the kernel for the next write.
pub struct CorkUpgradeResponse {
    inner: TcpStream,
    /// Whether a 101 response may still be corked (only the first is).
    armed: bool,
}

impl CorkUpgradeResponse {
    pub fn new(inner: TcpStream) -> Self {
        Self { inner, armed: true }
    }

    pub fn into_inner(self) -> TcpStream {
        self.inner
    }

    /// Whether `buf` is the 101 response to cork.
    fn corks(&mut self, buf: &[u8]) -> bool {
        let corks = self.armed && buf.starts_with(SWITCHING_PROTOCOLS);
        self.armed &= !corks;
        corks
    }

    /// Sends `buf` with `MSG_MORE`: queued until the next send.
    fn poll_send_more(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.inner.poll_write_ready(cx))?;
            let sent = self.inner.try_io(Interest::WRITABLE, || {
                SockRef::from(&self.inner).send_with_flags(buf, libc::MSG_MORE | libc::MSG_NOSIGNAL)
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                sent => return Poll::Ready(sent),
            }
        }
    }
}

impl AsyncRead for CorkUpgradeResponse {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CorkUpgradeResponse {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.corks(buf) {
            return this.poll_send_more(cx, buf);
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut non_empty = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (non_empty.next(), non_empty.next()) {
            if this.corks(only) {
                return this.poll_send_more(cx, only);
            }
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const RESPONSE: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";

    /// What a client reads from a server socket wrapped in
    /// `CorkUpgradeResponse` after `writes` (each flushed) and a shutdown.
    async fn client_reads(writes: &[&[u8]]) -> Vec<u8> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        server.set_nodelay(true).unwrap();
        let mut server = CorkUpgradeResponse::new(server);
        for bytes in writes {
            server.write_all(bytes).await.unwrap();
            server.flush().await.unwrap();
        }
        server.shutdown().await.unwrap();
        let mut got = Vec::new();
        let read = client.read_to_end(&mut got);
        tokio::time::timeout(std::time::Duration::from_secs(5), read)
            .await
            .unwrap()
            .unwrap();
        got
    }

    #[tokio::test]
    async fn the_101_and_the_next_write_arrive_in_order() {
        let got = client_reads(&[RESPONSE, b"\x81\x02hi"]).await;
        assert_eq!(got, [RESPONSE, b"\x81\x02hi"].concat());
    }

    #[tokio::test]
    async fn a_corked_101_is_sent_by_the_close() {
        assert_eq!(client_reads(&[RESPONSE]).await, RESPONSE);
    }

    #[tokio::test]
    async fn other_responses_and_later_writes_pass_through_in_order() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let got = client_reads(&[ok, RESPONSE, RESPONSE, b"x"]).await;
        assert_eq!(got, [&ok[..], RESPONSE, RESPONSE, b"x"].concat());
    }

    #[tokio::test]
    async fn only_the_first_101_is_corked() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let mut wrapped = CorkUpgradeResponse::new(stream);
        assert!(!wrapped.corks(b"HTTP/1.1 200 OK\r\n"));
        assert!(wrapped.corks(RESPONSE));
        assert!(!wrapped.corks(RESPONSE));
    }
}
