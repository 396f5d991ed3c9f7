//! Cluster scenarios: 3–16 nodes sharing a simulated storage and broker, clients that know
//! several nodes, mappings whose entry and target sit on different nodes, faults aimed at the
//! cluster (partitions between nodes and between nodes and storage or broker, node crashes, a
//! node leaving for good) on top of the generic schedule, then heal, convergence and probes.
//!
//! Checked while it runs: every host's invariants after every event (the node's, the
//! coordinator's broker order and de-duplication, visitors' byte-exact echoes through the
//! bridge) and, every [`OWNERSHIP_CHECK_EVERY`] of simulated time, that no two nodes both hold a
//! live session of one client, nor both believe they own its route, for longer than a lease.
//! After heal: every client online on exactly one node, its stored route naming that node and
//! only that node believing it owns it; every node's mappings equal to storage's; each pair of
//! live nodes linked and nothing else open (no tunnel, stream or connection leak); then one echo
//! through every mapping, and the entry node's route for its target is the true one.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::rc::Rc;

use tunnox_core::agent::AgentConfig;
use tunnox_core::cluster::PoolConfig;
use tunnox_core::control::{
    AuthKey, ClientId, ClientRecord, ClientSecret, Entry, Mapping, MappingId, MappingOptions,
    MappingStatus, NodeId, Protocol, Target, UnixMillis,
};
use tunnox_core::mux::MuxConfig;
use tunnox_core::node::{ClusterConfig as NodeClusterConfig, ControlState, NodeConfig};
use tunnox_core::planted::PlantedBug;
use tunnox_core::rng::Rng;
use tunnox_core::session::{ClientIdentity, Heartbeat};
use tunnox_runtime_sim::{
    ClockSpec, Duration, FaultAction, FaultMix, HostFaults, HostId, HostOptions, Instant, SimError,
    SimStats, TraceMode, World, WorldConfig,
};

use crate::hosts::agent::AgentHost;
use crate::hosts::broker::{BrokerHost, BrokerStats};
use crate::hosts::coordinator::CoordinatorConfig;
use crate::hosts::node::{AdminOp, Departure, NodeHost};
use crate::hosts::probe::{ProbeHost, ProbeTarget};
use crate::hosts::service::{ServiceHost, ServiceKind};
use crate::hosts::storage::{StorageHost, StorageStats};
use crate::hosts::visitor::{EntryPoint, VisitorHost, VisitorPlan, VisitorTally};
use crate::scenario::{Failure, tune};

/// How often (simulated) the ownership rules are checked.
pub const OWNERSHIP_CHECK_EVERY: Duration = Duration::from_millis(50);
/// Slack on "longer than a lease": sampling, clock drift and network latency.
const OWNERSHIP_SLACK: Duration = Duration::from_millis(300);
/// Port of the echo service the target clients dial.
const ECHO_PORT: u16 = 7;
/// How many trace lines a failure shows (when tracing is on).
const TRACE_TAIL_LINES: usize = 400;

/// Sizes and switches of a cluster scenario.
#[derive(Debug, Clone)]
pub struct ClusterScenario {
    /// The seed.
    pub seed: u64,
    /// Nodes (3–16).
    pub nodes: u32,
    /// Client agents.
    pub clients: u32,
    /// Mappings, entry and target on different nodes.
    pub mappings: u32,
    /// Visitor hosts.
    pub visitors: u32,
    /// Connections each visitor opens.
    pub connections_per_visitor: u32,
    /// Largest bytes one visitor connection sends.
    pub max_bytes: u64,
    /// Virtual length of the chaos phase.
    pub chaos: Duration,
    /// Deadline of the heal phase (after chaos).
    pub heal_deadline: Duration,
    /// Route and membership leases.
    pub lease: Duration,
    /// Generic faults (on every host that allows them).
    pub faults: FaultMix,
    /// Extra faults aimed at nodes, storage and broker, about one per this interval.
    pub cluster_fault_every: Duration,
    /// Whether BUGGIFY knobs are drawn.
    pub knobs: bool,
    /// Mapping changes while traffic flows.
    pub admin_changes: bool,
    /// One node leaves the cluster for good midway (with at least four nodes).
    pub departure: bool,
    /// It leaves gracefully (`node.shutdown`, record removed) rather than by power loss.
    pub graceful_departure: bool,
    /// A bug to plant.
    pub planted: Option<PlantedBug>,
    /// Keep a readable trace.
    pub trace: bool,
}

