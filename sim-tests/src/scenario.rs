//! Scenarios: a world of tunnox hosts built from a seed and a few sizes, run through chaos and
//! heal, checked after every event, and summarised.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use tunnox_core::agent::AgentConfig;
use tunnox_core::control::{
    ClientId, ClientRecord, ClientSecret, Entry, Mapping, MappingId, MappingOptions, MappingStatus,
    Protocol, Target, UnixMillis,
};
use tunnox_core::mux::MuxConfig;
use tunnox_core::node::{ControlState, NodeConfig};
use tunnox_core::planted::PlantedBug;
use tunnox_core::rng::Rng;
use tunnox_core::session::{ClientIdentity, Heartbeat};
use tunnox_runtime_sim::{
    Duration, FaultMix, HostFaults, HostId, HostOptions, Instant, Knobs, SimError, SimStats,
    TraceMode, World, WorldConfig,
};

use crate::hosts::agent::AgentHost;
use crate::hosts::codes::{CodeBoard, CodeRole, SharedBoard};
use crate::hosts::node::{AdminOp, NodeHost};
use crate::hosts::service::{ServiceHost, ServiceKind};
use crate::hosts::visitor::{EntryPoint, VisitorHost, VisitorPlan, VisitorTally};

/// How many trace lines a failure shows (when tracing is on; `TUNNOX_SIM_TRACE_LINES` overrides).
const TRACE_TAIL_LINES: usize = 400;

/// Sizes and switches of a single-node scenario.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    /// The seed.
    pub seed: u64,
    /// Client agents (half listen side, half target side, at least two).
    pub clients: u32,
    /// Mappings created before the start (client-port and node-port mixed).
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
    /// Faults injected during chaos.
    pub faults: FaultMix,
    /// Whether BUGGIFY knobs are drawn.
    pub knobs: bool,
    /// Whether the knob that delivers stream bytes one at a time may be drawn (slow: keep the
    /// byte counts small when it is on).
    pub bytewise: bool,
    /// Mapping changes while traffic flows.
    pub admin_changes: bool,
    /// Some clients offer connection codes and others race to redeem them.
    pub codes: bool,
    /// A bug to plant (needs the planted-bugs feature, which sim-tests enables).
    pub planted: Option<PlantedBug>,
    /// Keep a readable trace.
    pub trace: bool,
}

impl ScenarioConfig {
    /// The standard small scenario of the CI sweep.
    pub fn small(seed: u64) -> ScenarioConfig {
        ScenarioConfig {
            seed,
            clients: 10,
            mappings: 8,
            visitors: 4,
            connections_per_visitor: 25,
            max_bytes: 64 * 1024,
            chaos: Duration::from_secs(20),
            heal_deadline: Duration::from_secs(120),
            faults: FaultMix::default(),
            knobs: true,
            bytewise: false,
            admin_changes: true,
            codes: true,
            planted: None,
            trace: false,
        }
    }

