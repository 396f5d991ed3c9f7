//! Cache-aside with versioned entries.
//!
//! The source of truth gives every key a version that each write raises. The cache holds
//! `(version, value, expiry)` and takes a new entry only if it is newer than the one it holds
//! ([`replaces`], applied atomically by the cache store — a compare-and-set script in Redis). So:
//!
//! * a read looks the key up; a fresh entry is a hit; otherwise it reads the source and fills the
//!   cache with what it read, stamped with the time the read *started*;
//! * a write goes to the source first (nothing is acknowledged before the source has it), then
//!   puts the new version into the cache; a slow fill of an older version that lands afterwards
//!   is refused by the version check, so the classic race cannot install a stale value;
//! * if the cache update after a write fails, or the cache evicts the newer entry and an older
//!   fill lands, the stale entry still expires [`CachePolicy::entry_ttl`] after its read started,
//!   which was before the write. **The bound:** a read that starts more than `entry_ttl` after a
//!   write was acknowledged returns that write's version or a newer one;
//! * when the source is down, a read may serve an entry past its expiry (kept for
//!   [`CachePolicy::stale_grace`] more), marked degraded and counted; writes fail.

use bytes::Bytes;

use crate::time::{Duration, Instant};

/// A key's value at the source of truth: each write raises `version`; `None` is deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// Raised by every write of the key (0: never written).
    pub version: u64,
    /// The value (`None`: deleted or never written).
    pub value: Option<Bytes>,
}

/// What the cache holds for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// The source version this entry is a copy of.
    pub version: u64,
    /// The value at that version (`None`: deleted).
    pub value: Option<Bytes>,
    /// Served as fresh until then.
    pub fresh_until: Instant,
    /// Kept until then, for degraded reads while the source is down.
    pub keep_until: Instant,
}

/// Whether `incoming` may replace `held` at `now`: only a newer version replaces a live entry.
/// The cache store must apply this atomically with the write.
pub fn replaces(held: Option<&CacheEntry>, incoming: &CacheEntry, now: Instant) -> bool {
    match held {
        None => true,
        Some(held) if held.keep_until <= now => true,
        Some(held) => incoming.version > held.version,
    }
}

/// The time limits of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    /// How long after its read started an entry is served as fresh: the staleness bound.
    pub entry_ttl: Duration,
    /// How much longer an expired entry is kept for degraded reads.
    pub stale_grace: Duration,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            entry_ttl: Duration::from_secs(30),
            stale_grace: Duration::from_secs(300),
        }
    }
}

/// The source of truth could not be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the storage source is unavailable")]
pub struct SourceDown;

/// What a cache lookup means for the read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Fresh: the read is done.
    Hit(Option<Bytes>),
    /// Not fresh: read the source (the entry, if any, is kept for a degraded answer).
    Miss,
}

/// Where a read through the cache ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The value, fresh from the cache or the source.
    Value(Option<Bytes>),
    /// The source was down; this is the cached value past its freshness (counted).
    Degraded(Option<Bytes>),
    /// The source was down and nothing was cached.
    Unavailable,
}

/// A read in progress: remembers when it started (fills are stamped with that time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadTicket {
    started_at: Instant,
    stale: Option<CacheEntry>,
}

impl ReadTicket {
    /// When the read started (its lookup).
    pub fn started_at(&self) -> Instant {
        self.started_at
    }
}

/// Counters of the cache-aside paths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Reads answered fresh from the cache.
    pub hits: u64,
    /// Reads that went to the source.
    pub misses: u64,
    /// Fills offered to the cache after a source read.
    pub fills: u64,
    /// Fills not offered: their entry would already have expired.
    pub fills_expired: u64,
    /// Reads answered from an expired entry while the source was down.
    pub degraded_reads: u64,
    /// Reads that failed: source down, nothing cached.
    pub unavailable_reads: u64,
    /// Writes the source refused (nothing acknowledged).
    pub failed_writes: u64,
}

/// The cache-aside rules for one storage (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct CacheAside {
    policy: CachePolicy,
    stats: CacheStats,
}