impl ClusterScenario {
    /// Three or four nodes, sixteen clients: the bulk of the sweep.
    pub fn small(seed: u64) -> ClusterScenario {
        // Partitions and pauses end within a lease, less the dead-peer timeout: a session
        // outlives its client by at most that.
        let faults = FaultMix {
            duration_max: Duration::from_millis(2_500),
            ..FaultMix::default()
        };
        ClusterScenario {
            seed,
            nodes: 3 + (seed % 2) as u32,
            clients: 16,
            mappings: 10,
            visitors: 4,
            connections_per_visitor: 16,
            max_bytes: 24 * 1024,
            chaos: Duration::from_secs(30),
            heal_deadline: Duration::from_secs(90),
            lease: Duration::from_secs(4),
            faults,
            cluster_fault_every: Duration::from_millis(900),
            knobs: true,
            admin_changes: true,
            departure: seed % 2 == 1,
            graceful_departure: seed % 4 == 1,
            planted: None,
            trace: false,
        }
    }

    /// The sweep's mix: mostly small; every eighth seed 5–8 nodes and 60 clients; every 32nd
    /// 16 nodes and 200 clients.
    pub fn for_sweep(seed: u64) -> ClusterScenario {
        let small = ClusterScenario::small(seed);
        if seed % 32 == 31 {
            ClusterScenario {
                nodes: 16,
                clients: 200,
                mappings: 40,
                visitors: 6,
                connections_per_visitor: 15,
                max_bytes: 8 * 1024,
                ..small
            }
        } else if seed % 8 == 7 {
            ClusterScenario {
                nodes: 5 + (seed / 8 % 4) as u32,
                clients: 60,
                mappings: 24,
                visitors: 5,
                ..small
            }
        } else {
            small
        }
    }
}

/// What a cluster run did.
#[derive(Debug, Clone)]
pub struct ClusterReport {
    /// The seed.
    pub seed: u64,
    /// Nodes.
    pub nodes: u32,
    /// Clients.
    pub clients: u32,
    /// The simulator's counters (events, faults, checks, coverage counters).
    pub stats: SimStats,
    /// The trace hash.
    pub trace_hash: u64,
    /// Visitor outcomes summed.
    pub visitors: VisitorTally,
    /// Storage counters.
    pub storage: StorageStats,
    /// Broker counters.
    pub broker: BrokerStats,
    /// Ownership and session-overlap checks made.
    pub ownership_checks: u64,
    /// Samples where two nodes held a session of one client (within the allowed lease).
    pub overlaps_seen: u64,
    /// Post-heal probe tries (one per mapping when nothing was stale).
    pub probe_attempts: u64,
    /// Virtual time the heal phase needed to converge.
    pub healed_after: Duration,
}

impl ClusterReport {
    /// Coverage counters: the simulator's plus the cluster's own.
    pub fn coverage(&self) -> BTreeMap<String, u64> {
        let mut c: BTreeMap<String, u64> = self
            .stats
            .coverage
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        c.insert("storage_routes_expired".into(), self.storage.routes_expired);
        c.insert(
            "storage_releases_refused".into(),
            self.storage.releases_refused,
        );
        c.insert("broker_duplicates_sent".into(), self.broker.duplicated);
        c.insert("session_overlap_sampled".into(), self.overlaps_seen);
        c.insert("visitor_streams_completed".into(), self.visitors.completed);
        c
    }

    /// A printable summary.
    pub fn summary(&self) -> String {
        let s = &self.stats;
        let v = self.visitors;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "seed {} ({} nodes, {} clients)  trace hash {:016x}",
            self.seed, self.nodes, self.clients, self.trace_hash
        );
        let _ = writeln!(
            out,
            "events {}  invariant checks {}  ownership checks {}  faults {}",
            s.events_processed,
            s.invariant_checks,
            self.ownership_checks,
            s.faults_injected.values().sum::<u64>()
        );
        let _ = writeln!(
            out,
            "streams: opened {} completed {} reset {} bytes verified {}; probes {}",
            v.opened, v.completed, v.reset, v.bytes_verified, self.probe_attempts
        );
        let _ = writeln!(out, "storage {:?}", self.storage);
        let _ = writeln!(out, "broker {:?}", self.broker);
        let _ = writeln!(out, "healed after {:?}", self.healed_after);
        out
    }
}

/// Per-run counts of the global checker.
#[derive(Debug, Default)]
struct CheckTally {
    checks: u64,
    overlaps: u64,
}

/// The hosts of a built cluster scenario.
struct Cast {
    storage: HostId,
    broker: HostId,
    nodes: Vec<HostId>,
    node_ids: Vec<NodeId>,
    agents: Vec<HostId>,
    clients: Vec<ClientId>,
    visitors: Vec<HostId>,
    /// Per mapping: its id, its listen client (none for a node port) and entry port.
    mappings: Vec<(MappingId, Option<usize>, u16)>,
    lease: Duration,
    tally: Rc<RefCell<CheckTally>>,
}

fn node_id(i: usize) -> NodeId {
    NodeId::parse(&format!("node-{i}")).unwrap_or_else(|_| unreachable!("a valid node id"))
}

