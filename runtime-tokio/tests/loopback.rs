//! A real node, two real agents and an echo service on loopback TCP: client-port and node-port
//! mappings carry many concurrent connections byte-exact, and half-close works.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{create_client, echo_server, free_port, many_connections, round_trip, try_round_trip};

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tunnox_core::agent::{Agent, AgentConfig, AgentOutput};
use tunnox_core::control::{ClientId, ClientSecret, Entry, Mapping, MappingId};
use tunnox_core::node::{ControlState, Node, NodeConfig};
use tunnox_core::rng::Rng;
use tunnox_core::session::ClientIdentity;
use tunnox_runtime_tokio::agent::{AgentDriver, spawn_agent};
use tunnox_runtime_tokio::clock::{Clock, wall_now};
use tunnox_runtime_tokio::node::{self, NodeCommand, NodeDriver, spawn_node};

struct Setup {
    node: mpsc::Sender<NodeCommand>,
    node_addr: SocketAddr,
    listen_client: ClientId,
    target_client: ClientId,
    echo: SocketAddr,
}

async fn start_agent(
    node_addr: SocketAddr,
    id: ClientId,
    secret: &ClientSecret,
    seed: u64,
) -> mpsc::Receiver<AgentOutput> {
    let clock = Clock::new();
    let config = AgentConfig::new(
        ClientIdentity::Login {
            client_id: id.0,
            key: secret.auth_key(),
        },
        1,
    );
    let agent = Agent::new(clock.now(), config, Rng::seed_from_u64(seed));
    let (notices_tx, mut notices) = mpsc::channel(64);
    let (_commands, _task) =
        spawn_agent(AgentDriver::new(agent, clock, vec![node_addr], notices_tx));
    // Keep the command sender alive for the test's duration.
    std::mem::forget(_commands);
    loop {
        match tokio::time::timeout(Duration::from_secs(5), notices.recv())
            .await
            .unwrap()
        {
            Some(AgentOutput::Established { .. }) => return notices,
            Some(_) => {}
            None => panic!("agent ended"),
        }
    }
}

async fn setup() -> Setup {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node_addr = listener.local_addr().unwrap();
    let clock = Clock::new();
    let node = Node::new(
        clock.now(),
        wall_now(),
        NodeConfig::new("node-1"),
        ControlState::default(),
        Rng::seed_from_u64(1),
    );
    let (node_tx, _task) = spawn_node(NodeDriver::new(node, clock, None, "127.0.0.1"), listener);
    let (a, secret_a) = create_client(&node_tx, "listen").await;
    let (b, secret_b) = create_client(&node_tx, "target").await;
    std::mem::forget(start_agent(node_addr, a, &secret_a, 2).await);
    std::mem::forget(start_agent(node_addr, b, &secret_b, 3).await);
    Setup {
        node: node_tx,
        node_addr,
        listen_client: a,
        target_client: b,
        echo: echo_server().await,
    }
}

async fn put_mapping(s: &Setup, entry: Entry, seed: u64) {
    put_mapping_to(s, entry, s.echo.port(), seed).await;
}

