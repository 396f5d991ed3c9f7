//! A tunnox node as a simulated host: the sans-IO `Node`, its durable control state (which
//! survives crashes), client connections on one port, node-port visitors, and admin changes
//! applied at scheduled times.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};
use tunnox_core::control::{Mapping, MappingId, UnixMillis};
use tunnox_core::node::{ControlState, Node, NodeConfig, NodeOutput, Notice};
use tunnox_core::relay::LocalOutput;
use tunnox_core::rng::Rng;
use tunnox_core::session::CloseReason;
use tunnox_core::wire::Transmit;
use tunnox_runtime_sim::{ConnId, Duration, Host, HostCtx, HostEvent, Instant, Port};

/// How often (in checks) the whole node is checked, not just what the event touched.
const FULL_CHECK_EVERY: u64 = 64;

/// Port clients connect to.
pub const CLIENT_PORT: Port = 7000;

/// An administrative change applied at a host-local time while traffic flows.
#[derive(Debug, Clone)]
pub enum AdminOp {
    /// Create or replace a mapping.
    PutMapping(Box<Mapping>),
    /// Delete a mapping.
    DeleteMapping(MappingId),
}

#[derive(Debug, Default)]
struct VisitorIn {
    pending: VecDeque<Bytes>,
    eof: bool,
}

/// The node host (see the module docs).
#[derive(Debug)]
pub struct NodeHost {
    config: NodeConfig,
    rng: Rng,
    wall_origin: UnixMillis,
    durable: ControlState,
    node: Option<Node>,
    admin: VecDeque<(Instant, AdminOp)>,
    visitors: BTreeMap<ConnId, VisitorIn>,
    /// Host-local time of the last bytes received per client connection.
    last_rx: BTreeMap<ConnId, Instant>,
    violation: Option<String>,
    /// Invariant checks so far; every `FULL_CHECK_EVERY`th checks the whole node.
    checks: core::cell::Cell<u64>,
    /// Sessions that ended by each reason kind, for the report.
    pub closes: BTreeMap<&'static str, u64>,
}

impl NodeHost {
    /// A node with `config`, initial durable `state`, and admin changes at the given times.
    pub fn new(
        config: NodeConfig,
        state: ControlState,
        admin: Vec<(Instant, AdminOp)>,
        rng: Rng,
    ) -> NodeHost {
        NodeHost {
            config,
            rng,
            wall_origin: UnixMillis(1_700_000_000_000),
            durable: state,
            node: None,
            admin: admin.into(),
            visitors: BTreeMap::new(),
            last_rx: BTreeMap::new(),
            violation: None,
            checks: core::cell::Cell::new(0),
            closes: BTreeMap::new(),
        }
    }

    /// The running node (None while crashed).
    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    /// What storage kept.
    pub fn durable(&self) -> &ControlState {
        &self.durable
    }

    fn violate(&mut self, message: String) {
        if self.violation.is_none() {
            self.violation = Some(message);
        }
    }

    fn start(&mut self, now: Instant, ctx: &mut HostCtx<'_>) {
        let _ = ctx.listen(CLIENT_PORT);
        let wall = self
            .wall_origin
            .saturating_add(Duration::from_nanos(now.as_nanos()));
        self.node = Some(Node::new(
            now,
            wall,
            self.config.clone(),
            self.durable.clone(),
            self.rng.fork(),
        ));
    }

    fn feed_visitor(&mut self, now: Instant, conn: ConnId) {
        let Some(node) = self.node.as_mut() else {
            return;
        };
        let Some(v) = self.visitors.get_mut(&conn) else {
            return;
        };
        while let Some(front) = v.pending.pop_front() {
            let taken = node.visitor_data(now, conn.0, front.clone());
            if taken < front.len() {
                v.pending.push_front(front.slice(taken..));
                return;
            }
        }
        if v.eof {
            v.eof = false;
            node.visitor_eof(now, conn.0);
        }
    }

