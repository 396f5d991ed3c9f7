//! Length-prefixed frames on a simulated byte stream: a 4-byte big-endian length, then the
//! payload. Used by the simulated storage and broker protocols.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest frame payload accepted (a bigger length means a corrupted stream).
pub const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;

/// A frame length beyond [`FRAME_BYTES_MAX`]: the stream is corrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameTooLarge(pub usize);

/// `payload` as one frame.
pub fn frame(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + payload.len());
    out.put_u32(payload.len() as u32);
    out.put_slice(payload);
    out.freeze()
}

/// Reassembles frames from stream pieces.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: BytesMut,
}

impl FrameReader {
    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame's payload, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameTooLarge> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > FRAME_BYTES_MAX {
            return Err(FrameTooLarge(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        self.buf.advance(4);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_split() {
        let mut stream = Vec::new();
        for payload in [&b"one"[..], b"", b"three!"] {
            stream.extend_from_slice(&frame(payload));
        }
        for cut in 0..stream.len() {
            let mut r = FrameReader::default();
            let mut got = Vec::new();
            for piece in [&stream[..cut], &stream[cut..]] {
                r.push(piece);
                while let Some(f) = r.next_frame().unwrap_or(None) {
                    got.push(f);
                }
            }
            assert_eq!(got, vec![&b"one"[..], b"", b"three!"]);
        }
        let mut r = FrameReader::default();
        r.push(&[0xff, 0xff, 0xff, 0xff]);
        assert!(r.next_frame().is_err());
    }
}
