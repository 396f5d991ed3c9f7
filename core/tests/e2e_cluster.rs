//! Several nodes, agents on different nodes and echo targets wired in memory: cross-node tunnels
//! over bridge links (authenticated with the cluster key), the pool, stale routes, replicated
//! mapping changes and a peer going away — with no runtime at all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use tunnox_core::agent::{Agent, AgentConfig, AgentOutput, AttemptId, DIAL_ID_BASE};
use tunnox_core::cluster::PoolConfig;
use tunnox_core::control::{
    ClientId, Entry, Mapping, MappingId, MappingOptions, MappingStatus, NodeId, Protocol, Target,
    UnixMillis,
};
use tunnox_core::node::{
    ClusterConfig, ConnId, ControlState, Node, NodeConfig, NodeOutput, Notice, StateChange,
};
use tunnox_core::relay::{LocalId, LocalOutput};
use tunnox_core::rng::Rng;
use tunnox_core::session::{AuthKey, ClientIdentity};
use tunnox_core::time::{Duration, Instant};
use tunnox_core::tunnel::OpenError;

const WALL: UnixMillis = UnixMillis(1_700_000_000_000);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Agent(usize, AttemptId),
    Node(usize, ConnId),
}

#[derive(Debug, Default, Clone, PartialEq)]
struct VisitorView {
    received: Vec<u8>,
    finished: bool,
    closed: Option<bool>,
    open_failed: Option<OpenError>,
}

struct Cluster {
    now: Instant,
    nodes: Vec<Node>,
    agents: Vec<(Agent, usize)>,
    /// Both ends of every wire.
    peer_of: BTreeMap<End, End>,
    next_conn: ConnId,
    visitors: BTreeMap<(usize, LocalId), VisitorView>,
    /// Changes each node asked to persist (what the runtime would write and publish).
    persisted: Vec<(usize, StateChange)>,
    notices: Vec<(usize, Notice)>,
    /// Route lookups nodes asked for.
    lookups: Vec<(usize, ClientId)>,
    /// The routes storage holds: client → node index.
    route_store: BTreeMap<ClientId, usize>,
    /// Whether dials to peers succeed.
    peers_reachable: bool,
    dials: u64,
    /// Crashed nodes: they run no more.
    dead: Vec<bool>,
    /// Whether route lookups wait for `answer_lookups` instead of being answered at once.
    hold_lookups: bool,
    held_lookups: Vec<(usize, ClientId)>,
    /// Node-port visitors: what each node wrote to them, and whether it asked to read again.
    node_visitors: BTreeMap<(usize, LocalId), (Vec<u8>, bool)>,
}

fn node_id(i: usize) -> NodeId {
    NodeId::parse(&format!("node-{i}")).unwrap()
}

impl Cluster {
    fn new(nodes: usize, key: &str, pool: PoolConfig) -> Cluster {
        Cluster::with_keys(vec![AuthKey::derive(key); nodes], pool)
    }

    fn with_keys(keys: Vec<AuthKey>, pool: PoolConfig) -> Cluster {
        let keys_len = keys.len();
        let nodes = keys
            .into_iter()
            .enumerate()
            .map(|(i, key)| {
                let mut config = NodeConfig::new(node_id(i).as_str());
                config.cluster = Some(ClusterConfig {
                    key,
                    pool: pool.clone(),
                });
                Node::new(
                    Instant::ZERO,
                    WALL,
                    config,
                    ControlState::default(),
                    Rng::seed_from_u64(100 + i as u64),
                )
            })
            .collect();
        Cluster {
            now: Instant::ZERO,
            nodes,
            agents: Vec::new(),
            peer_of: BTreeMap::new(),
            next_conn: 1,
            visitors: BTreeMap::new(),
            persisted: Vec::new(),
            notices: Vec::new(),
            lookups: Vec::new(),
            route_store: BTreeMap::new(),
            peers_reachable: true,
            dials: 0,
            dead: vec![false; keys_len],
            hold_lookups: false,
            held_lookups: Vec::new(),
            node_visitors: BTreeMap::new(),
        }
    }

