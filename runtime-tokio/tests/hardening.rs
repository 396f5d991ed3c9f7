//! A node accepting untrusted TCP, attacked over real loopback sockets: silent and trickling
//! clients are dropped at the handshake deadline (counted from the accept, TLS included); one
//! address opening connections too fast is cut off before any work; repeated failed proofs lock
//! a client out from that address; the node holds no more client connections than its cap; a
//! session gets no more streams or pending opens than its limits, with typed refusals that leave
//! its other streams alone; and a second login of a client leaves exactly one live session.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{create_client, echo_server};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::ServerName;
use tunnox_core::agent::{Agent, AgentConfig, AgentOutput};
use tunnox_core::control::{ClientId, ClientSecret, Entry, Mapping, MappingId};
use tunnox_core::node::{ControlState, Node, NodeConfig};
use tunnox_core::rng::Rng;
use tunnox_core::session::{
    AuthKey, ClientIdentity, ClientSession, ClientSessionConfig, CloseReason, RefuseReason,
};
use tunnox_core::time::Instant;
use tunnox_core::tunnel::{OpenError, decode_result, encode_open, encode_result};
use tunnox_core::wire::{Decoder, Frame, GoAwayReason, ResetReason, StreamId};
use tunnox_proto::wire as pb;
use tunnox_runtime_tokio::agent::{AgentDriver, spawn_agent};
use tunnox_runtime_tokio::clock::{Clock, wall_now};
use tunnox_runtime_tokio::metrics::NodeMetrics;
use tunnox_runtime_tokio::net::{Conn, Listener, NetFuture};
use tunnox_runtime_tokio::node::{NodeCommand, NodeDriver, put_mapping, spawn_node};
use tunnox_runtime_tokio::tls::{NodeIdentity, ServerTrust, connector};

/// Longest any single step may take before the test fails (generous: the machine is shared).
const STEP: Duration = Duration::from_secs(10);

/// A node on loopback.
struct TestNode {
    commands: mpsc::Sender<NodeCommand>,
    addr: SocketAddr,
    metrics: Arc<NodeMetrics>,
}

/// Starts a plain-TCP node with `config`; `tune` adjusts the driver (TLS, connection cap).
async fn start_node(config: NodeConfig, tune: impl FnOnce(NodeDriver) -> NodeDriver) -> TestNode {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let clock = Clock::new();
    let node = Node::new(
        clock.now(),
        wall_now(),
        config,
        ControlState::default(),
        Rng::seed_from_u64(11),
    );
    let metrics = Arc::new(NodeMetrics::new());
    let driver =
        tune(NodeDriver::new(node, clock, None, "127.0.0.1").with_metrics(metrics.clone()));
    let (commands, _task) = spawn_node(driver, listener);
    TestNode {
        commands,
        addr,
        metrics,
    }
}

fn config_with(tune: impl FnOnce(&mut NodeConfig)) -> NodeConfig {
    let mut config = NodeConfig::new("node-1");
    tune(&mut config);
    config
}

/// A connection to the node from the loopback address `from` (127.0.0.x).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::from(from), 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// A byte stream to the node (TCP or TLS).
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Whole frames to and from the node over one connection, with nothing in between: the test
/// plays a client that may break the rules.
struct Wire {
    io: Box<dyn Io>,
    decoder: Decoder,
}

impl Wire {
    fn new(io: impl Io + 'static) -> Wire {
        Wire {
            io: Box::new(io),
            decoder: Decoder::new(1 << 20),
        }
    }

    async fn send(&mut self, frame: Frame) {
        let mut buf = BytesMut::new();
        frame.encode().write_to(&mut buf);
        self.io.write_all(&buf).await.unwrap();
    }

    /// The next frame from the node; `None` once the node closed the connection.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.decoder.decode().expect("the node sends valid frames") {
                return Some(frame);
            }
            let mut buf = [0u8; 16 * 1024];
            match tokio::time::timeout(STEP, self.io.read(&mut buf))
                .await
                .expect("the node answers or closes in time")
            {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.decoder.push(&buf[..n]),
            }
        }
    }

    /// Pings the node and waits for its answer (skipping whatever else comes first).
    async fn answers_ping(&mut self, nonce: u32) -> bool {
        self.send(Frame::Ping { nonce }).await;
        loop {
            match self.next().await {
                Some(Frame::Pong { nonce: n }) if n == nonce => return true,
                Some(_) => {}
                None => return false,
            }
        }
    }

    /// The next frame that is not routine traffic (pings, window updates, config pushes); a
    /// ping is answered so the session stays healthy.
    async fn next_notable(&mut self) -> Option<Frame> {
        loop {
            match self.next().await? {
                Frame::Ping { nonce } => self.send(Frame::Pong { nonce }).await,
                Frame::Window { .. } | Frame::ConfigPush(_) | Frame::Pong { .. } => {}
                frame => return Some(frame),
            }
        }
    }
}

