//! [`RedisStorage`]: the [`Storage`] interface over Redis.
//!
//! A key lives at `{prefix}kv:{key}` as a hash `{v: version, d: value}`, and the store's version
//! counter at `{prefix}kv-version`. Every write is one Lua script that raises the counter and
//! writes the hash together, so a version and its value change atomically.

use std::collections::BTreeSet;
use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use redis::Script;
use tunnox_core::storage::Versioned;

use super::redis_link::{RedisConfig, RedisLink};
use super::{Storage, StorageError};

/// Names this backend in errors.
const BACKEND: &str = "redis";

/// Sets `KEYS[1]` to `ARGV[1]` with a fresh version from `KEYS[2]`; `ARGV[2]`: TTL in ms (0:
/// none); `ARGV[3] == '1'`: only if absent. The new version, or 0 if not set.
static SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('TYPE', KEYS[1]).ok == 'list' then return redis.error_reply('WRONGTYPE holds a list') end
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local v = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'v', v, 'd', ARGV[1])
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  redis.call('PERSIST', KEYS[1])
end
return v
",
    )
});

/// Sets `KEYS[1..n]` to `ARGV[2..n+1]`, each with a fresh version from `KEYS[n+1]`; `ARGV[1]`:
/// TTL in ms (0: none).
static SET_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local counter = KEYS[#KEYS]
for i = 1, #KEYS - 1 do
  if redis.call('TYPE', KEYS[i]).ok == 'list' then return redis.error_reply('WRONGTYPE holds a list') end
end
for i = 1, #KEYS - 1 do
  local v = redis.call('INCR', counter)
  redis.call('HSET', KEYS[i], 'v', v, 'd', ARGV[i + 1])
  if tonumber(ARGV[1]) > 0 then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  else
    redis.call('PERSIST', KEYS[i])
  end
end
return #KEYS - 1
",
    )
});

/// Deletes `KEYS[1..n]` and raises the counter `KEYS[n+1]`: `{new version, how many existed}`.
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local existed = 0
for i = 1, #KEYS - 1 do
  existed = existed + redis.call('DEL', KEYS[i])
end
return {redis.call('INCR', KEYS[#KEYS]), existed}
",
    )
});

/// `{version, value, 1}` for a present key; `{counter, nil, 0}` for an absent one.
static GET_VERSIONED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local held = redis.call('HMGET', KEYS[1], 'v', 'd')
if held[1] then return {held[1], held[2], 1} end
return {redis.call('GET', KEYS[2]) or '0', false, 0}
",
    )
});

/// Adds `ARGV[1]` to the integer at `KEYS[1]`, raising its version from `KEYS[2]`; the new
/// value, or nil if the held value is not an integer (or would overflow).
static INCR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('TYPE', KEYS[1]).ok == 'list' then return redis.error_reply('WRONGTYPE holds a list') end
local n = redis.pcall('HINCRBY', KEYS[1], 'd', ARGV[1])
if type(n) == 'table' then return false end
redis.call('HSET', KEYS[1], 'v', redis.call('INCR', KEYS[2]))
return n
",
    )
});

/// Compare-and-swap at `KEYS[1]` with a fresh version from `KEYS[2]`: `ARGV` = expected present
/// ('1'/'0'), expected value, new present ('1'/'0'), new value, TTL in ms (0: none). 1 if it
/// swapped, 0 if the held value differed.
static COMPARE_AND_SWAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('TYPE', KEYS[1]).ok == 'list' then return redis.error_reply('WRONGTYPE holds a list') end
local held = redis.call('HGET', KEYS[1], 'd')
if ARGV[1] == '1' then
  if not held or held ~= ARGV[2] then return 0 end
elseif held then
  return 0
end
local v = redis.call('INCR', KEYS[2])
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'v', v, 'd', ARGV[4])
  if tonumber(ARGV[5]) > 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[5])
  else
    redis.call('PERSIST', KEYS[1])
  end
else
  redis.call('DEL', KEYS[1])
