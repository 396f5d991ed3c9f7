//! A tunnox node as a simulated host: the sans-IO `Node`, its durable control state (which
//! survives crashes), client connections on one port, node-port visitors, and admin changes
//! applied at scheduled times.
//!
//! In a cluster ([`NodeHost::clustered`]) storage is the simulated storage host instead of a
//! local file: a [`Coordinator`] loads the shared state before the node starts (and after every
//! restart), writes and publishes what the node persists, reports membership and routes, and
//! the host dials peer nodes for the bridge pool.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::{Bytes, BytesMut};
use tunnox_core::control::{ClientId, Mapping, MappingId, NodeId, UnixMillis};
use tunnox_core::node::{ControlState, Node, NodeConfig, NodeOutput, Notice, StateChange};
use tunnox_core::relay::LocalOutput;
use tunnox_core::rng::Rng;
use tunnox_core::session::CloseReason;
use tunnox_core::wire::Transmit;
use tunnox_runtime_sim::{ConnId, Duration, Host, HostCtx, HostEvent, HostId, Instant, Port};

use super::coordinator::{Coordinator, CoordinatorConfig, NodeCommand};

/// Coverage counter bumped when a cut bridge link heals with bytes in flight.
pub const BRIDGE_HEALED_WITH_DATA_IN_FLIGHT: &str = "bridge_healed_with_data_in_flight";

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
    /// Cluster membership, if any.
    cluster: Option<ClusterRole>,
}

/// How a node leaves the cluster for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Departure {
    /// This long after its first start.
    pub after: Duration,
    /// With `node.shutdown` and its record removed; otherwise it just dies (power loss) and
    /// peers learn it from its record's lease.
    pub graceful: bool,
}