    /// The benchmark scenario: 100 clients, 1,000 visitor streams, 60 s of chaos.
    pub fn standard(seed: u64) -> ScenarioConfig {
        ScenarioConfig {
            clients: 100,
            mappings: 50,
            visitors: 20,
            connections_per_visitor: 50,
            max_bytes: 32 * 1024,
            chaos: Duration::from_secs(60),
            heal_deadline: Duration::from_secs(180),
            ..ScenarioConfig::small(seed)
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// The simulator's counters (events, faults, checks, coverage counters).
    pub stats: SimStats,
    /// The trace hash.
    pub trace_hash: u64,
    /// Knobs in force.
    pub knobs: Vec<&'static str>,
    /// Visitor outcomes summed.
    pub visitors: VisitorTally,
    /// Sessions established by agents (reconnects included).
    pub sessions: u64,
    /// Mux counters of the node at the end of chaos.
    pub window_exhausted: u64,
    /// Frames for already-closed streams the node ignored during chaos.
    pub stale_frames: u64,
    /// Resets the node received that crossed a FIN it had sent.
    pub rst_crossed_fin: u64,
    /// Virtual time the heal phase needed.
    pub healed_after: Duration,
    /// The readable trace, when the run asked for one.
    pub trace: Vec<String>,
}

impl Report {
    /// A printable summary.
    pub fn summary(&self) -> String {
        let s = &self.stats;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "seed {}  trace hash {:016x}",
            self.seed, self.trace_hash
        );
        let _ = writeln!(
            out,
            "knobs: {}",
            if self.knobs.is_empty() {
                "none".into()
            } else {
                self.knobs.join(", ")
            }
        );
        let _ = writeln!(
            out,
            "events {}  invariant checks {}  checker runs {}  timer checks {}",
            s.events_processed, s.invariant_checks, s.checker_runs, s.timer_checks
        );
        let faults: BTreeMap<String, u64> = s
            .faults_injected
            .iter()
            .map(|(k, v)| (k.name().to_string(), *v))
            .collect();
        let _ = writeln!(
            out,
            "faults: {}  (crashes {}, restarts {})",
            fmt_counts(&faults),
            s.crashes,
            s.restarts
        );
        let v = self.visitors;
        let _ = writeln!(
            out,
            "streams: opened {}  completed {}  reset {}  aborted {}  connect failed {}  bytes verified {}",
            v.opened, v.completed, v.reset, v.aborted, v.connect_failed, v.bytes_verified
        );
        let _ = writeln!(
            out,
            "sessions established {}  bytes sent {}  connections reset {}",
            self.sessions, s.bytes_sent, s.connections_reset
        );
        let _ = writeln!(out, "coverage: {}", fmt_counts(&self.coverage()));
        let _ = writeln!(out, "healed after {:?}", self.healed_after);
        out
    }

    /// Chaos coverage counters: states the run reached.
    pub fn coverage(&self) -> BTreeMap<String, u64> {
        let mut c: BTreeMap<String, u64> = self
            .stats
            .coverage
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        c.insert("window_exhausted".into(), self.window_exhausted);
        c.insert("stale_frames_ignored".into(), self.stale_frames);
        c.insert("rst_crossed_fin".into(), self.rst_crossed_fin);
        c.insert("visitor_streams_reset".into(), self.visitors.reset);
        c
    }
}

fn fmt_counts(counts: &BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why a scenario failed, with what is needed to replay it.
#[derive(Debug)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// What broke.
    pub error: SimError,
    /// The trace hash up to the failure (a replay must reproduce it).
    pub trace_hash: u64,
    /// Events processed up to the failure.
    pub events: u64,
    /// The world's description at the failure (fault schedule, knobs, hosts).
    pub context: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "simulation failed: {}", self.error)?;
        writeln!(f, "TUNNOX_SIM_SEED={}", self.seed)?;
        writeln!(
            f,
            "trace hash {:016x} after {} events",
            self.trace_hash, self.events
        )?;
        write!(f, "{}", self.context)
    }
}

/// The hosts of a built scenario.
struct Cast {
    node: HostId,
    agents: Vec<HostId>,
    visitors: Vec<HostId>,
    codes: SharedBoard,
}

/// Applies the run's knobs to the configs of the core machines.
pub(crate) fn tune(knobs: &Knobs, mux: &mut MuxConfig, heartbeat: &mut Heartbeat) {
    if knobs.tiny_windows {
        mux.stream_window_bytes = 2 * 1024;
        mux.stream_window_max_bytes = 8 * 1024;
        mux.session_window_bytes = 16 * 1024;
    }
    if knobs.tiny_max_frame {
        mux.max_frame_payload_bytes = 64;
    }
    if knobs.one_stream_per_session {
        mux.max_streams = 2;
        mux.max_pending_opens = 1;
        mux.max_pending_accepts = 1;
    }
    if knobs.small_buffers {
        mux.send_buffer_bytes = 4 * 1024;
    }
    if knobs.short_timeouts {
        *heartbeat = Heartbeat {
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(1_500),
        };
    }
}

