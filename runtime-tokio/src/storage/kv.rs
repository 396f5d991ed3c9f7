//! The key/value [`Storage`] interface every backend implements.
//!
//! Values are bytes. Every write of a key raises its version, drawn from one counter per store,
//! so versions never go backwards, not even across a delete: a key deleted at version 7 and
//! written again gets a version above 7. A read of an absent key reports the counter's current
//! value, meaning "absent as of then". The cache in front of a store
//! ([`super::HybridStorage`]) relies on this to refuse stale fills.
//!
//! A key holds either a value or a list. The value methods (`get`, `set`, `incr`,
//! `compare_and_swap`, …) on a key that holds a list, and the `list_*` methods on a key that holds
//! a value, fail with [`StorageError::WrongKind`]; `exists`, `delete`, `expire` and `ttl` take
//! either. List writes raise the version too, but a list has no versioned read.

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

    /// Replaces the value at `key` with `new` (`None`: deletes it, `ttl` then unused) if it is
    /// `expected` (`None`: the key holds nothing); whether it did. One atomic step.
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<Bytes>,
        new: Option<Bytes>,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<bool, StorageError>> + Send;

    /// The values whose keys start with `prefix`, sorted by key, at most `limit` of them (keys
    /// holding lists are left out).
    fn scan_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(String, Bytes)>, StorageError>> + Send;

    /// Makes `key` (a value or a list) expire after `ttl`; whether it exists.
    fn expire(
        &self,
        key: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StorageError>> + Send;

    /// The time `key` has left (`None`: absent, or never expires).
    fn ttl(&self, key: &str)
    -> impl Future<Output = Result<Option<Duration>, StorageError>> + Send;

    /// Appends `value` to the list at `key` (absent: a new list); the new length.
    fn list_push(
        &self,
        key: &str,
        value: Bytes,
    ) -> impl Future<Output = Result<u64, StorageError>> + Send;

    /// The list's elements from `start` to `stop`, both inclusive; a negative index counts from
    /// the end (-1: the last). An absent key is an empty list.
    fn list_range(
        &self,
        key: &str,
        start: i64,
        stop: i64,
    ) -> impl Future<Output = Result<Vec<Bytes>, StorageError>> + Send;

    /// Removes every element equal to `value` from the list at `key`; how many it removed.
    fn list_remove(
        &self,
        key: &str,
        value: &[u8],
    ) -> impl Future<Output = Result<u64, StorageError>> + Send;

    /// The length of the list at `key` (absent: 0).
    fn list_len(&self, key: &str) -> impl Future<Output = Result<u64, StorageError>> + Send;

    /// Answers when the store can be reached.
    fn ping(&self) -> impl Future<Output = Result<(), StorageError>> + Send;
}

/// The positions `start..=stop` (negative: from the end) of a list of `len` elements, as a
/// half-open range clamped to the list (empty when nothing is selected), like Redis's LRANGE.
pub(crate) fn list_window(len: usize, start: i64, stop: i64) -> std::ops::Range<usize> {
    let len_i = i64::try_from(len).unwrap_or(i64::MAX);
    let resolve = |index: i64| if index < 0 { len_i + index } else { index };
    let first = resolve(start).max(0);
    let last = resolve(stop).min(len_i - 1);
    if first > last {
        return 0..0;
    }
    // Both are within 0..len here.
    let first = usize::try_from(first).unwrap_or(len);
    let last = usize::try_from(last).unwrap_or(len);
    first..last.saturating_add(1).min(len)
}

/// The error for `key` holding the other kind (a value where a list is expected, or back).
pub(crate) fn wrong_kind(key: &str) -> StorageError {
    StorageError::WrongKind {
        key: key.to_owned(),
    }
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
