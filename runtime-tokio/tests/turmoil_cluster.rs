//! The real tokio code of a cluster — node drivers, the tonic bridge, agent drivers — on
//! turmoil's simulated network with a fixed seed: three nodes, an entry client on n1, a target
//! client on n2 (n3 its second address), an echo service and visitors on their own hosts.
//!
//! A shared in-memory directory stands in for Redis and the broker (routes, shared state,
//! membership): it is not partitioned here; partitions of storage and broker are the
//! simulator's (`sim-tests`). What turmoil cuts is the network between hosts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tunnox_core::agent::{Agent, AgentConfig};
use tunnox_core::cluster::PoolConfig;
use tunnox_core::control::{
    AuthKey, ClientId, ClientRecord, ClientSecret, Entry, Mapping, MappingId, MappingOptions,
    MappingStatus, NodeId, Protocol, Target, UnixMillis,
};
use tunnox_core::node::{ClusterConfig, ControlState, Node, NodeConfig, StateChange};
use tunnox_core::rng::Rng;
use tunnox_core::session::{ClientIdentity, Heartbeat};
use tunnox_runtime_tokio::agent::{AgentDriver, spawn_agent};
use tunnox_runtime_tokio::bridge::{BridgeService, LinkHello, serve_on};
use tunnox_runtime_tokio::clock::Clock;
use tunnox_runtime_tokio::net::{Conn, Listener, Net, NetFuture};
use tunnox_runtime_tokio::node::{ClusterEvent, NodeCommand, NodeDriver, spawn_node_on};

const CLIENT_PORT: u16 = 7000;
const BRIDGE_PORT: u16 = 7100;
const ECHO_PORT: u16 = 7;
const ENTRY_PORT: u16 = 9000;
const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// turmoil's TCP as a [`Net`].
#[derive(Debug)]
struct TurmoilNet;

struct TurmoilListener(turmoil::net::TcpListener);

impl Listener for TurmoilListener {
    fn accept(&mut self) -> NetFuture<'_, io::Result<(Conn, SocketAddr)>> {
        Box::pin(async move {
            let (stream, addr) = self.0.accept().await?;
            Ok((Conn::Other(Box::new(stream)), addr))
        })
    }
}

impl Net for TurmoilNet {
    fn connect(&self, host: String, port: u16) -> NetFuture<'static, io::Result<Conn>> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect((host.as_str(), port)).await?;
            Ok(Conn::Other(Box::new(stream)))
        })
    }

    fn bind(&self, addr: String) -> NetFuture<'static, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let listener: Box<dyn Listener> = Box::new(TurmoilListener(
                turmoil::net::TcpListener::bind(addr).await?,
            ));
            Ok(listener)
        })
    }
}

/// What Redis and the broker hold for the cluster, shared by the hosts.
#[derive(Default)]
struct Directory {
    state: ControlState,
    routes: BTreeMap<ClientId, NodeId>,
    nodes: BTreeMap<NodeId, mpsc::Sender<NodeCommand>>,
}

type SharedDirectory = Arc<Mutex<Directory>>;

fn node_id(name: &str) -> NodeId {
    NodeId::parse(name).unwrap()
}

/// Sends `command` to every node but `me` (what a broker message does).
fn tell_others(dir: &SharedDirectory, me: &NodeId, command: impl Fn() -> NodeCommand) {
    let senders: Vec<_> = {
        let dir = dir.lock().unwrap();
        dir.nodes
            .iter()
            .filter(|(id, _)| *id != me)
            .map(|(_, tx)| tx.clone())
            .collect()
    };
    for tx in senders {
        let _ = tx.try_send(command());
    }
}

/// The stand-in coordinator of node `me`: shares its changes and routes, answers lookups.
async fn coordinate(dir: SharedDirectory, me: NodeId, mut events: mpsc::Receiver<ClusterEvent>) {
    while let Some(event) = events.recv().await {
        match event {
            ClusterEvent::Persisted(change) => {
                dir.lock().unwrap().state.apply(&change);
                tell_others(&dir, &me, || {
                    NodeCommand::ApplyRemote(Box::new(change.clone()))
                });
            }
            ClusterEvent::ClientOnline(client) => {
                dir.lock().unwrap().routes.insert(client, me.clone());
                tell_others(&dir, &me, || NodeCommand::SetRoute {
                    client,
                    node: Some(me.clone()),
                });
            }
            ClusterEvent::ClientOffline(client) => {
                let mut d = dir.lock().unwrap();
                if d.routes.get(&client) == Some(&me) {
                    d.routes.remove(&client);
                }
            }
            ClusterEvent::Disconnect(client) => {
                let reason = tunnox_core::wire::GoAwayReason::Kicked;
                tell_others(&dir, &me, || NodeCommand::DisconnectClient {
                    client,
                    reason,
                });
            }
            ClusterEvent::LookupRoute(client) => {
                let (node, tx) = {
                    let d = dir.lock().unwrap();
                    (d.routes.get(&client).cloned(), d.nodes.get(&me).cloned())
                };
                if let Some(tx) = tx {
                    let _ = tx.send(NodeCommand::SetRoute { client, node }).await;
                }
            }
        }
    }
}

