//! Streams over one ordered byte pipe.
//!
//! A [`Mux`] multiplexes many bidirectional byte streams over one session. It is a sans-IO state
//! machine: feed it decoded frames with [`Mux::handle_frame`], pull frames to write with
//! [`Mux::poll_transmit`] and events with [`Mux::poll_event`]; the application writes with
//! [`Mux::send`] and reads with [`Mux::read`].
//!
//! Rules it keeps:
//! * **Credit.** Each stream and the session have a receive window. A stream's credit goes back
//!   proactively once the application has read half its window (never only in reply to a block),
//!   so a slow reader holds at most its window and mutual writers never deadlock. Session credit
//!   goes back as soon as received bytes are accounted to a stream: the session window bounds
//!   bytes in flight, so streams that stop reading can never starve the others. A stream's window
//!   doubles, up to `stream_window_max_bytes`, when a window's worth is read in under two RTTs,
//!   while all grown windows together stay within the session window (the memory bound).
//! * **Order.** Control frames (WINDOW, RST, PING, PONG, OPEN, OPEN_RESULT, GOAWAY) leave before
//!   DATA; DATA is split at the frame size and scheduled round-robin so no stream starves another.
//! * **Opens.** Client-opened streams are odd, node-opened even, never reused. DATA may follow an
//!   OPEN at once (the open costs no round trip). Opens are bounded: concurrent streams, our
//!   opens awaiting an answer, peer opens awaiting the application's accept.
//! * **Close.** FIN half-closes one direction; RST aborts both with a reason; a stream is forgotten
//!   when both FINs are through and the application read the end, or on reset or refusal. Frames
//!   that arrive afterwards for it are ignored (their DATA still returns session credit).
//! * **Drain.** After GOAWAY either way no new streams open; existing ones finish.

mod config;
mod error;
mod event;
mod stream;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

pub use config::{MuxConfig, PeerSettings};
pub use error::{MuxError, OpenError, StreamError};
pub use event::MuxEvent;
use stream::{Lifecycle, RecvCredit, Stream};

use crate::time::{Duration, Instant};
use crate::wire::{Frame, GoAwayReason, ResetReason, StreamId, Transmit};

/// Which end of the session this mux is; decides stream id parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The client: opens odd stream ids.
    Client,
    /// The node: opens even stream ids.
    Node,
}

impl Role {
    fn first_stream_id(self) -> StreamId {
        match self {
            Role::Client => 1,
            Role::Node => 2,
        }
    }

    fn owns(self, stream: StreamId) -> bool {
        (stream % 2 == 1) == (self == Role::Client)
    }
}

/// Result of [`Mux::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Some bytes, in order.
    Data(Bytes),
    /// Nothing buffered now; a `Readable` event follows when there is.
    Blocked,
    /// The peer finished the stream and every byte has been read.
    Finished,
}

/// Counters of what the mux did; for metrics and for simulation coverage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MuxStats {
    /// Frames produced by `poll_transmit`.
    pub frames_sent: u64,
    /// Frames accepted by `handle_frame`.
    pub frames_received: u64,
    /// DATA payload bytes sent.
    pub data_bytes_sent: u64,
    /// DATA payload bytes received.
    pub data_bytes_received: u64,
    /// Streams opened by us.
    pub streams_opened: u64,
    /// Streams opened by the peer.
    pub streams_accepted: u64,
    /// Peer opens refused by the limits or because we are going away.
    pub opens_refused_by_limit: u64,
    /// WINDOW frames sent.
    pub window_updates_sent: u64,
    /// Times a stream's window grew by auto-tuning.
    pub window_growths: u64,
    /// Times DATA was waiting but stream or session credit was zero.
    pub credit_exhausted: u64,
    /// Frames for closed streams that were ignored.
    pub stale_frames: u64,
    /// RST frames sent.
    pub resets_sent: u64,
    /// RST frames received for live streams.
    pub resets_received: u64,
    /// Streams reset because the peer sent beyond their credit or after their FIN (never
    /// between correct peers).
    pub flow_control_violations: u64,
    /// Peer resets that crossed a FIN we had already sent.
    pub rst_crossed_fin: u64,
}

