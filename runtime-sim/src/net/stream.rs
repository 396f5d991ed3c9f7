//! TCP-like stream connections: a handshake, then two ordered byte pipes that stall under
//! partitions, reset when stalled too long, and half-close with `Eof`.
//!
//! Every segment (handshake, data piece, FIN, RST) sits in its direction's pipe with an arrival
//! time; one `Deliver` event per pipe is queued for the head only. Arrival times never decrease
//! along a pipe, so bytes are never reordered within a connection. A blocked head stalls the pipe
//! (nothing is lost) until the block lifts; then delivery resumes one fresh latency later.

use super::{NetError, Network, serialization};
use crate::event::WorldEvent;
use crate::host::{ConnectFailReason, HostEvent};
use crate::ids::{ConnId, HostId, Port};
use crate::net::Links;
use crate::net::latency::LatencyModel;
use crate::queue::EventQueue;
use crate::stats::{CONNECTION_RESET_BY_STALL, SimStats};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use tunnox_core::rng::Rng;
use tunnox_core::time::{Duration, Instant};

/// Where one end of a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndState {
    /// Connector: handshake in progress. Acceptor: SYN not arrived yet.
    Pending,
    /// Established; the host knows this end.
    Open,
    /// The network reset it; the host is about to be told (`was_open`: `Reset`, else
    /// `ConnectFailed`).
    Aborting { was_open: bool },
    /// Forgotten by its host (closed, reset, crashed) or never accepted.
    Gone,
}

/// One end of a connection.
#[derive(Debug)]
pub(crate) struct End {
    pub(crate) host: HostId,
    pub(crate) state: EndState,
    write_shut: bool,
    rst_sent: bool,
}

/// What travels in a pipe.
#[derive(Debug)]
enum SegKind {
    Syn,
    SynAck,
    Refuse,
    Data(Bytes),
    Fin,
    Rst,
}

#[derive(Debug)]
struct Segment {
    arrive_at: Instant,
    /// When it would arrive without the receiver's inbound throttle (before being ordered
    /// behind its predecessors).
    unthrottled_at: Instant,
    kind: SegKind,
}

/// One direction of a connection.
#[derive(Debug, Default)]
struct Pipe {
    segs: VecDeque<Segment>,
    /// Arrival time of the last segment pushed (arrivals never decrease).
    last_arrive_at: Instant,
    /// A valid `Deliver` event for the head is queued.
    armed: bool,
    /// Generation of the queued `Deliver` (older ones are stale).
    generation: u32,
    /// When the head's delivery was first blocked, while blocked.
    stalled_since: Option<Instant>,
    /// Generation of the current stall (older `StallCheck`s are stale).
    stall_gen: u32,
    /// Nothing is delivered before this (set to a fresh latency after a stall lifts).
    floor: Instant,
    /// Data bytes queued in `segs`.
    data_bytes: u64,
}

impl Pipe {
    /// Drops every queued segment; returns the data bytes dropped.
    fn clear(&mut self, now: Instant) -> u64 {
        self.segs.clear();
        self.armed = false;
        self.generation = self.generation.wrapping_add(1);
        self.last_arrive_at = now;
        std::mem::take(&mut self.data_bytes)
    }

    fn due_at(&self, head: &Segment) -> Instant {
        head.arrive_at.max(self.floor)
    }
}

/// A stream connection: ends `[connector, acceptor]`; `pipes[d]` carries bytes from end `d` to
/// end `1 - d`.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) ends: [End; 2],
    pipes: [Pipe; 2],
    port: Port,
    /// Deliveries held by a hold/release fault.
    pub(crate) held: bool,
    /// Coverage counter bumped when a cut on this connection heals with data in flight.
    label: Option<&'static str>,
}

fn end_id(key: u64, end: usize) -> ConnId {
    if end == 0 {
        ConnId::connector(key)
    } else {
        ConnId::acceptor(key)
    }
}

/// One latency draw for `src → dst`, including any spike on that link.
fn latency(
    model: &LatencyModel,
    rng: &mut Rng,
    heavy_tail: bool,
    links: &Links,
    src: HostId,
    dst: HostId,
) -> Duration {
    model.sample(rng, heavy_tail) + links.spike(src, dst)
}

