//! WebSocket framing (RFC 6455) on the raw TCP stream: tungstenite's frame header codec,
//! the floor's own buffers.
//!
//! Owns the two directions' byte layouts. Invariant: a server frame is built whole, header
//! and payload in one buffer, once per message, and is then shared ([`Bytes`]) by every
//! recipient, since server frames are unmasked and so identical for all of them; a client
//! frame is unmasked in place in the buffer it was read into.

use std::io::Cursor;

use tokio_tungstenite::tungstenite::Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// The longest header of an unmasked (server) frame: 2 bytes and a 64-bit length.
const MAX_SERVER_HEADER: usize = 10;

/// A text frame being written: room for the longest header, then the payload. [`finish`]
/// writes the header right in front of the payload, so the payload is never copied.
///
/// [`finish`]: FrameBuf::finish
pub struct FrameBuf(Vec<u8>);

impl FrameBuf {
    /// A buffer for a payload of about `capacity` bytes (it grows if needed).
    pub fn new(capacity: usize) -> FrameBuf {
        let mut buf = Vec::with_capacity(MAX_SERVER_HEADER + capacity);
        buf.resize(MAX_SERVER_HEADER, 0);
        FrameBuf(buf)
    }

    pub fn push(&mut self, bytes: &[u8]) -> &mut FrameBuf {
        self.0.extend_from_slice(bytes);
        self
    }

    pub fn push_str(&mut self, s: &str) -> &mut FrameBuf {
        self.push(s.as_bytes())
    }

    /// The payload written so far, as a writer (serde_json writes into it).
    pub fn payload_writer(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }

    /// The finished frame of `opcode`, ready for the wire.
    pub fn finish(self, opcode: OpCode) -> Bytes {
        let mut buf = self.0;
        let len = (buf.len() - MAX_SERVER_HEADER) as u64;
        let header = FrameHeader { is_final: true, opcode, ..FrameHeader::default() };
        let start = MAX_SERVER_HEADER - header.len(len);
        header.format(len, &mut &mut buf[start..MAX_SERVER_HEADER]).expect("the header fits the room kept for it");
        Bytes::from(buf).slice(start..)
    }

    pub fn text(self) -> Bytes {
        self.finish(OpCode::Data(Data::Text))
    }
}

/// A text frame of `payload`.
pub fn text(payload: &str) -> Bytes {
    let mut buf = FrameBuf::new(payload.len());
    buf.push_str(payload);
    buf.text()
}

/// A close frame with `code` and no reason.
pub fn close(code: u16) -> Bytes {
    let mut buf = FrameBuf::new(2);
    buf.push(&code.to_be_bytes());
    buf.finish(OpCode::Control(Control::Close))
}

/// Why the connection must end, as the close code sent to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closing(pub u16);

impl Closing {
    pub const NORMAL: Closing = Closing(1000);
    pub const PROTOCOL: Closing = Closing(1002);
    pub const UNSUPPORTED: Closing = Closing(1003);
    pub const BAD_DATA: Closing = Closing(1007);
    pub const TOO_BIG: Closing = Closing(1009);
}

/// A complete client frame, unmasked.
pub struct Frame<'a> {
    pub is_final: bool,
    pub opcode: OpCode,
    pub payload: &'a [u8],
}

/// The first complete frame at the start of `data`, unmasked in place, and the bytes it
/// took; `Ok(None)` when `data` holds only part of one. A frame whose payload is over
/// `max_payload` is refused before it is read whole.
pub fn next_frame(data: &mut [u8], max_payload: usize) -> Result<Option<(Frame<'_>, usize)>, Closing> {
    let mut cursor = Cursor::new(&*data);
    let Some((header, len)) = FrameHeader::parse(&mut cursor).map_err(|_| Closing::PROTOCOL)? else {
        return Ok(None);
    };
    // No extension is negotiated, and clients must mask (RFC 6455 5.1, 5.2).
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(Closing::PROTOCOL);
    }
    let Some(mask) = header.mask else { return Err(Closing::PROTOCOL) };
    if len > max_payload as u64 {
        return Err(Closing::TOO_BIG);
    }
    let start = cursor.position() as usize;
    let end = start + len as usize;
    if data.len() < end {
        return Ok(None);
    }
    let payload = &mut data[start..end];
    unmask(payload, mask);
    Ok(Some((Frame { is_final: header.is_final, opcode: header.opcode, payload }, end)))
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        frame
    }

    #[test]
    fn server_frames_carry_the_shortest_header_in_front_of_the_payload() {
        assert_eq!(&text("40")[..], b"\x81\x0240");
        let long = "x".repeat(300);
        let frame = text(&long);
        assert_eq!(&frame[..4], &[0x81, 126, 1, 44]);
        assert_eq!(&frame[4..], long.as_bytes());
        assert_eq!(&close(1009)[..], &[0x88, 2, 0x03, 0xf1]);
    }

    #[test]
    fn client_frames_are_read_whole_and_unmasked() {
        let mut data = masked(1, b"42[\"x\"]");
        let len = data.len();
        data.extend_from_slice(&masked(1, b"3")[..3]);
        let (frame, used) = next_frame(&mut data, 100).unwrap().unwrap();
        assert_eq!((frame.payload, frame.is_final, used), (&b"42[\"x\"]"[..], true, len));
        assert!(next_frame(&mut data[len..], 100).unwrap().is_none());
        let mut big = masked(1, &[b'a'; 200]);
        assert_eq!(next_frame(&mut big, 100).err(), Some(Closing::TOO_BIG));
        let mut unmasked = vec![0x81, 1, b'a'];
        assert_eq!(next_frame(&mut unmasked, 100).err(), Some(Closing::PROTOCOL));
    }
}