fn build(config: &ScenarioConfig) -> (World, Cast) {
    let mut world_config = WorldConfig::new(config.seed);
    world_config.faults = config.faults.clone();
    if !config.knobs {
        world_config.knobs = tunnox_runtime_sim::KnobMix::off();
    }
    world_config.knobs.allow_bytewise = config.bytewise;
    world_config.trace = if config.trace {
        TraceMode::Full
    } else {
        TraceMode::Off
    };
    let mut world = World::new(world_config);
    let knobs = *world.knobs();
    let mut rng = world.fork_rng();

    let mut mux = MuxConfig::default();
    let mut node_config = NodeConfig::new("node-1");
    tune(&knobs, &mut mux, &mut node_config.session.heartbeat);
    node_config.session.mux = mux.clone();
    if knobs.short_timeouts {
        node_config.session.handshake_timeout = Duration::from_secs(2);
        node_config.tunnel.open_timeout = Duration::from_secs(2);
    }
    if knobs.small_buffers {
        node_config.visitor_unflushed_bytes_max = 1024;
    }

    // Clients, their credentials, and services the target clients dial.
    let clients = config.clients.max(2);
    let wall = UnixMillis(1_700_000_000_000);
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
    let services = ["echo", "sink", "source"];
    let service_kinds = [
        (7, ServiceKind::Echo),
        (9, ServiceKind::Sink),
        (19, ServiceKind::Source { len: 20_000 }),
    ];

    // Mappings: listen clients are the first half, targets the second half.
    let half = clients / 2;
    let mut entries = Vec::new();
    let mut mappings = Vec::new();
    for i in 0..config.mappings {
        let listen = credentials[(i % half) as usize].0;
        let target = credentials[(half + i % (clients - half)) as usize].0;
        let (service_port, kind) = service_kinds[(i % 3) as usize];
        let node_port = i % 4 == 3;
        let entry = if node_port {
            Entry::NodePort {
                port: 20_000 + i as u16,
                bind: None,
            }
        } else {
            Entry::ClientPort {
                listen_client: listen,
                listen_addr: format!("127.0.0.1:{}", 10_000 + i),
            }
        };
        let mapping = Mapping {
            id: MappingId::generate(&mut rng),
            owner: None,
            entry,
            target_client: target,
            target: Target::Fixed {
                host: services[(i % 3) as usize].into(),
                port: service_port,
            },
            protocol: Protocol::Tcp,
            options: MappingOptions::default(),
            created_at: wall,
            expires_at: None,
            status: MappingStatus::Active,
        };
        mappings.push((mapping, kind, service_port, node_port, listen));
    }

    // Hosts: the node first, then services, agents, visitors.
    let mut admin = Vec::new();
    let chaos_end = Instant::ZERO + config.chaos;
    if config.admin_changes {
        // Delete and re-create some mappings while visitors use them.
        for (k, (mapping, ..)) in mappings.iter().enumerate().filter(|(k, _)| k % 3 == 1) {
            let at = Instant::ZERO
                + Duration::from_millis(
                    rng.below(config.chaos.as_millis() as u64 / 2) + 1_000 + k as u64,
                );
            admin.push((at, AdminOp::DeleteMapping(mapping.id.clone())));
            let back = at + Duration::from_millis(500 + rng.below(2_000));
            admin.push((back, AdminOp::PutMapping(Box::new(mapping.clone()))));
        }
        admin.sort_by_key(|(at, _)| *at);
    }
    for (mapping, ..) in &mappings {
        state.mappings.insert(mapping.id.clone(), mapping.clone());
    }
    let node_faults = HostFaults::ALL;
    let node = world.add_host(
        "node-1",
        NodeHost::new(node_config.clone(), state, admin, rng.fork()),
        HostOptions::new().faults(node_faults),
    );
    let mut resolver = BTreeMap::new();
    for (name, (port, kind)) in services.iter().zip(service_kinds) {
        let id = world.add_host(
            *name,
            ServiceHost::new([(port, kind)]),
            HostOptions::new().faults(HostFaults::NONE),
        );
        resolver.insert((*name).to_string(), id);
    }
    let board = CodeBoard::shared();
    let mut agents = Vec::new();
    for (k, (id, secret)) in credentials.iter().enumerate() {
        let mut agent_config = AgentConfig::new(
            ClientIdentity::Login {
                client_id: id.0,
                key: secret.auth_key(),
            },
            1,
        );
        agent_config.session.mux = mux.clone();
        if knobs.short_timeouts {
            agent_config.session.handshake_timeout = Duration::from_secs(2);
        }
        if knobs.small_buffers {
            agent_config.local_unflushed_bytes_max = 1024;
        }
        let mut host = AgentHost::new(agent_config, node, resolver.clone(), rng.fork());
        // Two target-side clients offer codes for the echo service; two listen-side clients
        // race to redeem them (often the same one): exactly one redemption per code may win.
        if config.codes {
            let secs = |list: &[u64]| list.iter().map(|s| Duration::from_secs(*s)).collect();
            let role = match k as u32 {
                k if k == half || k == half + 1 => Some(CodeRole::Offer {
                    at: secs(&[2, 6, 10]),
                    host: "echo".into(),
                    port: 7,
                }),
                0 | 1 => Some(CodeRole::Redeem {
                    at: secs(&[4, 7, 8, 11, 12, 14]),
                    first_port: 30_000 + 100 * k as u16,
                }),
                _ => None,
            };
            if let Some(role) = role {
                host = host.with_codes(role, board.clone());
            }
        }
        let start = Instant::ZERO + Duration::from_millis(rng.below(500));
        agents.push(world.add_host(
            format!("client-{k}"),
            host,
            HostOptions::new().faults(HostFaults::ALL).start_at(start),
        ));
    }
    for (mapping, kind, service_port, node_port, listen) in &mappings {
        let host = if *node_port {
            node
        } else {
            let index = credentials
                .iter()
                .position(|(id, _)| id == listen)
                .unwrap_or(0);
            agents[index]
        };
        let port = match mapping.entry {
            Entry::NodePort { port, .. } => port,
            _ => mapping.entry.listen_addr().map_or(0, |a| a.port),
        };
        entries.push(EntryPoint {
            host,
            port,
            service: *kind,
            service_port: *service_port,
        });
    }
    let mut visitors = Vec::new();
    for v in 0..config.visitors {
        let plan = VisitorPlan {
            entries: entries.clone(),
            connections: config.connections_per_visitor,
            concurrency: 8,
            max_bytes: config.max_bytes,
            max_pause: Duration::from_millis(400),
            stop_opening_at: chaos_end,
        };
        // Visitors start after the clients had a chance to connect and get their config.
        let start = Instant::ZERO + Duration::from_millis(1_000 + rng.below(1_000));
        visitors.push(world.add_host(
            format!("visitor-{v}"),
            VisitorHost::new(plan, u64::from(v) + 1),
            HostOptions::new().faults(HostFaults::NONE).start_at(start),
        ));
    }
    (
        world,
        Cast {
            node,
            agents,
            visitors,
            codes: board,
        },
    )
}