impl Conn {
    fn new(from: HostId, to: HostId, port: Port) -> Conn {
        let end = |host| End {
            host,
            state: EndState::Pending,
            write_shut: false,
            rst_sent: false,
        };
        Conn {
            ends: [end(from), end(to)],
            pipes: [Pipe::default(), Pipe::default()],
            port,
            held: false,
            label: None,
        }
    }

    /// Appends a segment to pipe `dir`, arriving no earlier than `arrive_at` nor than its
    /// predecessor.
    fn push(&mut self, dir: usize, arrive_at: Instant, kind: SegKind) {
        self.push_throttled(dir, arrive_at, arrive_at, kind);
    }

    /// Like `push`, for a segment that the receiver's inbound throttle delays from
    /// `unthrottled_at` to `arrive_at`.
    fn push_throttled(
        &mut self,
        dir: usize,
        arrive_at: Instant,
        unthrottled_at: Instant,
        kind: SegKind,
    ) {
        let pipe = &mut self.pipes[dir];
        let arrive_at = arrive_at.max(pipe.last_arrive_at);
        pipe.last_arrive_at = arrive_at;
        if let SegKind::Data(b) = &kind {
            pipe.data_bytes += b.len() as u64;
        }
        pipe.segs.push_back(Segment {
            arrive_at,
            unthrottled_at,
            kind,
        });
    }

    /// The receiver of pipe `dir` is no longer throttled: segments the throttle pushed past
    /// `now` arrive when they would have without it, but no earlier than `now` (nor than their
    /// predecessors). Nothing is delayed; the head's `Deliver` is re-queued if it moved.
    fn unthrottle(&mut self, key: u64, dir: usize, now: Instant, q: &mut EventQueue<WorldEvent>) {
        let pipe = &mut self.pipes[dir];
        let head_was = pipe.segs.front().map(|h| h.arrive_at);
        let mut last = Instant::ZERO;
        for seg in &mut pipe.segs {
            seg.arrive_at = seg.arrive_at.min(seg.unthrottled_at.max(now)).max(last);
            last = seg.arrive_at;
        }
        pipe.last_arrive_at = if pipe.segs.is_empty() {
            pipe.last_arrive_at.min(now)
        } else {
            last
        };
        if pipe.segs.front().map(|h| h.arrive_at) != head_was && pipe.armed {
            // The queued `Deliver` is for the old time: a fresh one (new generation) replaces it.
            pipe.armed = false;
            self.arm(key, dir, now, q);
        }
    }

    /// Queues the `Deliver` event for pipe `dir`'s head unless one is queued or the pipe stalls.
    fn arm(&mut self, key: u64, dir: usize, now: Instant, q: &mut EventQueue<WorldEvent>) {
        let to = self.ends[1 - dir].host;
        let pipe = &mut self.pipes[dir];
        if pipe.armed || pipe.stalled_since.is_some() {
            return;
        }
        let Some(head) = pipe.segs.front() else {
            return;
        };
        let at = pipe.due_at(head).max(now);
        pipe.generation = pipe.generation.wrapping_add(1);
        pipe.armed = true;
        q.push(
            at,
            WorldEvent::Deliver {
                key,
                dir: dir as u8,
                generation: pipe.generation,
                to,
            },
        );
    }

    fn is_dead(&self) -> bool {
        self.ends.iter().all(|e| e.state == EndState::Gone)
    }

    /// Whether both ends are established and known to their hosts.
    pub(crate) fn is_established(&self) -> bool {
        self.ends.iter().all(|e| e.state == EndState::Open)
    }

    /// Sends RST from end `e` (once). With `discard`, segments still queued from `e` are dropped
    /// first (abortive close); otherwise the RST follows them.
    #[allow(clippy::too_many_arguments)]
    fn rst_from(
        &mut self,
        key: u64,
        e: usize,
        discard: bool,
        now: Instant,
        latency: Duration,
        q: &mut EventQueue<WorldEvent>,
        stats: &mut SimStats,
    ) {
        if self.ends[e].rst_sent {
            return;
        }
        self.ends[e].rst_sent = true;
        let peer = 1 - e;
        match self.ends[peer].state {
            EndState::Gone | EndState::Aborting { .. } => {
                if discard {
                    stats.bytes_dropped += self.pipes[e].clear(now);
                }
                return;
            }
            EndState::Pending if peer == 1 => {
                // The SYN has not arrived: withdrawing it is enough.
                stats.bytes_dropped += self.pipes[e].clear(now);
                self.ends[1].state = EndState::Gone;
                return;
            }
            EndState::Pending | EndState::Open => {}
        }
        if discard {
            stats.bytes_dropped += self.pipes[e].clear(now);
        }
        self.push(e, now + latency, SegKind::Rst);
        self.arm(key, e, now, q);
    }
}

