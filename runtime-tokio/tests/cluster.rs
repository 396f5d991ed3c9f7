//! The cluster coordinator against the real Redis: shared state written and loaded, membership
//! with leases, routes held only by their owner, and a node that missed `config.update`
//! messages catching up from storage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod services;

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

    // Routes: a claim wins; the old owner can neither renew nor release it.
    let c = ClientId(42);
    let long = Duration::from_secs(30);
    s.claim_route(c, &node("n1"), long).await.unwrap();
    assert_eq!(s.route(c).await.unwrap(), Some(node("n1")));
    s.claim_route(c, &node("n2"), long).await.unwrap();
    assert!(
        !s.hold_route(c, &node("n1"), long).await.unwrap(),
        "n1 lost it"
    );
    s.release_route(c, &node("n1")).await.unwrap();
    assert_eq!(
        s.route(c).await.unwrap(),
        Some(node("n2")),
        "not released by n1"
    );
    assert!(s.hold_route(c, &node("n2"), lease).await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        s.route(c).await.unwrap(),
        None,
        "an unrenewed route expires"
    );
    s.claim_route(c, &node("n2"), long).await.unwrap();
    s.release_route(c, &node("n2")).await.unwrap();
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
