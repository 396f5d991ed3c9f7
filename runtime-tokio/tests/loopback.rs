//! A real node, two real agents and an echo service on loopback TCP: client-port and node-port
//! mappings carry many concurrent connections byte-exact, half-close works, and a visitor that
//! stops reading does not stall the others sharing its sessions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    connect_when_listening, create_client, echo_server, firehose_byte, firehose_server, free_port,
    many_connections, random, round_trip, start_agent, try_round_trip,
};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tunnox_core::control::{ClientId, Entry, Mapping, MappingId};
use tunnox_core::node::{ControlState, Node, NodeConfig};
use tunnox_core::rng::Rng;
use tunnox_runtime_tokio::clock::{Clock, wall_now};
use tunnox_runtime_tokio::node::{self, NodeCommand, NodeDriver, spawn_node};

struct Setup {
    node: mpsc::Sender<NodeCommand>,
    node_addr: SocketAddr,
    listen_client: ClientId,
    target_client: ClientId,
    echo: SocketAddr,
}

async fn setup() -> Setup {
    setup_with(None).await
}

/// [`setup`], counting into `metrics` if given.
async fn setup_with(metrics: Option<Arc<tunnox_runtime_tokio::metrics::NodeMetrics>>) -> Setup {
    setup_with_store(metrics, None).await
}

/// [`setup_with`], keeping the node's state in `store` if given.
async fn setup_with_store(
    metrics: Option<Arc<tunnox_runtime_tokio::metrics::NodeMetrics>>,
    store: Option<tunnox_runtime_tokio::storage::EmbeddedStore>,
) -> Setup {
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
    let mut driver = NodeDriver::new(node, clock, store, "127.0.0.1");
    if let Some(metrics) = metrics {
        driver = driver.with_metrics(metrics);
    }
    let (node_tx, _task) = spawn_node(driver, listener);
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

/// Reads `len` bytes from `stream` and checks they are the firehose's bytes from `offset` on.
async fn read_firehose(stream: &mut TcpStream, offset: u64, len: usize) {
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await.unwrap();
    let expected: Vec<u8> = (offset..offset + len as u64).map(firehose_byte).collect();
    assert!(
        buf == expected,
        "the firehose's bytes {offset}..{} came back altered",
        offset + len as u64
    );
}

/// Two mappings of the kind `entry` makes, to the same target client and so over the same
/// client session(s): one to a firehose, one to the echo service.
struct StuckAndEcho {
    /// Keeps the node running.
    _setup: Setup,
    stuck_port: u16,
    echo_port: u16,
    /// Bytes the firehose wrote so far.
    written: Arc<AtomicU64>,
}

async fn stuck_and_echo_mappings(entry: impl Fn(&Setup) -> Entry) -> StuckAndEcho {
    let s = setup().await;
    let (firehose, written) = firehose_server().await;
    let stuck_entry = entry(&s);
    let stuck_port = entry_port(&stuck_entry);
    put_mapping_to(&s, stuck_entry, firehose.port(), 21).await;
    let echo_entry = entry(&s);
    let echo_port = entry_port(&echo_entry);
    put_mapping(&s, echo_entry, 22).await;
    StuckAndEcho {
        _setup: s,
        stuck_port,
        echo_port,
        written,
    }
}

/// Waits until the firehose stops writing (its count still after 500 ms): every buffer between
/// it and its visitors, their stream windows included, is full. Returns the bytes written.
async fn wait_until_the_firehose_stalls(written: &AtomicU64) -> u64 {
    let mut last = written.load(Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = written.load(Ordering::Relaxed);
            if now == last {
                return now;
            }
            last = now;
        }
    })
    .await
    .expect("the firehose stalls: something pushes back on visitors that do not read")
}

