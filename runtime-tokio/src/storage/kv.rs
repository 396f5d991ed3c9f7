//! The key/value [`Storage`] interface every backend implements.
//!
//! Values are bytes. Every write of a key raises its version, drawn from one counter per store,
//! so versions never go backwards, not even across a delete: a key deleted at version 7 and
//! written again gets a version above 7. A read of an absent key reports the counter's current
//! value, meaning "absent as of then". The cache in front of a store
//! ([`super::HybridStorage`]) relies on this to refuse stale fills.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use tunnox_core::storage::Versioned;

use super::StorageError;

/// A key/value store with TTLs, atomic single-key operations, batches and versioned access.
///
/// Every method is one atomic operation at the store (batches included).
pub trait Storage: Send + Sync {
    /// The value at `key`, if any.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Bytes>, StorageError>> + Send;

    /// Sets `key` to `value`, expiring after `ttl` (`None`: never).
    fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Deletes `key`; whether it existed.
    fn delete(&self, key: &str) -> impl Future<Output = Result<bool, StorageError>> + Send;

    /// Whether `key` holds a value.
    fn exists(&self, key: &str) -> impl Future<Output = Result<bool, StorageError>> + Send;

    /// Sets `key` only if it holds no value (SetNX); whether it was set.
    fn set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<bool, StorageError>> + Send;

    /// Adds `by` to the decimal integer at `key` (absent: 0), keeping its TTL; the new value.
    fn incr(&self, key: &str, by: i64) -> impl Future<Output = Result<i64, StorageError>> + Send;

    /// The values at `keys`, in order, read at one moment.
    fn get_many(
        &self,
        keys: &[&str],
    ) -> impl Future<Output = Result<Vec<Option<Bytes>>, StorageError>> + Send;

    /// Sets every `(key, value)` pair, all or nothing, each expiring after `ttl`.
    fn set_many(
        &self,
        pairs: &[(&str, Bytes)],
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Deletes `keys`, all or nothing; how many existed.
    fn delete_many(&self, keys: &[&str]) -> impl Future<Output = Result<u64, StorageError>> + Send;

    /// The value at `key` with its version (absent: the store's current version, no value).
    fn get_versioned(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Versioned, StorageError>> + Send;

    /// Sets `key` to `value` (no expiry), raising its version in the same atomic step; the new
    /// version.
    fn set_versioned(
        &self,
        key: &str,
        value: Bytes,
    ) -> impl Future<Output = Result<Versioned, StorageError>> + Send;

    /// Deletes `key`, raising its version in the same atomic step; the new version (no value).
    fn delete_versioned(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Versioned, StorageError>> + Send;
}

/// Parses a stored counter value for `incr`.
pub(crate) fn parse_integer(key: &str, value: Option<&[u8]>) -> Result<i64, StorageError> {
    let not_an_integer = || StorageError::NotAnInteger {
        key: key.to_owned(),
    };
    match value {
        None => Ok(0),
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.parse::<i64>().ok())
            .ok_or_else(not_an_integer),
    }
}
