//! A whole client as one sans-IO state machine: connect and reconnect with backoff, the session,
//! config pushes turned into listeners, visitors relayed into streams (listen side), and streams
//! from the node dialled to targets (target side).
//!
//! The runtime owns the sockets: it dials the node when told (`Connect`), binds listeners
//! (`Listen`), accepts visitors (`visitor_accepted`), dials targets (`Dial`, answered with
//! `dial_result`) and moves bytes (`LocalOutput`). Local ids of visitors are chosen by the
//! runtime and must be below [`DIAL_ID_BASE`]; ids of target connections are chosen here, from
//! [`DIAL_ID_BASE`] up.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use tunnox_proto::wire as pb;

use crate::control::{AuthKey, ClientId};
use crate::mux::MuxEvent;
use crate::relay::{LocalId, LocalOutput, LocalRelays};
use crate::rng::Rng;
use crate::session::{
    Backoff, BackoffConfig, ClientEvent, ClientIdentity, ClientSession, ClientSessionConfig,
    CloseReason,
};
use crate::time::{Duration, Instant};
use crate::tunnel::{
    DialFailure, OpenError, decode_open, decode_result, encode_open, encode_result,
};
use crate::wire::{Received, StreamId, Transmit};

/// Local ids from here up are target connections the agent dials; below are visitors.
pub const DIAL_ID_BASE: LocalId = 1 << 62;

/// Identifies one connection attempt to a node.
pub type AttemptId = u64;

/// Settings of an agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// How many node addresses the runtime knows; attempts rotate through them.
    pub servers: usize,
    /// Session settings; the identity in it is replaced by the agent's current identity.
    pub session: ClientSessionConfig,
    /// Reconnect pacing.
    pub backoff: BackoffConfig,
    /// Most bytes handed to the runtime per local socket and not yet flushed.
    pub local_unflushed_bytes_max: usize,
}

impl AgentConfig {
    /// Defaults for an agent with `identity` and `servers` node addresses.
    pub fn new(identity: ClientIdentity, servers: usize) -> AgentConfig {
        AgentConfig {
            servers: servers.max(1),
            session: ClientSessionConfig::new(identity),
            backoff: BackoffConfig::default(),
            local_unflushed_bytes_max: 256 * 1024,
        }
    }
}

/// What the runtime must do, or may log.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentOutput {
    /// Dial node address number `server`; report `connected` or `connect_failed` for `attempt`.
    Connect {
        /// The attempt.
        attempt: AttemptId,
        /// Index into the configured node addresses.
        server: usize,
    },
    /// Flush this attempt's transmits, then close its connection.
    CloseConnection {
        /// The attempt.
        attempt: AttemptId,
    },
    /// Bind a listener for a listen-side mapping; report visitors with `visitor_accepted`.
    Listen {
        /// The mapping.
        mapping: String,
        /// `host:port` to bind.
        addr: String,
        /// TCP or UDP.
        protocol: pb::Protocol,
    },
    /// Close a mapping's listener.
    StopListening {
        /// The mapping.
        mapping: String,
    },
    /// Connect to a target service; answer with `dial_result`.
    Dial {
        /// The id of the new local connection.
        local: LocalId,
        /// Host to dial.
        host: String,
        /// Port to dial.
        port: u16,
    },
    /// A local socket operation.
    Local(LocalOutput),
    /// New credentials from a registration: save them (they are sent once).
    SaveCredentials {
        /// The new client id.
        client_id: ClientId,
        /// The secret.
        secret: String,
    },
    /// A session is established.
    Established {
        /// The node.
        node_id: String,
        /// Our client id.
        client_id: ClientId,
    },
    /// The session ended; a reconnect follows after `retry_in`.
    Disconnected {
        /// Why.
        reason: CloseReason,
        /// Delay before the next attempt.
        retry_in: Duration,
    },
    /// The agent stopped for good (bad credentials, replaced by another login, kicked…).
    Stopped {
        /// Why.
        reason: CloseReason,
    },
    /// A configuration pushed by the node was applied (listeners follow as `Listen` and
    /// `StopListening`) and acknowledged to the node.
    ConfigApplied {
        /// Its version.
        version: u64,
        /// Mappings this client listens for.
        listening: usize,
        /// Mappings this client is the target of.
        targets: usize,
    },
    /// The node answered a control request made with `Agent::control`.
    ControlResponse(pb::ControlResponse),
    /// A visitor's open was refused by the node or the target side.
    OpenFailed {
        /// The visitor's local id.
        local: LocalId,
        /// Why.
        error: OpenError,
        /// Detail.
        message: String,
    },
}

