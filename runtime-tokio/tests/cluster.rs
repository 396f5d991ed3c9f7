//! The cluster coordinator against the real Redis: shared state written and loaded, membership
//! with leases, routes held only by their owner, and a node that missed `config.update`
//! messages catching up from storage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod services;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tunnox_core::broker::{Envelope, Origin, Topic};
use tunnox_core::control::{AuthKey, ClientId, ClientRecord, NodeId, UnixMillis, User, UserId};
use tunnox_core::node::StateChange;
use tunnox_runtime_tokio::broker::{AnyBroker, Broker, BrokerConfig, MemoryBus};
use tunnox_runtime_tokio::cluster::{ClusterSettings, ClusterStore, Coordinator};
use tunnox_runtime_tokio::node::NodeCommand;
use tunnox_runtime_tokio::storage::RedisConfig;

use services::{redis_url, remove_prefix, unique_key_prefix};

const PATIENCE: Duration = Duration::from_secs(10);

fn node(name: &str) -> NodeId {
    NodeId::parse(name).unwrap()
}

fn store(url: &str, prefix: &str) -> ClusterStore {
    let mut config = RedisConfig::new(url);
    config.key_prefix = prefix.to_owned();
    ClusterStore::open(&config).unwrap()
}

fn settings(name: &str, lease: Duration) -> ClusterSettings {
    ClusterSettings {
        node_id: node(name),
        bridge_addr: format!("{name}.example:7100"),
        lease,
    }
}

fn a_user(id: u64) -> StateChange {
    StateChange::PutUser(User {
        id: UserId(id),
        name: format!("user{id}"),
        quota: Default::default(),
        created_at: UnixMillis(1),
        disabled: false,
    })
}

#[tokio::test]
async fn state_membership_and_routes_live_in_redis_with_leases_and_owners() {
    let Some(url) = redis_url("cluster_store") else {
        return;
    };
    let prefix = unique_key_prefix("cluster_store");
    let s = store(&url, &prefix);

    // Shared state: written change by change, loaded whole; a delete removes.
    let client = ClientRecord::new_anonymous(ClientId(7), AuthKey::derive("k"), UnixMillis(1));
    s.write_change(&a_user(1)).await.unwrap();
    s.write_change(&StateChange::PutClient(client.clone()))
        .await
        .unwrap();
    let state = s.load_state().await.unwrap();
    assert_eq!(state.users.len(), 1);
    assert_eq!(state.clients.get(&ClientId(7)), Some(&client));

    // Membership: a record counts while its lease holds.
    let lease = Duration::from_millis(300);
    s.heartbeat(&settings("n1", lease)).await.unwrap();
    s.heartbeat(&settings("n2", Duration::from_secs(30)))
        .await
        .unwrap();
    let members = s.live_members().await.unwrap();
    assert_eq!(
        members.get(&node("n1")).map(String::as_str),
        Some("n1.example:7100")
    );
    assert!(members.contains_key(&node("n2")));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let members = s.live_members().await.unwrap();
    assert!(!members.contains_key(&node("n1")), "n1's lease ran out");
    s.leave(&node("n2")).await.unwrap();
    assert!(s.live_members().await.unwrap().is_empty());

    // Routes: every claim raises the epoch and wins; the older claim can neither renew nor
    // release; epochs never go back, not even after a route expired.
    let c = ClientId(42);
    let long = Duration::from_secs(30);
    let first = s.claim_route(c, &node("n1"), long).await.unwrap();
    assert_eq!(first.epoch, 1);
    assert_eq!(
        s.route(c).await.unwrap().map(|r| (r.node, r.epoch)),
        Some((node("n1"), 1))
    );
    let second = s.claim_route(c, &node("n2"), long).await.unwrap();
    assert_eq!(second.epoch, 2);
    assert!(
        !s.renew_route(&first, long).await.unwrap(),
        "n1's claim is superseded"
    );
    s.release_route(&first).await.unwrap();
    assert_eq!(
        s.route(c).await.unwrap().map(|r| r.node),
        Some(node("n2")),
        "not released by n1"
    );
    assert!(s.renew_route(&second, lease).await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        s.route(c).await.unwrap(),
        None,
        "an unrenewed route expires"
    );
    // The owner renewing late writes it again (no newer claim was made) ...
    assert!(s.renew_route(&second, long).await.unwrap());
    let read = s.route(c).await.unwrap().unwrap();
    assert_eq!((read.node.clone(), read.epoch), (node("n2"), 2));
    assert!(
        read.lease_expires_at > first.lease_expires_at,
        "with the new lease"
    );
    // ... and the next claim still goes up.
    let third = s.claim_route(c, &node("n1"), long).await.unwrap();
    assert_eq!(third.epoch, 3);
    assert!(!s.renew_route(&second, long).await.unwrap());
    s.release_route(&third).await.unwrap();
    assert_eq!(s.route(c).await.unwrap(), None);
    remove_prefix(&url, &prefix).await;
}

