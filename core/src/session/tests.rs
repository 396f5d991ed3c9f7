//! A client session and a node session wired through in-memory pipes.

use bytes::{Bytes, BytesMut};
use tunnox_proto::wire as pb;

use super::*;
use crate::mux::{MuxEvent, ReadOutcome};
use crate::rng::Rng;
use crate::time::{Duration, Instant};
use crate::wire::{Decoder, Frame, GoAwayReason};

const CLIENT_ID: u64 = 4242;
const SECRET: &str = "correct horse battery staple";

struct Pair {
    client: ClientSession,
    node: NodeSession,
    now: Instant,
    /// When false, bytes are not delivered in either direction (a partition).
    connected: bool,
    client_events: Vec<ClientEvent>,
    node_events: Vec<NodeEvent>,
    /// The key the node holds for CLIENT_ID (None = unknown client).
    node_key: Option<AuthKey>,
    /// Everything the client sent, for replay attacks.
    client_wire: BytesMut,
}

fn login(secret: &str) -> ClientSessionConfig {
    ClientSessionConfig::new(ClientIdentity::Login {
        client_id: CLIENT_ID,
        key: AuthKey::derive(secret),
    })
}

impl Pair {
    fn new(client: ClientSessionConfig, seed: u64) -> Pair {
        let mut rng = Rng::seed_from_u64(seed);
        let now = Instant::from_nanos(1_000_000_000);
        Pair {
            client: ClientSession::new(now, client, &mut rng),
            node: NodeSession::new(now, NodeSessionConfig::new("node-1"), 77, &mut rng),
            now,
            connected: true,
            client_events: Vec::new(),
            node_events: Vec::new(),
            node_key: Some(AuthKey::derive(SECRET)),
            client_wire: BytesMut::new(),
        }
    }

    /// Moves all pending bytes (in 7-byte chunks, to exercise reassembly) and answers node
    /// credential lookups.
    fn step(&mut self) {
        for _ in 0..100 {
            let mut moved = false;
            while let Some(t) = self.client.poll_transmit() {
                moved = true;
                let mut buf = BytesMut::new();
                t.write_to(&mut buf);
                self.client_wire.extend_from_slice(&buf);
                if self.connected {
                    for chunk in buf.chunks(7) {
                        self.node.handle_bytes(self.now, chunk);
                    }
                }
            }
            while let Some(t) = self.node.poll_transmit() {
                moved = true;
                let mut buf = BytesMut::new();
                t.write_to(&mut buf);
                if self.connected {
                    for chunk in buf.chunks(7) {
                        self.client.handle_bytes(self.now, chunk);
                    }
                }
            }
            while let Some(e) = self.node.poll_event() {
                moved = true;
                if let NodeEvent::CredentialsNeeded { client_id } = e {
                    assert_eq!(client_id, CLIENT_ID);
                    let key = self.node_key.clone();
                    self.node.provide_credentials(self.now, key, 5);
                }
                self.node_events.push(e);
            }
            while let Some(e) = self.client.poll_event() {
                moved = true;
                self.client_events.push(e);
            }
            self.client.check_invariants().unwrap();
            self.node.check_invariants().unwrap();
            if !moved {
                return;
            }
        }
        panic!("sessions never settled");
    }

    /// Advances time to `t`, firing timers on the way in order (never early).
    fn advance_to(&mut self, t: Instant) {
        loop {
            let next = [self.client.poll_timeout(), self.node.poll_timeout()]
                .into_iter()
                .flatten()
                .filter(|d| *d <= t)
                .min();
            let Some(deadline) = next else { break };
            self.now = deadline.max(self.now);
            self.client.handle_timeout(self.now);
            self.node.handle_timeout(self.now);
            self.step();
        }
        self.now = t;
        self.step();
    }

    fn client_closed(&self) -> Option<&CloseReason> {
        self.client_events.iter().find_map(|e| match e {
            ClientEvent::Closed(r) => Some(r),
            _ => None,
        })
    }