    /// Writes everything the node has to send, one `send` per connection per batch (frames
    /// written back to back, as a socket write would), and handles its outputs in order.
    fn flush(&mut self, now: Instant, ctx: &mut HostCtx<'_>) {
        let mut batches: BTreeMap<ConnId, BytesMut> = BTreeMap::new();
        while let Some(node) = self.node.as_mut() {
            if let Some((conn, t)) = node.poll_transmit() {
                t.write_to(batches.entry(ConnId(conn)).or_default());
                continue;
            }
            let Some(out) = node.poll_output() else {
                break;
            };
            // Bytes produced before an output go out before it acts (a close, say).
            send_batches(&mut batches, ctx);
            self.on_output(now, out, ctx);
        }
        send_batches(&mut batches, ctx);
    }

    fn on_output(&mut self, now: Instant, out: NodeOutput, ctx: &mut HostCtx<'_>) {
        let Some(node) = self.node.as_mut() else {
            return;
        };
        match out {
            NodeOutput::CloseConnection { conn } => {
                while let Some(t) = node.poll_transmit_for(conn) {
                    let _ = ctx.send(ConnId(conn), concat(&t));
                }
                let _ = ctx.close(ConnId(conn));
                node.connection_closed(now, conn);
                self.last_rx.remove(&ConnId(conn));
            }
            NodeOutput::ListenNodePort { port, .. } => {
                let _ = ctx.listen(port);
            }
            NodeOutput::StopNodePort { port } => ctx.unlisten(port),
            NodeOutput::Visitor(out) => match out {
                LocalOutput::Write { local, bytes } => {
                    let n = bytes.len();
                    let _ = ctx.send(ConnId(local), bytes);
                    node.visitor_flushed(now, local, n);
                }
                LocalOutput::Finish { local } => {
                    let _ = ctx.shutdown_write(ConnId(local));
                }
                LocalOutput::Close { local, reset } => {
                    self.visitors.remove(&ConnId(local));
                    let _ = if reset {
                        ctx.reset(ConnId(local))
                    } else {
                        ctx.close(ConnId(local))
                    };
                }
                LocalOutput::ResumeRead { local } => self.feed_visitor(now, ConnId(local)),
            },
            NodeOutput::Persist(change) => self.durable.apply(&change),
            NodeOutput::Notice(notice) => self.on_notice(now, notice, ctx),
            // Single-node scenarios configure no cluster, so the node never asks these.
            NodeOutput::DialPeer { peer } => node.peer_dial_failed(now, &peer),
            NodeOutput::LookupRoute { .. } => {}
        }
    }

    fn on_notice(&mut self, now: Instant, notice: Notice, ctx: &mut HostCtx<'_>) {
        let (conn, reason) = match notice {
            Notice::ClientOffline { conn, reason, .. }
            | Notice::PeerLinkDown { conn, reason, .. } => (conn, reason),
            Notice::PeerLinkUp { .. } => return ctx.count("peer_link_up"),
            Notice::HandshakeFailed { conn, reason } => (conn, reason),
            Notice::ClientOnline { .. } => return ctx.count("session_established"),
            Notice::OpenRefused { .. } => return ctx.count("open_refused"),
            Notice::TunnelClosed { .. } | Notice::Registered { .. } => return,
        };
        let kind = close_kind(&reason);
        *self.closes.entry(kind).or_insert(0) += 1;
        match reason {
            // Between correct peers the byte stream is never malformed and the stream protocol
            // is never broken, whatever the network does.
            CloseReason::Wire(e) => {
                self.violate(format!("connection {conn} closed on a wire error: {e}"))
            }
            CloseReason::Mux(e) => {
                self.violate(format!("connection {conn} closed on a mux error: {e}"))
            }
            CloseReason::ProtocolViolation(what) => {
                self.violate(format!("connection {conn}: protocol violation: {what}"))
            }
            CloseReason::HeartbeatTimeout => {
                ctx.count("heartbeat_timeout");
                // Dead-peer verdicts must not come early: the peer was silent for the whole
                // timeout in this host's clock.
                let timeout = self.config.session.heartbeat.timeout;
                if let Some(last) = self.last_rx.get(&ConnId(conn))
                    && now.saturating_duration_since(*last) < timeout
                {
                    let silent = now.saturating_duration_since(*last);
                    self.violate(format!("connection {conn} declared dead after {silent:?} of silence (< {timeout:?})"));
                }
            }
            _ => {}
        }
    }

