//! The host contract: what a simulated host receives (`HostEvent`), how it acts on the world
//! (`HostCtx`), and the `Host` trait the world drives.

use crate::event::WorldEvent;
use crate::ids::{ConnId, HostId, Port};
use crate::knobs::Knobs;
use crate::net::{NetError, Network};
use crate::queue::EventQueue;
use crate::stats::SimStats;
use crate::trace::{Trace, TraceKind, fmt_time};
use bytes::Bytes;
use std::any::Any;
use std::fmt;
use tunnox_core::digest::Fnv64;
use tunnox_core::rng::Rng;
use tunnox_core::time::Instant;

/// Why a connection attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailReason {
    /// Nothing listens on the port.
    Refused,
    /// No handshake before the connect timeout (partition, host down).
    Timeout,
    /// The acceptor reset the connection before the handshake completed.
    Reset,
}

/// Something that happened to a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// The host starts (first event it ever gets; after a crash it gets `Host::restart`).
    Started,
    /// Host-local time reached the deadline from `Host::next_timer`.
    Timer,
    /// A listener accepted connection `conn` from `peer`.
    Accepted {
        /// The listening port.
        listener_port: Port,
        /// This host's end of the new connection.
        conn: ConnId,
        /// The connecting host.
        peer: HostId,
    },
    /// A connection this host opened is established.
    Connected {
        /// This host's end.
        conn: ConnId,
    },
    /// A connection this host opened failed; `conn` is forgotten.
    ConnectFailed {
        /// This host's end.
        conn: ConnId,
        /// Why.
        reason: ConnectFailReason,
    },
    /// Bytes arrived on `conn`, in order.
    Data {
        /// This host's end.
        conn: ConnId,
        /// The next bytes of the stream.
        bytes: Bytes,
    },
    /// The peer shut down writing; every byte it sent was already delivered.
    Eof {
        /// This host's end.
        conn: ConnId,
    },
    /// The connection was reset (by the peer or the network); `conn` is forgotten.
    Reset {
        /// This host's end.
        conn: ConnId,
    },
    /// A datagram arrived on a bound port.
    Datagram {
        /// Sender host and port.
        from: (HostId, Port),
        /// The local port it arrived on.
        to_port: Port,
        /// The payload.
        bytes: Bytes,
    },
}

impl HostEvent {
    /// Trace kind, connection id (0 if none) and payload length of this event.
    pub(crate) fn trace_parts(&self) -> (TraceKind, u64, u64) {
        match self {
            HostEvent::Started => (TraceKind::Started, 0, 0),
            HostEvent::Timer => (TraceKind::Timer, 0, 0),
            HostEvent::Accepted { conn, .. } => (TraceKind::Accepted, conn.0, 0),
            HostEvent::Connected { conn } => (TraceKind::Connected, conn.0, 0),
            HostEvent::ConnectFailed { conn, .. } => (TraceKind::ConnectFailed, conn.0, 0),
            HostEvent::Data { conn, bytes } => (TraceKind::Data, conn.0, bytes.len() as u64),
            HostEvent::Eof { conn } => (TraceKind::Eof, conn.0, 0),
            HostEvent::Reset { conn } => (TraceKind::Reset, conn.0, 0),
            HostEvent::Datagram { from, bytes, .. } => (
                TraceKind::Datagram,
                u64::from(from.0.0) << 16 | u64::from(from.1),
                bytes.len() as u64,
            ),
        }
    }
}

impl fmt::Display for HostEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostEvent::Started => write!(f, "started"),
            HostEvent::Timer => write!(f, "timer"),
            HostEvent::Accepted {
                listener_port,
                conn,
                peer,
            } => write!(f, "accepted {conn} on :{listener_port} from {peer}"),
            HostEvent::Connected { conn } => write!(f, "connected {conn}"),
            HostEvent::ConnectFailed { conn, reason } => {
                write!(f, "connect failed {conn}: {reason:?}")
            }
            HostEvent::Data { conn, bytes } => write!(f, "data {conn} {} bytes", bytes.len()),
            HostEvent::Eof { conn } => write!(f, "eof {conn}"),
            HostEvent::Reset { conn } => write!(f, "reset {conn}"),
            HostEvent::Datagram {
                from,
                to_port,
                bytes,
            } => write!(
                f,
                "datagram {}:{} -> :{to_port} {} bytes",
                from.0,
                from.1,
                bytes.len()
            ),
        }
    }
}

/// A simulated host (node, client agent, target service, visitor) driven by the world.
///
/// Every method gets host-local time; all effects go through [`HostCtx`]. Hosts must be
/// deterministic: no clocks, threads, OS randomness or hash-order iteration.
pub trait Host: Any {
    /// Handles one event at host-local time `now`; acts on the world through `ctx`.
    fn on_event(&mut self, now: Instant, event: HostEvent, ctx: &mut HostCtx<'_>);
    /// The host-local time at which it wants `HostEvent::Timer` next (None = no timer).
    fn next_timer(&self) -> Option<Instant>;
    /// Crash: drop all volatile state (keep only what the host models as durable storage).
    fn crash(&mut self);
    /// Restart after a crash, rebuilding from durable state.
    fn restart(&mut self, now: Instant, ctx: &mut HostCtx<'_>);
    /// Invariants of this host, checked by the world after every event it handles.
    fn check_invariants(&self) -> Result<(), String>;
    /// A cheap digest of host state for the trace.
    fn digest(&self) -> u64;
}

/// A host's handle on the world while it handles one event.
pub struct HostCtx<'a> {
    pub(crate) me: HostId,
    pub(crate) now_local: Instant,
    pub(crate) now_global: Instant,
    pub(crate) net: &'a mut Network,
    pub(crate) queue: &'a mut EventQueue<WorldEvent>,
    pub(crate) stats: &'a mut SimStats,
    pub(crate) trace: &'a mut Trace,
    pub(crate) knobs: &'a Knobs,
    pub(crate) rng: &'a mut Rng,
    pub(crate) buggify_salt: u64,
}

impl fmt::Debug for HostCtx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostCtx")
            .field("me", &self.me)
            .field("now_local", &self.now_local)
            .finish_non_exhaustive()
    }
}

