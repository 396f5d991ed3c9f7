//! [`MemoryStorage`]: the [`Storage`] interface over a map in memory, for tests and a single node.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tunnox_core::storage::Versioned;

use super::kv::parse_integer;
use super::{Storage, StorageError};

/// Expired entries are swept out after this many writes (reads skip them anyway).
const SWEEP_EVERY_WRITES: u64 = 1024;

/// One key's value.
#[derive(Debug)]
struct Slot {
    version: u64,
    value: Bytes,
    expires_at: Option<Instant>,
}

impl Slot {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

#[derive(Debug, Default)]
struct Map {
    slots: HashMap<String, Slot>,
    /// The newest version handed out.
    version: u64,
    writes: u64,
}

impl Map {
    fn live(&self, key: &str, now: Instant) -> Option<&Slot> {
        self.slots.get(key).filter(|slot| slot.live(now))
    }

    /// Raises the version (every write does) and sweeps now and then.
    fn next_version(&mut self, now: Instant) -> u64 {
        self.version += 1;
        self.writes += 1;
        if self.writes.is_multiple_of(SWEEP_EVERY_WRITES) {
            self.slots.retain(|_, slot| slot.live(now));
        }
        self.version
    }

    fn put(&mut self, key: &str, value: Bytes, ttl: Option<Duration>, now: Instant) -> u64 {
        let version = self.next_version(now);
        let expires_at = ttl.map(|ttl| now + ttl);
        self.slots.insert(
            key.to_owned(),
            Slot {
                version,
                value,
                expires_at,
            },
        );
        version
    }

    fn remove(&mut self, key: &str, now: Instant) -> bool {
        self.slots.remove(key).is_some_and(|slot| slot.live(now))
    }
}

/// A [`Storage`] in this process's memory: lost on exit.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    map: Mutex<Map>,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    fn map(&self) -> MutexGuard<'_, Map> {
        // A panic elsewhere cannot leave the map half-written: every change is one insert/remove.
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Storage for MemoryStorage {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        let now = Instant::now();
        Ok(self.map().live(key, now).map(|slot| slot.value.clone()))
    }

    async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        let now = Instant::now();
        self.map().put(key, value, ttl, now);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool, StorageError> {
        let now = Instant::now();
        let mut map = self.map();
        map.next_version(now);
        Ok(map.remove(key, now))
    }

    async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        let now = Instant::now();
        Ok(self.map().live(key, now).is_some())
    }

    async fn set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool, StorageError> {
        let now = Instant::now();
        let mut map = self.map();
        if map.live(key, now).is_some() {
            return Ok(false);
        }
        map.put(key, value, ttl, now);
        Ok(true)
    }

    async fn incr(&self, key: &str, by: i64) -> Result<i64, StorageError> {
        let now = Instant::now();
        let mut map = self.map();
        let held = map.live(key, now);
        let expires_at = held.and_then(|slot| slot.expires_at);
        let current = parse_integer(key, held.map(|slot| slot.value.as_ref()))?;
        let next = current
            .checked_add(by)
            .ok_or_else(|| StorageError::NotAnInteger {
                key: key.to_owned(),
            })?;
        let ttl = expires_at.map(|at| at.saturating_duration_since(now));
        map.put(key, Bytes::from(next.to_string()), ttl, now);
        Ok(next)
    }

    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>, StorageError> {
        let now = Instant::now();
        let map = self.map();
        Ok(keys
            .iter()
            .map(|key| map.live(key, now).map(|slot| slot.value.clone()))
            .collect())
    }

    async fn set_many(
        &self,
        pairs: &[(&str, Bytes)],
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        let now = Instant::now();
        let mut map = self.map();
        for (key, value) in pairs {
            map.put(key, value.clone(), ttl, now);
        }
        Ok(())
    }

    async fn delete_many(&self, keys: &[&str]) -> Result<u64, StorageError> {
        let now = Instant::now();
        let mut map = self.map();
        map.next_version(now);
        Ok(keys.iter().filter(|key| map.remove(key, now)).count() as u64)
    }

    async fn get_versioned(&self, key: &str) -> Result<Versioned, StorageError> {
        let now = Instant::now();
        let map = self.map();
        Ok(match map.live(key, now) {
            Some(slot) => Versioned {
                version: slot.version,
                value: Some(slot.value.clone()),
            },
            None => Versioned {
                version: map.version,
                value: None,
            },
        })
    }

    async fn set_versioned(&self, key: &str, value: Bytes) -> Result<Versioned, StorageError> {
        let now = Instant::now();
        let version = self.map().put(key, value.clone(), None, now);
        Ok(Versioned {
            version,
            value: Some(value),
        })
    }

    async fn delete_versioned(&self, key: &str) -> Result<Versioned, StorageError> {
        let now = Instant::now();
        let mut map = self.map();
        let version = map.next_version(now);
        map.remove(key, now);
        Ok(Versioned {
            version,
            value: None,
        })
    }
}
