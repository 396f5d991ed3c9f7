//! A whole node as one sans-IO state machine: client sessions, the session registry, the tunnel
//! table, relays between streams and to node-port visitors, config pushes, and the control state.
//!
//! The runtime (tokio or the simulator) owns the sockets. It reports client connections
//! (`accept_connection`, `connection_bytes`, `connection_closed`), node-port visitors
//! (`visitor_accepted`, `visitor_data`, `visitor_eof`, …) and time (`handle_timeout`); it pulls
//! bytes to write with `poll_transmit` and everything else with `poll_output`.

mod admin;
mod control_plane;
mod guard;
mod link;
mod state;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use tunnox_proto::wire as pb;

pub use admin::{ClientUpdate, MappingTraffic};
pub use guard::{GuardConfig, GuardStats, HandshakeGuard};
pub use state::{ControlState, StateChange};

use crate::cluster::{BridgePool, PoolAction, PoolConfig};
use crate::control::{
    AuthKey, ClientId, ClientRecord, ClientSecret, ClientStatus, CodeError, Entry, Mapping,
    MappingId, MappingStatus, NodeId, QuotaError, Target, UnixMillis, ValidationError,
};
use crate::mux::{MuxEvent, ReadOutcome};
use crate::relay::{LocalId, LocalOutput, LocalRelays};
use crate::rng::Rng;
use crate::session::{
    ClientIdentity, ClientSession, ClientSessionConfig, CloseReason, NodeEvent, NodeSession,
    NodeSessionConfig, RefuseReason, SessionRegistry,
};
use crate::time::{Duration, Instant};
use crate::tunnel::{
    Endpoint, OpenContext, OpenError, OpenRequest, TunnelAction, TunnelConfig, TunnelOutcome,
    TunnelTable, decode_open, decode_result, encode_result,
};
use crate::wire::{GoAwayReason, Received, ResetReason, StreamId, Transmit};
use link::Link;

/// Identifies a client connection, chosen by the runtime (unique, never reused).
pub type ConnId = u64;

/// Settings of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Session settings (node id, timeouts, mux limits).
    pub session: NodeSessionConfig,
    /// Tunnel limits.
    pub tunnel: TunnelConfig,
    /// Whether unknown clients may register for anonymous credentials.
    pub allow_registration: bool,
    /// Most bytes handed to the runtime per visitor socket and not yet flushed.
    pub visitor_unflushed_bytes_max: usize,
    /// Cluster membership: `None` for a node on its own (peer nodes are refused).
    pub cluster: Option<ClusterConfig>,
    /// Per-address handshake rate limit and failed-login lockout.
    pub guard: GuardConfig,
}

/// How a node takes part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Derived from the cluster token: bridge links between nodes prove it (never sent).
    pub key: AuthKey,
    /// How many bridge links to keep to each peer and how many streams each carries.
    pub pool: PoolConfig,
}

impl NodeConfig {
    /// Defaults for a node called `node_id`.
    pub fn new(node_id: impl Into<String>) -> NodeConfig {
        NodeConfig {
            session: NodeSessionConfig::new(node_id),
            tunnel: TunnelConfig::default(),
            allow_registration: true,
            visitor_unflushed_bytes_max: 256 * 1024,
            cluster: None,
            guard: GuardConfig::default(),
        }
    }
}

/// Something the runtime must do or may log, pulled with [`Node::poll_output`].
#[derive(Debug, Clone, PartialEq)]
pub enum NodeOutput {
    /// Flush this connection's transmits, then close it.
    CloseConnection {
        /// The connection.
        conn: ConnId,
    },
    /// Start accepting visitors on a public port for a node-port mapping.
    ListenNodePort {
        /// The port.
        port: u16,
        /// Address to bind, if the mapping names one.
        bind: Option<String>,
    },
    /// Stop accepting visitors on a public port.
    StopNodePort {
        /// The port.
        port: u16,
    },
    /// Open a bridge link to a peer node: connect, then call `peer_connected` with a fresh
    /// connection id, or `peer_dial_failed`.
    DialPeer {
        /// The peer.
        peer: NodeId,
    },
    /// The route of `client` is unknown or proved stale (its node no longer holds it): read it
    /// from storage and report it with `set_route` (opens for it wait until then, at most the
    /// tunnel open timeout).
    LookupRoute {
        /// The client.
        client: ClientId,
    },
    /// A visitor socket operation.
    Visitor(LocalOutput),
    /// A durable change to store, in order.
    Persist(StateChange),
    /// Something worth logging or counting.
    Notice(Notice),
}

