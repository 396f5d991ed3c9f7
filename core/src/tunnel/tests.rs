use tunnox_proto::wire as pb;

use super::*;
use crate::control::{
    ClientId, Entry, Mapping, MappingId, MappingOptions, MappingStatus, Protocol, Quota, Target,
    UnixMillis, UserId,
};
use crate::rng::Rng;
use crate::time::{Duration, Instant};
use crate::wire::ResetReason;

const LISTEN: ClientId = ClientId(100);
const TARGET: ClientId = ClientId(200);
const LISTEN_SESSION: u64 = 1;
const TARGET_SESSION: u64 = 2;
const NOW: UnixMillis = UnixMillis(10_000);

fn mapping(entry: Entry, target: Target, protocol: Protocol) -> Mapping {
    Mapping {
        id: MappingId::generate(&mut Rng::seed_from_u64(1)),
        owner: Some(UserId(1)),
        entry,
        target_client: TARGET,
        target,
        protocol,
        options: MappingOptions::default(),
        created_at: UnixMillis(1_000),
        expires_at: Some(UnixMillis(20_000)),
        status: MappingStatus::Active,
    }
}

fn tcp_mapping() -> Mapping {
    mapping(
        Entry::ClientPort {
            listen_client: LISTEN,
            listen_addr: "127.0.0.1:13306".into(),
        },
        Target::Fixed {
            host: "10.0.0.5".into(),
            port: 3306,
        },
        Protocol::Tcp,
    )
}

fn entry(stream: u32) -> Endpoint {
    Endpoint::Stream {
        session: LISTEN_SESSION,
        stream,
    }
}

fn target(stream: u32) -> Endpoint {
    Endpoint::Stream {
        session: TARGET_SESSION,
        stream,
    }
}

fn request(m: &Mapping, stream: u32) -> OpenRequest {
    OpenRequest {
        entry: entry(stream),
        from_client: Some(LISTEN),
        via_peer: false,
        route_asked: false,
        open: pb::StreamOpen {
            mapping_id: m.id.as_str().into(),
            target: None,
            protocol: pb::Protocol::Tcp as i32,
            visitor_addr: "192.0.2.7:40000".into(),
        },
    }
}

fn ctx(m: &Mapping) -> OpenContext<'_> {
    OpenContext {
        mapping: Some(m),
        owner_quota: None,
        target_session: Some(TARGET_SESSION),
        wall_now: NOW,
    }
}

fn actions(table: &mut TunnelTable) -> Vec<TunnelAction> {
    std::iter::from_fn(|| table.poll_action()).collect()
}

fn refusal(table: &mut TunnelTable) -> Option<OpenError> {
    actions(table).into_iter().find_map(|a| match a {
        TunnelAction::RefuseEntry { error, .. } => Some(error),
        _ => None,
    })
}

/// Opens a tunnel through to relaying; returns its id.
fn relaying(table: &mut TunnelTable, m: &Mapping, stream: u32) -> TunnelId {
    let id = table
        .request_open(Instant::ZERO, request(m, stream), ctx(m))
        .unwrap();
    table.target_opened(id, stream * 10);
    table.target_result(target(stream * 10), Ok(()));
    id
}

