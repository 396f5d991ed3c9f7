//! The incremental frame decoder.

use bytes::{Buf, BytesMut};

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

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
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
