//! The brokers, each through its real transport: the in-process bus, and the real Redis and NATS
//! on this machine (skipped with a printed reason when absent, failing instead when
//! `TUNNOX_REQUIRE_SERVICES=1`). Every test uses its own channel prefix, so tests running in
//! parallel, or other runs against the same server, do not hear each other.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod services;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use services::{CutProxy, Service, service, unique_prefix};
use tunnox_core::broker::{Envelope, Gap, Missing, Origin, Topic};
use tunnox_core::control::NodeId;
use tunnox_core::rng::Rng;
use tunnox_core::session::BackoffConfig;
use tunnox_runtime_tokio::broker::{
    AnyBroker, Broker, BrokerConfig, BrokerError, BrokerEvent, BrokerKind, ConnectionState,
    MemoryBus, NatsBroker, RedisBroker, ResyncReason, Subscription,
};

/// Longest wait for anything a test expects to happen.
const PATIENCE: Duration = Duration::from_secs(10);

fn origin(name: &str) -> Origin {
    Origin {
        node: NodeId::parse(name).unwrap(),
        incarnation: 1,
    }
}

/// Fast reconnects and short timeouts, so the fault tests finish quickly.
fn config(kind: BrokerKind, channel_prefix: &str) -> BrokerConfig {
    BrokerConfig {
        kind,
        channel_prefix: channel_prefix.to_owned(),
        reconnect: BackoffConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(400),
            multiplier: 2.0,
            jitter: 0.2,
        },
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        ping_interval: Duration::from_secs(1),
        ..BrokerConfig::default()
    }
}

fn redis_url(addr: SocketAddr) -> BrokerKind {
    BrokerKind::Redis {
        url: format!("redis://{addr}"),
    }
}

fn nats_url(addr: SocketAddr) -> BrokerKind {
    BrokerKind::Nats {
        url: format!("nats://{addr}"),
    }
}

/// Where the brokers of a test meet.
#[derive(Debug, Clone, Copy)]
enum Transport {
    Memory,
    Redis(SocketAddr),
    Nats(SocketAddr),
}

/// One broker per node name on `transport`, all on one fresh channel prefix, each chosen by
/// its configuration.
async fn cluster(transport: Transport, names: &[&str]) -> Vec<AnyBroker> {
    let prefix = unique_prefix();
    let bus = MemoryBus::new(config(BrokerKind::Memory, &prefix));
    let mut brokers = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let kind = match transport {
            Transport::Memory => {
                brokers.push(AnyBroker::Memory(bus.broker(origin(name))));
                continue;
            }
            Transport::Redis(addr) => redis_url(addr),
            Transport::Nats(addr) => nats_url(addr),
        };
        let broker = AnyBroker::connect(
            config(kind, &prefix),
            origin(name),
            Rng::seed_from_u64(i as u64),
        )
        .await
        .unwrap();
        brokers.push(broker);
    }
    brokers
}

/// Brokers "a" and "b" on one fresh channel prefix, reaching the server at `a_addr` and
/// `b_addr` (one of them a [`CutProxy`], for a fault between that node and the server).
async fn pair(
    kind: fn(SocketAddr) -> BrokerKind,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
) -> (AnyBroker, AnyBroker) {
    let prefix = unique_prefix();
    let mut brokers = Vec::new();
    for (i, (name, addr)) in [("a", a_addr), ("b", b_addr)].into_iter().enumerate() {
        let broker = AnyBroker::connect(
            config(kind(addr), &prefix),
            origin(name),
            Rng::seed_from_u64(i as u64 + 1),
        )
        .await
        .unwrap();
        brokers.push(broker);
    }
    let b = brokers.pop().unwrap();
    (brokers.pop().unwrap(), b)
}

/// The next event, failing the test if none comes within [`PATIENCE`].
async fn next(sub: &mut Subscription) -> BrokerEvent {
    tokio::time::timeout(PATIENCE, sub.recv())
        .await
        .expect("no broker event in time")
        .expect("subscription ended")
}