/// Runs `identity`'s handshake on `wire` with a `ClientSession` fed one whole frame at a time,
/// so nothing after the handshake is taken off the wire. The node's announced stream settings,
/// or how the session ended (`None`: the node closed the connection without a word).
async fn handshake(
    wire: &mut Wire,
    identity: ClientIdentity,
) -> Result<pb::MuxSettings, Option<CloseReason>> {
    let now = Instant::ZERO;
    let mut client = ClientSession::new(
        now,
        ClientSessionConfig::new(identity),
        &mut Rng::seed_from_u64(5),
    );
    let mut settings = None;
    loop {
        while let Some(t) = client.poll_transmit() {
            let mut buf = BytesMut::new();
            t.write_to(&mut buf);
            wire.io.write_all(&buf).await.unwrap();
        }
        while client.poll_event().is_some() {}
        if client.is_established() {
            return Ok(settings.expect("a Welcome carries mux settings"));
        }
        if client.is_closed() {
            return Err(client.close_reason().cloned());
        }
        let Some(frame) = wire.next().await else {
            return Err(None);
        };
        if let Frame::Welcome(welcome) = &frame {
            settings = welcome.mux;
        }
        let mut buf = BytesMut::new();
        frame.encode().write_to(&mut buf);
        client.handle_bytes(now, &buf[..]);
    }
}

fn login(id: ClientId, key: AuthKey) -> ClientIdentity {
    ClientIdentity::Login {
        client_id: id.0,
        key,
    }
}

fn register() -> ClientIdentity {
    ClientIdentity::Register {
        label: "test".into(),
    }
}

/// A logged-in raw session of `id` from 127.0.0.1.
async fn logged_in(node: &TestNode, id: ClientId, secret: &ClientSecret) -> Wire {
    let mut wire = Wire::new(TcpStream::connect(node.addr).await.unwrap());
    handshake(&mut wire, login(id, secret.auth_key()))
        .await
        .expect("the login succeeds");
    wire
}

fn refused_because(ended: &Result<pb::MuxSettings, Option<CloseReason>>) -> Option<RefuseReason> {
    match ended {
        Err(Some(CloseReason::Refused { reason, .. })) => Some(*reason),
        _ => None,
    }
}

/// The value of the gauge or counter `name` (no labels), once the node's metrics show `want`.
async fn metric_reaches(metrics: &NodeMetrics, name: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let text = metrics.encode();
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok());
        if value == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stayed at {value:?}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ----- handshake deadline -----