/// One node host: its client port, its bridge, the stand-in coordinator; state from the
/// directory (as a restarted node loads it from Redis).
async fn run_node(name: &'static str, dir: SharedDirectory) -> turmoil::Result {
    let me = node_id(name);
    let clock = Clock::new();
    let mut config = NodeConfig::new(name);
    config.session.heartbeat = Heartbeat {
        interval: Duration::from_millis(500),
        timeout: Duration::from_millis(1500),
    };
    config.cluster = Some(ClusterConfig {
        key: AuthKey::derive("turmoil cluster token"),
        pool: PoolConfig::default(),
    });
    let state = dir.lock().unwrap().state.clone();
    let node = Node::new(
        clock.now(),
        UnixMillis(1_700_000_000_000),
        config,
        state,
        Rng::seed_from_u64(NODES.iter().position(|n| *n == name).unwrap() as u64),
    );
    let net: Arc<dyn Net> = Arc::new(TurmoilNet);
    let hello = LinkHello {
        node_id: name.to_owned(),
        epoch: 1,
    };
    let (accepted_tx, accepted) = mpsc::channel(16);
    let (events_tx, events) = mpsc::channel(1024);
    let bridge = net.bind(format!("0.0.0.0:{BRIDGE_PORT}")).await?;
    tokio::spawn(serve_on(
        bridge,
        BridgeService::new(hello.clone(), accepted_tx),
        None,
    ));
    let clients = net.bind(format!("0.0.0.0:{CLIENT_PORT}")).await?;
    let driver = NodeDriver::new(node, clock, None, "0.0.0.0")
        .with_net(net)
        .with_cluster(hello, None, accepted, events_tx);
    let (commands, task) = spawn_node_on(driver, clients);
    dir.lock()
        .unwrap()
        .nodes
        .insert(me.clone(), commands.clone());
    for peer in NODES.iter().filter(|n| **n != name) {
        commands
            .send(NodeCommand::PeerUp {
                peer: node_id(peer),
                addr: format!("{peer}:{BRIDGE_PORT}"),
            })
            .await?;
    }
    tokio::spawn(coordinate(dir, me, events));
    task.await?;
    Ok(())
}

async fn echo_service() -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(format!("0.0.0.0:{ECHO_PORT}")).await?;
    loop {
        let (mut stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = stream.shutdown().await;
        });
    }
}

/// One agent host, logged in as `client`, trying `servers` in turn.
async fn run_agent(client: ClientId, secret: ClientSecret, servers: &[&str]) -> turmoil::Result {
    let clock = Clock::new();
    let config = AgentConfig::new(
        ClientIdentity::Login {
            client_id: client.0,
            key: secret.auth_key(),
        },
        servers.len(),
    );
    let agent = Agent::new(clock.now(), config, Rng::seed_from_u64(client.0));
    let addrs: Vec<SocketAddr> = servers
        .iter()
        .map(|s| SocketAddr::new(turmoil::lookup(*s), CLIENT_PORT))
        .collect();
    let (notices_tx, mut notices) = mpsc::channel(64);
    let driver = AgentDriver::new(agent, clock, addrs, notices_tx).with_net(Arc::new(TurmoilNet));
    let (_commands, task) = spawn_agent(driver);
    tokio::spawn(async move { while notices.recv().await.is_some() {} });
    task.await?;
    Ok(())
}

/// What one visitor saw: the echo byte-exact, or a clean failure (what came back is a prefix of
/// what was sent).
#[derive(Debug, PartialEq)]
enum Visit {
    Echoed,
    Failed { prefix_ok: bool },
}

async fn visit(len: usize, seed: u8) -> Visit {
    let Ok(stream) = turmoil::net::TcpStream::connect(("ec", ENTRY_PORT)).await else {
        return Visit::Failed { prefix_ok: true };
    };
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let (mut read, mut write) = tokio::io::split(stream);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&sent).await;
        let _ = write.shutdown().await;
    });
    let mut back = Vec::new();
    let _ = read.read_to_end(&mut back).await;
    let _ = writer.await;
    if back == data {
        Visit::Echoed
    } else {
        Visit::Failed {
            prefix_ok: data.starts_with(&back),
        }
    }
}

