//! A tunnox client as a simulated host: the sans-IO `Agent`, its saved credentials (durable),
//! its session connection to a node (one of several addresses, tried in the agent's order),
//! mapping listeners for visitors, and connections it dials to target services.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};
use tunnox_core::agent::{Agent, AgentConfig, AgentOutput, AttemptId};
use tunnox_core::relay::{LocalId, LocalOutput};
use tunnox_core::rng::Rng;
use tunnox_core::session::{AuthKey, ClientIdentity, CloseReason};
use tunnox_core::tunnel::DialFailure;
use tunnox_runtime_sim::{
    ConnId, ConnectFailReason, Host, HostCtx, HostEvent, HostId, Instant, Port,
};

use super::codes::{CodeRole, SharedBoard};
use super::node::{CLIENT_PORT, close_kind};
use tunnox_proto::wire::{self as pb, control_request::Body, control_response::Result as Reply};

#[derive(Debug, Default)]
struct LocalIn {
    local: LocalId,
    pending: VecDeque<Bytes>,
    eof: bool,
}

/// Records that socket `conn` is the agent's local connection `local`.
fn link_local(
    locals: &mut BTreeMap<ConnId, LocalIn>,
    local_conn: &mut BTreeMap<LocalId, ConnId>,
    conn: ConnId,
    local: LocalId,
) {
    locals.insert(
        conn,
        LocalIn {
            local,
            ..LocalIn::default()
        },
    );
    local_conn.insert(local, conn);
}

/// Counters of an agent host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentTally {
    /// Sessions established (reconnects included).
    pub sessions: u64,
    /// Session losses by reason.
    pub disconnects: BTreeMap<&'static str, u64>,
    /// Visitor opens refused.
    pub opens_failed: u64,
    /// Dials to target services.
    pub dials: u64,
}

/// The agent host (see the module docs).
#[derive(Debug)]
pub struct AgentHost {
    config: AgentConfig,
    rng: Rng,
    /// Node addresses, indexed by `AgentOutput::Connect::server`.
    nodes: Vec<HostId>,
    /// The node of the last established session.
    last_node: Option<String>,
    /// Service host names the target side may dial.
    resolver: BTreeMap<String, HostId>,
    agent: Option<Agent>,
    attempts: BTreeMap<ConnId, AttemptId>,
    attempt_conn: BTreeMap<AttemptId, ConnId>,
    listeners: BTreeMap<Port, String>,
    mapping_port: BTreeMap<String, Port>,
    locals: BTreeMap<ConnId, LocalIn>,
    local_conn: BTreeMap<LocalId, ConnId>,
    dialing: BTreeMap<ConnId, LocalId>,
    stopped: Option<CloseReason>,
    tally: AgentTally,
    /// Connection-code duties and the board they report to.
    codes: Option<(CodeRole, SharedBoard)>,
    /// Index of the next code duty due.
    next_code_duty: usize,
    /// Host-local time of the first start; duty offsets count from it.
    first_start: Option<Instant>,
    /// Redemptions in flight: request id -> code.
    redeeming: BTreeMap<u64, String>,
}

impl AgentHost {
    /// An agent logging in as `client_id` with `key`, connecting to `node`.
    pub fn new(
        config: AgentConfig,
        node: HostId,
        resolver: BTreeMap<String, HostId>,
        rng: Rng,
    ) -> AgentHost {
        AgentHost::with_nodes(config, vec![node], resolver, rng)
    }

    /// An agent that knows several node addresses (`config.servers` should be `nodes.len()`).
    pub fn with_nodes(
        config: AgentConfig,
        nodes: Vec<HostId>,
        resolver: BTreeMap<String, HostId>,
        rng: Rng,
    ) -> AgentHost {
        AgentHost {
            config,
            rng,
            nodes,
            last_node: None,
            resolver,
            agent: None,
            attempts: BTreeMap::new(),
            attempt_conn: BTreeMap::new(),
            listeners: BTreeMap::new(),
            mapping_port: BTreeMap::new(),
            locals: BTreeMap::new(),
            local_conn: BTreeMap::new(),
            dialing: BTreeMap::new(),
            stopped: None,
            tally: AgentTally::default(),
            codes: None,
            next_code_duty: 0,
            first_start: None,
            redeeming: BTreeMap::new(),
        }
    }

    /// Gives this agent connection-code duties that report to `board`.
    pub fn with_codes(mut self, role: CodeRole, board: SharedBoard) -> AgentHost {
        self.codes = Some((role, board));
        self
    }

