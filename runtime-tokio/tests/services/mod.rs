//! Finding the machine's services (Redis) for integration tests: a test skips, with the reason
//! printed, when a service is absent, and fails instead when `TUNNOX_REQUIRE_SERVICES=1` (CI).

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Whether absent services fail the tests instead of skipping them.
pub fn services_required() -> bool {
    std::env::var("TUNNOX_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// The Redis URL for `test`, or `None` (after printing why) when Redis is not there.
/// Panics instead when services are required. `TUNNOX_REDIS_ADDR` overrides 127.0.0.1:6379.
pub fn redis_url(test: &str) -> Option<String> {
    let addr = std::env::var("TUNNOX_REDIS_ADDR").unwrap_or_else(|_| "127.0.0.1:6379".into());
    let reachable = addr
        .parse::<SocketAddr>()
        .map_err(|e| e.to_string())
        .and_then(|sock| {
            TcpStream::connect_timeout(&sock, Duration::from_secs(1)).map_err(|e| e.to_string())
        });
    match reachable {
        Ok(_) => Some(format!("redis://{addr}/")),
        Err(why) if services_required() => {
            panic!("{test}: Redis at {addr} is required (TUNNOX_REQUIRE_SERVICES=1) but: {why}")
        }
        Err(why) => {
            eprintln!(
                "SKIPPED {test}: Redis at {addr} is unreachable ({why}); \
                 TUNNOX_REQUIRE_SERVICES=1 makes this a failure"
            );
            None
        }
    }
}

/// A key prefix no other test run uses.
pub fn unique_prefix(test: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("tunnox:test:{test}:{}:{nanos}:{n}:", std::process::id())
}

/// Deletes every key under `prefix` (best effort).
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