/// What a node in a cluster has beyond a node on its own.
#[derive(Debug)]
struct ClusterRole {
    config: CoordinatorConfig,
    /// Where each peer node listens.
    peers: BTreeMap<NodeId, HostId>,
    /// Volatile: rebuilt after a restart.
    coordinator: Option<Coordinator>,
    /// Runs so far (durable: a restart's broker messages must not look like the old run's).
    incarnation: u64,
    /// Bridge dials in progress.
    dialing: BTreeMap<ConnId, NodeId>,
    /// Peers whose link went down this run (a link up again to one of them is a redial).
    links_lost: BTreeSet<NodeId>,
    /// When (after the first start) and how this node leaves the cluster for good.
    departure: Option<Departure>,
    first_start: Option<Instant>,
    /// Left for good (durable): a restart stays down.
    departed: bool,
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
            cluster: None,
        }
    }

    /// A node of a cluster: its state comes from the storage host `coordinator` names; it
    /// reaches peers at `peers`; with a `departure`, it leaves the cluster for good.
    pub fn clustered(
        config: NodeConfig,
        coordinator: CoordinatorConfig,
        peers: BTreeMap<NodeId, HostId>,
        departure: Option<Departure>,
        rng: Rng,
    ) -> NodeHost {
        let mut host = NodeHost::new(config, ControlState::default(), Vec::new(), rng);
        host.cluster = Some(ClusterRole {
            config: coordinator,
            peers,
            coordinator: None,
            incarnation: 0,
            dialing: BTreeMap::new(),
            links_lost: BTreeSet::new(),
            departure,
            first_start: None,
            departed: false,
        });
        host
    }

    /// These admin changes, applied at the given host-local times.
    pub fn with_admin(mut self, admin: Vec<(Instant, AdminOp)>) -> NodeHost {
        self.admin = admin.into();
        self
    }

    /// The coordinator, in a cluster and while running.
    pub fn coordinator(&self) -> Option<&Coordinator> {
        self.cluster.as_ref().and_then(|c| c.coordinator.as_ref())
    }

    /// Whether this node left the cluster for good.
    pub fn departed(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| c.departed)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.config.session.node_id
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
        if let Some(cluster) = self.cluster.as_mut() {
            let first = *cluster.first_start.get_or_insert(now);
            // Past its departure (it was down then: it never said goodbye), it stays down.
            if cluster.departure.is_some_and(|d| now >= first + d.after) {
                cluster.departed = true;
            }
            if cluster.departed {
                return;
            }
            // The node starts once the coordinator has loaded the shared state.
            cluster.incarnation += 1;
            let mut coordinator = Coordinator::new(cluster.config.clone(), cluster.incarnation);
            coordinator.start(ctx);
            cluster.coordinator = Some(coordinator);
            return;
        }
        self.build_node(now, self.durable.clone(), ctx);
    }

    fn build_node(&mut self, now: Instant, state: ControlState, ctx: &mut HostCtx<'_>) {
        let _ = ctx.listen(CLIENT_PORT);
        let wall = self
            .wall_origin
            .saturating_add(Duration::from_nanos(now.as_nanos()));
        self.node = Some(Node::new(
            now,
            wall,
            self.config.clone(),
            state,
            self.rng.fork(),
        ));
    }

    /// Applies what the coordinator asks, and what that makes the node do, until both are idle.
    fn run_commands(&mut self, now: Instant, ctx: &mut HostCtx<'_>) {
        loop {
            let command = self
                .cluster
                .as_mut()
                .and_then(|c| c.coordinator.as_mut())
                .and_then(Coordinator::poll_command);
            let Some(command) = command else {
                return;
            };
            if let NodeCommand::Start(state) = command {
                // A node that left while it was still loading never starts serving.
                if !self.departed() {
                    self.build_node(now, *state, ctx);
                }
                self.flush(now, ctx);
                continue;
            }
            // Before the node runs there is nothing to tell it (it loads everything at start).
            let Some(node) = self.node.as_mut() else {
                continue;
            };
            match command {
                NodeCommand::Start(_) => {}
                NodeCommand::PeerUp(peer) => node.peer_up(now, &peer),
                NodeCommand::PeerDown(peer) => node.peer_down(now, &peer),
                NodeCommand::SetRoute(client, at) => node.set_route(now, client, at),
                NodeCommand::ApplyRemote(change) => node.apply_remote_change(now, *change),
                NodeCommand::Resync(state) => {
                    let changes = differences(node.state(), &state);
                    ctx.count_by("state_resync_changes", changes.len() as u64);
                    for change in changes {
                        node.apply_remote_change(now, change);
                    }
                }
            }
            self.flush(now, ctx);
        }
    }

    /// Leaves the cluster for good: gracefully `node.shutdown`, record removed, sessions
    /// drained; otherwise it just stops (the scenario powers it off).
    fn maybe_leave(&mut self, now: Instant, ctx: &mut HostCtx<'_>) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let due = match (cluster.departure, cluster.first_start) {
            (Some(d), Some(start)) => now >= start + d.after,
            _ => false,
        };
        if !due || cluster.departed {
            return;
        }
        cluster.departed = true;
        if !cluster.departure.is_some_and(|d| d.graceful) {
            return;
        }
        ctx.count("node_left_cluster");
        if let Some(coordinator) = cluster.coordinator.as_mut() {
            coordinator.leave(now, ctx);
        }
        ctx.unlisten(CLIENT_PORT);
        if let Some(node) = self.node.as_mut() {
            node.drain(now, Some(now + Duration::from_secs(1)));
        }
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
            NodeOutput::Persist(change) => match self.coordinator_mut() {
                Some(coordinator) => coordinator.persist(ctx, change),
                None => self.durable.apply(&change),
            },
            NodeOutput::Notice(notice) => {
                self.on_cluster_notice(now, &notice, ctx);
                self.on_notice(now, notice, ctx);
            }
            NodeOutput::DialPeer { peer } => self.dial_peer(now, peer, ctx),
            NodeOutput::LookupRoute { client } => {
                if let Some(coordinator) = self.coordinator_mut() {
                    coordinator.lookup(now, ctx, client);
                }
            }
        }
    }

    fn coordinator_mut(&mut self) -> Option<&mut Coordinator> {
        self.cluster.as_mut().and_then(|c| c.coordinator.as_mut())
    }

    /// Connects to `peer`'s client port for the bridge pool.
    fn dial_peer(&mut self, now: Instant, peer: NodeId, ctx: &mut HostCtx<'_>) {
        let Some(cluster) = self.cluster.as_mut() else {
            // A node on its own never asks (it has no peers).
            if let Some(node) = self.node.as_mut() {
                node.peer_dial_failed(now, &peer);
            }
            return;
        };
        let member = cluster
            .coordinator
            .as_ref()
            .is_some_and(|c| c.peers_up().contains(&peer));
        if !member {
            let message = format!("the pool dialled {peer}, which is not a live member");
            self.violate(message);
            return;
        }
        match cluster.peers.get(&peer) {
            Some(host) => {
                let conn = ctx.connect(*host, CLIENT_PORT);
                cluster.dialing.insert(conn, peer);
            }
            None => {
                if let Some(node) = self.node.as_mut() {
                    node.peer_dial_failed(now, &peer);
                }
            }
        }
    }

    /// What the coordinator must hear of: sessions and bridge links.
    fn on_cluster_notice(&mut self, now: Instant, notice: &Notice, ctx: &mut HostCtx<'_>) {
        let still_live = |node: &Option<Node>, client: ClientId| {
            node.as_ref()
                .is_some_and(|n| n.session_of(client).is_some())
        };
        let replaced = match notice {
            Notice::ClientOffline { client, .. } => still_live(&self.node, *client),
            _ => false,
        };
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        match notice {
            Notice::ClientOnline { client, .. } => {
                if let Some(c) = cluster.coordinator.as_mut() {
                    c.client_online(now, ctx, *client);
                }
            }
            Notice::ClientOffline { client, .. } => {
                if replaced {
                    ctx.count("session_replaced_on_same_node");
                }
                if let Some(c) = cluster.coordinator.as_mut() {
                    c.client_offline(now, ctx, *client, replaced);
                }
            }
            Notice::PeerLinkUp { peer, conn } => {
                ctx.label_connection(ConnId(*conn), BRIDGE_HEALED_WITH_DATA_IN_FLIGHT);
                if cluster.links_lost.remove(peer) {
                    ctx.count("bridge_link_redialled");
                }
            }
            Notice::PeerLinkDown { peer, .. } => {
                cluster.links_lost.insert(peer.clone());
            }
            _ => {}
        }
    }

    fn on_notice(&mut self, now: Instant, notice: Notice, ctx: &mut HostCtx<'_>) {
        let (conn, reason) = match notice {
            Notice::ClientOffline { conn, reason, .. }
            | Notice::PeerLinkDown { conn, reason, .. } => (conn, reason),
            Notice::PeerLinkUp { .. } => return ctx.count("peer_link_up"),
            Notice::HandshakeFailed { conn, reason } => (conn, reason),
            Notice::ClientOnline { .. } => return ctx.count("session_established"),
            Notice::OpenRefused { error, message } => {
                ctx.note(|| format!("open refused: {error:?} {message}"));
                return ctx.count("open_refused");
            }
            Notice::TunnelClosed { .. }
            | Notice::Registered { .. }
            | Notice::ConfigAcked { .. } => return,
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
        // While the node is down (or still loading its state) the operations wait for it: an
        // administrator's change is not lost because a node was restarting.
        while self.node.is_some() && self.admin.front().is_some_and(|(at, _)| *at <= now) {
            let (Some((_, op)), Some(node)) = (self.admin.pop_front(), self.node.as_mut()) else {
                break;
            };
            let _ = match op {
                AdminOp::PutMapping(m) => node.put_mapping(now, *m),
                AdminOp::DeleteMapping(id) => node.delete_mapping(now, &id),
            };
        }
    }
}

