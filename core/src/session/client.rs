//! The client end of a session: Hello, answer the challenge, check the node's proof, then carry
//! streams and config pushes until the session closes.

use std::collections::VecDeque;

use bytes::Bytes;
use tunnox_proto::wire as pb;

use crate::mux::{Mux, MuxConfig, MuxEvent, PeerSettings, Role};
use crate::rng::Rng;
use crate::time::{Duration, Instant};
use crate::wire::{Frame, GoAwayReason, Received, Transmit};

use super::auth::{NONCE_LEN, Transcript};
use super::link::{Conn, Heartbeat, Unhandled};
use super::{AuthKey, CloseReason, PROTOCOL_VERSION};

/// Who the client is.
#[derive(Debug, Clone)]
pub enum ClientIdentity {
    /// An existing client proving knowledge of its key.
    Login {
        /// The client's id.
        client_id: u64,
        /// Derived from the client's secret; never sent.
        key: AuthKey,
    },
    /// A new client asking for anonymous credentials.
    Register {
        /// How the client names itself.
        label: String,
    },
    /// A node of the same cluster opening a bridge link to another node.
    Peer {
        /// This (the dialling) node's id.
        node_id: String,
        /// Derived from the cluster token; never sent.
        key: AuthKey,
    },
}

impl ClientIdentity {
    /// The id and key the proofs use (`None` for a registration, which has no proof).
    fn proof_identity(&self) -> Option<(u64, &AuthKey)> {
        match self {
            ClientIdentity::Login { client_id, key } => Some((*client_id, key)),
            ClientIdentity::Peer { node_id, key } => Some((super::peer_key_id(node_id), key)),
            ClientIdentity::Register { .. } => None,
        }
    }
}

/// Settings of a client session.
#[derive(Debug, Clone)]
pub struct ClientSessionConfig {
    /// Login or registration.
    pub identity: ClientIdentity,
    /// The whole handshake must finish within this.
    pub handshake_timeout: Duration,
    /// The node is dead after this many of its heartbeat intervals without a frame.
    pub heartbeat_timeout_intervals: u32,
    /// Local stream limits and windows.
    pub mux: MuxConfig,
    /// Largest control message accepted, in bytes.
    pub max_control_payload_bytes: u32,
    /// Features this client supports.
    pub capabilities: Vec<String>,
    /// This client's version string.
    pub client_version: String,
}

impl ClientSessionConfig {
    /// Defaults for `identity`.
    pub fn new(identity: ClientIdentity) -> ClientSessionConfig {
        ClientSessionConfig {
            identity,
            handshake_timeout: Duration::from_secs(10),
            heartbeat_timeout_intervals: 3,
            mux: MuxConfig::default(),
            max_control_payload_bytes: 1024 * 1024,
            capabilities: Vec::new(),
            client_version: String::new(),
        }
    }
}

/// The session parameters the node granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Established {
    /// The node's id for this session.
    pub session_id: u64,
    /// The node we are connected to.
    pub node_id: String,
    /// Our client id (new after a registration).
    pub client_id: u64,
    /// The config version the node holds for us; a push follows if we lag.
    pub config_version: u64,
    /// New credentials after a registration: save them (they are sent only once).
    pub credentials: Option<(u64, String)>,
}

/// Something the client application must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// The handshake succeeded.
    Established(Established),
    /// The node pushed a configuration snapshot; apply it and call `ack_config`.
    ConfigPushed(pb::ConfigPush),
    /// The node answered a control request.
    ControlResponse(pb::ControlResponse),
    /// A stream event.
    Stream(MuxEvent),
    /// The session ended; flush `poll_transmit`, then close the connection.
    Closed(CloseReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitChallenge,
    AwaitWelcome,
    Established,
    Closed,
}

/// A client session over one connection (sans-IO).
#[derive(Debug)]
pub struct ClientSession {
    config: ClientSessionConfig,
    conn: Conn,
    state: State,
    client_nonce: [u8; NONCE_LEN],
    node_nonce: Bytes,
    handshake_deadline: Instant,
    events: VecDeque<ClientEvent>,
}