    fn node_closed(&self) -> Option<&CloseReason> {
        self.node_events.iter().find_map(|e| match e {
            NodeEvent::Closed(r) => Some(r),
            _ => None,
        })
    }
}

fn refused(reason: RefuseReason) -> impl Fn(&CloseReason) -> bool {
    move |r| matches!(r, CloseReason::Refused { reason: got, .. } if *got == reason)
}

#[test]
fn login_succeeds_and_streams_flow() {
    let mut pair = Pair::new(login(SECRET), 1);
    pair.step();
    assert!(pair.client.is_established());
    let established = pair.client_events.iter().find_map(|e| match e {
        ClientEvent::Established(e) => Some(e.clone()),
        _ => None,
    });
    assert_eq!(
        established,
        Some(Established {
            session_id: 77,
            node_id: "node-1".into(),
            client_id: CLIENT_ID,
            config_version: 5,
            credentials: None,
        })
    );
    assert!(pair.node_events.contains(&NodeEvent::Established {
        client_id: CLIENT_ID
    }));
    assert_eq!(pair.node.client_id(), Some(CLIENT_ID));

    // A stream opened by the client reaches the node with its payload and data.
    let mux = pair.client.mux().unwrap();
    let id = mux.open(Bytes::from_static(b"mapping")).unwrap();
    mux.send(id, Bytes::from_static(b"hello node")).unwrap();
    pair.step();
    assert!(
        pair.node_events
            .contains(&NodeEvent::Stream(MuxEvent::Incoming {
                stream: id,
                payload: Bytes::from_static(b"mapping"),
            }))
    );
    let node_mux = pair.node.mux().unwrap();
    node_mux.accept(id, Bytes::new()).unwrap();
    assert_eq!(
        node_mux.read(pair.now, id, 1024).unwrap(),
        ReadOutcome::Data(Bytes::from_static(b"hello node"))
    );

    // Config push and ack.
    pair.node.push_config(pb::ConfigPush {
        version: 6,
        mappings: vec![],
    });
    pair.step();
    assert!(
        pair.client_events
            .contains(&ClientEvent::ConfigPushed(pb::ConfigPush {
                version: 6,
                mappings: vec![],
            }))
    );
    pair.client.ack_config(6);
    pair.step();
    assert!(
        pair.node_events
            .contains(&NodeEvent::ConfigAcked { version: 6 })
    );
}

#[test]
fn the_secret_never_crosses_the_wire() {
    let mut pair = Pair::new(login(SECRET), 2);
    pair.step();
    assert!(pair.client.is_established());
    let wire = &pair.client_wire[..];
    let key = AuthKey::derive(SECRET);
    for needle in [SECRET.as_bytes(), &key.as_bytes()[..]] {
        assert!(
            !wire.windows(needle.len()).any(|w| w == needle),
            "secret material on the wire"
        );
    }
}

#[test]
fn wrong_secret_and_unknown_client_are_refused_alike() {
    let mut pair = Pair::new(login("wrong"), 3);
    pair.step();
    assert!(refused(RefuseReason::BadCredentials)(
        pair.client_closed().unwrap()
    ));
    assert!(refused(RefuseReason::BadCredentials)(
        pair.node_closed().unwrap()
    ));
    assert!(!pair.client.is_established());

    let mut pair = Pair::new(login(SECRET), 3);
    pair.node_key = None;
    pair.step();
    let CloseReason::Refused { message, .. } = pair.client_closed().unwrap().clone() else {
        panic!("expected a refusal");
    };
    assert_eq!(message, "unknown client or wrong secret");
    assert!(pair.client_closed().unwrap().is_fatal_for_client());
}