/// Notable happenings, for logs and metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// A client session was established.
    ClientOnline {
        /// The client.
        client: ClientId,
        /// Its connection.
        conn: ConnId,
    },
    /// A client session ended.
    ClientOffline {
        /// The client.
        client: ClientId,
        /// Its connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// A handshake was refused or failed.
    HandshakeFailed {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// A bridge link to a peer node is up.
    PeerLinkUp {
        /// The peer.
        peer: NodeId,
        /// The link's connection.
        conn: ConnId,
    },
    /// A bridge link to a peer node ended.
    PeerLinkDown {
        /// The peer.
        peer: NodeId,
        /// The link's connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// A client registered for anonymous credentials.
    Registered {
        /// The new client.
        client: ClientId,
    },
    /// A tunnel ended.
    TunnelClosed {
        /// Its mapping.
        mapping: MappingId,
        /// How.
        outcome: TunnelOutcome,
        /// Bytes entry → target.
        bytes_to_target: u64,
        /// Bytes target → entry.
        bytes_to_entry: u64,
    },
    /// A visitor's open was refused.
    OpenRefused {
        /// Why.
        error: OpenError,
        /// Detail.
        message: String,
    },
    /// A client acknowledged a configuration this node pushed to it.
    ConfigAcked {
        /// The client.
        client: ClientId,
        /// The configuration version it applied.
        version: u64,
        /// From the push to the acknowledgement.
        after: Duration,
    },
}

/// The load of the bridge links to one peer node, from [`Node::bridge_usage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLinkUsage {
    /// The peer node.
    pub peer: NodeId,
    /// Links established to it.
    pub links: u32,
    /// Streams open over those links.
    pub streams: u32,
    /// Streams those links may carry at most.
    pub streams_max: u32,
}

/// Why an administrative change was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// The value is invalid.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// A quota forbids it.
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// Another mapping already uses this node port or host.
    #[error("{0} is already used by another mapping")]
    Conflict(String),
    /// The object is still in use (a user that owns clients or mappings).
    #[error("{0}")]
    InUse(String),
    /// A connection code cannot be redeemed or revoked.
    #[error(transparent)]
    Code(#[from] CodeError),
    /// No such object.
    #[error("no such {0}")]
    NotFound(&'static str),
}

/// One client connection and what hangs off it.
#[derive(Debug)]
struct Slot {
    session: Link,
    /// Node-port visitors whose target stream lives in this session.
    visitors: LocalRelays,
    client: Option<ClientId>,
    /// The peer node, once a bridge link is established.
    peer: Option<NodeId>,
    /// The peer this node dialled, for a dialled link.
    dialled: Option<NodeId>,
    /// The address the connection came from, if the runtime knows it.
    addr: Option<core::net::IpAddr>,
    /// The client id a handshake asked to log in as.
    attempted: Option<ClientId>,
    /// Configuration versions pushed on this session and not yet acknowledged, oldest first,
    /// with when each was pushed (at most [`PUSHES_UNACKED_MAX`]).
    pushes_unacked: VecDeque<(u64, Instant)>,
}

/// Most unacknowledged configuration pushes remembered per session; older ones are forgotten
/// (their acknowledgement is then not timed).
const PUSHES_UNACKED_MAX: usize = 64;

/// A node (see the module docs).
#[derive(Debug)]
pub struct Node {
    config: NodeConfig,
    rng: Rng,
    wall_origin: (Instant, UnixMillis),
    state: ControlState,
    config_version: u64,
    slots: BTreeMap<ConnId, Slot>,
    registry: SessionRegistry,
    tunnels: TunnelTable,
    /// Bytes and tunnels of ended tunnels, per mapping (see [`Node::traffic`]).
    traffic: BTreeMap<MappingId, MappingTraffic>,
    /// Visitors accepted and not yet closed (so each gets exactly one `Close`).
    open_visitors: BTreeSet<LocalId>,
    /// Which session holds each visitor's target stream.
    visitor_slot: BTreeMap<LocalId, ConnId>,
    /// Node ports served: the mapping and the address bound.
    node_ports: BTreeMap<u16, (MappingId, Option<String>)>,
    /// Bridge links to peer nodes.
    pool: BridgePool,
    /// Which peer node holds each remote client's session, as the runtime last reported.
    routes: BTreeMap<ClientId, NodeId>,
    /// Opens waiting for the route of their target client, with their deadline.
    awaiting_route: BTreeMap<ClientId, Vec<(Instant, OpenRequest)>>,
    /// Handshake rate limits and lockouts.
    guard: HandshakeGuard,
    /// Connections that may have bytes to send.
    dirty: BTreeSet<ConnId>,
    /// Connections changed since the last `check_touched` (interior mutability: checking
    /// consumes it).
    touched: core::cell::RefCell<BTreeSet<ConnId>>,
    /// Session deadlines, for `poll_timeout` without scanning every session.
    timers: BTreeSet<(Instant, ConnId)>,
    timer_of: BTreeMap<ConnId, Instant>,
    outputs: VecDeque<NodeOutput>,
    /// The latest time any input carried (for work triggered by pulling output).
    last_now: Instant,
    /// Stream-layer counters of sessions already gone (live ones are summed on demand).
    closed_mux_stats: crate::mux::MuxStats,
    /// Bytes received, bytes transmitted and outputs produced: a cheap running fingerprint.
    activity: (u64, u64, u64),
}

impl Node {
    /// A node serving `state`, started at `now` (monotonic) = `wall_now` (wall clock).
    pub fn new(
        now: Instant,
        wall_now: UnixMillis,
        config: NodeConfig,
        state: ControlState,
        mut rng: Rng,
    ) -> Node {
        let pool_config = config
            .cluster
            .as_ref()
            .map(|c| c.pool.clone())
            .unwrap_or_default();
        let mut node = Node {
            pool: BridgePool::new(pool_config, rng.fork()),
            routes: BTreeMap::new(),
            awaiting_route: BTreeMap::new(),
            guard: HandshakeGuard::new(config.guard.clone()),
            tunnels: TunnelTable::new(config.tunnel.clone()),
            traffic: BTreeMap::new(),
            config,
            rng,
            wall_origin: (now, wall_now),
            config_version: 1,
            slots: BTreeMap::new(),
            registry: SessionRegistry::new(),
            open_visitors: BTreeSet::new(),
            visitor_slot: BTreeMap::new(),
            node_ports: BTreeMap::new(),
            dirty: BTreeSet::new(),
            touched: core::cell::RefCell::new(BTreeSet::new()),
            timers: BTreeSet::new(),
            timer_of: BTreeMap::new(),
            outputs: VecDeque::new(),
            last_now: now,
            closed_mux_stats: crate::mux::MuxStats::default(),
            activity: (0, 0, 0),
            state,
        };
        node.sync_node_ports();
        node
    }

    /// The control state served.
    pub fn state(&self) -> &ControlState {
        &self.state
    }

    /// Clients online.
    pub fn online_clients(&self) -> usize {
        self.registry.len()
    }

    /// The live connection of `client`, if online here.
    pub fn session_of(&self, client: ClientId) -> Option<ConnId> {
        self.registry.live_session(client.0)
    }

    /// Tunnels alive now.
    pub fn tunnel_count(&self) -> usize {
        self.tunnels.len()
    }

    /// The tunnel table (for diagnostics).
    pub fn tunnels(&self) -> &TunnelTable {
        &self.tunnels
    }

    /// Client connections held (handshaking, established or closing).
    pub fn connection_count(&self) -> usize {
        self.slots.len()
    }

    /// Streams open over all sessions.
    pub fn stream_count(&self) -> usize {
        self.slots
            .values()
            .filter_map(|s| s.session.mux_ref())
            .map(|m| m.stream_count())
            .sum()
    }

    fn wall_now(&self, now: Instant) -> UnixMillis {
        let (origin, wall) = self.wall_origin;
        wall.saturating_add(now.saturating_duration_since(origin))
    }

    // ----- client connections -----

    /// A client connected (from an address the runtime does not know: no rate limit applies).
    pub fn accept_connection(&mut self, now: Instant, conn: ConnId) {
        self.accept_connection_from(now, conn, None);
    }

    /// Whether a new connection from `addr` may be served: more new connections from one address
    /// than the guard allows are refused with when to retry. The runtime asks before anything
    /// costly (the TLS handshake) and drops a refused connection at once.
    pub fn admit_address(&mut self, now: Instant, addr: core::net::IpAddr) -> Result<(), Duration> {
        self.guard.admit(now, addr)
    }

    /// A client connected from `addr` (admitted by [`Node::admit_address`]): failed logins from
    /// there count toward a lockout of that client from that address.
    pub fn accept_connection_from(
        &mut self,
        now: Instant,
        conn: ConnId,
        addr: Option<core::net::IpAddr>,
    ) {
        self.accept_connection_started_at(now, conn, addr, now);
    }

    /// [`Node::accept_connection_from`] for a connection accepted at `accepted_at` whose
    /// transport handshake (TLS) has just finished: the session handshake must still end by
    /// `accepted_at` plus the handshake timeout, so a slow TLS handshake buys no extra time.
    pub fn accept_connection_started_at(
        &mut self,
        now: Instant,
        conn: ConnId,
        addr: Option<core::net::IpAddr>,
        accepted_at: Instant,
    ) {
        let session = NodeSession::new(now, self.config.session.clone(), conn, &mut self.rng)
            .with_handshake_started_at(accepted_at.min(now));
        self.add_slot(now, conn, Link::Accepted(session), None);
        if let Some(slot) = self.slots.get_mut(&conn) {
            slot.addr = addr;
        }
    }

    /// How long a client has, from the accept, to finish its handshake (TLS included).
    pub fn handshake_timeout(&self) -> Duration {
        self.config.session.handshake_timeout
    }

    /// The handshake guard (for metrics).
    pub fn guard(&self) -> &HandshakeGuard {
        &self.guard
    }

    /// The session a client (or peer) opened to this node on `conn`.
    fn accepted(&mut self, conn: ConnId) -> Option<&mut NodeSession> {
        self.slots.get_mut(&conn).and_then(|s| s.session.accepted())
    }

    fn add_slot(&mut self, now: Instant, conn: ConnId, session: Link, dialled: Option<NodeId>) {
        self.slots.insert(
            conn,
            Slot {
                session,
                visitors: LocalRelays::new(self.config.visitor_unflushed_bytes_max),
                client: None,
                peer: None,
                dialled,
                addr: None,
                attempted: None,
                pushes_unacked: VecDeque::new(),
            },
        );
        self.after_session_input(now, conn);
    }

    // ----- cluster -----

    /// The connection the runtime opened after `DialPeer { peer }` is up: start a bridge link
    /// on it. `conn` must be a fresh connection id.
    pub fn peer_connected(&mut self, now: Instant, conn: ConnId, peer: NodeId) {
        let Some(cluster) = &self.config.cluster else {
            self.outputs.push_back(NodeOutput::CloseConnection { conn });
            return;
        };
        let mut config = ClientSessionConfig::new(ClientIdentity::Peer {
            node_id: self.config.session.node_id.clone(),
            key: cluster.key.clone(),
        });
        config.mux = self.config.session.mux.clone();
        config.handshake_timeout = self.config.session.handshake_timeout;
        let session = ClientSession::new(now, config, &mut self.rng);
        self.add_slot(now, conn, Link::Dialled(session), Some(peer));
    }

    /// The runtime could not connect to `peer` after `DialPeer`.
    pub fn peer_dial_failed(&mut self, now: Instant, peer: &NodeId) {
        self.pool.dial_failed(now, peer);
        self.run_pool_actions(now);
    }

    /// `peer` is a live member of the cluster (its record's lease holds): keep links to it.
    pub fn peer_up(&mut self, now: Instant, peer: &NodeId) {
        if self.config.cluster.is_some() && peer.as_str() != self.config.session.node_id {
            self.pool.peer_up(now, peer);
            self.run_pool_actions(now);
        }
    }

    /// `peer` left the cluster: its links close and routes to it are forgotten.
    pub fn peer_down(&mut self, now: Instant, peer: &NodeId) {
        self.pool.peer_down(peer);
        self.routes.retain(|_, node| node != peer);
        self.run_pool_actions(now);
    }

    /// Where `client`'s session is, as storage or the broker says: `Some(node)` (this node's own
    /// id is ignored: local sessions are known first-hand) or `None` (offline).
    pub fn set_route(&mut self, now: Instant, client: ClientId, node: Option<NodeId>) {
        match node {
            Some(node) if node.as_str() != self.config.session.node_id => {
                self.routes.insert(client, node);
            }
            _ => {
                self.routes.remove(&client);
            }
        }
        // Opens that waited for this answer go on (or are refused: the client is offline).
        for (_, request) in self.awaiting_route.remove(&client).unwrap_or_default() {
            self.retry_open(now, request);
        }
    }

    /// Runs a parked open again if its entry is still there.
    fn retry_open(&mut self, now: Instant, mut request: OpenRequest) {
        let alive = match request.entry {
            Endpoint::Local(visitor) => self.open_visitors.contains(&visitor),
            Endpoint::Stream { session, stream } => self
                .slots
                .get(&session)
                .and_then(|s| s.session.mux_ref())
                .is_some_and(|m| m.stream_ids().any(|id| id == stream)),
        };
        if alive {
            request.route_asked = true;
            self.request_tunnel(now, request);
        }
    }

    fn expire_route_waits(&mut self, now: Instant) {
        let mut expired = Vec::new();
        self.awaiting_route.retain(|_, waits| {
            waits.retain(|(deadline, request)| {
                let keep = *deadline > now;
                if !keep {
                    expired.push(request.clone());
                }
                keep
            });
            !waits.is_empty()
        });
        for request in expired {
            self.retry_open(now, request);
        }
    }

    /// The peer node this node believes holds `client`, if any.
    pub fn route_of(&self, client: ClientId) -> Option<&NodeId> {
        self.routes.get(&client)
    }

    /// The bridge pool (for metrics and diagnostics).
    pub fn pool(&self) -> &BridgePool {
        &self.pool
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.config.session.node_id
    }

    /// How loaded the bridge links to each peer the pool knows are.
    pub fn bridge_usage(&self) -> Vec<PeerLinkUsage> {
        let streams_per_link_max = self.pool.config().streams_per_link_max;
        self.pool
            .peers()
            .map(|peer| {
                let (mut links, mut streams) = (0u32, 0u32);
                for link in self.pool.links_to(peer) {
                    let carried = self
                        .slots
                        .get(&link)
                        .and_then(|s| s.session.mux_ref())
                        .map_or(0, |m| u32::try_from(m.stream_count()).unwrap_or(u32::MAX));
                    links += 1;
                    streams = streams.saturating_add(carried);
                }
                PeerLinkUsage {
                    peer: peer.clone(),
                    links,
                    streams,
                    streams_max: links.saturating_mul(streams_per_link_max),
                }
            })
            .collect()
    }

    fn run_pool_actions(&mut self, now: Instant) {
        while let Some(action) = self.pool.poll_action() {
            match action {
                PoolAction::Dial { peer } => {
                    self.outputs.push_back(NodeOutput::DialPeer { peer });
                }
                PoolAction::Close { link, abort } => {
                    if let Some(slot) = self.slots.get_mut(&link) {
                        if abort {
                            slot.session.kick(GoAwayReason::Normal);
                        } else {
                            let grace = self.config.session.handshake_timeout;
                            slot.session.drain(GoAwayReason::Normal, Some(now + grace));
                        }
                        self.after_session_input(now, link);
                    }
                }
            }
        }
    }

    /// Applies a change another node made (read from storage or the broker): like the local
    /// administrative calls, tunnels of a changed mapping end and affected clients online here
    /// get new config; nothing is persisted again.
    pub fn apply_remote_change(&mut self, now: Instant, change: StateChange) {
        match &change {
            StateChange::PutMapping(mapping) => {
                let previous = self.state.mappings.get(&mapping.id).cloned();
                let mut affected = involved_clients(mapping);
                if let Some(previous) = &previous {
                    if tunnel_relevant_change(previous, mapping) {
                        self.tunnels.mapping_removed(&mapping.id);
                    }
                    affected.extend(involved_clients(previous));
                }
                self.state.apply(&change);
                self.after_mapping_change(now, affected);
            }
            StateChange::DeleteMapping(id) => {
                let previous = self.state.mappings.get(id).cloned();
                self.tunnels.mapping_removed(id);
                self.traffic.remove(id);
                self.state.apply(&change);
                if let Some(previous) = previous {
                    self.after_mapping_change(now, involved_clients(&previous));
                }
            }
            _ => {
                let before = match &change {
                    StateChange::PutClient(c) => self.state.clients.get(&c.id).cloned(),
                    _ => None,
                };
                self.state.apply(&change);
                self.enforce_remote(now, &change, before.as_ref());
            }
        }
    }

    /// Catches up with the shared state after missing changes (a broker gap or reconnect): every
    /// difference is applied as [`Node::apply_remote_change`] would, so tunnels of changed
    /// mappings end and affected clients get new config. Returns how many changes it took.
    ///
    /// A client created in the last [`RECENT_CLIENT`] with a live session here is not deleted
    /// this way: the snapshot may predate this node's own write of it reaching storage, and
    /// deleting it would end a good session. Older clients missing from the snapshot were
    /// deleted elsewhere (a deletion lost in a broker gap), and go.
    pub fn adopt_state(&mut self, now: Instant, state: &ControlState) -> usize {
        let wall = self.wall_now(now);
        let mut changes = self.state.changes_to(state);
        changes.retain(|change| match change {
            StateChange::DeleteClient(id) => {
                let recent = self.state.clients.get(id).is_some_and(|c| {
                    u128::from(wall.0.saturating_sub(c.created_at.0)) < RECENT_CLIENT.as_millis()
                });
                !(recent && self.registry.live_session(id.0).is_some())
            }
            _ => true,
        });
        let count = changes.len();
        for change in changes {
            self.apply_remote_change(now, change);
        }
        count
    }

    /// Bytes arrived on a client connection.
    pub fn connection_bytes<'a>(
        &mut self,
        now: Instant,
        conn: ConnId,
        bytes: impl Into<Received<'a>>,
    ) {
        let bytes = bytes.into();
        self.activity.0 += bytes.len() as u64;
        if let Some(slot) = self.slots.get_mut(&conn) {
            slot.session.handle_bytes(now, bytes);
            self.after_session_input(now, conn);
        }
    }

    /// The runtime's connection is gone (closed by us after `CloseConnection`, or by the peer).
    pub fn connection_closed(&mut self, now: Instant, conn: ConnId) {
        let Some(slot) = self.slots.get_mut(&conn) else {
            return;
        };
        if !slot.session.is_closed() {
            slot.session.kick(GoAwayReason::Normal);
            self.after_session_input(now, conn);
        }
        if let Some(slot) = self.slots.remove(&conn) {
            for visitor in slot.visitors.locals() {
                self.visitor_slot.remove(&visitor);
            }
            self.closed_mux_stats.add(&slot.session.mux_stats());
        }
        self.dirty.remove(&conn);
        if let Some(at) = self.timer_of.remove(&conn) {
            self.timers.remove(&(at, conn));
        }
    }

    /// The next bytes to write, and to which connection.
    pub fn poll_transmit(&mut self) -> Option<(ConnId, Transmit)> {
        while let Some(&conn) = self.dirty.first() {
            if let Some(t) = self
                .slots
                .get_mut(&conn)
                .and_then(|s| s.session.poll_transmit())
            {
                self.after_transmit(conn, &t);
                return Some((conn, t));
            }
            self.dirty.remove(&conn);
        }
        None
    }

    /// The next bytes to write on `conn` only.
    pub fn poll_transmit_for(&mut self, conn: ConnId) -> Option<Transmit> {
        let t = self.slots.get_mut(&conn)?.session.poll_transmit()?;
        self.after_transmit(conn, &t);
        Some(t)
    }

    /// Sending DATA frees send buffers, which raises `Writable` events in the mux: handle them
    /// now (a paused relay resumes), not at the next input.
    fn after_transmit(&mut self, conn: ConnId, t: &Transmit) {
        self.activity.1 += t.len() as u64;
        self.after_session_input(self.last_now, conn);
    }

    /// The next output for the runtime.
    pub fn poll_output(&mut self) -> Option<NodeOutput> {
        let out = self.outputs.pop_front()?;
        self.activity.2 += 1;
        Some(out)
    }

    // ----- time -----

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let session = self.timers.first().map(|(at, _)| *at);
        let waits = self
            .awaiting_route
            .values()
            .flatten()
            .map(|(deadline, _)| *deadline)
            .min();
        let pool = crate::time::earliest(self.pool.poll_timeout(), waits);
        crate::time::earliest(
            crate::time::earliest(session, self.tunnels.poll_timeout()),
            pool,
        )
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, conn)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, conn));
            self.timer_of.remove(&conn);
            if let Some(slot) = self.slots.get_mut(&conn) {
                slot.session.handle_timeout(now);
                self.after_session_input(now, conn);
            }
        }
        self.tunnels.handle_timeout(now);
        self.run_tunnel_actions(now);
        let slots = &self.slots;
        self.pool
            .handle_timeout(now, |link| link_streams(slots, link));
        self.run_pool_actions(now);
        self.expire_route_waits(now);
    }

    // ----- node-port visitors -----

    /// A visitor connected to node port `port`; `visitor` is the runtime's id for its socket.
    pub fn visitor_accepted(
        &mut self,
        now: Instant,
        port: u16,
        visitor: LocalId,
        addr: Option<core::net::SocketAddr>,
    ) {
        self.open_visitors.insert(visitor);
        let Some((mapping_id, _)) = self.node_ports.get(&port).cloned() else {
            self.outputs
                .push_back(NodeOutput::Visitor(LocalOutput::Close {
                    local: visitor,
                    reset: true,
                }));
            return;
        };
        let request = OpenRequest {
            entry: Endpoint::Local(visitor),
            from_client: None,
            via_peer: false,
            route_asked: false,
            open: pb::StreamOpen {
                mapping_id: mapping_id.as_str().to_owned(),
                target: None,
                protocol: 0,
                visitor_addr: addr.map(|a| a.to_string()).unwrap_or_default(),
            },
        };
        self.request_tunnel(now, request);
    }

    /// Bytes read from a visitor socket; returns how many were taken (pause reading if fewer,
    /// until `ResumeRead`).
    pub fn visitor_data(&mut self, now: Instant, visitor: LocalId, bytes: Bytes) -> usize {
        let Some(&conn) = self.visitor_slot.get(&visitor) else {
            return 0;
        };
        let Some(slot) = self.slots.get_mut(&conn) else {
            return 0;
        };
        let Some(mux) = slot.session.mux() else {
            return 0;
        };
        let taken = slot.visitors.local_data(mux, visitor, bytes);
        self.tunnels
            .record_transfer(Endpoint::Local(visitor), taken as u64);
        self.after_session_input(now, conn);
        taken
    }

    /// The visitor shut down its write side.
    pub fn visitor_eof(&mut self, now: Instant, visitor: LocalId) {
        self.with_visitor(now, visitor, |relays, mux, _| {
            relays.local_eof(mux, visitor)
        });
        self.tunnels.endpoint_finished(Endpoint::Local(visitor));
        self.run_tunnel_actions(now);
    }

    /// The visitor socket failed or was closed abortively.
    pub fn visitor_reset(&mut self, now: Instant, visitor: LocalId) {
        // The runtime already lost the socket: it needs no Close.
        self.open_visitors.remove(&visitor);
        self.with_visitor(now, visitor, |relays, mux, _| {
            relays.local_reset(mux, visitor)
        });
        self.visitor_slot.remove(&visitor);
        self.tunnels
            .endpoint_reset(Endpoint::Local(visitor), ResetReason::Cancel);
        self.run_tunnel_actions(now);
    }

    /// The runtime wrote `bytes` of earlier writes to the visitor.
    pub fn visitor_flushed(&mut self, now: Instant, visitor: LocalId, bytes: usize) {
        let Some(&conn) = self.visitor_slot.get(&visitor) else {
            return;
        };
        let mut finished = None;
        self.with_visitor(now, visitor, |relays, mux, now| {
            finished = relays.flushed(now, mux, visitor, bytes);
        });
        if let Some(stream) = finished {
            // The target's end reached the visitor: that half of the tunnel is done.
            self.tunnels.endpoint_finished(Endpoint::Stream {
                session: conn,
                stream,
            });
            self.run_tunnel_actions(now);
        }
    }

    fn with_visitor(
        &mut self,
        now: Instant,
        visitor: LocalId,
        f: impl FnOnce(&mut LocalRelays, &mut crate::mux::Mux, Instant),
    ) {
        let Some(&conn) = self.visitor_slot.get(&visitor) else {
            return;
        };
        if let Some(slot) = self.slots.get_mut(&conn)
            && let Some(mux) = slot.session.mux()
        {
            f(&mut slot.visitors, mux, now);
            self.drain_visitor_outputs(now, conn);
            self.after_session_input(now, conn);
        }
    }

    // ----- administration -----

    /// Creates a client with fresh credentials; returns the secret (shown once, never stored).
    pub fn create_client(
        &mut self,
        now: Instant,
        owner: Option<crate::control::UserId>,
        label: &str,
    ) -> Result<(ClientId, ClientSecret), AdminError> {
        if let Some(owner) = owner {
            self.check_room_for_client(owner)?;
        }
        let id = self.fresh_client_id();
        let secret = ClientSecret::generate(&mut self.rng);
        let wall = self.wall_now(now);
        let record = match owner {
            Some(owner) => {
                ClientRecord::new_registered(id, owner, label.to_owned(), secret.auth_key(), wall)
            }
            None => ClientRecord {
                label: label.to_owned(),
                ..ClientRecord::new_anonymous(id, secret.auth_key(), wall)
            },
        };
        record.validate()?;
        self.persist(StateChange::PutClient(record));
        Ok((id, secret))
    }

    /// Adds a user (or replaces one).
    pub fn put_user(&mut self, user: crate::control::User) -> Result<(), AdminError> {
        user.validate()?;
        self.persist(StateChange::PutUser(user));
        Ok(())
    }

    /// Creates or replaces a mapping, then pushes config to the clients involved.
    pub fn put_mapping(&mut self, now: Instant, mapping: Mapping) -> Result<(), AdminError> {
        mapping.validate()?;
        let previous = self.state.mappings.get(&mapping.id).cloned();
        // A new mapping, or one moving to another owner, needs room in the owner's quota.
        if previous.as_ref().is_none_or(|p| p.owner != mapping.owner)
            && let Some(owner) = mapping.owner
        {
            let user = self
                .state
                .users
                .get(&owner)
                .ok_or(AdminError::NotFound("user"))?;
            let current = self.state.mappings_owned_by(owner);
            user.quota
                .check_new_mapping(u32::try_from(current).unwrap_or(u32::MAX))?;
        }
        if let Entry::NodePort { port, .. } = mapping.entry
            && self
                .node_ports
                .get(&port)
                .is_some_and(|(id, _)| *id != mapping.id)
        {
            return Err(AdminError::Conflict(format!("node port {port}")));
        }
        if let Some(previous) = &previous
            && tunnel_relevant_change(previous, &mapping)
        {
            self.tunnels.mapping_removed(&mapping.id);
        }
        let mut affected: BTreeSet<ClientId> = involved_clients(&mapping);
        if let Some(previous) = &previous {
            affected.extend(involved_clients(previous));
        }
        self.persist(StateChange::PutMapping(mapping));
        self.after_mapping_change(now, affected);
        Ok(())
    }

    /// Deletes a mapping: its tunnels are reset and its clients get new config.
    pub fn delete_mapping(&mut self, now: Instant, id: &MappingId) -> Result<(), AdminError> {
        let mapping = self
            .state
            .mappings
            .get(id)
            .cloned()
            .ok_or(AdminError::NotFound("mapping"))?;
        self.tunnels.mapping_removed(id);
        self.traffic.remove(id);
        self.persist(StateChange::DeleteMapping(id.clone()));
        self.after_mapping_change(now, involved_clients(&mapping));
        Ok(())
    }

    /// Disconnects a client now (GOAWAY Kicked); it will not reconnect by itself.
    pub fn kick_client(&mut self, now: Instant, client: ClientId) -> bool {
        self.disconnect_client(now, client, GoAwayReason::Kicked)
    }

    /// Closes `client`'s session here with GOAWAY(`reason`): `Replaced` when its route was
    /// claimed by a newer session elsewhere (the client does not come back here), `Normal` when
    /// this node can no longer prove it owns the client (the client reconnects, maybe
    /// elsewhere). Whether it had a session here.
    pub fn disconnect_client(
        &mut self,
        now: Instant,
        client: ClientId,
        reason: GoAwayReason,
    ) -> bool {
        let Some(conn) = self.registry.live_session(client.0) else {
            return false;
        };
        if let Some(slot) = self.slots.get_mut(&conn) {
            slot.session.kick(reason);
        }
        self.after_session_input(now, conn);
        true
    }

    /// Starts a graceful shutdown: every session gets GOAWAY(Shutdown) and closes when drained
    /// or at `deadline`.
    pub fn drain(&mut self, now: Instant, deadline: Option<Instant>) {
        let conns: Vec<ConnId> = self.slots.keys().copied().collect();
        for conn in conns {
            if let Some(slot) = self.slots.get_mut(&conn) {
                slot.session.drain(GoAwayReason::Shutdown, deadline);
            }
            self.after_session_input(now, conn);
        }
    }

    fn after_mapping_change(&mut self, now: Instant, affected: BTreeSet<ClientId>) {
        self.config_version += 1;
        self.sync_node_ports();
        // Only queue the pushes: handling those sessions' events here would re-enter whatever
        // request caused this change (a second request of the same session could run first).
        for client in affected {
            self.push_config(now, client);
        }
        self.run_tunnel_actions(now);
    }

    fn sync_node_ports(&mut self) {
        let wanted: BTreeMap<u16, (MappingId, Option<String>)> = self
            .state
            .mappings
            .values()
            .filter(|m| m.status == MappingStatus::Active)
            .filter_map(|m| match &m.entry {
                Entry::NodePort { port, bind } => Some((*port, (m.id.clone(), bind.clone()))),
                _ => None,
            })
            .collect();
        // A port no longer wanted, or now bound to another address, is closed first.
        let stale: Vec<u16> = self
            .node_ports
            .iter()
            .filter(|(p, (_, bind))| wanted.get(p).is_none_or(|(_, b)| b != bind))
            .map(|(p, _)| *p)
            .collect();
        for port in stale {
            self.node_ports.remove(&port);
            self.outputs.push_back(NodeOutput::StopNodePort { port });
        }
        for (port, (id, bind)) in wanted {
            if self.node_ports.insert(port, (id, bind.clone())).is_none() {
                self.outputs
                    .push_back(NodeOutput::ListenNodePort { port, bind });
            }
        }
    }

    fn push_config(&mut self, now: Instant, client: ClientId) {
        let Some(conn) = self.registry.live_session(client.0) else {
            return;
        };
        let version = self.config_version;
        let push = config_for(&self.state, client, version);
        if let Some(session) = self.accepted(conn) {
            session.push_config(push);
            self.mark(conn);
        }
        if let Some(slot) = self.slots.get_mut(&conn) {
            let unacked = &mut slot.pushes_unacked;
            if unacked.len() >= PUSHES_UNACKED_MAX {
                unacked.pop_front();
            }
            unacked.push_back((version, now));
        }
    }

    /// `conn`'s client applied configuration `version`: times it from its push (the pushes of
    /// older versions are settled too: the client applies pushes in order).
    fn on_config_acked(&mut self, now: Instant, conn: ConnId, version: u64) {
        let Some(slot) = self.slots.get_mut(&conn) else {
            return;
        };
        let Some(client) = slot.client else {
            return;
        };
        let mut pushed_at = None;
        while let Some(&(pushed, at)) = slot.pushes_unacked.front() {
            if pushed > version {
                break;
            }
            slot.pushes_unacked.pop_front();
            if pushed == version {
                pushed_at = Some(at);
            }
        }
        if let Some(at) = pushed_at {
            self.outputs
                .push_back(NodeOutput::Notice(Notice::ConfigAcked {
                    client,
                    version,
                    after: now.saturating_duration_since(at),
                }));
        }
    }

    fn persist(&mut self, change: StateChange) {
        self.state.apply(&change);
        self.outputs.push_back(NodeOutput::Persist(change));
    }

    fn fresh_client_id(&mut self) -> ClientId {
        loop {
            let id = ClientId::generate(&mut self.rng);
            if !self.state.clients.contains_key(&id) {
                return id;
            }
        }
    }

    // ----- event processing -----

    /// After anything that may have changed a session: handle its events, tunnel actions, and
    /// note its output and timer.
    fn after_session_input(&mut self, now: Instant, conn: ConnId) {
        self.last_now = self.last_now.max(now);
        loop {
            let Some(event) = self
                .slots
                .get_mut(&conn)
                .and_then(|s| s.session.poll_event())
            else {
                break;
            };
            self.on_session_event(now, conn, event);
            self.run_tunnel_actions(now);
        }
        self.after_mux_activity(conn);
    }

    fn after_mux_activity(&mut self, conn: ConnId) {
        let Some(deadline) = self
            .slots
            .get(&conn)
            .map(|slot| slot.session.poll_timeout())
        else {
            return;
        };
        self.mark(conn);
        if let Some(old) = self.timer_of.remove(&conn) {
            self.timers.remove(&(old, conn));
        }
        if let Some(at) = deadline {
            self.timers.insert((at, conn));
            self.timer_of.insert(conn, at);
        }
    }

    fn on_session_event(&mut self, now: Instant, conn: ConnId, event: NodeEvent) {
        match event {
            NodeEvent::CredentialsNeeded { client_id } => {
                self.provide_credentials(now, conn, ClientId(client_id))
            }
            NodeEvent::RegistrationRequested { label } => self.register(now, conn, &label),
            NodeEvent::PeerCredentialsNeeded { node_id } => {
                let key = self
                    .config
                    .cluster
                    .as_ref()
                    .filter(|_| node_id != self.config.session.node_id)
                    .map(|c| c.key.clone());
                if let Some(session) = self.slots.get_mut(&conn).and_then(|s| s.session.accepted())
                {
                    session.provide_credentials(now, key, 0);
                }
            }
            NodeEvent::PeerEstablished { node_id } => self.on_peer_established(now, conn, &node_id),
            NodeEvent::Established { client_id } => {
                let client = ClientId(client_id);
                if let Some(slot) = self.slots.get_mut(&conn) {
                    slot.client = Some(client);
                    if let Some(addr) = slot.addr {
                        self.guard.proof_succeeded(client, addr);
                    }
                }
                if let Some(old) = self.registry.register(client_id, conn)
                    && let Some(old_slot) = self.slots.get_mut(&old)
                {
                    old_slot.session.kick(GoAwayReason::Replaced);
                    self.after_session_input(now, old);
                }
                let wall = self.wall_now(now);
                if let Some(record) = self.state.clients.get(&client) {
                    let mut record = record.clone();
                    record.record_seen(wall);
                    self.persist(StateChange::PutClient(record));
                }
                self.outputs
                    .push_back(NodeOutput::Notice(Notice::ClientOnline { client, conn }));
                self.push_config(now, client);
            }
            NodeEvent::ConfigAcked { version } => self.on_config_acked(now, conn, version),
            NodeEvent::ControlRequested(request) => self.on_control_request(now, conn, request),
            NodeEvent::Stream(event) => self.on_stream_event(now, conn, event),
            NodeEvent::Closed(reason) => self.on_session_closed(conn, reason),
        }
    }

    fn provide_credentials(&mut self, now: Instant, conn: ConnId, client: ClientId) {
        let addr = self.slots.get_mut(&conn).and_then(|slot| {
            slot.attempted = Some(client);
            slot.addr
        });
        if let Some(addr) = addr
            && let Err(retry) = self.guard.may_log_in(now, client, addr)
        {
            if let Some(session) = self.accepted(conn) {
                session.refuse(
                    RefuseReason::RateLimited,
                    "too many failed logins from this address",
                    Some(retry),
                );
            }
            return;
        }
        let may_log_in = self.may_log_in(client);
        let record = self.state.clients.get(&client);
        let Some(slot) = self.slots.get_mut(&conn).and_then(|s| s.session.accepted()) else {
            return;
        };
        match record {
            Some(r) if r.status == ClientStatus::Banned => {
                slot.refuse(RefuseReason::Banned, "this client is banned", None);
            }
            Some(r) if may_log_in => {
                slot.provide_credentials(now, Some(r.auth_key.clone()), self.config_version);
            }
            _ => slot.provide_credentials(now, None, 0),
        }
    }

    fn register(&mut self, now: Instant, conn: ConnId, label: &str) {
        if !self.config.allow_registration {
            if let Some(session) = self.accepted(conn) {
                session.refuse(
                    RefuseReason::RegistrationClosed,
                    "this node does not register new clients",
                    None,
                );
            }
            return;
        }
        let label: String = label.chars().filter(|c| !c.is_control()).take(64).collect();
        match self.create_client(now, None, &label) {
            Ok((id, secret)) => {
                let config_version = self.config_version;
                if let Some(session) = self.accepted(conn) {
                    session.grant_registration(
                        now,
                        id.0,
                        secret.expose_secret().to_owned(),
                        config_version,
                    );
                }
                self.outputs
                    .push_back(NodeOutput::Notice(Notice::Registered { client: id }));
            }
            Err(_) => {
                if let Some(session) = self.accepted(conn) {
                    session.refuse(
                        RefuseReason::Overloaded,
                        "could not create credentials",
                        None,
                    );
                }
            }
        }
    }

    fn on_peer_established(&mut self, now: Instant, conn: ConnId, node_id: &str) {
        let Some(slot) = self.slots.get_mut(&conn) else {
            return;
        };
        let peer = match (NodeId::parse(node_id), &slot.dialled) {
            (Ok(peer), Some(expected)) if peer != *expected => None,
            (Ok(peer), _) => Some(peer),
            (Err(_), _) => None,
        };
        let Some(peer) = peer else {
            // A dialled address answered as another node: not the link the pool asked for.
            slot.session.kick(GoAwayReason::ProtocolError);
            self.after_session_input(now, conn);
            return;
        };
        slot.peer = Some(peer.clone());
        let dialled = slot.dialled.is_some();
        self.pool.link_established(now, conn, &peer, dialled);
        self.outputs
            .push_back(NodeOutput::Notice(Notice::PeerLinkUp { peer, conn }));
        self.run_pool_actions(now);
    }

    fn on_session_closed(&mut self, conn: ConnId, reason: CloseReason) {
        if let (Some(client), Some(addr), CloseReason::Refused { reason: why, .. }) = (
            self.slots.get(&conn).and_then(|s| s.attempted),
            self.slots.get(&conn).and_then(|s| s.addr),
            &reason,
        ) && *why == RefuseReason::BadCredentials
        {
            self.guard.proof_failed(self.last_now, client, addr);
        }
        let (client, peer, dialled) = self
            .slots
            .get(&conn)
            .map(|s| (s.client, s.peer.clone(), s.dialled.clone()))
            .unwrap_or_default();
        let now = self.last_now;
        match (client, peer, dialled) {
            (_, Some(peer), _) => {
                self.pool.link_closed(now, conn);
                self.outputs
                    .push_back(NodeOutput::Notice(Notice::PeerLinkDown {
                        peer,
                        conn,
                        reason,
                    }));
                self.run_pool_actions(now);
            }
            (_, None, Some(peer)) => {
                // A dial that never became a link.
                self.pool.dial_abandoned(now, &peer);
                self.outputs
                    .push_back(NodeOutput::Notice(Notice::HandshakeFailed { conn, reason }));
                self.run_pool_actions(now);
            }
            (Some(client), None, None) => {
                self.registry.unregister(client.0, conn);
                self.outputs
                    .push_back(NodeOutput::Notice(Notice::ClientOffline {
                        client,
                        conn,
                        reason,
                    }));
            }
            (None, None, None) => self
                .outputs
                .push_back(NodeOutput::Notice(Notice::HandshakeFailed { conn, reason })),
        }
        if let Some(slot) = self.slots.get_mut(&conn) {
            for visitor in slot.visitors.locals().collect::<Vec<_>>() {
                self.visitor_slot.remove(&visitor);
            }
            slot.visitors.reset_all();
        }
        self.drain_visitor_outputs_no_mux(conn);
        self.tunnels.session_closed(conn);
        self.outputs.push_back(NodeOutput::CloseConnection { conn });
    }

    fn on_stream_event(&mut self, now: Instant, conn: ConnId, event: MuxEvent) {
        match event {
            MuxEvent::Incoming { stream, payload } => {
                let from_client = self.slots.get(&conn).and_then(|s| s.client);
                let via_peer = self.slots.get(&conn).is_some_and(|s| s.peer.is_some());
                match decode_open(payload) {
                    Ok(open) => {
                        let request = OpenRequest {
                            entry: Endpoint::Stream {
                                session: conn,
                                stream,
                            },
                            from_client,
                            via_peer,
                            route_asked: false,
                            open,
                        };
                        self.request_tunnel(now, request);
                    }
                    Err(e) => {
                        if let Some(mux) = self.slots.get_mut(&conn).and_then(|s| s.session.mux()) {
                            let _ = mux
                                .refuse(stream, encode_result(OpenError::Internal, &e.to_string()));
                        }
                    }
                }
            }
            MuxEvent::Accepted { stream, .. } => {
                self.tunnels.target_result(
                    Endpoint::Stream {
                        session: conn,
                        stream,
                    },
                    Ok(()),
                );
            }
            MuxEvent::Refused { stream, payload } => {
                let result = decode_result(payload)
                    .unwrap_or((OpenError::Internal, "malformed open result".into()));
                if result.0 == OpenError::TargetOffline {
                    self.note_stale_route(conn, stream);
                }
                self.tunnels.target_result(
                    Endpoint::Stream {
                        session: conn,
                        stream,
                    },
                    Err(result),
                );
                if let Some(slot) = self.slots.get_mut(&conn) {
                    slot.visitors.stream_reset(stream);
                }
                self.drain_visitor_outputs(now, conn);
            }
            MuxEvent::Readable { stream } => self.on_readable(now, conn, stream),
            MuxEvent::Writable { stream } => {
                if let Some(slot) = self.slots.get_mut(&conn) {
                    slot.visitors.stream_writable(stream);
                }
                self.drain_visitor_outputs(now, conn);
                // A stream-to-stream relay blocked on this stream's room resumes.
                if let Some(Endpoint::Stream {
                    session,
                    stream: from,
                }) = self.tunnels.peer(Endpoint::Stream {
                    session: conn,
                    stream,
                }) {
                    self.pump(now, (session, from), (conn, stream));
                }
            }
            MuxEvent::Reset { stream, reason } => {
                self.tunnels.endpoint_reset(
                    Endpoint::Stream {
                        session: conn,
                        stream,
                    },
                    reason,
                );
                if let Some(slot) = self.slots.get_mut(&conn) {
                    slot.visitors.stream_reset(stream);
                }
                self.drain_visitor_outputs(now, conn);
            }
            MuxEvent::Pong { .. } | MuxEvent::GoAway { .. } => {}
        }
    }

    fn on_readable(&mut self, now: Instant, conn: ConnId, stream: StreamId) {
        let is_visitor = self
            .slots
            .get(&conn)
            .is_some_and(|s| s.visitors.local_of(stream).is_some());
        if is_visitor {
            let mut finished = false;
            self.with_slot_relays(now, conn, |relays, mux, now| {
                finished = relays.stream_readable(now, mux, stream);
            });
            if finished {
                // The target finished writing: that half of the tunnel is done.
                self.tunnels.endpoint_finished(Endpoint::Stream {
                    session: conn,
                    stream,
                });
                self.run_tunnel_actions(now);
            }
            return;
        }
        if let Some(Endpoint::Stream {
            session,
            stream: to,
        }) = self.tunnels.peer(Endpoint::Stream {
            session: conn,
            stream,
        }) {
            self.pump(now, (conn, stream), (session, to));
        }
    }

    fn with_slot_relays(
        &mut self,
        now: Instant,
        conn: ConnId,
        f: impl FnOnce(&mut LocalRelays, &mut crate::mux::Mux, Instant),
    ) {
        if let Some(slot) = self.slots.get_mut(&conn)
            && let Some(mux) = slot.session.mux()
        {
            f(&mut slot.visitors, mux, now);
        }
        self.drain_visitor_outputs(now, conn);
    }

    /// Moves bytes from stream `from` to stream `to` while `to` has room.
    fn pump(&mut self, now: Instant, from: (ConnId, StreamId), to: (ConnId, StreamId)) {
        loop {
            let Some(to_mux) = self.slots.get_mut(&to.0).and_then(|s| s.session.mux()) else {
                return;
            };
            let room = to_mux.send_capacity(to.1);
            if room == 0 {
                to_mux.notify_writable(to.1);
                break;
            }
            let Some(from_mux) = self.slots.get_mut(&from.0).and_then(|s| s.session.mux()) else {
                return;
            };
            match from_mux.read(now, from.1, room) {
                Ok(ReadOutcome::Data(bytes)) => {
                    self.tunnels.record_transfer(
                        Endpoint::Stream {
                            session: from.0,
                            stream: from.1,
                        },
                        bytes.len() as u64,
                    );
                    if let Some(to_mux) = self.slots.get_mut(&to.0).and_then(|s| s.session.mux()) {
                        let _ = to_mux.send(to.1, bytes);
                    }
                }
                Ok(ReadOutcome::Finished) => {
                    self.tunnels.endpoint_finished(Endpoint::Stream {
                        session: from.0,
                        stream: from.1,
                    });
                    break;
                }
                Ok(ReadOutcome::Blocked) | Err(_) => break,
            }
        }
        self.mark(from.0);
        self.mark(to.0);
        self.run_tunnel_actions(now);
    }

    /// A peer refused an open because the target client is not there: the route that sent the
    /// open there is stale.
    fn note_stale_route(&mut self, conn: ConnId, stream: StreamId) {
        if crate::planted::active(crate::planted::PlantedBug::StaleRouteKeptOnTargetOffline) {
            return;
        }
        let Some(peer) = self.slots.get(&conn).and_then(|s| s.peer.clone()) else {
            return;
        };
        let client = self
            .tunnels
            .mapping_of(Endpoint::Stream {
                session: conn,
                stream,
            })
            .and_then(|id| self.state.mappings.get(id))
            .map(|m| m.target_client);
        if let Some(client) = client
            && self.routes.get(&client) == Some(&peer)
        {
            self.routes.remove(&client);
            self.outputs.push_back(NodeOutput::LookupRoute { client });
        }
    }

    fn request_tunnel(&mut self, now: Instant, request: OpenRequest) {
        let mapping = MappingId::parse(&request.open.mapping_id)
            .ok()
            .and_then(|id| self.state.mappings.get(&id));
        let owner_quota = mapping
            .and_then(|m| m.owner)
            .and_then(|owner| self.state.users.get(&owner))
            .map(|u| &u.quota);
        let target_client = mapping.map(|m| m.target_client);
        let mut target_session = target_client.and_then(|c| self.registry.live_session(c.0));
        // Not here: over a bridge link to the node that holds it (never onward from a peer).
        let onward_allowed = !request.via_peer
            || crate::planted::active(crate::planted::PlantedBug::ForwardedOpenServedOnward);
        if target_session.is_none()
            && onward_allowed
            && let Some(client) = target_client
            && self.config.cluster.is_some()
        {
            // A route naming a node that is no longer a member (a late broker message, or a
            // storage record not yet expired) can never be served: forget it and ask again
            // rather than refuse every open for this client until something else replaces it.
            if !request.route_asked
                && self
                    .routes
                    .get(&client)
                    .is_some_and(|peer| !self.pool.is_member(peer))
            {
                self.routes.remove(&client);
            }
            match self.routes.get(&client) {
                Some(peer) => {
                    let slots = &self.slots;
                    target_session = self.pool.pick(now, peer, |link| link_streams(slots, link));
                }
                // Unknown here: ask the runtime once, and wait for its answer.
                None if !request.route_asked => {
                    let waits = self.awaiting_route.entry(client).or_default();
                    if waits.len() < ROUTE_WAITS_PER_CLIENT_MAX {
                        if waits.is_empty() {
                            self.outputs.push_back(NodeOutput::LookupRoute { client });
                        }
                        let deadline = now + self.config.tunnel.open_timeout;
                        waits.push((deadline, request));
                        return;
                    }
                }
                None => {}
            }
        }
        let ctx = OpenContext {
            mapping,
            owner_quota,
            target_session,
            wall_now: self.wall_now(now),
        };
        self.tunnels.request_open(now, request, ctx);
        self.run_tunnel_actions(now);
        self.run_pool_actions(now);
    }

    fn run_tunnel_actions(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        while let Some(action) = self.tunnels.poll_action() {
            match action {
                TunnelAction::OpenTarget {
                    tunnel,
                    session,
                    payload,
                } => {
                    let entry_local = self.pending_local_entry(tunnel);
                    let Some(slot) = self.slots.get_mut(&session) else {
                        self.tunnels
                            .target_open_failed(tunnel, OpenError::TargetOffline);
                        continue;
                    };
                    let opened = slot.session.mux().map(|m| m.open(payload));
                    match opened {
                        Some(Ok(stream)) => {
                            if let Some(visitor) = entry_local {
                                slot.visitors.attach(visitor, stream);
                                self.visitor_slot.insert(visitor, session);
                                // Bytes the visitor sent while its open waited (for a route)
                                // were refused: the runtime paused reading and must read again.
                                self.outputs.push_back(NodeOutput::Visitor(
                                    LocalOutput::ResumeRead { local: visitor },
                                ));
                            }
                            self.tunnels.target_opened(tunnel, stream);
                            self.mark(session);
                        }
                        _ => self
                            .tunnels
                            .target_open_failed(tunnel, OpenError::Overloaded),
                    }
                }
                TunnelAction::AcceptEntry { entry } => {
                    if let Endpoint::Stream { session, stream } = entry {
                        if let Some(mux) =
                            self.slots.get_mut(&session).and_then(|s| s.session.mux())
                        {
                            let _ = mux.accept(stream, encode_result(OpenError::Ok, ""));
                        }
                        self.mark(session);
                        // Bytes that arrived with the open can flow now.
                        self.on_readable(now, session, stream);
                    }
                }
                TunnelAction::RefuseEntry {
                    entry,
                    error,
                    message,
                } => {
                    match entry {
                        Endpoint::Stream { session, stream } => {
                            if let Some(mux) =
                                self.slots.get_mut(&session).and_then(|s| s.session.mux())
                            {
                                let _ = mux.refuse(stream, encode_result(error, &message));
                            }
                            self.mark(session);
                        }
                        Endpoint::Local(visitor) => self.close_visitor(visitor),
                    }
                    self.outputs
                        .push_back(NodeOutput::Notice(Notice::OpenRefused { error, message }));
                }
                TunnelAction::Finish { endpoint } => match endpoint {
                    Endpoint::Stream { .. }
                        if crate::planted::active(crate::planted::PlantedBug::FinNotPropagated) => {
                    }
                    Endpoint::Stream { session, stream } => {
                        if let Some(mux) =
                            self.slots.get_mut(&session).and_then(|s| s.session.mux())
                        {
                            let _ = mux.finish(stream);
                        }
                        self.mark(session);
                    }
                    // Visitor FINs travel through the relay, after the data.
                    Endpoint::Local(_) => {}
                },
                TunnelAction::Reset { endpoint, reason } => match endpoint {
                    Endpoint::Stream { session, stream } => {
                        if let Some(slot) = self.slots.get_mut(&session) {
                            if let Some(mux) = slot.session.mux() {
                                let _ = mux.reset(stream, reason);
                            }
                            slot.visitors.stream_reset(stream);
                        }
                        self.drain_visitor_outputs_no_mux(session);
                        self.mark(session);
                    }
                    Endpoint::Local(visitor) => self.close_visitor(visitor),
                },
                TunnelAction::Closed {
                    mapping,
                    outcome,
                    bytes_to_target,
                    bytes_to_entry,
                    ..
                } => {
                    self.record_traffic(&mapping, bytes_to_target, bytes_to_entry);
                    self.outputs
                        .push_back(NodeOutput::Notice(Notice::TunnelClosed {
                            mapping,
                            outcome,
                            bytes_to_target,
                            bytes_to_entry,
                        }));
                }
            }
        }
    }

    /// The visitor id of a tunnel whose entry is a node-port visitor not yet attached.
    fn pending_local_entry(&self, tunnel: crate::tunnel::TunnelId) -> Option<LocalId> {
        self.tunnels.entry_of(tunnel).and_then(|e| match e {
            Endpoint::Local(v) => Some(v),
            Endpoint::Stream { .. } => None,
        })
    }

    fn close_visitor(&mut self, visitor: LocalId) {
        if let Some(conn) = self.visitor_slot.remove(&visitor)
            && let Some(slot) = self.slots.get_mut(&conn)
            && let Some(stream) = slot.visitors.stream_of(visitor)
        {
            slot.visitors.stream_reset(stream);
            self.drain_visitor_outputs_no_mux(conn);
            return;
        }
        if self.open_visitors.remove(&visitor) {
            self.outputs
                .push_back(NodeOutput::Visitor(LocalOutput::Close {
                    local: visitor,
                    reset: true,
                }));
        }
    }

    fn drain_visitor_outputs(&mut self, _now: Instant, conn: ConnId) {
        self.drain_visitor_outputs_no_mux(conn);
        self.mark(conn);
    }

    fn drain_visitor_outputs_no_mux(&mut self, conn: ConnId) {
        let Some(slot) = self.slots.get_mut(&conn) else {
            return;
        };
        while let Some(out) = slot.visitors.poll_output() {
            match &out {
                LocalOutput::Close { local, .. } => {
                    self.visitor_slot.remove(local);
                    if !self.open_visitors.remove(local) {
                        continue;
                    }
                }
                LocalOutput::Write { local, bytes } => {
                    // Bytes target -> visitor count for the tunnel's traffic figures.
                    if let Some(target) = self.tunnels.peer(Endpoint::Local(*local)) {
                        self.tunnels.record_transfer(target, bytes.len() as u64);
                    }
                }
                LocalOutput::Finish { .. } | LocalOutput::ResumeRead { .. } => {}
            }
            self.outputs.push_back(NodeOutput::Visitor(out));
        }
    }

    /// Established, not yet closed sessions per client (more than one would be two owners).
    pub fn live_sessions_per_client(&self) -> BTreeMap<ClientId, usize> {
        let mut counts = BTreeMap::new();
        for slot in self.slots.values() {
            if let (Some(client), false) = (slot.client, slot.session.is_closed()) {
                *counts.entry(client).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Stream-layer counters of every session since the node started (for metrics and
    /// coverage).
    pub fn mux_stats(&self) -> crate::mux::MuxStats {
        let mut total = self.closed_mux_stats.clone();
        for slot in self.slots.values() {
            total.add(&slot.session.mux_stats());
        }
        total
    }

    /// A cheap fingerprint of the node's state and history (constant time: sizes and running
    /// counters of bytes in, bytes out and outputs), for the simulator's trace hash.
    pub fn digest(&self) -> u64 {
        let mut h = crate::digest::Fnv64::new();
        h.write_u64(self.slots.len() as u64);
        h.write_u64(self.tunnels.len() as u64);
        h.write_u64(self.registry.len() as u64);
        h.write_u64(self.config_version);
        h.write_u64(self.activity.0);
        h.write_u64(self.activity.1);
        h.write_u64(self.activity.2);
        h.finish()
    }

    /// Notes that `conn` may have output and may have changed.
    fn mark(&mut self, conn: ConnId) {
        self.dirty.insert(conn);
        self.touched.get_mut().insert(conn);
    }

    /// Checks what changed since the last call: each touched session and its visitors, that a
    /// live established session is the one the registry names for its client (so no client has
    /// two), and that no peer ever sent beyond its credit. Cheap enough to run after every event;
    /// `check_invariants` checks everything.
    pub fn check_touched(&self) -> Result<(), String> {
        let touched = std::mem::take(&mut *self.touched.borrow_mut());
        for conn in touched {
            let Some(slot) = self.slots.get(&conn) else {
                continue;
            };
            self.check_slot(conn, slot)?;
        }
        Ok(())
    }

    fn check_slot(&self, conn: ConnId, slot: &Slot) -> Result<(), String> {
        slot.session.check_invariants()?;
        slot.visitors.check_invariants()?;
        for visitor in slot.visitors.locals() {
            if self.visitor_slot.get(&visitor) != Some(&conn) {
                return Err(format!(
                    "visitor {visitor} not indexed to connection {conn}"
                ));
            }
        }
        if let (Some(client), false) = (slot.client, slot.session.is_closed())
            && self.registry.live_session(client.0) != Some(conn)
        {
            return Err(format!(
                "client {client} has a live session {conn} the registry does not name"
            ));
        }
        if let Some(mux) = slot.session.mux_ref()
            && mux.stats().flow_control_violations > 0
        {
            return Err(format!(
                "connection {conn}: the peer sent beyond the credit it was granted"
            ));
        }
        Ok(())
    }

    /// Checks every session, the registry, the tunnel table and the visitor index.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.registry.check_invariants()?;
        self.tunnels.check_invariants()?;
        for (conn, slot) in &self.slots {
            self.check_slot(*conn, slot)?;
        }
        // An open that came over a bridge link is served by a local client, never sent onward
        // over another link (that could loop between nodes).
        for (conn, slot) in self.slots.iter().filter(|(_, s)| s.peer.is_some()) {
            let Some(mux) = slot.session.mux_ref() else {
                continue;
            };
            for stream in mux.stream_ids() {
                let end = Endpoint::Stream {
                    session: *conn,
                    stream,
                };
                if let Some(Endpoint::Stream { session, .. }) = self.tunnels.peer(end)
                    && self.slots.get(&session).is_some_and(|s| s.peer.is_some())
                {
                    return Err(format!(
                        "a tunnel relays bridge link {conn} to bridge link {session}"
                    ));
                }
            }
        }
        for (visitor, conn) in &self.visitor_slot {
            let held = self
                .slots
                .get(conn)
                .is_some_and(|s| s.visitors.stream_of(*visitor).is_some());
            if !held {
                return Err(format!(
                    "visitor index names {visitor} on {conn}, which does not hold it"
                ));
            }
        }
        Ok(())
    }
}

/// How long after its creation a client online here is kept when a snapshot lacks it (see
/// [`Node::adopt_state`]).
pub const RECENT_CLIENT: Duration = Duration::from_secs(60);

/// Most opens that may wait for one client's route (more are refused as if it were offline).
const ROUTE_WAITS_PER_CLIENT_MAX: usize = 1024;

/// Streams a link carries now (a link without a mux counts as full: it cannot take any).
fn link_streams(slots: &BTreeMap<ConnId, Slot>, link: ConnId) -> u32 {
    slots
        .get(&link)
        .and_then(|s| s.session.mux_ref())
        .map_or(u32::MAX, |m| {
            u32::try_from(m.stream_count()).unwrap_or(u32::MAX)
        })
}

/// Whether changing `previous` into `mapping` must end the mapping's live tunnels.
fn tunnel_relevant_change(previous: &Mapping, mapping: &Mapping) -> bool {
    previous.entry != mapping.entry
        || previous.target != mapping.target
        || previous.target_client != mapping.target_client
        || previous.protocol != mapping.protocol
        || mapping.status != MappingStatus::Active
}

/// The clients a mapping concerns: its listen client (if any) and its target client.
fn involved_clients(mapping: &Mapping) -> BTreeSet<ClientId> {
    let mut clients = BTreeSet::new();
    clients.insert(mapping.target_client);
    if let Some(listen) = mapping.listen_client() {
        clients.insert(listen);
    }
    clients
}

pub(crate) fn pb_protocol(p: crate::control::Protocol) -> i32 {
    (match p {
        crate::control::Protocol::Tcp => pb::Protocol::Tcp,
        crate::control::Protocol::Udp => pb::Protocol::Udp,
        crate::control::Protocol::Http => pb::Protocol::Http,
        crate::control::Protocol::Socks5 => pb::Protocol::Socks5,
    }) as i32
}

/// The configuration snapshot `client` must serve.
pub fn config_for(state: &ControlState, client: ClientId, version: u64) -> pb::ConfigPush {
    let mut mappings = Vec::new();
    for m in state
        .mappings_of(client)
        .filter(|m| m.status == MappingStatus::Active)
    {
        let target = match &m.target {
            Target::Fixed { host, port } => Some(pb::TargetAddr {
                host: host.clone(),
                port: u32::from(*port),
            }),
            Target::Dynamic => None,
        };
        let base = pb::MappingConfig {
            mapping_id: m.id.as_str().to_owned(),
            listen_side: false,
            protocol: pb_protocol(m.protocol),
            listen_addr: String::new(),
            target,
            bandwidth_limit_bytes_per_sec: m.options.bandwidth_bytes_per_sec,
            compression: m.options.compression,
            end_to_end_encryption: m.options.end_to_end_encryption,
            allowed_source_cidrs: m
                .options
                .allowed_source_cidrs
                .iter()
                .map(|c| c.to_string())
                .collect(),
            max_connections: m.options.max_connections,
        };
        if let (Some(listen), Some(addr)) = (m.listen_client(), m.entry.listen_addr())
            && listen == client
        {
            mappings.push(pb::MappingConfig {
                listen_side: true,
                listen_addr: addr.to_string(),
                ..base.clone()
            });
        }
        if m.target_client == client {
            mappings.push(base);
        }
    }
    pb::ConfigPush { version, mappings }
}