impl HostCtx<'_> {
    /// This host's id.
    pub fn id(&self) -> HostId {
        self.me
    }

    /// Host-local time now (the same `now` the host was called with).
    pub fn now(&self) -> Instant {
        self.now_local
    }

    /// This host's own random stream (forked from the run's seed).
    pub fn rng(&mut self) -> &mut Rng {
        self.rng
    }

    /// The run's BUGGIFY knobs.
    pub fn knobs(&self) -> &Knobs {
        self.knobs
    }

    /// FoundationDB-style BUGGIFY: whether code site `site` misbehaves this time. Each site is on
    /// or off for the whole seed (when `knobs.buggify_sites` is on); an enabled site fires 25% of
    /// the time.
    pub fn buggify(&mut self, site: &'static str) -> bool {
        if !self.knobs.buggify_sites {
            return false;
        }
        let mut h = Fnv64::new();
        h.write_u64(self.buggify_salt);
        h.write(site.as_bytes());
        if h.finish() & 1 == 0 {
            return false;
        }
        self.rng.below(4) == 0
    }

    /// Starts accepting stream connections on `port`.
    pub fn listen(&mut self, port: Port) -> Result<(), NetError> {
        self.net.listen(self.me, port)
    }

    /// Stops accepting on `port` (established connections stay).
    pub fn unlisten(&mut self, port: Port) {
        self.net.unlisten(self.me, port);
    }

    /// Opens a stream connection to `to:port`; the outcome arrives as `Connected` or
    /// `ConnectFailed`.
    pub fn connect(&mut self, to: HostId, port: Port) -> ConnId {
        self.net
            .connect(self.now_global, self.me, to, port, self.queue, self.stats)
    }

    /// Sends bytes on an established connection (delivered in order, maybe in several pieces).
    pub fn send(&mut self, conn: ConnId, bytes: Bytes) -> Result<(), NetError> {
        self.net.send(
            self.now_global,
            self.me,
            conn,
            bytes,
            self.queue,
            self.stats,
        )
    }

    /// Bytes sent on `conn` not yet delivered to the peer (to model a bounded send buffer);
    /// `None` if `conn` is not this host's.
    pub fn unsent_bytes(&self, conn: ConnId) -> Option<u64> {
        self.net.unsent_bytes(self.me, conn)
    }

    /// Labels connection `conn`: when a partition, clog or hold on it heals while it has data in
    /// flight, coverage counter `label` is bumped too (to tell, say, bridge links from client
    /// sessions). False if `conn` is not this host's.
    pub fn label_connection(&mut self, conn: ConnId, label: &'static str) -> bool {
        self.net.label(self.me, conn, label)
    }

    /// Half-close: the peer gets `Eof` after every byte already sent.
    pub fn shutdown_write(&mut self, conn: ConnId) -> Result<(), NetError> {
        self.net
            .shutdown_write(self.now_global, self.me, conn, self.queue)
    }

    /// Abortive close: queued bytes are dropped, the peer gets `Reset`; `conn` is forgotten.
    pub fn reset(&mut self, conn: ConnId) -> Result<(), NetError> {
        self.net
            .reset(self.now_global, self.me, conn, self.queue, self.stats)
    }

    /// Graceful close and forget: FIN after queued bytes; later arriving bytes are answered
    /// with RST.
    pub fn close(&mut self, conn: ConnId) -> Result<(), NetError> {
        self.net
            .close(self.now_global, self.me, conn, self.queue, self.stats)
    }

    /// Binds a datagram socket to `port`.
    pub fn bind_udp(&mut self, port: Port) -> Result<(), NetError> {
        self.net.bind_udp(self.me, port)
    }

    /// Unbinds the datagram socket on `port`.
    pub fn unbind_udp(&mut self, port: Port) {
        self.net.unbind_udp(self.me, port);
    }

    /// Sends a datagram from bound `from_port` to `to:to_port` (may be lost, duplicated or
    /// reordered).
    pub fn send_datagram(
        &mut self,
        from_port: Port,
        to: HostId,
        to_port: Port,
        bytes: Bytes,
    ) -> Result<(), NetError> {
        self.net.send_datagram(
            self.now_global,
            self.me,
            from_port,
            to,
            to_port,
            bytes,
            self.queue,
            self.stats,
        )
    }

    /// Bumps the named coverage counter by one.
    pub fn count(&mut self, name: &'static str) {
        self.stats.count(name, 1);
    }

    /// Adds `n` to the named coverage counter.
    pub fn count_by(&mut self, name: &'static str, n: u64) {
        self.stats.count(name, n);
    }

    /// Whether readable tracing is on (to skip building expensive notes).
    pub fn tracing(&self) -> bool {
        self.trace.enabled()
    }

    /// Adds a readable note to the trace (built only when tracing is on; not hashed).
    pub fn note(&mut self, note: impl FnOnce() -> String) {
        let (me, t) = (self.me, self.now_global);
        self.trace
            .line(|| format!("{} {me}   note: {}", fmt_time(t), note()));
    }
}
