//! The established phase shared by both ends: frames to and from the mux, heartbeats, dead-peer
//! detection and graceful drain.

use std::collections::VecDeque;

use crate::mux::{Mux, MuxEvent};
use crate::time::{Duration, Instant, earliest};
use crate::wire::{Decoder, Frame, GoAwayReason, Transmit};

use super::CloseReason;

/// Heartbeat timing of an established session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// A PING is sent this often.
    pub interval: Duration,
    /// The peer is dead after this long without any frame from it.
    pub timeout: Duration,
}

/// Connection-level state common to client and node sessions.
#[derive(Debug)]
pub(super) struct Conn {
    pub decoder: Decoder,
    /// Session frames (handshake, config, final GOAWAY) that go before any mux output.
    pub outbox: VecDeque<Transmit>,
    pub link: Option<Link>,
    pub closed: Option<CloseReason>,
    /// The GOAWAY the peer sent, once it has.
    peer_goaway: Option<GoAwayReason>,
    /// The mux's counters when the session closed (the mux itself is dropped).
    final_mux_stats: Option<crate::mux::MuxStats>,
}

/// The established part: the mux plus liveness timers.
#[derive(Debug)]
pub(super) struct Link {
    pub mux: Mux,
    heartbeat: Heartbeat,
    last_received_at: Instant,
    next_ping_at: Instant,
    drain_deadline: Option<Instant>,
    draining: bool,
}

/// What the caller must do with a frame the link did not consume.
pub(super) enum Unhandled {
    /// A session-level frame for the role-specific code.
    Frame(Frame),
}

impl Conn {
    pub fn new(max_payload_bytes: u32) -> Conn {
        Conn {
            decoder: Decoder::new(max_payload_bytes),
            outbox: VecDeque::new(),
            link: None,
            closed: None,
            peer_goaway: None,
            final_mux_stats: None,
        }
    }

    /// Bytes arrived: the peer is alive, even if they do not complete a frame yet (a large frame
    /// trickling in over a slow link must not look like silence).
    pub fn note_bytes_received(&mut self, now: Instant) {
        if let Some(link) = self.link.as_mut() {
            link.last_received_at = link.last_received_at.max(now);
        }
    }

    pub fn send(&mut self, frame: Frame) {
        self.outbox.push_back(frame.encode());
    }

    pub fn establish(&mut self, now: Instant, mux: Mux, heartbeat: Heartbeat) {
        self.link = Some(Link {
            mux,
            heartbeat,
            last_received_at: now,
            next_ping_at: now + heartbeat.interval,
            drain_deadline: None,
            draining: false,
        });
    }

    /// Ends the session: an error close drops the mux and queues a final GOAWAY if the session
    /// was established. Returns false if it was already closed.
    pub fn close(&mut self, reason: CloseReason, goaway: Option<GoAwayReason>) -> bool {
        if self.closed.is_some() {
            return false;
        }
        if let Some(link) = self.link.take() {
            self.final_mux_stats = Some(link.mux.stats().clone());
            if let Some(reason) = goaway {
                self.send(Frame::GoAway { reason });
            }
        }
        self.closed = Some(reason);
        true
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(t) = self.outbox.pop_front() {
            return Some(t);
        }
        self.link.as_mut()?.mux.poll_transmit()
    }

    /// Decodes the next frame; stream frames go to the mux, session frames come back.
    /// `Err` carries the reason the session must close.
    pub fn next_frame(
        &mut self,
        now: Instant,
    ) -> Result<Option<Unhandled>, (CloseReason, GoAwayReason)> {
        loop {
            let frame = match self.decoder.decode() {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(None),
                Err(e) => return Err((CloseReason::Wire(e), GoAwayReason::ProtocolError)),
            };
            let Some(link) = self.link.as_mut() else {
                return Ok(Some(Unhandled::Frame(frame)));
            };
            link.last_received_at = now;
            if is_mux_frame(&frame) {
                link.mux
                    .handle_frame(now, frame)
                    .map_err(|e| (CloseReason::Mux(e), GoAwayReason::ProtocolError))?;
            } else {
                return Ok(Some(Unhandled::Frame(frame)));
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let link = self.link.as_ref()?;
        let mut dead_after = link.heartbeat.timeout;
        if crate::planted::active(crate::planted::PlantedBug::HeartbeatTimeoutOffByOne) {
            dead_after = dead_after.saturating_sub(link.heartbeat.interval);
        }
        let dead_at = link.last_received_at + dead_after;
        earliest(
            Some(earliest(Some(dead_at), Some(link.next_ping_at))?),
            link.drain_deadline,
        )
    }

    /// Fires due timers. `Err` means the session must close.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), (CloseReason, GoAwayReason)> {
        let Some(link) = self.link.as_mut() else {
            return Ok(());
        };
        let mut dead_after = link.heartbeat.timeout;
        if crate::planted::active(crate::planted::PlantedBug::HeartbeatTimeoutOffByOne) {
            dead_after = dead_after.saturating_sub(link.heartbeat.interval);
        }
        if now >= link.last_received_at + dead_after {
            return Err((
                CloseReason::HeartbeatTimeout,
                GoAwayReason::HeartbeatTimeout,
            ));
        }
        if link.drain_deadline.is_some_and(|deadline| now >= deadline) {
            return Err((CloseReason::DrainTimeout, GoAwayReason::Shutdown));
        }
        if now >= link.next_ping_at {
            link.mux.ping(now);
            link.next_ping_at = now + link.heartbeat.interval;
        }
        Ok(())
    }

    /// Starts a graceful drain: GOAWAY now, close when no stream is left or at `deadline`.
    pub fn drain(&mut self, reason: GoAwayReason, deadline: Option<Instant>) {
        if let Some(link) = self.link.as_mut() {
            link.mux.go_away(reason);
            link.draining = true;
            link.drain_deadline = earliest(link.drain_deadline, deadline);
        }
    }

    /// The next mux event (a GOAWAY from the peer is remembered on the way).
    pub fn poll_mux_event(&mut self) -> Option<MuxEvent> {
        let event = self.link.as_mut()?.mux.poll_event()?;
        if let MuxEvent::GoAway { reason } = event {
            self.peer_goaway = Some(reason);
        }
        Some(event)
    }

    /// Once a drain (ours or the peer's) has completed: why the session ends.
    pub fn drain_outcome(&self) -> Option<CloseReason> {
        let link = self.link.as_ref()?;
        if !link.mux.is_drained() {
            return None;
        }
        Some(match (link.draining, self.peer_goaway) {
            (false, Some(reason)) => CloseReason::PeerGoAway(reason),
            _ => CloseReason::Drained,
        })
    }

    /// The mux's counters: live, or as they were when the session closed.
    pub fn mux_stats(&self) -> crate::mux::MuxStats {
        match &self.link {
            Some(link) => link.mux.stats().clone(),
            None => self.final_mux_stats.clone().unwrap_or_default(),
        }
    }

    /// The mux's invariants, once established.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.link
            .as_ref()
            .map_or(Ok(()), |l| l.mux.check_invariants())
    }
}

fn is_mux_frame(frame: &Frame) -> bool {
    matches!(
        frame,
        Frame::Data { .. }
            | Frame::Window { .. }
            | Frame::Fin { .. }
            | Frame::Rst { .. }
            | Frame::Ping { .. }
            | Frame::Pong { .. }
            | Frame::GoAway { .. }
            | Frame::Open { .. }
            | Frame::OpenResult { .. }
    )
}