/// The next event, which must be a message.
async fn next_message(sub: &mut Subscription) -> Envelope {
    match next(sub).await {
        BrokerEvent::Message(envelope) => envelope,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// The next `n` messages, as (origin, topic, seq, payload), in any order.
async fn messages(sub: &mut Subscription, n: usize) -> BTreeSet<(String, Topic, u64, Bytes)> {
    let mut got = BTreeSet::new();
    for _ in 0..n {
        let e = next_message(sub).await;
        got.insert((e.origin.node.to_string(), e.topic, e.seq, e.payload));
    }
    got
}

/// Fails if `sub` yields anything within `wait`.
async fn assert_quiet(sub: &mut Subscription, wait: Duration) {
    if let Ok(event) = tokio::time::timeout(wait, sub.recv()).await {
        panic!("expected nothing, got {event:?}");
    }
}

async fn wait_for_state(broker: &impl Broker, wanted: ConnectionState) {
    let mut state = broker.connection_state();
    tokio::time::timeout(PATIENCE, state.wait_for(|s| *s == wanted))
        .await
        .unwrap_or_else(|_| panic!("broker never became {wanted:?}"))
        .unwrap();
}

fn text(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Runs a scenario on the memory bus, Redis and NATS, as three tests.
macro_rules! on_every_transport {
    ($scenario:ident) => {
        mod $scenario {
            use super::*;

            #[tokio::test]
            async fn memory() {
                super::$scenario(Transport::Memory).await;
            }

            #[tokio::test]
            async fn redis() {
                let test = concat!(stringify!($scenario), "::redis");
                let Some(addr) = service(Service::Redis, test).await else {
                    return;
                };
                super::$scenario(Transport::Redis(addr)).await;
            }

            #[tokio::test]
            async fn nats() {
                let test = concat!(stringify!($scenario), "::nats");
                let Some(addr) = service(Service::Nats, test).await else {
                    return;
                };
                super::$scenario(Transport::Nats(addr)).await;
            }
        }
    };
}

// ---- scenarios on every transport --------------------------------------------------------------

/// Every subscription of a topic, on any node, gets every message of it, in order, once; a
/// subscription of another topic gets none of them.
async fn fan_out_reaches_every_subscriber(transport: Transport) {
    let nodes = cluster(transport, &["a", "b", "c"]).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut b_online = b.subscribe(&[Topic::ClientOnline]).await.unwrap();
    let mut b_both = b
        .subscribe(&[Topic::ClientOnline, Topic::ClientOffline])
        .await
        .unwrap();
    let mut c_online = c.subscribe(&[Topic::ClientOnline]).await.unwrap();
    let mut c_mappings = c.subscribe(&[Topic::MappingCreated]).await.unwrap();

    const N: u64 = 20;
    for i in 1..=N {
        let sent = a
            .publish(Topic::ClientOnline, text(&format!("client-{i}")))
            .await
            .unwrap();
        assert_eq!(sent.seq, i);
    }
    a.publish(Topic::MappingCreated, text("m-1")).await.unwrap();

    for sub in [&mut b_online, &mut b_both, &mut c_online] {
        for i in 1..=N {
            let e = next_message(sub).await;
            assert_eq!((e.topic, e.seq), (Topic::ClientOnline, i));
            assert_eq!(e.origin, *a.origin());
            assert_eq!(e.payload, text(&format!("client-{i}")));
        }
        assert_eq!(sub.counters().gaps, 0);
    }
    let m = next_message(&mut c_mappings).await;
    assert_eq!(
        (m.topic, m.seq, m.payload),
        (Topic::MappingCreated, 1, text("m-1"))
    );
    assert_quiet(&mut b_online, Duration::from_millis(200)).await;
    assert_quiet(&mut c_mappings, Duration::from_millis(50)).await;
}
on_every_transport!(fan_out_reaches_every_subscriber);

/// After `unsubscribe` a subscription gets nothing more, while another one on the same topic and
/// node goes on.
async fn unsubscribe_stops_delivery(transport: Transport) {
    let nodes = cluster(transport, &["a", "b"]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut stays = b.subscribe(&[Topic::NodeHeartbeat]).await.unwrap();
    let mut leaves = b.subscribe(&[Topic::NodeHeartbeat]).await.unwrap();
    a.publish(Topic::NodeHeartbeat, text("1")).await.unwrap();
    assert_eq!(next_message(&mut stays).await.seq, 1);
    assert_eq!(next_message(&mut leaves).await.seq, 1);

    leaves.unsubscribe();
    a.publish(Topic::NodeHeartbeat, text("2")).await.unwrap();
    assert_eq!(next_message(&mut stays).await.seq, 2);
    assert_eq!(
        leaves.recv().await,
        None,
        "an ended subscription yields nothing"
    );
}
on_every_transport!(unsubscribe_stops_delivery);

/// A node does not hear its own messages, except on `config.update`; copies of a message sent
/// again through the broker (by the origin or a relay) are dropped.
async fn own_messages_and_duplicates_are_filtered(transport: Transport) {
    let nodes = cluster(transport, &["a", "b"]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let both = [Topic::ClientOnline, Topic::ConfigUpdate];
    let mut at_a = a.subscribe(&both).await.unwrap();
    let mut at_b = b.subscribe(&both).await.unwrap();

    let online = a.publish(Topic::ClientOnline, text("c1")).await.unwrap();
    let v2 = a.publish(Topic::ConfigUpdate, text("v2")).await.unwrap();
    // a hears only its config.update; b hears both.
    assert_eq!(next_message(&mut at_a).await, v2);
    assert_eq!(next_message(&mut at_b).await, online);
    assert_eq!(next_message(&mut at_b).await, v2);

    // Duplicates on the wire: b relays a's client.online twice, a sends its config.update again.
    b.publish_envelope(&online).await.unwrap();
    b.publish_envelope(&online).await.unwrap();
    a.publish_envelope(&v2).await.unwrap();
    // Fresh messages after them on the same connections, to know when the copies are through.
    a.publish(Topic::ClientOnline, text("c2")).await.unwrap();
    a.publish(Topic::ConfigUpdate, text("v3")).await.unwrap();
    b.publish(Topic::ConfigUpdate, text("b1")).await.unwrap();

    let key = |node: &str, topic, seq, payload: &str| (node.to_owned(), topic, seq, text(payload));
    assert_eq!(
        messages(&mut at_a, 2).await,
        BTreeSet::from([
            key("a", Topic::ConfigUpdate, 2, "v3"),
            key("b", Topic::ConfigUpdate, 1, "b1"),
        ])
    );
    assert_eq!(
        messages(&mut at_b, 3).await,
        BTreeSet::from([
            key("a", Topic::ClientOnline, 2, "c2"),
            key("a", Topic::ConfigUpdate, 2, "v3"),
            key("b", Topic::ConfigUpdate, 1, "b1"),
        ])
    );
    assert_quiet(&mut at_a, Duration::from_millis(200)).await;
    assert_quiet(&mut at_b, Duration::from_millis(50)).await;

    let at_a = at_a.counters();
    // Own: client.online c1, its two relayed copies, c2. Duplicate: the second v2.
    assert_eq!(
        (at_a.self_filtered, at_a.duplicate, at_a.accepted),
        (4, 1, 3)
    );
    let at_b = at_b.counters();
    assert_eq!(
        (at_b.self_filtered, at_b.duplicate, at_b.accepted),
        (0, 3, 5)
    );
    assert_eq!(at_b.gaps, 0);
}
on_every_transport!(own_messages_and_duplicates_are_filtered);

/// Dropping a networked broker ends its subscriptions and reports it closed.
async fn dropping_the_broker_ends_its_subscriptions(transport: Transport) {
    let mut nodes = cluster(transport, &["a"]).await;
    let a = nodes.pop().unwrap();
    let mut sub = a.subscribe(&[Topic::NodeShutdown]).await.unwrap();
    let mut state = a.connection_state();
    drop(a);
    let ended = tokio::time::timeout(PATIENCE, sub.recv()).await.unwrap();
    assert_eq!(ended, None);
    tokio::time::timeout(PATIENCE, state.wait_for(|s| *s == ConnectionState::Closed))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn redis_dropping_the_broker_ends_its_subscriptions() {
    let test = "redis_dropping_the_broker_ends_its_subscriptions";
    let Some(addr) = service(Service::Redis, test).await else {
        return;
    };
    dropping_the_broker_ends_its_subscriptions(Transport::Redis(addr)).await;
}

#[tokio::test]
async fn nats_dropping_the_broker_ends_its_subscriptions() {
    let test = "nats_dropping_the_broker_ends_its_subscriptions";
    let Some(addr) = service(Service::Nats, test).await else {
        return;
    };
    dropping_the_broker_ends_its_subscriptions(Transport::Nats(addr)).await;
}

// ---- the in-process bus ------------------------------------------------------------------------

/// A subscription read too slowly loses what does not fit its buffer, is told so, and the inbox
/// reports the lost sequence numbers when the origin publishes again.
#[tokio::test]
async fn memory_slow_subscriber_is_told_it_lagged() {
    let bus = MemoryBus::new(BrokerConfig {
        subscription_capacity: 4,
        ..BrokerConfig::default()
    });
    let (a, b) = (bus.broker(origin("a")), bus.broker(origin("b")));
    let mut sub = b.subscribe(&[Topic::ClientOffline]).await.unwrap();
    for _ in 0..10 {
        a.publish(Topic::ClientOffline, Bytes::new()).await.unwrap();
    }
    assert_eq!(
        next(&mut sub).await,
        BrokerEvent::Resync(ResyncReason::Lagged { dropped: 6 })
    );
    for seq in 1..=4 {
        assert_eq!(next_message(&mut sub).await.seq, seq);
    }
    a.publish(Topic::ClientOffline, Bytes::new()).await.unwrap();
    assert_eq!(
        next(&mut sub).await,
        BrokerEvent::Gap(Gap {
            origin: origin("a"),
            topic: Topic::ClientOffline,
            missing: Missing::Seqs { first: 5, last: 10 },
        })
    );
    assert_eq!(next_message(&mut sub).await.seq, 11);
}

/// The memory bus is always connected, and a payload over the limit is refused before sending.
#[tokio::test]
async fn memory_refuses_an_oversized_payload() {
    let a = MemoryBus::new(BrokerConfig::default()).broker(origin("a"));
    assert_eq!(*a.connection_state().borrow(), ConnectionState::Connected);
    let big = Bytes::from(vec![0; tunnox_core::broker::PAYLOAD_BYTES_MAX + 1]);
    assert!(matches!(
        a.publish(Topic::ConfigUpdate, big).await,
        Err(BrokerError::Publish(_))
    ));
    assert_eq!(a.stats().published, 0);
}

// ---- Redis -------------------------------------------------------------------------------------

async fn redis_admin(addr: SocketAddr) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{addr}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Redis closes the subscriber connection (`CLIENT KILL`): the broker reconnects, subscribes
/// again, tells the subscription to resync, and delivery goes on.
#[tokio::test]
async fn redis_subscriber_reconnects_after_client_kill() {
    let test = "redis_subscriber_reconnects_after_client_kill";
    let Some(addr) = service(Service::Redis, test).await else {
        return;
    };
    let prefix = unique_prefix();
    let a = RedisBroker::connect(
        config(redis_url(addr), &prefix),
        origin("a"),
        Rng::seed_from_u64(1),
    )
    .await
    .unwrap();
    let b = RedisBroker::connect(
        config(redis_url(addr), &prefix),
        origin("b"),
        Rng::seed_from_u64(2),
    )
    .await
    .unwrap();
    let mut sub = b.subscribe(&[Topic::ClientOffline]).await.unwrap();
    a.publish(Topic::ClientOffline, text("1")).await.unwrap();
    assert_eq!(next_message(&mut sub).await.seq, 1);

    let victim = b.subscriber_local_addr().unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ADDR")
        .arg(victim.to_string())
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut redis_admin(addr).await)
        .await
        .unwrap();
    assert_eq!(killed, 1, "exactly the subscriber connection is killed");

    assert_eq!(
        next(&mut sub).await,
        BrokerEvent::Resync(ResyncReason::Reconnected)
    );
    assert_eq!(*b.connection_state().borrow(), ConnectionState::Connected);
    assert_ne!(b.subscriber_local_addr(), Some(victim), "a new connection");
    a.publish(Topic::ClientOffline, text("2")).await.unwrap();
    let e = next_message(&mut sub).await;
    assert_eq!((e.seq, e.payload), (2, text("2")));
    assert_eq!(b.stats().reconnects, 1);
    assert_eq!(sub.counters().gaps, 0);
}

/// Messages published while a subscriber's link to Redis is cut are lost (pub/sub is at most
/// once); after the reconnect the subscription is told to resync, and the first message from the
/// origin afterwards reveals exactly the lost sequence numbers as a gap.
#[tokio::test]
async fn redis_messages_published_during_a_cut_are_lost_and_reported() {
    let test = "redis_messages_published_during_a_cut_are_lost_and_reported";
    let Some(addr) = service(Service::Redis, test).await else {
        return;
    };
    let proxy = CutProxy::start(addr).await;
    let (a, b) = pair(redis_url, addr, proxy.addr()).await;
    let mut sub = b.subscribe(&[Topic::ClientOnline]).await.unwrap();
    a.publish(Topic::ClientOnline, text("1")).await.unwrap();
    assert_eq!(next_message(&mut sub).await.seq, 1);

    proxy.cut();
    wait_for_state(&b, ConnectionState::Reconnecting).await;
    for i in 2..=4 {
        a.publish(Topic::ClientOnline, text(&i.to_string()))
            .await
            .unwrap();
    }
    let attempts_before = proxy.accepted();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        proxy.accepted() > attempts_before,
        "b keeps trying to reconnect"
    );
    proxy.heal();

    assert_eq!(
        next(&mut sub).await,
        BrokerEvent::Resync(ResyncReason::Reconnected)
    );
    a.publish(Topic::ClientOnline, text("5")).await.unwrap();
    assert_eq!(
        next(&mut sub).await,
        BrokerEvent::Gap(Gap {
            origin: origin("a"),
            topic: Topic::ClientOnline,
            missing: Missing::Seqs { first: 2, last: 4 },
        })
    );
    let e = next_message(&mut sub).await;
    assert_eq!((e.seq, e.payload), (5, text("5")));
    let c = sub.counters();
    assert_eq!((c.gaps, c.missing_seqs, c.accepted), (1, 3, 2));
}

/// A publish while the publisher's link is cut fails (the message is lost, its sequence number
/// used up); the next publish reconnects, and receivers see the lost one as a gap.
#[tokio::test]
async fn redis_publish_during_a_cut_fails_and_receivers_see_the_gap() {
    let test = "redis_publish_during_a_cut_fails_and_receivers_see_the_gap";
    let Some(addr) = service(Service::Redis, test).await else {
        return;
    };
    let proxy = CutProxy::start(addr).await;
    let (a, b) = pair(redis_url, proxy.addr(), addr).await;
    let mut sub = b.subscribe(&[Topic::MappingDeleted]).await.unwrap();
    a.publish(Topic::MappingDeleted, text("1")).await.unwrap();
    assert_eq!(next_message(&mut sub).await.seq, 1);

    proxy.cut();
    let failed = a.publish(Topic::MappingDeleted, text("2")).await;
    assert!(
        matches!(
            failed,
            Err(BrokerError::Unavailable(_) | BrokerError::Timeout(_))
        ),
        "{failed:?}"
    );
    assert_eq!(a.stats().publish_failed, 1);
    proxy.heal();
    let sent = a.publish(Topic::MappingDeleted, text("3")).await.unwrap();
    assert_eq!(sent.seq, 3);

    assert_eq!(
        next(&mut sub).await,
        BrokerEvent::Gap(Gap {
            origin: origin("a"),
            topic: Topic::MappingDeleted,
            missing: Missing::Seqs { first: 2, last: 2 },
        })
    );
    assert_eq!(next_message(&mut sub).await.seq, 3);
}

/// When the last subscription of a topic ends, the broker unsubscribes its channel at Redis.
#[tokio::test]
async fn redis_last_unsubscribe_releases_the_channel() {
    let test = "redis_last_unsubscribe_releases_the_channel";
    let Some(addr) = service(Service::Redis, test).await else {
        return;
    };
    let config = config(redis_url(addr), &unique_prefix());
    let channel = config.channel(Topic::NodeShutdown);
    let b = RedisBroker::connect(config, origin("b"), Rng::seed_from_u64(2))
        .await
        .unwrap();
    let mut admin = redis_admin(addr).await;
    let mut numsub = async || -> i64 {
        let reply: (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query_async(&mut admin)
            .await
            .unwrap();
        reply.1
    };
    assert_eq!(numsub().await, 0);
    let first = b.subscribe(&[Topic::NodeShutdown]).await.unwrap();
    let second = b.subscribe(&[Topic::NodeShutdown]).await.unwrap();
    assert_eq!(numsub().await, 1, "one connection per broker");
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(numsub().await, 1, "still wanted by the second subscription");
    drop(second);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while numsub().await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "channel never released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Redis that cannot be reached is a clear error at connect, not a hang.
#[tokio::test]
async fn redis_unreachable_at_connect_is_an_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap(); // bound, then dropped: nothing listens there
    let result = RedisBroker::connect(
        config(redis_url(closed), &unique_prefix()),
        origin("a"),
        Rng::seed_from_u64(1),
    )
    .await;
    assert!(
        matches!(result, Err(BrokerError::Connect { .. })),
        "{result:?}"
    );
}

// ---- NATS --------------------------------------------------------------------------------------

/// Publishes a probe on `topic` every 100 ms until `sub` yields a message, and returns the events
/// seen up to and including it (a reconnected NATS subscription needs a moment to be back at the
/// server).
async fn probe_until_message(
    publisher: &impl Broker,
    sub: &mut Subscription,
    topic: Topic,
) -> Vec<BrokerEvent> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut events = Vec::new();
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no message after reconnect"
        );
        publisher.publish(topic, text("probe")).await.unwrap();
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(100), sub.recv()).await
        {
            let done = matches!(event, BrokerEvent::Message(_));
            events.push(event);
            if done {
                return events;
            }
        }
    }
}

/// The NATS client drops its connection and reconnects: subscriptions survive, are told to
/// resync, and delivery goes on.
#[tokio::test]
async fn nats_subscriber_reconnects_after_a_forced_reconnect() {
    let test = "nats_subscriber_reconnects_after_a_forced_reconnect";
    let Some(addr) = service(Service::Nats, test).await else {
        return;
    };
    let prefix = unique_prefix();
    let a = NatsBroker::connect(
        config(nats_url(addr), &prefix),
        origin("a"),
        Rng::seed_from_u64(1),
    )
    .await
    .unwrap();
    let b = NatsBroker::connect(
        config(nats_url(addr), &prefix),
        origin("b"),
        Rng::seed_from_u64(2),
    )
    .await
    .unwrap();
    let mut sub = b.subscribe(&[Topic::BridgeRequest]).await.unwrap();
    a.publish(Topic::BridgeRequest, text("1")).await.unwrap();
    assert_eq!(next_message(&mut sub).await.seq, 1);

    b.force_reconnect().await.unwrap();
    assert_eq!(
        next(&mut sub).await,
        BrokerEvent::Resync(ResyncReason::Reconnected)
    );
    let events = probe_until_message(&a, &mut sub, Topic::BridgeRequest).await;
    let Some(BrokerEvent::Message(e)) = events.last() else {
        unreachable!()
    };
    assert!(e.seq >= 2);
    assert!(b.stats().reconnects >= 1);
    assert_eq!(*b.connection_state().borrow(), ConnectionState::Connected);
}

/// Messages published while a subscriber's link to NATS is cut are lost (core NATS is at most
/// once); after the reconnect the subscription is told to resync, and the gap is reported before
/// the first message that gets through.
#[tokio::test]
async fn nats_messages_published_during_a_cut_are_lost_and_reported() {
    let test = "nats_messages_published_during_a_cut_are_lost_and_reported";
    let Some(addr) = service(Service::Nats, test).await else {
        return;
    };
    let proxy = CutProxy::start(addr).await;
    let (a, b) = pair(nats_url, addr, proxy.addr()).await;
    let mut sub = b.subscribe(&[Topic::ClientOnline]).await.unwrap();
    a.publish(Topic::ClientOnline, text("1")).await.unwrap();
    assert_eq!(next_message(&mut sub).await.seq, 1);

    proxy.cut();
    wait_for_state(&b, ConnectionState::Reconnecting).await;
    for i in 2..=4 {
        a.publish(Topic::ClientOnline, text(&i.to_string()))
            .await
            .unwrap();
    }
    // Long enough for a's client to flush them to the server, which has no subscriber for them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.heal();

    assert_eq!(
        next(&mut sub).await,
        BrokerEvent::Resync(ResyncReason::Reconnected)
    );
    let events = probe_until_message(&a, &mut sub, Topic::ClientOnline).await;
    let [BrokerEvent::Gap(gap), BrokerEvent::Message(first_through)] = events.as_slice() else {
        panic!("expected a gap, then the message: {events:?}");
    };
    assert_eq!(
        (&gap.origin, gap.topic),
        (&origin("a"), Topic::ClientOnline)
    );
    let Missing::Seqs { first, last } = gap.missing else {
        panic!("{gap:?}");
    };
    assert_eq!(
        first, 2,
        "the gap starts right after the last message received"
    );
    assert!(last >= 4, "the three messages of the cut are in the gap");
    assert_eq!(first_through.seq, last + 1);
}

/// A NATS server that cannot be reached is a clear error at connect, not a hang.
#[tokio::test]
async fn nats_unreachable_at_connect_is_an_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let result = NatsBroker::connect(
        config(nats_url(closed), &unique_prefix()),
        origin("a"),
        Rng::seed_from_u64(1),
    )
    .await;
    assert!(
        matches!(result, Err(BrokerError::Connect { .. })),
        "{result:?}"
    );
}