    /// Every node learns of every other.
    fn all_peers_up(&mut self) {
        let n = self.nodes.len();
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    let now = self.now;
                    self.nodes[i].peer_up(now, &node_id(j));
                }
            }
        }
        self.settle();
    }

    /// A client created on node `home` (and known to all), with an agent connected there.
    fn client_on(&mut self, home: usize, label: &str) -> ClientId {
        let now = self.now;
        let (id, secret) = self.nodes[home].create_client(now, None, label).unwrap();
        self.replicate(home);
        let config = AgentConfig::new(
            ClientIdentity::Login {
                client_id: id.0,
                key: secret.auth_key(),
            },
            1,
        );
        let seed = 10 + self.agents.len() as u64;
        self.agents
            .push((Agent::new(now, config, Rng::seed_from_u64(seed)), home));
        self.settle();
        self.publish_route(id, home);
        id
    }

    /// What the runtime does with a route claim: storage holds it; other nodes read it when
    /// they need it.
    fn publish_route(&mut self, client: ClientId, home: usize) {
        self.route_store.insert(client, home);
    }

    /// Applies node `origin`'s persisted changes on every other node (storage + broker).
    fn replicate(&mut self, origin: usize) {
        self.settle();
        let changes: Vec<StateChange> = self
            .persisted
            .iter()
            .filter(|(o, _)| *o == origin)
            .map(|(_, c)| c.clone())
            .collect();
        self.persisted.retain(|(o, _)| *o != origin);
        let now = self.now;
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if i != origin {
                for change in &changes {
                    node.apply_remote_change(now, change.clone());
                }
            }
        }
        self.settle();
    }

    fn client_port_mapping(&mut self, on: usize, listen: ClientId, target: ClientId) -> MappingId {
        let id = MappingId::generate(&mut Rng::seed_from_u64(listen.0 ^ target.0));
        let mapping = echo_mapping(
            id.clone(),
            Entry::ClientPort {
                listen_client: listen,
                listen_addr: "127.0.0.1:13306".into(),
            },
            target,
        );
        let now = self.now;
        self.nodes[on].put_mapping(now, mapping).unwrap();
        self.replicate(on);
        id
    }

    fn settle(&mut self) {
        for _ in 0..200_000 {
            if !self.step() {
                for node in &self.nodes {
                    node.check_invariants().unwrap();
                    node.pool().check_invariants().unwrap();
                }
                for (a, _) in &self.agents {
                    a.check_invariants().unwrap();
                }
                return;
            }
        }
        panic!("cluster never settled");
    }

    /// Advances time by `by`, firing every timer on the way.
    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        loop {
            let next = self
                .nodes
                .iter()
                .zip(&self.dead)
                .filter(|(_, dead)| !**dead)
                .filter_map(|(n, _)| n.poll_timeout())
                .chain(self.agents.iter().filter_map(|(a, _)| a.poll_timeout()))
                .filter(|t| *t <= until)
                .min();
            let Some(at) = next else { break };
            self.now = self.now.max(at);
            let now = self.now;
            for (node, _) in self.nodes.iter_mut().zip(&self.dead).filter(|(_, d)| !**d) {
                if node.poll_timeout().is_some_and(|t| t <= now) {
                    node.handle_timeout(now);
                }
            }
            for (agent, _) in &mut self.agents {
                if agent.poll_timeout().is_some_and(|t| t <= now) {
                    agent.handle_timeout(now);
                }
            }
            self.settle();
        }
        self.now = until;
    }

    fn deliver(&mut self, to: End, bytes: &[u8]) {
        let now = self.now;
        match to {
            End::Agent(i, attempt) => self.agents[i].0.connection_bytes(now, attempt, bytes),
            End::Node(n, conn) => self.nodes[n].connection_bytes(now, conn, bytes),
        }
    }

    fn close_end(&mut self, end: End) {
        let now = self.now;
        match end {
            End::Agent(i, attempt) => self.agents[i].0.connection_closed(now, attempt),
            End::Node(n, conn) => self.nodes[n].connection_closed(now, conn),
        }
    }

    fn step(&mut self) -> bool {
        let mut moved = false;
        let live: Vec<usize> = (0..self.nodes.len()).filter(|n| !self.dead[*n]).collect();
        for n in live {
            while let Some((conn, t)) = self.nodes[n].poll_transmit() {
                moved = true;
                let mut buf = BytesMut::new();
                t.write_to(&mut buf);
                if let Some(&to) = self.peer_of.get(&End::Node(n, conn)) {
                    self.deliver(to, &buf);
                }
            }
            while let Some(out) = self.nodes[n].poll_output() {
                moved = true;
                self.on_node_output(n, out);
            }
        }
        for i in 0..self.agents.len() {
            while let Some((attempt, t)) = self.agents[i].0.poll_transmit() {
                moved = true;
                let mut buf = BytesMut::new();
                t.write_to(&mut buf);
                if let Some(&to) = self.peer_of.get(&End::Agent(i, attempt)) {
                    self.deliver(to, &buf);
                }
            }
            while let Some(out) = self.agents[i].0.poll_output() {
                moved = true;
                self.on_agent_output(i, out);
            }
        }
        moved
    }

    fn wire(&mut self, a: End, b: End) {
        self.peer_of.insert(a, b);
        self.peer_of.insert(b, a);
    }

    fn fresh_conn(&mut self) -> ConnId {
        self.next_conn += 1;
        self.next_conn
    }

    fn on_node_output(&mut self, n: usize, out: NodeOutput) {
        let now = self.now;
        match out {
            NodeOutput::DialPeer { peer } => {
                self.dials += 1;
                let j: usize = peer.as_str()["node-".len()..].parse().unwrap();
                if !self.peers_reachable || j >= self.nodes.len() {
                    self.nodes[n].peer_dial_failed(now, &peer);
                    return;
                }
                let (a, b) = (self.fresh_conn(), self.fresh_conn());
                self.wire(End::Node(n, a), End::Node(j, b));
                self.nodes[j].accept_connection(now, b);
                self.nodes[n].peer_connected(now, a, peer);
            }
            NodeOutput::CloseConnection { conn } => {
                while let Some(t) = self.nodes[n].poll_transmit_for(conn) {
                    let mut buf = BytesMut::new();
                    t.write_to(&mut buf);
                    if let Some(&to) = self.peer_of.get(&End::Node(n, conn)) {
                        self.deliver(to, &buf);
                    }
                }
                if let Some(other) = self.peer_of.remove(&End::Node(n, conn)) {
                    self.peer_of.remove(&other);
                    self.close_end(other);
                }
                self.nodes[n].connection_closed(now, conn);
            }
            NodeOutput::Persist(change) => self.persisted.push((n, change)),
            NodeOutput::LookupRoute { client } if self.hold_lookups => {
                self.held_lookups.push((n, client));
            }
            NodeOutput::Visitor(LocalOutput::Write { local, bytes }) => {
                let len = bytes.len();
                let view = self.node_visitors.entry((n, local)).or_default();
                view.0.extend_from_slice(&bytes);
                self.nodes[n].visitor_flushed(now, local, len);
            }
            NodeOutput::Visitor(LocalOutput::ResumeRead { local }) => {
                self.node_visitors.entry((n, local)).or_default().1 = true;
            }
            NodeOutput::LookupRoute { client } => {
                self.lookups.push((n, client));
                let node = self.route_store.get(&client).map(|home| node_id(*home));
                self.nodes[n].set_route(now, client, node);
            }
            NodeOutput::Notice(notice) => {
                if let Notice::ClientOffline { client, .. } = &notice
                    && self.route_store.get(client) == Some(&n)
                {
                    self.route_store.remove(client);
                }
                self.notices.push((n, notice));
            }
            _ => {}
        }
    }

    fn on_agent_output(&mut self, i: usize, out: AgentOutput) {
        let now = self.now;
        let agent = &mut self.agents[i].0;
        match out {
            AgentOutput::Connect { attempt, .. } => {
                let home = self.agents[i].1;
                let conn = self.fresh_conn();
                self.wire(End::Agent(i, attempt), End::Node(home, conn));
                self.nodes[home].accept_connection(now, conn);
                self.agents[i].0.connected(now, attempt);
            }
            AgentOutput::CloseConnection { attempt } => {
                if let Some(other) = self.peer_of.remove(&End::Agent(i, attempt)) {
                    self.peer_of.remove(&other);
                    self.close_end(other);
                }
            }
            AgentOutput::Dial { local, .. } => agent.dial_result(now, local, Ok(())),
            AgentOutput::Local(LocalOutput::Write { local, bytes }) => {
                let n = bytes.len();
                if local >= DIAL_ID_BASE {
                    let taken = agent.local_data(now, local, bytes);
                    assert_eq!(taken, n, "echo back-pressure is not modelled here");
                } else {
                    self.visitors
                        .entry((i, local))
                        .or_default()
                        .received
                        .extend_from_slice(&bytes);
                }
                self.agents[i].0.local_flushed(now, local, n);
            }
            AgentOutput::Local(LocalOutput::Finish { local }) => {
                if local >= DIAL_ID_BASE {
                    agent.local_eof(now, local);
                } else {
                    self.visitors.entry((i, local)).or_default().finished = true;
                }
            }
            AgentOutput::Local(LocalOutput::Close { local, reset }) if local < DIAL_ID_BASE => {
                self.visitors.entry((i, local)).or_default().closed = Some(reset);
            }
            AgentOutput::OpenFailed { local, error, .. } => {
                self.visitors.entry((i, local)).or_default().open_failed = Some(error);
            }
            _ => {}
        }
    }

    /// A visitor at agent `agent` sends `data` through `mapping`, then EOF.
    fn visit(&mut self, agent: usize, local: LocalId, mapping: &MappingId, data: &Bytes) {
        let now = self.now;
        self.agents[agent]
            .0
            .visitor_accepted(now, mapping.as_str(), local, None);
        let mut offset = 0;
        while offset < data.len() {
            let taken = self.agents[agent]
                .0
                .local_data(now, local, data.slice(offset..));
            offset += taken;
            self.settle();
        }
        self.agents[agent].0.local_eof(now, local);
        self.settle();
    }

    /// Node `n` dies: every wire to it breaks; it is dialled no more.
    fn crash(&mut self, n: usize) {
        let wires: Vec<(End, End)> = self
            .peer_of
            .iter()
            .filter(|(a, _)| matches!(a, End::Node(m, _) if *m == n))
            .map(|(a, b)| (*a, *b))
            .collect();
        for (dead, other) in wires {
            self.peer_of.remove(&dead);
            self.peer_of.remove(&other);
            self.close_end(other);
        }
        self.peers_reachable = false;
        self.dead[n] = true;
        self.settle();
    }

    /// Answers the lookups held back so far from the route store.
    fn answer_lookups(&mut self) {
        let now = self.now;
        for (n, client) in std::mem::take(&mut self.held_lookups) {
            self.lookups.push((n, client));
            let node = self.route_store.get(&client).map(|home| node_id(*home));
            self.nodes[n].set_route(now, client, node);
        }
        self.settle();
    }

    fn links_between(&self, a: usize, b: usize) -> usize {
        self.nodes[a].pool().links_to(&node_id(b)).count()
    }
}