#[test]
fn a_replayed_proof_is_refused() {
    // Record a successful login.
    let mut pair = Pair::new(login(SECRET), 4);
    pair.step();
    assert!(pair.client.is_established());
    let recorded = pair.client_wire.clone();
    // An attacker replays the recorded Hello and Proof to a new node session (new nonce).
    let mut rng = Rng::seed_from_u64(99);
    let mut node = NodeSession::new(pair.now, NodeSessionConfig::new("node-1"), 78, &mut rng);
    let mut decoder = Decoder::default();
    decoder.push(&recorded);
    let mut frames = Vec::new();
    while let Some(f) = decoder.decode().unwrap() {
        frames.push(f);
    }
    let hello = frames
        .iter()
        .find(|f| matches!(f, Frame::Hello(_)))
        .unwrap()
        .clone();
    let proof = frames
        .iter()
        .find(|f| matches!(f, Frame::Proof(_)))
        .unwrap()
        .clone();
    for frame in [hello, proof] {
        let mut buf = BytesMut::new();
        frame.encode().write_to(&mut buf);
        node.handle_bytes(pair.now, &buf);
        while let Some(e) = node.poll_event() {
            if let NodeEvent::CredentialsNeeded { .. } = e {
                node.provide_credentials(pair.now, Some(AuthKey::derive(SECRET)), 0);
            }
        }
    }
    assert!(refused(RefuseReason::BadCredentials)(
        node.close_reason().unwrap()
    ));
    assert_eq!(node.client_id(), None);
}

#[test]
fn silent_or_trickling_clients_hit_the_handshake_timeout_not_earlier() {
    let mut rng = Rng::seed_from_u64(5);
    let start = Instant::from_nanos(0);
    let config = NodeSessionConfig::new("n");
    let timeout = config.handshake_timeout;
    let mut node = NodeSession::new(start, config.clone(), 1, &mut rng);
    assert_eq!(node.poll_timeout(), Some(start + timeout));
    node.handle_timeout(start + timeout - Duration::from_nanos(1));
    assert!(!node.is_closed(), "timer fired early");
    node.handle_timeout(start + timeout);
    assert_eq!(node.close_reason(), Some(&CloseReason::HandshakeTimeout));
    let refusal = node.poll_transmit().unwrap();
    assert_eq!(refusal.header[1], crate::wire::FrameType::Refused as u8);

    // One byte a second of a valid Hello does not extend the deadline.
    let mut trickle = NodeSession::new(start, config, 2, &mut rng);
    let mut client = ClientSession::new(start, login(SECRET), &mut rng);
    let mut hello = BytesMut::new();
    client.poll_transmit().unwrap().write_to(&mut hello);
    let mut t = start;
    for byte in hello.iter().take(9) {
        t = t + Duration::from_secs(1);
        trickle.handle_bytes(t, &[*byte]);
        trickle.handle_timeout(t);
    }
    assert!(!trickle.is_closed());
    trickle.handle_timeout(start + timeout);
    assert_eq!(trickle.close_reason(), Some(&CloseReason::HandshakeTimeout));

    // The client side has its own handshake timeout.
    client.handle_timeout(start + Duration::from_secs(10));
    assert_eq!(client.close_reason(), Some(&CloseReason::HandshakeTimeout));
}

#[test]
fn a_session_started_after_a_slow_transport_handshake_keeps_the_deadline_from_the_accept() {
    let mut rng = Rng::seed_from_u64(6);
    let accepted = Instant::from_nanos(0);
    let config = NodeSessionConfig::new("n");
    let timeout = config.handshake_timeout;
    // TLS took most of the timeout: the session gets only what is left.
    let tls_done = accepted + timeout - Duration::from_secs(1);
    let mut node =
        NodeSession::new(tls_done, config, 1, &mut rng).with_handshake_started_at(accepted);
    assert_eq!(node.poll_timeout(), Some(accepted + timeout));
    node.handle_timeout(accepted + timeout);
    assert_eq!(node.close_reason(), Some(&CloseReason::HandshakeTimeout));
}

