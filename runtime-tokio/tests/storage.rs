//! The key/value storage backends against the real Redis: every operation on memory and Redis
//! (one test body), versions, the cache-aside race refused by the real Lua script, a down source
//! (degraded reads, failed writes, nothing acknowledged lost) and a down cache (fall-through).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod services;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tunnox_core::storage::{CacheAside, CachePolicy, Lookup, Versioned};
use tunnox_runtime_tokio::clock::WallClock;
use tunnox_runtime_tokio::storage::{
    EmbeddedKv, HybridStorage, MemoryStorage, RedisCache, RedisConfig, RedisStorage, RemoteConfig,
    RemoteStorage, RemoteTls, ServerTls, Storage, StorageError, StorageServer, StorageServerConfig,
    StorageToken,
};

fn b(text: &'static str) -> Bytes {
    Bytes::from_static(text.as_bytes())
}

fn config(url: &str, prefix: &str) -> RedisConfig {
    RedisConfig {
        url: url.to_owned(),
        key_prefix: prefix.to_owned(),
        deadline: Duration::from_secs(2),
    }
}

/// Every operation of the interface, with its edge cases.
async fn exercise(store: &impl Storage) {
    // get / set / exists / delete.
    assert_eq!(store.get("a").await.unwrap(), None);
    assert!(!store.exists("a").await.unwrap());
    store.set("a", b("1"), None).await.unwrap();
    assert_eq!(store.get("a").await.unwrap(), Some(b("1")));
    assert!(store.exists("a").await.unwrap());
    store.set("a", b("2"), None).await.unwrap();
    assert_eq!(store.get("a").await.unwrap(), Some(b("2")));
    assert!(store.delete("a").await.unwrap());
    assert!(!store.delete("a").await.unwrap());
    assert_eq!(store.get("a").await.unwrap(), None);

    // Binary values survive.
    let binary = Bytes::from(vec![0u8, 255, 10, 13, 0]);
    store.set("bin", binary.clone(), None).await.unwrap();
    assert_eq!(store.get("bin").await.unwrap(), Some(binary));

    // set_if_absent.
    assert!(store.set_if_absent("nx", b("first"), None).await.unwrap());
    assert!(!store.set_if_absent("nx", b("second"), None).await.unwrap());
    assert_eq!(store.get("nx").await.unwrap(), Some(b("first")));

    // incr.
    assert_eq!(store.incr("n", 5).await.unwrap(), 5);
    assert_eq!(store.incr("n", -7).await.unwrap(), -2);
    assert_eq!(store.get("n").await.unwrap(), Some(b("-2")));
    store.set("word", b("abc"), None).await.unwrap();
    assert!(matches!(
        store.incr("word", 1).await,
        Err(StorageError::NotAnInteger { .. })
    ));
    store
        .set("big", Bytes::from(i64::MAX.to_string()), None)
        .await
        .unwrap();
    assert!(matches!(
        store.incr("big", 1).await,
        Err(StorageError::NotAnInteger { .. })
    ));

    // TTLs: a key expires; set_if_absent takes an expired key; incr keeps the TTL.
    store
        .set("ttl", b("x"), Some(Duration::from_millis(150)))
        .await
        .unwrap();
    assert!(
        store
            .set_if_absent("ttl-nx", b("y"), Some(Duration::from_millis(150)))
            .await
            .unwrap()
    );
    assert!(store.exists("ttl-nx").await.unwrap());
    store
        .set("ttl-n", b("1"), Some(Duration::from_millis(150)))
        .await
        .unwrap();
    assert_eq!(store.incr("ttl-n", 1).await.unwrap(), 2);
    assert!(store.exists("ttl").await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.get("ttl").await.unwrap(), None);
    assert!(!store.exists("ttl-nx").await.unwrap());
    assert_eq!(store.get("ttl-n").await.unwrap(), None, "incr kept the TTL");
    assert!(store.set_if_absent("ttl", b("again"), None).await.unwrap());

    // Batches.
    store
        .set_many(&[("m1", b("one")), ("m2", b("two"))], None)
        .await
        .unwrap();
    assert_eq!(
        store.get_many(&["m1", "missing", "m2"]).await.unwrap(),
        vec![Some(b("one")), None, Some(b("two"))]
    );
    assert_eq!(
        store.get_many(&[]).await.unwrap(),
        Vec::<Option<Bytes>>::new()
    );
    assert_eq!(
        store.delete_many(&["m1", "missing", "m2"]).await.unwrap(),
        2
    );
    assert_eq!(
        store.get_many(&["m1", "m2"]).await.unwrap(),
        vec![None, None]
    );
    store
        .set_many(&[("mt", b("t"))], Some(Duration::from_millis(100)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.get("mt").await.unwrap(), None);

    // Versions: every write raises them, a delete too, and they never go back.
    let absent = store.get_versioned("v").await.unwrap();
    assert_eq!(absent.value, None);
    let v1 = store.set_versioned("v", b("one")).await.unwrap();
    assert!(v1.version > absent.version);
    assert_eq!(v1.value, Some(b("one")));
    let v2 = store.set_versioned("v", b("two")).await.unwrap();
    assert!(v2.version > v1.version);
    assert_eq!(store.get_versioned("v").await.unwrap(), v2);
    assert_eq!(store.get("v").await.unwrap(), Some(b("two")));
    let deleted = store.delete_versioned("v").await.unwrap();
    assert!(deleted.version > v2.version);
    assert_eq!(deleted.value, None);
    let read = store.get_versioned("v").await.unwrap();
    assert!(read.version >= deleted.version && read.value.is_none());
    let v3 = store.set_versioned("v", b("three")).await.unwrap();
    assert!(v3.version > deleted.version, "versions survive a delete");
    store.set("v", b("plain"), None).await.unwrap();
    let plain = store.get_versioned("v").await.unwrap();
    assert!(plain.version > v3.version, "a plain set raises the version");
    store.set("v", b("7"), None).await.unwrap();
    let before = store.get_versioned("v").await.unwrap().version;
    store.incr("v", 1).await.unwrap();
    assert!(
        store.get_versioned("v").await.unwrap().version > before,
        "incr too"
    );
    store.delete("v").await.unwrap();
    assert!(store.get_versioned("v").await.unwrap().version > before);

    exercise_cas_scan_ttl(store).await;
    exercise_lists(store).await;
    store.ping().await.unwrap();
}

/// compare_and_swap, scan_prefix, expire and ttl.
async fn exercise_cas_scan_ttl(store: &impl Storage) {
    // compare_and_swap: absent → value → other value → deleted, each step raising the version.
    assert!(
        !store
            .compare_and_swap("cas", Some(b("x")), Some(b("y")), None)
            .await
            .unwrap()
    );
    let before = store.get_versioned("cas").await.unwrap().version;
    assert!(
        store
            .compare_and_swap("cas", None, Some(b("one")), None)
            .await
            .unwrap()
    );
    let one = store.get_versioned("cas").await.unwrap();
    assert_eq!(one.value, Some(b("one")));
    assert!(one.version > before);
    assert!(
        !store
            .compare_and_swap("cas", None, Some(b("two")), None)
            .await
            .unwrap()
    );
    assert!(
        !store
            .compare_and_swap("cas", Some(b("two")), Some(b("three")), None)
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_versioned("cas").await.unwrap(),
        one,
        "a failed swap writes nothing"
    );
    assert!(
        store
            .compare_and_swap("cas", Some(b("one")), Some(b("two")), None)
            .await
            .unwrap()
    );
    let two = store.get_versioned("cas").await.unwrap();
    assert_eq!(two.value, Some(b("two")));
    assert!(two.version > one.version);
    assert!(
        store
            .compare_and_swap("cas", Some(b("two")), None, None)
            .await
            .unwrap()
    );
    assert!(!store.exists("cas").await.unwrap());
    assert!(store.get_versioned("cas").await.unwrap().version > two.version);
    // A lease: swapped in with a TTL, it expires.
    assert!(
        store
            .compare_and_swap(
                "lease",
                None,
                Some(b("node-1")),
                Some(Duration::from_millis(150))
            )
            .await
            .unwrap()
    );
    assert!(store.ttl("lease").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        store
            .compare_and_swap("lease", None, Some(b("node-2")), None)
            .await
            .unwrap()
    );
    assert_eq!(store.get("lease").await.unwrap(), Some(b("node-2")));
    assert_eq!(
        store.ttl("lease").await.unwrap(),
        None,
        "no TTL given: none kept"
    );

    // scan_prefix: sorted, bounded, exact prefix (glob characters are literal), lists left out.
    for key in ["s/b", "s/a", "s/c", "s*x", "t/a", "s/", "s"] {
        store.set(key, Bytes::from(key), None).await.unwrap();
    }
    store.list_push("s/list", b("l")).await.unwrap();
    let scanned = store.scan_prefix("s/", 10).await.unwrap();
    let keys: Vec<&str> = scanned.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(keys, ["s/", "s/a", "s/b", "s/c"]);
    assert_eq!(scanned[1].1, b("s/a"));
    let keys: Vec<String> = store
        .scan_prefix("s/", 2)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["s/", "s/a"]);
    assert_eq!(
        store.scan_prefix("s*", 10).await.unwrap(),
        vec![("s*x".to_owned(), b("s*x"))]
    );
    assert!(store.scan_prefix("nothing/", 10).await.unwrap().is_empty());
    assert!(store.scan_prefix("s/", 0).await.unwrap().is_empty());
    store
        .set("s/gone", b("g"), Some(Duration::from_millis(100)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        store.scan_prefix("s/", 10).await.unwrap().len(),
        4,
        "expired keys are not scanned"
    );

    // expire / ttl.
    assert_eq!(store.ttl("missing").await.unwrap(), None);
    assert!(
        !store
            .expire("missing", Duration::from_secs(5))
            .await
            .unwrap()
    );
    store.set("e", b("v"), None).await.unwrap();
    assert_eq!(store.ttl("e").await.unwrap(), None);
    let before = store.get_versioned("e").await.unwrap().version;
    assert!(store.expire("e", Duration::from_secs(60)).await.unwrap());
    assert!(
        store.get_versioned("e").await.unwrap().version > before,
        "expire raises the version"
    );
    let left = store.ttl("e").await.unwrap().unwrap();
    assert!(
        left > Duration::from_secs(50) && left <= Duration::from_secs(60),
        "{left:?}"
    );
    assert!(store.expire("e", Duration::from_millis(100)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(!store.exists("e").await.unwrap());
}

/// list_push, list_range, list_remove, list_len, and what a list key does to value operations.
async fn exercise_lists(store: &impl Storage) {
    assert_eq!(store.list_len("l").await.unwrap(), 0);
    assert!(store.list_range("l", 0, -1).await.unwrap().is_empty());
    for (i, element) in ["a", "b", "a", "c"].into_iter().enumerate() {
        assert_eq!(
            store.list_push("l", b(element)).await.unwrap(),
            i as u64 + 1
        );
    }
    assert_eq!(store.list_len("l").await.unwrap(), 4);
    assert!(store.exists("l").await.unwrap());
    assert_eq!(
        store.list_range("l", 0, -1).await.unwrap(),
        vec![b("a"), b("b"), b("a"), b("c")]
    );
    assert_eq!(
        store.list_range("l", 1, 2).await.unwrap(),
        vec![b("b"), b("a")]
    );
    assert_eq!(
        store.list_range("l", -2, -1).await.unwrap(),
        vec![b("a"), b("c")]
    );
    assert_eq!(store.list_range("l", -100, 0).await.unwrap(), vec![b("a")]);
    assert_eq!(store.list_range("l", 3, 100).await.unwrap(), vec![b("c")]);
    assert!(store.list_range("l", 2, 1).await.unwrap().is_empty());
    assert!(store.list_range("l", 10, 20).await.unwrap().is_empty());
    let before = store.get_versioned("x").await.unwrap().version;
    assert_eq!(store.list_remove("l", b"a").await.unwrap(), 2);
    assert!(
        store.get_versioned("x").await.unwrap().version > before,
        "a list write raises the counter"
    );
    assert_eq!(store.list_remove("l", b"zz").await.unwrap(), 0);
    assert_eq!(
        store.list_range("l", 0, -1).await.unwrap(),
        vec![b("b"), b("c")]
    );
    assert_eq!(store.list_remove("absent", b"a").await.unwrap(), 0);

    // A list key refuses value operations, and a value key list operations.
    let wrong = |r: Result<_, StorageError>| matches!(r, Err(StorageError::WrongKind { .. }));
    assert!(wrong(store.get("l").await.map(|_| ())));
    assert!(wrong(store.set("l", b("v"), None).await));
    assert!(wrong(store.set_versioned("l", b("v")).await.map(|_| ())));
    assert!(wrong(store.incr("l", 1).await.map(|_| ())));
    assert!(wrong(
        store
            .compare_and_swap("l", None, Some(b("v")), None)
            .await
            .map(|_| ())
    ));
    assert!(wrong(
        store
            .set_many(&[("fresh", b("v")), ("l", b("v"))], None)
            .await
    ));
    assert_eq!(
        store.get("fresh").await.unwrap(),
        None,
        "set_many is all or nothing"
    );
    store.set("value", b("v"), None).await.unwrap();
    assert!(wrong(store.list_push("value", b("e")).await.map(|_| ())));
    assert!(wrong(store.list_range("value", 0, -1).await.map(|_| ())));
    assert!(wrong(store.list_len("value").await.map(|_| ())));
    assert!(wrong(store.list_remove("value", b"v").await.map(|_| ())));

    // A list takes a TTL, and a delete.
    assert!(store.expire("l", Duration::from_secs(30)).await.unwrap());
    assert!(store.ttl("l").await.unwrap().is_some());
    assert!(store.delete("l").await.unwrap());
    assert_eq!(store.list_len("l").await.unwrap(), 0);
    store.set("l", b("a value now"), None).await.unwrap();
    assert_eq!(store.get("l").await.unwrap(), Some(b("a value now")));
    // Emptying a list removes the key.
    store.list_push("one", b("x")).await.unwrap();
    assert_eq!(store.list_remove("one", b"x").await.unwrap(), 1);
    assert!(!store.exists("one").await.unwrap());
}

#[tokio::test]
async fn every_operation_on_memory_storage() {
    exercise(&MemoryStorage::new()).await;
}

/// A fresh directory for one test's files.
fn fresh_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(services::unique_prefix().replace('.', "") + test);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn every_operation_on_embedded_kv() {
    let dir = fresh_dir("embedded-ops");
    exercise(&EmbeddedKv::open(&dir.join("kv.redb")).unwrap()).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn embedded_kv_keeps_values_lists_ttls_and_versions_across_a_restart() {
    let dir = fresh_dir("embedded-restart");
    let path = dir.join("kv.redb");
    let store = EmbeddedKv::open(&path).unwrap();
    let written = store.set_versioned("v", b("kept")).await.unwrap();
    store
        .set("ttl", b("t"), Some(Duration::from_secs(60)))
        .await
        .unwrap();
    store
        .set("short", b("s"), Some(Duration::from_millis(100)))
        .await
        .unwrap();
    store.list_push("l", b("1")).await.unwrap();
    store.list_push("l", b("2")).await.unwrap();
    let counter = store.get_versioned("absent").await.unwrap().version;
    drop(store);
    tokio::time::sleep(Duration::from_millis(200)).await; // "short" expires while closed

    let store = EmbeddedKv::open(&path).unwrap();
    assert_eq!(store.get_versioned("v").await.unwrap(), written);
    assert_eq!(store.get("ttl").await.unwrap(), Some(b("t")));
    let left = store.ttl("ttl").await.unwrap().unwrap();
    assert!(left > Duration::from_secs(55), "{left:?}");
    assert_eq!(
        store.get("short").await.unwrap(),
        None,
        "expired while closed"
    );
    assert_eq!(
        store.list_range("l", 0, -1).await.unwrap(),
        vec![b("1"), b("2")]
    );
    assert_eq!(
        store.get_versioned("absent").await.unwrap().version,
        counter
    );
    let next = store.set_versioned("v", b("after")).await.unwrap();
    assert!(
        next.version > counter,
        "versions go on from where they were"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn concurrent_compare_and_swap_lets_exactly_one_writer_win() {
    let dir = fresh_dir("embedded-cas");
    let store = std::sync::Arc::new(EmbeddedKv::open(&dir.join("kv.redb")).unwrap());
    let memory = std::sync::Arc::new(MemoryStorage::new());
    for round in 0..5 {
        let key = format!("route-{round}");
        let mut tasks = Vec::new();
        for writer in 0..8 {
            let (store, memory, key) = (store.clone(), memory.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                let value = Bytes::from(format!("node-{writer}"));
                let a = store
                    .compare_and_swap(&key, None, Some(value.clone()), None)
                    .await
                    .unwrap();
                let b = memory
                    .compare_and_swap(&key, None, Some(value), None)
                    .await
                    .unwrap();
                (a, b)
            }));
        }
        let mut wins = (0, 0);
        for task in tasks {
            let (a, b) = task.await.unwrap();
            wins.0 += usize::from(a);
            wins.1 += usize::from(b);
        }
        assert_eq!(wins, (1, 1), "round {round}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn every_operation_on_redis_storage() {
    let Some(url) = services::redis_url("every_operation_on_redis_storage") else {
        return;
    };
    let prefix = services::unique_key_prefix("ops");
    let store = RedisStorage::open(&config(&url, &prefix)).unwrap();
    exercise(&store).await;
    // Two handles on one prefix share keys and one version counter.
    let other = RedisStorage::open(&config(&url, &prefix)).unwrap();
    let mine = store.set_versioned("shared", b("x")).await.unwrap();
    assert_eq!(other.get_versioned("shared").await.unwrap(), mine);
    let theirs = other.set_versioned("elsewhere", b("y")).await.unwrap();
    assert!(theirs.version > mine.version);
    services::remove_prefix(&url, &prefix).await;
}

#[tokio::test]
async fn every_operation_through_hybrid_storage() {
    let Some(url) = services::redis_url("every_operation_through_hybrid_storage") else {
        return;
    };
    let prefix = services::unique_key_prefix("hybrid-ops");
    let cache = RedisCache::open(&config(&url, &prefix), WallClock::new()).unwrap();
    // A freshness shorter than the TTLs the test body waits out.
    let policy = CachePolicy {
        entry_ttl: Duration::from_millis(50),
        stale_grace: Duration::from_secs(5),
    };
    let hybrid = HybridStorage::new(MemoryStorage::new(), cache, policy);
    exercise(&hybrid).await;
    let stats = hybrid.stats();
    assert!(stats.cache.hits > 0 && stats.cache.misses > 0, "{stats:?}");
    assert_eq!(stats.cache_errors, 0, "{stats:?}");
    services::remove_prefix(&url, &prefix).await;
}

#[tokio::test]
async fn a_slow_fill_of_an_older_version_is_refused_by_the_lua_script() {
    let Some(url) = services::redis_url("a_slow_fill_of_an_older_version_is_refused") else {
        return;
    };
    let prefix = services::unique_key_prefix("race");
    let clock = WallClock::new();
    let policy = CachePolicy::default();
    let source = RedisStorage::open(&config(&url, &prefix)).unwrap();
    let cache = RedisCache::open(&config(&url, &prefix), clock).unwrap();
    let hybrid = HybridStorage::new(source.clone(), cache.clone(), policy);

    let old = source.set_versioned("k", b("old")).await.unwrap();
    // A reader misses and reads version `old` from the source…
    let mut reader = CacheAside::new(policy);
    let (lookup, ticket) = reader.lookup(clock.now(), cache.lookup("k").await.unwrap());
    assert_eq!(lookup, Lookup::Miss);
    let read = source.get_versioned("k").await.unwrap();
    assert_eq!(read, old);
    // …a writer writes a newer version through the hybrid (source, then cache)…
    let new = hybrid.set_versioned("k", b("new")).await.unwrap();
    assert!(new.version > old.version);
    // …and the reader's fill lands last: the script refuses it.
    let (_, fill) = reader.source_read(clock.now(), ticket, Ok(read));
    let fill = fill.expect("a fill is offered");
    assert_eq!(fill.version, old.version);
    assert!(
        !cache.offer("k", &fill, clock.now()).await.unwrap(),
        "stale fill refused"
    );
    let held = cache.lookup("k").await.unwrap().unwrap();
    assert_eq!(
        (held.version, held.value.clone()),
        (new.version, Some(b("new")))
    );
    assert_eq!(hybrid.get("k").await.unwrap(), Some(b("new")));
    assert_eq!(hybrid.stats().cache.hits, 1);

    // The same version is refused too; a newer one replaces; a deletion is cached as such.
    let same = tunnox_core::storage::CacheEntry {
        value: Some(b("impostor")),
        ..held.clone()
    };
    assert!(!cache.offer("k", &same, clock.now()).await.unwrap());
    let gone = hybrid.delete_versioned("k").await.unwrap();
    let held = cache.lookup("k").await.unwrap().unwrap();
    assert_eq!((held.version, held.value), (gone.version, None));
    assert_eq!(hybrid.get("k").await.unwrap(), None);
    // Redis drops the entry itself at keep_until.
    let mut con = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(format!("{prefix}cache:k"))
        .query_async(&mut con)
        .await
        .unwrap();
    let keep = policy.entry_ttl + policy.stale_grace;
    assert!(
        ttl_ms > 0 && ttl_ms <= keep.as_millis() as i64,
        "PTTL {ttl_ms}"
    );
    services::remove_prefix(&url, &prefix).await;
}

#[tokio::test]
async fn a_corrupt_cache_entry_is_a_typed_error_and_gets_replaced() {
    let Some(url) = services::redis_url("a_corrupt_cache_entry_is_a_typed_error") else {
        return;
    };
    let prefix = services::unique_key_prefix("corrupt");
    let cache = RedisCache::open(&config(&url, &prefix), WallClock::new()).unwrap();
    let mut con = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}cache:k"))
        .arg(&["v", "not-a-number", "f", "1"])
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(matches!(
        cache.lookup("k").await,
        Err(StorageError::Corrupt { .. })
    ));
    let source = MemoryStorage::new();
    source.set("k", b("truth"), None).await.unwrap();
    let hybrid = HybridStorage::new(source, cache.clone(), CachePolicy::default());
    assert_eq!(hybrid.get("k").await.unwrap(), Some(b("truth")));
    assert_eq!(hybrid.stats().cache_errors, 1);
    let held = cache.lookup("k").await.unwrap().unwrap();
    assert_eq!(held.value, Some(b("truth")));
    services::remove_prefix(&url, &prefix).await;
}

/// A source that can be switched off: then every call fails as unavailable.
struct Switchable<S> {
    inner: S,
    up: AtomicBool,
}

impl<S> Switchable<S> {
    fn new(inner: S) -> Switchable<S> {
        Switchable {
            inner,
            up: AtomicBool::new(true),
        }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), StorageError> {
        if self.up.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(StorageError::Unavailable {
                backend: "switched-off source",
                reason: "switched off by the test".into(),
            })
        }
    }
}

impl<S: Storage> Storage for Switchable<S> {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        self.check()?;
        self.inner.get(key).await
    }
    async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        self.check()?;
        self.inner.set(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool, StorageError> {
        self.check()?;
        self.inner.delete(key).await
    }
    async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        self.check()?;
        self.inner.exists(key).await
    }
    async fn set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool, StorageError> {
        self.check()?;
        self.inner.set_if_absent(key, value, ttl).await
    }
    async fn incr(&self, key: &str, by: i64) -> Result<i64, StorageError> {
        self.check()?;
        self.inner.incr(key, by).await
    }
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>, StorageError> {
        self.check()?;
        self.inner.get_many(keys).await
    }
    async fn set_many(
        &self,
        pairs: &[(&str, Bytes)],
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        self.check()?;
        self.inner.set_many(pairs, ttl).await
    }
    async fn delete_many(&self, keys: &[&str]) -> Result<u64, StorageError> {
        self.check()?;
        self.inner.delete_many(keys).await
    }
    async fn get_versioned(&self, key: &str) -> Result<Versioned, StorageError> {
        self.check()?;
        self.inner.get_versioned(key).await
    }
    async fn set_versioned(&self, key: &str, value: Bytes) -> Result<Versioned, StorageError> {
        self.check()?;
        self.inner.set_versioned(key, value).await
    }
    async fn delete_versioned(&self, key: &str) -> Result<Versioned, StorageError> {
        self.check()?;
        self.inner.delete_versioned(key).await
    }
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<Bytes>,
        new: Option<Bytes>,
        ttl: Option<Duration>,
    ) -> Result<bool, StorageError> {
        self.check()?;
        self.inner.compare_and_swap(key, expected, new, ttl).await
    }
    async fn scan_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Bytes)>, StorageError> {
        self.check()?;
        self.inner.scan_prefix(prefix, limit).await
    }
    async fn expire(&self, key: &str, ttl: Duration) -> Result<bool, StorageError> {
        self.check()?;
        self.inner.expire(key, ttl).await
    }
    async fn ttl(&self, key: &str) -> Result<Option<Duration>, StorageError> {
        self.check()?;
        self.inner.ttl(key).await
    }
    async fn list_push(&self, key: &str, value: Bytes) -> Result<u64, StorageError> {
        self.check()?;
        self.inner.list_push(key, value).await
    }
    async fn list_range(
        &self,
        key: &str,
        start: i64,
        stop: i64,
    ) -> Result<Vec<Bytes>, StorageError> {
        self.check()?;
        self.inner.list_range(key, start, stop).await
    }
    async fn list_remove(&self, key: &str, value: &[u8]) -> Result<u64, StorageError> {
        self.check()?;
        self.inner.list_remove(key, value).await
    }
    async fn list_len(&self, key: &str) -> Result<u64, StorageError> {
        self.check()?;
        self.inner.list_len(key).await
    }
    async fn ping(&self) -> Result<(), StorageError> {
        self.check()?;
        self.inner.ping().await
    }
}

#[tokio::test]
async fn a_down_source_serves_degraded_reads_fails_writes_and_loses_nothing_acknowledged() {
    let Some(url) = services::redis_url("a_down_source_serves_degraded_reads") else {
        return;
    };
    let prefix = services::unique_key_prefix("source-down");
    let cache = RedisCache::open(&config(&url, &prefix), WallClock::new()).unwrap();
    let policy = CachePolicy {
        entry_ttl: Duration::from_millis(100),
        stale_grace: Duration::from_secs(30),
    };
    let hybrid = HybridStorage::new(Switchable::new(MemoryStorage::new()), cache, policy);

    // Acknowledged while up: (key, value) the store must keep.
    let mut acknowledged: Vec<(String, Option<Bytes>)> = Vec::new();
    for i in 0..5 {
        let key = format!("k{i}");
        let value = Bytes::from(format!("value {i}"));
        hybrid.set(&key, value.clone(), None).await.unwrap();
        acknowledged.push((key, Some(value)));
    }
    hybrid.delete("k4").await.unwrap();
    acknowledged[4].1 = None;

    hybrid.source().set_up(false);
    tokio::time::sleep(Duration::from_millis(200)).await; // past freshness, within the grace
    for (key, value) in &acknowledged {
        assert_eq!(
            &hybrid.get(key).await.unwrap(),
            value,
            "degraded read of {key}"
        );
    }
    assert_eq!(hybrid.stats().cache.degraded_reads, 5);
    // Never cached: no answer, and a clear error.
    let err = hybrid.get("never-cached").await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert_eq!(hybrid.stats().cache.unavailable_reads, 1);
    // Writes fail, and are not acknowledged.
    let err = hybrid.set("k0", b("lost"), None).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(hybrid.set_versioned("k9", b("lost")).await.is_err());
    assert!(hybrid.incr("n", 1).await.is_err());
    assert!(hybrid.delete("k1").await.is_err());
    assert_eq!(hybrid.stats().cache.failed_writes, 4);
    // The cache still answers with the acknowledged value, not the failed write's.
    assert_eq!(hybrid.get("k0").await.unwrap(), Some(b("value 0")));

    hybrid.source().set_up(true);
    for (key, value) in &acknowledged {
        assert_eq!(
            &hybrid.get(key).await.unwrap(),
            value,
            "after the outage: {key}"
        );
        assert_eq!(
            &hybrid.source().get(key).await.unwrap(),
            value,
            "at the source: {key}"
        );
    }
    assert_eq!(
        hybrid.get("k9").await.unwrap(),
        None,
        "a failed write stays undone"
    );
    // Writes work again.
    hybrid.set("k0", b("later"), None).await.unwrap();
    assert_eq!(hybrid.get("k0").await.unwrap(), Some(b("later")));
    services::remove_prefix(&url, &prefix).await;
}

#[tokio::test]
async fn a_down_cache_falls_through_to_the_source() {
    // Needs no Redis: the cache points at a port where nothing listens.
    let closed = services::closed_port();
    let mut down = config(&format!("redis://{closed}/"), "tunnox:");
    down.deadline = Duration::from_millis(300);
    let cache = RedisCache::open(&down, WallClock::new()).unwrap();
    let hybrid = HybridStorage::new(MemoryStorage::new(), cache, CachePolicy::default());

    hybrid.set("k", b("v"), None).await.unwrap();
    assert_eq!(hybrid.get("k").await.unwrap(), Some(b("v")));
    assert!(hybrid.set_if_absent("nx", b("1"), None).await.unwrap());
    assert_eq!(hybrid.incr("n", 2).await.unwrap(), 2);
    assert!(hybrid.delete("k").await.unwrap());
    assert_eq!(hybrid.get("k").await.unwrap(), None);
    let stats = hybrid.stats();
    assert_eq!(stats.cache.hits, 0);
    assert_eq!(stats.cache.misses, 2);
    // Each read: a failed lookup and a failed fill; each write: a failed update.
    assert!(stats.cache_errors >= 6, "{stats:?}");

    // And the Redis store itself reports the outage as a typed error.
    let store = RedisStorage::open(&down).unwrap();
    let err = store.get("k").await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    let err = store.set_versioned("k", b("v")).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
}

// ---- RemoteStorage against an in-process StorageServer ----

const TOKEN: &str = "a test token of enough length";

fn token(text: &str) -> StorageToken {
    StorageToken::new(text).unwrap()
}

/// A storage server over `store` on a free loopback port; its address and a handle that stops it.
async fn start_server<S: Storage + 'static>(
    store: S,
    config: StorageServerConfig,
    tls: Option<ServerTls>,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = StorageServer::new(store, config);
    tokio::spawn(async move {
        server
            .serve_on(listener, tls, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (addr, stop)
}

fn remote(addr: impl ToString, token_text: &str) -> RemoteStorage {
    RemoteStorage::connect(RemoteConfig::new(addr.to_string(), token(token_text))).unwrap()
}

#[tokio::test]
async fn every_operation_on_remote_storage_over_embedded_kv() {
    let dir = fresh_dir("remote-ops");
    let store = EmbeddedKv::open(&dir.join("kv.redb")).unwrap();
    let (addr, _stop) = start_server(store, StorageServerConfig::new(token(TOKEN)), None).await;
    exercise(&remote(addr, TOKEN)).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_server_requires_the_right_token() {
    let (addr, _stop) = start_server(
        MemoryStorage::new(),
        StorageServerConfig::new(token(TOKEN)),
        None,
    )
    .await;
    // No token at all: a plain gRPC call without the signature.
    let mut bare = tunnox_proto::storage::storage_service_client::StorageServiceClient::connect(
        format!("http://{addr}"),
    )
    .await
    .unwrap();
    let status = bare
        .ping(tunnox_proto::storage::PingRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    // A wrong token.
    let wrong = remote(addr, "not the right token at all");
    let err = wrong.get("k").await.unwrap_err();
    assert!(
        matches!(err, StorageError::Unauthenticated { .. }),
        "{err:?}"
    );
    assert!(matches!(
        wrong.set("k", b("v"), None).await,
        Err(StorageError::Unauthenticated { .. })
    ));
    // The right one.
    let right = remote(addr, TOKEN);
    right.ping().await.unwrap();
    right.set("k", b("v"), None).await.unwrap();
    assert_eq!(right.get("k").await.unwrap(), Some(b("v")));
    assert!(wrong.get("k").await.is_err());
}

#[tokio::test]
async fn bad_requests_are_invalid_not_a_crash() {
    let mut config = StorageServerConfig::new(token(TOKEN));
    config.value_bytes_max = 1024;
    config.items_max = 4;
    let (addr, _stop) = start_server(MemoryStorage::new(), config, None).await;
    let store = remote(addr, TOKEN);
    let invalid = |r: Result<(), StorageError>| matches!(r, Err(StorageError::Invalid { .. }));
    assert!(invalid(store.set("", b("v"), None).await));
    assert!(invalid(store.get("").await.map(|_| ())));
    assert!(invalid(
        store.set("k", Bytes::from(vec![0u8; 1025]), None).await
    ));
    assert!(invalid(
        store
            .list_push("l", Bytes::from(vec![0u8; 1025]))
            .await
            .map(|_| ())
    ));
    assert!(invalid(store.set(&"k".repeat(2000), b("v"), None).await));
    assert!(invalid(
        store.get_many(&["a", "b", "c", "d", "e"]).await.map(|_| ())
    ));
    assert!(invalid(store.scan_prefix("", 5).await.map(|_| ())));
    for _ in 0..6 {
        store.list_push("long", b("x")).await.unwrap();
    }
    assert!(invalid(store.list_range("long", 0, -1).await.map(|_| ())));
    assert_eq!(store.list_range("long", 0, 3).await.unwrap().len(), 4);
    // What fits the limits still works, and the server is still up.
    store
        .set("k", Bytes::from(vec![7u8; 1024]), None)
        .await
        .unwrap();
    assert_eq!(store.get("k").await.unwrap().unwrap().len(), 1024);
    assert_eq!(store.get_many(&["k", "x"]).await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_down_server_is_unavailable_and_only_idempotent_calls_are_retried() {
    let (addr, stop) = start_server(
        MemoryStorage::new(),
        StorageServerConfig::new(token(TOKEN)),
        None,
    )
    .await;
    let proxy = services::CutProxy::start(addr).await;
    let mut config = RemoteConfig::new(proxy.addr().to_string(), token(TOKEN));
    config.retries_max = 3;
    let store = RemoteStorage::connect(config).unwrap();
    store.set("k", b("v"), None).await.unwrap();

    proxy.cut();
    // The first call after the cut fails on the connection it had; count from the next one.
    let _ = store.incr("n", 1).await;
    let before = proxy.accepted();
    let err = store.get("k").await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    let get_attempts = proxy.accepted() - before;
    assert_eq!(get_attempts, 4, "get: 1 attempt and 3 retries");
    let before = proxy.accepted();
    let err = store.incr("n", 1).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert_eq!(proxy.accepted() - before, 1, "incr is sent once");

    proxy.heal();
    assert_eq!(store.get("k").await.unwrap(), Some(b("v")));
    // The server itself stopped: still a typed error, quickly.
    let _ = stop.send(());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let err = remote(addr, TOKEN).get("k").await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(
        started.elapsed() <= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn remote_storage_over_tls_checks_the_server_certificate() {
    let generated = rcgen::generate_simple_self_signed(vec!["storage.test".to_owned()]).unwrap();
    let tls = ServerTls {
        cert_pem: generated.cert.pem().into_bytes(),
        key_pem: generated.signing_key.serialize_pem().into_bytes(),
    };
    let (addr, _stop) = start_server(
        MemoryStorage::new(),
        StorageServerConfig::new(token(TOKEN)),
        Some(tls),
    )
    .await;
    let dir = fresh_dir("remote-tls");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, generated.cert.pem()).unwrap();
    let with_tls = |server_name: &str| {
        let mut config = RemoteConfig::new(addr.to_string(), token(TOKEN));
        config.retries_max = 0;
        config.tls = Some(RemoteTls {
            ca_file: ca_file.clone(),
            server_name: server_name.to_owned(),
        });
        RemoteStorage::connect(config).unwrap()
    };
    let store = with_tls("storage.test");
    store.set("k", b("over tls"), None).await.unwrap();
    assert_eq!(store.get("k").await.unwrap(), Some(b("over tls")));
    // Another name than the certificate's: refused.
    assert!(with_tls("other.test").get("k").await.is_err());
    // Plaintext to a TLS server: no answer.
    let mut plain = RemoteConfig::new(addr.to_string(), token(TOKEN));
    plain.retries_max = 0;
    assert!(
        RemoteStorage::connect(plain)
            .unwrap()
            .get("k")
            .await
            .is_err()
    );
    // A CA file that does not exist: a clear error at connect.
    let mut missing = RemoteConfig::new(addr.to_string(), token(TOKEN));
    missing.tls = Some(RemoteTls {
        ca_file: dir.join("missing.pem"),
        server_name: "storage.test".into(),
    });
    assert!(RemoteStorage::connect(missing).is_err());
    let _ = std::fs::remove_dir_all(dir);
}

/// The value of the metric line starting with `name` (labels included), if present.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn cache_hits_misses_degraded_reads_and_store_operations_reach_the_metrics() {
    use tunnox_runtime_tokio::cluster::ClusterStore;
    use tunnox_runtime_tokio::metrics::NodeMetrics;
    let Some(url) = services::redis_url("cache_hits_misses_degraded_reads_reach_the_metrics")
    else {
        return;
    };
    let metrics = NodeMetrics::new();
    let prefix = services::unique_key_prefix("metrics");
    let cache = RedisCache::open(&config(&url, &prefix), WallClock::new()).unwrap();
    let policy = CachePolicy {
        entry_ttl: Duration::from_millis(100),
        stale_grace: Duration::from_secs(30),
    };
    let hybrid = HybridStorage::new(Switchable::new(MemoryStorage::new()), cache, policy)
        .with_metrics(metrics.storage().clone());
    hybrid.set("k", b("v"), None).await.unwrap();
    assert_eq!(hybrid.get("k").await.unwrap(), Some(b("v")), "a hit");
    assert_eq!(hybrid.get("absent").await.unwrap(), None, "a miss");
    hybrid.source().set_up(false);
    tokio::time::sleep(Duration::from_millis(200)).await; // past freshness, within the grace
    assert_eq!(
        hybrid.get("k").await.unwrap(),
        Some(b("v")),
        "a miss, answered degraded"
    );
    let text = metrics.encode();
    let stats = hybrid.stats().cache;
    assert_eq!((stats.hits, stats.misses, stats.degraded_reads), (1, 2, 1));
    let cache_metric = |name: &str| metric(&text, &format!("{name}{{cache=\"hybrid\"}}"));
    assert_eq!(
        cache_metric("tunnox_storage_cache_hits_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(cache_metric("tunnox_storage_cache_misses_total"), Some(2.0));
    assert_eq!(
        cache_metric("tunnox_storage_degraded_reads_total"),
        Some(1.0)
    );

    // Cluster records: operations counted by result; an unreachable Redis marks the backend
    // degraded until an operation succeeds again.
    let up = ClusterStore::open(&config(&url, &prefix))
        .unwrap()
        .with_metrics(metrics.storage().clone());
    let mut unreachable = config(&format!("redis://{}", services::closed_port()), &prefix);
    unreachable.deadline = Duration::from_millis(500);
    let down = ClusterStore::open(&unreachable)
        .unwrap()
        .with_metrics(metrics.storage().clone());
    up.live_members().await.unwrap();
    down.live_members().await.unwrap_err();
    let text = metrics.encode();
    let ops = |result: &str| {
        metric(
            &text,
            &format!(
                "tunnox_storage_operations_total{{backend=\"cluster\",op=\"hgetall\",result=\"{result}\"}}"
            ),
        )
    };
    assert_eq!(ops("ok"), Some(1.0), "{text}");
    assert_eq!(ops("unavailable"), Some(1.0), "{text}");
    let degraded = "tunnox_storage_degraded{backend=\"cluster\"}";
    assert_eq!(metric(&text, degraded), Some(1.0));
    up.live_members().await.unwrap();
    assert_eq!(metric(&metrics.encode(), degraded), Some(0.0));
    services::remove_prefix(&url, &prefix).await;
}