/// Looks up `conn` as an end owned by `me`.
fn own(
    conns: &mut std::collections::BTreeMap<u64, Conn>,
    me: HostId,
    conn: ConnId,
) -> Result<&mut Conn, NetError> {
    match conns.get_mut(&conn.key()) {
        Some(c) if c.ends[conn.end()].host == me => Ok(c),
        _ => Err(NetError::UnknownConn(conn)),
    }
}

impl Network {
    fn latency(&mut self, src: HostId, dst: HostId) -> Duration {
        latency(
            &self.config.latency,
            &mut self.stream_rng,
            self.heavy_tail,
            &self.links,
            src,
            dst,
        )
    }

    fn remove_if_dead(&mut self, key: u64) {
        if self.conns.get(&key).is_some_and(Conn::is_dead) {
            self.conns.remove(&key);
            self.stalled.remove(&(key, 0));
            self.stalled.remove(&(key, 1));
        }
    }

    /// Opens a connection from `me` to `to:port`; the SYN leaves now.
    pub(crate) fn connect(
        &mut self,
        now: Instant,
        me: HostId,
        to: HostId,
        port: Port,
        q: &mut EventQueue<WorldEvent>,
        stats: &mut SimStats,
    ) -> ConnId {
        let key = self.next_conn_key;
        self.next_conn_key += 1;
        stats.connections_opened += 1;
        let mut conn = Conn::new(me, to, port);
        if to.index() < self.hosts.len() {
            let lat = self.latency(me, to);
            conn.push(0, now + lat, SegKind::Syn);
            conn.arm(key, 0, now, q);
        }
        self.conns.insert(key, conn);
        q.push(
            now + self.config.connect_timeout,
            WorldEvent::ConnectTimeout { key, host: me },
        );
        ConnId::connector(key)
    }

    /// Queues `bytes` on `me`'s end `conn`, possibly split into several deliveries.
    pub(crate) fn send(
        &mut self,
        now: Instant,
        me: HostId,
        conn: ConnId,
        bytes: Bytes,
        q: &mut EventQueue<WorldEvent>,
        stats: &mut SimStats,
    ) -> Result<(), NetError> {
        let (key, e) = (conn.key(), conn.end());
        let c = own(&mut self.conns, me, conn)?;
        match c.ends[e].state {
            EndState::Open => {}
            EndState::Pending => return Err(NetError::NotConnected(conn)),
            EndState::Aborting { .. } => return Err(NetError::ConnectionReset(conn)),
            EndState::Gone => return Err(NetError::UnknownConn(conn)),
        }
        if c.ends[e].write_shut {
            return Err(NetError::WriteShut(conn));
        }
        let len = bytes.len();
        if len == 0 {
            return Ok(());
        }
        stats.bytes_sent += len as u64;
        let dst = c.ends[1 - e].host;
        let rng = &mut self.stream_rng;
        let config = &self.config;
        let pieces = if self.bytewise {
            len
        } else if len > 1
            && config.split_probability > 0.0
            && rng.unit_f64() < config.split_probability
        {
            let extra = u64::from(config.split_pieces_max.max(2) - 1);
            (2 + rng.below(extra) as usize).min(len)
        } else {
            1
        };
        let bandwidth = config.bandwidth_bytes_per_sec;
        let mut link_free = self
            .link_free_at
            .get(&(me, dst))
            .copied()
            .unwrap_or(Instant::ZERO)
            .max(now);
        let throttle = self.hosts.get(dst.index()).and_then(|h| h.throttle);
        let mut inbound_free = self
            .hosts
            .get(dst.index())
            .map_or(now, |h| h.inbound_free_at.max(now));
        let mut offset = 0;
        for i in 0..pieces {
            let remaining = len - offset;
            let left = pieces - i;
            let size = if left == 1 {
                remaining
            } else if remaining == left {
                1
            } else {
                1 + rng.below((remaining - left + 1) as u64) as usize
            };
            let piece = bytes.slice(offset..offset + size);
            offset += size;
            link_free = link_free + serialization(size, bandwidth);
            let mut ready = link_free;
            if let Some((rate, _)) = throttle {
                inbound_free = inbound_free + serialization(size, rate);
                ready = ready.max(inbound_free);
            }
            let lat = latency(&config.latency, rng, self.heavy_tail, &self.links, me, dst);
            c.push_throttled(e, ready + lat, link_free + lat, SegKind::Data(piece));
        }
        self.link_free_at.insert((me, dst), link_free);
        if throttle.is_some()
            && let Some(h) = self.hosts.get_mut(dst.index())
        {
            h.inbound_free_at = inbound_free;
        }
        c.arm(key, e, now, q);
        Ok(())
    }

