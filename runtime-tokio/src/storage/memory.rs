//! [`MemoryStorage`]: the [`Storage`] interface over a map in memory, for tests and a single node.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tunnox_core::storage::Versioned;

use super::kv::{list_window, parse_integer, wrong_kind};
use super::{Storage, StorageError};

/// Expired entries are swept out after this many writes (reads skip them anyway).
const SWEEP_EVERY_WRITES: u64 = 1024;

/// What a key holds.
#[derive(Debug)]
enum Held {
    Value(Bytes),
    List(VecDeque<Bytes>),
}

/// One key's contents.
#[derive(Debug)]
struct Slot {
    version: u64,
    held: Held,
    expires_at: Option<Instant>,
}

impl Slot {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }

    fn value(&self, key: &str) -> Result<&Bytes, StorageError> {
        match &self.held {
            Held::Value(value) => Ok(value),
            Held::List(_) => Err(wrong_kind(key)),
        }
    }
}

#[derive(Debug, Default)]
struct Map {
    slots: BTreeMap<String, Slot>,
    /// The newest version handed out.
    version: u64,
    writes: u64,
}

impl Map {
    fn live(&self, key: &str, now: Instant) -> Option<&Slot> {
        self.slots.get(key).filter(|slot| slot.live(now))
    }

    /// The value at `key` if it is live; `WrongKind` if it holds a list.
    fn value(&self, key: &str, now: Instant) -> Result<Option<&Bytes>, StorageError> {
        self.live(key, now).map(|slot| slot.value(key)).transpose()
    }

    /// The live list at `key`, if any; `WrongKind` if it holds a value.
    fn list(&self, key: &str, now: Instant) -> Result<Option<&VecDeque<Bytes>>, StorageError> {
        match self.live(key, now).map(|slot| &slot.held) {
            None => Ok(None),
            Some(Held::List(list)) => Ok(Some(list)),
            Some(Held::Value(_)) => Err(wrong_kind(key)),
        }
    }

    /// Fails with `WrongKind` if `key` holds a live list (a value write would replace it).
    fn check_not_list(&self, key: &str, now: Instant) -> Result<(), StorageError> {
        self.value(key, now).map(|_| ())
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

    fn put(&mut self, key: &str, held: Held, ttl: Option<Duration>, now: Instant) -> u64 {
        let version = self.next_version(now);
        let expires_at = ttl.map(|ttl| now + ttl);
        self.slots.insert(
            key.to_owned(),
            Slot {
                version,
                held,
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
        Ok(self.map().value(key, now)?.cloned())
    }

    async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        let now = Instant::now();
        let mut map = self.map();
        map.check_not_list(key, now)?;
        map.put(key, Held::Value(value), ttl, now);
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
        if map.value(key, now)?.is_some() {
            return Ok(false);
        }
        map.put(key, Held::Value(value), ttl, now);
        Ok(true)
    }

    async fn incr(&self, key: &str, by: i64) -> Result<i64, StorageError> {
        let now = Instant::now();
        let mut map = self.map();
        let current = parse_integer(key, map.value(key, now)?.map(|value| value.as_ref()))?;
        let expires_at = map.live(key, now).and_then(|slot| slot.expires_at);
        let next = current
            .checked_add(by)
            .ok_or_else(|| StorageError::NotAnInteger {
                key: key.to_owned(),
            })?;
        let ttl = expires_at.map(|at| at.saturating_duration_since(now));
        map.put(key, Held::Value(Bytes::from(next.to_string())), ttl, now);
        Ok(next)
    }

    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>, StorageError> {
        let now = Instant::now();
        let map = self.map();
        keys.iter()
            .map(|key| Ok(map.value(key, now)?.cloned()))
            .collect()
    }

    async fn set_many(
        &self,
        pairs: &[(&str, Bytes)],
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        let now = Instant::now();
        let mut map = self.map();
        // All or nothing: check every key before writing any.
        for (key, _) in pairs {
            map.check_not_list(key, now)?;
        }
        for (key, value) in pairs {
            map.put(key, Held::Value(value.clone()), ttl, now);
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
                value: Some(slot.value(key)?.clone()),
            },
            None => Versioned {
                version: map.version,
                value: None,
            },
        })
    }

