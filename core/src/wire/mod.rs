//! The client<->node frame codec.
//!
//! Every frame starts with a fixed 12-byte big-endian header:
//!
//! ```text
//!  0        1        2                 4                                 8                                 12
//! +--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+
//! |version |  type  |      flags      |              stream id            |          length / value           |
//! +--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+
//! ```
//!
//! * `version` is [`PROTOCOL_VERSION`]; any other value is rejected.
//! * `type` is a [`FrameType`]. Payload-carrying types (DATA, OPEN, OPEN_RESULT and the control
//!   messages) use the last field as the payload length, checked against the configured maximum
//!   before anything is buffered. Value-only types (WINDOW, FIN, RST, PING, PONG, GOAWAY) use it
//!   as their value (a credit increment, a reason code, a ping nonce) and carry no payload.
//! * `stream id` names the stream for stream frames (never 0, except WINDOW where 0 is the whole
//!   session) and is 0 for session frames.
//! * DATA payloads are raw bytes; OPEN and OPEN_RESULT payloads are opaque to the mux (the tunnel
//!   layer puts protobuf `StreamOpen` / `StreamOpenResult` there); handshake and config frames carry
//!   one protobuf message each from `tunnox_proto::wire`.

mod codes;
mod decoder;
mod error;
mod frame;
mod header;

pub use codes::{GoAwayReason, ResetReason};
pub use decoder::{Decoder, HOLD_PARTIAL_FRAME_MAX, Received, whole_frames_len};
pub use error::WireError;
pub use frame::{Frame, Transmit};
pub use header::{FrameType, HEADER_LEN, Header, flags};

/// The protocol version carried in every header.
pub const PROTOCOL_VERSION: u8 = 1;

/// Default largest payload a decoder accepts, in bytes (a config field overrides it).
pub const DEFAULT_MAX_PAYLOAD_BYTES: u32 = 1024 * 1024;

/// Identifies one stream within a session. Client-opened streams are odd, node-opened even.
pub type StreamId = u32;

#[cfg(test)]
mod tests;