fn build(config: &ClusterScenario) -> (World, Cast) {
    let mut world_config = WorldConfig::new(config.seed);
    world_config.faults = config.faults.clone();
    if !config.knobs {
        world_config.knobs = tunnox_runtime_sim::KnobMix::off();
    }
    world_config.knobs.allow_bytewise = false;
    let traced = config.trace || std::env::var_os("TUNNOX_SIM_TRACE").is_some();
    world_config.trace = if traced {
        TraceMode::Full
    } else {
        TraceMode::Off
    };
    let mut world = World::new(world_config);
    let knobs = *world.knobs();
    let mut rng = world.fork_rng();
    let n = config.nodes.clamp(3, 16) as usize;
    let wall = UnixMillis(1_700_000_000_000);

    let mut mux = MuxConfig::default();
    let mut heartbeat = Heartbeat {
        interval: Duration::from_millis(500),
        timeout: Duration::from_millis(1_500),
    };
    tune(&knobs, &mut mux, &mut heartbeat);

    // Clients: client k's first node is node k mod n; it knows up to three.
    let clients = config.clients.max(2) as usize;
    let mut state = ControlState::default();
    let mut credentials = Vec::new();
    for _ in 0..clients {
        let id = loop {
            let id = ClientId::generate(&mut rng);
            if !state.clients.contains_key(&id) {
                break id;
            }
        };
        let secret = ClientSecret::generate(&mut rng);
        state
            .clients
            .insert(id, ClientRecord::new_anonymous(id, secret.auth_key(), wall));
        credentials.push((id, secret));
    }
    let home = |k: usize| k % n;

    // Mappings: a listen client and a target client first homed on different nodes; every
    // fourth a node port (entry on every node).
    let mut mappings = Vec::new();
    for i in 0..config.mappings as usize {
        let listen = rng.below(clients as u64) as usize;
        let mut target = rng.below(clients as u64) as usize;
        while home(target) == home(listen) || target == listen {
            target = (target + 1) % clients;
        }
        let node_port = i % 4 == 3;
        let port = if node_port { 20_000 } else { 10_000 } + i as u16;
        let entry = if node_port {
            Entry::NodePort { port, bind: None }
        } else {
            Entry::ClientPort {
                listen_client: credentials[listen].0,
                listen_addr: format!("127.0.0.1:{port}"),
            }
        };
        let mapping = Mapping {
            id: MappingId::generate(&mut rng),
            owner: None,
            entry,
            target_client: credentials[target].0,
            target: Target::Fixed {
                host: "echo".into(),
                port: ECHO_PORT,
            },
            protocol: Protocol::Tcp,
            options: MappingOptions::default(),
            created_at: wall,
            expires_at: None,
            status: MappingStatus::Active,
        };
        state.mappings.insert(mapping.id.clone(), mapping.clone());
        mappings.push((mapping, (!node_port).then_some(listen), port));
    }

    // Admin changes: some mappings deleted and put back, always through the same node.
    let mut admin: Vec<Vec<(Instant, AdminOp)>> = vec![Vec::new(); n];
    if config.admin_changes {
        for (k, (mapping, ..)) in mappings.iter().enumerate().filter(|(k, _)| k % 3 == 1) {
            let at = Instant::ZERO
                + Duration::from_millis(
                    2_000 + rng.below(config.chaos.as_millis() as u64 / 2) + k as u64,
                );
            let back = at + Duration::from_millis(500 + rng.below(2_000));
            admin[k % n].push((at, AdminOp::DeleteMapping(mapping.id.clone())));
            admin[k % n].push((back, AdminOp::PutMapping(Box::new(mapping.clone()))));
        }
        for ops in &mut admin {
            ops.sort_by_key(|(at, _)| *at);
        }
    }

    // Hosts: storage, broker, nodes, the echo service, agents, visitors.
    let service_faults = HostFaults {
        crash: false,
        clock: false,
        ..HostFaults::ALL
    };
    let storage = world.add_host(
        "storage",
        StorageHost::new(state),
        HostOptions::new().faults(service_faults),
    );
    let broker = world.add_host(
        "broker",
        BrokerHost::new(),
        HostOptions::new().faults(HostFaults {
            clock: false,
            ..HostFaults::ALL
        }),
    );
    let first_node = broker.0 + 1;
    let peers: BTreeMap<NodeId, HostId> = (0..n)
        .map(|i| (node_id(i), HostId(first_node + i as u32)))
        .collect();
    let key = AuthKey::derive("tunnox-sim-cluster-token");
    let departing = (config.departure && n >= 4).then_some(n - 1);
    let leave_after = config.chaos * 2 / 5;
    let mut nodes = Vec::new();
    for (i, admin) in admin.into_iter().enumerate() {
        let mut node_config = NodeConfig::new(node_id(i).as_str());
        node_config.session.mux = mux.clone();
        node_config.session.heartbeat = heartbeat;
        node_config.session.handshake_timeout = Duration::from_secs(2);
        node_config.tunnel.open_timeout = Duration::from_secs(2);
        if knobs.small_buffers {
            node_config.visitor_unflushed_bytes_max = 1024;
        }
        node_config.cluster = Some(NodeClusterConfig {
            key: key.clone(),
            pool: PoolConfig::default(),
        });
        let coordinator = CoordinatorConfig {
            me: node_id(i),
            storage,
            broker,
            lease: config.lease,
            request_timeout: Duration::from_millis(1_000),
            broker_ping: Duration::from_millis(500),
            resync_every: Duration::from_secs(8),
            reconnect_after: Duration::from_millis(200 + rng.below(300)),
        };
        let leave = (departing == Some(i)).then_some(Departure {
            after: leave_after,
            graceful: config.graceful_departure,
        });
        let host = NodeHost::clustered(node_config, coordinator, peers.clone(), leave, rng.fork())
            .with_admin(admin);
        let id = world.add_host(
            node_id(i).as_str(),
            host,
            HostOptions::new().clock(ClockSpec::default()),
        );
        nodes.push(id);
    }
    if departing.is_some() {
        // Powered off: after leaving (it drained first), or at once when it just dies; heal
        // restarts it inert.
        let at = if config.graceful_departure {
            Instant::ZERO + leave_after + Duration::from_secs(2)
        } else {
            Instant::ZERO + leave_after - Duration::from_millis(1)
        };
        if let Some(host) = nodes.last() {
            world.schedule_fault(
                at,
                FaultAction::CrashRestart {
                    host: *host,
                    restart_after: Duration::from_secs(3_600),
                },
            );
        }
    }
    let echo = world.add_host(
        "echo",
        ServiceHost::new([(ECHO_PORT, ServiceKind::Echo)]),
        HostOptions::new().faults(HostFaults::NONE),
    );
    let resolver: BTreeMap<String, HostId> = [("echo".to_string(), echo)].into();
    let mut agents = Vec::new();
    for (k, (id, secret)) in credentials.iter().enumerate() {
        // Every fourth client knows one node only (not the one that leaves): it comes back to
        // the same node, often while its old session there is still alive (a replacement).
        let single = k % 4 == 3 && departing != Some(home(k));
        let addresses = if single { 1 } else { n.min(3) };
        let known: Vec<HostId> = (0..addresses).map(|j| nodes[(home(k) + j) % n]).collect();
        let mut agent_config = AgentConfig::new(
            ClientIdentity::Login {
                client_id: id.0,
                key: secret.auth_key(),
            },
            known.len(),
        );
        agent_config.session.mux = mux.clone();
        agent_config.session.handshake_timeout = Duration::from_secs(2);
        if knobs.small_buffers {
            agent_config.local_unflushed_bytes_max = 1024;
        }
        let host = AgentHost::with_nodes(agent_config, known, resolver.clone(), rng.fork());
        let start = Instant::ZERO + Duration::from_millis(200 + rng.below(800));
        agents.push(world.add_host(
            format!("client-{k}"),
            host,
            HostOptions::new().start_at(start),
        ));
    }

    // Visitors: client ports at the listen client; node ports at a node other than the
    // target's first node.
    let mut entries = Vec::new();
    let mut cast_mappings = Vec::new();
    for (mapping, listen, port) in &mappings {
        let host = match listen {
            Some(l) => agents[*l],
            None => {
                let target = credentials
                    .iter()
                    .position(|(id, _)| *id == mapping.target_client)
                    .unwrap_or(0);
                nodes[(home(target) + 1) % n]
            }
        };
        entries.push(EntryPoint {
            host,
            port: *port,
            service: ServiceKind::Echo,
            service_port: ECHO_PORT,
        });
        cast_mappings.push((mapping.id.clone(), *listen, *port));
    }
    let chaos_end = Instant::ZERO + config.chaos;
    let mut visitors = Vec::new();
    for v in 0..config.visitors {
        let plan = VisitorPlan {
            entries: entries.clone(),
            connections: config.connections_per_visitor,
            concurrency: 6,
            max_bytes: config.max_bytes,
            max_pause: Duration::from_millis(600),
            stop_opening_at: chaos_end - Duration::from_secs(2),
        };
        let start = Instant::ZERO + Duration::from_millis(1_500 + rng.below(1_000));
        visitors.push(world.add_host(
            format!("visitor-{v}"),
            VisitorHost::new(plan, u64::from(v) + 1),
            HostOptions::new().faults(HostFaults::NONE).start_at(start),
        ));
    }

    schedule_cluster_faults(&mut world, &mut rng, config, &nodes, storage, broker);
    let cast = Cast {
        storage,
        broker,
        nodes,
        node_ids: (0..n).map(node_id).collect(),
        agents,
        clients: credentials.iter().map(|(id, _)| *id).collect(),
        visitors,
        mappings: cast_mappings,
        lease: config.lease,
        tally: Rc::new(RefCell::new(CheckTally::default())),
    };
    (world, cast)
}