#[tokio::test]
async fn a_gap_in_config_updates_makes_the_node_adopt_the_shared_state() {
    let Some(url) = redis_url("cluster_gap") else {
        return;
    };
    let prefix = unique_key_prefix("cluster_gap");
    let s = store(&url, &prefix);
    let bus = MemoryBus::new(BrokerConfig::default());
    let me = Origin {
        node: node("n2"),
        incarnation: 1,
    };
    let other = bus.broker(Origin {
        node: node("n1"),
        incarnation: 1,
    });
    let (commands, mut received) = mpsc::channel(16);
    let coordinator = Coordinator::new_detached(
        settings("n2", Duration::from_secs(30)),
        s.clone(),
        AnyBroker::Memory(bus.broker(me)),
    )
    .attach(commands);
    let (_stop, stopped) = tokio::sync::oneshot::channel();
    let (_events_tx, events) = mpsc::channel(16);
    tokio::spawn(coordinator.run(events, stopped));

    // n1 made two changes; message 1 arrives, message 2 is lost, message 3 arrives.
    s.write_change(&a_user(1)).await.unwrap();
    s.write_change(&a_user(2)).await.unwrap();
    s.write_change(&a_user(3)).await.unwrap();
    let envelope = |seq: u64, user: u64| Envelope {
        topic: Topic::ConfigUpdate,
        origin: other.origin().clone(),
        seq,
        time: UnixMillis(1),
        payload: Bytes::from(serde_json::to_vec(&a_user(user)).unwrap()),
    };
    // Wait until the coordinator has subscribed (its first tick reports membership).
    tokio::time::sleep(Duration::from_millis(200)).await;
    other.publish_envelope(&envelope(1, 1)).await.unwrap();
    other.publish_envelope(&envelope(3, 3)).await.unwrap();

    let mut applied = Vec::new();
    let adopted = loop {
        let command = tokio::time::timeout(PATIENCE, received.recv())
            .await
            .expect("the coordinator answered")
            .expect("channel open");
        match command {
            NodeCommand::ApplyRemote(change) => applied.push(*change),
            NodeCommand::AdoptState(state) => break state,
            _ => {}
        }
    };
    assert_eq!(
        applied,
        vec![a_user(1)],
        "message 1 applied before the gap was seen"
    );
    assert_eq!(
        adopted.users.len(),
        3,
        "the lost change (user 2) is in the adopted state"
    );
    remove_prefix(&url, &prefix).await;
}

/// A coordinator for node `name` on `bus` and the store: its event sender and the node commands
/// it sends.
fn coordinator(
    name: &str,
    bus: &MemoryBus,
    store: &ClusterStore,
) -> (
    mpsc::Sender<tunnox_runtime_tokio::node::ClusterEvent>,
    mpsc::Receiver<NodeCommand>,
    tokio::sync::oneshot::Sender<()>,
) {
    let broker = AnyBroker::Memory(bus.broker(Origin {
        node: node(name),
        incarnation: 1,
    }));
    let (commands, received) = mpsc::channel(64);
    let (events_tx, events) = mpsc::channel(64);
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let c = Coordinator::new_detached(
        settings(name, Duration::from_secs(30)),
        store.clone(),
        broker,
    )
    .attach(commands);
    tokio::spawn(c.run(events, stopped));
    (events_tx, received, stop)
}

/// The commands received until `until` says stop (within the patience).
async fn commands_until(
    received: &mut mpsc::Receiver<NodeCommand>,
    until: impl Fn(&NodeCommand) -> bool,
) -> Vec<NodeCommand> {
    let mut seen = Vec::new();
    loop {
        let command = tokio::time::timeout(PATIENCE, received.recv())
            .await
            .expect("the expected command came")
            .expect("channel open");
        let done = until(&command);
        seen.push(command);
        if done {
            return seen;
        }
    }
}