impl CacheAside {
    /// Rules with `policy`.
    pub fn new(policy: CachePolicy) -> CacheAside {
        CacheAside {
            policy,
            stats: CacheStats::default(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> CachePolicy {
        self.policy
    }

    /// Counters so far.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// A read starts at `now` and found `held` in the cache.
    pub fn lookup(&mut self, now: Instant, held: Option<CacheEntry>) -> (Lookup, ReadTicket) {
        let held = held.filter(|e| e.keep_until > now);
        let fresh = held.as_ref().filter(|e| e.fresh_until > now);
        let lookup = match fresh {
            Some(entry) => {
                self.stats.hits += 1;
                Lookup::Hit(entry.value.clone())
            }
            None => {
                self.stats.misses += 1;
                Lookup::Miss
            }
        };
        (
            lookup,
            ReadTicket {
                started_at: now,
                stale: held,
            },
        )
    }

    /// The source answered a missed read at `now`: the answer, and the entry to offer the cache
    /// (through [`replaces`]) unless it would already be expired.
    pub fn source_read(
        &mut self,
        now: Instant,
        ticket: ReadTicket,
        source: Result<Versioned, SourceDown>,
    ) -> (ReadOutcome, Option<CacheEntry>) {
        match source {
            Ok(read) => {
                let entry = self.entry(ticket.started_at, read.version, read.value.clone());
                let fill = if entry.fresh_until > now {
                    self.stats.fills += 1;
                    Some(entry)
                } else {
                    self.stats.fills_expired += 1;
                    None
                };
                (ReadOutcome::Value(read.value), fill)
            }
            Err(SourceDown) => match ticket.stale {
                Some(entry) => {
                    self.stats.degraded_reads += 1;
                    (ReadOutcome::Degraded(entry.value), None)
                }
                None => {
                    self.stats.unavailable_reads += 1;
                    (ReadOutcome::Unavailable, None)
                }
            },
        }
    }

    /// A write reached the source at `now` as `version`: the entry to put into the cache (through
    /// [`replaces`]). A failed cache update is harmless beyond the staleness bound.
    pub fn source_written(
        &mut self,
        now: Instant,
        written: Result<Versioned, SourceDown>,
    ) -> Result<CacheEntry, SourceDown> {
        match written {
            Ok(w) => Ok(self.entry(now, w.version, w.value)),
            Err(down) => {
                self.stats.failed_writes += 1;
                Err(down)
            }
        }
    }

    fn entry(&self, read_at: Instant, version: u64, value: Option<Bytes>) -> CacheEntry {
        let fresh_until = read_at + self.policy.entry_ttl;
        CacheEntry {
            version,
            value,
            fresh_until,
            keep_until: fresh_until + self.policy.stale_grace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }

    fn policy() -> CachePolicy {
        CachePolicy {
            entry_ttl: Duration::from_millis(100),
            stale_grace: Duration::from_millis(1000),
        }
    }

    fn v(version: u64, value: &'static str) -> Versioned {
        Versioned {
            version,
            value: Some(Bytes::from_static(value.as_bytes())),
        }
    }

    #[test]
    fn a_slow_fill_of_an_older_version_cannot_replace_a_newer_write() {
        let mut cache = CacheAside::new(policy());
        // A read misses at 0 and reads version 1; a write of version 2 lands in the cache at 5;
        // the read's fill arrives at 10.
        let (lookup, ticket) = cache.lookup(at(0), None);
        assert_eq!(lookup, Lookup::Miss);
        let written = cache.source_written(at(5), Ok(v(2, "new"))).unwrap();
        assert!(replaces(None, &written, at(5)));
        let (outcome, fill) = cache.source_read(at(10), ticket, Ok(v(1, "old")));
        assert_eq!(
            outcome,
            ReadOutcome::Value(Some(Bytes::from_static(b"old")))
        );
        let fill = fill.unwrap();
        assert!(
            !replaces(Some(&written), &fill, at(10)),
            "stale fill refused"
        );
        // And the write replaces an older fill that landed first.
        assert!(replaces(Some(&fill), &written, at(10)));
    }

    #[test]
    fn fills_expire_from_when_the_read_started() {
        let mut cache = CacheAside::new(policy());
        let (_, ticket) = cache.lookup(at(0), None);
        let (_, fill) = cache.source_read(at(150), ticket, Ok(v(1, "x")));
        assert_eq!(fill, None, "a fill older than the ttl is not offered");
        assert_eq!(cache.stats().fills_expired, 1);
        let (_, ticket) = cache.lookup(at(200), None);
        let fill = cache.source_read(at(220), ticket, Ok(v(1, "x"))).1.unwrap();
        assert_eq!(fill.fresh_until, at(300));
        let (lookup, _) = cache.lookup(at(299), Some(fill.clone()));
        assert_eq!(lookup, Lookup::Hit(Some(Bytes::from_static(b"x"))));
        let (lookup, _) = cache.lookup(at(300), Some(fill));
        assert_eq!(lookup, Lookup::Miss);
    }

    #[test]
    fn a_down_source_serves_kept_entries_degraded_and_fails_writes() {
        let mut cache = CacheAside::new(policy());
        let entry = cache.source_written(at(0), Ok(v(3, "kept"))).unwrap();
        // Past freshness, within the grace: a miss, then degraded.
        let (lookup, ticket) = cache.lookup(at(500), Some(entry.clone()));
        assert_eq!(lookup, Lookup::Miss);
        let (outcome, fill) = cache.source_read(at(501), ticket, Err(SourceDown));
        assert_eq!(
            outcome,
            ReadOutcome::Degraded(Some(Bytes::from_static(b"kept")))
        );
        assert_eq!(fill, None);
        // Past the grace: nothing to serve.
        let (_, ticket) = cache.lookup(at(2000), Some(entry));
        let (outcome, _) = cache.source_read(at(2001), ticket, Err(SourceDown));
        assert_eq!(outcome, ReadOutcome::Unavailable);
        assert_eq!(
            cache.source_written(at(2002), Err(SourceDown)),
            Err(SourceDown)
        );
        let stats = cache.stats();
        assert_eq!(
            (
                stats.degraded_reads,
                stats.unavailable_reads,
                stats.failed_writes
            ),
            (1, 1, 1)
        );
    }
}