end
return 1
",
    )
});

/// Sets the TTL of `KEYS[1]` to `ARGV[1]` ms, raising the counter `KEYS[2]` (and a value's
/// version); 1 if the key exists, else 0.
static EXPIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('PEXPIRE', KEYS[1], ARGV[1]) == 0 then return 0 end
local v = redis.call('INCR', KEYS[2])
if redis.call('TYPE', KEYS[1]).ok == 'hash' then redis.call('HSET', KEYS[1], 'v', v) end
return 1
",
    )
});

/// Appends `ARGV[1]` to the list at `KEYS[1]`, raising the counter `KEYS[2]`; the new length.
static LIST_PUSH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('TYPE', KEYS[1]).ok == 'hash' then return redis.error_reply('WRONGTYPE holds a value') end
redis.call('INCR', KEYS[2])
return redis.call('RPUSH', KEYS[1], ARGV[1])
",
    )
});

/// Removes every `ARGV[1]` from the list at `KEYS[1]`, raising the counter `KEYS[2]` if it
/// removed any; how many it removed.
static LIST_REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('TYPE', KEYS[1]).ok == 'hash' then return redis.error_reply('WRONGTYPE holds a value') end
local removed = redis.call('LREM', KEYS[1], 0, ARGV[1])
if removed > 0 then redis.call('INCR', KEYS[2]) end
return removed
",
    )
});

/// The values of the hashes `KEYS[1..n]` (false for a key gone since the scan).
static SCAN_VALUES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local values = {}
for i = 1, #KEYS do
  if redis.call('TYPE', KEYS[i]).ok == 'hash' then
    values[i] = redis.call('HGET', KEYS[i], 'd') or false
  else
    values[i] = false
  end
end
return values
",
    )
});

/// Keys asked for per SCAN step.
const SCAN_BATCH: usize = 512;

/// `text` with Redis glob characters escaped, so it matches only itself in a SCAN pattern.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// A [`Storage`] in Redis, shared by every process that uses the same prefix.
#[derive(Debug, Clone)]
pub struct RedisStorage {
    link: RedisLink,
    data_prefix: String,
    version_key: String,
}

/// A TTL as the scripts take it: milliseconds, at least 1; 0 for none.
fn ttl_ms(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |ttl| {
        u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
    })
}

fn corrupt(key: &str, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        table: BACKEND,
        key: key.to_owned(),
        reason: reason.into(),
    }
}

fn parse_version(key: &str, raw: &[u8]) -> Result<u64, StorageError> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| corrupt(key, "the version is not a number"))
}

impl RedisStorage {
    /// A store in the Redis of `config`; connects on first use (Redis may be down now). Must be
    /// called inside a tokio runtime.
    pub fn open(config: &RedisConfig) -> Result<RedisStorage, StorageError> {
        Ok(RedisStorage {
            link: RedisLink::open(config, BACKEND)?,
            data_prefix: format!("{}kv:", config.key_prefix),
            version_key: format!("{}kv-version", config.key_prefix),
        })
    }

    fn data_key(&self, key: &str) -> String {
        format!("{}{key}", self.data_prefix)
    }

    async fn write(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
        only_if_absent: bool,
    ) -> Result<u64, StorageError> {
        let mut call = SET.prepare_invoke();
        call.key(self.data_key(key))
            .key(&self.version_key)
            .arg(value.as_ref())
            .arg(ttl_ms(ttl))
            .arg(if only_if_absent { "1" } else { "0" });
        self.link
            .run("set", key, |mut con| async move {
                call.invoke_async::<u64>(&mut con).await
            })
            .await
    }

    /// Deletes `keys`: the new version and how many existed.
    async fn remove(&self, keys: &[&str]) -> Result<(u64, u64), StorageError> {
        let mut call = DELETE.prepare_invoke();
        for key in keys {
            call.key(self.data_key(key));
        }
        call.key(&self.version_key);
        let first = keys.first().copied().unwrap_or("");
        self.link
            .run("delete", first, |mut con| async move {
                call.invoke_async::<(u64, u64)>(&mut con).await
            })
            .await
    }
}