impl ClientSession {
    /// Starts a session: the Hello is queued at once.
    pub fn new(now: Instant, config: ClientSessionConfig, rng: &mut Rng) -> ClientSession {
        let mut client_nonce = [0u8; NONCE_LEN];
        rng.fill(&mut client_nonce);
        let identity = match &config.identity {
            ClientIdentity::Login { client_id, .. } => pb::hello::Identity::ClientId(*client_id),
            ClientIdentity::Register { label } => pb::hello::Identity::Register(pb::Registration {
                label: label.clone(),
            }),
            ClientIdentity::Peer { node_id, .. } => pb::hello::Identity::PeerNode(node_id.clone()),
        };
        let state = match config.identity {
            ClientIdentity::Login { .. } | ClientIdentity::Peer { .. } => State::AwaitChallenge,
            ClientIdentity::Register { .. } => State::AwaitWelcome,
        };
        let max_payload = config
            .max_control_payload_bytes
            .max(config.mux.max_frame_payload_bytes);
        let mut conn = super::link::Conn::new(max_payload);
        conn.send(Frame::Hello(pb::Hello {
            protocol_version: PROTOCOL_VERSION,
            identity: Some(identity),
            client_nonce: Bytes::copy_from_slice(&client_nonce),
            mux: Some(config.mux.settings().into()),
            capabilities: config.capabilities.clone(),
            client_version: config.client_version.clone(),
        }));
        ClientSession {
            handshake_deadline: now + config.handshake_timeout,
            config,
            conn,
            state,
            client_nonce,
            node_nonce: Bytes::new(),
            events: VecDeque::new(),
        }
    }

    /// Whether the handshake completed and the session is live.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// Whether the session ended (flush `poll_transmit`, then close).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
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

