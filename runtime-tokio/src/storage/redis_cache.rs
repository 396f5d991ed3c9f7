//! [`RedisCache`]: cache entries in Redis, replaced only by the rule of
//! [`tunnox_core::storage::replaces`], applied atomically by a Lua script.
//!
//! An entry lives at `{prefix}cache:{key}` as a hash `{v: version, f: fresh_until, k: keep_until,
//! d: value}` (no `d`: the key was absent at that version). Times are wall-clock unix
//! milliseconds, so every process sharing the Redis reads them alike, and the hash expires (PX)
//! at `keep_until`, so Redis drops what nobody may serve any more.

use std::sync::LazyLock;

use bytes::Bytes;
use redis::Script;
use tunnox_core::storage::CacheEntry;
use tunnox_core::time::Instant;

use super::StorageError;
use super::redis_link::{RedisConfig, RedisLink};
use crate::clock::WallClock;

/// Names the cache in errors.
const BACKEND: &str = "redis cache";

/// Offers an entry to `KEYS[1]`: `ARGV` = version, fresh_until, keep_until, now (unix ms),
/// has-value ('1'/'0'), value. Exactly `replaces`: it goes in if nothing live is held (no entry,
/// an unreadable one, or one whose keep_until has passed) or if its version is newer. 1 if it
/// went in, 0 if refused.
static OFFER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local held = redis.call('HMGET', KEYS[1], 'v', 'k')
local held_version, held_keep = tonumber(held[1]), tonumber(held[2])
if held_version and held_keep and held_keep > tonumber(ARGV[4])
   and tonumber(ARGV[1]) <= held_version then
  return 0
end
redis.call('DEL', KEYS[1])
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 'f', ARGV[2], 'k', ARGV[3], 'd', ARGV[6])
else
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 'f', ARGV[2], 'k', ARGV[3])
end
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return 1
",
    )
});

/// A cache of versioned entries in Redis.
#[derive(Debug, Clone)]
pub struct RedisCache {
    link: RedisLink,
    prefix: String,
    clock: WallClock,
}

fn number(key: &str, field: &str, raw: Option<&Bytes>) -> Result<u64, StorageError> {
    raw.and_then(|raw| std::str::from_utf8(raw).ok())
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| StorageError::Corrupt {
            table: BACKEND,
            key: key.to_owned(),
            reason: format!("field {field} is missing or not a number"),
        })
}

impl RedisCache {
    /// A cache in the Redis of `config`, converting times with `clock`; connects on first use.
    /// Must be called inside a tokio runtime.
    pub fn open(config: &RedisConfig, clock: WallClock) -> Result<RedisCache, StorageError> {
        Ok(RedisCache {
            link: RedisLink::open(config, BACKEND)?,
            prefix: format!("{}cache:", config.key_prefix),
            clock,
        })
    }

    /// The clock entries' times are converted with.
    pub fn clock(&self) -> WallClock {
        self.clock
    }

    fn entry_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The entry held for `key`, if any; a typed error if it does not decode.
    pub async fn lookup(&self, key: &str) -> Result<Option<CacheEntry>, StorageError> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.entry_key(key)).arg(&["v", "f", "k", "d"]);
        let fields = self
            .link
            .run("cache lookup", key, |mut con| async move {
                cmd.query_async::<[Option<Bytes>; 4]>(&mut con).await
            })
            .await?;
        let [version, fresh_until, keep_until, value] = fields;
        if version.is_none() && fresh_until.is_none() && keep_until.is_none() {
            return Ok(None);
        }
        Ok(Some(CacheEntry {
            version: number(key, "v", version.as_ref())?,
            value,
            fresh_until: self
                .clock
                .from_unix_ms(number(key, "f", fresh_until.as_ref())?),
            keep_until: self
                .clock
                .from_unix_ms(number(key, "k", keep_until.as_ref())?),
        }))
    }

    /// Offers `entry` for `key` at `now`; whether it replaced what was held.
    pub async fn offer(
        &self,
        key: &str,
        entry: &CacheEntry,
        now: Instant,
    ) -> Result<bool, StorageError> {
        let mut call = OFFER.prepare_invoke();
        call.key(self.entry_key(key))
            .arg(entry.version)
            .arg(self.clock.to_unix_ms(entry.fresh_until))
            .arg(self.clock.to_unix_ms(entry.keep_until))
            .arg(self.clock.to_unix_ms(now))
            .arg(if entry.value.is_some() { "1" } else { "0" })
            .arg(entry.value.as_deref().unwrap_or_default());
        self.link
            .run("cache offer", key, |mut con| async move {
                call.invoke_async::<bool>(&mut con).await
            })
            .await
    }
}