impl Storage for RedisStorage {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(self.data_key(key)).arg("d");
        self.link
            .run("get", key, |mut con| async move {
                cmd.query_async::<Option<Bytes>>(&mut con).await
            })
            .await
    }

    async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        self.write(key, value, ttl, false).await.map(|_| ())
    }

    async fn delete(&self, key: &str) -> Result<bool, StorageError> {
        Ok(self.remove(&[key]).await?.1 > 0)
    }

    async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(self.data_key(key));
        self.link
            .run("exists", key, |mut con| async move {
                cmd.query_async::<bool>(&mut con).await
            })
            .await
    }

    async fn set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool, StorageError> {
        Ok(self.write(key, value, ttl, true).await? > 0)
    }

    async fn incr(&self, key: &str, by: i64) -> Result<i64, StorageError> {
        let mut call = INCR.prepare_invoke();
        call.key(self.data_key(key)).key(&self.version_key).arg(by);
        let next = self
            .link
            .run("incr", key, |mut con| async move {
                call.invoke_async::<Option<i64>>(&mut con).await
            })
            .await?;
        next.ok_or_else(|| StorageError::NotAnInteger {
            key: key.to_owned(),
        })
    }

    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>, StorageError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for key in keys {
            pipe.cmd("HGET").arg(self.data_key(key)).arg("d");
        }
        self.link
            .run("get_many", keys[0], |mut con| async move {
                pipe.query_async::<Vec<Option<Bytes>>>(&mut con).await
            })
            .await
    }

    async fn set_many(
        &self,
        pairs: &[(&str, Bytes)],
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        let Some((first, _)) = pairs.first() else {
            return Ok(());
        };
        let mut call = SET_MANY.prepare_invoke();
        call.arg(ttl_ms(ttl));
        for (key, value) in pairs {
            call.key(self.data_key(key)).arg(value.as_ref());
        }
        call.key(&self.version_key);
        self.link
            .run("set_many", first, |mut con| async move {
                call.invoke_async::<u64>(&mut con).await
            })
            .await
            .map(|_| ())
    }

    async fn delete_many(&self, keys: &[&str]) -> Result<u64, StorageError> {
        if keys.is_empty() {
            return Ok(0);
        }
        Ok(self.remove(keys).await?.1)
    }

    async fn get_versioned(&self, key: &str) -> Result<Versioned, StorageError> {
        let mut call = GET_VERSIONED.prepare_invoke();
        call.key(self.data_key(key)).key(&self.version_key);
        let (version, value, present) = self
            .link
            .run("get_versioned", key, |mut con| async move {
                call.invoke_async::<(Bytes, Option<Bytes>, u8)>(&mut con)
                    .await
            })
            .await?;
        let version = parse_version(key, &version)?;
        if present == 1 && value.is_none() {
            return Err(corrupt(key, "a version without a value"));
        }
        Ok(Versioned { version, value })
    }

    async fn set_versioned(&self, key: &str, value: Bytes) -> Result<Versioned, StorageError> {
        let version = self.write(key, value.clone(), None, false).await?;
        Ok(Versioned {
            version,
            value: Some(value),
        })
    }

    async fn delete_versioned(&self, key: &str) -> Result<Versioned, StorageError> {
        let (version, _) = self.remove(&[key]).await?;
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
        let flag = |present: bool| if present { "1" } else { "0" };
        let mut call = COMPARE_AND_SWAP.prepare_invoke();
        call.key(self.data_key(key))
            .key(&self.version_key)
            .arg(flag(expected.is_some()))
            .arg(expected.as_deref().unwrap_or_default())
            .arg(flag(new.is_some()))
            .arg(new.as_deref().unwrap_or_default())
            .arg(ttl_ms(ttl));
        self.link
            .run("compare_and_swap", key, |mut con| async move {
                call.invoke_async::<bool>(&mut con).await
            })
            .await
    }

    async fn scan_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Bytes)>, StorageError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // SCAN walks the keyspace in no order: keep the `limit` smallest keys seen.
        let pattern = format!("{}*", glob_escape(&self.data_key(prefix)));
        let mut smallest: BTreeSet<String> = BTreeSet::new();
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_BATCH)
                .arg("TYPE")
                .arg("hash");
            let (next, keys) = self
                .link
                .run("scan_prefix", prefix, |mut con| async move {
                    cmd.query_async::<(u64, Vec<String>)>(&mut con).await
                })
                .await?;
            for key in keys {
                smallest.insert(key);
                if smallest.len() > limit {
                    smallest.pop_last();
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        if smallest.is_empty() {
            return Ok(Vec::new());
        }
        let mut call = SCAN_VALUES.prepare_invoke();
        for key in &smallest {
            call.key(key);
        }
        let values = self
            .link
            .run("scan_prefix", prefix, |mut con| async move {
                call.invoke_async::<Vec<Option<Bytes>>>(&mut con).await
            })
            .await?;
        Ok(smallest
            .into_iter()
            .zip(values)
            .filter_map(|(key, value)| {
                let key = key.strip_prefix(&self.data_prefix)?.to_owned();
                Some((key, value?))
            })
            .collect())
    }

    async fn expire(&self, key: &str, ttl: Duration) -> Result<bool, StorageError> {
        let mut call = EXPIRE.prepare_invoke();
        call.key(self.data_key(key))
            .key(&self.version_key)
            .arg(ttl_ms(Some(ttl)));
        self.link
            .run("expire", key, |mut con| async move {
                call.invoke_async::<bool>(&mut con).await
            })
            .await
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>, StorageError> {
        let mut cmd = redis::cmd("PTTL");
        cmd.arg(self.data_key(key));
        let ms = self
            .link
            .run("ttl", key, |mut con| async move {
                cmd.query_async::<i64>(&mut con).await
            })
            .await?;
        // -2: absent; -1: no expiry.
        Ok(u64::try_from(ms).ok().map(Duration::from_millis))
    }

    async fn list_push(&self, key: &str, value: Bytes) -> Result<u64, StorageError> {
        let mut call = LIST_PUSH.prepare_invoke();
        call.key(self.data_key(key))
            .key(&self.version_key)
            .arg(value.as_ref());
        self.link
            .run("list_push", key, |mut con| async move {
                call.invoke_async::<u64>(&mut con).await
            })
            .await
    }

    async fn list_range(
        &self,
        key: &str,
        start: i64,
        stop: i64,
    ) -> Result<Vec<Bytes>, StorageError> {
        let mut cmd = redis::cmd("LRANGE");
        cmd.arg(self.data_key(key)).arg(start).arg(stop);
        self.link
            .run("list_range", key, |mut con| async move {
                cmd.query_async::<Vec<Bytes>>(&mut con).await
            })
            .await
    }

    async fn list_remove(&self, key: &str, value: &[u8]) -> Result<u64, StorageError> {
        let mut call = LIST_REMOVE.prepare_invoke();
        call.key(self.data_key(key))
            .key(&self.version_key)
            .arg(value);
        self.link
            .run("list_remove", key, |mut con| async move {
                call.invoke_async::<u64>(&mut con).await
            })
            .await
    }

    async fn list_len(&self, key: &str) -> Result<u64, StorageError> {
        let mut cmd = redis::cmd("LLEN");
        cmd.arg(self.data_key(key));
        self.link
            .run("list_len", key, |mut con| async move {
                cmd.query_async::<u64>(&mut con).await
            })
            .await
    }

    async fn ping(&self) -> Result<(), StorageError> {
        let cmd = redis::cmd("PING");
        self.link
            .run("ping", "", |mut con| async move {
                cmd.query_async::<()>(&mut con).await
            })
            .await
    }
}