/// Faults aimed at the cluster's own links: node–node, node–storage and node–broker
/// partitions (both ways and one way), a node isolated, a node crashed and restarted.
fn schedule_cluster_faults(
    world: &mut World,
    rng: &mut Rng,
    config: &ClusterScenario,
    nodes: &[HostId],
    storage: HostId,
    broker: HostId,
) {
    let every = config.cluster_fault_every.as_millis() as u64;
    let end = config.chaos.as_millis() as u64;
    let mut at_ms = 1_500 + rng.below(every);
    let pick = |rng: &mut Rng| nodes[rng.below(nodes.len() as u64) as usize];
    while at_ms < end {
        let at = Instant::ZERO + Duration::from_millis(at_ms);
        let duration = Duration::from_millis(200 + rng.below(2_300));
        let node = pick(rng);
        let action = match rng.below(10) {
            0 | 1 => {
                let mut other = pick(rng);
                if other == node {
                    other = nodes
                        [(nodes.iter().position(|h| *h == node).unwrap_or(0) + 1) % nodes.len()];
                }
                FaultAction::Partition {
                    a: node,
                    b: other,
                    duration,
                }
            }
            2 | 3 => FaultAction::Partition {
                a: node,
                b: storage,
                // Longer than a lease now and then: the node's record and routes expire.
                duration: duration + config.lease * u32::from(rng.below(3) == 0),
            },
            4 => FaultAction::OneWayPartition {
                from: storage,
                to: node,
                duration,
            },
            5 | 6 => FaultAction::Partition {
                a: node,
                b: broker,
                duration: duration * 2,
            },
            7 => FaultAction::Isolate {
                host: node,
                duration,
            },
            _ => FaultAction::CrashRestart {
                host: node,
                restart_after: Duration::from_millis(300 + rng.below(5_000)),
            },
        };
        world.schedule_fault(at, action);
        at_ms += every / 2 + rng.below(every);
    }
}

