//! The incremental frame decoder.

use bytes::{Buf, Bytes, BytesMut};

use super::{DEFAULT_MAX_PAYLOAD_BYTES, Frame, HEADER_LEN, Header, WireError};

/// Turns a byte stream, fed in chunks of any size, into frames.
///
/// The length in each header is checked against the maximum before the payload is buffered, so a
/// peer can make the decoder hold at most `HEADER_LEN + max_payload_bytes` plus one read. DATA
/// payloads are split off the read buffer without copying. After an error the decoder is
/// poisoned: the connection must be closed.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max_payload_bytes: u32,
    header: Option<Header>,
    poisoned: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(DEFAULT_MAX_PAYLOAD_BYTES)
    }
}

impl Decoder {
    /// A decoder that rejects payloads over `max_payload_bytes`.
    pub fn new(max_payload_bytes: u32) -> Decoder {
        Decoder {
            buf: BytesMut::new(),
            max_payload_bytes,
            header: None,
            poisoned: false,
        }
    }

    /// The buffer a driver may read socket bytes into directly (saves a copy).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Appends received bytes. Owned bytes are taken without a copy when nothing is buffered
    /// (a driver that hands over whole frames, see [`whole_frames_len`], never pays a copy) or
    /// when they directly follow the buffered bytes in memory.
    pub fn push<'a>(&mut self, bytes: impl Into<Received<'a>>) {
        match bytes.into() {
            Received::Borrowed(slice) => self.buf.extend_from_slice(slice),
            Received::Owned(owned) if self.buf.is_empty() => self.buf = owned,
            Received::Owned(owned) => self.buf.unsplit(owned),
        }
    }

    /// Bytes received but not yet decoded (including a pending header).
    pub fn buffered_len(&self) -> usize {
        self.buf.len() + if self.header.is_some() { HEADER_LEN } else { 0 }
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or the error that makes the
    /// stream undecodable.
    pub fn decode(&mut self) -> Result<Option<Frame>, WireError> {
        if self.poisoned {
            return Err(WireError::Poisoned);
        }
        let result = self.decode_inner();
        if result.is_err() {
            self.poisoned = true;
            self.buf = BytesMut::new();
        }
        result
    }

    fn decode_inner(&mut self) -> Result<Option<Frame>, WireError> {
        let header = match self.header.take() {
            Some(header) => header,
            None => {
                let Some(raw) = self.buf.first_chunk::<HEADER_LEN>() else {
                    return Ok(None);
                };
                let header = Header::decode(raw, self.max_payload_bytes)?;
                self.buf.advance(HEADER_LEN);
                header
            }
        };
        let payload_len = if header.frame_type.carries_payload() {
            header.length_or_value as usize
        } else {
            0
        };
        if self.buf.len() < payload_len {
            // The length was already checked against the maximum, so this reservation is bounded.
            self.buf.reserve(payload_len - self.buf.len());
            self.header = Some(header);
            return Ok(None);
        }
        let payload = if payload_len == 0 {
            bytes::Bytes::new()
        } else {
            self.buf.split_to(payload_len).freeze()
        };
        Frame::from_parts(header, payload).map(Some)
    }
}

/// Bytes a driver received: borrowed (the decoder copies them) or owned (it may keep them).
#[derive(Debug)]
pub enum Received<'a> {
    /// Copied into the decoder's buffer.
    Borrowed(&'a [u8]),
    /// Kept as they are where possible.
    Owned(BytesMut),
}

impl Received<'_> {
    /// How many bytes.
    pub fn len(&self) -> usize {
        match self {
            Received::Borrowed(slice) => slice.len(),
            Received::Owned(owned) => owned.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> From<&'a [u8]> for Received<'a> {
    fn from(slice: &'a [u8]) -> Self {
        Received::Borrowed(slice)
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for Received<'a> {
    fn from(array: &'a [u8; N]) -> Self {
        Received::Borrowed(array)
    }
}

impl<'a> From<&'a Vec<u8>> for Received<'a> {
    fn from(vec: &'a Vec<u8>) -> Self {
        Received::Borrowed(vec)
    }
}

impl<'a> From<&'a Bytes> for Received<'a> {
    fn from(bytes: &'a Bytes) -> Self {
        Received::Borrowed(bytes)
    }
}

impl<'a> From<&'a BytesMut> for Received<'a> {
    fn from(bytes: &'a BytesMut) -> Self {
        Received::Borrowed(bytes)
    }
}

impl From<BytesMut> for Received<'_> {
    fn from(owned: BytesMut) -> Self {
        Received::Owned(owned)
    }
}

/// Buffered bytes past which a driver stops holding back a partial frame (see
/// [`whole_frames_len`]).
pub const HOLD_PARTIAL_FRAME_MAX: usize = 256 * 1024;

/// How many bytes at the front of `buf` are whole frames, judged by their headers alone. A
/// driver that reads a session socket can hand the decoder whole frames only, so the decoder
/// takes each read buffer without copying. A header the decoder will reject, or a partial frame
/// that would make the driver hold back more than [`HOLD_PARTIAL_FRAME_MAX`] bytes, counts as
/// "everything": the decoder then sees it at once and reports or buffers it itself.
pub fn whole_frames_len(buf: &[u8]) -> usize {
    let mut at = 0;
    while let Some(raw) = buf[at..].first_chunk::<HEADER_LEN>() {
        let Ok(header) = Header::decode(raw, u32::MAX) else {
            return buf.len();
        };
        let payload = if header.frame_type.carries_payload() {
            header.length_or_value as usize
        } else {
            0
        };
        let frame = HEADER_LEN.saturating_add(payload);
        if buf.len() - at < frame {
            break;
        }
        at += frame;
    }
    if at == 0 && buf.len() >= HOLD_PARTIAL_FRAME_MAX {
        buf.len()
    } else {
        at
    }
}