impl MuxStats {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &MuxStats) {
        self.frames_sent += other.frames_sent;
        self.frames_received += other.frames_received;
        self.data_bytes_sent += other.data_bytes_sent;
        self.data_bytes_received += other.data_bytes_received;
        self.streams_opened += other.streams_opened;
        self.streams_accepted += other.streams_accepted;
        self.opens_refused_by_limit += other.opens_refused_by_limit;
        self.window_updates_sent += other.window_updates_sent;
        self.window_growths += other.window_growths;
        self.credit_exhausted += other.credit_exhausted;
        self.stale_frames += other.stale_frames;
        self.resets_sent += other.resets_sent;
        self.resets_received += other.resets_received;
        self.flow_control_violations += other.flow_control_violations;
        self.rst_crossed_fin += other.rst_crossed_fin;
    }
}

/// How many unanswered pings are remembered for RTT measurement.
const MAX_OUTSTANDING_PINGS: usize = 8;

/// Stream multiplexer for one session (see the module docs).
#[derive(Debug)]
pub struct Mux {
    role: Role,
    config: MuxConfig,
    peer: PeerSettings,
    streams: BTreeMap<StreamId, Stream>,
    next_local_id: Option<StreamId>,
    last_peer_id: StreamId,
    pending_opens: u32,
    pending_accepts: u32,
    control: VecDeque<Frame>,
    ready: VecDeque<StreamId>,
    events: VecDeque<MuxEvent>,
    send_session_credit: u64,
    recv_session: RecvCredit,
    recv_session_buffered: u64,
    local_going_away: Option<GoAwayReason>,
    peer_going_away: Option<GoAwayReason>,
    pings: VecDeque<(u32, Instant)>,
    next_ping_nonce: u32,
    smoothed_rtt: Option<Duration>,
    /// The latest time seen in any input (for grants made outside a timed call).
    last_now: Instant,
    stats: MuxStats,
}

impl Mux {
    /// A mux for `role` with local limits `config` and the settings the peer announced.
    pub fn new(role: Role, config: MuxConfig, peer: PeerSettings) -> Mux {
        let recv_session = RecvCredit::new(config.session_window_bytes);
        Mux {
            role,
            peer,
            streams: BTreeMap::new(),
            next_local_id: Some(role.first_stream_id()),
            last_peer_id: 0,
            pending_opens: 0,
            pending_accepts: 0,
            control: VecDeque::new(),
            ready: VecDeque::new(),
            events: VecDeque::new(),
            send_session_credit: u64::from(peer.session_window_bytes),
            recv_session,
            recv_session_buffered: 0,
            local_going_away: None,
            peer_going_away: None,
            pings: VecDeque::new(),
            next_ping_nonce: 1,
            smoothed_rtt: None,
            last_now: Instant::ZERO,
            stats: MuxStats::default(),
            config,
        }
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Counters so far.
    pub fn stats(&self) -> &MuxStats {
        &self.stats
    }

    /// Live streams (including ones awaiting open results or accepts).
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Ids of live streams, ascending.
    pub fn stream_ids(&self) -> impl Iterator<Item = StreamId> + '_ {
        self.streams.keys().copied()
    }

    /// Smoothed round-trip time from pings, once one was answered.
    pub fn smoothed_rtt(&self) -> Option<Duration> {
        self.smoothed_rtt
    }

    /// Whether a GOAWAY was sent or received and no stream is left.
    pub fn is_drained(&self) -> bool {
        (self.local_going_away.is_some() || self.peer_going_away.is_some())
            && self.streams.is_empty()
    }

    /// Whether either side announced GOAWAY.
    pub fn is_going_away(&self) -> bool {
        self.local_going_away.is_some() || self.peer_going_away.is_some()
    }

    /// Bytes queued to send on `stream` (accepted from the application, not yet framed).
    pub fn send_queued(&self, stream: StreamId) -> u64 {
        self.streams.get(&stream).map_or(0, |s| s.send_queued)
    }

    /// How many more bytes `send` would take on `stream` now (0 if unknown or finished).
    pub fn send_capacity(&self, stream: StreamId) -> usize {
        let limit = u64::from(self.config.send_buffer_bytes);
        self.streams
            .get(&stream)
            .filter(|s| !s.fin_requested)
            .map_or(0, |s| {
                usize::try_from(limit.saturating_sub(s.send_queued)).unwrap_or(usize::MAX)
            })
    }