/// An active TCP mapping to the echo target (127.0.0.1:7) at `target`'s side.
fn echo_mapping(id: MappingId, entry: Entry, target: ClientId) -> Mapping {
    Mapping {
        id,
        owner: None,
        entry,
        target_client: target,
        target: Target::Fixed {
            host: "127.0.0.1".into(),
            port: 7,
        },
        protocol: Protocol::Tcp,
        options: MappingOptions::default(),
        created_at: WALL,
        expires_at: None,
        status: MappingStatus::Active,
    }
}

fn random(seed: u64, len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    Rng::seed_from_u64(seed).fill(&mut v);
    Bytes::from(v)
}

#[test]
fn a_tunnel_whose_entry_and_target_are_on_different_nodes_is_byte_exact() {
    let mut c = Cluster::new(3, "cluster token", PoolConfig::default());
    c.all_peers_up();
    assert!(c.links_between(0, 2) >= 1 && c.links_between(2, 0) >= 1);
    let listen = c.client_on(0, "listen");
    let target = c.client_on(2, "target");
    let id = c.client_port_mapping(1, listen, target);
    assert_eq!(
        c.agents[0].0.listening().collect::<Vec<_>>(),
        vec![id.as_str()],
        "the mapping made on node 1 reached the listen client on node 0"
    );
    let data = random(1, 400_000);
    c.visit(0, 1, &id, &data);
    let view = &c.visitors[&(0, 1)];
    assert_eq!(view.open_failed, None);
    assert_eq!(view.received.len(), data.len());
    assert!(view.received == data, "echo through two nodes differs");
    assert!(view.finished);
    assert_eq!(view.closed, Some(false), "clean close after both FINs");
    for node in &c.nodes {
        assert_eq!(node.tunnel_count(), 0, "tunnel closed on every node");
        assert_eq!(node.stream_count(), 0, "no stream leaked");
    }
}