#[derive(Debug)]
enum Phase {
    /// Waiting to reconnect.
    Backoff { until: Instant },
    /// Dialling the node.
    Connecting { attempt: AttemptId },
    /// Connected: handshaking or established.
    Session {
        attempt: AttemptId,
        session: Box<ClientSession>,
    },
    /// Given up.
    Stopped,
}

/// A client agent (see the module docs).
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    rng: Rng,
    backoff: Backoff,
    phase: Phase,
    next_attempt: AttemptId,
    server_cursor: usize,
    listen: BTreeMap<String, pb::MappingConfig>,
    target: BTreeMap<String, pb::MappingConfig>,
    relays: LocalRelays,
    pending_dials: BTreeMap<LocalId, StreamId>,
    next_dial: LocalId,
    client_id: Option<ClientId>,
    established_sessions: u64,
    /// The latest time any input carried (for work triggered by pulling output).
    last_now: Instant,
    /// Id of the last control request.
    next_request: u64,
    /// Final frames of a session that closed, still to be written before its connection closes.
    closing: VecDeque<(AttemptId, Transmit)>,
    outputs: VecDeque<AgentOutput>,
}

impl Agent {
    /// An agent that starts connecting at once.
    pub fn new(now: Instant, config: AgentConfig, mut rng: Rng) -> Agent {
        let backoff = Backoff::new(config.backoff.clone(), rng.fork());
        let client_id = match &config.session.identity {
            ClientIdentity::Login { client_id, .. } => Some(ClientId(*client_id)),
            ClientIdentity::Register { .. } | ClientIdentity::Peer { .. } => None,
        };
        let mut agent = Agent {
            relays: LocalRelays::new(config.local_unflushed_bytes_max),
            config,
            rng,
            backoff,
            phase: Phase::Stopped,
            next_attempt: 1,
            server_cursor: 0,
            listen: BTreeMap::new(),
            target: BTreeMap::new(),
            pending_dials: BTreeMap::new(),
            next_dial: DIAL_ID_BASE,
            client_id,
            established_sessions: 0,
            last_now: now,
            next_request: 0,
            closing: VecDeque::new(),
            outputs: VecDeque::new(),
        };
        agent.connect(now);
        agent
    }

    /// Whether a session is established now.
    pub fn is_established(&self) -> bool {
        matches!(&self.phase, Phase::Session { session, .. } if session.is_established())
    }

    /// Whether the agent gave up.
    pub fn is_stopped(&self) -> bool {
        matches!(self.phase, Phase::Stopped)
    }

    /// Our client id, once known.
    pub fn client_id(&self) -> Option<ClientId> {
        self.client_id
    }

    /// Sessions established so far (reconnects count).
    pub fn established_sessions(&self) -> u64 {
        self.established_sessions
    }

    /// Listen-side mappings currently served.
    pub fn listening(&self) -> impl Iterator<Item = &str> {
        self.listen.keys().map(String::as_str)
    }

    /// The relays and pending dials, for diagnostics.
    pub fn describe_relays(&self) -> String {
        format!("{:?} pending dials {:?}", self.relays, self.pending_dials)
    }

    /// Local connections being relayed.
    pub fn relay_count(&self) -> usize {
        self.relays.len()
    }

    /// Streams open in the current session.
    pub fn stream_count(&self) -> usize {
        self.session_ref()
            .and_then(|s| s.mux_ref())
            .map_or(0, |m| m.stream_count())
    }

