//! The node's handshake guard with real sessions: more new connections from one address than
//! its burst are not admitted (with a retry hint); a client that fails its proof
//! repeatedly from one address is locked out there, not from another address, and not for
//! good.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use bytes::BytesMut;
use tunnox_core::control::UnixMillis;
use tunnox_core::node::{ConnId, ControlState, GuardConfig, Node, NodeConfig};
use tunnox_core::rng::Rng;
use tunnox_core::session::{
    AuthKey, ClientIdentity, ClientSession, ClientSessionConfig, CloseReason, RefuseReason,
};
use tunnox_core::time::{Duration, Instant};

fn ip(last: u8) -> IpAddr {
    IpAddr::from([198, 51, 100, last])
}

fn node(guard: GuardConfig) -> Node {
    let mut config = NodeConfig::new("node-1");
    config.guard = guard;
    Node::new(
        Instant::ZERO,
        UnixMillis(1_700_000_000_000),
        config,
        ControlState::default(),
        Rng::seed_from_u64(1),
    )
}

/// Runs one handshake of `identity` from `addr` on connection `conn` to its end; how the client
/// side ended (`None`: established).
fn handshake(
    node: &mut Node,
    now: Instant,
    conn: ConnId,
    addr: IpAddr,
    identity: ClientIdentity,
) -> Option<CloseReason> {
    let mut rng = Rng::seed_from_u64(conn);
    let mut client = ClientSession::new(now, ClientSessionConfig::new(identity), &mut rng);
    node.accept_connection_from(now, conn, Some(addr));
    for _ in 0..100 {
        let mut moved = false;
        while let Some(t) = client.poll_transmit() {
            moved = true;
            let mut buf = BytesMut::new();
            t.write_to(&mut buf);
            node.connection_bytes(now, conn, &buf[..]);
        }
        while let Some(t) = node.poll_transmit_for(conn) {
            moved = true;
            let mut buf = BytesMut::new();
            t.write_to(&mut buf);
            client.handle_bytes(now, &buf[..]);
        }
        while node.poll_output().is_some() {}
        while client.poll_event().is_some() {}
        if client.is_established() {
            return None;
        }
        if client.is_closed() || !moved {
            break;
        }
    }
    node.connection_closed(now, conn);
    client.close_reason().cloned()
}

fn rate_limited(reason: &Option<CloseReason>) -> Option<Duration> {
    match reason {
        Some(CloseReason::Refused {
            reason: RefuseReason::RateLimited,
            retry_after,
            ..
        }) => Some(retry_after.unwrap_or_default()),
        _ => None,
    }
}

#[test]
fn new_connections_beyond_an_addresss_burst_are_refused_with_a_retry_hint() {
    let mut n = node(GuardConfig {
        handshake_burst: 4,
        handshakes_per_sec: 1,
        ..GuardConfig::default()
    });
    let t = Instant::ZERO;
    for _ in 0..4 {
        assert!(n.admit_address(t, ip(1)).is_ok());
    }
    assert_eq!(n.admit_address(t, ip(1)), Err(Duration::from_secs(1)));
    assert!(n.admit_address(t, ip(2)).is_ok(), "another address");
    assert!(
        n.admit_address(t + Duration::from_secs(1), ip(1)).is_ok(),
        "refilled"
    );
    assert_eq!(n.guard().stats().rate_limited, 1);
    // An admitted connection then handshakes as usual.
    let anyone = ClientIdentity::Register { label: "x".into() };
    assert_eq!(handshake(&mut n, t, 1, ip(1), anyone), None);
}

#[test]
fn failed_proofs_lock_a_client_out_from_that_address_for_a_while() {
    let mut n = node(GuardConfig {
        failed_proofs_max: 3,
        lockout: Duration::from_secs(60),
        ..GuardConfig::default()
    });
    let (id, secret) = n.create_client(Instant::ZERO, None, "victim").unwrap();
    let wrong = || ClientIdentity::Login {
        client_id: id.0,
        key: AuthKey::derive("not the secret"),
    };
    let right = || ClientIdentity::Login {
        client_id: id.0,
        key: secret.auth_key(),
    };
    let t = Instant::ZERO;
    for conn in 1..=3 {
        let ended = handshake(&mut n, t, conn, ip(9), wrong());
        assert!(
            matches!(
                ended,
                Some(CloseReason::Refused {
                    reason: RefuseReason::BadCredentials,
                    ..
                })
            ),
            "{ended:?}"
        );
    }
    // Locked out from that address, even with the right secret...
    let locked = handshake(&mut n, t, 4, ip(9), right());
    assert!(
        rate_limited(&locked).is_some_and(|d| d > Duration::from_secs(59)),
        "{locked:?}"
    );
    // ...but not from another address, and not after the lockout.
    assert_eq!(handshake(&mut n, t, 5, ip(10), right()), None);
    let later = t + Duration::from_secs(61);
    assert_eq!(handshake(&mut n, later, 6, ip(9), right()), None);
    assert_eq!(n.guard().stats().lockouts, 1);
}