    /// Data bytes `me` sent on `conn` that the peer has not been handed yet.
    pub(crate) fn unsent_bytes(&self, me: HostId, conn: ConnId) -> Option<u64> {
        let c = self.conns.get(&conn.key())?;
        (c.ends[conn.end()].host == me).then(|| c.pipes[conn.end()].data_bytes)
    }

    /// Names the coverage counter bumped (besides the world's own) when a cut on `me`'s
    /// connection `conn` heals with data in flight; false if `conn` is not `me`'s.
    pub(crate) fn label(&mut self, me: HostId, conn: ConnId, label: &'static str) -> bool {
        match self.conns.get_mut(&conn.key()) {
            Some(c) if c.ends[conn.end()].host == me => {
                c.label = Some(label);
                true
            }
            _ => false,
        }
    }

    /// Half-closes `me`'s end: the peer gets `Eof` after every byte already sent.
    pub(crate) fn shutdown_write(
        &mut self,
        now: Instant,
        me: HostId,
        conn: ConnId,
        q: &mut EventQueue<WorldEvent>,
    ) -> Result<(), NetError> {
        let (key, e) = (conn.key(), conn.end());
        let lat_rng = &mut self.stream_rng;
        let c = own(&mut self.conns, me, conn)?;
        match c.ends[e].state {
            EndState::Open => {}
            EndState::Pending => return Err(NetError::NotConnected(conn)),
            EndState::Aborting { .. } => return Err(NetError::ConnectionReset(conn)),
            EndState::Gone => return Err(NetError::UnknownConn(conn)),
        }
        if c.ends[e].write_shut {
            return Ok(());
        }
        c.ends[e].write_shut = true;
        let dst = c.ends[1 - e].host;
        let lat = latency(
            &self.config.latency,
            lat_rng,
            self.heavy_tail,
            &self.links,
            me,
            dst,
        );
        c.push(e, now + lat, SegKind::Fin);
        c.arm(key, e, now, q);
        Ok(())
    }

    /// Abortive close by the host: the peer gets `Reset` after latency; queued bytes are dropped.
    pub(crate) fn reset(
        &mut self,
        now: Instant,
        me: HostId,
        conn: ConnId,
        q: &mut EventQueue<WorldEvent>,
        stats: &mut SimStats,
    ) -> Result<(), NetError> {
        let (key, e) = (conn.key(), conn.end());
        let state = own(&mut self.conns, me, conn)?.ends[e].state;
        match state {
            EndState::Gone => return Err(NetError::UnknownConn(conn)),
            EndState::Aborting { .. } => {}
            EndState::Pending | EndState::Open => {
                let peer = own(&mut self.conns, me, conn)?.ends[1 - e].host;
                let lat = self.latency(me, peer);
                let c = own(&mut self.conns, me, conn)?;
                c.rst_from(key, e, true, now, lat, q, stats);
                stats.bytes_dropped += c.pipes[1 - e].clear(now);
            }
        }
        own(&mut self.conns, me, conn)?.ends[e].state = EndState::Gone;
        self.remove_if_dead(key);
        Ok(())
    }