/// The live node hosts (not departed).
fn live_nodes<'w>(world: &'w World, cast: &Cast) -> Vec<(usize, HostId, &'w NodeHost)> {
    cast.nodes
        .iter()
        .enumerate()
        .filter_map(|(i, id)| {
            let host = world.host::<NodeHost>(*id)?;
            (!host.departed()).then_some((i, *id, host))
        })
        .collect()
}

/// The ownership rules, sampled: no two nodes hold a live session of one client, nor believe
/// they own its route, for longer than a lease.
struct OwnershipChecker {
    nodes: Vec<HostId>,
    lease: Duration,
    next_at: Instant,
    sessions_since: BTreeMap<ClientId, Instant>,
    owners_since: BTreeMap<ClientId, Instant>,
    tally: Rc<RefCell<CheckTally>>,
}

impl OwnershipChecker {
    fn check(&mut self, world: &World) -> Result<(), String> {
        let now = world.now();
        if now < self.next_at {
            return Ok(());
        }
        self.next_at = now + OWNERSHIP_CHECK_EVERY;
        let mut sessions: BTreeMap<ClientId, Vec<&str>> = BTreeMap::new();
        let mut owners: BTreeMap<ClientId, Vec<&str>> = BTreeMap::new();
        for id in &self.nodes {
            let Some(host) = world.host::<NodeHost>(*id).filter(|_| world.is_up(*id)) else {
                continue;
            };
            if let Some(node) = host.node() {
                for (client, n) in node.live_sessions_per_client() {
                    if n > 1 {
                        return Err(format!(
                            "{} holds {n} live sessions of {client}",
                            host.node_id()
                        ));
                    }
                    sessions.entry(client).or_default().push(host.node_id());
                }
            }
            if let (Some(c), Some(local)) = (host.coordinator(), world.local_now(*id)) {
                for client in c.owned_at(local) {
                    owners.entry(client).or_default().push(host.node_id());
                }
            }
        }
        let mut tally = self.tally.borrow_mut();
        tally.checks += 1;
        let limit = self.lease + OWNERSHIP_SLACK;
        for (what, held, since) in [
            ("hold live sessions of", &sessions, &mut self.sessions_since),
            ("believe they own", &owners, &mut self.owners_since),
        ] {
            since.retain(|client, _| held.get(client).is_some_and(|n| n.len() > 1));
            for (client, nodes) in held.iter().filter(|(_, n)| n.len() > 1) {
                let from = *since.entry(*client).or_insert(now);
                if what.starts_with("hold") {
                    tally.overlaps += 1;
                }
                let lasted = now.saturating_duration_since(from);
                if lasted > limit {
                    return Err(format!(
                        "nodes {} both {what} client {client} for {lasted:?} (> lease {:?})",
                        nodes.join(", "),
                        self.lease
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Whether the cluster has converged after heal (see the module docs); `Err` says what not.
fn converged(world: &World, cast: &Cast) -> Result<(), String> {
    let Some(storage) = world.host::<StorageHost>(cast.storage) else {
        return Err("no storage".into());
    };
    let now = world.now();
    for id in &cast.agents {
        let a = world.host::<AgentHost>(*id).ok_or("agent")?;
        let ok = a.stopped().is_none()
            && a.agent()
                .is_some_and(|ag| ag.is_established() && ag.relay_count() == 0)
            && a.local_count() == 0;
        if !ok {
            return Err(format!("agent {id} not settled"));
        }
    }
    for id in &cast.visitors {
        let done = world
            .host::<VisitorHost>(*id)
            .is_some_and(|v| v.is_done(world.local_now(*id).unwrap_or(now)));
        if !done {
            return Err(format!("visitor {id} not done"));
        }
    }
    let live = live_nodes(world, cast);
    let live_ids: BTreeSet<NodeId> = live
        .iter()
        .map(|(i, ..)| cast.node_ids[*i].clone())
        .collect();
    for (i, id, host) in &live {
        let me = &cast.node_ids[*i];
        let node = host.node().ok_or_else(|| format!("{me} not running"))?;
        let c = host
            .coordinator()
            .ok_or_else(|| format!("{me} has no coordinator"))?;
        if !c.is_settled() {
            return Err(format!("{me}: storage or broker link not settled"));
        }
        let peers: BTreeSet<NodeId> = live_ids.iter().filter(|p| *p != me).cloned().collect();
        if *c.peers_up() != peers {
            return Err(format!("{me} sees members {:?}", c.peers_up()));
        }
        let members: BTreeSet<NodeId> = node.pool().members().cloned().collect();
        if members != peers {
            return Err(format!("{me}'s pool has members {members:?}"));
        }
        let mut links = 0;
        for peer in &peers {
            let n = node.pool().links_to(peer).count();
            if n == 0 {
                return Err(format!("{me} has no bridge link to {peer}"));
            }
            links += n;
        }
        if node.tunnel_count() > 0 || node.stream_count() > 0 {
            return Err(format!(
                "{me}: {} tunnels, {} streams left",
                node.tunnel_count(),
                node.stream_count()
            ));
        }
        if node.connection_count() != node.online_clients() + links {
            return Err(format!(
                "{me}: {} connections for {} clients and {links} links",
                node.connection_count(),
                node.online_clients()
            ));
        }
        if node.state().mappings != storage.state().mappings {
            return Err(format!("{me}'s mappings differ from storage's"));
        }
        let local = world.local_now(*id).unwrap_or(now);
        for client in c.owned_at(local) {
            if node.session_of(client).is_none() {
                return Err(format!("{me} believes it owns {client}, not online there"));
            }
        }
    }
    for client in &cast.clients {
        let homes: Vec<usize> = live
            .iter()
            .filter(|(_, _, h)| h.node().is_some_and(|n| n.session_of(*client).is_some()))
            .map(|(i, ..)| *i)
            .collect();
        let [home] = homes[..] else {
            let anywhere: Vec<String> = cast
                .nodes
                .iter()
                .filter_map(|id| world.host::<NodeHost>(*id))
                .filter(|h| h.node().is_some_and(|n| n.session_of(*client).is_some()))
                .map(|h| format!("{} (departed {})", h.node_id(), h.departed()))
                .collect();
            return Err(format!(
                "client {client} online on live nodes {homes:?}, on any node {anywhere:?}"
            ));
        };
        let home_id = &cast.node_ids[home];
        if storage.route(*client, now) != Some(home_id) {
            return Err(format!(
                "route of {client} is {:?}, not {home_id}",
                storage.route(*client, now)
            ));
        }
        let owner = live
            .iter()
            .find(|(i, ..)| *i == home)
            .map(|(_, id, h)| (*id, *h));
        let owns = owner.is_some_and(|(id, h)| {
            let local = world.local_now(id).unwrap_or(now);
            h.coordinator()
                .is_some_and(|c| c.owned_at(local).any(|o| o == *client))
        });
        if !owns {
            return Err(format!("{home_id} does not believe it owns {client}"));
        }
    }
    Ok(())
}

/// The probes of every mapping that storage still has.
fn probe_targets(world: &World, cast: &Cast) -> Vec<ProbeTarget> {
    let Some(storage) = world.host::<StorageHost>(cast.storage) else {
        return Vec::new();
    };
    let live = live_nodes(world, cast);
    cast.mappings
        .iter()
        .enumerate()
        .filter(|(_, (id, ..))| storage.state().mappings.contains_key(id))
        .filter_map(|(k, (id, listen, port))| {
            let host = match listen {
                Some(l) => *cast.agents.get(*l)?,
                // A node port: entry at a live node, rotating.
                None => live.get(k % live.len().max(1))?.1,
            };
            Some(ProbeTarget {
                name: id.to_string(),
                host,
                port: *port,
            })
        })
        .collect()
}

/// After the probes: the route each probe's entry node holds for its mapping's target is the
/// true one (or none: it asks storage next time). Other nodes may cache stale routes they never
/// used; they are re-read when used.
fn routes_true(world: &World, cast: &Cast, probed: &[ProbeTarget]) -> Result<(), String> {
    let storage = world
        .host::<StorageHost>(cast.storage)
        .ok_or("no storage")?;
    let live = live_nodes(world, cast);
    for mapping in storage.state().mappings.values() {
        let Some(probe) = probed.iter().find(|p| p.name == mapping.id.as_str()) else {
            continue;
        };
        let target = mapping.target_client;
        let home = live
            .iter()
            .find(|(_, _, h)| h.node().is_some_and(|n| n.session_of(target).is_some()))
            .map(|(i, ..)| &cast.node_ids[*i]);
        let entries: Vec<&NodeHost> = match mapping.listen_client() {
            Some(listen) => live
                .iter()
                .filter(|(_, _, h)| h.node().is_some_and(|n| n.session_of(listen).is_some()))
                .map(|(_, _, h)| *h)
                .collect(),
            None => live
                .iter()
                .filter(|(_, id, _)| *id == probe.host)
                .map(|(_, _, h)| *h)
                .collect(),
        };
        for entry in entries {
            let Some(node) = entry.node() else { continue };
            // A node serves its own clients first-hand, whatever its route table says.
            if node.session_of(target).is_some() {
                continue;
            }
            if let Some(route) = node.route_of(target)
                && Some(route) != home
            {
                return Err(format!(
                    "after probes {} routes {target} to {route}, but it is on {home:?}",
                    entry.node_id()
                ));
            }
        }
    }
    Ok(())
}

/// Whole-node checks of every running node (registry, tunnel table, every session, pool).
fn full_check(world: &World, cast: &Cast) -> Result<(), String> {
    for id in &cast.nodes {
        if let Some(node) = world.host::<NodeHost>(*id).and_then(NodeHost::node) {
            node.check_invariants()?;
            node.pool().check_invariants()?;
        }
    }
    Ok(())
}

fn fail(world: &World, config: &ClusterScenario, error: SimError) -> Box<Failure> {
    let mut context = world.describe();
    context.push('\n');
    let lines: Vec<&str> = world.trace_lines().collect();
    let tail = std::env::var("TUNNOX_SIM_TRACE_LINES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(TRACE_TAIL_LINES);
    for line in &lines[lines.len().saturating_sub(tail)..] {
        context.push_str(line);
        context.push('\n');
    }
    Box::new(Failure {
        seed: config.seed,
        error,
        trace_hash: world.trace_hash(),
        events: world.stats().events_processed,
        context,
    })
}

/// Each node's coordinator in one line (for failure reports).
fn describe_nodes(world: &World, cast: &Cast) -> String {
    let mut out = String::new();
    for id in &cast.nodes {
        if let Some(h) = world.host::<NodeHost>(*id) {
            let c = h.coordinator().map(|c| c.describe()).unwrap_or_default();
            let _ = writeln!(out, "{id} {}: {c}", h.node_id());
        }
    }
    out
}

fn checker_error(time: &str, detail: String) -> SimError {
    SimError::Checker {
        time: time.into(),
        detail,
    }
}

/// Runs a cluster scenario: chaos, heal until converged, probes; returns the report or the
/// failure with what replays it.
pub fn run(config: &ClusterScenario) -> Result<ClusterReport, Box<Failure>> {
    #[cfg(feature = "planted")]
    tunnox_core::planted::plant(config.planted);
    let (mut world, cast) = build(config);
    let mut ownership = OwnershipChecker {
        nodes: cast.nodes.clone(),
        lease: cast.lease,
        next_at: Instant::ZERO,
        sessions_since: BTreeMap::new(),
        owners_since: BTreeMap::new(),
        tally: cast.tally.clone(),
    };
    world.set_checker(move |w| ownership.check(w));
    let chaos_end = Instant::ZERO + config.chaos;
    if let Err(e) = world.run_chaos(chaos_end) {
        return Err(fail(&world, config, e));
    }
    if let Err(detail) = full_check(&world, &cast) {
        return Err(fail(&world, config, checker_error("end of chaos", detail)));
    }
    if let Err(e) = world.heal() {
        return Err(fail(&world, config, e));
    }
    let heal_start = world.now();
    let deadline = chaos_end + config.heal_deadline;
    let healed_at = match world.run_until_quiet(deadline, |w| converged(w, &cast).is_ok()) {
        Ok(t) => t,
        Err(e) => {
            let mut failure = fail(&world, config, e);
            let why = converged(&world, &cast).err().unwrap_or_default();
            let _ = writeln!(failure.context, "not converged: {why}");
            failure.context.push_str(&describe_nodes(&world, &cast));
            return Err(failure);
        }
    };
    if let Err(detail) = full_check(&world, &cast) {
        return Err(fail(&world, config, checker_error("after heal", detail)));
    }
    // Probes: one echo through every mapping.
    let targets = probe_targets(&world, &cast);
    let probe = world.add_host(
        "probe",
        ProbeHost::new(targets.clone(), 4),
        HostOptions::new()
            .faults(HostFaults::NONE)
            .start_at(world.now()),
    );
    let probed = world.run_until_quiet(deadline + Duration::from_secs(30), |w| {
        w.host::<ProbeHost>(probe).is_some_and(ProbeHost::all_done)
            && live_nodes(w, &cast)
                .iter()
                .all(|(_, _, h)| h.node().is_some_and(|n| n.tunnel_count() == 0))
    });
    if let Err(e) = probed {
        let mut failure = fail(&world, config, e);
        if let Some(p) = world.host::<ProbeHost>(probe) {
            failure.context.push_str(&p.describe());
        }
        for (_, id, h) in live_nodes(&world, &cast) {
            if let Some(node) = h.node() {
                let _ = writeln!(
                    failure.context,
                    "{id} {}: {} tunnels, {} streams",
                    h.node_id(),
                    node.tunnel_count(),
                    node.stream_count()
                );
                if node.tunnel_count() > 0 {
                    let _ = writeln!(failure.context, "  {:?}", node.tunnels());
                }
            }
        }
        return Err(failure);
    }
    let verdict = routes_true(&world, &cast, &targets).and_then(|()| full_check(&world, &cast));
    if let Err(detail) = verdict {
        let mut failure = fail(&world, config, checker_error("after probes", detail));
        failure.context.push_str(&describe_nodes(&world, &cast));
        return Err(failure);
    }
    // Still converged (membership may have blinked while a restarted node's first heartbeat
    // was on its way: it must settle again).
    let settle = world.now() + Duration::from_secs(30);
    if let Err(e) = world.run_until_quiet(settle, |w| converged(w, &cast).is_ok()) {
        let mut failure = fail(&world, config, e);
        let why = converged(&world, &cast).err().unwrap_or_default();
        let _ = writeln!(failure.context, "not converged after probes: {why}");
        failure.context.push_str(&describe_nodes(&world, &cast));
        return Err(failure);
    }
    let mut visitors = VisitorTally::default();
    for id in &cast.visitors {
        if let Some(v) = world.host::<VisitorHost>(*id) {
            let t = v.tally();
            visitors.opened += t.opened;
            visitors.completed += t.completed;
            visitors.reset += t.reset;
            visitors.aborted += t.aborted;
            visitors.connect_failed += t.connect_failed;
            visitors.bytes_verified += t.bytes_verified;
        }
    }
    let tally = cast.tally.borrow();
    Ok(ClusterReport {
        seed: config.seed,
        nodes: cast.nodes.len() as u32,
        clients: cast.clients.len() as u32,
        stats: world.stats().clone(),
        trace_hash: world.trace_hash(),
        visitors,
        storage: world
            .host::<StorageHost>(cast.storage)
            .map(|s| s.stats().clone())
            .unwrap_or_default(),
        broker: world
            .host::<BrokerHost>(cast.broker)
            .map(|b| b.stats().clone())
            .unwrap_or_default(),
        ownership_checks: tally.checks,
        overlaps_seen: tally.overlaps,
        probe_attempts: world
            .host::<ProbeHost>(probe)
            .map_or(0, ProbeHost::attempts),
        healed_after: healed_at.saturating_duration_since(heal_start),
    })
}

/// Runs `config` for every seed; on the first failure panics with the seed, the trace hash and
/// the command that replays it (`test` is the test's name).
pub fn sweep(
    test: &str,
    seeds: &[u64],
    config: impl Fn(u64) -> ClusterScenario,
) -> Vec<ClusterReport> {
    let mut reports = Vec::with_capacity(seeds.len());
    for &seed in seeds {
        match run(&config(seed)) {
            Ok(report) => reports.push(report),
            Err(failure) => panic!(
                "{failure}\nreplay: TUNNOX_SIM_SEED={seed} cargo test -p tunnox-sim-tests --test cluster {test} -- --exact --nocapture\n"
            ),
        }
    }
    reports
}

/// Sums the coverage counters of many reports.
pub fn total_coverage(reports: &[ClusterReport]) -> BTreeMap<String, u64> {
    let mut total = BTreeMap::new();
    for r in reports {
        for (k, v) in r.coverage() {
            *total.entry(k).or_insert(0) += v;
        }
    }
    total
}