/// A mapping from `entry` to `127.0.0.1:port` through the target client.
async fn put_mapping_to(s: &Setup, entry: Entry, port: u16, seed: u64) {
    let id = MappingId::generate(&mut Rng::seed_from_u64(seed));
    let mapping = Mapping::tcp(id, entry, s.target_client, "127.0.0.1", port, wall_now());
    node::put_mapping(&s.node, mapping)
        .await
        .expect("the node accepts the mapping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_port_mapping_over_real_sockets() {
    let s = setup().await;
    let port = free_port();
    put_mapping(
        &s,
        Entry::ClientPort {
            listen_client: s.listen_client,
            listen_addr: format!("127.0.0.1:{port}"),
        },
        1,
    )
    .await;
    tokio::time::timeout(Duration::from_secs(60), many_connections(port, 100))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_port_mapping_over_real_sockets() {
    let s = setup().await;
    let port = free_port();
    put_mapping(&s, Entry::NodePort { port, bind: None }, 2).await;
    tokio::time::timeout(Duration::from_secs(60), many_connections(port, 100))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_down_closes_the_visitor_cleanly_and_garbage_does_not_hurt_the_node() {
    let s = setup().await;
    // A mapping to a port where nothing listens: the target's dial is refused.
    let dead = free_port();
    let port = free_port();
    put_mapping_to(
        &s,
        Entry::ClientPort {
            listen_client: s.listen_client,
            listen_addr: format!("127.0.0.1:{port}"),
        },
        dead,
        9,
    )
    .await;
    let back = tokio::time::timeout(
        Duration::from_secs(10),
        round_trip(port, b"anyone there?".to_vec()),
    )
    .await
    .unwrap();
    assert!(
        back.is_empty(),
        "nothing comes back from a target that is down"
    );

    // Garbage, then a truncated and an oversized frame straight at the node's client port:
    // each connection is closed, and the node keeps serving.
    let node_port = free_port();
    put_mapping(
        &s,
        Entry::NodePort {
            port: node_port,
            bind: None,
        },
        10,
    )
    .await;
    for junk in [
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![1, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        vec![1, 0x10, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
    ] {
        // The node's own address: ask it through a fresh connection to the client port.
        let mut raw = TcpStream::connect(s.node_addr).await.unwrap();
        raw.write_all(&junk).await.unwrap();
        let _ = raw.shutdown().await;
        let mut sink = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(15), raw.read_to_end(&mut sink)).await;
        assert!(
            closed.is_ok(),
            "the node closes a connection that sent {junk:?}"
        );
    }
    tokio::time::timeout(Duration::from_secs(30), many_connections(node_port, 10))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_node_restart_clients_reconnect_and_mappings_work_from_the_store() {
    use tunnox_runtime_tokio::storage::EmbeddedStore;
    let dir = std::env::temp_dir().join(format!("tunnox-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("tunnox.redb");

    let start_node = |listener: TcpListener| {
        let store = EmbeddedStore::open(&path).unwrap();
        let state = store.load().unwrap();
        let clock = Clock::new();
        let node = Node::new(
            clock.now(),
            wall_now(),
            NodeConfig::new("node-1"),
            state,
            Rng::seed_from_u64(4),
        );
        spawn_node(
            NodeDriver::new(node, clock, Some(store), "127.0.0.1"),
            listener,
        )
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node_addr = listener.local_addr().unwrap();
    let (node, task) = start_node(listener);
    let (a, secret_a) = create_client(&node, "listen").await;
    let (b, secret_b) = create_client(&node, "target").await;
    std::mem::forget(start_agent(node_addr, a, &secret_a, 5).await);
    std::mem::forget(start_agent(node_addr, b, &secret_b, 6).await);
    let setup = Setup {
        node: node.clone(),
        node_addr,
        listen_client: a,
        target_client: b,
        echo: echo_server().await,
    };
    let port = free_port();
    put_mapping(
        &setup,
        Entry::ClientPort {
            listen_client: a,
            listen_addr: format!("127.0.0.1:{port}"),
        },
        11,
    )
    .await;
    assert_eq!(round_trip(port, b"before".to_vec()).await, b"before");

    // Stop the node; start a new one on the same address from what the store kept.
    node.send(NodeCommand::Shutdown).await.unwrap();
    task.await.unwrap();
    let listener = TcpListener::bind(node_addr).await.unwrap();
    let (_node, _task) = start_node(listener);
    // The clients log in again with their saved keys (the node knows them from the store), the
    // mapping comes back in their config, and traffic flows again.
    let mut back = Vec::new();
    for _ in 0..100 {
        // While the clients are still reconnecting a visitor may be reset: try again.
        back = tokio::time::timeout(
            Duration::from_secs(2),
            try_round_trip(port, b"after".to_vec()),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
        if back == b"after" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(back, b"after");
    let _ = std::fs::remove_dir_all(&dir);
}