#[test]
fn a_tunnel_opens_relays_and_closes_both_ways() {
    let m = tcp_mapping();
    let mut table = TunnelTable::new(TunnelConfig::default());
    let id = table
        .request_open(Instant::ZERO, request(&m, 1), ctx(&m))
        .unwrap();
    let TunnelAction::OpenTarget {
        session, payload, ..
    } = actions(&mut table).remove(0)
    else {
        panic!("expected OpenTarget");
    };
    assert_eq!(session, TARGET_SESSION);
    // The target is told the address to dial by the node.
    let open = decode_open(payload).unwrap();
    assert_eq!(
        open.target,
        Some(pb::TargetAddr {
            host: "10.0.0.5".into(),
            port: 3306
        })
    );
    assert_eq!(open.visitor_addr, "192.0.2.7:40000");
    table.target_opened(id, 10);
    assert_eq!(table.peer(entry(1)), Some(target(10)));
    assert_eq!(table.peer(target(10)), Some(entry(1)));
    assert!(!table.is_relaying(entry(1)));
    table.target_result(target(10), Ok(()));
    assert_eq!(
        actions(&mut table),
        vec![TunnelAction::AcceptEntry { entry: entry(1) }]
    );
    assert!(table.is_relaying(entry(1)));
    assert_eq!(table.active_for_mapping(&m.id), 1);
    assert_eq!(table.active_for_owner(UserId(1)), 1);

    table.record_transfer(entry(1), 100);
    table.record_transfer(target(10), 250);
    // Half-close from the entry reaches the target; the tunnel lives on until the target finishes.
    table.endpoint_finished(entry(1));
    assert_eq!(
        actions(&mut table),
        vec![TunnelAction::Finish {
            endpoint: target(10)
        }]
    );
    assert_eq!(table.len(), 1);
    table.endpoint_finished(target(10));
    let closed = actions(&mut table);
    assert_eq!(closed[0], TunnelAction::Finish { endpoint: entry(1) });
    assert_eq!(
        closed[1],
        TunnelAction::Closed {
            tunnel: id,
            mapping: m.id.clone(),
            owner: Some(UserId(1)),
            outcome: TunnelOutcome::Finished,
            bytes_to_target: 100,
            bytes_to_entry: 250,
        }
    );
    assert!(table.is_empty());
    assert_eq!(table.active_for_mapping(&m.id), 0);
    table.check_invariants().unwrap();
}