/// `count` visitors round-trip `ECHO_BYTES` each through `port` at once, byte-exact, within
/// 30 s (a hang detector, not a speed check).
async fn echo_visitors_finish(port: u16, count: u64) {
    const ECHO_BYTES: usize = 1024 * 1024;
    let visitors: Vec<_> = (0..count)
        .map(|i| {
            tokio::spawn(async move {
                let data = random(100 + i, ECHO_BYTES);
                let back = round_trip(port, data.clone()).await;
                assert!(
                    back == data,
                    "visitor {i}: {} of {} bytes came back",
                    back.len(),
                    data.len()
                );
            })
        })
        .collect();
    let all_done = async {
        for visitor in visitors {
            visitor.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all_done)
        .await
        .expect("visitors sharing a session with stuck ones finish (no head-of-line stall)");
}

/// Visitor A pulls from a firehose through `entry` and stops reading; other visitors through a
/// second mapping over the same client session(s) must still round-trip 1 MiB each byte-exact,
/// and A must then read on from where it stopped.
///
/// Why this hangs when per-stream flow control is broken: A's bytes back up from its socket into
/// the relay on the entry side, then into A's stream in the mux of the session that carries it.
/// The mux must stop A's sender once A's *stream* window is used up, while enough *session*
/// window stays free for the other streams. If a stuck stream could take the whole session window
/// (no per-stream limit, or a stream window as large as the session's), or if a driver stopped
/// reading the session socket because one local socket is full, the echo replies would wait
/// behind A's unread bytes forever; the timeout turns that hang into a failure. (Checked: with the
/// mux's initial stream window raised to the 16 MiB session window, both variants fail there.)
/// If nothing pushed back on A at all, the firehose would never stall and its bytes would pile up
/// in memory: the stall wait fails instead.
///
/// A reads little before it stops and the session has no RTT sample yet, so A's window does not
/// auto-tune here; see the ignored test below for stuck streams filling the session window.
async fn a_visitor_that_stops_reading_does_not_stall_the_others(entry: impl Fn(&Setup) -> Entry) {
    const FIRST_READ_BYTES: usize = 64 * 1024;
    let m = stuck_and_echo_mappings(entry).await;

    // A reads a little (the tunnel works), then nothing.
    let mut stuck = connect_when_listening(m.stuck_port).await;
    tokio::time::timeout(
        Duration::from_secs(10),
        read_firehose(&mut stuck, 0, FIRST_READ_BYTES),
    )
    .await
    .expect("the firehose's first bytes arrive");
    let stalled = wait_until_the_firehose_stalls(&m.written).await;
    eprintln!(
        "firehose stalled after {stalled} bytes ({} unread by A)",
        stalled - FIRST_READ_BYTES as u64
    );

    echo_visitors_finish(m.echo_port, 4).await;

    // A was only slow: it reads on from where it stopped, nothing lost or reordered.
    tokio::time::timeout(
        Duration::from_secs(30),
        read_firehose(&mut stuck, FIRST_READ_BYTES as u64, 4 * 1024 * 1024),
    )
    .await
    .expect("the stuck visitor resumes");
}

/// The port visitors connect to for `entry` (a node port or a client port on 127.0.0.1).
fn entry_port(entry: &Entry) -> u16 {
    match entry {
        Entry::NodePort { port, .. } => *port,
        Entry::ClientPort { listen_addr, .. } => listen_addr
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .unwrap(),
        other => panic!("no port to connect to for {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_visitor_does_not_stall_others_on_a_node_port() {
    a_visitor_that_stops_reading_does_not_stall_the_others(|_| Entry::NodePort {
        port: free_port(),
        bind: None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_visitor_does_not_stall_others_on_a_client_port() {
    a_visitor_that_stops_reading_does_not_stall_the_others(|s| Entry::ClientPort {
        listen_client: s.listen_client,
        listen_addr: format!("127.0.0.1:{}", free_port()),
    })
    .await;
}

/// Many visitors that stop reading must not stall the session for every other visitor.
///
/// 64 stuck streams hold 64 × 256 KiB = 16 MiB unread in the node's mux, the whole session
/// window. When session credit went back only as the application read, 40-odd stuck visitors
/// stalled every mapping through the target client (anyone who can reach a node port could do it
/// on purpose); now session credit goes back on receipt and the stream windows bound the buffers.
/// Writes about 500 MB through loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_stuck_visitors_do_not_stall_others_on_a_node_port() {
    const STUCK_VISITORS: usize = 64;
    let m = stuck_and_echo_mappings(|_| Entry::NodePort {
        port: free_port(),
        bind: None,
    })
    .await;
    let mut stuck = Vec::new();
    for i in 0..STUCK_VISITORS {
        let mut visitor = connect_when_listening(m.stuck_port).await;
        tokio::time::timeout(
            Duration::from_secs(10),
            read_firehose(&mut visitor, 0, 1024),
        )
        .await
        .unwrap_or_else(|_| {
            panic!("visitor {i} got nothing: the {i} before it stalled the session")
        });
        stuck.push(visitor);
    }
    wait_until_the_firehose_stalls(&m.written).await;
    echo_visitors_finish(m.echo_port, 2).await;
    for visitor in &mut stuck {
        tokio::time::timeout(
            Duration::from_secs(30),
            read_firehose(visitor, 1024, 64 * 1024),
        )
        .await
        .expect("every stuck visitor resumes");
    }
}

/// `GET path` on `addr` over HTTP/1.1: the status code and the body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: tunnox\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the metric line starting with `name` (labels included), if present.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_version_and_metrics_that_move_with_real_traffic() {
    use std::sync::atomic::AtomicBool;
    use tunnox_runtime_tokio::api::{ApiState, serve};
    use tunnox_runtime_tokio::metrics::NodeMetrics;
    let metrics = Arc::new(NodeMetrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_addr = api.local_addr().unwrap();
    let state = ApiState::new(metrics.clone(), ready.clone());
    tokio::spawn(serve(api, state));

    let (status, body) = http_get(api_addr, "/ready").await;
    assert_eq!(status, 503, "not ready before the node serves: {body}");
    let dir = std::env::temp_dir().join(format!("tunnox-loopback-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store =
        tunnox_runtime_tokio::storage::EmbeddedStore::open(&dir.join("tunnox.redb")).unwrap();
    let s = setup_with_store(Some(metrics.clone()), Some(store)).await;
    ready.store(true, Ordering::Relaxed);
    let (status, body) = http_get(api_addr, "/ready").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(api_addr, "/health").await;
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["success"], true);
    assert_eq!(health["code"], 0);
    let (_, body) = http_get(api_addr, "/version").await;
    assert!(body.contains(env!("CARGO_PKG_VERSION")), "{body}");

    // Real traffic through a node port.
    let port = free_port();
    put_mapping(&s, Entry::NodePort { port, bind: None }, 7).await;
    tokio::time::timeout(Duration::from_secs(60), many_connections(port, 10))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await; // the gauges' sampling interval

    let (status, text) = http_get(api_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "tunnox_clients_online"), Some(2.0), "{text}");
    assert_eq!(
        metric(&text, "tunnox_sessions_established_total"),
        Some(2.0)
    );
    let finished = metric(&text, "tunnox_tunnels_closed_total{reason=\"finished\"}");
    assert_eq!(finished, Some(10.0), "{text}");
    let to_target = metric(&text, "tunnox_tunnel_bytes_total{direction=\"to_target\"}").unwrap();
    let to_entry = metric(&text, "tunnox_tunnel_bytes_total{direction=\"to_entry\"}").unwrap();
    assert!(
        to_target > 10_000.0 && to_target == to_entry,
        "echoed bytes: {to_target} / {to_entry}"
    );
    assert_eq!(metric(&text, "tunnox_tunnels_active"), Some(0.0));
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );

    // Each tunnel is one stream on the target client's session (opened by the node).
    let opened = metric(&text, "tunnox_streams_opened_total").unwrap();
    assert!(opened >= 10.0, "streams opened: {opened}\n{text}");
    // The same bytes, by mapping.
    let mapping = MappingId::generate(&mut Rng::seed_from_u64(7));
    let by_mapping = |direction: &str| {
        metric(
            &text,
            &format!(
                "tunnox_mapping_bytes_total{{mapping=\"{mapping}\",direction=\"{direction}\"}}"
            ),
        )
    };
    assert_eq!(by_mapping("to_target"), Some(to_target), "{text}");
    assert_eq!(by_mapping("to_entry"), Some(to_entry), "{text}");
    // Every session got its configuration when it was established and the target client the
    // new mapping's: three pushes, each acknowledged and timed.
    let acks = metric(&text, "tunnox_config_push_ack_seconds_count").unwrap();
    assert!(acks >= 3.0, "config acks: {acks}\n{text}");
    let ack_seconds = metric(&text, "tunnox_config_push_ack_seconds_sum").unwrap();
    assert!(
        ack_seconds < acks,
        "each ack within a second on loopback: {ack_seconds}"
    );
    // Two clients and a mapping went to the embedded store, one transaction each.
    let applied = metric(
        &text,
        "tunnox_storage_operations_total{backend=\"embedded\",op=\"apply\",result=\"ok\"}",
    )
    .unwrap();
    assert!(applied >= 3.0, "store writes: {applied}\n{text}");
    assert_eq!(
        metric(&text, "tunnox_storage_degraded{backend=\"embedded\"}"),
        Some(0.0)
    );

    // A deleted mapping's series go at the next sample.
    let (reply, answer) = tokio::sync::oneshot::channel();
    s.node
        .send(NodeCommand::DeleteMapping {
            id: mapping.clone(),
            reply,
        })
        .await
        .unwrap();
    answer.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, text) = http_get(api_addr, "/metrics").await;
    assert_eq!(by_mapping_in(&text, &mapping), None, "{text}");
    assert_eq!(
        metric(&text, "tunnox_tunnel_bytes_total{direction=\"to_target\"}"),
        Some(to_target),
        "the totals by direction stay"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The first `tunnox_mapping_bytes_total` line of `mapping`, if any.
fn by_mapping_in(text: &str, mapping: &MappingId) -> Option<String> {
    let needle = format!("tunnox_mapping_bytes_total{{mapping=\"{mapping}\"");
    text.lines()
        .find(|l| l.starts_with(&needle))
        .map(str::to_owned)
}