/// Checks the whole node (every session, the registry, the tunnel table), beyond the
/// per-event checks of what each event touched.
fn full_check(world: &World, cast: &Cast) -> Result<(), String> {
    cast.codes.borrow().check()?;
    world
        .host::<NodeHost>(cast.node)
        .and_then(NodeHost::node)
        .map_or(Ok(()), |node| node.check_invariants())
}

/// Whether the world has healed: every agent that did not stop is established, every visitor
/// finished, and no tunnel, stream or local connection is left anywhere.
fn healed(world: &World, cast: &Cast) -> bool {
    let now = world.now();
    let Some(node) = world.host::<NodeHost>(cast.node).and_then(NodeHost::node) else {
        return false;
    };
    let agents_ok = cast.agents.iter().all(|id| {
        world.host::<AgentHost>(*id).is_some_and(|a| {
            a.stopped().is_some()
                || (a
                    .agent()
                    .is_some_and(|ag| ag.is_established() && ag.relay_count() == 0)
                    && a.local_count() == 0)
        })
    });
    let visitors_done = cast.visitors.iter().all(|id| {
        world
            .host::<VisitorHost>(*id)
            .is_some_and(|v| v.is_done(world.local_now(*id).unwrap_or(now)))
    });
    let live_agents = cast
        .agents
        .iter()
        .filter(|id| {
            world
                .host::<AgentHost>(**id)
                .is_some_and(|a| a.stopped().is_none())
        })
        .count();
    // Every session the node holds belongs to a live agent: no zombie after reconnects.
    agents_ok
        && visitors_done
        && node.tunnel_count() == 0
        && node.stream_count() == 0
        && node.connection_count() == live_agents
}

/// What still keeps the world from having healed (for failure reports).
fn heal_status(world: &World, cast: &Cast) -> String {
    let mut out = String::from("heal status:\n");
    match world.host::<NodeHost>(cast.node).and_then(NodeHost::node) {
        Some(node) => {
            let _ = writeln!(
                out,
                "  node: {} connections, {} online, {} tunnels, {} streams",
                node.connection_count(),
                node.online_clients(),
                node.tunnel_count(),
                node.stream_count()
            );
            if node.tunnel_count() > 0 {
                let _ = writeln!(out, "  tunnels: {:?}", node.tunnels());
            }
        }
        None => out.push_str("  node: down\n"),
    }
    for id in &cast.agents {
        let Some(a) = world.host::<AgentHost>(*id) else {
            continue;
        };
        let established = a.agent().is_some_and(|ag| ag.is_established());
        let relays = a.agent().map_or(0, |ag| ag.relay_count());
        let streams = a.agent().map_or(0, |ag| ag.stream_count());
        if !established || relays > 0 || a.local_count() > 0 || a.stopped().is_some() {
            let _ = writeln!(
                out,
                "  agent {id}: established {established}, relays {relays}, streams {streams}, locals {}, stopped {:?}",
                a.local_count(),
                a.stopped()
            );
            if let Some(agent) = a.agent() {
                let _ = writeln!(out, "    {}", agent.describe_relays());
            }
        }
    }
    for id in &cast.visitors {
        if let Some(v) = world.host::<VisitorHost>(*id)
            && v.in_flight() > 0
        {
            let _ = writeln!(
                out,
                "  visitor {id}: {} connections in flight: {}",
                v.in_flight(),
                v.describe_in_flight()
            );
        }
    }
    out
}