    /// Feeds bytes received from the node.
    pub fn handle_bytes<'a>(&mut self, now: Instant, bytes: impl Into<Received<'a>>) {
        if self.state == State::Closed {
            return;
        }
        self.conn.decoder.push(bytes);
        self.conn.note_bytes_received(now);
        self.process_input(now);
    }

    /// Fires due timers: handshake timeout, heartbeats, dead-peer detection.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::AwaitChallenge | State::AwaitWelcome if now >= self.handshake_deadline => {
                self.close(CloseReason::HandshakeTimeout, None);
            }
            State::Established => {
                if let Err((reason, goaway)) = self.conn.handle_timeout(now) {
                    self.close(reason, Some(goaway));
                }
            }
            _ => {}
        }
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitChallenge | State::AwaitWelcome => Some(self.handshake_deadline),
            State::Established => self.conn.poll_timeout(),
            State::Closed => None,
        }
    }

    /// The next bytes to write to the node.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.conn.poll_transmit()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        if let Some(event) = self.conn.poll_mux_event() {
            return Some(ClientEvent::Stream(event));
        }
        // The last stream may have gone without any input (read to its end, FIN sent, reset):
        // a drain completes here too.
        self.check_drained();
        self.events.pop_front()
    }

    /// Acknowledges an applied configuration version.
    pub fn ack_config(&mut self, version: u64) {
        if self.state == State::Established {
            self.conn.send(Frame::ConfigAck(pb::ConfigAck { version }));
        }
    }

    /// Sends a control-plane request (connection codes); the answer arrives as
    /// `ControlResponse` with the same id. Ignored before the session is established.
    pub fn send_control(&mut self, request: pb::ControlRequest) {
        if self.state == State::Established {
            self.conn.send(Frame::ControlRequest(request));
        }
    }

    /// Announces GOAWAY and closes once the open streams finish (or at `deadline`).
    pub fn drain(&mut self, deadline: Option<Instant>) {
        self.conn.drain(GoAwayReason::Normal, deadline);
        self.check_drained();
    }

    /// Closes now; streams are abandoned.
    pub fn close_now(&mut self) {
        self.close(CloseReason::Local, Some(GoAwayReason::Normal));
    }

    /// Checks internal invariants (for tests and the simulator).
    pub fn check_invariants(&self) -> Result<(), String> {
        if (self.state == State::Established) != self.conn.link.is_some() {
            return Err("client: established iff a mux exists".into());
        }
        if (self.state == State::Closed) != self.conn.closed.is_some() {
            return Err("client: closed iff a close reason exists".into());
        }
        self.conn.check_invariants()
    }

    fn close(&mut self, reason: CloseReason, goaway: Option<GoAwayReason>) {
        if self.conn.close(reason.clone(), goaway) {
            self.state = State::Closed;
            self.events.push_back(ClientEvent::Closed(reason));
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
                Ok(Some(Unhandled::Frame(frame))) => {
                    if let Err(violation) = self.on_session_frame(now, frame) {
                        self.close(violation, Some(GoAwayReason::ProtocolError));
                    }
                }
                Err((reason, goaway)) => self.close(reason, Some(goaway)),
            }
            if self.state == State::Closed {
                return;
            }
        }
        // Pull mux events forward so GOAWAY handling sees them in order.
        while let Some(event) = self.conn.poll_mux_event() {
            if let MuxEvent::GoAway { reason } = event
                && matches!(reason, GoAwayReason::Replaced | GoAwayReason::Kicked)
            {
                // Another login took over (or an admin kicked us): stop at once.
                self.events.push_back(ClientEvent::Stream(event));
                self.close(CloseReason::PeerGoAway(reason), None);
                return;
            }
            self.events.push_back(ClientEvent::Stream(event));
        }
        self.check_drained();
    }

    fn on_session_frame(&mut self, now: Instant, frame: Frame) -> Result<(), CloseReason> {
        match (self.state, frame) {
            (State::AwaitChallenge | State::AwaitWelcome, Frame::Refused(refused)) => {
                let retry_after = (refused.retry_after_ms > 0)
                    .then(|| Duration::from_millis(u64::from(refused.retry_after_ms)));
                self.close(
                    CloseReason::Refused {
                        reason: refused.reason(),
                        message: refused.message,
                        retry_after,
                    },
                    None,
                );
                Ok(())
            }
            (State::AwaitChallenge, Frame::Challenge(challenge)) => {
                let Some((client_id, key)) = self.config.identity.proof_identity() else {
                    return Err(CloseReason::ProtocolViolation(
                        "challenge after a registration",
                    ));
                };
                self.node_nonce = challenge.node_nonce;
                let transcript = Transcript {
                    protocol_version: PROTOCOL_VERSION,
                    client_id,
                    client_nonce: &self.client_nonce,
                    node_nonce: &self.node_nonce,
                };
                let mac = transcript.client_proof(key);
                self.conn.send(Frame::Proof(pb::Proof {
                    mac: Bytes::copy_from_slice(&mac),
                }));
                self.state = State::AwaitWelcome;
                Ok(())
            }
            (State::AwaitWelcome, Frame::Welcome(welcome)) => self.on_welcome(now, welcome),
            (State::Established, Frame::ConfigPush(push)) => {
                self.events.push_back(ClientEvent::ConfigPushed(push));
                Ok(())
            }
            (State::Established, Frame::ControlResponse(response)) => {
                self.events
                    .push_back(ClientEvent::ControlResponse(response));
                Ok(())
            }
            (State::Established, Frame::Refused(_)) => Err(CloseReason::ProtocolViolation(
                "Refused after the session was established",
            )),
            _ => Err(CloseReason::ProtocolViolation(
                "unexpected frame for the session state",
            )),
        }
    }

    fn on_welcome(&mut self, now: Instant, welcome: pb::Welcome) -> Result<(), CloseReason> {
        let credentials = match self.config.identity.proof_identity() {
            Some((client_id, key)) => {
                if welcome.client_id != client_id {
                    return Err(CloseReason::ProtocolViolation(
                        "Welcome names another client",
                    ));
                }
                let transcript = Transcript {
                    protocol_version: PROTOCOL_VERSION,
                    client_id,
                    client_nonce: &self.client_nonce,
                    node_nonce: &self.node_nonce,
                };
                if !transcript.verify_node_proof(key, welcome.session_id, &welcome.node_proof) {
                    self.close(CloseReason::BadNodeProof, None);
                    return Ok(());
                }
                None
            }
            None => {
                let Some(credentials) = welcome.credentials.as_ref() else {
                    return Err(CloseReason::ProtocolViolation(
                        "registration Welcome without credentials",
                    ));
                };
                if credentials.client_id != welcome.client_id || credentials.secret.is_empty() {
                    return Err(CloseReason::ProtocolViolation(
                        "registration credentials are inconsistent",
                    ));
                }
                Some((credentials.client_id, credentials.secret.clone()))
            }
        };
        let peer = welcome
            .mux
            .as_ref()
            .ok_or(CloseReason::ProtocolViolation(
                "Welcome without mux settings",
            ))
            .and_then(|s| PeerSettings::from_wire(s).map_err(CloseReason::ProtocolViolation))?;
        let interval_ms = u64::from(welcome.heartbeat_interval_ms);
        if !(100..=600_000).contains(&interval_ms) {
            return Err(CloseReason::ProtocolViolation(
                "heartbeat interval outside 100 ms..10 min",
            ));
        }
        let interval = Duration::from_millis(interval_ms);
        let heartbeat = Heartbeat {
            interval,
            timeout: interval * self.config.heartbeat_timeout_intervals.max(2),
        };
        let mux = Mux::new(Role::Client, self.config.mux.clone(), peer);
        self.conn.establish(now, mux, heartbeat);
        self.state = State::Established;
        self.events.push_back(ClientEvent::Established(Established {
            session_id: welcome.session_id,
            node_id: welcome.node_id,
            client_id: welcome.client_id,
            config_version: welcome.config_version,
            credentials,
        }));
        Ok(())
    }
}