    /// Asks for a `Writable` event once `stream`'s send buffer has room again.
    pub fn notify_writable(&mut self, stream: StreamId) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.writable_wanted = true;
        }
    }

    /// Bytes received on `stream` and not yet read.
    pub fn recv_buffered(&self, stream: StreamId) -> u64 {
        self.streams.get(&stream).map_or(0, |s| s.recv_buffered)
    }

    /// Current receive window of `stream` (grows with auto-tuning).
    pub fn recv_window(&self, stream: StreamId) -> Option<u64> {
        self.streams.get(&stream).map(|s| s.recv.window)
    }

    // ----- commands -----

    /// Opens a stream whose OPEN carries `payload`. Data may be sent on it at once.
    pub fn open(&mut self, payload: Bytes) -> Result<StreamId, OpenError> {
        if self.is_going_away() {
            return Err(OpenError::GoingAway);
        }
        if self.streams.len() as u64 >= u64::from(self.stream_limit()) {
            return Err(OpenError::TooManyStreams);
        }
        if self.pending_opens >= self.config.max_pending_opens {
            return Err(OpenError::TooManyPending);
        }
        let id = self.next_local_id.ok_or(OpenError::IdsExhausted)?;
        self.next_local_id = id.checked_add(2);
        self.streams.insert(id, self.new_stream(Lifecycle::Opening));
        self.pending_opens += 1;
        self.stats.streams_opened += 1;
        self.control.push_back(Frame::Open {
            stream: id,
            payload,
        });
        Ok(id)
    }

    /// Accepts a stream the peer opened, answering with `payload`.
    pub fn accept(&mut self, stream: StreamId, payload: Bytes) -> Result<(), StreamError> {
        let s = self
            .streams
            .get_mut(&stream)
            .ok_or(StreamError::UnknownStream)?;
        if s.lifecycle != Lifecycle::Incoming {
            return Err(StreamError::WrongState);
        }
        s.lifecycle = Lifecycle::Open;
        if s.take_readable_notice() {
            self.events.push_back(MuxEvent::Readable { stream });
        }
        self.pending_accepts -= 1;
        self.control.push_back(Frame::OpenResult {
            stream,
            refused: false,
            payload,
        });
        // Data queued before the accept may now go.
        self.schedule(stream);
        Ok(())
    }

    /// Refuses a stream the peer opened; `payload` says why. The stream is gone.
    pub fn refuse(&mut self, stream: StreamId, payload: Bytes) -> Result<(), StreamError> {
        let s = self
            .streams
            .get(&stream)
            .ok_or(StreamError::UnknownStream)?;
        if s.lifecycle != Lifecycle::Incoming {
            return Err(StreamError::WrongState);
        }
        self.control.push_back(Frame::OpenResult {
            stream,
            refused: true,
            payload,
        });
        self.remove_stream(stream);
        Ok(())
    }

    /// Queues up to the stream's free send buffer from `data`; returns how many bytes were taken
    /// (0 when full: a `Writable` event follows when there is room).
    pub fn send(&mut self, stream: StreamId, mut data: Bytes) -> Result<usize, StreamError> {
        let limit = u64::from(self.config.send_buffer_bytes);
        let s = self
            .streams
            .get_mut(&stream)
            .ok_or(StreamError::UnknownStream)?;
        if s.fin_requested {
            return Err(StreamError::Finished);
        }
        let room = limit.saturating_sub(s.send_queued);
        if room == 0 {
            s.writable_wanted = true;
            return Ok(0);
        }
        if data.is_empty() {
            return Ok(0);
        }
        let take = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
        if take < data.len() {
            data.truncate(take);
            s.writable_wanted = true;
        }
        s.send_queued += take as u64;
        s.send_queue.push_back(data);
        self.schedule(stream);
        Ok(take)
    }

    /// Half-closes `stream`: a FIN follows the queued data.
    pub fn finish(&mut self, stream: StreamId) -> Result<(), StreamError> {
        let s = self
            .streams
            .get_mut(&stream)
            .ok_or(StreamError::UnknownStream)?;
        if s.fin_requested {
            return Err(StreamError::Finished);
        }
        s.fin_requested = true;
        self.schedule(stream);
        Ok(())
    }

    /// Aborts `stream` both ways with `reason`; queued and buffered bytes are dropped.
    pub fn reset(&mut self, stream: StreamId, reason: ResetReason) -> Result<(), StreamError> {
        if !self.streams.contains_key(&stream) {
            return Err(StreamError::UnknownStream);
        }
        self.control.push_back(Frame::Rst { stream, reason });
        self.stats.resets_sent += 1;
        self.remove_stream(stream);
        Ok(())
    }

    /// Reads the next buffered chunk of at most `max` bytes from `stream`. Reading returns credit
    /// to the peer (a WINDOW frame once half a window has been read).
    pub fn read(
        &mut self,
        now: Instant,
        stream: StreamId,
        max: usize,
    ) -> Result<ReadOutcome, StreamError> {
        let s = self
            .streams
            .get_mut(&stream)
            .ok_or(StreamError::UnknownStream)?;
        if s.lifecycle == Lifecycle::Incoming {
            return Err(StreamError::WrongState);
        }
        let Some(front) = s.recv_queue.front_mut() else {
            s.readable_notified = false;
            if s.fin_received {
                s.eof_delivered = true;
                if s.is_finished() {
                    self.remove_stream(stream);
                }
                return Ok(ReadOutcome::Finished);
            }
            return Ok(ReadOutcome::Blocked);
        };
        let chunk = if front.len() > max {
            front.split_to(max)
        } else {
            s.recv_queue.pop_front().unwrap_or_default()
        };
        let n = chunk.len() as u64;
        s.recv_buffered -= n;
        s.recv.pending += n;
        self.recv_session_buffered -= n;
        self.grant_stream_credit(now, stream);
        Ok(ReadOutcome::Data(chunk))
    }

    /// Sends a PING; the answer produces a `Pong` event with the RTT. Returns its nonce.
    pub fn ping(&mut self, now: Instant) -> u32 {
        let nonce = self.next_ping_nonce;
        self.next_ping_nonce = self.next_ping_nonce.wrapping_add(1);
        if self.pings.len() == MAX_OUTSTANDING_PINGS {
            self.pings.pop_front();
        }
        self.pings.push_back((nonce, now));
        self.control.push_back(Frame::Ping { nonce });
        nonce
    }

    /// Announces GOAWAY: no new streams either way; existing ones drain.
    pub fn go_away(&mut self, reason: GoAwayReason) {
        if self.local_going_away.is_none() {
            self.local_going_away = Some(reason);
            self.control.push_back(Frame::GoAway { reason });
        }
    }

    // ----- inputs -----

    /// Processes one frame from the peer. An error is fatal: send GOAWAY and close.
    pub fn handle_frame(&mut self, now: Instant, frame: Frame) -> Result<(), MuxError> {
        self.last_now = self.last_now.max(now);
        self.stats.frames_received += 1;
        match frame {
            Frame::Data { stream, payload } => self.on_data(stream, payload)?,
            Frame::Window {
                stream: 0,
                increment,
            } => {
                self.send_session_credit = self
                    .send_session_credit
                    .checked_add(u64::from(increment))
                    .ok_or(MuxError::WindowOverflow(0))?;
                self.reschedule_all();
            }
            Frame::Window { stream, increment } => self.on_window(stream, increment)?,
            Frame::Fin { stream } => self.on_fin(stream)?,
            Frame::Rst { stream, reason } => self.on_rst(stream, reason)?,
            Frame::Ping { nonce } => self.control.push_back(Frame::Pong { nonce }),
            Frame::Pong { nonce } => self.on_pong(now, nonce),
            Frame::GoAway { reason } => {
                if self.peer_going_away.is_none() {
                    self.peer_going_away = Some(reason);
                    self.events.push_back(MuxEvent::GoAway { reason });
                }
            }
            Frame::Open { stream, payload } => self.on_open(stream, payload)?,
            Frame::OpenResult {
                stream,
                refused,
                payload,
            } => self.on_open_result(stream, refused, payload)?,
            other => return Err(MuxError::NotAMuxFrame(other.frame_type())),
        }
        if self.control.len() > self.config.max_queued_control_frames as usize {
            return Err(MuxError::ControlQueueOverflow(
                self.config.max_queued_control_frames,
            ));
        }
        Ok(())
    }

    // ----- outputs -----

    /// The next frame to write: control frames first, then DATA round-robin over streams with
    /// credit. `None` when there is nothing to send (or no credit).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let frame = match self.control.pop_front() {
            Some(frame) => frame,
            None => self.next_data_frame()?,
        };
        self.stats.frames_sent += 1;
        Some(frame.encode())
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<MuxEvent> {
        self.events.pop_front()
    }

    /// Whether frames are waiting to be written.
    pub fn has_transmit(&self) -> bool {
        !self.control.is_empty()
            || self.ready.iter().any(|id| {
                self.streams
                    .get(id)
                    .is_some_and(|s| s.sendable(self.send_session_credit))
            })
    }

    // ----- frame handlers -----

    fn on_data(&mut self, stream: StreamId, payload: Bytes) -> Result<(), MuxError> {
        let n = payload.len() as u64;
        if payload.len() > self.config.max_frame_payload_bytes as usize {
            return Err(MuxError::FrameTooLarge {
                length: payload.len(),
                max: self.config.max_frame_payload_bytes,
            });
        }
        self.recv_session
            .receive(n)
            .map_err(|excess| MuxError::SessionWindowExceeded { excess })?;
        self.stats.data_bytes_received += n;
        let Some(s) = self.streams.get_mut(&stream) else {
            self.check_stale(crate::wire::FrameType::Data, stream)?;
            // The peer spent session credit on a stream we closed: give it back.
            self.return_session_credit(n);
            return Ok(());
        };
        if s.fin_received || s.recv.receive(n).is_err() {
            // DATA after FIN, or over the stream's credit: the peer broke this stream.
            self.stats.flow_control_violations += 1;
            self.return_session_credit(n);
            self.control.push_back(Frame::Rst {
                stream,
                reason: ResetReason::FlowControl,
            });
            self.stats.resets_sent += 1;
            self.events.push_back(MuxEvent::Reset {
                stream,
                reason: ResetReason::FlowControl,
            });
            self.remove_stream(stream);
            return Ok(());
        }
        if n == 0 {
            return Ok(());
        }
        s.recv_buffered += n;
        s.recv_queue.push_back(payload);
        self.recv_session_buffered += n;
        if s.take_readable_notice() {
            self.events.push_back(MuxEvent::Readable { stream });
        }
        // The bytes now belong to the stream, bounded by its own window: the session credit they
        // used goes back at once. Returning it only when the application reads would let streams
        // that stop reading (a stuck visitor) hold the whole session window and stall every
        // other stream.
        self.return_session_credit(n);
        Ok(())
    }

    fn on_window(&mut self, stream: StreamId, increment: u32) -> Result<(), MuxError> {
        let Some(s) = self.streams.get_mut(&stream) else {
            return self.check_stale(crate::wire::FrameType::Window, stream);
        };
        s.send_credit = s
            .send_credit
            .checked_add(u64::from(increment))
            .ok_or(MuxError::WindowOverflow(stream))?;
        self.schedule(stream);
        Ok(())
    }

    fn on_fin(&mut self, stream: StreamId) -> Result<(), MuxError> {
        let Some(s) = self.streams.get_mut(&stream) else {
            return self.check_stale(crate::wire::FrameType::Fin, stream);
        };
        if s.fin_received {
            return Ok(());
        }
        s.fin_received = true;
        if s.take_readable_notice() {
            self.events.push_back(MuxEvent::Readable { stream });
        }
        Ok(())
    }

    fn on_rst(&mut self, stream: StreamId, reason: ResetReason) -> Result<(), MuxError> {
        let Some(s) = self.streams.get(&stream) else {
            return self.check_stale(crate::wire::FrameType::Rst, stream);
        };
        if s.fin_sent {
            self.stats.rst_crossed_fin += 1;
        }
        self.stats.resets_received += 1;
        self.events.push_back(MuxEvent::Reset { stream, reason });
        self.remove_stream(stream);
        Ok(())
    }

    fn on_open(&mut self, stream: StreamId, payload: Bytes) -> Result<(), MuxError> {
        if self.role.owns(stream) || stream <= self.last_peer_id {
            return Err(MuxError::BadStreamId(stream));
        }
        self.last_peer_id = stream;
        let over_limit = self.streams.len() as u64 >= u64::from(self.config.max_streams)
            || self.pending_accepts >= self.config.max_pending_accepts;
        if self.local_going_away.is_some() || over_limit {
            let reason = if over_limit {
                ResetReason::StreamLimit
            } else {
                ResetReason::Refused
            };
            self.control.push_back(Frame::Rst { stream, reason });
            self.stats.resets_sent += 1;
            self.stats.opens_refused_by_limit += 1;
            return Ok(());
        }
        self.streams
            .insert(stream, self.new_stream(Lifecycle::Incoming));
        self.pending_accepts += 1;
        self.stats.streams_accepted += 1;
        self.events
            .push_back(MuxEvent::Incoming { stream, payload });
        Ok(())
    }

    fn on_open_result(
        &mut self,
        stream: StreamId,
        refused: bool,
        payload: Bytes,
    ) -> Result<(), MuxError> {
        let Some(s) = self.streams.get_mut(&stream) else {
            return self.check_stale(crate::wire::FrameType::OpenResult, stream);
        };
        if s.lifecycle != Lifecycle::Opening {
            return Err(MuxError::UnexpectedOpenResult(stream));
        }
        self.pending_opens -= 1;
        if refused {
            s.lifecycle = Lifecycle::Open; // so remove_stream does not count it pending again
            self.events.push_back(MuxEvent::Refused { stream, payload });
            self.remove_stream(stream);
        } else {
            s.lifecycle = Lifecycle::Open;
            let notify = s.take_readable_notice();
            self.events
                .push_back(MuxEvent::Accepted { stream, payload });
            if notify {
                self.events.push_back(MuxEvent::Readable { stream });
            }
        }
        Ok(())
    }

    fn on_pong(&mut self, now: Instant, nonce: u32) {
        let Some(pos) = self.pings.iter().position(|(n, _)| *n == nonce) else {
            return;
        };
        let (_, sent_at) = self.pings[pos];
        self.pings.drain(..=pos);
        let rtt = now.saturating_duration_since(sent_at);
        self.smoothed_rtt = Some(match self.smoothed_rtt {
            None => rtt,
            Some(srtt) => (srtt * 7 + rtt) / 8,
        });
        self.events.push_back(MuxEvent::Pong { rtt });
    }

    /// A frame for a stream we do not hold: ignore it if the stream existed once, else the peer is
    /// talking about a stream that was never opened.
    fn check_stale(
        &mut self,
        frame_type: crate::wire::FrameType,
        stream: StreamId,
    ) -> Result<(), MuxError> {
        let existed = if self.role.owns(stream) {
            self.next_local_id.is_none_or(|next| stream < next)
        } else {
            stream <= self.last_peer_id
        };
        if existed {
            self.stats.stale_frames += 1;
            Ok(())
        } else {
            Err(MuxError::UnknownStream { frame_type, stream })
        }
    }

    // ----- scheduling and credit -----

    /// A fresh stream: send credit as the peer announced, receive window as configured.
    fn new_stream(&self, lifecycle: Lifecycle) -> Stream {
        Stream::new(
            lifecycle,
            self.peer.stream_window_bytes,
            self.config.stream_window_bytes,
        )
    }

    fn stream_limit(&self) -> u32 {
        self.config.max_streams.min(self.peer.max_streams)
    }

    fn max_send_payload(&self) -> u64 {
        u64::from(
            self.config
                .max_frame_payload_bytes
                .min(self.peer.max_frame_payload_bytes),
        )
    }

    /// Puts `stream` on the ready queue if it has something to send.
    fn schedule(&mut self, stream: StreamId) {
        let credit = self.send_session_credit;
        if let Some(s) = self.streams.get_mut(&stream)
            && !s.in_ready_queue
            && s.lifecycle != Lifecycle::Incoming
            && s.sendable(credit)
        {
            s.in_ready_queue = true;
            self.ready.push_back(stream);
        }
    }

    /// Puts every stream with something to send on the ready queue (after session credit
    /// returns). Allocation-free: the ready queue keeps its capacity.
    fn reschedule_all(&mut self) {
        let credit = self.send_session_credit;
        for (id, s) in self.streams.iter_mut() {
            if !s.in_ready_queue && s.lifecycle != Lifecycle::Incoming && s.sendable(credit) {
                s.in_ready_queue = true;
                self.ready.push_back(*id);
            }
        }
    }

    fn next_data_frame(&mut self) -> Option<Frame> {
        let max_payload = self.max_send_payload();
        let mut scanned = 0;
        while scanned < self.ready.len() {
            let id = self.ready.pop_front()?;
            let credit = self.send_session_credit;
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            s.in_ready_queue = false;
            if s.send_queued > 0 && s.send_credit > 0 && credit > 0 {
                let n = s
                    .send_queued
                    .min(s.send_credit)
                    .min(credit)
                    .min(max_payload);
                let payload = take_bytes(&mut s.send_queue, n as usize);
                s.send_queued -= n;
                s.send_credit -= n;
                self.send_session_credit -= n;
                self.stats.data_bytes_sent += n;
                if s.send_queued > 0 && (s.send_credit == 0 || self.send_session_credit == 0) {
                    self.stats.credit_exhausted += 1;
                }
                let half_free = s.send_queued <= u64::from(self.config.send_buffer_bytes) / 2;
                if s.writable_wanted && half_free && !s.fin_requested {
                    s.writable_wanted = false;
                    self.events.push_back(MuxEvent::Writable { stream: id });
                }
                self.schedule(id);
                return Some(Frame::Data {
                    stream: id,
                    payload,
                });
            }
            if s.fin_ready() {
                s.fin_sent = true;
                if s.is_finished() {
                    self.remove_stream(id);
                }
                return Some(Frame::Fin { stream: id });
            }
            if s.sendable(credit) || (s.send_queued > 0 && s.send_credit > 0) {
                // Blocked only by session credit: keep its place for when credit returns.
                s.in_ready_queue = true;
                self.ready.push_back(id);
                scanned += 1;
            }
        }
        None
    }

    fn grant_stream_credit(&mut self, now: Instant, stream: StreamId) {
        let max = u64::from(self.config.stream_window_max_bytes);
        let rtt = self.smoothed_rtt;
        let Some(s) = self.streams.get(&stream) else {
            return;
        };
        if !s.recv.grant_due() || s.fin_received {
            return;
        }
        // Auto-tune: a whole window consumed within two RTTs means the window, not the reader,
        // limits throughput; double it up to the cap.
        let mut growth = match (rtt, s.recv.last_grant_at) {
            (Some(rtt), Some(last)) if now.saturating_duration_since(last) < rtt * 2 => {
                s.recv.window.min(max.saturating_sub(s.recv.window))
            }
            _ => 0,
        };
        if growth > 0 {
            // Grown windows together stay within the session window: what streams that stop
            // reading can make us buffer is bounded by it (beyond the initial windows).
            let windows: u64 = self.streams.values().map(|s| s.recv.window).sum();
            let budget = u64::from(self.config.session_window_bytes);
            growth = growth.min(budget.saturating_sub(windows));
        }
        if growth > 0 {
            self.stats.window_growths += 1;
        }
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        let increment = s.recv.take_grant(growth, now);
        self.push_window(stream, increment);
    }

    fn grant_session_credit(&mut self, now: Instant) {
        if self.recv_session.grant_due() {
            let increment = self.recv_session.take_grant(0, now);
            self.push_window(0, increment);
        }
    }

    fn push_window(&mut self, stream: StreamId, mut increment: u64) {
        if stream != 0
            && crate::planted::active(crate::planted::PlantedBug::DropWindowUpdate)
            && self.stats.window_updates_sent % 3 == 2
        {
            self.stats.window_updates_sent += 1;
            return;
        }
        // Increments above u32::MAX (only possible with huge configured windows) go in pieces.
        while increment > 0 {
            let piece = increment.min(u64::from(u32::MAX));
            increment -= piece;
            self.stats.window_updates_sent += 1;
            self.control.push_back(Frame::Window {
                stream,
                increment: piece as u32,
            });
        }
    }

    fn remove_stream(&mut self, stream: StreamId) {
        let Some(s) = self.streams.remove(&stream) else {
            return;
        };
        match s.lifecycle {
            Lifecycle::Opening => self.pending_opens -= 1,
            Lifecycle::Incoming => self.pending_accepts -= 1,
            Lifecycle::Open => {}
        }
        // Unread bytes are dropped (their session credit went back when they arrived).
        self.recv_session_buffered -= s.recv_buffered;
    }

    /// Session credit goes back to the peer as soon as received bytes are accounted to a stream
    /// (or dropped): the session window bounds bytes in flight, stream windows bound buffers.
    fn return_session_credit(&mut self, bytes: u64) {
        if bytes > 0 {
            self.recv_session.pending += bytes;
            self.grant_session_credit(self.last_now);
        }
    }

    // ----- checks -----

    /// Checks the mux's internal invariants (for tests and the simulator).
    pub fn check_invariants(&self) -> Result<(), String> {
        let session = &self.recv_session;
        if session.remaining + session.pending != session.window {
            return Err(format!(
                "session credit not conserved: remaining {} + pending {} != window {}",
                session.remaining, session.pending, session.window
            ));
        }
        let mut buffered_total = 0;
        let (mut opening, mut incoming) = (0, 0);
        for (id, s) in &self.streams {
            if s.recv_buffered + s.recv.remaining + s.recv.pending != s.recv.window {
                return Err(format!("stream {id}: credit not conserved"));
            }
            let initial = u64::from(self.config.stream_window_bytes);
            if s.recv.window > initial.max(u64::from(self.config.stream_window_max_bytes)) {
                return Err(format!(
                    "stream {id}: window {} above the cap",
                    s.recv.window
                ));
            }
            let queued: u64 = s.send_queue.iter().map(|b| b.len() as u64).sum();
            if queued != s.send_queued {
                return Err(format!("stream {id}: send queue length mismatch"));
            }
            if s.send_queued > u64::from(self.config.send_buffer_bytes) {
                return Err(format!("stream {id}: send buffer over its limit"));
            }
            let buffered: u64 = s.recv_queue.iter().map(|b| b.len() as u64).sum();
            if buffered != s.recv_buffered {
                return Err(format!("stream {id}: receive buffer length mismatch"));
            }
            if s.in_ready_queue != self.ready.contains(id) {
                return Err(format!(
                    "stream {id}: ready flag disagrees with the ready queue"
                ));
            }
            match s.lifecycle {
                Lifecycle::Opening => opening += 1,
                Lifecycle::Incoming => incoming += 1,
                Lifecycle::Open => {}
            }
            buffered_total += s.recv_buffered;
        }
        if buffered_total != self.recv_session_buffered {
            return Err("session buffered bytes disagree with the streams".into());
        }
        if opening != self.pending_opens || incoming != self.pending_accepts {
            return Err("pending open/accept counters disagree with the streams".into());
        }
        if self.pending_opens > self.config.max_pending_opens
            || self.pending_accepts > self.config.max_pending_accepts
            || self.streams.len() as u64
                > u64::from(self.config.max_streams.max(self.stream_limit()))
        {
            return Err("a stream limit is exceeded".into());
        }
        Ok(())
    }

    /// A cheap fingerprint of the mux state, equal for equal histories.
    pub fn digest(&self) -> u64 {
        let mut h = crate::digest::Fnv64::new();
        h.write_u64(self.streams.len() as u64);
        for (id, s) in &self.streams {
            h.write_u64(u64::from(*id));
            h.write_u64(s.send_queued);
            h.write_u64(s.send_credit);
            h.write_u64(s.recv_buffered);
            h.write_u64(s.recv.window);
            h.write_u64(s.recv.remaining);
            h.write_u64(u64::from(s.fin_sent) | u64::from(s.fin_received) << 1);
        }
        h.write_u64(self.send_session_credit);
        h.write_u64(self.recv_session.remaining);
        h.write_u64(self.stats.frames_sent);
        h.write_u64(self.stats.frames_received);
        h.write_u64(self.control.len() as u64);
        h.finish()
    }
}

/// Takes exactly `n` bytes from the front of `queue` (which holds at least `n`). A chunk is only
/// copied when the frame spans several application writes.
fn take_bytes(queue: &mut VecDeque<Bytes>, n: usize) -> Bytes {
    let Some(front) = queue.front_mut() else {
        return Bytes::new();
    };
    if front.len() > n {
        return front.split_to(n);
    }
    if front.len() == n {
        return queue.pop_front().unwrap_or_default();
    }
    let mut out = bytes::BytesMut::with_capacity(n);
    while out.len() < n {
        let Some(front) = queue.front_mut() else {
            break;
        };
        let want = n - out.len();
        if front.len() > want {
            out.extend_from_slice(&front.split_to(want));
        } else {
            out.extend_from_slice(front);
            queue.pop_front();
        }
    }
    out.freeze()
}
