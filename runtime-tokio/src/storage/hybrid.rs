//! [`HybridStorage`]: a Redis cache in front of a source of truth, by the cache-aside rules of
//! [`tunnox_core::storage::CacheAside`].
//!
//! A read looks the key up in the cache; a fresh entry answers it. Otherwise it reads the source
//! (versioned) and offers what it read to the cache, stamped with when the read started; the
//! cache's script takes it only if nothing newer is held. A write goes to the source first, then
//! offers the written version to the cache through the same script, so a slow fill of an older
//! version cannot replace it. When the source is down, reads are answered from entries past
//! their freshness but still kept (degraded, counted) and writes fail. When the cache is down,
//! reads and writes go to the source alone and the failures are counted.
//!
//! Only values are cached. Lists, prefix scans and TTL reads go to the source every time; so a
//! key deleted (its absence cached) and then pushed to as a list may read as absent, instead of
//! failing with `WrongKind`, until that cache entry is no longer fresh.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tunnox_core::storage::{
    CacheAside, CacheEntry, CachePolicy, CacheStats, Lookup, ReadOutcome, SourceDown, Versioned,
};
use tunnox_core::time::Instant;

use super::redis_cache::RedisCache;
use super::{Storage, StorageError};

/// Counters of a [`HybridStorage`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HybridStats {
    /// The cache-aside paths: hits, misses, fills, degraded reads, failed writes…
    pub cache: CacheStats,
    /// Cache lookups and updates that failed (cache down, corrupt entry); the operation went on
    /// with the source alone.
    pub cache_errors: u64,
}

/// A [`Storage`] that caches `S` in Redis (see the module docs).
#[derive(Debug)]
pub struct HybridStorage<S> {
    source: S,
    cache: RedisCache,
    rules: Mutex<CacheAside>,
    cache_errors: AtomicU64,
    /// Where hits, misses and degraded reads are counted (cache `hybrid`), if anywhere.
    metrics: Option<crate::metrics::StorageMetrics>,
}

impl<S: Storage> HybridStorage<S> {
    /// `source` behind `cache`, with the cache's time limits in `policy`.
    pub fn new(source: S, cache: RedisCache, policy: CachePolicy) -> HybridStorage<S> {
        HybridStorage {
            source,
            cache,
            rules: Mutex::new(CacheAside::new(policy)),
            cache_errors: AtomicU64::new(0),
            metrics: None,
        }
    }

    /// Counts cache hits, misses and degraded reads into `metrics` (cache `hybrid`).
    pub fn with_metrics(mut self, metrics: crate::metrics::StorageMetrics) -> HybridStorage<S> {
        self.metrics = Some(metrics);
        self
    }

    /// The source of truth.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// The cache.
    pub fn cache(&self) -> &RedisCache {
        &self.cache
    }

    /// Counters so far.
    pub fn stats(&self) -> HybridStats {
        HybridStats {
            cache: self.rules().stats(),
            cache_errors: self.cache_errors.load(Ordering::Relaxed),
        }
    }

    fn rules(&self) -> MutexGuard<'_, CacheAside> {
        // Every use is one call into the rules, which cannot leave them half-changed.
        self.rules
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn now(&self) -> Instant {
        self.cache.clock().now()
    }

    fn cache_failed(&self) {
        self.cache_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Offers `entry` to the cache; a failure is counted, not returned (the bound covers it).
    async fn offer(&self, key: &str, entry: &CacheEntry) {
        if self.cache.offer(key, entry, self.now()).await.is_err() {
            self.cache_failed();
        }
    }

    /// A read through the cache.
    async fn read(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        let held = self.cache.lookup(key).await.unwrap_or_else(|_| {
            self.cache_failed();
            None
        });
        let (lookup, ticket) = self.rules().lookup(self.now(), held);
        if let Lookup::Hit(value) = lookup {
            if let Some(metrics) = &self.metrics {
                metrics.hit("hybrid");
            }
            return Ok(value);
        }
        if let Some(metrics) = &self.metrics {
            metrics.miss("hybrid");
        }
        let (source, down) = match self.source.get_versioned(key).await {
            Ok(read) => (Ok(read), None),
            // Down: the rules may answer from a kept entry.
            Err(e) if e.is_unavailable() => (Err(SourceDown), Some(e)),
            // Up but failing (a corrupt value): no cache entry may stand in for it.
            Err(e) => return Err(e),
        };
        let (outcome, fill) = self.rules().source_read(self.now(), ticket, source);
        if let Some(entry) = fill {
            self.offer(key, &entry).await;
        }
        if let (ReadOutcome::Degraded(_), Some(metrics)) = (&outcome, &self.metrics) {
            metrics.degraded_read("hybrid");
        }
        match outcome {
            ReadOutcome::Value(value) | ReadOutcome::Degraded(value) => Ok(value),
            ReadOutcome::Unavailable => Err(down.unwrap_or(StorageError::Unavailable {
                backend: "hybrid source",
                reason: "the source is down and nothing is cached".to_owned(),
            })),
        }
    }

    /// A versioned write reached the source (or failed): counts it, and on success offers the
    /// written version to the cache.
    async fn written(
        &self,
        key: &str,
        written: Result<Versioned, StorageError>,
    ) -> Result<Versioned, StorageError> {
        match written {
            Ok(w) => {
                let entry = self.rules().source_written(self.now(), Ok(w.clone()));
                if let Ok(entry) = entry {
                    self.offer(key, &entry).await;
                }
                Ok(w)
            }
            Err(e) => {
                let _failed = self.rules().source_written(self.now(), Err(SourceDown));
                Err(e)
            }
        }
    }

    /// An unversioned write reached the source (or failed): on success, re-reads the keys'
    /// versions and offers them to the cache as written.
    async fn unversioned_written<T>(
        &self,
        keys: &[&str],
        written: Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let answer = match written {
            Ok(answer) => answer,
            Err(e) => {
                let _failed = self.rules().source_written(self.now(), Err(SourceDown));
                return Err(e);
            }
        };
        for key in keys {
            let started = self.now();
            match self.source.get_versioned(key).await {
                Ok(read) => {
                    let entry = self.rules().source_written(started, Ok(read));
                    if let Ok(entry) = entry {
                        self.offer(key, &entry).await;
                    }
                }
                // Lists are not cached: nothing to update.
                Err(StorageError::WrongKind { .. }) => {}
                // The write is in; only the cache update failed, which the bound covers.
                Err(_) => self.cache_failed(),
            }
        }
        Ok(answer)
    }

    /// A write that leaves no cache entry to update (a list write) reached the source (or
    /// failed): counts a failure like any failed write.
    fn uncached_written<T>(&self, written: Result<T, StorageError>) -> Result<T, StorageError> {
        if written.is_err() {
            let _failed = self.rules().source_written(self.now(), Err(SourceDown));
        }
        written
    }
}

impl<S: Storage> Storage for HybridStorage<S> {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        self.read(key).await
    }

