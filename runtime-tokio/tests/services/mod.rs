//! Helpers for tests that need a real service (Redis, NATS): find it or skip, unique names per
//! run, and a TCP proxy whose connections a test can cut.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A service a test can run against, at its usual local address.
#[derive(Debug, Clone, Copy)]
pub enum Service {
    /// Redis at 127.0.0.1:6379.
    Redis,
    /// NATS at 127.0.0.1:4222.
    Nats,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Redis => "Redis",
            Service::Nats => "NATS",
        }
    }

    fn addr(self) -> SocketAddr {
        match self {
            Service::Redis => SocketAddr::from(([127, 0, 0, 1], 6379)),
            Service::Nats => SocketAddr::from(([127, 0, 0, 1], 4222)),
        }
    }
}

/// Environment variable that turns a missing service from a skip into a failure (CI sets it).
pub const REQUIRE_SERVICES: &str = "TUNNOX_REQUIRE_SERVICES";

/// The address of `service` if it accepts connections. If it does not: fails the test when
/// `TUNNOX_REQUIRE_SERVICES=1`, else prints why `test` is skipped and returns `None`.
pub async fn service(service: Service, test: &str) -> Option<SocketAddr> {
    let addr = service.addr();
    let reachable = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await;
    let reason = match reachable {
        Ok(Ok(_)) => return Some(addr),
        Ok(Err(e)) => format!("{e}"),
        Err(_) => "no answer within 2 s".to_owned(),
    };
    let message = format!("{} is not reachable at {addr} ({reason})", service.name());
    skip_or_fail(test, &message)
}

/// Fails the test when `TUNNOX_REQUIRE_SERVICES=1`, else prints why `test` is skipped.
fn skip_or_fail<T>(test: &str, message: &str) -> Option<T> {
    if std::env::var(REQUIRE_SERVICES).is_ok_and(|v| v == "1") {
        panic!("{message}, and {REQUIRE_SERVICES}=1 requires it");
    }
    // Straight to stderr: the test harness captures `eprintln!` of passing tests, and a skip must
    // be seen.
    let line = format!("SKIPPED {test}: {message}; set {REQUIRE_SERVICES}=1 to fail instead\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    None
}

/// The Redis URL for `test` (`TUNNOX_REDIS_ADDR` overrides 127.0.0.1:6379), or `None` after
/// printing why it is skipped; fails instead when services are required.
pub fn redis_url(test: &str) -> Option<String> {
    let addr = std::env::var("TUNNOX_REDIS_ADDR").unwrap_or_else(|_| "127.0.0.1:6379".into());
    let reachable = addr
        .parse::<SocketAddr>()
        .map_err(|e| e.to_string())
        .and_then(|sock| {
            std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(1))
                .map_err(|e| e.to_string())
        });
    match reachable {
        Ok(_) => Some(format!("redis://{addr}/")),
        Err(why) => skip_or_fail(test, &format!("Redis is not reachable at {addr} ({why})")),
    }
}

/// A key prefix no other test run uses: `tunnox:test:<test>:<pid>:<nanos>:<n>:`.
pub fn unique_key_prefix(test: &str) -> String {
    let channel = unique_prefix();
    format!("tunnox:test:{test}:{}:", channel.trim_end_matches('.'))
}

/// Deletes every Redis key under `prefix` (best effort).
pub async fn remove_prefix(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut con) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut con)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<u64, _> = redis::cmd("DEL").arg(&keys).query_async(&mut con).await;
    }
}

/// An address on loopback where nothing listens.
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A channel prefix no other test or run uses: `tunnox-test-<pid>-<nanos>-<n>.`
pub fn unique_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("tunnox-test-{}-{nanos}-{n}.", std::process::id())
}

/// A TCP proxy in front of a service. [`CutProxy::cut`] closes every connection through it and
/// refuses new ones until [`CutProxy::heal`]: a network fault between one client and the server.
#[derive(Debug)]
pub struct CutProxy {
    addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    listener: AbortHandle,
}

#[derive(Debug, Default)]
struct ProxyState {
    cut: bool,
    pipes: Vec<AbortHandle>,
    accepted: u64,
}

impl CutProxy {
    /// A proxy on a free loopback port forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut downstream, _)) = listener.accept().await {
                let mut st = shared.lock().unwrap();
                st.accepted += 1;
                if st.cut {
                    continue; // dropped: closed at once
                }
                let pipe = tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut downstream, &mut up).await;
                    }
                });
                st.pipes.push(pipe.abort_handle());
            }
        });
        CutProxy {
            addr,
            state,
            listener: accept.abort_handle(),
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        let mut st = self.state.lock().unwrap();
        st.cut = true;
        for pipe in st.pipes.drain(..) {
            pipe.abort();
        }
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.state.lock().unwrap().cut = false;
    }

    /// Connections accepted so far (including refused ones).
    pub fn accepted(&self) -> u64 {
        self.state.lock().unwrap().accepted
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.listener.abort();
        self.cut();
    }
}
