//! The read side one level up from frames: whole WebSocket messages.
//!
//! RFC 6455 lets a message arrive in fragments, with control frames (ping,
//! pong, close) interleaved between them. Reassembling them is a WebSocket
//! concern, not a Pusher one, so it lives here beside the frame reader and
//! the session only ever sees whole text messages, pings and closes. A
//! message is held to `max_message_bytes` over all its fragments and to
//! [`MAX_FRAGMENTS`] frames; binary messages are only measured, never kept.

use crate::reader::{Frame, FrameReader, ReadError, Source};
use bytes::BytesMut;
use herald_protocol::frame::{FrameError, OpCode};
use herald_protocol::{codes, Cause, Disconnect};
use prometheus::IntCounter;

/// Most frames one fragmented message may arrive in (close 1008 beyond).
const MAX_FRAGMENTS: usize = 256;

/// What the client sent, whole.
#[derive(Debug, PartialEq)]
pub enum Message {
    /// A text message (not yet checked to be UTF-8).
    Text(BytesMut),
    /// A binary message, which the Pusher protocol has no use for.
    Binary,
    Ping(BytesMut),
    Pong,
    /// A Close frame with the client's code (1000 when it gave none).
    Close(u16),
}

/// Why reading ends the connection.
#[derive(Debug)]
pub enum MessageError {
    Read(ReadError),
    /// A text or binary frame while a fragmented message is unfinished.
    Interleaved,
    /// A continuation frame with no message to continue.
    OrphanContinuation,
    TooManyFragments,
    TooBig,
}

impl MessageError {
    /// How the connection closes for it.
    pub fn disconnect(&self) -> Disconnect {
        match self {
            Self::Read(ReadError::Gone) => Disconnect::new(Cause::ClientGone, codes::WS_NORMAL, ""),
            Self::Read(ReadError::Frame(FrameError::TooLarge(_))) | Self::TooBig => {
                Disconnect::message_too_big()
            }
            Self::Read(ReadError::Frame(_)) => Disconnect::protocol_error("protocol error"),
            Self::Interleaved => Disconnect::protocol_error("new message inside a fragmented one"),
            Self::OrphanContinuation => {
                Disconnect::protocol_error("continuation without a message")
            }
            Self::TooManyFragments => Disconnect::new(
                Cause::TooManyFragments,
                codes::WS_POLICY_VIOLATION,
                "message in too many fragments",
            ),
        }
    }

    /// The `herald_limit_rejections_total` label it counts under, if any.
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            Self::Read(ReadError::Gone) | Self::Interleaved | Self::OrphanContinuation => None,
            Self::Read(ReadError::Frame(FrameError::TooLarge(_))) | Self::TooBig => {
                Some("message_too_big")
            }
            Self::Read(ReadError::Frame(_)) => Some("protocol_error"),
            Self::TooManyFragments => Some("fragments"),
        }
    }
}

/// A message arriving in fragments; binary ones are only measured, then refused.
struct Fragmented {
    binary: bool,
    data: BytesMut,
    len: usize,
    frames: usize,
}

/// Reads frames and hands up whole messages.
pub struct MessageReader<R> {
    frames: FrameReader<R>,
    /// A fragmented message being reassembled.
    fragments: Option<Fragmented>,
    max_message_bytes: usize,
    /// `herald_bytes_received_total` of this connection's app.
    bytes_received: IntCounter,
}

impl<R: Source> MessageReader<R> {
    /// `leftover`: bytes the HTTP layer read past the handshake.
    pub fn new(
        io: R,
        leftover: &[u8],
        max_message_bytes: usize,
        bytes_received: IntCounter,
    ) -> Self {
        Self {
            frames: FrameReader::new(io, leftover, max_message_bytes),
            fragments: None,
            max_message_bytes,
            bytes_received,
        }
    }

    /// Reads the next frame: the message it completes, or `None` if it was
    /// a fragment of one still unfinished. Cancel-safe, like the frame reader:
    /// a frame is added to the message being reassembled only once read whole.
    pub async fn read(&mut self) -> Result<Option<Message>, MessageError> {
        let frame = self.frames.read().await.map_err(MessageError::Read)?;
        self.bytes_received.inc_by(frame.payload.len() as u64);
        self.assemble(frame)
    }

    /// After the server closed: reads (and discards) what the client still
    /// sends until its Close frame, or until the socket ends or errs.
    pub async fn discard_until_close(&mut self) {
        while let Ok(frame) = self.frames.read().await {
            if frame.opcode == OpCode::Close {
                break;
            }
        }
    }

