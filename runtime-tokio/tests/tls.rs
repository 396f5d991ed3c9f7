//! Client sessions over TLS on loopback: a client that pins the node's fingerprint works end to
//! end; a wrong pin or a plaintext client never gets a session.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{create_client, echo_server, free_port, many_connections};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::ServerName;
use tunnox_core::agent::{Agent, AgentConfig, AgentOutput};
use tunnox_core::control::{ClientId, ClientSecret, Entry, Mapping, MappingId};
use tunnox_core::node::{ControlState, Node, NodeConfig};
use tunnox_core::rng::Rng;
use tunnox_core::session::ClientIdentity;
use tunnox_runtime_tokio::agent::{AgentDriver, spawn_agent};
use tunnox_runtime_tokio::clock::{Clock, wall_now};
use tunnox_runtime_tokio::node::{NodeCommand, NodeDriver, put_mapping, spawn_node};
use tunnox_runtime_tokio::tls::{Fingerprint, NodeIdentity, ServerTrust, connector};

/// Starts a TLS node; returns its commands, address and certificate fingerprint.
async fn tls_node(name: &str) -> (mpsc::Sender<NodeCommand>, SocketAddr, Fingerprint) {
    let dir = std::env::temp_dir().join(format!("tunnox-tls-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let identity = NodeIdentity::load_or_generate(&dir, &["localhost".into()]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let clock = Clock::new();
    let node = Node::new(
        clock.now(),
        wall_now(),
        NodeConfig::new("node-tls"),
        ControlState::default(),
        Rng::seed_from_u64(7),
    );
    let driver =
        NodeDriver::new(node, clock, None, "127.0.0.1").with_tls(identity.acceptor().unwrap());
    let (tx, _task) = spawn_node(driver, listener);
    (tx, addr, identity.fingerprint())
}

/// Starts an agent trusting the node as `trust` says (plain TCP when `None`); returns its
/// notices.
fn agent(
    node: SocketAddr,
    id: ClientId,
    secret: &ClientSecret,
    trust: Option<ServerTrust>,
) -> mpsc::Receiver<AgentOutput> {
    let clock = Clock::new();
    let identity = ClientIdentity::Login {
        client_id: id.0,
        key: secret.auth_key(),
    };
    let agent = Agent::new(
        clock.now(),
        AgentConfig::new(identity, 1),
        Rng::seed_from_u64(id.0),
    );
    let (notices_tx, notices) = mpsc::channel(256);
    let mut driver = AgentDriver::new(agent, clock, vec![node], notices_tx);
    if let Some(trust) = trust {
        let name = ServerName::try_from("localhost").unwrap();
        driver = driver.with_tls(connector(trust).unwrap(), name);
    }
    let (commands, _task) = spawn_agent(driver);
    std::mem::forget(commands);
    notices
}

/// Whether the agent establishes a session within `wait`.
async fn establishes(notices: &mut mpsc::Receiver<AgentOutput>, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, notices.recv()).await {
            Ok(Some(AgentOutput::Established { .. })) => return true,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_clients_tunnel_over_tls() {
    let (node, addr, pin) = tls_node("pinned").await;
    let (a, secret_a) = create_client(&node, "listen").await;
    let (b, secret_b) = create_client(&node, "target").await;
    let mut na = agent(addr, a, &secret_a, Some(ServerTrust::Pinned(pin)));
    let mut nb = agent(addr, b, &secret_b, Some(ServerTrust::Pinned(pin)));
    assert!(establishes(&mut na, Duration::from_secs(5)).await);
    assert!(establishes(&mut nb, Duration::from_secs(5)).await);
    std::mem::forget((na, nb));
    let echo = echo_server().await;
    let port = free_port();
    let entry = Entry::ClientPort {
        listen_client: a,
        listen_addr: format!("127.0.0.1:{port}"),
    };
    let id = MappingId::generate(&mut Rng::seed_from_u64(1));
    let mapping = Mapping::tcp(id, entry, b, "127.0.0.1", echo.port(), wall_now());
    put_mapping(&node, mapping).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), many_connections(port, 30))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_or_plaintext_never_gets_a_session() {
    let (node, addr, pin) = tls_node("refused").await;
    let (a, secret_a) = create_client(&node, "a").await;
    let wrong = Fingerprint::parse(&"00".repeat(32)).unwrap();
    let mut pinned_wrong = agent(addr, a, &secret_a, Some(ServerTrust::Pinned(wrong)));
    assert!(
        !establishes(&mut pinned_wrong, Duration::from_secs(2)).await,
        "a wrong pin must fail"
    );
    let (b, secret_b) = create_client(&node, "b").await;
    let mut plaintext = agent(addr, b, &secret_b, None);
    assert!(
        !establishes(&mut plaintext, Duration::from_secs(2)).await,
        "plaintext must fail"
    );
    // The node is fine: a correctly pinned client still gets in.
    let (c, secret_c) = create_client(&node, "c").await;
    let mut good = agent(addr, c, &secret_c, Some(ServerTrust::Pinned(pin)));
    assert!(establishes(&mut good, Duration::from_secs(5)).await);
}
