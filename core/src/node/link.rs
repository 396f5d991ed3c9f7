//! One connection a node holds: a session a client or peer node opened to us, or a bridge link
//! this node dialled to a peer. Both carry a mux; the node treats their streams alike.

use crate::mux::{Mux, MuxStats};
use crate::session::{ClientEvent, ClientSession, NodeEvent, NodeSession};
use crate::time::Instant;
use crate::wire::{GoAwayReason, Received, Transmit};

/// The session on one connection.
#[derive(Debug)]
pub(super) enum Link {
    /// A client or a peer node connected to this node.
    Accepted(NodeSession),
    /// This node dialled a peer node (a bridge link).
    Dialled(ClientSession),
}

impl Link {
    pub(super) fn accepted(&mut self) -> Option<&mut NodeSession> {
        match self {
            Link::Accepted(s) => Some(s),
            Link::Dialled(_) => None,
        }
    }

    pub(super) fn mux(&mut self) -> Option<&mut Mux> {
        match self {
            Link::Accepted(s) => s.mux(),
            Link::Dialled(s) => s.mux(),
        }
    }

    pub(super) fn mux_ref(&self) -> Option<&Mux> {
        match self {
            Link::Accepted(s) => s.mux_ref(),
            Link::Dialled(s) => s.mux_ref(),
        }
    }

    pub(super) fn mux_stats(&self) -> MuxStats {
        match self {
            Link::Accepted(s) => s.mux_stats(),
            Link::Dialled(s) => s.mux_stats(),
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        match self {
            Link::Accepted(s) => s.is_closed(),
            Link::Dialled(s) => s.is_closed(),
        }
    }

    pub(super) fn handle_bytes(&mut self, now: Instant, bytes: Received<'_>) {
        match self {
            Link::Accepted(s) => s.handle_bytes(now, bytes),
            Link::Dialled(s) => s.handle_bytes(now, bytes),
        }
    }

    pub(super) fn handle_timeout(&mut self, now: Instant) {
        match self {
            Link::Accepted(s) => s.handle_timeout(now),
            Link::Dialled(s) => s.handle_timeout(now),
        }
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Link::Accepted(s) => s.poll_timeout(),
            Link::Dialled(s) => s.poll_timeout(),
        }
    }

    pub(super) fn poll_transmit(&mut self) -> Option<Transmit> {
        match self {
            Link::Accepted(s) => s.poll_transmit(),
            Link::Dialled(s) => s.poll_transmit(),
        }
    }

    /// The next event, in the node session's terms. A dialled link's `Established` becomes
    /// `PeerEstablished` (with the node id the peer's Welcome named); config pushes and control
    /// answers never come over a bridge link and are dropped.
    pub(super) fn poll_event(&mut self) -> Option<NodeEvent> {
        match self {
            Link::Accepted(s) => s.poll_event(),
            Link::Dialled(s) => loop {
                match s.poll_event()? {
                    ClientEvent::Established(e) => {
                        return Some(NodeEvent::PeerEstablished { node_id: e.node_id });
                    }
                    ClientEvent::Stream(event) => return Some(NodeEvent::Stream(event)),
                    ClientEvent::Closed(reason) => return Some(NodeEvent::Closed(reason)),
                    ClientEvent::ConfigPushed(_) | ClientEvent::ControlResponse(_) => {}
                }
            },
        }
    }

    /// Closes the session now with GOAWAY(`reason`) (a dialled link just says goodbye).
    pub(super) fn kick(&mut self, reason: GoAwayReason) {
        match self {
            Link::Accepted(s) => s.kick(reason),
            Link::Dialled(s) => s.close_now(),
        }
    }

    /// Drains: no new streams; closes when the open ones finish or at `deadline`.
    pub(super) fn drain(&mut self, reason: GoAwayReason, deadline: Option<Instant>) {
        match self {
            Link::Accepted(s) => s.drain(reason, deadline),
            Link::Dialled(s) => s.drain(deadline),
        }
    }

    pub(super) fn check_invariants(&self) -> Result<(), String> {
        match self {
            Link::Accepted(s) => s.check_invariants(),
            Link::Dialled(s) => s.check_invariants(),
        }
    }
}