#[test]
fn a_node_with_the_wrong_cluster_token_gets_no_link() {
    let keys = vec![AuthKey::derive("right"), AuthKey::derive("wrong")];
    let mut c = Cluster::with_keys(keys, PoolConfig::default());
    c.all_peers_up();
    assert_eq!(c.links_between(0, 1) + c.links_between(1, 0), 0);
    let refused = c
        .notices
        .iter()
        .filter(|(_, n)| matches!(n, Notice::HandshakeFailed { .. }))
        .count();
    assert!(refused >= 2, "both directions refused: {refused}");
    // The pool keeps trying, with backoff (not in a tight loop).
    let dials = c.dials;
    c.advance(Duration::from_secs(10));
    assert!(
        c.dials > dials && c.dials < dials + 20,
        "{} dials",
        c.dials - dials
    );
}

#[test]
fn a_stale_route_is_refused_cleanly_and_reported() {
    let mut c = Cluster::new(2, "k", PoolConfig::default());
    c.all_peers_up();
    let listen = c.client_on(0, "listen");
    let target = c.client_on(1, "target");
    let id = c.client_port_mapping(0, listen, target);
    // The first open looks the route up and caches it.
    c.visit(0, 6, &id, &Bytes::from_static(b"hello"));
    assert_eq!(c.visitors[&(0, 6)].received, b"hello");
    assert_eq!(c.lookups, vec![(0, target)]);
    assert_eq!(c.nodes[0].route_of(target), Some(&node_id(1)));
    // Node 0 still believes the target is on node 1, but it left there.
    let now = c.now;
    c.nodes[1].kick_client(now, target);
    c.settle();
    c.visit(0, 7, &id, &Bytes::from_static(b"anyone?"));
    let view = &c.visitors[&(0, 7)];
    assert_eq!(view.open_failed, Some(OpenError::TargetOffline));
    assert_eq!(view.closed, Some(true));
    assert_eq!(
        c.lookups,
        vec![(0, target), (0, target)],
        "the stale route was re-read"
    );
    assert_eq!(
        c.nodes[0].route_of(target),
        None,
        "the stale route was dropped"
    );
}