#[tokio::test]
async fn a_newer_claim_replaces_the_old_session_and_a_late_offline_does_not_undo_it() {
    use tunnox_core::wire::GoAwayReason;
    use tunnox_runtime_tokio::node::ClusterEvent;
    let Some(url) = redis_url("cluster_claims") else {
        return;
    };
    let prefix = unique_key_prefix("cluster_claims");
    let s = store(&url, &prefix);
    let bus = MemoryBus::new(BrokerConfig::default());
    let (n1, mut n1_commands, _s1) = coordinator("n1", &bus, &s);
    let (n2, _n2_commands, _s2) = coordinator("n2", &bus, &s);
    let (_n3, mut n3_commands, _s3) = coordinator("n3", &bus, &s);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = ClientId(5);
    let route_is = |want: Option<&'static str>| {
        move |c: &NodeCommand| {
            matches!(c, NodeCommand::SetRoute { client: ClientId(5), node: n }
                if n.as_ref().map(NodeId::as_str) == want)
        }
    };

    // The client's session is on n1; n3 learns it.
    n1.send(ClusterEvent::ClientOnline(client)).await.unwrap();
    commands_until(&mut n3_commands, route_is(Some("n1"))).await;
    // It reconnects to n2: n1 must drop its old session as replaced, n3 follows.
    n2.send(ClusterEvent::ClientOnline(client)).await.unwrap();
    commands_until(&mut n3_commands, route_is(Some("n2"))).await;
    let at_n1 = commands_until(&mut n1_commands, |c| {
        matches!(c, NodeCommand::DisconnectClient { .. })
    })
    .await;
    assert!(matches!(
        at_n1.last(),
        Some(NodeCommand::DisconnectClient {
            client: ClientId(5),
            reason: GoAwayReason::Replaced
        })
    ));
    // The old session at n1 then ends: it no longer owns a claim, so nothing it announces may
    // erase the newer route (and an offline of an older epoch would be ignored: RouteCache).
    n1.send(ClusterEvent::ClientOffline(client)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(command) = n3_commands.try_recv() {
        assert!(
            !route_is(None)(&command),
            "a stale offline erased the route at n3"
        );
    }
    assert_eq!(
        s.route(client).await.unwrap().map(|r| r.node),
        Some(node("n2"))
    );
    remove_prefix(&url, &prefix).await;
}

#[tokio::test]
async fn a_kick_issued_on_another_node_reaches_the_node_holding_the_client() {
    use tunnox_core::wire::GoAwayReason;
    use tunnox_runtime_tokio::node::ClusterEvent;
    let Some(url) = redis_url("cluster_kick") else {
        return;
    };
    let prefix = unique_key_prefix("cluster_kick");
    let s = store(&url, &prefix);
    let bus = MemoryBus::new(BrokerConfig::default());
    let (n1, _n1_commands, _s1) = coordinator("n1", &bus, &s);
    let (_n2, mut n2_commands, _s2) = coordinator("n2", &bus, &s);
    tokio::time::sleep(Duration::from_millis(200)).await;
    n1.send(ClusterEvent::Disconnect(ClientId(9)))
        .await
        .unwrap();
    let seen = commands_until(&mut n2_commands, |c| {
        matches!(c, NodeCommand::DisconnectClient { .. })
    })
    .await;
    assert!(matches!(
        seen.last(),
        Some(NodeCommand::DisconnectClient {
            client: ClientId(9),
            reason: GoAwayReason::Kicked
        })
    ));
    remove_prefix(&url, &prefix).await;
}

#[tokio::test]
async fn a_change_storage_did_not_take_is_retried_and_published_only_once_written() {
    use tunnox_core::broker::Topic;
    use tunnox_runtime_tokio::broker::BrokerEvent;
    use tunnox_runtime_tokio::node::ClusterEvent;
    let Some(url) = redis_url("cluster_retry") else {
        return;
    };
    let prefix = unique_key_prefix("cluster_retry");
    let redis_addr: SocketAddr = url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let proxy = services::CutProxy::start(redis_addr).await;
    // The coordinator reaches Redis through the proxy, with a short lease so it ticks often.
    let cut_store = store(&format!("redis://{}", proxy.addr()), &prefix);
    let direct = store(&url, &prefix);
    let bus = MemoryBus::new(BrokerConfig::default());
    let watcher = bus.broker(Origin {
        node: node("n9"),
        incarnation: 1,
    });
    let mut updates = watcher.subscribe(&[Topic::ConfigUpdate]).await.unwrap();
    let (commands, _received) = mpsc::channel(64);
    let c = Coordinator::new_detached(
        settings("n1", Duration::from_millis(600)),
        cut_store,
        AnyBroker::Memory(bus.broker(Origin {
            node: node("n1"),
            incarnation: 1,
        })),
    )
    .attach(commands);
    let (events, events_rx) = mpsc::channel(16);
    let (_stop, stopped) = tokio::sync::oneshot::channel();
    tokio::spawn(c.run(events_rx, stopped));

    proxy.cut();
    events
        .send(ClusterEvent::Persisted(a_user(1)))
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_millis(1500), updates.recv()).await;
    assert!(
        early.is_err(),
        "published although storage did not take it: {early:?}"
    );
    assert!(direct.load_state().await.unwrap().users.is_empty());

    proxy.heal();
    let published = tokio::time::timeout(PATIENCE, updates.recv())
        .await
        .expect("published once written")
        .unwrap();
    assert!(matches!(published, BrokerEvent::Message(e) if e.topic == Topic::ConfigUpdate));
    assert_eq!(
        direct.load_state().await.unwrap().users.len(),
        1,
        "written on retry"
    );
    remove_prefix(&url, &prefix).await;
}
