//! What the mux tells the application.

use bytes::Bytes;

use crate::time::Duration;
use crate::wire::{GoAwayReason, ResetReason, StreamId};

/// An event for the application, pulled with `Mux::poll_event`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxEvent {
    /// The peer opened a stream; accept or refuse it. DATA may already be buffered.
    Incoming {
        /// The new stream.
        stream: StreamId,
        /// The OPEN payload.
        payload: Bytes,
    },
    /// The peer accepted one of our opens.
    Accepted {
        /// The stream.
        stream: StreamId,
        /// The OPEN_RESULT payload.
        payload: Bytes,
    },
    /// The peer refused one of our opens; the stream is gone.
    Refused {
        /// The stream.
        stream: StreamId,
        /// The OPEN_RESULT payload (why).
        payload: Bytes,
    },
    /// Data or end-of-stream can be read.
    Readable {
        /// The stream.
        stream: StreamId,
    },
    /// A stream that had a full send buffer can take more bytes.
    Writable {
        /// The stream.
        stream: StreamId,
    },
    /// The peer reset a stream; it is gone.
    Reset {
        /// The stream.
        stream: StreamId,
        /// Why.
        reason: ResetReason,
    },
    /// A ping was answered.
    Pong {
        /// Measured round-trip time.
        rtt: Duration,
    },
    /// The peer is going away: no new streams either way; existing ones drain.
    GoAway {
        /// Why.
        reason: GoAwayReason,
    },
}