#[test]
fn heartbeats_keep_a_healthy_session_alive_and_a_silent_peer_is_declared_dead_on_time() {
    let mut pair = Pair::new(login(SECRET), 6);
    pair.step();
    // Ten idle minutes with a working link: heartbeats keep both ends alive.
    let later = pair.now + Duration::from_secs(600);
    pair.advance_to(later);
    assert!(pair.client.is_established());
    assert!(pair.node.client_id().is_some());
    let pings = pair.client.mux_ref().unwrap().stats().frames_sent;
    assert!(
        pings >= 60,
        "client sent {pings} frames (pings) in 600 s at a 10 s interval"
    );

    // Partition: nothing arrives any more. The node's timeout is 30 s after the last frame.
    pair.connected = false;
    let cut_at = pair.now;
    pair.advance_to(cut_at + Duration::from_secs(29));
    assert!(pair.node_closed().is_none(), "declared dead early");
    pair.advance_to(cut_at + Duration::from_secs(31));
    assert_eq!(pair.node_closed(), Some(&CloseReason::HeartbeatTimeout));
    // The client uses 3 × the 10 s interval it was told.
    assert_eq!(pair.client_closed(), Some(&CloseReason::HeartbeatTimeout));
    assert!(!pair.client_closed().unwrap().is_fatal_for_client());
}

#[test]
fn duplicate_login_replaces_the_first_session() {
    let mut registry = SessionRegistry::new();
    let mut first = Pair::new(login(SECRET), 7);
    first.step();
    assert_eq!(registry.register(CLIENT_ID, first.node.session_id()), None);
    let mut second = Pair::new(login(SECRET), 8);
    second.step();
    // The node registers the newer session and kicks the one it replaces.
    let replaced = registry.register(CLIENT_ID, 78);
    assert_eq!(replaced, Some(77));
    first.node.kick(GoAwayReason::Replaced);
    first.step();
    assert_eq!(
        first.client_closed(),
        Some(&CloseReason::PeerGoAway(GoAwayReason::Replaced))
    );
    assert!(first.client_closed().unwrap().is_fatal_for_client());
    assert!(second.client.is_established());
    assert!(!registry.unregister(CLIENT_ID, 77));
    assert_eq!(registry.live_session(CLIENT_ID), Some(78));
}

#[test]
fn anonymous_registration_grants_credentials_that_then_log_in() {
    let register = ClientSessionConfig::new(ClientIdentity::Register {
        label: "laptop".into(),
    });
    let mut pair = Pair::new(register, 9);
    pair.step();
    assert!(
        pair.node_events
            .contains(&NodeEvent::RegistrationRequested {
                label: "laptop".into()
            })
    );
    pair.node
        .grant_registration(pair.now, 555, "fresh-secret".into(), 0);
    pair.step();
    let credentials = pair.client_events.iter().find_map(|e| match e {
        ClientEvent::Established(e) => e.credentials.clone(),
        _ => None,
    });
    assert_eq!(credentials, Some((555, "fresh-secret".to_string())));

    // A registration can also be refused by policy.
    let register = ClientSessionConfig::new(ClientIdentity::Register { label: "x".into() });
    let mut pair = Pair::new(register, 10);
    pair.step();
    pair.node.refuse(
        RefuseReason::RateLimited,
        "too many registrations",
        Some(Duration::from_secs(60)),
    );
    pair.step();
    assert_eq!(
        pair.client_closed(),
        Some(&CloseReason::Refused {
            reason: RefuseReason::RateLimited,
            message: "too many registrations".into(),
            retry_after: Some(Duration::from_secs(60)),
        })
    );
    assert!(!pair.client_closed().unwrap().is_fatal_for_client());
}

