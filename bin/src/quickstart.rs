//! `tunnox quickstart`: a node, two clients and an echo service on loopback, a client-port and a
//! node-port mapping between them, bytes pushed through both and checked, and a report.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tunnox_core::agent::{Agent, AgentConfig, AgentOutput};
use tunnox_core::control::{ClientId, ClientSecret, Entry, Mapping, MappingId};
use tunnox_core::node::{ControlState, Node, NodeConfig};
use tunnox_core::rng::Rng;
use tunnox_core::session::ClientIdentity;
use tunnox_runtime_tokio::agent::{AgentCommand, AgentDriver, spawn_agent};
use tunnox_runtime_tokio::clock::{Clock, wall_now};
use tunnox_runtime_tokio::node::{NodeCommand, NodeDriver, create_client, put_mapping, spawn_node};

/// Bytes pushed through each mapping.
const PAYLOAD_BYTES: usize = 4 * 1024 * 1024;

/// What the quickstart did, for the report.
#[derive(Debug)]
pub struct Report {
    node: SocketAddr,
    echo: SocketAddr,
    clients: [ClientId; 2],
    client_port: (u16, Duration),
    node_port: (u16, Duration),
}

fn seed() -> [u8; 32] {
    // Session nonces must be unpredictable: seed from the OS, as the server does.
    crate::server::os_seed().unwrap_or_else(|_| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut seed = [0u8; 32];
        seed[..16].copy_from_slice(&nanos.to_le_bytes());
        seed
    })
}

async fn echo_server() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(addr)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start_agent(
    node: SocketAddr,
    id: ClientId,
    secret: &ClientSecret,
) -> anyhow::Result<(mpsc::Sender<AgentCommand>, mpsc::Receiver<AgentOutput>)> {
    let clock = Clock::new();
    let identity = ClientIdentity::Login {
        client_id: id.0,
        key: secret.auth_key(),
    };
    let agent = Agent::new(
        clock.now(),
        AgentConfig::new(identity, 1),
        Rng::from_seed(seed()),
    );
    let (notices_tx, mut notices) = mpsc::channel(64);
    let (commands, _task) = spawn_agent(AgentDriver::new(agent, clock, vec![node], notices_tx));
    loop {
        let notice = tokio::time::timeout(Duration::from_secs(10), notices.recv())
            .await
            .context("the client did not connect within 10 s")?;
        match notice {
            Some(AgentOutput::Established { .. }) => return Ok((commands, notices)),
            Some(AgentOutput::Stopped { reason }) => bail!("the client stopped: {reason}"),
            Some(_) => {}
            None => bail!("the client ended"),
        }
    }
}

async fn put_echo_mapping(
    node: &mpsc::Sender<NodeCommand>,
    entry: Entry,
    target: ClientId,
    echo: SocketAddr,
) -> anyhow::Result<()> {
    let id = MappingId::generate(&mut Rng::from_seed(seed()));
    let mapping = Mapping::tcp(
        id,
        entry,
        target,
        echo.ip().to_string(),
        echo.port(),
        wall_now(),
    );
    Ok(put_mapping(node, mapping).await?)
}

/// Sends `PAYLOAD_BYTES` through `port`, half-closes, reads the echo and checks it.
async fn push_through(port: u16) -> anyhow::Result<Duration> {
    let mut data = vec![0u8; PAYLOAD_BYTES];
    Rng::from_seed(seed()).fill(&mut data);
    let mut stream = None;
    for _ in 0..100 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
            stream = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stream = stream.context("the mapping's entry never started listening")?;
    let started = Instant::now();
    let (mut r, mut w) = stream.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await?;
        w.shutdown().await
    });
    let mut back = Vec::with_capacity(PAYLOAD_BYTES);
    r.read_to_end(&mut back).await?;
    writer.await??;
    let took = started.elapsed();
    if back != data {
        bail!(
            "the echo differs: {} of {} bytes came back",
            back.len(),
            data.len()
        );
    }
    Ok(took)
}