fn short_handshake() -> NodeConfig {
    config_with(|c| c.session.handshake_timeout = Duration::from_secs(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_refused_at_the_handshake_timeout_then_dropped() {
    let node = start_node(short_handshake(), |d| d).await;
    let connected = std::time::Instant::now();
    let mut wire = Wire::new(TcpStream::connect(node.addr).await.unwrap());
    match wire.next().await {
        Some(Frame::Refused(refused)) => {
            assert_eq!(refused.reason, RefuseReason::HandshakeTimeout as i32)
        }
        other => panic!("expected a HANDSHAKE_TIMEOUT refusal, got {other:?}"),
    }
    assert!(
        connected.elapsed() >= Duration::from_secs(1),
        "dropped before its deadline"
    );
    assert_eq!(wire.next().await, None, "the connection is closed");
    metric_reaches(&node.metrics, "tunnox_connections", 0.0).await;
}

/// Writes `bytes` one at a time, `every` apart, counting them into `sent`; stops at the first
/// failed write.
fn trickle(
    mut writer: impl AsyncWrite + Unpin + Send + 'static,
    bytes: Vec<u8>,
    every: Duration,
    sent: Arc<AtomicUsize>,
) {
    tokio::spawn(async move {
        for byte in bytes {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            sent.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(every).await;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_hello_byte_by_byte_gets_no_more_time() {
    let node = start_node(short_handshake(), |d| d).await;
    let (id, secret) = create_client(&node.commands, "slow").await;
    let mut client = ClientSession::new(
        Instant::ZERO,
        ClientSessionConfig::new(login(id, secret.auth_key())),
        &mut Rng::seed_from_u64(1),
    );
    let mut hello = BytesMut::new();
    client.poll_transmit().unwrap().write_to(&mut hello);
    // A byte every 100 ms: far inside the 1 s timeout each time, so a deadline reset by every
    // byte would never fire before the Hello is complete (and answered with a Challenge).
    let (reader, writer) = TcpStream::connect(node.addr).await.unwrap().into_split();
    let sent = Arc::new(AtomicUsize::new(0));
    trickle(
        writer,
        hello.to_vec(),
        Duration::from_millis(100),
        sent.clone(),
    );
    let mut wire = Wire::new(tokio::io::join(reader, tokio::io::sink()));
    match wire.next().await {
        Some(Frame::Refused(refused)) => {
            assert_eq!(refused.reason, RefuseReason::HandshakeTimeout as i32)
        }
        other => panic!("expected a HANDSHAKE_TIMEOUT refusal, got {other:?}"),
    }
    let sent = sent.load(Ordering::Relaxed);
    assert!(
        sent < hello.len(),
        "dropped after the whole Hello ({sent} of {} bytes)",
        hello.len()
    );
    assert_eq!(wire.next().await, None);
}

async fn tls_node(config: NodeConfig, name: &str) -> TestNode {
    let dir = std::env::temp_dir().join(format!("tunnox-hardening-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let identity = NodeIdentity::load_or_generate(&dir, &["localhost".into()]).unwrap();
    start_node(config, |d| d.with_tls(identity.acceptor().unwrap())).await
}

/// Reads until the node closes the connection; how many bytes came before.
async fn read_to_close(mut stream: impl AsyncRead + Unpin) -> usize {
    let mut total = 0;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(STEP, stream.read(&mut buf))
            .await
            .expect("the node closes the connection in time")
        {
            Ok(0) | Err(_) => return total,
            Ok(n) => total += n,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_silent_trickling_and_post_tls_silent_clients_are_all_dropped() {
    let node = tls_node(short_handshake(), "deadline").await;
    // Silent: not even a ClientHello.
    let silent = TcpStream::connect(node.addr).await.unwrap();
    assert_eq!(read_to_close(silent).await, 0);

    // A TLS record header announcing 16 KiB, then one byte every 100 ms.
    let (reader, writer) = TcpStream::connect(node.addr).await.unwrap().into_split();
    let sent = Arc::new(AtomicUsize::new(0));
    let mut record = vec![0x16, 0x03, 0x01, 0x40, 0x00];
    record.extend(std::iter::repeat_n(0u8, 200));
    trickle(writer, record, Duration::from_millis(100), sent.clone());
    assert_eq!(read_to_close(reader).await, 0);
    assert!(sent.load(Ordering::Relaxed) < 205, "the trickle finished");

    // TLS completes, then nothing: the session handshake's deadline (from the accept) drops it.
    let tcp = TcpStream::connect(node.addr).await.unwrap();
    let tls = connector(ServerTrust::InsecureSkipVerify)
        .unwrap()
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("the TLS handshake completes");
    let mut wire = Wire::new(tls);
    match wire.next().await {
        Some(Frame::Refused(refused)) => {
            assert_eq!(refused.reason, RefuseReason::HandshakeTimeout as i32)
        }
        other => panic!("expected a HANDSHAKE_TIMEOUT refusal, got {other:?}"),
    }
    assert_eq!(wire.next().await, None);
    metric_reaches(&node.metrics, "tunnox_connections", 0.0).await;
}

// ----- handshake guard -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_opening_connections_too_fast_is_cut_off_before_any_work() {
    let node = start_node(
        config_with(|c| {
            c.guard.handshake_burst = 2;
            c.guard.handshakes_per_sec = 1;
        }),
        |d| d,
    )
    .await;
    let mut first = Wire::new(connect_from([127, 0, 0, 1], node.addr).await);
    let mut second = Wire::new(connect_from([127, 0, 0, 1], node.addr).await);
    let mut third = Wire::new(connect_from([127, 0, 0, 1], node.addr).await);
    assert!(handshake(&mut first, register()).await.is_ok());
    assert!(handshake(&mut second, register()).await.is_ok());
    assert_eq!(
        handshake(&mut third, register()).await,
        Err(None),
        "the third connection within a second is closed without a word"
    );
    // Another address is not affected.
    let mut other = Wire::new(connect_from([127, 0, 0, 2], node.addr).await);
    assert!(handshake(&mut other, register()).await.is_ok());
    // The first address gets a connection again once its bucket refills.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut later = Wire::new(connect_from([127, 0, 0, 1], node.addr).await);
    assert!(handshake(&mut later, register()).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_proofs_lock_the_client_out_from_that_address_only() {
    let node = start_node(
        config_with(|c| {
            c.guard.failed_proofs_max = 3;
            c.guard.lockout = Duration::from_secs(60);
        }),
        |d| d,
    )
    .await;
    let (id, secret) = create_client(&node.commands, "victim").await;
    for _ in 0..3 {
        let mut wire = Wire::new(connect_from([127, 0, 0, 1], node.addr).await);
        let ended = handshake(&mut wire, login(id, AuthKey::derive("wrong secret"))).await;
        assert_eq!(refused_because(&ended), Some(RefuseReason::BadCredentials));
    }
    // Now even the right secret is refused from that address, with when to retry...
    let mut wire = Wire::new(connect_from([127, 0, 0, 1], node.addr).await);
    match handshake(&mut wire, login(id, secret.auth_key())).await {
        Err(Some(CloseReason::Refused {
            reason: RefuseReason::RateLimited,
            retry_after: Some(retry),
            ..
        })) => assert!(retry > Duration::from_secs(50), "retry after {retry:?}"),
        other => panic!("expected a RATE_LIMITED refusal, got {other:?}"),
    }
    // ...but not from another address.
    let mut wire = Wire::new(connect_from([127, 0, 0, 2], node.addr).await);
    assert!(
        handshake(&mut wire, login(id, secret.auth_key()))
            .await
            .is_ok()
    );
}

// ----- connections -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_at_accept_until_one_leaves() {
    let node = start_node(NodeConfig::new("node-1"), |d| {
        d.with_client_connections_max(2)
    })
    .await;
    let first = TcpStream::connect(node.addr).await.unwrap();
    let mut second = Wire::new(TcpStream::connect(node.addr).await.unwrap());
    assert!(handshake(&mut second, register()).await.is_ok());
    metric_reaches(&node.metrics, "tunnox_connections", 2.0).await;
    let mut third = Wire::new(TcpStream::connect(node.addr).await.unwrap());
    assert_eq!(handshake(&mut third, register()).await, Err(None));
    // The established session is not disturbed.
    assert!(second.answers_ping(7).await);
    drop(first);
    metric_reaches(&node.metrics, "tunnox_connections", 1.0).await;
    let mut fourth = Wire::new(TcpStream::connect(node.addr).await.unwrap());
    assert!(handshake(&mut fourth, register()).await.is_ok());
}

/// A listener whose every accept fails at once (as when the process is out of descriptors),
/// counting the attempts.
struct FailingListener(Arc<AtomicUsize>);

impl Listener for FailingListener {
    fn accept(&mut self) -> NetFuture<'_, std::io::Result<(Conn, SocketAddr)>> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Err(std::io::Error::other("too many open files")) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_listener_does_not_spin_the_node() {
    let clock = Clock::new();
    let node = Node::new(
        clock.now(),
        wall_now(),
        NodeConfig::new("node-1"),
        ControlState::default(),
        Rng::seed_from_u64(1),
    );
    let attempts = Arc::new(AtomicUsize::new(0));
    let driver = NodeDriver::new(node, clock, None, "127.0.0.1");
    let (commands, task) = tunnox_runtime_tokio::node::spawn_node_on(
        driver,
        Box::new(FailingListener(attempts.clone())),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Still answering commands.
    assert!(
        tunnox_runtime_tokio::node::create_client(&commands, "x")
            .await
            .is_ok()
    );
    let tried = attempts.load(Ordering::Relaxed);
    assert!(
        (1..=30).contains(&tried),
        "{tried} accept attempts in a second: it spins"
    );
    commands.send(NodeCommand::Shutdown).await.unwrap();
    task.await.unwrap();
}

// ----- per-session limits -----

fn open_payload(mapping: &MappingId) -> Bytes {
    encode_open(&pb::StreamOpen {
        mapping_id: mapping.as_str().to_owned(),
        target: None,
        protocol: pb::Protocol::Tcp as i32,
        visitor_addr: String::new(),
    })
}

/// Starts a real agent logged in as `id` (the target side of mappings).
async fn start_agent(node: SocketAddr, id: ClientId, secret: &ClientSecret) {
    let clock = Clock::new();
    let config = AgentConfig::new(login(id, secret.auth_key()), 1);
    let agent = Agent::new(clock.now(), config, Rng::seed_from_u64(id.0));
    let (notices_tx, mut notices) = mpsc::channel(64);
    let (commands, _task) = spawn_agent(AgentDriver::new(agent, clock, vec![node], notices_tx));
    std::mem::forget(commands);
    loop {
        match tokio::time::timeout(STEP, notices.recv()).await.unwrap() {
            Some(AgentOutput::Established { .. }) => break,
            Some(_) => {}
            None => panic!("the agent ended"),
        }
    }
    tokio::spawn(async move { while notices.recv().await.is_some() {} });
}

/// A client-port mapping from `listen` to `127.0.0.1:port` behind `target`.
async fn client_port_mapping(
    node: &TestNode,
    listen: ClientId,
    target: ClientId,
    port: u16,
    seed: u64,
) -> MappingId {
    let id = MappingId::generate(&mut Rng::seed_from_u64(seed));
    let entry = Entry::ClientPort {
        listen_client: listen,
        listen_addr: "127.0.0.1:1".into(),
    };
    let mapping = Mapping::tcp(id.clone(), entry, target, "127.0.0.1", port, wall_now());
    put_mapping(&node.commands, mapping).await.unwrap();
    id
}

/// Sends `data` on `stream` and reads the echo back (other streams' frames must not come).
async fn echoes(wire: &mut Wire, stream: StreamId, data: &[u8]) {
    wire.send(Frame::Data {
        stream,
        payload: Bytes::copy_from_slice(data),
    })
    .await;
    let mut back = Vec::new();
    while back.len() < data.len() {
        match wire.next_notable().await {
            Some(Frame::Data { stream: s, payload }) if s == stream => back.extend(payload),
            other => panic!("stream {stream}: expected its echo, got {other:?}"),
        }
    }
    assert_eq!(back, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_session_limit_are_reset_and_the_others_carry_on() {
    let node = start_node(config_with(|c| c.session.mux.max_streams = 3), |d| d).await;
    let (listen, listen_secret) = create_client(&node.commands, "listen").await;
    let (target, target_secret) = create_client(&node.commands, "target").await;
    start_agent(node.addr, target, &target_secret).await;
    let echo = echo_server().await;
    let mapping = client_port_mapping(&node, listen, target, echo.port(), 1).await;

    let mut wire = Wire::new(TcpStream::connect(node.addr).await.unwrap());
    let settings = handshake(&mut wire, login(listen, listen_secret.auth_key()))
        .await
        .unwrap();
    assert_eq!(
        settings.max_streams, 3,
        "the limit is announced in Welcome, so a well-behaved client never exceeds it"
    );
    for stream in [1, 3, 5] {
        wire.send(Frame::Open {
            stream,
            payload: open_payload(&mapping),
        })
        .await;
        match wire.next_notable().await {
            Some(Frame::OpenResult {
                stream: s,
                refused: false,
                ..
            }) if s == stream => {}
            other => panic!("stream {stream}: expected its acceptance, got {other:?}"),
        }
        echoes(&mut wire, stream, format!("hello {stream}").as_bytes()).await;
    }
    // A client that ignores the announced limit: its fourth stream is reset, typed.
    wire.send(Frame::Open {
        stream: 7,
        payload: open_payload(&mapping),
    })
    .await;
    assert_eq!(
        wire.next_notable().await,
        Some(Frame::Rst {
            stream: 7,
            reason: ResetReason::StreamLimit
        })
    );
    // The three streams it has are undisturbed.
    for stream in [1, 3, 5] {
        echoes(&mut wire, stream, format!("still {stream}").as_bytes()).await;
    }
    // Once one ends (FIN both ways), a new stream fits again.
    wire.send(Frame::Fin { stream: 1 }).await;
    assert_eq!(wire.next_notable().await, Some(Frame::Fin { stream: 1 }));
    wire.send(Frame::Open {
        stream: 9,
        payload: open_payload(&mapping),
    })
    .await;
    match wire.next_notable().await {
        Some(Frame::OpenResult {
            stream: 9,
            refused: false,
            ..
        }) => {}
        other => panic!("stream 9: expected its acceptance, got {other:?}"),
    }
    echoes(&mut wire, 9, b"room again").await;
}

/// The next OPEN the node sends to a (raw) target client; its stream id.
async fn next_open(wire: &mut Wire) -> StreamId {
    match wire.next_notable().await {
        Some(Frame::Open { stream, .. }) => stream,
        other => panic!("expected an OPEN for the target, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_opens_beyond_the_session_limit_are_refused() {
    let node = start_node(
        config_with(|c| {
            c.session.mux.max_pending_opens = 2;
            c.session.mux.max_pending_accepts = 2;
        }),
        |d| d,
    )
    .await;
    let (a, a_secret) = create_client(&node.commands, "listen-a").await;
    let (b, b_secret) = create_client(&node.commands, "listen-b").await;
    let (t, t_secret) = create_client(&node.commands, "target").await;
    let to_t_from_a = client_port_mapping(&node, a, t, 9, 1).await;
    let to_t_from_b = client_port_mapping(&node, b, t, 9, 2).await;
    // The target is a raw client that answers no open: every open to it stays pending.
    let mut target = logged_in(&node, t, &t_secret).await;
    let mut listen_a = logged_in(&node, a, &a_secret).await;
    let mut listen_b = logged_in(&node, b, &b_secret).await;

    for stream in [1, 3] {
        listen_a
            .send(Frame::Open {
                stream,
                payload: open_payload(&to_t_from_a),
            })
            .await;
    }
    let first = next_open(&mut target).await;
    let _second = next_open(&mut target).await;
    // A's third open while two wait for their target: reset, typed, at A's session.
    listen_a
        .send(Frame::Open {
            stream: 5,
            payload: open_payload(&to_t_from_a),
        })
        .await;
    assert_eq!(
        listen_a.next_notable().await,
        Some(Frame::Rst {
            stream: 5,
            reason: ResetReason::StreamLimit
        })
    );
    // B is within its own limit, but the node already has two opens waiting on the target's
    // session: B's open is refused OVERLOADED without reaching the target.
    listen_b
        .send(Frame::Open {
            stream: 1,
            payload: open_payload(&to_t_from_b),
        })
        .await;
    match listen_b.next_notable().await {
        Some(Frame::OpenResult {
            stream: 1,
            refused: true,
            payload,
        }) => assert_eq!(decode_result(payload).unwrap().0, OpenError::Overloaded),
        other => panic!("expected an OVERLOADED refusal, got {other:?}"),
    }
    // The target answers one open: the slot frees, and B's next open reaches the target.
    target
        .send(Frame::OpenResult {
            stream: first,
            refused: true,
            payload: encode_result(OpenError::DialRefused, "no"),
        })
        .await;
    match listen_a.next_notable().await {
        Some(Frame::OpenResult {
            stream: 1,
            refused: true,
            payload,
        }) => assert_eq!(decode_result(payload).unwrap().0, OpenError::DialRefused),
        other => panic!("expected stream 1's refusal, got {other:?}"),
    }
    listen_b
        .send(Frame::Open {
            stream: 3,
            payload: open_payload(&to_t_from_b),
        })
        .await;
    next_open(&mut target).await;
}

// ----- sessions per client -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_login_replaces_the_first_session() {
    let node = start_node(NodeConfig::new("node-1"), |d| d).await;
    let (id, secret) = create_client(&node.commands, "twice").await;
    let mut older = logged_in(&node, id, &secret).await;
    metric_reaches(&node.metrics, "tunnox_clients_online", 1.0).await;
    let mut newer = logged_in(&node, id, &secret).await;
    assert_eq!(
        older.next_notable().await,
        Some(Frame::GoAway {
            reason: GoAwayReason::Replaced
        })
    );
    assert_eq!(older.next_notable().await, None, "then closed");
    metric_reaches(&node.metrics, "tunnox_clients_online", 1.0).await;
    metric_reaches(&node.metrics, "tunnox_connections", 1.0).await;
    assert!(newer.answers_ping(9).await, "the newer session is live");
}