    /// Performs the code duties due at `now` (skipped while not connected: retried later).
    fn run_code_duties(&mut self, now: Instant, ctx: &mut HostCtx<'_>) {
        let Some((role, board)) = self.codes.as_ref() else {
            return;
        };
        let Some(agent) = self.agent.as_mut() else {
            return;
        };
        let origin = self.first_start.unwrap_or(now);
        while let Some(offset) = role.times().get(self.next_code_duty) {
            if origin + *offset > now || !agent.is_established() {
                return;
            }
            let body = match role {
                CodeRole::Offer { host, port, .. } => Body::CreateCode(pb::CreateCode {
                    target: Some(pb::TargetAddr {
                        host: host.clone(),
                        port: u32::from(*port),
                    }),
                    protocol: pb::Protocol::Tcp as i32,
                    ..pb::CreateCode::default()
                }),
                CodeRole::Redeem { first_port, .. } => {
                    let offered = board.borrow().offered.clone();
                    if offered.is_empty() {
                        self.next_code_duty += 1;
                        continue;
                    }
                    let code = offered[ctx.rng().below(offered.len() as u64) as usize].clone();
                    let port = first_port.saturating_add(self.next_code_duty as u16);
                    let body = Body::ActivateCode(pb::ActivateCode {
                        code: code.clone(),
                        listen_addr: format!("127.0.0.1:{port}"),
                    });
                    if let Some(id) = agent.control(body) {
                        self.redeeming.insert(id, code);
                    }
                    self.next_code_duty += 1;
                    ctx.count("code_redemption_attempted");
                    continue;
                }
            };
            agent.control(body);
            self.next_code_duty += 1;
        }
    }

    fn on_control_response(&mut self, response: pb::ControlResponse, ctx: &mut HostCtx<'_>) {
        let Some((_, board)) = self.codes.as_ref() else {
            return;
        };
        let mut board = board.borrow_mut();
        match response.result {
            Some(Reply::Code(info)) => {
                board.offered.push(info.code);
                ctx.count("code_offered");
            }
            Some(Reply::Mapping(_)) => {
                if let Some(code) = self.redeeming.remove(&response.request_id) {
                    *board.redeemed.entry(code).or_insert(0) += 1;
                    ctx.count("code_redeemed");
                }
            }
            Some(Reply::Error(e)) => {
                self.redeeming.remove(&response.request_id);
                let kind = pb::ControlErrorKind::try_from(e.kind)
                    .map(|k| k.as_str_name().to_owned())
                    .unwrap_or_else(|_| e.kind.to_string());
                *board.refused.entry(kind).or_insert(0) += 1;
                ctx.count("code_refused");
            }
            Some(Reply::Codes(_)) | None => {}
        }
    }

    /// The running agent (None while crashed).
    pub fn agent(&self) -> Option<&Agent> {
        self.agent.as_ref()
    }

    /// Why the agent gave up, if it did.
    pub fn stopped(&self) -> Option<&CloseReason> {
        self.stopped.as_ref()
    }

    /// Counters.
    pub fn tally(&self) -> &AgentTally {
        &self.tally
    }

    /// Local connections (visitors and dialled targets) open now.
    pub fn local_count(&self) -> usize {
        self.locals.len() + self.dialing.len()
    }

    fn start(&mut self, now: Instant, ctx: &mut HostCtx<'_>) {
        self.first_start.get_or_insert(now);
        self.agent = Some(Agent::new(now, self.config.clone(), self.rng.fork()));
        self.flush(now, ctx);
    }

    fn feed(&mut self, now: Instant, conn: ConnId) {
        let Some(agent) = self.agent.as_mut() else {
            return;
        };
        let Some(l) = self.locals.get_mut(&conn) else {
            return;
        };
        while let Some(front) = l.pending.pop_front() {
            let taken = agent.local_data(now, l.local, front.clone());
            if taken < front.len() {
                l.pending.push_front(front.slice(taken..));
                return;
            }
        }
        if l.eof {
            l.eof = false;
            agent.local_eof(now, l.local);
        }
    }

    fn forget_local(&mut self, local: LocalId) -> Option<ConnId> {
        let conn = self.local_conn.remove(&local)?;
        self.locals.remove(&conn);
        Some(conn)
    }

    /// Writes everything the agent has for the node in one `send` per batch, and handles its
    /// outputs in order.
    fn flush(&mut self, now: Instant, ctx: &mut HostCtx<'_>) {
        let mut batch: Option<(ConnId, BytesMut)> = None;
        while let Some(agent) = self.agent.as_mut() {
            if let Some((attempt, t)) = agent.poll_transmit() {
                if let Some(conn) = self.attempt_conn.get(&attempt) {
                    let (_, buf) = batch.get_or_insert_with(|| (*conn, BytesMut::new()));
                    t.write_to(buf);
                }
                continue;
            }
            let Some(out) = agent.poll_output() else {
                break;
            };
            // Bytes produced before an output go out before it acts.
            if let Some((conn, buf)) = batch.take() {
                let _ = ctx.send(conn, buf.freeze());
            }
            self.on_output(now, out, ctx);
        }
        if let Some((conn, buf)) = batch.take() {
            let _ = ctx.send(conn, buf.freeze());
        }
    }