/// The changes that turn `current` into `wanted` (what a re-read of storage must apply).
pub fn differences(current: &ControlState, wanted: &ControlState) -> Vec<StateChange> {
    let mut changes = Vec::new();
    for (id, user) in &wanted.users {
        if current.users.get(id) != Some(user) {
            changes.push(StateChange::PutUser(user.clone()));
        }
    }
    for (id, client) in &wanted.clients {
        if current.clients.get(id) != Some(client) {
            changes.push(StateChange::PutClient(client.clone()));
        }
    }
    for (id, mapping) in &wanted.mappings {
        if current.mappings.get(id) != Some(mapping) {
            changes.push(StateChange::PutMapping(mapping.clone()));
        }
    }
    for id in current.mappings.keys() {
        if !wanted.mappings.contains_key(id) {
            changes.push(StateChange::DeleteMapping(id.clone()));
        }
    }
    for (code, record) in &wanted.codes {
        if current.codes.get(code) != Some(record) {
            changes.push(StateChange::PutCode(record.clone()));
        }
    }
    for code in current.codes.keys() {
        if !wanted.codes.contains_key(code) {
            changes.push(StateChange::DeleteCode(code.clone()));
        }
    }
    changes
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
    reason.kind()
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
                if let Some(coordinator) = self.coordinator_mut() {
                    coordinator.on_timer(now, ctx);
                }
                self.maybe_leave(now, ctx);
            }
            HostEvent::Connected { conn }
            | HostEvent::ConnectFailed { conn, .. }
            | HostEvent::Data { conn, .. }
            | HostEvent::Eof { conn }
            | HostEvent::Reset { conn }
                if self.coordinator().is_some_and(|c| c.owns(conn)) =>
            {
                if let Some(c) = self.coordinator_mut() {
                    match event {
                        HostEvent::Connected { .. } => c.on_connected(now, conn, ctx),
                        HostEvent::Data { bytes, .. } => c.on_data(now, conn, &bytes, ctx),
                        _ => c.on_closed(now, conn, ctx),
                    }
                }
            }
            HostEvent::Connected { conn } => {
                let peer = self.cluster.as_mut().and_then(|c| c.dialing.remove(&conn));
                match (peer, self.node.as_mut()) {
                    (Some(peer), Some(node)) => {
                        self.last_rx.insert(conn, now);
                        node.peer_connected(now, conn.0, peer);
                    }
                    _ => {
                        let _ = ctx.reset(conn);
                    }
                }
            }
            HostEvent::ConnectFailed { conn, .. } => {
                let peer = self.cluster.as_mut().and_then(|c| c.dialing.remove(&conn));
                if let (Some(peer), Some(node)) = (peer, self.node.as_mut()) {
                    node.peer_dial_failed(now, &peer);
                }
            }
            HostEvent::Accepted {
                listener_port,
                conn,
                peer,
            } => {
                let Some(node) = self.node.as_mut() else {
                    let _ = ctx.reset(conn);
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
            HostEvent::Datagram { .. } => {}
        }
        self.flush(now, ctx);
        self.run_commands(now, ctx);
    }

    fn next_timer(&self) -> Option<Instant> {
        // Operations wait while the node is down; its start (or state load) runs them.
        let admin = self
            .node
            .as_ref()
            .and(self.admin.front())
            .map(|(at, _)| *at);
        let leave = self.cluster.as_ref().and_then(|c| match c {
            ClusterRole {
                departed: false,
                departure: Some(d),
                first_start: Some(start),
                ..
            } => Some(*start + d.after),
            _ => None,
        });
        [
            admin,
            self.node.as_ref().and_then(Node::poll_timeout),
            self.coordinator().and_then(Coordinator::next_timer),
            leave,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn crash(&mut self) {
        self.node = None;
        self.visitors.clear();
        self.last_rx.clear();
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.coordinator = None;
            cluster.dialing.clear();
            cluster.links_lost.clear();
        }
    }

    fn restart(&mut self, now: Instant, ctx: &mut HostCtx<'_>) {
        self.start(now, ctx);
        self.flush(now, ctx);
    }

    fn check_invariants(&self) -> Result<(), String> {
        if let Some(v) = &self.violation {
            return Err(v.clone());
        }
        if let Some(v) = self.coordinator().and_then(Coordinator::violation) {
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