/// Visits until one echoes (a fresh route or link may take a few tries); every failure on the
/// way must be clean. How many tries it took.
async fn echo_eventually(len: usize, seed: u8) -> usize {
    for attempt in 1..=40 {
        match visit(len, seed).await {
            Visit::Echoed => return attempt,
            Visit::Failed { prefix_ok } => assert!(prefix_ok, "a visitor received corrupted bytes"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("no echo after 40 visits");
}

/// Builds the world: three nodes, the echo service, the target client (on n2, then n3) and the
/// entry client (on n1) with a client-port mapping between them.
fn world(seed: u64) -> (turmoil::Sim<'static>, SharedDirectory, ClientId) {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(600))
        .build();
    let mut rng = Rng::seed_from_u64(seed);
    let (entry, entry_secret) = (ClientId(100_000_001), ClientSecret::generate(&mut rng));
    let (target, target_secret) = (ClientId(100_000_002), ClientSecret::generate(&mut rng));
    let mut state = ControlState::default();
    for (id, secret) in [(entry, &entry_secret), (target, &target_secret)] {
        state.apply(&StateChange::PutClient(ClientRecord::new_anonymous(
            id,
            secret.auth_key(),
            UnixMillis(1),
        )));
    }
    state.apply(&StateChange::PutMapping(Mapping {
        id: MappingId::generate(&mut rng),
        owner: None,
        entry: Entry::ClientPort {
            listen_client: entry,
            listen_addr: format!("0.0.0.0:{ENTRY_PORT}"),
        },
        target_client: target,
        target: Target::Fixed {
            host: "svc".into(),
            port: ECHO_PORT,
        },
        protocol: Protocol::Tcp,
        options: MappingOptions::default(),
        created_at: UnixMillis(1),
        expires_at: None,
        status: MappingStatus::Active,
    }));
    let dir: SharedDirectory = Arc::new(Mutex::new(Directory {
        state,
        ..Directory::default()
    }));
    for name in NODES {
        let dir = dir.clone();
        sim.host(name, move || run_node(name, dir.clone()));
    }
    sim.host("svc", echo_service);
    sim.host("tc", move || {
        run_agent(target, target_secret.clone(), &["n2", "n3"])
    });
    sim.host("ec", move || {
        run_agent(entry, entry_secret.clone(), &["n1"])
    });
    (sim, dir, target)
}

#[test]
fn a_partition_between_nodes_fails_streams_cleanly_and_repair_brings_them_back() {
    let (mut sim, _, _) = world(7);
    sim.client("visitor", async {
        // Entry on n1, target on n2: over the bridge.
        let tries = echo_eventually(64 * 1024, 1).await;
        println!(
            "first echo after {tries} visits at {:?}",
            turmoil::elapsed()
        );
        // Cut n1 from n2 (and n3, so no other path): streams fail cleanly or still finish.
        turmoil::partition("n1", "n2");
        turmoil::partition("n1", "n3");
        let during = visit(64 * 1024, 2).await;
        println!(
            "during the partition: {during:?} at {:?}",
            turmoil::elapsed()
        );
        assert!(
            matches!(during, Visit::Echoed | Visit::Failed { prefix_ok: true }),
            "{during:?}"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        turmoil::repair("n1", "n2");
        turmoil::repair("n1", "n3");
        // After the repair the pool redials and new streams work.
        let tries = echo_eventually(256 * 1024, 3).await;
        println!(
            "after repair: echo after {tries} visits at {:?}",
            turmoil::elapsed()
        );
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn a_crashed_node_loses_its_clients_to_another_node_and_streams_follow() {
    let (mut sim, dir, target) = world(11);
    sim.client("visitor", async {
        echo_eventually(32 * 1024, 4).await;
        Ok(())
    });
    // Run until the first echo is done (through n2), then crash the target's node.
    while !sim.step().unwrap() {}
    assert_eq!(
        dir.lock().unwrap().routes.get(&target),
        Some(&node_id("n2"))
    );
    sim.crash("n2");
    sim.client("visitor-after-crash", async {
        let tries = echo_eventually(128 * 1024, 5).await;
        println!(
            "after the crash: echo after {tries} visits at {:?}",
            turmoil::elapsed()
        );
        Ok(())
    });
    while !sim.step().unwrap() {}
    assert_eq!(
        dir.lock().unwrap().routes.get(&target),
        Some(&node_id("n3")),
        "the target client came back through n3"
    );
    // n2 comes back (its state from the directory); the cluster keeps working.
    sim.bounce("n2");
    sim.client("visitor-after-restart", async {
        echo_eventually(64 * 1024, 6).await;
        Ok(())
    });
    sim.run().unwrap();
}