    fn run_admin(&mut self, now: Instant) {
        while self.admin.front().is_some_and(|(at, _)| *at <= now) {
            let Some((_, op)) = self.admin.pop_front() else {
                break;
            };
            let Some(node) = self.node.as_mut() else {
                continue;
            };
            let _ = match op {
                AdminOp::PutMapping(m) => node.put_mapping(now, *m),
                AdminOp::DeleteMapping(id) => node.delete_mapping(now, &id),
            };
        }
    }
}

fn send_batches(batches: &mut BTreeMap<ConnId, BytesMut>, ctx: &mut HostCtx<'_>) {
    for (conn, bytes) in std::mem::take(batches) {
        let _ = ctx.send(conn, bytes.freeze());
    }
}

fn concat(t: &Transmit) -> Bytes {
    let mut buf = BytesMut::with_capacity(t.len());
    t.write_to(&mut buf);
    buf.freeze()
}

/// A short name for a close reason, for counters.
pub fn close_kind(reason: &CloseReason) -> &'static str {
    match reason {
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

impl Host for NodeHost {
    fn on_event(&mut self, now: Instant, event: HostEvent, ctx: &mut HostCtx<'_>) {
        match event {
            HostEvent::Started => self.start(now, ctx),
            HostEvent::Timer => {
                self.run_admin(now);
                if let Some(node) = self.node.as_mut() {
                    node.handle_timeout(now);
                }
            }
            HostEvent::Accepted {
                listener_port,
                conn,
                peer,
            } => {
                let Some(node) = self.node.as_mut() else {
                    return;
                };
                if listener_port == CLIENT_PORT {
                    self.last_rx.insert(conn, now);
                    node.accept_connection(now, conn.0);
                } else {
                    self.visitors.insert(conn, VisitorIn::default());
                    let addr = core::net::SocketAddr::from((
                        [10, 0, (peer.0 >> 8) as u8, peer.0 as u8],
                        40_000,
                    ));
                    node.visitor_accepted(now, listener_port, conn.0, Some(addr));
                }
            }
            HostEvent::Data { conn, bytes } => {
                if self.visitors.contains_key(&conn) {
                    if let Some(v) = self.visitors.get_mut(&conn) {
                        v.pending.push_back(bytes);
                    }
                    self.feed_visitor(now, conn);
                } else if let Some(node) = self.node.as_mut() {
                    self.last_rx.insert(conn, now);
                    node.connection_bytes(now, conn.0, &bytes);
                }
            }
            HostEvent::Eof { conn } | HostEvent::Reset { conn }
                if !self.visitors.contains_key(&conn) =>
            {
                self.last_rx.remove(&conn);
                if let Some(node) = self.node.as_mut() {
                    node.connection_closed(now, conn.0);
                }
            }
            HostEvent::Eof { conn } => {
                if let Some(v) = self.visitors.get_mut(&conn) {
                    v.eof = true;
                }
                self.feed_visitor(now, conn);
            }
            HostEvent::Reset { conn } => {
                self.visitors.remove(&conn);
                if let Some(node) = self.node.as_mut() {
                    node.visitor_reset(now, conn.0);
                }
            }
            HostEvent::Connected { .. }
            | HostEvent::ConnectFailed { .. }
            | HostEvent::Datagram { .. } => {}
        }
        self.flush(now, ctx);
    }

    fn next_timer(&self) -> Option<Instant> {
        let admin = self.admin.front().map(|(at, _)| *at);
        tunnox_core::time::earliest(admin, self.node.as_ref().and_then(Node::poll_timeout))
    }

    fn crash(&mut self) {
        self.node = None;
        self.visitors.clear();
        self.last_rx.clear();
    }

    fn restart(&mut self, now: Instant, ctx: &mut HostCtx<'_>) {
        self.start(now, ctx);
        self.flush(now, ctx);
    }

    fn check_invariants(&self) -> Result<(), String> {
        if let Some(v) = &self.violation {
            return Err(v.clone());
        }
        let Some(node) = self.node.as_ref() else {
            return Ok(());
        };
        // What the event changed, every time; everything (tunnel table, registry, every
        // session) periodically and at the end of each phase.
        let n = self.checks.get() + 1;
        self.checks.set(n);
        node.check_touched()?;
        if n.is_multiple_of(FULL_CHECK_EVERY) {
            node.check_invariants()?;
        }
        Ok(())
    }

    fn digest(&self) -> u64 {
        self.node.as_ref().map_or(0, Node::digest)
    }
}
