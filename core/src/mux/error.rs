//! Errors of the mux: fatal session errors and per-call stream errors.

use crate::wire::{FrameType, StreamId};

/// The peer broke the protocol; the session must send GOAWAY and close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    /// A frame for a stream id that was never opened.
    #[error("{frame_type:?} frame for stream {stream} that was never opened")]
    UnknownStream {
        /// Frame type.
        frame_type: FrameType,
        /// Stream id.
        stream: StreamId,
    },
    /// An OPEN with an id of our parity, or not above the peer's previous one.
    #[error("peer opened stream {0} with an invalid or reused id")]
    BadStreamId(StreamId),
    /// More DATA than the session credit allowed.
    #[error("peer exceeded the session window by {excess} bytes")]
    SessionWindowExceeded {
        /// Bytes over the credit.
        excess: u64,
    },
    /// An OPEN_RESULT for a stream that was not awaiting one.
    #[error("unexpected OPEN_RESULT for stream {0}")]
    UnexpectedOpenResult(StreamId),
    /// A DATA frame larger than we announced we accept.
    #[error("DATA frame of {length} bytes exceeds the announced maximum {max}")]
    FrameTooLarge {
        /// Payload length.
        length: usize,
        /// Announced maximum.
        max: u32,
    },
    /// A credit grant that would overflow the window arithmetic.
    #[error("window update overflows on stream {0}")]
    WindowOverflow(StreamId),
    /// The peer keeps generating answers it never reads.
    #[error("more than {0} control frames queued unsent")]
    ControlQueueOverflow(u32),
    /// A handshake or config frame reached the mux.
    #[error("{0:?} frame is not a mux frame")]
    NotAMuxFrame(FrameType),
}

/// Why an open was not started. Nothing was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The concurrent stream limit (ours or the peer's) is reached.
    #[error("too many concurrent streams")]
    TooManyStreams,
    /// Too many of our opens await the peer's answer; retry after one resolves.
    #[error("too many opens pending")]
    TooManyPending,
    /// A GOAWAY was sent or received.
    #[error("session is going away")]
    GoingAway,
    /// This session used up its stream ids.
    #[error("stream ids exhausted")]
    IdsExhausted,
}

/// Why a stream operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// No such live stream (never opened, finished, reset or refused).
    #[error("no such stream")]
    UnknownStream,
    /// The stream was already finished for writing.
    #[error("stream already finished for writing")]
    Finished,
    /// The stream has not been accepted yet (or is not awaiting an accept).
    #[error("stream is not in a state that allows this")]
    WrongState,
}