/// Runs a scenario: chaos (faults on, every event checked), then heal (faults off) until the
/// world converges; returns the report, or the failure with what is needed to replay it.
pub fn run(config: &ScenarioConfig) -> Result<Report, Box<Failure>> {
    #[cfg(feature = "planted")]
    tunnox_core::planted::plant(config.planted);
    let (mut world, cast) = build(config);
    let fail = |world: &World, error: SimError| {
        Box::new(Failure {
            seed: config.seed,
            error,
            trace_hash: world.trace_hash(),
            events: world.stats().events_processed,
            context: {
                let mut context = world.describe();
                let lines: Vec<&str> = world.trace_lines().collect();
                let tail = std::env::var("TUNNOX_SIM_TRACE_LINES")
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(TRACE_TAIL_LINES);
                for line in &lines[lines.len().saturating_sub(tail)..] {
                    context.push_str(line);
                    context.push('\n');
                }
                context
            },
        })
    };
    let chaos_end = Instant::ZERO + config.chaos;
    if let Err(e) = world.run_chaos(chaos_end) {
        return Err(fail(&world, e));
    }
    if let Err(detail) = full_check(&world, &cast) {
        return Err(fail(
            &world,
            SimError::Checker {
                time: "end of chaos".into(),
                detail,
            },
        ));
    }
    let node_stats = world
        .host::<NodeHost>(cast.node)
        .and_then(NodeHost::node)
        .map(|n| n.mux_stats())
        .unwrap_or_default();
    if let Err(e) = world.heal() {
        return Err(fail(&world, e));
    }
    let heal_start = world.now();
    let healed_at =
        match world.run_until_quiet(chaos_end + config.heal_deadline, |w| healed(w, &cast)) {
            Ok(t) => t,
            Err(e) => {
                let mut failure = fail(&world, e);
                failure.context.push_str(&heal_status(&world, &cast));
                return Err(failure);
            }
        };
    if let Err(detail) = full_check(&world, &cast) {
        return Err(fail(
            &world,
            SimError::Checker {
                time: "end of heal".into(),
                detail,
            },
        ));
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
    let sessions = cast
        .agents
        .iter()
        .filter_map(|id| world.host::<AgentHost>(*id))
        .map(|a| a.tally().sessions)
        .sum();
    Ok(Report {
        seed: config.seed,
        stats: world.stats().clone(),
        trace_hash: world.trace_hash(),
        knobs: world.knobs().enabled(),
        visitors,
        sessions,
        window_exhausted: node_stats.credit_exhausted,
        stale_frames: node_stats.stale_frames,
        rst_crossed_fin: node_stats.rst_crossed_fin,
        healed_after: healed_at.saturating_duration_since(heal_start),
        trace: world.trace_lines().map(str::to_owned).collect(),
    })
}

/// Runs `config` for every seed and returns the reports; on the first failure panics with the
/// seed, the trace hash and the one command that replays it (`test` is the test's name).
pub fn sweep(test: &str, seeds: &[u64], config: impl Fn(u64) -> ScenarioConfig) -> Vec<Report> {
    let mut reports = Vec::with_capacity(seeds.len());
    for &seed in seeds {
        match run(&config(seed)) {
            Ok(report) => reports.push(report),
            Err(failure) => panic!(
                "{failure}\nreplay: TUNNOX_SIM_SEED={seed} cargo test -p tunnox-sim-tests {test} -- --exact --nocapture\n"
            ),
        }
    }
    reports
}

/// Sums the coverage counters of many reports.
pub fn total_coverage(reports: &[Report]) -> BTreeMap<String, u64> {
    let mut total = BTreeMap::new();
    for r in reports {
        for (k, v) in r.coverage() {
            *total.entry(k).or_insert(0) += v;
        }
    }
    total
}

/// Seeds for a sweep: the fixed list, plus `TUNNOX_SIM_SEEDS` random ones (drawn from
/// `TUNNOX_SIM_SEED_BASE` or the fixed base), or only `TUNNOX_SIM_SEED` when set (replay).
pub fn seeds(fixed: impl IntoIterator<Item = u64>) -> Vec<u64> {
    if let Some(seed) = std::env::var("TUNNOX_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let mut seeds: Vec<u64> = fixed.into_iter().collect();
    let extra: u64 = std::env::var("TUNNOX_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let base = std::env::var("TUNNOX_SIM_SEED_BASE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7a11_0c5e);
    let mut rng = Rng::seed_from_u64(base);
    seeds.extend((0..extra).map(|_| rng.next_u64()));
    seeds
}
