//! Errors of the frame codec. Each is fatal to the connection that produced it.

use super::FrameType;

/// A malformed frame or byte stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The header's version byte is not one this build speaks.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The header's type byte names no known frame type.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownFrameType(u8),
    /// Flag bits that the frame type does not define.
    #[error("unknown flags 0x{flags:04x} on {frame_type:?}")]
    UnknownFlags {
        /// The frame's type.
        frame_type: FrameType,
        /// The flags received.
        flags: u16,
    },
    /// A stream frame with stream id 0.
    #[error("{0:?} frame with stream id 0")]
    StreamIdZero(FrameType),
    /// A session frame with a stream id.
    #[error("{frame_type:?} frame must have stream id 0, got {stream_id}")]
    UnexpectedStreamId {
        /// The frame's type.
        frame_type: FrameType,
        /// The stream id received.
        stream_id: u32,
    },
    /// The payload length exceeds the configured maximum (checked before buffering).
    #[error("frame payload of {length} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// Length announced by the header.
        length: u32,
        /// The configured maximum.
        max: u32,
    },
    /// A WINDOW frame that grants nothing.
    #[error("window increment of zero")]
    ZeroWindowIncrement,
    /// A control payload that is not a valid protobuf message of its type.
    #[error("malformed {frame_type:?} message: {reason}")]
    BadMessage {
        /// The frame's type.
        frame_type: FrameType,
        /// What prost reported.
        reason: String,
    },
    /// The decoder already failed; the connection must be closed.
    #[error("decoder used after an earlier error")]
    Poisoned,
}