    async fn set_versioned(&self, key: &str, value: Bytes) -> Result<Versioned, StorageError> {
        let now = Instant::now();
        let mut map = self.map();
        map.check_not_list(key, now)?;
        let version = map.put(key, Held::Value(value.clone()), None, now);
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

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<Bytes>,
        new: Option<Bytes>,
        ttl: Option<Duration>,
    ) -> Result<bool, StorageError> {
        let now = Instant::now();
        let mut map = self.map();
        if map.value(key, now)? != expected.as_ref() {
            return Ok(false);
        }
        match new {
            Some(value) => {
                map.put(key, Held::Value(value), ttl, now);
            }
            None => {
                map.next_version(now);
                map.remove(key, now);
            }
        }
        Ok(true)
    }

    async fn scan_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Bytes)>, StorageError> {
        let now = Instant::now();
        let map = self.map();
        Ok(map
            .slots
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(key, _)| key.starts_with(prefix))
            .filter(|(_, slot)| slot.live(now))
            .filter_map(|(key, slot)| match &slot.held {
                Held::Value(value) => Some((key.clone(), value.clone())),
                Held::List(_) => None,
            })
            .take(limit)
            .collect())
    }

    async fn expire(&self, key: &str, ttl: Duration) -> Result<bool, StorageError> {
        let now = Instant::now();
        let mut map = self.map();
        if map.live(key, now).is_none() {
            return Ok(false);
        }
        let version = map.next_version(now);
        if let Some(slot) = map.slots.get_mut(key) {
            slot.version = version;
            slot.expires_at = Some(now + ttl);
        }
        Ok(true)
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>, StorageError> {
        let now = Instant::now();
        Ok(self
            .map()
            .live(key, now)
            .and_then(|slot| slot.expires_at)
            .map(|at| at.saturating_duration_since(now)))
    }

    async fn list_push(&self, key: &str, value: Bytes) -> Result<u64, StorageError> {
        let now = Instant::now();
        let mut map = self.map();
        let held = map.list(key, now)?.is_some();
        let version = map.next_version(now);
        if !held {
            map.slots.insert(
                key.to_owned(),
                Slot {
                    version,
                    held: Held::List(VecDeque::new()),
                    expires_at: None,
                },
            );
        }
        match map.slots.get_mut(key) {
            Some(Slot {
                version: slot_version,
                held: Held::List(list),
                ..
            }) => {
                *slot_version = version;
                list.push_back(value);
                Ok(list.len() as u64)
            }
            _ => Err(wrong_kind(key)),
        }
    }

    async fn list_range(
        &self,
        key: &str,
        start: i64,
        stop: i64,
    ) -> Result<Vec<Bytes>, StorageError> {
        let now = Instant::now();
        let map = self.map();
        let Some(list) = map.list(key, now)? else {
            return Ok(Vec::new());
        };
        Ok(list
            .range(list_window(list.len(), start, stop))
            .cloned()
            .collect())
    }

    async fn list_remove(&self, key: &str, value: &[u8]) -> Result<u64, StorageError> {
        let now = Instant::now();
        let mut map = self.map();
        if map.list(key, now)?.is_none() {
            return Ok(0);
        }
        let version = map.next_version(now);
        let Some(slot) = map.slots.get_mut(key) else {
            return Ok(0);
        };
        let Held::List(list) = &mut slot.held else {
            return Err(wrong_kind(key));
        };
        let before = list.len();
        list.retain(|element| element.as_ref() != value);
        let removed = (before - list.len()) as u64;
        slot.version = version;
        if list.is_empty() {
            // Like Redis: an emptied list is no key at all.
            map.slots.remove(key);
        }
        Ok(removed)
    }

    async fn list_len(&self, key: &str) -> Result<u64, StorageError> {
        let now = Instant::now();
        Ok(self
            .map()
            .list(key, now)?
            .map_or(0, |list| list.len() as u64))
    }

    async fn ping(&self) -> Result<(), StorageError> {
        Ok(())
    }
}