    fn on_output(&mut self, now: Instant, out: AgentOutput, ctx: &mut HostCtx<'_>) {
        match out {
            AgentOutput::Connect { attempt, server } => {
                let Some(node) = self.nodes.get(server % self.nodes.len().max(1)) else {
                    return;
                };
                let conn = ctx.connect(*node, CLIENT_PORT);
                self.attempts.insert(conn, attempt);
                self.attempt_conn.insert(attempt, conn);
            }
            AgentOutput::CloseConnection { attempt } => {
                if let Some(conn) = self.attempt_conn.remove(&attempt) {
                    self.attempts.remove(&conn);
                    let _ = ctx.close(conn);
                }
            }
            AgentOutput::Listen { mapping, addr, .. } => {
                let port = addr.rsplit(':').next().and_then(|p| p.parse::<Port>().ok());
                if let Some(port) = port
                    && ctx.listen(port).is_ok()
                {
                    self.listeners.insert(port, mapping.clone());
                    self.mapping_port.insert(mapping, port);
                }
            }
            AgentOutput::StopListening { mapping } => {
                if let Some(port) = self.mapping_port.remove(&mapping) {
                    self.listeners.remove(&port);
                    ctx.unlisten(port);
                }
            }
            AgentOutput::Dial { local, host, port } => {
                self.tally.dials += 1;
                match self.resolver.get(&host) {
                    Some(target) => {
                        let conn = ctx.connect(*target, port);
                        self.dialing.insert(conn, local);
                    }
                    None => {
                        if let Some(agent) = self.agent.as_mut() {
                            agent.dial_result(now, local, Err(DialFailure::Dns));
                        }
                    }
                }
            }
            AgentOutput::Local(out) => self.on_local_output(now, out, ctx),
            AgentOutput::SaveCredentials { client_id, secret } => {
                self.config.session.identity = ClientIdentity::Login {
                    client_id: client_id.0,
                    key: AuthKey::derive(&secret),
                };
            }
            AgentOutput::Established { node_id, .. } => {
                if self.last_node.as_ref().is_some_and(|n| *n != node_id) {
                    ctx.count("client_failover");
                }
                self.last_node = Some(node_id);
                self.tally.sessions += 1;
                ctx.count("agent_session_established");
                if self.tally.sessions > 1 {
                    ctx.count("reconnected");
                }
            }
            AgentOutput::Disconnected { reason, .. } => {
                *self
                    .tally
                    .disconnects
                    .entry(close_kind(&reason))
                    .or_insert(0) += 1;
                ctx.count("agent_disconnected");
            }
            AgentOutput::Stopped { reason } => self.stopped = Some(reason),
            AgentOutput::OpenFailed {
                local,
                error,
                message,
            } => {
                self.tally.opens_failed += 1;
                ctx.note(|| format!("open for visitor {local} failed: {error:?} {message}"));
            }
            AgentOutput::ControlResponse(response) => self.on_control_response(response, ctx),
            AgentOutput::ConfigApplied { .. } => {}
        }
    }

    fn on_local_output(&mut self, now: Instant, out: LocalOutput, ctx: &mut HostCtx<'_>) {
        match out {
            LocalOutput::Write { local, bytes } => {
                let n = bytes.len();
                if let Some(conn) = self.local_conn.get(&local) {
                    let _ = ctx.send(*conn, bytes);
                }
                if let Some(agent) = self.agent.as_mut() {
                    agent.local_flushed(now, local, n);
                }
            }
            LocalOutput::Finish { local } => {
                if let Some(conn) = self.local_conn.get(&local) {
                    let _ = ctx.shutdown_write(*conn);
                }
            }
            LocalOutput::Close { local, reset } => {
                if let Some(conn) = self.forget_local(local) {
                    let _ = if reset {
                        ctx.reset(conn)
                    } else {
                        ctx.close(conn)
                    };
                }
            }
            LocalOutput::ResumeRead { local } => {
                if let Some(conn) = self.local_conn.get(&local).copied() {
                    self.feed(now, conn);
                }
            }
        }
    }
}