/// Runs the whole quickstart on loopback.
pub async fn run() -> anyhow::Result<Report> {
    let echo = echo_server().await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let node_addr = listener.local_addr()?;
    let clock = Clock::new();
    let node = Node::new(
        clock.now(),
        wall_now(),
        NodeConfig::new("quickstart"),
        ControlState::default(),
        Rng::from_seed(seed()),
    );
    let (node_tx, _node_task) =
        spawn_node(NodeDriver::new(node, clock, None, "127.0.0.1"), listener);
    let (listen_id, listen_secret) = create_client(&node_tx, "listen").await?;
    let (target_id, target_secret) = create_client(&node_tx, "target").await?;
    let _listen = start_agent(node_addr, listen_id, &listen_secret).await?;
    let _target = start_agent(node_addr, target_id, &target_secret).await?;

    let client_port = free_port()?;
    put_echo_mapping(
        &node_tx,
        Entry::ClientPort {
            listen_client: listen_id,
            listen_addr: format!("127.0.0.1:{client_port}"),
        },
        target_id,
        echo,
    )
    .await?;
    let client_port_took = push_through(client_port).await?;

    let node_port = free_port()?;
    put_echo_mapping(
        &node_tx,
        Entry::NodePort {
            port: node_port,
            bind: None,
        },
        target_id,
        echo,
    )
    .await?;
    let node_port_took = push_through(node_port).await?;

    let _ = node_tx.send(NodeCommand::Shutdown).await;
    Ok(Report {
        node: node_addr,
        echo,
        clients: [listen_id, target_id],
        client_port: (client_port, client_port_took),
        node_port: (node_port, node_port_took),
    })
}

/// Prints the report.
pub fn print(report: &Report) {
    let mib = PAYLOAD_BYTES as f64 / (1024.0 * 1024.0);
    let rate = |d: Duration| 2.0 * mib / d.as_secs_f64().max(1e-9);
    println!("tunnox quickstart: everything below ran on this machine, on loopback.\n");
    println!("  node            {} (client sessions)", report.node);
    println!(
        "  listen client   id {} (runs the client-port listener)",
        report.clients[0]
    );
    println!(
        "  target client   id {} (dials the service)",
        report.clients[1]
    );
    println!("  echo service    {}\n", report.echo);
    println!(
        "  client-port mapping  127.0.0.1:{} -> listen client -> node -> target client -> {}",
        report.client_port.0, report.echo
    );
    println!(
        "      {mib:.0} MiB each way, echoed back byte-exact in {:.0} ms ({:.0} MiB/s moved)",
        report.client_port.1.as_secs_f64() * 1e3,
        rate(report.client_port.1)
    );
    println!(
        "  node-port mapping    127.0.0.1:{} -> node -> target client -> {}",
        report.node_port.0, report.echo
    );
    println!(
        "      {mib:.0} MiB each way, echoed back byte-exact in {:.0} ms ({:.0} MiB/s moved)\n",
        report.node_port.1.as_secs_f64() * 1e3,
        rate(report.node_port.1)
    );
    println!(
        "Sessions are authenticated by challenge-response; the secret never crossed the wire."
    );
    println!();
    println!("The same by hand (the service here: anything listening on 127.0.0.1:6379):");
    println!(
        "  tunnox server --listen 127.0.0.1:7000        # prints its TLS fingerprint, FP below"
    );
    println!(
        "  tunnox client --server 127.0.0.1:7000 --fingerprint FP --credentials b.json tcp 6379"
    );
    println!("      # prints a connection code, CODE below; keep it running");
    println!("  tunnox client --server 127.0.0.1:7000 --fingerprint FP --credentials a.json \\");
    println!("      use CODE --listen 127.0.0.1:16379");
    println!("  redis-cli -p 16379 ping                      # through the tunnel");
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quickstart_runs_end_to_end() {
        let report = super::run().await.unwrap();
        assert_ne!(report.client_port.0, report.node_port.0);
        assert!(report.client_port.1 > std::time::Duration::ZERO);
    }
}