#[test]
fn a_departed_peer_loses_its_links_and_routes_and_busy_links_grow_the_pool() {
    let pool = PoolConfig {
        streams_per_link_max: 4,
        grow_at_streams: 2,
        links_max: 3,
        ..PoolConfig::default()
    };
    let mut c = Cluster::new(2, "k", pool);
    c.all_peers_up();
    let listen = c.client_on(0, "listen");
    let target = c.client_on(1, "target");
    let id = c.client_port_mapping(0, listen, target);
    // Six visitors held open at once: more than one link can carry.
    let now = c.now;
    for local in 1..=6 {
        c.agents[0]
            .0
            .visitor_accepted(now, id.as_str(), local, None);
        c.agents[0]
            .0
            .local_data(now, local, Bytes::from_static(b"ping"));
        c.settle();
    }
    let links = c.links_between(0, 1);
    assert!(links >= 2, "the pool grew under load: {links} links");
    for local in 1..=6 {
        assert_eq!(c.visitors[&(0, local)].received, b"ping");
    }
    // Node 1 dies: every connection to it breaks, then its lease runs out.
    c.crash(1);
    let now = c.now;
    c.nodes[0].peer_down(now, &node_id(1));
    c.settle();
    let dials = c.dials;
    c.advance(Duration::from_secs(120));
    assert_eq!(c.dials, dials, "a departed peer is not redialled");
    assert_eq!(c.links_between(0, 1), 0);
    assert_eq!(c.nodes[0].route_of(target), None);
    for local in 1..=6 {
        assert_eq!(
            c.visitors[&(0, local)].closed,
            Some(true),
            "visitor {local} reset"
        );
    }
    assert_eq!(
        c.nodes[0].tunnel_count(),
        0,
        "the surviving node holds no tunnel"
    );
    assert_eq!(c.nodes[0].stream_count(), 0);
}