/// The value of the metric line starting with `name` (labels included), if present.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn redis_publishes_receipts_and_malformed_messages_reach_the_metrics() {
    use tunnox_runtime_tokio::metrics::NodeMetrics;
    let test = "redis_publishes_receipts_and_malformed_messages_reach_the_metrics";
    let Some(addr) = service(Service::Redis, test).await else {
        return;
    };
    let prefix = unique_prefix();
    let mut brokers = Vec::new();
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        let broker = AnyBroker::connect(
            config(redis_url(addr), &prefix),
            origin(name),
            Rng::seed_from_u64(i as u64 + 1),
        )
        .await
        .unwrap();
        brokers.push(broker);
    }
    let (a_metrics, b_metrics) = (NodeMetrics::new(), NodeMetrics::new());
    brokers[0].report_to(a_metrics.broker().clone());
    brokers[1].report_to(b_metrics.broker().clone());
    let mut sub = brokers[1].subscribe(&[Topic::ConfigUpdate]).await.unwrap();
    for i in 0..3u8 {
        brokers[0]
            .publish(Topic::ConfigUpdate, Bytes::from(vec![i]))
            .await
            .unwrap();
    }
    assert_eq!(messages(&mut sub, 3).await.len(), 3);
    // Garbage on the channel, straight through Redis: dropped and counted.
    let client = redis::Client::open(format!("redis://{addr}")).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let channel = format!("{prefix}{}", Topic::ConfigUpdate.name());
    let _: i64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(&b"not an envelope"[..])
        .query_async(&mut raw)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let errors = "tunnox_broker_errors_total{kind=\"malformed\"}";
    while metric(&b_metrics.encode(), errors).is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "malformed not counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let published = "tunnox_broker_published_total{topic=\"config.update\"}";
    let received = "tunnox_broker_received_total{topic=\"config.update\"}";
    let a_text = a_metrics.encode();
    let b_text = b_metrics.encode();
    assert_eq!(metric(&a_text, published), Some(3.0), "{a_text}");
    assert_eq!(metric(&b_text, received), Some(3.0), "{b_text}");
    assert_eq!(metric(&b_text, errors), Some(1.0), "{b_text}");
    assert_eq!(metric(&a_text, "tunnox_broker_connected"), Some(1.0));
    assert_eq!(metric(&b_text, published), None, "b published nothing");
}
