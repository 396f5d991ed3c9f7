//! The state of one stream: its lifecycle, send queue and credit, receive buffer and window.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::time::Instant;

/// Where a stream is in its open handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Lifecycle {
    /// We sent OPEN; no OPEN_RESULT yet.
    Opening,
    /// The peer sent OPEN; the application has not accepted yet.
    Incoming,
    /// Accepted by both sides.
    Open,
}

/// Receive-side flow control of one stream or of the session.
///
/// The conservation law `buffered + remaining + pending == window` always holds: bytes are either
/// buffered unread, still allowed in flight, or read but not yet re-granted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct RecvCredit {
    /// Current window size in bytes.
    pub window: u64,
    /// Bytes the peer may still send before we grant more.
    pub remaining: u64,
    /// Bytes read by the application and not yet granted back.
    pub pending: u64,
    /// When credit was last granted (for auto-tuning).
    pub last_grant_at: Option<Instant>,
}

impl RecvCredit {
    pub fn new(window: u32) -> RecvCredit {
        RecvCredit {
            window: u64::from(window),
            remaining: u64::from(window),
            pending: 0,
            last_grant_at: None,
        }
    }

    /// Accounts `n` received bytes; `Err(excess)` if they exceed the credit.
    pub fn receive(&mut self, n: u64) -> Result<(), u64> {
        if n > self.remaining {
            return Err(n - self.remaining);
        }
        self.remaining -= n;
        Ok(())
    }

    /// Whether enough was consumed that a grant is due (half the window, granted proactively).
    pub fn grant_due(&self) -> bool {
        self.pending > 0 && self.pending >= self.window / 2
    }

    /// Takes the pending credit (plus `growth` bytes of window growth) as one increment.
    pub fn take_grant(&mut self, growth: u64, now: Instant) -> u64 {
        let increment = self.pending + growth;
        self.window += growth;
        self.remaining += increment;
        self.pending = 0;
        self.last_grant_at = Some(now);
        increment
    }
}

/// One live stream.
#[derive(Debug)]
pub(super) struct Stream {
    pub lifecycle: Lifecycle,
    // Send side.
    pub send_queue: VecDeque<Bytes>,
    pub send_queued: u64,
    pub send_credit: u64,
    pub fin_requested: bool,
    pub fin_sent: bool,
    pub writable_wanted: bool,
    pub in_ready_queue: bool,
    // Receive side.
    pub recv_queue: VecDeque<Bytes>,
    pub recv_buffered: u64,
    pub recv: RecvCredit,
    pub fin_received: bool,
    pub eof_delivered: bool,
    pub readable_notified: bool,
}

impl Stream {
    pub fn new(lifecycle: Lifecycle, send_credit: u32, recv_window: u32) -> Stream {
        Stream {
            lifecycle,
            send_queue: VecDeque::new(),
            send_queued: 0,
            send_credit: u64::from(send_credit),
            fin_requested: false,
            fin_sent: false,
            writable_wanted: false,
            in_ready_queue: false,
            recv_queue: VecDeque::new(),
            recv_buffered: 0,
            recv: RecvCredit::new(recv_window),
            fin_received: false,
            eof_delivered: false,
            readable_notified: false,
        }
    }

    /// Whether the scheduler could emit a frame for this stream given session credit.
    pub fn sendable(&self, session_credit: u64) -> bool {
        let data = self.send_queued > 0 && self.send_credit > 0 && session_credit > 0;
        data || self.fin_ready()
    }

    /// Whether a FIN is due: requested, not sent, all data out.
    pub fn fin_ready(&self) -> bool {
        self.fin_requested && !self.fin_sent && self.send_queued == 0
    }

    /// Whether the application must now be told the stream is readable: accepted, with data or
    /// its end waiting, and not told since it last read the stream empty. Records the notice.
    pub fn take_readable_notice(&mut self) -> bool {
        let due = !self.readable_notified
            && self.lifecycle != Lifecycle::Incoming
            && (self.recv_buffered > 0 || self.fin_received);
        if due {
            self.readable_notified = true;
        }
        due
    }

    /// Whether both directions are done and the application has seen the end: the stream can go.
    pub fn is_finished(&self) -> bool {
        self.fin_sent && self.eof_delivered
    }
}