    /// Closes `me`'s end and forgets it: FIN after the bytes already sent (a connect in progress
    /// is abandoned). Bytes arriving later are answered with RST.
    pub(crate) fn close(
        &mut self,
        now: Instant,
        me: HostId,
        conn: ConnId,
        q: &mut EventQueue<WorldEvent>,
        stats: &mut SimStats,
    ) -> Result<(), NetError> {
        let (key, e) = (conn.key(), conn.end());
        let (state, peer) = {
            let c = own(&mut self.conns, me, conn)?;
            (c.ends[e].state, c.ends[1 - e].host)
        };
        let lat = self.latency(me, peer);
        let c = own(&mut self.conns, me, conn)?;
        match state {
            EndState::Gone => return Err(NetError::UnknownConn(conn)),
            EndState::Aborting { .. } => {}
            EndState::Pending => {
                c.rst_from(key, e, true, now, lat, q, stats);
                stats.bytes_dropped += c.pipes[1 - e].clear(now);
            }
            EndState::Open => {
                if !c.ends[e].write_shut {
                    c.ends[e].write_shut = true;
                    c.push(e, now + lat, SegKind::Fin);
                    c.arm(key, e, now, q);
                }
            }
        }
        c.ends[e].state = EndState::Gone;
        self.remove_if_dead(key);
        Ok(())
    }

    /// Delivers the head of pipe `dir` of connection `key`, or stalls it if the path is cut.
    pub(crate) fn on_deliver(
        &mut self,
        now: Instant,
        key: u64,
        dir: usize,
        generation: u32,
        q: &mut EventQueue<WorldEvent>,
        stats: &mut SimStats,
    ) -> Option<HostEvent> {
        let Some(c) = self.conns.get_mut(&key) else {
            stats.stale_events += 1;
            return None;
        };
        let pipe = &mut c.pipes[dir];
        if pipe.generation != generation || !pipe.armed {
            stats.stale_events += 1;
            return None;
        }
        pipe.armed = false;
        let head = pipe.segs.front()?;
        if pipe.due_at(head) > now {
            c.arm(key, dir, now, q);
            return None;
        }
        let (src, dst) = (c.ends[dir].host, c.ends[1 - dir].host);
        if c.held || self.links.blocked(src, dst) {
            pipe.stalled_since = Some(now);
            pipe.stall_gen = pipe.stall_gen.wrapping_add(1);
            let stall_gen = pipe.stall_gen;
            self.stalled.insert((key, dir as u8));
            stats.stalls += 1;
            q.push(
                now + self.config.stall_reset_after,
                WorldEvent::StallCheck {
                    key,
                    dir: dir as u8,
                    stall_gen,
                },
            );
            return None;
        }
        let seg = pipe.segs.pop_front()?;
        let r = 1 - dir;
        let back_latency = |net_rng: &mut Rng| {
            latency(
                &self.config.latency,
                net_rng,
                self.heavy_tail,
                &self.links,
                dst,
                src,
            )
        };
        let event = match seg.kind {
            SegKind::Syn => {
                let host = self.hosts.get(dst.index());
                let up = host.is_some_and(|h| h.up);
                if !up || c.ends[0].state != EndState::Pending {
                    // Nobody answers: the connector times out.
                    None
                } else if host.is_some_and(|h| h.listeners.contains(&c.port)) {
                    c.ends[1].state = EndState::Open;
                    stats.connections_accepted += 1;
                    let lat = back_latency(&mut self.stream_rng);
                    c.push(1, now + lat, SegKind::SynAck);
                    c.arm(key, 1, now, q);
                    Some(HostEvent::Accepted {
                        listener_port: c.port,
                        conn: ConnId::acceptor(key),
                        peer: src,
                    })
                } else {
                    c.ends[1].state = EndState::Gone;
                    stats.connections_refused += 1;
                    let lat = back_latency(&mut self.stream_rng);
                    c.push(1, now + lat, SegKind::Refuse);
                    c.arm(key, 1, now, q);
                    None
                }
            }
            SegKind::SynAck => match c.ends[0].state {
                EndState::Pending => {
                    c.ends[0].state = EndState::Open;
                    Some(HostEvent::Connected {
                        conn: ConnId::connector(key),
                    })
                }
                EndState::Gone => {
                    let lat = back_latency(&mut self.stream_rng);
                    c.rst_from(key, 0, false, now, lat, q, stats);
                    None
                }
                _ => None,
            },
            SegKind::Refuse => {
                if c.ends[0].state == EndState::Pending {
                    c.ends[0].state = EndState::Gone;
                    Some(HostEvent::ConnectFailed {
                        conn: ConnId::connector(key),
                        reason: ConnectFailReason::Refused,
                    })
                } else {
                    None
                }
            }
            SegKind::Data(first) => {
                let pipe = &mut c.pipes[dir];
                pipe.data_bytes -= first.len() as u64;
                let mut bytes = first;
                if !self.bytewise && self.config.coalesce_probability > 0.0 {
                    let mut merged: Option<BytesMut> = None;
                    while let Some(next) = pipe.segs.front()
                        && let SegKind::Data(more) = &next.kind
                        && pipe.due_at(next) <= now
                        && self.stream_rng.unit_f64() < self.config.coalesce_probability
                    {
                        let buf = merged.get_or_insert_with(|| BytesMut::from(&bytes[..]));
                        buf.extend_from_slice(more);
                        pipe.data_bytes -= more.len() as u64;
                        pipe.segs.pop_front();
                    }
                    if let Some(buf) = merged {
                        bytes = buf.freeze();
                    }
                }
                let len = bytes.len() as u64;
                match c.ends[r].state {
                    EndState::Open => {
                        stats.bytes_delivered += len;
                        stats.data_deliveries += 1;
                        Some(HostEvent::Data {
                            conn: end_id(key, r),
                            bytes,
                        })
                    }
                    EndState::Gone => {
                        stats.bytes_dropped += len;
                        let lat = back_latency(&mut self.stream_rng);
                        c.rst_from(key, r, false, now, lat, q, stats);
                        None
                    }
                    EndState::Pending | EndState::Aborting { .. } => {
                        stats.bytes_dropped += len;
                        None
                    }
                }
            }
            SegKind::Fin => (c.ends[r].state == EndState::Open).then(|| HostEvent::Eof {
                conn: end_id(key, r),
            }),
            SegKind::Rst => match c.ends[r].state {
                EndState::Open => {
                    c.ends[r].state = EndState::Gone;
                    stats.connections_reset += 1;
                    Some(HostEvent::Reset {
                        conn: end_id(key, r),
                    })
                }
                EndState::Pending if r == 0 => {
                    c.ends[0].state = EndState::Gone;
                    Some(HostEvent::ConnectFailed {
                        conn: ConnId::connector(key),
                        reason: ConnectFailReason::Reset,
                    })
                }
                _ => None,
            },
        };
        c.arm(key, dir, now, q);
        self.remove_if_dead(key);
        event
    }

