//! [`StorageMetrics`]: storage operations and cache lookups, counted where they happen.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::storage::StorageError;

/// Labels of one storage operation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StorageOpLabels {
    /// The backend: `embedded` (the single node's redb file), `cluster` (the cluster's Redis
    /// records), `redis`, `cache`.
    pub backend: &'static str,
    /// The operation (`apply`, `hset`, `claim route`, …).
    pub op: &'static str,
    /// `ok`, `unavailable` (unreachable or timed out) or `error` (refused, corrupt, …).
    pub result: &'static str,
}

/// One label: `backend`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    /// The backend.
    pub backend: &'static str,
}

/// One label: `cache` (`routes`: the coordinator's cache of client routes; `hybrid`: a Redis
/// cache in front of a store).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabel {
    /// The cache.
    pub cache: &'static str,
}

/// Storage counters: a handle owned by [`super::NodeMetrics`], given to the stores and caches
/// that report into it (clones count into the same series).
#[derive(Debug, Clone, Default)]
pub struct StorageMetrics {
    operations: Family<StorageOpLabels, Counter>,
    degraded: Family<BackendLabel, Gauge>,
    hits: Family<CacheLabel, Counter>,
    misses: Family<CacheLabel, Counter>,
    degraded_reads: Family<CacheLabel, Counter>,
    unwritten: Gauge,
}

impl StorageMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "storage_operations",
            "Storage operations, by backend, operation and result",
            self.operations.clone(),
        );
        r.register(
            "storage_degraded",
            "Whether a backend's last operation found it unreachable (1) or not (0)",
            self.degraded.clone(),
        );
        r.register(
            "storage_cache_hits",
            "Cache lookups answered by the cache",
            self.hits.clone(),
        );
        r.register(
            "storage_cache_misses",
            "Cache lookups that went to the source",
            self.misses.clone(),
        );
        r.register(
            "storage_degraded_reads",
            "Reads answered from an expired cache entry because the source was unreachable",
            self.degraded_reads.clone(),
        );
        r.register(
            "storage_unwritten_changes",
            "State changes made on this node and not yet in cluster storage (retried)",
            self.unwritten.clone(),
        );
    }

    /// One operation on `backend` ended with `result`; an unreachable backend is marked
    /// degraded until an operation succeeds.
    pub(crate) fn operation<T>(
        &self,
        backend: &'static str,
        op: &'static str,
        result: &Result<T, StorageError>,
    ) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) if e.is_unavailable() => "unavailable",
            Err(_) => "error",
        };
        self.operations
            .get_or_create(&StorageOpLabels {
                backend,
                op,
                result: outcome,
            })
            .inc();
        // A refused or corrupt answer still shows the backend reachable.
        let down = outcome == "unavailable";
        self.degraded
            .get_or_create(&BackendLabel { backend })
            .set(i64::from(down));
    }

    /// A lookup in `cache` was answered by it.
    pub(crate) fn hit(&self, cache: &'static str) {
        self.hits.get_or_create(&CacheLabel { cache }).inc();
    }

    /// A lookup in `cache` went to the source.
    pub(crate) fn miss(&self, cache: &'static str) {
        self.misses.get_or_create(&CacheLabel { cache }).inc();
    }

    /// A read from `cache` was answered by an expired entry: the source was down.
    pub(crate) fn degraded_read(&self, cache: &'static str) {
        self.degraded_reads
            .get_or_create(&CacheLabel { cache })
            .inc();
    }

    /// Changes waiting to be written to cluster storage.
    pub(crate) fn set_unwritten(&self, changes: usize) {
        self.unwritten
            .set(i64::try_from(changes).unwrap_or(i64::MAX));
    }
}
