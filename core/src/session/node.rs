//! The node end of a session: validate the Hello, challenge, check the proof against the key the
//! driver looked up (or grant a registration), then carry streams and config pushes.

use std::collections::VecDeque;

use bytes::Bytes;
use tunnox_proto::wire::{self as pb, RefuseReason};

use crate::mux::{Mux, MuxConfig, MuxEvent, PeerSettings, Role};
use crate::rng::Rng;
use crate::time::{Duration, Instant};
use crate::wire::{Frame, GoAwayReason, Received, Transmit};

use super::auth::{NONCE_LEN, Transcript};
use super::link::{Conn, Heartbeat, Unhandled};
use super::{AuthKey, CloseReason, PROTOCOL_VERSION};

/// Shortest client nonce accepted, in bytes.
const MIN_CLIENT_NONCE_LEN: usize = 16;
/// Longest client nonce accepted, in bytes.
const MAX_CLIENT_NONCE_LEN: usize = 64;

/// Settings of the node end of sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSessionConfig {
    /// This node's id, sent in Welcome.
    pub node_id: String,
    /// The whole handshake must finish within this (slow or silent clients are dropped).
    pub handshake_timeout: Duration,
    /// Heartbeat timing, told to the client in Welcome.
    pub heartbeat: Heartbeat,
    /// Local stream limits and windows.
    pub mux: MuxConfig,
    /// Largest control message accepted, in bytes.
    pub max_control_payload_bytes: u32,
}

impl NodeSessionConfig {
    /// Defaults for a node called `node_id`.
    pub fn new(node_id: impl Into<String>) -> NodeSessionConfig {
        NodeSessionConfig {
            node_id: node_id.into(),
            handshake_timeout: Duration::from_secs(10),
            heartbeat: Heartbeat {
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(30),
            },
            mux: MuxConfig::default(),
            max_control_payload_bytes: 64 * 1024,
        }
    }
}

/// Something the node must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeEvent {
    /// Look up the client's key and call `provide_credentials`.
    CredentialsNeeded {
        /// The client logging in.
        client_id: u64,
    },
    /// A peer node of the cluster opens a bridge link: `provide_credentials` with the cluster
    /// key (or `None` if this node takes no peers).
    PeerCredentialsNeeded {
        /// The peer's node id.
        node_id: String,
    },
    /// A peer node is authenticated and the bridge link is live.
    PeerEstablished {
        /// The peer's node id.
        node_id: String,
    },
    /// A new client asks for anonymous credentials: `grant_registration` or `refuse`.
    RegistrationRequested {
        /// How the client names itself.
        label: String,
    },
    /// The client is authenticated and the session is live.
    Established {
        /// The client.
        client_id: u64,
    },
    /// The client applied a configuration version.
    ConfigAcked {
        /// The version.
        version: u64,
    },
    /// The client asks the control plane something; answer with `respond`.
    ControlRequested(pb::ControlRequest),
    /// A stream event.
    Stream(MuxEvent),
    /// The session ended; flush `poll_transmit`, then close the connection.
    Closed(CloseReason),
}

#[derive(Debug, Clone)]
enum KeyLookup {
    Pending,
    Known { key: AuthKey, config_version: u64 },
    Unknown,
}

#[derive(Debug, Clone)]
enum State {
    AwaitHello,
    AwaitProof {
        client_id: u64,
        key: KeyLookup,
        proof: Option<Bytes>,
    },
    AwaitRegistration,
    Established {
        client_id: u64,
    },
    Closed,
}

/// The node end of one client session (sans-IO).
#[derive(Debug)]
pub struct NodeSession {
    config: NodeSessionConfig,
    conn: Conn,
    state: State,
    session_id: u64,
    node_nonce: [u8; NONCE_LEN],
    client_nonce: Bytes,
    peer_settings: Option<PeerSettings>,
    /// Set when the Hello came from a peer node (a bridge link), not a client.
    peer_node: Option<String>,
    handshake_deadline: Instant,
    events: VecDeque<NodeEvent>,
}

impl NodeSession {
    /// A session awaiting the client's Hello. `session_id` must be unique on this node.
    pub fn new(
        now: Instant,
        config: NodeSessionConfig,
        session_id: u64,
        rng: &mut Rng,
    ) -> NodeSession {
        let mut node_nonce = [0u8; NONCE_LEN];
        rng.fill(&mut node_nonce);
        let max_payload = config
            .max_control_payload_bytes
            .max(config.mux.max_frame_payload_bytes);
        NodeSession {
            handshake_deadline: now + config.handshake_timeout,
            conn: Conn::new(max_payload),
            config,
            state: State::AwaitHello,
            session_id,
            node_nonce,
            client_nonce: Bytes::new(),
            peer_settings: None,
            peer_node: None,
            events: VecDeque::new(),
        }
    }

