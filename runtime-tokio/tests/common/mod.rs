//! Helpers shared by the real-socket tests.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tunnox_core::agent::{Agent, AgentConfig, AgentOutput};
use tunnox_core::control::{ClientId, ClientSecret};
use tunnox_core::rng::Rng;
use tunnox_core::session::ClientIdentity;
use tunnox_runtime_tokio::agent::{AgentDriver, spawn_agent};
use tunnox_runtime_tokio::clock::Clock;
use tunnox_runtime_tokio::node::NodeCommand;

pub async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// Byte number `offset` of what a [`firehose_server`] sends on each connection.
pub fn firehose_byte(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// A server that writes [`firehose_byte`]s to every connection without end (until the connection
/// fails) and never reads; returns its address and the bytes written so far, all connections
/// together (the count stops growing once every connection's readers push back).
pub async fn firehose_server() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                // A whole number of 251-byte periods, so the pattern runs on across writes.
                let chunk: Vec<u8> = (0..251 * 256).map(firehose_byte).collect();
                let mut at = 0;
                while let Ok(n) = stream.write(&chunk[at..]).await {
                    if n == 0 {
                        return;
                    }
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    at = (at + n) % chunk.len();
                }
            });
        }
    });
    (addr, written)
}

/// Connects to `127.0.0.1:port`, retrying while the listener comes up.
pub async fn connect_when_listening(port: u16) -> TcpStream {
    for _ in 0..100 {
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)).await {
            return stream;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("nothing listens on port {port}");
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn create_client(
    node: &mpsc::Sender<NodeCommand>,
    label: &str,
) -> (ClientId, ClientSecret) {
    tunnox_runtime_tokio::node::create_client(node, label)
        .await
        .expect("the node creates the client")
}

/// Connects (retrying while the listener comes up), sends `data`, half-closes, reads to the end.
pub async fn round_trip(port: u16, data: Vec<u8>) -> Vec<u8> {
    try_round_trip(port, data)
        .await
        .expect("the round trip completes")
}

/// [`round_trip`], returning a reset or failed write as an error instead of panicking.
pub async fn try_round_trip(port: u16, data: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut stream = None;
    for _ in 0..100 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
            stream = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stream = stream.expect("the entry listens");
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await?;
        // Half-close: the rest of the echo must still arrive.
        w.shutdown().await
    });
    let mut out = Vec::new();
    r.read_to_end(&mut out).await?;
    writer.await.expect("the writer task does not panic")?;
    Ok(out)
}

pub fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::seed_from_u64(seed).fill(&mut v);
    v
}

pub async fn many_connections(port: u16, count: u64) {
    let mut tasks = Vec::new();
    for i in 0..count {
        tasks.push(tokio::spawn(async move {
            let data = random(i, 1 + (i as usize * 7919) % 300_000);
            let back = round_trip(port, data.clone()).await;
            assert!(
                back == data,
                "connection {i}: {} of {} bytes came back",
                back.len(),
                data.len()
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Starts an agent logging in as `id` to `node_addr` and waits until its session is up; its
/// outputs follow on the receiver.
pub async fn start_agent(
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
