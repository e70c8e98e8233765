//! WebSocket frames (RFC 6455 §5.2): encoding what the server sends, and
//! parsing the header of what a client sends.
//!
//! Server frames are never masked, so the bytes of one message are identical
//! for every recipient: the gateway encodes a message once and shares the
//! resulting [`Bytes`] across all subscribed sockets.
//!
//! Client frames are parsed here without I/O: [`parse_client_header`] looks
//! at the bytes buffered so far and either asks for more or describes one
//! complete frame, after every rule a server must enforce (mask present,
//! reserved bits clear, control frames short and unfragmented, payload within
//! the limit) has been checked, before any payload is buffered.

use bytes::{BufMut, Bytes, BytesMut};

const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut out = BytesMut::with_capacity(len + 10);
    out.put_u8(0x80 | opcode);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
    out.put_slice(payload);
    out.freeze()
}

/// A final text frame carrying `text`.
pub fn text(text: &str) -> Bytes {
    encode(OP_TEXT, text.as_bytes())
}

/// A close frame with `code` and a reason truncated to fit a control frame.
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    encode(OP_CLOSE, &payload)
}

pub fn ping(payload: &[u8]) -> Bytes {
    encode(OP_PING, &payload[..payload.len().min(125)])
}

pub fn pong(payload: &[u8]) -> Bytes {
    encode(OP_PONG, &payload[..payload.len().min(125)])
}

/// Frame opcodes a client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

/// Why a client frame is refused; every case ends the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// RSV1-3 set, but no extension was negotiated.
    ReservedBits,
    UnknownOpcode(u8),
    /// Client frames must be masked (RFC 6455 §5.1).
    Unmasked,
    /// Close, ping and pong must not be fragmented.
    FragmentedControl,
    /// Control frames carry at most 125 bytes.
    ControlTooLong,
    /// The payload is longer than the limit (close 1009).
    TooLarge(u64),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ReservedBits => write!(f, "reserved bits set"),
            Self::UnknownOpcode(op) => write!(f, "unknown opcode {op:#x}"),
            Self::Unmasked => write!(f, "client frame not masked"),
            Self::FragmentedControl => write!(f, "fragmented control frame"),
            Self::ControlTooLong => write!(f, "control frame over 125 bytes"),
            Self::TooLarge(n) => write!(f, "frame payload of {n} bytes is over the limit"),
        }
    }
}

/// A client frame header found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFrameHeader {
    pub fin: bool,
    pub opcode: OpCode,
    /// Bytes of header, including the mask key.
    pub header_len: usize,
    pub payload_len: usize,
    pub mask: [u8; 4],
}

impl ClientFrameHeader {
    pub fn frame_len(&self) -> usize {
        self.header_len + self.payload_len
    }

    pub fn is_control(&self) -> bool {
        matches!(self.opcode, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// Parses the header of the client frame at the start of `buf`.
/// `Ok(None)`: more bytes are needed to decide.
pub fn parse_client_header(
    buf: &[u8],
    max_payload: usize,
) -> Result<Option<ClientFrameHeader>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let opcode = match b0 & 0x0F {
        0x0 => OpCode::Continuation,
        OP_TEXT => OpCode::Text,
        0x2 => OpCode::Binary,
        OP_CLOSE => OpCode::Close,
        OP_PING => OpCode::Ping,
        OP_PONG => OpCode::Pong,
        other => return Err(FrameError::UnknownOpcode(other)),
    };
    let fin = b0 & 0x80 != 0;
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let (len, extra) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 2),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().expect("8 bytes")), 8),
            None => return Ok(None),
        },
        short => (u64::from(short), 0),
    };
    let control = matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
    if control && !fin {
        return Err(FrameError::FragmentedControl);
    }
    if control && len > 125 {
        return Err(FrameError::ControlTooLong);
    }
    if len > max_payload as u64 {
        return Err(FrameError::TooLarge(len));
    }
    let Some(mask) = buf.get(2 + extra..6 + extra) else {
        return Ok(None);
    };
    Ok(Some(ClientFrameHeader {
        fin,
        opcode,
        header_len: 6 + extra,
        payload_len: len as usize,
        mask: mask.try_into().expect("4 bytes"),
    }))
}

