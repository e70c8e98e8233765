//! The handshake's `101 Switching Protocols` and the connection's first
//! frame in one write.
//!
//! hyper writes the 101 response as soon as the service returns it, and the
//! connection's first frame (`pusher:connection_established`, or a refusal)
//! follows microseconds later: two segments, two wake-ups of the client and
//! two trips through the TCP stack for every connection. Under a connect
//! burst (a reconnect storm after a deploy) those sends are most of the
//! server's cost, so [`DeferUpgradeResponse`] wraps the stream handed to
//! hyper and keeps a 101 response back instead of writing it; the bytes go
//! out in front of the next write, which the connection task makes at once.
//!
//! Only a response starting with `HTTP/1.1 101 ` is held, and only once per
//! connection; every other write, and every write after the 101, passes
//! through in order. A flush does not send the held response (that is the
//! point: hyper flushes right after the 101); a shutdown does.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

const SWITCHING_PROTOCOLS: &[u8] = b"HTTP/1.1 101 ";

/// A stream whose 101 response is written together with the next write.
pub struct DeferUpgradeResponse<S> {
    inner: S,
    /// The 101 response, until it is written.
    held: Vec<u8>,
    /// Whether a 101 response may still be held (only the first is).
    armed: bool,
}

impl<S> DeferUpgradeResponse<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            held: Vec::new(),
            armed: true,
        }
    }
}

impl DeferUpgradeResponse<TcpStream> {
    /// Owned halves of a plain TCP connection; the held response stays
    /// with the write half.
    pub fn into_split(self) -> (OwnedReadHalf, DeferUpgradeResponse<OwnedWriteHalf>) {
        let (read, write) = self.inner.into_split();
        let write = DeferUpgradeResponse {
            inner: write,
            held: self.held,
            armed: self.armed,
        };
        (read, write)
    }
}

impl<S: AsyncWrite + Unpin> DeferUpgradeResponse<S> {
    /// Holds `bufs` if they are the first 101 response; true if held.
    fn hold(&mut self, bufs: &[IoSlice<'_>]) -> bool {
        let first = bufs.iter().find(|b| !b.is_empty());
        if !self.armed || !first.is_some_and(|b| b.starts_with(SWITCHING_PROTOCOLS)) {
            return false;
        }
        self.armed = false;
        for buf in bufs {
            self.held.extend_from_slice(buf);
        }
        true
    }

    /// Writes the held response, with as much of `bufs` as the socket takes
    /// in the same call. Ready(n): the held bytes are all written, with `n`
    /// bytes of `bufs`.
    fn poll_release(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        while !self.held.is_empty() {
            let mut slices = Vec::with_capacity(bufs.len() + 1);
            slices.push(IoSlice::new(&self.held));
            slices.extend(bufs.iter().map(|b| IoSlice::new(b)));
            let written = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &slices))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if written >= self.held.len() {
                let of_bufs = written - self.held.len();
                self.held = Vec::new();
                return Poll::Ready(Ok(of_bufs));
            }
            self.held.drain(..written);
        }
        Poll::Ready(Ok(0))
    }

    /// Holds or releases the 101 as `bufs` call for. Ready(Some(n)): done,
    /// with `n` bytes of `bufs` written; Ready(None): nothing is held, write
    /// as usual.
    fn poll_before_write(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<Option<usize>>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if self.hold(bufs) {
            return Poll::Ready(Ok(Some(total)));
        }
        if self.held.is_empty() {
            return Poll::Ready(Ok(None));
        }
        let written = ready!(self.poll_release(cx, bufs))?;
        Poll::Ready(Ok((written > 0 || total == 0).then_some(written)))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for DeferUpgradeResponse<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for DeferUpgradeResponse<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match ready!(this.poll_before_write(cx, &[IoSlice::new(buf)]))? {
            Some(written) => Poll::Ready(Ok(written)),
            // A plain `send`, as without this wrapper (not a one-slice writev).
            None => Pin::new(&mut this.inner).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match ready!(this.poll_before_write(cx, bufs))? {
            Some(written) => Poll::Ready(Ok(written)),
            None => Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_release(cx, &[]))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const RESPONSE: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";

    /// What the other end reads, through a pipe of `capacity` bytes.
    async fn written_through(capacity: usize, writes: &[&[u8]], shutdown: bool) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(capacity);
        let reading = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut server = DeferUpgradeResponse::new(server);
        for bytes in writes {
            server.write_all(bytes).await.unwrap();
            server.flush().await.unwrap();
        }
        if shutdown {
            server.shutdown().await.unwrap();
        }
        drop(server);
        reading.await.unwrap()
    }

    async fn written_by(writes: &[&[u8]], shutdown: bool) -> Vec<u8> {
        written_through(4096, writes, shutdown).await
    }

    #[tokio::test]
    async fn the_101_goes_out_in_front_of_the_next_write() {
        let got = written_by(&[RESPONSE, b"\x81\x02hi"], false).await;
        assert_eq!(got, [RESPONSE, b"\x81\x02hi"].concat());
    }

    #[tokio::test]
    async fn a_flush_keeps_the_101_back_and_a_shutdown_sends_it() {
        assert_eq!(written_by(&[RESPONSE], false).await, b"");
        assert_eq!(written_by(&[RESPONSE], true).await, RESPONSE);
    }

    #[tokio::test]
    async fn other_responses_and_later_writes_pass_through_in_order() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            written_by(&[ok, b"more"], false).await,
            [&ok[..], b"more"].concat()
        );
        // Only the first 101 is held: a second is ordinary data.
        let got = written_by(&[RESPONSE, RESPONSE, b"x"], false).await;
        assert_eq!(got, [RESPONSE, RESPONSE, b"x"].concat());
    }

    #[tokio::test]
    async fn a_socket_taking_a_few_bytes_at_a_time_gets_everything_in_order() {
        let got = written_through(7, &[RESPONSE, b"\x81\x05hello"], true).await;
        assert_eq!(got, [RESPONSE, b"\x81\x05hello"].concat());
    }
}