    /// Resets connection `key` if pipe `dir` is still in stall `stall_gen`.
    pub(crate) fn on_stall_check(
        &mut self,
        now: Instant,
        key: u64,
        dir: usize,
        stall_gen: u32,
        q: &mut EventQueue<WorldEvent>,
        stats: &mut SimStats,
    ) {
        let still = self.conns.get(&key).is_some_and(|c| {
            let p = &c.pipes[dir];
            p.stall_gen == stall_gen && p.stalled_since.is_some()
        });
        if !still {
            stats.stale_events += 1;
            return;
        }
        stats.count(CONNECTION_RESET_BY_STALL, 1);
        self.abort(now, key, q, stats);
    }

    /// The network resets both ends of connection `key` now (stall, fault): pending bytes are
    /// dropped and each host still holding an end is told.
    pub(crate) fn abort(
        &mut self,
        now: Instant,
        key: u64,
        q: &mut EventQueue<WorldEvent>,
        stats: &mut SimStats,
    ) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        for e in 0..2 {
            let end = &mut c.ends[e];
            match (end.state, e) {
                (EndState::Open, _) | (EndState::Pending, 0) => {
                    let was_open = end.state == EndState::Open;
                    end.state = EndState::Aborting { was_open };
                    q.push(
                        now,
                        WorldEvent::Abort {
                            conn: end_id(key, e),
                            host: end.host,
                        },
                    );
                }
                (EndState::Pending, _) => end.state = EndState::Gone,
                _ => {}
            }
        }
        for pipe in &mut c.pipes {
            stats.bytes_dropped += pipe.clear(now);
            pipe.stalled_since = None;
            pipe.stall_gen = pipe.stall_gen.wrapping_add(1);
        }
        self.stalled.remove(&(key, 0));
        self.stalled.remove(&(key, 1));
        self.remove_if_dead(key);
    }

    /// Tells the host of end `conn` that the network reset it.
    pub(crate) fn on_abort(&mut self, conn: ConnId, stats: &mut SimStats) -> Option<HostEvent> {
        let key = conn.key();
        let Some(c) = self.conns.get_mut(&key) else {
            stats.stale_events += 1;
            return None;
        };
        let end = &mut c.ends[conn.end()];
        let event = match end.state {
            EndState::Aborting { was_open: true } => {
                stats.connections_reset += 1;
                HostEvent::Reset { conn }
            }
            EndState::Aborting { was_open: false } => {
                stats.connections_timed_out += 1;
                HostEvent::ConnectFailed {
                    conn,
                    reason: ConnectFailReason::Timeout,
                }
            }
            _ => {
                stats.stale_events += 1;
                return None;
            }
        };
        end.state = EndState::Gone;
        self.remove_if_dead(key);
        Some(event)
    }

    /// The connector of `key` gives up if the handshake has not completed.
    pub(crate) fn on_connect_timeout(
        &mut self,
        now: Instant,
        key: u64,
        q: &mut EventQueue<WorldEvent>,
        stats: &mut SimStats,
    ) -> Option<HostEvent> {
        let (src, dst) = match self.conns.get(&key) {
            Some(c) if c.ends[0].state == EndState::Pending => (c.ends[0].host, c.ends[1].host),
            _ => {
                stats.stale_events += 1;
                return None;
            }
        };
        let lat = self.latency(src, dst);
        let c = self.conns.get_mut(&key)?;
        c.ends[0].state = EndState::Gone;
        stats.connections_timed_out += 1;
        c.rst_from(key, 0, true, now, lat, q, stats);
        stats.bytes_dropped += c.pipes[1].clear(now);
        self.remove_if_dead(key);
        Some(HostEvent::ConnectFailed {
            conn: ConnId::connector(key),
            reason: ConnectFailReason::Timeout,
        })
    }

    /// Forgets every end `host` holds (it crashed): peers get RST, bytes to it are lost.
    /// Returns how many established connections it had.
    pub(crate) fn crash_host(
        &mut self,
        now: Instant,
        host: HostId,
        q: &mut EventQueue<WorldEvent>,
        stats: &mut SimStats,
    ) -> usize {
        let keys: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.ends
                    .iter()
                    .any(|e| e.host == host && e.state != EndState::Gone)
            })
            .map(|(k, _)| *k)
            .collect();
        let mut live = 0;
        for key in keys {
            for e in 0..2 {
                let Some(c) = self.conns.get(&key) else {
                    continue;
                };
                let end = &c.ends[e];
                if end.host != host || end.state == EndState::Gone {
                    continue;
                }
                if e == 1 && end.state == EndState::Pending {
                    // Not accepted yet: the SYN will find the host down (or restarted).
                    continue;
                }
                if c.is_established() {
                    live += 1;
                }
                let peer = c.ends[1 - e].host;
                let lat = self.latency(host, peer);
                let Some(c) = self.conns.get_mut(&key) else {
                    continue;
                };
                c.rst_from(key, e, true, now, lat, q, stats);
                c.ends[e].state = EndState::Gone;
                stats.bytes_dropped += c.pipes[1 - e].clear(now);
            }
            self.remove_if_dead(key);
        }
        if let Some(h) = self.hosts.get_mut(host.index()) {
            h.up = false;
            h.listeners.clear();
            h.udp_ports.clear();
        }
        live
    }

    /// Ends `host`'s inbound throttle (if any): what it held back arrives as if it had never
    /// been, but no earlier than `now`; its backlog is forgotten.
    pub(crate) fn end_throttle(
        &mut self,
        now: Instant,
        host: HostId,
        q: &mut EventQueue<WorldEvent>,
    ) {
        let Some(h) = self.hosts.get_mut(host.index()) else {
            return;
        };
        if h.throttle.take().is_none() {
            return;
        }
        h.inbound_free_at = now;
        for (key, c) in &mut self.conns {
            for dir in 0..2 {
                if c.ends[1 - dir].host == host {
                    c.unthrottle(*key, dir, now, q);
                }
            }
        }
    }

    /// Holds deliveries on connection `key`.
    pub(crate) fn hold(&mut self, key: u64) -> bool {
        match self.conns.get_mut(&key) {
            Some(c) => {
                c.held = true;
                true
            }
            None => false,
        }
    }

    /// Releases a hold on connection `key`.
    pub(crate) fn release(
        &mut self,
        now: Instant,
        key: u64,
        q: &mut EventQueue<WorldEvent>,
        stats: &mut SimStats,
    ) {
        if let Some(c) = self.conns.get_mut(&key) {
            c.held = false;
            self.unblock_stalled(now, q, stats, crate::stats::HELD_THEN_RELEASED);
        }
    }

    /// Restarts delivery on every stalled pipe whose path is open again; counts `coverage` for
    /// each one that still had data bytes queued.
    pub(crate) fn unblock_stalled(
        &mut self,
        now: Instant,
        q: &mut EventQueue<WorldEvent>,
        stats: &mut SimStats,
        coverage: &'static str,
    ) {
        if self.stalled.is_empty() {
            return;
        }
        let entries: Vec<(u64, u8)> = self.stalled.iter().copied().collect();
        for (key, dir) in entries {
            let d = usize::from(dir);
            let (src, dst) = match self.conns.get(&key) {
                Some(c) if c.pipes[d].stalled_since.is_some() => {
                    (c.ends[d].host, c.ends[1 - d].host)
                }
                _ => {
                    self.stalled.remove(&(key, dir));
                    continue;
                }
            };
            let cut = self.links.blocked(src, dst) || self.conns.get(&key).is_some_and(|c| c.held);
            if cut {
                continue;
            }
            self.stalled.remove(&(key, dir));
            let lat = self.latency(src, dst);
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            let pipe = &mut c.pipes[d];
            if pipe.data_bytes > 0 {
                stats.count(coverage, 1);
                if let Some(label) = c.label {
                    stats.count(label, 1);
                }
            }
            pipe.stalled_since = None;
            pipe.stall_gen = pipe.stall_gen.wrapping_add(1);
            pipe.floor = now + lat;
            c.arm(key, d, now, q);
        }
    }

    /// The `pick`-th (modulo) established connection whose two hosts satisfy `allowed`.
    pub(crate) fn pick_conn(&self, pick: u64, allowed: impl Fn(HostId) -> bool) -> Option<u64> {
        let candidates: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.is_established() && allowed(c.ends[0].host) && allowed(c.ends[1].host)
            })
            .map(|(k, _)| *k)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        candidates
            .get((pick % candidates.len() as u64) as usize)
            .copied()
    }

    /// One line per tracked connection: ends, their states and queued segments (for leak
    /// reports).
    pub(crate) fn describe_connections(&self) -> String {
        let mut out = String::new();
        for (key, c) in &self.conns {
            let pipe = |d: usize| {
                let p = &c.pipes[d];
                format!(
                    "{} segs/{} B{}{}",
                    p.segs.len(),
                    p.data_bytes,
                    if p.armed { " armed" } else { "" },
                    if p.stalled_since.is_some() {
                        " stalled"
                    } else {
                        ""
                    }
                )
            };
            out.push_str(&format!(
                "c{key}: {} {:?}{} -> {} {:?}{} port {}{} | fwd {} | back {}\n",
                c.ends[0].host,
                c.ends[0].state,
                if c.ends[0].write_shut { " shut" } else { "" },
                c.ends[1].host,
                c.ends[1].state,
                if c.ends[1].write_shut { " shut" } else { "" },
                c.port,
                if c.held { " held" } else { "" },
                pipe(0),
                pipe(1),
            ));
        }
        out
    }

    /// Releases every hold (heal).
    pub(crate) fn release_all(&mut self) {
        for c in self.conns.values_mut() {
            c.held = false;
        }
    }
}
