//! Why a session ended.

use tunnox_proto::wire::RefuseReason;

use crate::mux::MuxError;
use crate::time::Duration;
use crate::wire::{GoAwayReason, WireError};

/// Why a session closed. After the `Closed` event, the driver flushes `poll_transmit` and closes
/// the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    /// The node refused the session (on the client), or we refused it (on the node).
    #[error("refused: {reason:?}: {message}")]
    Refused {
        /// Typed reason.
        reason: RefuseReason,
        /// Human-readable detail.
        message: String,
        /// When to retry, if the node said.
        retry_after: Option<Duration>,
    },
    /// The handshake did not complete in time.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// Nothing was heard from the peer for the heartbeat timeout.
    #[error("peer silent past the heartbeat timeout")]
    HeartbeatTimeout,
    /// The byte stream could not be decoded.
    #[error("bad frame: {0}")]
    Wire(WireError),
    /// The peer broke the stream protocol.
    #[error("stream protocol error: {0}")]
    Mux(MuxError),
    /// A frame that is not allowed in the current state.
    #[error("protocol violation: {0}")]
    ProtocolViolation(&'static str),
    /// The node could not prove it knows our key: it is not the node we trust.
    #[error("node failed to prove it knows the client key")]
    BadNodeProof,
    /// The peer went away (and the session drained).
    #[error("peer went away: {0:?}")]
    PeerGoAway(GoAwayReason),
    /// We drained the session after announcing GOAWAY.
    #[error("drained")]
    Drained,
    /// The drain deadline passed with streams still open; they were reset.
    #[error("drain deadline passed")]
    DrainTimeout,
    /// Closed by the local application.
    #[error("closed locally")]
    Local,
}

impl CloseReason {
    /// A short stable name, for counters and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            CloseReason::Refused { .. } => "refused",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::Wire(_) => "wire_error",
            CloseReason::Mux(_) => "mux_error",
            CloseReason::ProtocolViolation(_) => "protocol_violation",
            CloseReason::BadNodeProof => "bad_node_proof",
            CloseReason::PeerGoAway(_) => "peer_goaway",
            CloseReason::Drained => "drained",
            CloseReason::DrainTimeout => "drain_timeout",
            CloseReason::Local => "local",
        }
    }

    /// Whether a client should stop instead of reconnecting after this (retrying cannot help or
    /// would fight another login).
    pub fn is_fatal_for_client(&self) -> bool {
        match self {
            CloseReason::Refused { reason, .. } => matches!(
                reason,
                RefuseReason::BadCredentials | RefuseReason::Banned | RefuseReason::VersionMismatch
            ),
            CloseReason::PeerGoAway(reason) => {
                matches!(reason, GoAwayReason::Replaced | GoAwayReason::Kicked)
            }
            CloseReason::BadNodeProof => true,
            _ => false,
        }
    }
}