    async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        match ttl {
            None => self.set_versioned(key, value).await.map(|_| ()),
            Some(_) => {
                let written = self.source.set(key, value, ttl).await;
                self.unversioned_written(&[key], written).await
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<bool, StorageError> {
        let written = self.source.delete(key).await;
        self.unversioned_written(&[key], written).await
    }

    async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        match self.read(key).await {
            Ok(value) => Ok(value.is_some()),
            // The key holds a list (lists are not cached).
            Err(StorageError::WrongKind { .. }) => Ok(true),
            Err(e) => Err(e),
        }
    }

    async fn set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool, StorageError> {
        let written = self.source.set_if_absent(key, value, ttl).await;
        self.unversioned_written(&[key], written).await
    }

    async fn incr(&self, key: &str, by: i64) -> Result<i64, StorageError> {
        let written = self.source.incr(key, by).await;
        self.unversioned_written(&[key], written).await
    }

    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>, StorageError> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            values.push(self.read(key).await?);
        }
        Ok(values)
    }

    async fn set_many(
        &self,
        pairs: &[(&str, Bytes)],
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        let written = self.source.set_many(pairs, ttl).await;
        let keys: Vec<&str> = pairs.iter().map(|(key, _)| *key).collect();
        self.unversioned_written(&keys, written).await
    }

    async fn delete_many(&self, keys: &[&str]) -> Result<u64, StorageError> {
        let written = self.source.delete_many(keys).await;
        self.unversioned_written(keys, written).await
    }

    async fn get_versioned(&self, key: &str) -> Result<Versioned, StorageError> {
        self.source.get_versioned(key).await
    }

    async fn set_versioned(&self, key: &str, value: Bytes) -> Result<Versioned, StorageError> {
        let written = self.source.set_versioned(key, value).await;
        self.written(key, written).await
    }

    async fn delete_versioned(&self, key: &str) -> Result<Versioned, StorageError> {
        let written = self.source.delete_versioned(key).await;
        self.written(key, written).await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<Bytes>,
        new: Option<Bytes>,
        ttl: Option<Duration>,
    ) -> Result<bool, StorageError> {
        let written = self.source.compare_and_swap(key, expected, new, ttl).await;
        self.unversioned_written(&[key], written).await
    }

    /// Straight from the source: scans bypass the cache (they would miss it anyway).
    async fn scan_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Bytes)>, StorageError> {
        self.source.scan_prefix(prefix, limit).await
    }

    async fn expire(&self, key: &str, ttl: Duration) -> Result<bool, StorageError> {
        let written = self.source.expire(key, ttl).await;
        self.unversioned_written(&[key], written).await
    }

    /// Straight from the source: cache entries do not mirror source TTLs.
    async fn ttl(&self, key: &str) -> Result<Option<Duration>, StorageError> {
        self.source.ttl(key).await
    }

    async fn list_push(&self, key: &str, value: Bytes) -> Result<u64, StorageError> {
        let written = self.source.list_push(key, value).await;
        self.uncached_written(written)
    }

    /// Straight from the source: lists are not cached.
    async fn list_range(
        &self,
        key: &str,
        start: i64,
        stop: i64,
    ) -> Result<Vec<Bytes>, StorageError> {
        self.source.list_range(key, start, stop).await
    }

    async fn list_remove(&self, key: &str, value: &[u8]) -> Result<u64, StorageError> {
        let written = self.source.list_remove(key, value).await;
        self.uncached_written(written)
    }

    async fn list_len(&self, key: &str) -> Result<u64, StorageError> {
        self.source.list_len(key).await
    }

    /// Pings the source (the cache being down only costs speed).
    async fn ping(&self) -> Result<(), StorageError> {
        self.source.ping().await
    }
}
