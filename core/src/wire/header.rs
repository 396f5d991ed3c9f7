//! The fixed frame header and the frame type table.

use super::{PROTOCOL_VERSION, WireError};

/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 12;

/// Header flag bits.
pub mod flags {
    /// On OPEN_RESULT: the open was refused (the payload says why).
    pub const REFUSED: u16 = 0x0001;
}

/// The kind of a frame, the second header byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum FrameType {
    /// Stream bytes.
    Data = 0x00,
    /// Credit increment for a stream, or for the session when the stream id is 0.
    Window = 0x01,
    /// The sender will send no more bytes on the stream (half-close).
    Fin = 0x02,
    /// Abort the stream in both directions, with a reason.
    Rst = 0x03,
    /// Liveness and RTT probe.
    Ping = 0x04,
    /// Answer to a ping, echoing its nonce.
    Pong = 0x05,
    /// The sender opens no new streams and accepts none; existing ones drain.
    GoAway = 0x06,
    /// Open a stream; the payload says what for.
    Open = 0x07,
    /// Accept or refuse an open.
    OpenResult = 0x08,
    /// Handshake: client introduces itself.
    Hello = 0x10,
    /// Handshake: node's nonce.
    Challenge = 0x11,
    /// Handshake: client's HMAC proof.
    Proof = 0x12,
    /// Handshake: session established.
    Welcome = 0x13,
    /// Handshake: session refused.
    Refused = 0x14,
    /// Node pushes the client's configuration snapshot.
    ConfigPush = 0x20,
    /// Client acknowledges a configuration version.
    ConfigAck = 0x21,
    /// Client asks the node's control plane (connection codes).
    ControlRequest = 0x22,
    /// Node answers a control request.
    ControlResponse = 0x23,
}

impl FrameType {
    /// Parses the type byte.
    pub fn from_u8(byte: u8) -> Result<FrameType, WireError> {
        Ok(match byte {
            0x00 => FrameType::Data,
            0x01 => FrameType::Window,
            0x02 => FrameType::Fin,
            0x03 => FrameType::Rst,
            0x04 => FrameType::Ping,
            0x05 => FrameType::Pong,
            0x06 => FrameType::GoAway,
            0x07 => FrameType::Open,
            0x08 => FrameType::OpenResult,
            0x10 => FrameType::Hello,
            0x11 => FrameType::Challenge,
            0x12 => FrameType::Proof,
            0x13 => FrameType::Welcome,
            0x14 => FrameType::Refused,
            0x20 => FrameType::ConfigPush,
            0x21 => FrameType::ConfigAck,
            0x22 => FrameType::ControlRequest,
            0x23 => FrameType::ControlResponse,
            other => return Err(WireError::UnknownFrameType(other)),
        })
    }

    /// Whether the header's last field is a payload length (true) or a value (false).
    pub fn carries_payload(self) -> bool {
        !matches!(
            self,
            FrameType::Window
                | FrameType::Fin
                | FrameType::Rst
                | FrameType::Ping
                | FrameType::Pong
                | FrameType::GoAway
        )
    }

    /// Whether the frame belongs to a stream (non-zero stream id) rather than the session.
    pub fn is_stream_frame(self) -> bool {
        matches!(
            self,
            FrameType::Data
                | FrameType::Fin
                | FrameType::Rst
                | FrameType::Open
                | FrameType::OpenResult
        )
    }

    /// The flag bits this type may carry.
    fn allowed_flags(self) -> u16 {
        match self {
            FrameType::OpenResult => flags::REFUSED,
            _ => 0,
        }
    }
}

/// A parsed fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Frame type.
    pub frame_type: FrameType,
    /// Flag bits (see [`flags`]).
    pub flags: u16,
    /// Stream id, 0 for session frames.
    pub stream_id: u32,
    /// Payload length for payload-carrying types, the value otherwise.
    pub length_or_value: u32,
}

impl Header {
    /// Encodes the header into its 12 bytes.
    #[inline]
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = PROTOCOL_VERSION;
        out[1] = self.frame_type as u8;
        out[2..4].copy_from_slice(&self.flags.to_be_bytes());
        out[4..8].copy_from_slice(&self.stream_id.to_be_bytes());
        out[8..12].copy_from_slice(&self.length_or_value.to_be_bytes());
        out
    }

    /// Parses and validates 12 header bytes: version, type, flags, stream id rules and the
    /// payload length limit, all before any payload is buffered.
    #[inline]
    pub fn decode(bytes: &[u8; HEADER_LEN], max_payload_bytes: u32) -> Result<Header, WireError> {
        if bytes[0] != PROTOCOL_VERSION {
            return Err(WireError::UnsupportedVersion(bytes[0]));
        }
        let frame_type = FrameType::from_u8(bytes[1])?;
        let flags = u16::from_be_bytes([bytes[2], bytes[3]]);
        let stream_id = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let length_or_value = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if flags & !frame_type.allowed_flags() != 0 {
            return Err(WireError::UnknownFlags { frame_type, flags });
        }
        if frame_type.is_stream_frame() && stream_id == 0 {
            return Err(WireError::StreamIdZero(frame_type));
        }
        if !frame_type.is_stream_frame() && frame_type != FrameType::Window && stream_id != 0 {
            return Err(WireError::UnexpectedStreamId {
                frame_type,
                stream_id,
            });
        }
        if frame_type.carries_payload() && length_or_value > max_payload_bytes {
            return Err(WireError::FrameTooLarge {
                length: length_or_value,
                max: max_payload_bytes,
            });
        }
        if frame_type == FrameType::Window && length_or_value == 0 {
            return Err(WireError::ZeroWindowIncrement);
        }
        Ok(Header {
            frame_type,
            flags,
            stream_id,
            length_or_value,
        })
    }
}