    /// Counts the handshake deadline from `started` (when the connection was accepted) instead
    /// of from the session's creation, so that a transport handshake before it (TLS) and this
    /// handshake together take no longer than one `handshake_timeout`.
    pub fn with_handshake_started_at(mut self, started: Instant) -> NodeSession {
        self.handshake_deadline = started + self.config.handshake_timeout;
        self
    }

    /// This session's id.
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// The peer node, if this session is a bridge link from another node.
    pub fn peer_node(&self) -> Option<&str> {
        self.peer_node.as_deref()
    }

    /// The authenticated client, once established.
    pub fn client_id(&self) -> Option<u64> {
        match self.state {
            State::Established { client_id } => Some(client_id),
            _ => None,
        }
    }

    /// Whether the session ended (flush `poll_transmit`, then close).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Why the session ended, once it has.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.conn.closed.as_ref()
    }

    /// The stream multiplexer, once established.
    pub fn mux(&mut self) -> Option<&mut Mux> {
        self.conn.link.as_mut().map(|l| &mut l.mux)
    }

    /// Stream-layer counters of this session (kept after it closes).
    pub fn mux_stats(&self) -> crate::mux::MuxStats {
        self.conn.mux_stats()
    }

    /// The stream multiplexer, read-only.
    pub fn mux_ref(&self) -> Option<&Mux> {
        self.conn.link.as_ref().map(|l| &l.mux)
    }

    /// Feeds bytes received from the client.
    pub fn handle_bytes<'a>(&mut self, now: Instant, bytes: impl Into<Received<'a>>) {
        if !self.is_closed() {
            self.conn.decoder.push(bytes);
            self.conn.note_bytes_received(now);
            self.process_input(now);
        }
    }

    /// Fires due timers: handshake timeout, heartbeats, dead-peer detection, drain deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Closed => {}
            State::Established { .. } => {
                if let Err((reason, goaway)) = self.conn.handle_timeout(now) {
                    self.close(reason, Some(goaway));
                }
            }
            _ if now >= self.handshake_deadline => self.send_refusal(
                RefuseReason::HandshakeTimeout,
                "handshake not completed in time",
                None,
                CloseReason::HandshakeTimeout,
            ),
            _ => {}
        }
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed => None,
            State::Established { .. } => self.conn.poll_timeout(),
            _ => Some(self.handshake_deadline),
        }
    }

    /// The next bytes to write to the client.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.conn.poll_transmit()
    }

    /// The next event for the node.
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        if let Some(event) = self.conn.poll_mux_event() {
            return Some(NodeEvent::Stream(event));
        }
        // The last stream may have gone without any input (read to its end, FIN sent, reset):
        // a drain completes here too.
        self.check_drained();
        self.events.pop_front()
    }

    /// Answers `CredentialsNeeded`: the client's key (`None` if no such client may log in) and
    /// the config version the node holds for it.
    pub fn provide_credentials(&mut self, now: Instant, key: Option<AuthKey>, config_version: u64) {
        if let State::AwaitProof { key: lookup, .. } = &mut self.state {
            *lookup = match key {
                Some(key) => KeyLookup::Known {
                    key,
                    config_version,
                },
                None => KeyLookup::Unknown,
            };
            self.try_authenticate(now);
        }
    }

    /// Answers `RegistrationRequested` with fresh credentials (sent once, in Welcome).
    pub fn grant_registration(
        &mut self,
        now: Instant,
        client_id: u64,
        secret: String,
        config_version: u64,
    ) {
        if !matches!(self.state, State::AwaitRegistration) {
            return;
        }
        let credentials = pb::Credentials { client_id, secret };
        self.establish(
            now,
            client_id,
            config_version,
            Bytes::new(),
            Some(credentials),
        );
    }

    /// Refuses the session during the handshake (banned, rate limited, overloaded, registration
    /// closed…); the Refused frame is queued and the session closes.
    pub fn refuse(&mut self, reason: RefuseReason, message: &str, retry_after: Option<Duration>) {
        let close = CloseReason::Refused {
            reason,
            message: message.to_owned(),
            retry_after,
        };
        self.send_refusal(reason, message, retry_after, close);
    }

    fn send_refusal(
        &mut self,
        reason: RefuseReason,
        message: &str,
        retry_after: Option<Duration>,
        close: CloseReason,
    ) {
        if matches!(self.state, State::Established { .. } | State::Closed) {
            return;
        }
        let retry_after_ms =
            retry_after.map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX));
        self.conn.send(Frame::Refused(pb::Refused {
            reason: reason as i32,
            message: message.to_owned(),
            retry_after_ms,
        }));
        self.close(close, None);
    }

    /// Sends the client a configuration snapshot.
    pub fn push_config(&mut self, push: pb::ConfigPush) {
        if matches!(self.state, State::Established { .. }) {
            self.conn.send(Frame::ConfigPush(push));
        }
    }

    /// Answers a control request.
    pub fn respond(&mut self, response: pb::ControlResponse) {
        if matches!(self.state, State::Established { .. }) {
            self.conn.send(Frame::ControlResponse(response));
        }
    }

    /// Announces GOAWAY and closes once the open streams finish (or at `deadline`).
    pub fn drain(&mut self, reason: GoAwayReason, deadline: Option<Instant>) {
        self.conn.drain(reason, deadline);
        self.check_drained();
    }

    /// Ends the session at once with GOAWAY `reason` (a newer login replaced it, or an admin
    /// kicked the client).
    pub fn kick(&mut self, reason: GoAwayReason) {
        self.close(CloseReason::Local, Some(reason));
    }

    /// Checks internal invariants (for tests and the simulator).
    pub fn check_invariants(&self) -> Result<(), String> {
        let established = matches!(self.state, State::Established { .. });
        if established != self.conn.link.is_some() {
            return Err("node: established iff a mux exists".into());
        }
        if matches!(self.state, State::Closed) != self.conn.closed.is_some() {
            return Err("node: closed iff a close reason exists".into());
        }
        self.conn.check_invariants()
    }

    fn close(&mut self, reason: CloseReason, goaway: Option<GoAwayReason>) {
        if self.conn.close(reason.clone(), goaway) {
            self.state = State::Closed;
            self.events.push_back(NodeEvent::Closed(reason));
        }
    }

    fn check_drained(&mut self) {
        if let Some(reason) = self.conn.drain_outcome() {
            self.close(reason, None);
        }
    }

    fn process_input(&mut self, now: Instant) {
        loop {
            match self.conn.next_frame(now) {
                Ok(None) => break,
                Ok(Some(Unhandled::Frame(frame))) => self.on_session_frame(now, frame),
                Err((reason, goaway)) => {
                    if matches!(self.state, State::Established { .. }) {
                        self.close(reason, Some(goaway));
                    } else {
                        self.refuse(RefuseReason::ProtocolError, "malformed frame", None);
                    }
                }
            }
            if self.is_closed() {
                return;
            }
        }
        while let Some(event) = self.conn.poll_mux_event() {
            self.events.push_back(NodeEvent::Stream(event));
        }
        self.check_drained();
    }

    fn on_session_frame(&mut self, now: Instant, frame: Frame) {
        match (&self.state, frame) {
            (State::AwaitHello, Frame::Hello(hello)) => self.on_hello(hello),
            (State::AwaitProof { proof: None, .. }, Frame::Proof(proof)) => {
                if let State::AwaitProof { proof: slot, .. } = &mut self.state {
                    *slot = Some(proof.mac);
                }
                self.try_authenticate(now);
            }
            (State::Established { .. }, Frame::ConfigAck(ack)) => {
                self.events.push_back(NodeEvent::ConfigAcked {
                    version: ack.version,
                });
            }
            (State::Established { .. }, Frame::ControlRequest(request)) => {
                self.events.push_back(NodeEvent::ControlRequested(request));
            }
            (State::Established { .. }, _) => {
                self.close(
                    CloseReason::ProtocolViolation("handshake frame after establishment"),
                    Some(GoAwayReason::ProtocolError),
                );
            }
            _ => self.refuse(
                RefuseReason::ProtocolError,
                "unexpected frame during the handshake",
                None,
            ),
        }
    }

    fn on_hello(&mut self, hello: pb::Hello) {
        if hello.protocol_version != PROTOCOL_VERSION {
            let message = format!(
                "client speaks protocol {}, this node speaks {PROTOCOL_VERSION}",
                hello.protocol_version
            );
            return self.refuse(RefuseReason::VersionMismatch, &message, None);
        }
        if !(MIN_CLIENT_NONCE_LEN..=MAX_CLIENT_NONCE_LEN).contains(&hello.client_nonce.len()) {
            return self.refuse(
                RefuseReason::ProtocolError,
                "client nonce must be 16-64 bytes",
                None,
            );
        }
        let peer = match hello.mux.as_ref().map(PeerSettings::from_wire) {
            Some(Ok(peer)) => peer,
            Some(Err(problem)) => return self.refuse(RefuseReason::ProtocolError, problem, None),
            None => {
                return self.refuse(
                    RefuseReason::ProtocolError,
                    "Hello without mux settings",
                    None,
                );
            }
        };
        self.peer_settings = Some(peer);
        self.client_nonce = hello.client_nonce;
        match hello.identity {
            Some(pb::hello::Identity::ClientId(client_id)) => {
                self.conn.send(Frame::Challenge(pb::Challenge {
                    node_nonce: Bytes::copy_from_slice(&self.node_nonce),
                }));
                self.state = State::AwaitProof {
                    client_id,
                    key: KeyLookup::Pending,
                    proof: None,
                };
                self.events
                    .push_back(NodeEvent::CredentialsNeeded { client_id });
            }
            Some(pb::hello::Identity::PeerNode(node_id)) => {
                if crate::control::NodeId::parse(&node_id).is_err() {
                    return self.refuse(RefuseReason::ProtocolError, "invalid peer node id", None);
                }
                self.conn.send(Frame::Challenge(pb::Challenge {
                    node_nonce: Bytes::copy_from_slice(&self.node_nonce),
                }));
                self.state = State::AwaitProof {
                    client_id: super::peer_key_id(&node_id),
                    key: KeyLookup::Pending,
                    proof: None,
                };
                self.peer_node = Some(node_id.clone());
                self.events
                    .push_back(NodeEvent::PeerCredentialsNeeded { node_id });
            }
            Some(pb::hello::Identity::Register(registration)) => {
                self.state = State::AwaitRegistration;
                self.events.push_back(NodeEvent::RegistrationRequested {
                    label: registration.label,
                });
            }
            None => self.refuse(RefuseReason::ProtocolError, "Hello names no identity", None),
        }
    }

    fn try_authenticate(&mut self, now: Instant) {
        let State::AwaitProof {
            client_id,
            key,
            proof: Some(proof),
        } = &self.state
        else {
            return;
        };
        let client_id = *client_id;
        let (key, config_version) = match key {
            KeyLookup::Pending => return,
            KeyLookup::Unknown => {
                return self.refuse(
                    RefuseReason::BadCredentials,
                    "unknown client or wrong secret",
                    None,
                );
            }
            KeyLookup::Known {
                key,
                config_version,
            } => (key.clone(), *config_version),
        };
        let transcript = Transcript {
            protocol_version: PROTOCOL_VERSION,
            client_id,
            client_nonce: &self.client_nonce,
            node_nonce: &self.node_nonce,
        };
        if !transcript.verify_client_proof(&key, proof) {
            // Same answer as for an unknown client: no way to probe which ids exist.
            return self.refuse(
                RefuseReason::BadCredentials,
                "unknown client or wrong secret",
                None,
            );
        }
        let node_proof = Bytes::copy_from_slice(&transcript.node_proof(&key, self.session_id));
        self.establish(now, client_id, config_version, node_proof, None);
    }

    fn establish(
        &mut self,
        now: Instant,
        client_id: u64,
        config_version: u64,
        node_proof: Bytes,
        credentials: Option<pb::Credentials>,
    ) {
        let Some(peer) = self.peer_settings else {
            return self.refuse(RefuseReason::ProtocolError, "no mux settings", None);
        };
        let heartbeat = self.config.heartbeat;
        self.conn.send(Frame::Welcome(pb::Welcome {
            session_id: self.session_id,
            node_id: self.config.node_id.clone(),
            client_id,
            heartbeat_interval_ms: u32::try_from(heartbeat.interval.as_millis())
                .unwrap_or(u32::MAX),
            mux: Some(self.config.mux.settings().into()),
            config_version,
            credentials,
            node_proof,
        }));
        let mux = Mux::new(Role::Node, self.config.mux.clone(), peer);
        self.conn.establish(now, mux, heartbeat);
        self.state = State::Established { client_id };
        self.events.push_back(match &self.peer_node {
            Some(node_id) => NodeEvent::PeerEstablished {
                node_id: node_id.clone(),
            },
            None => NodeEvent::Established { client_id },
        });
    }
}