    /// Stream-layer counters of the current session.
    pub fn mux_stats(&self) -> crate::mux::MuxStats {
        self.session_ref()
            .and_then(|s| s.mux_ref())
            .map(|m| m.stats().clone())
            .unwrap_or_default()
    }

    /// The current session, if connected.
    pub fn session_ref(&self) -> Option<&ClientSession> {
        match &self.phase {
            Phase::Session { session, .. } => Some(session),
            _ => None,
        }
    }

    // ----- the node connection -----

    /// The node connection of `attempt` is up.
    pub fn connected(&mut self, now: Instant, attempt: AttemptId) {
        if !matches!(self.phase, Phase::Connecting { attempt: a } if a == attempt) {
            return;
        }
        let session = ClientSession::new(now, self.config.session.clone(), &mut self.rng);
        self.phase = Phase::Session {
            attempt,
            session: Box::new(session),
        };
        self.after_session(now);
    }

    /// Dialling the node failed.
    pub fn connect_failed(&mut self, now: Instant, attempt: AttemptId) {
        if matches!(self.phase, Phase::Connecting { attempt: a } if a == attempt) {
            self.schedule_reconnect(now, None);
        }
    }

    /// Bytes from the node.
    pub fn connection_bytes<'a>(
        &mut self,
        now: Instant,
        attempt: AttemptId,
        bytes: impl Into<Received<'a>>,
    ) {
        if let Phase::Session {
            attempt: a,
            session,
        } = &mut self.phase
            && *a == attempt
        {
            session.handle_bytes(now, bytes);
            self.after_session(now);
        }
    }

    /// The node connection is gone.
    pub fn connection_closed(&mut self, now: Instant, attempt: AttemptId) {
        let current = match &self.phase {
            Phase::Session { attempt: a, .. } | Phase::Connecting { attempt: a } => *a == attempt,
            _ => false,
        };
        if !current {
            return;
        }
        if let Phase::Session { session, .. } = &mut self.phase
            && !session.is_closed()
        {
            session.close_now();
            self.after_session(now);
        }
        if matches!(self.phase, Phase::Session { .. } | Phase::Connecting { .. }) {
            self.lose_session(now, CloseReason::Local);
        }
    }

    /// The next bytes for the node.
    pub fn poll_transmit(&mut self) -> Option<(AttemptId, Transmit)> {
        if let Some(last) = self.closing.pop_front() {
            return Some(last);
        }
        let Phase::Session { attempt, session } = &mut self.phase else {
            return None;
        };
        let attempt = *attempt;
        let t = session.poll_transmit()?;
        // Sending frees send buffers and raises `Writable`: paused sockets resume now.
        self.after_session(self.last_now);
        Some((attempt, t))
    }

    /// The next output for the runtime.
    pub fn poll_output(&mut self) -> Option<AgentOutput> {
        self.outputs.pop_front()
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Backoff { until } => Some(*until),
            Phase::Session { session, .. } => session.poll_timeout(),
            _ => None,
        }
    }

    /// Fires due timers: reconnect, handshake, heartbeats.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.phase {
            Phase::Backoff { until } if now >= *until => self.connect(now),
            Phase::Session { session, .. } => {
                session.handle_timeout(now);
                self.after_session(now);
            }
            _ => {}
        }
    }

    /// Sends a control request (create, activate, list or revoke connection codes). Returns its
    /// id, which the `ControlResponse` output carries, or `None` when no session is established.
    pub fn control(&mut self, body: pb::control_request::Body) -> Option<u64> {
        let Phase::Session { session, .. } = &mut self.phase else {
            return None;
        };
        if !session.is_established() {
            return None;
        }
        self.next_request += 1;
        session.send_control(pb::ControlRequest {
            request_id: self.next_request,
            body: Some(body),
        });
        Some(self.next_request)
    }

    // ----- local sockets -----

    /// A visitor connected to the listener of `mapping`.
    pub fn visitor_accepted(
        &mut self,
        now: Instant,
        mapping: &str,
        local: LocalId,
        addr: Option<core::net::SocketAddr>,
    ) {
        let Some(config) = self.listen.get(mapping) else {
            return self.refuse_visitor(local, OpenError::MappingNotFound, "no such mapping here");
        };
        if let Some(ip) = addr.map(|a| a.ip())
            && !source_allowed(&config.allowed_source_cidrs, ip)
        {
            return self.refuse_visitor(
                local,
                OpenError::SourceNotAllowed,
                "visitor address not allowed",
            );
        }
        let open = pb::StreamOpen {
            mapping_id: mapping.to_owned(),
            target: None,
            protocol: config.protocol,
            visitor_addr: addr.map(|a| a.to_string()).unwrap_or_default(),
        };
        let opened = match &mut self.phase {
            Phase::Session { session, .. } => session.mux().map(|m| m.open(encode_open(&open))),
            _ => None,
        };
        match opened {
            Some(Ok(stream)) => {
                self.relays.attach(local, stream);
                self.after_session(now);
            }
            Some(Err(e)) => self.refuse_visitor(local, OpenError::Overloaded, &e.to_string()),
            None => self.refuse_visitor(local, OpenError::TargetOffline, "not connected to a node"),
        }
    }

    /// Bytes read from a local socket; returns how many were taken (pause reading if fewer).
    pub fn local_data(&mut self, now: Instant, local: LocalId, bytes: Bytes) -> usize {
        let taken = match &mut self.phase {
            Phase::Session { session, .. } => match session.mux() {
                Some(mux) => self.relays.local_data(mux, local, bytes),
                None => 0,
            },
            _ => 0,
        };
        self.after_session(now);
        taken
    }

    /// A local socket's read side ended.
    pub fn local_eof(&mut self, now: Instant, local: LocalId) {
        if let Phase::Session { session, .. } = &mut self.phase
            && let Some(mux) = session.mux()
        {
            self.relays.local_eof(mux, local);
        }
        self.after_session(now);
    }

    /// A local socket failed.
    pub fn local_reset(&mut self, now: Instant, local: LocalId) {
        if let Phase::Session { session, .. } = &mut self.phase
            && let Some(mux) = session.mux()
        {
            self.relays.local_reset(mux, local);
        }
        self.after_session(now);
    }

    /// The runtime wrote `bytes` of earlier writes to a local socket.
    pub fn local_flushed(&mut self, now: Instant, local: LocalId, bytes: usize) {
        if let Phase::Session { session, .. } = &mut self.phase
            && let Some(mux) = session.mux()
        {
            self.relays.flushed(now, mux, local, bytes);
        }
        self.after_session(now);
    }

    /// The target dial for `local` finished.
    pub fn dial_result(&mut self, now: Instant, local: LocalId, result: Result<(), DialFailure>) {
        let Some(stream) = self.pending_dials.remove(&local) else {
            // The stream went away while dialling: drop the connection.
            if result.is_ok() {
                self.outputs
                    .push_back(AgentOutput::Local(LocalOutput::Close {
                        local,
                        reset: true,
                    }));
            }
            return;
        };
        let Phase::Session { session, .. } = &mut self.phase else {
            return;
        };
        let Some(mux) = session.mux() else {
            return;
        };
        match result {
            Ok(()) => {
                if mux.accept(stream, encode_result(OpenError::Ok, "")).is_ok() {
                    self.relays.attach(local, stream);
                    self.relays.stream_readable(now, mux, stream);
                } else {
                    self.outputs
                        .push_back(AgentOutput::Local(LocalOutput::Close {
                            local,
                            reset: true,
                        }));
                }
            }
            Err(failure) => {
                let error = OpenError::from(failure);
                let _ = mux.refuse(stream, encode_result(error, &format!("{failure:?}")));
            }
        }
        self.after_session(now);
    }

    // ----- internals -----

    fn refuse_visitor(&mut self, local: LocalId, error: OpenError, message: &str) {
        self.outputs
            .push_back(AgentOutput::Local(LocalOutput::Close {
                local,
                reset: true,
            }));
        self.outputs.push_back(AgentOutput::OpenFailed {
            local,
            error,
            message: message.to_owned(),
        });
    }

    fn connect(&mut self, _now: Instant) {
        let attempt = self.next_attempt;
        self.next_attempt += 1;
        let server = self.server_cursor % self.config.servers;
        self.phase = Phase::Connecting { attempt };
        self.outputs
            .push_back(AgentOutput::Connect { attempt, server });
    }

    fn schedule_reconnect(&mut self, now: Instant, retry_after: Option<Duration>) -> Duration {
        self.server_cursor = self.server_cursor.wrapping_add(1);
        let delay = self
            .backoff
            .next_delay()
            .max(retry_after.unwrap_or(Duration::ZERO));
        self.phase = Phase::Backoff { until: now + delay };
        delay
    }

    fn lose_session(&mut self, now: Instant, fallback: CloseReason) {
        let (attempt, reason) = match &self.phase {
            Phase::Session { attempt, session } => (
                *attempt,
                session.close_reason().cloned().unwrap_or(fallback),
            ),
            Phase::Connecting { attempt } => (*attempt, fallback),
            _ => return,
        };
        // The session's last frames (a GOAWAY saying why) go out before the close.
        if let Phase::Session { session, .. } = &mut self.phase {
            while let Some(t) = session.poll_transmit() {
                self.closing.push_back((attempt, t));
            }
        }
        self.relays.reset_all();
        self.pending_dials.clear();
        self.drain_relay_outputs();
        self.outputs
            .push_back(AgentOutput::CloseConnection { attempt });
        if reason.is_fatal_for_client() {
            self.phase = Phase::Stopped;
            // No session will come back: stop accepting visitors.
            for mapping in std::mem::take(&mut self.listen).into_keys() {
                self.outputs
                    .push_back(AgentOutput::StopListening { mapping });
            }
            self.outputs.push_back(AgentOutput::Stopped { reason });
            return;
        }
        let retry_after = match &reason {
            CloseReason::Refused { retry_after, .. } => *retry_after,
            _ => None,
        };
        let retry_in = self.schedule_reconnect(now, retry_after);
        self.outputs
            .push_back(AgentOutput::Disconnected { reason, retry_in });
    }

    fn after_session(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        loop {
            let event = match &mut self.phase {
                Phase::Session { session, .. } => session.poll_event(),
                _ => None,
            };
            let Some(event) = event else { break };
            self.on_event(now, event);
        }
        self.drain_relay_outputs();
    }

    fn drain_relay_outputs(&mut self) {
        while let Some(out) = self.relays.poll_output() {
            self.outputs.push_back(AgentOutput::Local(out));
        }
    }

    fn on_event(&mut self, now: Instant, event: ClientEvent) {
        match event {
            ClientEvent::Established(established) => {
                self.backoff.reset();
                self.established_sessions += 1;
                let client_id = ClientId(established.client_id);
                self.client_id = Some(client_id);
                if let Some((id, secret)) = established.credentials {
                    // Later sessions log in with the new credentials.
                    self.config.session.identity = ClientIdentity::Login {
                        client_id: id,
                        key: AuthKey::derive(&secret),
                    };
                    self.outputs.push_back(AgentOutput::SaveCredentials {
                        client_id: ClientId(id),
                        secret,
                    });
                }
                self.outputs.push_back(AgentOutput::Established {
                    node_id: established.node_id,
                    client_id,
                });
            }
            ClientEvent::ConfigPushed(push) => self.apply_config(push),
            ClientEvent::ControlResponse(response) => {
                self.outputs
                    .push_back(AgentOutput::ControlResponse(response));
            }
            ClientEvent::Stream(event) => self.on_stream_event(now, event),
            ClientEvent::Closed(_) => self.lose_session(now, CloseReason::Local),
        }
    }

    fn apply_config(&mut self, push: pb::ConfigPush) {
        let mut listen = BTreeMap::new();
        let mut target = BTreeMap::new();
        for m in push.mappings {
            if m.listen_side {
                listen.insert(m.mapping_id.clone(), m);
            } else {
                target.insert(m.mapping_id.clone(), m);
            }
        }
        for (id, old) in &self.listen {
            let kept = listen.get(id).is_some_and(|new| {
                new.listen_addr == old.listen_addr && new.protocol == old.protocol
            });
            if !kept {
                self.outputs.push_back(AgentOutput::StopListening {
                    mapping: id.clone(),
                });
            }
        }
        for (id, new) in &listen {
            let existing = self.listen.get(id).is_some_and(|old| {
                new.listen_addr == old.listen_addr && new.protocol == old.protocol
            });
            if !existing {
                self.outputs.push_back(AgentOutput::Listen {
                    mapping: id.clone(),
                    addr: new.listen_addr.clone(),
                    protocol: new.protocol(),
                });
            }
        }
        self.listen = listen;
        self.target = target;
        if let Phase::Session { session, .. } = &mut self.phase {
            session.ack_config(push.version);
        }
        self.outputs.push_back(AgentOutput::ConfigApplied {
            version: push.version,
            listening: self.listen.len(),
            targets: self.target.len(),
        });
    }

    fn on_stream_event(&mut self, now: Instant, event: MuxEvent) {
        match event {
            MuxEvent::Incoming { stream, payload } => self.on_target_open(stream, payload),
            MuxEvent::Refused { stream, payload } => {
                let (error, message) = decode_result(payload)
                    .unwrap_or((OpenError::Internal, "malformed result".into()));
                if let Some(local) = self.relays.local_of(stream) {
                    self.outputs.push_back(AgentOutput::OpenFailed {
                        local,
                        error,
                        message,
                    });
                }
                self.relays.stream_reset(stream);
            }
            MuxEvent::Readable { stream } => {
                if let Phase::Session { session, .. } = &mut self.phase
                    && let Some(mux) = session.mux()
                {
                    self.relays.stream_readable(now, mux, stream);
                }
            }
            MuxEvent::Writable { stream } => self.relays.stream_writable(stream),
            MuxEvent::Reset { stream, .. } => {
                self.relays.stream_reset(stream);
                self.pending_dials.retain(|_, s| *s != stream);
            }
            MuxEvent::Accepted { .. } | MuxEvent::Pong { .. } | MuxEvent::GoAway { .. } => {}
        }
    }

    /// The node asks us to dial a target for a tunnel.
    fn on_target_open(&mut self, stream: StreamId, payload: Bytes) {
        let decoded = decode_open(payload);
        let Phase::Session { session, .. } = &mut self.phase else {
            return;
        };
        let Some(mux) = session.mux() else {
            return;
        };
        let open = match decoded {
            Ok(open) => open,
            Err(e) => {
                let _ = mux.refuse(stream, encode_result(OpenError::Internal, &e.to_string()));
                return;
            }
        };
        // Defence in depth: only mappings this client serves as target, only to the address the
        // node names, with a valid port.
        let known = self.target.contains_key(&open.mapping_id);
        let target = open
            .target
            .filter(|t| (1..=u32::from(u16::MAX)).contains(&t.port));
        let (true, Some(target)) = (known, target) else {
            let _ = mux.refuse(
                stream,
                encode_result(
                    OpenError::NotAuthorized,
                    "not a target mapping of this client",
                ),
            );
            return;
        };
        let local = self.next_dial;
        self.next_dial += 1;
        self.pending_dials.insert(local, stream);
        self.outputs.push_back(AgentOutput::Dial {
            local,
            host: target.host,
            port: u16::try_from(target.port).unwrap_or(0),
        });
    }

    /// Checks the session and relays.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.relays.check_invariants()?;
        if let Some(session) = self.session_ref() {
            session.check_invariants()?;
        }
        Ok(())
    }
}

fn source_allowed(cidrs: &[String], ip: core::net::IpAddr) -> bool {
    cidrs.is_empty()
        || cidrs
            .iter()
            .filter_map(|c| c.parse::<crate::control::Cidr>().ok())
            .any(|c| c.contains(ip))
}