impl Host for AgentHost {
    fn on_event(&mut self, now: Instant, event: HostEvent, ctx: &mut HostCtx<'_>) {
        if self.agent.is_none() && !matches!(event, HostEvent::Started) {
            return;
        }
        match event {
            HostEvent::Started => return self.start(now, ctx),
            HostEvent::Timer => {
                if let Some(agent) = self.agent.as_mut() {
                    agent.handle_timeout(now);
                }
            }
            HostEvent::Connected { conn } => {
                if let Some(agent) = self.agent.as_mut() {
                    if let Some(attempt) = self.attempts.get(&conn) {
                        agent.connected(now, *attempt);
                    } else if let Some(local) = self.dialing.remove(&conn) {
                        link_local(&mut self.locals, &mut self.local_conn, conn, local);
                        agent.dial_result(now, local, Ok(()));
                    }
                }
            }
            HostEvent::ConnectFailed { conn, reason } => {
                if let Some(agent) = self.agent.as_mut() {
                    if let Some(attempt) = self.attempts.remove(&conn) {
                        self.attempt_conn.remove(&attempt);
                        agent.connect_failed(now, attempt);
                    } else if let Some(local) = self.dialing.remove(&conn) {
                        let failure = match reason {
                            ConnectFailReason::Timeout => DialFailure::Timeout,
                            ConnectFailReason::Refused | ConnectFailReason::Reset => {
                                DialFailure::Refused
                            }
                        };
                        agent.dial_result(now, local, Err(failure));
                    }
                }
            }
            HostEvent::Accepted {
                listener_port,
                conn,
                peer,
            } => {
                let Some(mapping) = self.listeners.get(&listener_port).cloned() else {
                    let _ = ctx.reset(conn);
                    return;
                };
                let local = conn.0;
                link_local(&mut self.locals, &mut self.local_conn, conn, local);
                let addr = core::net::SocketAddr::from((
                    [10, 1, (peer.0 >> 8) as u8, peer.0 as u8],
                    50_000,
                ));
                if let Some(agent) = self.agent.as_mut() {
                    agent.visitor_accepted(now, &mapping, local, Some(addr));
                }
            }
            HostEvent::Data { conn, bytes } => {
                if let Some(attempt) = self.attempts.get(&conn) {
                    if let Some(agent) = self.agent.as_mut() {
                        agent.connection_bytes(now, *attempt, &bytes);
                    }
                } else if let Some(l) = self.locals.get_mut(&conn) {
                    l.pending.push_back(bytes);
                    self.feed(now, conn);
                }
            }
            HostEvent::Eof { conn } | HostEvent::Reset { conn }
                if self.attempts.contains_key(&conn) =>
            {
                if let (Some(attempt), Some(agent)) =
                    (self.attempts.remove(&conn), self.agent.as_mut())
                {
                    self.attempt_conn.remove(&attempt);
                    agent.connection_closed(now, attempt);
                }
            }
            HostEvent::Eof { conn } => {
                if let Some(l) = self.locals.get_mut(&conn) {
                    l.eof = true;
                }
                self.feed(now, conn);
            }
            HostEvent::Reset { conn } => {
                if let Some(l) = self.locals.remove(&conn) {
                    self.local_conn.remove(&l.local);
                    if let Some(agent) = self.agent.as_mut() {
                        agent.local_reset(now, l.local);
                    }
                }
            }
            HostEvent::Datagram { .. } => {}
        }
        self.flush(now, ctx);
        if self.codes.is_some() {
            self.run_code_duties(now, ctx);
            self.flush(now, ctx);
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        // A duty waits for a session: it is due again only once one is established.
        let established = self.agent.as_ref().is_some_and(Agent::is_established);
        let duty = self
            .codes
            .as_ref()
            .filter(|_| established)
            .and_then(|(role, _)| role.times().get(self.next_code_duty).copied())
            .zip(self.first_start)
            .map(|(offset, origin)| origin + offset);
        tunnox_core::time::earliest(self.agent.as_ref().and_then(Agent::poll_timeout), duty)
    }

    fn crash(&mut self) {
        self.agent = None;
        // A restarted agent numbers its requests from 1 again: forget the old ones.
        self.redeeming.clear();
        self.attempts.clear();
        self.attempt_conn.clear();
        self.listeners.clear();
        self.mapping_port.clear();
        self.locals.clear();
        self.local_conn.clear();
        self.dialing.clear();
    }

    fn restart(&mut self, now: Instant, ctx: &mut HostCtx<'_>) {
        self.start(now, ctx);
    }

    fn check_invariants(&self) -> Result<(), String> {
        let Some(agent) = self.agent.as_ref() else {
            return Ok(());
        };
        agent.check_invariants()?;
        if agent.mux_stats().flow_control_violations > 0 {
            return Err("the node sent beyond the credit this agent granted".into());
        }
        Ok(())
    }

    fn digest(&self) -> u64 {
        let streams = self.agent.as_ref().map_or(0, Agent::stream_count) as u64;
        streams ^ (self.locals.len() as u64) << 20 ^ self.tally.sessions << 40
    }
}
