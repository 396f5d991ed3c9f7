//! A keyed token-bucket rate limit, sans-IO: time comes in as [`Instant`]. Used for handshakes
//! per address and for management API requests per key.
//!
//! Each key gets a bucket of `burst` tokens that refills at `per_sec` tokens a second; one
//! request takes one token. Memory is bounded: at most `tracked_max` keys are remembered, and
//! past that the key seen longest ago is forgotten (a forgotten key starts again with a full
//! bucket, which only ever errs towards admitting).

use std::collections::BTreeMap;

use crate::time::{Duration, Instant};

/// One key's bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens, in thousandths (so refill has no rounding drift).
    milli_tokens: u64,
    updated: Instant,
}

/// The limit (see the module docs).
#[derive(Debug, Clone)]
pub struct KeyedRateLimit<K> {
    burst: u32,
    per_sec: u32,
    tracked_max: usize,
    buckets: BTreeMap<K, Bucket>,
}

impl<K: Ord + Clone> KeyedRateLimit<K> {
    /// `burst` requests at once per key, refilled at `per_sec` a second (both at least 1).
    pub fn new(burst: u32, per_sec: u32, tracked_max: usize) -> KeyedRateLimit<K> {
        KeyedRateLimit {
            burst: burst.max(1),
            per_sec: per_sec.max(1),
            tracked_max: tracked_max.max(1),
            buckets: BTreeMap::new(),
        }
    }

    /// Takes a token for `key`: `Ok`, or how long until one is available.
    pub fn admit(&mut self, now: Instant, key: &K) -> Result<(), Duration> {
        let full = u64::from(self.burst) * 1000;
        let rate = u64::from(self.per_sec);
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.tracked_max {
            forget_oldest(&mut self.buckets, |b| b.updated);
        }
        let bucket = self.buckets.entry(key.clone()).or_insert(Bucket {
            milli_tokens: full,
            updated: now,
        });
        let elapsed_ms = now.saturating_duration_since(bucket.updated).as_millis();
        let refill = u64::try_from(elapsed_ms)
            .unwrap_or(u64::MAX)
            .saturating_mul(rate);
        bucket.milli_tokens = bucket.milli_tokens.saturating_add(refill).min(full);
        bucket.updated = now;
        if bucket.milli_tokens >= 1000 {
            bucket.milli_tokens -= 1000;
            Ok(())
        } else {
            let missing = 1000 - bucket.milli_tokens;
            Err(Duration::from_millis(missing.div_ceil(rate)))
        }
    }

    /// Keys remembered.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// Removes the entry whose `age` is oldest.
pub(crate) fn forget_oldest<K: Ord + Clone, V>(
    map: &mut BTreeMap<K, V>,
    age: impl Fn(&V) -> Instant,
) {
    if let Some(key) = map
        .iter()
        .min_by_key(|(_, v)| age(v))
        .map(|(k, _)| k.clone())
    {
        map.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn a_burst_then_the_refill_rate() {
        let mut limit = KeyedRateLimit::new(3, 10, 16);
        for _ in 0..3 {
            assert_eq!(limit.admit(at(0), &"a"), Ok(()));
        }
        assert_eq!(limit.admit(at(0), &"a"), Err(Duration::from_millis(100)));
        // Another key has its own bucket.
        assert_eq!(limit.admit(at(0), &"b"), Ok(()));
        // 100 ms refills one token at 10/s.
        assert_eq!(limit.admit(at(100), &"a"), Ok(()));
        assert!(limit.admit(at(100), &"a").is_err());
        // Never more than the burst after a long pause.
        for _ in 0..3 {
            assert_eq!(limit.admit(at(60_000), &"a"), Ok(()));
        }
        assert!(limit.admit(at(60_000), &"a").is_err());
    }

    #[test]
    fn memory_stays_bounded_by_forgetting_the_oldest_key() {
        let mut limit = KeyedRateLimit::new(1, 1, 4);
        for key in 0..100u32 {
            assert_eq!(limit.admit(at(u64::from(key)), &key), Ok(()));
            assert!(limit.tracked() <= 4);
        }
        // The newest keys are still remembered (and still empty).
        assert!(limit.admit(at(100), &99).is_err());
    }
}