    fn assemble(&mut self, frame: Frame) -> Result<Option<Message>, MessageError> {
        let Frame {
            fin,
            opcode,
            payload,
        } = frame;
        let whole = match opcode {
            OpCode::Text | OpCode::Binary if self.fragments.is_some() => {
                return Err(MessageError::Interleaved)
            }
            OpCode::Text if fin => Message::Text(payload),
            OpCode::Binary if fin => Message::Binary,
            OpCode::Text | OpCode::Binary => {
                let binary = opcode == OpCode::Binary;
                let data = if binary {
                    BytesMut::new()
                } else {
                    BytesMut::from(&payload[..])
                };
                self.fragments = Some(Fragmented {
                    binary,
                    data,
                    len: payload.len(),
                    frames: 1,
                });
                return Ok(None);
            }
            OpCode::Continuation => return self.continue_message(fin, &payload),
            OpCode::Ping => Message::Ping(payload),
            OpCode::Pong => Message::Pong,
            OpCode::Close => Message::Close(match payload[..] {
                [a, b, ..] => u16::from_be_bytes([a, b]),
                _ => codes::WS_NORMAL,
            }),
        };
        Ok(Some(whole))
    }

    fn continue_message(
        &mut self,
        fin: bool,
        payload: &[u8],
    ) -> Result<Option<Message>, MessageError> {
        let mut message = self
            .fragments
            .take()
            .ok_or(MessageError::OrphanContinuation)?;
        message.len += payload.len();
        message.frames += 1;
        if message.frames > MAX_FRAGMENTS {
            return Err(MessageError::TooManyFragments);
        }
        if message.len > self.max_message_bytes {
            return Err(MessageError::TooBig);
        }
        if !message.binary {
            message.data.extend_from_slice(payload);
        }
        Ok(match (fin, message.binary) {
            (false, _) => {
                self.fragments = Some(message);
                None
            }
            (true, false) => Some(Message::Text(message.data)),
            (true, true) => Some(Message::Binary),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::masked;

    fn reader(frames: &[Vec<u8>], max: usize) -> MessageReader<tokio::io::DuplexStream> {
        let (_client, server) = tokio::io::duplex(64);
        let counter = IntCounter::new("t", "t").unwrap();
        MessageReader::new(server, &frames.concat(), max, counter)
    }

    #[tokio::test]
    async fn reassembles_fragments_around_interleaved_control_frames() {
        let mut reader = reader(
            &[
                masked(0x01, b"he"),
                masked(0x89, b"p"),
                masked(0x00, b"ll"),
                masked(0x80, b"o"),
                masked(0x88, &[0x03, 0xe9]),
            ],
            100,
        );
        assert_eq!(reader.read().await.unwrap(), None);
        assert_eq!(
            reader.read().await.unwrap(),
            Some(Message::Ping(BytesMut::from(&b"p"[..])))
        );
        assert_eq!(reader.read().await.unwrap(), None);
        assert_eq!(
            reader.read().await.unwrap(),
            Some(Message::Text(BytesMut::from(&b"hello"[..])))
        );
        assert_eq!(reader.read().await.unwrap(), Some(Message::Close(1001)));
        assert_eq!(reader.bytes_received.get(), 8);
    }

    #[tokio::test]
    async fn refuses_broken_and_oversized_fragmented_messages() {
        let mut orphan = reader(&[masked(0x80, b"x")], 100);
        assert!(matches!(
            orphan.read().await,
            Err(MessageError::OrphanContinuation)
        ));
        let mut interleaved = reader(&[masked(0x01, b"a"), masked(0x81, b"b")], 100);
        assert_eq!(interleaved.read().await.unwrap(), None);
        assert!(matches!(
            interleaved.read().await,
            Err(MessageError::Interleaved)
        ));
        let mut big = reader(&[masked(0x02, b"abc"), masked(0x80, b"def")], 5);
        assert_eq!(big.read().await.unwrap(), None);
        let error = big.read().await.unwrap_err();
        assert_eq!(error.disconnect(), Disconnect::message_too_big());
        assert_eq!(error.limit(), Some("message_too_big"));
        let mut frames = vec![masked(0x01, b"")];
        frames.extend(std::iter::repeat_with(|| masked(0x00, b"")).take(MAX_FRAGMENTS));
        let mut many = reader(&frames, 100);
        for _ in 0..MAX_FRAGMENTS {
            assert_eq!(many.read().await.unwrap(), None);
        }
        let error = many.read().await.unwrap_err();
        assert_eq!(
            (error.disconnect().code, error.disconnect().label()),
            (1008, "too_many_fragments")
        );
        assert_eq!(error.limit(), Some("fragments"));
    }
}