#[test]
fn a_node_that_missed_a_change_catches_up_by_adopting_the_shared_state() {
    let mut c = Cluster::new(2, "k", PoolConfig::default());
    c.all_peers_up();
    let listen = c.client_on(0, "listen");
    let target = c.client_on(1, "target");
    // The mapping is made on node 0; the broker message to node 1 is lost.
    let id = MappingId::generate(&mut Rng::seed_from_u64(99));
    let mapping = echo_mapping(
        id.clone(),
        Entry::ClientPort {
            listen_client: listen,
            listen_addr: "127.0.0.1:13306".into(),
        },
        target,
    );
    let now = c.now;
    c.nodes[0].put_mapping(now, mapping).unwrap();
    c.settle();
    c.persisted.clear();
    c.visit(0, 1, &id, &Bytes::from_static(b"lost?"));
    assert_eq!(
        c.visitors[&(0, 1)].open_failed,
        Some(OpenError::MappingNotFound),
        "node 1 does not know the mapping"
    );
    // A resync: node 1 reads the shared state and adopts it.
    let shared = c.nodes[0].state().clone();
    let now = c.now;
    // The mapping, and the clients' last-seen times the test world never replicated.
    assert!(c.nodes[1].adopt_state(now, &shared) >= 1);
    assert!(c.nodes[1].state().mappings.contains_key(&id));
    assert_eq!(
        c.nodes[1].adopt_state(now, &shared),
        0,
        "adopting twice changes nothing"
    );
    c.settle();
    c.visit(0, 2, &id, &Bytes::from_static(b"found"));
    assert_eq!(c.visitors[&(0, 2)].received, b"found");
}

#[test]
fn node_port_bytes_that_arrive_while_the_route_is_looked_up_are_read_later() {
    let mut c = Cluster::new(2, "k", PoolConfig::default());
    c.all_peers_up();
    let target = c.client_on(1, "target");
    let mapping = echo_mapping(
        MappingId::generate(&mut Rng::seed_from_u64(9)),
        Entry::NodePort {
            port: 20_000,
            bind: None,
        },
        target,
    );
    let now = c.now;
    c.nodes[1].put_mapping(now, mapping).unwrap();
    c.replicate(1);
    // A visitor at node 0's port: node 0 must ask where the target is; its bytes come first.
    c.hold_lookups = true;
    c.nodes[0].visitor_accepted(now, 20_000, 1, None);
    c.settle();
    assert_eq!(c.held_lookups, vec![(0, target)]);
    let data = Bytes::from_static(b"sent before the route was known");
    assert_eq!(
        c.nodes[0].visitor_data(now, 1, data.clone()),
        0,
        "nothing to send on yet"
    );
    c.answer_lookups();
    let resumed = c.node_visitors.get(&(0, 1)).is_some_and(|v| v.1);
    assert!(
        resumed,
        "the node must ask to read the paused visitor again"
    );
    let now = c.now;
    assert_eq!(c.nodes[0].visitor_data(now, 1, data.clone()), data.len());
    c.settle();
    assert_eq!(c.node_visitors[&(0, 1)].0, data, "echo through the bridge");
}

#[test]
fn a_route_to_a_departed_node_is_read_again_not_refused_forever() {
    let mut c = Cluster::new(3, "k", PoolConfig::default());
    c.all_peers_up();
    let listen = c.client_on(0, "listen");
    let target = c.client_on(1, "target");
    let id = c.client_port_mapping(0, listen, target);
    c.visit(0, 1, &id, &Bytes::from_static(b"one"));
    assert_eq!(c.visitors[&(0, 1)].received, b"one");
    // Node 1 dies and its target fails over to node 2; node 0 hears that node 1 left, then a
    // late broker message that still names node 1 as the target's node.
    c.agents[1].1 = 2;
    c.crash(1);
    let now = c.now;
    c.nodes[0].peer_down(now, &node_id(1));
    c.nodes[0].set_route(now, target, Some(node_id(1)));
    c.settle();
    c.advance(Duration::from_secs(30));
    c.publish_route(target, 2);
    assert!(
        c.nodes[2].session_of(target).is_some(),
        "the target is on node 2"
    );
    c.visit(0, 2, &id, &Bytes::from_static(b"two"));
    let view = &c.visitors[&(0, 2)];
    assert_eq!(
        view.open_failed, None,
        "the dead node's route was read again"
    );
    assert_eq!(view.received, b"two");
}
