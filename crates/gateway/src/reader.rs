//! The read side of a connection: a lean, cancel-safe frame reader.
//!
//! It keeps no buffer while a connection is idle (the allocation is dropped
//! once a frame has been handed out and nothing else is buffered), reads in
//! small steps, and never buffers a payload before its header passed every
//! check, including the size limit. Nothing is consumed until a whole frame
//! is buffered, so a read cancelled half-way loses nothing.

use bytes::BytesMut;
use herald_protocol::frame::{parse_client_header, unmask, FrameError, OpCode};
use tokio::io::{AsyncRead, AsyncReadExt};

/// How much to ask the socket for when the next frame's size is unknown.
const READ_STEP: usize = 512;

pub struct Frame {
    pub fin: bool,
    pub opcode: OpCode,
    pub payload: BytesMut,
}

#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the TCP connection (or it failed).
    Gone,
    Frame(FrameError),
}

/// A byte source that can tell when it has data, so that an idle
/// connection holds no read buffer while it waits. Sources that cannot tell
/// (TLS, tests) say "ready" at once and wait with a small buffer instead.
pub trait Source: AsyncRead + Unpin {
    fn wait_readable(&self) -> impl std::future::Future<Output = ()> + Send {
        std::future::ready(())
    }
}

impl Source for tokio::net::tcp::OwnedReadHalf {
    async fn wait_readable(&self) {
        // An error shows up again in the read that follows.
        let _ = self.readable().await;
    }
}

impl<T: AsyncRead + Unpin> Source for tokio::io::ReadHalf<T> {}

#[cfg(test)]
impl Source for tokio::io::DuplexStream {}

pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    max_payload: usize,
}

impl<R: Source> FrameReader<R> {
    /// `leftover`: bytes the HTTP layer read past the handshake.
    pub fn new(io: R, leftover: &[u8], max_payload: usize) -> Self {
        Self {
            io,
            buf: BytesMut::from(leftover),
            max_payload,
        }
    }

    pub async fn read(&mut self) -> Result<Frame, ReadError> {
        loop {
            match parse_client_header(&self.buf, self.max_payload).map_err(ReadError::Frame)? {
                Some(header) if self.buf.len() >= header.frame_len() => {
                    let mut payload = self
                        .buf
                        .split_to(header.frame_len())
                        .split_off(header.header_len);
                    unmask(&mut payload, header.mask);
                    if self.buf.is_empty() {
                        // Idle connections hold no read buffer at all.
                        self.buf = BytesMut::new();
                    }
                    return Ok(Frame {
                        fin: header.fin,
                        opcode: header.opcode,
                        payload,
                    });
                }
                Some(header) => self.buf.reserve(header.frame_len() - self.buf.len()),
                None => {
                    if self.buf.is_empty() {
                        self.io.wait_readable().await;
                    }
                    self.buf.reserve(READ_STEP)
                }
            }
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Err(ReadError::Gone),
                Ok(_) => {}
            }
        }
    }
}

/// A client frame as a browser sends it (masked, short payload), for tests
/// of the readers.
#[cfg(test)]
pub(crate) fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [9, 8, 7, 6];
    let mut out = vec![b0, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    let mut body = payload.to_vec();
    unmask(&mut body, mask);
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_frames_split_across_reads_and_leftovers() {
        let mut bytes = masked(0x01, b"hel");
        bytes.extend(masked(0x80, b"lo"));
        bytes.extend(masked(0x89, b"p"));
        let (first, rest) = bytes.split_at(3);
        let rest = rest.to_vec();
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(server, first, 100);
        tokio::spawn(async move {
            for chunk in rest.chunks(2).map(<[u8]>::to_vec).collect::<Vec<_>>() {
                tokio::io::AsyncWriteExt::write_all(&mut client, &chunk)
                    .await
                    .unwrap();
            }
        });
        let a = reader.read().await.unwrap();
        assert_eq!(
            (a.fin, a.opcode, &a.payload[..]),
            (false, OpCode::Text, &b"hel"[..])
        );
        let b = reader.read().await.unwrap();
        assert_eq!(
            (b.fin, b.opcode, &b.payload[..]),
            (true, OpCode::Continuation, &b"lo"[..])
        );
        let c = reader.read().await.unwrap();
        assert_eq!((c.opcode, &c.payload[..]), (OpCode::Ping, &b"p"[..]));
        assert!(matches!(reader.read().await, Err(ReadError::Gone)));
    }

    #[tokio::test]
    async fn refuses_an_oversized_frame_before_buffering_it() {
        let header = [0x81, 0x80 | 126, 0x10, 0x00, 1, 2, 3, 4];
        let (_client, server) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(server, &header, 1024);
        assert!(matches!(
            reader.read().await,
            Err(ReadError::Frame(FrameError::TooLarge(4096)))
        ));
    }
}
