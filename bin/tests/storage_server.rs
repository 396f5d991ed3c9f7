//! `tunnox storage-server` as a real process: RemoteStorage against it, HybridStorage (a real
//! Redis cache in front of it) through a crash (SIGKILL) and a restart on the same data.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../../runtime-tokio/tests/services/mod.rs"]
mod services;

mod common;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::{Proc, free_port};
use tunnox_runtime_tokio::clock::WallClock;
use tunnox_runtime_tokio::storage::{
    CachePolicy, HybridStorage, RedisCache, RedisConfig, RemoteConfig, RemoteStorage, Storage,
    StorageError, StorageToken,
};

const TOKEN: &str = "storage-server test token, long enough";

/// A `tunnox storage-server` process on `port` over `dir`, killed when dropped.
fn storage_server(dir: &std::path::Path, port: u16) -> Proc {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tunnox"));
    command
        .args(["storage-server", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data")
        .arg(dir)
        .env("TUNNOX_STORAGE_TOKEN", TOKEN)
        .env_remove("TUNNOX_STORAGE_TOKEN_FILE");
    let server = Proc::start(command);
    server.wait_for("listening on");
    server
}

fn fresh_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn remote(port: u16, token: &str) -> RemoteStorage {
    let config = RemoteConfig::new(
        format!("127.0.0.1:{port}"),
        StorageToken::new(token).unwrap(),
    );
    RemoteStorage::connect(config).unwrap()
}

/// Runs `tunnox storage-server` with `args` and `env` to its end: success, and stderr.
fn run_to_end(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tunnox"));
    command
        .arg("storage-server")
        .args(args)
        .env_remove("TUNNOX_STORAGE_TOKEN")
        .env_remove("TUNNOX_STORAGE_TOKEN_FILE");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_storage_server_refuses_to_start_without_a_usable_token() {
    let dir = fresh_dir("storage-server-no-token");
    let data = dir.to_str().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let (ok, stderr) = run_to_end(&["--data", data, "--listen", &listen], &[]);
    assert!(!ok);
    assert!(stderr.contains("needs a token"), "{stderr}");
    assert!(stderr.contains("--token-file"), "{stderr}");

    let short = dir.join("short.token");
    std::fs::write(&short, "short\n").unwrap();
    let (ok, stderr) = run_to_end(
        &["--data", data, "--listen", &listen],
        &[("TUNNOX_STORAGE_TOKEN_FILE", short.to_str().unwrap())],
    );
    assert!(!ok);
    assert!(stderr.contains("at least 16"), "{stderr}");

    let (ok, stderr) = run_to_end(
        &[
            "--data",
            data,
            "--listen",
            &listen,
            "--token-file",
            "/nonexistent/token",
        ],
        &[],
    );
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/token"), "{stderr}");

    let (ok, stderr) = run_to_end(
        &[
            "--data",
            data,
            "--listen",
            &listen,
            "--tls-cert-file",
            "cert.pem",
        ],
        &[("TUNNOX_STORAGE_TOKEN", TOKEN)],
    );
    assert!(!ok);
    assert!(stderr.contains("--tls-key-file"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_storage_against_the_process_checks_the_token_and_keeps_data_across_a_crash() {
    let dir = fresh_dir("storage-server-crash");
    let port = free_port();
    let server = storage_server(&dir, port);
    let store = remote(port, TOKEN);
    store.ping().await.unwrap();
    let wrong = remote(port, "a wrong token of enough length");
    assert!(matches!(
        wrong.get("k").await,
        Err(StorageError::Unauthenticated { .. })
    ));
    assert!(matches!(
        store.set("", Bytes::new(), None).await,
        Err(StorageError::Invalid { .. })
    ));

    // Acknowledged before the crash.
    for i in 0..50 {
        store
            .set(
                &format!("key/{i:02}"),
                Bytes::from(format!("value {i}")),
                None,
            )
            .await
            .unwrap();
    }
    let versioned = store
        .set_versioned("versioned", Bytes::from_static(b"v"))
        .await
        .unwrap();
    store
        .list_push("list", Bytes::from_static(b"a"))
        .await
        .unwrap();
    store
        .list_push("list", Bytes::from_static(b"b"))
        .await
        .unwrap();
    assert!(
        store
            .compare_and_swap("route", None, Some(Bytes::from_static(b"node-1")), None)
            .await
            .unwrap()
    );
    assert_eq!(store.incr("counter", 41).await.unwrap(), 41);
    server.crash();

    let err = store.get("key/00").await.unwrap_err();
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err:?}");

    let _server = storage_server(&dir, port);
    for i in 0..50 {
        assert_eq!(
            store.get(&format!("key/{i:02}")).await.unwrap(),
            Some(Bytes::from(format!("value {i}")))
        );
    }
    assert_eq!(store.scan_prefix("key/", 100).await.unwrap().len(), 50);
    assert_eq!(store.get_versioned("versioned").await.unwrap(), versioned);
    assert_eq!(
        store.list_range("list", 0, -1).await.unwrap(),
        vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
    );
    assert_eq!(
        store.get("route").await.unwrap(),
        Some(Bytes::from_static(b"node-1"))
    );
    assert_eq!(store.incr("counter", 1).await.unwrap(), 42);
    let later = store
        .set_versioned("versioned", Bytes::new())
        .await
        .unwrap();
    assert!(later.version > versioned.version);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_storage_serves_cached_reads_degraded_while_the_process_is_down() {
    let Some(url) = services::redis_url("hybrid_storage_serves_cached_reads_degraded") else {
        return;
    };
    let prefix = services::unique_key_prefix("storage-server-hybrid");
    let dir = fresh_dir("storage-server-hybrid");
    let port = free_port();
    let server = storage_server(&dir, port);
    let mut cache_config = RedisConfig::new(url.clone());
    cache_config.key_prefix = prefix.clone();
    let cache = RedisCache::open(&cache_config, WallClock::new()).unwrap();
    let policy = CachePolicy {
        entry_ttl: Duration::from_millis(200),
        stale_grace: Duration::from_secs(60),
    };
    let hybrid = HybridStorage::new(remote(port, TOKEN), cache, policy);

    let keys: Vec<String> = (0..20).map(|i| format!("user/{i}")).collect();
    for key in &keys {
        hybrid
            .set(key, Bytes::from(format!("{key} data")), None)
            .await
            .unwrap();
    }
    // Reads hit the cache the writes filled.
    for key in &keys {
        assert_eq!(
            hybrid.get(key).await.unwrap(),
            Some(Bytes::from(format!("{key} data")))
        );
    }
    let stats = hybrid.stats();
    assert_eq!(stats.cache.hits, 20, "{stats:?}");
    assert_eq!(stats.cache_errors, 0, "{stats:?}");

    server.crash();
    tokio::time::sleep(Duration::from_millis(300)).await; // past freshness, within the grace
    for key in &keys {
        assert_eq!(
            hybrid.get(key).await.unwrap(),
            Some(Bytes::from(format!("{key} data"))),
            "degraded read of {key}"
        );
    }
    let stats = hybrid.stats();
    assert_eq!(stats.cache.degraded_reads, 20, "{stats:?}");
    let err = hybrid.get("never/cached").await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    let err = hybrid
        .set("user/0", Bytes::from_static(b"lost"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err:?}");
    let err = hybrid.incr("counter", 1).await.unwrap_err();
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err:?}");
    assert_eq!(hybrid.stats().cache.failed_writes, 2);

    let _server = storage_server(&dir, port);
    for key in &keys {
        let value = Some(Bytes::from(format!("{key} data")));
        assert_eq!(
            hybrid.get(key).await.unwrap(),
            value,
            "after restart: {key}"
        );
        assert_eq!(
            hybrid.source().get(key).await.unwrap(),
            value,
            "at the source: {key}"
        );
    }
    hybrid
        .set("user/0", Bytes::from_static(b"new"), None)
        .await
        .unwrap();
    assert_eq!(
        hybrid.get("user/0").await.unwrap(),
        Some(Bytes::from_static(b"new"))
    );
    services::remove_prefix(&url, &prefix).await;
    let _ = std::fs::remove_dir_all(dir);
}