#[test]
fn protocol_version_mismatch_and_garbage_are_refused() {
    let mut rng = Rng::seed_from_u64(11);
    let mut node = NodeSession::new(Instant::ZERO, NodeSessionConfig::new("n"), 1, &mut rng);
    let hello = Frame::Hello(pb::Hello {
        protocol_version: 2,
        identity: Some(pb::hello::Identity::ClientId(1)),
        client_nonce: Bytes::from(vec![0u8; 32]),
        mux: Some(crate::mux::MuxConfig::default().settings().into()),
        ..Default::default()
    });
    let mut buf = BytesMut::new();
    hello.encode().write_to(&mut buf);
    node.handle_bytes(Instant::ZERO, &buf);
    assert!(refused(RefuseReason::VersionMismatch)(
        node.close_reason().unwrap()
    ));

    let mut node = NodeSession::new(Instant::ZERO, NodeSessionConfig::new("n"), 2, &mut rng);
    node.handle_bytes(Instant::ZERO, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(refused(RefuseReason::ProtocolError)(
        node.close_reason().unwrap()
    ));
    // The refusal is still sent before the connection closes.
    assert!(node.poll_transmit().is_some());
}

#[test]
fn a_node_that_cannot_prove_the_key_is_rejected() {
    let mut rng = Rng::seed_from_u64(12);
    let mut client = ClientSession::new(Instant::ZERO, login(SECRET), &mut rng);
    let _hello = client.poll_transmit();
    let mut buf = BytesMut::new();
    Frame::Challenge(pb::Challenge {
        node_nonce: Bytes::from(vec![1u8; 32]),
    })
    .encode()
    .write_to(&mut buf);
    Frame::Welcome(pb::Welcome {
        session_id: 1,
        node_id: "impostor".into(),
        client_id: CLIENT_ID,
        heartbeat_interval_ms: 10_000,
        mux: Some(crate::mux::MuxConfig::default().settings().into()),
        node_proof: Bytes::from(vec![0u8; 32]),
        ..Default::default()
    })
    .encode()
    .write_to(&mut buf);
    client.handle_bytes(Instant::ZERO, &buf);
    assert_eq!(client.close_reason(), Some(&CloseReason::BadNodeProof));
    assert!(!client.is_established());
}

#[test]
fn goaway_drains_open_streams_then_closes_both_ends() {
    let mut pair = Pair::new(login(SECRET), 13);
    pair.step();
    let id = pair.client.mux().unwrap().open(Bytes::new()).unwrap();
    pair.step();
    pair.node.mux().unwrap().accept(id, Bytes::new()).unwrap();
    pair.node.drain(GoAwayReason::Shutdown, None);
    pair.step();
    assert!(
        pair.client_events
            .contains(&ClientEvent::Stream(MuxEvent::GoAway {
                reason: GoAwayReason::Shutdown
            }))
    );
    assert!(pair.client_closed().is_none(), "a stream is still open");
    // The stream finishes both ways; then both sessions close.
    pair.client
        .mux()
        .unwrap()
        .send(id, Bytes::from_static(b"bye"))
        .unwrap();
    pair.client.mux().unwrap().finish(id).unwrap();
    pair.node.mux().unwrap().finish(id).unwrap();
    pair.step();
    assert_eq!(
        pair.node.mux().unwrap().read(pair.now, id, 100).unwrap(),
        ReadOutcome::Data(Bytes::from_static(b"bye"))
    );
    assert_eq!(
        pair.node.mux().unwrap().read(pair.now, id, 100).unwrap(),
        ReadOutcome::Finished
    );
    assert_eq!(
        pair.client.mux().unwrap().read(pair.now, id, 100).unwrap(),
        ReadOutcome::Finished
    );
    // The reads removed the last stream; no input follows, yet both drains complete.
    assert_eq!(
        pair.node.poll_event(),
        Some(NodeEvent::Closed(CloseReason::Drained))
    );
    assert_eq!(
        pair.client.poll_event(),
        Some(ClientEvent::Closed(CloseReason::PeerGoAway(
            GoAwayReason::Shutdown
        )))
    );
    pair.node_events
        .push(NodeEvent::Closed(CloseReason::Drained));
    pair.client_events
        .push(ClientEvent::Closed(CloseReason::PeerGoAway(
            GoAwayReason::Shutdown,
        )));
    pair.step();
    assert_eq!(pair.node_closed(), Some(&CloseReason::Drained));
    assert_eq!(
        pair.client_closed(),
        Some(&CloseReason::PeerGoAway(GoAwayReason::Shutdown))
    );
    assert!(
        !pair.client_closed().unwrap().is_fatal_for_client(),
        "a shutdown means reconnect"
    );
}