/// Changes a good request or its context into a bad one.
type Mutation = Box<dyn Fn(&mut OpenRequest, &mut OpenContext<'_>)>;

#[test]
fn authorization_is_decided_by_the_node() {
    let m = tcp_mapping();
    let mut table = TunnelTable::new(TunnelConfig::default());
    let cases: Vec<(Mutation, OpenError)> = vec![
        (
            Box::new(|_, c| c.mapping = None),
            OpenError::MappingNotFound,
        ),
        (
            Box::new(|r, _| r.from_client = Some(ClientId(999))),
            OpenError::NotAuthorized,
        ),
        (
            Box::new(|r, _| r.from_client = None),
            OpenError::NotAuthorized,
        ),
        (
            Box::new(|r, _| {
                r.entry = Endpoint::Local(5);
                r.from_client = None;
            }),
            OpenError::NotAuthorized,
        ),
        (
            Box::new(|r, _| {
                r.open.target = Some(pb::TargetAddr {
                    host: "evil".into(),
                    port: 22,
                })
            }),
            OpenError::NotAuthorized,
        ),
        (
            Box::new(|_, c| c.wall_now = UnixMillis(20_000)),
            OpenError::MappingExpired,
        ),
        (
            Box::new(|_, c| c.target_session = None),
            OpenError::TargetOffline,
        ),
    ];
    for (i, (mutate, expected)) in cases.into_iter().enumerate() {
        let mut req = request(&m, 1);
        let mut c = ctx(&m);
        mutate(&mut req, &mut c);
        assert_eq!(table.request_open(Instant::ZERO, req, c), None, "case {i}");
        assert_eq!(refusal(&mut table), Some(expected), "case {i}");
    }
    let mut disabled = m.clone();
    disabled.status = MappingStatus::Disabled;
    assert_eq!(
        table.request_open(Instant::ZERO, request(&disabled, 1), ctx(&disabled)),
        None
    );
    assert_eq!(refusal(&mut table), Some(OpenError::NotAuthorized));
    assert!(table.is_empty());
    table.check_invariants().unwrap();
}

#[test]
fn source_cidrs_and_quotas_are_enforced() {
    let mut m = tcp_mapping();
    m.options.allowed_source_cidrs = vec!["192.0.2.0/24".parse().unwrap()];
    m.options.max_connections = 2;
    let mut table = TunnelTable::new(TunnelConfig::default());
    let mut outside = request(&m, 1);
    outside.open.visitor_addr = "198.51.100.1:1".into();
    assert_eq!(table.request_open(Instant::ZERO, outside, ctx(&m)), None);
    assert_eq!(refusal(&mut table), Some(OpenError::SourceNotAllowed));
    let mut missing = request(&m, 1);
    missing.open.visitor_addr = String::new();
    assert_eq!(table.request_open(Instant::ZERO, missing, ctx(&m)), None);
    assert_eq!(refusal(&mut table), Some(OpenError::SourceNotAllowed));

    relaying(&mut table, &m, 1);
    relaying(&mut table, &m, 3);
    assert_eq!(
        table.request_open(Instant::ZERO, request(&m, 5), ctx(&m)),
        None
    );
    assert_eq!(refusal(&mut table), Some(OpenError::QuotaExceeded));
    // Closing one frees a slot.
    table.endpoint_reset(entry(1), ResetReason::Cancel);
    assert!(
        table
            .request_open(Instant::ZERO, request(&m, 5), ctx(&m))
            .is_some()
    );

    // The owner's quota counts connections over all its mappings.
    let quota = Quota {
        max_connections: 2,
        ..Quota::default()
    };
    let mut other = tcp_mapping();
    other.id = MappingId::generate(&mut Rng::seed_from_u64(2));
    let mut c = ctx(&other);
    c.owner_quota = Some(&quota);
    assert_eq!(
        table.request_open(Instant::ZERO, request(&other, 7), c),
        None
    );
    assert_eq!(refusal(&mut table), Some(OpenError::QuotaExceeded));
    table.check_invariants().unwrap();
}

#[test]
fn socks5_opens_must_name_a_valid_target() {
    let m = mapping(
        Entry::Socks5 {
            listen_client: LISTEN,
            listen_addr: "127.0.0.1:1080".into(),
        },
        Target::Dynamic,
        Protocol::Socks5,
    );
    let mut table = TunnelTable::new(TunnelConfig::default());
    assert_eq!(
        table.request_open(Instant::ZERO, request(&m, 1), ctx(&m)),
        None
    );
    assert_eq!(refusal(&mut table), Some(OpenError::NotAuthorized));
    let mut bad = request(&m, 1);
    bad.open.target = Some(pb::TargetAddr {
        host: "ok.example".into(),
        port: 70_000,
    });
    assert_eq!(table.request_open(Instant::ZERO, bad, ctx(&m)), None);
    assert_eq!(refusal(&mut table), Some(OpenError::NotAuthorized));
    let mut good = request(&m, 1);
    good.open.target = Some(pb::TargetAddr {
        host: "db.internal".into(),
        port: 5432,
    });
    table.request_open(Instant::ZERO, good, ctx(&m)).unwrap();
    let Some(TunnelAction::OpenTarget { payload, .. }) = table.poll_action() else {
        panic!("expected OpenTarget");
    };
    let open = decode_open(payload).unwrap();
    assert_eq!(open.target.unwrap().host, "db.internal");
    assert_eq!(open.protocol, pb::Protocol::Socks5 as i32);
}

#[test]
fn node_port_visitors_are_entries_too() {
    let m = mapping(
        Entry::NodePort {
            port: 8080,
            bind: None,
        },
        Target::Fixed {
            host: "127.0.0.1".into(),
            port: 80,
        },
        Protocol::Tcp,
    );
    let mut table = TunnelTable::new(TunnelConfig::default());
    let req = OpenRequest {
        entry: Endpoint::Local(9),
        from_client: None,
        via_peer: false,
        route_asked: false,
        open: pb::StreamOpen {
            mapping_id: m.id.as_str().into(),
            ..Default::default()
        },
    };
    let id = table.request_open(Instant::ZERO, req, ctx(&m)).unwrap();
    table.target_opened(id, 2);
    table.target_result(target(2), Ok(()));
    assert!(actions(&mut table).contains(&TunnelAction::AcceptEntry {
        entry: Endpoint::Local(9)
    }));
}

#[test]
fn dial_failures_and_timeouts_refuse_the_entry_with_a_typed_reason() {
    let m = tcp_mapping();
    let mut table = TunnelTable::new(TunnelConfig {
        open_timeout: Duration::from_secs(5),
        ..TunnelConfig::default()
    });
    // The target refuses: connection refused at the service.
    let id = table
        .request_open(Instant::ZERO, request(&m, 1), ctx(&m))
        .unwrap();
    table.target_opened(id, 10);
    actions(&mut table);
    table.target_result(
        target(10),
        Err((OpenError::DialRefused, "connection refused".into())),
    );
    let acts = actions(&mut table);
    assert_eq!(
        acts[0],
        TunnelAction::RefuseEntry {
            entry: entry(1),
            error: OpenError::DialRefused,
            message: "connection refused".into()
        }
    );
    assert!(matches!(
        acts[1],
        TunnelAction::Closed {
            outcome: TunnelOutcome::DialFailed(OpenError::DialRefused),
            ..
        }
    ));
    assert!(table.is_empty());

    // The target never answers: at the deadline (not before) the entry is refused and the target
    // stream reset.
    let id = table
        .request_open(Instant::ZERO, request(&m, 3), ctx(&m))
        .unwrap();
    table.target_opened(id, 30);
    actions(&mut table);
    assert_eq!(
        table.poll_timeout(),
        Some(Instant::ZERO + Duration::from_secs(5))
    );
    table.handle_timeout(Instant::ZERO + Duration::from_millis(4_999));
    assert!(actions(&mut table).is_empty());
    table.handle_timeout(Instant::ZERO + Duration::from_secs(5));
    let acts = actions(&mut table);
    assert!(acts.contains(&TunnelAction::Reset {
        endpoint: target(30),
        reason: ResetReason::Timeout
    }));
    assert!(acts.iter().any(|a| matches!(
        a,
        TunnelAction::RefuseEntry {
            error: OpenError::DialTimeout,
            ..
        }
    )));
    // A late answer for the dead tunnel is ignored.
    table.target_result(target(30), Ok(()));
    assert!(actions(&mut table).is_empty());
    table.check_invariants().unwrap();
}

#[test]
fn resets_lost_sessions_and_deleted_mappings_propagate() {
    let m = tcp_mapping();
    let mut table = TunnelTable::new(TunnelConfig::default());
    relaying(&mut table, &m, 1);
    relaying(&mut table, &m, 3);
    relaying(&mut table, &m, 5);
    actions(&mut table);
    // The target resets one stream: its entry is reset with TargetFailed.
    table.endpoint_reset(target(10), ResetReason::TargetFailed);
    assert!(actions(&mut table).contains(&TunnelAction::Reset {
        endpoint: entry(1),
        reason: ResetReason::TargetFailed
    }));
    // The target client's session dies: every entry of its tunnels is reset.
    table.session_closed(TARGET_SESSION);
    let acts = actions(&mut table);
    for e in [entry(3), entry(5)] {
        assert!(acts.contains(&TunnelAction::Reset {
            endpoint: e,
            reason: ResetReason::TargetFailed
        }));
    }
    assert!(table.is_empty());
    // Deleting a mapping resets both ends of its tunnels.
    relaying(&mut table, &m, 7);
    actions(&mut table);
    table.mapping_removed(&m.id);
    let acts = actions(&mut table);
    assert!(acts.contains(&TunnelAction::Reset {
        endpoint: entry(7),
        reason: ResetReason::Cancel
    }));
    assert!(acts.contains(&TunnelAction::Reset {
        endpoint: target(70),
        reason: ResetReason::Cancel
    }));
    assert!(table.is_empty());
    table.check_invariants().unwrap();
}

#[test]
fn an_entry_that_finishes_before_the_target_stream_exists_is_not_lost() {
    let m = tcp_mapping();
    let mut table = TunnelTable::new(TunnelConfig::default());
    let id = table
        .request_open(Instant::ZERO, request(&m, 1), ctx(&m))
        .unwrap();
    actions(&mut table);
    table.endpoint_finished(entry(1));
    table.target_opened(id, 10);
    assert_eq!(
        actions(&mut table),
        vec![TunnelAction::Finish {
            endpoint: target(10)
        }]
    );
}

#[test]
fn random_event_orders_keep_the_table_consistent() {
    let m = tcp_mapping();
    for seed in 0..300 {
        let mut rng = Rng::seed_from_u64(seed);
        let mut table = TunnelTable::new(TunnelConfig {
            open_timeout: Duration::from_secs(1),
            max_tunnels: 8,
        });
        let mut now = Instant::ZERO;
        let mut next_stream = 1;
        for _ in 0..200 {
            let e = entry(1 + rng.below(10) as u32 * 2);
            let t = target(100 + rng.below(10) as u32);
            match rng.below(8) {
                0 => {
                    if let Some(id) = table.request_open(now, request(&m, next_stream), ctx(&m)) {
                        table.target_opened(id, 100 + rng.below(10) as u32);
                    }
                    next_stream += 2;
                }
                1 => table.target_result(t, Ok(())),
                2 => table.target_result(t, Err((OpenError::DialTimeout, String::new()))),
                3 => table.endpoint_finished(e),
                4 => table.endpoint_finished(t),
                5 => {
                    table.endpoint_reset(if rng.below(2) == 0 { e } else { t }, ResetReason::Cancel)
                }
                6 => table.session_closed(if rng.below(2) == 0 {
                    LISTEN_SESSION
                } else {
                    TARGET_SESSION
                }),
                _ => {
                    now = now + Duration::from_millis(rng.below(700));
                    table.handle_timeout(now);
                }
            }
            table
                .check_invariants()
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            while table.poll_action().is_some() {}
        }
    }
}

/// The open a peer node forwards: the entry was checked there, the target is served here.
fn forwarded(m: &Mapping, target: Option<pb::TargetAddr>, stream: u32) -> OpenRequest {
    OpenRequest {
        entry: Endpoint::Stream { session: 9, stream },
        from_client: None,
        via_peer: true,
        route_asked: false,
        open: pb::StreamOpen {
            mapping_id: m.id.as_str().into(),
            target,
            protocol: pb::Protocol::Tcp as i32,
            visitor_addr: "192.0.2.7:40000".into(),
        },
    }
}

fn opened_target(table: &mut TunnelTable) -> pb::TargetAddr {
    let Some(TunnelAction::OpenTarget { payload, .. }) = table.poll_action() else {
        panic!("expected OpenTarget");
    };
    decode_open(payload).unwrap().target.unwrap()
}

#[test]
fn forwarded_opens_serve_the_target_this_node_knows_for_every_entry_kind() {
    let asked = pb::TargetAddr {
        host: "db.internal".into(),
        port: 5432,
    };
    // A fixed target: this node's copy of the mapping decides, whatever the open carries.
    let fixed = tcp_mapping();
    let mut table = TunnelTable::new(TunnelConfig::default());
    table
        .request_open(
            Instant::ZERO,
            forwarded(&fixed, Some(asked.clone()), 2),
            ctx(&fixed),
        )
        .unwrap();
    assert_eq!(opened_target(&mut table).host, "10.0.0.5");
    // SOCKS5 (dynamic): the target the visitor asked for, checked again here.
    let socks = mapping(
        Entry::Socks5 {
            listen_client: LISTEN,
            listen_addr: "127.0.0.1:1080".into(),
        },
        Target::Dynamic,
        Protocol::Socks5,
    );
    table
        .request_open(
            Instant::ZERO,
            forwarded(&socks, Some(asked.clone()), 4),
            ctx(&socks),
        )
        .unwrap();
    assert_eq!(opened_target(&mut table), asked);
    let bad = pb::TargetAddr {
        host: "ok.example".into(),
        port: 70_000,
    };
    let again = forwarded(&socks, Some(bad), 6);
    assert_eq!(table.request_open(Instant::ZERO, again, ctx(&socks)), None);
    assert_eq!(refusal(&mut table), Some(OpenError::NotAuthorized));
    // Node ports and HTTP hosts are entries on the entry node; forwarded, they are served too.
    for entry in [
        Entry::NodePort {
            port: 20_000,
            bind: None,
        },
        Entry::HttpHost {
            host: "app.example.com".into(),
        },
    ] {
        let m = mapping(
            entry,
            Target::Fixed {
                host: "10.0.0.9".into(),
                port: 80,
            },
            Protocol::Tcp,
        );
        let mut table = TunnelTable::new(TunnelConfig::default());
        table
            .request_open(Instant::ZERO, forwarded(&m, None, 2), ctx(&m))
            .unwrap();
        assert_eq!(opened_target(&mut table).host, "10.0.0.9");
    }
}
