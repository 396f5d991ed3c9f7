//! What the world's queue holds: host wake-ups, network deliveries and fault steps.

use crate::ids::{ConnId, HostId, Port};
use bytes::Bytes;

/// One queued world event. Kept small: payloads stay in the connection pipes.
#[derive(Debug)]
pub(crate) enum WorldEvent {
    /// Hand `HostEvent::Started` to a host.
    Start { host: HostId },
    /// A host's timer, valid while `generation` matches the host's timer generation.
    Timer { host: HostId, generation: u32 },
    /// The head of pipe `dir` of connection `key` is due at host `to`.
    Deliver {
        key: u64,
        dir: u8,
        generation: u32,
        to: HostId,
    },
    /// Pipe `dir` of connection `key` has been stalled since stall generation `stall_gen` began.
    StallCheck { key: u64, dir: u8, stall_gen: u32 },
    /// The connector of connection `key` gives up waiting for the handshake.
    ConnectTimeout { key: u64, host: HostId },
    /// Tell `host` the network reset its end `conn`.
    Abort { conn: ConnId, host: HostId },
    /// A datagram arrives.
    Datagram {
        from: HostId,
        from_port: Port,
        to: HostId,
        to_port: Port,
        bytes: Bytes,
    },
    /// Apply entry `index` of the fault schedule (ignored if `epoch` is stale: healed since).
    Fault { epoch: u32, index: u32 },
    /// A later step of a fault already applied.
    FaultStep { epoch: u32, step: FaultStep },
}

/// The second half of a fault with a duration, or a swizzle step.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FaultStep {
    /// Remove one block on `from → to`.
    Unblock { from: HostId, to: HostId },
    /// Clog a host (swizzle).
    Clog { host: HostId },
    /// Unclog a host (swizzle or isolation end).
    Unclog { host: HostId },
    /// Release a held connection.
    Release { key: u64 },
    /// End a latency spike set with `token`.
    EndSpike { a: HostId, b: HostId, token: u32 },
    /// End an inbound throttle set with `token`.
    EndThrottle { host: HostId, token: u32 },
    /// Resume a paused host.
    Resume { host: HostId },
    /// Restart a crashed host.
    Restart { host: HostId },
}

impl WorldEvent {
    /// A small tag and id identifying this event in the trace hash.
    pub(crate) fn trace_tag(&self) -> (u8, u64) {
        match self {
            WorldEvent::Start { host } => (1, u64::from(host.0)),
            WorldEvent::Timer { host, .. } => (2, u64::from(host.0)),
            WorldEvent::Deliver { key, dir, .. } => (3, key << 1 | u64::from(*dir)),
            WorldEvent::StallCheck { key, dir, .. } => (4, key << 1 | u64::from(*dir)),
            WorldEvent::ConnectTimeout { key, .. } => (5, *key),
            WorldEvent::Abort { conn, .. } => (6, conn.0),
            WorldEvent::Datagram { to, to_port, .. } => {
                (7, u64::from(to.0) << 16 | u64::from(*to_port))
            }
            WorldEvent::Fault { index, .. } => (8, u64::from(*index)),
            WorldEvent::FaultStep { .. } => (9, 0),
        }
    }

    /// The host this event is for, if it should wait while that host is paused.
    pub(crate) fn target_host(&self) -> Option<HostId> {
        match self {
            WorldEvent::Start { host }
            | WorldEvent::Timer { host, .. }
            | WorldEvent::ConnectTimeout { host, .. }
            | WorldEvent::Abort { host, .. } => Some(*host),
            WorldEvent::Deliver { to, .. } | WorldEvent::Datagram { to, .. } => Some(*to),
            WorldEvent::StallCheck { .. }
            | WorldEvent::Fault { .. }
            | WorldEvent::FaultStep { .. } => None,
        }
    }
}