/// Removes (or applies) a client mask in place.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_forms() {
        assert_eq!(&text("hi")[..], b"\x81\x02hi");
        let mid = text(&"a".repeat(300));
        assert_eq!(&mid[..4], &[0x81, 126, 0x01, 0x2c]);
        assert_eq!(mid.len(), 304);
        let big = text(&"a".repeat(70_000));
        assert_eq!(&big[..2], &[0x81, 127]);
        assert_eq!(u64::from_be_bytes(big[2..10].try_into().unwrap()), 70_000);
    }

    /// A masked client frame as a browser would send it.
    fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![b0];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        let mut body = payload.to_vec();
        unmask(&mut body, mask);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn parses_client_frames_of_every_length_form() {
        for len in [0usize, 5, 125, 126, 300, 65_535, 65_536, 70_000] {
            let payload = vec![b'x'; len];
            let bytes = client_frame(0x81, &payload);
            let h = parse_client_header(&bytes, 1 << 20).unwrap().unwrap();
            assert_eq!((h.fin, h.opcode, h.payload_len), (true, OpCode::Text, len));
            assert_eq!(h.frame_len(), bytes.len());
            let mut body = bytes[h.header_len..].to_vec();
            unmask(&mut body, h.mask);
            assert_eq!(body, payload);
            // Every strict prefix of the header asks for more bytes.
            for cut in 0..h.header_len {
                assert_eq!(
                    parse_client_header(&bytes[..cut], 1 << 20),
                    Ok(None),
                    "len {len} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn refuses_every_malformed_frame() {
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (vec![0xC1, 0x80, 0, 0, 0, 0], FrameError::ReservedBits),
            (vec![0xA1, 0x80, 0, 0, 0, 0], FrameError::ReservedBits),
            (vec![0x83, 0x80, 0, 0, 0, 0], FrameError::UnknownOpcode(3)),
            (vec![0x8B, 0x80, 0, 0, 0, 0], FrameError::UnknownOpcode(0xB)),
            (vec![0x81, 0x00], FrameError::Unmasked),
            (vec![0x09, 0x80, 0, 0, 0, 0], FrameError::FragmentedControl),
            (
                vec![0x88, 0x80 | 126, 0, 126, 0, 0, 0, 0],
                FrameError::ControlTooLong,
            ),
            (
                vec![0x81, 0x80 | 126, 0x04, 0x01],
                FrameError::TooLarge(1025),
            ),
            (
                vec![0x81, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
                FrameError::TooLarge(u64::MAX),
            ),
        ];
        for (bytes, error) in cases {
            assert_eq!(
                parse_client_header(&bytes, 1024),
                Err(error.clone()),
                "{bytes:?}"
            );
        }
        // Exactly at the limit is fine.
        let at_limit = client_frame(0x81, &[b'a'; 1024]);
        assert!(parse_client_header(&at_limit, 1024).unwrap().is_some());
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic the parser, and whatever it accepts
        /// obeys the rules it enforces.
        #[test]
        fn arbitrary_bytes_are_parsed_or_refused(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80), max in 0usize..200) {
            if let Ok(Some(h)) = parse_client_header(&bytes, max) {
                proptest::prop_assert!(h.payload_len <= max);
                proptest::prop_assert!(h.header_len <= bytes.len());
                proptest::prop_assert!(!h.is_control() || (h.fin && h.payload_len <= 125));
            }
        }
    }

    #[test]
    fn close_frames_fit_a_control_frame() {
        let f = close(4200, &"é".repeat(100));
        assert_eq!(f[0], 0x88);
        assert!(f[1] as usize <= 125);
        assert_eq!(&f[2..4], &4200u16.to_be_bytes());
        assert!(std::str::from_utf8(&f[4..]).is_ok());
    }
}
